"""The analytic capacity model: where an RL step's time goes on a GPU cluster, and what limits it.

First-order on purpose: every phase is bytes / bandwidth or FLOPs / (peak x utilisation) plus a
per-call cost, so a user can follow each number back to one input in bench/capacity/inputs/.
The same phase times drive the discrete-event simulation (simulation.py), which adds what
averages hide: queueing in the reward service, jitter, staleness and dropped batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from bench.capacity.inputs import Efficiency, Gpu, Inputs, ModelShape, PushSettings

PATHS = ("grpc", "nccl", "bucketed", "delta")  # the table's push paths; "rdma", "host_bucketed" for the checks
PATH_NAMES = {
    "grpc": "streamed gRPC (this project's PushWeights)",
    "nccl": "NCCL broadcast, one call per tensor",
    "bucketed": "NCCL broadcast in buckets",
    "delta": "delta sync over buckets",
    "rdma": "sharded RDMA pull, each GPU its shard",
    "host_bucketed": "host -> GPU copy, then bucketed NVLink broadcast",
}
FSDP_BYTES_PER_PARAM = 16  # bf16 weights + grads, fp32 master weights + two Adam moments
TRAIN_MEMORY_SHARE = 0.7  # of device memory for sharded states (the rest: activations)
ENGINE_WEIGHT_SHARE = 0.5  # an engine's weights may take at most this share of its GPUs' memory (rest: KV cache)


def tensor_parallel(model: ModelShape, gpu: Gpu, dtype_bytes: int, limit: int = 8) -> int:
    """Smallest power-of-two TP whose GPUs hold the weights in half their memory (the rest is KV cache)."""
    tp = 1
    while model.weight_bytes(dtype_bytes) > ENGINE_WEIGHT_SHARE * tp * gpu.memory_gb * 1e9 and tp < limit:
        tp *= 2
    return tp


def min_train_gpus(model: ModelShape, gpu: Gpu) -> int:
    """GPUs a fully sharded (FSDP/ZeRO-3) trainer needs for weights, gradients and Adam states."""
    return math.ceil(FSDP_BYTES_PER_PARAM * model.params / (TRAIN_MEMORY_SHARE * gpu.memory_gb * 1e9))


def push_seconds(
    path: str,
    model: ModelShape,
    dtype_bytes: int,
    gpu: Gpu,
    eff: Efficiency,
    push: PushSettings,
    replicas: int,
    gpus_per_replica: int,
    sender_gpus: int,
    cross_node: bool,
) -> float:
    """Seconds from the trainer's last update to every replica holding the new weights.

    Broadcasts are pipelined, so their time does not grow with the receiver count; the streamed
    gRPC path sends one copy per replica through the trainer host's NIC, so it does.
    """
    gb = model.weight_bytes(dtype_bytes) / 1e9
    link = (gpu.nic_gb_s if cross_node else gpu.nvlink_gb_s) * eff.link
    buckets = math.ceil(gb * 1000 / push.bucket_mb)
    if path == "grpc":
        return max(gb / push.grpc_gb_s, replicas * gb / (gpu.nic_gb_s * eff.link))
    if path == "nccl":
        return model.tensors * push.per_tensor_s + gb / link
    if path == "bucketed":
        return buckets * push.per_bucket_s + gb / link
    if path == "delta":
        sent = gb * push.delta_fraction
        diff = 2 * gb / sender_gpus / (gpu.hbm_gb_s * eff.decode_hbm)  # read old and new weights once
        return math.ceil(sent * 1000 / push.bucket_mb) * push.per_bucket_s + sent / link + diff
    if path == "rdma":
        pull = gb / gpus_per_replica / (gpu.nic_gb_s * eff.link)
        serve = replicas * gb / (sender_gpus * gpu.nic_gb_s * eff.link)
        return max(pull, serve) + push.per_bucket_s
    if path == "host_bucketed":
        h2d = gb / gpus_per_replica / (gpu.pcie_gb_s * eff.link)
        return h2d + gb / (gpu.nvlink_gb_s * eff.link) + buckets * push.per_bucket_s
    raise ValueError(f"unknown push path {path!r} (known: {', '.join(PATH_NAMES)})")


@dataclass(frozen=True)
class Split:
    """How a cluster's GPUs are divided between the services."""

    generation_gpus: int
    train_gpus: int
    reward_gpus: int
    policy_tp: int
    reward_replica_gpus: int

    @property
    def policy_replicas(self) -> int:
        return self.generation_gpus // self.policy_tp

    @property
    def reward_replicas(self) -> int:
        return self.reward_gpus // self.reward_replica_gpus


@dataclass(frozen=True)
class Breakdown:
    """One configuration's step, phase by phase (seconds), and what it implies."""

    model: str
    gpus: int
    split: Split
    generate: float
    score: float
    train: float
    push: float
    push_path: str
    push_by_path: dict
    step_sync: float
    step_async: float
    wait: float
    staleness: int
    bottleneck: str
    generation_tokens_per_s_per_gpu: float
    train_tokens_per_s_per_gpu: float
    reward_pairs_per_s_per_replica: float
    reward_replicas_live: int
    reward_utilisation_live: float

    def as_dict(self) -> dict:
        out = asdict(self)
        out["policy_replicas"], out["reward_replicas"] = self.split.policy_replicas, self.split.reward_replicas
        return out


class CapacityModel:
    """Phase times for a policy model on a GPU cluster, from the inputs alone."""

    def __init__(self, inputs: Inputs) -> None:
        self.inputs = inputs
        self.gpu = inputs.gpus[inputs.cluster.gpu]
        self.eff = inputs.efficiency

    def reward_shape(self, policy: ModelShape) -> ModelShape:
        name = self.inputs.reward.model
        return policy if name == "policy" else self.inputs.models[name]

    # ---- phases ---------------------------------------------------------------

    def generate_seconds(self, model: ModelShape, replicas: int, tp: int) -> float:
        """Decode is memory-bound: each step reads the weights and the batch's KV cache once."""
        s, gpu, eff = self.inputs.step, self.gpu, self.eff
        dtype = s.dtype_bytes
        per_replica = math.ceil(s.sequences / replicas)
        kv_budget = 0.9 * tp * gpu.memory_gb * 1e9 - model.weight_bytes(dtype)
        per_sequence = (s.prompt_tokens + s.completion_tokens) * model.kv_bytes_per_token(dtype)
        batch_max = max(1, int(kv_budget // per_sequence))
        batch = min(per_replica, batch_max)
        waves = math.ceil(per_replica / batch)
        context = s.prompt_tokens + s.completion_tokens / 2
        memory = (model.weight_bytes(dtype) + batch * context * model.kv_bytes_per_token(dtype)) / (
            tp * gpu.hbm_gb_s * 1e9 * eff.decode_hbm
        )
        compute = batch * 2 * model.params / (tp * gpu.bf16_tflops * 1e12 * eff.prefill_mfu)
        prefill = per_replica * s.prompt_tokens * 2 * model.params / (tp * gpu.bf16_tflops * 1e12 * eff.prefill_mfu)
        return waves * s.completion_tokens * max(memory, compute) + prefill

    def train_seconds(self, model: ModelShape, gpus: int) -> float:
        """6 N FLOPs per token for forward + backward, 2 N more for the reference forward."""
        s = self.inputs.step
        tokens = s.sequences * (s.prompt_tokens + s.completion_tokens)
        flops = (6 + (2 if s.reference_forward else 0)) * model.params * tokens
        return flops / (gpus * self.gpu.bf16_tflops * 1e12 * self.eff.train_mfu)

    def reward_pairs_per_s(self, reward: ModelShape, replica_gpus: int) -> float:
        """A reward model's forward is prefill-like: compute-bound at large batches."""
        flops = 2 * reward.params * self.inputs.reward.pair_tokens
        return replica_gpus * self.gpu.bf16_tflops * 1e12 * self.eff.prefill_mfu / flops

    def reward_replicas_for(self, live_requests_per_s: float, pairs_per_s_per_replica: float) -> tuple[int, float]:
        """Replicas for live traffic (canary requests scored twice), each at most the target utilisation."""
        pairs = live_requests_per_s * (1 + self.inputs.traffic.canary_share)
        load = pairs / pairs_per_s_per_replica
        replicas = max(1, math.ceil(load / self.eff.reward_target_utilisation))
        return replicas, load / replicas

    def staleness(self, produce_s: float, consume_s: float) -> int:
        """Async rollouts: a generator faster than the trainer runs ahead up to the cap; a slower one is 1 behind."""
        return self.inputs.step.max_staleness if produce_s < consume_s else 1

    # ---- one configuration --------------------------------------------------------

    def breakdown(self, model: ModelShape, gpus: int, split: Split, path: str | None = None) -> Breakdown:
        s, gpu, eff = self.inputs.step, self.gpu, self.eff
        reward = self.reward_shape(model)
        generate = self.generate_seconds(model, split.policy_replicas, split.policy_tp)
        rate = self.reward_pairs_per_s(reward, split.reward_replica_gpus)
        score = s.sequences / (split.reward_replicas * rate)
        train = self.train_seconds(model, split.train_gpus)
        cross_node = gpus > eff.gpus_per_node
        by_path = {
            p: push_seconds(
                p,
                model,
                s.dtype_bytes,
                gpu,
                eff,
                self.inputs.push,
                split.policy_replicas,
                split.policy_tp,
                split.train_gpus,
                cross_node,
            )
            for p in PATHS
        }
        path = path or min(by_path, key=by_path.get)
        push = by_path[path]
        produce, consume = generate + score, train + push
        wait = max(0.0, produce - consume)
        if produce > consume:
            bottleneck = "reward scoring" if score > generate else "generation"
        else:
            bottleneck = "weight push" if push > train else "training"
        replicas, utilisation = self.reward_replicas_for(self.inputs.traffic.live_requests_per_s, rate)
        sequence_tokens = s.sequences * (s.prompt_tokens + s.completion_tokens)
        return Breakdown(
            model=model.name,
            gpus=gpus,
            split=split,
            generate=generate,
            score=score,
            train=train,
            push=push,
            push_path=path,
            push_by_path=by_path,
            step_sync=produce + consume,
            step_async=max(produce, consume),
            wait=wait,
            staleness=self.staleness(produce, consume),
            bottleneck=bottleneck,
            generation_tokens_per_s_per_gpu=s.sequences * s.completion_tokens / generate / split.generation_gpus,
            train_tokens_per_s_per_gpu=sequence_tokens / train / split.train_gpus,
            reward_pairs_per_s_per_replica=rate,
            reward_replicas_live=replicas,
            reward_utilisation_live=utilisation,
        )

    def splits(self, model: ModelShape, gpus: int) -> list[Split]:
        """Every split worth trying: generation in TP-sized steps, reward in replica-sized steps, the rest trains."""
        dtype = self.inputs.step.dtype_bytes
        tp = tensor_parallel(model, self.gpu, dtype)
        reward = self.reward_shape(model)
        rm_gpus = max(self.inputs.reward.gpus_per_replica, tensor_parallel(reward, self.gpu, dtype))
        need = min_train_gpus(model, self.gpu)
        out = []
        counts = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
        reward_steps = sorted({rm_gpus * k for k in counts if rm_gpus * k <= gpus // 2} or {rm_gpus})
        for reward_gpus in reward_steps:
            room = gpus - reward_gpus - need
            if room < tp:
                continue
            stride = max(tp, (room // 48) // tp * tp)
            for generation in range(tp, room + 1, stride):
                out.append(Split(generation, gpus - reward_gpus - generation, reward_gpus, tp, rm_gpus))
        return out

    def recommend(self, model: ModelShape, gpus: int) -> Breakdown | None:
        """The split (and push path) with the shortest async step; None when the trainer does not fit."""
        options = [self.breakdown(model, gpus, split) for split in self.splits(model, gpus)]
        return min(options, key=lambda b: (b.step_async, b.split.reward_gpus)) if options else None

    def table(self) -> list[dict]:
        """The README's table: each model on each GPU count, at its recommended configuration."""
        rows = []
        for name in self.inputs.cluster.models:
            model = self.inputs.models[name]
            for gpus in self.inputs.cluster.gpu_counts:
                best = self.recommend(model, gpus)
                if best is None:
                    rows.append(
                        {
                            "model": name,
                            "gpus": gpus,
                            "fits": False,
                            "note": f"a fully sharded trainer needs >= {min_train_gpus(model, self.gpu)} "
                            f"{self.gpu.name} for {model.params_b:g}B (full fine-tuning); "
                            "use LoRA or more GPUs",
                        }
                    )
                    continue
                rows.append({"fits": True, **best.as_dict()})
        return rows
