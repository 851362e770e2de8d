"""The same-host push: a segment is taken and verified, or refused untouched (other host, permissions), or refused
as DATA_LOSS when it changed after its checksum; through the WeightManager it applies like a streamed push."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument
from services.common.shared_segment import host_id, segment_requests, take_segment, write_segment
from services.common.weight_stream import TensorSpec, parse_begin, push_requests
from tests.unit.test_weight_manager import ATTN, MLP, manager, stream, weights

TENSORS = [("a.weight", torch.arange(12, dtype=torch.float32).reshape(3, 4)), ("b.bias", torch.ones(5).half())]
MANIFEST = {name: TensorSpec(tuple(t.shape)) for name, t in TENSORS}


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    shm, staging = tmp_path / "shm", tmp_path / "staging"
    shm.mkdir(exist_ok=True)
    staging.mkdir(exist_ok=True)
    return shm, staging


def take(requests, staging: Path, manifest=MANIFEST):
    begin, commit = requests[0].begin, requests[-1].commit
    header = parse_begin(begin, 10**9)
    return take_segment(begin.segment, header, bytes(commit.digest or commit.sha256), manifest, staging)


def test_a_segment_is_taken_verified_and_hashed_like_the_stream(tmp_path):
    shm, staging = dirs(tmp_path)
    segment = write_segment(TENSORS, shm)
    assert segment.path.stat().st_mode & 0o777 == 0o600
    requests = list(segment_requests(segment, TENSORS, note="same host", push_id="t-1"))
    assert [r.WhichOneof("item") for r in requests] == ["begin", "commit"]
    assert requests[0].begin.segment.host_id == host_id() != ""
    streamed = list(push_requests(TENSORS))
    assert requests[-1].commit.digest == streamed[-1].commit.digest  # one checksum definition for both paths
    staged = take(requests, staging)
    assert not segment.path.exists() and staged.path.parent == staging  # taken over: the sender's name is gone
    assert staged.names == ("a.weight", "b.bias") and staged.total_bytes == 12 * 4 + 5 * 2
    loaded = load_file(str(staged.path))
    for name, tensor in TENSORS:
        assert torch.equal(loaded[name], tensor)


def test_a_segment_from_another_host_is_refused_untouched(tmp_path):
    shm, staging = dirs(tmp_path)
    segment = write_segment(TENSORS, shm)
    requests = list(segment_requests(segment, TENSORS))
    requests[0].begin.segment.host_id = "other-boot-id:1:2"
    with pytest.raises(FailedPrecondition, match="another host"):
        take(requests, staging)
    assert segment.path.exists() and not list(staging.iterdir())


def test_a_segment_others_can_read_or_a_link_is_refused_untouched(tmp_path):
    shm, staging = dirs(tmp_path)
    segment = write_segment(TENSORS, shm)
    requests = list(segment_requests(segment, TENSORS))
    os.chmod(segment.path, 0o644)
    with pytest.raises(FailedPrecondition, match="mode 644"):
        take(requests, staging)
    assert segment.path.exists() and not list(staging.iterdir())
    os.chmod(segment.path, 0o600)
    link = shm / "link.safetensors"
    link.symlink_to(segment.path)
    requests[0].begin.segment.path = str(link)
    with pytest.raises(FailedPrecondition, match="symbolic link"):
        take(requests, staging)
    assert segment.path.exists() and not list(staging.iterdir())


def test_a_segment_changed_after_its_checksum_is_data_loss(tmp_path):
    shm, staging = dirs(tmp_path)
    segment = write_segment(TENSORS, shm)
    requests = list(segment_requests(segment, TENSORS))
    with open(segment.path, "r+b") as handle:  # the sender reuses the segment before the server took it
        handle.seek(-1, os.SEEK_END)
        handle.write(b"\x7f")
    with pytest.raises(DataLoss, match="changed after its checksum"):
        take(requests, staging)
    assert not segment.path.exists() and not list(staging.iterdir())  # taken, then dropped: nothing stays


def test_a_mismatched_or_malformed_segment_is_invalid(tmp_path):
    shm, staging = dirs(tmp_path)
    segment = write_segment([("a.weight", torch.zeros(4, 3))], shm)
    with pytest.raises(InvalidArgument, match="does not match"):
        take(list(segment_requests(segment, [("a.weight", torch.zeros(4, 3))])), staging)
    segment = write_segment(TENSORS, shm)
    requests = list(segment_requests(segment, TENSORS))
    with open(segment.path, "r+b") as handle:
        handle.write((10**12).to_bytes(8, "little"))
    with pytest.raises(InvalidArgument, match="header"):
        take(requests, staging)
    assert not list(staging.iterdir())


def test_the_manager_applies_a_same_host_push_and_keeps_the_version_on_refusal(tmp_path, monkeypatch):
    async def scenario():
        m, engine = manager(tmp_path)
        shm = tmp_path / "shm"
        shm.mkdir()
        first = weights(3.0)
        segment = write_segment(first, shm)
        result = await m.push(stream(segment_requests(segment, first, push_id="shm-1")))
        assert (result.version, result.push_id, result.checksum) == (1, "shm-1", "xxh3_128")
        assert result.digest == segment.digest and torch.equal(engine.weights[ATTN], torch.full((2, 2), 3.0))
        assert m.history.current.sources[MLP].parent == m.staging  # retained for rollback like a streamed push
        foreign = write_segment(weights(4.0), shm)
        requests = list(segment_requests(foreign, weights(4.0)))
        requests[0].begin.segment.host_id = "elsewhere"
        with pytest.raises(FailedPrecondition, match="another host"):
            await m.push(stream(requests))
        assert m.gate.version == 1 and foreign.path.exists()
        stale = write_segment(weights(5.0), shm)
        with pytest.raises(FailedPrecondition, match="expected version 0"):
            await m.push(stream(segment_requests(stale, weights(5.0), expected_version=0)))
        assert m.gate.version == 1 and not stale.path.exists()
        assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 3.0))
        assert sorted(p.name for p in m.staging.iterdir()) == [m.history.current.sources[MLP].name]
        m.host_id = ""  # same_host_pushes off: refused untouched, the sender streams instead
        off = write_segment(weights(6.0), shm)
        with pytest.raises(FailedPrecondition, match="does not take same-host pushes"):
            await m.push(stream(segment_requests(off, weights(6.0))))
        assert m.gate.version == 1 and off.path.exists()

    asyncio.run(scenario())


def _local_replica(tmp_path: Path, staging: Path):
    from safetensors.torch import save_file

    from services.clients.policy import PolicyReplica
    from services.policy.weight_history import WeightHistory, checkpoint_sources
    from tests.support.local_policy import FakeWeightEngine, LocalPolicy
    from tests.unit.test_weight_manager import MANIFEST, START

    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    save_file(START, str(model_dir / "model.safetensors"))
    engine = FakeWeightEngine()
    policy = LocalPolicy(engine, MANIFEST, staging, WeightHistory(checkpoint_sources(model_dir), keep=1))
    replica = PolicyReplica.__new__(PolicyReplica)  # a replica over the in-process stub instead of a channel
    replica.name, replica.address, replica.writer = "local", "local", "trainer"
    replica.stub, replica.timeout_s, replica.retries = policy.stub, 30.0, 0
    replica.in_rotation, replica.reason, replica.version, replica.highest = True, "", None, 0
    replica.host_id, replica.shared_memory = None, True
    return policy, replica, engine


def test_the_client_takes_the_same_host_path_by_itself_and_streams_when_refused(tmp_path):
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm_staging:  # staging on the segments' filesystem
        policy, replica, engine = _local_replica(tmp_path, Path(shm_staging))
        try:
            reply = replica.push(weights(2.0), version=1, note="same host")
            assert reply.weight_version == 1 and replica.shared_memory  # the segment path was taken, not refused
            assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 2.0))
            assert not list(Path("/dev/shm").glob(f"rlhf-push-{os.getpid()}-*"))  # no segment left behind
        finally:
            policy.close()
    policy, replica, engine = _local_replica(tmp_path, tmp_path / "staging")  # cannot take a /dev/shm file
    (tmp_path / "staging").mkdir()
    try:
        reply = replica.push(weights(3.0), version=2, note="falls back")
        assert reply.weight_version == 2 and not replica.shared_memory  # refused untouched, then streamed
        assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 3.0))
        assert not list(Path("/dev/shm").glob(f"rlhf-push-{os.getpid()}-*"))
    finally:
        policy.close()
