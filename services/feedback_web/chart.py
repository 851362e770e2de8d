"""Geometry of the versions page's win-rate chart (inline SVG, no JavaScript).

One row per version: a dot at the win rate, a whisker over the 95% interval, and a
line at 50% (no better than the other versions). Computed here so the template only
places shapes.
"""

from __future__ import annotations

from services.feedback_web.standings import VersionStanding

WIDTH, LEFT, RIGHT, ROW, TOP = 640, 90, 30, 34, 30


def win_rate_chart(rows: list[VersionStanding]) -> dict:
    plot = WIDTH - LEFT - RIGHT
    shown = [r for r in rows if r.n > 0]

    def x(value: float) -> float:
        return round(LEFT + value * plot, 1)

    bars = []
    for i, row in enumerate(shown):
        y = TOP + i * ROW + ROW / 2
        bars.append(
            {
                "label": f"v{row.version}",
                "y": y,
                "x": x(row.win_rate),
                "low": x(row.low),
                "high": x(row.high),
                "text": f"{row.win_rate:.0%} (n={row.n})",
            }
        )
    height = TOP + max(1, len(shown)) * ROW + 24
    ticks = [{"x": x(t / 4), "label": f"{t * 25}%"} for t in range(5)]
    return {
        "width": WIDTH,
        "height": height,
        "bars": bars,
        "ticks": ticks,
        "mid": x(0.5),
        "top": TOP,
        "bottom": height - 24,
        "left": LEFT,
        "right": WIDTH - RIGHT,
    }
