"""The inbox: every webhook received (shop snapshots and Adyen notifications), stored
with a unique key before it is acknowledged."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, Connection

Row = dict[str, Any]

BACKLOG = """
SELECT source, count(*) AS backlog,
       extract(epoch FROM now() - min(received_at))::float8 AS oldest
FROM inbox WHERE processed_at IS NULL GROUP BY source
"""

RECENT_FOR_ORDER = """
SELECT * FROM (SELECT * FROM inbox WHERE order_id = %(order_id)s
               ORDER BY received_at DESC, id DESC LIMIT %(limit)s) AS recent
ORDER BY received_at, id
"""

# When the snapshot version an operation was planned for arrived: the start of what the
# shop waited for (orders.updated_at moves with every flag and figure).
VERSION_RECEIVED_AT = """
SELECT min(received_at) AS received_at FROM inbox
WHERE order_id = %(order_id)s AND source = 'shop' AND outcome = 'applied'
  AND (payload -> 'order' ->> 'version')::bigint = %(version)s
"""


async def backlog(conn: AsyncConnection[Row]) -> list[Row]:
    """Unprocessed rows per source, and the age of the oldest (a partial index holds only
    those, so a scrape costs little while things are healthy)."""
    return await (await conn.execute(BACKLOG)).fetchall()


async def recent_for_order(conn: AsyncConnection[Row], order_id: str, limit: int) -> list[Row]:
    cursor = await conn.execute(RECENT_FOR_ORDER, {"order_id": order_id, "limit": limit})
    return await cursor.fetchall()


def version_received_at(conn: Connection[Row], order_id: str, version: int) -> datetime | None:
    row = conn.execute(VERSION_RECEIVED_AT, {"order_id": order_id, "version": version}).fetchone()
    return None if row is None else row["received_at"]


# -- Adyen notifications (workers/adyen_inbox.py) -------------------------------------

# Unprocessed notifications, by when each is next due; each offered one is pushed back by
# its own age (capped), so one that matches nothing for hours cannot crowd out the rest.
DUE_NOTIFICATIONS = """
UPDATE inbox
SET next_attempt_at = now() + least(interval '5 minutes',
                                    greatest(make_interval(secs => %(grace)s),
                                             now() - received_at))
WHERE id IN (
    SELECT id FROM inbox
    WHERE source = 'adyen' AND processed_at IS NULL
      AND coalesce(next_attempt_at, received_at + make_interval(secs => %(grace)s)) <= now()
    ORDER BY coalesce(next_attempt_at, received_at)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""
LOCK_NOTIFICATION = "SELECT * FROM inbox WHERE id = %(id)s AND source = 'adyen' FOR UPDATE"
MARK_UNMATCHED = "UPDATE inbox SET outcome = 'unmatched' WHERE id = %(id)s"
MARK_PROCESSED = """
UPDATE inbox SET processed_at = now(), outcome = %(outcome)s,
                 order_id = coalesce(order_id, %(order_id)s)
WHERE id = %(id)s
"""


def lock_notification(conn: Connection[Row], inbox_id: int) -> Row | None:
    return conn.execute(LOCK_NOTIFICATION, {"id": inbox_id}).fetchone()


def mark_unmatched(conn: Connection[Row], inbox_id: int) -> None:
    conn.execute(MARK_UNMATCHED, {"id": inbox_id})


def mark_processed(
    conn: Connection[Row], inbox_id: int, outcome: str, order_id: str | None
) -> None:
    conn.execute(MARK_PROCESSED, {"id": inbox_id, "outcome": outcome, "order_id": order_id})


# A notification the worker cannot get past (workers/poison.py): processed, `failed`.
FAIL_NOTIFICATION = """
UPDATE inbox SET processed_at = now(), outcome = 'failed'
WHERE id = %(id)s AND processed_at IS NULL
RETURNING order_id
"""


def fail_notification(conn: Connection[Row], inbox_id: int) -> Row | None:
    return conn.execute(FAIL_NOTIFICATION, {"id": inbox_id}).fetchone()


# -- retention (workers/retention.py) ----------------------------------------------------

# The next ids after a pass's cursor, oldest first, with what the pass needs to know.
# Ids follow received_at (both are taken at insert), so the walk can stop at the first
# row too young to prune.
TAKE_CURSOR = "SELECT last_id FROM retention_cursor WHERE name = %(name)s FOR UPDATE SKIP LOCKED"
NEXT_INBOX_ROWS = """
SELECT id, received_at < now() - make_interval(secs => %(age)s) AS old,
       processed_at IS NOT NULL AS processed
FROM inbox WHERE id > %(after)s ORDER BY id LIMIT %(batch)s
"""
NULL_BODIES = "UPDATE inbox SET payload = NULL WHERE id = ANY(%(ids)s) AND payload IS NOT NULL"
DELETE_KEYS = "DELETE FROM inbox WHERE id = ANY(%(ids)s)"
MOVE_CURSOR = "UPDATE retention_cursor SET last_id = %(last)s WHERE name = %(name)s"
