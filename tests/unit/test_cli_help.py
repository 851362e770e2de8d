"""Every command's --help runs (issue 16, defect 9).

`rlhf-trainer train --help` once printed argparse internals (an unescaped `%` in a
help text). Every `python -m services.X` and each of its subcommands must answer
--help with a usage and exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
PROGRAMS = sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


def _help(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv, "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _subcommands(text: str) -> list[str]:
    """Commands listed under 'commands:' or in the first line's `{a,b}`."""
    listed = (
        re.findall(r"^  ([a-z][\w-]*)\s{2,}\S", text.split("commands:", 1)[1], re.MULTILINE)
        if "commands:" in text
        else []
    )
    braces = re.search(r"\{([\w,-]+)\}", text.split("\n", 1)[0])
    return listed or (braces.group(1).split(",") if braces else [])


def test_every_program_is_found():
    assert {"policy", "reward", "trainer", "online", "loadtest", "experience"} <= set(PROGRAMS)


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_of_every_command_and_subcommand(program):
    top = _help(f"services.{program}")
    assert top.returncode == 0, top.stderr[-3000:]
    subcommands = _subcommands(top.stdout + top.stderr)
    if program in ("trainer", "online", "reward", "loadtest"):
        assert subcommands, top.stdout
    for command in subcommands:
        proc = _help(f"services.{program}", command)
        assert proc.returncode == 0, f"{program} {command} --help:\n{proc.stderr[-3000:]}"
        assert "usage:" in proc.stdout, f"{program} {command} --help printed no usage:\n{proc.stdout[-2000:]}"
        assert "Traceback" not in proc.stderr
