"""Generated code must be what grpcio-tools makes from protos/ now (never hand-edited, never stale)."""

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path):
    shutil.copytree(ROOT / "protos", tmp_path / "protos", ignore=shutil.ignore_patterns("*_pb2*", "__pycache__"))
    protos = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "protos/rlhf/v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            "--python_out=protos",
            "--pyi_out=protos",
            "--grpc_python_out=protos",
            *protos,
        ],
        cwd=tmp_path,
        check=True,
    )
    generated = sorted(p.name for p in (tmp_path / "protos/rlhf/v1").glob("*_pb2*"))
    committed = sorted(p.name for p in (ROOT / "protos/rlhf/v1").glob("*_pb2*"))
    assert generated == committed
    stale = [
        n
        for n in generated
        if not filecmp.cmp(tmp_path / "protos/rlhf/v1" / n, ROOT / "protos/rlhf/v1" / n, shallow=False)
    ]
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_every_field_is_documented():
    """Contract habit: a comment on every message field (same line or the line above)."""
    missing = []
    for proto in (ROOT / "protos/rlhf/v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        depth = 0
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_field = (
                depth > 0
                and stripped.endswith(";")
                and "=" in stripped
                and not stripped.startswith(("//", "option", "rpc"))
            )
            if is_field and "//" not in line and not lines[i - 1].strip().startswith("//"):
                missing.append(f"{proto.name}:{i + 1}: {stripped}")
            depth += line.count("{") - line.count("}")
    assert not missing, "undocumented fields:\n" + "\n".join(missing)
