"""The audit of operator actions (reconcile, reprocess, resend, acknowledge), kept for
ever."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

Row = dict[str, Any]

RECORD = """
INSERT INTO operator_actions (order_id, action, operator, target, note, detail)
VALUES (%(order_id)s, %(action)s, %(operator)s, %(target)s, %(note)s, %(detail)s)
RETURNING *
"""

FOR_ORDER = """
SELECT * FROM (SELECT * FROM operator_actions WHERE order_id = %(order_id)s
               ORDER BY created_at DESC, id DESC LIMIT %(limit)s) AS recent
ORDER BY created_at, id
"""

# The latest acknowledgement of each order's flags, for the list of flagged orders.
ACKNOWLEDGED = """
SELECT DISTINCT ON (order_id, target) order_id, target, operator, note, created_at
FROM operator_actions
WHERE action = 'acknowledge_flag' AND order_id = ANY(%(ids)s)
ORDER BY order_id, target, created_at DESC, id DESC
"""


async def record(
    conn: AsyncConnection[Row],
    *,
    order_id: str | None,
    action: str,
    operator: str,
    target: str | None = None,
    note: str | None = None,
    detail: dict[str, Any] | None = None,
) -> Row:
    params = {
        "order_id": order_id,
        "action": action,
        "operator": operator,
        "target": target,
        "note": note,
        "detail": Jsonb(detail or {}),
    }
    row = await (await conn.execute(RECORD, params)).fetchone()
    assert row is not None  # INSERT … RETURNING answers its row
    return row


async def for_order(conn: AsyncConnection[Row], order_id: str, limit: int) -> list[Row]:
    cursor = await conn.execute(FOR_ORDER, {"order_id": order_id, "limit": limit})
    return await cursor.fetchall()


async def acknowledged(conn: AsyncConnection[Row], order_ids: list[str]) -> list[Row]:
    return await (await conn.execute(ACKNOWLEDGED, {"ids": order_ids})).fetchall()
