"""users: an index on (organization_id, email_hmac), an organisation's user by email

Revision ID: b3e9f4a2c7d1
Revises: a6f2d8c1e4b7
Create Date: 2026-12-06 03:00:00

"""
from alembic import op


revision = 'b3e9f4a2c7d1'
down_revision = 'a6f2d8c1e4b7'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index('ix_users_org_email', ['organization_id', 'email_hmac'], unique=False)


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index('ix_users_org_email')
