"""Two money rules on the real schema and SQL (Postgres), Klarna played in-process:
a price cut on a unit already captured is given back by the next capture (README
"Ledger model"), and a fee whose first capture was made outside goes alone once no
capture of goods is left to carry it (README "Fees")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.ledger.harness import FakeKlarna, insert_order, order_row, shipped, update_snapshot
from tests.ledger.test_flags_and_totals import told
from tests.ledger.test_ledger_regressions import drive
from tests.ledger.test_money_rules import (
    EBOOK,
    captured_at_checkout,
    kinds,
    klarna_order,
    posts,
    snap,
)
from tests.seed_basket import SHOES
from workers.context import WorkerContext

pytestmark = pytest.mark.integration


def sent(klarna: FakeKlarna, suffix: str) -> list[dict[str, Any]]:
    return [json.loads(r.content) for r in posts(klarna, suffix)]


def test_a_price_cut_on_a_captured_unit_is_given_back_by_the_next_capture(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """Seed 44798's class: the e-book captured at checkout (500), then the shop gives it
    for free; the authorization follows the basket (1200); the shoes ship. Their capture
    gives the 500 back (700), within what the authorization still holds, so the
    customer pays the basket; before, nothing was charged (capture_exceeds_authorization)."""
    order_id, first = klarna_order(ctx, klarna, [EBOOK, SHOES])
    captured_at_checkout(klarna, first.psp_order_id)
    insert_order(ctx, snap(order_id, shipped([EBOOK, SHOES], ebook=1)))
    drive(ctx, order_id)
    free = {**EBOOK, "unit_price": 0}
    update_snapshot(ctx, snap(order_id, shipped([free, SHOES], ebook=1), 2))
    drive(ctx, order_id)
    psp = klarna.orders[first.psp_order_id]
    assert psp.order_amount == 1200
    update_snapshot(ctx, snap(order_id, shipped([free, SHOES], ebook=1, shoes=1), 3))
    drive(ctx, order_id)
    (capture,) = sent(klarna, "/captures")
    assert capture["captured_amount"] == 700 <= 1200 - 500
    assert sum(x["total_amount"] for x in capture["order_lines"]) == 700
    cut = [x for x in capture["order_lines"] if x["reference"] == "ebook"]
    assert [(x["type"], x["total_amount"], x["tax_rate"]) for x in cut] == [("discount", -500, 700)]
    row = order_row(ctx, order_id)
    assert row["captured_amount"] == psp.captured_amount == 1200 == row["desired_amount"]
    # Returning the shoes gives back what they were captured at, not a share of the cut.
    back = shipped([free, SHOES], ebook=1, shoes=1)
    back = [{**x, "returned_quantity": 1} if x["id"] == "shoes" else x for x in back]
    update_snapshot(ctx, snap(order_id, back, 4))
    drive(ctx, order_id)
    (refund,) = sent(klarna, "/refunds")
    assert refund["refunded_amount"] == 1200


FEE = {
    "id": "ship",
    "name": "Shipping",
    "type": "shipping_fee",
    "quantity": 1,
    "unit_price": 495,
    "tax_rate": 2000,
}


@pytest.mark.parametrize("status", ["open", "cancelled"])
def test_a_fee_whose_first_capture_was_made_outside_is_charged_alone(
    ctx: WorkerContext, klarna: FakeKlarna, status: str
) -> None:
    """Seed 41850's class: the order's first capture (the e-book) was made outside, so it
    carried no fee; no capture of goods is left (the shoes are not in the order any more,
    or the order is cancelled): the fee is captured alone, before a cancel releases the
    rest; before, it waited for a capture that never came."""
    order_id, first = klarna_order(ctx, klarna, [EBOOK, SHOES, FEE])
    captured_at_checkout(klarna, first.psp_order_id)
    lines = [EBOOK, SHOES, FEE] if status == "cancelled" else [EBOOK, FEE]
    insert_order(ctx, snap(order_id, shipped(lines, ebook=1), status=status))
    drive(ctx, order_id)
    (capture,) = sent(klarna, "/captures")
    assert capture["captured_amount"] == 495
    assert [x["reference"] for x in capture["order_lines"]] == ["ship"]
    assert klarna.orders[first.psp_order_id].captured_amount == 995
    if status == "cancelled":
        assert [k for k, _, _ in kinds(ctx, order_id)][-1] == "release_authorization"


def test_a_cancel_after_a_cut_with_nothing_left_to_capture_refunds_the_cut(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """The e-book captured at checkout (500), then given for free, then the order
    cancelled before the shoes ship: no capture is left to give the 500 back. The rest
    (1200) is released and the 500 refunded (a positive `discount` line naming the
    e-book, README "Ledger model"): the customer pays what the e-book is worth now;
    before, the 500 stayed charged and a person was told captured_above_total."""
    order_id, first = klarna_order(ctx, klarna, [EBOOK, SHOES])
    captured_at_checkout(klarna, first.psp_order_id)
    insert_order(ctx, snap(order_id, shipped([EBOOK, SHOES], ebook=1)))
    drive(ctx, order_id)
    free = {**EBOOK, "unit_price": 0}
    update_snapshot(ctx, snap(order_id, shipped([free, SHOES], ebook=1), 2, status="cancelled"))
    drive(ctx, order_id)
    drive(ctx, order_id)
    done = [k for k, _, _ in kinds(ctx, order_id)]
    assert done[-2:] in (["release_authorization", "refund"], ["cancel", "refund"]), done
    (refund,) = sent(klarna, "/refunds")
    assert refund["refunded_amount"] == 500
    assert [
        (x["reference"], x["type"], x["total_amount"], x["tax_rate"]) for x in refund["order_lines"]
    ] == [("ebook#price-cut", "discount", 500, 700)]
    psp = klarna.orders[first.psp_order_id]
    assert (psp.captured_amount, psp.refunded_amount) == (500, 500)
    assert "captured_above_total" not in [code for _, code in told(ctx, order_id)]


CABLE = {"id": "cable", "name": "Cable", "quantity": 1, "unit_price": 300, "tax_rate": 2000}


def test_goods_a_price_cut_pays_for_whole_are_settled_without_a_capture(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """The e-book captured at checkout (500), then given for free; the cable (300)
    ships: the cut takes its capture whole, so nothing is sent (before: a capture of 1
    minor unit) and the cable is recorded captured at the money held (a capture of 0);
    the shoes then carry the 200 left (1000). Klarna captured 1500, the basket."""
    order_id, first = klarna_order(ctx, klarna, [EBOOK, CABLE, SHOES])
    captured_at_checkout(klarna, first.psp_order_id)
    insert_order(ctx, snap(order_id, shipped([EBOOK, CABLE, SHOES], ebook=1)))
    drive(ctx, order_id)
    free = {**EBOOK, "unit_price": 0}
    update_snapshot(ctx, snap(order_id, shipped([free, CABLE, SHOES], ebook=1, cable=1), 2))
    drive(ctx, order_id)
    assert sent(klarna, "/captures") == []
    assert ("capture", "succeeded", 0) in kinds(ctx, order_id)
    update_snapshot(
        ctx, snap(order_id, shipped([free, CABLE, SHOES], ebook=1, cable=1, shoes=1), 3)
    )
    drive(ctx, order_id)
    (capture,) = sent(klarna, "/captures")
    assert capture["captured_amount"] == 1000
    psp = klarna.orders[first.psp_order_id]
    row = order_row(ctx, order_id)
    assert row["captured_amount"] == psp.captured_amount == 1500 == row["desired_amount"]
