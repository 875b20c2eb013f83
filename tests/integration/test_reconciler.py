"""Issue 3: captures, refunds, cancels and authorization upkeep, exact to the cent."""

from __future__ import annotations

import copy
import time
from typing import Any

import httpx
import pytest

from tests.integration.stack import Stack, new_order_id, order_event, wait_for
from tests.seed_basket import DISCOUNT, SHOES, SOCKS

pytestmark = pytest.mark.integration


HAT = {"id": "hat", "name": "Hat", "quantity": 1, "unit_price": 1500, "tax_rate": 2000}


class Shop:
    """One order as the shop sees it, sending a new version for every change."""

    def __init__(self, stack: Stack, lines: list[dict[str, Any]], **kwargs: Any) -> None:
        self.stack = stack
        self.id = new_order_id()
        self.lines = copy.deepcopy(lines)
        self.klarna_id = stack.klarna_order(self.lines, **kwargs)
        self.version = 0
        self.status = "open"
        self.extra: dict[str, Any] = {}

    def line(self, line_id: str) -> dict[str, Any]:
        return next(line for line in self.lines if line["id"] == line_id)

    def send(self, event_type: str = "order.updated") -> httpx.Response:
        self.version += 1
        answer = self.stack.send(
            order_event(
                self.id,
                self.klarna_id,
                self.lines,
                version=self.version,
                event_type=event_type,
                status=self.status,
                **self.extra,
            )
        )
        assert answer.status_code == 202, answer.text
        return answer

    def ship(self, line_id: str, quantity: int = 1) -> None:
        line = self.line(line_id)
        line["shipped_quantity"] = line.get("shipped_quantity", 0) + quantity
        self.send("order.shipped")

    def ret(self, line_id: str, quantity: int = 1) -> None:
        line = self.line(line_id)
        line["returned_quantity"] = line.get("returned_quantity", 0) + quantity
        self.send("order.returned")

    def ledger(self, operation: str | None = None) -> list[dict[str, Any]]:
        entries = self.stack.ledger(self.klarna_id)
        return [e for e in entries if operation is None or e["operation"] == operation]

    def wait_ledger(self, operation: str, count: int) -> list[dict[str, Any]]:
        return wait_for(
            lambda: len(self.ledger(operation)) >= count and self.ledger(operation),
            what=f"{count} × {operation}",
        )

    def klarna(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.stack.sandbox_url}/ordermanagement/v1/orders/{self.klarna_id}",
            auth=self.stack.klarna_auth,
            timeout=10,
        )
        return dict(response.json())

    def settled(self) -> dict[str, Any]:
        """The order row once nothing is in flight and the reconciler is done."""

        def done() -> dict[str, Any] | None:
            row = self.stack.order_row(self.id)
            ops = self.stack.operations(self.id)
            busy = any(o["status"] in ("pending", "sent") for o in ops)
            if row and row["reconcile_requested_at"] is None and not busy:
                return row
            return None

        return wait_for(done, what="the order to settle")


def _assert_lines_sum(entry: dict[str, Any]) -> None:
    assert sum(line["total_amount"] for line in entry["lines"]) == entry["amount"]


def test_partial_shipments_are_captured_line_by_line_to_the_exact_total(stack: Stack) -> None:
    shop = Shop(stack, [SHOES, SOCKS, DISCOUNT])
    shop.extra["shipping"] = {"carrier": "DHL", "tracking_number": "00340434161234567890"}
    shop.send("order.created")
    shop.ship("socks")
    (first,) = shop.wait_ledger("capture", 1)
    # The contract's example: one pair of socks captures 450 − 135 = 315.
    assert first["amount"] == 315
    assert {line["reference"]: line["total_amount"] for line in first["lines"]} == {
        "socks": 450,
        "discount": -135,
    }
    shop.ship("shoes")
    shop.wait_ledger("capture", 2)
    shop.ship("socks")
    captures = shop.wait_ledger("capture", 3)
    for entry in captures:
        _assert_lines_sum(entry)
    assert [c["amount"] for c in captures] == [315, 840, 315]
    klarna = shop.klarna()
    assert (klarna["captured_amount"], klarna["status"]) == (1470, "CAPTURED")
    # Shipping info from the snapshot rides on the capture.
    assert klarna["captures"][0]["shipping_info"][0]["tracking_number"] == "00340434161234567890"
    row = shop.settled()
    assert (row["captured_amount"], row["authorized_amount"], row["flags"]) == (1470, 1470, [])


def test_returns_are_refunded_with_their_share_of_the_discount(stack: Stack) -> None:
    shop = Shop(stack, [SHOES, SOCKS, DISCOUNT])
    shop.send("order.created")
    shop.ship("shoes")
    shop.ship("socks", 2)
    shop.wait_ledger("capture", 2)
    shop.ret("socks")
    (refund,) = shop.wait_ledger("refund", 1)
    assert refund["amount"] == 315
    _assert_lines_sum(refund)
    shop.ret("shoes")
    shop.ret("socks")
    refunds = shop.wait_ledger("refund", 3)
    assert sum(r["amount"] for r in refunds) == 1470
    row = shop.settled()
    assert (row["captured_amount"], row["refunded_amount"]) == (1470, 1470)


def test_cancel_before_any_capture_cancels_the_order(stack: Stack) -> None:
    shop = Shop(stack, [SHOES, SOCKS])
    shop.send("order.created")
    shop.status = "cancelled"
    shop.send("order.cancelled")
    shop.wait_ledger("cancel", 1)
    assert shop.klarna()["status"] == "CANCELLED"
    assert shop.settled()["psp_status"] == "cancelled"


def test_cancel_after_a_partial_capture_releases_the_rest(stack: Stack) -> None:
    shop = Shop(stack, [SHOES, SOCKS])
    shop.send("order.created")
    shop.ship("shoes")
    shop.wait_ledger("capture", 1)
    shop.status = "cancelled"
    shop.send("order.cancelled")
    shop.wait_ledger("release_authorization", 1)
    klarna = shop.klarna()
    assert (klarna["order_amount"], klarna["captured_amount"]) == (1200, 1200)
    row = shop.settled()
    assert (row["authorized_amount"], row["captured_amount"]) == (1200, 1200)
    assert shop.ledger("cancel") == []


def test_refused_increase_flags_but_authorized_lines_are_still_captured(stack: Stack) -> None:
    shop = Shop(stack, [SHOES, SOCKS])
    shop.send("order.created")
    stack.fault(kind="reject_next_increase", count=1, path_contains=shop.klarna_id)
    shop.lines.append(dict(HAT))
    shop.send()
    wait_for(
        lambda: "needs_new_order" in (stack.order_row(shop.id) or {}).get("flags", []),
        what="needs_new_order",
    )
    shop.ship("shoes")
    shop.ship("socks", 2)
    captures = shop.wait_ledger("capture", 2)
    assert sum(c["amount"] for c in captures) == 2100
    # The hat ships too, but was never authorized: nothing more is captured for it.
    shop.ship("hat")
    time.sleep(1.5)
    row = shop.settled()
    assert row["captured_amount"] == 2100 == row["authorized_amount"]
    assert row["flags"] == ["needs_new_order"]
    assert len(shop.ledger("capture")) == 2


def test_a_removed_line_lowers_the_authorization_after_a_partial_capture(stack: Stack) -> None:
    shop = Shop(stack, [SHOES, SOCKS, HAT])
    shop.send("order.created")
    shop.ship("shoes")
    shop.wait_ledger("capture", 1)
    shop.lines = [line for line in shop.lines if line["id"] != "hat"]
    shop.send()
    (update,) = shop.wait_ledger("update_authorization", 1)
    assert update["amount"] == 2100
    # The complete basket, captured lines included.
    assert sorted(line["reference"] for line in update["lines"]) == ["shoes", "socks"]
    shop.ship("socks", 2)
    shop.wait_ledger("capture", 2)
    assert shop.klarna()["status"] == "CAPTURED"


def test_an_expiring_authorization_is_extended(stack: Stack) -> None:
    shop = Shop(stack, [SHOES])
    # Created with 2 days left: inside EXTEND_AUTHORIZATION_DAYS_BEFORE (3).
    response = httpx.post(
        f"{stack.sandbox_url}/_sandbox/klarna/orders",
        json={
            "purchase_currency": "EUR",
            "purchase_country": "DE",
            "payment_method": "INVOICE",
            "order_amount": 1200,
            "expires_in_days": 2,
            "order_lines": [dict(shop.klarna()["order_lines"][0])],
        },
        timeout=10,
    )
    shop.klarna_id = response.json()["order_id"]
    shop.send("order.created")
    shop.wait_ledger("extend_authorization", 1)
    row = shop.settled()
    assert row["expires_at"] is not None
    assert len(shop.ledger("extend_authorization")) == 1


def test_captures_made_outside_ordersync_are_adopted_and_flagged(stack: Stack) -> None:
    shop = Shop(stack, [SHOES, SOCKS])
    shop.send("order.created")
    shop.settled()
    # Someone captures in Klarna's portal.
    httpx.post(
        f"{stack.sandbox_url}/ordermanagement/v1/orders/{shop.klarna_id}/captures",
        json={"captured_amount": 1200},
        auth=stack.klarna_auth,
        timeout=10,
    ).raise_for_status()
    # What the sweeper does every RESYNC_SECONDS for unfinished orders.
    with stack.db() as conn:
        conn.execute(
            "UPDATE orders SET psp_synced_at = NULL, reconcile_requested_at = now() WHERE id = %s",
            (shop.id,),
        )
    row = wait_for(
        lambda: (r := stack.order_row(shop.id)) and "needs_attention" in r["flags"] and r,
        what="the external change to be flagged",
    )
    # Contract §4: money that moved without the service is flagged `external_change`.
    assert row["flag_reason"]["needs_attention"]["code"] == "external_change"
    assert row["captured_amount"] == 1200
