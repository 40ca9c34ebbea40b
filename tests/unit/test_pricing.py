"""Pricing formula: hand-computed examples and properties."""

from __future__ import annotations

import dataclasses
import string
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.currency import MINOR_UNITS, UnknownCurrencyError
from app.pricing import (
    MAX_PLACES,
    InvoiceLine,
    LineKind,
    PricedRun,
    TariffPrices,
    Unit,
    Usage,
    price_run,
)

D = Decimal
KINDS = [LineKind.CPU, LineKind.MEMORY, LineKind.EXECUTION, LineKind.DURATION]


def tariff(
    currency: str = "USD",
    cpu: str = "0",
    gib: str = "0",
    execution: str = "0",
    second: str = "0",
    free_cpu: str = "0",
    free_gib: str = "0",
    free_executions: str = "0",
) -> TariffPrices:
    return TariffPrices(
        currency,
        D(cpu),
        D(gib),
        D(execution),
        D(second),
        D(free_cpu),
        D(free_gib),
        D(free_executions),
    )


def usage(cpu: str = "0", gib: str = "0", executions: str = "0", wall: str = "0") -> Usage:
    return Usage(D(cpu), D(gib), D(executions), D(wall))


def amounts(run: PricedRun) -> list[Decimal]:
    return [line.amount for line in run.lines]


# --- hand-computed examples -------------------------------------------------------------

LAMBDA_LIKE = tariff(cpu="0.000024", gib="0.0000025", execution="0.0000002", second="0.00001")


def test_small_run_rounds_to_zero_cents_but_is_exact_at_seven_places() -> None:
    # 2.0*0.000024 + 4.0*0.0000025 + 1*0.0000002 + 3.0*0.00001
    # = 0.000048 + 0.00001 + 0.0000002 + 0.00003 = 0.0000882
    run = usage(cpu="2.0", gib="4.0", executions="1", wall="3.0")
    assert price_run(run, LAMBDA_LIKE).total == D("0.00")
    assert amounts(price_run(run, LAMBDA_LIKE)) == [D("0.00")] * 4

    six = price_run(run, LAMBDA_LIKE, places=6)
    assert six.total == D("0.000088")
    assert amounts(six) == [D("0.000048"), D("0.000010"), D("0.000000"), D("0.000030")]

    seven = price_run(run, LAMBDA_LIKE, places=7)
    assert seven.total == D("0.0000882")
    assert amounts(seven) == [D("0.0000480"), D("0.0000100"), D("0.0000002"), D("0.0000300")]


def test_usd_run_lines_and_total() -> None:
    # cpu 12345.5*0.000024 = 0.296292, memory 20000*0.0000025 = 0.05,
    # execution 1*0.0000002 = 0.0000002, duration 6000*0.00001 = 0.06; total 0.4062922 -> 0.41.
    # Floors 0.29+0.05+0.00+0.06 = 0.40; the missing cent goes to cpu (largest remainder).
    run = price_run(usage(cpu="12345.5", gib="20000", executions="1", wall="6000"), LAMBDA_LIKE)
    assert run == PricedRun(
        currency="USD",
        lines=(
            InvoiceLine(
                LineKind.CPU, D("12345.5"), D("12345.5"), Unit.CPU_SECOND, D("0.000024"), D("0.30")
            ),
            InvoiceLine(
                LineKind.MEMORY, D("20000"), D("20000"), Unit.GIB_SECOND, D("0.0000025"), D("0.05")
            ),
            InvoiceLine(LineKind.EXECUTION, D(1), D(1), Unit.EXECUTION, D("0.0000002"), D("0.00")),
            InvoiceLine(LineKind.DURATION, D(6000), D(6000), Unit.SECOND, D("0.00001"), D("0.06")),
        ),
        total=D("0.41"),
    )


def test_jpy_has_no_minor_unit_and_naive_line_rounding_would_overcharge() -> None:
    # 1000*0.0036 = 3.6, 2000*0.0004 = 0.8, 1*0.03 = 0.03, 500*0.002 = 1.0; total 5.43 -> 5 yen.
    # Rounding each line would give 4+1+0+1 = 6; floors give 3+0+0+1 = 4 and the one missing
    # yen goes to memory (remainder 0.8 beats cpu's 0.6).
    jpy = tariff("JPY", cpu="0.0036", gib="0.0004", execution="0.03", second="0.002")
    run = price_run(usage(cpu="1000", gib="2000", executions="1", wall="500"), jpy)
    assert run.currency == "JPY"
    assert run.total == D(5)
    assert amounts(run) == [D(3), D(1), D(0), D(1)]
    assert run.total.as_tuple().exponent == 0


def test_bhd_rounds_to_three_places_with_two_remainders_handed_out() -> None:
    # 100*0.0001234 = 0.01234, 50*0.0000105 = 0.000525, 1*0.0005 = 0.0005, 30*0.00002 = 0.0006;
    # total 0.013965 -> 0.014. Floors 0.012+0+0+0; the two missing fils go to duration (0.0006)
    # and memory (0.000525), not to cpu (0.00034) or execution (0.0005).
    bhd = tariff("BHD", cpu="0.0001234", gib="0.0000105", execution="0.0005", second="0.00002")
    run = price_run(usage(cpu="100", gib="50", executions="1", wall="30"), bhd)
    assert run.total == D("0.014")
    assert amounts(run) == [D("0.012"), D("0.001"), D("0.000"), D("0.001")]


def test_largest_remainder_ties_go_to_the_earlier_line() -> None:
    # Three lines of exactly half a cent: 0.015 rounds half-even to 0.02. Per-line half-even
    # would show 0.00+0.00+0.00, per-line half-up 0.01*3 = 0.03; neither is the total.
    half_cents = tariff(cpu="0.001", gib="0.0005", execution="0.005")
    run = price_run(usage(cpu="5", gib="10", executions="1"), half_cents)
    assert run.total == D("0.02")
    assert amounts(run) == [D("0.01"), D("0.01"), D("0.00"), D("0.00")]


def test_remainder_goes_to_the_largest_remainder_not_the_first_line() -> None:
    # 0.003 + 0.004 + 0.003 = 0.010 -> 0.01, and only memory is rounded up.
    run = price_run(
        usage(cpu="3", gib="4", executions="3"), tariff(cpu="0.001", gib="0.001", execution="0.001")
    )
    assert run.total == D("0.01")
    assert amounts(run) == [D("0.00"), D("0.01"), D("0.00"), D("0.00")]


@pytest.mark.parametrize(
    ("currency", "exact", "total"),
    [
        ("USD", "0.125", "0.12"),
        ("USD", "0.135", "0.14"),
        ("USD", "0.1250001", "0.13"),
        ("JPY", "2.5", "2"),
        ("JPY", "3.5", "4"),
        ("BHD", "0.0125", "0.012"),
    ],
)
def test_total_rounds_half_even(currency: str, exact: str, total: str) -> None:
    run = price_run(usage(executions="1"), tariff(currency, execution=exact))
    assert run.total == D(total)
    zero = D(0).quantize(D(total))
    assert amounts(run) == [zero, zero, D(total), zero]


ALLOWANCE = tariff(
    cpu="0.01",
    gib="0.001",
    execution="0.1",
    second="0.0001",
    free_cpu="100",
    free_gib="1000",
    free_executions="10",
)


def test_allowance_partially_consumed() -> None:
    # cpu: 100 free - 60 used = 40 left, run 50 -> 10 billable * 0.01 = 0.10
    # memory: 1000 free - 1000 used = 0 left, run 200 -> 200 * 0.001 = 0.20
    # execution: 10 free - 3 used = 7 left, run 1 -> 0 billable
    # duration: no allowance, 100 * 0.0001 = 0.01
    run = price_run(
        usage(cpu="50", gib="200", executions="1", wall="100"),
        ALLOWANCE,
        used_this_month=usage(cpu="60", gib="1000", executions="3", wall="99999"),
    )
    assert [line.quantity for line in run.lines] == [D(50), D(200), D(1), D(100)]
    assert [line.billable_quantity for line in run.lines] == [D(10), D(200), D(0), D(100)]
    assert amounts(run) == [D("0.10"), D("0.20"), D("0.00"), D("0.01")]
    assert run.total == D("0.31")


def test_allowance_fully_consumed_and_overdrawn_bills_everything() -> None:
    # Earlier runs used more than the allowance: nothing is left, nothing goes negative.
    run = price_run(
        usage(cpu="50", gib="200", executions="2", wall="100"),
        ALLOWANCE,
        used_this_month=usage(cpu="250", gib="1000", executions="10"),
    )
    assert [line.billable_quantity for line in run.lines] == [D(50), D(200), D(2), D(100)]
    assert amounts(run) == [D("0.50"), D("0.20"), D("0.20"), D("0.01")]
    assert run.total == D("0.91")


def test_first_run_of_the_month_inside_the_allowance_is_free_except_duration() -> None:
    run = price_run(usage(cpu="50", gib="200", executions="1", wall="100"), ALLOWANCE)
    assert [line.billable_quantity for line in run.lines] == [D(0), D(0), D(0), D(100)]
    assert run.total == D("0.01")


def test_zero_usage_still_has_four_lines_in_order() -> None:
    run = price_run(Usage.zero(), LAMBDA_LIKE)
    assert [line.kind for line in run.lines] == KINDS
    assert [line.unit for line in run.lines] == [
        Unit.CPU_SECOND,
        Unit.GIB_SECOND,
        Unit.EXECUTION,
        Unit.SECOND,
    ]
    assert amounts(run) == [D("0.00")] * 4
    assert run.total == D("0.00")


def test_line_kind_units() -> None:
    assert [kind.unit for kind in KINDS] == ["cpu_second", "gib_second", "execution", "second"]
    assert [str(kind) for kind in KINDS] == ["cpu", "memory", "execution", "duration"]


def test_usage_zero_and_addition() -> None:
    assert Usage.zero() == usage()
    assert usage("1.5", "2", "1", "3") + usage("0.5", "1", "1", "0.25") == usage(
        "2.0", "3", "2", "3.25"
    )


def test_models_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LAMBDA_LIKE.price_cpu_second = D(1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Usage.zero().cpu_seconds = D(1)  # type: ignore[misc]


def test_negative_zero_is_normalised() -> None:
    run = price_run(usage(cpu="-0"), tariff(cpu="-0"))
    assert not any(line.amount.is_signed() or line.quantity.is_signed() for line in run.lines)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "price_cpu_second",
        "price_gib_second",
        "price_execution",
        "price_second",
        "free_cpu_seconds",
        "free_gib_seconds",
        "free_executions",
    ],
)
@pytest.mark.parametrize("bad", ["-0.000001", "NaN", "Infinity", "-Infinity", "sNaN"])
def test_tariff_rejects_negative_or_non_finite(field: str, bad: str) -> None:
    with pytest.raises(ValueError, match=field):
        # mypy cannot check a field chosen at run time; the value is wrong on purpose.
        dataclasses.replace(LAMBDA_LIKE, **{field: D(bad)})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["cpu_seconds", "gib_seconds", "executions", "wall_seconds"])
def test_usage_rejects_negative(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(Usage.zero(), **{field: D("-1")})


@pytest.mark.parametrize("bad", [0.1, 1, True, "0.1", None])
def test_only_decimals_are_accepted(bad: object) -> None:
    with pytest.raises(TypeError, match="price_second must be a Decimal"):
        dataclasses.replace(LAMBDA_LIKE, price_second=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wall_seconds must be a Decimal"):
        dataclasses.replace(Usage.zero(), wall_seconds=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", ["usd", "XAU", "HRK", "ABC", ""])
def test_tariff_in_unknown_currency_is_rejected(code: str) -> None:
    with pytest.raises(UnknownCurrencyError, match=repr(code)):
        tariff(code)


@pytest.mark.parametrize(("currency", "places"), [("USD", 1), ("BHD", 2), ("USD", MAX_PLACES + 1)])
def test_places_must_be_between_minor_unit_and_max(currency: str, places: int) -> None:
    with pytest.raises(ValueError, match="places"):
        price_run(Usage.zero(), tariff(currency), places=places)


def test_places_must_be_an_int() -> None:
    with pytest.raises(TypeError, match="places"):
        price_run(Usage.zero(), LAMBDA_LIKE, places=True)


# --- properties -----------------------------------------------------------------------------


def decimals(max_value: str, places: int) -> st.SearchStrategy[Decimal]:
    return st.decimals(
        min_value=0, max_value=D(max_value), places=places, allow_nan=False, allow_infinity=False
    )


quantities = decimals("1000000", 6)
prices = decimals("10", 9)
usages = st.builds(Usage, quantities, quantities, quantities, quantities)
currencies = st.sampled_from(sorted(MINOR_UNITS))
tariffs = st.builds(
    TariffPrices, currencies, prices, prices, prices, prices, quantities, quantities, quantities
)
free_tariffs = st.builds(
    TariffPrices,
    currencies,
    prices,
    prices,
    prices,
    prices,
    st.just(D(0)),
    st.just(D(0)),
    st.just(D(0)),
)


@st.composite
def places_for(draw: st.DrawFn, currency: str) -> int | None:
    return draw(st.none() | st.integers(MINOR_UNITS[currency], MAX_PLACES))


def exact_total(u: Usage, t: TariffPrices, used: Usage) -> Decimal:
    """The formula, written independently of app.pricing, at ample precision."""

    def left(quantity: Decimal, free: Decimal, spent: Decimal) -> Decimal:
        return max(D(0), quantity - max(D(0), free - spent))

    with localcontext(prec=200):
        return (
            left(u.cpu_seconds, t.free_cpu_seconds, used.cpu_seconds) * t.price_cpu_second
            + left(u.gib_seconds, t.free_gib_seconds, used.gib_seconds) * t.price_gib_second
            + left(u.executions, t.free_executions, used.executions) * t.price_execution
            + u.wall_seconds * t.price_second
        )


def step_of(run: PricedRun, places: int | None) -> Decimal:
    return D(1).scaleb(-(MINOR_UNITS[run.currency] if places is None else places))


@given(usages, tariffs, usages, st.data())
def test_lines_never_negative_and_sum_to_the_total(
    u: Usage, t: TariffPrices, used: Usage, data: st.DataObject
) -> None:
    places = data.draw(places_for(t.currency))
    run = price_run(u, t, used_this_month=used, places=places)
    assert [line.kind for line in run.lines] == KINDS
    assert all(line.amount >= 0 for line in run.lines)
    assert sum(amounts(run), D(0)) == run.total
    step = step_of(run, places)
    assert all(line.amount.as_tuple().exponent == step.as_tuple().exponent for line in run.lines)
    # Largest remainder only ever rounds a line's exact amount down or up by less than a step.
    with localcontext(prec=200):
        for line in run.lines:
            assert abs(line.amount - line.billable_quantity * line.unit_price) < step


@given(usages, tariffs, usages, st.data())
def test_total_is_the_exact_sum_rounded_half_even_once(
    u: Usage, t: TariffPrices, used: Usage, data: st.DataObject
) -> None:
    places = data.draw(places_for(t.currency))
    run = price_run(u, t, used_this_month=used, places=places)
    step = step_of(run, places)
    with localcontext(prec=200):
        assert run.total == exact_total(u, t, used).quantize(step, rounding=ROUND_HALF_EVEN)


@given(usages, usages, free_tariffs)
def test_total_is_linear_in_usage_without_allowance(a: Usage, b: Usage, t: TariffPrices) -> None:
    # At 28 places nothing is rounded away (6-place quantities times 9-place prices).
    def total(u: Usage) -> Decimal:
        return price_run(u, t, places=MAX_PLACES).total

    with localcontext(prec=200):
        assert total(a + a) == 2 * total(a)
        assert total(a + b) == total(a) + total(b)


@given(usages, tariffs, usages, st.data())
def test_allowance_never_makes_a_line_negative_nor_increases_the_total(
    u: Usage, t: TariffPrices, used: Usage, data: st.DataObject
) -> None:
    places = data.draw(places_for(t.currency))
    zero = D(0)
    no_allowance = dataclasses.replace(
        t, free_cpu_seconds=zero, free_gib_seconds=zero, free_executions=zero
    )
    with_allowance = price_run(u, t, used_this_month=used, places=places)
    without = price_run(u, no_allowance, used_this_month=used, places=places)
    for line, full in zip(with_allowance.lines, without.lines, strict=True):
        assert 0 <= line.billable_quantity <= line.quantity
        assert full.billable_quantity == full.quantity
        assert line.amount >= 0
    assert with_allowance.total <= without.total


@given(usages, tariffs, usages, usages)
def test_using_more_of_the_allowance_earlier_never_lowers_the_total(
    u: Usage, t: TariffPrices, used: Usage, more: Usage
) -> None:
    assert (
        price_run(u, t, used_this_month=used).total
        <= price_run(u, t, used_this_month=used + more).total
    )


@given(
    st.text(alphabet=string.ascii_letters, min_size=0, max_size=4).filter(
        lambda code: code not in MINOR_UNITS
    )
)
def test_unknown_currency_raises(code: str) -> None:
    with pytest.raises(UnknownCurrencyError):
        tariff(code)
