"""The torchrun plumbing that needs no second process: env, backend choice, row split, config rejection."""

from __future__ import annotations

import pytest
import torch

from services.common.config import build
from services.trainer import distributed
from services.trainer.config import TrainerConfig


def test_world_comes_from_torchrun_env(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = distributed.world_from_env()
    assert (world.rank, world.size, world.local_rank) == (1, 4, 1)
    assert world.is_distributed and not world.is_main


def test_backend_auto_follows_the_device():
    assert distributed.resolve_backend("auto", "cpu") == "gloo"
    assert distributed.resolve_backend("auto", "cuda") == "nccl"
    assert distributed.resolve_backend("gloo", "cuda") == "gloo"
    with pytest.raises(ValueError, match="dist_backend"):
        distributed.resolve_backend("mpi", "cpu")


def test_rows_split_evenly_and_gather_back_in_rank_order():
    rows = torch.arange(12)
    parts = [rows[distributed.row_slice(12, distributed.World(rank, 3))] for rank in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(ValueError, match="evenly"):
        distributed.row_slice(10, distributed.World(0, 3))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lora.rank": 8}, "lora_rank"),
        ({"objective.algorithm": "ppo"}, "ppo"),
        ({"resume": "latest"}, "resume"),
        ({"sampling.prompts_per_step": 3, "sampling.samples_per_prompt": 3}, "divisible"),
    ],
)
def test_config_rejects_what_sharding_does_not_support(monkeypatch, settings, message):
    build(TrainerConfig, settings)  # fine in one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=message):
        build(TrainerConfig, settings)


def test_single_process_helpers_pass_through():
    world, device = distributed.World(), torch.device("cpu")
    tensors = [torch.ones(2, 3), torch.arange(4)]
    assert distributed.broadcast_tensors(tensors, world, device) == tensors
    assert distributed.gather_rows(tensors[0], world, device) is tensors[0]
    assert distributed.sum_over_ranks({"a": 1.5}, world, device) == {"a": 1.5}
