"""rate_counts: fixed-window rate limit counts (the SCIM endpoint's), one row per key, shared by every worker

Revision ID: a6f2d8c1e4b7
Revises: e7a1c3f5b902
Create Date: 2026-12-06 02:40:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'a6f2d8c1e4b7'
down_revision = 'e7a1c3f5b902'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('rate_counts',
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('rate_counts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rate_counts_expires_at'), ['expires_at'], unique=False)


def downgrade():
    with op.batch_alter_table('rate_counts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rate_counts_expires_at'))
    op.drop_table('rate_counts')
