"""How fast a weight push could be here if everything it adds overlapped the in-place reload.

    python -m bench.push_floor_bench [--repeats 5] [--gap-s 3]

Issue 15 asks for a streamed push of SmolLM2-135M fp32 at >= 1.0 GB/s and no slower than
disk write + reload, and a same-host push within 1.1x of the reload alone. Sequentially
the work a push adds (the trainer's write into shared memory, the checksums, gRPC's
transport) cannot fit, so a push would have to overlap it with the reload. This benchmark
measures the most any such pipeline could give on this machine: the reload of a running
engine started at the same instant as that work, each piece in its own process and with
no dependency between them (a real pipeline can only do worse: a tensor loads after it
arrives and is verified after it is written). Every round runs each case once, each run
after a pause (--gap-s, as a step's push follows its training); one untimed warm-up round,
then --repeats rounds, medians reported, and each floor also per round (so the machine's
drift between rounds reaches both sides of a ratio alike):

- reload alone: a staged file in /dev/shm loaded in place by the engine (with the CPU
  seconds the engine's processes spend on it);
- the added work alone, each in a helper process: the trainer's segment write
  (`SegmentWriter`: copy into touched tmpfs pages + XXH3-128), the receiver's XXH3-128
  over the staged file, gRPC's raw transport of the push's messages over loopback from a
  sender process to a receiver process (no parsing, no checksum, no staging:
  `bench.push_wire_bench`'s baseline, there in one process);
- the same-host floor: reload || segment write || receiver's checksum;
- the streamed floor: reload || raw transport (nothing else a streamed push does);
- disk write + reload: the streamed push's baseline in `bench/results/push.json`.

Writes bench/results/push-floor.json.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from bench.machine import RESULTS, write_result

SAME_HOST_TARGET = 1.1  # same-host push seconds / reload-alone seconds, at most
STREAMED_GBPS_TARGET = 1.0  # streamed push GB/s, at least
STREAMED_RATIO_TARGET = 1.0  # disk seconds / streamed push seconds, at least


def _now() -> float:
    """One clock for every process of the benchmark (CLOCK_MONOTONIC is system-wide)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# ---- helper processes: each prepares its work once, then runs it on every "go" ----------


def _segment_write(model_dir: str) -> Callable[[], None]:
    from bench.push_bench import load_tensors
    from services.common.shared_segment import SegmentWriter

    tensors, writer = load_tensors(Path(model_dir)), SegmentWriter()
    return lambda: writer.write(tensors)  # rewrites its one segment in place: pages already touched


def _checksum(staged_file: str) -> Callable[[], None]:
    import mmap

    from services.common.weight_stream import DEFAULT_CHECKSUM, checksum_named

    def run() -> None:
        with open(staged_file, "rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mapped:
            digest = checksum_named(DEFAULT_CHECKSUM).new()
            digest.update(mapped)
            digest.digest()

    return run


def _transport(model_dir: str, port: str) -> Callable[[], None]:
    """The trainer's side of gRPC's raw transport: the push's messages, sent to a receiver in another process."""
    import grpc

    from bench.push_bench import load_tensors
    from bench.push_wire_bench import _METHOD, _OPTIONS, raw_messages

    raw = raw_messages(load_tensors(Path(model_dir)))
    send = grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS).stream_unary(_METHOD)
    return lambda: send(iter(raw), timeout=600)


HELPERS: dict[str, Callable[..., Callable[[], None]]] = {
    "segment_write": _segment_write,
    "checksum": _checksum,
    "transport": _transport,
}


def _helper(kind: str, arguments: tuple[str, ...], pipe: Connection) -> None:
    work = HELPERS[kind](*arguments)
    work()  # untimed warm-up
    pipe.send("ready")
    while pipe.recv() == "go":
        started = _now()
        work()
        pipe.send((started, _now()))


def _raw_receiver(pipe: Connection) -> None:
    """The policy's side of gRPC's raw transport, in a process of its own as the policy is: counts the bytes."""
    from bench.push_wire_bench import _Receiver, wire_server

    with wire_server(_Receiver({}, Path(tempfile.gettempdir()))) as port:  # mode "raw"
        pipe.send(port)
        pipe.recv()  # serves until told to stop


class Helper:
    """One helper process, driven over a pipe."""

    def __init__(self, context, kind: str, *arguments: str) -> None:
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=_helper, args=(kind, arguments, child), daemon=True)
        self.process.start()
        if not self.pipe.poll(600) or self.pipe.recv() != "ready":
            raise RuntimeError(f"helper {kind} did not start")

    def go(self) -> None:
        self.pipe.send("go")

    def finished(self) -> tuple[float, float]:
        return self.pipe.recv()

    def stop(self) -> None:
        self.pipe.send("stop")
        self.process.join(30)


class Receiver:
    """The raw transport's receiving process."""

    def __init__(self, context) -> None:
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=_raw_receiver, args=(child,), daemon=True)
        self.process.start()
        if not self.pipe.poll(120):
            raise RuntimeError("the raw transport's receiver did not start")
        self.port = self.pipe.recv()

    def stop(self) -> None:
        self.pipe.send("stop")
        self.process.join(30)


class Helpers:
    """Every helper of the benchmark, each in its own process (the raw transport's receiver in one more)."""

    def __init__(self, model_dir: Path, staged: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.by_label: dict[str, Helper] = {}
        self.receiver = Receiver(context)
        try:
            for label, kind, *arguments in (
                ("segment write", "segment_write", str(model_dir)),
                ("checksum", "checksum", str(staged)),
                ("sender's checksum", "checksum", str(staged)),
                ("raw transport", "transport", str(model_dir), str(self.receiver.port)),
            ):
                self.by_label[label] = Helper(context, kind, *arguments)
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> set[int]:
        return {h.process.pid for h in [*self.by_label.values(), self.receiver]}

    def run_beside(self, labels: tuple[str, ...], work: Callable[[], object] = lambda: None) -> float:
        """Starts the helpers named in `labels` and runs `work` here at the same instant; seconds until all are done."""
        started = _now()
        for label in labels:
            self.by_label[label].go()
        work()
        ended = [_now()] + [self.by_label[label].finished()[1] for label in labels]
        return max(ended) - started

    def stop(self) -> None:
        for helper in [*self.by_label.values(), self.receiver]:
            helper.stop()


def parse_rounds(description: str, result_file: str, gap_s: float) -> argparse.Namespace:
    """The command line of a benchmark run in rounds: --repeats, --gap-s, --output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--gap-s", type=float, default=gap_s, help="pause before every run")
    parser.add_argument(
        "--output", type=Path, default=None, help=f"Result file instead of bench/results/{result_file}."
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


# ---- the measurement ----------------------------------------------------------------------

# Each round runs every case once, in this order, so a drift of the machine's speed reaches every case alike.
# A case: its name, the helpers beside it, and what this process loads meanwhile (None: nothing; "staged": the
# file in /dev/shm; "disk": the tensors written to a new file on disk first).
CASES: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("reload alone", (), "staged"),
    ("segment write alone", ("segment write",), None),
    ("checksum alone", ("checksum",), None),
    ("raw transport alone", ("raw transport",), None),
    ("reload || checksum", ("checksum",), "staged"),
    ("reload || sender's checksum || checksum", ("sender's checksum", "checksum"), "staged"),
    ("reload || segment write || checksum", ("segment write", "checksum"), "staged"),
    ("reload || raw transport", ("raw transport",), "staged"),
    ("disk write + reload", (), "disk"),
)


def floors(median: dict[str, float], total_bytes: int) -> dict:
    """The targets against the best an overlapping push could do, from the cases' medians (seconds)."""
    same_host = median["reload || segment write || checksum"] / median["reload alone"]
    zero_copy = median["reload || sender's checksum || checksum"] / median["reload alone"]
    one_checksum = median["reload || checksum"] / median["reload alone"]
    streamed = median["reload || raw transport"]
    return {
        "same_host_ratio_floor": round(same_host, 3),
        "same_host_target": SAME_HOST_TARGET,
        "same_host_reachable": same_host <= SAME_HOST_TARGET,
        "zero_copy_ratio_floor": round(zero_copy, 3),
        "zero_copy_meaning": "a trainer whose parameters already lie in the segment: no write, only the two checksums",
        "one_checksum_ratio_floor": round(one_checksum, 3),
        "streamed_gb_per_s_ceiling": round(total_bytes / streamed / 1e9, 3),
        "streamed_gb_per_s_target": STREAMED_GBPS_TARGET,
        "streamed_ratio_ceiling": round(median["disk write + reload"] / streamed, 3),
        "streamed_ratio_target": STREAMED_RATIO_TARGET,
        "streamed_reachable": total_bytes / streamed / 1e9 >= STREAMED_GBPS_TARGET
        and median["disk write + reload"] / streamed >= STREAMED_RATIO_TARGET,
        "sequential_same_host_s": round(
            median["reload alone"] + median["segment write alone"] + median["checksum alone"], 3
        ),
        "sequential_streamed_s": round(median["reload alone"] + median["raw transport alone"], 3),
    }


def floors_by_round(runs: dict[str, list[float]], total_bytes: int) -> dict[str, list[float]]:
    """Each floor computed within each round, from that round's runs alone."""
    by_round = [
        floors({name: seconds[i] for name, seconds in runs.items()}, total_bytes)
        for i in range(len(runs["reload alone"]))
    ]
    keys = (
        "same_host_ratio_floor",
        "zero_copy_ratio_floor",
        "one_checksum_ratio_floor",
        "streamed_gb_per_s_ceiling",
        "streamed_ratio_ceiling",
    )
    return {key: [r[key] for r in by_round] for key in keys}


def _engine_cpu_seconds(exclude: set[int]) -> float:
    """CPU seconds so far of this process's children that are not helpers (vLLM's engine core)."""
    import psutil

    seconds = 0.0
    for child in psutil.Process().children(recursive=True):
        if child.pid in exclude:
            continue
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds += times.user + times.system
    return seconds


def _write_new(path: Path, tensors: list) -> None:
    """A new safetensors file on disk each time, as bench.push_bench's disk baseline writes."""
    from safetensors.torch import save_file

    path.unlink(missing_ok=True)
    save_file(dict(tensors), str(path))


def measure(repeats: int, gap_s: float) -> dict:
    from safetensors.torch import save_file

    from bench.push_bench import load_tensors
    from services.common.model_store import prepare_smollm2
    from services.policy.config import PolicyConfig
    from services.policy.engine import VllmEngine

    model_dir = prepare_smollm2()
    tensors = load_tensors(model_dir)
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    engine = VllmEngine(
        PolicyConfig(model=str(model_dir), dtype="float32", max_model_len=256, cpu_kvcache_gib=1), str(model_dir)
    )
    engine.start()
    loop = asyncio.new_event_loop()
    reload = lambda path: loop.run_until_complete(engine.load_weights(str(path)))  # noqa: E731
    runs: dict[str, list[float]] = {}
    cpu: list[float] = []
    helpers: Helpers | None = None
    try:
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm, tempfile.TemporaryDirectory(dir=RESULTS) as disk:
            staged = Path(shm) / "staged.safetensors"
            save_file(dict(tensors), str(staged))
            helpers = Helpers(model_dir, staged)
            pids = helpers.pids
            pushed = Path(disk) / "pushed.safetensors"
            loads: dict[str | None, Callable[[], object]] = {
                None: lambda: None,
                "staged": lambda: reload(staged),
                "disk": lambda: (_write_new(pushed, tensors), reload(pushed)),
            }
            for round_ in range(-1, repeats):  # -1: an untimed warm-up round
                for name, beside, load in CASES:
                    time.sleep(gap_s)
                    cpu_before = _engine_cpu_seconds(pids)
                    seconds = helpers.run_beside(beside, loads[load])
                    if round_ >= 0:
                        runs.setdefault(name, []).append(seconds)
                        if name == "reload alone":
                            cpu.append(_engine_cpu_seconds(pids) - cpu_before)
                if round_ >= 0:
                    print(
                        f"[push-floor] round {round_ + 1}/{repeats}: "
                        + ", ".join(f"{name} {seconds[-1]:.3f}" for name, seconds in runs.items()),
                        flush=True,
                    )
    finally:
        if helpers is not None:
            helpers.stop()
        loop.close()
        engine.shutdown()
    median = {name: statistics.median(seconds) for name, seconds in runs.items()}
    return {
        "what": "SmolLM2-135M fp32 (538 MB): the in-place reload of a running vLLM engine started at the same instant "
        "as the work a push adds, each piece in its own process with no dependency between them (the most "
        f"overlap any pipeline could reach); one untimed warm-up round, then {repeats} rounds of every case, each "
        f"run after a {gap_s:g} s pause; seconds from the start until every part is done",
        "bytes": total,
        "cases": [
            {
                "name": name,
                "seconds": round(median[name], 3),
                "seconds_all": [round(x, 3) for x in seconds],
                "gb_per_s": round(total / median[name] / 1e9, 3),
            }
            for name, seconds in runs.items()
        ],
        "reload_engine_cpu_seconds": round(statistics.median(cpu), 3),
        "reload_engine_cpu_seconds_all": [round(x, 3) for x in cpu],
        "reload_engine_cores_busy": round(statistics.median(cpu) / median["reload alone"], 2),
        **floors(median, total),
        "by_round": floors_by_round(runs, total),
    }


def main() -> None:
    args = parse_rounds(__doc__.splitlines()[0], "push-floor.json", gap_s=3.0)  # 3 s: as bench.push_bench
    result = measure(args.repeats, args.gap_s)
    print(
        f"[push-floor] same-host floor {result['same_host_ratio_floor']}x reload (target <= {SAME_HOST_TARGET}); "
        f"streamed ceiling {result['streamed_gb_per_s_ceiling']} GB/s (target {STREAMED_GBPS_TARGET}), "
        f"{result['streamed_ratio_ceiling']}x disk (target {STREAMED_RATIO_TARGET}); the reload keeps "
        f"{result['reload_engine_cores_busy']} cores busy",
        flush=True,
    )
    print(f"[push-floor] -> {write_result('push-floor', result, args.output)}", flush=True)


if __name__ == "__main__":
    main()
