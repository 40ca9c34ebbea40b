"""How exact decimals are written: fixed-point, no exponent, no trailing zeros."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import PlainSerializer


def plain_decimal(value: Decimal) -> str:
    """``Decimal("3E-7")`` -> ``"0.0000003"``; ``Decimal("2.500")`` -> ``"2.5"``."""
    return format(value.normalize(), "f")


# A Decimal that JSON carries as a string, so no client rounds it through a float.
DecimalString = Annotated[
    Decimal, PlainSerializer(plain_decimal, return_type=str, when_used="json")
]
