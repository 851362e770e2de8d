"""`python -m services.trainer {train,demo,prepare-models} [flags]` (`--help` on each)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from services.common.config import describe, load_config
from services.common.metrics import serve_metrics
from services.common.server import setup_logging

log = logging.getLogger("services.trainer")

COMMANDS = {
    "train": "GRPO training against running policy and reward services",
    "demo": "start both services, train a few steps, stop them (what `make demo` runs)",
    "prepare-models": "convert the packaged models once (no downloads)",
}


def _train(argv: list[str]) -> None:
    from services.trainer.config import TrainerConfig
    from services.trainer.loop import Trainer

    config = load_config(TrainerConfig, argv, env_prefix="RLHF_TRAINER_", prog="rlhf-trainer train")
    setup_logging(config.log_level)
    log.info("trainer config:\n%s", describe(config))
    serve_metrics("0.0.0.0", config.metrics_port)
    trainer = Trainer(config)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    log.info("done: final weight version %d, summary in %s", summary["final_weight_version"], Path(config.output_dir) / "summary.json")


def _demo(argv: list[str]) -> None:
    from services.trainer.demo import DemoConfig, run_demo

    config = load_config(DemoConfig, argv, env_prefix="RLHF_DEMO_", prog="rlhf-trainer demo")
    setup_logging(config.log_level)
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
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:<15} {text}" for name, text in COMMANDS.items())
        print(f"usage: rlhf-trainer COMMAND [flags]\n\ncommands:\n{lines}", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    {"train": _train, "demo": _demo, "prepare-models": _prepare}[command](rest)


if __name__ == "__main__":
    main()
