"""USERS tab: blocked users, admins from Entra app roles, users by last sign-in

Revision ID: d41c7a9e2f08
Revises: c8e3f1a7d2b6
Create Date: 2026-11-28 20:20:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'd41c7a9e2f08'
down_revision = 'c8e3f1a7d2b6'
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMNs (SQLite has them): batch mode would copy the tables for nothing.
    op.add_column('users', sa.Column('blocked', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column('organizations', sa.Column('admins_from_entra', sa.Boolean(), server_default=sa.false(),
                                             nullable=False))
    op.create_index('ix_users_org_last_sign_in', 'users', ['organization_id', 'last_sign_in_at', 'id'], unique=False)


def downgrade():
    op.drop_index('ix_users_org_last_sign_in', table_name='users')
    # Plain DROP COLUMNs (SQLite 3.35+): batch mode's table copy would lose the expression index on names.
    op.drop_column('organizations', 'admins_from_entra')
    op.drop_column('users', 'blocked')
