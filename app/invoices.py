"""Invoices and the ``faas.invoices`` events (JSON, key = tenant email)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.decimals import DecimalString
from app.events import EVENT_VERSION

Money = DecimalString


class InvoiceLineView(BaseModel):
    kind: Literal["cpu", "memory", "execution", "duration"]
    quantity: Money  # measured
    billable_quantity: Money  # after the tenant's remaining monthly free allowance
    unit: Literal["cpu_second", "gib_second", "execution", "second"]
    unit_price: Money
    amount: Money


class MemoryPoint(BaseModel):
    """One point of the run's memory curve (for the chart in the email)."""

    t_s: float  # seconds since the run started
    bytes: int


class Invoice(BaseModel):
    invoice_id: str  # "<run_id>" — versions of one run's invoice share it
    run_id: str
    tenant: str
    image_name: str
    tariff: str
    tariff_id: int
    version: int = Field(ge=1)
    started_at: datetime
    finished_at: datetime
    currency: str
    total: Money
    lines: list[InvoiceLineView]
    created_at: datetime
    memory_series: list[MemoryPoint] = Field(default_factory=list)


class InvoiceEvent(BaseModel):
    type: Literal["invoice.created", "invoice.revised"]
    version: int = EVENT_VERSION
    event_id: str  # "<run_id>:v<version>": redelivery keeps the id
    event_time: datetime
    run_id: str
    tenant: str
    invoice: Invoice
    previous_total: Money | None = None  # set on invoice.revised
