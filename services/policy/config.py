"""Policy service configuration (flags, `RLHF_POLICY_*` environment, or a TOML file)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import option
from services.common.model_store import DEFAULT_CACHE
from services.common.server import ServingConfig

WEIGHT_TRANSFERS = ("grpc", "nccl")


@dataclass(frozen=True)
class PolicyConfig(ServingConfig):
    """Serve a language model with vLLM over gRPC and accept live weight pushes."""

    port: int = option(50051, "gRPC port.")
    metrics_port: int = option(9101, "Prometheus /metrics HTTP port (0 disables it).")
    model: str = option(
        "", "Checkpoint directory (safetensors + config). Empty: SmolLM2-135M-Instruct from the model cache."
    )
    model_cache: str = option(str(DEFAULT_CACHE), "Where packaged models are converted to on first use.")
    device: str = option(
        "auto", "cpu, cuda, or auto (cuda when a GPU is visible). Must match the installed vLLM wheel."
    )
    dtype: str = option(
        "auto", "Weight/activation dtype: auto (float32 on cpu, bfloat16 on cuda), float32, float16, bfloat16."
    )
    enforce_eager: bool = option(True, "Skip graph capture/compilation: fast start; turn off on GPUs for throughput.")
    max_model_len: int = option(1024, "Context length (prompt + completion tokens).")
    max_num_seqs: int = option(64, "Sequences the engine runs concurrently.")
    cpu_kvcache_gib: float = option(2.0, "KV-cache size on the CPU backend, GiB (VLLM_CPU_KVCACHE_SPACE).")
    cpu_threads_bind: str = option(
        "", "CPU cores for the CPU backend, e.g. '0-1' (VLLM_CPU_OMP_THREADS_BIND). Empty: all cores."
    )
    gpu_memory_utilization: float = option(
        0.5, "Share of GPU memory vLLM may take (leave room for a colocated trainer)."
    )
    tensor_parallel_size: int = option(1, "GPUs to shard the model over.")
    seed: int = option(0, "Engine seed (per-request seeds override it).")
    max_prompts_per_request: int = option(256, "Most prompts in one Generate request.")
    max_samples_per_prompt: int = option(64, "Largest n in SamplingParams.")
    max_tokens: int = option(1024, "Largest max_tokens in SamplingParams (also bounded by max_model_len).")
    max_push_gb: float = option(64.0, "Largest weight push accepted, GB.")
    staging_dir: str = option(
        "", "Where verified pushes are staged before loading. Empty: /dev/shm if present, else the temp dir."
    )
    same_host_pushes: bool = option(
        True,
        "Accept same-host pushes from a shared-memory segment (GetStatus reports host_id; the segment must be on the "
        "staging directory's filesystem). Off: host_id is empty and every push streams its tensors.",
    )
    max_concurrent_requests: int = option(
        256,
        "Generate/GenerateStream calls admitted at once; more get RESOURCE_EXHAUSTED (bounded memory, fast rejection).",
    )
    drain_timeout_s: float = option(
        30.0, "On a weight swap, how long in-flight requests may finish on the old version before they are aborted."
    )
    keep_versions: int = option(
        2,
        "Earlier weight versions kept restorable by Rollback (their pushed tensors stay staged; full pushes cost one model copy each). 0: no rollback.",
    )
    experience_db: str = option(
        "",
        "Experience store URL (sqlite:///FILE or postgresql+psycopg://...). Set: served samples are recorded there and FeedbackService is hosted on this port too. Empty: no recording.",
    )
    record_sample_rate: float = option(
        1.0,
        "Share of requests recorded when a request leaves it to the server (RECORDING_MODE_UNSPECIFIED), in [0, 1].",
    )
    record_disabled_tenants: tuple[str, ...] = option((), "Tenants whose traffic is never recorded (comma-separated).")
    weight_transfer: str = option(
        "grpc",
        "How weights arrive: grpc (PushWeights streams, works anywhere; the default) or nccl (GPU only: also accept pushes whose tensors come over NCCL through vLLM's weight-transfer engine; gRPC stays the control plane and PushWeights keeps working).",
    )
    nccl_reserve_timeout_s: float = option(
        120.0, "weight_transfer=nccl: how long BeginNcclPush holds the push slot for its CommitNcclPush."
    )
    record_buffer_size: int = option(
        4096,
        "Samples buffered for the store writer; beyond it records are dropped (rlhf_policy_records_dropped_total), never waited for.",
    )

    def __post_init__(self) -> None:
        if self.cpu_kvcache_gib < 1 or self.cpu_kvcache_gib != int(self.cpu_kvcache_gib):
            # vLLM reads VLLM_CPU_KVCACHE_SPACE as a whole number of GiB and crashes on "1.5"
            raise ValueError(f"cpu_kvcache_gib must be a whole number of GiB >= 1, got {self.cpu_kvcache_gib:g}")
        if self.weight_transfer not in WEIGHT_TRANSFERS:
            raise ValueError(f"weight_transfer must be one of {list(WEIGHT_TRANSFERS)}, got {self.weight_transfer!r}")
        if self.weight_transfer == "nccl" and self.device == "cpu":
            raise ValueError(
                "weight_transfer=nccl needs a CUDA device (NCCL); with --device=cpu use weight_transfer=grpc"
            )
