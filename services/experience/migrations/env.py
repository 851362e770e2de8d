"""Alembic environment: runs on the connection database.upgrade_to_head hands over.

There is no alembic.ini: the store configures Alembic in code and migrates on open.
To change the schema, edit schema.py, add the next file in versions/ (copy the
latest, bump `revision` / `down_revision`, use `op.batch_alter_table` for SQLite),
and let tests/unit/test_experience_migrations.py check that the two agree.
"""

from alembic import context

from services.experience.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through services.experience.database.upgrade_to_head")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=context.config.get_main_option("version_table"),
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
