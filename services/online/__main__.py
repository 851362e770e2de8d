"""`rlhf-online {run,simulate,demo} [flags]` (`--help` on each; also `python -m services.online`).

run       the continuous online loop: live feedback -> reward model -> RL -> canary -> promote/rollback.
          Runs until SIGTERM/SIGINT (or --duration-s / --max-rounds), then finishes the step it is in and
          exits; a later start with the same --output-dir resumes from the newest checkpoint
simulate  simulated users: traffic to a stable (and canary) policy replica, feedback to the store
demo      start two policy replicas, the reward and experience services, the simulator and the
          online loop for a bounded time; print how feedback-measured quality moved (`make demo-online`)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

from services.common.config import describe, load_config
from services.common.metrics import serve_metrics
from services.common.server import setup_logging

log = logging.getLogger("services.online")

COMMANDS = {
    "run": "the continuous online loop: live feedback -> reward model -> RL -> canary -> promote/rollback",
    "simulate": "simulated users send prompts to the policy replicas and give feedback",
    "demo": "the online loop with the simulator on one machine, for a bounded time (what `make demo-online` runs)",
}


def _run(argv: list[str]) -> None:
    from services.online.config import OnlineConfig
    from services.online.loop import OnlineTrainer

    config = load_config(OnlineConfig, argv, env_prefix="RLHF_ONLINE_", prog="rlhf-online run")
    setup_logging(config.run.log_level)
    log.info("online loop config:\n%s", describe(config))
    serve_metrics("0.0.0.0", config.run.metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    trainer = OnlineTrainer(config)
    try:
        summary = trainer.run(stop)
    finally:
        trainer.close()
    print(json.dumps(summary, indent=2), flush=True)


def _simulate(argv: list[str]) -> None:
    from services.online.simulator import SimulatorConfig, TrafficSimulator, write_summary

    config = load_config(SimulatorConfig, argv, env_prefix="RLHF_SIMULATOR_", prog="rlhf-online simulate")
    setup_logging(config.log_level)
    log.info("simulator config:\n%s", describe(config))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    simulator = TrafficSimulator(config)
    try:
        summary = simulator.run(stop)
    finally:
        simulator.close()
    write_summary(summary, config.output)
    print(json.dumps(summary, indent=2), flush=True)


def _demo(argv: list[str]) -> None:
    from services.online.demo import OnlineDemoConfig, run_demo

    config = load_config(OnlineDemoConfig, argv, env_prefix="RLHF_ONLINE_DEMO_", prog="rlhf-online demo")
    setup_logging(config.log_level)
    run_demo(config)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items())
        print(f"usage: rlhf-online COMMAND [flags]\n\ncommands:\n{lines}", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    {"run": _run, "simulate": _simulate, "demo": _demo}[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
