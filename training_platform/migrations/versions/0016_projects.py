"""projects: GPU quotas and members; every job belongs to a project (the existing ones to `default`) and a user

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 21:30:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

import training_platform.core.types

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Batch operations rebuild the table on SQLite: jobs keeps AUTOINCREMENT (ids never reused).
KEEP_IDS = {'sqlite_autoincrement': True}


def upgrade() -> None:
    projects = op.create_table('projects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
    sa.Column('guaranteed_gpus', sa.Integer(), nullable=False),
    sa.Column('max_gpus', sa.Integer(), nullable=True),
    sa.Column('user_max_gpus', sa.Integer(), nullable=True),
    sa.Column('created_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('project_members',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('added_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('project_id', 'user_id')
    )
    op.bulk_insert(projects, [{
        'id': 1, 'name': 'default', 'description': 'Work submitted without a project.',
        'guaranteed_gpus': 0, 'max_gpus': None, 'user_max_gpus': None,
        'created_at': datetime.now(UTC),
    }])
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("SELECT setval('projects_id_seq', 1)")
    with op.batch_alter_table('jobs', schema=None, table_kwargs=KEEP_IDS) as batch_op:
        batch_op.add_column(sa.Column('project_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('user_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('preemptible', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('preempted_at', training_platform.core.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_user_id'), ['user_id'], unique=False)
        batch_op.create_foreign_key('fk_jobs_project_id_projects', 'projects', ['project_id'], ['id'])
        batch_op.create_foreign_key('fk_jobs_user_id_users', 'users', ['user_id'], ['id'])
    op.execute(sa.text('UPDATE jobs SET project_id = 1'))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None, table_kwargs=KEEP_IDS) as batch_op:
        batch_op.drop_constraint('fk_jobs_user_id_users', type_='foreignkey')
        batch_op.drop_constraint('fk_jobs_project_id_projects', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_user_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_project_id'))
        batch_op.drop_column('preempted_at')
        batch_op.drop_column('preemptible')
        batch_op.drop_column('user_id')
        batch_op.drop_column('project_id')
    op.drop_table('project_members')
    op.drop_table('projects')
