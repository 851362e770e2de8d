"""Prompt data: JSONL rows of {prompt, reference, task, template}, visited in seeded, reshuffled epochs.

`task` (multi-task training: which reward models judge the row, services/trainer/tasks.py)
and `template` (a named prompt template, services/common/prompt_templates.py) are optional.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    reference: str | None
    task: str = ""  # empty: the run's only task
    template: str = ""  # empty: the task's or the run's template


def load_prompts(path: str | Path) -> list[PromptRow]:
    """JSONL rows with a "prompt" (optionally "reference", "task", "template") field; errors name the file and line."""
    rows = []
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"dataset {path}: cannot read it ({exc.strerror})") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                task, template = record.get("task", ""), record.get("template", "")
                if not isinstance(task, str) or not isinstance(template, str):
                    raise TypeError("'task' and 'template' must be strings")
                rows.append(PromptRow(str(record["prompt"]), record.get("reference"), task, template))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'prompt' key ({exc})") from exc
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


class PromptSampler:
    """Deterministic batches; `position` (rows consumed) is all a resume needs."""

    def __init__(self, rows: list[PromptRow], seed: int, position: int = 0) -> None:
        self.rows, self.seed, self.position = rows, seed, position

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self, size: int) -> list[PromptRow]:
        batch = []
        for _ in range(size):
            epoch, index = divmod(self.position, len(self.rows))
            batch.append(self.rows[self._order(epoch)[index]])
            self.position += 1
        return batch
