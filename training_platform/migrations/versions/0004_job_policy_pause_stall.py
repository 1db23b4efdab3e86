"""job end cause, retry time, pause mode, stop request, last progress; event detail

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import training_platform.core.types

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('end_cause', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column('retry_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('pause_mode', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
        batch_op.add_column(sa.Column('stop_requested_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_progress_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('detail', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.drop_column('detail')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('last_progress_at')
        batch_op.drop_column('stop_requested_at')
        batch_op.drop_column('pause_mode')
        batch_op.drop_column('retry_at')
        batch_op.drop_column('end_cause')
