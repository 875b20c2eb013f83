"""Thin Celery tasks over the reconciler, the notification processor, the sweeper and
retention.

Each task is a unit of work (workers/celery_app.py binds its log context and sends the
jobs it asked for once it has returned); the functions here only call the plain code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from celery import Task, signals
from celery.utils.time import get_exponential_backoff_interval
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from data import workers as workers_repo
from data.orders import PARKED_UNTIL
from ordersync import jobs, metrics
from ordersync.accounts import build_accounts
from ordersync.jobs import Job, enqueue_job
from ordersync.settings import get_settings
from workers import accounts_check, adyen_inbox, callbacks, poison, retention, sweeper
from workers.celery_app import app, send_jobs
from workers.context import close_context, get_context
from workers.crashpoints import crash_point
from workers.reconcile import Reconciler

log = structlog.get_logger("ordersync.tasks")

# A task that meets a database error (Postgres restarting, a connection cut, no
# connection within the pool's timeout) is sent again with back-off, never dropped: the
# work is in Postgres, so running it again is safe. Back-off doubles from 1 s, with full
# jitter, to at most 4 s, so work resumes within seconds of Postgres coming back.
# Celery's retry publishes the new message before the old one is acknowledged.
DATABASE_ERRORS = (psycopg.OperationalError, PoolTimeout)
RETRY_ON_DATABASE_ERRORS: dict[str, Any] = {
    "autoretry_for": DATABASE_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 4,
    "retry_jitter": True,
    "max_retries": None,
}


def enqueue_reconcile(order_id: str, delay: float = 0.0) -> None:
    enqueue_job(Job.RECONCILE_ORDER, order_id, delay=delay)


def enqueue_delivery(order_id: str, delay: float = 0.0) -> None:
    enqueue_job(Job.DELIVER_CALLBACKS, order_id, delay=delay)


def enqueue_notification(inbox_id: int, delay: float = 0.0) -> None:
    enqueue_job(Job.PROCESS_NOTIFICATION, inbox_id, delay=delay)


@app.task(name=Job.RECONCILE_ORDER.value, bind=True, **RETRY_ON_DATABASE_ERRORS)
def reconcile_order(self: Task, order_id: str, force: bool = False) -> str:
    metrics.heartbeat()
    outcome = poison.guarded(
        lambda: Reconciler(get_context(), enqueue_reconcile).run(order_id, force=force),
        lambda exc: poison.record_order_failure(get_context(), order_id, "reconcile_order", exc),
    )
    crash_point("after_commit")  # everything committed, the message not yet acked
    return outcome or "poisoned"


@app.task(name=Job.RECONCILE_ORDERS.value, bind=True, max_retries=None)
def reconcile_orders(
    self: Task, order_ids: list[str], request_ids: list[str | None] | None = None
) -> dict[str, str]:
    """The orders of one message (ordersync.jobs.batch_reconciles), each reconciled as
    `reconcile_order` reconciles it (reconcile_batch)."""
    metrics.heartbeat()

    def retry(rest: list[str], rest_ids: list[str | None] | None, exc: Exception) -> Exception:
        countdown = get_exponential_backoff_interval(
            factor=RETRY_ON_DATABASE_ERRORS["retry_backoff"],
            retries=self.request.retries,
            maximum=RETRY_ON_DATABASE_ERRORS["retry_backoff_max"],
            full_jitter=RETRY_ON_DATABASE_ERRORS["retry_jitter"],
        )
        retried: Exception = self.retry(
            args=(rest, rest_ids), kwargs={}, exc=exc, countdown=countdown
        )
        return retried

    outcomes = reconcile_batch(order_ids, request_ids, retry)
    crash_point("after_commit")  # everything committed, the message not yet acked
    return outcomes


Retry = Callable[[list[str], list[str | None] | None, Exception], Exception]


def reconcile_batch(
    order_ids: list[str], request_ids: list[str | None] | None, retry: Retry
) -> dict[str, str]:
    """Each order on its own: its own row lock and transactions, its own poison guard.
    One order's failure neither stops nor undoes the others: an exception that escapes
    even the guard is logged and the loop goes on (the order's state is in Postgres, and
    the sweeper offers it again). The database being away stops the loop: that order
    and those after it are sent again as one message (`retry` makes the exception that
    does it), with the back-off a single order's message gets; those before it are done
    and committed."""
    reconciler = Reconciler(get_context(), enqueue_reconcile)
    outcomes: dict[str, str] = {}
    for i, order_id in enumerate(order_ids):
        request_id = request_ids[i] if request_ids else None
        if request_id:
            structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            outcome = poison.guarded(
                functools.partial(reconciler.run, order_id),
                functools.partial(_record_reconcile_failure, order_id),
            )
        except DATABASE_ERRORS as exc:
            raise retry(order_ids[i:], request_ids[i:] if request_ids else None, exc) from exc
        except Exception as exc:
            log.exception("reconcile_failed_in_batch", order_id=order_id, error=type(exc).__name__)
            outcome = "failed"
        finally:
            if request_id:
                structlog.contextvars.unbind_contextvars("request_id")
        outcomes[order_id] = outcome or "poisoned"
    return outcomes


def _record_reconcile_failure(order_id: str, exc: Exception) -> None:
    poison.record_order_failure(get_context(), order_id, "reconcile_order", exc)


@app.task(name=Job.DELIVER_CALLBACKS.value, bind=True, **RETRY_ON_DATABASE_ERRORS)
def deliver_callbacks(self: Task, order_id: str) -> int:
    metrics.heartbeat()
    ctx = get_context()
    delivered, retry_in = callbacks.deliver_order(ctx.pool, ctx.http, ctx.settings, order_id)
    # Short waits ride on a countdown; longer ones are the sweeper's.
    if retry_in is not None and retry_in <= sweeper.CALLBACK_COUNTDOWN_LIMIT_SECONDS:
        enqueue_delivery(order_id, retry_in)
    return delivered


@app.task(name=Job.DELIVER_CALLBACK_BATCH.value, bind=True, **RETRY_ON_DATABASE_ERRORS)
def deliver_callback_batch(self: Task, order_ids: list[str]) -> int:
    """Each order's due events as `deliver_callbacks` delivers them, the orders side by
    side (workers/delivery_batch.py, callbacks.deliver_orders). Run again after a
    database error, it finds what it delivered already marked delivered."""
    metrics.heartbeat()
    ctx = get_context()
    delivered = 0
    results = callbacks.deliver_orders(ctx.pool, ctx.http, ctx.settings, order_ids)
    for order_id, (count, retry_in) in results.items():
        delivered += count
        if retry_in is not None and retry_in <= sweeper.CALLBACK_COUNTDOWN_LIMIT_SECONDS:
            enqueue_delivery(order_id, retry_in)
    return delivered


@app.task(name=Job.PROCESS_NOTIFICATION.value, bind=True, **RETRY_ON_DATABASE_ERRORS)
def process_notification(self: Task, inbox_id: int) -> str:
    outcome = poison.guarded(
        lambda: adyen_inbox.process(get_context(), inbox_id, enqueue_reconcile),
        lambda exc: poison.record_notification_failure(
            get_context(), inbox_id, "process_notification", exc
        ),
    )
    return outcome or "poisoned"


@app.task(name=Job.SWEEP.value, bind=True)
def sweep(self: Task) -> dict[str, int]:
    metrics.heartbeat()
    counts = sweeper.sweep_all(
        get_context(), enqueue_reconcile, enqueue_delivery, enqueue_notification
    )
    sweeper.record_sweep(get_context())
    return counts


@app.task(name=Job.CHECK_ACCOUNTS.value, bind=True)
def check_accounts(self: Task) -> dict[str, str]:
    """Daily: every account's credentials, into `ordersync_account_credentials_ok`."""
    metrics.heartbeat()
    ctx = get_context()
    checked = accounts_check.check_accounts(build_accounts(ctx.settings), ctx.http)
    return {f"{c.provider}/{c.account}": c.result for c in checked}


@app.task(name=Job.SWEEP_LEASES.value, bind=True)
def sweep_leases(self: Task) -> int:
    """Beat's short sweep (LEASE_SWEEP_SECONDS): dead workers' operations, resumed as
    soon as their lease has ended rather than at the next full sweep."""
    metrics.heartbeat()
    with get_context().pool.connection() as conn:
        return sweeper.sweep_leases(conn, enqueue_reconcile)


@signals.worker_init.connect
def _fix_incarnation(**_: Any) -> None:
    # Before the pool forks: every process of this worker takes leases in its name.
    workers_repo.incarnation()


@signals.worker_ready.connect
def _resume_leases(sender: Any = None, **_: Any) -> None:
    """A worker that starts (or restarts after a crash) resumes what its dead
    predecessor of the same node name held at once, and schedules the resume of every
    other lease ending within one lease for the moment it ends: check-read first, as
    any lease that ran out. Runs in the worker's main process, on a connection of its
    own (a prefork parent keeps no pool)."""
    settings = get_settings()
    if settings.database_url is None:
        return
    node = str(getattr(sender, "hostname", "") or "")
    try:
        with (
            jobs.unit_of_work(send_jobs),
            psycopg.connect(
                settings.database_url.get_secret_value(),
                row_factory=dict_row,
                autocommit=True,
                connect_timeout=5,
            ) as conn,
        ):
            previous = workers_repo.register(conn, node) if node else None
            if previous is not None:
                released = workers_repo.release_leases(conn, previous, PARKED_UNTIL)
                for order_id in released:
                    enqueue_reconcile(order_id)
                if released:
                    log.warning("predecessor_leases_released", node=node, operations=len(released))
            sweeper.sweep_leases(conn, enqueue_reconcile, horizon=settings.lease_seconds)
    except psycopg.Error as exc:
        # Only a delay: beat's lease sweep finds them too.
        log.warning("resume_leases_failed", error=type(exc).__name__)


@app.task(name=Job.RETENTION.value, bind=True)
def prune_retention(self: Task) -> dict[str, int]:
    # Not retried: the next run (RETENTION_INTERVAL_SECONDS) goes on where this stopped.
    ctx = get_context()
    return retention.prune(ctx.pool, ctx.settings)


@signals.worker_process_shutdown.connect
def _close(**_: Any) -> None:
    close_context()
