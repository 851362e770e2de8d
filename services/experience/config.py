"""Experience service configuration (flags, `RLHF_EXPERIENCE_*` environment, or a TOML file)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import option
from services.common.server import ServingConfig
from services.experience.feedback import IntakeSettings
from services.experience.filters import FilterSettings


@dataclass(frozen=True)
class ExperienceConfig(ServingConfig):
    """Host the FeedbackService over an experience store (SQLite file or PostgreSQL)."""

    port: int = option(50053, "gRPC port.")
    metrics_port: int = option(9104, "Prometheus /metrics HTTP port (0 disables it).")
    db: str = option(
        "sqlite:///runs/experience/experience.db",
        "Store URL: sqlite:///FILE (one process or host) or postgresql+psycopg://USER@HOST:PORT/DB (shared).",
    )
    db_threads: int = option(8, "Threads running store calls (bounds concurrent database work).")
    rating_scale_min: float = option(1.0, "Rating scale minimum when a rating leaves scale_min unset.")
    rating_scale_max: float = option(5.0, "Rating scale maximum when a rating leaves scale_max unset.")
    max_text_chars: int = option(16384, "Longest correction or comment, characters.")
    rate_limit: int = option(120, "Most submissions per rater within rate_window_s (gold exempt); 0 = unlimited.")
    rate_window_s: float = option(60.0, "Sliding window of the per-rater rate limit, seconds.")
    min_agreement: float = option(
        0.7, "Rater agreement with consensus/gold at which a rater keeps full weight (> 0.5)."
    )
    min_margin: float = option(0.3, "Contradicted pairs are kept only if (win - lose) / (win + lose) reaches this.")
    gold_weight: float = option(3.0, "Weight of a gold answer, both as a vote and as a check of raters.")
    reliability_window: int = option(5000, "Newest judgements used to estimate rater reliability.")

    def __post_init__(self) -> None:
        if self.db_threads < 1 or self.reliability_window < 1 or self.max_text_chars < 1:
            raise ValueError("db_threads, reliability_window and max_text_chars must be >= 1")
        if self.rating_scale_min >= self.rating_scale_max:
            raise ValueError(
                f"rating_scale_min must be below rating_scale_max, got {self.rating_scale_min}, {self.rating_scale_max}"
            )
        if self.rate_limit < 0 or self.rate_window_s <= 0:
            raise ValueError("rate_limit must be >= 0 and rate_window_s > 0")
        self.filters()  # the filter settings check their own values

    def intake(self) -> IntakeSettings:
        return IntakeSettings(
            self.rating_scale_min, self.rating_scale_max, self.max_text_chars, self.rate_limit, self.rate_window_s
        )

    def filters(self) -> FilterSettings:
        return FilterSettings(
            min_agreement=self.min_agreement,
            min_margin=self.min_margin,
            gold_check_weight=self.gold_weight,
            gold_vote_weight=self.gold_weight,
        )
