"""A shop event's body is stored once (migration 0241): the event that became its order's
snapshot has its body in the order's row, every other one in inbox_bodies, and each
reader gets back the JSON value that was received, whichever place holds it."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from data import inbox
from domain.snapshot import ShopEvent
from service.ingest import _document, _params, _single
from tests.integration.stack import KETTLE, order_event

Conn = psycopg.Connection[dict[str, Any]]


def _event(order_id: str, version: int, quantity: int = 1) -> ShopEvent:
    line = {**KETTLE, "quantity": quantity, "shipped_quantity": 0, "returned_quantity": 0}
    event_type = "order.created" if version == 1 else "order.updated"
    return ShopEvent.model_validate(
        order_event(order_id, f"k-{order_id}", [line], version=version, event_type=event_type)
    )


def _store(conn: Conn, key: str, event: ShopEvent) -> dict[str, Any]:
    """Through the receiver's batch statement, as service/ingest.py sends it."""
    document = _document([_params(key, event)], [0])
    (row,) = conn.execute(inbox.STORE_SHOP_EVENTS, {"rows": document}).fetchall()
    return row


def _received(event: ShopEvent, key: str = "k") -> Any:
    return json.loads(_params(key, event).payload)


def _bodies(conn: Conn, order_id: str) -> dict[str, Any]:
    """Each inbox row's body by its key, as the operator's view reads them."""
    recent = inbox.RECENT_FOR_ORDER
    rows = conn.execute(recent, {"order_id": order_id, "limit": 50}).fetchall()
    return {r["event_key"]: r["payload"] for r in rows}


def _stored(conn: Conn) -> list[str]:
    return [
        r["event_key"]
        for r in conn.execute(
            "SELECT i.event_key FROM inbox_bodies b JOIN inbox i ON i.id = b.inbox_id"
            " WHERE i.source = 'shop' ORDER BY i.id"
        ).fetchall()
    ]


def test_a_shop_body_is_written_once_and_read_back_as_received(conn: Conn) -> None:
    v1, v2 = _event("sb-1", 1), _event("sb-1", 2, quantity=2)
    assert _store(conn, "m1", v1)["written"]
    # The applied event's body is the order's snapshot with its type: no second copy.
    assert _stored(conn) == []
    assert _bodies(conn, "sb-1") == {"m1": _received(v1)}
    assert _store(conn, "m2", v2)["written"]
    # Replaced by v2, v1's body is written to inbox_bodies, in the same statement.
    assert _stored(conn) == ["m1"]
    assert _bodies(conn, "sb-1") == {"m1": _received(v1), "m2": _received(v2)}
    # The body read back hashes as the one stored under the key (the webhook-id check).
    same_hash = conn.execute(
        "SELECT bool_and(i.payload_sha256 = sha256(convert_to(%s::jsonb::text, 'UTF8')))"
        " AS same FROM inbox i WHERE event_key = 'm2'",
        (json.dumps(_received(v2)),),
    ).fetchone()
    assert same_hash == {"same": True}


def test_a_stale_event_keeps_its_body_in_the_inbox(conn: Conn) -> None:
    v1, v2 = _event("sb-2", 1), _event("sb-2", 2, quantity=2)
    assert _store(conn, "n2", v2)["written"]
    stale = _store(conn, "n1", v1)
    assert (stale["outcome"], stale["written"]) == ("stale", False)
    assert _stored(conn) == ["n1"]
    assert _bodies(conn, "sb-2") == {"n2": _received(v2), "n1": _received(v1)}


def test_the_single_event_statement_stores_a_body_once_too(conn: Conn) -> None:
    v1, v2 = _event("sb-3", 1), _event("sb-3", 2, quantity=2)
    for key, event in (("s1", v1), ("s2", v2), ("s0", v1)):
        conn.execute(inbox.STORE_SHOP_EVENT, _single(_params(key, event))).fetchone()
    assert _stored(conn) == ["s1", "s0"]  # replaced, and stale
    assert _bodies(conn, "sb-3") == {"s1": _received(v1), "s2": _received(v2), "s0": _received(v1)}


def test_when_a_version_arrived_is_found_in_either_place(conn: Conn) -> None:
    _store(conn, "r1", _event("sb-4", 1))
    _store(conn, "r2", _event("sb-4", 2, quantity=2))
    arrived = {
        r["event_key"]: r["received_at"]
        for r in conn.execute("SELECT event_key, received_at FROM inbox WHERE order_id = 'sb-4'")
    }
    for version, key in ((1, "r1"), (2, "r2")):
        found = conn.execute(
            inbox.VERSION_RECEIVED_AT, {"order_id": "sb-4", "version": version}
        ).fetchone()
        assert found == {"received_at": arrived[key]}


def test_a_replaced_body_the_body_pass_has_passed_is_not_written_again(conn: Conn) -> None:
    """Its age is past RETENTION_BODY_DAYS: the body pass would have pruned it."""
    _store(conn, "p1", _event("sb-5", 1))
    conn.execute(
        "UPDATE retention_cursor SET last_id = (SELECT id FROM inbox WHERE event_key = 'p1')"
        " WHERE name = 'inbox_bodies'"
    )
    _store(conn, "p2", _event("sb-5", 2, quantity=2))
    assert _stored(conn) == []
    assert _bodies(conn, "sb-5")["p1"] is None


def test_a_receiver_of_the_release_before_keeps_every_body(conn: Conn) -> None:
    """A rolling deploy: the release before writes the body to inbox_bodies and updates
    the snapshot without naming the pointer, which the trigger then clears."""
    v1, v2 = _event("sb-6", 1), _event("sb-6", 2, quantity=2)
    _store(conn, "o1", v1)
    conn.execute(
        "WITH stored AS (INSERT INTO inbox (source, event_key, event_type, order_id,"
        " processed_at, outcome) VALUES ('shop', 'o2', 'order.updated', 'sb-6', now(),"
        " 'applied') RETURNING id), body AS (INSERT INTO inbox_bodies (inbox_id, payload)"
        " SELECT id, %(body)s::jsonb FROM stored)"
        " UPDATE orders SET version = 2, snapshot = %(snapshot)s::jsonb WHERE id = 'sb-6'",
        {"body": _params("o2", v2).payload, "snapshot": _params("o2", v2).snapshot},
    )
    assert _stored(conn) == ["o1", "o2"]
    assert _bodies(conn, "sb-6") == {"o1": _received(v1), "o2": _received(v2)}
