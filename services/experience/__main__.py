"""`python -m services.experience --db URL`: the FeedbackService over an experience store."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common.config import describe, load_config
from services.common.server import run_server, setup_logging
from services.experience.config import ExperienceConfig
from services.experience.server import build_servicer
from services.experience.store import ExperienceStore

log = logging.getLogger("services.experience")


def main(argv: list[str] | None = None) -> int:
    config = load_config(ExperienceConfig, argv, env_prefix="RLHF_EXPERIENCE_", prog="rlhf-experience")
    setup_logging(config.log_level)
    log.info("experience service config:\n%s", describe(config))
    try:
        store = ExperienceStore.open(config.db)  # fail fast, before binding ports
    except Exception:  # noqa: BLE001 - unreachable database, bad URL: say why and exit non-zero
        log.exception("cannot open the experience store %s", config.db)
        return 2
    servicer = build_servicer(store, config)

    async def shutdown() -> None:
        servicer.close()
        store.close()

    asyncio.run(run_server(config, [servicer.registration()], shutdown=shutdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
