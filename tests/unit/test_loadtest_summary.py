"""The load test's metric math (TTFT, TPOT, ITL, E2EL, percentiles, goodput) on hand-made timings."""

from __future__ import annotations

import math
import random

import pytest

from services.loadtest.summary import RequestResult, parse_goodput, parse_percentiles, summarize

# Three successes (3, 2 and 1 output tokens) and one failure; times in seconds.
A = RequestResult(
    started=0.0, success=True, ttft=0.100, itl=(0.020, 0.030), e2el=0.150, input_tokens=10, output_tokens=3
)
B = RequestResult(started=0.1, success=True, ttft=0.200, itl=(0.040,), e2el=0.240, input_tokens=20, output_tokens=2)
D = RequestResult(started=0.2, success=True, ttft=0.050, itl=(), e2el=0.050, input_tokens=5, output_tokens=1)
FAILED = RequestResult(started=0.3, success=False, e2el=0.010, error="UNAVAILABLE", detail="engine starting")
RUN = [A, B, FAILED, D]


def test_tpot_excludes_the_first_token() -> None:
    assert A.tpot == pytest.approx((0.150 - 0.100) / 2)
    assert B.tpot == pytest.approx(0.040)
    assert D.tpot is None  # one token: no decode time to divide


def test_counts_and_throughputs() -> None:
    report = summarize(RUN, duration_s=2.0)
    assert (report["completed"], report["failed"]) == (3, 1)
    assert report["total_input_tokens"] == 35
    assert report["total_output_tokens"] == 6
    assert report["request_throughput"] == pytest.approx(1.5)
    assert report["output_throughput"] == pytest.approx(3.0)
    assert report["total_token_throughput"] == pytest.approx((35 + 6) / 2.0)
    assert report["errors"] == {"UNAVAILABLE": 1}
    assert report["error_examples"] == {"UNAVAILABLE": "engine starting"}
    assert report["request_goodput"] is None


def test_latency_statistics_in_milliseconds() -> None:
    report = summarize(RUN, duration_s=2.0, percentiles=(50, 90, 99))
    assert report["mean_ttft_ms"] == pytest.approx((100 + 200 + 50) / 3)
    assert report["median_ttft_ms"] == pytest.approx(100)
    mean = 350 / 3
    assert report["std_ttft_ms"] == pytest.approx(
        math.sqrt(((100 - mean) ** 2 + (200 - mean) ** 2 + (50 - mean) ** 2) / 3)
    )
    # ITL pools every request's gaps: [20, 30, 40].
    assert report["mean_itl_ms"] == pytest.approx(30)
    assert report["p90_itl_ms"] == pytest.approx(38)  # linear interpolation, as numpy and vLLM
    # TPOT only over requests with more than one token: [25, 40].
    assert report["mean_tpot_ms"] == pytest.approx(32.5)
    assert report["p50_tpot_ms"] == pytest.approx(32.5)
    # E2EL over successes only: [150, 240, 50].
    assert report["median_e2el_ms"] == pytest.approx(150)
    assert report["p99_e2el_ms"] == pytest.approx(150 + 0.98 * 90)
    assert report["p99_e2el_ms"] <= 240


@pytest.mark.parametrize(
    ("slos", "good"),
    [
        ({"ttft": 150}, 2),  # A (100) and D (50)
        ({"ttft": 150, "tpot": 30}, 2),  # A's TPOT is 25; D's counts as 0
        ({"ttft": 150, "tpot": 20}, 1),  # only D
        ({"e2el": 100}, 1),  # only D
        ({"e2el": 1000, "ttft": 1000, "tpot": 1000}, 3),
    ],
)
def test_goodput_counts_requests_meeting_every_slo(slos: dict, good: int) -> None:
    assert summarize(RUN, duration_s=2.0, slos=slos)["request_goodput"] == pytest.approx(good / 2.0)


def test_unary_results_have_no_streaming_metrics() -> None:
    unary = [RequestResult(started=0, success=True, e2el=0.5, input_tokens=4, output_tokens=8) for _ in range(3)]
    report = summarize(unary, duration_s=1.0)
    for metric in ("ttft", "tpot", "itl"):
        assert report[f"mean_{metric}_ms"] is None and report[f"p99_{metric}_ms"] is None
    assert report["mean_e2el_ms"] == pytest.approx(500)
    # A unary request cannot be judged against a TTFT SLO: it does not count as good.
    assert summarize(unary, duration_s=1.0, slos={"ttft": 10_000})["request_goodput"] == 0


def test_only_failures() -> None:
    report = summarize([FAILED, FAILED], duration_s=1.0)
    assert report["completed"] == 0 and report["failed"] == 2
    assert report["mean_e2el_ms"] is None and report["total_input_tokens"] is None
    assert report["errors"] == {"UNAVAILABLE": 2}


def test_duration_must_be_positive() -> None:
    with pytest.raises(ValueError, match="duration"):
        summarize(RUN, duration_s=0.0)


def test_parse_goodput() -> None:
    assert parse_goodput(["ttft:500 tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    assert parse_goodput(("ttft:500", "e2el:2000")) == {"ttft": 500.0, "e2el": 2000.0}
    assert parse_goodput(["tpot:12.5,e2el:3000"]) == {"tpot": 12.5, "e2el": 3000.0}
    for bad in ("itl:5", "ttft", "ttft:fast", "ttft:-1"):
        with pytest.raises(ValueError, match="goodput SLO"):
            parse_goodput([bad])


def test_parse_percentiles() -> None:
    assert parse_percentiles(("50", "99.9")) == [50.0, 99.9]
    for bad in ("101", "-1", "p99"):
        with pytest.raises(ValueError, match="percentile"):
            parse_percentiles([bad])


def test_matches_vllm_bench_serve_on_random_timings() -> None:
    """Same inputs through vLLM's own `calculate_metrics` give the same numbers."""
    serve = pytest.importorskip("vllm.benchmarks.serve")
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput

    rng = random.Random(7)
    ours, theirs = [], []
    for i in range(40):
        tokens = rng.randint(1, 12)
        ttft = rng.uniform(0.01, 0.5)
        itl = [rng.uniform(0.005, 0.08) for _ in range(tokens - 1)]
        e2el = ttft + sum(itl)
        success = i % 9 != 0
        ours.append(
            RequestResult(
                started=0,
                success=success,
                ttft=ttft,
                itl=tuple(itl),
                e2el=e2el,
                input_tokens=7,
                output_tokens=tokens,
                error="" if success else "INTERNAL",
            )
        )
        theirs.append(
            RequestFuncOutput(success=success, latency=e2el, output_tokens=tokens, ttft=ttft, itl=itl, prompt_len=7)
        )
    slos = {"ttft": 300.0, "tpot": 40.0, "e2el": 700.0}
    metrics, _ = serve.calculate_metrics([], theirs, 3.0, None, [50, 90, 99], slos)
    report = summarize(ours, duration_s=3.0, percentiles=(50, 90, 99), slos=slos)
    assert report["completed"] == metrics.completed and report["failed"] == metrics.failed
    for key in ("request_throughput", "request_goodput", "output_throughput", "total_token_throughput"):
        assert report[key] == pytest.approx(getattr(metrics, key)), key
    assert report["total_output_tokens"] == metrics.total_output
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            assert report[f"{stat}_{metric}_ms"] == pytest.approx(getattr(metrics, f"{stat}_{metric}_ms")), (
                stat,
                metric,
            )
        for p, value in getattr(metrics, f"percentiles_{metric}_ms"):
            assert report[f"p{int(p)}_{metric}_ms"] == pytest.approx(value), (p, metric)
