"""ISO 4217 currency codes and their minor units (digits after the decimal point)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# ISO 4217 list one as published 2026-01-01 (after amendment 179: XAD, XCG and ZWG added;
# ANG, BGN, CUC, HRK, SLL and ZWL withdrawn), grouped by minor unit so each code is
# written once. Fund codes (BOV, CHE, CLF, USN, ...) are included: they have minor units.
_CODES_BY_MINOR_UNIT: Final[Mapping[int, str]] = {
    0: """
        BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF
    """,
    2: """
        AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP
        BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB
        EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES
        KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR
        MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD
        RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP
        TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XAD XCD XCG YER ZAR ZMW ZWG
    """,
    3: """
        BHD IQD JOD KWD LYD OMR TND
    """,
    4: """
        CLF UYW
    """,
}

# Active codes whose minor unit is "N.A." (metals, bond units, SDR, test, no currency):
# amounts in them cannot be rounded to a minor unit, so they are not billable.
_NO_MINOR_UNIT: Final = frozenset(
    {"XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX"}
)

_CODE = re.compile(r"[A-Z]{3}")


def _build(groups: Mapping[int, str]) -> Mapping[str, int]:
    table: dict[str, int] = {}
    for digits, codes in groups.items():
        for code in codes.split():
            # A code listed twice would silently take the later minor unit.
            if code in table or not _CODE.fullmatch(code):
                raise RuntimeError(f"bad ISO 4217 table entry {code!r}")
            table[code] = digits
    return MappingProxyType(table)


MINOR_UNITS: Final[Mapping[str, int]] = _build(_CODES_BY_MINOR_UNIT)
"""Read-only ``code -> minor unit digits`` for every billable active ISO 4217 code."""


class UnknownCurrencyError(ValueError):
    """``code`` is not an active ISO 4217 code with a minor unit."""

    def __init__(self, code: str) -> None:
        self.code = code
        if not isinstance(code, str):
            reason = f"a currency code is a str, got {type(code).__name__}"
        elif code in _NO_MINOR_UNIT:
            reason = "it has no minor unit (metal, bond unit, SDR, test) and cannot be billed"
        elif code.upper() in MINOR_UNITS:
            reason = f"currency codes are upper-case, use {code.upper()!r}"
        else:
            reason = "it is not an active ISO 4217 code"
        super().__init__(f"unknown currency {code!r}: {reason}")


def is_currency(code: str) -> bool:
    """True if ``code`` is an active, upper-case ISO 4217 code that has a minor unit."""
    # isinstance: an unhashable argument must answer False, not raise TypeError.
    return isinstance(code, str) and code in MINOR_UNITS


def minor_units(code: str) -> int:
    """Digits of the minor unit of ``code`` (USD 2, JPY 0, BHD 3); raises UnknownCurrencyError."""
    try:
        return MINOR_UNITS[code]
    except (KeyError, TypeError):
        raise UnknownCurrencyError(code) from None
