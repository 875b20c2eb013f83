"""Thin Celery tasks over the reconciler and the sweeper."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task, signals

from ordersync import metrics
from workers import adyen_inbox, callbacks, poison, sweeper
from workers.celery_app import app
from workers.context import close_context, get_context
from workers.crashpoints import crash_point
from workers.reconcile import Reconciler

log = structlog.get_logger("ordersync.tasks")


def enqueue_reconcile(order_id: str, delay: float = 0.0) -> None:
    # Retries keep the request id of the webhook that started the work.
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    reconcile_order.apply_async(
        (order_id,), countdown=delay or None, headers={"request_id": request_id}
    )


def enqueue_delivery(order_id: str, delay: float = 0.0) -> None:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    deliver_callbacks.apply_async(
        (order_id,), countdown=delay or None, headers={"request_id": request_id}
    )


def _deliver_recorded() -> None:
    # After the reconciler's transactions are committed; if Redis is down the sweeper
    # finds the rows anyway. Without a callback URL the events stay in the outbox (the
    # operator API shows them) and no delivery task is worth sending.
    recorded = callbacks.take_recorded()
    if not get_context().settings.shop_callback_url:
        return
    for order_id in recorded:
        try:
            enqueue_delivery(order_id)
        except Exception as exc:
            log.warning("enqueue_failed", task="deliver_callbacks", error=type(exc).__name__)


@app.task(name="ordersync.reconcile_order", bind=True)
def reconcile_order(self: Task, order_id: str, force: bool = False) -> str:
    structlog.contextvars.bind_contextvars(task_id=self.request.id)
    request_id = (self.request.headers or {}).get("request_id")
    if request_id:
        structlog.contextvars.bind_contextvars(request_id=request_id)
    metrics.heartbeat()
    try:
        outcome = poison.guarded(
            lambda: Reconciler(get_context(), enqueue_reconcile).run(order_id, force=force),
            lambda exc: poison.record_order_failure(
                get_context(), order_id, "reconcile_order", exc
            ),
        )
        crash_point("after_commit")  # everything committed, the message not yet acked
        return outcome or "poisoned"
    finally:
        _deliver_recorded()
        structlog.contextvars.clear_contextvars()


@app.task(name="ordersync.deliver_callbacks", bind=True)
def deliver_callbacks(self: Task, order_id: str) -> int:
    structlog.contextvars.bind_contextvars(task_id=self.request.id, order_id=order_id)
    request_id = (self.request.headers or {}).get("request_id")
    if request_id:
        structlog.contextvars.bind_contextvars(request_id=request_id)
    metrics.heartbeat()
    try:
        ctx = get_context()
        delivered, retry_in = callbacks.deliver_order(ctx.pool, ctx.http, ctx.settings, order_id)
        # Short waits ride on a countdown; longer ones are the sweeper's.
        if retry_in is not None and retry_in <= sweeper.CALLBACK_COUNTDOWN_LIMIT_SECONDS:
            enqueue_delivery(order_id, retry_in)
        return delivered
    finally:
        structlog.contextvars.clear_contextvars()


def enqueue_notification(inbox_id: int, delay: float = 0.0) -> None:
    process_notification.apply_async((inbox_id,), countdown=delay or None)


@app.task(name="ordersync.process_notification", bind=True)
def process_notification(self: Task, inbox_id: int) -> str:
    structlog.contextvars.bind_contextvars(task_id=self.request.id)
    try:
        outcome = poison.guarded(
            lambda: adyen_inbox.process(get_context(), inbox_id, enqueue_reconcile),
            lambda exc: poison.record_notification_failure(
                get_context(), inbox_id, "process_notification", exc
            ),
        )
        return outcome or "poisoned"
    finally:
        _deliver_recorded()
        structlog.contextvars.clear_contextvars()


@app.task(name="ordersync.sweep", bind=True)
def sweep(self: Task) -> dict[str, int]:
    structlog.contextvars.bind_contextvars(task_id=self.request.id)
    metrics.heartbeat()
    try:
        counts = sweeper.sweep(get_context(), enqueue_reconcile)
        counts["callbacks"] = sweeper.sweep_callbacks(get_context(), enqueue_delivery)
        counts |= sweeper.sweep_notifications(get_context(), enqueue_notification)
        return counts
    finally:
        structlog.contextvars.clear_contextvars()


@signals.worker_process_shutdown.connect
def _close(**_: Any) -> None:
    close_context()
