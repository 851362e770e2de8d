"""`python -m services.policy`: serve a model with vLLM over gRPC."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from services.common.config import describe, load_config
from services.common.model_store import prepare_smollm2
from services.common.server import Registration, run_server, setup_logging
from services.common.weight_stream import fused_groups_for
from services.experience.embedded import EmbeddedExperience  # composition root: see [tool.importlinter]
from services.policy.config import PolicyConfig
from services.policy.engine import VllmEngine
from services.policy.sampling import Limits
from services.policy.server import PolicyServicer
from services.policy.weight_history import WeightHistory, checkpoint_sources
from services.policy.weight_staging import read_manifest, release_staging, staging_dir
from services.policy.weights import WeightManager

log = logging.getLogger("services.policy")


async def serve(config: PolicyConfig) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from rlhf.v1 import policy_pb2_grpc

    model_dir = config.model or str(prepare_smollm2(Path(config.model_cache)))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model_config = AutoConfig.from_pretrained(model_dir)
    limits = Limits.from_config(config, int(model_config.vocab_size))
    engine = VllmEngine(config, model_dir)
    experience = EmbeddedExperience.open(config, tokenizer)  # recording + FeedbackService when --experience-db is set
    staging = staging_dir(config.staging_dir)
    weights = WeightManager(
        engine,
        manifest=read_manifest(model_dir),
        staging=staging,
        max_push_bytes=int(config.max_push_gb * 1e9),
        drain_timeout_s=config.drain_timeout_s,
        fused_groups=fused_groups_for(str(model_config.model_type)),
        history=WeightHistory(checkpoint_sources(model_dir), config.keep_versions),
        weight_transfer=config.weight_transfer,
        nccl_reserve_timeout_s=config.nccl_reserve_timeout_s,
        same_host=config.same_host_pushes,
    )
    servicer = PolicyServicer(
        engine=engine,
        tokenizer=tokenizer,
        limits=limits,
        weights=weights,
        model_name=model_dir,
        max_concurrent_requests=config.max_concurrent_requests,
        traffic=experience.traffic,
    )

    async def startup() -> None:
        await asyncio.get_running_loop().run_in_executor(None, engine.start)
        servicer.mark_serving()
        log.info("engine ready: %s", engine.description)

    async def shutdown() -> None:
        engine.shutdown()
        experience.close()
        release_staging(staging, config.staging_dir)

    registration = Registration(servicer, policy_pb2_grpc.add_PolicyServiceServicer_to_server, "rlhf.v1.PolicyService")
    await run_server(config, [registration, *experience.registrations], startup=startup, shutdown=shutdown)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(PolicyConfig, argv, env_prefix="RLHF_POLICY_", prog="rlhf-policy")
    setup_logging(config.log_level)
    log.info("policy service config:\n%s", describe(config))
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
