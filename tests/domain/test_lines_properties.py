"""Property tests of domain.lines over random baskets and shipping/return histories.

The planner's order of work is followed: after every change in the shop, capture what
has newly shipped, then refund what has newly come back. Every request is checked the
way Klarna and Adyen would check it, and the ledger is checked after every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.lines import (
    Ledger,
    LineLedger,
    PspLine,
    adyen_line_items,
    basket_lines,
    capture_lines,
    klarna_order_lines,
    ledger_from,
    lines_total,
    openinvoice_data,
    refund_lines,
    shipped_quantity,
)
from domain.money import klarna_tax_ok, tax_of
from domain.snapshot import REDUCING_TYPES, LineType, OrderSnapshot

TAX_RATES = [0, 600, 700, 1000, 1200, 2000, 2100, 2500]
PRODUCT_TYPES = [LineType.PHYSICAL, LineType.DIGITAL, LineType.SHIPPING_FEE, LineType.SURCHARGE]
REDUCING = [LineType.DISCOUNT, LineType.STORE_CREDIT, LineType.GIFT_CARD]

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def product_line(draw: st.DrawFn, index: int) -> dict[str, Any]:
    quantity = draw(st.integers(1, 5))
    unit_price = draw(st.one_of(st.just(0), st.integers(1, 30_000)))
    tax_rate = draw(st.sampled_from(TAX_RATES))
    gross = quantity * unit_price
    discount = draw(st.one_of(st.just(0), st.integers(0, gross)))
    data: dict[str, Any] = {
        "id": f"p{index}",
        "name": f"Product {index}",
        "type": draw(st.sampled_from(PRODUCT_TYPES)).value,
        "quantity": quantity,
        "unit_price": unit_price,
        "tax_rate": tax_rate,
        "total_discount_amount": discount,
    }
    if draw(st.booleans()):
        data["product_url"] = f"https://shop.example/p/{index}"
    if draw(st.booleans()):
        # Shops may round tax their own way, within Klarna's ±1.
        total = gross - discount
        tax = tax_of(total, tax_rate) + draw(st.sampled_from([-1, 0, 1]))
        if klarna_tax_ok(total, tax, tax_rate):
            data["total_tax_amount"] = tax
    return data


@st.composite
def baskets(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 8))
    products = [draw(product_line(i)) for i in range(count)]
    left = sum(p["quantity"] * p["unit_price"] - p["total_discount_amount"] for p in products)
    reducing: list[dict[str, Any]] = []
    for j in range(draw(st.integers(0, 2))):
        quantity = draw(st.sampled_from([1, 1, 1, 2]))
        # Discounts up to the whole remaining value: the edge where an order costs 0.
        magnitude = draw(st.integers(0, left // quantity))
        left -= quantity * magnitude
        reducing.append(
            {
                "id": f"d{j}",
                "name": f"Discount {j}",
                "type": draw(st.sampled_from(REDUCING)).value,
                "quantity": quantity,
                "unit_price": -magnitude,
                "tax_rate": draw(st.sampled_from(TAX_RATES)),
            }
        )
    return products + reducing


@dataclass
class History:
    """The requests made for one order, and the ledger they add up to."""

    operations: list[tuple[str, list[PspLine]]]

    @property
    def ledger(self) -> Ledger:
        return ledger_from(self.operations)

    def total(self, kind: str) -> int:
        return sum(lines_total(lines) for k, lines in self.operations if k == kind)


def snapshot(
    lines: list[dict[str, Any]],
    amount: int | None,
    shipped: Sequence[int],
    returned: Sequence[int],
) -> OrderSnapshot:
    data = [
        {**line, "shipped_quantity": s, "returned_quantity": r}
        if line["type"] not in REDUCING_TYPES
        else line
        for line, s, r in zip(lines, shipped, returned, strict=True)
    ]
    return OrderSnapshot.model_validate(
        {
            "id": "o1",
            "version": 1,
            "currency": "EUR",
            "country": "DE",
            "payment": {"provider": "klarna", "klarna_order_id": "k1"},
            "lines": data,
            "amount": amount,
        }
    )


def check_request(order: OrderSnapshot, lines: list[PspLine]) -> int:
    """What Klarna and Adyen check of one request's lines; returns its amount."""
    amount = lines_total(lines)
    assert amount >= 0
    by_id = {line.id: line for line in order.effective_lines}
    for psp in lines:
        assert psp.quantity >= 1
        assert psp.total_amount == psp.quantity * psp.unit_price - psp.total_discount_amount
        assert psp.total_discount_amount >= 0
        assert klarna_tax_ok(psp.total_amount, psp.total_tax_amount, psp.tax_rate)
        shop = by_id[psp.reference]
        assert psp.name == shop.name
        assert psp.tax_rate == shop.tax_rate
        if shop.reduces_total:
            assert psp.type is LineType.DISCOUNT
            assert psp.quantity == 1
            assert psp.unit_price == psp.total_amount < 0
        else:
            # Prices never change in these histories, so the shop's unit price is kept
            # and the cumulative rounding goes into a non-negative discount.
            assert psp.unit_price == shop.unit_price
            assert psp.type is shop.type
            assert 0 <= psp.total_amount <= psp.quantity * shop.unit_price
        assert PspLine.from_json(psp.to_json()) == psp
    assert len({psp.reference for psp in lines}) == len(lines)
    check_formats(lines, amount)
    return amount


def check_formats(lines: list[PspLine], amount: int) -> None:
    assert sum(line["total_amount"] for line in klarna_order_lines(lines)) == amount
    items = adyen_line_items(lines)
    assert sum(i["quantity"] * i["amountIncludingTax"] for i in items) == amount
    for item in items:
        assert item["amountExcludingTax"] + item["taxAmount"] == item["amountIncludingTax"]
        assert item["quantity"] >= 1
    data = openinvoice_data(lines, "EUR")
    count = int(data["openinvoicedata.numberOfLines"])
    assert count == len(items)
    invoiced = 0
    for n in range(1, count + 1):
        prefix = f"openinvoicedata.line{n}."
        assert data[prefix + "currencyCode"] == "EUR"
        unit = int(data[prefix + "itemAmount"]) + int(data[prefix + "itemVatAmount"])
        invoiced += int(data[prefix + "numberOfItems"]) * unit
    assert invoiced == amount


def check_ledger(order: OrderSnapshot, ledger: Ledger) -> None:
    for line in order.effective_lines:
        entry = ledger.get(line.id, LineLedger())
        if line.reduces_total:
            assert line.total <= entry.captured_amount <= entry.refunded_amount <= 0
        else:
            assert 0 <= entry.refunded_quantity <= entry.captured_quantity <= line.quantity
            assert 0 <= entry.refunded_amount <= entry.captured_amount <= line.total
            # A fee goes with a capture of goods, marked shipped or not (contract §4).
            if not line.is_fee:
                assert entry.captured_quantity == shipped_quantity(order, line)
            assert entry.refunded_quantity == line.returned_quantity


def sync(order: OrderSnapshot, history: History) -> None:
    """One pass of the planner: capture what shipped, then refund what came back."""
    capture = capture_lines(order, history.ledger)
    if capture:
        check_request(order, capture)
        history.operations.append(("capture", capture))
    refund = refund_lines(order, history.ledger)
    if refund:
        check_request(order, refund)
        history.operations.append(("refund", refund))
    assert capture_lines(order, history.ledger) == []
    assert refund_lines(order, history.ledger) == []
    check_ledger(order, history.ledger)
    assert 0 <= history.total("refund") <= history.total("capture") <= order.total


@st.composite
def histories(
    draw: st.DrawFn,
) -> tuple[list[dict[str, Any]], int | None, list[tuple[list[int], list[int]]]]:
    lines = draw(baskets())
    lines_sum = sum(
        line["quantity"] * line["unit_price"] - line.get("total_discount_amount", 0)
        for line in lines
    )
    amount = draw(st.one_of(st.none(), st.integers(0, lines_sum)))
    steps: list[tuple[list[int], list[int]]] = []
    shipped = [0] * len(lines)
    returned = [0] * len(lines)
    for _ in range(draw(st.integers(0, 4))):
        shipped = [
            s if line["type"] in REDUCING_TYPES else draw(st.integers(s, line["quantity"]))
            for line, s in zip(lines, shipped, strict=True)
        ]
        returned = [draw(st.integers(r, s)) for r, s in zip(returned, shipped, strict=True)]
        steps.append((shipped, returned))
    return lines, amount, steps


@SETTINGS
@given(histories())
def test_captures_and_refunds_add_up(
    case: tuple[list[dict[str, Any]], int | None, list[tuple[list[int], list[int]]]],
) -> None:
    lines, amount, steps = case
    history = History([])
    returned = [0] * len(lines)
    for shipped, returned in steps:
        sync(snapshot(lines, amount, shipped, returned), history)

    # Everything ships: the captures add up to the order, line by line.
    everything = [0 if line["type"] in REDUCING_TYPES else line["quantity"] for line in lines]
    order = snapshot(lines, amount, everything, returned)
    sync(order, history)
    assert history.total("capture") == order.total
    ledger = history.ledger
    for line in order.effective_lines:
        assert ledger.get(line.id, LineLedger()).captured_amount == line.total

    # Everything comes back: the refunds give back exactly what was captured.
    order = snapshot(lines, amount, everything, everything)
    sync(order, history)
    assert history.total("refund") == order.total
    ledger = history.ledger
    for line in order.effective_lines:
        entry = ledger.get(line.id, LineLedger())
        assert entry.refunded_amount == entry.captured_amount == line.total


@SETTINGS
@given(baskets(), st.data())
def test_basket_lines_are_the_whole_order(lines: list[dict[str, Any]], data: st.DataObject) -> None:
    lines_sum = sum(
        line["quantity"] * line["unit_price"] - line.get("total_discount_amount", 0)
        for line in lines
    )
    amount = data.draw(st.one_of(st.none(), st.integers(0, lines_sum)))
    order = snapshot(lines, amount, [0] * len(lines), [0] * len(lines))
    basket = basket_lines(order)
    assert lines_total(basket) == order.total == (lines_sum if amount is None else amount)
    for psp, shop in zip(basket, order.effective_lines, strict=True):
        assert psp.total_amount == shop.total
        assert psp.total_tax_amount == shop.tax
        assert psp.type is shop.type
        assert psp.total_amount == psp.quantity * psp.unit_price - psp.total_discount_amount
        assert klarna_tax_ok(psp.total_amount, psp.total_tax_amount, psp.tax_rate)
    check_formats(basket, order.total)
