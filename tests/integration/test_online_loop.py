"""Online RLHF end to end on tiny models: rollback, the continuous loop with a canary, and a crash.

One stack for the module: a stable and a canary policy replica (both recording into one
SQLite experience store and hosting FeedbackService for their users), the standalone
experience service the loop reads from, and a reward service with RewardAdminService.
The traffic simulator runs as a subprocess for the whole module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from rlhf.v1 import feedback_pb2 as fb
from rlhf.v1 import feedback_pb2_grpc, policy_pb2, policy_pb2_grpc, reward_pb2, reward_pb2_grpc
from services.clients.policy import PolicyReplica
from services.common.client import open_channel
from services.common.config import build, to_flags
from services.common.process import ServerProcess, free_port
from services.online.config import OnlineConfig
from services.online.loop import OnlineTrainer
from services.trainer import checkpoint
from tests.integration.feedback_support import start_experience_service
from tests.integration.reward_fixtures import build_tiny_classifier

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMPT_IDS = [1, 504, 3458, 314, 260, 1345]
REWARD_MODELS = """\
[[models]]
name = "length"
kind = "rules"
target_words = 12
"""


@dataclass
class Stack:
    root: Path
    db_url: str
    experience_address: str
    reward_address: str
    addresses: dict[str, str]
    processes: dict[str, ServerProcess]
    policy_args: dict[str, list[str]]
    rm_base: Path
    model_dir: Path

    def crash_policy(self, name: str) -> None:
        self.processes[name].crash()

    def restart_policy(self, name: str, timeout_s: float = 300) -> None:
        self.processes[name] = ServerProcess(
            "services.policy", self.policy_args[name], self.root / f"{name}-restarted.log"
        )
        self.processes[name].start(self.addresses[name], timeout_s)

    def stub(self, name: str) -> policy_pb2_grpc.PolicyServiceStub:
        return policy_pb2_grpc.PolicyServiceStub(open_channel(self.addresses[name]))


def _stop_all(processes: dict[str, ServerProcess]) -> None:
    for process in processes.values():  # SIGTERM to all first: they drain in parallel
        if process.process is not None and process.process.poll() is None:
            process.process.send_signal(signal.SIGTERM)
    for process in processes.values():
        process.stop()


@pytest.fixture(scope="module")
def stack(tiny_policy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    db_url = f"sqlite:///{root}/experience.db"
    experience, experience_address, _ = start_experience_service(db_url, root / "experience.log")
    (root / "rewards.toml").write_text(REWARD_MODELS)
    reward_port = free_port()
    processes = {"experience": experience}
    addresses, policy_args = {}, {}
    try:
        processes["reward"] = ServerProcess(
            "services.reward",
            ["--port", str(reward_port), "--metrics-port", "0", "--models-file", str(root / "rewards.toml")],
            root / "reward.log",
        ).launch()
        for name in ("stable", "canary"):
            port = free_port()
            addresses[name] = f"127.0.0.1:{port}"
            policy_args[name] = [
                "--model",
                str(tiny_policy_dir),
                "--port",
                str(port),
                "--metrics-port",
                "0",
                "--max-model-len",
                "512",
                "--cpu-kvcache-gib",
                "1",
                "--drain-timeout-s",
                "10",
                "--grace-s",
                "2",
                "--experience-db",
                db_url,
            ]
            processes[name] = ServerProcess("services.policy", policy_args[name], root / f"{name}.log").launch()
        reward_address = f"127.0.0.1:{reward_port}"
        processes["reward"].wait_serving(reward_address, 120)
        for name in ("stable", "canary"):
            processes[name].wait_serving(addresses[name], 300)
    except BaseException:
        _stop_all(processes)
        raise
    yield Stack(
        root,
        db_url,
        experience_address,
        reward_address,
        addresses,
        processes,
        policy_args,
        build_tiny_classifier(root / "rm-base", seed=5),
        tiny_policy_dir,
    )
    _stop_all(processes)


@pytest.fixture(scope="module")
def simulator(stack):
    """Simulated users for the whole module: half on the canary, a tenth adversarial (gold answers on half the
    pairs let the store's filters find them), feedback to the FeedbackService of the user's replica. Every canary
    request is interleaved (one completion from each replica), so the canary's paired judgements come quickly."""
    acked = stack.root / "acked.jsonl"
    log = open(stack.root / "simulator.log", "wb")
    command = [
        sys.executable, "-m", "services.online", "simulate",
        "--stable-address", stack.addresses["stable"], "--canary-address", stack.addresses["canary"],
        "--canary-fraction", "0.5", "--users", "40", "--adversarial-fraction", "0.1", "--rating-noise", "0.05",
        "--request-rate", "8", "--duration-s", "600", "--max-requests", "20000", "--max-concurrency", "8",
        "--samples-per-request", "2", "--interleave-probability", "1.0", "--max-tokens", "16", "--target-words", "12",
        "--title-weight", "0",
        "--diversity-weight", "2", "--rating-probability", "0.9", "--pairwise-probability", "0.8",
        "--gold-probability", "0.5", "--think-time-s", "0.2", "--rpc-timeout-s", "20", "--acked-log", str(acked),
        "--output", str(stack.root / "simulator.json"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    yield acked
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, (stack.root / "simulator.log").read_text()[-3000:]
    log.close()
    summary = json.loads((stack.root / "simulator.json").read_text())
    assert summary["feedback_acknowledged"].get("rating", 0) > 0


def online_config(stack: Stack, output_dir: Path, overrides: dict | None = None) -> OnlineConfig:
    settings = {
        "endpoints.policy": stack.addresses["stable"],
        "canary_address": stack.addresses["canary"],
        "endpoints.feedback": stack.experience_address,
        "endpoints.reward": stack.reward_address,
        "model": str(stack.model_dir),
        "run.output_dir": str(output_dir),
        "idle_s": 0.5,
        "rm_base_model": str(stack.rm_base),
        "rm_min_new_pairs": 8,
        "rm_epochs": 2,
        "rm_learning_rate": 1e-3,
        "rm_batch_size": 8,
        "rm_max_length": 64,
        "rm_threads": 1,
        "steps_per_round": 2,
        "max_version_lag": 1,
        "sampling.prompts_per_step": 4,
        "sampling.samples_per_prompt": 2,
        "sampling.max_tokens": 16,
        "optimizer.learning_rate": 1e-5,
        "optimizer.micro_batch_size": 8,
        # A quick gate: tightest at 30 judgements, promote when surely not 0.3 worse, decide within 40 judgements
        # or 60 s (measured: 16-28 judgements, 35-45 s a decision). The loop's defaults (delta 0.1, tuned for 300)
        # need hundreds of judgements per decision; their error rates are test_canary_sequential.py's subject.
        "canary.min_judgements": 10,
        "canary.delta": 0.3,
        "canary.tuned_judgements": 30,
        "canary.max_judgements": 40,
        "canary.window_s": 60,
        "canary.poll_s": 0.5,
        "endpoints.rpc_timeout_s": 60,
    }
    return build(OnlineConfig, {**settings, **(overrides or {})})


def greedy(stub) -> policy_pb2.Sample:
    reply = stub.Generate(
        policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(token_ids=PROMPT_IDS)],
            sampling=policy_pb2.SamplingParams(max_tokens=8, temperature=0.0),
            recording=policy_pb2.RECORDING_MODE_OFF,
        ),
        timeout=60,
    )
    return reply.results[0].samples[0]


def corrupted_weights(model_dir: Path, token_id: int) -> list[tuple[str, torch.Tensor]]:
    """Valid shapes and finite values, but the model says one token forever.

    Attention and MLP outputs are zeroed, so the last hidden state is the input
    embedding; every embedding row is the same positive vector and `token_id`'s is ten
    times longer, so after the final norm every position's logits favour `token_id`.
    """
    tensors = load_file(str(model_dir / "model.safetensors"))
    for name, tensor in tensors.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensors[name] = torch.zeros_like(tensor)
        elif name.endswith("norm.weight"):
            tensors[name] = torch.ones_like(tensor)
    embedding = torch.ones_like(tensors["model.embed_tokens.weight"])
    embedding[token_id] *= 10.0
    tensors["model.embed_tokens.weight"] = embedding
    return list(tensors.items())


def the_token(model_dir: Path) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).encode(" book", add_special_tokens=False)[0]


# ---- Rollback ---------------------------------------------------------------------


def test_rollback_restores_the_previous_weights_in_place(stack):
    stable, canary = stack.stub("stable"), stack.stub("canary")
    with pytest.raises(grpc.RpcError) as nothing_earlier:
        stable.Rollback(policy_pb2.RollbackRequest(), timeout=30)
    assert nothing_earlier.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    status = canary.GetStatus(policy_pb2.GetStatusRequest())
    start = status.weight_version
    original = greedy(canary)
    replica = PolicyReplica("canary", stack.addresses["canary"])
    pushed = replica.push(corrupted_weights(stack.model_dir, the_token(stack.model_dir)), None, "corrupted")
    changed = greedy(canary)
    assert changed.weight_version == pushed.weight_version == status.highest_version + 1
    assert list(changed.token_ids) != list(original.token_ids)
    assert len(set(changed.token_ids)) == 1, "the corrupted model repeats one token"
    listed = canary.GetStatus(policy_pb2.GetStatusRequest())
    assert start in [v.version for v in listed.restorable_versions]

    reply = canary.Rollback(policy_pb2.RollbackRequest(reason="test"), timeout=60)
    assert (reply.weight_version, reply.previous_version) == (start, pushed.weight_version) and reply.num_tensors > 0
    restored = greedy(canary)
    assert restored.weight_version == start and list(restored.token_ids) == list(original.token_ids)
    after = canary.GetStatus(policy_pb2.GetStatusRequest())
    assert (after.weight_version, after.highest_version, after.version_note) == (start, pushed.weight_version, "test")
    assert pushed.weight_version in [v.version for v in after.restorable_versions]

    assert canary.Rollback(policy_pb2.RollbackRequest(version=start), timeout=30).num_tensors == 0  # retry-safe no-op
    for unknown in (pushed.weight_version + 7, 10**6):
        with pytest.raises(grpc.RpcError) as raised:
            canary.Rollback(policy_pb2.RollbackRequest(version=unknown), timeout=30)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "restorable" in raised.value.details()
    with pytest.raises(grpc.RpcError) as reused:  # a version number is never handed out twice
        replica.push(corrupted_weights(stack.model_dir, 0), pushed.weight_version, "reuse")
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert greedy(canary).weight_version == start
    replica.close()


# ---- the loop ---------------------------------------------------------------------------


def test_online_loop_trains_swaps_the_reward_model_promotes_and_rolls_back_a_bad_version(stack, simulator, tmp_path):
    trainer = OnlineTrainer(online_config(stack, tmp_path / "online", {"max_rounds": 1, "duration_s": 240}))
    try:
        summary = trainer.run()
        assert summary["rounds"] == 1
        (trained,) = summary["reward_models"]  # the reward model was trained on live preferences...
        assert trained["published"] and trained["pairs"] >= 8
        with open_channel(stack.reward_address) as channel:  # ...and swapped into the reward service
            models = reward_pb2_grpc.RewardServiceStub(channel).ListModels(reward_pb2.ListModelsRequest(), timeout=30)
        assert {m.name: m.version for m in models.models}["online-rm"] == trained["version"]
        (decision,) = summary["decisions"]
        candidate = decision["candidate_version"]
        assert decision["n"] >= 10  # paired stable-vs-canary judgements the sequential test read
        round_record = json.loads((tmp_path / "online" / "rounds.jsonl").read_text().splitlines()[-1])
        assert [s["dropped"] for s in round_record["steps"]] == [False, False] and round_record["updates"] == 2
        stable_status = stack.stub("stable").GetStatus(policy_pb2.GetStatusRequest())
        canary_status = stack.stub("canary").GetStatus(policy_pb2.GetStatusRequest())
        assert canary_status.highest_version >= candidate  # the new policy was pushed to the canary
        assert stable_status.weight_version == canary_status.weight_version == trainer.stable_version
        if decision["action"] == "promote":
            assert trainer.stable_version == candidate
        stable_output = greedy(stack.stub("stable"))

        bad = corrupted_weights(stack.model_dir, the_token(stack.model_dir))
        verdict = trainer.rollout.deploy(bad, "deliberately corrupted", trainer.stable_version)
        assert verdict.action == "rollback", verdict
        assert verdict.n >= 10 and verdict.ci_high < 0 and verdict.effect < -0.2  # users prefer stable, surely
        canary_status = stack.stub("canary").GetStatus(policy_pb2.GetStatusRequest())
        assert canary_status.weight_version == trainer.stable_version
        assert canary_status.highest_version == verdict.candidate_version
        assert stack.stub("stable").GetStatus(policy_pb2.GetStatusRequest()).weight_version == trainer.stable_version
        assert list(greedy(stack.stub("canary")).token_ids) == list(stable_output.token_ids)

        with open_channel(stack.experience_address) as channel:
            stats = feedback_pb2_grpc.FeedbackServiceStub(channel).GetStats(fb.GetStatsRequest(), timeout=30)
        kinds = {k.kind: k.count for k in stats.by_kind}
        assert kinds[fb.FEEDBACK_KIND_RATING] >= 20 and kinds[fb.FEEDBACK_KIND_PAIRWISE] >= 8
    finally:
        trainer.close()


def _wait_for(predicate, timeout_s: float, what: str, logs: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    tail = logs.read_text(errors="replace")[-4000:] if logs and logs.is_file() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _rounds(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_loop_and_policy_survive_sigkill_and_resume_from_the_checkpoint(stack, simulator, tmp_path):
    out = tmp_path / "crash"
    # The reward-model refresh is the other test's subject; here the rules model scores, so rounds are quick.
    config = online_config(stack, out, {"rewards.model": "length", "rm_min_new_pairs": 10**6})
    command = [sys.executable, "-m", "services.online", "run", *to_flags(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        command, cwd=ROOT, stdout=open(tmp_path / "first.log", "wb"), stderr=subprocess.STDOUT, env=env
    )
    try:
        _wait_for(lambda: _rounds(out / "rounds.jsonl"), 240, "the first round", tmp_path / "first.log")
    except BaseException:
        first.kill()
        raise
    acked_before = len(simulator.read_text().splitlines())
    time.sleep(1.0)  # into the next round
    first.kill()  # SIGKILL: no checkpoint on the way out
    stack.crash_policy("stable")
    first.wait(30)
    checkpoint_round = checkpoint.read_state(checkpoint.latest_checkpoint(out))

    second = subprocess.Popen(
        command, cwd=ROOT, stdout=open(tmp_path / "second.log", "wb"), stderr=subprocess.STDOUT, env=env
    )
    try:
        stack.restart_policy("stable")
        log = tmp_path / "second.log"
        _wait_for(lambda: "resumed from" in log.read_text(errors="replace"), 120, "the resume", log)
        assert f"round {checkpoint_round['round']}," in log.read_text().split("resumed from", 1)[1].splitlines()[0]
        after = lambda: [r for r in _rounds(out / "rounds.jsonl") if r["round"] > checkpoint_round["round"]]  # noqa: E731
        resumed = _wait_for(after, 240, "a round after the resume", log)[0]
        assert resumed["round"] == checkpoint_round["round"] + 1
        assert resumed["updates"] == checkpoint_round["updates"] + 2  # continued from the checkpoint's learner
        stable = stack.stub("stable").GetStatus(policy_pb2.GetStatusRequest())
        assert stable.weight_version == resumed["stable_version"]  # the restarted replica got the weights back
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(120) == 0, (tmp_path / "second.log").read_text()[-4000:]

    acknowledged = [json.loads(line)["feedback_id"] for line in simulator.read_text().splitlines()]
    assert len(acknowledged) > acked_before
    with open_channel(stack.experience_address) as channel:
        feedback = feedback_pb2_grpc.FeedbackServiceStub(channel)
        stored, cursor = set(), 0
        while True:
            page = feedback.ExportFeedback(fb.ExportFeedbackRequest(since_cursor=cursor, limit=10000), timeout=60)
            stored |= {r.feedback_id for r in page.records}
            cursor = page.next_cursor
            if not page.has_more:
                break
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged feedback records lost"
