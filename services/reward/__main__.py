"""`python -m services.reward`: serve the reward models declared by --models-file.

HF_HUB_OFFLINE=1 is already set by the package's `__init__`, before transformers loads.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from rlhf.v1 import reward_pb2_grpc
from services.common.config import describe, load_config
from services.common.server import Registration, run_server, setup_logging
from services.reward.batcher import BatcherConfig
from services.reward.config import RewardConfig
from services.reward.hosting import ModelHost
from services.reward.registry import ModelsFileError, load_specs
from services.reward.server import RewardServicer

log = logging.getLogger("services.reward")


def main(argv: list[str] | None = None) -> int:
    config = load_config(RewardConfig, argv, "RLHF_REWARD_", prog="rlhf-reward")
    setup_logging(config.log_level)
    log.info("reward service config:\n%s", describe(config))
    try:
        specs = load_specs(config.models_file)  # fail fast, before binding ports
    except ModelsFileError as exc:
        log.error("%s", exc)
        return 2
    log.info("declared models: %s", ", ".join(f"{s.name} ({s.kind})" for s in specs))

    host = ModelHost(BatcherConfig(config.max_batch_size, config.max_wait_ms, config.max_queue_items))
    servicer = RewardServicer(config, host)

    async def startup() -> None:
        await host.load(specs, config.device)

    registration = Registration(servicer, reward_pb2_grpc.add_RewardServiceServicer_to_server, "rlhf.v1.RewardService")
    try:
        asyncio.run(run_server(config, [registration], startup=startup, shutdown=host.close))
    except Exception:  # noqa: BLE001 - e.g. a checkpoint that fails to load: say why and exit non-zero
        log.exception("reward service stopped on an error")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
