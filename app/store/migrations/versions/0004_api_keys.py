"""tenant API keys (hashes only)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from app.store.models import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("name", sa.String(64), nullable=False, server_default=""),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ux_api_keys_secret_sha256", "api_keys", ["secret_sha256"], unique=True)
    op.create_index("ix_api_keys_email", "api_keys", ["email", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_email", "api_keys")
    op.drop_index("ux_api_keys_secret_sha256", "api_keys")
    op.drop_table("api_keys")
