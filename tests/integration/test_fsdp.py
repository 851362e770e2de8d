"""FSDP2 training under torchrun (2 processes, gloo, CPU) against single-process training.

(a) The same learner updates on a fixed synthetic rollout, sharded over 2 ranks and in
one process, end in the same weights and stats. (b) The real trainer under torchrun
against the live services: rank 0 pushes the gathered full weights every step and the
engine serves exactly them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.v1 import policy_pb2, policy_pb2_grpc
from services.common.client import open_channel
from services.common.process import free_port
from services.common.weight_stream import push_requests
from services.trainer.losses import token_logprobs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Float32 sums in a different order (two half-batches, sharded reductions) differ by ~1e-7;
# 3 rounds of 2 AdamW steps at lr 1e-3 move the weights by ~6e-3.
WEIGHT_TOLERANCE = 1e-5
STAT_RELATIVE_TOLERANCE = 1e-4


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    return env | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(args: list[str], log: Path, timeout_s: float) -> None:
    """`torchrun --nproc_per_node 2` on loopback; fails the test with the log tail if a rank fails."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *args,
    ]
    with open(log, "wb") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=_env(), timeout=timeout_s)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    assert done.returncode == 0, f"torchrun exited with {done.returncode}\n{tail}"


def test_sharded_updates_match_single_process(tiny_policy_dir, tmp_path):
    worker = ["-m", "tests.integration.fsdp_worker", str(tiny_policy_dir)]
    single = subprocess.run(
        [sys.executable, *worker, str(tmp_path / "single")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun([*worker, str(tmp_path / "sharded")], tmp_path / "torchrun.log", timeout_s=300)

    start = load_file(str(tiny_policy_dir / "model.safetensors"))
    one, two = (load_file(str(tmp_path / run / "weights.safetensors")) for run in ("single", "sharded"))
    assert sorted(one) == sorted(two) == sorted(start)  # rank 0 pushed every tensor, full-shaped
    moved = max(float((one[name] - start[name]).abs().max()) for name in start)
    assert moved > 1e-3  # training changed the weights, so agreement below means something
    for name in start:
        assert two[name].shape == start[name].shape
        diff = float((one[name] - two[name]).abs().max())
        assert diff < WEIGHT_TOLERANCE, f"{name}: sharded and single-process weights differ by {diff}"

    stats = {run: json.loads((tmp_path / run / "stats.json").read_text()) for run in ("single", "sharded")}
    assert stats["sharded"]["local_share"] == pytest.approx(0.5, abs=0.01)  # each rank held half of the weights
    for a, b in zip(stats["single"]["steps"], stats["sharded"]["steps"], strict=True):
        # grad_norm catches a wrong loss normalization (AdamW and clipping would hide it in the weights)
        for key in (
            "loss",
            "policy_loss",
            "kl",
            "entropy",
            "grad_norm",
            "clip_fraction",
            "ratio_mean",
            "logprob_abs_diff",
        ):
            assert b[key] == pytest.approx(a[key], rel=STAT_RELATIVE_TOLERANCE, abs=1e-6), key


def test_trainer_under_torchrun_pushes_the_gathered_weights(policy_server, reward_server, tmp_path):
    run = tmp_path / "run"
    torchrun(
        [
            "-m",
            "services.trainer",
            "train",
            "--endpoints.policy",
            policy_server.address,
            "--endpoints.reward",
            reward_server.address,
            "--rewards.model",
            "length",
            "--model",
            str(policy_server.model_dir),
            "--run.output-dir",
            str(run),
            "--steps",
            "2",
            "--sampling.prompts-per-step",
            "2",
            "--sampling.samples-per-prompt",
            "2",
            "--sampling.max-tokens",
            "12",
            "--optimizer.learning-rate",
            "1e-3",
            "--optimizer.micro-batch-size",
            "2",
            "--push.chunk-mb",
            "1.0",
            "--dist-backend",
            "gloo",
        ],
        tmp_path / "torchrun.log",
        timeout_s=400,
    )
    summary = json.loads((run / "summary.json").read_text())
    start, steps = summary["initial_weight_version"], summary["steps"]
    assert [s["weight_version"] for s in steps] == [start + 1, start + 2]
    assert summary["final_weight_version"] == start + 2
    # step 2 sampled from the weights rank 0 gathered and pushed after step 1 ...
    assert [s["sampled_with_versions"] for s in steps] == [[start], [start + 1]]
    for record in steps:
        assert record["push_bytes"] > 0 and record["completion_tokens"] > 0
        # ... and the engine's logprobs equal the sharded policy's recomputation
        assert record["logprob_abs_diff"] < 1e-3

    from transformers import AutoModelForCausalLM

    checkpoint = run / "checkpoints" / "step-000002"
    trained = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    original = AutoModelForCausalLM.from_pretrained(policy_server.model_dir, dtype=torch.float32).eval()
    with open_channel(policy_server.address) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        try:
            assert stub.GetStatus(policy_pb2.GetStatusRequest()).weight_version == start + 2
            served, _ = _served_vs(stub, trained)
            served_original, _ = _served_vs(stub, original)
        finally:  # later tests on the shared server expect the fixture's weights
            params = [(name, p.detach()) for name, p in original.named_parameters()]
            stub.PushWeights(push_requests(params, chunk_bytes=1 << 20, note="test_fsdp restore"), timeout=120)
    # the engine serves the trainer's gathered final weights, which are not the start weights
    assert served < 2e-3, f"served logprobs differ from the gathered checkpoint by {served}"
    assert served_original > 10 * served


def _served_vs(stub, model) -> tuple[float, int]:
    """Max |engine logprob - `model`'s logprob| over sampled tokens, and how many tokens were compared."""
    reply = stub.Generate(
        policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(text="Write a short review of Moby Dick.", apply_chat_template=True)],
            sampling=policy_pb2.SamplingParams(n=2, max_tokens=12, temperature=1.0, seed=7),
        ),
        timeout=120,
    )
    worst, count = 0.0, 0
    result = reply.results[0]
    for sample in result.samples:
        ids = torch.tensor([list(result.prompt_token_ids) + list(sample.token_ids)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, len(result.prompt_token_ids) - 1 : -1]
        mine = token_logprobs(logits, torch.tensor([list(sample.token_ids)]), 1.0)[0]
        worst = max(worst, float((mine - torch.tensor(list(sample.logprobs))).abs().max()))
        count += len(sample.token_ids)
    assert count > 0
    return worst, count
