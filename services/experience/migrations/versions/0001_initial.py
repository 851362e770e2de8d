"""Initial schema: recorded samples and feedback.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("sample_id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("prompt_index", sa.Integer, nullable=False),
        sa.Column("sample_index", sa.Integer, nullable=False),
        sa.Column("prompt_key", sa.String(64), nullable=False),
        sa.Column("prompt_text", sa.Text, nullable=False),
        sa.Column("chat_template", sa.Boolean, nullable=False),
        sa.Column("prompt_token_ids", sa.JSON, nullable=False),
        sa.Column("completion_text", sa.Text, nullable=False),
        sa.Column("token_ids", sa.JSON, nullable=False),
        sa.Column("logprobs", sa.JSON, nullable=False),
        sa.Column("finish_reason", sa.String(16), nullable=False),
        sa.Column("weight_version", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.UniqueConstraint("sample_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_samples_request_id", "samples", ["request_id"])
    op.create_index("ix_samples_prompt_key", "samples", ["prompt_key"])
    op.create_index("ix_samples_created_at", "samples", ["created_at"])

    op.create_table(
        "feedback",
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("feedback_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("rater_id", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("gold", sa.Boolean, nullable=False),
        sa.Column("prompt_key", sa.String(64), nullable=False),
        sa.Column("sample_ids", sa.JSON, nullable=False),
        sa.Column("target_key", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.UniqueConstraint("feedback_id"),
        sa.UniqueConstraint("rater_id", "kind", "gold", "target_key", name="uq_feedback_judgement"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_feedback_prompt_key", "feedback", ["prompt_key"])
    op.create_index("ix_feedback_rater_time", "feedback", ["rater_id", "created_at"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("samples")
