"""`rlhf-reward [serve] [flags]`: serve the reward models declared by --models-file (also `python -m services.reward`).

`rlhf-reward train` trains a reward model on preference data and writes a servable checkpoint;
`rlhf-reward simulate-preferences` writes preference data judged by the simulated labeler
(both in services/reward/training/).

Registers RewardService (scoring) and, unless --no-admin, RewardAdminService (load,
publish, unload at runtime) as separate services, so auth can grant them separately.

HF_HUB_OFFLINE=1 is already set by the package's `__init__`, before transformers loads.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from rlhf.v1 import reward_pb2_grpc
from services.common.config import describe, load_config
from services.common.server import Registration, run_server, setup_logging
from services.reward.config import RewardConfig
from services.reward.hosting import ModelHost
from services.reward.quotas import QuotasFileError, TenantLimits, TenantQuotas, load_overrides
from services.reward.registry import ModelsFileError, load_declarations
from services.reward.server import RewardAdminServicer, RewardServicer

log = logging.getLogger("services.reward")


COMMANDS = {
    "serve": "serve the declared reward models over gRPC (the default when no command is given)",
    "train": "train a reward model on preference data, write a servable checkpoint",
    "simulate-preferences": "write preference data judged by the simulated labeler",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        lines = "\n".join(f"  {name:<21} {text}" for name, text in COMMANDS.items())
        print(f"usage: rlhf-reward [COMMAND] [flags]\n\ncommands:\n{lines}\n", file=sys.stderr)
    command = argv[0] if argv and argv[0] in COMMANDS else "serve"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    if command == "train":
        from services.reward.training.trainer import main as train  # torch training stack: only for this command

        train(rest)
        return 0
    if command == "simulate-preferences":
        from services.reward.training.preferences import main as simulate

        simulate(rest)
        return 0
    return serve(rest)


def serve(argv: list[str]) -> int:
    config = load_config(RewardConfig, argv, "RLHF_REWARD_", prog="rlhf-reward serve")
    setup_logging(config.log_level)
    log.info("reward service config:\n%s", describe(config))
    tenant_defaults = TenantLimits(
        config.tenant_items_per_s, config.tenant_burst_items, config.tenant_max_concurrent_requests
    )
    try:  # fail fast, before binding ports
        declarations = load_declarations(config.models_file)
        overrides = load_overrides(config.quotas_file, tenant_defaults) if config.quotas_file else {}
    except (ModelsFileError, QuotasFileError) as exc:
        log.error("%s", exc)
        return 2
    log.info("declared models: %s", ", ".join(f"{s.name} ({s.kind})" for s in declarations.models))
    if declarations.ensembles:
        log.info("declared ensembles: %s", ", ".join(e.describe() for e in declarations.ensembles))
    if overrides:
        log.info("tenant quota overrides: %s", ", ".join(f"{t}={limits}" for t, limits in overrides.items()))

    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    host = ModelHost.from_config(config)
    servicer = RewardServicer(config, host, TenantQuotas(tenant_defaults, overrides))

    async def startup() -> None:
        await host.load(declarations)

    registrations = [
        Registration(servicer, reward_pb2_grpc.add_RewardServiceServicer_to_server, "rlhf.v1.RewardService")
    ]
    if config.admin:
        registrations.append(
            Registration(
                RewardAdminServicer(config, host),
                reward_pb2_grpc.add_RewardAdminServiceServicer_to_server,
                "rlhf.v1.RewardAdminService",
            )
        )
    try:
        asyncio.run(run_server(config, registrations, startup=startup, shutdown=host.close))
    except Exception:  # noqa: BLE001 - e.g. a checkpoint that fails to load: say why and exit non-zero
        log.exception("reward service stopped on an error")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
