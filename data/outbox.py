"""The outbox: the service's own events to the shop (contract §4)."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection

Row = dict[str, Any]

BACKLOG = """
SELECT count(*) AS backlog,
       coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) AS oldest
FROM outbox WHERE delivered_at IS NULL
"""

RECENT_FOR_ORDER = """
SELECT * FROM (SELECT * FROM outbox WHERE order_id = %(order_id)s
               ORDER BY seq DESC LIMIT %(limit)s) AS recent
ORDER BY seq
"""


def webhook_id(event_id: uuid.UUID | str) -> str:
    """The `webhook-id` an event is delivered under, stable across redeliveries."""
    return f"msg_{uuid.UUID(str(event_id)).hex}"


async def backlog(conn: AsyncConnection[Row]) -> Row:
    row = await (await conn.execute(BACKLOG)).fetchone()
    assert row is not None  # an aggregate always answers one row
    return row


async def recent_for_order(conn: AsyncConnection[Row], order_id: str, limit: int) -> list[Row]:
    cursor = await conn.execute(RECENT_FOR_ORDER, {"order_id": order_id, "limit": limit})
    return await cursor.fetchall()
