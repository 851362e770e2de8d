"""Rollouts: prompts -> Generate -> Score (one call per reward model) -> padded tensors.

`BatchSource.make(index)` is the whole producer side of a step, so the same
function runs inline (synchronous training) or on a background thread (async
mode, `async_rollout.py`) and in `evaluate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from rlhf.v1 import common_pb2, policy_pb2, reward_pb2
from services.clients.policy import PolicyClient
from services.clients.reward import RewardClient
from services.common.prompt_templates import Templates
from services.common.prompts import PromptRow, PromptSampler
from services.common.sections import Sampling
from services.trainer.losses import token_logprobs


@dataclass(frozen=True)
class SamplingSettings:
    samples_per_prompt: int
    max_tokens: int
    temperature: float
    top_p: float
    apply_chat_template: bool
    seed: int

    @classmethod
    def of(cls, sampling: Sampling, apply_chat_template: bool, seed: int) -> SamplingSettings:
        """The settings a config's sampling section asks for (the trainer, the evaluator, the capacity bench)."""
        s = sampling
        return cls(s.samples_per_prompt, s.max_tokens, s.temperature, s.top_p, apply_chat_template, seed)


@dataclass
class Batch:
    """One step's samples, scored, in prompt-major order (prompt p's samples are contiguous)."""

    index: int
    rows: list[PromptRow]
    response: policy_pb2.GenerateResponse
    scores: dict[str, torch.Tensor]
    reward_versions: dict[str, str]
    data_position: int
    seconds: dict[str, float]
    temperature: float | None = None  # what sampled it, when a schedule sets it (None: sampling.temperature)

    @property
    def samples(self) -> list[policy_pb2.Sample]:
        return [s for result in self.response.results for s in result.samples]

    @property
    def versions(self) -> list[int]:
        return [s.weight_version for s in self.samples]

    @property
    def aborted(self) -> int:
        return sum(s.finish_reason == common_pb2.FINISH_REASON_ABORTED for s in self.samples)


def sample_seed(seed: int, index: int) -> int:
    """Per-request sampling seed: the same (seed, batch) samples the same tokens from the same weights."""
    return (seed * 1_000_003 + index * 10_007) % (2**63)


def generate(
    client: PolicyClient,
    rows: list[PromptRow],
    settings: SamplingSettings,
    index: int,
    tag: str,
    templates: Templates | None = None,
) -> policy_pb2.GenerateResponse:
    """Samples every row through its prompt template in one Generate call; results in row order.

    Each Prompt carries its template's name (`Prompt.template`), which the policy records
    with the samples, and its system prompt as a system turn (see prompt_templates.py).
    """
    templates = templates or Templates()
    request = policy_pb2.GenerateRequest(
        prompts=[templates.prompt(row, settings.apply_chat_template) for row in rows],
        sampling=policy_pb2.SamplingParams(
            n=settings.samples_per_prompt,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=sample_seed(settings.seed, index),
        ),
        request_id=f"{tag}-{index}",
    )
    return client.generate(request)


def score_items(rows: list[PromptRow], response: policy_pb2.GenerateResponse) -> list[reward_pb2.ScoreItem]:
    """One item per sample, prompt-major. The prompt is the row's own text, not the templated one:
    a reward model judges the answer to the user's request, whatever instructions framed it."""
    return [
        reward_pb2.ScoreItem(
            prompt=row.prompt, completion=sample.text, **({"reference": row.reference} if row.reference else {})
        )
        for row, result in zip(rows, response.results)
        for sample in result.samples
    ]


def score(
    client: RewardClient, models: tuple[str, ...], rows: list[PromptRow], response: policy_pb2.GenerateResponse
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Scores every sample with each model (one Score call per model)."""
    items = score_items(rows, response)
    scores, versions = {}, {}
    for name in models:
        reply = client.score(name, items)
        scores[name] = torch.tensor(list(reply.scores), dtype=torch.float32)
        versions[name] = f"{reply.model}@{reply.model_version}"
    return scores, versions


class BatchSource:
    """Draws prompts, generates and scores them: everything a step needs before the update."""

    def __init__(
        self,
        sampler: PromptSampler,
        policy: PolicyClient,
        reward: RewardClient,
        reward_models: tuple[str, ...],
        prompts_per_step: int,
        settings: SamplingSettings,
        temperature: Callable[[int], float] | None = None,
        templates: Templates | None = None,
        scorer: Callable[[list[PromptRow], policy_pb2.GenerateResponse], tuple[dict, dict]] | None = None,
    ) -> None:
        """`temperature`: step index -> sampling temperature (a schedule); None: settings.temperature throughout.
        `templates`: the prompt templates rows are sent through. `scorer`: (rows, response) -> (scores, versions)
        in place of one Score call per `reward_models` entry (multi-task: services/trainer/tasks.py)."""
        self.sampler, self.policy, self.reward = sampler, policy, reward
        self.reward_models, self.prompts_per_step, self.settings = reward_models, prompts_per_step, settings
        self.temperature, self.templates = temperature, templates
        self.scorer = scorer or (lambda rows, response: score(self.reward, self.reward_models, rows, response))

    def make(self, index: int) -> Batch:
        started = time.perf_counter()
        rows = self.sampler.next_batch(self.prompts_per_step)
        settings, temperature = self.settings, None
        if self.temperature is not None:
            temperature = self.temperature(index)
            settings = replace(settings, temperature=temperature)
        response = generate(self.policy, rows, settings, index, "train-step", self.templates)
        generated = time.perf_counter()
        scores, versions = self.scorer(rows, response)
        seconds = {"generate": generated - started, "score": time.perf_counter() - generated}
        return Batch(index, rows, response, scores, versions, self.sampler.position, seconds, temperature)


class Rollout:
    """A batch's samples as padded tensors aligned for next-token logprobs.

    Column j of the [batch, length-1] tensors scores token j+1 of the sequence;
    `mask` marks completion tokens, `behaviour_logp` holds the engine's logprobs.
    """

    temperature: float | None = None  # the sampling temperature, when it differs by batch (a schedule)

    def __init__(self, sequences: list[tuple[list[int], list[int], list[float]]], pad_id: int) -> None:
        length = max(len(p) + len(c) for p, c, _ in sequences)
        batch = len(sequences)
        self.input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((batch, length), dtype=torch.long)
        self.behaviour_logp = torch.zeros((batch, length - 1))
        self.mask = torch.zeros((batch, length - 1))
        for row, (prompt, completion, logprobs) in enumerate(sequences):
            ids = prompt + completion
            self.input_ids[row, : len(ids)] = torch.tensor(ids)
            self.attention_mask[row, : len(ids)] = 1
            start = len(prompt) - 1
            if len(logprobs) != len(completion):
                raise ValueError(f"sample {row}: {len(completion)} tokens but {len(logprobs)} logprobs")
            self.behaviour_logp[row, start : start + len(completion)] = torch.tensor(logprobs)
            self.mask[row, start : start + len(completion)] = 1.0

    @classmethod
    def from_response(
        cls, response: policy_pb2.GenerateResponse, pad_id: int, temperature: float | None = None
    ) -> Rollout:
        rollout = cls(
            [
                (list(result.prompt_token_ids), list(s.token_ids), list(s.logprobs))
                for result in response.results
                for s in result.samples
            ],
            pad_id,
        )
        rollout.temperature = temperature
        return rollout

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def completion_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, first_column: int = 0
) -> torch.Tensor:
    """Logits for Rollout columns first_column.. (position j predicts token j+1).

    Only those positions go through the output head (`logits_to_keep`): the prompt's
    logits are never used, and the vocabulary-wide projection and softmax are a large
    share of a small model's cost.
    """
    keep = input_ids.shape[1] - first_column
    return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits[:, :-1]


def first_completion_column(mask: torch.Tensor) -> int:
    """The leftmost column any row's completion occupies (0 for an empty mask)."""
    columns = mask.any(dim=0).nonzero()
    return int(columns[0]) if len(columns) else 0


def pad_columns(values: torch.Tensor, first_column: int) -> torch.Tensor:
    """Puts per-column values computed from first_column back at full Rollout width (zeros before)."""
    return torch.nn.functional.pad(values, (first_column, 0))


def sequence_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float, first_column: int = 0
) -> torch.Tensor:
    """Logprobs of the sequence's tokens at full Rollout width; columns before first_column are 0."""
    logits = completion_logits(model, input_ids, attention_mask, first_column)
    return pad_columns(token_logprobs(logits, input_ids[:, first_column + 1 :], temperature), first_column)
