"""The prompts RL trains on: the newest live prompts plus a replay of older ones.

Live prompts come from the store (ListPrompts: distinct prompts as the model saw them,
token ids included). The pool keeps the `capacity` most recently seen, in order of
last sight; a draw takes `live_fraction` of its prompts from the `live_window` most
recent and the rest from the older ones (replay), so training follows what users ask
now without forgetting what they asked before.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

from rlhf.v1 import feedback_pb2


@dataclass(frozen=True)
class LivePrompt:
    text: str  # user message (what the reward model reads)
    token_ids: tuple[int, ...]  # what the policy saw (chat template applied)


class PromptPool:
    def __init__(self, capacity: int = 1024, live_window: int = 32) -> None:
        if capacity < 1 or live_window < 1:
            raise ValueError("capacity and live_window must be >= 1")
        self.capacity, self.live_window = capacity, live_window
        self.cursor = 0
        self._prompts: OrderedDict[tuple[int, ...], LivePrompt] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._prompts)

    def add(self, prompt: LivePrompt) -> None:
        self._prompts.pop(prompt.token_ids, None)
        self._prompts[prompt.token_ids] = prompt
        while len(self._prompts) > self.capacity:
            self._prompts.popitem(last=False)

    def ingest(self, reply: feedback_pb2.ListPromptsResponse) -> None:
        for prompt in reply.prompts:  # in order of latest occurrence
            if prompt.prompt_text and prompt.prompt_token_ids:
                self.add(LivePrompt(prompt.prompt_text, tuple(prompt.prompt_token_ids)))
        self.cursor = max(self.cursor, int(reply.next_cursor))

    def refresh(self, reader) -> None:
        for page in reader.prompts(self.cursor):
            self.ingest(page)

    def draw(self, count: int, live_fraction: float, rng: random.Random) -> list[LivePrompt]:
        """`count` prompts (with repeats only when the pool is smaller)."""
        if not self._prompts:
            raise ValueError("no live prompts yet")
        ordered = list(self._prompts.values())
        live, older = ordered[-self.live_window :], ordered[: -self.live_window]
        want_live = count if not older else round(count * live_fraction)
        picked = _pick(live, want_live, rng) + _pick(older, count - want_live, rng)
        rng.shuffle(picked)
        return picked

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "prompts": [[p.text, list(p.token_ids)] for p in self._prompts.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])
        self._prompts = OrderedDict()
        for text, ids in state["prompts"]:
            self.add(LivePrompt(text, tuple(ids)))


def _pick(items: list[LivePrompt], count: int, rng: random.Random) -> list[LivePrompt]:
    if count <= 0 or not items:
        return []
    if count <= len(items):
        return rng.sample(items, count)
    return [rng.choice(items) for _ in range(count)]
