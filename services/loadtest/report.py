"""Readable tables of a run (laid out like `vllm bench serve`'s) and of a sweep."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from services.loadtest.summary import percentile_key, percentile_word

_HEADERS = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2el": "End-to-end Latency",
}


def _line(label: str, value) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.2f}"
    else:
        text = str(value)
    return f"{label:<40} {text:<10}"


def format_report(report: dict, percentiles: Sequence[float], title: str = "Serving Benchmark Result") -> str:
    lines = [f"{title:=^50}"]
    lines.append(_line("Successful requests:", report["completed"]))
    lines.append(_line("Failed requests:", report["failed"]))
    lines.append(_line("Benchmark duration (s):", report["duration"]))
    if report["total_items"]:
        lines.append(_line("Total items scored:", report["total_items"]))
    else:
        lines.append(_line("Total input tokens:", report["total_input_tokens"]))
        lines.append(_line("Total generated tokens:", report["total_output_tokens"]))
    lines.append(_line("Request throughput (req/s):", report["request_throughput"]))
    if report["request_goodput"] is not None:
        lines.append(_line("Request goodput (req/s):", report["request_goodput"]))
    if report["total_items"]:
        lines.append(_line("Item throughput (items/s):", report["item_throughput"]))
    else:
        lines.append(_line("Output token throughput (tok/s):", report["output_throughput"]))
        lines.append(_line("Total token throughput (tok/s):", report["total_token_throughput"]))
    for metric, header in _HEADERS.items():
        if report[f"mean_{metric}_ms"] is None:
            continue
        name = metric.upper()
        lines.append(f"{header:-^50}")
        lines.append(_line(f"Mean {name} (ms):", report[f"mean_{metric}_ms"]))
        lines.append(_line(f"Median {name} (ms):", report[f"median_{metric}_ms"]))
        for p in (p for p in percentiles if p != 50):  # p50 is the median
            lines.append(_line(f"P{percentile_word(p)} {name} (ms):", report[percentile_key(metric, p)]))
    if report["errors"]:
        lines.append(f"{'Errors by gRPC status':-^50}")
        for code, count in report["errors"].items():
            lines.append(_line(f"{code}:", count))
            lines.append(f"  e.g. {report['error_examples'][code][:200]}")
    lines.append("=" * 50)
    return "\n".join(lines)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_sweep(levels: Sequence[dict]) -> str:
    """One row per load level: throughputs, p50/p99 latencies (ms), errors."""
    scored = all(level["total_items"] for level in levels)  # reward: items/s instead of tokens/s
    rate_key, rate_name = ("item_throughput", "items/s") if scored else ("output_throughput", "out tok/s")
    header = (
        f"{'load':<26} {'ok':>5} {'req/s':>7} {rate_name:>9} "
        f"{'TTFT p50/p99':>15} {'TPOT p50/p99':>13} {'ITL p50/p99':>13} {'E2EL p50/p99':>15}  errors"
    )
    rows = [header, "-" * len(header)]
    for level in levels:
        pair = {
            m: f"{_ms(level.get(f'p50_{m}_ms'))}/{_ms(level.get(f'p99_{m}_ms'))}"
            for m in ("ttft", "tpot", "itl", "e2el")
        }
        errors = ",".join(f"{code}={count}" for code, count in level["errors"].items()) or "0"
        rows.append(
            f"{level['load']['label']:<26} {level['completed']:>5} {level['request_throughput']:>7.2f} "
            f"{level[rate_key]:>9.1f} {pair['ttft']:>15} {pair['tpot']:>13} {pair['itl']:>13} "
            f"{pair['e2el']:>15}  {errors}"
        )
    return "\n".join(rows)


def write_json(path: str | Path, payload: dict) -> Path:
    """Writes aside and renames, so a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(path)
    return path
