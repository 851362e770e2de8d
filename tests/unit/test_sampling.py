import math

import pytest

from rlhf.v1 import policy_pb2
from services.common.errors import InvalidArgument
from services.policy.sampling import Limits, check_prompt_count, check_request_id, check_token_ids, parse_sampling

LIMITS = Limits(max_prompts=4, max_samples=8, max_tokens=100, max_model_len=128, vocab_size=1000)


def test_defaults():
    spec = parse_sampling(policy_pb2.SamplingParams(), LIMITS)
    assert (spec.n, spec.max_tokens, spec.temperature, spec.top_p, spec.top_k, spec.seed) == (1, 64, 1.0, 1.0, 0, None)
    greedy = parse_sampling(policy_pb2.SamplingParams(temperature=0.0, seed=5), LIMITS)
    assert greedy.temperature == 0.0 and greedy.sample_seed(2) == 7


@pytest.mark.parametrize(
    "params, message",
    [
        (policy_pb2.SamplingParams(n=9), "limit of 8"),
        (policy_pb2.SamplingParams(max_tokens=101), "limit of 100"),
        (policy_pb2.SamplingParams(temperature=math.nan), "temperature"),
        (policy_pb2.SamplingParams(temperature=-1), "temperature"),
        (policy_pb2.SamplingParams(top_p=0.0), "top_p"),
        (policy_pb2.SamplingParams(top_p=1.5), "top_p"),
        (policy_pb2.SamplingParams(stop=["x"] * 9), "stop strings"),
    ],
)
def test_bad_sampling(params, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_sampling(params, LIMITS)


def test_prompt_checks():
    spec = parse_sampling(policy_pb2.SamplingParams(max_tokens=100), LIMITS)
    check_token_ids(0, [1, 2, 3], spec, LIMITS)
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        check_token_ids(0, [1, 1000], spec, LIMITS)
    with pytest.raises(InvalidArgument, match="exceeds the context length 128"):
        check_token_ids(1, [1] * 29, spec, LIMITS)
    with pytest.raises(InvalidArgument, match="empty"):
        check_token_ids(0, [], spec, LIMITS)
    with pytest.raises(InvalidArgument, match="no prompts"):
        check_prompt_count(0, LIMITS)
    with pytest.raises(InvalidArgument, match="limit of 4"):
        check_prompt_count(5, LIMITS)
    with pytest.raises(InvalidArgument, match="request_id"):
        check_request_id("bad id!")


def test_sample_seeds_differ_across_the_prompts_of_a_request():
    """Issue 16: seeds were seed + sample_index, so every prompt of a request drew the same random stream."""
    spec = parse_sampling(policy_pb2.SamplingParams(n=3, seed=11), LIMITS)
    seeds = [spec.sample_seed(i, prompt_index=p) for p in range(4) for i in range(3)]
    assert len(set(seeds)) == len(seeds)
    assert spec.sample_seed(0, prompt_index=1) != spec.sample_seed(0, prompt_index=0)
    assert spec.sample_seed(2) == 13, "prompt 0 keeps seed + sample_index"
    unseeded = parse_sampling(policy_pb2.SamplingParams(n=3), LIMITS)
    assert unseeded.sample_seed(1, prompt_index=2) is None
