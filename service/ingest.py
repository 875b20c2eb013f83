"""Storing what arrives: the inbox row and the order's new desired state, in one
transaction. Nothing here calls a PSP."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from domain.lines import basket_lines
from domain.snapshot import OrderSnapshot, ShopEvent
from ordersync.db import AsyncPool
from ordersync.errors import Conflict


@dataclass(frozen=True)
class Stored:
    outcome: str  # "applied", "duplicate" or "stale"
    order_id: str

    @property
    def needs_reconcile(self) -> bool:
        return self.outcome == "applied"


async def store_shop_event(pool: AsyncPool, webhook_id: str, event: ShopEvent) -> Stored:
    order = event.order
    try:
        async with pool.connection() as conn, conn.transaction():
            inbox = await conn.execute(
                """
                INSERT INTO inbox (source, event_key, event_type, order_id, payload,
                                   processed_at, outcome)
                VALUES ('shop', %s, %s, %s, %s, now(), 'applied')
                ON CONFLICT (source, event_key) DO NOTHING
                RETURNING id
                """,
                (webhook_id, event.type, order.id, Jsonb(event.model_dump(mode="json"))),
            )
            inbox_row = await inbox.fetchone()
            if inbox_row is None:
                return Stored("duplicate", order.id)
            outcome = await _upsert_order(conn, order)
            if outcome != "applied":
                await conn.execute(
                    "UPDATE inbox SET outcome = %s WHERE id = %s", (outcome, inbox_row["id"])
                )
            return Stored(outcome, order.id)
    except UniqueViolation as exc:
        raise Conflict(
            "another order already uses this payment", fields=[
                {"path": "order.payment", "message": "belongs to another order"}
            ]
        ) from exc


async def _upsert_order(conn: AsyncConnection[DictRow], order: OrderSnapshot) -> str:
    snapshot = Jsonb(order.model_dump(mode="json"))
    # An Adyen payment's authorization is known from its first snapshot until the
    # AUTHORISATION notification says otherwise; Klarna's is read from Klarna.
    adyen = order.provider == "adyen"
    created = await conn.execute(
        """
        INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,
                            desired_amount, authorized_amount, authorized_lines, psp_status,
                            psp_synced_at, reconcile_requested_at)
        VALUES (%(id)s, %(version)s, %(provider)s, %(psp_id)s, %(currency)s, %(status)s,
                %(snapshot)s, %(total)s,
                CASE WHEN %(adyen)s THEN coalesce(
                    (SELECT authorized_amount FROM adyen_payments
                     WHERE psp_reference = %(psp_id)s), %(total)s) END,
                CASE WHEN %(adyen)s THEN %(basket)s ELSE '[]'::jsonb END,
                CASE WHEN %(adyen)s THEN 'authorized' END,
                CASE WHEN %(adyen)s THEN now() END,
                now())
        ON CONFLICT (id) DO NOTHING
        RETURNING id
        """,
        {
            "id": order.id, "version": order.version, "provider": order.provider,
            "psp_id": order.psp_order_id, "currency": order.currency, "status": order.status,
            "snapshot": snapshot, "total": order.total, "adyen": adyen,
            # What the shopper was authorized for, so a refused increase can tell the
            # shop which lines are new.
            "basket": Jsonb([line.to_json() for line in basket_lines(order)]),
        },
    )
    if await created.fetchone() is not None:
        return "applied"
    cursor = await conn.execute(
        "SELECT version, provider, psp_order_id FROM orders WHERE id = %s FOR UPDATE",
        (order.id,),
    )
    existing = await cursor.fetchone()
    assert existing is not None
    if (existing["provider"], existing["psp_order_id"]) != (order.provider, order.psp_order_id):
        raise Conflict(
            "an order's payment cannot change",
            fields=[{"path": "order.payment", "message": "differs from the stored payment"}],
        )
    if existing["version"] >= order.version:
        return "stale"
    await conn.execute(
        """
        UPDATE orders
        SET version = %s, status = %s, currency = %s, snapshot = %s, desired_amount = %s,
            reconcile_requested_at = now(), updated_at = now()
        WHERE id = %s
        """,
        (order.version, order.status, order.currency, snapshot, order.total, order.id),
    )
    return "applied"
