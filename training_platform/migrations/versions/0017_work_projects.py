"""pipelines (with their user), models and datasets belong to a project; the existing ones to `default`

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 00:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
TABLES = ('pipelines', 'models', 'datasets')


def upgrade() -> None:
    # Plain columns (no foreign key): added in place on SQLite, no table rebuild.
    for table in TABLES:
        op.add_column(table, sa.Column('project_id', sa.Integer(), nullable=True))
        op.create_index(op.f(f'ix_{table}_project_id'), table, ['project_id'], unique=False)
    op.add_column('pipelines', sa.Column('user_id', sa.Integer(), nullable=True))
    op.execute(sa.text('UPDATE pipelines SET project_id = 1'))
    # A model a job made is that job's project's.
    op.execute(sa.text(
        'UPDATE models SET project_id = (SELECT jobs.project_id FROM jobs WHERE jobs.id = models.job_id) '
        'WHERE job_id IS NOT NULL'
    ))


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(op.f(f'ix_{table}_project_id'), table_name=table)
        kwargs = {'sqlite_autoincrement': True} if table == 'pipelines' else {}
        with op.batch_alter_table(table, schema=None, table_kwargs=kwargs) as batch_op:
            if table == 'pipelines':
                batch_op.drop_column('user_id')
            batch_op.drop_column('project_id')
