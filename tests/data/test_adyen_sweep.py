"""The Adyen sweep (workers/sweeper.py over data/inbox.py DUE_NOTIFICATIONS) on the real
schema: it offers the notifications that are due, and finds them without reading the
ones that are not (its cost follows the due rows, not the unprocessed backlog)."""

from __future__ import annotations

from typing import Any

import psycopg

from data import inbox

Conn = psycopg.Connection[dict[str, Any]]
PARAMS = {"grace": 10, "batch": 500}


def _fill(conn: Conn) -> None:
    # 30 due now, 300 backed off for an hour (unmatched), 3,000 processed shop webhooks.
    conn.execute(
        "INSERT INTO inbox (source, event_key, event_type, received_at)"
        " SELECT 'adyen', 'due_' || g, 'CAPTURE', now() - interval '1 minute'"
        " FROM generate_series(1, 30) g"
    )
    conn.execute(
        "INSERT INTO inbox (source, event_key, event_type, received_at, outcome,"
        " next_attempt_at)"
        " SELECT 'adyen', 'later_' || g, 'CAPTURE', now() - interval '2 hours', 'unmatched',"
        " now() + interval '1 hour' FROM generate_series(1, 300) g"
    )
    conn.execute(
        "INSERT INTO inbox (source, event_key, event_type, received_at, processed_at, outcome)"
        " SELECT 'shop', 'msg_' || g, 'order.updated', now() - interval '1 day', now(),"
        " 'applied' FROM generate_series(1, 3000) g"
    )
    conn.execute("ANALYZE inbox")


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan] + [n for child in plan.get("Plans", []) for n in _nodes(child)]


def test_the_adyen_sweep_offers_the_due_notifications_and_no_other(conn: Conn) -> None:
    _fill(conn)
    offered = conn.execute(inbox.DUE_NOTIFICATIONS, PARAMS).fetchall()
    keys = {
        r["event_key"]
        for r in conn.execute(
            "SELECT event_key FROM inbox WHERE id = ANY(%s)", ([r["id"] for r in offered],)
        ).fetchall()
    }
    assert keys == {f"due_{g}" for g in range(1, 31)}


def test_the_adyen_sweep_reads_only_due_notifications_through_its_index(conn: Conn) -> None:
    _fill(conn)
    explained = conn.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + inbox.DUE_NOTIFICATIONS, PARAMS
    ).fetchone()
    assert explained is not None
    nodes = _nodes(explained["QUERY PLAN"][0]["Plan"])
    scans = [n for n in nodes if n.get("Index Name") == "inbox_unprocessed_due"]
    # An index condition on the due time: the scan stops at the first row not due yet,
    # so the 300 backed-off notifications are never read.
    assert scans and "Index Cond" in scans[0], [
        (n["Node Type"], n.get("Index Name")) for n in nodes
    ]
    assert scans[0]["Actual Rows"] == 30
