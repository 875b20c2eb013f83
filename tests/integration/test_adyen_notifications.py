"""Notification processing edge cases, run in this process against the stack's Postgres:
twice, late, and before the sender has recorded its own outcome."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from data import orders as store
from domain.lines import basket_lines, capture_lines
from domain.snapshot import OrderSnapshot
from ordersync.settings import Settings
from tests.integration.stack import Stack, new_order_id
from workers import adyen_inbox
from workers.context import WorkerContext, build_context

pytestmark = pytest.mark.integration

LINES = [
    {"id": "sku-1", "name": "Shoes", "quantity": 1, "unit_price": 1200, "tax_rate": 2000},
    {
        "id": "sku-2",
        "name": "Socks",
        "quantity": 2,
        "unit_price": 450,
        "tax_rate": 2000,
        "shipped_quantity": 1,
    },
    {
        "id": "discount",
        "name": "Discount",
        "type": "discount",
        "quantity": 1,
        "unit_price": -630,
        "tax_rate": 2000,
    },
]


@pytest.fixture
def ctx(stack: Stack) -> Iterator[WorkerContext]:
    context = build_context(
        Settings(database_url=stack.database_url, max_attempts=3, notification_timeout_seconds=0.5)
    )
    yield context
    context.close()


class Enqueued(list[tuple[str, float]]):
    def __call__(self, order_id: str, delay: float) -> None:
        self.append((order_id, delay))


def make_order(
    stack: Stack,
    kind: str,
    status: str,
    *,
    amount: int = 315,
    lease: bool = False,
    psp_reference: str | None = None,
) -> tuple[str, dict]:
    order_id, payment = new_order_id(), uuid.uuid4().hex[:16].upper()
    snapshot = OrderSnapshot.model_validate(
        {
            "id": order_id,
            "version": 1,
            "currency": "EUR",
            "country": "DE",
            "lines": LINES,
            "payment": {"provider": "adyen", "psp_reference": payment},
        }
    )
    lines = capture_lines(snapshot, {}) if kind == "capture" else basket_lines(snapshot)
    with stack.db() as conn:
        conn.execute(
            """INSERT INTO orders (id, version, provider, psp_order_id, currency, status,
                   snapshot, desired_amount, authorized_amount, authorized_lines, psp_status,
                   psp_synced_at)
               VALUES (%s, 1, 'adyen', %s, 'EUR', 'open', %s, 1470, 1470, %s, 'authorized',
                       now())""",
            (
                order_id,
                payment,
                Jsonb(snapshot.model_dump(mode="json")),
                Jsonb([line.to_json() for line in basket_lines(snapshot) if line.reference != "x"]),
            ),
        )
        op = conn.execute(
            """INSERT INTO operations (id, order_id, seq, kind, status, amount, lines,
                   target_version, idempotency_key, attempts, lease_token, lease_until,
                   psp_reference)
               VALUES (%s, %s, 1, %s, %s, %s, %s, 1, %s, 1, %s,
                       CASE WHEN %s THEN now() + interval '1 hour' END, %s)
               RETURNING *""",
            (
                uuid.uuid4(),
                order_id,
                kind,
                status,
                amount,
                Jsonb([line.to_json() for line in lines]),
                str(uuid.uuid4()),
                uuid.uuid4() if lease else None,
                lease,
                psp_reference,
            ),
        ).fetchone()
    assert op is not None
    return order_id, op


def notify(
    stack: Stack,
    op: dict[str, Any],
    event: str,
    success: bool = True,
    psp: str = "MODREF0000000001",
    suffix: str = "",
) -> int:
    with stack.db() as conn:
        order = conn.execute(
            "SELECT psp_order_id FROM orders WHERE id = %s", (op["order_id"],)
        ).fetchone()
        assert order is not None
        item = {
            "pspReference": psp,
            "originalReference": order["psp_order_id"],
            "merchantReference": str(op["id"]),
            "merchantAccountCode": "OrdersyncTest",
            "eventCode": event,
            "success": str(success).lower(),
            "amount": {"currency": "EUR", "value": op["amount"]},
        }
        row = conn.execute(
            "WITH stored AS (INSERT INTO inbox (source, event_key, event_type, order_id) "
            "VALUES ('adyen', %s, %s, %s) RETURNING id, received_at), "
            "body AS (INSERT INTO inbox_bodies (inbox_id, payload) SELECT id, %s FROM stored), "
            "due AS (INSERT INTO adyen_due (inbox_id, received_at) "
            "SELECT id, received_at FROM stored) "
            "SELECT id FROM stored",
            (f"{psp}:{event}:{success}:{uuid.uuid4()}{suffix}", event, op["order_id"], Jsonb(item)),
        ).fetchone()
    assert row is not None
    return int(row["id"])


def test_before_the_sender_recorded_received(stack: Stack, ctx: WorkerContext) -> None:
    order_id, op = make_order(stack, "capture", "sent", lease=True)
    enqueued = Enqueued()
    assert adyen_inbox.process(ctx, notify(stack, op, "CAPTURE"), enqueued) == "succeeded"
    assert enqueued == [(order_id, 0.0)]
    # The sender now records what Adyen answered it: its lease is gone, nothing changes.
    with ctx.pool.connection() as conn, conn.transaction():
        assert not store.finish_operation(
            conn,
            store.Operation(**op),
            status="awaiting_notification",
            psp_reference="MODREF0000000001",
        )
    (row,) = stack.operations(order_id)
    assert (row["status"], row["psp_reference"], row["lease_token"]) == (
        "succeeded",
        "MODREF0000000001",
        None,
    )
    order = stack.order_row(order_id)
    assert order is not None and order["captured_amount"] == 315


def test_twice_and_a_late_failure_after_success(stack: Stack, ctx: WorkerContext) -> None:
    order_id, op = make_order(
        stack, "capture", "awaiting_notification", psp_reference="MODREF0000000001"
    )
    first = notify(stack, op, "CAPTURE")
    assert adyen_inbox.process(ctx, first, Enqueued()) == "succeeded"
    assert adyen_inbox.process(ctx, first, Enqueued()) == "duplicate"
    assert adyen_inbox.process(ctx, notify(stack, op, "CAPTURE"), Enqueued()) == "stale"
    assert adyen_inbox.process(ctx, notify(stack, op, "CAPTURE", False), Enqueued()) == "stale"
    order = stack.order_row(order_id)
    assert order is not None and (order["captured_amount"], order["flags"]) == (315, [])
    # CAPTURE_FAILED after a success: the ledger keeps the success, a person looks.
    assert adyen_inbox.process(ctx, notify(stack, op, "CAPTURE_FAILED"), Enqueued()) == "flagged"
    (row,) = stack.operations(order_id)
    order = stack.order_row(order_id)
    assert order is not None
    assert (row["status"], order["captured_amount"], order["flags"]) == (
        "succeeded",
        315,
        ["needs_attention"],
    )


def test_failed_capture_retries_under_the_next_key_then_gives_up(
    stack: Stack, ctx: WorkerContext
) -> None:
    order_id, op = make_order(
        stack, "capture", "awaiting_notification", psp_reference="MODREF0000000001"
    )
    enqueued = Enqueued()
    assert adyen_inbox.process(ctx, notify(stack, op, "CAPTURE_FAILED"), enqueued) == "retry"
    (row,) = stack.operations(order_id)
    assert (row["status"], row["key_generation"]) == ("pending", 1)
    assert row["error"]["code"] == "CAPTURE_FAILED" and enqueued[0][0] == order_id
    # The same failure again (another delivery) is not acted on twice.
    assert adyen_inbox.process(ctx, notify(stack, op, "CAPTURE_FAILED"), Enqueued()) == "stale"
    # At the last attempt, a failure ends it.
    with stack.db() as conn:
        conn.execute(
            "UPDATE operations SET status = 'awaiting_notification', attempts = 3, "
            "psp_reference = 'MODREF0000000002' WHERE id = %s",
            (op["id"],),
        )
    last = notify(stack, op, "CAPTURE", False, psp="MODREF0000000002")
    assert adyen_inbox.process(ctx, last, Enqueued()) == "failed"
    order = stack.order_row(order_id)
    assert order is not None and order["flags"] == ["needs_attention"]


def test_refused_increase_flags_needs_new_order_with_the_new_lines(
    stack: Stack, ctx: WorkerContext
) -> None:
    order_id, op = make_order(
        stack,
        "update_authorization",
        "awaiting_notification",
        amount=1770,
        psp_reference="MODREF0000000001",
    )
    with stack.db() as conn:  # authorized before: shoes and socks only
        conn.execute(
            "UPDATE orders SET authorized_lines = (SELECT jsonb_agg(l) FROM "
            "jsonb_array_elements(authorized_lines) l WHERE l->>'reference' <> "
            "'discount') WHERE id = %s",
            (order_id,),
        )
    outcome = adyen_inbox.process(
        ctx, notify(stack, op, "AUTHORISATION_ADJUSTMENT", False), Enqueued()
    )
    assert outcome == "rejected"
    order = stack.order_row(order_id)
    assert order is not None
    assert order["flags"] == ["needs_new_order"] and order["refused_amount"] == 1770
    assert order["authorized_amount"] == 1470


def test_silent_operation_is_chased(stack: Stack, ctx: WorkerContext) -> None:
    order_id, op = make_order(
        stack, "capture", "awaiting_notification", psp_reference="MODREF0000000001"
    )
    with stack.db() as conn:
        conn.execute(
            "UPDATE operations SET updated_at = now() - interval '1 minute' WHERE id = %s",
            (op["id"],),
        )
    assert adyen_inbox.chase_silent_operations(ctx) >= 1
    order = stack.order_row(order_id)
    assert order is not None and order["flags"] == ["needs_attention"]
    assert order["flag_reason"]["needs_attention"]["code"] == "notification_timeout"
    (row,) = stack.operations(order_id)
    assert row["status"] == "awaiting_notification"  # a late notification may still settle it
