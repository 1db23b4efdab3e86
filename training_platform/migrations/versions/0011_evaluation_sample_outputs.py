"""evaluation samples keep all n completions of a prompt (pass@k)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    # A new nullable column: SQLite adds it in place (no table rebuild).
    op.add_column('evaluation_samples', sa.Column('outputs', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('evaluation_samples', schema=None) as batch_op:
        batch_op.drop_column('outputs')
