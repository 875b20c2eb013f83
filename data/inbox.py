"""The inbox: every webhook received (shop snapshots and Adyen notifications), stored
with a unique key before it is acknowledged.

Its body is a row of `inbox_bodies` (migration 0061), written in the same statement as
the inbox row and deleted by retention long before the row (the key) goes. Bodies live
apart so that pruning them deletes rows of their own table, oldest first, instead of
rewriting rows of the inbox and adding entries to each of its indexes.

A shop event that became its order's snapshot has its body in the order's row instead
(migration 0241: `orders.snapshot_inbox_id` names the event; the body is its type and
that snapshot), until a newer snapshot replaces it: a trigger then writes it into
`inbox_bodies`. Each body is written once. A row with a body in neither place is one
whose body was pruned."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, Connection

Row = dict[str, Any]


def compact(sql: str) -> str:
    """`sql` without its `--` comments and with each run of white space made one space.
    psycopg keeps the parse of a statement's `%(name)s` placeholders only for statements
    of up to 4,096 bytes (psycopg._queries.MAX_CACHED_STATEMENT_LENGTH); a longer one is
    split with a regular expression at every execution. For statements whose string
    literals hold neither `--` nor runs of white space (tests/data/test_inbox_sql.py)."""
    lines = (line.split("--", 1)[0] for line in sql.splitlines())
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


# An Adyen notification that matched nothing once (`unmatched`: another system's payment
# on a shared merchant account, usually) leaves the backlog: it is counted on its own
# (UNMATCHED), so the backlog's age measures only what we have not tried yet.
# Only Adyen notifications are ever unprocessed (shop events are stored processed), and
# each unprocessed one has its row in `adyen_due` (migration 0222): both count those.
BACKLOG = """
SELECT 'adyen' AS source, count(*) AS backlog,
       extract(epoch FROM now() - min(received_at))::float8 AS oldest
FROM adyen_due WHERE NOT unmatched
HAVING count(*) > 0
"""
UNMATCHED = "SELECT count(*) AS unmatched FROM adyen_due WHERE unmatched"

# A shop event whose snapshot is its order's current one has its body in the order's
# row (migration 0241): its type and that snapshot, the JSON value it was received as.
RECENT_FOR_ORDER = """
SELECT recent.*,
       coalesce(b.payload, CASE WHEN o.id IS NOT NULL
                THEN jsonb_build_object('type', recent.event_type, 'order', o.snapshot) END)
           AS payload
FROM (SELECT * FROM inbox WHERE order_id = %(order_id)s
      ORDER BY received_at DESC, id DESC LIMIT %(limit)s) AS recent
LEFT JOIN inbox_bodies b ON b.inbox_id = recent.id
LEFT JOIN orders o ON o.id = recent.order_id AND o.snapshot_inbox_id = recent.id
ORDER BY recent.received_at, recent.id
"""

# When the snapshot version an operation was planned for arrived: the start of what the
# shop waited for (orders.updated_at moves with every flag and figure).
# A version's body is in inbox_bodies, or, while it is the order's current snapshot, in
# the order's row, which then names its inbox row (migration 0241).
VERSION_RECEIVED_AT = """
SELECT min(received_at) AS received_at FROM (
    SELECT i.received_at
    FROM inbox i JOIN inbox_bodies b ON b.inbox_id = i.id
    WHERE i.order_id = %(order_id)s AND i.source = 'shop' AND i.outcome = 'applied'
      AND (b.payload -> 'order' ->> 'version')::bigint = %(version)s
    UNION ALL
    SELECT i.received_at
    FROM orders o JOIN inbox i ON i.id = o.snapshot_inbox_id
    WHERE o.id = %(order_id)s AND o.version = %(version)s
) AS arrived
"""


# -- storing what arrives (service/ingest.py, service/adyen_webhook.py) -------------
# Each writes the inbox row and what it applies (the order's snapshot) in one
# statement: the inbox's writer owns it.

# One statement, one round trip: in autocommit it is its own transaction. The `existing`
# row is locked for the statement, so the version and payment checks cannot race a
# concurrent event for the same order.
STORE_SHOP_EVENT = """
WITH event AS (
    SELECT %(payload)s::jsonb AS body
), existing AS (
    SELECT version, provider, psp_order_id, fixed_terms, account FROM orders
    WHERE id = %(id)s FOR UPDATE
), payment_changed AS (
    -- The first field of what the first snapshot fixed (orders.fixed_terms) that this
    -- one changes; an order stored without it is held to its provider and id.
    SELECT f.key AS field FROM existing e, jsonb_each(%(fixed)s::jsonb) AS f(key, value)
    WHERE e.fixed_terms IS NOT NULL
      AND coalesce(e.fixed_terms -> f.key, 'null'::jsonb) IS DISTINCT FROM f.value
    UNION ALL
    SELECT 'order.payment' FROM existing
    WHERE (provider, psp_order_id) IS DISTINCT FROM (%(provider)s, %(psp_id)s)
    UNION ALL
    -- The account the order was routed to (contract §6); "default" (orders from
    -- before accounts) is the default account's.
    SELECT %(account_field)s FROM existing
    WHERE account IS DISTINCT FROM %(account)s
      AND NOT (coalesce(account, 'default') = 'default' AND %(account_default)s)
    ORDER BY 1 LIMIT 1
), inbox_row AS (
    INSERT INTO inbox (source, event_key, event_type, order_id, processed_at, outcome,
                       payload_sha256)
    SELECT 'shop', %(key)s, %(type)s, %(id)s, now(),
           CASE WHEN EXISTS (SELECT 1 FROM existing WHERE version >= %(version)s)
                THEN 'stale' ELSE 'applied' END,
           sha256(convert_to(event.body::text, 'UTF8'))
    FROM event
    WHERE NOT EXISTS (SELECT 1 FROM payment_changed)
    ON CONFLICT (source, event_key) DO NOTHING
    RETURNING id, outcome
), written AS (
    INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,
                        desired_amount, authorized_amount, authorized_lines, psp_status,
                        psp_synced_at, reconcile_requested_at, fixed_terms, account,
                        snapshot_inbox_id)
    SELECT %(id)s, %(version)s, %(provider)s, %(psp_id)s, %(currency)s, %(status)s,
           %(snapshot)s::jsonb, %(total)s,
           -- An Adyen payment's authorization is known from its AUTHORISATION
           -- notification, or until then from its first snapshot; Klarna's is read
           -- from Klarna before the first operation.
           CASE WHEN %(adyen)s THEN coalesce(
               (SELECT authorized_amount FROM adyen_payments
                WHERE psp_reference = %(psp_id)s AND currency = %(currency)s), %(total)s) END,
           %(basket)s,
           CASE WHEN %(adyen)s THEN 'authorized' END,
           CASE WHEN %(adyen)s THEN now() END,
           now(), %(fixed)s::jsonb, %(account)s, inbox_row.id
    FROM inbox_row WHERE inbox_row.outcome = 'applied'
    ON CONFLICT (id) DO UPDATE
    SET version = EXCLUDED.version, status = EXCLUDED.status,
        snapshot = EXCLUDED.snapshot, desired_amount = EXCLUDED.desired_amount,
        fixed_terms = coalesce(orders.fixed_terms, EXCLUDED.fixed_terms),
        reconcile_requested_at = now(), sweep_after = NULL, updated_at = now(),
        snapshot_inbox_id = EXCLUDED.snapshot_inbox_id
    WHERE orders.version < EXCLUDED.version
      AND (orders.provider, orders.psp_order_id) = (EXCLUDED.provider, EXCLUDED.psp_order_id)
    RETURNING 1
), body AS (
    -- Stored once (migration 0241): the body of the event that became its order's
    -- snapshot is in the order's row; only one that did not (stale) gets a row here.
    INSERT INTO inbox_bodies (inbox_id, payload)
    SELECT inbox_row.id, event.body FROM inbox_row, event
    WHERE NOT EXISTS (SELECT 1 FROM written)
)
SELECT (SELECT outcome FROM inbox_row) AS outcome,
       EXISTS (SELECT 1 FROM written) AS written,
       (SELECT field FROM payment_changed) AS changed_field
"""


# Until Adyen's AUTHORISATION is known, an Adyen order's authorization is its lowest
# version's total (the basket the shopper was authorized for), whichever version arrived
# first: a lower version that arrives late (stale) corrects it. Not once Adyen's
# AUTHORISATION told the figure, nor once an operation of ours changed the authorization
# (its success set the figure); an operation still in flight was built on the guess, and
# the corrected figure is what its refusal is judged against. Nor once the authorization
# ended at the PSP (an EXPIRE, an AUTHORISATION refused: data/orders.py MARK_ENDED): it
# holds what was captured, not a basket's total. (The lower versions' bodies are all in
# inbox_bodies: the one in the order's row is its version, the highest.)
CORRECT_ADYEN_FALLBACK = """
UPDATE orders SET authorized_amount = %(total)s, authorized_lines = %(basket)s,
                  reconcile_requested_at = now(), updated_at = now()
WHERE id = %(id)s AND provider = 'adyen' AND version > %(version)s
  AND psp_order_id = %(psp_id)s
  AND coalesce(psp_status, '') NOT IN ('expired', 'closed')
  AND NOT EXISTS (SELECT 1 FROM adyen_payments WHERE psp_reference = %(psp_id)s)
  AND NOT EXISTS (SELECT 1 FROM operations WHERE order_id = %(id)s AND status = 'succeeded'
                  AND kind IN ('update_authorization', 'release_authorization', 'cancel'))
  AND NOT EXISTS (SELECT 1 FROM inbox i JOIN inbox_bodies b ON b.inbox_id = i.id
                  WHERE i.source = 'shop' AND i.order_id = %(id)s
                    AND (b.payload -> 'order' ->> 'version')::bigint < %(version)s)
"""


# The same rules for a batch of events, one row each, in one statement: `batch` is the
# events in arrival order (`ord`). Each row's outcome comes back on its own, so one bad row
# (a changed or taken payment, a stale version, a repeated webhook-id) fails nobody else.
# An order, a webhook-id or a payment appears at most once per statement (see
# `_rounds`): ON CONFLICT DO UPDATE may touch a row only once per statement, and a
# later event for the same order must see the earlier one, as if they came one by one.
# Rows are written in order-id order so that concurrent batches lock in the same order.
# The batch goes as one JSON document, an array of rows (service/ingest.py `_document`),
# each row's JSON columns (the body, the snapshot, the basket, the fixed terms) embedded
# as JSON values: Postgres parses each once, as before, and the web process only joins
# text. Sent as 17 arrays instead, dumping them element by element in Python was the
# larger part of what storing a batch cost the web process (docs/performance.md).
STORE_SHOP_EVENTS_TEXT = """
WITH batch AS (
    -- Each body is parsed once, for its hash and for inbox_bodies.
    SELECT (r ->> 0)::int AS ord, r ->> 1 AS id, (r ->> 2)::bigint AS version,
           r ->> 3 AS provider, r ->> 4 AS psp_id, r ->> 5 AS currency, r ->> 6 AS status,
           r ->> 7 AS key, r ->> 8 AS type, (r ->> 9)::bigint AS total,
           r ->> 10 AS account, r ->> 11 AS account_field,
           (r -> 12)::bool AS account_default, r -> 13 AS body, r -> 14 AS snapshot,
           r -> 15 AS basket, r -> 16 AS fixed
    FROM jsonb_array_elements(%(rows)s::jsonb) AS rows(r)
), existing AS (
    -- By the primary key, at any size: `id IN (SELECT id FROM batch)` was a hash semi
    -- join over a sequential scan of orders (the planner takes the result of a function for
    -- 100 rows), whose cost grew with the table (docs/performance.md, round 7).
    SELECT id, version, provider, psp_order_id, fixed_terms, account FROM orders
    WHERE id = ANY (ARRAY(SELECT id FROM batch)) ORDER BY id FOR UPDATE
), compared AS (
    -- As in STORE_SHOP_EVENT: the first fixed field this row changes, if any.
    SELECT b.*, e.id AS existing_id, e.version AS existing_version,
           (SELECT f.key FROM jsonb_each(b.fixed) AS f(key, value)
            WHERE e.fixed_terms IS NOT NULL
              AND coalesce(e.fixed_terms -> f.key, 'null'::jsonb) IS DISTINCT FROM f.value
            UNION ALL
            SELECT 'order.payment'
            WHERE e.id IS NOT NULL
              AND (e.provider, e.psp_order_id) IS DISTINCT FROM (b.provider, b.psp_id)
            UNION ALL
            SELECT b.account_field
            WHERE e.id IS NOT NULL AND e.account IS DISTINCT FROM b.account
              AND NOT (coalesce(e.account, 'default') = 'default' AND b.account_default)
            ORDER BY 1 LIMIT 1) AS changed_field
    FROM batch b LEFT JOIN existing e ON e.id = b.id
), checked AS (
    SELECT b.*,
           b.changed_field IS NOT NULL AS payment_changed,
           b.existing_id IS NULL AND EXISTS (
               SELECT 1 FROM orders o
               WHERE (o.provider, lower(o.psp_order_id)) = (b.provider, lower(b.psp_id))
                 AND o.id <> b.id
           ) AS payment_taken,
           coalesce(b.existing_version >= b.version, false) AS is_stale
    FROM compared b
), inbox_rows AS (
    INSERT INTO inbox (source, event_key, event_type, order_id, processed_at, outcome,
                       payload_sha256)
    SELECT 'shop', key, type, id, now(),
           CASE WHEN is_stale THEN 'stale' ELSE 'applied' END,
           sha256(convert_to(body::text, 'UTF8'))
    FROM checked WHERE NOT payment_changed AND NOT payment_taken
    ORDER BY ord
    ON CONFLICT (source, event_key) DO NOTHING
    RETURNING id, event_key, outcome
), written AS (
    INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,
                        desired_amount, authorized_amount, authorized_lines, psp_status,
                        psp_synced_at, reconcile_requested_at, fixed_terms, account,
                        snapshot_inbox_id)
    SELECT c.id, c.version, c.provider, c.psp_id, c.currency, c.status, c.snapshot,
           c.total,
           CASE WHEN c.provider = 'adyen' THEN coalesce(
               (SELECT authorized_amount FROM adyen_payments
                WHERE psp_reference = c.psp_id AND currency = c.currency), c.total) END,
           c.basket,
           CASE WHEN c.provider = 'adyen' THEN 'authorized' END,
           CASE WHEN c.provider = 'adyen' THEN now() END,
           now(), c.fixed, c.account, i.id
    FROM checked c JOIN inbox_rows i ON i.event_key = c.key
    WHERE i.outcome = 'applied'
    ORDER BY c.id
    ON CONFLICT (id) DO UPDATE
    SET version = EXCLUDED.version, status = EXCLUDED.status,
        snapshot = EXCLUDED.snapshot, desired_amount = EXCLUDED.desired_amount,
        fixed_terms = coalesce(orders.fixed_terms, EXCLUDED.fixed_terms),
        reconcile_requested_at = now(), sweep_after = NULL, updated_at = now(),
        snapshot_inbox_id = EXCLUDED.snapshot_inbox_id
    WHERE orders.version < EXCLUDED.version
      AND (orders.provider, orders.psp_order_id) = (EXCLUDED.provider, EXCLUDED.psp_order_id)
    RETURNING id
), bodies AS (
    -- As in STORE_SHOP_EVENT: a body is stored here only if its order's row does not
    -- hold it (migration 0241).
    INSERT INTO inbox_bodies (inbox_id, payload)
    SELECT i.id, c.body FROM inbox_rows i JOIN checked c ON c.key = i.event_key
    WHERE NOT EXISTS (SELECT 1 FROM written w WHERE w.id = c.id)
)
SELECT c.ord, i.outcome, c.changed_field, c.payment_taken,
       EXISTS (SELECT 1 FROM written w WHERE w.id = c.id) AS written
FROM checked c LEFT JOIN inbox_rows i ON i.event_key = c.key
ORDER BY c.ord
"""
# The receiver runs it for every batch: under psycopg's cached length (compact()).
STORE_SHOP_EVENTS = compact(STORE_SHOP_EVENTS_TEXT)

# One statement for the whole request, so storing takes one round trip however many
# items there are; in autocommit it is its own transaction (all or nothing). An item the
# worker has nothing to do with is stored as processed: `ignored` (an event we do not
# act on) or `invalid` (one we act on, that fails its checks): the operator sees it,
# the worker never picks it up, and Adyen is not asked to send it again.
# A key repeated within one request is stored once, with its first item's body (the
# first row inserted takes the key; the later ones conflict). An unprocessed one is
# due for the sweep (`adyen_due`, below).
STORE_ADYEN_ITEMS = """
WITH item AS (
    SELECT e.v, e.n FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(v, n)
), stored AS (
    INSERT INTO inbox (source, event_key, event_type, order_id, processed_at, outcome)
    SELECT 'adyen', i.v->>'key', i.v->>'type',
           -- By the case-insensitive unique index (migration 0221), then exactly.
           (SELECT id FROM orders WHERE provider = 'adyen'
              AND lower(psp_order_id) = lower(i.v->>'payment') AND psp_order_id = i.v->>'payment'),
           CASE WHEN i.v->>'outcome' IS NOT NULL THEN now() END,
           i.v->>'outcome'
    FROM item i
    ORDER BY i.n
    ON CONFLICT (source, event_key) DO NOTHING
    RETURNING id, event_key, outcome, received_at
), bodies AS (
    INSERT INTO inbox_bodies (inbox_id, payload)
    SELECT s.id, (SELECT i.v->'payload' FROM item i WHERE i.v->>'key' = s.event_key
                  ORDER BY i.n LIMIT 1)
    FROM stored s
), due AS (
    INSERT INTO adyen_due (inbox_id, received_at)
    SELECT id, received_at FROM stored WHERE outcome IS NULL
)
SELECT id, outcome FROM stored
"""


async def backlog(conn: AsyncConnection[Row]) -> list[Row]:
    """Unprocessed rows per source, and the age of the oldest (a partial index holds only
    those, so a scrape costs little while things are healthy)."""
    return await (await conn.execute(BACKLOG)).fetchall()


async def unmatched(conn: AsyncConnection[Row]) -> int:
    """Adyen notifications that matched nothing yet (retried with back-off)."""
    row = await (await conn.execute(UNMATCHED)).fetchone()
    return 0 if row is None else int(row["unmatched"])


# The same webhook-id stored before with another body (NULL: stored before hashes were).
# The hash is of the event as jsonb renders it, the same in every statement here.
OTHER_BODY_UNDER_KEY = """
SELECT 1 FROM inbox
WHERE source = 'shop' AND event_key = %(key)s
  AND payload_sha256 <> sha256(convert_to((%(payload)s::jsonb)::text, 'UTF8'))
"""


async def other_body_under_key(conn: AsyncConnection[Row], key: str, payload: str) -> bool:
    cursor = await conn.execute(OTHER_BODY_UNDER_KEY, {"key": key, "payload": payload})
    return await cursor.fetchone() is not None


async def recent_for_order(conn: AsyncConnection[Row], order_id: str, limit: int) -> list[Row]:
    cursor = await conn.execute(RECENT_FOR_ORDER, {"order_id": order_id, "limit": limit})
    return await cursor.fetchall()


def version_received_at(
    conn: Connection[Row], order_id: str, version: int
) -> Callable[[], datetime | None]:
    """Sends the read; the function returned reads its answer. In pipeline mode, read
    after a later statement's result: it then came back in the same round trip."""
    cursor = conn.execute(VERSION_RECEIVED_AT, {"order_id": order_id, "version": version})

    def received_at() -> datetime | None:
        row = cursor.fetchone()
        return None if row is None else row["received_at"]

    return received_at


# -- Adyen notifications (workers/adyen_inbox.py) -------------------------------------

# When each unprocessed notification is next due is kept in `adyen_due` (migration 0222),
# one row per unprocessed notification, the size of the sweep's working set: stored with
# the notification (STORE_ADYEN_ITEMS), moved by an offer and by a miss, deleted when the
# notification is processed or failed, written again by a reprocess. Each statement
# below that changes a notification's processed state changes its row in the same
# statement. An offer updates that small row, never the inbox's (whose every update
# wrote an entry into each of its indexes, deeper as the inbox grows).

# Unprocessed notifications, by when each is next due; each offered one is pushed back by
# its own age (capped), so one that matches nothing for hours cannot crowd out the rest.
# Handed out oldest first: an UPDATE's RETURNING follows no ORDER BY, and the order in
# which notifications are processed must not depend on the table's physical layout.
DUE_NOTIFICATIONS = """
WITH offered AS (
UPDATE adyen_due
SET next_attempt_at = now() + least(CASE WHEN unmatched THEN interval '1 hour'
                                         ELSE interval '5 minutes' END,
                                    greatest(make_interval(secs => %(grace)s),
                                             now() - received_at))
WHERE inbox_id IN (
    SELECT inbox_id FROM adyen_due
    -- Implied by the next line (the grace is never negative), and the expression of
    -- adyen_due_at: a scan of that index stops at the first notification not yet due
    -- rather than read every unprocessed one.
    WHERE coalesce(next_attempt_at, received_at) <= now()
      AND coalesce(next_attempt_at, received_at + make_interval(secs => %(grace)s)) <= now()
    ORDER BY coalesce(next_attempt_at, received_at)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
RETURNING inbox_id, received_at
)
SELECT inbox_id AS id FROM offered ORDER BY received_at, inbox_id
"""
LOCK_NOTIFICATION = """
SELECT i.*, b.payload, extract(epoch FROM now() - i.received_at)::float8 AS age_seconds
FROM inbox i LEFT JOIN inbox_bodies b ON b.inbox_id = i.id
WHERE i.id = %(id)s AND i.source = 'adyen' FOR UPDATE OF i
"""
# Backed off from now by its age (at least a minute, at most an hour): a payment that is
# not ours is looked at a few times a day, not at every sweep; and once more when its
# orphan cut-off comes, to be recorded orphaned then.
MARK_UNMATCHED = """
WITH due AS (
    UPDATE adyen_due
    SET unmatched = true,
        next_attempt_at = least(
            now() + least(interval '1 hour', greatest(interval '1 minute', now() - received_at)),
            greatest(now(), received_at + make_interval(secs => %(orphan)s)))
    WHERE inbox_id = %(id)s
)
UPDATE inbox SET outcome = 'unmatched' WHERE id = %(id)s
"""
MARK_PROCESSED = """
WITH due AS (DELETE FROM adyen_due WHERE inbox_id = %(id)s)
UPDATE inbox SET processed_at = now(), outcome = %(outcome)s,
                 order_id = coalesce(order_id, %(order_id)s)
WHERE id = %(id)s
"""


def lock_notification(conn: Connection[Row], inbox_id: int) -> Row | None:
    return conn.execute(LOCK_NOTIFICATION, {"id": inbox_id}).fetchone()


def mark_unmatched(conn: Connection[Row], inbox_id: int, orphan_seconds: float) -> None:
    conn.execute(MARK_UNMATCHED, {"id": inbox_id, "orphan": orphan_seconds})


def mark_processed(
    conn: Connection[Row], inbox_id: int, outcome: str, order_id: str | None
) -> None:
    conn.execute(MARK_PROCESSED, {"id": inbox_id, "outcome": outcome, "order_id": order_id})


# A notification the worker cannot get past (workers/poison.py): processed, `failed`.
FAIL_NOTIFICATION = """
WITH failed AS (
    UPDATE inbox SET processed_at = now(), outcome = 'failed'
    WHERE id = %(id)s AND processed_at IS NULL
    RETURNING id, order_id
), due AS (
    DELETE FROM adyen_due WHERE inbox_id IN (SELECT id FROM failed)
)
SELECT order_id FROM failed
"""


def fail_notification(conn: Connection[Row], inbox_id: int) -> Row | None:
    return conn.execute(FAIL_NOTIFICATION, {"id": inbox_id}).fetchone()


# An operator's reprocess (service/operator_actions.py): a notification that failed or
# matched nothing is offered to the worker again, as if it had just been stored.
REPROCESS_NOTIFICATION = """
WITH again AS (
    UPDATE inbox SET processed_at = NULL, outcome = NULL
    WHERE id = %(id)s AND source = 'adyen' AND outcome IN ('failed', 'orphaned')
      AND EXISTS (SELECT 1 FROM inbox_bodies WHERE inbox_id = %(id)s)
    RETURNING id, order_id, outcome, received_at
), due AS (
    INSERT INTO adyen_due (inbox_id, received_at)
    SELECT id, received_at FROM again
    ON CONFLICT (inbox_id) DO UPDATE SET next_attempt_at = NULL, unmatched = false
)
SELECT id, order_id, outcome FROM again
"""
NOTIFICATION = "SELECT id, order_id, outcome FROM inbox WHERE id = %(id)s AND source = 'adyen'"


async def reprocess_notification(conn: AsyncConnection[Row], inbox_id: int) -> Row | None:
    """The notification, now unprocessed; None when it is not failed or orphaned."""
    return await (await conn.execute(REPROCESS_NOTIFICATION, {"id": inbox_id})).fetchone()


async def notification(conn: AsyncConnection[Row], inbox_id: int) -> Row | None:
    return await (await conn.execute(NOTIFICATION, {"id": inbox_id})).fetchone()


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
# A body goes by deleting its own row: no index of the inbox is touched, and the pages
# it deletes from are the oldest of inbox_bodies, next to each other, at any size.
DELETE_BODIES = "DELETE FROM inbox_bodies WHERE inbox_id = ANY(%(ids)s)"
# A key's body, if any is left (RETENTION_BODY_DAYS ≤ RETENTION_KEY_DAYS, so only an
# unprocessed row's, and those are not pruned), goes with it: nothing else deletes a body.
DELETE_KEYS = """
WITH bodies AS (DELETE FROM inbox_bodies WHERE inbox_id = ANY(%(ids)s))
DELETE FROM inbox WHERE id = ANY(%(ids)s)
"""
MOVE_CURSOR = "UPDATE retention_cursor SET last_id = %(last)s WHERE name = %(name)s"
