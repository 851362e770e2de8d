"""Multi-task training: prompts of several tasks, each judged by its own reward models, in one run.

A task is a name in a TOML file:

    [tasks.similarity]
    reward_models = ["similarity"]     # one model or an ensemble (combined as the rewards section says)
    weight = 1.0                       # share of the prompts drawn from this task
    template = "critic"                # optional: the task's prompt template

and prompt rows carry `"task": "<name>"`. Each draw of a prompt picks a task by smooth
weighted round-robin (nginx's upstream balancer), so after n draws every task's count is
within one draw of its share (weights 1:1 alternate; a step of 4 prompts holds 2 of each)
and runs compared "at the same number of samples" really are; then the task's next row in
its own seeded epochs, so the draw count (`data_position`) alone restores the sampler.

Rewards: each task's models score only that task's samples; its scores are combined by
its own RewardProcessor (the rewards section's combine, per-model normalize and clip),
then standardized with the task's running mean and std, so a task whose reward model
scores on [0, 10] does not drown one scoring on [0, 1]. A step's record and the
Prometheus series (label `task`) report each task's raw reward, sample count and
diversity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from services.common.config import option
from services.common.prompt_templates import Templates, read_named_tables
from services.common.prompts import PromptRow, PromptSampler, load_prompts
from services.trainer.exploration import group_distinct_n, zero_signal_share
from services.trainer.rewards import RewardProcessor, RunningMoments
from services.trainer.rollout import score_items

TASK_NORMALIZERS = ("running", "none")


@dataclass(frozen=True)
class TaskSettings:
    """Multi-task training: tasks, their reward models and prompt shares (empty file: one task)."""

    file: str = option(
        "",
        "TOML with [tasks.<name>] tables (reward_models, weight, template); prompt rows carry 'task'. "
        "Empty: one task judged by the rewards section's models.",
    )
    normalize: str = option(
        "running",
        f"Per-task standardization of the combined reward: {', '.join(TASK_NORMALIZERS)} "
        "(running: the task's every reward so far).",
    )

    def __post_init__(self) -> None:
        if self.normalize not in TASK_NORMALIZERS:
            raise ValueError(f"tasks.normalize must be one of {list(TASK_NORMALIZERS)}, got {self.normalize!r}")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    reward_models: tuple[str, ...]
    weight: float = 1.0
    template: str = ""


def load_tasks(path: str | Path) -> dict[str, TaskSpec]:
    """[tasks.<name>] tables; errors name the file and the task."""
    tables = read_named_tables(path, "tasks")
    tasks = {}
    for name, table in tables.items():
        where = f"tasks {path}: [tasks.{name}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where} is not a table")
        unknown = set(table) - {"reward_models", "weight", "template"}
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)} (known: reward_models, weight, template)")
        models = table.get("reward_models")
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise ValueError(f"{where}: reward_models must be a non-empty list of reward model names")
        weight = table.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"{where}: weight must be a number > 0, got {weight!r}")
        tasks[name] = TaskSpec(name, tuple(models), float(weight), str(table.get("template", "")))
    return tasks


def reward_model_names(tasks: dict[str, TaskSpec]) -> tuple[str, ...]:
    """Every model any task uses, once, in first-use order."""
    return tuple(dict.fromkeys(m for task in tasks.values() for m in task.reward_models))


def score_key(task: str, model: str) -> str:
    return f"{task}/{model}"


class TaskSampler:
    """Prompt rows drawn per task by weight; `position` (draws so far) is all a resume needs."""

    def __init__(self, rows: list[PromptRow], tasks: dict[str, TaskSpec], seed: int, position: int = 0) -> None:
        unknown = sorted({row.task or "(none)" for row in rows if row.task not in tasks})
        if unknown:
            raise ValueError(f"prompt rows name tasks {unknown} that the tasks file does not define ({sorted(tasks)})")
        self.names = list(tasks)
        empty = [name for name in self.names if not any(row.task == name for row in rows)]
        if empty:
            raise ValueError(f"tasks {empty} have no prompt rows")
        self.weights = [tasks[name].weight for name in self.names]
        self.seed = seed
        self.samplers = {
            name: PromptSampler([row for row in rows if row.task == name], seed * 7_919 + index)
            for index, name in enumerate(self.names)
        }
        self.rows = rows
        self._position, self._credit = 0, [0.0] * len(self.names)
        self.position = position

    def _pick(self) -> str:
        """One task pick: every task gains its weight in credit, the largest credit (first task on ties)
        is picked and pays the total weight back."""
        self._credit = [c + w for c, w in zip(self._credit, self.weights)]
        best = max(range(len(self._credit)), key=lambda i: (self._credit[i], -i))
        self._credit[best] -= sum(self.weights)
        return self.names[best]

    @property
    def position(self) -> int:
        return self._position

    @position.setter
    def position(self, value: int) -> None:
        """Replays the task draws up to `value` (each task's sampler resumes at its own count)."""
        counts = dict.fromkeys(self.names, 0)
        self._credit = [0.0] * len(self.names)
        for _ in range(value):
            counts[self._pick()] += 1
        for name, count in counts.items():
            self.samplers[name].position = count
        self._position = value

    def next_batch(self, size: int) -> list[PromptRow]:
        batch = []
        for _ in range(size):
            batch.extend(self.samplers[self._pick()].next_batch(1))
        self._position += size
        return batch


class TaskScorer:
    """Scores each sample with its task's reward models only; other tasks' samples are NaN in a model's column."""

    def __init__(self, client, tasks: dict[str, TaskSpec]) -> None:
        self.client, self.tasks = client, tasks

    def __call__(self, rows: list[PromptRow], response) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        items, sample_tasks = (
            score_items(rows, response),
            [row.task for row, result in zip(rows, response.results) for _ in result.samples],
        )
        scores, versions = {}, {}
        for task in self.tasks.values():
            index = [i for i, name in enumerate(sample_tasks) if name == task.name]
            for model in task.reward_models:
                column = torch.full((len(items),), float("nan"))
                if index:
                    reply = self.client.score(model, [items[i] for i in index])
                    column[index] = torch.tensor(list(reply.scores), dtype=torch.float32)
                    versions[model] = f"{reply.model}@{reply.model_version}"
                scores[score_key(task.name, model)] = column
        return scores, versions


class TaskRewards:
    """RewardProcessor's interface over TaskScorer's columns: per task combine, then standardize by the task."""

    def __init__(
        self,
        tasks: dict[str, TaskSpec],
        combine: str,
        k: float,
        normalize: str,
        clip: float,
        task_normalize: str = "running",
    ) -> None:
        self.tasks, self.task_normalize = tasks, task_normalize
        self.processors = {
            name: RewardProcessor(t.reward_models, combine, k, normalize, clip) for name, t in tasks.items()
        }
        self.moments = {name: RunningMoments() for name in tasks}
        self.last_raw: dict[str, float] = {}  # the last call's mean combined (unstandardized) reward per task

    def __call__(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        size = next(iter(scores.values())).numel()
        rewards = torch.full((size,), float("nan"))
        self.last_raw = {}
        for name, task in self.tasks.items():
            columns = {m: scores[score_key(name, m)] for m in task.reward_models}
            chosen = ~torch.isnan(columns[task.reward_models[0]])
            if not chosen.any():
                continue
            raw = self.processors[name]({m: v[chosen] for m, v in columns.items()})
            self.last_raw[name] = float(raw.mean())
            if self.task_normalize == "running":
                self.moments[name].update(raw)
                raw = (raw - self.moments[name].mean) / (self.moments[name].std + 1e-6)
            rewards[chosen] = raw.float()
        if torch.isnan(rewards).any():
            raise ValueError("some samples belong to no task (their reward models' scores are missing)")
        return rewards

    def state_dict(self) -> dict:
        return {
            name: {"models": self.processors[name].state_dict(), "moments": vars(self.moments[name]).copy()}
            for name in self.tasks
        }

    def load_state_dict(self, state: dict) -> None:
        for name, values in state.items():
            if name in self.tasks:
                self.processors[name].load_state_dict(values["models"])
                m = values["moments"]
                self.moments[name] = RunningMoments(int(m["count"]), float(m["mean"]), float(m["m2"]))


def task_record(rows: list[PromptRow], response, rewards: torch.Tensor, last_raw: dict[str, float], n: int) -> dict:
    """Per task: samples, raw and standardized reward means, distinct-n and the zero-signal share."""
    out = {}
    groups = [(row.task, [list(s.token_ids) for s in result.samples]) for row, result in zip(rows, response.results)]
    sizes = [len(samples) for _, samples in groups]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for name in dict.fromkeys(task for task, _ in groups):
        mine = [i for i, (task, _) in enumerate(groups) if task == name]
        values = torch.cat([rewards[starts[i] : starts[i] + sizes[i]] for i in mine])
        out[name] = {
            "samples": int(values.numel()),
            "reward_mean": round(last_raw.get(name, float("nan")), 6),
            "reward_standardized_mean": round(float(values.mean()), 6),
            "distinct_n": group_distinct_n([groups[i][1] for i in mine], n),
            "zero_signal_groups": zero_signal_share(values, sizes[mine[0]]),
        }
    return out


@dataclass
class RunData:
    """What a run samples from: the prompt sampler, the templates and (multi-task) the tasks."""

    sampler: PromptSampler | TaskSampler
    templates: Templates
    tasks: dict[str, TaskSpec] | None

    @classmethod
    def from_config(cls, config) -> RunData:
        """Loads the prompts, templates and tasks of a TrainerConfig; every name is checked here, at start."""
        rows = load_prompts(config.prompts_file)
        tasks = load_tasks(config.tasks.file) if config.tasks.file else None
        templates = Templates.from_settings(
            config.templates, {n: t.template for n, t in (tasks or {}).items() if t.template}
        )
        templates.check_rows(rows, config.prompts_file)
        if tasks is None:
            named = sorted({row.task for row in rows if row.task})
            if named:
                raise ValueError(f"{config.prompts_file}: rows name tasks {named} but tasks.file is not set")
            return cls(PromptSampler(rows, config.run.seed), templates, None)
        return cls(TaskSampler(rows, tasks, config.run.seed), templates, tasks)

    def reward_models(self, config) -> tuple[str, ...]:
        return reward_model_names(self.tasks) if self.tasks else config.rewards.names

    def rewards(self, config) -> TaskRewards | None:
        """Multi-task: the per-task reward processor (None: the rewards section's own processor serves)."""
        if self.tasks is None:
            return None
        r = config.rewards
        return TaskRewards(self.tasks, r.combine, r.uncertainty_k, r.normalize, r.clip, config.tasks.normalize)

    def scorer(self, client):
        return TaskScorer(client, self.tasks) if self.tasks else None
