"""Contract §4's flags and totals where the simulation found the product wrong: money
moved without the service is always told, and a cancel lets go of the authorization
even when the PSP never named the lines of a capture made without the service."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from data import orders as store
from domain.lines import PspLine
from domain.planner import NEEDS_ATTENTION, Flag
from integrations.adyen.client import AdyenClient
from tests.ledger.harness import (
    ADYEN,
    FakeKlarna,
    KlarnaOrder,
    answer,
    context,
    insert_order,
    new_order_id,
    operations,
    order_row,
    outbox,
    shipped,
    update_snapshot,
)
from tests.ledger.test_ledger_regressions import drive, operator_reconcile
from tests.ledger.test_money_rules import (
    HAT,
    adyen_item,
    adyen_order_captured_outside,
    adyen_order_shipped_and_captured,
    flag_code,
    kinds,
    klarna_order,
    notify,
    snap,
)
from tests.seed_basket import DISCOUNT, SHOES, SOCKS, discount
from workers.context import WorkerContext
from workers.reconcile import flag_order

pytestmark = pytest.mark.integration


def adyen_with_captured_lines(database_url: str) -> tuple[WorkerContext, list[httpx.Request]]:
    """An Adyen client as workers/context.py builds it: a release reads the captured
    lines from the operations."""
    sent: list[httpx.Request] = []

    def adyen(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"status": "received", "pspReference": f"M{len(sent)}"})

    ctx = context(database_url, adyen, notification_timeout_seconds=0.001)

    def captured(order_id: str) -> list[PspLine]:
        with ctx.pool.connection() as conn:
            return store.captured_lines(conn, order_id)

    ctx.providers["adyen"] = AdyenClient(
        ctx.http, checkout_url=ADYEN, api_key="k", merchant_account="Test", captured_lines=captured
    )
    return ctx, sent


def told(ctx: WorkerContext, order_id: str) -> list[tuple[str, str | None]]:
    return [
        (e["event_type"], ((e["payload"].get("data") or {}).get("reason") or {}).get("code"))
        for e in outbox(ctx, order_id)
    ]


def test_money_moved_outside_while_flagged_for_another_reason_is_still_told(
    database_url: str,
) -> None:
    """Simulation seed 1004: the order waited for a person (quantities_reversed) when a
    refund made in the Customer Area came in; it was counted, but the shop was never
    told. §4: the service "flags needs_attention (external_change, with what changed)
    and tells the shop" of every such change."""
    ctx, _ = adyen_with_captured_lines(database_url)
    try:
        order_id, payment = adyen_order_shipped_and_captured(ctx)
        lowered = shipped([SHOES, SOCKS], shoes=0, socks=2)
        update_snapshot(ctx, snap(order_id, lowered, 2, provider="adyen"))
        drive(ctx, order_id)
        assert flag_code(ctx, order_id) == "quantities_reversed"
        refund = adyen_item(payment, "REFUND", 450, merchantReference="shop-1001")
        assert notify(ctx, refund) == "external"
        assert order_row(ctx, order_id)["refunded_amount"] == 450
        assert told(ctx, order_id)[-2:] == [
            ("order.needs_attention", "quantities_reversed"),
            ("order.needs_attention", "external_change"),
        ]
        # Once: the same notification again changes nothing and tells nothing.
        assert notify(ctx, refund) == "external"
        assert [c for _, c in told(ctx, order_id)].count("external_change") == 1
    finally:
        ctx.close()


def test_cancel_after_an_unnamed_customer_area_capture_releases_the_rest(
    database_url: str,
) -> None:
    """Simulation seed 1028: a Customer Area capture whose lines Adyen does not name,
    then the shop cancels with nothing shipped. §4 step 4: "release the remaining
    authorization". The release (an amount update down to what was captured) named the
    captured lines, which did not add up to the captured amount, and was refused before
    it was sent (line_sum_mismatch): the authorization was never let go."""
    ctx, sent = adyen_with_captured_lines(database_url)
    try:
        order_id = adyen_order_captured_outside(ctx)
        assert flag_code(ctx, order_id) == "external_change"
        update_snapshot(
            ctx, snap(order_id, [SHOES, SOCKS], 2, provider="adyen", status="cancelled")
        )
        operator_reconcile(ctx, order_id)
        (release,) = [o for o in operations(ctx, order_id) if o["kind"] == "release_authorization"]
        assert release["status"] == "awaiting_notification", release["error"]
        (update,) = [r for r in sent if r.url.path.endswith("/amountUpdates")]
        body = json.loads(update.content)
        assert body["amount"]["value"] == 450
        items = body["lineItems"]
        assert sum(i["quantity"] * i["amountIncludingTax"] for i in items) == 450
        assert not [r for r in sent if r.url.path.endswith("/captures")]
        assert "needs_attention" not in order_row(ctx, order_id)["flags"]
    finally:
        ctx.close()


def test_a_cancel_made_outside_asks_for_no_new_order_until_the_shop_sends_one(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """Simulation seeds 1007, 1090: the merchant cancelled in Klarna's portal while the
    shop's order stood open. The service counted it and flagged external_change, but
    also told the shop to take a new payment for a snapshot older than the cancel. §4:
    "Once the PSP has cancelled ..., a later open snapshot flags needs_new_order"."""
    order_id, first = klarna_order(ctx, klarna, [SHOES, SOCKS])
    insert_order(ctx, first)
    drive(ctx, order_id)
    klarna.orders[first.psp_order_id].status = "CANCELLED"
    operator_reconcile(ctx, order_id)  # reads Klarna: the cancel is learnt
    assert flag_code(ctx, order_id) == "external_change"
    # ... and the person reads what changed.
    reason = order_row(ctx, order_id)["flag_reason"]["needs_attention"]
    assert reason["message"].startswith("the PSP order was cancelled (made without")
    operator_reconcile(ctx, order_id)  # a person looked: the PSP's figures stand
    row = order_row(ctx, order_id)
    assert "needs_new_order" not in row["flags"]
    assert "order.new_order_required" not in [e for e, _ in told(ctx, order_id)]
    # The shop then sends the order open again: now it must take a new payment.
    update_snapshot(ctx, snap(order_id, shipped([SHOES, SOCKS], shoes=1), 2))
    drive(ctx, order_id)
    assert flag_code(ctx, order_id, "needs_new_order") == "authorization_cancelled"
    assert told(ctx, order_id)[-1][0] == "order.new_order_required"


def test_goods_shipped_against_an_authorization_cancelled_outside_are_told_not_captured(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """Simulation seed 3296: the merchant cancelled in Klarna's portal (learnt, and a
    person looked); the shop then marks the shoes shipped. A capture against a cancelled
    authorization is refused (the product sent it again after every reconcile), and
    with the shop's order cancelled too it was never told at all: the shoes left the
    warehouse uncharged and the order counted as synced. §4 step 4 charges shipped
    goods before letting go; with nothing left to charge them to, a person is told
    (psp_order_cancelled) and nothing is sent."""
    order_id, first = klarna_order(ctx, klarna, [SHOES, SOCKS])
    insert_order(ctx, first)
    drive(ctx, order_id)
    klarna.orders[first.psp_order_id].status = "CANCELLED"
    operator_reconcile(ctx, order_id)  # reads Klarna: the cancel is learnt
    operator_reconcile(ctx, order_id)  # a person looked: the PSP's figures stand
    assert "needs_attention" not in order_row(ctx, order_id)["flags"]
    update_snapshot(ctx, snap(order_id, shipped([SHOES, SOCKS], shoes=1), 2, status="cancelled"))
    drive(ctx, order_id)
    assert klarna.captures(first.psp_order_id) == []
    assert flag_code(ctx, order_id) == "psp_order_cancelled"
    assert told(ctx, order_id)[-1] == ("order.needs_attention", "psp_order_cancelled")


def test_a_customer_area_capture_of_part_of_a_later_shipment_is_never_made_again(
    database_url: str,
) -> None:
    """Simulation seeds 1063, 1086: a Customer Area capture (no lines) of one pair of
    socks, then the shop marks both pairs shipped. The whole shipment (900) is not the
    capture's amount (450), so the capture was never tied to units, and the service
    captured both pairs again: three pairs charged for two. §4: money moved without the
    service is counted and "never made a second time"."""
    ctx, sent = adyen_with_captured_lines(database_url)
    try:
        order_id = adyen_order_captured_outside(ctx)
        socks_out = shipped([SHOES, SOCKS], socks=2)
        update_snapshot(ctx, snap(order_id, socks_out, 2, provider="adyen"))
        operator_reconcile(ctx, order_id)
        (request,) = [r for r in sent if r.url.path.endswith("/captures")]
        body = json.loads(request.content)
        assert body["amount"]["value"] == 450
        assert [(i["id"], i["quantity"]) for i in body["lineItems"]] == [("socks", 1)]
        (external,) = [o for o in operations(ctx, order_id) if o["external"]]
        assert [(x["reference"], x["quantity"]) for x in external["lines"]] == [("socks", 1)]
    finally:
        ctx.close()


def test_shipped_goods_after_an_unnamed_customer_area_capture_take_the_discount_it_left(
    database_url: str,
) -> None:
    """Simulation seed 1086: a Customer Area capture (no lines) of the shoes' 1200, then
    the socks ship. Shared by value over everything still open, the socks' discount share
    was 270, so 630 did not fit the 270 left of the authorization: the socks were never
    captured and the order was flagged. The unnamed capture paid for goods without a
    share, so the socks carry the whole discount: 900 − 630 = 270, and the captures come
    to the order's 1470 (contract §4)."""
    ctx, sent = adyen_with_captured_lines(database_url)
    try:
        order_id = new_order_id()
        first = snap(order_id, [SHOES, SOCKS, DISCOUNT], provider="adyen")
        insert_order(ctx, first)
        drive(ctx, order_id)
        capture = adyen_item(first.psp_order_id, "CAPTURE", 1200, merchantReference="shop-1001")
        assert notify(ctx, capture) == "external"
        socks_out = shipped([SHOES, SOCKS, DISCOUNT], socks=2)
        update_snapshot(ctx, snap(order_id, socks_out, 2, provider="adyen"))
        operator_reconcile(ctx, order_id)
        (request,) = [r for r in sent if r.url.path.endswith("/captures")]
        body = json.loads(request.content)
        assert body["amount"]["value"] == 270
        assert flag_code(ctx, order_id) != "capture_exceeds_authorization"
    finally:
        ctx.close()


def test_unnamed_money_is_tied_to_units_at_the_prices_they_had_when_it_moved(
    database_url: str,
) -> None:
    """Simulation seed 21058: a Customer Area capture of 1200 (no lines) while nothing
    had shipped; the shop ships two free bags (worth 0), takes one back, then prices the
    bag at 600. The capture was tied to the two bags because they were worth its 1200
    *now*, and the bag taken back was refunded at 600: a refund for a unit nobody paid
    for. §4: refunds are at the price units were captured at, never more than was
    captured for them; unnamed money is tied at the prices of the moment it moved, or
    not at all."""
    ctx, sent = adyen_with_captured_lines(database_url)
    bag = {"id": "bag", "name": "Bag", "quantity": 3, "unit_price": 0, "tax_rate": 2000}
    try:
        order_id = new_order_id()
        first = snap(order_id, [SHOES, bag], provider="adyen")
        insert_order(ctx, first)
        drive(ctx, order_id)
        capture = adyen_item(first.psp_order_id, "CAPTURE", 1200, merchantReference="shop-1001")
        assert notify(ctx, capture) == "external"
        assert flag_code(ctx, order_id) == "external_change"
        back = [SHOES, {**bag, "shipped_quantity": 2, "returned_quantity": 1}]
        update_snapshot(ctx, snap(order_id, back, 2, provider="adyen"))
        operator_reconcile(ctx, order_id)
        priced = [SHOES, {**bag, "unit_price": 600, "shipped_quantity": 2, "returned_quantity": 1}]
        update_snapshot(ctx, snap(order_id, priced, 3, provider="adyen"))
        drive(ctx, order_id)
        assert not [r for r in sent if r.url.path.endswith("/refunds")]
        (external,) = [o for o in operations(ctx, order_id) if o["external"]]
        assert external["lines"] == []
        assert order_row(ctx, order_id)["refunded_amount"] == 0
    finally:
        ctx.close()


def test_a_customer_area_refund_of_part_of_a_later_return_is_never_made_again(
    database_url: str,
) -> None:
    """A Customer Area refund (no lines) of one pair of socks, then the shop marks both
    pairs returned at once. The whole return (900) is not the refund's amount (450), so
    the refund was never tied to units, and the service refunded both pairs again: 1350
    back for socks captured at 900. §4: refunds are "never more than was captured for
    those units", and money moved without the service is "never made a second time"."""
    ctx, sent = adyen_with_captured_lines(database_url)
    try:
        order_id, payment = adyen_order_shipped_and_captured(ctx)
        refund = adyen_item(payment, "REFUND", 450, merchantReference="shop-1001")
        assert notify(ctx, refund) == "external"
        assert flag_code(ctx, order_id) == "external_change"
        socks_back = [
            {**SHOES, "shipped_quantity": 1},
            {**SOCKS, "shipped_quantity": 2, "returned_quantity": 2},
        ]
        update_snapshot(ctx, snap(order_id, socks_back, 2, provider="adyen"))
        operator_reconcile(ctx, order_id)
        refunds = [json.loads(r.content) for r in sent if r.url.path.endswith("/refunds")]
        assert [body["amount"]["value"] for body in refunds] == [450]
        assert [(i["id"], i["quantity"]) for i in refunds[0]["lineItems"]] == [("socks", 1)]
        (external,) = [o for o in operations(ctx, order_id) if o["external"]]
        assert [(x["reference"], x["quantity"]) for x in external["lines"]] == [("socks", 1)]
    finally:
        ctx.close()


def _line(line_id: str, kind: str, quantity: int, price: int, **extra: int) -> dict[str, object]:
    return {
        "id": line_id,
        "name": line_id,
        "type": kind,
        "quantity": quantity,
        "unit_price": price,
        "tax_rate": 0 if kind in ("sales_tax", "store_credit") else 2000,
        **extra,
    }


def _lowered_below_the_captures(
    ctx: WorkerContext, klarna: FakeKlarna
) -> tuple[str, list[dict[str, object]]]:
    """Three coats shipped and captured with their shares (8220 of 9747 authorized);
    then the socks and a sales tax line are removed: 7902, below what was captured."""
    socks = _line("l1", "physical", 3, 450)
    coats = _line("l2", "physical", 3, 2599, shipped_quantity=3)
    mug = _line("l3", "physical", 1, 99)
    taxes = [_line("l4", "sales_tax", 1, 641), _line("l5", "sales_tax", 1, 495)]
    discount = _line("l6", "discount", 1, -635)
    order_id = new_order_id()
    first = snap(order_id, [socks, coats, mug, *taxes, discount], 5)
    klarna.orders[first.psp_order_id] = KlarnaOrder(order_amount=first.total)
    insert_order(ctx, first, authorized=first.total)
    drive(ctx, order_id)
    assert kinds(ctx, order_id) == [("capture", "succeeded", 8220)]
    lowered = [coats, mug, taxes[0], discount]
    update_snapshot(ctx, snap(order_id, lowered, 9))
    drive(ctx, order_id)
    assert flag_code(ctx, order_id) == "amount_below_captured"
    assert kinds(ctx, order_id) == [("capture", "succeeded", 8220)]
    return order_id, lowered


def _a_coat_back(lowered: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{**lowered[0], "returned_quantity": 1}, *lowered[1:]]


def test_a_basket_below_the_captures_still_refunds_what_returns_and_releases_on_cancel(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """§4 step 3: newly returned quantities are refunded at the prices they were
    captured at; step 4: a cancel releases the remaining authorization. A basket lowered
    below what was captured (amount_below_captured, captured_above_total) reports the
    basket, nothing that failed: the operator and the shop are told once per reason,
    and the money moves still happen (domain/planner.py ADVISORY). Before, the flag
    halted the order (simulation seed 20816): nothing was refunded or released."""
    order_id, lowered = _lowered_below_the_captures(ctx, klarna)
    # The mug ships: with the shares left (the removed tax line's 417 given back) it is
    # worth less than nothing, so there is nothing to capture.
    lowered = shipped(lowered, l3=1)
    update_snapshot(ctx, snap(order_id, lowered, 10))
    drive(ctx, order_id)
    assert kinds(ctx, order_id) == [("capture", "succeeded", 8220)]
    # A coat comes back: refunded at what it was captured at, a third of the capture.
    back = _a_coat_back(lowered)
    update_snapshot(ctx, snap(order_id, back, 11))
    drive(ctx, order_id)
    assert kinds(ctx, order_id)[1:] == [("refund", "succeeded", 2740)]
    # The shop cancels: what is left of the authorization is let go.
    update_snapshot(ctx, snap(order_id, back, 12, status="cancelled"))
    drive(ctx, order_id)
    assert kinds(ctx, order_id)[2:] == [("release_authorization", "succeeded", 1527)]
    psp = next(iter(klarna.orders.values()))
    assert (psp.captured_amount, psp.refunded_amount, psp.status) == (8220, 2740, "CAPTURED")
    # Told once per reason however often the order was planned since.
    codes = [code for _, code in told(ctx, order_id)]
    assert codes.count("amount_below_captured") == 1
    assert codes.count("captured_above_total") <= 1
    assert flag_code(ctx, order_id) == "amount_below_captured"


def test_a_failure_after_an_advisory_flag_halts_until_an_operator_reconciles(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """A reason that reports a failure halts automatic operations even when the order
    was flagged for its basket first: it takes the advisory reason's place, and the
    shop is told of it once. An operator's reconcile clears the flag and lets the
    order go on (README, "Where the build differs from the contract")."""
    order_id, lowered = _lowered_below_the_captures(ctx, klarna)
    for _ in range(2):
        with ctx.pool.connection() as conn, conn.transaction():
            locked = store.lock_order(conn, order_id)
            assert locked is not None
            flag_order(conn, locked, Flag(NEEDS_ATTENTION, "task_failed", "RuntimeError"))
    assert flag_code(ctx, order_id) == "task_failed"
    update_snapshot(ctx, snap(order_id, _a_coat_back(lowered), 10))
    assert drive(ctx, order_id) == "needs_attention"
    assert kinds(ctx, order_id) == [("capture", "succeeded", 8220)]
    codes = [code for _, code in told(ctx, order_id)]
    assert codes.count("task_failed") == 1
    assert codes.count("amount_below_captured") == 1

    operator_reconcile(ctx, order_id)
    assert kinds(ctx, order_id)[1:] == [("refund", "succeeded", 2740)]
    # The basket still lies below the captures: told again, as after any reconcile.
    assert flag_code(ctx, order_id) == "amount_below_captured"


def test_goods_let_go_with_a_cancel_after_a_refused_increase_are_not_told_as_a_psp_cancel(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """The shoes (1200) are authorized; a hat (1500) is added and Klarna refuses the
    increase, so the shop is asked for a new order (§4). The hat ships and the shop
    cancels the order: the hat alone exceeds the authorization, so step 4 has nothing
    to capture and the service cancels. That cancel is its own: the hat stays with the
    new order the shop was asked for. Telling a person afterwards that the PSP had
    cancelled an authorization the shipped hat could have been charged to
    (psp_order_cancelled) misled operators and the shop."""
    order_id, first = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, first)
    drive(ctx, order_id)
    klarna.fault("PATCH", "/authorization", answer(403, json={"error_code": "NOT_ALLOWED"}))
    update_snapshot(ctx, snap(order_id, [SHOES, HAT], 2))
    drive(ctx, order_id)
    assert flag_code(ctx, order_id, "needs_new_order") == "NOT_ALLOWED"
    # The flag names the lines the authorization does not cover (the operator's view
    # and the shop's event list them).
    refused = order_row(ctx, order_id)["flag_reason"]["needs_new_order"]
    assert "hat" in [line["reference"] for line in refused["lines"]]
    update_snapshot(ctx, snap(order_id, shipped([SHOES, HAT], hat=1), 3, status="cancelled"))
    drive(ctx, order_id)
    assert klarna.captures(first.psp_order_id) == []
    assert klarna.orders[first.psp_order_id].status == "CANCELLED"
    assert order_row(ctx, order_id)["flags"] == ["needs_new_order"]
    assert "order.needs_attention" not in [event for event, _ in told(ctx, order_id)]


def test_a_lagging_read_never_undoes_an_authorization_update_the_psp_confirmed(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """Klarna confirmed the service's lowering of the authorization (2100 to 1650), then
    a read came from a replica that had not seen it yet (2100). Taken as the truth, the
    next basket (1950, more than Klarna holds) looked like a decrease: it was sent,
    Klarna refused the increase, and a person was told of a refusal nobody could explain,
    where §4 asks the shop for a new order. Only the service changes an open
    authorization's amount, so what Klarna confirmed stands over what a read still shows,
    as for captures, refunds and cancels."""
    order_id, first = klarna_order(ctx, klarna, [SHOES, SOCKS])
    insert_order(ctx, first)  # the first read tells the authorization: 2100
    psp = klarna.orders[first.psp_order_id]
    before_update = psp.body()
    update_snapshot(ctx, snap(order_id, [SHOES, {**SOCKS, "quantity": 1}], 2))
    drive(ctx, order_id)
    assert psp.order_amount == 1650
    # The next read comes from a replica that has not seen the update yet, and the shop
    # sends a basket of 1950: more than Klarna holds, less than the read shows.
    klarna.fault("GET", first.psp_order_id, answer(200, json=before_update))
    klarna.fault("PATCH", "/authorization", answer(403, json={"error_code": "NOT_ALLOWED"}))
    update_snapshot(ctx, snap(order_id, [SHOES, SOCKS, discount(150)], 3))
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute("UPDATE orders SET psp_synced_at = NULL WHERE id = %s", (order_id,))
    drive(ctx, order_id)
    assert not [f for f in klarna.faults if f[0] == "GET"]  # the lagging read was made
    row = order_row(ctx, order_id)
    assert row["authorized_amount"] == 1650
    assert row["flags"] == ["needs_new_order"]
    assert told(ctx, order_id)[-1][0] == "order.new_order_required"


def test_a_lagging_read_showing_an_earlier_identical_basket_never_proves_an_update_made(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """The basket went 2100 → 1650 → 2100 → 1650, every update confirmed by Klarna, then
    back to 2100: that update's answer was a 409 (still processing, not applied) and the
    check-read came from a replica that had not seen the last decrease, so it showed
    2100 with the very lines the update sends. Taken as proof that the update was made,
    the service believed 2100 authorized while Klarna held 1650 for ever (a confirmed
    update outranks every later read), and goods beyond 1650 were captured and refused
    (§4: the authorization is Klarna's own figures). A basket the order held before can
    be what a lagging read shows: the update is sent again under its key (Klarna
    replays a made one), never taken as made from such a read."""
    order_id, first = klarna_order(ctx, klarna, [SHOES, SOCKS])
    insert_order(ctx, first)
    psp = klarna.orders[first.psp_order_id]
    lower, full = [SHOES, {**SOCKS, "quantity": 1}], [SHOES, SOCKS]
    update_snapshot(ctx, snap(order_id, lower, 2))
    drive(ctx, order_id)
    update_snapshot(ctx, snap(order_id, full, 3))
    drive(ctx, order_id)
    assert psp.order_amount == 2100
    before_decrease = copy.deepcopy(psp.body())  # 2100, with the lines the service sent
    update_snapshot(ctx, snap(order_id, lower, 4))
    drive(ctx, order_id)
    assert psp.order_amount == 1650

    def in_progress_then_lagging_read(_request: httpx.Request) -> tuple[bool, httpx.Response]:
        klarna.fault("GET", first.psp_order_id, answer(200, json=before_decrease))
        return False, httpx.Response(409, json={"error_code": "CONFLICT"})

    klarna.fault("PATCH", "/authorization", in_progress_then_lagging_read)
    update_snapshot(ctx, snap(order_id, full, 5))
    drive(ctx, order_id)
    assert not klarna.faults  # the 409 and the lagging check-read both happened
    assert psp.order_amount == 2100
    assert order_row(ctx, order_id)["authorized_amount"] == 2100


def _extended_order(ctx: WorkerContext, klarna: FakeKlarna) -> tuple[str, str, Any, datetime]:
    """A Klarna order whose authorization expires within the extend window; Klarna's
    expiry after the service's extension is 28 days later (set here: the fake does not
    move it). Returns the order, its Klarna id, the read from before the extension and
    the expiry after it."""
    soon = datetime.now(UTC) + timedelta(days=1)
    order_id, first = klarna_order(ctx, klarna, [SHOES], expires_at=soon.isoformat())
    insert_order(ctx, first, authorized=first.total, expires_at=soon)
    psp = klarna.orders[first.psp_order_id]
    before = psp.body()
    later = soon + timedelta(days=28)
    psp.expires_at = later.isoformat()
    return order_id, first.psp_order_id, before, later


def _extensions(klarna: FakeKlarna) -> int:
    return len([r for r in klarna.requests if r.url.path.endswith("extend-authorization-time")])


def test_a_read_lagging_an_extension_the_psp_confirmed_is_not_taken_for_its_expiry(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """Klarna confirmed the extension (204), and the first read after it came from a
    replica that had not seen it (the old expiry, inside the extend window). Taken as
    the truth, the extension looked without effect: a halting needs_attention for an
    extension that worked. A confirmed extension moves the expiry later, so a read
    moments after it that still shows the old expiry is read again."""
    order_id, psp_id, before, later = _extended_order(ctx, klarna)
    klarna.fault("GET", psp_id, answer(200, json=before))
    drive(ctx, order_id)
    assert not [f for f in klarna.faults if f[0] == "GET"]  # the lagging read was made
    row = order_row(ctx, order_id)
    assert _extensions(klarna) == 1
    assert row["flags"] == []
    assert row["expires_at"] == later


def test_a_lagging_read_never_undoes_an_extension_the_psp_confirmed(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """The extension was read back (28 days later), then a read from a replica behind
    it showed the old expiry again. An open authorization's expiry only moves later,
    so the expiry already read stands, as a confirmed capture or update does."""
    order_id, psp_id, before, later = _extended_order(ctx, klarna)
    drive(ctx, order_id)
    assert order_row(ctx, order_id)["expires_at"] == later
    klarna.fault("GET", psp_id, answer(200, json=before))
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute("UPDATE orders SET psp_synced_at = NULL WHERE id = %s", (order_id,))
    drive(ctx, order_id)
    assert not [f for f in klarna.faults if f[0] == "GET"]
    row = order_row(ctx, order_id)
    assert _extensions(klarna) == 1
    assert row["flags"] == []
    assert row["expires_at"] == later


def test_an_extension_asked_before_the_window_opened_does_not_count_for_it(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """An extension asked 28 days ago (its worker died in the call; the resend, answered
    from Klarna's idempotency store, was recorded only now) extended an earlier expiry.
    Those days have passed and the expiry is inside the window again: this window has
    had no extension, so one is asked, not a person told of one without effect."""
    order_id, psp_id, _, _ = _extended_order(ctx, klarna)
    drive(ctx, order_id)
    psp = klarna.orders[psp_id]
    again = datetime.now(UTC) + timedelta(days=1)
    psp.expires_at = again.isoformat()
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute(
            "UPDATE operations SET created_at = created_at - interval '28 days'"
            " WHERE order_id = %s",
            (order_id,),
        )
        conn.execute(
            "UPDATE orders SET psp_synced_at = NULL, expires_at = %s WHERE id = %s",
            (again - timedelta(seconds=1), order_id),
        )

    def extended() -> None:  # Klarna moves the expiry once it is asked again
        if _extensions(klarna) == 2:
            psp.expires_at = (again + timedelta(days=28)).isoformat()

    klarna.on_read = extended
    drive(ctx, order_id)
    row = order_row(ctx, order_id)
    assert _extensions(klarna) == 2
    assert row["flags"] == []
    assert row["expires_at"] == again + timedelta(days=28)


def test_an_extension_that_left_the_expiry_in_its_window_tells_a_person_why(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """Klarna confirmed the extension, yet every read after it shows the old expiry,
    inside the extend window still. Asking again would loop without end; a person is
    told (extension_without_effect) in words that say what to check."""
    order_id, psp_id, _, _ = _extended_order(ctx, klarna)
    soon = order_row(ctx, order_id)["expires_at"]
    klarna.orders[psp_id].expires_at = soon.isoformat()  # the extension moved nothing
    drive(ctx, order_id)
    row = order_row(ctx, order_id)
    assert _extensions(klarna) == 1
    reason = row["flag_reason"]["needs_attention"]
    assert reason["code"] == "extension_without_effect"
    assert reason["message"] == (
        "the authorization was extended but its expiry did not move; check it"
    )
