"""datasets: versions (a name points to its newest; jobs and evaluations pin theirs), analyses
and dedups

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import training_platform.core.types

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    versions = op.create_table('dataset_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('format', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('origin', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('parent', sa.Integer(), nullable=True),
    sa.Column('manifest', JSON, nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dataset_id', 'number')
    )
    op.create_index(op.f('ix_dataset_versions_dataset_id'), 'dataset_versions', ['dataset_id'], unique=False)
    op.create_table('dataset_analyses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('options', JSON, nullable=False),
    sa.Column('result', JSON, nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_dataset_analyses_dataset_id'), 'dataset_analyses', ['dataset_id'], unique=False)
    op.create_table('dataset_dedups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('options', JSON, nullable=False),
    sa.Column('review', JSON, nullable=True),
    sa.Column('accepted_version', sa.Integer(), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_dataset_dedups_dataset_id'), 'dataset_dedups', ['dataset_id'], unique=False)
    op.add_column('datasets', sa.Column('version', sa.Integer(), server_default='1', nullable=False))
    op.add_column('jobs', sa.Column('dataset_version', sa.Integer(), nullable=True))
    op.add_column('evaluations', sa.Column('dataset_version', sa.Integer(), nullable=True))

    # Every existing dataset's content becomes its version 1; jobs and evaluations used it.
    bind = op.get_bind()
    existing = bind.execute(sa.text(
        'SELECT id, name, path, format, "rows", size_bytes, sha256, source, created_at FROM datasets'
    )).all()
    if existing:
        op.bulk_insert(versions, [
            {
                'dataset_id': row.id, 'number': 1, 'path': row.path, 'format': row.format,
                'rows': row.rows, 'size_bytes': row.size_bytes, 'sha256': row.sha256,
                'origin': 'builtin' if row.source == 'builtin' else 'upload', 'parent': None,
                'manifest': {
                    'dataset': row.name, 'version': 1, 'format': row.format,
                    'file': {'path': row.path, 'sha256': row.sha256, 'size_bytes': row.size_bytes, 'rows': row.rows},
                    'origin': 'builtin' if row.source == 'builtin' else 'upload', 'parent': None,
                },
                'created_at': _aware(row.created_at),
            }
            for row in existing
        ])
    op.execute('UPDATE jobs SET dataset_version = 1 WHERE dataset_id IS NOT NULL')
    op.execute('UPDATE evaluations SET dataset_version = 1')


def _aware(value):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def downgrade() -> None:
    op.drop_column('evaluations', 'dataset_version')
    op.drop_column('jobs', 'dataset_version')
    op.drop_column('datasets', 'version')
    op.drop_index(op.f('ix_dataset_dedups_dataset_id'), table_name='dataset_dedups')
    op.drop_table('dataset_dedups')
    op.drop_index(op.f('ix_dataset_analyses_dataset_id'), table_name='dataset_analyses')
    op.drop_table('dataset_analyses')
    op.drop_index(op.f('ix_dataset_versions_dataset_id'), table_name='dataset_versions')
    op.drop_table('dataset_versions')
