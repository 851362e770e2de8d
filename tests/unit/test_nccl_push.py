"""The NCCL weight path without a GPU: vLLM's real trainer engine and our control plane, NCCL faked at its boundary.

vLLM's `NCCLTrainerWeightTransferEngine` runs unchanged; only the two calls
that touch NCCL (`open_trainer_endpoint`, the packed broadcast) are replaced by
an in-process pipe, and the policy engine's vLLM calls by a fake that reads
from that pipe. Everything else is real and in-process, with no gRPC server:
the servicer and its `WeightManager` (version gate, push lock, reservation),
errors mapped to the interceptor's status codes (tests/support/local_policy.py),
the trainer-side client mapping vLLM's four calls onto our RPCs.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
import pytest
import torch

from rlhf.v1 import policy_pb2
from services.common.errors import InvalidArgument
from services.common.sections import Push
from services.common.weight_stream import (
    PushAssembler,
    TensorSpec,
    fused_groups_for,
    push_begin,
    push_requests,
    weights_digest,
)
from services.policy.config import PolicyConfig
from services.policy.nccl_push import check_init, check_tensors
from services.policy.weight_history import Origin, UnknownVersion, WeightHistory
from services.trainer import lora, nccl_push
from services.trainer.config import TrainerConfig
from tests.support.local_policy import LocalPolicy

vllm_nccl = pytest.importorskip("vllm.distributed.weight_transfer.nccl_engine")

MANIFEST = {"a.weight": TensorSpec((4, 3)), "b.bias": TensorSpec((5,))}


def _weights(scale: float = 1.0) -> list[tuple[str, torch.Tensor]]:
    return [
        ("a.weight", torch.arange(12, dtype=torch.float32).reshape(4, 3) * scale),
        ("b.bias", torch.full((5,), scale, dtype=torch.bfloat16)),
    ]


def _begin_request(tensors, expected=None, version=None, note="step") -> policy_pb2.BeginNcclPushRequest:
    return policy_pb2.BeginNcclPushRequest(
        begin=push_begin(tensors, expected, note, version), tensors=nccl_push.tensor_list(tensors)
    )


# ---- request building and validation ------------------------------------------------


def test_declaration_names_dtypes_shapes_and_bytes():
    request = _begin_request(_weights(), expected=3, version=7, note="n")
    assert [(t.name, t.dtype, list(t.shape)) for t in request.tensors] == [
        ("a.weight", "float32", [4, 3]),
        ("b.bias", "bfloat16", [5]),
    ]
    assert request.begin.num_tensors == 2
    assert request.begin.total_bytes == 12 * 4 + 5 * 2
    assert request.begin.expected_version == 3 and request.begin.version == 7 and request.begin.note == "n"
    assert not _begin_request(_weights()).begin.HasField("expected_version")
    with pytest.raises(ValueError, match="int64"):
        nccl_push.tensor_list([("x", torch.zeros(2, dtype=torch.int64))])


def test_check_tensors_gives_vllm_update_info():
    info = check_tensors(_begin_request(_weights()), MANIFEST, 10**6, None).update_info
    assert info == {"names": ["a.weight", "b.bias"], "dtype_names": ["float32", "bfloat16"], "shapes": [[4, 3], [5]]}
    # the dict is exactly what vLLM's worker engine parses
    parsed = vllm_nccl.NCCLWeightTransferUpdateInfo(**info)
    assert parsed.names == info["names"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: setattr(r.tensors[0], "name", "c.weight"), "unknown tensor 'c.weight'"),
        (lambda r: r.tensors[0].shape.__setitem__(0, 5), r"shape \(5, 3\) does not match .*\(4, 3\)"),
        (lambda r: setattr(r.tensors[1], "dtype", "int8"), "dtype must be one of"),
        (lambda r: setattr(r.tensors[1], "name", "a.weight"), "declared twice"),
        (lambda r: setattr(r.begin, "num_tensors", 3), "declares 3 tensors but carries 2"),
        (lambda r: setattr(r.begin, "total_bytes", 1), "declares 1 bytes but its tensors hold 58"),
        (lambda r: r.CopyFrom(_begin_request(_weights()[:1])), "misses 1 of the model's tensors"),
        (lambda r: setattr(r.begin, "note", "x" * 257), "at most 256"),
    ],
)
def test_check_tensors_refuses_what_a_streamed_push_refuses(mutate, message):
    request = _begin_request(_weights())
    mutate(request)
    with pytest.raises(InvalidArgument, match=message):
        check_tensors(request, MANIFEST, 10**6, None)


def test_check_tensors_size_limit():
    with pytest.raises(InvalidArgument, match="at most 10"):
        check_tensors(_begin_request(_weights()), MANIFEST, 10, None)


def test_check_init_maps_to_vllm_init_info():
    request = policy_pb2.InitWeightTransferRequest(
        master_address="10.0.0.5", master_port=29600, world_size=3, rank_offset=1, packed=True
    )
    info = check_init(request, workers=2)
    parsed = vllm_nccl.NCCLWeightTransferInitInfo(**info)  # vLLM's worker-side parser accepts it
    assert (parsed.master_address, parsed.master_port, parsed.rank_offset, parsed.world_size) == (
        "10.0.0.5",
        29600,
        1,
        3,
    )
    assert parsed.packed and "packed_buffer_size_bytes" not in info  # 0 means vLLM's default
    for field, value, message in [
        ("world_size", 2, "no room for this server's 2 workers"),
        ("rank_offset", 0, "rank 0 is the trainer"),
        ("master_port", 0, "1..65535"),
        ("master_address", "", "master_address is empty"),
    ]:
        bad = policy_pb2.InitWeightTransferRequest()
        bad.CopyFrom(request)
        setattr(bad, field, value)
        with pytest.raises(InvalidArgument, match=message):
            check_init(bad, workers=2)


def test_trainer_tensors_match_the_served_checkpoint(tmp_path):
    """The names/shapes the trainer declares are the checkpoint's (tied embeddings once), so the server accepts them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.policy.weight_staging import read_manifest

    def tiny(hidden: int) -> LlamaForCausalLM:
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=hidden,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(config)

    served = tiny(16)
    served.save_pretrained(tmp_path, safe_serialization=True)
    manifest = read_manifest(str(tmp_path))
    tensors = [(n, t.to(torch.bfloat16)) for n, t in lora.merged_tensors(served)]
    request = _begin_request(tensors)
    for groups in (None, fused_groups_for("llama")):
        info = check_tensors(request, manifest, 10**9, groups).update_info
        assert set(info["names"]) == set(manifest) and set(info["dtype_names"]) == {"bfloat16"}
    other = [(n, t.to(torch.bfloat16)) for n, t in lora.merged_tensors(tiny(32))]
    with pytest.raises(InvalidArgument, match="does not match the served model"):
        check_tensors(_begin_request(other), manifest, 10**9, None)


# ---- configuration: nccl needs CUDA, grpc stays the default ------------------------------


def test_policy_config_defaults_to_grpc_and_refuses_nccl_on_cpu():
    assert PolicyConfig().weight_transfer == "grpc"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        PolicyConfig(weight_transfer="nccl", device="cpu")
    with pytest.raises(ValueError, match="weight_transfer must be one of"):
        PolicyConfig(weight_transfer="rdma")


def test_policy_engine_refuses_nccl_without_cuda_and_asks_vllm_for_it_with(monkeypatch):
    from services.policy.engine import VllmEngine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        VllmEngine(PolicyConfig(weight_transfer="nccl"), "/m")  # device=auto resolves to cpu
    engine = VllmEngine(PolicyConfig(weight_transfer="nccl", device="cuda", tensor_parallel_size=2), "/m")
    args = engine._weight_transfer_args()
    assert args["weight_transfer_config"].backend == "nccl"
    assert engine.transfer_workers == 2
    plain = VllmEngine(PolicyConfig(), "/m")
    assert plain._weight_transfer_args() == {} and plain.transfer_workers == 0


def test_trainer_config_weight_transfer_choices():
    assert TrainerConfig().push.weight_transfer == "grpc"
    with pytest.raises(ValueError, match="weight_transfer must be one of"):
        TrainerConfig(push=Push(weight_transfer="rdma"))


class _Replica:
    def __init__(self, stub=None):
        self.stub = stub


def test_trainer_refuses_nccl_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = TrainerConfig(push=Push(weight_transfer="nccl"))
    status = policy_pb2.GetStatusResponse(weight_transfer="nccl", transfer_workers=1)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU on the trainer"):
        nccl_push.open_pusher(config, [_Replica()], status)
    # the default never looks for a GPU
    assert nccl_push.open_pusher(TrainerConfig(), [_Replica()], status) is None


def test_trainer_falls_back_to_grpc(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    opened = []
    monkeypatch.setattr(vllm_nccl, "open_trainer_endpoint", lambda info: opened.append(info))
    config = TrainerConfig(push=Push(weight_transfer="nccl"))
    with caplog.at_level(logging.WARNING, logger="services.trainer.nccl_push"):
        grpc_only = policy_pb2.GetStatusResponse(weight_transfer="grpc")
        assert nccl_push.open_pusher(config, [_Replica()], grpc_only) is None
        old_server = policy_pb2.GetStatusResponse()  # a server from before the NCCL RPCs
        assert nccl_push.open_pusher(config, [_Replica()], old_server) is None
        both = policy_pb2.GetStatusResponse(weight_transfer="nccl", transfer_workers=1)
        assert nccl_push.open_pusher(config, [_Replica(), _Replica()], both) is None
    assert not opened, "no rendezvous may be opened when falling back"
    assert "pushing over the gRPC stream" in caplog.text


# ---- the whole round: vLLM's trainer engine -> gRPC control -> servicer, NCCL faked -------------


class FakeNccl:
    """Stands in for the NCCL group: the trainer's broadcast fills it, the policy's receive drains it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, torch.Tensor]] = []
        self.broadcast_done = threading.Event()
        self.destroyed = False
        self.endpoints: list = []

    def open_trainer_endpoint(self, init_info):
        self.endpoints.append(init_info)
        return self

    def producer(self, iterator, group, src, post_iter_func, buffer_size_bytes, num_buffers):
        assert group is self and src == 0
        for item in iterator:
            self.sent.append((item[0], post_iter_func(item).clone()))
        self.broadcast_done.set()

    def destroy(self) -> None:
        self.destroyed = True


class FakeEngine:
    """The policy engine's vLLM surface for NCCL pushes; applies what the fake group carried."""

    description = "fake"
    transfer_workers = 1

    def __init__(self, group: FakeNccl, fail: bool = False) -> None:
        self.group, self.fail = group, fail
        self.init_infos: list[dict] = []
        self.updates: list[dict] = []
        self.weights: dict[str, torch.Tensor] = {}

    async def init_weight_transfer(self, init_info: dict) -> None:
        self.init_infos.append(init_info)

    async def receive_weights(self, update_info: dict) -> int:
        self.updates.append(update_info)
        received = await asyncio.to_thread(self.group.broadcast_done.wait, 30)
        assert received, "the trainer never broadcast"
        self.group.broadcast_done.clear()
        if self.fail:
            raise RuntimeError("NCCL error: remote process exited")
        for (name, tensor), declared in zip(self.group.sent, update_info["names"]):
            assert name == declared
            self.weights[name] = tensor
        self.group.sent = []
        return len(update_info["names"])

    async def abort(self, ids) -> None:
        pass


def PolicyServer(engine, weight_transfer: str, tmp_path, reserve_s: float = 30.0) -> LocalPolicy:
    """The servicer over a real WeightManager, in-process (no gRPC server); `.stub` calls it like a gRPC stub."""
    history = WeightHistory({"a.weight": tmp_path / "ckpt", "b.bias": tmp_path / "ckpt"}, keep=2)
    return LocalPolicy(engine, MANIFEST, tmp_path, history, weight_transfer, reserve_s)


@pytest.fixture
def fake_nccl(monkeypatch):
    group = FakeNccl()
    monkeypatch.setattr(nccl_push, "require_cuda", lambda: None)  # tested on its own above; tensors stay on the CPU
    monkeypatch.setattr(vllm_nccl, "open_trainer_endpoint", group.open_trainer_endpoint)
    monkeypatch.setattr(vllm_nccl, "packed_nccl_broadcast_producer", group.producer)
    return group


@pytest.fixture
def nccl_server(fake_nccl, tmp_path):
    server = PolicyServer(FakeEngine(fake_nccl), "nccl", tmp_path)
    yield server
    server.close()


def _connect(server: LocalPolicy) -> nccl_push.NcclWeightPusher:
    status = server.stub.GetStatus(policy_pb2.GetStatusRequest())
    settings = nccl_push.NcclSettings(master_address="127.0.0.1", master_port=29611)
    pusher = nccl_push.NcclWeightPusher.connect(server.stub, status, settings, timeout_s=30, device="cpu")
    assert pusher is not None
    return pusher


def test_server_configured_grpc_refuses_the_nccl_rpcs(tmp_path):
    server = PolicyServer(FakeEngine(FakeNccl()), "grpc", tmp_path)
    try:
        status = server.stub.GetStatus(policy_pb2.GetStatusRequest())
        assert status.weight_transfer == "grpc" and status.transfer_workers == 0
        calls = [
            (
                server.stub.InitWeightTransfer,
                policy_pb2.InitWeightTransferRequest(
                    master_address="127.0.0.1", master_port=1, world_size=2, rank_offset=1
                ),
            ),
            (server.stub.BeginNcclPush, _begin_request(_weights())),
        ]
        for rpc, request in calls:
            with pytest.raises(grpc.RpcError) as info:
                rpc(request)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "weight_transfer=grpc" in info.value.details()
    finally:
        server.close()


def test_push_before_init_is_refused(nccl_server):
    with pytest.raises(grpc.RpcError) as info:
        nccl_server.stub.BeginNcclPush(_begin_request(_weights()))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "InitWeightTransfer first" in info.value.details()


def test_nccl_push_goes_through_the_version_gate(nccl_server, fake_nccl):
    pusher = _connect(nccl_server)
    engine = nccl_server.weights.engine
    assert engine.init_infos == [
        {
            "master_address": "127.0.0.1",
            "master_port": 29611,
            "rank_offset": 1,
            "world_size": 2,
            "packed": True,
            "packed_buffer_size_bytes": vllm_nccl.DEFAULT_PACKED_BUFFER_SIZE_BYTES,
            "packed_num_buffers": vllm_nccl.DEFAULT_PACKED_NUM_BUFFERS,
        }
    ]
    assert fake_nccl.endpoints[0].world_size == 2

    reply = pusher.push(_weights(2.0), expected_version=0, note="trainer step 1")
    assert (reply.weight_version, reply.previous_version, reply.num_tensors) == (1, 0, 2)
    assert reply.total_bytes == 12 * 4 + 5 * 2
    assert engine.updates[-1] == {
        "names": ["a.weight", "b.bias"],
        "dtype_names": ["float32", "bfloat16"],
        "shapes": [[4, 3], [5]],
    }
    for name, tensor in _weights(2.0):
        assert torch.equal(engine.weights[name], tensor)
    status = nccl_server.stub.GetStatus(policy_pb2.GetStatusRequest())
    assert (status.weight_version, status.version_note, status.weight_transfer, status.transfer_workers) == (
        1,
        "trainer step 1",
        "nccl",
        1,
    )

    # an explicit version, as gRPC pushes may name one
    assert pusher.push(_weights(3.0), expected_version=1, note="s2", version=10).weight_version == 10

    # a stale expected_version is refused before anything is broadcast
    with pytest.raises(grpc.RpcError) as info:
        pusher.push(_weights(4.0), expected_version=1, note="stale")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expected version 1 but 10 is serving" in info.value.details()
    assert not fake_nccl.sent and not fake_nccl.broadcast_done.is_set()
    assert len(engine.updates) == 2 and nccl_server.weights.gate.version == 10
    # a reused version number likewise
    with pytest.raises(grpc.RpcError, match="never reuses a number"):
        pusher.push(_weights(4.0), expected_version=10, note="reuse", version=10)

    # the slot was released each time: the next push and a gRPC-streamed one still work
    assert pusher.push(_weights(5.0), expected_version=10, note="s3").weight_version == 11
    assert nccl_server.weights.gate.highest == 11
    pusher.close()
    assert fake_nccl.destroyed


def test_reservation_blocks_other_pushes_and_expires(fake_nccl, tmp_path):
    server = PolicyServer(FakeEngine(fake_nccl), "nccl", tmp_path, reserve_s=0.5)
    try:
        _connect(server)
        first = server.stub.BeginNcclPush(_begin_request(_weights(), expected=0))
        assert first.serving_version == 0 and first.reserved_seconds == 0.5
        assert server.weights.push_lock.locked()  # no other push or rollback may run meanwhile
        # the trainer died: after the timeout the slot frees itself, a new push can reserve it
        second = server.stub.BeginNcclPush(_begin_request(_weights(), expected=0), timeout=10)
        assert second.push_id != first.push_id
        with pytest.raises(grpc.RpcError) as info:
            server.stub.CommitNcclPush(policy_pb2.CommitNcclPushRequest(push_id=first.push_id))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.close()


def test_failed_receive_marks_the_engine_failed(fake_nccl, tmp_path):
    server = PolicyServer(FakeEngine(fake_nccl, fail=True), "nccl", tmp_path)
    try:
        pusher = _connect(server)
        with pytest.raises(grpc.RpcError) as info:
            pusher.push(_weights(), expected_version=0, note="x")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "call InitWeightTransfer and push again" in info.value.details()
        status = server.stub.GetStatus(policy_pb2.GetStatusRequest())
        assert status.state == policy_pb2.ENGINE_STATE_FAILED and status.weight_version == 0
        with pytest.raises(grpc.RpcError, match="InitWeightTransfer first"):  # the group must be rebuilt
            server.stub.BeginNcclPush(_begin_request(_weights()))
    finally:
        server.close()


# ---- rollback bookkeeping: NCCL versions are not restorable, earlier ones are -------------------


def test_history_after_an_nccl_push(tmp_path):
    ckpt, pushed = tmp_path / "ckpt", tmp_path / "push-1"
    history = WeightHistory({"a": ckpt, "b": ckpt}, keep=3)
    history.record_push(1, "grpc", pushed, ["a"])
    history.record_unretained(2, "nccl")
    assert [v.version for v in history.restorable()] == [1, 0]
    assert history.plan_restore(1) == {"a": pushed, "b": ckpt}  # everything: the served bytes are unknown here
    assert history.plan_restore(2) == {}  # the current version: a no-op
    history.record_unretained(3, "nccl again")
    assert [v.version for v in history.restorable()] == [1, 0]
    assert history.previous() == 1
    with pytest.raises(UnknownVersion):
        history.plan_restore(2)
    with pytest.raises(UnknownVersion):
        history.plan_restore(3, full=True)


def test_nccl_push_records_its_identity(nccl_server):
    pusher = _connect(nccl_server)
    reply = pusher.push(_weights(2.0), expected_version=0, note="step 1", push_id="trainer-v1")
    assert reply.push_id == "trainer-v1" and reply.sha256 == weights_digest(_weights(2.0))
    status = nccl_server.stub.GetStatus(policy_pb2.GetStatusRequest())
    assert (status.current.version, status.current.push_id, status.current.sha256) == (1, "trainer-v1", reply.sha256)
    assert status.current.origin == policy_pb2.VERSION_ORIGIN_PUSH
    assert nccl_server.weights.current.origin == Origin.PUSH
    with pytest.raises(InvalidArgument, match="sha256 has 3 bytes"):
        bad = _begin_request(_weights())
        bad.sha256 = b"abc"
        check_tensors(bad, MANIFEST, 10**6, None)
    pusher.close()


@pytest.mark.parametrize(
    "tensors",
    [
        [("a.weight", torch.zeros(4, 3)), ("c.weight", torch.zeros(2))],  # unknown name
        [("a.weight", torch.zeros(3, 4)), ("b.bias", torch.zeros(5))],  # wrong shape
        [("a.weight", torch.zeros(4, 3)), ("a.weight", torch.zeros(4, 3))],  # twice
        [("a.weight", torch.zeros(4, 3))],  # incomplete
    ],
)
def test_streamed_and_nccl_pushes_are_refused_with_the_same_message(tensors):
    """One validator of declared tensors serves both transports."""
    with pytest.raises(InvalidArgument) as nccl:
        check_tensors(_begin_request(tensors), MANIFEST, 10**6, None)
    assembler = PushAssembler(MANIFEST, 10**6)
    with pytest.raises(InvalidArgument) as streamed:
        for request in push_requests(tensors):
            assembler.feed(request)
        assembler.finish()
    assert str(streamed.value) == str(nccl.value)
