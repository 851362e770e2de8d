"""Trainer faults: replicas and services crash and come back mid-run; the trainer itself is SIGKILLed.

The trainer must ride out a reward-service restart and policy restarts (one replica, then
every replica) by retrying with bounded backoff, keep both policy replicas at one version
(catching the restarted ones up with a full push), and, when it is itself SIGKILLed,
resume from its last checkpoint with no lost or duplicated step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from rlhf.v1 import policy_pb2, policy_pb2_grpc
from services.common.client import open_channel
from services.common.config import build
from services.common.process import ServerProcess, free_port
from services.loadtest.soak import RULES_TOML
from services.trainer.config import TrainerConfig
from services.trainer.loop import Trainer
from tests.integration.policy_fixtures import launch_policy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def served_version(address: str) -> policy_pb2.GetStatusResponse:
    with open_channel(address) as channel:
        return policy_pb2_grpc.PolicyServiceStub(channel).GetStatus(policy_pb2.GetStatusRequest(), timeout=10)


def generate_calls(metrics_url: str) -> float:
    text = requests.get(metrics_url, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total") and 'grpc_method="Generate"' in line
    )


class Stack:
    """Two policy replicas and a rules-only reward service, each restartable on its own ports."""

    def __init__(self, model_dir: Path, root: Path) -> None:
        self.model_dir, self.root = model_dir, root
        (root / "rewards.toml").write_text(RULES_TOML)
        self.reward_port = free_port()
        self.reward_address = f"127.0.0.1:{self.reward_port}"
        self.policy: dict[str, tuple[ServerProcess, str, int, int]] = {}
        self.reward: ServerProcess | None = None
        self.launches = 0

    def launch_reward(self) -> ServerProcess:
        self.launches += 1
        args = [
            "--port",
            str(self.reward_port),
            "--metrics-port",
            "0",
            "--models-file",
            str(self.root / "rewards.toml"),
        ]
        self.reward = ServerProcess("services.reward", args, self.root / f"reward-{self.launches}.log").launch()
        return self.reward

    def launch_policy(self, name: str) -> ServerProcess:
        self.launches += 1
        _, _, port, metrics_port = self.policy.get(name, (None, None, None, None))
        process, address, port, metrics_port = launch_policy(
            self.model_dir, self.root / f"{name}-{self.launches}.log", port, metrics_port
        )
        self.policy[name] = (process, address, port, metrics_port)
        return process

    def address(self, name: str) -> str:
        return self.policy[name][1]

    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.policy[name][3]}/metrics"

    def crash(self, name: str) -> None:
        (self.reward if name == "reward" else self.policy[name][0]).crash()

    def wait(self, name: str) -> None:
        if name == "reward":
            self.reward.wait_serving(self.reward_address, 120)
        else:
            self.policy[name][0].wait_serving(self.address(name), 300)

    def stop(self) -> None:
        for process in [self.reward, *(p for p, *_ in self.policy.values())]:
            if process is not None:
                process.stop()


@pytest.fixture
def stack(tiny_policy_dir, tmp_path):
    stack = Stack(tiny_policy_dir, tmp_path)
    try:
        stack.launch_reward()
        stack.launch_policy("a")
        stack.launch_policy("b")
        for name in ("reward", "a", "b"):
            stack.wait(name)
        yield stack
    finally:
        stack.stop()


def test_trainer_rides_out_restarts_and_keeps_replicas_at_one_version(stack, tmp_path):
    config = build(
        TrainerConfig,
        {
            "endpoints.policy": f"{stack.address('a')},{stack.address('b')}",
            "endpoints.reward": stack.reward_address,
            "rewards.model": "length",
            "model": str(stack.model_dir),
            "run.output_dir": str(tmp_path / "run"),
            "steps": 1000,  # stopped by the test
            "sampling.prompts_per_step": 2,
            "sampling.samples_per_prompt": 2,
            "sampling.max_tokens": 8,
            "optimizer.learning_rate": 1e-4,
            "checkpoint_every": 0,
            "endpoints.rpc_retries": 1,
            "endpoints.replica_wait_s": 300,
            "run.seed": 3,
        },
    )
    trainer = Trainer(config)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = trainer.run()
        except BaseException as exc:  # reported by the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        records = trainer.records
        wait_for(lambda: len(records) >= 1, 240, "the first step")

        # 1. one replica and the reward service crash; the run goes on with replica a
        stack.crash("b")
        stack.crash("reward")
        stack.launch_reward()
        stack.launch_policy("b")
        crashed_at = len(records)
        wait_for(
            lambda: any("policy[1]" in " ".join(r["replicas_out_of_rotation"]) for r in records[crashed_at:]),
            240,
            "a step that notices replica b is gone",
        )
        stack.wait("b")
        back_at = len(records)
        # b restarted with the checkpoint's weights (version 0); the trainer must catch it up, then use it again
        caught_up = wait_for(
            lambda: [r for r in records[back_at:] if not r["replicas_out_of_rotation"]],
            240,
            "replica b back in rotation",
        )
        wait_for(lambda: generate_calls(stack.metrics_url("b")) > 0, 120, "generation on the restarted replica b")

        # 2. the whole policy service goes down (every replica): the trainer waits, then catches both up
        before = len(records)
        stack.crash("a")
        stack.crash("b")
        time.sleep(2)
        stack.launch_policy("a")
        stack.launch_policy("b")
        stack.wait("a")
        stack.wait("b")
        wait_for(
            lambda: [r for r in records[before:] if not r["replicas_out_of_rotation"]] and len(records) >= before + 2,
            300,
            "steps with both replicas after the full restart",
        )
    finally:
        trainer.request_stop()
        thread.join(300)
        trainer.close()
    assert "error" not in outcome, f"the run failed: {outcome.get('error')!r}"
    steps = [r["step"] for r in trainer.records]
    assert steps == list(range(1, len(steps) + 1)), "no step lost or repeated"
    versions = [r["weight_version"] for r in trainer.records]
    assert versions == sorted(set(versions)), "every step pushed a new, higher version"
    # every sample came from the weights its version names: the engine and the trainer agree on logprobs
    assert max(r["logprob_abs_diff"] for r in trainer.records) < 1e-3
    assert caught_up
    for name in ("a", "b"):
        status = served_version(stack.address(name))
        assert status.weight_version == trainer.version, (
            f"replica {name} serves {status.weight_version}, trainer at {trainer.version}"
        )
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == steps


def test_a_sigkilled_trainer_resumes_without_losing_or_repeating_a_step(policy_server, reward_server, tmp_path):
    out = tmp_path / "run"
    flags = [
        "--endpoints.policy",
        policy_server.address,
        "--endpoints.reward",
        reward_server.address,
        "--rewards.model",
        "length",
        "--model",
        str(policy_server.model_dir),
        "--run.output-dir",
        str(out),
        "--steps",
        "5",
        "--sampling.prompts-per-step",
        "2",
        "--sampling.samples-per-prompt",
        "2",
        "--sampling.max-tokens",
        "8",
        "--checkpoint-every",
        "1",
        "--run.seed",
        "5",
    ]
    command = [sys.executable, "-m", "services.trainer", "train", *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    metrics = out / "metrics.jsonl"

    def logged() -> list[int]:
        return [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []

    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: len(logged()) >= 2, 300, "two logged steps")
    finally:
        first.kill()  # SIGKILL: wherever it was, mid-step or mid-checkpoint
        first.wait(30)
    assert first.returncode != 0
    killed_after = logged()
    with open(tmp_path / "second.log", "wb") as log:
        second = subprocess.run(
            [*command, "--resume", "latest"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600
        )
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    resumed_from = int(Path(summary["resumed_from"]).name.split("-")[1])
    assert resumed_from <= len(killed_after)
    assert [s["step"] for s in summary["steps"]] == list(range(resumed_from + 1, 6)), "continues after its checkpoint"
    assert logged() == [1, 2, 3, 4, 5], "every step logged exactly once"
