"""The KL coefficient: fixed, or adapted to hold a target KL (Ziegler et al. 2019, section 2.2).

The adaptive rule moves beta proportionally to the relative error, clipped to
+-20% so one noisy batch cannot swing it:

    e = clip(KL / target - 1, -0.2, 0.2);   beta <- beta * (1 + e * n / horizon)

with n the samples in the step and horizon in samples (OpenAI's lm-human-preferences
used 10 000). Its state (beta) is part of a checkpoint so a resume continues it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KLController:
    value: float
    target: float = 0.0
    horizon: int = 10_000

    @property
    def adaptive(self) -> bool:
        return self.target > 0

    def update(self, current_kl: float, n_samples: int) -> float:
        """Feeds one step's measured KL (per token); returns the new coefficient."""
        if self.adaptive:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_samples / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
