"""Load sweep: the policy and reward services under rising concurrency, with vLLM-style serving metrics.

    python -m bench.load_bench [--model DIR] [--concurrency 1,4,16] [--duration-s 20]   (make bench-load)

Starts the policy (SmolLM2-135M-Instruct from the model cache, or --model) and the
reward service (similarity on MiniLM) on loopback, then runs a closed-loop sweep
against each with the loadtest package: GenerateStream on the book-review prompts,
Score with one item per request. Per level it records the client-side numbers
(`vllm bench serve` definitions), the server-side means of the same level (read
from the service's Prometheus histograms before and after it) and ratios against
the first level measured in the same run. Writes bench/results/load.json,
load.png (policy) and load-reward.png.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
from pathlib import Path

from bench.machine import RESULTS, write_result
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.process import ServerProcess, free_port
from services.loadtest.config import LoadTestConfig
from services.loadtest.driver import run_load_test
from services.loadtest.plot import plot_sweep
from services.loadtest.report import format_sweep
from services.loadtest.runner import LoadShape
from services.loadtest.server_metrics import mean_between, scrape_histograms

# Server-side histograms (seconds) reported per level as means in ms, named apart from the client's.
SERVER_MEANS = {
    "policy": {
        "server_ttft_ms": "rlhf_policy_time_to_first_token_seconds",
        "server_itl_ms": "rlhf_policy_inter_token_latency_seconds",
        "server_tpot_ms": "rlhf_policy_request_time_per_output_token_seconds",
        "server_e2e_ms": "rlhf_policy_e2e_request_latency_seconds",
        "vllm_ttft_ms": "vllm:time_to_first_token_seconds",
        "vllm_itl_ms": "vllm:inter_token_latency_seconds",
    },
    "reward": {"server_batch_ms": "rlhf_reward_batch_seconds"},
}


def _stats(level: dict, metric: str) -> dict | None:
    if level[f"mean_{metric}_ms"] is None:
        return None
    return {
        "mean": level[f"mean_{metric}_ms"],
        "p50": level[f"p50_{metric}_ms"],
        "p90": level[f"p90_{metric}_ms"],
        "p99": level[f"p99_{metric}_ms"],
    }


def _row(level: dict, server: dict) -> dict:
    """The bench's per-level record; the full vLLM-keyed report stays under `vllm_bench_serve`."""
    return {
        "concurrency": level["load"]["concurrency"],
        "completed": level["completed"],
        "failed": level["failed"],
        "duration_s": level["duration"],
        "request_throughput": level["request_throughput"],
        "output_token_throughput": level["output_throughput"],
        "ttft_ms": _stats(level, "ttft"),
        "tpot_ms": _stats(level, "tpot"),
        "itl_ms": _stats(level, "itl"),
        "e2e_ms": _stats(level, "e2el"),
        "errors": level["errors"],
        "server_side_mean": server,
        "vllm_bench_serve": level,
    }


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _add_ratios(rows: list[dict]) -> None:
    """Each level against the first (the baseline measured in the same run)."""
    base = rows[0]
    for row in rows:
        row["vs_first_level"] = {
            "request_throughput": _ratio(row["request_throughput"], base["request_throughput"]),
            "p50_e2e_ms": _ratio((row["e2e_ms"] or {}).get("p50"), (base["e2e_ms"] or {}).get("p50")),
        }


def markdown_table(rows: list[dict], scored: bool = False) -> str:
    """The README's table: per level, throughput and p50 / p99 latencies in ms."""

    def pair(stats: dict | None) -> str:
        return "–" if stats is None else f"{stats['p50']:.0f} / {stats['p99']:.0f}"

    rate = "items/s" if scored else "output tok/s"
    lines = [
        f"| concurrency | req/s | {rate} | TTFT p50 / p99 | TPOT p50 / p99 | ITL p50 / p99 | E2E p50 / p99 | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        level = row["vllm_bench_serve"]
        throughput = level["item_throughput"] if scored else row["output_token_throughput"]
        errors = ", ".join(f"{code} {count}" for code, count in row["errors"].items()) or "0"
        lines.append(
            f"| {row['concurrency']} | {row['request_throughput']:.2f} | {throughput:.1f} | {pair(row['ttft_ms'])} | "
            f"{pair(row['tpot_ms'])} | {pair(row['itl_ms'])} | {pair(row['e2e_ms'])} | {errors} |"
        )
    return "\n".join(lines)


def sweep(service: str, config: LoadTestConfig, levels: list[int], metrics_url: str) -> tuple[list[dict], list[dict]]:
    """One closed-loop level per concurrency, after one warm-up kept out of every level's numbers."""
    asyncio.run(run_load_test(service, config, []))
    level_config = dataclasses.replace(config, warmup_requests=0)
    rows, reports = [], []
    for concurrency in levels:
        before = scrape_histograms(metrics_url)
        (report,) = asyncio.run(run_load_test(service, level_config, [LoadShape(concurrency=concurrency)]))
        after = scrape_histograms(metrics_url)
        server = {key: mean_between(before, after, name, 1000.0) for key, name in SERVER_MEANS[service].items()}
        reports.append(report)
        rows.append(_row(report, server))
    _add_ratios(rows)
    return rows, reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="", help="policy checkpoint dir (default: SmolLM2-135M-Instruct, converted once)"
    )
    parser.add_argument("--concurrency", default="1,4,16", help="policy levels (requests in flight)")
    parser.add_argument("--reward-concurrency", default="1,4,16", help="reward levels")
    parser.add_argument("--duration-s", type=float, default=25.0, help="seconds of sending per policy level")
    parser.add_argument("--reward-duration-s", type=float, default=8.0, help="seconds of sending per reward level")
    parser.add_argument("--output-len", type=int, default=32, help="max_tokens per policy request")
    parser.add_argument("--start-timeout-s", type=float, default=600.0)
    parser.add_argument(
        "--output", type=Path, default=None, help="Result file instead of bench/results/load.json (plots not drawn)."
    )
    args = parser.parse_args()
    policy_levels = [int(c) for c in args.concurrency.split(",")]
    reward_levels = [int(c) for c in args.reward_concurrency.split(",")]

    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    model_dir = args.model or str(prepare_smollm2(DEFAULT_CACHE))
    logs = RESULTS / "logs"
    policy_port, policy_metrics, reward_port, reward_metrics = (free_port() for _ in range(4))
    policy = ServerProcess(
        "services.policy",
        ["--model", model_dir, "--port", str(policy_port), "--metrics-port", str(policy_metrics)],
        logs / "load-policy.log",
    )
    reward = ServerProcess(
        "services.reward", ["--port", str(reward_port), "--metrics-port", str(reward_metrics)], logs / "load-reward.log"
    )
    policy_address, reward_address = f"127.0.0.1:{policy_port}", f"127.0.0.1:{reward_port}"
    try:
        print(f"[bench-load] starting policy ({model_dir}) and reward services; logs in {logs}", flush=True)
        policy.launch()
        reward.launch()
        reward.wait_serving(reward_address, args.start_timeout_s, progress="[bench-load] reward")
        policy.wait_serving(policy_address, args.start_timeout_s, progress="[bench-load] policy")
        print(f"[bench-load] both SERVING after {time.perf_counter() - started:.0f} s", flush=True)
        policy_config = LoadTestConfig(
            target=policy_address,
            duration_s=args.duration_s,
            output_len=args.output_len,
            warmup_requests=2,
            timeout_s=120,
        )
        reward_config = LoadTestConfig(
            target=reward_address, rpc="Score", duration_s=args.reward_duration_s, warmup_requests=4, timeout_s=30
        )
        policy_url, reward_url = (f"http://127.0.0.1:{port}/metrics" for port in (policy_metrics, reward_metrics))
        policy_rows, policy_reports = sweep("policy", policy_config, policy_levels, policy_url)
        reward_rows, reward_reports = sweep("reward", reward_config, reward_levels, reward_url)
    finally:
        codes = {"policy": policy.stop(), "reward": reward.stop()}

    print(f"\npolicy GenerateStream (book-review prompts, max_tokens={args.output_len}):")
    print(format_sweep(policy_reports))
    print("\nreward Score (similarity, 1 item per request):")
    print(format_sweep(reward_reports))
    print("\n" + markdown_table(policy_rows) + "\n\n" + markdown_table(reward_rows, scored=True))
    if args.output is None:  # the plots belong to load.json
        plot_sweep(
            policy_reports,
            "concurrency",
            "concurrency (requests in flight)",
            RESULTS / "load.png",
            f"policy GenerateStream, {Path(model_dir).name}, max_tokens={args.output_len}",
        )
        plot_sweep(
            reward_reports,
            "concurrency",
            "concurrency (requests in flight)",
            RESULTS / "load-reward.png",
            "reward Score (similarity, 1 item per request)",
        )
    path = write_result(
        "load",
        {
            "command": "make bench-load",
            "compared": "policy GenerateStream output tokens/s at the highest concurrency (candidate) vs one request at a time (baseline)",
            "baseline": {
                "concurrency": policy_rows[0]["concurrency"],
                "output_token_throughput": policy_rows[0]["output_token_throughput"],
            },
            "candidate": {
                "concurrency": policy_rows[-1]["concurrency"],
                "output_token_throughput": policy_rows[-1]["output_token_throughput"],
            },
            "ratio": _ratio(policy_rows[-1]["output_token_throughput"], policy_rows[0]["output_token_throughput"]),
            "ratio_meaning": "continuous batching gain: output tokens/s at the highest concurrency over concurrency 1",
            "policy": {
                "model": model_dir,
                "rpc": "GenerateStream",
                "settings": {
                    "dataset": "data/book_reviews.jsonl",
                    "chat_template": True,
                    "max_tokens": args.output_len,
                    "temperature": 1.0,
                    "duration_s_per_level": args.duration_s,
                },
                "levels": policy_rows,
            },
            "reward": {
                "model": "similarity",
                "rpc": "Score",
                "settings": {"items_per_request": 1, "duration_s_per_level": args.reward_duration_s},
                "levels": reward_rows,
            },
            "service_exit_codes": codes,
            # The 2-core box may be shared: 1-minute load averages before and after say how much.
            "host_load_avg_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
            "wall_s": round(time.perf_counter() - started, 1),
        },
        args.output,
    )
    plots = "" if args.output else f", {RESULTS / 'load.png'}, {RESULTS / 'load-reward.png'}"
    print(f"\n[bench-load] wrote {path}{plots} in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
