"""tariffs, the single-default rule, and the tariff a run was started under

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

from app.store.models import DecimalText, UtcDateTime
from app.tariffs.defaults import DEFAULT_TARIFF_DESCRIPTION, DEFAULT_TARIFF_PRICES

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_PRICES = (
    "price_cpu_second",
    "price_gib_second",
    "price_execution",
    "price_second",
    "free_cpu_seconds",
    "free_gib_seconds",
    "free_executions",
)


def upgrade() -> None:
    op.create_table(
        "tariffs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("currency", sa.String(3), nullable=False),
        *(sa.Column(name, DecimalText(), nullable=False) for name in _PRICES),
        sa.Column("is_default", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("deleted_at", UtcDateTime(), nullable=True),
        sa.CheckConstraint("NOT (is_default AND deleted_at IS NOT NULL)", name="ck_default_alive"),
    )
    # The database itself refuses a second default and a duplicate live name.
    op.create_index(
        "uq_tariffs_one_default",
        "tariffs",
        ["is_default"],
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    )
    op.create_index(
        "uq_tariffs_live_name",
        "tariffs",
        ["name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    locks = op.create_table(
        "locks",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False, server_default="0"),
    )
    op.bulk_insert(locks, [{"name": "tariffs", "version": 0}])
    seed_default_tariff()
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("tariff_id", sa.Integer(), nullable=True))


def seed_default_tariff() -> None:
    """The default tariff every platform starts with; prices documented in the README."""
    now = datetime.now(UTC)
    tariffs = sa.table(
        "tariffs",
        sa.column("name", sa.String()),
        sa.column("description", sa.Text()),
        sa.column("currency", sa.String()),
        *(sa.column(name, DecimalText()) for name in _PRICES),
        sa.column("is_default", sa.Boolean()),
        sa.column("created_at", UtcDateTime()),
        sa.column("updated_at", UtcDateTime()),
    )
    op.bulk_insert(
        tariffs,
        [
            {
                "name": "standard",
                "description": DEFAULT_TARIFF_DESCRIPTION,
                "currency": "USD",
                **{name: Decimal(value) for name, value in DEFAULT_TARIFF_PRICES.items()},
                "is_default": True,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("tariff_id")
    op.drop_table("locks")
    op.drop_table("tariffs")
