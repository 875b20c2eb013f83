"""The periodic sweep: finds what a lost message, a dead worker or a due retry left
behind and enqueues it again. Reads Postgres only; the reconciler does the work."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from workers.adyen_inbox import DUE_NOTIFICATIONS, chase_silent_operations
from workers.context import WorkerContext
from workers.crashpoints import crash_point

log = structlog.get_logger("ordersync.sweeper")

BATCH = 500

# The sweeps' SQL, named so that bench/scale.py times these very statements at 1M orders.
# Soonest due first. A parked operation (pending without next_attempt_at: an unknown
# outcome after its last attempt, no credentials) is not due; an operator wakes it.
# At most one operation per order is in flight, so each order comes once.
DUE_RETRIES = """
SELECT order_id FROM operations
WHERE (status = 'pending' AND next_attempt_at <= now())
   OR (status = 'sent' AND lease_until < now())
ORDER BY coalesce(next_attempt_at, lease_until)
LIMIT %(batch)s
"""
# Orders the web process marked but whose task never ran (Redis was down, the message
# was lost): a live task takes far less than the grace period. Soonest due first, and
# each order offered is pushed back by its own age (capped at 5 minutes; reset when it
# is in sync), so orders that stay marked for long (waiting on a notification) cannot
# push a lost message's order out of every sweep.
REQUESTED = """
UPDATE orders
SET sweep_after = now() + least(interval '5 minutes',
                                greatest(make_interval(secs => %(grace)s),
                                         now() - reconcile_requested_at))
WHERE id IN (
    SELECT id FROM orders
    WHERE reconcile_requested_at < now() - make_interval(secs => %(grace)s)
      AND (next_reconcile_at IS NULL OR next_reconcile_at <= now())
      AND (sweep_after IS NULL OR sweep_after <= now())
    ORDER BY greatest(coalesce(next_reconcile_at, reconcile_requested_at),
                      coalesce(sweep_after, reconcile_requested_at))
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""
# Unfinished Klarna orders are read again now and then (drift: captures or refunds made
# outside this service), and before their authorization expires.
RESYNC = """
UPDATE orders SET psp_synced_at = NULL, reconcile_requested_at = now()
WHERE id IN (
    SELECT id FROM orders
    WHERE provider = 'klarna' AND status = 'open'
      AND psp_status IN ('authorized', 'part_captured')
      AND reconcile_requested_at IS NULL
      AND NOT 'needs_attention' = ANY(flags)
      AND (psp_synced_at < now() - make_interval(secs => %(resync)s)
           OR (expires_at < now() + make_interval(days => %(days)s)
               AND captured_amount < desired_amount))
    ORDER BY psp_synced_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""
UNDELIVERED_CALLBACKS = """
SELECT DISTINCT order_id FROM outbox
WHERE delivered_at IS NULL AND next_attempt_at <= now()
  AND (lease_until IS NULL OR lease_until < now())
LIMIT %(batch)s
"""
# The inbox's SQL lives with the inbox (workers/adyen_inbox.py); named here for the bench.
UNPROCESSED_NOTIFICATIONS = DUE_NOTIFICATIONS


def sweep(ctx: WorkerContext, enqueue: Callable[[str, float], None]) -> dict[str, int]:
    settings = ctx.settings
    with ctx.pool.connection() as conn, conn.transaction():
        due_retries = conn.execute(DUE_RETRIES, {"batch": BATCH}).fetchall()
        requested = conn.execute(
            REQUESTED, {"grace": settings.sweep_grace_seconds, "batch": BATCH}
        ).fetchall()
        stale = conn.execute(
            RESYNC,
            {
                "resync": settings.resync_seconds,
                "days": settings.extend_authorization_days_before,
                "batch": BATCH,
            },
        ).fetchall()
    order_ids = (
        {row["order_id"] for row in due_retries}
        | {row["id"] for row in requested}
        | {row["id"] for row in stale}
    )
    for order_id in sorted(order_ids):
        crash_point("in_reenqueue")
        enqueue(order_id, 0)
    counts = {"due_retries": len(due_retries), "requested": len(requested), "resync": len(stale)}
    if order_ids:
        log.info("sweep_enqueued", **counts)
    return counts


# Callback retries sooner than this ride on a Celery countdown; later ones on the sweep.
CALLBACK_COUNTDOWN_LIMIT_SECONDS = 60.0


def sweep_callbacks(ctx: WorkerContext, enqueue: Callable[[str, float], None]) -> int:
    """Orders with events for the shop that are due and that no worker holds."""
    if not ctx.settings.shop_callback_url:
        return 0  # recorded only: there is nowhere to send them
    with ctx.pool.connection() as conn:
        rows = conn.execute(UNDELIVERED_CALLBACKS, {"batch": BATCH}).fetchall()
    for row in rows:
        enqueue(row["order_id"], 0)
    if rows:
        log.info("sweep_enqueued_callbacks", orders=len(rows))
    return len(rows)


# Adyen notifications the web process stored but whose task never ran, or that matched
# nothing yet, become visible after this long: a live task takes far less.
NOTIFICATION_GRACE_SECONDS = 5


def sweep_notifications(
    ctx: WorkerContext, enqueue: Callable[[int, float], None]
) -> dict[str, int]:
    """Unprocessed Adyen notifications, and operations whose notification never came."""
    with ctx.pool.connection() as conn, conn.transaction():
        rows = conn.execute(
            UNPROCESSED_NOTIFICATIONS, {"grace": NOTIFICATION_GRACE_SECONDS, "batch": BATCH}
        ).fetchall()
    for row in rows:
        enqueue(row["id"], 0)
    counts = {"notifications": len(rows), "silent_operations": chase_silent_operations(ctx)}
    if any(counts.values()):
        log.info("sweep_notifications", **counts)
    return counts
