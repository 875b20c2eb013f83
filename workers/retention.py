"""Bounded growth: the retention job beat runs, pruning what no one needs any more.

- An inbox row's body (its row in inbox_bodies) goes RETENTION_BODY_DAYS after it was
  received, once processed: a DELETE of the body's own row, which adds no index entry and
  touches the oldest pages only, so a batch costs the same at any size of the inbox.
- Its key (source, event_key), which refuses a resent webhook as a duplicate, goes
  RETENTION_KEY_DAYS after it was received. The key has to outlast every sender's
  retry horizon, or a late retry would be taken as new:
  - Adyen retries a failed notification "for up to 30 days" (three tries at once, then
    2 min, 5 min, 10 min, 15 min, 30 min, 1 h, 2 h, 4 h, 8 h, then on from its queue;
    https://docs.adyen.com/development-resources/webhooks/troubleshoot, "Retry queue");
  - the Standard Webhooks spec (our shop's sender) recommends a schedule "spanning
    multiple days"; its example ends 75 h 35 min after the first attempt
    (https://github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md,
    "Deliverability and reliability").
  Hence 35 days by default, and never under 31 (settings).
- A delivered outbox row goes RETENTION_OUTBOX_DAYS after its delivery.
- Orders and operations are kept: they are the state and the money's history.

Every batch is its own short transaction over at most RETENTION_BATCH rows, found
through an index (the primary key from a stored cursor for the inbox, outbox_delivered
for the outbox), so a batch costs the same at 10 M rows as at 10 k and holds its row
locks for milliseconds. A run stops after RETENTION_MAX_BATCHES per kind; the next run
goes on. Two workers running it at once do not collide: the cursor row is taken with
SKIP LOCKED.
"""

from __future__ import annotations

from typing import Any

import structlog

from data.inbox import DELETE_BODIES, DELETE_KEYS, MOVE_CURSOR, NEXT_INBOX_ROWS, TAKE_CURSOR
from data.outbox import DELETE_DELIVERED
from ordersync.db import SyncPool
from ordersync.settings import Settings

log = structlog.get_logger("ordersync.retention")

DAY = 86400.0


def _inbox_pass(pool: SyncPool, name: str, action: str, age: float, batch: int) -> dict[str, int]:
    """One batch of a pass over the inbox: prunes processed rows older than `age`
    seconds after the cursor, and moves the cursor past them. An old row not yet
    processed is passed over and kept (counted): something still has to act on it."""
    with pool.connection() as conn, conn.transaction():
        cursor = conn.execute(TAKE_CURSOR, {"name": name}).fetchone()
        if cursor is None:
            return {"pruned": 0, "kept": 0, "more": 0}  # another worker is on it
        rows = conn.execute(
            NEXT_INBOX_ROWS, {"after": cursor["last_id"], "age": age, "batch": batch}
        ).fetchall()
        last = cursor["last_id"]
        ids: list[int] = []
        kept = 0
        reached_young = False
        for row in rows:
            if not row["old"]:
                reached_young = True
                break
            last = row["id"]
            if row["processed"]:
                ids.append(row["id"])
            else:
                kept += 1
        pruned = conn.execute(action, {"ids": ids}).rowcount if ids else 0
        if last != cursor["last_id"]:
            conn.execute(MOVE_CURSOR, {"last": last, "name": name})
    more = int(not reached_young and len(rows) == batch)
    return {"pruned": pruned, "kept": kept, "more": more}


def _outbox_batch(pool: SyncPool, age: float, batch: int) -> dict[str, int]:
    with pool.connection() as conn, conn.transaction():
        pruned = conn.execute(DELETE_DELIVERED, {"age": age, "batch": batch}).rowcount
    return {"pruned": pruned, "kept": 0, "more": int(pruned == batch)}


def prune(pool: SyncPool, settings: Settings) -> dict[str, int]:
    """One retention run; returns the rows pruned (and kept) per kind."""
    batch = settings.retention_batch
    passes: dict[str, Any] = {
        "inbox_bodies": lambda: _inbox_pass(
            pool, "inbox_bodies", DELETE_BODIES, settings.retention_body_days * DAY, batch
        ),
        "inbox_keys": lambda: _inbox_pass(
            pool, "inbox_keys", DELETE_KEYS, settings.retention_key_days * DAY, batch
        ),
        "outbox": lambda: _outbox_batch(pool, settings.retention_outbox_days * DAY, batch),
    }
    counts: dict[str, int] = {}
    for kind, one_batch in passes.items():
        pruned = kept = 0
        for _ in range(settings.retention_max_batches):
            result = one_batch()
            pruned += result["pruned"]
            kept += result["kept"]
            if not result["more"]:
                break
        counts[kind] = pruned
        if kept:
            counts[f"{kind}_kept_unprocessed"] = kept
    if any(counts.values()):
        log.info("retention_pruned", **counts)
    return counts
