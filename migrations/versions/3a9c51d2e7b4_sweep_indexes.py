"""indexes for the session sweep: login_sessions times, stored_profiles (kept, session_id)

Revision ID: 3a9c51d2e7b4
Revises: 0f605562da04
Create Date: 2026-11-26 20:15:00

"""
from alembic import op


revision = '3a9c51d2e7b4'
down_revision = '0f605562da04'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_sessions_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_login_sessions_last_seen_at'), ['last_seen_at'], unique=False)
    with op.batch_alter_table('stored_profiles', schema=None) as batch_op:
        batch_op.create_index('ix_stored_profiles_kept_session_id', ['kept', 'session_id'], unique=False)


def downgrade():
    with op.batch_alter_table('stored_profiles', schema=None) as batch_op:
        batch_op.drop_index('ix_stored_profiles_kept_session_id')
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_sessions_last_seen_at'))
        batch_op.drop_index(batch_op.f('ix_login_sessions_created_at'))
