"""The models this process serves: every loaded version of each, from start-up through
publishes and unloads to shutdown.

Each model name has one or more loaded versions (content hashes), each with its own
backend, batcher and score statistics; the last one published is `latest`. A request
*leases* the versions it uses: resolving a name to a version and counting the request
in that version's `in_flight` happen in one synchronous step on the event loop, so no
publish or unload can slip between them. Publishing makes the new version `latest` at
once; a version leaving the pinnable set (beyond `keep_previous_versions`, or
unloaded) is first taken out of resolution, then closed only when its in-flight
requests have drained (or `drain_timeout_s` passed). So a publish never fails a request.

The servicer is created before the models load (the server must answer health
checks meanwhile), so it holds a `ModelHost` that is empty until `load` finishes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError, Unavailable
from services.reward import metrics
from services.reward.backend import RewardBackend, RewardItem
from services.reward.batcher import BatcherConfig, DynamicBatcher
from services.reward.ensemble import EnsembleSpec, MemberRef
from services.reward.normalization import RunningStats
from services.reward.registry import Declarations, ModelSpec, build_model, build_models

if TYPE_CHECKING:
    from services.reward.config import RewardConfig

log = logging.getLogger(__name__)

# Requests with more text than this count their tokens on a worker thread instead of the event loop.
_INLINE_COUNT_CHARS = 16_384


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


@dataclass(eq=False)
class ModelVersion:
    """One loaded version of a model: what scores, how it batches, what it has scored."""

    backend: RewardBackend
    batcher: DynamicBatcher
    stats: RunningStats = field(default_factory=RunningStats)
    in_flight: int = 0
    retiring: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def version(self) -> str:
        return self.backend.version

    async def score(self, items: Sequence[RewardItem]) -> list[float]:
        """Scores through this version's batcher and adds the scores to its statistics."""
        tokens = await self._token_lengths(items)
        scores = await self.batcher.submit(items, tokens)
        self.stats.update(scores)
        return scores

    async def _token_lengths(self, items: Sequence[RewardItem]) -> list[int] | None:
        count = getattr(self.backend, "token_lengths", None)
        if count is None or not self.batcher.config.max_batch_tokens:
            return None
        chars = sum(len(i.prompt) + len(i.completion) + len(i.reference or "") for i in items)
        if chars <= _INLINE_COUNT_CHARS:
            return count(items)
        return await asyncio.to_thread(count, items)


@dataclass(eq=False)
class ModelSlot:
    """A model name and its pinnable versions, oldest first; `latest` is what unpinned requests get."""

    name: str
    kind: str
    versions: dict[str, ModelVersion]
    latest: str

    @property
    def current(self) -> ModelVersion:
        return self.versions[self.latest]

    @property
    def queued_items(self) -> int:
        return sum(v.batcher.queued_items for v in self.versions.values())


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: str
    previous_version: str
    changed: bool
    loaded_versions: tuple[str, ...]


class ModelHost:
    """Name -> loaded versions, plus the configured ensembles; `ready` once start-up loading finished."""

    def __init__(
        self,
        batching: BatcherConfig,
        device: str = "cpu",
        keep_previous_versions: int = 1,
        drain_timeout_s: float = 60.0,
    ) -> None:
        self.batching, self.device = batching, device
        self.keep_previous_versions, self.drain_timeout_s = keep_previous_versions, drain_timeout_s
        self.models: dict[str, ModelSlot] = {}
        self.ensembles: dict[str, EnsembleSpec] = {}
        self.ready = False
        self._admin_lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task, ModelVersion] = {}

    # ---- start-up -------------------------------------------------------------------------

    async def load(self, declarations: Declarations) -> None:
        # Loading reads weights for seconds: off the event loop, so health keeps answering.
        backends = await asyncio.to_thread(build_models, declarations.models, self.device)
        self.attach(backends, declarations.models, declarations.ensembles)

    @classmethod
    def from_config(cls, config: RewardConfig) -> ModelHost:
        """The host a reward service configured by `config` runs its models in (batching, device, versions)."""
        batching = BatcherConfig(
            config.max_batch_size, config.max_wait_ms, config.max_queue_items, config.max_batch_tokens
        )
        return cls(batching, config.device, config.keep_previous_versions, config.drain_timeout_s)

    def attach(
        self,
        backends: Sequence[RewardBackend],
        specs: Sequence[ModelSpec] | None = None,
        ensembles: Sequence[EnsembleSpec] = (),
    ) -> None:
        """Hosts already-built backends (needs the running event loop); `specs` carry batching overrides."""
        specs = specs or [ModelSpec(b.name, b.kind) for b in backends]
        for backend, spec in zip(backends, specs, strict=True):
            self._add_slot(self._host_version(backend, spec))
        for ensemble in ensembles:
            self.ensembles[ensemble.name] = ensemble
        self.ready = True

    # ---- leases ---------------------------------------------------------------------------

    def acquire(self, name: str, version: str | None = None) -> ModelVersion:
        """Resolves `name` (at `version`, or the latest) and counts one more request in flight on it."""
        hosted = self.resolve(name, version)
        hosted.in_flight += 1
        return hosted

    def require_ready(self) -> None:
        if not self.ready:
            raise Unavailable("reward models are still loading; wait for the health service to report SERVING")

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The loaded version `name` at `version` (None: the latest); NotFound says what is loaded."""
        self.require_ready()
        slot = self.models.get(name)
        if slot is None:
            raise NotFound(self.unknown_model_message(name))
        hosted = slot.versions.get(slot.latest if version is None else version)
        if hosted is None:
            raise NotFound(
                f"model {name!r} has no loaded version {version!r}; loaded versions (oldest first): "
                f"{list(slot.versions)}"
            )
        return hosted

    def release(self, hosted: ModelVersion) -> None:
        hosted.in_flight -= 1
        if hosted.in_flight == 0 and hosted.retiring:
            hosted.drained.set()

    @contextmanager
    def lease(self, refs: Sequence[MemberRef]) -> Iterator[list[ModelVersion]]:
        """All of `refs` resolved and held together for the duration of a request."""
        held: list[ModelVersion] = []
        try:
            for ref in refs:
                held.append(self.acquire(ref.name, ref.version))
            yield held
        finally:
            for hosted in held:
                self.release(hosted)

    def unknown_model_message(self, name: str) -> str:
        message = f"no reward model named {name!r}; hosted models: {sorted(self.models)}"
        if self.ensembles:
            message += f"; ensembles: {sorted(self.ensembles)}"
        return message

    # ---- admin ----------------------------------------------------------------------------

    async def load_model(self, spec: ModelSpec) -> ModelSlot:
        """Hosts a model under a new name."""
        async with self._admin_lock:
            if spec.name in self.models or spec.name in self.ensembles:
                raise AlreadyExists(
                    f"{spec.name!r} is already hosted; publish a new version with PublishVersion or unload it first"
                )
            backend = await self._build(spec)
            slot = self._add_slot(self._host_version(backend, spec))
            log.info("loaded model name=%s kind=%s version=%s", spec.name, spec.kind, backend.version)
            return slot

    async def publish(self, spec: ModelSpec, expected_version: str | None = None) -> PublishResult:
        """Makes a new version of a hosted model the latest; older ones retire once drained.

        Publishing a version that is still loaded (a rollback to the previous one, or
        the latest again) reuses it instead of loading it twice.
        """
        async with self._admin_lock:
            slot = self.models.get(spec.name)
            if slot is None:
                raise NotFound(self.unknown_model_message(spec.name) + "; use LoadModel for a new model")
            if spec.kind != slot.kind:
                raise FailedPrecondition(
                    f"model {spec.name!r} is a {slot.kind} model; a new version must be one too, got {spec.kind}"
                )
            if expected_version is not None and expected_version != slot.latest:
                raise FailedPrecondition(
                    f"model {spec.name!r} is at version {slot.latest}, not the expected {expected_version}"
                )
            backend = await self._build(spec)
            previous = slot.latest
            if backend.version in slot.versions:
                slot.versions[backend.version] = slot.versions.pop(backend.version)  # now the newest
            else:
                slot.versions[backend.version] = self._host_version(backend, spec)
            slot.latest = backend.version
            self._retire_surplus(slot)
            changed = backend.version != previous
            log.info(
                "published model name=%s version=%s previous=%s changed=%s loaded=%s",
                spec.name,
                backend.version,
                previous,
                changed,
                list(slot.versions),
            )
            return PublishResult(spec.name, backend.version, previous, changed, tuple(slot.versions))

    async def unload(self, name: str, version: str | None = None) -> list[str]:
        """Unloads a model (every version) or one older version; returns once they have drained."""
        async with self._admin_lock:
            slot = self.models.get(name)
            if slot is None:
                raise NotFound(self.unknown_model_message(name))
            if version is None:
                users = sorted(e.name for e in self.ensembles.values() if any(m.name == name for m in e.members))
                if users:
                    raise FailedPrecondition(f"model {name!r} is a member of the configured ensembles {users}")
                del self.models[name]
                metrics.model_unloaded(name)
                leaving = list(slot.versions.values())
            else:
                if version not in slot.versions:
                    raise NotFound(f"model {name!r} has no loaded version {version!r}; loaded: {list(slot.versions)}")
                if version == slot.latest:
                    raise FailedPrecondition(
                        f"{version} is the latest version of {name!r}: publish another version first, "
                        "or unload the whole model"
                    )
                leaving = [slot.versions.pop(version)]
            tasks = [self._retire(hosted) for hosted in leaving]
        await asyncio.gather(*tasks)
        return [hosted.version for hosted in leaving]

    async def close(self) -> None:
        """Shutdown (after the server drained its RPCs): closes every version, retiring ones included."""
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        await asyncio.gather(*(task for task, _ in retiring), return_exceptions=True)
        for hosted in [hosted for _, hosted in retiring] + [
            hosted for slot in self.models.values() for hosted in slot.versions.values()
        ]:
            await hosted.batcher.close()

    # ---- internals ------------------------------------------------------------------------

    async def _build(self, spec: ModelSpec) -> RewardBackend:
        """Loads a backend off the event loop; a checkpoint that fails to load is the caller's error, not a crash."""
        try:
            return await asyncio.to_thread(build_model, spec, self.device)
        except Exception as exc:  # noqa: BLE001 - any loader failure leaves the service as it was
            log.warning("cannot load model name=%s path=%s: %s", spec.name, spec.path, exc)
            raise InvalidArgument(
                f"cannot load model {spec.name!r} from {spec.path}: {type(exc).__name__}: {exc}"
            ) from exc

    def _host_version(self, backend: RewardBackend, spec: ModelSpec) -> ModelVersion:
        overrides = {
            key: getattr(spec, key)
            for key in ("max_batch_size", "max_wait_ms", "max_batch_tokens")
            if getattr(spec, key) is not None
        }
        config = dataclasses.replace(self.batching, **overrides)
        batcher = DynamicBatcher(
            backend.name,
            backend.score,
            config,
            metrics.batch_observer(backend.name),
            rows_per_item=getattr(backend, "rows_per_item", 1),
        )
        metrics.version_loaded(backend)
        return ModelVersion(backend, batcher)

    def _add_slot(self, hosted: ModelVersion) -> ModelSlot:
        slot = ModelSlot(hosted.name, hosted.backend.kind, {hosted.version: hosted}, hosted.version)
        self.models[slot.name] = slot
        metrics.model_loaded(slot.name, lambda: slot.queued_items)
        log.info("hosting model name=%s kind=%s version=%s", slot.name, slot.kind, hosted.version)
        return slot

    def _retire_surplus(self, slot: ModelSlot) -> None:
        older = [v for v in slot.versions if v != slot.latest]
        for version in older[: max(0, len(older) - self.keep_previous_versions)]:
            self._retire(slot.versions.pop(version))

    def _retire(self, hosted: ModelVersion) -> asyncio.Task:
        """Takes a version out of service: it was already removed from resolution; close it once drained."""
        hosted.retiring = True
        if hosted.in_flight == 0:
            hosted.drained.set()
        task = asyncio.get_running_loop().create_task(self._close_when_drained(hosted))
        self._retiring[task] = hosted
        task.add_done_callback(lambda done: self._retiring.pop(done, None))
        return task

    async def _close_when_drained(self, hosted: ModelVersion) -> None:
        try:
            await asyncio.wait_for(hosted.drained.wait(), self.drain_timeout_s)
        except TimeoutError:
            log.warning(
                "model name=%s version=%s still had %d requests after drain_timeout_s=%.0f; closing anyway",
                hosted.name,
                hosted.version,
                hosted.in_flight,
                self.drain_timeout_s,
            )
        await hosted.batcher.close()
        slot = self.models.get(hosted.name)
        if slot is None or hosted.version not in slot.versions:  # not published again meanwhile
            metrics.version_unloaded(hosted.backend)
        log.info("unloaded model name=%s version=%s", hosted.name, hosted.version)
