"""The loadtest command's settings, reports and plot, and its errors for bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from services.common.process import free_port
from services.loadtest.__main__ import main
from services.loadtest.config import LoadTestConfig
from services.loadtest.driver import sweep_of
from services.loadtest.plot import plot_sweep
from services.loadtest.report import format_report, format_sweep, write_json
from services.loadtest.runner import LoadShape
from services.loadtest.summary import RequestResult, summarize


@pytest.mark.parametrize(
    "settings",
    [
        {"target": "localhost"},
        {"target": ":50051"},
        {"target": "127.0.0.1:50051", "concurrency": 0},
        {"target": "127.0.0.1:50051", "duration_s": math.inf},
        {"target": "127.0.0.1:50051", "burstiness": 0.0},
        {"target": "127.0.0.1:50051", "range_ratio": 1.0},
        {"target": "127.0.0.1:50051", "sweep_concurrency": ("1",), "sweep_rates": ("1",)},
    ],
)
def test_config_rejects_bad_settings(settings: dict) -> None:
    with pytest.raises(ValueError):
        LoadTestConfig(**settings)


def test_sweeps() -> None:
    base = {"target": "127.0.0.1:1"}
    single = sweep_of(LoadTestConfig(**base, concurrency=3))
    assert single.shapes == (LoadShape(concurrency=3),)
    closed = sweep_of(LoadTestConfig(**base, sweep_concurrency=("1", "4", "16")))
    assert [s.concurrency for s in closed.shapes] == [1, 4, 16] and closed.x_key == "concurrency"
    rates = sweep_of(LoadTestConfig(**base, sweep_rates=("0.5", "2"), burstiness=0.5, max_concurrency=8))
    assert rates.shapes == tuple(LoadShape(request_rate=r, burstiness=0.5, max_concurrency=8) for r in (0.5, 2.0))
    with pytest.raises(ValueError, match="sweep_concurrency"):
        sweep_of(LoadTestConfig(**base, sweep_concurrency=("1", "two")))
    with pytest.raises(ValueError, match="> 0"):
        sweep_of(LoadTestConfig(**base, sweep_rates=("0",)))


def _level(concurrency: int, scale: float) -> dict:
    results = [
        RequestResult(
            started=0,
            success=True,
            ttft=0.05 * scale,
            itl=(0.01 * scale,) * 4,
            e2el=0.09 * scale,
            input_tokens=8,
            output_tokens=5,
        )
        for _ in range(10)
    ]
    results.append(RequestResult(started=0, success=False, error="DEADLINE_EXCEEDED", detail="Deadline Exceeded"))
    shape = LoadShape(concurrency=concurrency)
    return {"load": {**shape.as_dict(), "label": shape.label}, "rpc": "GenerateStream", **summarize(results, 2.0)}


def test_report_tables() -> None:
    level = _level(4, 1.0)
    table = format_report(level, (50, 90, 99))
    for expected in (
        "Successful requests:",
        "Mean TTFT (ms):",
        "P99 ITL (ms):",
        "Median E2EL (ms):",
        "DEADLINE_EXCEEDED:",
    ):
        assert expected in table
    assert "50.00" in table  # the 50 ms TTFT
    sweep = format_sweep([_level(1, 1.0), _level(4, 2.0)])
    assert "concurrency=4" in sweep and "DEADLINE_EXCEEDED=1" in sweep


def test_sweep_plot_and_json(tmp_path: Path) -> None:
    levels = [_level(c, s) for c, s in ((1, 1.0), (4, 1.5), (16, 4.0))]
    png = plot_sweep(levels, "concurrency", "concurrency", tmp_path / "sweep.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    written = write_json(tmp_path / "out" / "sweep.json", {"levels": levels})
    assert written.read_text().startswith("{") and not list(tmp_path.glob("out/*.tmp"))


def test_cli_needs_a_service(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    assert main(["trainer"]) == 2
    assert "policy, reward" in capsys.readouterr().err


def test_cli_reports_an_unreachable_target(capsys: pytest.CaptureFixture) -> None:
    """Nothing listens on the port: a clear message and exit 2, no report of errors."""
    address = f"127.0.0.1:{free_port()}"
    assert main(["reward", "--target", address, "--duration-s", "5", "--timeout-s", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert address in err and "UNAVAILABLE" in err


def test_cli_rejects_an_rpc_of_the_other_service(capsys: pytest.CaptureFixture) -> None:
    assert main(["reward", "--target", "127.0.0.1:1", "--rpc", "GenerateStream"]) == 2
    assert "not an RPC of the reward service" in capsys.readouterr().err
