"""data/orders.py on the real schema, each test in a transaction that is rolled back."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from data import orders, outbox
from domain.lines import PspLine
from domain.planner import NEEDS_ATTENTION, NEEDS_NEW_ORDER, Kind
from domain.snapshot import LineType
from tests.data.factories import insert_order

Conn = psycopg.Connection[dict[str, Any]]
LINE = PspLine("shoes", "Shoes", LineType.PHYSICAL, 1, 1200, 2500, 1200, 0, 240)


def test_lock_order_reads_the_row_and_an_unknown_id_is_none(conn: Conn) -> None:
    insert_order(conn)
    assert orders.lock_order(conn, "o-1").version == 1
    assert orders.lock_order(conn, "nope") is None


def test_a_flag_is_set_once_with_its_reason_and_cleared_with_it(conn: Conn) -> None:
    insert_order(conn)
    reason = {"code": "declined", "message": "no", "lines": [], "version": 1}
    orders.set_flag(conn, "o-1", NEEDS_NEW_ORDER, reason, 1500)
    orders.set_flag(conn, "o-1", NEEDS_NEW_ORDER, reason, 1500)
    row = orders.lock_order(conn, "o-1")
    assert row.flags == [NEEDS_NEW_ORDER]
    assert row.flag_reason[NEEDS_NEW_ORDER]["code"] == "declined"
    assert row.refused_amount == 1500
    orders.clear_flag(conn, "o-1", NEEDS_NEW_ORDER)
    row = orders.lock_order(conn, "o-1")
    assert row.flags == [] and row.refused_amount is None


def test_clearing_one_flag_keeps_the_other(conn: Conn) -> None:
    insert_order(conn)
    reason = {"code": "x", "message": "x", "lines": [], "version": 1}
    orders.set_flag(conn, "o-1", NEEDS_NEW_ORDER, reason, None)
    orders.set_flag(conn, "o-1", NEEDS_ATTENTION, reason, None)
    orders.clear_flag(conn, "o-1", NEEDS_ATTENTION)
    assert orders.lock_order(conn, "o-1").flags == [NEEDS_NEW_ORDER]


def test_mark_in_sync_clears_what_is_due_and_sends_nothing_when_nothing_is(conn: Conn) -> None:
    insert_order(conn)
    conn.execute(
        "UPDATE orders SET reconcile_requested_at = now(), sweep_after = now() WHERE id = 'o-1'"
    )
    orders.mark_in_sync(conn, orders.lock_order(conn, "o-1"))
    row = orders.lock_order(conn, "o-1")
    assert (row.reconcile_requested_at, row.next_reconcile_at, row.sweep_after) == (None,) * 3
    # Nothing due: no statement (an UPDATE, even of nothing, writes a new row version).
    where = "SELECT ctid::text FROM orders WHERE id = 'o-1'"
    before = conn.execute(where).fetchone()
    orders.mark_in_sync(conn, row)
    assert conn.execute(where).fetchone() == before


def test_the_same_plan_gets_the_same_key(conn: Conn) -> None:
    order = insert_order(conn)
    assert orders.idempotency_key(order, 1, Kind.CAPTURE) == orders.idempotency_key(
        order, 1, Kind.CAPTURE
    )
    assert orders.idempotency_key(order, 1, Kind.CAPTURE) != orders.idempotency_key(
        order, 2, Kind.CAPTURE
    )


def test_the_schema_holds_one_operation_in_flight_per_order(conn: Conn) -> None:
    insert_order(conn, authorized_amount=1200)
    order = orders.lock_order(conn, "o-1")
    assert order is not None
    for seq in (1, 2):
        draft = orders.draft_operation(order, seq, Kind.CAPTURE, 1200, [LINE])
        request = {"method": "POST", "path": "/captures", "body": "{}", "api": None}
        if seq == 1:
            orders.insert_claimed_operation(conn, order, draft, request, 30)
            continue
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            orders.insert_claimed_operation(conn, order, draft, request, 30)
    assert [op.seq for op in orders.operations(conn, "o-1")] == [1]


def test_the_schema_refuses_a_capture_beyond_the_authorization(conn: Conn) -> None:
    insert_order(conn, authorized_amount=1000)
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        conn.execute("UPDATE orders SET captured_amount = 1200 WHERE id = 'o-1'")


def test_a_frozen_request_is_stored_with_its_key_and_read_back_as_sent(conn: Conn) -> None:
    insert_order(conn, authorized_amount=1200)
    order = orders.lock_order(conn, "o-1")
    assert order is not None
    draft = orders.draft_operation(order, 1, Kind.CAPTURE, 1200, [LINE])
    request = {"method": "POST", "path": "/o/k-1/captures", "body": '{"a":1}', "api": None}
    op = orders.insert_claimed_operation(conn, order, draft, request, 30)
    (stored,) = orders.operations(conn, "o-1")
    assert stored.idempotency_key == op.idempotency_key == draft.idempotency_key
    assert stored.request == request


def test_the_synced_event_marks_the_order_in_sync_even_when_it_is_not_recorded_again(
    conn: Conn,
) -> None:
    # The reconciler's last step is one statement (outbox.INSERT_EVENT_IN_SYNC): nothing
    # is due for an order in sync whether or not its `order.synced` is news to the shop.
    insert_order(conn)
    due = "UPDATE orders SET reconcile_requested_at = now(), sweep_after = now() WHERE id = 'o-1'"
    marks = (
        "SELECT reconcile_requested_at, next_reconcile_at, sweep_after FROM orders WHERE id = 'o-1'"
    )
    synced = ("order.synced", 1)
    for recorded in (True, False):  # the second is the last event already: not recorded
        conn.execute(due)
        inserted = outbox.insert_event(
            conn, uuid.uuid4(), "o-1", 1, "order.synced", {}, synced, in_sync=True
        )
        assert inserted() is recorded
        assert conn.execute(marks).fetchone() == dict.fromkeys(
            ("reconcile_requested_at", "next_reconcile_at", "sweep_after")
        )
    count = conn.execute("SELECT count(*) AS n FROM outbox WHERE order_id = 'o-1'").fetchone()
    assert count == {"n": 1}


def test_recording_a_success_locks_the_order_first_and_reads_when_its_version_arrived(
    conn: Conn,
) -> None:
    # What the record reads of the order before it (its PSP, its state sequence) comes
    # with the lock, and the inbox read of the confirmation metric with them.
    order = insert_order(conn, authorized_amount=2500)
    draft = orders.draft_operation(order, 1, Kind.CAPTURE, 1200, [LINE])
    locked = orders.lock_order(conn, "o-1")
    op = orders.insert_claimed_operation(conn, locked, draft, None, 30)
    before, after, ops = orders.record_success(conn, op, "ref-1", received=True)
    assert (before.provider, before.psp_state_seq) == (order.provider, order.psp_state_seq)
    assert before.received_at is None  # no inbox row for the version in this test
    assert after is not None and after.captured_amount == 1200
    assert [o.status for o in ops] == ["succeeded"]
