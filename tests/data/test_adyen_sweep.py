"""The Adyen sweep (workers/sweeper.py over data/inbox.py DUE_NOTIFICATIONS) on the real
schema: it offers the notifications that are due, and finds them without reading the
ones that are not (its cost follows the due rows, not the unprocessed backlog); it
writes no inbox row (its state is `adyen_due`, the size of its working set)."""

from __future__ import annotations

from typing import Any

import psycopg

from data import inbox

Conn = psycopg.Connection[dict[str, Any]]
PARAMS = {"grace": 10, "batch": 500}


def _fill(conn: Conn) -> None:
    # 30 due now, 300 backed off for an hour (unmatched), 3,000 processed shop webhooks;
    # each unprocessed one with its row in adyen_due, as data/inbox.py writes them.
    conn.execute(
        "WITH stored AS (INSERT INTO inbox (source, event_key, event_type, received_at)"
        " SELECT 'adyen', 'due_' || g, 'CAPTURE', now() - interval '1 minute'"
        " FROM generate_series(1, 30) g RETURNING id, received_at)"
        " INSERT INTO adyen_due (inbox_id, received_at) SELECT id, received_at FROM stored"
    )
    conn.execute(
        "WITH stored AS (INSERT INTO inbox (source, event_key, event_type, received_at, outcome)"
        " SELECT 'adyen', 'later_' || g, 'CAPTURE', now() - interval '2 hours', 'unmatched'"
        " FROM generate_series(1, 300) g RETURNING id, received_at)"
        " INSERT INTO adyen_due (inbox_id, received_at, next_attempt_at, unmatched)"
        " SELECT id, received_at, now() + interval '1 hour', true FROM stored"
    )
    conn.execute(
        "INSERT INTO inbox (source, event_key, event_type, received_at, processed_at, outcome)"
        " SELECT 'shop', 'msg_' || g, 'order.updated', now() - interval '1 day', now(),"
        " 'applied' FROM generate_series(1, 3000) g"
    )
    conn.execute("ANALYZE inbox")
    conn.execute("ANALYZE adyen_due")


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
    scans = [n for n in nodes if n.get("Index Name") == "adyen_due_at"]
    # An index condition on the due time: the scan stops at the first row not due yet,
    # so the 300 backed-off notifications are never read.
    assert scans and "Index Cond" in scans[0], [
        (n["Node Type"], n.get("Index Name")) for n in nodes
    ]
    assert scans[0]["Actual Rows"] == 30


def test_an_offer_moves_only_the_notifications_due_row(conn: Conn) -> None:
    _fill(conn)
    before = conn.execute("SELECT ctid::text AS at FROM inbox WHERE event_key = 'due_1'").fetchone()
    offered = conn.execute(inbox.DUE_NOTIFICATIONS, PARAMS).fetchall()
    assert len(offered) == 30
    after = conn.execute("SELECT ctid::text AS at FROM inbox WHERE event_key = 'due_1'").fetchone()
    assert before == after  # no new version of the inbox row
    # Pushed back: offered again only once its back-off has passed.
    assert conn.execute(inbox.DUE_NOTIFICATIONS, PARAMS).fetchall() == []


def test_the_due_rows_follow_the_notifications_state(conn: Conn) -> None:
    _fill(conn)
    ids = [r["id"] for r in conn.execute(inbox.DUE_NOTIFICATIONS, PARAMS).fetchall()]
    inbox.mark_unmatched(conn, ids[0], 86400)
    inbox.mark_processed(conn, ids[1], "applied", None)
    assert inbox.fail_notification(conn, ids[2]) is not None
    due = {
        r["inbox_id"]: r["unmatched"]
        for r in conn.execute(
            "SELECT inbox_id, unmatched FROM adyen_due WHERE inbox_id = ANY(%s)", (ids[:3],)
        ).fetchall()
    }
    assert due == {ids[0]: True}
    counts = conn.execute(
        "SELECT count(*) FILTER (WHERE processed_at IS NULL) AS open FROM inbox"
        " WHERE source = 'adyen'"
    ).fetchone()
    total = conn.execute("SELECT count(*) AS n FROM adyen_due").fetchone()
    assert counts is not None and total is not None and counts["open"] == total["n"] == 328
