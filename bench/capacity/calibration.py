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
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.capacity.inputs import INPUTS, Inputs, read_toml
from bench.capacity.model import push_seconds
from bench.capacity.reward_service import ServiceCosts, closed_loop

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
    machines: tuple[str, ...] = ()  # local: the machine record of the measured file, then of each input file

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured

    @property
    def ok(self) -> bool:
        return abs(self.error) <= self.band

    @property
    def comparable(self) -> bool:
        """A local prediction only says something about the model when its inputs and the figure it predicts
        were measured on the same machine (same platform record); published figures always are."""
        return len(set(self.machines)) <= 1

    def as_dict(self) -> dict:
        return {**asdict(self), "error": round(self.error, 4), "ok": self.ok, "comparable": self.comparable}


def _read(name: str, results: Path) -> dict:
    return json.loads((results / name).read_text())


def _machine(name: str, results: Path) -> str:
    """The machine a result file was measured on, as its record names it (kernel/VM build in the platform)."""
    return _read(name, results)["machine"]["platform"]


def _predicted(key: str, directory: Path = INPUTS) -> str:
    """The result file a prediction is compared with (local.toml [predicted])."""
    return read_toml("local.toml", directory)["predicted"][key]


@dataclass(frozen=True)
class LocalRates:
    """Per-component rates of this machine, each from one measurement."""

    decode_fixed_s: float  # per decode step, independent of the batch
    decode_per_sequence_s: float  # per decode step, per sequence in the batch
    first_token_s: float
    reward: ServiceCosts  # the reward service's forward and per-request costs, batching as bench-reward runs it
    reward_step_call_s: float  # one Score call of the step's shape beside the policy, right after a Generate
    reward_step_items: int
    trainer_tokens_per_s: float
    step_sequence_tokens: float
    push_gb_s: float

    def generate_s(self, sequences: int, tokens: int) -> float:
        return self.first_token_s + tokens * (self.decode_fixed_s + self.decode_per_sequence_s * sequences)

    def score_s(self, pairs: int) -> float:
        """The step's one Score call, as measured through the reward service beside the policy server."""
        if pairs != self.reward_step_items:
            raise ValueError(f"the step batch was measured with {self.reward_step_items} pairs, not {pairs}")
        return self.reward_step_call_s


def _batching(reward: dict) -> dict[str, float]:
    """The batcher settings bench-reward ran with (its configuration, not a measurement)."""
    mode = reward["modes"]["on"]
    value = {k: float(re.search(rf"{k}=([\d.]+)", mode).group(1)) for k in ("max_batch_size", "max_wait_ms")}
    value["max_batch_tokens"] = float(re.search(r"max_batch_tokens=(\d+)", mode).group(1))
    return value


def service_costs(costs: dict, settings: dict[str, float]) -> ServiceCosts:
    """The reward service's costs from one measure_reward result and the batcher settings it runs with."""
    forward, service = costs["forward"], costs["service"]
    return ServiceCosts(
        forward_by_batch=tuple((int(size), seconds) for size, seconds in forward["seconds_by_batch"].items()),
        # the rules model's latency less the batcher's wait; counting tokens is the similarity model's own
        request_s=service["latency_1_item_s"] - settings["max_wait_ms"] / 1000 + forward["token_count_s_per_item"],
        loop_s=service["server_cpu_s_per_request"],
        cpu_per_request_s=service["cpu_s_per_request"],
        max_batch=int(settings["max_batch_size"]),
        max_wait_s=settings["max_wait_ms"] / 1000,
        max_batch_tokens=int(settings["max_batch_tokens"]),
    )


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
    costs = _read(files["reward_costs_file"], results)
    settings = _batching(_read(files["reward_settings_file"], results))
    trainer = _read(files["trainer_file"], results)
    # The step's trainer and policy share this host, so its pushes take the same-host (shared-memory) path
    # (PolicyClient picks it from GetStatus's host id): the push benchmark's same-host case is the input.
    push = _read(files["push_file"], results)["cases"][0]["same_host_push"]
    return LocalRates(
        decode_fixed_s=per_step_one - per_sequence,
        decode_per_sequence_s=per_sequence,
        first_token_s=first,
        reward=service_costs(costs, settings),
        reward_step_call_s=costs["step_call"]["after_generate_seconds_median"],
        reward_step_items=costs["step_call"]["items"],
        trainer_tokens_per_s=trainer["tokens_per_s"],
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


STEP_CHECKS = ("generate", "score", "train", "push", "step")


def step_rounds(results: Path = RESULTS, directory: Path = INPUTS) -> dict[str, dict]:
    """The sync step's phases, predicted round by round, as reward_levels does for bench-reward.

    Each round of the step rounds file (bench/capacity/interleave.py --kind step) holds the inputs of the
    score and push phases (measure_reward's step-shaped Score call, the push benchmark's same-host push
    GB/s), then a sync bench-step run, back to back; the next round's inputs (after the last round, the
    closing ones) are measured right after that run. Each phase is predicted from the inputs before the run
    and from those after it, and the two predictions are averaged, so a machine that drifts during a round
    hits the prediction as it hits the run; generation and training come from their files in [inputs]. A
    phase's prediction and measurement are the medians over the rounds, each round's error kept beside them.
    """
    rates = local_rates(results, directory)
    data = _read(_predicted("step_rounds_file", directory), results)
    rounds = data["rounds"]
    after = [*rounds[1:], data["closing_inputs"]]

    def predicted_from(inputs: dict) -> dict[str, float]:
        step_call = inputs["costs"]["step_call"]
        own = replace(
            rates,
            reward_step_call_s=step_call["after_generate_seconds_median"],
            reward_step_items=step_call["items"],
            push_gb_s=inputs["push"]["cases"][0]["same_host_push"]["gb_per_s"],
        )
        return local_predictions(own, directory)

    pairs: dict[str, list[tuple[float, float]]] = {name: [] for name in STEP_CHECKS}
    for record, following in zip(rounds, after, strict=True):
        before, later = predicted_from(record), predicted_from(following)
        predicted = {name: (before[name] + later[name]) / 2 for name in STEP_CHECKS}
        sync = record["step"]["sync"]
        measured = {**sync["seconds"], "step": sync["step_s"]}
        for name in STEP_CHECKS:
            pairs[name].append((predicted[name], measured[name]))
    return {
        name: {
            "rounds": len(values),
            "predicted": statistics.median(p for p, _ in values),
            "measured": statistics.median(m for _, m in values),
            "round_errors": [round(p / m - 1, 4) for p, m in values],
        }
        for name, values in pairs.items()
    }


def reward_levels(results: Path = RESULTS, directory: Path = INPUTS) -> list[dict]:
    """Every bench-reward level (batching on), predicted round by round from that round's own inputs.

    The rounds file (bench/capacity/interleave.py) holds, per round, measure_reward's result and then
    bench-reward's, taken back to back so the machine's drift hits both alike; a level's prediction and
    measurement are the medians over the rounds, and each round's own error is kept beside them.
    """
    rounds = _read(_predicted("reward_rounds_file", directory), results)["rounds"]
    by_clients: dict[int, list[tuple[dict, dict]]] = {}
    for record in rounds:
        reward, costs = record["reward"], record["costs"]
        service = service_costs(costs, _batching(reward))
        lengths, requests = costs["forward"]["token_lengths"], reward["workload"]["requests_per_level"]
        for level in reward["results"]:
            model = closed_loop(service, level["concurrency"], lengths, requests)
            by_clients.setdefault(level["concurrency"], []).append((model, level["on"]))
    levels = []
    for clients, pairs in by_clients.items():
        predicted = [model["pairs_per_s"] for model, _ in pairs]
        measured = [level["pairs_per_s"] for _, level in pairs]
        levels.append(
            {
                "clients": clients,
                "rounds": len(pairs),
                "predicted_pairs_per_s": round(statistics.median(predicted), 2),
                "measured_pairs_per_s": round(statistics.median(measured), 2),
                "round_errors": [round(p / m - 1, 4) for p, m in zip(predicted, measured)],
                "predicted_mean_batch": round(statistics.median(model["mean_batch_size"] for model, _ in pairs), 2),
                "measured_mean_batch": round(statistics.median(level["mean_batch_size"] for _, level in pairs), 2),
            }
        )
    return levels


def local_checks(results: Path = RESULTS, directory: Path = INPUTS) -> list[Check]:
    bands = read_toml("local.toml", directory)["bands"]
    files = read_toml("local.toml", directory)["inputs"]
    step_file = _predicted("step_rounds_file", directory)
    used = {
        "generate": f"{files['generation_single_file']} (1 request: TTFT, TPOT) + "
        f"{files['generation_batch_file']} (32 x 64 tokens)",
        "score": "the measure_reward runs before and after each round's step (the step-shaped Score call beside a "
        "policy server, after a Generate)",
        "train": f"{files['trainer_file']} (update tokens/s, no services)",
        "push": "the push benchmarks before and after each round's step (SmolLM2 fp32 same-host push GB/s, the path "
        "the step takes)",
        "step": "the four phases above",
    }
    phase_files = {
        "generate": [files["generation_single_file"], files["generation_batch_file"]],
        "score": [],
        "train": [files["trainer_file"]],
        "push": [],
    }
    phase_files["step"] = [name for phase in ("generate", "score", "train", "push") for name in phase_files[phase]]
    step_data = _read(step_file, results)
    step_records = [*step_data["rounds"], step_data["closing_inputs"]]
    round_machines = tuple(
        record[part]["machine"]["platform"]
        for record in step_records
        for part in ("costs", "push", "step")
        if part in record
    ) + (_machine(step_file, results),)
    checks = []
    for name, phase in step_rounds(results, directory).items():
        errors = ", ".join(f"{e:+.0%}" for e in phase["round_errors"])
        checks.append(
            Check(
                f"step.{name}",
                phase["predicted"],
                phase["measured"],
                bands[band_of(f"step.{name}")],
                f"{step_file}: make bench-step's sync run, median of {phase['rounds']} rounds",
                f"{used[name]}; round errors {errors}",
                machines=tuple(_machine(n, results) for n in phase_files[name]) + round_machines,
            )
        )
    rounds_file = _predicted("reward_rounds_file", directory)
    rounds = _read(rounds_file, results)["rounds"]
    reward_machines = tuple(
        record[part]["machine"]["platform"] for record in rounds for part in ("reward", "costs")
    ) + (_machine(rounds_file, results),)
    for level in reward_levels(results, directory):
        checks.append(
            Check(
                f"reward.pairs_per_s@{level['clients']}",
                level["predicted_pairs_per_s"],
                level["measured_pairs_per_s"],
                bands[band_of(f"reward.pairs_per_s@{level['clients']}")],
                f"{rounds_file}: bench-reward (batching on), median of {level['rounds']} rounds",
                "each round's measure_reward (forward per batch size, per-request latency and CPU) through the "
                f"batcher's rule; batch {level['predicted_mean_batch']} (measured {level['measured_mean_batch']}); "
                f"round errors {', '.join(f'{e:+.0%}' for e in level['round_errors'])}",
                machines=reward_machines,
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


def band_of(check: str) -> str:
    """The local.toml [bands] key a local check is held to: step.<phase> -> <phase>, reward.* -> reward_throughput."""
    return "reward_throughput" if check.startswith("reward.") else check.split(".", 1)[1]


def band_reasons(directory: Path = INPUTS) -> dict[str, str]:
    """Why a band is wider than the issue's 20% (local.toml [band_reasons]), by band."""
    return read_toml("local.toml", directory).get("band_reasons", {})


def summary(checks: list[Check]) -> dict:
    counted = [c for c in checks if c.role == "check" and c.comparable]
    return {
        "checks": len(counted),
        "in_band": sum(c.ok for c in counted),
        "not_comparable": [c.name for c in checks if not c.comparable],
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
    candidate = _read(_predicted("step_file", directory), results)["candidate"]
    seen = Counter()
    for record in candidate["staleness"][1:]:  # the first batch is sampled before any push
        for version_lag, count in record.items():
            seen[int(version_lag)] += count
    return {
        "step_file": _predicted("step_file", directory),
        "predicted_staleness": predicted,
        "measured_staleness_samples": dict(seen),
        "measured_mode": seen.most_common(1)[0][0] if seen else None,
        "separate_devices_step_s": round(max(produce, consume), 3),
        "measured_async_step_s_shared_cores": candidate["step_s"],
    }


def input_sources(data: Inputs, directory: Path = INPUTS) -> dict:
    """Which inputs are measured here (file and command), published (source) or assumed, for capacity.json."""
    local = read_toml("local.toml", directory)
    commands = local["commands"]
    measured = [
        {"input": key, "file": name, "command": commands[name]}
        for key, name in local["inputs"].items()
        if name in commands
    ]
    published = [{"input": f"gpus.{g.name}", "source": g.source} for g in data.gpus.values()]
    published += [{"input": f"models.{m.name}", "source": m.source} for m in data.models.values()]
    fit = next(f for f in read_toml("published.toml", directory)["figures"] if f["role"] == "fit")
    published += [
        {"input": "efficiency.link", "source": "cosmos-rl PR #158 (40% of a 50 GB/s NIC), hardware.toml"},
        {"input": "push.delta_fraction", "source": "verl PR #6974 (1-3% of the bytes per step), workload.toml"},
        {"input": "push.per_tensor_s", "source": f"fitted to one published figure: {fit['source']}"},
    ]
    assumed = [
        "efficiency.train_mfu",
        "efficiency.prefill_mfu",
        "efficiency.decode_hbm",
        "efficiency.reward_target_utilisation",
        "push.per_bucket_s",
        "workload.toml step/traffic shape",
    ]
    return {"measured_here": measured, "published": published, "assumed": assumed}
