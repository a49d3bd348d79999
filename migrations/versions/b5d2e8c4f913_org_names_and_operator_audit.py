"""organisation names unique without regard to case; audit events by the operator

Revision ID: b5d2e8c4f913
Revises: 7c4e2b9d1a60
Create Date: 2026-11-28 19:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'b5d2e8c4f913'
down_revision = '7c4e2b9d1a60'
branch_labels = None
depends_on = None


def upgrade():
    clashes = op.get_bind().execute(sa.text(
        "SELECT id, name FROM organizations WHERE lower(name) IN "
        "(SELECT lower(name) FROM organizations GROUP BY lower(name) HAVING count(*) > 1) ORDER BY id")).all()
    if clashes:
        names = ", ".join(f"{name!r} (id {id_})" for id_, name in clashes)
        raise RuntimeError(f"Organisation names must differ in more than case, and these do not: {names}. Rename "
                           "all but one (UPDATE organizations SET name = '...' WHERE id = ...) and upgrade again.")
    op.create_index('uq_organizations_name_lower', 'organizations', [sa.text('lower(name)')], unique=True)
    # A plain ADD COLUMN (SQLite has it): batch mode would copy the table for nothing.
    op.add_column('audit_events', sa.Column('by_operator', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade():
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_column('by_operator')
    op.drop_index('uq_organizations_name_lower', table_name='organizations')
