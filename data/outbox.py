"""The outbox: the service's own events to the shop (contract §4)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from data import orders

Row = dict[str, Any]


@dataclass(slots=True)
class Event:
    """A row of `outbox`: one event for the shop and its delivery so far."""

    id: uuid.UUID
    seq: int
    order_id: str
    event_type: str
    version: int
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    parked_at: datetime | None


EVENT_COLUMNS = ", ".join(f.name for f in fields(Event))
_EVENT = class_row(Event)

# Parked events (refused by the shop too often) are not a backlog that moves; they are
# counted on their own, for an alert.
BACKLOG = """
SELECT count(*) FILTER (WHERE parked_at IS NULL) AS backlog,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL))
                ::float8, 0) AS oldest,
       count(*) FILTER (WHERE parked_at IS NULL
                        AND (last_error IS NOT NULL OR last_status IS NOT NULL)) AS failing,
       count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked
FROM outbox WHERE delivered_at IS NULL
"""

RECENT_FOR_ORDER = f"""
SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS} FROM outbox WHERE order_id = %(order_id)s
                             ORDER BY seq DESC LIMIT %(limit)s) AS recent
ORDER BY seq
"""  # noqa: S608


# Unless the order's last event is already of this type and version (order.synced is
# sent once per version); ON CONFLICT: a stable event id is recorded once.
INSERT_EVENT = """
INSERT INTO outbox (id, order_id, event_type, version, payload)
SELECT %(id)s, %(order_id)s, %(type)s, %(version)s, %(payload)s
WHERE %(skip_type)s::text IS NULL OR NOT EXISTS (
    SELECT 1 FROM (SELECT event_type, version FROM outbox WHERE order_id = %(order_id)s
                   ORDER BY seq DESC LIMIT 1) AS last
    WHERE last.event_type = %(skip_type)s AND last.version = %(skip_version)s)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# The same, with the order marked in sync (nothing due for it: data/orders.py
# MARK_IN_SYNC) in the same statement: the reconciler's last step is one statement.
# A data-modifying WITH runs whether or not the event is inserted.
INSERT_EVENT_IN_SYNC = f"WITH in_sync AS ({orders.MARK_IN_SYNC}) {INSERT_EVENT}"


# Each order's oldest undelivered event, if it is due and nobody holds it: a later event
# waits behind an earlier one that keeps failing (unless the shop refused that one so
# often that it was parked). The oldest row is locked and waited for, never skipped: a
# second deliverer claiming at the same moment must not pass it and send a later event.
# One statement for many orders (a batch's deliverer): at most one event each.
CLAIM_NEXT = f"""
UPDATE outbox SET attempts = attempts + 1,
                  lease_until = now() + make_interval(secs => %(lease)s)
WHERE id IN (
    SELECT oldest.id FROM unnest(%(order_ids)s::text[]) AS batch(order_id)
    CROSS JOIN LATERAL (
        SELECT id FROM outbox
        WHERE order_id = batch.order_id AND delivered_at IS NULL AND parked_at IS NULL
        ORDER BY seq LIMIT 1
        FOR UPDATE
    ) AS oldest
)
  AND next_attempt_at <= now()
  AND (lease_until IS NULL OR lease_until < now())
RETURNING {EVENT_COLUMNS}
"""  # noqa: S608
# The same for one order, which is what a delivery task claims (callbacks.deliver_order).
# The batch's statement is planned anew on every execution: its plan for a generic array
# of orders is costed as ten orders' lookups, so Postgres keeps choosing a custom plan
# (~0.2 ms of planning a claim). This one takes the generic plan after five executions.
CLAIM_NEXT_ONE = f"""
UPDATE outbox SET attempts = attempts + 1,
                  lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = (
    SELECT id FROM outbox
    WHERE order_id = %(order_id)s AND delivered_at IS NULL AND parked_at IS NULL
    ORDER BY seq LIMIT 1
    FOR UPDATE
)
  AND next_attempt_at <= now()
  AND (lease_until IS NULL OR lease_until < now())
RETURNING {EVENT_COLUMNS}
"""  # noqa: S608

MARK_DELIVERED = """
UPDATE outbox SET delivered_at = now(), lease_until = NULL, last_status = done.status,
                  last_error = NULL
FROM unnest(%(ids)s::uuid[], %(statuses)s::int[]) AS done(id, status)
WHERE outbox.id = done.id
"""

MARK_FAILED = """
UPDATE outbox SET next_attempt_at = now() + make_interval(secs => %(delay)s),
                  lease_until = NULL, last_status = %(status)s, last_error = %(error)s,
                  parked_at = CASE WHEN %(park)s THEN now() END
WHERE id = %(id)s
"""


def insert_event(
    conn: Connection[Row],
    event_id: uuid.UUID,
    order_id: str,
    version: int,
    event_type: str,
    payload: dict[str, Any],
    unless_last_is: tuple[str, int] | None = None,
    *,
    in_sync: bool = False,
) -> Callable[[], bool]:
    """Sends the insert of one event; the function returned reads whether it was
    recorded (False: recorded already, or it is the last one). In pipeline mode, read it
    after the commit: the insert then costs no round trip of its own. `in_sync`: the
    order is marked in sync by the same statement (data/orders.py mark_in_sync), whether
    or not the event is recorded."""
    skip_type, skip_version = unless_last_is or (None, None)
    params = {
        "id": event_id,
        "order_id": order_id,
        "type": event_type,
        "version": version,
        "payload": Jsonb(payload),
        "skip_type": skip_type,
        "skip_version": skip_version,
    }
    cursor = conn.execute(INSERT_EVENT_IN_SYNC if in_sync else INSERT_EVENT, params)
    return lambda: cursor.fetchone() is not None


def claim_next(
    conn: Connection[Row], order_ids: Sequence[str], lease_seconds: float
) -> Callable[[], list[Event]]:
    """Sends the claim of each order's next due event; the function returned reads the
    events claimed (at most one per order; none for an order with nothing due). In
    pipeline mode, read it after the commit: no round trip of its own."""
    if len(order_ids) == 1:
        one = {"order_id": order_ids[0], "lease": lease_seconds}
        return conn.cursor(row_factory=_EVENT).execute(CLAIM_NEXT_ONE, one).fetchall
    params = {"order_ids": list(order_ids), "lease": lease_seconds}
    return conn.cursor(row_factory=_EVENT).execute(CLAIM_NEXT, params).fetchall


def mark_delivered(
    conn: Connection[Row], delivered: Sequence[tuple[uuid.UUID, int | None]]
) -> None:
    """Each (event, the shop's status) delivered."""
    params = {
        "ids": [event_id for event_id, _ in delivered],
        "statuses": [status for _, status in delivered],
    }
    conn.execute(MARK_DELIVERED, params)


def mark_failed(
    conn: Connection[Row],
    event_id: uuid.UUID,
    delay: float,
    status: int | None,
    error: str,
    *,
    park: bool = False,
) -> None:
    """Due again in `delay` seconds (database clock); `park`: never again by itself."""
    params = {"id": event_id, "delay": delay, "status": status, "error": error, "park": park}
    conn.execute(MARK_FAILED, params)


UNDELIVERED_CALLBACKS = """
SELECT DISTINCT order_id FROM outbox
WHERE delivered_at IS NULL AND parked_at IS NULL AND next_attempt_at <= now()
  AND (lease_until IS NULL OR lease_until < now())
ORDER BY order_id
LIMIT %(batch)s
"""


# Retention (workers/retention.py).
# `= ANY(ARRAY(...))`, not `IN (...)`: with IN the planner hash-joins the batch against
# a sequential scan of the whole outbox (measured: 3.4x slower at 100k rows than 2k).
# And by the row versions the subquery locked (ctid: a TID Scan), not by id: ids are
# random UUIDs, so looking each one up again in outbox_pkey read a random index page
# per row, most of them not cached at millions of rows (the batch's time grew with the
# table). The same statement holds the row locks, so those versions cannot change first.
DELETE_DELIVERED = """
DELETE FROM outbox WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM outbox
    WHERE delivered_at < now() - make_interval(secs => %(age)s)
    ORDER BY delivered_at LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
))
"""


# An operator's resend: an undelivered event is due now, whatever its back-off said.
RESEND = """
UPDATE outbox SET next_attempt_at = now(), lease_until = NULL
WHERE id = %(id)s AND order_id = %(order_id)s AND delivered_at IS NULL
RETURNING id
"""


async def resend(conn: AsyncConnection[Row], order_id: str, event_id: uuid.UUID) -> bool:
    """False when the event is not the order's or was delivered already."""
    cursor = await conn.execute(RESEND, {"id": event_id, "order_id": order_id})
    return await cursor.fetchone() is not None


def webhook_id(event_id: uuid.UUID | str) -> str:
    """The `webhook-id` an event is delivered under, stable across redeliveries."""
    return f"msg_{uuid.UUID(str(event_id)).hex}"


async def backlog(conn: AsyncConnection[Row]) -> Row:
    row = await (await conn.execute(BACKLOG)).fetchone()
    assert row is not None  # an aggregate always answers one row
    return row


async def recent_for_order(conn: AsyncConnection[Row], order_id: str, limit: int) -> list[Event]:
    cursor = conn.cursor(row_factory=_EVENT)
    params = {"order_id": order_id, "limit": limit}
    return await (await cursor.execute(RECENT_FOR_ORDER, params)).fetchall()
