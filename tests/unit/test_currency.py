"""ISO 4217 minor units table."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.currency import MINOR_UNITS, UnknownCurrencyError, is_currency, minor_units


@pytest.mark.parametrize(
    ("code", "digits"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("CHF", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("CLP", 0),
        ("ISK", 0),
        ("VND", 0),
        ("XOF", 0),
        ("BHD", 3),
        ("KWD", 3),
        ("JOD", 3),
        ("TND", 3),
        ("CLF", 4),
        ("UYW", 4),
        # Introduced by recent amendments.
        ("SLE", 2),
        ("VED", 2),
        ("XCG", 2),
        ("ZWG", 2),
    ],
)
def test_minor_units_of_known_codes(code: str, digits: int) -> None:
    assert minor_units(code) == digits
    assert is_currency(code)


def test_table_covers_all_billable_active_codes() -> None:
    # 178 active list-one codes minus 13 whose minor unit is "N.A.".
    assert len(MINOR_UNITS) == 165
    assert all(len(code) == 3 and code.isascii() and code.isupper() for code in MINOR_UNITS)
    assert set(MINOR_UNITS.values()) == {0, 2, 3, 4}


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        MINOR_UNITS["ABC"] = 2  # type: ignore[index]


@pytest.mark.parametrize("code", ["usd", "Usd", "jpy"])
def test_lower_case_is_rejected_with_a_hint(code: str) -> None:
    assert not is_currency(code)
    with pytest.raises(UnknownCurrencyError, match=code.upper()) as raised:
        minor_units(code)
    assert raised.value.code == code


@pytest.mark.parametrize("code", ["XAU", "XAG", "XDR", "XTS", "XXX"])
def test_codes_without_minor_unit_are_not_billable(code: str) -> None:
    assert not is_currency(code)
    with pytest.raises(UnknownCurrencyError, match=f"'{code}'.*no minor unit"):
        minor_units(code)


@pytest.mark.parametrize(
    "code", ["HRK", "ANG", "ZWL", "SLL", "CUC", "ABC", "", "US", "USDX", " USD"]
)
def test_withdrawn_or_malformed_codes_are_unknown(code: str) -> None:
    assert not is_currency(code)
    with pytest.raises(UnknownCurrencyError, match=repr(code)):
        minor_units(code)


def test_unknown_currency_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not an active ISO 4217 code"):
        minor_units("ABC")


def test_unhashable_input_is_not_a_currency() -> None:
    assert not is_currency(["USD"])  # type: ignore[arg-type]
    with pytest.raises(UnknownCurrencyError):
        minor_units(["USD"])  # type: ignore[arg-type]


@given(st.text(alphabet=string.ascii_uppercase, min_size=3, max_size=3))
def test_is_currency_agrees_with_minor_units(code: str) -> None:
    if is_currency(code):
        assert minor_units(code) == MINOR_UNITS[code]
    else:
        with pytest.raises(UnknownCurrencyError):
            minor_units(code)


@given(st.text().filter(lambda code: code not in MINOR_UNITS))
def test_anything_else_raises_unknown_currency(code: str) -> None:
    with pytest.raises(UnknownCurrencyError):
        minor_units(code)
