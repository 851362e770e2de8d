"""Validates Generate requests and turns them into engine-neutral values.

Kept free of vLLM so the rules (and their error messages) are unit-testable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rlhf.v1 import policy_pb2
from services.common.errors import InvalidArgument, require
from services.common.prompt_templates import NAME as TEMPLATE_NAME

if TYPE_CHECKING:
    from services.policy.config import PolicyConfig

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
MAX_STOP_STRINGS = 8


@dataclass(frozen=True)
class Limits:
    max_prompts: int
    max_samples: int
    max_tokens: int
    max_model_len: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: PolicyConfig, vocab_size: int) -> Limits:
        """The request limits a policy configured by `config` serves a model of `vocab_size` tokens with."""
        return cls(
            max_prompts=config.max_prompts_per_request,
            max_samples=config.max_samples_per_prompt,
            max_tokens=min(config.max_tokens, config.max_model_len - 1),
            max_model_len=config.max_model_len,
            vocab_size=vocab_size,
        )


@dataclass(frozen=True)
class SamplingSpec:
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool = False

    def sample_seed(self, index: int, prompt_index: int = 0) -> int | None:
        """Distinct, reproducible seed per sample of a request (prompts included) when the request gave one."""
        return None if self.seed is None else (self.seed + prompt_index * self.n + index) % (2**63)


def parse_sampling(params: policy_pb2.SamplingParams, limits: Limits) -> SamplingSpec:
    n = params.n or 1
    require(n <= limits.max_samples, f"sampling.n={n} exceeds the limit of {limits.max_samples}")
    max_tokens = params.max_tokens or 64
    require(
        max_tokens <= limits.max_tokens,
        f"sampling.max_tokens={max_tokens} exceeds the limit of {limits.max_tokens}",
    )
    temperature = params.temperature if params.HasField("temperature") else 1.0
    require(
        math.isfinite(temperature) and 0.0 <= temperature <= 100.0,
        f"sampling.temperature must be in [0, 100], got {temperature}",
    )
    top_p = params.top_p if params.HasField("top_p") else 1.0
    require(math.isfinite(top_p) and 0.0 < top_p <= 1.0, f"sampling.top_p must be in (0, 1], got {top_p}")
    require(len(params.stop) <= MAX_STOP_STRINGS, f"at most {MAX_STOP_STRINGS} stop strings, got {len(params.stop)}")
    require(all(0 < len(s) <= 256 for s in params.stop), "stop strings must be 1 to 256 characters")
    seed = params.seed if params.HasField("seed") else None
    return SamplingSpec(n, max_tokens, temperature, top_p, params.top_k, seed, tuple(params.stop), params.ignore_eos)


def check_request_id(request_id: str) -> None:
    require(bool(_REQUEST_ID.match(request_id)), "request_id: at most 64 letters, digits, '-' or '_'")


def check_prompt_count(count: int, limits: Limits) -> None:
    require(count > 0, "request has no prompts")
    require(count <= limits.max_prompts, f"{count} prompts exceed the limit of {limits.max_prompts} per request")


def check_prompt_fields(index: int, prompt: policy_pb2.Prompt) -> None:
    """The Prompt's fields fit together: text or token_ids, a system turn only where a chat template renders it."""
    has_text, has_ids = bool(prompt.text), len(prompt.token_ids) > 0
    if has_text == has_ids:
        raise InvalidArgument(f"prompts[{index}]: give exactly one of text or token_ids")
    if prompt.system and not (has_text and prompt.apply_chat_template):
        raise InvalidArgument(
            f"prompts[{index}]: system needs text with apply_chat_template (only a chat template renders a "
            "system turn); for a raw completion or token_ids put the system prompt into the prompt itself"
        )
    if prompt.template and not TEMPLATE_NAME.fullmatch(prompt.template):
        raise InvalidArgument(
            f"prompts[{index}]: template {prompt.template[:80]!r}: at most 64 letters, digits, '-' or '_'"
        )


def check_token_ids(index: int, token_ids: list[int], spec: SamplingSpec, limits: Limits) -> None:
    require(len(token_ids) > 0, f"prompts[{index}] is empty")
    bad = next((t for t in token_ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:
        raise InvalidArgument(f"prompts[{index}]: token id {bad} outside the vocabulary [0, {limits.vocab_size})")
    total = len(token_ids) + spec.max_tokens
    if total > limits.max_model_len:
        raise InvalidArgument(
            f"prompts[{index}]: {len(token_ids)} prompt tokens + max_tokens {spec.max_tokens} = {total} "
            f"exceeds the context length {limits.max_model_len}"
        )
