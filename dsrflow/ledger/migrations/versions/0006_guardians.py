"""A guardian acting for the subject (policy 7.x): who they are to the subject and how
their guardianship was verified (their identities stay in the encrypted subject blob).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("guardian_relation", sa.String(32)))
        batch.add_column(sa.Column("guardian_verification_method", sa.String(64)))
        batch.add_column(sa.Column("guardian_verified_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("guardian_verified_at")
        batch.drop_column("guardian_verification_method")
        batch.drop_column("guardian_relation")
