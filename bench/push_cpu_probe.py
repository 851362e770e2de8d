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

import json
import os
import shutil
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
    from bench.push_floor_bench import Helpers

    runs: dict[str, list[float]] = {" || ".join(case): [] for case in CASES}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        staged = Path(shm) / "staged.safetensors"
        shutil.copyfile(model_dir / "model.safetensors", staged)
        helpers = Helpers(model_dir, staged)
        try:
            for round_ in range(-1, repeats):
                for case in CASES:
                    time.sleep(gap_s)
                    seconds = helpers.run_beside(case)
                    if round_ >= 0:
                        runs[" || ".join(case)].append(seconds)
        finally:
            helpers.stop()
    return {
        name: {"seconds": round(statistics.median(seconds), 4), "seconds_all": [round(x, 4) for x in seconds]}
        for name, seconds in runs.items()
    }


def main() -> None:
    from bench.push_bench import load_tensors
    from bench.push_floor_bench import parse_rounds
    from bench.push_wire_bench import measure as measure_wire

    args = parse_rounds(__doc__.splitlines()[0], "push-cpu-probe.json", gap_s=0.5)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = random_smollm2(Path(scratch))
        wire_result = measure_wire(args.repeats, load_tensors(model_dir))
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
