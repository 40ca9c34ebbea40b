"""Tariff request and response models. Money and quantities are exact decimals, sent and
returned as JSON strings (numbers are accepted on input)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator

from app.currency import is_currency
from app.decimals import plain_decimal

Amount = Annotated[
    Decimal,
    Field(ge=0, max_digits=38, decimal_places=18, allow_inf_nan=False),
    PlainSerializer(plain_decimal, return_type=str, when_used="json"),
]
# Names never look like ids, so /v1/tariffs/{id-or-name} is unambiguous.
TariffName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
_EXAMPLE: dict[str, Any] = {
    "name": "pro-eur",
    "description": "Per-second billing in euros",
    "currency": "EUR",
    "price_cpu_second": "0.000022",
    "price_gib_second": "0.0000023",
    "price_execution": "0.0000003",
    "price_second": "0",
    "free_cpu_seconds": "100000",
    "free_gib_seconds": "200000",
    "free_executions": "1000000",
    "is_default": False,
}


def _currency(value: str) -> str:
    code = value.strip().upper()
    if not is_currency(code):
        raise ValueError(f"{value!r} is not an active ISO 4217 currency code")
    return code


class TariffFields(BaseModel):
    """Body of ``POST /v1/tariffs`` and ``PUT /v1/tariffs/{id}`` (a full replacement)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    name: TariffName
    description: str = Field(default="", max_length=2000)
    currency: str = Field(description="ISO 4217 code, e.g. USD")
    price_cpu_second: Amount
    price_gib_second: Amount
    price_execution: Amount
    price_second: Amount = Decimal(0)
    free_cpu_seconds: Amount = Decimal(0)
    free_gib_seconds: Amount = Decimal(0)
    free_executions: Amount = Decimal(0)
    is_default: bool = False

    _check_currency = field_validator("currency")(_currency)


class TariffPatch(BaseModel):
    """Body of ``PATCH /v1/tariffs/{id}``: only the fields to change."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"price_cpu_second": "0.00002"}]}
    )

    name: TariffName | None = None
    description: str | None = Field(default=None, max_length=2000)
    currency: str | None = None
    price_cpu_second: Amount | None = None
    price_gib_second: Amount | None = None
    price_execution: Amount | None = None
    price_second: Amount | None = None
    free_cpu_seconds: Amount | None = None
    free_gib_seconds: Amount | None = None
    free_executions: Amount | None = None
    is_default: bool | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Omitted means "unchanged"; an explicit null is a mistake, not a way to clear.
        if value is None:
            raise ValueError("may be omitted but not null")
        return value

    @field_validator("currency")
    @classmethod
    def _check_currency(cls, value: str | None) -> str | None:
        return None if value is None else _currency(value)


class TariffView(TariffFields):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": 2,
                    **_EXAMPLE,
                    "created_at": "2026-11-28T12:00:00Z",
                    "updated_at": "2026-11-28T12:00:00Z",
                    "deleted_at": None,
                }
            ]
        },
    )

    id: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
