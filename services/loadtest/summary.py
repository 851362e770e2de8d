"""Per-request timings and the run summary, with `vllm bench serve`'s names and definitions.

Client-side, per request (all from the moment the request is sent):
  TTFT  send -> first chunk carrying tokens;
  ITL   gaps between successive token-carrying chunks, pooled over all requests;
  E2EL  send -> last chunk (the whole response for a unary RPC);
  TPOT  (E2EL - TTFT) / (output_tokens - 1), for requests with more than one token.
Throughputs divide by the run's duration. A request is "good" for
`request_goodput` when it meets every given SLO (TPOT counts as 0 for one-token
outputs, as in vLLM). Unary RPCs have no TTFT, ITL or TPOT: those stay null
rather than being faked from E2EL.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from services.clients.timing import RequestResult

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(specs: Iterable[str]) -> dict[str, float]:
    """'ttft:500', 'tpot:50', 'e2el:2000' (ms; commas or spaces between them) -> {metric: ms}."""
    slos: dict[str, float] = {}
    for spec in (part for text in specs for part in text.replace(",", " ").split()):
        name, sep, value = spec.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(
                f"goodput SLO {spec!r}: expected <metric>:<ms> with metric one of {', '.join(SLO_METRICS)}"
            )
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"goodput SLO {spec!r}: {value!r} is not a number of milliseconds") from None
        if not slos[name] >= 0:
            raise ValueError(f"goodput SLO {spec!r}: milliseconds must be >= 0")
    return slos


def parse_percentiles(specs: Iterable[str]) -> list[float]:
    values = []
    for spec in specs:
        try:
            value = float(spec)
        except ValueError:
            raise ValueError(f"percentile {spec!r} is not a number") from None
        if not 0 <= value <= 100:
            raise ValueError(f"percentile {spec!r} must be within [0, 100]")
        values.append(value)
    return values


def percentile_word(p: float) -> str:
    """50 -> "50", 99.9 -> "99.9" (as vLLM names its keys)."""
    return str(int(p)) if int(p) == p else str(p)


def percentile_key(metric: str, p: float) -> str:
    return f"p{percentile_word(p)}_{metric}_ms"


def _meets_slos(result: RequestResult, slos: dict[str, float]) -> bool:
    streamed = result.ttft is not None
    measured = {"ttft": result.ttft, "tpot": (result.tpot or 0.0) if streamed else None, "e2el": result.e2el}
    for name, limit_ms in slos.items():
        value = measured[name]
        if value is None or value * 1000.0 > limit_ms:
            return False
    return True


def _describe(values: Sequence[float], metric: str, percentiles: Sequence[float]) -> dict[str, float | None]:
    """mean/median/std and percentiles in ms; None when nothing was measured."""
    keys = [f"mean_{metric}_ms", f"median_{metric}_ms", f"std_{metric}_ms"] + [
        percentile_key(metric, p) for p in percentiles
    ]
    if not values:
        return dict.fromkeys(keys)
    array = np.asarray(values, dtype=float) * 1000.0
    stats = [array.mean(), np.median(array), array.std()] + [np.percentile(array, p) for p in percentiles]
    return {key: float(value) for key, value in zip(keys, stats)}


def summarize(
    results: Sequence[RequestResult],
    duration_s: float,
    percentiles: Sequence[float] = (50, 90, 99),
    slos: dict[str, float] | None = None,
) -> dict:
    """The run's report as a flat dict keyed like `vllm bench serve`'s JSON."""
    if not duration_s > 0 or math.isinf(duration_s):
        raise ValueError(f"duration must be a positive number of seconds, got {duration_s}")
    done = [r for r in results if r.success]
    failed = [r for r in results if not r.success]
    known_inputs = [r.input_tokens for r in done if r.input_tokens is not None]
    total_input = sum(known_inputs) if known_inputs else None
    total_output = sum(r.output_tokens for r in done)
    report: dict = {
        "duration": duration_s,
        "completed": len(done),
        "failed": len(failed),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "total_items": sum(r.items for r in done),
        "request_throughput": len(done) / duration_s,
        "request_goodput": sum(_meets_slos(r, slos) for r in done) / duration_s if slos else None,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": ((total_input or 0) + total_output) / duration_s,
        "item_throughput": sum(r.items for r in done) / duration_s,
    }
    samples = {
        "ttft": [r.ttft for r in done if r.ttft is not None],
        "tpot": [t for t in (r.tpot for r in done) if t is not None],
        "itl": [gap for r in done for gap in r.itl],
        "e2el": [r.e2el for r in done],
    }
    for metric in LATENCY_METRICS:
        report.update(_describe(samples[metric], metric, percentiles))
    report["errors"] = dict(sorted(Counter(r.error for r in failed).items()))
    report["error_examples"] = {code: next(r.detail for r in failed if r.error == code) for code in report["errors"]}
    return report
