"""surgery: merges, soups (greedy ones too) and sweeps, and the lineage of catalog models

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import training_platform.core.types

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('model_lineage',
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=False),
    sa.Column('relation', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('detail', JSON, nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['parent_id'], ['models.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('model_id', 'parent_id')
    )
    op.create_index(op.f('ix_model_lineage_parent_id'), 'model_lineage', ['parent_id'], unique=False)
    op.create_table('merges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('inputs', JSON, nullable=False),
    sa.Column('parameters', JSON, nullable=False),
    sa.Column('dtype', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('tokenizer', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('estimate', JSON, nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('model_id', sa.Integer(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_index(op.f('ix_merges_job_id'), 'merges', ['job_id'], unique=True)
    op.create_index(op.f('ix_merges_model_id'), 'merges', ['model_id'], unique=False)
    op.create_index(op.f('ix_merges_name'), 'merges', ['name'], unique=False)
    op.create_index(op.f('ix_merges_status'), 'merges', ['status'], unique=False)
    op.create_table('merge_sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('grid', JSON, nullable=False),
    sa.Column('evaluate', JSON, nullable=False),
    sa.Column('mode', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('candidates', JSON, nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_index(op.f('ix_merge_sweeps_model_id'), 'merge_sweeps', ['model_id'], unique=False)
    op.create_index(op.f('ix_merge_sweeps_name'), 'merge_sweeps', ['name'], unique=False)
    op.create_index(op.f('ix_merge_sweeps_status'), 'merge_sweeps', ['status'], unique=False)
    op.create_table('greedy_soups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('evaluate', JSON, nullable=False),
    sa.Column('mode', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('state', JSON, nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_index(op.f('ix_greedy_soups_job_id'), 'greedy_soups', ['job_id'], unique=False)
    op.create_index(op.f('ix_greedy_soups_model_id'), 'greedy_soups', ['model_id'], unique=False)
    op.create_index(op.f('ix_greedy_soups_name'), 'greedy_soups', ['name'], unique=False)
    op.create_index(op.f('ix_greedy_soups_status'), 'greedy_soups', ['status'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_greedy_soups_status'), table_name='greedy_soups')
    op.drop_index(op.f('ix_greedy_soups_name'), table_name='greedy_soups')
    op.drop_index(op.f('ix_greedy_soups_model_id'), table_name='greedy_soups')
    op.drop_index(op.f('ix_greedy_soups_job_id'), table_name='greedy_soups')
    op.drop_table('greedy_soups')
    op.drop_index(op.f('ix_merge_sweeps_status'), table_name='merge_sweeps')
    op.drop_index(op.f('ix_merge_sweeps_name'), table_name='merge_sweeps')
    op.drop_index(op.f('ix_merge_sweeps_model_id'), table_name='merge_sweeps')
    op.drop_table('merge_sweeps')
    op.drop_index(op.f('ix_merges_status'), table_name='merges')
    op.drop_index(op.f('ix_merges_name'), table_name='merges')
    op.drop_index(op.f('ix_merges_model_id'), table_name='merges')
    op.drop_index(op.f('ix_merges_job_id'), table_name='merges')
    op.drop_table('merges')
    op.drop_index(op.f('ix_model_lineage_parent_id'), table_name='model_lineage')
    op.drop_table('model_lineage')
