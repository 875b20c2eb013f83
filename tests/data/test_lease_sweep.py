"""The lease sweep (workers/sweeper.py over data/orders.py LEASES_ENDING) on the real
schema: what a dead worker held is resumed when its lease ends, and nothing else."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from data import orders
from domain.lines import PspLine
from domain.planner import Kind
from domain.snapshot import LineType
from tests.data.factories import insert_order
from workers.sweeper import sweep_leases

Conn = psycopg.Connection[dict[str, Any]]
LINE = PspLine("shoes", "Shoes", LineType.PHYSICAL, 1, 1200, 2500, 1200, 0, 240)


def _sent(conn: Conn, order_id: str, lease_until: str) -> None:
    insert_order(conn, order_id, authorized_amount=1200)
    order = orders.lock_order(conn, order_id)
    assert order is not None
    draft = orders.draft_operation(order, 1, Kind.CAPTURE, 1200, [LINE])
    op = orders.insert_claimed_operation(conn, order, draft, None, 10)
    conn.execute(
        f"UPDATE operations SET lease_until = {lease_until} WHERE id = %s",
        (op.id,),
    )


def test_expired_leases_now_and_ending_ones_when_they_end(conn: Conn) -> None:
    _sent(conn, "dead", "now() - interval '1 second'")
    _sent(conn, "ending", "now() + interval '4 seconds'")
    _sent(conn, "later", "now() + interval '60 seconds'")
    _sent(conn, "parked", f"'{orders.PARKED_UNTIL}'")
    insert_order(conn, "pending", authorized_amount=1200)
    order = orders.lock_order(conn, "pending")
    assert order is not None
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


def test_a_restarted_node_ends_the_leases_its_predecessor_held_and_no_others(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from data import workers

    dead, other = uuid.uuid4(), uuid.uuid4()
    monkeypatch.setattr(workers, "_incarnation", dead)
    assert workers.register(conn, "celery@pod-a") is None
    _sent(conn, "held-by-dead", "now() + interval '9 seconds'")
    _sent(conn, "parked-by-dead", f"'{orders.PARKED_UNTIL}'")
    monkeypatch.setattr(workers, "_incarnation", other)
    _sent(conn, "held-by-other", "now() + interval '9 seconds'")

    restarted = uuid.uuid4()
    monkeypatch.setattr(workers, "_incarnation", restarted)
    assert workers.register(conn, "celery@pod-a") == dead
    assert workers.register(conn, "celery@pod-b") is None
    assert workers.release_leases(conn, dead, orders.PARKED_UNTIL) == ["held-by-dead"]
    leased = {
        op.order_id: op.leased
        for oid in ("held-by-dead", "parked-by-dead", "held-by-other")
        for op in orders.operations(conn, oid)
    }
    assert leased == {"held-by-dead": False, "parked-by-dead": True, "held-by-other": True}
    # Every token names its process's incarnation in its first 8 bytes.
    assert workers.lease_token().bytes[:8] == restarted.bytes[:8]


def test_one_statement_renews_every_lease_still_held_and_no_other(conn: Conn) -> None:
    _sent(conn, "held", "now() + interval '2 seconds'")
    _sent(conn, "taken-over", "now() + interval '2 seconds'")
    (held,) = orders.operations(conn, "held")
    (taken,) = orders.operations(conn, "taken-over")
    assert held.lease_token is not None
    renewed = orders.renew_leases(
        conn, [(held.id, held.lease_token, 60.0), (taken.id, uuid.uuid4(), 60.0)]
    )
    assert renewed == {held.id}
    (after,) = orders.operations(conn, "held")
    (untouched,) = orders.operations(conn, "taken-over")
    assert after.lease_until is not None and untouched.lease_until is not None
    assert after.lease_until > untouched.lease_until
