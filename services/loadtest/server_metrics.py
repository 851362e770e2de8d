"""Server-side means from a service's Prometheus endpoint, to set beside the client's view.

The client's TTFT includes the network and its own scheduling; the server's starts at
arrival. Reading the histograms' `_sum` and `_count` before and after a load level
gives the server-side mean over exactly that level (named apart: `server_*`).
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape_histograms(url: str, timeout_s: float = 5.0) -> dict[str, tuple[float, float]]:
    """{histogram name: (sum, count)} summed over label sets, from a /metrics URL."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8")
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        entry = totals.setdefault(family.name, [0.0, 0.0])
        for sample in family.samples:
            if sample.name == f"{family.name}_sum":
                entry[0] += sample.value
            elif sample.name == f"{family.name}_count":
                entry[1] += sample.value
    return {name: (s, c) for name, (s, c) in totals.items()}


def mean_between(before: dict, after: dict, name: str, scale: float = 1.0) -> float | None:
    """Mean of the observations `name` got between two scrapes (None if it got none)."""
    s0, c0 = before.get(name, (0.0, 0.0))
    s1, c1 = after.get(name, (0.0, 0.0))
    if c1 <= c0:
        return None
    return (s1 - s0) / (c1 - c0) * scale
