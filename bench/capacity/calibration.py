"""Calibration: the model's predictions against what was measured here and what was published.

Local (this machine, no GPU): the inputs are per-component measurements from committed result
files (generation, reward forward, trainer update, push); the predictions are compared with the
totals of other benchmarks (`make bench-step`, `make bench-reward`) that were never inputs.
Published (GPUs): weight-sync figures from REFERENCES.md, predicted from datasheet bandwidths,
one published link efficiency and one fitted per-tensor cost.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.capacity.inputs import INPUTS, Inputs, read_toml
from bench.capacity.model import push_seconds

RESULTS = Path(__file__).resolve().parents[1] / "results"


@dataclass(frozen=True)
class Check:
    """One prediction next to the figure it should match."""

    name: str
    predicted: float
    measured: float
    band: float
    source: str
    inputs: str
    role: str = "check"

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured

    @property
    def ok(self) -> bool:
        return abs(self.error) <= self.band

    def as_dict(self) -> dict:
        return {**asdict(self), "error": round(self.error, 4), "ok": self.ok}


def _read(name: str, results: Path) -> dict:
    return json.loads((results / name).read_text())


@dataclass(frozen=True)
class LocalRates:
    """Per-component rates of this machine, each from one measurement."""

    decode_fixed_s: float  # per decode step, independent of the batch
    decode_per_sequence_s: float  # per decode step, per sequence in the batch
    first_token_s: float
    reward_request_s: float  # one Score call's cost besides the forward
    reward_pairs_per_s: float  # bare forward
    reward_max_batch: int
    trainer_tokens_per_s: float
    step_sequence_tokens: float
    push_gb_s: float

    def generate_s(self, sequences: int, tokens: int) -> float:
        return self.first_token_s + tokens * (self.decode_fixed_s + self.decode_per_sequence_s * sequences)

    def score_s(self, pairs: int) -> float:
        return self.reward_request_s + pairs / self.reward_pairs_per_s

    def reward_throughput(self, clients: int) -> float:
        """Closed loop: every client has one request out; the batcher serves up to max_batch of them at once."""
        batch = min(clients, self.reward_max_batch)
        return batch / self.score_s(batch)


def local_rates(results: Path = RESULTS, directory: Path = INPUTS) -> LocalRates:
    files = read_toml("local.toml", directory)["inputs"]
    single = _read(files["generation_single_file"], results)["policy"]["levels"][0]
    batch = _read(files["generation_batch_file"], results)
    rounds = batch["candidate"]["rounds"]
    batch_sequences, batch_tokens = batch["workload"]["prompts"], batch["workload"]["max_tokens"]
    batch_s = sum(r["seconds"] for r in rounds) / len(rounds)
    first = single["ttft_ms"]["mean"] / 1000
    per_step_one = single["tpot_ms"]["mean"] / 1000
    per_step_batch = (batch_s - first) / batch_tokens
    per_sequence = (per_step_batch - per_step_one) / (batch_sequences - 1)
    reward = _read(files["reward_file"], results)
    bare = reward["baseline"]["pairs_per_s"]
    one = reward["results"][0]["on"]
    max_batch = int(re.search(r"max_batch_size=(\d+)", reward["modes"]["on"]).group(1))
    trainer = _read(files["trainer_file"], results)
    push = _read(files["push_file"], results)["cases"][0]["candidate"]
    return LocalRates(
        decode_fixed_s=per_step_one - per_sequence,
        decode_per_sequence_s=per_sequence,
        first_token_s=first,
        reward_request_s=one["mean_ms"] / 1000 - 1 / bare,
        reward_pairs_per_s=bare,
        reward_max_batch=max_batch,
        # CPU seconds, not wall: other jobs share these cores (see measure_trainer.py); scaled to every core
        trainer_tokens_per_s=trainer["tokens_per_cpu_s"] * trainer["machine"]["cores"],
        step_sequence_tokens=trainer["shape"]["sequence_tokens_mean"],
        push_gb_s=push["gb_per_s"],
    )


def local_predictions(rates: LocalRates, directory: Path = INPUTS) -> dict[str, float]:
    """The sync step's phases as the model sees them (seconds)."""
    step = read_toml("local.toml", directory)["step"]
    sequences = step["prompts"] * step["samples_per_prompt"]
    phases = {
        "generate": rates.generate_s(sequences, step["completion_tokens"]),
        "score": rates.score_s(sequences),
        "train": rates.step_sequence_tokens / rates.trainer_tokens_per_s,
        "push": step["push_bytes"] / 1e9 / rates.push_gb_s,
    }
    phases["step"] = sum(phases.values())
    return phases


def local_checks(results: Path = RESULTS, directory: Path = INPUTS) -> list[Check]:
    rates = local_rates(results, directory)
    bands = read_toml("local.toml", directory)["bands"]
    predicted = local_predictions(rates, directory)
    step = _read("step.json", results)["baseline"]
    measured = {**step["seconds"], "step": step["step_s"]}
    used = {
        "generate": "load.json (1 request: TTFT, TPOT) + generation.json (32 x 64 tokens)",
        "score": "reward.json (1 client latency, bare forward pairs/s)",
        "train": "capacity.trainer.json (update tokens/s, no services)",
        "push": "push.json (SmolLM2 fp32 gRPC GB/s)",
        "step": "the four phases above",
    }
    checks = [
        Check(
            f"step.{name}",
            predicted[name],
            measured[name],
            bands[name],
            "step.json baseline (make bench-step, sync)",
            used[name],
        )
        for name in ("generate", "score", "train", "push", "step")
    ]
    reward = _read("reward.json", results)
    for level in reward["results"][1:]:  # level 1 client is an input
        clients = level["concurrency"]
        checks.append(
            Check(
                f"reward.pairs_per_s@{clients}",
                rates.reward_throughput(clients),
                level["on"]["pairs_per_s"],
                bands["reward_throughput"],
                "reward.json (make bench-reward, batching on)",
                "reward.json level 1 latency + bare forward pairs/s + max_batch_size",
            )
        )
    return checks


def published_checks(inputs: Inputs, directory: Path = INPUTS) -> list[Check]:
    gpu = inputs.gpus["H100"]
    checks = []
    for figure in read_toml("published.toml", directory)["figures"]:
        model = inputs.models[figure["model"]]
        receivers = figure["receiver_gpus"]
        predicted = push_seconds(
            figure["path"], model, 2, gpu, inputs.efficiency, inputs.push, 1, receivers, receivers, figure["cross_node"]
        )
        checks.append(
            Check(
                figure["id"],
                predicted,
                figure["published_s"],
                figure["band"],
                figure["source"],
                f"{model.name} bf16, path {figure['path']}, {receivers} receiving GPUs",
                figure["role"],
            )
        )
    return checks


def fitted_per_tensor_s(inputs: Inputs, directory: Path = INPUTS) -> float:
    """per_tensor_s that makes the 'fit' figure exact: what is left after the bytes, per tensor."""
    figure = next(f for f in read_toml("published.toml", directory)["figures"] if f["role"] == "fit")
    model = inputs.models[figure["model"]]
    gpu = inputs.gpus["H100"]
    link = (gpu.nic_gb_s if figure["cross_node"] else gpu.nvlink_gb_s) * inputs.efficiency.link
    return (figure["published_s"] - model.weight_bytes(2) / 1e9 / link) / model.tensors


def summary(checks: list[Check]) -> dict:
    counted = [c for c in checks if c.role == "check"]
    return {
        "checks": len(counted),
        "in_band": sum(c.ok for c in counted),
        "max_abs_error": round(max(abs(c.error) for c in counted), 4) if counted else math.nan,
    }


def local_async(results: Path = RESULTS, directory: Path = INPUTS) -> dict:
    """Async rollouts here: the staleness the model implies vs step.json's; the step time is not claimed.

    Generation and training share this machine's two cores, so overlapping them slows both (step.json:
    async 20.4 s vs sync 16.0 s); the model assumes separate devices and does not predict that.
    """
    rates = local_rates(results, directory)
    phases = local_predictions(rates, directory)
    cap = read_toml("local.toml", directory)["step"]["max_staleness"]
    produce, consume = phases["generate"] + phases["score"], phases["train"] + phases["push"]
    predicted = cap if produce < consume else 1
    candidate = _read("step.json", results)["candidate"]
    seen = Counter()
    for record in candidate["staleness"][1:]:  # the first batch is sampled before any push
        for version_lag, count in record.items():
            seen[int(version_lag)] += count
    return {
        "predicted_staleness": predicted,
        "measured_staleness_samples": dict(seen),
        "measured_mode": seen.most_common(1)[0][0] if seen else None,
        "separate_devices_step_s": round(max(produce, consume), 3),
        "measured_async_step_s_shared_cores": candidate["step_s"],
    }
