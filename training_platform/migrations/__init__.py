"""Alembic migrations, applied on start by training_platform.core.db.migrate."""
