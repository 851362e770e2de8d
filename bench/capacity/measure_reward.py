"""Reward-service costs on this machine, measured in pieces: what the capacity model predicts
`make bench-reward`'s throughput and `make bench-step`'s score phase from.

    flock /tmp/heavy.lock .venv/bin/python -m bench.capacity.measure_reward [--step-call-only]

Neither predicted benchmark is run or read here. Four parts, each a component (`--step-call-only`:
the fourth alone, as the step rounds of bench.capacity.interleave run it):

1. forward: the similarity model (`SimilarityReward.score`, in-process, no server) on bench-reward's
   workload, consecutive items in file order as the benchmark sends them, at batch sizes 1..32. A line
   per_batch_s + per_pair_s x size is fitted to these timings (least squares over the sizes): the
   per-batch overhead and the per-pair cost.
2. step batch: the same model on one score call of the step's shape (the trainer's prompts file, 4
   prompts x 4 samples, completions of exactly the step's `max_tokens` policy tokens, each prompt's
   reference). Every round brings texts not seen before, as every step does. In-process: the forward.
3. service: the real reward server with bench-step's settings and models (bench/step_bench.py REWARDS),
   client in this process:
   - the step-shaped batches above sent to the `similarity` model, one call at a time, new texts each
     round (`step_call_seconds`: the call on a reward server alone, for comparison);
   - the service alone, on the `rules` model (its scoring costs microseconds): one client's latency
     for a request of 1 and of 16 items (gRPC, validation, the batcher's wait, replies), and, with 16
     clients, CPU seconds per request of server and client together (what competes with a forward
     for the cores).
4. step call: the step's Score call where the step makes it, what its score phase is predicted from:
   a policy server and a reward server as bench-step starts them (bench/stack.py), each step-shaped
   batch scored through the trainer's RewardClient right after one Generate of the step's shape
   (the trainer's prompts, sampling settings and request, services/trainer/rollout.py), as a sync step
   scores right after it generates. Then the same calls after a pause with the engine idle.

Why the step's call is timed beside the policy server and after a Generate, not on a reward server
alone: on these 2 cores the same calls took 0.34 s on a reward server alone, 0.41 s right after a
Generate and 0.38 s with the engine idle beside it (capacity.reward.json of 2026-12-04 14:29, medians
of 8, 8 and 4), and the step's score phase runs slower than the alone figure in every round. The texts
are not the cause: in a one-off probe the step's own completions and the batches above had the same
similarity-model lengths (mean 49 and 50 tokens) and took the same time in the same position.

Writes bench/results/capacity.reward.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.machine import RESULTS, machine
from bench.reward_bench import workload
from bench.stack import services
from bench.step_bench import REWARDS as STEP_REWARDS
from rlhf.v1 import reward_pb2, reward_pb2_grpc
from services.clients.policy import PolicyClient
from services.clients.reward import RewardClient
from services.common.client import open_aio_channel
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.process import ServerProcess, free_port
from services.common.prompts import PromptSampler, load_prompts
from services.reward.backend import RewardItem
from services.reward.similarity import SimilarityReward
from services.trainer.config import TrainerConfig
from services.trainer.rollout import SamplingSettings, generate

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
OUT = RESULTS / "capacity.reward.json"
SIZES = (1, 2, 4, 8, 16, 32)
STEP_PROMPTS, STEP_SAMPLES = 4, 4  # TrainerConfig defaults: the shape of one step's Score call


def bench_workload() -> list[RewardItem]:
    """bench/reward_bench.py's items (every chosen and rejected completion with its reference), same order."""

    items = workload(ROOT / "data" / "preferences.jsonl")
    return [RewardItem(i.prompt, i.completion, i.reference or None) for i in items]


def step_batches(max_tokens: int, rounds: int) -> list[list[RewardItem]]:
    """`rounds` score calls of the step's shape, each with prompts and completions not used before."""
    from transformers import AutoTokenizer

    policy = AutoTokenizer.from_pretrained(str(prepare_smollm2(DEFAULT_CACHE)))
    rows = [json.loads(line) for line in (ROOT / "data" / "book_reviews.jsonl").read_text().splitlines() if line]
    texts = []
    for line in (ROOT / "data" / "preferences.jsonl").read_text().splitlines():
        record = json.loads(line)
        texts += [record["chosen"], record["rejected"]]
    # The step's samples run to max_tokens (finish reason "length"), and most preference texts are shorter: each
    # completion is consecutive texts' tokens up to exactly max_tokens, as long as a step's sample (cutting single
    # texts gave batches a third cheaper to score than the step's own samples).
    tokens = [policy(t, add_special_tokens=False)["input_ids"] for t in texts]
    cut, pending = [], []
    for ids in tokens:
        pending += ids
        if len(pending) >= max_tokens:
            cut.append(policy.decode(pending[:max_tokens]))
            pending = []
    batches, used = [], 0
    for index in range(rounds):
        batch = []
        for row in rows[(index * STEP_PROMPTS) % len(rows) :][:STEP_PROMPTS]:
            for _ in range(STEP_SAMPLES):
                batch.append(RewardItem(row["prompt"], cut[used % len(cut)], row["reference"]))
                used += 1
        batches.append(batch)
    return batches


def fit_line(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (size, seconds)."""
    slope, intercept = np.polyfit(np.array(sizes, float), np.array(seconds, float), 1)
    return float(intercept), float(slope)


def measure_forward(repeats: int) -> dict:

    model = SimilarityReward("similarity")
    items = bench_workload()
    model.score(items[:32])  # warm-up
    by_size = {}
    for size in SIZES:
        times = []
        for r in range(repeats):
            start = (r * size) % len(items)
            batch = [items[(start + k) % len(items)] for k in range(size)]
            started = time.perf_counter()
            model.score(batch)
            times.append(time.perf_counter() - started)
        by_size[size] = statistics.median(times)
        log.info("forward batch=%d: %.1f ms (median of %d)", size, by_size[size] * 1000, repeats)
    per_batch, per_pair = fit_line(list(by_size), list(by_size.values()))
    counted = items[:256]
    started = time.perf_counter()
    model.token_lengths(counted)
    count_s = (time.perf_counter() - started) / len(counted)
    return {
        "what": "SimilarityReward.score in-process, bench-reward's items in file order (all-MiniLM-L6-v2)",
        "repeats": repeats,
        "seconds_by_batch": {str(k): round(v, 5) for k, v in by_size.items()},
        "per_batch_s": round(per_batch, 5),
        "per_pair_s": round(per_pair, 6),
        "fit": "least squares of seconds_by_batch against the batch size",
        "token_count_s_per_item": round(count_s, 6),
        "token_lengths": model.token_lengths(items),
        "_model": model,
    }


def _timed_scores(model, batches: list[list[RewardItem]]) -> list[float]:
    seconds = []
    for batch in batches:
        started = time.perf_counter()
        model.score(batch)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure_step_batch(model, batches: list[list[RewardItem]]) -> dict:
    """The step-shaped call in-process (the forward alone); the first batch warms up and is left out."""
    model.score(batches[0])
    seconds = _timed_scores(model, batches[1:])
    log.info("step batch (%d items): %.1f ms median in-process", len(batches[1]), statistics.median(seconds) * 1000)
    return {
        "what": f"one score call of the step's shape: {STEP_PROMPTS} prompts x {STEP_SAMPLES} samples, completions "
        "of the step's max_tokens SmolLM2 tokens, new texts each round, in-process",
        "items": len(batches[1]),
        "seconds": [round(x, 4) for x in seconds],
        "seconds_median": round(statistics.median(seconds), 5),
    }


def score_items(batch: list[RewardItem]) -> list[reward_pb2.ScoreItem]:
    """A batch as the Score request's items."""
    return [reward_pb2.ScoreItem(prompt=i.prompt, completion=i.completion, reference=i.reference) for i in batch]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _service_levels(address: str, server_pid: int, requests: int, step_batches: list[list[RewardItem]]) -> dict:

    one, sixteen = score_items(step_batches[0][:1]), score_items(step_batches[0])
    async with open_aio_channel(address) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        step_calls = []
        for batch in step_batches:  # the first warms the model up and is left out
            started = time.perf_counter()
            await stub.Score(reward_pb2.ScoreRequest(model="similarity", items=score_items(batch)), timeout=60)
            step_calls.append(time.perf_counter() - started)
        step_calls = step_calls[1:]

        async def latency(items, count: int) -> float:
            times = []
            for _ in range(count):
                started = time.perf_counter()
                await stub.Score(reward_pb2.ScoreRequest(model="rules", items=items), timeout=60)
                times.append(time.perf_counter() - started)
            return statistics.fmean(times)

        await latency(one, 32)  # warm-up
        single = await latency(one, requests)
        step = await latency(sixteen, requests // 4)
        clients, done = 16, 0

        async def client() -> None:
            nonlocal done
            while done < requests:
                done += 1
                await stub.Score(reward_pb2.ScoreRequest(model="rules", items=one), timeout=60)

        server_cpu, client_cpu, started = _cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
        server_cpu, client_cpu = _cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    return {
        "step_call_what": "the step's Score call: step-shaped batches (new texts each round) to the similarity model, "
        "one at a time, timed at the client",
        "step_call_seconds": [round(x, 4) for x in step_calls],
        "step_call_seconds_median": round(statistics.median(step_calls), 5),
        "latency_1_item_s": round(single, 5),
        "latency_step_items_s": round(step, 5),
        "step_items": len(sixteen),
        "clients": clients,
        "requests": requests,
        "requests_per_s": round(requests / wall, 1),
        "server_cpu_s_per_request": round(server_cpu / requests, 6),
        "client_cpu_s_per_request": round(client_cpu / requests, 6),
        "cpu_s_per_request": round((server_cpu + client_cpu) / requests, 6),
    }


def measure_service(requests: int, step_batches: list[list[RewardItem]]) -> dict:
    with tempfile.TemporaryDirectory(prefix="capacity-reward-") as tmp:
        models = Path(tmp) / "models.toml"
        models.write_text(STEP_REWARDS)
        port = free_port()
        address = f"127.0.0.1:{port}"
        args = ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(free_port()),
                "--models-file", str(models), "--log-level", "WARNING"]  # fmt: skip
        server = ServerProcess("services.reward", args, Path(tmp) / "reward.log", env={"HF_HUB_OFFLINE": "1"})
        server.start(address, 300)
        try:
            result = asyncio.run(_service_levels(address, server.process.pid, requests, step_batches))
        finally:
            server.stop()
    log.info("service: %s", result)
    return {
        "what": "reward server with bench-step's settings and models (similarity for the step's call, rules for the "
        "service alone); client in this process",
        **result,
    }


def measure_step_call(batches: list[list[RewardItem]], idle_rounds: int, idle_pause_s: float) -> dict:
    """The step's Score call beside a policy server, each right after a step-shaped Generate (see 4. above).

    `batches`: the first warms both servers up and is left out; the rest are timed after a Generate, then
    the first `idle_rounds` of them again after `idle_pause_s` with no Generate before.
    """
    model_dir = str(prepare_smollm2(DEFAULT_CACHE))
    config = TrainerConfig(model=model_dir)
    s = config.sampling
    settings = SamplingSettings.of(s, config.apply_chat_template, config.run.seed)
    if len(batches[0]) != s.prompts_per_step * s.samples_per_prompt:
        raise ValueError(f"step batches hold {len(batches[0])} items, the step scores {s.prompts_per_step} x "
                         f"{s.samples_per_prompt}")  # fmt: skip
    sampler = PromptSampler(load_prompts(ROOT / config.prompts_file), config.run.seed)

    def timed_score(reward: RewardClient, batch: list[RewardItem]) -> float:
        started = time.perf_counter()
        reward.score("similarity", score_items(batch))
        return time.perf_counter() - started

    after_generate, idle = [], []
    with tempfile.TemporaryDirectory(prefix="capacity-step-call-") as tmp:
        with services(model_dir, STEP_REWARDS, Path(tmp) / "logs", label="measure_reward") as stack:
            policy, reward = PolicyClient(stack.policy[0], 300.0, 3), RewardClient(stack.reward)
            try:
                for index, batch in enumerate(tqdm(batches, desc="step calls after a Generate", unit="call")):
                    generate(policy, sampler.next_batch(s.prompts_per_step), settings, index, "capacity")
                    after_generate.append(timed_score(reward, batch))
                for batch in batches[1 : idle_rounds + 1]:
                    time.sleep(idle_pause_s)
                    idle.append(timed_score(reward, batch))
            finally:
                policy.close()
                reward.close()
    after_generate = after_generate[1:]
    log.info("step call: %.1f ms after a Generate, %.1f ms with the engine idle (medians)",
             statistics.median(after_generate) * 1000, statistics.median(idle) * 1000)  # fmt: skip
    return {
        "what": "the step's Score call (step-shaped batches, the similarity model, the trainer's RewardClient) with "
        "a policy server and a reward server as bench-step starts them, each call right after one Generate of the "
        "step's shape; then some again after a pause with the engine idle",
        "items": len(batches[1]),
        "after_generate_seconds": [round(x, 4) for x in after_generate],
        "after_generate_seconds_median": round(statistics.median(after_generate), 5),
        "idle_pause_s": idle_pause_s,
        "idle_seconds": [round(x, 4) for x in idle],
        "idle_seconds_median": round(statistics.median(idle), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="Timed batches per batch size (median taken).")
    parser.add_argument("--step-rounds", type=int, default=8, help="Step-shaped score calls timed.")
    parser.add_argument("--idle-rounds", type=int, default=4, help="Step-shaped calls timed with the engine idle.")
    parser.add_argument("--idle-pause-s", type=float, default=3.0, help="Pause before each of those calls.")
    parser.add_argument("--requests", type=int, default=256, help="Requests per service measurement.")
    parser.add_argument("--max-tokens", type=int, default=48, help="The step's completion tokens (TrainerConfig).")
    parser.add_argument(
        "--step-call-only",
        action="store_true",
        help="Measure part 4 alone (the step's score input; what the step rounds of bench.capacity.interleave need).",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="Result file.")
    args = parser.parse_args()
    for flag, value, least in (
        ("--repeats", args.repeats, 1),
        ("--step-rounds", args.step_rounds, 1),
        ("--idle-rounds", args.idle_rounds, 1),
        ("--requests", args.requests, 4),  # a quarter of them time the 16-item requests
    ):
        if value < least:
            parser.error(f"{flag} must be >= {least}, got {value}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    load_start = os.getloadavg()
    batches = step_batches(args.max_tokens, 2 * (args.step_rounds + 1))
    parts = {}
    if not args.step_call_only:
        forward = measure_forward(args.repeats)
        model = forward.pop("_model")
        parts["step_batch"] = measure_step_batch(model, batches[: args.step_rounds + 1])
        del model
        parts["forward"] = forward
        parts["service"] = measure_service(args.requests, batches[args.step_rounds + 1 :])
    parts["step_call"] = measure_step_call(batches[: args.step_rounds + 1], args.idle_rounds, args.idle_pause_s)
    result = {
        "benchmark": "capacity.reward",
        "command": "flock /tmp/heavy.lock .venv/bin/python -m bench.capacity.measure_reward"
        + (" --step-call-only" if args.step_call_only else ""),
        "machine": {**machine(), "torch_threads": torch.get_num_threads()},
        **parts,
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("-> %s", args.out)


if __name__ == "__main__":
    main()
