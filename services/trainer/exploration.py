"""Exploration controls: a rollout temperature schedule, and what each step's samples say about diversity.

The exploration-exploitation trade-off has three knobs here. The sampling temperature
(`sampling.temperature`, the schedule's start) widens or narrows what the policy tries;
a schedule starts hot and cools (linear or cosine to `exploration.temperature_end`), so
early steps find rewarded behaviour and late ones refine it. The loss always uses the
temperature that sampled the batch (the batch carries it), so the PPO ratio and the KL
compare the distribution that really produced the tokens. The entropy bonus
(`objective.entropy_coef`) pushes the policy itself to stay spread out.

Two per-step metrics show whether exploration is enough. distinct-n: the share of
distinct n-grams among all n-grams of one prompt's completions (1.0: no n-gram
repeats across the group; low: the samples say the same thing), averaged over groups.
Zero-signal groups: the share of groups whose rewards are all equal; GRPO's
advantage (r - mean) / std is 0 there, so those samples teach nothing, and a rising
share means the policy has collapsed on (or never reached) what the reward separates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.common.config import option

SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class ExplorationSettings:
    """Rollout temperature schedule and diversity metrics."""

    temperature_schedule: str = option(
        "constant",
        f"Rollout temperature over the run: {', '.join(SCHEDULES)} (from sampling.temperature to temperature_end).",
    )
    temperature_end: float = option(0.0, "Temperature at the last step for linear/cosine (> 0); ignored by constant.")
    schedule_steps: int = option(
        0, "Steps over which the schedule moves, then holds the end value (0: the run's steps)."
    )
    distinct_n: int = option(
        2, "n of the distinct-n diversity metric (n-grams of completion tokens within a group, >= 1)."
    )

    def __post_init__(self) -> None:
        if self.temperature_schedule not in SCHEDULES:
            raise ValueError(
                f"exploration.temperature_schedule must be one of {list(SCHEDULES)}, got {self.temperature_schedule!r}"
            )
        if self.temperature_schedule != "constant" and not self.temperature_end > 0:
            raise ValueError(
                f"exploration.temperature_end must be > 0 with a {self.temperature_schedule} schedule "
                f"(the loss needs the sampling distribution), got {self.temperature_end}"
            )
        if self.schedule_steps < 0 or self.distinct_n < 1:
            raise ValueError(
                "exploration.schedule_steps must be >= 0 and distinct_n >= 1, "
                f"got {self.schedule_steps}, {self.distinct_n}"
            )


def temperature_at(schedule: str, start: float, end: float, step: int, steps: int) -> float:
    """The sampling temperature of 0-based step `step` of `steps`: start at 0, end at steps - 1 and after."""
    if schedule == "constant":
        return start
    progress = min(1.0, step / max(1, steps - 1))
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown temperature schedule {schedule!r}; choose one of {SCHEDULES}")


class TemperatureSchedule:
    """Step index -> temperature, for the rollout producer (built once from the settings)."""

    def __init__(self, settings: ExplorationSettings, start: float, run_steps: int) -> None:
        self.settings, self.start = settings, start
        self.steps = settings.schedule_steps or run_steps

    def __call__(self, step: int) -> float:
        s = self.settings
        return temperature_at(s.temperature_schedule, self.start, s.temperature_end, step, self.steps)


def distinct_n(completions: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over the completions (token ids); 1.0 when there are none."""
    grams = [tuple(tokens[i : i + n]) for tokens in completions for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def group_distinct_n(groups: Sequence[Sequence[Sequence[int]]], n: int) -> float:
    """Mean over groups (one prompt's samples each) of distinct_n."""
    return sum(distinct_n(group, n) for group in groups) / len(groups) if groups else 1.0


def zero_signal_share(rewards: torch.Tensor, group_size: int, tolerance: float = 1e-6) -> float:
    """Share of consecutive groups of `group_size` rewards that are all equal (within `tolerance`)."""
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)
    spread = groups.max(dim=1).values - groups.min(dim=1).values
    return float((spread <= tolerance).float().mean())


def exploration_record(response, rewards: torch.Tensor, n: int, temperature: float) -> dict[str, float]:
    """A step's metrics-record fields: the temperature that sampled it, distinct-n, the zero-signal share.

    `response`: the GenerateResponse (one result per prompt, its samples the group);
    `rewards`: one per sample in the same prompt-major order.
    """
    groups = [[list(sample.token_ids) for sample in result.samples] for result in response.results]
    return {
        "temperature": round(float(temperature), 6),
        "distinct_n": group_distinct_n(groups, n),
        "zero_signal_groups": zero_signal_share(rewards, len(groups[0]) if groups else 1),
    }
