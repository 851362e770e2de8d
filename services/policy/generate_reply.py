"""A Generate reply from the engine's per-sample delta streams: samples collected concurrently, grouped by prompt.

Kept apart from the servicer (and free of vLLM and gRPC) so whatever drives the engine
builds the same reply: the servicer over its version gate, and the colocated step
benchmark's in-process policy (bench/colocated.py), which has no server at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from rlhf.v1 import common_pb2, policy_pb2
from services.policy.engine import SampleDelta

FINISH_REASONS = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORTED,
}

# (prompt token ids, sample index, prompt index) -> that sample's deltas
SampleStream = Callable[[list[int], int, int], AsyncIterator[SampleDelta]]


async def collect_sample(deltas: AsyncIterator[SampleDelta], index: int, version: int) -> policy_pb2.Sample:
    """One sample's deltas joined into a Sample made with weight version `version`."""
    sample = policy_pb2.Sample(index=index, weight_version=version)
    text = []
    async for delta in deltas:
        sample.token_ids.extend(delta.token_ids)
        sample.logprobs.extend(delta.logprobs)
        text.append(delta.text)
        if delta.finish_reason is not None:
            sample.finish_reason = FINISH_REASONS.get(delta.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED)
    sample.text = "".join(text)
    return sample


async def generate_reply(
    stream: SampleStream, prompts: list[list[int]], n: int, version: int
) -> policy_pb2.GenerateResponse:
    """Runs the n samples of every prompt at once; results in prompt order, samples in index order."""
    samples = await asyncio.gather(
        *[collect_sample(stream(ids, i, p), i, version) for p, ids in enumerate(prompts) for i in range(n)]
    )
    response = policy_pb2.GenerateResponse()
    for p, ids in enumerate(prompts):
        result = response.results.add(prompt_token_ids=ids)
        result.samples.extend(samples[p * n : (p + 1) * n])
    return response
