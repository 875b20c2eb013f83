"""Thin Celery tasks over the reconciler and the sweeper."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task, signals

from workers import adyen_inbox, sweeper
from workers.celery_app import app
from workers.context import close_context, get_context
from workers.reconcile import Reconciler

log = structlog.get_logger("ordersync.tasks")


def enqueue_reconcile(order_id: str, delay: float = 0.0) -> None:
    reconcile_order.apply_async((order_id,), countdown=delay or None)


@app.task(name="ordersync.reconcile_order", bind=True)
def reconcile_order(self: Task, order_id: str, force: bool = False) -> str:
    structlog.contextvars.bind_contextvars(task_id=self.request.id)
    request_id = (self.request.headers or {}).get("request_id")
    if request_id:
        structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        return Reconciler(get_context(), enqueue_reconcile).run(order_id, force=force)
    finally:
        structlog.contextvars.clear_contextvars()


def enqueue_notification(inbox_id: int, delay: float = 0.0) -> None:
    process_notification.apply_async((inbox_id,), countdown=delay or None)


@app.task(name="ordersync.process_notification", bind=True)
def process_notification(self: Task, inbox_id: int) -> str:
    structlog.contextvars.bind_contextvars(task_id=self.request.id)
    try:
        return adyen_inbox.process(get_context(), inbox_id, enqueue_reconcile)
    finally:
        structlog.contextvars.clear_contextvars()


@app.task(name="ordersync.sweep", bind=True)
def sweep(self: Task) -> dict[str, int]:
    structlog.contextvars.bind_contextvars(task_id=self.request.id)
    try:
        counts = sweeper.sweep(get_context(), enqueue_reconcile)
        counts |= sweeper.sweep_notifications(get_context(), enqueue_notification)
        return counts
    finally:
        structlog.contextvars.clear_contextvars()


@signals.worker_process_shutdown.connect
def _close(**_: Any) -> None:
    close_context()
