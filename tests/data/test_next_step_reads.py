"""The reads the reconciler's next step needs, in the statement that locks the order
(data/orders.py LOCK_WITH_OPERATIONS) or records a success (RECORD_SUCCESS): the
operations come back as JSON from migrations/0211's functions, read after the lock was
granted, and are typed exactly as the OPERATIONS statement types them."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from data import orders
from domain.lines import PspLine
from domain.planner import Kind
from domain.snapshot import LineType
from tests.data.factories import insert_order

Conn = psycopg.Connection[dict[str, Any]]
LINE = PspLine("shoes", "Shoes", LineType.PHYSICAL, 1, 1200, 2500, 1200, 0, 240)


def _varied_operations(conn: Conn) -> None:
    """Every kind of value an operation's row holds: a settled one with an error and a
    reference, a pending retry with its due time (due and not due), an external one
    with its basis, and one claimed with a lease token, a lease and a frozen request."""
    insert_order(conn, authorized_amount=2500)
    locked = orders.lock_order(conn, "o-1")
    assert locked is not None
    failed = orders.insert_claimed_operation(
        conn, locked, orders.draft_operation(locked, 1, Kind.CAPTURE, 1200, [LINE]), None, 30
    )
    orders.finish_operation(
        conn, failed, status="failed", error={"code": "x", "message": "ü"}, psp_reference="p-1"
    )
    for seq, retry_in in ((2, 0.0), (3, 3600.0)):
        retry = orders.insert_claimed_operation(
            conn, locked, orders.draft_operation(locked, seq, Kind.CAPTURE, 100, [LINE]), None, 30
        )
        orders.finish_operation(conn, retry, status="pending", retry_in=retry_in)
        conn.execute("UPDATE operations SET status = 'failed' WHERE id = %s", (retry.id,))
    assert orders.record_external(conn, locked, Kind.CAPTURE, 300, "ext-1")
    request = {"method": "POST", "path": "/o/k-1/captures", "body": '{"a":1}', "api": None}
    orders.insert_claimed_operation(
        conn, locked, orders.draft_operation(locked, 9, Kind.CAPTURE, 700, [LINE]), request, 30
    )


def test_the_operations_read_with_the_lock_are_those_the_operations_statement_reads(
    conn: Conn,
) -> None:
    _varied_operations(conn)
    order, ops = orders.lock_with_operations(conn, "o-1")
    assert order is not None and order.id == "o-1"
    read = orders.operations(conn, "o-1")
    assert len(read) == 5
    assert ops == read
    assert [(o.leased, o.due) for o in ops] == [(o.leased, o.due) for o in read]
    assert any(o.due for o in ops) and any(o.leased for o in ops)
    assert any(o.basis is not None for o in ops) and any(o.request for o in ops)
    # Typed as psycopg types them, not left as JSON's strings.
    assert all(isinstance(o.id, uuid.UUID) and o.created_at.tzinfo is not None for o in ops)


def test_an_unknown_order_has_no_row_and_no_operations(conn: Conn) -> None:
    assert orders.lock_with_operations(conn, "nobody") == (None, [])


def test_the_operations_read_with_a_record_are_those_the_operations_statement_reads(
    conn: Conn,
) -> None:
    _varied_operations(conn)
    (*_, claimed) = orders.operations(conn, "o-1")
    before, after, ops = orders.record_success(conn, claimed, "ref-9")
    assert before is not None and after is not None
    assert ops == orders.operations(conn, "o-1")
    assert ops[-1].status == "succeeded" and ops[-1].psp_reference == "ref-9"


def test_the_lock_sees_operations_committed_while_it_waited_for_it(database_url: str) -> None:
    # One statement for the client, but the operations are read by a statement of its
    # own after the lock was granted: a statement's single snapshot, taken before the
    # wait, would miss the operation recorded by the lock's holder.
    order_id = f"lwo-{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as setup:
        insert_order(setup, order_id, authorized_amount=2500)

    locked: list[Any] = []

    def lock() -> None:
        with psycopg.connect(database_url, row_factory=dict_row) as conn:
            locked.append(orders.lock_with_operations(conn, order_id))
            conn.rollback()

    with (
        psycopg.connect(database_url, row_factory=dict_row) as holder,
        psycopg.connect(database_url, autocommit=True) as watcher,
    ):
        held = orders.lock_order(holder, order_id)
        assert held is not None
        locker = threading.Thread(target=lock)
        locker.start()
        deadline = time.monotonic() + 10
        waiting = (
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%ordersync_lock_with_operations%'"
        )
        while not watcher.execute(waiting).fetchall():
            assert time.monotonic() < deadline, "the lock was never waited for"
            time.sleep(0.02)
        orders.insert_claimed_operation(
            holder, held, orders.draft_operation(held, 1, Kind.CAPTURE, 1200, [LINE]), None, 30
        )
        holder.commit()
    locker.join(10)

    ((order, ops),) = locked
    assert order is not None
    assert [(o.seq, o.kind, o.status) for o in ops] == [(1, "capture", "sent")]
