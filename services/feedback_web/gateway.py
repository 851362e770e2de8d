"""The web app's only way out: gRPC calls to the policy replicas and the FeedbackService.

Every call carries the signed-in person's token (and tenant), so the services
authorize, rate-limit and account it to them. Reads that need the admin scope
(ListPrompts, GetStats) try the caller's token, then the app's own token from
RLHF_CLIENT_TOKEN / RLHF_CLIENT_TOKEN_FILE if one is set; when neither may read,
the pages fall back to the prompts file. The channels themselves carry no
token (TLS settings still come from RLHF_CLIENT_*), so a per-call token is the only
one the server sees.

services/clients/* are not used here: they attach the process's own token to every
call and are blocking, while this app calls asynchronously as each person.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from dataclasses import dataclass

import grpc

from rlhf.v1 import feedback_pb2 as fb
from rlhf.v1 import feedback_pb2_grpc, policy_pb2, policy_pb2_grpc
from services.common.client import open_aio_channel
from services.common.security import ClientSecurity
from services.feedback_web.accounts import Caller
from services.feedback_web.config import FeedbackWebConfig

log = logging.getLogger(__name__)

STABLE, CANARY = "stable", "canary"


@dataclass(frozen=True)
class PromptSource:
    """What to complete: text (chat template applied) or a live prompt's token ids."""

    text: str
    token_ids: tuple[int, ...] = ()
    chat_template: bool = True
    origin: str = "typed"  # typed, live, file

    def message(self) -> policy_pb2.Prompt:
        if self.token_ids and not self.chat_template:
            return policy_pb2.Prompt(token_ids=list(self.token_ids))
        return policy_pb2.Prompt(text=self.text, apply_chat_template=True)


@dataclass(frozen=True)
class Shown:
    """One recorded completion as the app keeps it (the version never reaches the page)."""

    sample_id: str
    text: str
    weight_version: int
    replica: str


@dataclass(frozen=True)
class Pair:
    pair_id: str
    prompt: PromptSource
    a: Shown
    b: Shown
    created: float


class ServiceError(Exception):
    """A service call failed; the message is safe to show to the person."""


def _describe(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


class ServiceGateway:
    def __init__(self, config: FeedbackWebConfig, app_security: ClientSecurity | None = None) -> None:
        env = ClientSecurity.from_env() if app_security is None else app_security
        self._reader_token = env.token
        channel_security = dataclasses.replace(env, token="")
        self.config = config
        self._channels = {STABLE: open_aio_channel(config.policy_address, security=channel_security)}
        if config.canary_address:
            self._channels[CANARY] = open_aio_channel(config.canary_address, security=channel_security)
        self._feedback_channel = open_aio_channel(config.feedback_address, security=channel_security)
        self._policies = {name: policy_pb2_grpc.PolicyServiceStub(ch) for name, ch in self._channels.items()}
        self._feedback = feedback_pb2_grpc.FeedbackServiceStub(self._feedback_channel)

    @property
    def has_canary(self) -> bool:
        return CANARY in self._policies

    async def close(self) -> None:
        for channel in [*self._channels.values(), self._feedback_channel]:
            await channel.close()

    # ---- generation ------------------------------------------------------------------

    async def _generate(self, caller: Caller, replica: str, prompt: PromptSource, n: int) -> list[Shown]:
        request = policy_pb2.GenerateRequest(
            prompts=[prompt.message()],
            sampling=policy_pb2.SamplingParams(
                n=n, max_tokens=self.config.max_tokens, temperature=self.config.temperature
            ),
            request_id=f"web-{uuid.uuid4().hex[:16]}",
            recording=policy_pb2.RECORDING_MODE_ON,
        )
        try:
            reply = await self._policies[replica].Generate(
                request, metadata=caller.metadata(), timeout=self.config.rpc_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise ServiceError(f"{replica} policy: {_describe(exc)}") from exc
        return [Shown(s.sample_id, s.text, int(s.weight_version), replica) for s in reply.results[0].samples]

    async def pair(self, caller: Caller, prompt: PromptSource, rng: random.Random) -> Pair:
        """Two recorded completions of `prompt`: stable vs canary when a canary is configured, else two samples."""
        if self.has_canary:
            stable, canary = await asyncio.gather(
                self._generate(caller, STABLE, prompt, 1), self._generate(caller, CANARY, prompt, 1)
            )
            first, second = stable[0], canary[0]
        else:
            first, second = await self._generate(caller, STABLE, prompt, 2)
        if rng.random() < 0.5:
            first, second = second, first
        return Pair(uuid.uuid4().hex, prompt, first, second, time.time())

    async def sample(self, caller: Caller, prompt: PromptSource, rng: random.Random) -> Shown:
        """One recorded completion, from the canary half of the time when there is one (both versions get rated)."""
        replica = CANARY if self.has_canary and rng.random() < 0.5 else STABLE
        return (await self._generate(caller, replica, prompt, 1))[0]

    async def serving_versions(self, caller: Caller) -> dict[str, int | None]:
        versions: dict[str, int | None] = {}
        for name, stub in self._policies.items():
            try:
                status = await stub.GetStatus(policy_pb2.GetStatusRequest(), metadata=caller.metadata(), timeout=10)
                versions[name] = int(status.weight_version)
            except grpc.aio.AioRpcError as exc:
                log.warning("GetStatus of the %s replica failed: %s", name, _describe(exc))
                versions[name] = None
        return versions

    # ---- feedback --------------------------------------------------------------------

    def _read_identities(self, caller: Caller) -> list:
        """Metadata to try for admin reads: the caller's own token first, then the app's token if it has one."""
        identities = [caller.metadata()]
        if not caller.admin and self._reader_token:
            identities.append((("authorization", f"Bearer {self._reader_token}"),))
        return identities

    async def live_prompts(self, caller: Caller) -> list[PromptSource]:
        """Distinct prompts among the newest recorded samples of the caller's tenant, newest first.

        [] when no identity may read them (the services refuse ListPrompts without the admin scope).
        """
        for metadata in self._read_identities(caller):
            try:
                stats = await self._feedback.GetStats(fb.GetStatsRequest(), metadata=metadata, timeout=10)
                since = max(0, int(stats.samples_cursor) - self.config.live_prompt_window)
                reply = await self._feedback.ListPrompts(
                    fb.ListPromptsRequest(
                        since_cursor=since, limit=self.config.live_prompt_window, tenant=caller.tenant
                    ),
                    metadata=metadata,
                    timeout=self.config.rpc_timeout_s,
                )
            except grpc.aio.AioRpcError as exc:
                log.info("cannot read live prompts as %s: %s", caller.rater_id, _describe(exc))
                continue
            return [
                PromptSource(p.prompt_text, tuple(p.prompt_token_ids), p.chat_template, "live")
                for p in reversed(reply.prompts)
                if p.prompt_text.strip() or p.prompt_token_ids
            ]
        return []

    async def submit(self, caller: Caller, bodies: list[fb.FeedbackBody]) -> list[str]:
        """Stores each body as the caller (gold for admin tokens); returns the feedback ids.

        NOT_FOUND is retried for `record_wait_s`: the policy writes samples to the store
        asynchronously, so a fast judgement can arrive before its samples. ALREADY_EXISTS
        (a retried submission whose reply was lost) counts as stored.
        """
        method = self._feedback.SubmitGoldFeedback if caller.admin else self._feedback.SubmitFeedback
        ids = []
        for body in bodies:
            request = fb.SubmitFeedbackRequest(rater_id=caller.rater_id, body=body)
            deadline = time.monotonic() + self.config.record_wait_s
            delay = 0.05
            while True:
                try:
                    reply = await method(request, metadata=caller.metadata(), timeout=self.config.rpc_timeout_s)
                    ids.append(reply.feedback_id)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                        ids.append("")
                        break
                    if exc.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 1.0)
                        continue
                    raise ServiceError(f"feedback service: {_describe(exc)}") from exc
        return ids
