"""Where a streamed push's receive time goes: the same bytes over loopback gRPC, layer by layer.

    python -m bench.push_wire_bench [--repeats 5]

No engine: a gRPC aio server in this process (the policy's message limits) takes a
client stream of SmolLM2-135M's fp32 tensors (538 MB) from the sync client the trainer
uses, and does progressively more of what the policy's receive does. Baseline: the
same number of 4 MiB messages as raw bytes that the server only counts (gRPC's
transport alone). Candidates: the real `PushWeightsRequest` stream, parsed and checked
by `PushAssembler` with its XXH3-128 checksum but no staging; the same, staged into a
safetensors file written before (the policy's spare); the same into a new file (fresh
tmpfs pages). Also the sender alone: building and serializing the stream, no send.
Writes bench/results/push-wire.json; ratio = baseline seconds / candidate seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from bench.machine import write_result
from bench.push_bench import load_tensors
from rlhf.v1 import policy_pb2
from services.common.model_store import prepare_smollm2
from services.common.server import channel_options
from services.common.weight_stream import DEFAULT_CHUNK_BYTES, PushAssembler, TensorSpec, push_requests
from services.policy.weight_staging import SafetensorsFileSink

_METHOD = "/bench.PushWire/Push"
_OPTIONS = channel_options(64)


class _NullSink:
    """Takes the bytes and keeps nothing: the assembler's checks and checksum alone."""

    def open_tensor(self, name, dtype, shape, nbytes) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def close_tensor(self) -> None:
        pass

    def finish(self) -> tuple[dict, None]:
        return {}, None

    def discard(self) -> None:
        pass


class _Receiver:
    """What the server does with each stream: one of the modes below."""

    def __init__(self, manifest: dict[str, TensorSpec], staging: Path) -> None:
        self.manifest, self.staging = manifest, staging
        self.mode = "raw"
        self.spare: Path | None = None

    def sink(self):
        if self.mode == "parse":
            return _NullSink()
        reuse, self.spare = (self.spare, None) if self.mode == "stage-written" else (None, self.spare)
        return SafetensorsFileSink(self.staging, self.manifest, reuse)

    async def handle(self, requests, context) -> bytes:
        if self.mode == "raw":
            count = 0
            async for message in requests:
                count += len(message)
            return str(count).encode()
        assembler = PushAssembler(self.manifest, 1 << 40, sink=self.sink())
        async for message in requests:
            assembler.feed(policy_pb2.PushWeightsRequest.FromString(message))
        staged = assembler.finish()
        if staged.path is not None:
            if self.mode == "stage-written":
                self.spare = staged.path  # the next push overwrites these pages, as the policy's spare
            else:
                staged.path.unlink()
        return str(staged.total_bytes).encode()


def _serve(receiver: _Receiver, ready: threading.Event, stop: threading.Event, port: list[int]) -> None:
    async def main() -> None:
        server = grpc.aio.server(options=_OPTIONS)
        handler = grpc.stream_unary_rpc_method_handler(receiver.handle)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.PushWire", {"Push": handler}),))
        port.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await server.stop(0)

    asyncio.run(main())


def _timed(call: Callable[[], object], repeats: int) -> list[float]:
    call()  # one untimed warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def _serialized(tensors: list) -> Iterator[bytes]:
    return (request.SerializeToString() for request in push_requests(tensors))


def raw_messages(tensors: list) -> list[bytes]:
    """Raw bytes in the push's chunk sizes (what gRPC's transport alone carries for this push)."""
    sizes = [
        min(DEFAULT_CHUNK_BYTES, nbytes - offset)
        for nbytes in (t.numel() * t.element_size() for _, t in tensors)
        for offset in range(0, nbytes, DEFAULT_CHUNK_BYTES)
    ]
    buffers = {size: bytes(size) for size in set(sizes)}
    return [buffers[size] for size in sizes]


@contextlib.contextmanager
def wire_server(receiver: _Receiver) -> Iterator[int]:
    """A gRPC aio server in a thread of this process, receiving with `receiver`; yields its port."""
    ready, stop, port = threading.Event(), threading.Event(), []
    server = threading.Thread(target=_serve, args=(receiver, ready, stop, port), daemon=True)
    server.start()
    ready.wait(60)
    try:
        yield port[0]
    finally:
        stop.set()
        server.join(30)


def measure(repeats: int, tensors: list | None = None) -> dict:
    """The cases on `tensors` (default: the packaged SmolLM2-135M's)."""
    tensors = tensors if tensors is not None else load_tensors(prepare_smollm2())
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    manifest = {name: TensorSpec(tuple(t.shape)) for name, t in tensors}
    raw = raw_messages(tensors)
    messages = len(raw)
    cases: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as staging:
        receiver = _Receiver(manifest, Path(staging))
        with wire_server(receiver) as port:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
                send_raw = channel.stream_unary(_METHOD)
                send_push = channel.stream_unary(_METHOD)
                cases["sender alone (build + serialize + XXH3, no send)"] = _timed(
                    lambda: sum(len(m) for m in _serialized(tensors)), repeats
                )
                receiver.mode = "raw"
                cases["raw"] = _timed(lambda: send_raw(iter(raw), timeout=600), repeats)
                for mode in ("parse", "stage-written", "stage-fresh"):
                    receiver.mode = mode
                    cases[mode] = _timed(lambda: send_push(_serialized(tensors), timeout=600), repeats)
                    print(f"[push-wire] {mode}: {statistics.median(cases[mode]):.3f} s", flush=True)
    baseline = statistics.median(cases.pop("raw"))
    names = {
        "parse": "PushWeightsRequest stream, parsed and checked (PushAssembler, XXH3-128), not staged",
        "stage-written": "the same, staged into a safetensors file written before (the policy's spare)",
        "stage-fresh": "the same, staged into a new file in /dev/shm (fresh tmpfs pages)",
    }
    sender = cases.pop("sender alone (build + serialize + XXH3, no send)")
    policy = statistics.median(cases["stage-written"])
    return {
        "compared": "the policy's receive (parsed, checked, staged into its spare file) vs gRPC's transport alone, "
        "same messages",
        "what": "SmolLM2-135M fp32 tensors over loopback gRPC, sync client -> aio server in one process, "
        "one untimed warm-up then the median of the timed runs",
        "bytes": total,
        "messages": messages,
        "baseline": {
            "name": f"{messages} raw messages of the push's chunk sizes (up to 4 MiB), counted only (gRPC transport)",
            "seconds": round(baseline, 3),
            "gb_per_s": round(total / baseline / 1e9, 3),
        },
        "candidate": {
            "name": names["stage-written"],
            "seconds": round(policy, 3),
            "gb_per_s": round(total / policy / 1e9, 3),
        },
        "ratio": round(baseline / policy, 3),
        "sender_alone_seconds": round(statistics.median(sender), 3),
        "sender_alone_all": [round(x, 3) for x in sender],
        "cases": [
            {
                "name": names[mode],
                "seconds": round(statistics.median(runs), 3),
                "seconds_all": [round(x, 3) for x in runs],
                "gb_per_s": round(total / statistics.median(runs) / 1e9, 3),
                "ratio": round(baseline / statistics.median(runs), 3),
            }
            for mode, runs in cases.items()
        ],
        "ratio_meaning": "raw-transport seconds / case seconds (1.0: the case costs nothing over the transport)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed streams per case (median reported)")
    args = parser.parse_args()
    result = measure(args.repeats)
    print(
        f"[push-wire] raw transport {result['baseline']['seconds']} s ({result['baseline']['gb_per_s']} GB/s); "
        f"sender alone {result['sender_alone_seconds']} s",
        flush=True,
    )
    print(f"[push-wire] -> {write_result('push-wire', result)}", flush=True)


if __name__ == "__main__":
    main()
