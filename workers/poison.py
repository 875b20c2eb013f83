"""No poison messages: a task that fails on its row the same way every time stops, and
the row says why.

A Celery task that raises is offered again by the sweeper on its next round, for ever.
`guarded` runs the task's function a bounded number of times; an exception that is not
the database being away (those are infrastructure: the message is retried as it is) is
then recorded on the order (`needs_attention`, with the error class and where it was
raised) and the order is parked: its pending operations and its reconcile wait for an
operator (`POST /orders/{id}/reconcile` releases them). A notification that cannot be
processed is marked processed with outcome `failed`, and its order flagged.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TypeVar

import psycopg
import structlog
from psycopg_pool import PoolTimeout

from data import inbox
from data import orders as store
from domain.planner import NEEDS_ATTENTION, Flag
from workers.context import WorkerContext

log = structlog.get_logger("ordersync.tasks")

T = TypeVar("T")

MAX_TRIES = 3
# What is not the row's fault: the database or its pool being unavailable.
INFRASTRUCTURE = (psycopg.OperationalError, PoolTimeout)


def where(exc: BaseException) -> str:
    """The innermost frame of our own code the exception passed through."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/site-packages/" not in f.filename] or frames
    if not ours:
        return "unknown"
    frame = ours[-1]
    module = frame.filename.rsplit("/", 2)
    return f"{'/'.join(module[-2:])}:{frame.lineno} in {frame.name}"


def guarded(run: Callable[[], T], record: Callable[[Exception], None]) -> T | None:
    """`run()`, tried up to MAX_TRIES times; on the last failure `record(exc)` and None."""
    for attempt in range(1, MAX_TRIES + 1):
        try:
            return run()
        except INFRASTRUCTURE:
            raise
        except Exception as exc:
            log.warning("task_failed", error=type(exc).__name__, where=where(exc), attempt=attempt)
            if attempt == MAX_TRIES:
                record(exc)
    return None


def _flag(exc: Exception, task: str) -> Flag:
    return Flag(
        NEEDS_ATTENTION,
        "task_failed",
        f"{type(exc).__name__} in {task} at {where(exc)}, {MAX_TRIES} tries; "
        "fix the cause, then POST /orders/{id}/reconcile",
    )


def record_order_failure(ctx: WorkerContext, order_id: str, task: str, exc: Exception) -> None:
    """Flags and parks the order a task could not get past."""
    # Imported here: the reconciler's module imports this package's others.
    from workers.reconcile import flag_order

    with ctx.pool.connection() as conn, conn.transaction():
        order = store.lock_order(conn, order_id)
        if order is None:
            return
        flag_order(conn, order, _flag(exc, task))
        store.park_order(conn, order_id)
        store.park_operations(conn, order_id)
    log.error("task_poisoned", task=task, order_id=order_id, error=type(exc).__name__)


def record_notification_failure(
    ctx: WorkerContext, inbox_id: int, task: str, exc: Exception
) -> None:
    """Marks the notification processed (`failed`) and flags its order, if any."""
    from workers.reconcile import flag_order

    with ctx.pool.connection() as conn, conn.transaction():
        row = inbox.fail_notification(conn, inbox_id)
        order = store.lock_order(conn, row["order_id"]) if row and row["order_id"] else None
        if order is not None:
            flag_order(conn, order, _flag(exc, task))
    log.error("task_poisoned", task=task, inbox_id=inbox_id, error=type(exc).__name__)
