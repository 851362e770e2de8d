"""Reward service throughput and latency, dynamic batching on vs off, at 1/4/16/64 concurrent clients.

Starts the real reward server (`python -m services.reward`) on loopback hosting the
packaged MiniLM similarity model twice: `similarity` with the server's batching
(max_batch_size 32, max_wait_ms 5, token budget 16384) and `similarity-unbatched`,
the same weights with a per-model `max_batch_size = 1`, i.e. one forward pass per
request ("batching off"). One server for both modes means both see the same process,
threads and background load; at each concurrency the two modes run back to back.

The workload is fixed: `--requests` Score calls per level, each carrying one
prompt/completion pair (with its reference review) from data/preferences.jsonl,
cycled in file order. N concurrent clients (asyncio tasks over one gRPC channel)
send them back to back. Reported per level and mode: pairs/s over the level's wall
time, client-side p50/p99 latency, the mean batch size the server formed (from its
Prometheus metrics), failures; and `speedup` = pairs/s on / pairs/s off.

    make bench-reward            # or: python bench/reward_bench.py --requests 256
Writes bench/results/reward.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.machine import describe as describe_machine  # noqa: E402
from bench.machine import machine  # noqa: E402
from rlhf.v1 import reward_pb2, reward_pb2_grpc  # noqa: E402
from services.common.client import open_aio_channel  # noqa: E402
from services.common.config import describe, load_config, option  # noqa: E402
from services.common.process import ServerProcess, free_port  # noqa: E402

MODES = {"on": "similarity", "off": "similarity-unbatched"}

MODELS_TOML = """\
[[models]]
name = "similarity"
kind = "similarity"

[[models]]
name = "similarity-unbatched"
kind = "similarity"
max_batch_size = 1
"""


@dataclass(frozen=True)
class BenchConfig:
    """Reward service: pairs/s and latency with dynamic batching on vs off."""

    requests: int = option(256, "Score requests per concurrency level and mode (one pair each).")
    concurrency: tuple[str, ...] = option(("1", "4", "16", "64"), "Comma-separated numbers of concurrent clients.")
    warmup_requests: int = option(32, "Requests per mode before measuring (not counted).")
    max_batch_size: int = option(32, "Server max_batch_size for the batched mode.")
    max_wait_ms: float = option(5.0, "Server max_wait_ms.")
    torch_threads: int = option(0, "Server torch intra-op threads (0 = torch's default, one per core).")
    data_file: str = option("data/preferences.jsonl", "Where the prompt/completion pairs come from.")
    output: str = option("bench/results/reward.json", "JSON results file.")
    start_timeout_s: float = option(300.0, "How long the server may take to start.")

    def __post_init__(self) -> None:
        if self.requests < 1 or self.warmup_requests < 0 or self.max_batch_size < 1 or self.max_wait_ms < 0:
            raise ValueError("requests and max_batch_size must be >= 1, warmup_requests and max_wait_ms >= 0")
        if not self.concurrency or not all(level.isdigit() and int(level) >= 1 for level in self.concurrency):
            raise ValueError(f"concurrency must be whole numbers >= 1, got {list(self.concurrency)}")


def workload(path: Path) -> list[reward_pb2.ScoreItem]:
    """Every chosen and rejected completion of the preference file, with the prompt's reference review."""
    references = {}
    for name in ("book_reviews.jsonl", "book_reviews_heldout.jsonl"):
        for line in (ROOT / "data" / name).read_text().splitlines():
            row = json.loads(line)
            references[row["prompt"]] = row["reference"]
    items = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for completion in (record["chosen"], record["rejected"]):
            items.append(
                reward_pb2.ScoreItem(
                    prompt=record["prompt"], completion=completion, reference=references.get(record["prompt"])
                )
            )
    return items


def batch_totals(metrics_url: str, model: str) -> tuple[float, float, float]:
    """(batches, items, forward seconds) the server has scored for `model` so far."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    names = ("rlhf_reward_batch_size_count", "rlhf_reward_batch_size_sum", "rlhf_reward_batch_seconds_sum")
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals and sample.labels.get("model") == model:
                totals[sample.name] = sample.value
    return tuple(totals[name] for name in names)


async def run_level(
    stub: reward_pb2_grpc.RewardServiceStub, model: str, items: list[reward_pb2.ScoreItem], requests: int, clients: int
) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < requests:
            index, next_index = next_index, next_index + 1
            request = reward_pb2.ScoreRequest(model=model, items=[items[index % len(items)]])
            sent = time.perf_counter()
            try:
                await stub.Score(request, timeout=120)
                latencies.append(time.perf_counter() - sent)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failures.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "pairs_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "completed": len(latencies),
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "wall_s": round(wall, 3),
    }


def machine_info() -> dict:
    """The shared machine record plus what matters on a shared box: gRPC version and load averages."""
    import grpc

    return {**machine(), "grpcio": grpc.__version__, "load_average_at_start": list(os.getloadavg())}


async def measure(config: BenchConfig, address: str, metrics_url: str) -> list[dict]:
    items = workload(ROOT / config.data_file)
    levels = [int(c) for c in config.concurrency]
    results = []
    async with open_aio_channel(address) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        for model in MODES.values():
            await run_level(stub, model, items, config.warmup_requests, 4)
        for clients in levels:
            row: dict = {"concurrency": clients}
            for mode, model in MODES.items():
                before = batch_totals(metrics_url, model)
                row[mode] = await run_level(stub, model, items, config.requests, clients)
                batches, scored, forward_s = (a - b for a, b in zip(batch_totals(metrics_url, model), before))
                row[mode]["mean_batch_size"] = round(scored / batches, 2) if batches else None
                # the server's own time scoring batches (rlhf_reward_batch_seconds): what the service adds is the rest
                row[mode]["forward_s_per_batch"] = round(forward_s / batches, 5) if batches else None
                row[mode]["forward_share_of_wall"] = round(forward_s / row[mode]["wall_s"], 3)
                print(
                    f"  clients={clients:<3} batching={mode:<3} {row[mode]['pairs_per_s']:>8.1f} pairs/s  "
                    f"p50={row[mode]['p50_ms']:>8.1f} ms  p99={row[mode]['p99_ms']:>8.1f} ms  "
                    f"batch={row[mode]['mean_batch_size']}  failed={row[mode]['failed']}",
                    flush=True,
                )
            row["speedup"] = round(row["on"]["pairs_per_s"] / row["off"]["pairs_per_s"], 2)
            results.append(row)
    return results


def bare_forward(config: BenchConfig) -> dict:
    """The same pairs scored in-process by the same model in batches of max_batch_size: no server, no gRPC."""
    import torch

    from services.reward.backend import RewardItem
    from services.reward.similarity import SimilarityReward

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    model = SimilarityReward("similarity")
    items = [RewardItem(i.prompt, i.completion, i.reference or None) for i in workload(ROOT / config.data_file)]
    size = config.max_batch_size
    model.score(items[:size])  # warm-up
    count = config.requests * 2
    batches = [
        [items[(start + k) % len(items)] for k in range(min(size, count - start))] for start in range(0, count, size)
    ]
    started = time.perf_counter()
    for batch in batches:
        model.score(batch)
    seconds = time.perf_counter() - started
    return {"pairs": count, "batch_size": size, "seconds": round(seconds, 3), "pairs_per_s": round(count / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    config = load_config(BenchConfig, argv, "RLHF_BENCH_", prog="reward_bench")
    print(f"reward bench config:\n{describe(config)}", flush=True)
    started = time.perf_counter()
    info = machine_info()
    info["server_torch_threads"] = config.torch_threads or "torch default (one per core)"
    print("bare model forward (in-process, no server) ...", flush=True)
    bare = bare_forward(config)
    print(f"  {bare['pairs_per_s']} pairs/s in batches of {bare['batch_size']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="reward-bench-") as tmp:
        models_file = Path(tmp) / "models.toml"
        models_file.write_text(MODELS_TOML)
        port, metrics_port = free_port(), free_port()
        address = f"127.0.0.1:{port}"
        args = ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
                "--models-file", str(models_file), "--max-batch-size", str(config.max_batch_size),
                "--max-wait-ms", str(config.max_wait_ms), "--torch-threads", str(config.torch_threads),
                "--log-level", "WARNING"]  # fmt: skip
        server = ServerProcess("services.reward", args, Path(tmp) / "reward.log", env={"HF_HUB_OFFLINE": "1"})
        print(f"starting reward server on {address} ...", flush=True)
        server.start(address, config.start_timeout_s)
        try:
            results = asyncio.run(measure(config, address, f"http://127.0.0.1:{metrics_port}/metrics"))
        finally:
            code = server.stop()
        if code != 0:
            print(f"reward server exited with {code}:\n{server.log_tail()}", file=sys.stderr)
    info["load_average_at_end"] = list(os.getloadavg())
    report = {
        "benchmark": "reward service Score: dynamic batching on vs off",
        "model": "similarity (all-MiniLM-L6-v2, completion and reference embedded separately)",
        "modes": {
            "on": f"max_batch_size={config.max_batch_size}, max_wait_ms={config.max_wait_ms}, max_batch_tokens=16384",
            "off": "max_batch_size=1 (one forward pass per request)",
        },
        "workload": {
            "requests_per_level": config.requests,
            "pairs_per_request": 1,
            "source": config.data_file,
            "clients": "asyncio tasks over one gRPC channel, requests back to back",
        },
        "machine": info,
        "compared": "pairs/s through the service (batching on, most clients) vs the bare model forward on the same pairs",
        "baseline": {"what": "in-process SimilarityReward.score, batches of max_batch_size, one caller", **bare},
        "candidate": {
            "what": f"Score over gRPC, batching on, {results[-1]['concurrency']} concurrent clients",
            **results[-1]["on"],
        },
        "ratio": round(results[-1]["on"]["pairs_per_s"] / bare["pairs_per_s"], 3),
        "ratio_meaning": "service pairs/s over bare forward pairs/s (1.0 = the service costs nothing)",
        "results": results,
        "duration_s": round(time.perf_counter() - started, 1),
    }
    output = ROOT / config.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print("\n clients   on pairs/s   off pairs/s   speedup   on p50/p99 ms      off p50/p99 ms")
    for row in results:
        on, off = row["on"], row["off"]
        print(
            f" {row['concurrency']:>7}   {on['pairs_per_s']:>10.1f}   {off['pairs_per_s']:>11.1f}"
            f"   {row['speedup']:>6.2f}x"
            f"   {on['p50_ms']:>6.1f}/{on['p99_ms']:<8.1f}   {off['p50_ms']:>6.1f}/{off['p99_ms']:.1f}"
        )
    print(
        f"\nservice/bare forward = {report['ratio']} ({results[-1]['on']['pairs_per_s']} vs {bare['pairs_per_s']} pairs/s)"
    )
    print(describe_machine(info))
    print(f"wrote {output} in {report['duration_s']} s")
    failed = sum(row[mode]["failed"] for row in results for mode in MODES)
    return 1 if failed or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
