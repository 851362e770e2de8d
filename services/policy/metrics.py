"""Policy service metrics, named after vLLM's serving metrics where they mean the same.

These are measured at the gRPC layer (server side, from request arrival); vLLM's
own `vllm:*` series are exported on the same endpoint.
"""

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)

REQUESTS_RUNNING = Gauge("rlhf_policy_num_requests_running", "Samples generating now.")
REQUESTS_WAITING = Gauge("rlhf_policy_num_requests_waiting", "Requests waiting for a weight swap to finish.")
PROMPT_TOKENS = Counter("rlhf_policy_prompt_tokens", "Prompt tokens processed (per sample).")
GENERATION_TOKENS = Counter("rlhf_policy_generation_tokens", "Tokens generated.")
REQUEST_SUCCESS = Counter("rlhf_policy_request_success", "Samples finished, by reason.", ("finished_reason",))
TIME_TO_FIRST_TOKEN = Histogram(
    "rlhf_policy_time_to_first_token_seconds", "Arrival to first token of a sample (server side).", buckets=_LATENCY
)
_TOKEN_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10)
INTER_TOKEN_LATENCY = Histogram(
    "rlhf_policy_inter_token_latency_seconds",
    "Gap between successive token deliveries of a sample (server side).",
    buckets=_TOKEN_LATENCY,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "rlhf_policy_request_time_per_output_token_seconds",
    "Per sample: (last token - first token) / (tokens - 1), the decode pace (server side).",
    buckets=_TOKEN_LATENCY,
)
E2E_LATENCY = Histogram(
    "rlhf_policy_e2e_request_latency_seconds", "Arrival to last token of a sample (server side).", buckets=_LATENCY
)
WEIGHT_VERSION = Gauge("rlhf_policy_weight_version", "Weight version serving now (0 = the start checkpoint).")
ENGINE_STATE = Gauge("rlhf_policy_engine_state", "EngineState enum value (2 = SERVING).")
PUSH_SECONDS = Histogram(
    "rlhf_policy_weight_push_seconds",
    "Weight push time by phase: receive (stream + verify) and apply (drain + load).",
    ("phase",),
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160),
)
PUSH_BYTES = Counter("rlhf_policy_weight_push_bytes", "Bytes of applied weight pushes.")
PUSHES = Counter("rlhf_policy_weight_pushes", "Weight pushes by outcome (applied, rejected, failed).", ("outcome",))
