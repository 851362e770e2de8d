"""The experience store: live traffic, human feedback, and the denoised data trainers read.

- `store.py`: `ExperienceStore`, a SQLAlchemy database (SQLite file by default,
  PostgreSQL when several processes share it) migrated by Alembic on open.
- `recorder.py` / `traffic.py`: how the policy service records what it served
  without ever waiting on the database.
- `feedback.py` / `server.py`: the FeedbackService (validation in plain classes,
  a thin gRPC servicer); `python -m services.experience` hosts it alone.
- `filters.py` / `curation.py`: denoising (duplicates, rater reliability,
  contradictions) and the training data built from it.
"""
