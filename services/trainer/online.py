"""`python -m services.trainer online`: the continuous online-RLHF loop (logic in services/online/).

Runs until SIGTERM/SIGINT (or --duration-s / --max-rounds), then finishes the step it is
in and exits; a later start with the same --output-dir resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import signal
import threading

from services.common.config import describe, load_config
from services.common.server import setup_logging

log = logging.getLogger("services.trainer.online")


def main(argv: list[str]) -> None:
    from services.online.config import OnlineConfig
    from services.online.loop import OnlineTrainer

    config = load_config(OnlineConfig, argv, env_prefix="RLHF_ONLINE_", prog="rlhf-trainer online")
    setup_logging(config.log_level)
    log.info("online loop config:\n%s", describe(config))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    trainer = OnlineTrainer(config)
    try:
        summary = trainer.run(stop)
    finally:
        trainer.close()
    print(json.dumps(summary, indent=2), flush=True)
