"""torch.distributed plumbing for training a policy too large for one device (FSDP2).

Under `torchrun` every process holds a shard of each weight (`fully_shard` per
decoder layer, then the root for embeddings, final norm and head). Only rank 0
talks to the services; it sends each rollout to the other ranks as plain tensors
(shapes and dtypes first, as an int64 tensor, then the data: nothing is pickled),
every rank trains on its equal slice of rows, and FSDP reduce-scatters the
gradients. Full weights leave rank 0 one tensor at a time (`full_tensors`), so
a push or checkpoint never needs the whole unsharded model on a device.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

BACKENDS = ("auto", "gloo", "nccl")
FOLLOWER_WAIT = timedelta(hours=1)

# dtypes a broadcast may carry, by wire code (index)
_DTYPES = (
    torch.float32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.bool,
    torch.uint8,
    torch.float64,
)


@dataclass(frozen=True)
class World:
    """This process's place in the torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them."""
    return World(
        int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    )


def resolve_backend(backend: str, device: str) -> str:
    """'auto': nccl for CUDA devices, gloo otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"dist_backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "nccl" if device.startswith("cuda") else "gloo"
    return backend


def setup(backend: str, device: str) -> tuple[World, torch.device]:
    """Joins the torchrun job (idempotent); returns the world and this rank's device."""
    world = world_from_env()
    if device.startswith("cuda"):
        torch.cuda.set_device(world.local_rank)
        local = torch.device("cuda", world.local_rank)
    else:
        local = torch.device(device)
    if world.is_distributed and not dist.is_initialized():
        # the other ranks wait in a broadcast while rank 0 generates and scores a batch
        dist.init_process_group(
            resolve_backend(backend, device), rank=world.rank, world_size=world.size, timeout=FOLLOWER_WAIT
        )
    return world, local


def check_supported(lora_rank: int, algorithm: str, resume: str, batch_size: int, world_size: int) -> None:
    """Raises ValueError for combinations the sharded learner does not implement (rather than train wrongly)."""
    if lora_rank > 0:
        raise ValueError(
            "lora_rank > 0 is not supported under torchrun (FSDP): LoRA fits one device, run it single-process"
        )
    if algorithm in ("ppo", "ppg"):
        raise ValueError(
            f"algorithm={algorithm} is not supported under torchrun (FSDP): the critic is not sharded; use grpo, rloo or reinforce_pp"
        )
    if resume:
        raise ValueError(
            "resume is not supported under torchrun (FSDP) yet: checkpoints of sharded runs hold full weights only"
        )
    if batch_size % world_size:
        raise ValueError(
            f"prompts_per_step * samples_per_prompt ({batch_size}) must be divisible by the number of processes ({world_size}): "
            "every rank trains on an equal slice"
        )


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks of a Hugging Face causal LM (model.model.layers)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers (model.model.layers) in {type(model).__name__} to shard")
    return list(layers)


def shard(model: torch.nn.Module, device: torch.device, world: World) -> torch.nn.Module:
    """FSDP2: each decoder layer is its own unit (gathered only while it runs), the root holds the rest.

    Gradients are summed across ranks, not averaged: each rank's loss is already
    divided by the whole batch's token count, so the sum is the single-process gradient.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world.size,))
    units = [*decoder_layers(model), model]
    for unit in units:
        fully_shard(unit, mesh=mesh)
    for unit in units:  # per unit (not inherited); plain SUM, which gloo has (no PREMUL_SUM)
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return model


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The unsharded value of a (possibly DTensor) tensor; a collective when sharded."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_tensors(
    model: torch.nn.Module, world: World, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full CPU tensor) per parameter, gathered one at a time; only rank 0 yields.

    Every rank must drive the generator to the end (each gather is a collective);
    on other ranks it yields nothing. Device memory holds at most one full tensor.
    """
    for name, parameter in model.named_parameters():
        value = full_tensor(parameter.detach())
        if world.is_main:
            yield name, value.to("cpu", dtype or value.dtype)
        del value


def broadcast_tensors(tensors: list[torch.Tensor] | None, world: World, device: torch.device) -> list[torch.Tensor]:
    """Rank 0's tensors on every rank (CPU). Rank 0 passes them, the others None.

    The header is int64: count, then per tensor its dtype code, rank and shape;
    then each tensor's data. No pickling, so the receivers only ever read raw numbers.
    """
    if not world.is_distributed:
        return list(tensors or [])
    if world.is_main:
        header = [len(tensors)]
        for tensor in tensors:
            header += [_DTYPES.index(tensor.dtype), tensor.dim(), *tensor.shape]
        length = torch.tensor([len(header)], dtype=torch.int64, device=device)
    else:
        length = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    meta = (
        torch.tensor(header, dtype=torch.int64, device=device)
        if world.is_main
        else torch.zeros(int(length), dtype=torch.int64, device=device)
    )
    dist.broadcast(meta, src=0)
    values, position = meta.tolist(), 1
    out = []
    for index in range(values[0]):
        dtype, ndim = _DTYPES[values[position]], values[position + 1]
        shape = values[position + 2 : position + 2 + ndim]
        position += 2 + ndim
        buffer = (
            tensors[index].to(device).contiguous() if world.is_main else torch.empty(shape, dtype=dtype, device=device)
        )
        dist.broadcast(buffer, src=0)
        out.append(buffer.cpu())
    return out


def broadcast_int(value: int | None, world: World, device: torch.device) -> int:
    """A small integer (a command code) from rank 0 to every rank."""
    if not world.is_distributed:
        return int(value)
    holder = torch.tensor([value if world.is_main else 0], dtype=torch.int64, device=device)
    dist.broadcast(holder, src=0)
    return int(holder)


def broadcast_dtype(dtype: torch.dtype | None, world: World, device: torch.device) -> torch.dtype:
    """A dtype from rank 0 to every rank, as its code."""
    return _DTYPES[broadcast_int(_DTYPES.index(dtype) if world.is_main else None, world, device)]


def row_slice(rows: int, world: World) -> slice:
    """This rank's contiguous, equal share of a batch's rows (data parallel)."""
    if rows % world.size:
        raise ValueError(f"{rows} rows do not split evenly over {world.size} ranks")
    share = rows // world.size
    return slice(world.rank * share, (world.rank + 1) * share)


def gather_rows(local: torch.Tensor, world: World, device: torch.device) -> torch.Tensor:
    """Every rank's equal slice, concatenated in rank order (the inverse of row_slice)."""
    if not world.is_distributed:
        return local
    local = local.to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local)
    return torch.cat(parts).cpu()


def sum_over_ranks(values: dict[str, float], world: World, device: torch.device) -> dict[str, float]:
    """Element-wise sum of every rank's numbers (same keys on every rank)."""
    if not world.is_distributed:
        return dict(values)
    keys = sorted(values)
    holder = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(holder)
    return dict(zip(keys, holder.tolist()))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
