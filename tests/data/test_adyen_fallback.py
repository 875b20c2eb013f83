"""An Adyen order's authorization before its AUTHORISATION is known: the total of its
lowest version (contract §4), which a late lower version corrects
(data/inbox.py CORRECT_ADYEN_FALLBACK), never once the authorization has ended."""

from __future__ import annotations

from typing import Any

import psycopg

from data import inbox
from data import orders as store
from domain.snapshot import ShopEvent
from service.ingest import _params, _single
from tests.integration.stack import KETTLE, order_event

Conn = psycopg.Connection[dict[str, Any]]


def _adyen_event(order_id: str, version: int, quantity: int) -> ShopEvent:
    line = {**KETTLE, "quantity": quantity, "shipped_quantity": 0, "returned_quantity": 0}
    event = order_event(order_id, "", [line], version=version)
    event["order"]["payment"] = {
        "provider": "adyen",
        "psp_reference": "A" + order_id.replace("-", ""),
    }
    return ShopEvent.model_validate(event)


def _receive(conn: Conn, key: str, event: ShopEvent) -> None:
    """As service/ingest.py stores one event, with the fallback's correction after it."""
    params = _single(_params(key, event))
    conn.execute(inbox.STORE_SHOP_EVENT, params).fetchone()
    conn.execute(inbox.CORRECT_ADYEN_FALLBACK, params)


def _figures(conn: Conn, order_id: str) -> tuple[str, int]:
    row = conn.execute(
        "SELECT psp_status, authorized_amount FROM orders WHERE id = %s", (order_id,)
    ).fetchone()
    assert row is not None
    return row["psp_status"], row["authorized_amount"]


def test_a_late_lower_version_corrects_the_guess_not_an_authorization_that_ended(
    conn: Conn,
) -> None:
    """v2 (two kettles) arrives before v1 (one): the guess becomes v1's total. A payment
    whose AUTHORISATION was refused authorized nothing, and one that expired holds no
    more than was captured: a late v1 must not give either its total back (before, it
    set the refused payment's authorization to 6000)."""
    _receive(conn, "g2", _adyen_event("af-1", 2, quantity=2))
    assert _figures(conn, "af-1") == ("authorized", 12000)
    _receive(conn, "g1", _adyen_event("af-1", 1, quantity=1))
    assert _figures(conn, "af-1") == ("authorized", 6000)

    for order_id, end, status in (
        ("af-2", store.mark_refused, "closed"),
        ("af-3", store.mark_expired, "expired"),
    ):
        _receive(conn, f"{order_id}-2", _adyen_event(order_id, 2, quantity=2))
        end(conn, order_id)
        assert _figures(conn, order_id) == (status, 0)
        _receive(conn, f"{order_id}-1", _adyen_event(order_id, 1, quantity=1))
        assert _figures(conn, order_id) == (status, 0)
