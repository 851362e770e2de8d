"""The same-host push: a segment is copied and verified, or refused unread (other host, permissions), or refused
as DATA_LOSS when it changed after its checksum; through the WeightManager it applies like a streamed push, and the
sender rewrites one segment push after push."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.common import shared_segment
from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument
from services.common.shared_segment import (
    STREAM_INSTEAD,
    SegmentWriter,
    host_id,
    segment_requests,
    take_segment,
    write_segment,
)
from services.common.weight_stream import TensorSpec, parse_begin, push_requests
from tests.unit.test_weight_manager import ATTN, MLP, manager, stream, weights

TENSORS = [("a.weight", torch.arange(12, dtype=torch.float32).reshape(3, 4)), ("b.bias", torch.ones(5).half())]
MANIFEST = {name: TensorSpec(tuple(t.shape)) for name, t in TENSORS}


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    shm, staging = tmp_path / "shm", tmp_path / "staging"
    shm.mkdir(exist_ok=True)
    staging.mkdir(exist_ok=True)
    return shm, staging


def take(requests, staging: Path, manifest=MANIFEST, reuse: Path | None = None):
    begin, commit = requests[0].begin, requests[-1].commit
    header = parse_begin(begin, 10**9)
    return take_segment(begin.segment, header, bytes(commit.digest or commit.sha256), manifest, staging, None, reuse)


def test_a_segment_is_copied_verified_and_hashed_like_the_stream(tmp_path):
    shm, staging = dirs(tmp_path)
    segment = write_segment(TENSORS, shm)
    assert segment.path.stat().st_mode & 0o777 == 0o600
    requests = list(segment_requests(segment, TENSORS, note="same host", push_id="t-1"))
    assert [r.WhichOneof("item") for r in requests] == ["begin", "commit"]
    assert requests[0].begin.segment.host_id == host_id() != ""
    streamed = list(push_requests(TENSORS))
    assert requests[-1].commit.digest == streamed[-1].commit.digest  # one checksum definition for both paths
    staged = take(requests, staging)
    assert not segment.path.exists() and staged.path.parent == staging  # no spare: the file itself was moved
    assert staged.names == ("a.weight", "b.bias") and staged.total_bytes == 12 * 4 + 5 * 2
    loaded = load_file(str(staged.path))
    for name, tensor in TENSORS:
        assert torch.equal(loaded[name], tensor)


def test_the_receiver_takes_the_segment_and_hands_its_spare_back_to_the_sender(tmp_path):
    """No bytes are copied on either side: the segment is moved into staging, the spare staging file (touched
    pages) is linked at the segment's path, and the sender adopts and rewrites it; a smaller push leaves no
    stale tail."""
    shm, staging = dirs(tmp_path)
    writer = SegmentWriter(shm)
    first = writer.write(TENSORS)
    first_inode = first.path.stat().st_ino
    spare = staging / "push-spare.safetensors"
    spare.write_bytes(b"\xff" * 4096)  # a retired push's file, longer than this push
    os.chmod(spare, 0o640)
    spare_inode = spare.stat().st_ino
    staged = take(list(segment_requests(first, TENSORS)), staging, reuse=spare)
    assert staged.path.stat().st_ino == first_inode and not spare.exists()  # moved, not copied
    assert torch.equal(load_file(str(staged.path))["a.weight"], TENSORS[0][1])
    handed = first.path.stat()
    assert handed.st_ino == spare_inode and handed.st_mode & 0o777 == 0o600  # the spare, private, at the path
    assert writer.settle()  # adopted
    smaller = [("a.weight", torch.full((3, 4), 7.0))]
    second = writer.write(smaller)
    assert second.path == first.path and second.path.stat().st_ino == spare_inode  # rewritten in place
    assert second.path.stat().st_size < 4096
    again = take(list(segment_requests(second, smaller)), staging, {"a.weight": MANIFEST["a.weight"]}, staged.path)
    assert again.path.stat().st_ino == spare_inode and second.path.stat().st_ino == first_inode  # traded back
    assert torch.equal(load_file(str(again.path))["a.weight"], torch.full((3, 4), 7.0))
    assert writer.settle()
    os.chmod(second.path, 0o644)  # someone loosened it: the writer starts a new private segment
    third = writer.write(TENSORS)
    assert third.path != second.path and third.path.stat().st_mode & 0o777 == 0o600
    assert not second.path.exists()
    taken = take(list(segment_requests(third, TENSORS)), staging)  # no spare: moved, and the writer starts anew
    assert not third.path.exists() and taken.path.exists()
    assert not writer.settle()  # nothing at its path: it lets go of the taken file
    fourth = writer.write(TENSORS)
    assert fourth.path != third.path and fourth.path.exists()
    writer.close()
    assert not fourth.path.exists()


def test_a_writer_whose_segment_was_kept_allocates_the_next_one_before_the_next_push(tmp_path):
    """A receiver without a spare keeps the segment it took; the writer then writes its next segment's pages in
    the background, and the next write goes into that file (pages the write need not fault in)."""
    shm, staging = dirs(tmp_path)
    big = [("a.weight", torch.randn(256, 256)), ("b.bias", torch.ones(5).half())]
    manifest = {name: TensorSpec(tuple(t.shape)) for name, t in big}
    writer = SegmentWriter(shm)
    first = writer.write(big)
    size = first.path.stat().st_size
    take(list(segment_requests(first, big)), staging, manifest)  # no spare: the receiver keeps the file
    assert not writer.settle()
    prepared_path, _ = writer._next.result()
    prepared = prepared_path.stat()
    assert prepared_path != first.path and prepared.st_mode & 0o777 == 0o600
    assert prepared.st_size == size and prepared.st_blocks * 512 >= size  # written, not a sparse file
    second = writer.write([("a.weight", torch.zeros(256, 256)), ("b.bias", torch.ones(5).half())])
    assert second.path == prepared_path and second.path.stat().st_ino == prepared.st_ino
    assert second.path.stat().st_size == size
    staged = take(list(segment_requests(second, big)), staging, manifest)  # no spare again
    assert torch.equal(load_file(str(staged.path))["a.weight"], torch.zeros(256, 256))
    assert not writer.settle()
    writer.close()  # the segment allocated for a write that never came is removed too
    assert list(shm.iterdir()) == []


def test_a_spare_is_not_handed_back_over_a_file_already_at_the_path(tmp_path, monkeypatch):
    shm, staging = dirs(tmp_path)
    writer = SegmentWriter(shm)
    segment = writer.write(TENSORS)
    spare = staging / "push-spare.safetensors"
    spare.write_bytes(b"\0" * 64)

    def squat(source, staged, info, moved=shared_segment._moved):
        taken = moved(source, staged, info)
        source.write_bytes(b"someone else's")  # appears between the move and the hand-back
        return taken

    monkeypatch.setattr(shared_segment, "_moved", squat)
    take(list(segment_requests(segment, TENSORS)), staging, reuse=spare)
    assert segment.path.read_bytes() == b"someone else's" and not spare.exists()  # untouched; spare freed
    assert not writer.settle()  # not a private file of the writer's: it is not adopted
    writer.close()


def test_a_writer_removes_segments_whose_writer_died_and_keeps_live_ones(tmp_path):
    shm, _ = dirs(tmp_path)
    live = SegmentWriter(shm)
    live_path = live.write(TENSORS).path
    dead = shm / "rlhf-push-99999-0.safetensors"  # a killed sender's: nobody holds its lock
    dead.write_bytes(b"\0" * 64)
    os.utime(dead, (0, 0))
    fresh = shm / "rlhf-push-99999-1.safetensors"  # just created: its writer may not have locked it yet
    fresh.write_bytes(b"\0" * 64)
    newcomer = SegmentWriter(shm)
    newcomer.write(TENSORS)
    assert not dead.exists() and fresh.exists() and live_path.exists()
    live.close()
    newcomer.close()
    assert not live_path.exists()


def test_a_segment_from_another_host_is_refused_untouched(tmp_path):
    shm, staging = dirs(tmp_path)
    segment = write_segment(TENSORS, shm)
    requests = list(segment_requests(segment, TENSORS))
    requests[0].begin.segment.host_id = "other-boot-id:1:2"
    with pytest.raises(FailedPrecondition, match="another host") as refused:
        take(requests, staging)
    assert str(refused.value).endswith(STREAM_INSTEAD)  # the sender streams instead
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
    replica.host_id, replica.shared_memory, replica.segment = None, True, SegmentWriter()
    return policy, replica, engine


def test_the_client_takes_the_same_host_path_by_itself_and_streams_when_refused(tmp_path):
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm_staging:  # staging on the segments' filesystem
        policy, replica, engine = _local_replica(tmp_path, Path(shm_staging))
        try:
            reply = replica.push(weights(2.0), version=1, note="same host")
            assert reply.weight_version == 1 and replica.shared_memory  # the segment path was taken, not refused
            assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 2.0))
            for version in (2, 3, 4):  # the policy keeps one earlier version: a spare exists from the third push on
                reply = replica.push(weights(float(version)), version=version, note="same host again")
                assert reply.weight_version == version
                assert torch.equal(engine.weights[ATTN], torch.full((2, 2), float(version)))
            kept = replica.segment.path
            assert kept.exists()  # the policy's spare, handed back: the trainer rewrites its pages
            replica.push(weights(5.0), version=5, note="rewritten in place")
            assert replica.segment.path == kept and torch.equal(engine.weights[ATTN], torch.full((2, 2), 5.0))
            replica.segment.close()  # what PolicyReplica.close does
            assert not kept.exists()  # no segment left behind
        finally:
            policy.close()
    (tmp_path / "staging").mkdir()
    policy, replica, engine = _local_replica(tmp_path, tmp_path / "staging")  # another file system: copied too
    try:
        reply = replica.push(weights(3.0), version=1, note="across file systems")
        assert reply.weight_version == 1 and replica.shared_memory
        assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 3.0))
        policy.weights.host_id = ""  # same-host pushes turned off on the server: refused, then streamed
        reply = replica.push(weights(4.0), version=2, note="falls back")
        assert reply.weight_version == 2 and not replica.shared_memory
        assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 4.0))
        assert replica.segment.path is None  # the writer removed its segment
    finally:
        policy.close()
