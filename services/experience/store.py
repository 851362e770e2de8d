"""ExperienceStore: recorded samples and feedback in a real database, with plain methods.

Blocking (SQLAlchemy is synchronous): async servers call it from a thread pool.
Every write is one transaction; a method that returns has committed, so what it
acknowledged survives a crash (see database.py for the durability settings).

Appends to each log table are serialized (SQLite has one writer anyway; PostgreSQL
takes a transaction-scoped advisory lock per table), so `seq` order is commit
order and readers paging by cursor never skip a row that committed late.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from services.experience import database
from services.experience.filters import retry_after
from services.experience.records import (
    FeedbackDraft,
    Kind,
    SampleRecord,
    StoreCounts,
    StoredFeedback,
    StoredSample,
)
from services.experience.schema import feedback, samples

T = TypeVar("T")

log = logging.getLogger(__name__)

_APPEND_LOCKS = {"samples": 0x5E1F_0001, "feedback": 0x5E1F_0002}
_IN_CHUNK = 500  # ids per IN (...) list


class DuplicateFeedback(Exception):
    """This rater already gave this kind of feedback on these samples."""

    def __init__(self, existing_id: str) -> None:
        super().__init__(existing_id)
        self.existing_id = existing_id


class RateLimited(Exception):
    """The rater reached `limit` submissions within the window."""

    def __init__(self, limit: int, window_s: float, retry_after_s: float) -> None:
        super().__init__(f"{limit} per {window_s:g} s")
        self.limit, self.window_s, self.retry_after_s = limit, window_s, retry_after_s


class ExperienceStore:
    """The experience database. `ExperienceStore.open(url)` migrates it to the newest schema."""

    def __init__(self, engine: Engine, schema_revision: str) -> None:
        self.engine = engine
        self.schema_revision = schema_revision

    @classmethod
    def open(cls, url: str) -> ExperienceStore:
        engine = database.create_engine(url)
        try:
            revision = database.upgrade_to_head(engine)
        except Exception:
            engine.dispose()
            raise
        return cls(engine, revision)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # ---- transactions -----------------------------------------------------

    def _append(self, connection: sa.Connection, table: str) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCKS[table]})

    def _reading(self):
        return self.engine.connect().execution_options(**{database.READ_ONLY: True})

    # ---- samples ----------------------------------------------------------

    def record_samples(self, records: Sequence[SampleRecord]) -> None:
        """Stores served samples in one transaction (all or none)."""
        if not records:
            return
        rows = [
            {
                "sample_id": r.sample_id,
                "request_id": r.request_id,
                "tenant": r.tenant,
                "prompt_index": r.prompt_index,
                "sample_index": r.sample_index,
                "prompt_key": r.prompt_key,
                "prompt_text": r.prompt_text or "",
                "chat_template": r.chat_template,
                "prompt_token_ids": list(r.prompt_token_ids),
                "completion_text": r.completion_text,
                "token_ids": list(r.token_ids),
                "logprobs": [float(x) for x in r.logprobs],
                "finish_reason": r.finish_reason,
                "weight_version": int(r.weight_version),
                "created_at": r.created_at,
                "template": r.template,
            }
            for r in records
        ]
        with self.engine.begin() as connection:
            self._append(connection, "samples")
            connection.execute(samples.insert(), rows)

    def get_samples(self, sample_ids: Collection[str]) -> dict[str, StoredSample]:
        """The recorded samples among `sample_ids`, by id (unknown ids are absent)."""
        ids = sorted(set(sample_ids))
        found: dict[str, StoredSample] = {}
        with self._reading() as connection, connection.begin():
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                for row in connection.execute(sa.select(samples).where(samples.c.sample_id.in_(chunk))):
                    found[row.sample_id] = _sample(row)
        return found

    def sample_page(
        self, since: int, limit: int, tenant: str = "", template: str = ""
    ) -> tuple[list[StoredSample], bool]:
        """Samples with seq > since (of `tenant`, of `template` when given), oldest first, at most `limit`;
        and whether more follow."""
        query = sa.select(samples).where(samples.c.seq > since)
        if tenant:
            query = query.where(samples.c.tenant == tenant)
        if template:
            query = query.where(samples.c.template == template)
        return self._page(query.order_by(samples.c.seq), limit, _sample)

    # ---- feedback ---------------------------------------------------------

    def add_feedback(
        self, draft: FeedbackDraft, rate_limit: tuple[int, float] | None = None, now: float | None = None
    ) -> StoredFeedback:
        """Stores one judgement; raises DuplicateFeedback or RateLimited instead.

        `rate_limit` is (most submissions, window seconds) for the draft's rater;
        it is checked in the same serialized transaction as the insert, so
        concurrent submissions (even from several processes) cannot overshoot it.
        """
        now = time.time() if now is None else now
        row = {
            "feedback_id": uuid.uuid4().hex,
            "kind": draft.kind.value,
            "rater_id": draft.rater_id,
            "tenant": draft.tenant,
            "gold": draft.gold,
            "prompt_key": draft.prompt_key,
            "sample_ids": list(draft.sample_ids),
            "target_key": draft.target_key,
            "payload": dict(draft.payload),
            "created_at": now,
        }
        try:
            with self.engine.begin() as connection:
                self._append(connection, "feedback")
                existing = connection.execute(
                    sa.select(feedback.c.feedback_id).where(
                        feedback.c.rater_id == draft.rater_id,
                        feedback.c.kind == draft.kind.value,
                        feedback.c.gold == draft.gold,
                        feedback.c.target_key == draft.target_key,
                    )
                ).scalar()
                if existing is not None:
                    raise DuplicateFeedback(existing)
                if rate_limit is not None:
                    self._check_rate(connection, draft.rater_id, *rate_limit, now)
                seq = connection.execute(feedback.insert().values(**row).returning(feedback.c.seq)).scalar_one()
        except sa.exc.IntegrityError as exc:  # a racing duplicate that slipped past the check
            existing = self._find_judgement(draft)
            if existing is None:
                raise
            raise DuplicateFeedback(existing) from exc
        return StoredFeedback(
            seq=seq,
            feedback_id=row["feedback_id"],
            kind=draft.kind,
            rater_id=draft.rater_id,
            tenant=draft.tenant,
            gold=draft.gold,
            sample_ids=tuple(draft.sample_ids),
            prompt_key=draft.prompt_key,
            payload=dict(draft.payload),
            created_at=now,
        )

    def _check_rate(self, connection: sa.Connection, rater_id: str, limit: int, window_s: float, now: float) -> None:
        recent = (
            connection.execute(
                sa.select(feedback.c.created_at)
                .where(
                    feedback.c.rater_id == rater_id, feedback.c.gold.is_(False), feedback.c.created_at > now - window_s
                )
                .order_by(feedback.c.created_at)
            )
            .scalars()
            .all()
        )
        wait = retry_after(recent, limit, window_s, now)
        if wait is not None:
            raise RateLimited(limit, window_s, wait)

    def _find_judgement(self, draft: FeedbackDraft) -> str | None:
        with self._reading() as connection, connection.begin():
            return connection.execute(
                sa.select(feedback.c.feedback_id).where(
                    feedback.c.rater_id == draft.rater_id,
                    feedback.c.kind == draft.kind.value,
                    feedback.c.gold == draft.gold,
                    feedback.c.target_key == draft.target_key,
                )
            ).scalar()

    def feedback_page(
        self, since: int, limit: int, kinds: Iterable[Kind] = (), rater_id: str = ""
    ) -> tuple[list[StoredFeedback], bool]:
        """Feedback with seq > since, oldest first, at most `limit`; and whether more follow."""
        query = sa.select(feedback).where(feedback.c.seq > since)
        kinds = [k.value for k in kinds]
        if kinds:
            query = query.where(feedback.c.kind.in_(kinds))
        if rater_id:
            query = query.where(feedback.c.rater_id == rater_id)
        return self._page(query.order_by(feedback.c.seq), limit, _feedback)

    def _page(self, ordered: sa.Select, limit: int, convert: Callable[[sa.Row], T]) -> tuple[list[T], bool]:
        """At most `limit` converted rows of `ordered`, and whether more follow (one extra row is read to know)."""
        with self._reading() as connection, connection.begin():
            rows = [convert(row) for row in connection.execute(ordered.limit(limit + 1))]
        return rows[:limit], len(rows) > limit

    def feedback_on_prompts(
        self, prompt_keys: Collection[str], upto: int, kinds: Iterable[Kind]
    ) -> list[StoredFeedback]:
        """All feedback of `kinds` on these prompts with seq <= upto, oldest first."""
        keys = sorted(set(prompt_keys))
        kinds = [k.value for k in kinds]
        rows: list[StoredFeedback] = []
        with self._reading() as connection, connection.begin():
            for start in range(0, len(keys), _IN_CHUNK):
                query = sa.select(feedback).where(
                    feedback.c.prompt_key.in_(keys[start : start + _IN_CHUNK]),
                    feedback.c.seq <= upto,
                    feedback.c.kind.in_(kinds),
                )
                rows.extend(_feedback(row) for row in connection.execute(query))
        return sorted(rows, key=lambda r: r.seq)

    def latest_feedback(self, upto: int, limit: int, kinds: Iterable[Kind]) -> list[StoredFeedback]:
        """The newest `limit` feedback records of `kinds` with seq <= upto, oldest first."""
        query = (
            sa.select(feedback)
            .where(feedback.c.seq <= upto, feedback.c.kind.in_([k.value for k in kinds]))
            .order_by(feedback.c.seq.desc())
            .limit(limit)
        )
        with self._reading() as connection, connection.begin():
            rows = [_feedback(row) for row in connection.execute(query)]
        return rows[::-1]

    # ---- counts -----------------------------------------------------------

    def counts(self) -> StoreCounts:
        with self._reading() as connection, connection.begin():
            sample_count, sample_head = connection.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.max(samples.c.seq), 0))
            ).one()
            by_kind = {
                Kind(kind): count
                for kind, count in connection.execute(
                    sa.select(feedback.c.kind, sa.func.count()).group_by(feedback.c.kind)
                )
            }
            feedback_head = connection.execute(sa.select(sa.func.coalesce(sa.func.max(feedback.c.seq), 0))).scalar_one()
            raters = connection.execute(sa.select(sa.func.count(sa.distinct(feedback.c.rater_id)))).scalar_one()
        return StoreCounts(
            samples=int(sample_count),
            feedback=sum(by_kind.values()),
            feedback_by_kind=by_kind,
            raters=int(raters),
            samples_cursor=int(sample_head),
            feedback_cursor=int(feedback_head),
        )


def _sample(row) -> StoredSample:
    return StoredSample(
        seq=row.seq,
        sample_id=row.sample_id,
        request_id=row.request_id,
        tenant=row.tenant,
        prompt_key=row.prompt_key,
        prompt_text=row.prompt_text,
        chat_template=bool(row.chat_template),
        prompt_token_ids=list(row.prompt_token_ids),
        completion_text=row.completion_text,
        token_ids=list(row.token_ids),
        logprobs=list(row.logprobs),
        finish_reason=row.finish_reason,
        weight_version=int(row.weight_version),
        created_at=float(row.created_at),
        template=row.template,
    )


def _feedback(row) -> StoredFeedback:
    return StoredFeedback(
        seq=row.seq,
        feedback_id=row.feedback_id,
        kind=Kind(row.kind),
        rater_id=row.rater_id,
        tenant=row.tenant,
        gold=bool(row.gold),
        sample_ids=tuple(row.sample_ids),
        prompt_key=row.prompt_key,
        payload=dict(row.payload),
        created_at=float(row.created_at),
    )
