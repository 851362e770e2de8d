"""Every benchmark starts and parses its arguments (issue 16, defect 7).

`make bench` once stopped after the reward benchmark: two imported `describe`
functions shadowed each other and the final print raised. Every bench module must
import, and every `make bench-*` recipe (run as the Makefile writes it) and every
runnable bench module must answer `--help` with a usage and exit 0.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bench

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _modules() -> list[str]:
    found = pkgutil.walk_packages(bench.__path__, "bench.")
    return sorted(m.name for m in found if m.name.split(".")[-1] != "__main__")


def _runnable(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    if spec.submodule_search_locations:  # a package: runnable when it has a __main__
        return (Path(spec.submodule_search_locations[0]) / "__main__.py").is_file()
    return 'if __name__ == "__main__"' in Path(spec.origin).read_text()


def _make_recipes() -> dict[str, list[str]]:
    """`make bench-X` -> its python command line, with the Makefile's variables put in."""
    recipes, target = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        header = re.match(r"^(bench-[\w-]+):", line)
        if header:
            target = header.group(1)
        elif target and line.startswith("\t") and "$(PY)" in line:
            words = [w for w in line.split() if "=" not in w and not w.startswith("$(") or w == "$(PY)"]
            recipes[target] = [sys.executable if w == "$(PY)" else w for w in words]
            target = None
    return recipes


def test_make_bench_runs_every_bench_target():
    recipes = _make_recipes()
    bench_line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("bench:"))
    assert set(bench_line.split()[1:]) == set(recipes), "`make bench` runs every bench-* target, each a python recipe"
    assert len(recipes) >= 8


@pytest.mark.parametrize("target", sorted(_make_recipes()))
def test_make_bench_target_parses_its_arguments(target):
    command = [*_make_recipes()[target], "--help"]
    proc = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{' '.join(command)}:\n{proc.stderr[-3000:]}"
    assert "usage:" in proc.stdout.lower(), proc.stdout[-2000:]


@pytest.mark.parametrize("name", _modules())
def test_bench_module_imports_and_answers_help(name):
    if not _runnable(name):
        proc = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return
    proc = subprocess.run(
        [sys.executable, "-m", name, "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout.lower()


@pytest.mark.parametrize("name", _modules())
def test_no_bench_module_binds_one_name_by_two_imports(name):
    """The reward benchmark imported `describe` from bench.machine and from services.common.config: the second
    shadowed the first and its last line raised after an hour of measuring. No module may do that again."""
    spec = importlib.util.find_spec(name)
    path = Path(spec.origin)
    bound: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            source = getattr(node, "module", None) or ""
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                origin = f"{source}.{alias.name}" if source else alias.name
                assert local not in bound or bound[local] == origin, (
                    f"{path.name}: {local!r} imported from {bound.get(local)} and again from {origin}"
                )
                bound[local] = origin


def test_the_summary_prints_a_row_for_every_committed_result_with_a_ratio(capsys):
    """`make bench` ends with `python -m bench.summary`: it must read every committed result, one ratio or several."""
    from bench import summary

    assert summary.format_ratio({"distinct_2": 0.995, "heldout_gain": 1.0412}) == "distinct_2 0.995, heldout_gain 1.04"
    assert summary.format_ratio(None) == "None" and summary.format_ratio(0.28449) == "0.284"
    summary.main([])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert any(row.startswith("| exploration |") for row in rows), rows
    assert summary.main([]) == 0  # the capacity model's and the online demo's files are skipped, not failures
