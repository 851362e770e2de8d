"""The step benchmark's colocated baseline: the policy's vLLM engine and the reward models in the trainer's process.

What running as services costs is measured against this: the same `Trainer` (same
config, workload and seed) drives `ColocatedPolicy` and `ColocatedRewards`, which
have the surface of the trainer's `PolicyClient` and `RewardClient` but call the
engine and the reward models directly, with no gRPC, no push stream and no server.

- Generation: the policy service's own pieces on the same `VllmEngine` adapter
  (prompt encoding, sampling checks, `generate_reply`), so the reply is the one the
  service would send, sample ids included.
- A push writes the tensors once into a private safetensors file in /dev/shm,
  rewritten in place by every push (`SegmentWriter`, the trainer's half of the
  same-host push: touched pages, XXH3 computed on the way at ~11 GB/s), then calls
  `engine.load_weights` on it: the in-place reload the policy service does after
  it has received and verified a push.
- Scoring: the reward service's `RewardServicer.Score` over a `ModelHost` loaded
  from the same models TOML, called directly (its batcher included).

vLLM's AsyncLLM still runs its engine core in a child process, as it does inside the
policy service; what is gone is every hop through gRPC and the push's receive side.
The engine's coroutines run on a private event loop in a thread (`EventLoopThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import tomllib
import uuid
from collections.abc import Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from rlhf.v1 import policy_pb2, reward_pb2
from services.common.shared_segment import SegmentWriter
from services.policy.config import PolicyConfig
from services.policy.engine import VllmEngine
from services.policy.generate_reply import generate_reply
from services.policy.prompt_tokens import PromptEncoder
from services.policy.recording import SampleIds
from services.policy.sampling import Limits, check_token_ids, parse_sampling
from services.reward.config import RewardConfig
from services.reward.hosting import ModelHost
from services.reward.registry import parse_declarations
from services.reward.server import RewardServicer

log = logging.getLogger(__name__)

T = TypeVar("T")


class EventLoopThread:
    """An asyncio loop on a daemon thread; `call` runs a coroutine on it and blocks for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="colocated-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ColocatedPolicy:
    """`PolicyClient`'s surface over an engine in this process: one replica, never lagging, pushes in place."""

    def __init__(
        self, engine: Any, tokenizer: Any, limits: Limits, model_name: str, loop: EventLoopThread, shm_dir: Path
    ) -> None:
        self.engine, self.limits, self.model_name, self.loop = engine, limits, model_name, loop
        self.encoder = PromptEncoder(tokenizer)
        self.segment = SegmentWriter(shm_dir)  # one file rewritten by every push: its pages stay touched
        self.version = 0
        self.consistent = True  # one engine serves one version
        self.replicas: list = []  # no replicas to catch up (the trainer's NCCL path is not colocated)
        self.full_weights = None  # set by the trainer; unused: nothing here ever falls behind
        self._lock = threading.RLock()

    @property
    def exclusive(self) -> threading.RLock:
        return self._lock

    def status(self) -> policy_pb2.GetStatusResponse:
        return policy_pb2.GetStatusResponse(
            model=self.model_name,
            weight_version=self.version,
            highest_version=self.version,
            state=policy_pb2.ENGINE_STATE_SERVING,
            engine=self.engine.description,
            max_model_len=self.limits.max_model_len,
            vocab_size=self.limits.vocab_size,
        )

    def lagging(self) -> list[str]:
        return []

    def recover(self) -> None:
        pass

    def generate(self, request: policy_pb2.GenerateRequest) -> policy_pb2.GenerateResponse:
        spec = parse_sampling(request.sampling, self.limits)
        prompts = []
        for index, prompt in enumerate(request.prompts):
            prompts.append(self.encoder.token_ids(index, prompt))
            check_token_ids(index, prompts[-1], spec, self.limits)
        tag = request.request_id or "gen"

        def stream(ids: list[int], sample: int, prompt: int):
            return self.engine.generate(f"{tag}-{uuid.uuid4().hex[:12]}", ids, spec, sample, prompt)

        response = self.loop.call(generate_reply(stream, prompts, spec.n, self.version))
        SampleIds().finish_generate(request, None, response)
        return response

    def push(
        self, tensors: Iterable[tuple[str, torch.Tensor]], chunk_bytes: int, expected_version: int | None, note: str
    ) -> policy_pb2.PushWeightsResponse:
        """Writes the tensors into the shared-memory file and reloads the engine from it, in place."""
        with self._lock:
            if expected_version is not None and expected_version != self.version:
                raise ValueError(f"push expected version {expected_version}, the engine serves {self.version}")
            items = list(tensors)
            started = time.perf_counter()
            segment = self.segment.write(items)
            written = time.perf_counter()
            count = self.loop.call(self.engine.load_weights(str(segment.path)))
            applied = time.perf_counter()
            self.version += 1
            log.info("colocated push: version %d, %d tensors (%s)", self.version, count, note)
            return policy_pb2.PushWeightsResponse(
                weight_version=self.version,
                previous_version=self.version - 1,
                num_tensors=count,
                total_bytes=sum(t.numel() * t.element_size() for _, t in items),
                receive_seconds=written - started,
                apply_seconds=applied - written,
            )

    def close(self) -> None:
        self.segment.close()


class ColocatedRewards:
    """`RewardClient`'s surface over the reward service's servicer in this process: one host, nothing to rotate."""

    def __init__(self, servicer: RewardServicer, loop: EventLoopThread) -> None:
        self.servicer, self.loop = servicer, loop
        self.models: tuple[str, ...] = ()  # set by the trainer; one host cannot disagree with itself
        self.replicas: list = []

    def score(self, model: str, items: list[reward_pb2.ScoreItem]) -> reward_pb2.ScoreResponse:
        return self.loop.call(self.servicer.Score(reward_pb2.ScoreRequest(model=model, items=items), None))

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _reward_host(rewards_toml: str, config: RewardConfig) -> ModelHost:
    """The reward models the models TOML declares, loaded as the reward service loads them at start-up."""
    host = ModelHost.from_config(config)
    await host.load(parse_declarations(tomllib.loads(rewards_toml), source="step benchmark rewards", base_dir=Path()))
    return host


@contextlib.contextmanager
def colocated(
    model_dir: str, rewards_toml: str, kvcache_gib: int = 1, shm_dir: Path = Path("/dev/shm")
) -> Iterator[tuple[ColocatedPolicy, ColocatedRewards]]:
    """Starts the engine and the reward models in this process (the settings bench/stack.py gives the services)."""
    from transformers import AutoConfig, AutoTokenizer

    config = PolicyConfig(model=model_dir, cpu_kvcache_gib=kvcache_gib)
    engine = VllmEngine(config, model_dir)
    started = time.perf_counter()
    engine.start()  # before the loop's thread exists: the engine core process may be forked
    loop = EventLoopThread()
    host = None
    try:
        reward_config = RewardConfig()  # the reward service's defaults, as bench/stack.py starts it
        host = loop.call(_reward_host(rewards_toml, reward_config))
        log.info("colocated engine and reward models ready in %.1f s", time.perf_counter() - started)
        limits = Limits.from_config(config, int(AutoConfig.from_pretrained(model_dir).vocab_size))
        policy = ColocatedPolicy(engine, AutoTokenizer.from_pretrained(model_dir), limits, model_dir, loop, shm_dir)
        try:
            yield policy, ColocatedRewards(RewardServicer(reward_config, host), loop)
        finally:
            policy.close()
    finally:
        if host is not None:
            loop.call(host.close())
        engine.shutdown()
        loop.close()
