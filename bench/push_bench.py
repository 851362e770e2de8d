"""Weight push: seconds from the trainer's send to the new version serving, vs the same bytes via disk.

    python -m bench.push_bench [--synthetic-params 1e9] [--repeats 3]

Candidate: `PushWeights` over gRPC into a running policy service (stream, verify,
stage, drain, in-place load, version bump), timed at the client. Baseline: the
same tensors written to a safetensors file on disk and loaded into the same kind
of engine in-process (what a filesystem-based sync does). Run for the default
SmolLM2-135M (fp32) and a synthetic Llama of ~1B parameters in bfloat16.
Also, for SmolLM2: the same-host push (segment written in /dev/shm, only manifest
and checksum over gRPC) against the in-place reload alone, and the inter-token
latency of a running stream during the receive phase of a streamed push against
the same stream without a push. Writes bench/results/push.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
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
    """The checkpoint's tensors in this process's memory, as a trainer holds its parameters (a tensor safetensors
    maps from the file would fault its pages in from the page cache during the first timed push)."""
    from safetensors import safe_open

    out = []
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            out.extend((name, handle.get_tensor(name).clone()) for name in handle.keys())
    return out


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_subset(tensors: list) -> list:
    """What a LoRA run on q/k/v/o pushes with push_scope=changed: those weights (q/k/v are one fused unit)."""
    return [(n, t) for n, t in tensors if any(f".{target}." in n for target in LORA_TARGETS)]


def _itl_stream(stub, stop: threading.Event, arrivals: list[float]) -> None:
    """Keeps one sampled stream generating (one request after another) and records each chunk's arrival time."""
    from rlhf.v1 import policy_pb2

    request = policy_pb2.GenerateRequest(
        prompts=[policy_pb2.Prompt(text="Tell me a long story about a lighthouse keeper.")],
        sampling=policy_pb2.SamplingParams(n=1, max_tokens=200, ignore_eos=True, temperature=1.0, seed=1),
    )
    while not stop.is_set():
        for _ in stub.GenerateStream(request, timeout=600):
            arrivals.append(time.perf_counter())
            if stop.is_set():
                break


def _gaps_ms(arrivals: list[float], start: float, end: float) -> list[float]:
    """Inter-token gaps (ms) of chunks that arrived inside [start, end]."""
    inside = [t for t in arrivals if start <= t <= end]
    return [(b - a) * 1000 for a, b in zip(inside, inside[1:])]


def _p99(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return round(statistics.quantiles(values, n=100, method="inclusive")[98], 2)


def itl_during_push(stub, tensors: list, repeats: int) -> dict:
    """ITL p99 of a running stream without a push, and during the receive phase of streamed pushes."""
    from services.common.weight_stream import push_requests

    stop, arrivals = threading.Event(), []
    worker = threading.Thread(target=_itl_stream, args=(stub, stop, arrivals), daemon=True)
    worker.start()
    try:
        time.sleep(1.0)  # the stream is running
        quiet_start = time.perf_counter()
        time.sleep(3.0)
        quiet = _gaps_ms(arrivals, quiet_start, time.perf_counter())
        during: list[float] = []
        for i in range(repeats):
            started = time.perf_counter()
            reply = stub.PushWeights(push_requests(tensors, note=f"itl {i}"), timeout=1800)
            during += _gaps_ms(arrivals, started, started + reply.receive_seconds)
            time.sleep(1.0)
    finally:
        stop.set()
        worker.join(timeout=120)
    return {
        "what": "gaps between streamed chunks of one running sampled stream (client side), ms",
        "without_push": {
            "n": len(quiet),
            "p50_ms": round(statistics.median(quiet), 2) if quiet else None,
            "p99_ms": _p99(quiet),
        },
        "during_receive": {
            "n": len(during),
            "p50_ms": round(statistics.median(during), 2) if during else None,
            "p99_ms": _p99(during),
            "pushes": repeats,
        },
        "p99_ratio": round(_p99(during) / _p99(quiet), 3) if _p99(during) and _p99(quiet) else None,
    }


def grpc_push(
    model_dir: Path,
    tensors: list,
    dtype: str,
    repeats: int,
    log: Path,
    partial: list | None = None,
    extras: dict | None = None,
    gap_s: float = 0.0,
) -> tuple[list[float], list[float]]:
    from rlhf.v1 import policy_pb2, policy_pb2_grpc
    from services.common.client import open_channel
    from services.common.shared_segment import SegmentWriter, host_id, segment_requests
    from services.common.weight_stream import push_requests
    from services.policy.config import PolicyConfig

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
            # one push not timed, as bench-step leaves out its first step: the server's first staging file is
            # fresh pages; from then on a retired file or one written ahead takes each push
            stub.PushWeights(push_requests(tensors, note="bench warm-up"), timeout=1800)
            seconds = []
            for i in range(repeats):
                time.sleep(gap_s)  # as in a training step, the push follows seconds of training
                started = time.perf_counter()
                reply = stub.PushWeights(push_requests(tensors, note=f"bench {i}"), timeout=1800)
                seconds.append(time.perf_counter() - started)
                assert reply.weight_version == i + 2
            partial_seconds = []
            for i in range(repeats if partial else 0):
                started = time.perf_counter()
                stub.PushWeights(push_requests(partial, note=f"bench lora {i}"), timeout=1800)
                partial_seconds.append(time.perf_counter() - started)
            if extras is not None:  # same-host push and ITL, SmolLM2 only
                status = stub.GetStatus(policy_pb2.GetStatusRequest(), timeout=30)
                assert status.host_id == host_id(), "bench server should share this host"
                shared, write, receive = [], [], []
                writer = SegmentWriter()  # as PolicyReplica does: one segment, rewritten by every push
                try:
                    # pushes not timed, as bench-step leaves out its first step: in a running loop the segment
                    # and the server's staged files all hold a full model's pages. The LoRA pushes above left
                    # smaller files in the server's rotation (the current version, keep_versions earlier ones and
                    # the spare), so push until every file in it is a full push's.
                    for i in range(PolicyConfig().keep_versions + 2):
                        stub.PushWeights(
                            segment_requests(writer.write(tensors), tensors, note=f"bench shm warm-up {i}"),
                            timeout=1800,
                        )
                        writer.settle()
                    for i in range(repeats):
                        time.sleep(gap_s)  # as in a training step, the push follows seconds of training
                        started = time.perf_counter()
                        segment = writer.write(tensors)  # counted: the trainer's one write of the bytes
                        written = time.perf_counter()
                        reply = stub.PushWeights(
                            segment_requests(segment, tensors, note=f"bench shm {i}"), timeout=1800
                        )
                        writer.settle()  # as PolicyReplica does after each push
                        shared.append(time.perf_counter() - started)
                        write.append(written - started)
                        receive.append(reply.receive_seconds)
                finally:
                    writer.close()
                extras["shared"] = shared
                extras["shared_write"] = write
                extras["shared_verify"] = receive
                extras["itl"] = itl_during_push(stub, tensors, repeats)
        return seconds, partial_seconds
    finally:
        server.stop()


def disk_reload(
    model_dir: Path,
    tensors: list,
    dtype: str,
    repeats: int,
    partial: list | None = None,
    extras: dict | None = None,
    gap_s: float = 0.0,
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
                for i in range(-1 if kind == "full" else 0, repeats if items else 0):  # -1: the same warm-up
                    path = Path(scratch) / f"{kind}-{i}.safetensors"
                    if kind == "full":
                        time.sleep(gap_s)  # the same pause as before each streamed push
                    started = time.perf_counter()
                    save_file(dict(items), str(path))
                    loop.run_until_complete(engine.load_weights(str(path)))
                    if i >= 0:
                        seconds[kind].append(time.perf_counter() - started)
                    path.unlink()
        if extras is not None:  # the in-place reload alone: a file already in shared memory, not timed writing it
            with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
                path = Path(shm) / "reload.safetensors"
                save_file(dict(tensors), str(path))
                reload = []
                for _ in range(repeats):
                    time.sleep(gap_s)  # the same pause before each as the same-host pushes
                    started = time.perf_counter()
                    loop.run_until_complete(engine.load_weights(str(path)))
                    reload.append(time.perf_counter() - started)
                extras["reload_alone"] = reload
    finally:
        loop.close()
        engine.shutdown()
    return seconds["full"], seconds["partial"]


def measure(label: str, model_dir: Path, dtype: str, repeats: int, with_lora: bool = False, gap_s: float = 0.0) -> dict:
    tensors = load_tensors(model_dir)
    partial = lora_subset(tensors) if with_lora else None
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    params = sum(t.numel() for _, t in tensors)
    print(f"[push] {label}: {params / 1e6:.0f} M params, {total / 1e9:.2f} GB ({dtype})", flush=True)
    extras: dict | None = {} if with_lora else None
    pushes, partial_pushes = grpc_push(
        model_dir, tensors, dtype, repeats, RESULTS / "logs" / f"push-{label}.log", partial, extras, gap_s
    )
    candidate = statistics.median(pushes)
    print(f"[push] {label}: gRPC push {candidate:.2f} s ({total / candidate / 1e9:.2f} GB/s)", flush=True)
    reloads, partial_reloads = disk_reload(model_dir, tensors, dtype, repeats, partial, extras, gap_s)
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
    same_host = itl = None
    if extras:
        shared, alone = statistics.median(extras["shared"]), statistics.median(extras["reload_alone"])
        same_host = {
            "what": f"same-host push after untimed warm-up pushes (until every staged file holds a full push), each "
            f"after a {gap_s:g} s pause as a step's "
            "push follows its training: the trainer's segment in /dev/shm rewritten (counted), manifest + XXH3 "
            "checksum over gRPC, the server moves the segment into staging (handing its spare file back to the "
            "trainer), verifies and loads it; vs the in-place reload of the same file alone, after the same pause",
            "gap_s": gap_s,
            "seconds": round(shared, 3),
            "seconds_all": [round(x, 3) for x in extras["shared"]],
            "trainer_write_seconds": round(statistics.median(extras["shared_write"]), 3),
            "trainer_write_all": [round(x, 3) for x in extras["shared_write"]],
            "server_take_and_verify_seconds": round(statistics.median(extras["shared_verify"]), 3),
            "gb_per_s": round(total / shared / 1e9, 3),
            "reload_alone_seconds": round(alone, 3),
            "reload_alone_all": [round(x, 3) for x in extras["reload_alone"]],
            "ratio_to_reload": round(shared / alone, 3),
            "ratio_meaning": "same-host push seconds / reload-alone seconds (target <= 1.1)",
        }
        itl = extras["itl"]
        print(
            f"[push] {label}: same-host push {shared:.2f} s vs reload alone {alone:.2f} s "
            f"({same_host['ratio_to_reload']:.2f}x); ITL p99 {itl['without_push']['p99_ms']} ms without a push, "
            f"{itl['during_receive']['p99_ms']} ms during receive",
            flush=True,
        )
    return {
        "same_host_push": same_host,
        "itl_during_push": itl,
        "candidate_all": [round(x, 3) for x in pushes],
        "baseline_all": [round(x, 3) for x in reloads],
        "lora_push": lora,
        "model": label,
        "parameters": params,
        "bytes": total,
        "dtype": dtype,
        "baseline": {
            "name": "safetensors to disk + in-place reload",
            "protocol": f"one untimed warm-up, then each after a {gap_s:g} s pause",
            "seconds": round(baseline, 3),
            "gb_per_s": round(total / baseline / 1e9, 3),
        },
        "candidate": {
            "name": "PushWeights over gRPC, XXH3-128 checksum (send -> new version serving)",
            "protocol": f"one untimed warm-up push, then each after a {gap_s:g} s pause",
            "seconds": round(candidate, 3),
            "gb_per_s": round(total / candidate / 1e9, 3),
        },
        "ratio": round(baseline / candidate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-params", type=float, default=1e9, help="size of the synthetic model (0 skips it)")
    parser.add_argument("--repeats", type=int, default=3, help="timed pushes per case and path (median reported)")
    parser.add_argument(
        "--gap-s",
        type=float,
        default=3.0,
        help="pause before each timed push and reload, every path (a step's push follows seconds of training; "
        "back to back, each push would queue behind the last one's file freeing and vLLM's 1 s busy-poll)",
    )
    parser.add_argument(
        "--result-name", default="push", help="bench/results/<name>.json (push-smollm2 for a --synthetic-params 0 run)"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="Result file instead of bench/results/<result-name>.json."
    )
    args = parser.parse_args()
    cases = [measure("smollm2-135m", prepare_smollm2(), "float32", args.repeats, with_lora=True, gap_s=args.gap_s)]
    if args.synthetic_params > 0:
        synthetic = synthetic_llama(
            RESULTS / "models" / f"synthetic-{args.synthetic_params:.0e}", args.synthetic_params
        )
        cases.append(measure(f"synthetic-{args.synthetic_params / 1e9:g}b", synthetic, "bfloat16", args.repeats))
    path = write_result(
        args.result_name,
        {
            "cases": cases,
            "baseline": cases[0]["baseline"],
            "candidate": cases[0]["candidate"],
            "ratio": cases[0]["ratio"],
            "ratio_meaning": "disk seconds / gRPC push seconds (>1: the push is faster)",
        },
        args.output,
    )
    for case in cases:
        print(f"[push] {case['model']}: disk/gRPC = {case['ratio']:.2f}x")
    print(f"[push] -> {path}")


if __name__ == "__main__":
    main()
