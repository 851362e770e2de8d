"""Schema migrations on SQLite: a fresh store reaches head, reopening is a no-op, the schema matches schema.py.

tests/integration/test_experience_store.py repeats the checks on PostgreSQL.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from services.experience import database
from services.experience.records import SampleRecord
from services.experience.schema import metadata
from services.experience.store import ExperienceStore


def schema_diff(engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": database.VERSION_TABLE})
        return compare_metadata(context, metadata)


def test_fresh_store_reaches_head_and_matches_the_schema(tmp_path):
    url = f"sqlite:///{tmp_path}/fresh.db"
    store = ExperienceStore.open(url)
    assert store.schema_revision == database.head_revision()
    assert database.current_revision(store.engine) == database.head_revision()
    assert schema_diff(store.engine) == []
    store.close()


def test_migrations_are_idempotent_and_keep_data(tmp_path):
    url = f"sqlite:///{tmp_path}/again.db"
    first = ExperienceStore.open(url)
    with first.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO feedback (feedback_id, kind, rater_id, tenant, gold, prompt_key, sample_ids, "
                "target_key, payload, created_at) VALUES ('f', 'comment', 'r', 't', 0, 'k', '[]', 'x', '{}', 1)"
            )
        )
    first.close()
    for _ in range(2):
        again = ExperienceStore.open(url)
        assert again.schema_revision == database.head_revision()
        assert again.counts().feedback == 1
        with again.engine.connect() as connection:
            versions = connection.execute(sa.text(f"SELECT count(*) FROM {database.VERSION_TABLE}")).scalar()
        assert versions == 1
        again.close()


def _migrate(engine, step, revision: str) -> None:
    config = database.alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        step(config, revision)


def test_0002_records_templates_and_recovers_them_from_tagged_request_ids(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    engine = database.create_engine(url)
    _migrate(engine, command.upgrade, "0001")
    with engine.begin() as connection:
        for sample_id, request_id in [("a", "train-step-2-tpl_critic"), ("b", "loadtest-1-tpl_none"), ("c", "live-1")]:
            connection.execute(
                sa.text(
                    "INSERT INTO samples (sample_id, request_id, tenant, prompt_index, sample_index, prompt_key, "
                    "prompt_text, chat_template, prompt_token_ids, completion_text, token_ids, logprobs, "
                    "finish_reason, weight_version, created_at) "
                    "VALUES (:sid, :rid, 't', 0, 0, 'k', 'p', 1, '[1]', 'c', '[2]', '[-0.5]', 'stop', 0, 1)"
                ),
                {"sid": sample_id, "rid": request_id},
            )
    engine.dispose()
    store = ExperienceStore.open(url)  # migrates to head
    assert store.schema_revision == database.head_revision() and schema_diff(store.engine) == []
    found = store.get_samples(["a", "b", "c"])
    assert {k: v.template for k, v in found.items()} == {"a": "critic", "b": "", "c": ""}  # "none" meant no template
    record = SampleRecord("d", "r", "t", 0, 0, "p", True, [1], "c", [2], [-0.5], "stop", 0, 2.0, "critic")
    store.record_samples([record])
    page, _ = store.sample_page(0, 10, template="critic")
    assert [s.sample_id for s in page] == ["a", "d"]
    _migrate(store.engine, command.downgrade, "0001")
    assert "template" not in {c["name"] for c in sa.inspect(store.engine).get_columns("samples")}
    store.close()


def test_concurrent_opens_migrate_once(tmp_path):
    url = f"sqlite:///{tmp_path}/race.db"
    errors, stores = [], []

    def open_store():
        try:
            stores.append(ExperienceStore.open(url))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(stores) == 4
    assert all(s.schema_revision == database.head_revision() for s in stores)
    for store in stores:
        store.close()


def test_sqlite_durability_settings(tmp_path):
    store = ExperienceStore.open(f"sqlite:///{tmp_path}/durable.db")
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def test_postgres_urls_use_psycopg3_and_memory_sqlite_is_refused():
    assert database.normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database.normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(ValueError, match="needs a SQLite file"):
        database.create_engine("sqlite://")
    with pytest.raises(ValueError, match="unsupported"):
        database.create_engine("mysql://u@h/db")
