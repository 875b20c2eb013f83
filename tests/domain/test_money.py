"""Unit and property tests of domain.money: the rounding rules everything else rests on."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.money import distribute, klarna_tax_ok, net_of, per_unit, share, tax_of

SETTINGS = settings(max_examples=300, deadline=None)
amounts = st.integers(-100_000_000, 100_000_000)
rates = st.integers(0, 10_000)


@pytest.mark.parametrize(
    ("gross", "rate", "tax"),
    [
        (400, 2100, 69),  # seed 004: shoes, 331 net
        (300, 2100, 52),  # seed 004: socks, 248 net
        (315, 2000, 52),  # seed 004: 52.5 -> 52, the tie that picks half-even
        (840, 2000, 140),
        (1200, 2000, 200),
        (450, 2000, 75),
        (-630, 2000, -105),  # discount lines carry negative tax
        (6000, 2500, 1200),  # seed 000: the kettle
        (9, 2000, 2),  # 1.5 -> 2 (ties to even, upwards)
        (3, 2000, 0),  # 0.5 -> 0 (ties to even, downwards)
        (-9, 2000, -2),  # symmetric around zero
        (12345, 0, 0),
        (0, 2500, 0),
    ],
)
def test_tax_of_examples(gross: int, rate: int, tax: int) -> None:
    assert tax_of(gross, rate) == tax
    assert net_of(gross, rate) == gross - tax


def test_tax_of_rejects_negative_rate() -> None:
    with pytest.raises(ValueError, match="tax_rate"):
        tax_of(100, -1)


@SETTINGS
@given(amounts, rates)
def test_tax_of_is_nearest_and_passes_klarna(gross: int, rate: int) -> None:
    tax = tax_of(gross, rate)
    exact = Fraction(gross * rate, 10_000 + rate)
    assert abs(tax - exact) <= Fraction(1, 2)
    assert klarna_tax_ok(gross, tax, rate)
    assert tax_of(-gross, rate) == -tax
    assert net_of(gross, rate) + tax == gross


@pytest.mark.parametrize(
    ("total", "tax", "ok"),
    [(10_000, 2000, True), (10_000, 1999, True), (10_000, 2001, True), (10_000, 1998, False)],
)
def test_klarna_tax_tolerance_is_one_unit(total: int, tax: int, ok: bool) -> None:
    # 10000 at 25 %: exactly 2000 tax; Klarna accepts ±1.
    assert klarna_tax_ok(total, tax, 2500) is ok


def test_klarna_tax_tolerance_with_fractional_exact_value() -> None:
    # 100 at 25 % is exactly 20; 315 at 20 % is exactly 52.5: 51.5..53.5 → 52 and 53 pass.
    assert [t for t in range(49, 56) if klarna_tax_ok(315, t, 2000)] == [52, 53]
    assert [t for t in range(-56, -49) if klarna_tax_ok(-315, t, 2000)] == [-53, -52]


@pytest.mark.parametrize(
    ("amount", "part", "whole", "expected"),
    [
        (-630, 450, 2100, -135),  # the contract's capture of one pair of socks
        (-630, 2100, 2100, -630),
        (1000, 1, 3, 333),
        (1000, 2, 3, 667),
        (1, 1, 2, 1),  # half away from zero
        (-1, 1, 2, -1),
        (5, 0, 7, 0),
        (5, 0, 0, 0),
    ],
)
def test_share_examples(amount: int, part: int, whole: int, expected: int) -> None:
    assert share(amount, part, whole) == expected


@pytest.mark.parametrize(("part", "whole"), [(3, 2), (-1, 2), (1, -2)])
def test_share_rejects_parts_outside_the_whole(part: int, whole: int) -> None:
    with pytest.raises(ValueError, match="part"):
        share(100, part, whole)


@SETTINGS
@given(amounts, st.integers(1, 10_000), st.data())
def test_share_takes_what_is_left_and_stays_within_bounds(
    amount: int, whole: int, data: st.DataObject
) -> None:
    part = data.draw(st.integers(0, whole))
    taken = share(amount, part, whole)
    assert abs(taken - Fraction(amount * part, whole)) <= Fraction(1, 2)
    assert min(0, amount) <= taken <= max(0, amount)
    # Cumulative allocation: what is left, allocated over what is left, ends exactly.
    rest = share(amount - taken, whole - part, whole - part) if whole > part else 0
    assert taken + rest == amount


@pytest.mark.parametrize(
    ("amount", "weights", "parts"),
    [
        (100, [1, 1, 1], [33, 34, 33]),
        (-630, [1200, 900], [-360, -270]),
        (7, [0, 5, 0], [0, 7, 0]),
        (0, [0, 0], [0, 0]),
        (0, [], []),
    ],
)
def test_distribute_examples(amount: int, weights: list[int], parts: list[int]) -> None:
    assert distribute(amount, weights) == parts


def test_distribute_rejects_impossible_splits() -> None:
    with pytest.raises(ValueError, match="negative"):
        distribute(10, [1, -1, 2])
    with pytest.raises(ValueError, match="zero weight"):
        distribute(10, [0, 0])


@SETTINGS
@given(amounts, st.lists(st.integers(0, 1_000_000), min_size=1, max_size=12))
def test_distribute_adds_up_and_each_part_is_within_one(amount: int, weights: list[int]) -> None:
    total = sum(weights)
    if total == 0:
        weights = [*weights[:-1], 1]
        total = 1
    parts = distribute(amount, weights)
    assert sum(parts) == amount
    for part, weight in zip(parts, weights, strict=True):
        assert abs(part - Fraction(amount * weight, total)) < 1
        # Never the wrong sign: a discount's parts are all discounts.
        assert min(0, amount) <= part <= max(0, amount)


@SETTINGS
@given(amounts, st.integers(1, 200), rates)
def test_per_unit_groups_add_up_and_their_tax_passes_klarna(
    total: int, quantity: int, rate: int
) -> None:
    groups = per_unit(total, quantity, rate)
    assert sum(units for units, _, _ in groups) == quantity
    assert sum(units * amount for units, amount, _ in groups) == total
    tax = sum(units * unit_tax for units, _, unit_tax in groups)
    assert klarna_tax_ok(total, tax, rate)  # Klarna behind Adyen checks the whole line
    assert all(abs(unit_tax - tax_of(amount, rate)) <= 1 for _, amount, unit_tax in groups)


def test_per_unit_keeps_adyens_own_rounding_where_it_passes() -> None:
    assert per_unit(630, 2, 2000) == [(2, 315, 52)]  # seed 004: 104 of 105
    assert per_unit(3987, 3, 2000) == [(1, 1329, 222), (2, 1329, 221)]  # 664 of 664.5
