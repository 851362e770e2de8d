"""Training curves of a run as one PNG: reward, KL, entropy, and each step's time split."""

from __future__ import annotations

import json
from pathlib import Path

PHASES = ("generate", "score", "train", "push", "wait")


def read_metrics(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path}: no steps recorded")
    return records


def plot_run(metrics_path: Path, png_path: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(Path(metrics_path))
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    reward, kl, entropy, seconds = axes.flat

    mean = [r["reward_mean"] for r in records]
    std = [r["reward_std"] for r in records]
    reward.plot(steps, mean, marker="o", ms=3, label="reward (combined)")
    reward.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    models = records[0].get("reward_models", {})
    if len(models) > 1:
        for name in models:
            reward.plot(steps, [r["reward_models"][name] for r in records], lw=1, label=name)
    reward.set(title="training reward (mean ± std over the step's samples)", xlabel="step")
    reward.legend(fontsize=8)

    kl.plot(steps, [r["kl"] for r in records], marker="o", ms=3, color="tab:red", label="KL per token")
    kl.set(title="KL to the reference", xlabel="step")
    if any(r.get("kl_coef") != records[0].get("kl_coef") for r in records):
        twin = kl.twinx()
        twin.plot(steps, [r["kl_coef"] for r in records], ls="--", color="gray", label="kl_coef")
        twin.set_ylabel("kl_coef")
    kl.legend(fontsize=8)

    entropy.plot(steps, [r.get("entropy", float("nan")) for r in records], marker="o", ms=3, color="tab:green")
    entropy.set(title="policy entropy per token (nats)", xlabel="step")

    bottom = [0.0] * len(records)
    for phase in PHASES:
        values = [r["seconds"].get(phase, 0.0) for r in records]
        if any(values):
            seconds.bar(steps, values, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, values)]
    seconds.set(title="time per step (s)", xlabel="step")
    seconds.legend(fontsize=8)

    fig.suptitle(title or f"{records[0].get('algorithm', 'grpo')}: {Path(metrics_path).parent.name}")
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
