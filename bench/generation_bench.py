"""Generation throughput: the policy service over gRPC vs the same vLLM engine in-process vs HF generate().

    python -m bench.generation_bench [--prompts 32] [--max-tokens 64] [--model DIR]

The service's overhead is the ratio of its tokens/s to the in-process engine's
(target: within 10%). All three run one after another on the same model and prompts,
sampling at temperature 1 with fixed seeds and exactly max_tokens per sample (EOS
ignored), so each does the same work; tokens are the ones actually generated.
Writes bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from pathlib import Path

from bench.machine import write_result
from services.common.model_store import prepare_smollm2
from services.common.process import ServerProcess, free_port
from services.common.prompts import load_prompts

log = logging.getLogger("bench.generation")


def chat_ids(model_dir: str, prompts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        out.append(list(ids if isinstance(ids, list) else ids["input_ids"]))
    return out


ROUNDS = 3  # timed batches per contender; the median counts (one batch varies by several percent here)


def summarize(name: str, rounds: list[tuple[float, int]]) -> dict:
    rates = sorted(tokens / seconds for seconds, tokens in rounds)
    return {
        "name": name,
        "rounds": [{"seconds": round(s, 3), "output_tokens": t} for s, t in rounds],
        "output_tokens": rounds[0][1],
        "tokens_per_s": round(statistics.median(rates), 2),
    }


def through_service(model_dir: str, prompt_ids: list[list[int]], max_tokens: int, log_dir: Path) -> dict:
    from rlhf.v1 import policy_pb2, policy_pb2_grpc
    from services.common.client import open_channel

    port = free_port()
    server = ServerProcess(
        "services.policy", ["--model", model_dir, "--port", str(port), "--metrics-port", "0"], log_dir / "policy.log"
    )
    server.start(f"127.0.0.1:{port}", 600)
    try:
        with open_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)

            def run(ids, seed):
                request = policy_pb2.GenerateRequest(
                    prompts=[policy_pb2.Prompt(token_ids=p) for p in ids],
                    sampling=policy_pb2.SamplingParams(
                        max_tokens=max_tokens, temperature=1.0, seed=seed, ignore_eos=True
                    ),
                )
                return stub.Generate(request, timeout=900)

            run(prompt_ids[:2], 0)  # warm-up
            rounds = []
            for seed in range(1, ROUNDS + 1):
                started = time.perf_counter()
                reply = run(prompt_ids, seed)
                rounds.append(
                    (time.perf_counter() - started, sum(len(s.token_ids) for r in reply.results for s in r.samples))
                )
        return summarize("policy service (gRPC Generate)", rounds)
    finally:
        server.stop()


def in_process(model_dir: str, prompt_ids: list[list[int]], max_tokens: int) -> dict:
    from services.policy.config import PolicyConfig
    from services.policy.engine import VllmEngine
    from services.policy.sampling import SamplingSpec

    engine = VllmEngine(PolicyConfig(model=model_dir), model_dir)
    engine.start()

    async def one(i: int, ids: list[int], seed: int) -> int:
        spec = SamplingSpec(1, max_tokens, 1.0, 1.0, 0, seed + i, (), ignore_eos=True)
        count = 0
        async for delta in engine.generate(f"bench-{seed}-{i}", ids, spec, 0):
            count += len(delta.token_ids)
        return count

    async def run(ids: list[list[int]], seed: int) -> int:
        return sum(await asyncio.gather(*(one(i, p, seed) for i, p in enumerate(ids))))

    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(run(prompt_ids[:2], 0))
        rounds = []
        for seed in range(1, ROUNDS + 1):
            started = time.perf_counter()
            tokens = loop.run_until_complete(run(prompt_ids, seed))
            rounds.append((time.perf_counter() - started, tokens))
        loop.close()
    finally:
        engine.shutdown()
    return summarize("same vLLM engine in-process (AsyncLLM)", rounds)


def hf_generate(model_dir: str, prompt_ids: list[list[int]], max_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompt_ids)
    batch = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    torch.manual_seed(1)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=batch,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            pad_token_id=pad,
        )
    seconds = time.perf_counter() - started
    tokens = 0
    for row in out[:, width:].tolist():
        tokens += next((i + 1 for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
    return {
        "name": "transformers generate() (fp32, one batch)",
        "seconds": round(seconds, 3),
        "output_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="concurrent prompts (one batch)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default="", help="checkpoint dir (default: SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--output", type=Path, default=None, help="Result file instead of bench/results/generation.json."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model_dir = args.model or str(prepare_smollm2())
    rows = load_prompts(Path("data/book_reviews.jsonl"))
    prompt_ids = chat_ids(model_dir, [rows[i % len(rows)].prompt for i in range(args.prompts)])
    log_dir = Path("bench/results/logs")
    print(f"[generation] {args.prompts} prompts x {args.max_tokens} tokens on {model_dir}", flush=True)
    service = through_service(model_dir, prompt_ids, args.max_tokens, log_dir)
    print(f"[generation] service:    {service['tokens_per_s']} tok/s", flush=True)
    engine = in_process(model_dir, prompt_ids, args.max_tokens)
    print(f"[generation] in-process: {engine['tokens_per_s']} tok/s", flush=True)
    hf = hf_generate(model_dir, prompt_ids, args.max_tokens)
    print(f"[generation] HF generate: {hf['tokens_per_s']} tok/s", flush=True)
    ratio = service["tokens_per_s"] / engine["tokens_per_s"]
    path = write_result(
        "generation",
        {
            "workload": {
                "prompts": args.prompts,
                "max_tokens": args.max_tokens,
                "model": model_dir,
                "temperature": 1.0,
            },
            "baseline": engine,
            "candidate": service,
            "ratio": round(ratio, 3),
            "ratio_meaning": "service tokens/s over in-process engine tokens/s (1.0 = no overhead)",
            "hf_generate": hf,
            "ratio_vs_hf_generate": round(service["tokens_per_s"] / hf["tokens_per_s"], 3),
        },
        args.output,
    )
    print(
        f"[generation] service/in-process = {ratio:.3f}; service/HF generate = {service['tokens_per_s'] / hf['tokens_per_s']:.2f} -> {path}"
    )


if __name__ == "__main__":
    main()
