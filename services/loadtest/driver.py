"""Runs a load test: checks the target, warms up, runs each load level, summarizes it.

The target is checked before any load (GetStatus or ListModels), so a wrong
address, a missing reward model or a bad setting stops with a clear message
instead of a report full of errors. Used by the CLI (`__main__`), the load
benchmark (`bench/load_bench.py`) and the Prometheus integration test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from services.clients.policy import PolicyCaller
from services.clients.reward import RewardCaller
from services.common.client import open_aio_channel
from services.common.prompt_templates import Templates
from services.loadtest.config import POLICY_RPCS, REWARD_RPCS, LoadTestConfig
from services.loadtest.runner import Bounds, LoadShape, Send, run_load, warm_up
from services.loadtest.summary import parse_goodput, parse_percentiles, summarize
from services.loadtest.workload import PolicyWorkload, RewardWorkload

log = logging.getLogger(__name__)

SERVICES = ("policy", "reward")


@dataclass(frozen=True)
class Sweep:
    """The load levels to run and how to label them on a plot's x axis."""

    shapes: tuple[LoadShape, ...]
    x_key: str
    x_label: str


def sweep_of(config: LoadTestConfig) -> Sweep:
    """One level from the load flags, or one per --sweep-concurrency / --sweep-rates value."""
    if config.sweep_concurrency:
        levels = [_number(v, int, "sweep_concurrency") for v in config.sweep_concurrency]
        shapes = tuple(LoadShape(concurrency=c) for c in levels)
        return Sweep(shapes, "concurrency", "concurrency (requests in flight)")
    if config.sweep_rates:
        rates = [_number(v, float, "sweep_rates") for v in config.sweep_rates]
        shapes = tuple(
            LoadShape(request_rate=r, burstiness=config.burstiness, max_concurrency=config.max_concurrency)
            for r in rates
        )
        return Sweep(shapes, "request_rate", "request rate (req/s)")
    shape = LoadShape(config.concurrency, config.request_rate, config.burstiness, config.max_concurrency)
    return Sweep((shape,), "request_rate" if shape.open_loop else "concurrency", "")


def _number(text: str, kind: type, name: str):
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a {kind.__name__}") from None
    if not value > 0:
        raise ValueError(f"{name}: every level must be > 0, got {text!r}")
    return value


def _rpc_of(service: str, config: LoadTestConfig) -> str:
    allowed = POLICY_RPCS if service == "policy" else REWARD_RPCS
    rpc = config.rpc or allowed[0]
    if rpc not in allowed:
        raise ValueError(f"rpc {rpc!r} is not an RPC of the {service} service: use one of {', '.join(allowed)}")
    return rpc


async def _connect(service: str, config: LoadTestConfig, rpc: str, channel: grpc.aio.Channel) -> Send:
    """Checks the target and returns the send function that builds and times one request."""
    try:
        if service == "policy":
            caller = PolicyCaller(channel, config.timeout_s)
            workload = PolicyWorkload(
                config.dataset,
                await caller.vocab_size(),
                input_len=config.input_len,
                output_len=config.output_len,
                range_ratio=config.range_ratio,
                temperature=config.temperature,
                chat_template=config.chat_template,
                seed=config.seed,
                templates=Templates.from_settings(config.templates),
            )
            call = caller.generate_stream if rpc == "GenerateStream" else caller.generate
        else:
            caller = RewardCaller(channel, config.timeout_s)
            hosted = await caller.model_names()
            if config.reward_model not in hosted:
                raise ValueError(
                    f"reward model {config.reward_model!r} is not hosted at {config.target}; hosted: {', '.join(hosted)}"
                )
            workload = RewardWorkload(
                config.dataset,
                config.reward_model,
                items_per_request=config.items_per_request,
                input_len=config.input_len,
                range_ratio=config.range_ratio,
                seed=config.seed,
            )
            call = caller.score
    except grpc.aio.AioRpcError as exc:
        reason = f"{exc.code().name} ({exc.details()})"
        raise ConnectionError(f"cannot use the {service} service at {config.target}: {reason}") from exc

    async def send():
        return await call(workload.next_request())

    return send


async def run_load_test(service: str, config: LoadTestConfig, shapes: Sequence[LoadShape]) -> list[dict]:
    """Runs every shape in turn against `config.target`; one vLLM-keyed report per level.

    With no shapes it only checks the target and sends the warm-up requests.
    """
    if service not in SERVICES:
        raise ValueError(f"service must be one of {', '.join(SERVICES)}, got {service!r}")
    rpc = _rpc_of(service, config)
    slos = parse_goodput(config.goodput)
    if rpc != "GenerateStream" and {"ttft", "tpot"} & set(slos):
        raise ValueError(f"{rpc} is not streamed: only an e2el goodput SLO can be judged")
    percentiles = parse_percentiles(config.percentiles)
    bounds = Bounds(config.duration_s, config.num_requests)
    levels = []
    async with open_aio_channel(config.target) as channel:
        send = await _connect(service, config, rpc, channel)
        if config.warmup_requests:
            parallel = max((s.max_concurrency if s.open_loop else s.concurrency for s in shapes), default=1) or 1
            warm = await warm_up(send, config.warmup_requests, parallel)
            if not any(r.success for r in warm):
                first = warm[0]
                raise ConnectionError(f"all {len(warm)} warm-up requests failed: {first.error} ({first.detail})")
        for index, shape in enumerate(shapes):
            desc = f"{service} {rpc} {shape.label}"
            run = await run_load(send, shape, bounds, seed=config.seed + index, progress=config.progress, desc=desc)
            report = summarize(run.results, run.duration_s, percentiles, slos)
            levels.append({"load": {**shape.as_dict(), "label": shape.label}, "service": service, "rpc": rpc, **report})
            log.info("level done load=%s completed=%d failed=%d", shape.label, report["completed"], report["failed"])
    return levels
