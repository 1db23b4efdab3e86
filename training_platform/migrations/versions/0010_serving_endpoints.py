"""endpoints; jobs without a dataset (serve) or a model (an endpoint's evaluation)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import training_platform.core.types

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite rebuilds a table to alter a column: keep AUTOINCREMENT, so that ids are never reused.
KEEP_IDS = {'sqlite_autoincrement': True}


def upgrade() -> None:
    op.create_table('endpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('base_url', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('api_key', sa.Text(), nullable=True),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('max_retries', sa.Integer(), nullable=False),
    sa.Column('rate_limit', sa.Float(), nullable=True),
    sa.Column('timeout_s', sa.Float(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('job_attempt', sa.Integer(), nullable=True),
    sa.Column('engine', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_endpoints_name'), ['name'], unique=True)
        batch_op.create_index(batch_op.f('ix_endpoints_job_id'), ['job_id'], unique=True)
    with op.batch_alter_table('jobs', table_kwargs=KEEP_IDS) as batch_op:
        batch_op.alter_column('model_id', existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column('dataset_id', existing_type=sa.Integer(), nullable=True)
    with op.batch_alter_table('evaluations', table_kwargs=KEEP_IDS) as batch_op:
        batch_op.alter_column('model_id', existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(
            sa.Column('endpoint', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table('evaluations', table_kwargs=KEEP_IDS) as batch_op:
        batch_op.drop_column('endpoint')
        batch_op.alter_column('model_id', existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table('jobs', table_kwargs=KEEP_IDS) as batch_op:
        batch_op.alter_column('dataset_id', existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column('model_id', existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_endpoints_job_id'))
        batch_op.drop_index(batch_op.f('ix_endpoints_name'))
    op.drop_table('endpoints')
