"""WeightHistory: which versions a policy can roll back to, which files that needs, and what a restore loads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.policy.version_gate import VersionGate
from services.policy.weight_history import UnknownVersion, WeightHistory, checkpoint_sources, write_restore_file

START = Path("/model/model.safetensors")
NAMES = ["a", "b", "c"]


def history(keep: int) -> WeightHistory:
    return WeightHistory(dict.fromkeys(NAMES, START), keep)


def test_full_pushes_keep_the_last_k_versions_and_free_older_files():
    h = history(keep=2)
    assert h.record_push(1, "one", Path("/s/1"), NAMES) == []
    assert h.record_push(2, "two", Path("/s/2"), NAMES) == []
    assert [v.version for v in h.restorable()] == [1, 0]
    assert h.previous() == 1
    freed = h.record_push(3, "three", Path("/s/3"), NAMES)
    assert freed == []  # version 0 dropped out; its file is the checkpoint, never deleted
    assert [v.version for v in h.restorable()] == [2, 1]
    assert h.record_push(4, "four", Path("/s/4"), NAMES) == [Path("/s/1")]
    with pytest.raises(UnknownVersion):
        h.plan_restore(1)
    assert h.plan_restore(2) == dict.fromkeys(NAMES, Path("/s/2"))
    assert h.plan_restore(4) == {}  # the current version: nothing to load


def test_restore_swaps_current_and_target_and_loads_only_what_differs():
    h = history(keep=2)
    h.record_push(1, "partial", Path("/s/1"), ["a"])  # a partial push: b and c still come from the checkpoint
    assert h.plan_restore(0) == {"a": START}
    assert h.record_restore(0) == []
    assert h.current.version == 0 and [v.version for v in h.restorable()] == [1]
    assert h.plan_restore(1) == {"a": Path("/s/1")}  # roll forward again
    assert h.plan_restore(1, full=True) == {"a": Path("/s/1"), "b": START, "c": START}


def test_keep_zero_frees_every_push_once_applied():
    h = history(keep=0)
    assert h.record_push(1, "", Path("/s/1"), NAMES) == [Path("/s/1")]
    assert h.restorable() == [] and h.previous() is None


def test_a_file_shared_by_versions_is_freed_only_when_none_reads_it():
    h = history(keep=1)
    h.record_push(1, "", Path("/s/1"), NAMES)
    h.record_push(2, "", Path("/s/2"), ["a"])  # b, c of version 2 still read /s/1
    assert h.record_push(3, "", Path("/s/3"), ["b"]) == []  # version 1 dropped, but 2 and 3 read /s/1
    assert h.record_push(4, "", Path("/s/4"), NAMES) == []  # 3 (restorable) reads a from /s/2, b /s/3, c /s/1
    assert h.restorable()[0].sources == {"a": Path("/s/2"), "b": Path("/s/3"), "c": Path("/s/1")}
    assert h.record_push(5, "", Path("/s/5"), NAMES) == [Path("/s/1"), Path("/s/2"), Path("/s/3")]


def test_restore_file_gathers_tensors_from_several_files(tmp_path):
    save_file({"a": torch.zeros(2), "b": torch.ones(3)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "staging").mkdir()
    pushed = tmp_path / "staging" / "push.safetensors"
    save_file({"a": torch.full((2,), 7.0)}, str(pushed))
    sources = checkpoint_sources(tmp_path)
    assert sources == {"a": tmp_path / "model.safetensors", "b": tmp_path / "model.safetensors"}
    path = write_restore_file({"a": pushed, "b": sources["b"]}, tmp_path / "staging")
    loaded = load_file(str(path))
    assert loaded["a"].tolist() == [7.0, 7.0] and loaded["b"].tolist() == [1.0, 1.0, 1.0]


def test_version_gate_never_reuses_a_number():
    gate = VersionGate()

    async def run() -> None:
        assert gate.advance("one") == 1
        assert gate.advance("five", 5) == 5
        assert gate.restore(1, "rollback") == 1
        assert (gate.version, gate.highest) == (1, 5)
        assert gate.advance("next") == 6  # above the highest, not the current
        with pytest.raises(ValueError):
            gate.advance("stale", 6)

    asyncio.run(run())
