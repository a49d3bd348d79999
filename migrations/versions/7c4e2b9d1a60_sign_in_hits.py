"""sign_in_hits: the sign-in throttles' counters, shared by every worker

Revision ID: 7c4e2b9d1a60
Revises: 3a9c51d2e7b4
Create Date: 2026-11-26 22:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = '7c4e2b9d1a60'
down_revision = '3a9c51d2e7b4'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('sign_in_hits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sign_in_hits', schema=None) as batch_op:
        batch_op.create_index('ix_sign_in_hits_key_at', ['key', 'at'], unique=False)
        batch_op.create_index(batch_op.f('ix_sign_in_hits_expires_at'), ['expires_at'], unique=False)


def downgrade():
    with op.batch_alter_table('sign_in_hits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sign_in_hits_expires_at'))
        batch_op.drop_index('ix_sign_in_hits_key_at')
    op.drop_table('sign_in_hits')
