"""The operator's actions: reconcile now, reprocess a notification, resend an event to
the shop, acknowledge a flag. Each changes its row and records who did it in one
transaction, then asks for the work (sent when the request's unit of work ends, after
the commit). Shared by the operator API and the console."""

from __future__ import annotations

import re
import uuid
from typing import Any

import structlog

from data import inbox, operator_actions, orders, outbox
from ordersync.db import AsyncPool
from ordersync.errors import Conflict, NotFound, ValidationFailed
from ordersync.jobs import Job, enqueue_job
from service.bounded_json import text_problem
from service.order_views import parse_order_id, request_reconcile

log = structlog.get_logger("ordersync.operator")

MAX_NOTE = 2000
_WEBHOOK_ID = re.compile(r"msg_([0-9a-f]{32})")
_INBOX_ID = re.compile(r"[0-9]{1,18}")


def parse_notification_id(value: str) -> int:
    if not _INBOX_ID.fullmatch(value):
        raise NotFound("no such notification")
    return int(value)


def parse_event_id(value: str) -> uuid.UUID:
    match = _WEBHOOK_ID.fullmatch(value)
    if match is None:
        raise NotFound("no such event")
    return uuid.UUID(match.group(1))


def parse_note(value: Any) -> str:
    note = value.strip() if isinstance(value, str) else ""
    if not note or len(note) > MAX_NOTE or text_problem(note):
        raise ValidationFailed(
            "invalid note",
            fields=[{"path": "note", "message": f"text of 1 to {MAX_NOTE} characters"}],
        )
    return note


async def reconcile(pool: AsyncPool, order_id: str, operator: str) -> dict[str, Any]:
    """What POST /orders/{id}/reconcile does (order_views.request_reconcile), then the
    forced reconcile."""
    result = await request_reconcile(pool, order_id, operator)
    enqueue_job(Job.RECONCILE_ORDER, result["order_id"], force=True)
    return result


async def reprocess_notification(
    pool: AsyncPool, order_id: str, notification: str, operator: str
) -> dict[str, Any]:
    """A `failed` or `orphaned` Adyen notification of the order is offered to the worker
    again."""
    order_id = parse_order_id(order_id)
    inbox_id = parse_notification_id(notification)
    async with pool.connection() as conn, conn.transaction():
        row = await inbox.notification(conn, inbox_id)
        if row is None or row["order_id"] != order_id:
            raise NotFound(f"no notification {inbox_id} for order {order_id}")
        before = row["outcome"]
        if await inbox.reprocess_notification(conn, inbox_id) is None:
            raise Conflict(
                f"notification {inbox_id} is {before or 'not processed yet'}; only a failed"
                " or orphaned one is reprocessed"
            )
        await operator_actions.record(
            conn,
            order_id=order_id,
            action="reprocess_notification",
            operator=operator,
            target=str(inbox_id),
            detail={"outcome_before": before},
        )
    enqueue_job(Job.PROCESS_NOTIFICATION, inbox_id)
    log.info("operator_reprocess_notification", order_id=order_id, inbox_id=inbox_id)
    return {"order_id": order_id, "notification_id": inbox_id, "status": "accepted"}


async def resend_event(pool: AsyncPool, order_id: str, event: str, operator: str) -> dict[str, Any]:
    """An undelivered event for the shop is due now. A delivered event is never sent
    again (contract §4)."""
    order_id = parse_order_id(order_id)
    event_id = parse_event_id(event)
    async with pool.connection() as conn, conn.transaction():
        if not await outbox.resend(conn, order_id, event_id):
            raise Conflict(f"event {event} is not an undelivered event of order {order_id}")
        await operator_actions.record(
            conn, order_id=order_id, action="resend_event", operator=operator, target=event
        )
    enqueue_job(Job.DELIVER_CALLBACKS, order_id)
    log.info("operator_resend_event", order_id=order_id, webhook_id=event)
    return {"order_id": order_id, "webhook_id": event, "status": "accepted"}


async def acknowledge_flag(
    pool: AsyncPool, order_id: str, flag: str, note: Any, operator: str
) -> dict[str, Any]:
    """A note on a flag: who is handling it and how. The flag stays until the order is in
    sync; the note and its author stay for ever."""
    order_id = parse_order_id(order_id)
    text = parse_note(note)
    async with pool.connection() as conn, conn.transaction():
        row = await orders.read_order(conn, order_id)
        if row is None:
            raise NotFound(f"no order {order_id}")
        if flag not in row.flags:
            raise Conflict(f"order {order_id} is not flagged {flag[:64]}")
        await operator_actions.record(
            conn,
            order_id=order_id,
            action="acknowledge_flag",
            operator=operator,
            target=flag,
            note=text,
            detail={"reason": (row.flag_reason or {}).get(flag)},
        )
    log.info("operator_acknowledge_flag", order_id=order_id, flag=flag)
    return {"order_id": order_id, "flag": flag, "status": "acknowledged", "flags": row.flags}
