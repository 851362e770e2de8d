"""Capacity model (bench/capacity): calibration against committed measurements, arithmetic, simulation.

Fast and engine-free: the calibration tests read the committed result files in bench/results/ and
fail when a prediction leaves the band stated in bench/capacity/inputs/{local,published}.toml.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from bench.capacity import calibration, inputs
from bench.capacity.__main__ import main as capacity_main
from bench.capacity.model import (
    CapacityModel,
    Split,
    min_train_gpus,
    push_seconds,
    tensor_parallel,
)
from bench.capacity.reward_service import ServiceCosts, closed_loop
from bench.capacity.simulation import SimConfig, simulate


@pytest.fixture(scope="module")
def data() -> inputs.Inputs:
    return inputs.load()


# ---- calibration ------------------------------------------------------------------


def test_local_predictions_stay_in_their_bands() -> None:
    """Every prediction whose inputs were measured on the machine that measured its figure is within its band."""
    checks = calibration.local_checks()
    names = {c.name for c in checks}
    assert {"step.generate", "step.score", "step.train", "step.push", "step.step"} <= names
    assert any(n.startswith("reward.pairs_per_s@") for n in names)
    misses = [
        f"{c.name}: predicted {c.predicted:.3f} vs {c.measured:.3f} ({c.error:+.1%}, band ±{c.band:.0%})"
        for c in checks
        if c.comparable and not c.ok
    ]
    assert not misses, misses
    summary = calibration.summary(checks)
    assert summary["not_comparable"] == [c.name for c in checks if not c.comparable]


def test_a_check_binds_once_its_files_share_a_machine(tmp_path) -> None:
    """Only a machine mismatch exempts a check: with one machine record everywhere, every check is judged."""
    results = tmp_path / "results"
    shutil.copytree(calibration.RESULTS, results, ignore=shutil.ignore_patterns("*.png", "logs"))

    def one_machine(value) -> None:  # every machine record, the rounds' nested ones too
        if isinstance(value, dict):
            if isinstance(value.get("machine"), dict):
                value["machine"]["platform"] = "one machine"
            for item in value.values():
                one_machine(item)
        elif isinstance(value, list):
            for item in value:
                one_machine(item)

    for path in results.glob("*.json"):
        data = json.loads(path.read_text())
        one_machine(data)
        path.write_text(json.dumps(data))
    checks = calibration.local_checks(results)
    assert all(c.comparable for c in checks)
    assert calibration.summary(checks)["checks"] == len(checks)


def test_the_step_holds_the_issue_s_20_percent_and_no_band_is_wider_than_80() -> None:
    """The issue's bar is 20%: the step total, generation, training and reward throughput hold it; a wider band
    states its reason."""
    bands = inputs.read_toml("local.toml")["bands"]
    assert set(bands) == {"step", "generate", "score", "train", "push", "reward_throughput"}
    assert bands["step"] == bands["generate"] == bands["train"] == bands["reward_throughput"] == 0.20, bands
    assert all(band <= 0.80 for band in bands.values()), bands
    reasons = calibration.band_reasons()
    assert {name for name, band in bands.items() if band > 0.20} == set(reasons), reasons
    assert {calibration.band_of(c.name) for c in calibration.local_checks()} == set(bands)
    for check in calibration.local_checks():
        assert check.comparable, (check.name, check.machines)  # every local input re-measured on this machine
        if check.name in ("step.step", "step.generate", "step.train"):
            assert abs(check.error) <= 0.20, (check.name, check.error)


def _perturbed(tmp_path, name: str, change) -> Path:
    """A copy of bench/results with one input file changed by `change(dict)`."""
    results = tmp_path / "results"
    shutil.copytree(calibration.RESULTS, results, ignore=shutil.ignore_patterns("*.png", "logs"))
    data = json.loads((results / name).read_text())
    change(data)
    (results / name).write_text(json.dumps(data))
    return results


def _step_inputs(rounds_file: dict) -> list[dict]:
    """Every measurement of the step's inputs in a step rounds file: each round's, then the closing ones."""
    return [*rounds_file["rounds"], rounds_file["closing_inputs"]]


@pytest.mark.parametrize(
    ("name", "change", "check"),
    [
        ("capacity.trainer.json", lambda d: d.update(tokens_per_s=d["tokens_per_s"] * 1.5), "step.train"),
        (
            "capacity.step-interleaved.json",
            lambda d: [
                r["costs"]["step_call"].update(
                    after_generate_seconds_median=r["costs"]["step_call"]["after_generate_seconds_median"] * 3
                )
                for r in _step_inputs(d)
            ],
            "step.score",
        ),
        (
            "capacity.interleaved.json",
            lambda d: [
                r["costs"]["forward"].update(
                    seconds_by_batch={k: v * 4 for k, v in r["costs"]["forward"]["seconds_by_batch"].items()}
                )
                for r in d["rounds"]
            ],
            "reward.pairs_per_s@64",
        ),
        (
            "capacity.step-interleaved.json",
            lambda d: [
                r["push"]["cases"][0]["same_host_push"].update(
                    gb_per_s=r["push"]["cases"][0]["same_host_push"]["gb_per_s"] / 3
                )
                for r in _step_inputs(d)
            ],
            "step.push",
        ),
    ],
)
def test_a_perturbed_input_leaves_the_band(tmp_path, name, change, check) -> None:
    """The calibration check fails when an input moves its prediction out of the band."""
    checks = {c.name: c for c in calibration.local_checks(_perturbed(tmp_path, name, change))}
    assert not checks[check].ok, (check, checks[check].error)
    with pytest.raises(AssertionError):
        assert all(c.ok for c in checks.values())


def test_reward_batches_match_the_benchmark_s() -> None:
    """The closed-loop replay forms the batches the service formed (its Prometheus batch sizes)."""
    for level in calibration.reward_levels():
        assert level["predicted_mean_batch"] == pytest.approx(level["measured_mean_batch"], rel=0.15), level


def test_async_staleness_matches_step_json() -> None:
    result = calibration.local_async()
    assert result["measured_mode"] == result["predicted_staleness"] == 1


def test_local_inputs_are_components_not_the_predicted_totals() -> None:
    config = inputs.read_toml("local.toml")["inputs"]
    predicted = inputs.read_toml("local.toml")["predicted"]
    assert not set(predicted.values()) & set(config.values())
    assert config["trainer_file"] == "capacity.trainer.json"
    assert config["reward_costs_file"] == "capacity.reward.json"
    # every bench-reward level of every round is predicted, each round from its own measure_reward result
    rounds = json.loads((calibration.RESULTS / predicted["reward_rounds_file"]).read_text())["rounds"]
    assert len(rounds) >= 3
    checked = [c.name for c in calibration.local_checks() if c.name.startswith("reward.")]
    assert checked == [f"reward.pairs_per_s@{level['concurrency']}" for level in rounds[0]["reward"]["results"]]
    for level in calibration.reward_levels():
        assert level["rounds"] == len(rounds) and len(level["round_errors"]) == len(rounds)
    first = calibration.service_costs(rounds[0]["costs"], calibration._batching(rounds[0]["reward"]))
    assert first.forward_s(8) == rounds[0]["costs"]["forward"]["seconds_by_batch"]["8"]
    # the step's phases likewise: each round's score and push from the measure_reward and push benchmark runs
    # right before and right after that round's sync bench-step run, compared with that run
    step_file = json.loads((calibration.RESULTS / predicted["step_rounds_file"]).read_text())
    step_rounds = step_file["rounds"]
    assert len(step_rounds) >= 3
    phases = calibration.step_rounds()
    assert {phase["rounds"] for phase in phases.values()} == {len(step_rounds)}
    for phase, values in phases.items():
        measured = [
            r["step"]["sync"]["step_s"] if phase == "step" else r["step"]["sync"]["seconds"][phase] for r in step_rounds
        ]
        assert values["measured"] == statistics.median(measured), phase
    push_bytes = inputs.read_toml("local.toml")["step"]["push_bytes"]
    for index, (record, following) in enumerate(zip(step_rounds, _step_inputs(step_file)[1:], strict=True)):
        seconds = [push_bytes / 1e9 / r["push"]["cases"][0]["same_host_push"]["gb_per_s"] for r in (record, following)]
        measured = record["step"]["sync"]["seconds"]["push"]
        assert phases["push"]["round_errors"][index] == round(statistics.fmean(seconds) / measured - 1, 4)


def test_published_figures_reproduced(data: inputs.Inputs) -> None:
    checks = calibration.published_checks(data)
    counted = [c for c in checks if c.role == "check"]
    assert len(counted) >= 3
    misses = [
        f"{c.name}: {c.predicted:.2f} s vs {c.measured} s ({c.error:+.0%}, band ±{c.band:.0%})"
        for c in counted
        if not c.ok
    ]
    assert not misses, misses
    assert all(c.source for c in checks)


def test_fitted_per_tensor_cost_is_the_input(data: inputs.Inputs) -> None:
    fitted = calibration.fitted_per_tensor_s(data)
    assert fitted == pytest.approx(data.push.per_tensor_s, rel=0.05)


# ---- model arithmetic ----------------------------------------------------------------


def test_push_paths_arithmetic(data: inputs.Inputs) -> None:
    gpu, eff, push = data.gpus["H100"], data.efficiency, data.push
    model = data.models["8B"]
    gb = model.params * 2 / 1e9
    link = gpu.nic_gb_s * eff.link
    bucketed = push_seconds("bucketed", model, 2, gpu, eff, push, 4, 1, 8, True)
    assert bucketed == pytest.approx(math.ceil(gb * 1000 / push.bucket_mb) * push.per_bucket_s + gb / link)
    nccl = push_seconds("nccl", model, 2, gpu, eff, push, 4, 1, 8, True)
    assert nccl == pytest.approx(model.tensors * push.per_tensor_s + gb / link)
    # broadcasts do not grow with receivers; one gRPC stream per replica through one NIC does
    assert push_seconds("nccl", model, 2, gpu, eff, push, 400, 1, 8, True) == pytest.approx(nccl)
    assert push_seconds("grpc", model, 2, gpu, eff, push, 1, 1, 8, True) == pytest.approx(gb / push.grpc_gb_s)
    many = push_seconds("grpc", model, 2, gpu, eff, push, 400, 1, 8, True)
    assert many == pytest.approx(400 * gb / link)
    assert push_seconds("delta", model, 2, gpu, eff, push, 4, 1, 8, True) < 0.1 * bucketed
    intra = push_seconds("bucketed", model, 2, gpu, eff, push, 4, 1, 8, False)
    assert intra < bucketed  # NVLink beats the NIC
    with pytest.raises(ValueError, match="unknown push path"):
        push_seconds("carrier-pigeon", model, 2, gpu, eff, push, 1, 1, 1, True)


def test_shapes_and_memory(data: inputs.Inputs) -> None:
    gpu = data.gpus["H100"]
    assert tensor_parallel(data.models["8B"], gpu, 2) == 1
    assert tensor_parallel(data.models["70B"], gpu, 2) == 4  # 141 GB of weights in half of 4 x 80 GB
    assert min_train_gpus(data.models["70B"], gpu) == math.ceil(16 * 70.6e9 / (0.7 * 80e9))
    assert data.models["8B"].kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2


def test_phase_arithmetic(data: inputs.Inputs) -> None:
    model, gpu, eff, step = CapacityModel(data), data.gpus["H100"], data.efficiency, data.step
    policy = data.models["8B"]
    tokens = step.sequences * (step.prompt_tokens + step.completion_tokens)
    expected = 8 * policy.params * tokens / (16 * gpu.bf16_tflops * 1e12 * eff.train_mfu)
    assert model.train_seconds(policy, 16) == pytest.approx(expected)
    rate = model.reward_pairs_per_s(policy, 1)
    pair_flops = 2 * policy.params * data.reward.pair_tokens
    assert rate == pytest.approx(gpu.bf16_tflops * 1e12 * eff.prefill_mfu / pair_flops)
    replicas, busy = model.reward_replicas_for(100.0, rate)
    load = 100 * (1 + data.traffic.canary_share) / rate
    assert replicas == math.ceil(load / eff.reward_target_utilisation) and busy == pytest.approx(load / replicas)
    assert model.generate_seconds(policy, 8, 1) < model.generate_seconds(policy, 2, 1)  # more replicas, faster
    assert model.staleness(1.0, 2.0) == step.max_staleness and model.staleness(3.0, 2.0) == 1


def test_breakdown_and_table(data: inputs.Inputs) -> None:
    model = CapacityModel(data)
    row = model.breakdown(data.models["8B"], 64, Split(24, 32, 8, 1, 1))
    produce, consume = row.generate + row.score, row.train + row.push
    assert row.step_async == pytest.approx(max(produce, consume))
    assert row.step_sync == pytest.approx(produce + consume)
    assert row.wait == pytest.approx(max(0.0, produce - consume))
    assert row.push == min(row.push_by_path.values())
    assert row.bottleneck in ("generation", "reward scoring", "training", "weight push")
    table = model.table()
    assert len(table) == len(data.cluster.models) * len(data.cluster.gpu_counts)
    cell = {(r["model"], r["gpus"]): r for r in table}
    assert not cell[("70B", 8)]["fits"] and "LoRA" in cell[("70B", 8)]["note"]
    for r in table:
        if r["fits"]:
            assert r["step_async"] <= r["step_sync"]
            split = r["split"]
            assert split["generation_gpus"] + split["train_gpus"] + split["reward_gpus"] == r["gpus"]
    assert cell[("8B", 512)]["step_async"] < cell[("8B", 64)]["step_async"] < cell[("8B", 8)]["step_async"]


def test_unknown_input_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        inputs._build(inputs.Traffic, {"live_requests_per_s": 1.0, "canary_share": 0.1, "canary_shar": 0.2})


# ---- simulation ------------------------------------------------------------------------


BASE = SimConfig(
    generate_s=4.0,
    train_s=6.0,
    push_s=0.5,
    pairs_per_batch=256,
    reward_pair_s=0.002,
    policy_replicas=4,
    reward_replicas=2,
    live_requests_per_s=50.0,
    canary_share=0.1,
    max_staleness=2,
    steps=25,
    seed=7,
)


def test_simulation_is_deterministic() -> None:
    first, again = simulate(BASE), simulate(BASE)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert simulate(replace(BASE, seed=8))["step_s"] != first["step_s"]


def test_simulation_matches_the_analytic_step_without_jitter() -> None:
    quiet = replace(BASE, jitter_cv=0.0, canary=False, live_requests_per_s=0.0)
    # async, trainer-bound: a step is train + push; the generator runs ahead to the cap
    result = simulate(quiet)
    assert result["step_s"]["p50"] == pytest.approx(6.5, rel=0.02)
    assert max(result["staleness"]) <= 2 and result["dropped_batches"] == 0
    # sync: generate + score + train + push
    sync = simulate(replace(quiet, async_rollouts=False))
    score = 64 * 0.002 * math.ceil(256 / 64) / 2  # 4 items of 64 pairs over 2 replicas
    assert sync["step_s"]["p50"] == pytest.approx(4.0 + score + 6.5, rel=0.03)
    # generation-bound async: the trainer waits, staleness 1
    slow = simulate(replace(quiet, generate_s=12.0))
    assert slow["step_s"]["p50"] == pytest.approx(12.0 + 0.5 + score, rel=0.05)
    assert slow["phase_mean_s"]["wait"] > 5.0


def test_simulation_reward_queue_and_utilisation() -> None:
    result = simulate(replace(BASE, live_requests_per_s=200.0))
    assert 0.0 < result["reward_utilisation"] < 1.0 and 0.0 < result["policy_utilisation"] <= 1.0
    assert result["reward_queue_wait_s"]["live"]["pairs"] == result["live_pairs"] > 0
    rollout_pairs = result["reward_queue_wait_s"]["rollout"]["pairs"]
    assert rollout_pairs % BASE.pairs_per_batch == 0 and rollout_pairs >= BASE.pairs_per_batch * result["steps"]
    # a canary doubles the push on the critical path
    no_canary = simulate(replace(BASE, canary=False))
    assert result["phase_mean_s"]["push"] > 1.5 * no_canary["phase_mean_s"]["push"]


def test_cli_writes_json_plot_and_readme(tmp_path) -> None:
    readme = tmp_path / "scaling.md"
    assert capacity_main(["--out", str(tmp_path), "--steps", "4", "--readme", str(readme)]) == 0
    result = json.loads((tmp_path / "capacity.json").read_text())
    assert result["calibration"]["published_summary"]["in_band"] >= 3
    assert (tmp_path / "capacity.png").stat().st_size > 10_000
    text = readme.read_text()
    assert text.startswith("## Scaling") and "python -m bench.capacity" in text and "| 70B | 512 |" in text


# ---- reward service under a closed loop (bench-reward's traffic) ---------------------------

COSTS = ServiceCosts(
    forward_by_batch=((1, 0.026), (32, 0.212)),  # 0.020 s per batch + 0.006 s per pair
    request_s=0.003,
    loop_s=0.0005,
    cpu_per_request_s=0.001,
    max_batch=32,
    max_wait_s=0.005,
    max_batch_tokens=16384,
)


def test_closed_loop_batches_as_the_batcher_does() -> None:
    # one client: batches of one, each waits max_wait for company; latency = request + wait + forward
    one = closed_loop(COSTS, 1, [60], 64)
    assert one["mean_batch_size"] == 1
    assert one["pairs_per_s"] == pytest.approx(1 / (0.003 + 0.005 + 0.026), rel=0.01)
    # a few clients arrive within the wait: one batch of all of them
    assert closed_loop(COSTS, 4, [60], 64)["mean_batch_size"] == 4
    # a cohort that arrives spread over more than the wait splits; two cohorts then alternate
    assert closed_loop(COSTS, 16, [60], 256)["mean_batch_size"] == 8
    # many clients: full batches back to back, throughput near max_batch / forward(max_batch)
    many = closed_loop(replace(COSTS, cpu_per_request_s=0.0), 64, [60], 256)
    assert many["mean_batch_size"] == pytest.approx(256 / 9)  # 8 full batches and the remainder
    assert many["pairs_per_s"] == pytest.approx(32 / COSTS.forward_s(32), rel=0.1)
    # the token budget caps a batch: 16384 / (2 rows x 256 tokens) = 32, / (2 x 512) = 16
    assert closed_loop(COSTS, 64, [512], 256)["mean_batch_size"] <= 16
    # CPU spent on requests during a forward slows the service down
    assert closed_loop(COSTS, 64, [60], 256)["pairs_per_s"] < many["pairs_per_s"]


def test_the_forward_follows_the_measured_sizes() -> None:
    """Linear between measured batch sizes (a single line misses small batches), extended beyond the last."""
    costs = replace(COSTS, forward_by_batch=((1, 0.034), (4, 0.049), (32, 0.335)))
    assert costs.forward_s(1) == pytest.approx(0.034)
    assert costs.forward_s(2) == pytest.approx(0.039)
    assert costs.forward_s(18) == pytest.approx(0.049 + 14 * 0.286 / 28)
    assert costs.forward_s(64) == pytest.approx(0.335 + 32 * 0.286 / 28)
    with pytest.raises(ValueError, match="rising"):
        replace(COSTS, forward_by_batch=((4, 0.05), (1, 0.03)))
