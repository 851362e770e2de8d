"""The policy's staging file sink: a push streamed straight into a safetensors file, or nothing left behind."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.common.errors import InvalidArgument
from services.common.weight_stream import PushAssembler, TensorSpec, push_requests
from services.policy.weight_staging import (
    SafetensorsFileSink,
    release_staging,
    remove_abandoned_staging,
    staging_dir,
)

TENSORS = {
    "model.layers.0.self_attn.q_proj.weight": torch.randn(6, 4),
    "model.norm.weight": torch.randn(4).to(torch.bfloat16),
    "lm_head.weight": torch.randn(3, 4).half(),
}
MANIFEST = {name: TensorSpec(tuple(t.shape)) for name, t in TENSORS.items()}


def assembler(tmp_path, require_complete=True) -> PushAssembler:
    return PushAssembler(MANIFEST, 1 << 30, require_complete, sink=SafetensorsFileSink(tmp_path, MANIFEST))


def test_a_whole_push_is_a_valid_safetensors_file_with_the_sent_bytes(tmp_path):
    receiver = assembler(tmp_path)
    for request in push_requests(list(TENSORS.items()), chunk_bytes=7):
        receiver.feed(request)
    staged = receiver.finish()
    loaded = load_file(str(staged.path))
    assert list(staged.names) == list(TENSORS)
    for name, tensor in TENSORS.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    header = int.from_bytes(staged.path.read_bytes()[:8], "little")
    assert (8 + header) % 64 == 0, "tensor data starts aligned"


def test_a_cut_off_push_leaves_no_file(tmp_path):
    receiver = assembler(tmp_path)
    requests = list(push_requests(list(TENSORS.items()), chunk_bytes=16))
    for request in requests[:-1]:  # no commit
        receiver.feed(request)
    with pytest.raises(InvalidArgument, match="commit"):
        receiver.finish()
    receiver.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_rejected_chunk_leaves_no_file(tmp_path):
    receiver = assembler(tmp_path)
    bad = {"model.norm.weight": torch.randn(5)}  # wrong shape
    with pytest.raises(InvalidArgument, match="shape"):
        for request in push_requests(list(bad.items())):
            receiver.feed(request)
    receiver.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_starting_server_removes_staging_left_by_dead_servers_but_not_live_ones(tmp_path):
    def staging(name: str) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "push-0.safetensors").write_bytes(b"x" * 1024)
        (directory / ".in-use.lock").touch()
        return directory

    dead, live, mine = staging("rlhf-policy-1"), staging("rlhf-policy-2"), staging("rlhf-policy-3")
    unlocked_legacy = tmp_path / "rlhf-policy-4"  # an older server's directory: no lock file, left alone
    unlocked_legacy.mkdir()
    other = tmp_path / "something-else"
    other.mkdir()
    (other / ".in-use.lock").touch()
    holder = os.open(live / ".in-use.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live server holds its lock
    try:
        removed = remove_abandoned_staging(tmp_path, keep=mine)
    finally:
        os.close(holder)
    assert removed == [dead]
    assert not dead.exists()
    assert (live / "push-0.safetensors").exists() and (mine / "push-0.safetensors").exists()
    assert unlocked_legacy.exists() and other.exists()


def test_the_default_staging_directory_is_locked_while_the_server_lives():
    path = staging_dir("")
    try:
        probe = os.open(path / ".in-use.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        assert path not in remove_abandoned_staging(path.parent, keep=path.parent / "none")
        assert path.is_dir()
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_shutdown_removes_the_default_directory_lock_and_all_but_keeps_a_configured_one(tmp_path):
    default = staging_dir("")
    (default / "push-1.safetensors").write_bytes(b"x")
    release_staging(default, "")
    assert not default.exists()  # the lock file inside must not stop the removal (it did: ENOTEMPTY)

    configured = tmp_path / "staging"
    path = staging_dir(str(configured))
    (path / "push-2.safetensors").write_bytes(b"x")
    (path / "restore-3.safetensors").write_bytes(b"x")
    (path / "mine.txt").write_bytes(b"x")
    release_staging(path, str(configured))
    assert sorted(p.name for p in path.iterdir()) == ["mine.txt"]
