"""WeightManager without gRPC: pushes, the version gate, rollback, identity and failure states, over a fake engine."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from services.common import weight_stream
from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.weight_stream import TensorSpec, fused_groups_for, push_requests
from services.policy import weight_staging
from services.policy.weight_history import Origin, WeightHistory, checkpoint_sources
from services.policy.weights import EngineState, WeightManager
from tests.support.local_policy import FakeWeightEngine

ATTN = "model.layers.0.self_attn.o_proj.weight"
MLP = "model.layers.0.mlp.down_proj.weight"
START = {ATTN: torch.zeros(2, 2), MLP: torch.zeros(2, 2)}
MANIFEST = {name: TensorSpec(tuple(t.shape)) for name, t in START.items()}


def weights(value: float, names=(ATTN, MLP)) -> list[tuple[str, torch.Tensor]]:
    return [(name, torch.full((2, 2), value)) for name in names]


def manager(tmp_path: Path, keep: int = 2, engine: FakeWeightEngine | None = None, serving: bool = True):
    """A manager over a real checkpoint file and history, fused groups as for a Llama (partial pushes allowed)."""
    model_dir, staging = tmp_path / "model", tmp_path / "staging"
    model_dir.mkdir(exist_ok=True)
    staging.mkdir(exist_ok=True)
    save_file(START, str(model_dir / "model.safetensors"))
    engine = engine or FakeWeightEngine()
    engine.weights.update({k: v.clone() for k, v in START.items()})
    m = WeightManager(
        engine,
        MANIFEST,
        staging,
        max_push_bytes=10**6,
        drain_timeout_s=0.5,
        fused_groups=fused_groups_for("llama"),
        history=WeightHistory(checkpoint_sources(model_dir), keep),
    )
    if serving:
        m.mark_serving()
    return m, engine


async def stream(requests):
    for request in requests:
        yield request


async def push(m: WeightManager, tensors, **kwargs):
    return await m.push(stream(push_requests(tensors, 16, **kwargs)))


def test_a_push_serves_the_next_version_and_records_its_identity(tmp_path):
    async def scenario():
        m, engine = manager(tmp_path)
        result = await push(m, weights(1.0), note="step 1", push_id="trainer-v1")
        assert (result.version, result.previous_version, result.num_tensors) == (1, 0, 2)
        assert result.push_id == "trainer-v1" and len(result.digest) == 16 and result.checksum == "xxh3_128"
        assert m.state == EngineState.SERVING and m.gate.version == 1
        assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 1.0))
        current = m.current
        assert (current.version, current.push_id, current.digest, current.origin) == (
            1,
            "trainer-v1",
            result.digest,
            Origin.PUSH,
        )
        second = await push(m, weights(2.0), version=5, push_id="trainer-v5")
        assert second.version == 5 and second.digest != result.digest
        restorable = {v.version: v for v in m.history.restorable()}
        assert restorable[1].push_id == "trainer-v1" and restorable[1].digest == result.digest
        assert restorable[1].checksum == "xxh3_128"
        assert restorable[0].origin == Origin.CHECKPOINT
        assert not list((tmp_path / "staging").glob("restore-*"))

    asyncio.run(scenario())


def test_version_guards_refuse_before_anything_loads(tmp_path):
    async def scenario():
        m, engine = manager(tmp_path)
        await push(m, weights(1.0), version=3)
        with pytest.raises(FailedPrecondition, match="expected version 2 but 3 is serving"):
            await push(m, weights(2.0), expected_version=2)
        with pytest.raises(FailedPrecondition, match="never reuses a number"):
            await push(m, weights(2.0), version=3)
        with pytest.raises(InvalidArgument, match="push_id must be"):
            await push(m, weights(2.0), push_id="bad id!")
        requests = list(push_requests(weights(2.0), 16))
        requests[-1].commit.digest = b"\0" * 16
        with pytest.raises(DataLoss, match="checksum"):
            await m.push(stream(requests))
        assert len(engine.loads) == 1 and m.gate.version == 3 and m.gate.highest == 3
        assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == sorted(
            p.name for p in {*m.history._files}
        ), "refused pushes leave no staged file behind"

    asyncio.run(scenario())


def test_a_swap_waits_for_running_requests_and_new_ones_wait_for_it(tmp_path):
    async def scenario():
        m, _ = manager(tmp_path)
        order = []
        leased = asyncio.Event()
        release = asyncio.Event()

        async def request():
            async with m.gate.lease() as version:
                order.append(("request", version))
                leased.set()
                await release.wait()

        running = asyncio.create_task(request())
        await leased.wait()
        pushing = asyncio.create_task(push(m, weights(1.0)))
        await asyncio.sleep(0.05)
        assert not pushing.done() and m.gate.swapping  # draining: the running request finishes on version 0

        async def late():
            async with m.gate.lease() as version:
                order.append(("late", version))

        waiting = asyncio.create_task(late())
        await asyncio.sleep(0.01)
        assert m.gate.waiting == 1  # a new request waits for the swap instead of mixing versions
        release.set()
        await asyncio.wait_for(pushing, 5)
        await running
        await waiting
        assert order == [("request", 0), ("late", 1)]

    asyncio.run(scenario())


def test_stragglers_are_aborted_after_the_drain_timeout(tmp_path):
    async def scenario():
        m, engine = manager(tmp_path)
        leased = asyncio.Event()

        async def stuck():
            async with m.gate.lease():
                m.in_flight.add("sample-1")
                leased.set()
                while "sample-1" not in engine.aborted:
                    await asyncio.sleep(0.01)
                m.in_flight.discard("sample-1")

        task = asyncio.create_task(stuck())
        await leased.wait()
        assert (await push(m, weights(1.0))).version == 1
        await task
        assert engine.aborted == ["sample-1"]

    asyncio.run(scenario())


def test_rollback_restores_an_earlier_version_under_its_own_number(tmp_path):
    async def scenario():
        m, engine = manager(tmp_path)
        await push(m, weights(1.0), push_id="p1")
        await push(m, weights(2.0, names=(ATTN,)), push_id="p2")  # partial: a whole o_proj unit
        result = await m.rollback(None, "bad step")
        assert (result.version, result.previous_version, result.num_tensors) == (1, 2, 1)
        assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 1.0))
        assert m.gate.version == 1 and m.gate.highest == 2 and m.gate.version_note == "bad step"
        assert m.current.origin == Origin.ROLLBACK and m.current.push_id == "p1"
        noop = await m.rollback(1, "again")
        assert (noop.version, noop.num_tensors) == (1, 0)
        with pytest.raises(NotFound, match="version 7 is not restorable"):
            await m.rollback(7, "")
        assert (await push(m, weights(3.0))).version == 3  # numbers are never reused after a rollback

    asyncio.run(scenario())


def test_rollback_needs_retained_versions(tmp_path):
    async def scenario():
        m, _ = manager(tmp_path, keep=0)
        await push(m, weights(1.0))
        with pytest.raises(FailedPrecondition, match="keep_versions=0"):
            await m.rollback(None, "")

    asyncio.run(scenario())


def test_nothing_changes_while_starting(tmp_path):
    async def scenario():
        m, engine = manager(tmp_path, serving=False)
        assert m.state == EngineState.STARTING
        with pytest.raises(Unavailable, match="still starting"):
            m.check_serving()
        with pytest.raises(Unavailable, match="still starting"):
            await push(m, weights(1.0))
        with pytest.raises(Unavailable, match="still starting"):
            await m.rollback(0, "")
        assert not engine.loads

    asyncio.run(scenario())


def test_a_failed_load_marks_the_engine_failed_until_a_complete_push(tmp_path):
    async def scenario():
        m, engine = manager(tmp_path)
        await push(m, weights(1.0))
        engine.fail_next = True
        with pytest.raises(Unavailable, match="loading the pushed weights failed"):
            await push(m, weights(2.0))
        assert m.state == EngineState.FAILED and m.gate.version == 1
        with pytest.raises(Unavailable, match="half-updated"):
            m.check_serving()
        # a partial push cannot repair a half-loaded engine: it is refused and the engine stays FAILED
        with pytest.raises(FailedPrecondition, match=r"FAILED after a failed weight load.*partial push \(1 of 2"):
            await push(m, weights(3.0, names=(ATTN,)))
        assert m.state == EngineState.FAILED and m.gate.version == 1
        result = await push(m, weights(4.0))
        assert result.version == 2 and m.state == EngineState.SERVING
        assert all(torch.equal(engine.weights[n], torch.full((2, 2), 4.0)) for n in (ATTN, MLP))

    asyncio.run(scenario())


def test_a_rollback_after_a_failed_load_reloads_every_tensor(tmp_path):
    async def scenario():
        m, engine = manager(tmp_path)
        await push(m, weights(1.0))
        engine.fail_next = True
        with pytest.raises(Unavailable):
            await push(m, weights(2.0))
        result = await m.rollback(1, "recover")
        assert result.num_tensors == 2 and m.state == EngineState.SERVING
        assert all(torch.equal(engine.weights[n], torch.full((2, 2), 1.0)) for n in (ATTN, MLP))

    asyncio.run(scenario())


def test_nccl_calls_are_refused_on_a_grpc_server(tmp_path):
    async def scenario():
        m, _ = manager(tmp_path)
        with pytest.raises(FailedPrecondition, match="weight_transfer=grpc"):
            m.check_nccl()
        with pytest.raises(FailedPrecondition, match="weight_transfer=grpc"):
            await m.init_nccl({"master_address": "x", "master_port": 1})

    asyncio.run(scenario())


def test_receiving_writes_and_hashes_off_the_event_loop(tmp_path, monkeypatch):
    """Generation shares the event loop with a push's receive: the bytes are hashed and written on another thread."""
    threads = []
    write, update = weight_staging.SafetensorsFileSink.write, weight_stream.PushAssembler._on_chunk
    monkeypatch.setattr(
        weight_staging.SafetensorsFileSink,
        "write",
        lambda self, data: (threads.append(threading.get_ident()), write(self, data))[1],
    )
    monkeypatch.setattr(
        weight_stream.PushAssembler,
        "_on_chunk",
        lambda self, chunk: (threads.append(threading.get_ident()), update(self, chunk))[1],
    )

    async def scenario():
        m, _ = manager(tmp_path)
        assert (await push(m, weights(1.0))).version == 1
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert threads and loop_thread not in threads


def test_a_push_overwrites_the_pages_of_a_staged_file_no_version_needs(tmp_path):
    async def scenario():
        m, engine = manager(tmp_path, keep=0)
        await push(m, weights(1.0))
        first = m.history.current.sources[ATTN]
        inode = first.stat().st_ino
        await push(m, weights(2.0))  # version 1's file is no longer needed: kept as the next staging area
        assert m._spare is not None and m._spare.stat().st_ino == inode
        await push(m, weights(3.0), push_id="third")
        third = m.history.current.sources[ATTN]
        assert third.stat().st_ino == inode and third.name != first.name  # same pages, new name
        assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 3.0))
        assert m.current.push_id == "third"

    asyncio.run(scenario())


def test_the_spare_staging_file_is_the_largest_retired_one(tmp_path):
    """A partial push's small file never displaces a full push's as the spare (a full push would fault fresh pages)."""

    async def scenario():
        m, _ = manager(tmp_path, keep=0)
        await push(m, weights(1.0))
        await push(m, weights(2.0))  # version 1's full file is the spare now
        full = m._spare.stat().st_size
        await push(m, weights(3.0, names=(ATTN,)))  # partial pushes: the MLP tensor still comes from version 2's file
        await push(m, weights(4.0, names=(ATTN,)))
        assert m._spare.stat().st_size < full  # only version 3's small file has been retired so far
        await push(m, weights(5.0))  # full: retires version 2's full file and version 4's small one
        assert m._spare.stat().st_size == full
        retained = set(m.history.current.sources.values())
        await m.freed()  # retired files are deleted in the background, after the reply
        assert set(m.staging.iterdir()) == retained | {m._spare}  # the small file was freed, nothing else left

    asyncio.run(scenario())


def test_with_no_retired_file_the_next_staging_file_is_written_ahead(tmp_path):
    """The first pushes (before a retained version retires) would write into fresh pages: one file is written ahead."""

    async def scenario():
        m, engine = manager(tmp_path, keep=2)
        await push(m, weights(1.0))
        first = m.history.current.sources[ATTN]
        prepared = await m.prepared()
        assert prepared is not None and prepared != first and prepared.parent == m.staging
        assert prepared.stat().st_size == first.stat().st_size and prepared.stat().st_mode & 0o777 == 0o600
        assert prepared.read_bytes() == bytes(prepared.stat().st_size)  # every page written (zeros)
        inode = prepared.stat().st_ino
        await push(m, weights(2.0))
        assert m.history.current.sources[ATTN].stat().st_ino == inode  # the push overwrote the prepared pages
        assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 2.0))
        assert not prepared.exists()  # renamed: the staged file of version 2

    asyncio.run(scenario())


def test_a_failed_write_ahead_leaves_the_next_push_to_a_new_file(tmp_path, monkeypatch):
    def full(directory, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("services.policy.weights.prepare_spare", full)

    async def scenario():
        m, engine = manager(tmp_path, keep=2)
        await push(m, weights(1.0))
        assert (await push(m, weights(2.0))).version == 2
        assert torch.equal(engine.weights[ATTN], torch.full((2, 2), 2.0))
        assert len(list(m.staging.iterdir())) == 2  # versions 1 and 2, nothing half-written

    asyncio.run(scenario())
