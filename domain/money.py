"""Exact money arithmetic in integer minor units.

No floats anywhere: every division is done on integers with an explicit rounding rule,
so the same inputs give the same cents on every machine and in every language.
"""

from __future__ import annotations

from collections.abc import Sequence

BASIS_POINTS = 10_000


def _round_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, ties to even."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def _round_half_away(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, ties away from zero."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    sign = -1 if numerator < 0 else 1
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return sign * quotient


def tax_of(gross: int, tax_rate: int) -> int:
    """The tax contained in a tax-inclusive amount; `tax_rate` in basis points (2000 = 20 %).

    Ties go to even: that is the rule that reproduces every figure of Adyen's Klarna
    examples (315 at 20 % → 52 tax, 263 net) and it lies within Klarna's ±1 tolerance of
    `total − total × 10000 / (10000 + tax_rate)` by construction.
    """
    if tax_rate < 0:
        raise ValueError("tax_rate must not be negative")
    return _round_half_even(gross * tax_rate, BASIS_POINTS + tax_rate)


def net_of(gross: int, tax_rate: int) -> int:
    """The amount excluding tax, so that net + tax == gross exactly."""
    return gross - tax_of(gross, tax_rate)


def klarna_tax_ok(total_amount: int, total_tax_amount: int, tax_rate: int) -> bool:
    """Klarna's rule: the tax is within ±1 of total − total × 10000 / (10000 + tax_rate)."""
    # |tax − (total − total·10000/(10000+r))| ≤ 1, multiplied through by (10000 + r).
    denominator = BASIS_POINTS + tax_rate
    exact_times_denominator = total_amount * tax_rate
    return abs(total_tax_amount * denominator - exact_times_denominator) <= denominator


def per_unit(total: int, quantity: int, tax_rate: int) -> list[tuple[int, int, int]]:
    """(units, amount per unit, tax per unit) groups that add up to `total` exactly, and
    whose taxes add up to within Klarna's ±1 of the tax in `total`.

    For Adyen and classic openinvoice, which speak per unit. A total that does not divide
    by the quantity puts the remainder units one cent dearer. Each unit's tax is rounded
    on its own, as Adyen's examples do (seed 004: two socks at 315 carry 52 each, 104 of
    the line's 105); where that, repeated over the units, leaves the line's tax beyond
    Klarna's ±1 (which Klarna behind Adyen checks on the whole line: 3 × 1329 at 20 % is
    3 × 222 = 666 of 664.5), as few units as bring it back carry one cent more or less.
    """
    if quantity <= 0:
        return []
    unit, remainder = divmod(total, quantity)
    amounts = [(quantity - remainder, unit)] + ([(remainder, unit + 1)] if remainder else [])
    taxed = [(units, amount, tax_of(amount, tax_rate)) for units, amount in amounts]
    naive = sum(units * tax for units, _, tax in taxed)
    off = 0 if klarna_tax_ok(total, naive, tax_rate) else tax_of(total, tax_rate) - naive
    groups: list[tuple[int, int, int]] = []
    for units, amount, tax in taxed:
        step = 1 if off > 0 else -1
        moved = min(abs(off), units)
        off -= step * moved
        groups.append((units - moved, amount, tax))
        groups.append((moved, amount, tax + step))
    return [group for group in groups if group[0]]


def share(amount: int, part: int, whole: int) -> int:
    """`amount × part / whole`, rounded half away from zero; all of `amount` when part == whole.

    Used for cumulative allocation: allocating the *remaining* amount over the *remaining*
    weight means the last share takes exactly what is left, so shares always add up.
    """
    if whole == 0 or part == 0:
        return 0
    if part == whole:
        return amount
    if whole < 0 or part < 0 or part > whole:
        raise ValueError("need 0 ≤ part ≤ whole")
    return _round_half_away(amount * part, whole)


def distribute(amount: int, weights: Sequence[int]) -> list[int]:
    """Split `amount` over non-negative weights so the parts sum to `amount` exactly.

    Walks the weights cumulatively (each part is the rounded cumulative share minus what
    was handed out before), which keeps every part within one unit of its exact value.
    """
    total_weight = sum(weights)
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    if total_weight == 0:
        if amount != 0 and weights:
            raise ValueError("cannot distribute a non-zero amount over zero weight")
        return [0 for _ in weights]
    parts: list[int] = []
    handed_out = 0
    cumulative_weight = 0
    for weight in weights:
        cumulative_weight += weight
        target = share(amount, cumulative_weight, total_weight)
        parts.append(target - handed_out)
        handed_out = target
    return parts
