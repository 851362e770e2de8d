"""Load test settings (flags, `RLHF_LOADTEST_*` environment, or a TOML file)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from services.common.config import option, section
from services.common.prompt_templates import TemplateSettings

DEFAULT_PROMPTS = str(Path(__file__).resolve().parents[2] / "data" / "book_reviews.jsonl")

POLICY_RPCS = ("GenerateStream", "Generate")
REWARD_RPCS = ("Score",)


@dataclass(frozen=True)
class LoadTestConfig:
    """Load a policy or reward service over gRPC and report vLLM-style serving metrics."""

    target: str = option("", "host:port of the service under test (required); no traffic goes anywhere else.")
    rpc: str = option("", "RPC to load: GenerateStream (policy default), Generate, or Score (reward).")
    concurrency: int = option(1, "Closed loop: requests kept in flight, each sent when the previous one returns.")
    request_rate: float = option(0.0, "Open loop: mean arrivals per second (0 = closed loop at --concurrency).")
    burstiness: float = option(
        1.0, "Open loop: gamma shape of the inter-arrival gaps (1 = Poisson, <1 burstier, >1 steadier)."
    )
    max_concurrency: int = option(
        0, "Open loop: most requests in flight; later arrivals wait for a slot (0 = unbounded)."
    )
    duration_s: float = option(
        30.0, "Stop sending after this many seconds (always applies; in-flight requests still finish)."
    )
    num_requests: int = option(0, "Stop sending after this many requests (0 = only the duration bounds the run).")
    warmup_requests: int = option(2, "Requests sent before measuring and left out of the results.")
    timeout_s: float = option(120.0, "Deadline of each request; a request past it counts as DEADLINE_EXCEEDED.")
    dataset: str = option(DEFAULT_PROMPTS, "JSONL file of {prompt, reference} rows, or 'synthetic' for random prompts.")
    input_len: int = option(128, "Synthetic prompt length: tokens (policy) or words (reward completions).")
    output_len: int = option(64, "Policy: max_tokens of each request.")
    range_ratio: float = option(
        0.0, "Lengths are drawn uniformly from [len*(1-r), len*(1+r)] (as vLLM's random dataset)."
    )
    temperature: float = option(1.0, "Policy: sampling temperature.")
    chat_template: bool = option(True, "Policy: wrap dataset prompts in the model's chat template.")
    reward_model: str = option("similarity", "Reward: name of the reward model to score with.")
    items_per_request: int = option(1, "Reward: prompt/completion pairs per Score request.")
    goodput: tuple[str, ...] = option((), "SLOs for request_goodput, e.g. 'ttft:500,tpot:50,e2el:2000' (milliseconds).")
    percentiles: tuple[str, ...] = option(("50", "90", "99"), "Latency percentiles to report.")
    sweep_concurrency: tuple[str, ...] = option((), "Sweep: run one level per closed-loop concurrency, e.g. '1,4,16'.")
    sweep_rates: tuple[str, ...] = option((), "Sweep: run one level per open-loop request rate, e.g. '0.5,1,2'.")
    seed: int = option(0, "Seed of the workload and the arrival process.")
    output_json: str = option("", "Write the report (or the sweep's levels) as JSON here.")
    output_png: str = option("", "Sweep: write the latency-percentiles-against-load plot here.")
    progress: bool = option(True, "Show a progress bar (--no-progress hides it).")
    log_level: str = option("WARNING", "Python logging level.")
    templates: TemplateSettings = section(
        TemplateSettings(),
        "Policy: prompt templates dataset rows are sent through, as the trainer and evaluator apply them.",
    )

    def __post_init__(self) -> None:
        # ValueError is what load_config turns into a usage error naming the setting.
        host, _, port = self.target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"target must be host:port, got {self.target!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.request_rate < 0 or math.isnan(self.request_rate):
            raise ValueError(f"request_rate must be >= 0, got {self.request_rate}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")
        if self.max_concurrency < 0 or self.num_requests < 0 or self.warmup_requests < 0:
            raise ValueError("max_concurrency, num_requests and warmup_requests must be >= 0")
        if not 0 < self.duration_s < math.inf:
            raise ValueError(f"duration_s must be a positive number of seconds, got {self.duration_s}")
        if not 0 < self.timeout_s < math.inf:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {self.timeout_s}")
        if self.input_len < 1 or self.output_len < 1 or self.items_per_request < 1:
            raise ValueError("input_len, output_len and items_per_request must be at least 1")
        if not 0 <= self.range_ratio < 1:
            raise ValueError(f"range_ratio must be in [0, 1), got {self.range_ratio}")
        if self.sweep_concurrency and self.sweep_rates:
            raise ValueError("give sweep_concurrency or sweep_rates, not both")
