"""User provisioning (SCIM): the organisation's token, provisioned users and groups

Revision ID: e7a1c3f5b902
Revises: d41c7a9e2f08
Create Date: 2026-12-06 01:20:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'e7a1c3f5b902'
down_revision = 'd41c7a9e2f08'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('scim_groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('scim_id', sa.String(length=32), nullable=False),
    sa.Column('name_hmac', sa.LargeBinary(length=32), nullable=False),
    sa.Column('name_enc', sa.LargeBinary(), nullable=False),
    sa.Column('external_id_hmac', sa.LargeBinary(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('scim_id')
    )
    op.create_index('ix_scim_groups_org_name', 'scim_groups', ['organization_id', 'name_hmac'], unique=False)
    op.create_index(op.f('ix_scim_groups_organization_id'), 'scim_groups', ['organization_id'], unique=False)
    op.create_table('scim_group_members',
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['scim_groups.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'user_id')
    )
    op.create_index(op.f('ix_scim_group_members_user_id'), 'scim_group_members', ['user_id'], unique=False)

    # Plain ADD COLUMNs (SQLite has them): batch mode would copy the tables and lose the expression index.
    op.add_column('users', sa.Column('scim_id', sa.String(length=32), nullable=True))
    op.add_column('users', sa.Column('scim_external_id_hmac', sa.LargeBinary(length=32), nullable=True))
    op.add_column('users', sa.Column('scim_data_enc', sa.LargeBinary(), nullable=True))
    # A unique index rather than a constraint: SQLite cannot add constraints to an existing table.
    op.create_index('uq_users_scim_id', 'users', ['scim_id'], unique=True)
    op.create_index('ix_users_org_scim_external_id', 'users', ['organization_id', 'scim_external_id_hmac'],
                    unique=False)
    op.add_column('audit_events', sa.Column('by_provisioning', sa.Boolean(), server_default=sa.false(),
                                            nullable=False))
    op.add_column('organizations', sa.Column('scim_token_hash', sa.String(length=64), nullable=True))
    op.add_column('organizations', sa.Column('scim_token_created_at', sa.DateTime(), nullable=True))
    op.add_column('organizations', sa.Column('scim_last_call_at', sa.DateTime(), nullable=True))
    op.create_index('uq_organizations_scim_token_hash', 'organizations', ['scim_token_hash'], unique=True)
    if op.get_context().dialect.supports_alter:
        op.add_column('organizations', sa.Column('scim_admin_group_id', sa.Integer(), nullable=True))
        op.create_foreign_key('organizations_scim_admin_group_id_fkey', 'organizations', 'scim_groups',
                              ['scim_admin_group_id'], ['id'])
    else:  # SQLite: the reference goes into ADD COLUMN itself (allowed for a column that
        # defaults to NULL); no ON DELETE, which SQLite's reflection would not read back (the domain clears it)
        op.execute('ALTER TABLE organizations ADD COLUMN scim_admin_group_id INTEGER '
                   'REFERENCES scim_groups (id)')


def downgrade():
    if op.get_context().dialect.supports_alter:
        op.drop_constraint('organizations_scim_admin_group_id_fkey', 'organizations', type_='foreignkey')
    op.drop_column('organizations', 'scim_admin_group_id')
    op.drop_index('uq_organizations_scim_token_hash', table_name='organizations')
    op.drop_column('organizations', 'scim_last_call_at')
    op.drop_column('organizations', 'scim_token_created_at')
    op.drop_column('organizations', 'scim_token_hash')
    op.drop_column('audit_events', 'by_provisioning')
    op.drop_index('ix_users_org_scim_external_id', table_name='users')
    op.drop_index('uq_users_scim_id', table_name='users')
    op.drop_column('users', 'scim_data_enc')
    op.drop_column('users', 'scim_external_id_hmac')
    op.drop_column('users', 'scim_id')
    op.drop_index(op.f('ix_scim_group_members_user_id'), table_name='scim_group_members')
    op.drop_table('scim_group_members')
    op.drop_index(op.f('ix_scim_groups_organization_id'), table_name='scim_groups')
    op.drop_index('ix_scim_groups_org_name', table_name='scim_groups')
    op.drop_table('scim_groups')
