"""The periodic sweep: finds what a lost message, a dead worker or a due retry left
behind and enqueues it again. Reads Postgres only; the reconciler does the work."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from workers.context import WorkerContext

log = structlog.get_logger("ordersync.sweeper")

# Orders the web process marked but whose task never ran (Redis was down, the message
# was lost) become visible after this long: a live task takes far less.
GRACE_SECONDS = 10
BATCH = 500


def sweep(ctx: WorkerContext, enqueue: Callable[[str, float], None]) -> dict[str, int]:
    with ctx.pool.connection() as conn:
        due_retries = conn.execute(
            """
            SELECT DISTINCT order_id FROM operations
            WHERE (status = 'pending' AND coalesce(next_attempt_at, created_at) <= now())
               OR (status = 'sent' AND lease_until < now())
            LIMIT %s
            """,
            (BATCH,),
        ).fetchall()
        requested = conn.execute(
            """
            SELECT id FROM orders
            WHERE reconcile_requested_at < now() - make_interval(secs => %s)
              AND (next_reconcile_at IS NULL OR next_reconcile_at <= now())
            ORDER BY reconcile_requested_at
            LIMIT %s
            """,
            (GRACE_SECONDS, BATCH),
        ).fetchall()
    order_ids = {row["order_id"] for row in due_retries} | {row["id"] for row in requested}
    for order_id in sorted(order_ids):
        enqueue(order_id, 0)
    counts = {"due_retries": len(due_retries), "requested": len(requested)}
    if order_ids:
        log.info("sweep_enqueued", **counts)
    return counts
