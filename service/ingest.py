"""Storing what arrives: the inbox row and the order's new desired state, in one
statement. Nothing here calls a PSP."""

from __future__ import annotations

import json
from dataclasses import dataclass

from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb

from domain.lines import basket_lines
from domain.snapshot import ShopEvent
from ordersync.db import AsyncPool
from ordersync.errors import Conflict


@dataclass(frozen=True)
class Stored:
    outcome: str  # "applied", "duplicate" or "stale"
    order_id: str

    @property
    def needs_reconcile(self) -> bool:
        return self.outcome == "applied"


# One statement, one round trip: in autocommit it is its own transaction. The `existing`
# row is locked for the statement, so the version and payment checks cannot race a
# concurrent event for the same order.
_STORE_SHOP_EVENT = """
WITH existing AS (
    SELECT version, provider, psp_order_id FROM orders WHERE id = %(id)s FOR UPDATE
), payment_changed AS (
    SELECT 1 FROM existing
    WHERE (provider, psp_order_id) IS DISTINCT FROM (%(provider)s, %(psp_id)s)
), inbox_row AS (
    INSERT INTO inbox (source, event_key, event_type, order_id, payload, processed_at, outcome)
    SELECT 'shop', %(key)s, %(type)s, %(id)s, %(payload)s::jsonb, now(),
           CASE WHEN EXISTS (SELECT 1 FROM existing WHERE version >= %(version)s)
                THEN 'stale' ELSE 'applied' END
    WHERE NOT EXISTS (SELECT 1 FROM payment_changed)
    ON CONFLICT (source, event_key) DO NOTHING
    RETURNING outcome
), written AS (
    INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,
                        desired_amount, authorized_amount, authorized_lines, psp_status,
                        psp_synced_at, reconcile_requested_at)
    SELECT %(id)s, %(version)s, %(provider)s, %(psp_id)s, %(currency)s, %(status)s,
           %(snapshot)s::jsonb, %(total)s,
           -- An Adyen payment's authorization is known from its AUTHORISATION
           -- notification, or until then from its first snapshot; Klarna's is read
           -- from Klarna before the first operation.
           CASE WHEN %(adyen)s THEN coalesce(
               (SELECT authorized_amount FROM adyen_payments
                WHERE psp_reference = %(psp_id)s), %(total)s) END,
           %(basket)s,
           CASE WHEN %(adyen)s THEN 'authorized' END,
           CASE WHEN %(adyen)s THEN now() END,
           now()
    FROM inbox_row WHERE inbox_row.outcome = 'applied'
    ON CONFLICT (id) DO UPDATE
    SET version = EXCLUDED.version, status = EXCLUDED.status, currency = EXCLUDED.currency,
        snapshot = EXCLUDED.snapshot, desired_amount = EXCLUDED.desired_amount,
        reconcile_requested_at = now(), sweep_after = NULL, updated_at = now()
    WHERE orders.version < EXCLUDED.version
      AND (orders.provider, orders.psp_order_id) = (EXCLUDED.provider, EXCLUDED.psp_order_id)
    RETURNING 1
), lowest_adyen_version AS (
    -- Until Adyen's AUTHORISATION is known, an Adyen order's authorization is its lowest
    -- version's total (the basket the shopper was authorized for), whichever version
    -- arrived first; never once an operation of ours has touched the payment.
    UPDATE orders SET authorized_amount = %(total)s, authorized_lines = %(basket)s,
                      reconcile_requested_at = now(), updated_at = now()
    WHERE id = %(id)s AND %(adyen)s AND provider = 'adyen' AND version > %(version)s
      AND psp_order_id = %(psp_id)s
      AND EXISTS (SELECT 1 FROM inbox_row WHERE outcome = 'stale')
      AND NOT EXISTS (SELECT 1 FROM adyen_payments WHERE psp_reference = %(psp_id)s)
      AND NOT EXISTS (SELECT 1 FROM operations WHERE order_id = %(id)s)
      AND NOT EXISTS (SELECT 1 FROM inbox WHERE source = 'shop' AND order_id = %(id)s
                      AND (payload -> 'order' ->> 'version')::bigint < %(version)s)
    RETURNING 1
)
SELECT (SELECT outcome FROM inbox_row) AS outcome,
       EXISTS (SELECT 1 FROM written) AS written,
       EXISTS (SELECT 1 FROM payment_changed) AS payment_changed
"""


async def store_shop_event(pool: AsyncPool, webhook_id: str, event: ShopEvent) -> Stored:
    order = event.order
    # Encoded once, by pydantic's own encoder; the event is the snapshot with its type.
    snapshot = order.model_dump_json()
    payload = f'{{"type": {json.dumps(event.type)}, "order": {snapshot}}}'
    adyen = order.provider == "adyen"
    # What an Adyen shopper was authorized for, so a refused increase can tell the shop
    # which lines are new.
    basket = [line.to_json() for line in basket_lines(order)] if adyen else []
    params = {
        "id": order.id,
        "version": order.version,
        "provider": order.provider,
        "psp_id": order.psp_order_id,
        "currency": order.currency,
        "status": order.status,
        "key": webhook_id,
        "type": event.type,
        "payload": payload,
        "snapshot": snapshot,
        "total": order.total,
        "adyen": adyen,
        "basket": Jsonb(basket),
    }
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(_STORE_SHOP_EVENT, params)
            row = await cursor.fetchone()
    except UniqueViolation as exc:
        raise Conflict(
            "another order already uses this payment",
            fields=[{"path": "order.payment", "message": "belongs to another order"}],
        ) from exc
    assert row is not None
    if row["payment_changed"]:
        raise Conflict(
            "an order's payment cannot change",
            fields=[{"path": "order.payment", "message": "differs from the stored payment"}],
        )
    if row["outcome"] is None:
        return Stored("duplicate", order.id)
    if row["outcome"] == "applied" and row["written"]:
        return Stored("applied", order.id)
    # A newer version of the order was stored first (now, or by a concurrent event).
    return Stored("stale", order.id)
