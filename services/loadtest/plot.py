"""The sweep's picture: latency percentiles and throughput against load, to see the knee.

Past the knee, throughput stops growing while latency (TTFT first, under an open
loop) climbs steeply; plotting both over the same load axis shows where.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

_PANELS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))
_STYLES = {"50": "-o", "90": "--s", "99": ":^"}


def plot_sweep(levels: Sequence[dict], x_key: str, x_label: str, path: str | Path, title: str = "") -> Path:
    """One panel per measured latency (p50/p90/p99 in ms) plus throughput, x = `level["load"][x_key]`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [level["load"][x_key] for level in levels]
    panels = [(m, name) for m, name in _PANELS if any(level.get(f"p50_{m}_ms") is not None for level in levels)]
    columns = min(3, len(panels) + 1)
    rows = -(-(len(panels) + 1) // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax, (metric, name) in zip(axes, panels):
        for word, style in _STYLES.items():
            ys = [level.get(f"p{word}_{metric}_ms") for level in levels]
            if all(y is None for y in ys):
                continue
            ax.plot(xs, [float("nan") if y is None else y for y in ys], style, label=f"p{word}")
        ax.set_title(f"{name} (ms)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax = axes[len(panels)]
    tokens = [level["output_throughput"] for level in levels]
    if any(tokens):
        ax.plot(xs, tokens, "-o", color="black")
        ax.set_title("Output throughput (tok/s)")
    else:
        ax.plot(xs, [level["request_throughput"] for level in levels], "-o", color="black")
        ax.set_title("Request throughput (req/s)")
    ax.set_ylim(bottom=0)
    spread = len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8
    for ax in axes[: len(panels) + 1]:
        if spread:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(x_label)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[len(panels) + 1 :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
