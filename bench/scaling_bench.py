"""Scaling out: generation throughput and push time with 1 vs 2 policy replicas on this machine.

    python -m bench.scaling_bench [--prompts 16] [--max-tokens 64] [--rounds 3]

Baseline: one SmolLM2-135M policy replica on all cores, driven through the trainer's
client (services/clients/policy.py); candidate: two replicas, each bound to its own
half of the cores, through the same client, which splits each batch over them and
pushes every version to both in parallel. On a CPU box both replicas share the same cores, so expect a
ratio near 1 (the CPU is the limit, not the service); with one GPU per replica the
replicas share nothing and the projection in the result spells out the arithmetic.
Writes bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import os
import time

from bench.machine import RESULTS, write_result
from bench.stack import services
from rlhf.v1 import policy_pb2
from services.clients.policy import PolicyClient
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.prompts import load_prompts

REWARDS = '[[models]]\nname = "rules"\nkind = "rules"\ntarget_words = 30\n'


def measure(addresses: list[str], prompts: list[str], max_tokens: int, rounds: int, weights: list) -> dict:
    client = PolicyClient(addresses, timeout_s=600, retries=1)
    try:
        client.status()
        request = policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(text=p) for p in prompts],
            sampling=policy_pb2.SamplingParams(n=1, max_tokens=max_tokens, temperature=1.0, ignore_eos=True, seed=1),
        )
        client.generate(request)  # warm-up
        tokens, started = 0, time.perf_counter()
        for _ in range(rounds):
            reply = client.generate(request)
            tokens += sum(len(s.token_ids) for r in reply.results for s in r.samples)
        generate_s = time.perf_counter() - started
        started = time.perf_counter()
        pushed = client.push(weights, 4 << 20, client.version, "scaling bench")
        push_s = time.perf_counter() - started
        served = {r.address: r.status().weight_version for r in client.replicas}
        assert set(served.values()) == {pushed.weight_version}, served
        return {
            "replicas": len(addresses),
            "tokens": tokens,
            "generate_s": round(generate_s, 2),
            "tokens_per_s": round(tokens / generate_s, 1),
            "push_s": round(push_s, 2),
            "push_bytes": pushed.total_bytes,
        }
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16, help="Prompts per Generate batch.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Tokens per sample (ignore_eos: exactly this many).")
    parser.add_argument("--rounds", type=int, default=3, help="Timed batches per configuration.")
    args = parser.parse_args()
    from safetensors.torch import load_file

    model_dir = str(prepare_smollm2(DEFAULT_CACHE))
    weights = list(load_file(os.path.join(model_dir, "model.safetensors")).items())
    prompts = [row.prompt for row in load_prompts("data/book_reviews.jsonl")][: args.prompts]
    cores = os.cpu_count() or 1
    with services(model_dir, REWARDS, RESULTS / "logs" / "scaling-1", replicas=1, label="scaling") as stack:
        one = measure(stack.policy, prompts, args.max_tokens, args.rounds, weights)
        print(f"[scaling] 1 replica on all {cores} cores: {one}", flush=True)
    # two engines spinning on the same cores thrash: each replica gets its own half of them
    halves = (
        [f"{i * cores // 2}-{(i + 1) * cores // 2 - 1}" if cores > 2 else str(i) for i in range(2)]
        if cores > 1
        else ["0", "0"]
    )
    binding = [["--cpu-threads-bind", half] for half in halves]
    with services(
        model_dir, REWARDS, RESULTS / "logs" / "scaling-2", replicas=2, label="scaling", policy_args=binding
    ) as stack2:
        two = measure(stack2.policy, prompts, args.max_tokens, args.rounds, weights)
        two["cpu_binding"] = halves
        print(f"[scaling] 2 replicas on cores {halves}: {two}", flush=True)
    ratio = two["tokens_per_s"] / one["tokens_per_s"]
    result = {
        "compared": "generation tokens/s through the trainer's client, 2 policy replicas (candidate) vs 1 (baseline), same machine",
        "model": "SmolLM2-135M-Instruct",
        "baseline": one,
        "candidate": two,
        "ratio": round(ratio, 3),
        "ratio_meaning": "tokens/s with 2 replicas over 1; the push row shows the cost of pushing to both in parallel",
        "limit": f"both replicas share this machine's {cores} CPU cores (each bound to its own half), so a second replica "
        "adds no compute; the binding keeps the two engines' threads off each other's cores (an unbound "
        "2-replica run is not measured here)",
        "projection_gpu": {
            "assumption": "one GPU per replica; a replica's throughput t1 does not depend on the others; the client's split "
            "costs one extra Generate call per replica per batch (gRPC overhead, see generation.json)",
            "formula": "t_N = N * t1 * (1 - overhead), overhead = 1 - generation.json ratio",
            "push": "pushes go to all replicas in parallel: push_N ~= push_1 while the trainer's uplink is not the limit; "
            "with a shared uplink of B GB/s, push_N ~= N * model_bytes / B",
        },
        "service_exit_codes": {"one_replica": stack.exit_codes, "two_replicas": stack2.exit_codes},
    }
    path = write_result("scaling", result)
    print(f"[scaling] 2/1 replicas = {ratio:.3f} -> {path}")


if __name__ == "__main__":
    main()
