"""Configuration of the feedback web app (flags, `RLHF_FEEDBACK_WEB_*` environment, or a TOML file)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import option


@dataclass(frozen=True)
class FeedbackWebConfig:
    """Serve the feedback pages (compare, rate, versions) over the policy and feedback services."""

    host: str = option("127.0.0.1", "Address the HTTP server binds to (0.0.0.0 for all interfaces).")
    port: int = option(8080, "HTTP port.")
    policy_address: str = option("127.0.0.1:50051", "host:port of the (stable) PolicyService.")
    canary_address: str = option(
        "", "host:port of the canary PolicyService; empty: pairs are two samples of one replica."
    )
    feedback_address: str = option("127.0.0.1:50053", "host:port of the FeedbackService.")
    token_file: str = option(
        "",
        "TOML token file of the services (see services/common/security.py); maps a "
        "sign-in token to the rater id (its name), tenant and scopes. Required.",
    )
    session_secret_file: str = option(
        "",
        "File whose first line signs session cookies; empty: a random secret per "
        "process (sessions end when it restarts).",
    )
    session_max_age_s: int = option(8 * 3600, "Seconds a sign-in lasts.")
    secure_cookies: bool = option(False, "Mark cookies Secure (only sent over HTTPS); turn on behind a TLS proxy.")
    state_dir: str = option("runs/feedback-web", "Where comparisons.jsonl (the versions of each judged pair) is kept.")
    online_dir: str = option(
        "",
        "Output directory of the online loop (its rounds.jsonl holds canary decisions); "
        "empty: the versions page shows 'no canary'.",
    )
    prompts_file: str = option(
        "data/book_reviews.jsonl", "JSONL prompts ({prompt, ...} per line) used when no live prompts are readable."
    )
    live_prompt_window: int = option(500, "Newest recorded samples scanned for live prompts (ListPrompts).")
    max_tokens: int = option(64, "Tokens per generated completion.")
    temperature: float = option(1.0, "Sampling temperature of the completions (> 0 so two samples differ).")
    rpc_timeout_s: float = option(120.0, "Deadline of each gRPC call, seconds.")
    record_wait_s: float = option(
        10.0,
        "How long a judgement retries while its samples are still being recorded (the policy records asynchronously).",
    )
    log_level: str = option("INFO", "Python logging level.")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_tokens < 1 or self.temperature <= 0 or self.rpc_timeout_s <= 0:
            raise ValueError("max_tokens must be >= 1, temperature and rpc_timeout_s > 0")
        if self.session_max_age_s < 60:
            raise ValueError(f"session_max_age_s must be >= 60, got {self.session_max_age_s}")
