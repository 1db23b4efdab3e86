"""evaluation: all n completions of a sample (pass@k), scorings on workers, judge rubrics,
suites and their runs

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import training_platform.core.types

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    # New nullable columns: SQLite adds them in place (no table rebuild).
    op.add_column('evaluation_samples', sa.Column('outputs', JSON, nullable=True))
    op.add_column('evaluation_scores', sa.Column('detail', sa.Text(), nullable=True))
    op.create_table('evaluation_scorings',
    sa.Column('evaluation_id', sa.Integer(), nullable=False),
    sa.Column('scorer', sa.String(length=256), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('requested_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('evaluation_id', 'scorer')
    )
    op.create_table('rubrics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('max_score', sa.Float(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('eval_suites',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('items', JSON, nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('suite_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('suite', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('model_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('evaluation_ids', JSON, nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('suite_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_suite_runs_suite'), ['suite'], unique=False)


def downgrade() -> None:
    op.drop_table('suite_runs')
    op.drop_table('eval_suites')
    op.drop_table('rubrics')
    op.drop_table('evaluation_scorings')
    with op.batch_alter_table('evaluation_scores', schema=None) as batch_op:
        batch_op.drop_column('detail')
    with op.batch_alter_table('evaluation_samples', schema=None) as batch_op:
        batch_op.drop_column('outputs')
