"""Pure pricing of one run: exact line amounts, one half-even rounding, largest remainder."""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from dataclasses import dataclass, fields
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Final, Self

from app.currency import minor_units

ZERO: Final = Decimal(0)

# Finer than any real tariff needs; the bound keeps quantize() from building huge numbers.
MAX_PLACES: Final = 28

# Products and sums of Decimals are exact when precision cannot run out, so every amount
# before the single rounding step is the true value, not a 28-digit approximation.
_EXACT: Final = decimal.Context(
    prec=decimal.MAX_PREC,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    rounding=ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)


class LineKind(StrEnum):
    """What an invoice line charges for; ``unit`` is what its quantity counts."""

    CPU = "cpu"
    MEMORY = "memory"
    EXECUTION = "execution"
    DURATION = "duration"

    @property
    def unit(self) -> Unit:
        return _UNIT_OF[self]


class Unit(StrEnum):
    """Unit of a line's quantity and unit price."""

    CPU_SECOND = "cpu_second"
    GIB_SECOND = "gib_second"
    EXECUTION = "execution"
    SECOND = "second"


_UNIT_OF: Final = {
    LineKind.CPU: Unit.CPU_SECOND,
    LineKind.MEMORY: Unit.GIB_SECOND,
    LineKind.EXECUTION: Unit.EXECUTION,
    LineKind.DURATION: Unit.SECOND,
}


def _check_decimals(instance: Usage | TariffPrices) -> None:
    for field in fields(instance):
        if field.name == "currency":
            continue
        value = getattr(instance, field.name)
        # Floats would carry binary rounding error into invoices, so only Decimal is accepted.
        if not isinstance(value, Decimal):
            raise TypeError(f"{field.name} must be a Decimal, got {type(value).__name__}")
        if not value.is_finite() or value < 0:
            raise ValueError(f"{field.name} must be a finite Decimal >= 0, got {value}")
        # -0 is normalised so that no amount is ever shown as "-0.00"; copy_abs is exact.
        object.__setattr__(instance, field.name, value.copy_abs())


@dataclass(frozen=True, slots=True)
class Usage:
    """What one run (or a month of runs) consumed."""

    cpu_seconds: Decimal
    gib_seconds: Decimal
    executions: Decimal
    wall_seconds: Decimal

    def __post_init__(self) -> None:
        _check_decimals(self)

    @classmethod
    def zero(cls) -> Self:
        return cls(ZERO, ZERO, ZERO, ZERO)

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        with decimal.localcontext(_EXACT):
            return Usage(
                self.cpu_seconds + other.cpu_seconds,
                self.gib_seconds + other.gib_seconds,
                self.executions + other.executions,
                self.wall_seconds + other.wall_seconds,
            )


@dataclass(frozen=True, slots=True)
class TariffPrices:
    """Unit prices of a tariff and its monthly free allowance per tenant."""

    currency: str
    price_cpu_second: Decimal
    price_gib_second: Decimal
    price_execution: Decimal
    price_second: Decimal
    free_cpu_seconds: Decimal
    free_gib_seconds: Decimal
    free_executions: Decimal

    def __post_init__(self) -> None:
        minor_units(self.currency)  # raises UnknownCurrencyError early, not at billing time
        _check_decimals(self)


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One priced quantity; ``amount`` is already rounded to the run's places."""

    kind: LineKind
    quantity: Decimal
    billable_quantity: Decimal
    unit: Unit
    unit_price: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class PricedRun:
    """Lines in the order cpu, memory, execution, duration; their amounts sum to ``total``."""

    currency: str
    lines: tuple[InvoiceLine, ...]
    total: Decimal


def _billable(quantity: Decimal, free: Decimal, used: Decimal) -> Decimal:
    remaining = max(ZERO, free - used)
    return max(ZERO, quantity - remaining)


def _distribute(exact: Sequence[Decimal], total: Decimal, places: int) -> list[Decimal]:
    """Split ``total`` over lines: each gets its exact amount floored or ceiled to ``places``.

    The lines with the largest remainders (ties: earlier line first) get one more step.
    """
    step = Decimal(1).scaleb(-places)
    floors = [amount.quantize(step, rounding=ROUND_FLOOR) for amount in exact]
    missing = int((total - sum(floors, ZERO)).scaleb(places))
    # total is the half-even rounding of sum(exact), so 0 <= missing <= lines with a remainder.
    if not 0 <= missing <= len(exact):
        raise AssertionError(f"cannot distribute {total} over {exact}")
    by_remainder = sorted(range(len(exact)), key=lambda i: (floors[i] - exact[i], i))
    for i in by_remainder[:missing]:
        floors[i] += step
    return floors


def _places(currency: str, places: int | None) -> int:
    minor = minor_units(currency)
    if places is None:
        return minor
    if isinstance(places, bool) or not isinstance(places, int):
        raise TypeError(f"places must be an int or None, got {type(places).__name__}")
    if not minor <= places <= MAX_PLACES:
        raise ValueError(
            f"places must be between {currency} minor unit {minor} and {MAX_PLACES}, got {places}"
        )
    return places


def price_run(
    usage: Usage,
    tariff: TariffPrices,
    *,
    used_this_month: Usage = Usage.zero(),  # noqa: B008 - Usage is frozen, sharing it is safe
    places: int | None = None,
) -> PricedRun:
    """Price one run after the tenant's remaining free allowance; lines sum to the total."""
    digits = _places(tariff.currency, places)
    t, u, used = tariff, usage, used_this_month
    rows = (
        (LineKind.CPU, u.cpu_seconds, t.price_cpu_second, t.free_cpu_seconds, used.cpu_seconds),
        (LineKind.MEMORY, u.gib_seconds, t.price_gib_second, t.free_gib_seconds, used.gib_seconds),
        (LineKind.EXECUTION, u.executions, t.price_execution, t.free_executions, used.executions),
        # Wall-clock time has no free allowance.
        (LineKind.DURATION, u.wall_seconds, t.price_second, ZERO, ZERO),
    )
    with decimal.localcontext(_EXACT):
        billable = [_billable(quantity, free, spent) for _, quantity, _, free, spent in rows]
        exact = [qty * price for qty, (_, _, price, _, _) in zip(billable, rows, strict=True)]
        total = sum(exact, ZERO).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_EVEN)
        amounts = _distribute(exact, total, digits)
    lines = tuple(
        InvoiceLine(kind, quantity, qty, kind.unit, price, amount)
        for (kind, quantity, price, _, _), qty, amount in zip(rows, billable, amounts, strict=True)
    )
    return PricedRun(currency=tariff.currency, lines=lines, total=total)
