"""The push's CPU-side work on any machine, no engine needed: where a bigger host would take the streamed receive.

    python -m bench.push_cpu_probe [--repeats 5] [--output F]

Runs without vLLM or the packaged SmolLM2 (so on the device machine, whose image has
neither): random fp32 tensors in SmolLM2-135M's names and shapes (538 MB, from
`bench/push_cpu_probe_shapes.json`), then
- `bench.push_wire_bench`'s cases: gRPC's raw transport over loopback, the policy's
  receive parsed and checked (`PushAssembler`, XXH3-128), and staged; the sender alone;
- `bench.push_floor_bench`'s helpers without the reload, each in its own process: the
  trainer's segment write, the receiver's checksum, the raw transport from a sender to a
  receiver process, and some of them at once (what spare cores let overlap).
Rounds run every case once (one untimed warm-up round); medians of --repeats.
Writes bench/results/push-cpu-probe.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.machine import write_result

SHAPES = Path(__file__).with_name("push_cpu_probe_shapes.json")
CASES: tuple[tuple[str, ...], ...] = (
    ("segment write",),
    ("checksum",),
    ("raw transport",),
    ("segment write", "checksum"),
    ("sender's checksum", "checksum", "raw transport"),
)


def random_smollm2(directory: Path) -> Path:
    """A safetensors file of random fp32 tensors with SmolLM2-135M's names and shapes, in file order."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    shapes = json.loads(SHAPES.read_text())
    save_file(
        {name: torch.randn(shape, generator=generator) for name, shape in shapes}, str(directory / "model.safetensors")
    )
    return directory


def helpers_alone(model_dir: Path, repeats: int, gap_s: float) -> dict:
    import bench.push_floor_bench as floor

    context = multiprocessing.get_context("spawn")
    runs: dict[str, list[float]] = {" || ".join(case): [] for case in CASES}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        staged = Path(shm) / "staged.safetensors"
        staged.write_bytes((model_dir / "model.safetensors").read_bytes())
        receiver = floor.Receiver(context)
        helpers = {
            "segment write": floor.Helper(context, "segment_write", str(model_dir)),
            "checksum": floor.Helper(context, "checksum", str(staged)),
            "sender's checksum": floor.Helper(context, "checksum", str(staged)),
            "raw transport": floor.Helper(context, "transport", str(model_dir), str(receiver.port)),
        }
        try:
            for round_ in range(-1, repeats):
                for case in CASES:
                    time.sleep(gap_s)
                    started = floor._now()
                    for label in case:
                        helpers[label].go()
                    ended = max(helpers[label].finished()[1] for label in case)
                    if round_ >= 0:
                        runs[" || ".join(case)].append(ended - started)
        finally:
            for helper in [*helpers.values(), receiver]:
                helper.stop()
    return {
        name: {"seconds": round(statistics.median(seconds), 4), "seconds_all": [round(x, 4) for x in seconds]}
        for name, seconds in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--gap-s", type=float, default=0.5, help="pause before every run")
    parser.add_argument(
        "--output", type=Path, default=None, help="Result file instead of bench/results/push-cpu-probe.json."
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    import bench.push_wire_bench as wire

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = random_smollm2(Path(scratch))
        wire.prepare_smollm2 = lambda: model_dir  # the wire cases read these tensors instead of the packaged model
        wire_result = wire.measure(args.repeats)
        helpers = helpers_alone(model_dir, args.repeats, args.gap_s)
    for name, case in helpers.items():
        print(f"[push-cpu-probe] {name}: {case['seconds']:.3f} s", flush=True)
    result = {
        "what": "SmolLM2-135M-shaped random fp32 tensors (538 MB), no engine: the push-wire cases, and the push-floor "
        "helpers without the reload",
        "cores": os.cpu_count(),
        "push_wire": wire_result,
        "helpers": helpers,
    }
    print(f"[push-cpu-probe] -> {write_result('push-cpu-probe', result, args.output)}", flush=True)


if __name__ == "__main__":
    main()
