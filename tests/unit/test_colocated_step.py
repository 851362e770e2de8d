"""The step benchmark's colocated stand-ins (bench/colocated.py) give the trainer what its clients give it.

A fake engine stands in for vLLM (the real one runs in `make bench-step`): pushes
must land in the engine as a valid safetensors file under the next version, in
the same shared-memory file each time; Generate replies must have the service's
shape, which the trainer's Rollout consumes; scoring goes through the reward
servicer in-process.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from bench.colocated import ColocatedPolicy, ColocatedRewards, EventLoopThread, _reward_host
from rlhf.v1 import common_pb2, policy_pb2, reward_pb2
from services.common.errors import InvalidArgument
from services.policy.engine import SampleDelta
from services.policy.sampling import Limits
from services.reward.config import RewardConfig
from services.reward.server import RewardServicer
from services.trainer.rollout import Rollout


class FakeEngine:
    """Two deltas per sample (token 100*prompt + sample, then 7); loads record the staged file's tensors."""

    description = "fake"

    def __init__(self) -> None:
        self.loaded: list[dict[str, torch.Tensor]] = []

    async def generate(self, request_id, prompt_token_ids, spec, sample_index, prompt_index=0):
        yield SampleDelta([100 * prompt_index + sample_index], [-0.5], "a", None)
        yield SampleDelta([7], [-1.0], "b", "length")

    async def load_weights(self, staged_file: str) -> int:
        self.loaded.append(load_file(staged_file))
        return len(self.loaded[-1])


@pytest.fixture
def loop():
    thread = EventLoopThread()
    yield thread
    thread.close()


def test_push_reloads_the_engine_from_one_shared_memory_file_under_the_next_version(loop, tmp_path):
    engine = FakeEngine()
    policy = ColocatedPolicy(engine, None, Limits(4, 4, 8, 64, 1000), "model", loop, tmp_path)
    first = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    reply = policy.push(first.items(), 4 << 20, 0, "step 1")
    assert (reply.weight_version, reply.previous_version, reply.num_tensors) == (1, 0, 2)
    assert reply.total_bytes == 6 * 4 + 4 * 2
    assert engine.loaded[0].keys() == first.keys()
    assert all(torch.equal(engine.loaded[0][k], v) for k, v in first.items())
    path = policy.segment.path

    with pytest.raises(ValueError, match="expected version 0"):
        policy.push(first.items(), 4 << 20, 0, "stale")
    second = {"a": torch.full((2, 3), 2.0)}
    assert policy.push(second.items(), 4 << 20, 1, "step 2").weight_version == 2
    assert torch.equal(engine.loaded[-1]["a"], second["a"]) and list(engine.loaded[-1]) == ["a"]
    assert policy.segment.path == path, "every push rewrites the same file (its pages stay touched)"
    assert policy.status().weight_version == 2 and policy.status().model == "model"
    policy.close()
    assert not path.exists()


def test_generate_replies_as_the_service_does_and_the_trainer_reads_them(loop, tmp_path):
    policy = ColocatedPolicy(FakeEngine(), None, Limits(4, 4, 8, 64, 1000), "model", loop, tmp_path)
    policy.version = 3
    request = policy_pb2.GenerateRequest(
        prompts=[policy_pb2.Prompt(token_ids=[1, 2, 3]), policy_pb2.Prompt(token_ids=[4])],
        sampling=policy_pb2.SamplingParams(n=2, max_tokens=2),
        request_id="train-step-0",
    )
    response = policy.generate(request)
    assert [list(r.prompt_token_ids) for r in response.results] == [[1, 2, 3], [4]]
    samples = [s for r in response.results for s in r.samples]
    assert [list(s.token_ids) for s in samples] == [[0, 7], [1, 7], [100, 7], [101, 7]]
    assert [s.index for s in samples] == [0, 1, 0, 1]
    assert all(s.weight_version == 3 and s.text == "ab" and list(s.logprobs) == [-0.5, -1.0] for s in samples)
    assert all(s.finish_reason == common_pb2.FINISH_REASON_LENGTH and s.sample_id for s in samples)
    rollout = Rollout.from_response(response, pad_id=0)
    assert rollout.input_ids.shape == (4, 5) and int(rollout.mask.sum()) == 8

    request.prompts[1].token_ids[:] = [5000]
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        policy.generate(request)


def test_scores_come_from_the_reward_servicer_in_process(loop):
    toml = '[[models]]\nname = "rules"\nkind = "rules"\ntarget_words = 3\n'
    host = loop.call(_reward_host(toml, RewardConfig()))
    rewards = ColocatedRewards(RewardServicer(RewardConfig(), host), loop)
    items = [reward_pb2.ScoreItem(prompt="p", completion=c) for c in ("one two three", "one")]
    reply = rewards.score("rules", items)
    assert reply.model == "rules" and len(reply.scores) == 2
    assert reply.scores[0] > reply.scores[1], "the rules model prefers the target length"
    loop.call(host.close())
