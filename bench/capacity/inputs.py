"""The capacity model's inputs as typed records, loaded from the TOML files in bench/capacity/inputs/.

Inputs are data so that a user sizing a deployment edits a file, not code, and so that every
number carries its source next to it (a datasheet, a pull request, or a result file measured here).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

INPUTS = Path(__file__).resolve().parent / "inputs"


def _build(cls, table: dict, **extra):
    """A dataclass from a TOML table; unknown keys are an error so a typo never goes unnoticed."""
    names = {f.name for f in fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
    return cls(**table, **extra)


@dataclass(frozen=True)
class Gpu:
    """One accelerator kind (vendor datasheet figures)."""

    name: str = field(metadata={"help": "Kind, e.g. H100."})
    bf16_tflops: float = field(metadata={"help": "Dense BF16 peak, TFLOP/s."})
    hbm_gb_s: float = field(metadata={"help": "Memory bandwidth, GB/s."})
    memory_gb: float = field(metadata={"help": "Device memory, GB."})
    nvlink_gb_s: float = field(metadata={"help": "NVLink bandwidth per direction, GB/s."})
    nic_gb_s: float = field(metadata={"help": "Network bandwidth per GPU (one NIC each), GB/s."})
    pcie_gb_s: float = field(metadata={"help": "Host <-> device bandwidth, GB/s."})
    source: str = field(default="", metadata={"help": "Where the figures come from."})


@dataclass(frozen=True)
class Efficiency:
    """Shares of peak the model assumes (one set, used for every prediction)."""

    train_mfu: float = field(metadata={"help": "Trainer model-FLOP utilisation."})
    prefill_mfu: float = field(metadata={"help": "Reward-model forward FLOP utilisation."})
    decode_hbm: float = field(metadata={"help": "Share of HBM bandwidth a decode step reaches."})
    link: float = field(metadata={"help": "Share of a link's line rate a weight transfer reaches."})
    reward_target_utilisation: float = field(metadata={"help": "Busiest a reward replica may be when sizing."})
    gpus_per_node: int = field(metadata={"help": "GPUs per node (NVLink domain)."})


@dataclass(frozen=True)
class ModelShape:
    """A model's size and the shape that decides KV-cache bytes and per-tensor push calls."""

    name: str = field(metadata={"help": "Name used in the tables."})
    params_b: float = field(metadata={"help": "Parameters, billions."})
    layers: int = field(metadata={"help": "Transformer layers."})
    kv_heads: int = field(metadata={"help": "Key/value heads."})
    head_dim: int = field(metadata={"help": "Head size."})
    tensors: int = field(metadata={"help": "Separately named weight tensors (one call each on a per-tensor push)."})
    source: str = field(default="", metadata={"help": "Published config the shape comes from."})

    @property
    def params(self) -> float:
        return self.params_b * 1e9

    def weight_bytes(self, dtype_bytes: int) -> float:
        return self.params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class StepShape:
    """One RL step: what is generated, scored and trained on."""

    prompts: int = field(metadata={"help": "Prompts per step."})
    samples_per_prompt: int = field(metadata={"help": "Samples per prompt (GRPO group)."})
    prompt_tokens: int = field(metadata={"help": "Tokens per prompt."})
    completion_tokens: int = field(metadata={"help": "Tokens generated per sample."})
    max_staleness: int = field(metadata={"help": "Async rollouts: drop batches older than this many versions."})
    reference_forward: bool = field(metadata={"help": "The trainer runs a frozen reference forward (KL)."})
    dtype_bytes: int = field(metadata={"help": "Bytes per weight on the wire and in the engines."})

    @property
    def sequences(self) -> int:
        return self.prompts * self.samples_per_prompt


@dataclass(frozen=True)
class RewardSetup:
    """The reward service's model and replica size."""

    model: str = field(metadata={"help": "Reward model name in models.toml ('policy': same as the policy)."})
    gpus_per_replica: int = field(metadata={"help": "GPUs per reward replica."})
    pair_tokens: int = field(metadata={"help": "Prompt + completion tokens one scored pair costs."})


@dataclass(frozen=True)
class Traffic:
    """Live traffic the reward service scores besides the training rollouts."""

    live_requests_per_s: float = field(metadata={"help": "Live requests per second."})
    canary_share: float = field(metadata={"help": "Share of live traffic on the canary; each is scored twice."})


@dataclass(frozen=True)
class PushSettings:
    """Per-path constants of a weight push."""

    bucket_mb: float = field(metadata={"help": "Bucket size of the bucketed path, MB."})
    delta_fraction: float = field(metadata={"help": "Share of the bytes a delta sync sends."})
    per_tensor_s: float = field(metadata={"help": "Cost of one per-tensor call (fitted, see published.toml)."})
    per_bucket_s: float = field(metadata={"help": "Cost of one bucket's collective launch + metadata."})
    grpc_gb_s: float = field(metadata={"help": "One streamed gRPC push, GB/s (measured here, push.json)."})


@dataclass(frozen=True)
class Cluster:
    """What the scaling table is computed for."""

    gpu: str = field(metadata={"help": "GPU kind in hardware.toml."})
    gpu_counts: tuple[int, ...] = field(metadata={"help": "Total GPU counts of the table's columns."})
    models: tuple[str, ...] = field(metadata={"help": "Policy models of the table's rows."})


@dataclass(frozen=True)
class Inputs:
    """Everything the model and the simulation read."""

    gpus: dict[str, Gpu]
    efficiency: Efficiency
    models: dict[str, ModelShape]
    step: StepShape
    reward: RewardSetup
    traffic: Traffic
    push: PushSettings
    cluster: Cluster


def read_toml(name: str, directory: Path = INPUTS) -> dict:
    with open(directory / name, "rb") as handle:
        return tomllib.load(handle)


def load(directory: Path = INPUTS) -> Inputs:
    hardware, models, workload = (read_toml(n, directory) for n in ("hardware.toml", "models.toml", "workload.toml"))
    cluster = dict(workload["cluster"])
    cluster["gpu_counts"], cluster["models"] = tuple(cluster["gpu_counts"]), tuple(cluster["models"])
    return Inputs(
        gpus={name: _build(Gpu, table, name=name) for name, table in hardware["gpus"].items()},
        efficiency=_build(Efficiency, hardware["efficiency"]),
        models={name: _build(ModelShape, table, name=name) for name, table in models["models"].items()},
        step=_build(StepShape, workload["step"]),
        reward=_build(RewardSetup, workload["reward"]),
        traffic=_build(Traffic, workload["traffic"]),
        push=_build(PushSettings, workload["push"]),
        cluster=_build(Cluster, cluster),
    )
