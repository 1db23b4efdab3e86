"""compute: a GPU job's predicted and measured peak memory

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import training_platform.core.types

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('memory_predictions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('backend', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('algorithm', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('predicted_mb', sa.Integer(), nullable=False),
    sa.Column('breakdown', JSON, nullable=False),
    sa.Column('gpu_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('measured_mb', sa.Integer(), nullable=True),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('measured_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id')
    )


def downgrade() -> None:
    op.drop_table('memory_predictions')
