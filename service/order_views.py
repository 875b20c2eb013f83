"""What an operator sees of an order and may do to it; shared by the operator API and
the `ordersync orders` commands, which differ only in how they print it."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from data import inbox, operator_actions, orders, outbox
from data.outbox import webhook_id
from domain.planner import FLAGS
from ordersync.db import AsyncPool
from ordersync.errors import NotFound, ValidationFailed
from service.bounded_json import text_problem

log = structlog.get_logger("ordersync.operator")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# The history an operator reads at a glance; older webhooks are still in the inbox.
MAX_WEBHOOKS = 100
MAX_CALLBACKS = 100
MAX_ACTIONS = 200


MAX_ORDER_ID = 64  # domain.snapshot.OrderSnapshot.id
MAX_CURSOR = 512
_LIMIT = re.compile(r"[0-9]{1,4}")
_CURSOR = re.compile(r"[A-Za-z0-9_-]+")
# An account name as ACCOUNTS_FILE allows it (ordersync/accounts.py), or "default".
_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_order_id(order_id: str) -> str:
    # Postgres text holds neither NUL nor unpaired surrogates, and no stored id is
    # longer than the snapshot allows: such an id names no order.
    if len(order_id) > MAX_ORDER_ID or text_problem(order_id):
        raise NotFound("no such order")
    return order_id


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _payment(row: orders.Order) -> dict[str, Any]:
    payment = dict((row.snapshot or {}).get("payment") or {})
    payment.setdefault("provider", row.provider)
    if row.provider == "klarna":
        payment["payment_method"] = row.psp_payment_method or payment.get("payment_method")
    payment["country"] = row.psp_country or (row.snapshot or {}).get("country")
    return payment


def summary(row: orders.Order) -> dict[str, Any]:
    """An order without its lines and history: what `GET /orders` lists."""
    reasons = row.flag_reason or {}
    return {
        "id": row.id,
        "version": row.version,
        "status": row.status,
        "currency": row.currency.strip(),
        "payment": _payment(row),
        # The merchant's PSP account it belongs to (contract §6): "default" for orders
        # from before accounts, i.e. the default account.
        "account": row.account or "default",
        "flags": list(row.flags),
        "flag_reasons": {flag: reasons.get(flag) for flag in row.flags},
        "amounts": {
            "ordered": row.desired_amount,
            "authorized": row.authorized_amount,
            "captured": row.captured_amount,
            "refunded": row.refunded_amount,
        },
        "psp": {
            "status": row.psp_status,
            "synced_at": iso(row.psp_synced_at),
            "expires_at": iso(row.expires_at),
            "refused_amount": row.refused_amount,
        },
        "reconcile": {
            "requested_at": iso(row.reconcile_requested_at),
            "next_at": iso(row.next_reconcile_at),
        },
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def operation_view(row: orders.Operation) -> dict[str, Any]:
    error = row.error
    return {
        "id": str(row.id),
        "seq": row.seq,
        "kind": row.kind,
        "status": row.status,
        "amount": row.amount,
        "target_version": row.target_version,
        "idempotency_key": row.idempotency_key,
        "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at),
        "outcome_unknown": row.outcome_unknown,
        "waiting_for": waiting_for(row),
        "psp_reference": row.psp_reference,
        "error": None
        if not error
        else {
            "code": error.get("code"),
            "message": error.get("message"),
            "correlation_id": error.get("correlation_id"),
            "http_status": error.get("http_status"),
        },
        "lines": [
            {
                "reference": line.get("reference"),
                "type": line.get("type"),
                "quantity": line.get("quantity"),
                "total_amount": line.get("total_amount"),
            }
            for line in row.lines or []
        ],
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def waiting_for(op: orders.Operation) -> str | None:
    """Why an operation in flight is not moving, in an operator's words (None when it
    is settled or simply due)."""
    status = op.status
    if status == "awaiting_notification":
        return "adyen_notification: Adyen settles it by notification; nothing is resent"
    if status == "sent":
        return "psp_call: a worker is calling the PSP (lease held)"
    if status != "pending":
        return None
    if op.next_attempt_at is None:
        if op.outcome_unknown:
            return (
                "outcome_unknown: the last attempt may have applied; an operator reconcile"
                " reads the PSP (Klarna) or resends under the same key (Adyen, whose"
                " notification settles it)"
            )
        return "operator: parked (see the order's needs_attention reason)"
    return "retry: next attempt at next_attempt_at"


def _lines(snapshot: dict[str, Any], operations: list[orders.Operation]) -> list[dict[str, Any]]:
    done: dict[str, dict[str, int]] = {"capture": defaultdict(int), "refund": defaultdict(int)}
    for op in operations:
        if op.status == "succeeded" and op.kind in done:
            for line in op.lines or []:
                if line.get("type") not in ("discount", "sales_tax"):  # shares, not units
                    done[op.kind][str(line.get("reference"))] += int(line.get("quantity", 0))
    lines = []
    for line in snapshot.get("lines") or []:
        out = dict(line)
        out["captured_quantity"] = done["capture"].get(str(line["id"]), 0)
        out["refunded_quantity"] = done["refund"].get(str(line["id"]), 0)
        lines.append(out)
    return lines


def webhook_view(row: dict[str, Any]) -> dict[str, Any]:
    order = (row["payload"] or {}).get("order") or {}
    return {
        "inbox_id": row["id"],
        "source": row["source"],
        "webhook_id": row["event_key"],
        "event_type": row["event_type"],
        "version": order.get("version"),
        "outcome": row["outcome"],
        "received_at": iso(row["received_at"]),
        "processed_at": iso(row["processed_at"]),
    }


def callback_view(row: outbox.Event) -> dict[str, Any]:
    return {
        "webhook_id": webhook_id(row.id),
        "type": row.event_type,
        "version": row.version,
        "created_at": iso(row.created_at),
        "attempts": row.attempts,
        "delivered_at": iso(row.delivered_at),
        "next_attempt_at": None if row.delivered_at else iso(row.next_attempt_at),
        "last_status": row.last_status,
        "last_error": row.last_error,
    }


@dataclass(frozen=True)
class OrderRows:
    """One order's rows, read in one go: the order's view and its timeline are built
    from the same read."""

    order: orders.Order
    operations: list[orders.Operation]
    webhooks: list[dict[str, Any]]
    callbacks: list[outbox.Event]
    actions: list[dict[str, Any]]


async def read_order_rows(pool: AsyncPool, order_id: str) -> OrderRows:
    order_id = parse_order_id(order_id)
    async with pool.connection() as conn:
        row = await orders.read_order(conn, order_id)
        if row is None:
            raise NotFound(f"no order {order_id}")
        return OrderRows(
            order=row,
            operations=await orders.read_operations(conn, order_id),
            webhooks=await inbox.recent_for_order(conn, order_id, MAX_WEBHOOKS),
            callbacks=await outbox.recent_for_order(conn, order_id, MAX_CALLBACKS),
            actions=await operator_actions.for_order(conn, order_id, MAX_ACTIONS),
        )


def detail_of(rows: OrderRows) -> dict[str, Any]:
    """Everything known about one order: desired and PSP state, flags with their
    reasons, operations with their keys and outcomes, the webhooks that came in and
    the events sent to the shop."""
    detail = summary(rows.order)
    detail["lines"] = _lines(rows.order.snapshot or {}, rows.operations)
    detail["operations"] = [operation_view(op) for op in rows.operations]
    detail["webhooks"] = [webhook_view(w) for w in rows.webhooks]
    detail["callbacks"] = [callback_view(c) for c in rows.callbacks]
    return detail


async def order_detail(pool: AsyncPool, order_id: str) -> dict[str, Any]:
    return detail_of(await read_order_rows(pool, order_id))


def parse_limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    # ASCII digits only ("²".isdigit() is true, int("²") fails), and few of them.
    if not _LIMIT.fullmatch(value) or not 1 <= int(value) <= MAX_LIMIT:
        raise ValidationFailed(
            "invalid query parameter",
            fields=[{"path": "query.limit", "message": f"an integer from 1 to {MAX_LIMIT}"}],
        )
    return int(value)


def parse_flag(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in FLAGS:
        raise ValidationFailed(
            "invalid query parameter",
            fields=[{"path": "query.flag", "message": f"one of {', '.join(FLAGS)}"}],
        )
    return value


def encode_cursor(updated_at: datetime, order_id: str) -> str:
    raw = json.dumps([updated_at.isoformat(), order_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        # Bounded before it is decoded: a cursor is short and in base64url.
        if len(cursor) > MAX_CURSOR or not _CURSOR.fullmatch(cursor):
            raise ValueError("not a cursor")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, order_id = json.loads(raw)
        if not isinstance(stamp, str) or not isinstance(order_id, str):
            raise ValueError("not a cursor")
        return datetime.fromisoformat(stamp), parse_order_id(order_id)
    except (ValueError, TypeError, binascii.Error, NotFound, RecursionError):
        raise ValidationFailed(
            "invalid query parameter",
            fields=[{"path": "query.cursor", "message": "not a cursor this API returned"}],
        ) from None


def parse_account(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not _ACCOUNT.fullmatch(value):
        raise ValidationFailed(
            "invalid query parameter",
            fields=[{"path": "query.account", "message": "not an account name"}],
        )
    return value


async def list_flagged(
    pool: AsyncPool,
    flag: str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    account: str | None = None,
    *,
    reason: str | None = None,
    search: str | None = None,
) -> dict[str, Any]:
    """Flagged orders (with `flag`, or any flag; of `account`, or any; with a reason's
    code; by shop order id or PSP reference), most recently changed first."""
    after = decode_cursor(cursor) if cursor else None
    async with pool.connection() as conn:
        rows = await orders.flagged_page(conn, flag, after, limit + 1, account, reason, search)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].updated_at, rows[-1].id) if more else None
    return {"orders": [summary(r) for r in rows], "next_cursor": next_cursor}


async def request_reconcile(pool: AsyncPool, order_id: str, operator: str) -> dict[str, Any]:
    """Lets the reconciler act on the order again, now: clears the retry back-off and the
    `needs_attention` flag (which halts automatic operations). The PSP is read before
    anything else: a Klarna order's figures are marked stale, and the reconcile (forced)
    checks the order at the PSP before it resends an operation in flight, so an
    operation whose outcome is unknown is settled by what the PSP shows, never sent
    under a new key. A failed operation stays failed; the planner plans afresh from the
    latest snapshot. The caller then enqueues
    the reconcile; if that message is lost, the sweeper finds the order by
    `reconcile_requested_at`."""
    order_id = parse_order_id(order_id)
    async with pool.connection() as conn, conn.transaction():
        released = await orders.release_for_operator(conn, order_id)
        if released is None:
            raise NotFound(f"no order {order_id}")
        before, after, retries = released
        cleared = [flag for flag in before if flag not in after]
        # Recorded with the change, in its transaction: every reconcile has its author.
        await operator_actions.record(
            conn,
            order_id=order_id,
            action="reconcile",
            operator=operator,
            detail={"cleared_flags": cleared, "retries_released": retries},
        )
    log.info(
        "operator_reconcile_requested",
        order_id=order_id,
        cleared_flags=cleared,
        retries_released=retries,
        operator=operator,
    )
    return {
        "order_id": order_id,
        "status": "accepted",
        "cleared_flags": cleared,
        "flags": after,
    }
