"""Recording a success (data/orders.py RECORD_SUCCESS over migrations/0141's function):
one statement for the client, separate statements inside, so that what was committed
while it waited for the order's row lock is seen by the figures it moves and by the
operations read after it."""

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


def _normal(text: str) -> str:
    return " ".join(text.split())


def test_the_record_moves_the_figures_by_the_one_rule(conn: Conn) -> None:
    # The function's body holds the figures' rule as data/orders.py writes it for money
    # moved without the service (APPLY_SUCCESS): one rule, not two that can drift.
    row = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'ordersync_record_success'"
    ).fetchone()
    assert row is not None
    assert _normal(orders._SUCCESS_FIGURES) in _normal(row["prosrc"])


def test_a_lost_lease_records_nothing_and_moves_no_figure(conn: Conn) -> None:
    insert_order(conn, authorized_amount=2500)
    locked = orders.lock_order(conn, "o-1")
    assert locked is not None
    op = orders.insert_claimed_operation(
        conn, locked, orders.draft_operation(locked, 1, Kind.CAPTURE, 1200, [LINE]), None, 30
    )
    taken_over = orders.claim_operation(conn, op.id, 30)  # another worker, a new token
    before, after, ops = orders.record_success(conn, op, "ref-1")
    assert (before, after) == (None, None)
    assert [(o.status, o.lease_token) for o in ops] == [("sent", taken_over.lease_token)]
    order = orders.lock_order(conn, "o-1")
    assert order is not None and order.captured_amount == 0


def test_recording_a_success_sees_what_was_committed_while_it_waited_for_the_lock(
    database_url: str,
) -> None:
    order_id = f"rec-{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as setup:
        insert_order(setup, order_id, authorized_amount=2500)
        locked = orders.lock_order(setup, order_id)
        assert locked is not None
        draft = orders.draft_operation(locked, 1, Kind.CAPTURE, 1200, [LINE])
        op = orders.insert_claimed_operation(setup, locked, draft, None, 30)
        seq = locked.psp_state_seq

    recorded: list[Any] = []

    def record() -> None:
        with psycopg.connect(database_url, row_factory=dict_row) as conn:
            recorded.append(orders.record_success(conn, op, "ref-1", received=True))
            conn.commit()

    with (
        psycopg.connect(database_url, row_factory=dict_row) as holder,
        psycopg.connect(database_url, autocommit=True) as watcher,
    ):
        held = orders.lock_order(holder, order_id)
        assert held is not None
        recorder = threading.Thread(target=record)
        recorder.start()
        deadline = time.monotonic() + 10
        # The statement's text as pg_stat_activity keeps it (its first kilobyte).
        waiting = (
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%(r.r_order).id%'"
        )
        while not watcher.execute(waiting).fetchall():
            assert time.monotonic() < deadline, "the record never waited for the lock"
            time.sleep(0.02)
        # Meanwhile money moved without the service (an Adyen notification, say).
        assert orders.record_external(holder, held, Kind.CAPTURE, 300, "ext-1")
        holder.commit()
    recorder.join(10)

    ((before, after, ops),) = recorded
    # The figures moved from the order as committed while the record waited ...
    assert after is not None and after.captured_amount == 300 + 1200
    assert before is not None and before.psp_state_seq == seq + 1
    assert after.psp_state_seq == seq + 2
    # ... and the operations read after it include what was recorded meanwhile.
    assert sorted((o.kind, o.amount, o.external) for o in ops) == [
        ("capture", 300, True),
        ("capture", 1200, False),
    ]


def test_the_snapshot_is_read_again_only_when_a_newer_version_arrived(conn: Conn) -> None:
    for version, newer in ((1, False), (2, True)):
        order_id = f"o-{version}"
        insert_order(conn, order_id, authorized_amount=2500)
        known = orders.lock_order(conn, order_id)
        assert known is not None
        draft = orders.draft_operation(known, 1, Kind.CAPTURE, 1200, [LINE])
        op = orders.insert_claimed_operation(conn, known, draft, None, 30)
        if newer:  # the shop's next version arrived while the PSP was called
            conn.execute(
                "UPDATE orders SET version = 2, snapshot = snapshot || '{\"version\": 2}'"
                " WHERE id = %s",
                (order_id,),
            )
        _, after, _ = orders.record_success(conn, op, "ref-1", known=known)
        assert after is not None and after.version == version
        stored = conn.execute("SELECT snapshot FROM orders WHERE id = %s", (order_id,)).fetchone()
        assert stored is not None and after.snapshot == stored["snapshot"]
        # The one read before is taken over as it is when the version did not move.
        assert (after.snapshot is known.snapshot) is not newer
