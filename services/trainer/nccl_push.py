"""Trainer half of NCCL weight pushes: vLLM's NCCL trainer engine moves the bytes, the policy's gRPC RPCs steer.

vLLM's `NCCLTrainerWeightTransferEngine` drives a round through a four-method
client (`VLLMWeightSyncClient`): init, start, update (run concurrently with its
broadcast), finish. `PolicyWeightSyncClient` maps those onto the policy
service's control RPCs:

    init_weight_transfer_engine -> InitWeightTransfer (the workers join the group)
    start_weight_update         -> BeginNcclPush (every check that can refuse the
                                   push, before a byte moves; holds the push slot)
    update_weights              -> CommitNcclPush (receive + atomic commit; the
                                   response names the new version)
    finish_weight_update        -> nothing more to send: the commit happened above

so an NCCL push keeps the gRPC push's versioning: expected_version, an explicit
version, the note, and the version gate on the server. Selected with the trainer
setting `weight_transfer=nccl`; the gRPC stream stays the default and is used
whenever the policy server is not configured for NCCL.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

from rlhf.v1 import policy_pb2, policy_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.weight_stream import push_begin, push_dtype, weights_digest

log = logging.getLogger(__name__)


def require_cuda() -> None:
    """NCCL moves GPU memory: refuse at start-up, with the way out, rather than fail in the first push."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "weight_transfer=nccl needs a CUDA GPU on the trainer (NCCL broadcasts from GPU memory), "
            "and torch sees none; use weight_transfer=grpc (the default) on this host"
        )


@dataclass(frozen=True)
class NcclSettings:
    """Where the trainer opens the NCCL rendezvous (rank 0) and how it broadcasts."""

    master_address: str = ""  # empty: this host's address as its hostname resolves
    master_port: int = 29600
    packed: bool = True  # vLLM's packed broadcast (double-buffered chunks), its trainer default

    def address(self) -> str:
        return self.master_address or socket.gethostbyname(socket.gethostname())


def tensor_list(tensors: Sequence[tuple[str, torch.Tensor]]) -> list[policy_pb2.NcclTensor]:
    """The BeginNcclPush declaration of a push: name, dtype and shape of each tensor, in broadcast order."""
    listed = []
    for name, tensor in tensors:
        try:
            dtype = push_dtype(tensor.dtype)
        except InvalidArgument as exc:
            raise ValueError(f"{name}: {exc}") from None
        listed.append(policy_pb2.NcclTensor(name=name, dtype=dtype.name, shape=list(tensor.shape)))
    return listed


class PolicyWeightSyncClient:
    """vLLM's `VLLMWeightSyncClient` protocol over the policy service's gRPC control RPCs (see the module doc)."""

    def __init__(self, stub: policy_pb2_grpc.PolicyServiceStub, timeout_s: float) -> None:
        self.stub = stub
        self.timeout_s = timeout_s
        self._request: policy_pb2.BeginNcclPushRequest | None = None
        self._push_id: str | None = None
        self._response: policy_pb2.PushWeightsResponse | None = None

    def prepare(self, request: policy_pb2.BeginNcclPushRequest) -> None:
        """The next round's declaration; vLLM's engine then calls start/update/finish."""
        self._request, self._push_id, self._response = request, None, None

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        reply = self.stub.InitWeightTransfer(
            policy_pb2.InitWeightTransferRequest(
                master_address=init_info["master_address"],
                master_port=init_info["master_port"],
                world_size=init_info["world_size"],
                rank_offset=init_info["rank_offset"],
                packed=init_info.get("packed", False),
                packed_buffer_size_bytes=init_info.get("packed_buffer_size_bytes", 0),
                packed_num_buffers=init_info.get("packed_num_buffers", 0),
            ),
            timeout=self.timeout_s,
        )
        log.info("policy joined the NCCL group with %d workers", reply.workers)

    def start_weight_update(self) -> None:
        if self._request is None:
            raise RuntimeError("no push prepared: call prepare() before the engine's send_weights()")
        reply = self.stub.BeginNcclPush(self._request, timeout=self.timeout_s)
        self._push_id = reply.push_id

    def update_weights(self, update_info: dict) -> None:
        if self._push_id is None or self._request is None:
            raise RuntimeError("update_weights before start_weight_update")
        declared = {
            "names": [t.name for t in self._request.tensors],
            "dtype_names": [t.dtype for t in self._request.tensors],
            "shapes": [list(t.shape) for t in self._request.tensors],
        }
        sent = {key: update_info[key] for key in declared}
        if sent != declared:  # the server sized its receive from the declaration; a mismatch would hang or corrupt
            raise RuntimeError("vLLM's update metadata differs from the tensors declared in BeginNcclPush")
        self._response = self.stub.CommitNcclPush(
            policy_pb2.CommitNcclPushRequest(push_id=self._push_id), timeout=self.timeout_s
        )

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        if self._response is None:
            raise RuntimeError("finish_weight_update before the commit answered")

    def take_response(self) -> policy_pb2.PushWeightsResponse:
        response, self._response, self._request = self._response, None, None
        if response is None:
            raise RuntimeError("the NCCL push round ended without a commit response")
        return response


class PushSource(WeightSource):
    """vLLM `WeightSource` over the tensors of the current push, moved to the GPU one at a time as they are sent."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._tensors: list[tuple[str, torch.Tensor]] = []

    def set(self, tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
        self._tensors = list(tensors)

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self._tensors]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self._tensors:
            yield name, tensor.to(self.device).contiguous()


class NcclWeightPusher:
    """Pushes the trainer's weights over NCCL with vLLM's trainer engine; answers like `PolicyClient.push`."""

    def __init__(self, engine, client: PolicyWeightSyncClient, source: PushSource) -> None:
        self.engine = engine
        self.client = client
        self.source = source

    @classmethod
    def connect(
        cls,
        stub: policy_pb2_grpc.PolicyServiceStub,
        status: policy_pb2.GetStatusResponse,
        settings: NcclSettings,
        timeout_s: float,
        device: str = "cuda",
    ) -> NcclWeightPusher | None:
        """Joins the policy's workers into an NCCL group; None (use the gRPC stream) if the policy takes gRPC only."""
        require_cuda()
        if status.weight_transfer != "nccl" or status.transfer_workers < 1:
            log.warning(
                "weight_transfer=nccl asked for, but the policy server takes weights over %s only; "
                "pushing over the gRPC stream instead (start the policy with --weight-transfer=nccl on a GPU)",
                status.weight_transfer or "gRPC",
            )
            return None
        init = NCCLTrainerInitInfo(
            master_address=settings.address(),
            master_port=settings.master_port,
            world_size=1 + status.transfer_workers,
            rank=0,
            packed=settings.packed,
        )
        client = PolicyWeightSyncClient(stub, timeout_s)
        source = PushSource(device)
        log.info(
            "opening the NCCL weight-transfer group at %s:%d (world size %d)",
            init.master_address,
            init.master_port,
            init.world_size,
        )
        engine = WeightTransferTrainerFactory.trainer_init(init, client=client, source=source)
        return cls(engine, client, source)

    def push(
        self,
        tensors: Sequence[tuple[str, torch.Tensor]],
        expected_version: int | None,
        note: str,
        version: int | None = None,
        push_id: str = "",
    ) -> policy_pb2.PushWeightsResponse:
        """One full round: declare, broadcast, commit. The server refuses (as FAILED_PRECONDITION etc.) before any byte moves.

        The push carries `push_id` (default: a fresh one) and the weights' digest (the
        streamed push's definition), which the server records as the version's identity.
        """
        items = list(tensors)
        push_id = push_id or f"nccl-{uuid.uuid4().hex}"
        self.client.prepare(
            policy_pb2.BeginNcclPushRequest(
                begin=push_begin(items, expected_version, note, version, push_id),
                tensors=tensor_list(items),
                sha256=weights_digest(items),
            )
        )
        self.source.set(items)
        try:
            self.engine.send_weights()
        finally:
            self.source.set([])
        return self.client.take_response()

    def close(self) -> None:
        self.engine.shutdown()


def open_pusher(config, replicas: Sequence, status: policy_pb2.GetStatusResponse) -> NcclWeightPusher | None:
    """The trainer's NCCL pusher for `config.push.weight_transfer == "nccl"`, or None: push over the gRPC stream.

    Fails without CUDA (an explicit setting that cannot work here). One policy
    address only: vLLM's trainer engine drives a single control client, so with
    several replicas the pushes keep using the gRPC stream.
    """
    if config.push.weight_transfer != "nccl":
        return None
    require_cuda()
    if len(replicas) != 1:
        log.warning(
            "weight_transfer=nccl drives one policy server; %d replicas configured: pushing over the gRPC stream",
            len(replicas),
        )
        return None
    settings = NcclSettings(master_address=config.push.nccl_master_address, master_port=config.push.nccl_master_port)
    return NcclWeightPusher.connect(replicas[0].stub, status, settings, config.endpoints.rpc_timeout_s)
