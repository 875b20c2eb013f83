"""The lease sweep (workers/sweeper.py over data/orders.py LEASES_ENDING) on the real
schema: what a dead worker held is resumed when its lease ends, and nothing else."""

from __future__ import annotations

from typing import Any

import psycopg

from data import orders
from domain.lines import PspLine
from domain.planner import Kind
from domain.snapshot import LineType
from tests.data.factories import insert_order
from workers.sweeper import sweep_leases

Conn = psycopg.Connection[dict[str, Any]]
LINE = PspLine("shoes", "Shoes", LineType.PHYSICAL, 1, 1200, 2500, 1200, 0, 240)


def _sent(conn: Conn, order_id: str, lease_until: str) -> None:
    order = insert_order(conn, order_id, authorized_amount=1200)
    draft = orders.draft_operation(order, 1, Kind.CAPTURE, 1200, [LINE])
    op = orders.insert_claimed_operation(conn, order, draft, None, 10)
    conn.execute(
        f"UPDATE operations SET lease_until = {lease_until} WHERE id = %s",
        (op["id"],),
    )


def test_expired_leases_now_and_ending_ones_when_they_end(conn: Conn) -> None:
    _sent(conn, "dead", "now() - interval '1 second'")
    _sent(conn, "ending", "now() + interval '4 seconds'")
    _sent(conn, "later", "now() + interval '60 seconds'")
    _sent(conn, "parked", f"'{orders.PARKED_UNTIL}'")
    order = insert_order(conn, "pending", authorized_amount=1200)
    draft = orders.draft_operation(order, 1, Kind.CAPTURE, 1200, [LINE])
    op = orders.insert_claimed_operation(conn, order, draft, None, 10)
    orders.finish_operation(conn, op, status="pending", retry_in=None)

    enqueued: list[tuple[str, float]] = []
    assert sweep_leases(conn, lambda oid, delay: enqueued.append((oid, delay))) == 1
    assert enqueued == [("dead", 0.0)]

    enqueued.clear()
    assert sweep_leases(conn, lambda oid, delay: enqueued.append((oid, delay)), 10) == 2
    (dead, ending) = enqueued
    assert dead == ("dead", 0.0)
    # Scheduled a hair after the lease ends (on the database's clock), not before.
    assert ending[0] == "ending" and 4.0 < ending[1] <= 4.5
