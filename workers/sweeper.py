"""The periodic sweep: finds what a lost message, a dead worker or a due retry left
behind and enqueues it again. Reads Postgres only; the reconciler does the work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from data import job_runs
from data.inbox import DUE_NOTIFICATIONS
from data.orders import (
    DUE_RETRIES,
    LEASES_ENDING,
    REQUESTED,
    RESYNC,
    OperationRef,
    silent_operations,
)
from data.outbox import UNDELIVERED_CALLBACKS
from ordersync.db import pipelined
from ordersync.settings import Settings
from workers.adyen_inbox import SILENT_BATCH, chase_silent_operations
from workers.context import WorkerContext
from workers.crashpoints import crash_point

log = structlog.get_logger("ordersync.sweeper")

BATCH = 500

# The sweeps' SQL lives with its tables; bench/scale.py times these very statements.


def sweep(ctx: WorkerContext, enqueue: Callable[[str, float], None]) -> dict[str, int]:
    with ctx.pool.connection() as conn, conn.transaction():
        found = [read() for read in _send_orders(conn, ctx.settings)]
    return _enqueue_orders(found, enqueue)


def sweep_all(
    ctx: WorkerContext,
    enqueue_reconcile: Callable[[str, float], None],
    enqueue_delivery: Callable[[str, float], None],
    enqueue_notification: Callable[[int, float], None],
) -> dict[str, int]:
    """The periodic sweep (workers/tasks.py): the reads of `sweep`, `sweep_callbacks`
    and `sweep_notifications` in one transaction, sent together in pipeline mode and
    read after its commit (one round trip, where their own transactions take fourteen),
    then each one's work enqueued in that order."""
    settings = ctx.settings
    with pipelined(ctx.pool) as conn:
        orders = _send_orders(conn, settings)
        callbacks = _send_callbacks(conn) if settings.shop_callback_url else None
        notifications = _send_notifications(conn)
        silent = _send_silent(conn, settings)
    counts = _enqueue_orders([read() for read in orders], enqueue_reconcile)
    rows = callbacks() if callbacks is not None else []
    counts["callbacks"] = _enqueue_callbacks(rows, enqueue_delivery)
    counts |= _enqueue_notifications(ctx, notifications(), silent(), enqueue_notification)
    return counts


Reader = Callable[[], list[Any]]


def _send_orders(conn: Any, settings: Settings) -> tuple[Reader, Reader, Reader]:
    """Sends the reads of orders due for a reconcile (retries, marks, re-reads)."""
    due_retries = conn.execute(DUE_RETRIES, {"batch": BATCH}).fetchall
    requested = conn.execute(
        REQUESTED, {"grace": settings.sweep_grace_seconds, "batch": BATCH}
    ).fetchall
    stale = conn.execute(
        RESYNC,
        {
            "resync": settings.resync_seconds,
            "days": settings.extend_authorization_days_before,
            "batch": BATCH,
        },
    ).fetchall
    return due_retries, requested, stale


def _enqueue_orders(
    found: list[list[Any]], enqueue: Callable[[str, float], None]
) -> dict[str, int]:
    due_retries, requested, stale = found
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


def sweep_leases(conn: Any, enqueue: Callable[[str, float], None], horizon: float = 0.0) -> int:
    """Operations whose lease has ended (a worker died mid-call) are resumed now; with a
    `horizon`, also those whose lease ends within it, each at the moment it ends. The
    resume reads the PSP first (the reconciler's check-read); an operation whose owner
    is alive and renewing finds its lease held and is left alone. One indexed query
    (operations_leased), so beat can run it every LEASE_SWEEP_SECONDS."""
    rows = conn.execute(LEASES_ENDING, {"horizon": horizon, "batch": BATCH}).fetchall()
    for row in rows:
        # A hair after the end, on the database's clock the lease was set on.
        enqueue(row["order_id"], float(row["wait"]) + 0.1 if row["wait"] else 0.0)
    if rows:
        log.info("sweep_leases_enqueued", operations=len(rows), horizon_seconds=horizon)
    return len(rows)


# Callback retries sooner than this ride on a Celery countdown; later ones on the sweep.
CALLBACK_COUNTDOWN_LIMIT_SECONDS = 60.0


def sweep_callbacks(ctx: WorkerContext, enqueue: Callable[[str, float], None]) -> int:
    """Orders with events for the shop that are due and that no worker holds."""
    if not ctx.settings.shop_callback_url:
        return 0  # recorded only: there is nowhere to send them
    with ctx.pool.connection() as conn:
        rows = _send_callbacks(conn)()
    return _enqueue_callbacks(rows, enqueue)


def _send_callbacks(conn: Any) -> Reader:
    return conn.execute(UNDELIVERED_CALLBACKS, {"batch": BATCH}).fetchall  # type: ignore[no-any-return]


def _enqueue_callbacks(rows: list[Any], enqueue: Callable[[str, float], None]) -> int:
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
        rows = _send_notifications(conn)()
    return _enqueue_notifications(ctx, rows, None, enqueue)


def _send_notifications(conn: Any) -> Reader:
    # The grace period is read when sent (the simulation sets it for its run).
    params = {"grace": NOTIFICATION_GRACE_SECONDS, "batch": BATCH}
    return conn.execute(DUE_NOTIFICATIONS, params).fetchall  # type: ignore[no-any-return]


def _send_silent(conn: Any, settings: Settings) -> Callable[[], list[OperationRef]]:
    return silent_operations(conn, settings.notification_timeout_seconds, SILENT_BATCH)


def _enqueue_notifications(
    ctx: WorkerContext,
    rows: list[Any],
    silent: list[OperationRef] | None,
    enqueue: Callable[[int, float], None],
) -> dict[str, int]:
    for row in rows:
        enqueue(row["id"], 0)
    counts = {
        "notifications": len(rows),
        "silent_operations": chase_silent_operations(ctx, silent),
    }
    if any(counts.values()):
        log.info("sweep_notifications", **counts)
    return counts


def record_sweep(ctx: WorkerContext) -> None:
    """Stamps the end of a sweep: the console shows it, and /metrics as
    ordersync_last_sweep_timestamp_seconds."""
    with ctx.pool.connection() as conn:
        job_runs.finished(conn, job_runs.SWEEP)
