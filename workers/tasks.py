"""Thin Celery tasks over the reconciler, the notification processor and the sweeper.

Each task is a unit of work (workers/celery_app.py binds its log context and sends the
jobs it asked for once it has returned); the functions here only call the plain code."""

from __future__ import annotations

from typing import Any

from celery import Task, signals

from ordersync import metrics
from ordersync.jobs import Job, enqueue_job
from workers import adyen_inbox, callbacks, sweeper
from workers.celery_app import app
from workers.context import close_context, get_context
from workers.crashpoints import crash_point
from workers.reconcile import Reconciler


def enqueue_reconcile(order_id: str, delay: float = 0.0) -> None:
    enqueue_job(Job.RECONCILE_ORDER, order_id, delay=delay)


def enqueue_delivery(order_id: str, delay: float = 0.0) -> None:
    enqueue_job(Job.DELIVER_CALLBACKS, order_id, delay=delay)


def enqueue_notification(inbox_id: int, delay: float = 0.0) -> None:
    enqueue_job(Job.PROCESS_NOTIFICATION, inbox_id, delay=delay)


@app.task(name=Job.RECONCILE_ORDER.value, bind=True)
def reconcile_order(self: Task, order_id: str, force: bool = False) -> str:
    metrics.heartbeat()
    outcome = Reconciler(get_context(), enqueue_reconcile).run(order_id, force=force)
    crash_point("after_commit")  # everything committed, the message not yet acked
    return outcome


@app.task(name=Job.DELIVER_CALLBACKS.value, bind=True)
def deliver_callbacks(self: Task, order_id: str) -> int:
    metrics.heartbeat()
    ctx = get_context()
    delivered, retry_in = callbacks.deliver_order(ctx.pool, ctx.http, ctx.settings, order_id)
    # Short waits ride on a countdown; longer ones are the sweeper's.
    if retry_in is not None and retry_in <= sweeper.CALLBACK_COUNTDOWN_LIMIT_SECONDS:
        enqueue_delivery(order_id, retry_in)
    return delivered


@app.task(name=Job.PROCESS_NOTIFICATION.value, bind=True)
def process_notification(self: Task, inbox_id: int) -> str:
    return adyen_inbox.process(get_context(), inbox_id, enqueue_reconcile)


@app.task(name=Job.SWEEP.value, bind=True)
def sweep(self: Task) -> dict[str, int]:
    metrics.heartbeat()
    counts = sweeper.sweep(get_context(), enqueue_reconcile)
    counts["callbacks"] = sweeper.sweep_callbacks(get_context(), enqueue_delivery)
    counts |= sweeper.sweep_notifications(get_context(), enqueue_notification)
    return counts


@signals.worker_process_shutdown.connect
def _close(**_: Any) -> None:
    close_context()
