"""Issue 4: Klarna through Adyen, end to end on the real stack, with the sandbox's
notifications coming back to the web process."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest
from devrig.devstack import Process, free_port, wait_http

from integrations.adyen.hmac import sign
from tests.integration.stack import Stack, new_order_id, wait_for

pytestmark = pytest.mark.integration

SHOES = {"id": "sku-1", "name": "Shoes", "quantity": 1, "unit_price": 1200, "tax_rate": 2000}
SOCKS = {"id": "sku-2", "name": "Socks", "quantity": 2, "unit_price": 450, "tax_rate": 2000}
HAT = {"id": "sku-3", "name": "Hat", "quantity": 1, "unit_price": 500, "tax_rate": 2000}
BELT = {"id": "sku-4", "name": "Belt", "quantity": 1, "unit_price": 300, "tax_rate": 2000}
DISCOUNT = {
    "id": "discount",
    "name": "Discount",
    "type": "discount",
    "quantity": 1,
    "unit_price": -630,
    "tax_rate": 2000,
}
SEED = [SHOES, SOCKS, DISCOUNT]  # the contract's basket: 1470


def with_(line: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**line, **changes}


def event(
    order_id: str, psp: str, lines: list[dict[str, Any]], version: int, status: str = "open"
) -> dict[str, Any]:
    return {
        "type": "order.updated",
        "order": {
            "id": order_id,
            "version": version,
            "currency": "EUR",
            "country": "DE",
            "status": status,
            "lines": lines,
            "payment": {
                "provider": "adyen",
                "psp_reference": psp,
                "merchant_account": "OrdersyncTest",
            },
        },
    }


def payment(stack: Stack, value: int, *, notify: bool = True) -> str:
    answer = httpx.post(
        f"{stack.sandbox_url}/_sandbox/adyen/payments",
        json={
            "value": value,
            "currency": "EUR",
            "merchantAccount": "OrdersyncTest",
            "notify": notify,
        },
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["pspReference"])


def notifications(stack: Stack, **mode: Any) -> dict[str, Any]:
    answer = httpx.post(f"{stack.sandbox_url}/_sandbox/adyen/notifications", json=mode, timeout=10)
    data: dict[str, Any] = answer.json()
    return data


def settled(stack: Stack, order_id: str, count: int) -> list[dict[str, Any]]:
    """Waits until the order has `count` operations, none of them in flight."""

    def check() -> list[dict[str, Any]] | None:
        ops = stack.operations(order_id)
        done = len(ops) == count and all(
            op["status"] in ("succeeded", "rejected", "failed") for op in ops
        )
        return ops if done else None

    return wait_for(check, what=f"{count} settled operations")


def adyen_inbox(stack: Stack, psp: str) -> list[dict[str, Any]]:
    with stack.db() as conn:
        return conn.execute(
            "SELECT inbox.*, b.payload FROM inbox JOIN inbox_bodies b ON b.inbox_id = inbox.id"
            " WHERE source = 'adyen' AND (b.payload->>'pspReference' = %s"
            " OR b.payload->>'originalReference' = %s) ORDER BY id",
            (psp, psp),
        ).fetchall()


def test_decrease_refused_increase_capture_refund_release(stack: Stack) -> None:
    psp = payment(stack, 1970)
    order_id = new_order_id()
    lines = [SHOES, SOCKS, HAT, DISCOUNT]
    assert stack.send(event(order_id, psp, lines, 1)).status_code == 202

    # Decrease: the hat goes; amountUpdates with the complete new basket.
    stack.send(event(order_id, psp, SEED, 2))
    (update,) = settled(stack, order_id, 1)
    assert (update["kind"], update["status"], update["amount"]) == (
        "update_authorization",
        "succeeded",
        1470,
    )
    assert stack.order_row(order_id)["authorized_amount"] == 1470  # type: ignore[index]

    # Refused increase: Adyen answers received, then AUTHORISATION_ADJUSTMENT false.
    stack.fault(kind="reject_next_increase", count=1)
    stack.send(event(order_id, psp, [*SEED, BELT], 3))
    ops = settled(stack, order_id, 2)
    assert ops[1]["status"] == "rejected"
    assert ops[1]["error"]["code"] == "AUTHORISATION_ADJUSTMENT"
    row = wait_for(
        lambda: (r := stack.order_row(order_id)) and "needs_new_order" in r["flags"] and r,
        what="needs_new_order",
    )
    assert [line["reference"] for line in row["flag_reason"]["needs_new_order"]["lines"]] == [
        "sku-4"
    ]
    assert row["authorized_amount"] == 1470

    # The shop drops the belt and ships one pair of socks: capture 450 - 135 = 315.
    stack.send(event(order_id, psp, [SHOES, with_(SOCKS, shipped_quantity=1), DISCOUNT], 4))
    ops = settled(stack, order_id, 3)
    assert (ops[2]["kind"], ops[2]["amount"], ops[2]["status"]) == ("capture", 315, "succeeded")
    # Returned: refund exactly those lines.
    stack.send(
        event(
            order_id,
            psp,
            [SHOES, with_(SOCKS, shipped_quantity=1, returned_quantity=1), DISCOUNT],
            5,
        )
    )
    ops = settled(stack, order_id, 4)
    assert (ops[3]["kind"], ops[3]["amount"], ops[3]["status"]) == ("refund", 315, "succeeded")
    # Cancelled after a partial capture: the rest of the authorization is released.
    stack.send(
        event(
            order_id,
            psp,
            [SHOES, with_(SOCKS, shipped_quantity=1, returned_quantity=1), DISCOUNT],
            6,
            status="cancelled",
        )
    )
    ops = settled(stack, order_id, 5)
    assert (ops[4]["kind"], ops[4]["status"]) == ("release_authorization", "succeeded")

    row = stack.order_row(order_id)
    assert row is not None
    assert (
        row["authorized_amount"],
        row["captured_amount"],
        row["refunded_amount"],
        row["psp_status"],
    ) == (315, 315, 315, "captured")
    assert "needs_new_order" not in row["flags"]
    ledger = stack.ledger(psp)
    assert [(e["operation"], e["amount"]) for e in ledger] == [
        ("update_authorization", 1470),
        ("capture", 315),
        ("refund", 315),
        ("update_authorization", 315),
    ]
    capture = ledger[1]
    assert [(i["id"], i["quantity"], i["amountIncludingTax"]) for i in capture["lines"]] == [
        ("sku-2", 1, 450),
        ("discount", 1, -135),
    ]
    requests = stack.psp_requests(psp)
    assert requests and all(r["spec_errors"] == [] for r in requests)
    assert all(r["response_status"] == 201 for r in requests)
    # Each request carried its operation's key.
    keys = [r["headers"]["idempotency-key"] for r in requests]
    assert keys == [op["idempotency_key"] for op in ops]
    # Every notification was stored once and processed.
    inbox = adyen_inbox(stack, psp)
    assert len(inbox) == 6 and all(row["processed_at"] is not None for row in inbox)


def test_cancel_before_capture(stack: Stack) -> None:
    psp = payment(stack, 1470)
    order_id = new_order_id()
    stack.send(event(order_id, psp, SEED, 1))
    stack.send(event(order_id, psp, SEED, 2, status="cancelled"))
    (op,) = settled(stack, order_id, 1)
    assert (op["kind"], op["status"]) == ("cancel", "succeeded")
    assert stack.order_row(order_id)["psp_status"] == "cancelled"  # type: ignore[index]
    assert [e["operation"] for e in stack.ledger(psp)] == ["cancel"]


def test_duplicate_and_out_of_order_notifications_change_nothing(stack: Stack) -> None:
    notifications(stack, hold=True)
    try:
        psp = payment(stack, 1970)  # its AUTHORISATION (1970) is held back
        order_id = new_order_id()
        stack.send(event(order_id, psp, [SHOES, SOCKS, HAT, DISCOUNT], 1))
        stack.send(event(order_id, psp, SEED, 2))
        wait_for(
            lambda: [
                op for op in stack.operations(order_id) if op["status"] == "awaiting_notification"
            ],
            what="awaiting",
        )
        # Now the decrease's notification, then the older AUTHORISATION, each twice.
        notifications(stack, duplicate=True)
        httpx.post(
            f"{stack.sandbox_url}/_sandbox/adyen/notifications/release",
            json={"reverse": True},
            timeout=10,
        )
    finally:
        notifications(stack, duplicate=False, hold=False)
    settled(stack, order_id, 1)
    inbox = wait_for(
        lambda: (
            (rows := adyen_inbox(stack, psp))
            and len(rows) == 2
            and all(r["processed_at"] for r in rows)
            and rows
        ),
        what="both notifications processed",
    )
    assert [(r["event_type"], r["outcome"]) for r in inbox] == [
        ("AUTHORISATION_ADJUSTMENT", "succeeded"),
        ("AUTHORISATION", "stale"),
    ]
    deliveries = notifications(stack)["deliveries"]
    ours = [d for d in deliveries if psp in (d["pspReference"], d["originalReference"])]
    assert len(ours) == 4 and all(d["statuses"] == [200] for d in ours)
    row = stack.order_row(order_id)
    assert row is not None and row["authorized_amount"] == 1470  # not the late 1970
    assert [e["operation"] for e in stack.ledger(psp)] == ["update_authorization"]


def test_failed_capture_is_retried_under_a_new_key(stack: Stack) -> None:
    psp = payment(stack, 1470)
    order_id = new_order_id()
    stack.send(event(order_id, psp, SEED, 1))
    stack.fault(kind="fail_next_capture", count=1)
    stack.send(event(order_id, psp, [SHOES, with_(SOCKS, shipped_quantity=1), DISCOUNT], 2))
    (op,) = settled(stack, order_id, 1)
    assert (op["status"], op["attempts"], op["key_generation"]) == ("succeeded", 2, 1)
    captures = [r for r in stack.psp_requests(psp) if r["path"].endswith("/captures")]
    assert [r["headers"]["idempotency-key"] for r in captures] == [
        op["idempotency_key"],
        f"{op['idempotency_key']}.1",
    ]
    assert [(e["operation"], e["amount"]) for e in stack.ledger(psp)] == [("capture", 315)]
    assert stack.order_row(order_id)["captured_amount"] == 315  # type: ignore[index]


# --- the webhook's edge -----------------------------------------------------------------


def item(psp: str, event_code: str = "AUTHORISATION", value: int = 1470, **extra: Any) -> dict:
    return {
        "pspReference": psp,
        "merchantAccountCode": "OrdersyncTest",
        "merchantReference": "shop-1",
        "amount": {"currency": "EUR", "value": value},
        "eventCode": event_code,
        "success": "true",
        "eventDate": "2024-01-01T00:00:00+01:00",
        **extra,
    }


def signed(stack: Stack, *items: dict[str, Any], key_index: int = 0) -> dict[str, Any]:
    key = stack.env["ADYEN_HMAC_KEYS"].split()[key_index]
    wrapped = [
        {"NotificationRequestItem": {**i, "additionalData": {"hmacSignature": sign(i, key)}}}
        for i in items
    ]
    return {"live": "false", "notificationItems": wrapped}


def post(
    stack: Stack, body: Any, *, password: str | None = None, raw: bytes | None = None
) -> httpx.Response:
    user = stack.env["ADYEN_WEBHOOK_USERNAME"]
    secret = password if password is not None else stack.env["ADYEN_WEBHOOK_PASSWORD"]
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return httpx.post(
        f"{stack.web_url}/webhooks/adyen",
        content=raw if raw is not None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        timeout=10,
    )


def test_a_tampered_second_item_refuses_the_whole_request(stack: Stack) -> None:
    psp_a, psp_b = uuid.uuid4().hex[:16].upper(), uuid.uuid4().hex[:16].upper()
    body = signed(stack, item(psp_a), item(psp_b))
    body["notificationItems"][1]["NotificationRequestItem"]["amount"]["value"] = 1
    answer = post(stack, body)
    assert answer.status_code == 401
    assert adyen_inbox(stack, psp_a) == [] and adyen_inbox(stack, psp_b) == []


def test_auth_malformed_size_rotation_and_duplicates(stack: Stack) -> None:
    psp = uuid.uuid4().hex[:16].upper()
    body = signed(stack, item(psp))
    assert post(stack, body, password="wrong").status_code == 401
    assert post(stack, None, raw=b"{not json").status_code == 400
    assert post(stack, {"notificationItems": [{"NotificationRequestItem": {}}]}).status_code == 400
    assert post(stack, None, raw=b"x" * (1024 * 1024 + 1)).status_code == 413
    assert adyen_inbox(stack, psp) == []
    # The second (rotated-in) key verifies too.
    rotated = signed(stack, item(psp), key_index=1)
    first = post(stack, rotated)
    assert (first.status_code, first.text) == (200, "[accepted]")
    again = post(stack, rotated)
    assert (again.status_code, again.text) == (200, "[accepted]")
    assert len(adyen_inbox(stack, psp)) == 1
    # An AUTHORISATION for a payment no order has yet is kept for when it arrives.
    wait_for(lambda: adyen_inbox(stack, psp)[0]["outcome"] == "recorded", what="recorded")
    order_id = new_order_id()
    stack.send(event(order_id, psp, [SHOES, SOCKS], 1))  # 2100, but Adyen authorized 1470
    row = stack.order_row(order_id)
    assert row is not None and row["authorized_amount"] == 1470


def test_a_notification_matching_nothing_ends_orphaned(stack: Stack) -> None:
    psp = uuid.uuid4().hex[:16].upper()
    orphan = item(
        psp,
        "CAPTURE",
        100,
        originalReference="NOSUCHPAYMENT000",
        merchantReference=str(uuid.uuid4()),
    )
    assert post(stack, signed(stack, orphan)).status_code == 200
    wait_for(lambda: adyen_inbox(stack, psp)[0]["outcome"] == "unmatched", what="unmatched")
    # Retried by the sweeper until NOTIFICATION_ORPHAN_SECONDS (3 s here) have passed.
    row = wait_for(
        lambda: (r := adyen_inbox(stack, psp)[0])["processed_at"] and r, timeout=20, what="orphaned"
    )
    assert row["outcome"] == "orphaned"


def test_classic_captures_and_refunds_pass_the_v68_spec(stack: Stack) -> None:
    # One worker at a time reads the setting: swap the stack's for a classic one.
    stack.processes["worker"].stop()
    port = free_port()
    classic = Process(
        "worker-classic",
        [
            "worker",
            "--concurrency",
            "2",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(port),
        ],
        {**stack.env, "ADYEN_MODIFICATIONS_API": "classic"},
        stack.logs / "worker-classic.log",
    )
    classic.start()
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", process=classic)
        psp = payment(stack, 1470)
        order_id = new_order_id()
        stack.send(event(order_id, psp, SEED, 1))
        stack.send(event(order_id, psp, [SHOES, with_(SOCKS, shipped_quantity=1), DISCOUNT], 2))
        settled(stack, order_id, 1)
        stack.send(
            event(
                order_id,
                psp,
                [SHOES, with_(SOCKS, shipped_quantity=1, returned_quantity=1), DISCOUNT],
                3,
            )
        )
        ops = settled(stack, order_id, 2)
        assert [(o["kind"], o["status"]) for o in ops] == [
            ("capture", "succeeded"),
            ("refund", "succeeded"),
        ]
        requests = stack.psp_requests(psp)
        assert [r["path"] for r in requests] == [
            "/pal/servlet/Payment/v68/capture",
            "/pal/servlet/Payment/v68/refund",
        ]
        assert all(r["spec_errors"] == [] and r["response_status"] == 200 for r in requests)
        assert requests[0]["body"]["additionalData"]["openinvoicedata.numberOfLines"] == "2"
        assert [(e["operation"], e["amount"]) for e in stack.ledger(psp)] == [
            ("capture", 315),
            ("refund", 315),
        ]
    finally:
        classic.stop()
        stack.processes["worker"].start()
