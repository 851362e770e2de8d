"""Checkpoints survive a crash at any instant of a write (issue 16, defect 6).

A crash is simulated by raising at the k-th file-system call of a write (every
rename, replace, fsync, rmtree), for every k: whatever was durable before must
still resume.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from services.trainer import checkpoint


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs."""


def _contents(step: int, tag: str = ""):
    def save(directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(bytes([step]) * 64)
        (directory / "tokenizer").mkdir()
        (directory / "tokenizer" / "vocab.json").write_text(json.dumps({"step": step, "tag": tag}))

    return save


def _write(out: Path, step: int, tag: str = "") -> Path:
    return checkpoint.write_checkpoint(out, step, _contents(step, tag), {"step": step, "tag": tag})


def _loadable(out: Path) -> dict:
    """What `--resume latest` restores, checked for completeness."""
    path = checkpoint.resolve_resume("latest", out)
    state = checkpoint.read_state(path)
    assert (path / "model.safetensors").read_bytes() == bytes([state["step"]]) * 64
    assert json.loads((path / "tokenizer" / "vocab.json").read_text()) == {"step": state["step"], "tag": state["tag"]}
    assert (path / checkpoint.RNG_FILE).is_file()
    return state


OPERATIONS = [(os, "rename"), (os, "replace"), (os, "fsync"), (shutil, "rmtree")]


def _crash_at(monkeypatch, k: int) -> list[str]:
    """Makes the k-th (1-based) file-system operation raise Crash; returns the log of operations done."""
    done: list[str] = []
    for module, name in OPERATIONS:
        real = getattr(module, name)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            if len(done) + 1 == k:
                raise Crash(_name)
            done.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)
    return done


def _operations_of_one_write(tmp_path, monkeypatch, resave: bool) -> int:
    out = tmp_path / "count"
    _write(out, 1)
    _write(out, 2)
    with monkeypatch.context() as patch:
        done = _crash_at(patch, 10**9)
        _write(out, 2 if resave else 3, "new")
    return len(done)


@pytest.mark.parametrize("resave", [False, True], ids=["next-step", "same-step-again"])
def test_a_crash_at_any_point_keeps_a_complete_checkpoint(tmp_path, monkeypatch, resave):
    total = _operations_of_one_write(tmp_path, monkeypatch, resave)
    assert total >= 5
    new_step = 2 if resave else 3
    for k in range(1, total + 1):
        out = tmp_path / f"crash-{k}"
        _write(out, 1)
        _write(out, 2, "old")
        with monkeypatch.context() as patch:
            _crash_at(patch, k)
            with pytest.raises(Crash):
                _write(out, new_step, "new")
        state = _loadable(out)
        assert (state["step"], state["tag"]) in {(2, "old"), (new_step, "new")}, k
        # the next write after the crash works and is what resumes
        _write(out, new_step + 1, "after")
        assert _loadable(out)["step"] == new_step + 1


def test_latest_pointer_is_switched_after_the_files_are_durable(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = _write(tmp_path, 1)
    pointer = tmp_path / "checkpoints" / checkpoint.LATEST
    assert pointer.read_text().strip() == path.name
    written = [p for p in path.rglob("*")]
    staged_names = {str(p.relative_to(path)) for p in written}
    # every file and directory of the checkpoint was fsynced (under its staging name), then the parent
    synced_rel = {s.split(".partial/", 1)[1] for s in synced if ".partial/" in s}
    assert staged_names <= synced_rel
    assert str(tmp_path / "checkpoints") in synced


def test_resume_reads_the_pointer_not_the_highest_name(tmp_path):
    _write(tmp_path, 1)
    _write(tmp_path, 2)
    (tmp_path / "checkpoints" / checkpoint.LATEST).write_text("step-000001\n")
    assert checkpoint.resolve_resume("latest", tmp_path).name == "step-000001"
    # a pointer naming a directory removed by hand falls back to the newest complete checkpoint
    shutil.rmtree(tmp_path / "checkpoints" / "step-000001")
    assert checkpoint.resolve_resume("latest", tmp_path).name == "step-000002"


def test_same_step_saved_twice_leaves_one_directory(tmp_path):
    _write(tmp_path, 4, "first")
    second = _write(tmp_path, 4, "second")
    steps = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert steps == [second]
    assert _loadable(tmp_path)["tag"] == "second"


def test_prune_keeps_the_newest_and_what_latest_names(tmp_path):
    for step in (1, 2, 3, 4):
        _write(tmp_path, step)
    (tmp_path / "checkpoints" / checkpoint.LATEST).write_text("step-000002\n")
    checkpoint.prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in checkpoint.complete_checkpoints(tmp_path)) == ["step-000002", "step-000004"]


def test_metrics_lines_are_fsynced_per_step_and_truncated_atomically(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    metrics = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        checkpoint.append_metrics(metrics, {"step": step})
    assert synced.count(str(metrics)) == 3
    checkpoint.truncate_metrics(metrics, 2)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]
    assert not list(tmp_path.glob(".*.tmp"))
