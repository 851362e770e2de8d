"""Alembic migrations of the experience store (run programmatically by database.upgrade_to_head)."""
