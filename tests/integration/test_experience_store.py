"""ExperienceStore against both backends: SQLite (a file) and a real PostgreSQL server on loopback."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from services.experience import database
from services.experience.records import FeedbackDraft, Kind, SampleRecord
from services.experience.schema import metadata
from services.experience.store import DuplicateFeedback, ExperienceStore, RateLimited

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/experience.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url):
    store = ExperienceStore.open(store_url)
    yield store
    store.close()


def sample(i: int, prompt=(1, 2, 3), tenant="default") -> SampleRecord:
    return SampleRecord(
        sample_id=f"s{i:04d}",
        request_id=f"r{i // 2}",
        tenant=tenant,
        prompt_index=0,
        sample_index=i % 2,
        prompt_text="Say hi ünïcode ✓",
        chat_template=True,
        prompt_token_ids=list(prompt),
        completion_text=f"answer {i}",
        token_ids=[10, 11, i],
        logprobs=[-0.125, -1.5, -3.0e-7],
        finish_reason="stop",
        weight_version=7,
        created_at=1000.0 + i,
        template="critic" if i % 2 else "",
    )


def draft(rater: str, ids=("s0000", "s0001"), kind=Kind.PAIRWISE, gold=False) -> FeedbackDraft:
    return FeedbackDraft(kind, rater, "default", gold, tuple(ids), sample(0).prompt_key, {"note": "ok"})


def test_migrations_reach_head_idempotently_and_match_the_schema(store_url):
    for _ in range(2):
        store = ExperienceStore.open(store_url)
        assert store.schema_revision == database.head_revision()
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": database.VERSION_TABLE})
            assert compare_metadata(context, metadata) == []
            assert connection.execute(sa.text(f"SELECT count(*) FROM {database.VERSION_TABLE}")).scalar() == 1
        store.close()


def test_samples_round_trip_exactly(store):
    store.record_samples([sample(i) for i in range(4)])
    found = store.get_samples(["s0001", "s0003", "missing"])
    assert set(found) == {"s0001", "s0003"}
    got = found["s0001"]
    assert (got.prompt_text, got.prompt_token_ids, got.token_ids) == ("Say hi ünïcode ✓", [1, 2, 3], [10, 11, 1])
    assert got.logprobs == [-0.125, -1.5, -3.0e-7] and got.weight_version == 7 and got.created_at == 1001.0
    assert got.prompt_key == sample(1).prompt_key and got.chat_template and got.request_id == "r0"
    assert (got.template, found["s0003"].template) == ("critic", "critic")
    assert [s.sample_id for s in store.sample_page(0, 10, template="critic")[0]] == ["s0001", "s0003"]


def test_sample_pages_follow_the_cursor(store):
    store.record_samples([sample(i, tenant="a" if i % 3 else "b") for i in range(10)])
    page, more = store.sample_page(0, 4)
    assert [s.sample_id for s in page] == ["s0000", "s0001", "s0002", "s0003"] and more
    page, more = store.sample_page(page[-1].seq, 100)
    assert len(page) == 6 and not more
    only_b, _ = store.sample_page(0, 100, tenant="b")
    assert [s.sample_id for s in only_b] == ["s0000", "s0003", "s0006", "s0009"]


def test_batch_insert_is_all_or_nothing(store):
    store.record_samples([sample(0)])
    with pytest.raises(sa.exc.IntegrityError):
        store.record_samples([sample(1), sample(0)])  # s0000 again: the whole batch fails
    assert store.counts().samples == 1


def test_feedback_duplicates_rate_limits_and_counts(store):
    store.record_samples([sample(i) for i in range(4)])
    first = store.add_feedback(draft("alice"))
    with pytest.raises(DuplicateFeedback) as duplicate:
        store.add_feedback(draft("alice", ids=("s0001", "s0000")))
    assert duplicate.value.existing_id == first.feedback_id
    store.add_feedback(draft("alice", kind=Kind.RANKING))
    store.add_feedback(draft("alice", gold=True))  # a gold answer is a different judgement
    now = time.time()
    store.add_feedback(draft("bob", ids=("s0002",), kind=Kind.THUMBS), rate_limit=(2, 60.0), now=now - 30)
    store.add_feedback(draft("bob", ids=("s0003",), kind=Kind.THUMBS), rate_limit=(2, 60.0), now=now - 10)
    with pytest.raises(RateLimited) as limited:
        store.add_feedback(draft("bob", ids=("s0001",), kind=Kind.THUMBS), rate_limit=(2, 60.0), now=now)
    assert limited.value.retry_after_s == pytest.approx(30.0, abs=0.01)
    counts = store.counts()
    assert (counts.feedback, counts.raters, counts.samples, counts.samples_cursor, counts.feedback_cursor) == (
        5,
        2,
        4,
        4,
        5,
    )
    assert counts.feedback_by_kind == {Kind.PAIRWISE: 2, Kind.RANKING: 1, Kind.THUMBS: 2}
    page, more = store.feedback_page(0, 10, kinds=[Kind.THUMBS])
    assert [f.rater_id for f in page] == ["bob", "bob"] and not more
    on_prompt = store.feedback_on_prompts({sample(0).prompt_key}, upto=3, kinds=[Kind.PAIRWISE, Kind.RANKING])
    assert [f.seq for f in on_prompt] == [1, 2, 3] and on_prompt[2].gold
    assert [f.seq for f in store.latest_feedback(upto=5, limit=2, kinds=list(Kind))] == [4, 5]


def test_concurrent_writers_commit_in_cursor_order(store):
    """Several threads append at once: every acknowledged row is there, cursors strictly increase, none skipped."""
    store.record_samples([sample(i) for i in range(2)])
    acked, errors = [], []

    def rater(name: str) -> None:
        try:
            for i in range(15):
                stored = store.add_feedback(draft(name, ids=(f"x{i}",), kind=Kind.COMMENT))
                acked.append(stored.seq)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=rater, args=(f"r{t}",)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    page, _ = store.feedback_page(0, 1000)
    assert sorted(acked) == [f.seq for f in page] == list(range(1, 61))
