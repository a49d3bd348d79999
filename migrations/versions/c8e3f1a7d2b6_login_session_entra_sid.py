"""login sessions keep the hash of the Microsoft session (ID token `sid`) they came from

Revision ID: c8e3f1a7d2b6
Revises: b5d2e8c4f913
Create Date: 2026-11-28 20:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'c8e3f1a7d2b6'
down_revision = 'b5d2e8c4f913'
branch_labels = None
depends_on = None


def upgrade():
    # A plain ADD COLUMN and CREATE INDEX (SQLite has both): batch mode would copy the table for nothing.
    op.add_column('login_sessions', sa.Column('entra_sid_hash', sa.String(length=64), nullable=True))
    op.create_index(op.f('ix_login_sessions_entra_sid_hash'), 'login_sessions', ['entra_sid_hash'], unique=False)


def downgrade():
    op.drop_index(op.f('ix_login_sessions_entra_sid_hash'), table_name='login_sessions')
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.drop_column('entra_sid_hash')
