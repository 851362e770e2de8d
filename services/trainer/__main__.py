"""`python -m services.trainer {train,demo,prepare-models} [flags]` (`--help` on each)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

from services.common.config import describe, load_config
from services.common.metrics import serve_metrics
from services.common.server import setup_logging

log = logging.getLogger("services.trainer")

COMMANDS = {
    "train": "RL training (grpo, rloo, reinforce_pp, ppo, ppg) against running policy and reward services",
    "evaluate": "held-out reward per model, KL, length and BLEU of the served policy, as JSON",
    "plot": "training curves of a run (reward, KL, entropy, time split) as a PNG",
    "demo": "start both services, train a few steps, stop them (what `make demo` runs)",
    "prepare-models": "convert the packaged models once (no downloads)",
}
# Commands that now belong to another program: the trainer does not import it, it says where they went.
MOVED = {
    "train-rm": "rlhf-reward train",
    "simulate-preferences": "rlhf-reward simulate-preferences",
    "online": "rlhf-online run",
}


def _train(argv: list[str]) -> None:
    from services.trainer.config import TrainerConfig
    from services.trainer.distributed import world_from_env
    from services.trainer.loop import Trainer
    from services.trainer.sharded import follow
    from services.trainer.tasks import RunData

    config = load_config(TrainerConfig, _resume_flag(argv), env_prefix="RLHF_TRAINER_", prog="rlhf-trainer train")
    try:  # the prompts, templates and tasks files and every name in them: one line now, not a traceback later
        RunData.from_config(config)
    except ValueError as exc:
        raise SystemExit(f"rlhf-trainer train: error: {exc}") from None
    setup_logging(config.run.log_level)
    if world_from_env().rank > 0:  # torchrun: ranks other than 0 only serve rank 0's learner calls
        follow(config)
        return
    log.info("trainer config:\n%s", describe(config))
    serve_metrics("0.0.0.0", config.run.metrics_port)
    trainer = Trainer(config)
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the step, checkpoint, write the summary, exit 0
        signal.signal(sig, lambda *_: trainer.request_stop())
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    log.info(
        "done: final weight version %d, summary in %s",
        summary["final_weight_version"],
        Path(config.run.output_dir) / "summary.json",
    )


def _resume_flag(argv: list[str]) -> list[str]:
    """A bare `--resume` means `--resume latest`."""
    out: list[str] = []
    for index, arg in enumerate(argv):
        out.append(arg)
        if arg == "--resume" and (index + 1 == len(argv) or argv[index + 1].startswith("--")):
            out.append("latest")
    return out


def _evaluate(argv: list[str]) -> None:
    from services.trainer.evaluate import EvaluateConfig, run_evaluate

    config = load_config(EvaluateConfig, argv, env_prefix="RLHF_EVALUATE_", prog="rlhf-trainer evaluate")
    setup_logging(config.log_level)
    print(json.dumps(run_evaluate(config), indent=2))


def _plot(argv: list[str]) -> None:
    import argparse

    from services.trainer.curves import plot_run

    parser = argparse.ArgumentParser(prog="rlhf-trainer plot", description=COMMANDS["plot"])
    parser.add_argument("run_dir", type=Path, help="a run's output_dir (holds metrics.jsonl)")
    parser.add_argument("--output", type=Path, help="PNG path (default <run_dir>/curves.png)")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir / "metrics.jsonl", args.output or args.run_dir / "curves.png"))


def _demo(argv: list[str]) -> None:
    from services.trainer.demo import DemoConfig, run_demo

    config = load_config(DemoConfig, argv, env_prefix="RLHF_DEMO_", prog="rlhf-trainer demo")
    setup_logging(config.run.log_level)
    run_demo(config)


def _prepare(argv: list[str]) -> None:
    import argparse

    from services.common.model_store import DEFAULT_CACHE, minilm_dir, prepare_smollm2

    parser = argparse.ArgumentParser(prog="rlhf-trainer prepare-models", description=COMMANDS["prepare-models"])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}")
    parser.add_argument("--force", action="store_true", help="convert again even if present")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    print(json.dumps({"policy": str(prepare_smollm2(args.cache_dir, args.force)), "similarity": str(minilm_dir())}))


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MOVED:
        print(f"rlhf-trainer {argv[0]} moved: run `{MOVED[argv[0]]}` with the same flags", file=sys.stderr)
        sys.exit(2)
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:<15} {text}" for name, text in COMMANDS.items())
        print(f"usage: rlhf-trainer COMMAND [flags]\n\ncommands:\n{lines}", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    {"train": _train, "evaluate": _evaluate, "plot": _plot, "demo": _demo, "prepare-models": _prepare}[command](rest)


if __name__ == "__main__":
    main()
