"""Samples record the prompt template the caller named (rlhf.v1.Prompt.template).

Before this revision the name travelled in the request id (`<id>-tpl_<name>`, names of
1-24 letters, digits or '_', "none" for no template); those rows get it back from there,
every other row gets "" (no template), so grouping by template covers traffic from both sides of the upgrade.

Revision ID: 0002
Revises: 0001
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TAGGED = re.compile(r"-tpl_([A-Za-z0-9_]{1,24})$")


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("template", sa.String(64), nullable=False, server_default=""))
    samples = sa.table("samples", sa.column("seq"), sa.column("request_id"), sa.column("template"))
    connection = op.get_bind()
    tagged = connection.execute(
        sa.select(samples.c.seq, samples.c.request_id).where(samples.c.request_id.like("%-tpl!_%", escape="!"))
    ).all()
    updates = [
        {"row": seq, "name": match.group(1)}
        for seq, request_id in tagged
        if (match := _TAGGED.search(request_id)) and match.group(1) != "none"
    ]
    if updates:
        connection.execute(
            samples.update().where(samples.c.seq == sa.bindparam("row")).values(template=sa.bindparam("name")), updates
        )


def downgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("template")
