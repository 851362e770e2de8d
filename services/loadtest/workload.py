"""What the load test sends: requests built from the shipped prompts or synthetic lengths.

Dataset prompts are real text (wrapped in the chat template by the server), so
their token counts come back from the server. Synthetic prompts are random token
ids of a drawn length, like vLLM's random dataset, so input length is exact and
no tokenizer is needed on the client. Everything is seeded: the same settings
send the same requests.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rlhf.v1 import policy_pb2, reward_pb2
from services.common.prompt_templates import Templates
from services.common.prompts import PromptRow, load_prompts

SYNTHETIC = "synthetic"

# Words for synthetic reward completions (the reward service scores text, not ids).
_WORDS = (
    "the book story reader author novel chapter character plot ending voice style pages world history "
    "love war family journey secret memory city sea night light slow quick warm cold honest strange "
    "beautiful quiet sharp funny sad brilliant careful vivid dense gentle bold simple rich deep small"
).split()


def load_rows(path: str | Path) -> list[PromptRow]:
    """The trainer's prompt loader, with a hint at the alternative dataset."""
    if not Path(path).is_file():
        raise ValueError(f"dataset {path}: cannot read it (no such file); give a JSONL file or {SYNTHETIC!r}")
    return load_prompts(path)


def draw_length(mean: int, range_ratio: float, rng: np.random.Generator) -> int:
    """Uniform integer in [mean*(1-r), mean*(1+r)], at least 1."""
    low = max(1, math.floor(mean * (1 - range_ratio)))
    high = max(low, math.ceil(mean * (1 + range_ratio)))
    return int(rng.integers(low, high + 1))


class _RowCycle:
    """Visits rows in seeded, reshuffled passes."""

    def __init__(self, rows: list[PromptRow], rng: np.random.Generator) -> None:
        self.rows, self.rng, self.order = rows, rng, []

    def next(self) -> PromptRow:
        if not self.order:
            self.order = list(self.rng.permutation(len(self.rows)))
        return self.rows[self.order.pop()]


class PolicyWorkload:
    """GenerateRequests: one prompt, one sample, max_tokens drawn around `output_len`."""

    def __init__(
        self,
        dataset: str,
        vocab_size: int,
        input_len: int = 128,
        output_len: int = 64,
        range_ratio: float = 0.0,
        temperature: float = 1.0,
        chat_template: bool = True,
        seed: int = 0,
        templates: Templates | None = None,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.templates = templates or Templates()
        self.rows = None
        if dataset != SYNTHETIC:
            rows = load_rows(dataset)
            self.templates.check_rows(rows, dataset)
            self.rows = _RowCycle(rows, self.rng)
        self.vocab_size, self.input_len, self.output_len = vocab_size, input_len, output_len
        self.range_ratio, self.temperature, self.chat_template = range_ratio, temperature, chat_template
        self.count = 0

    def _prompt(self) -> policy_pb2.Prompt:
        """A dataset row through its template (system turn and template name included), or synthetic token ids."""
        if self.rows is not None:
            return self.templates.prompt(self.rows.next(), self.chat_template)
        length = draw_length(self.input_len, self.range_ratio, self.rng)
        return policy_pb2.Prompt(token_ids=self.rng.integers(0, self.vocab_size, size=length).tolist())

    def next_request(self) -> policy_pb2.GenerateRequest:
        self.count += 1
        return policy_pb2.GenerateRequest(
            prompts=[self._prompt()],
            sampling=policy_pb2.SamplingParams(
                n=1,
                max_tokens=draw_length(self.output_len, self.range_ratio, self.rng),
                temperature=self.temperature,
            ),
            request_id=f"loadtest-{self.count}",
        )


class RewardWorkload:
    """ScoreRequests of `items_per_request` prompt/completion pairs for one reward model."""

    def __init__(
        self,
        dataset: str,
        model: str,
        items_per_request: int = 1,
        input_len: int = 128,
        range_ratio: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.rows = None if dataset == SYNTHETIC else _RowCycle(load_rows(dataset), self.rng)
        self.model, self.items_per_request = model, items_per_request
        self.input_len, self.range_ratio = input_len, range_ratio

    def _words(self) -> str:
        length = draw_length(self.input_len, self.range_ratio, self.rng)
        return " ".join(self.rng.choice(_WORDS, size=length).tolist())

    def _item(self) -> reward_pb2.ScoreItem:
        if self.rows is None:
            return reward_pb2.ScoreItem(prompt=self._words(), completion=self._words())
        row, other = self.rows.next(), self.rows.next()
        # Another row's reference as the completion: scores vary instead of all matching.
        completion = other.reference or other.prompt
        if row.reference is None:
            return reward_pb2.ScoreItem(prompt=row.prompt, completion=completion)
        return reward_pb2.ScoreItem(prompt=row.prompt, completion=completion, reference=row.reference)

    def next_request(self) -> reward_pb2.ScoreRequest:
        return reward_pb2.ScoreRequest(model=self.model, items=[self._item() for _ in range(self.items_per_request)])
