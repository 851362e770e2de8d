"""Weight push: seconds from the trainer's send to the new version serving, vs the same bytes via disk.

    python -m bench.push_bench [--synthetic-params 1e9] [--repeats 3]

Candidate: `PushWeights` over gRPC into a running policy service (stream, verify,
stage, drain, in-place load, version bump), timed at the client. Baseline: the
same tensors written to a safetensors file on disk and loaded into the same kind
of engine in-process (what a filesystem-based sync does). Run for the default
SmolLM2-135M (fp32) and a synthetic Llama of ~1B parameters in bfloat16.
Writes bench/results/push.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.machine import RESULTS, write_result
from services.common.model_store import prepare_smollm2, smollm2_gguf
from services.common.process import ServerProcess, free_port


def synthetic_llama(path: Path, params: float) -> Path:
    """A random Llama with about `params` parameters in bfloat16 (built directly, no init pass)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (path / "model.safetensors").is_file():
        return path
    hidden, inter = 2048, 5632
    per_layer = 4 * hidden * hidden * 0.5 + 2 * hidden * hidden + 3 * hidden * inter
    layers = max(1, round((params - 49152 * hidden) / per_layer))
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(config).named_parameters()}
    generator = torch.Generator().manual_seed(0)
    tensors = {n: (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    config.save_pretrained(path)
    gguf = smollm2_gguf()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(path)
    return path


def load_tensors(model_dir: Path) -> list:
    from safetensors import safe_open

    out = []
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            out.extend((name, handle.get_tensor(name)) for name in handle.keys())
    return out


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_subset(tensors: list) -> list:
    """What a LoRA run on q/k/v/o pushes with push_scope=changed: those weights (q/k/v are one fused unit)."""
    return [(n, t) for n, t in tensors if any(f".{target}." in n for target in LORA_TARGETS)]


def grpc_push(
    model_dir: Path, tensors: list, dtype: str, repeats: int, log: Path, partial: list | None = None
) -> tuple[list[float], list[float]]:
    from rlhf.v1 import policy_pb2_grpc
    from services.common.client import open_channel
    from services.common.weight_stream import push_requests

    port = free_port()
    args = [
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--metrics-port",
        "0",
        "--dtype",
        dtype,
        "--max-model-len",
        "256",
        "--cpu-kvcache-gib",
        "1",
    ]
    server = ServerProcess("services.policy", args, log).start(f"127.0.0.1:{port}", 900)
    try:
        with open_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            seconds = []
            for i in range(repeats):
                started = time.perf_counter()
                reply = stub.PushWeights(push_requests(tensors, note=f"bench {i}"), timeout=1800)
                seconds.append(time.perf_counter() - started)
                assert reply.weight_version == i + 1
            partial_seconds = []
            for i in range(repeats if partial else 0):
                started = time.perf_counter()
                stub.PushWeights(push_requests(partial, note=f"bench lora {i}"), timeout=1800)
                partial_seconds.append(time.perf_counter() - started)
        return seconds, partial_seconds
    finally:
        server.stop()


def disk_reload(
    model_dir: Path, tensors: list, dtype: str, repeats: int, partial: list | None = None
) -> tuple[list[float], list[float]]:
    from safetensors.torch import save_file

    from services.policy.config import PolicyConfig
    from services.policy.engine import VllmEngine

    engine = VllmEngine(
        PolicyConfig(model=str(model_dir), dtype=dtype, max_model_len=256, cpu_kvcache_gib=1), str(model_dir)
    )
    engine.start()
    loop = asyncio.new_event_loop()
    seconds: dict[str, list[float]] = {"full": [], "partial": []}
    try:
        with tempfile.TemporaryDirectory(dir=RESULTS) as scratch:  # on disk, not tmpfs
            for kind, items in (("full", tensors), ("partial", partial or [])):
                for i in range(repeats if items else 0):
                    path = Path(scratch) / f"{kind}-{i}.safetensors"
                    started = time.perf_counter()
                    save_file(dict(items), str(path))
                    loop.run_until_complete(engine.load_weights(str(path)))
                    seconds[kind].append(time.perf_counter() - started)
                    path.unlink()
    finally:
        loop.close()
        engine.shutdown()
    return seconds["full"], seconds["partial"]


def measure(label: str, model_dir: Path, dtype: str, repeats: int, with_lora: bool = False) -> dict:
    tensors = load_tensors(model_dir)
    partial = lora_subset(tensors) if with_lora else None
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    params = sum(t.numel() for _, t in tensors)
    print(f"[push] {label}: {params / 1e6:.0f} M params, {total / 1e9:.2f} GB ({dtype})", flush=True)
    pushes, partial_pushes = grpc_push(
        model_dir, tensors, dtype, repeats, RESULTS / "logs" / f"push-{label}.log", partial
    )
    candidate = statistics.median(pushes)
    print(f"[push] {label}: gRPC push {candidate:.2f} s ({total / candidate / 1e9:.2f} GB/s)", flush=True)
    reloads, partial_reloads = disk_reload(model_dir, tensors, dtype, repeats, partial)
    baseline = statistics.median(reloads)
    print(f"[push] {label}: disk write+reload {baseline:.2f} s ({total / baseline / 1e9:.2f} GB/s)", flush=True)
    lora = None
    if partial:
        size = sum(t.numel() * t.element_size() for _, t in partial)
        lora = {
            "what": f"the tensors a LoRA run on {'/'.join(LORA_TARGETS)} pushes (push_scope=changed, merged weights)",
            "tensors": len(partial),
            "bytes": size,
            "grpc_seconds": round(statistics.median(partial_pushes), 3),
            "disk_seconds": round(statistics.median(partial_reloads), 3),
            "ratio": round(statistics.median(partial_reloads) / statistics.median(partial_pushes), 3),
        }
        print(
            f"[push] {label} LoRA subset ({size / 1e6:.0f} MB): gRPC {lora['grpc_seconds']} s, disk {lora['disk_seconds']} s",
            flush=True,
        )
    return {
        "lora_push": lora,
        "model": label,
        "parameters": params,
        "bytes": total,
        "dtype": dtype,
        "baseline": {
            "name": "safetensors to disk + in-place reload",
            "seconds": round(baseline, 3),
            "gb_per_s": round(total / baseline / 1e9, 3),
        },
        "candidate": {
            "name": "PushWeights over gRPC (send -> new version serving)",
            "seconds": round(candidate, 3),
            "gb_per_s": round(total / candidate / 1e9, 3),
        },
        "ratio": round(baseline / candidate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-params", type=float, default=1e9, help="size of the synthetic model (0 skips it)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = [measure("smollm2-135m", prepare_smollm2(), "float32", args.repeats, with_lora=True)]
    if args.synthetic_params > 0:
        synthetic = synthetic_llama(
            RESULTS / "models" / f"synthetic-{args.synthetic_params:.0e}", args.synthetic_params
        )
        cases.append(measure(f"synthetic-{args.synthetic_params / 1e9:g}b", synthetic, "bfloat16", args.repeats))
    path = write_result(
        "push",
        {
            "cases": cases,
            "baseline": cases[0]["baseline"],
            "candidate": cases[0]["candidate"],
            "ratio": cases[0]["ratio"],
            "ratio_meaning": "disk seconds / gRPC push seconds (>1: the push is faster)",
        },
    )
    for case in cases:
        print(f"[push] {case['model']}: disk/gRPC = {case['ratio']:.2f}x")
    print(f"[push] -> {path}")


if __name__ == "__main__":
    main()
