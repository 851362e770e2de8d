"""The experience store's tables (SQLAlchemy Core). Migrations in migrations/versions
must produce exactly this; tests/unit/test_experience_migrations.py compares them.

Each log table has `seq`, an autoincrementing integer that is the cursor readers
page by. Appends to a table are serialized (see ExperienceStore), so `seq` order is
commit order and a reader never skips a row that commits late.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

samples = sa.Table(
    "samples",
    metadata,
    sa.Column("seq", Seq, primary_key=True, autoincrement=True),
    sa.Column("sample_id", sa.String(32), nullable=False, unique=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("prompt_index", sa.Integer, nullable=False),
    sa.Column("sample_index", sa.Integer, nullable=False),
    sa.Column("prompt_key", sa.String(64), nullable=False, index=True),
    sa.Column("prompt_text", sa.Text, nullable=False),
    sa.Column("chat_template", sa.Boolean, nullable=False),
    sa.Column("prompt_token_ids", sa.JSON, nullable=False),
    sa.Column("completion_text", sa.Text, nullable=False),
    sa.Column("token_ids", sa.JSON, nullable=False),
    sa.Column("logprobs", sa.JSON, nullable=False),
    sa.Column("finish_reason", sa.String(16), nullable=False),
    sa.Column("weight_version", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False, index=True),
    # The prompt template the caller named (rlhf.v1.Prompt.template); "" for none and for rows from before 0002.
    sa.Column("template", sa.String(64), nullable=False, server_default=""),
    sqlite_autoincrement=True,
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("seq", Seq, primary_key=True, autoincrement=True),
    sa.Column("feedback_id", sa.String(32), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("rater_id", sa.String(128), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("gold", sa.Boolean, nullable=False),
    sa.Column("prompt_key", sa.String(64), nullable=False, index=True),
    sa.Column("sample_ids", sa.JSON, nullable=False),
    sa.Column("target_key", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    # One judgement of a kind per rater and set of samples: repeats are ALREADY_EXISTS.
    sa.UniqueConstraint("rater_id", "kind", "gold", "target_key", name="uq_feedback_judgement"),
    sa.Index("ix_feedback_rater_time", "rater_id", "created_at"),
    sqlite_autoincrement=True,
)
