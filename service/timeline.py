"""One order's story in time order: every shop webhook received, every operation with
the exact request sent and the PSP's answer, every Adyen notification, every event sent
to the shop with its deliveries, every operator action. `GET /orders/{id}/timeline`,
the console's order page and `ordersync orders show` all read it from here."""

from __future__ import annotations

from typing import Any

from data import orders, outbox
from ordersync.db import AsyncPool
from service import operator_words as words
from service.order_views import (
    OrderRows,
    callback_view,
    detail_of,
    iso,
    operation_view,
    read_order_rows,
    webhook_view,
)

# Which notification outcomes an operator may have processed again.
REPROCESSABLE = ("failed", "orphaned")
# The fields of an Adyen notification item an operator reads.
_ITEM_FIELDS = {
    "eventCode": "event_code",
    "success": "success",
    "pspReference": "psp_reference",
    "originalReference": "original_reference",
    "merchantReference": "merchant_reference",
    "reason": "reason",
}


def _money(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    return {"value": value.get("value"), "currency": value.get("currency")}


def _operation(op: orders.Operation) -> dict[str, Any]:
    view = operation_view(op)
    request = op.request or None
    error = view["error"] or {}
    kind = words.OPERATION_KINDS.get(op.kind, op.kind)
    state = words.OPERATION_STATUSES.get(op.status, op.status)
    return {
        "at": view["created_at"],
        "kind": "operation",
        "summary": f"{kind}: {state}",
        "operation": view,
        # The exact request, frozen when the operation was planned and resent byte for
        # byte under its key.
        "request": request,
        "idempotency_key": op.idempotency_key,
        "answer": {
            "status": op.status,
            "psp_reference": op.psp_reference,
            "error_code": error.get("code"),
            "error_message": error.get("message"),
            "correlation_id": error.get("correlation_id"),
            "http_status": error.get("http_status"),
        },
    }


def _webhook(row: dict[str, Any]) -> dict[str, Any]:
    view = webhook_view(row)
    if row["source"] == "shop":
        return {
            "at": view["received_at"],
            "kind": "shop_webhook",
            "summary": f"the shop sent {view['event_type']} (version {view['version']}):"
            f" {view['outcome'] or 'not processed yet'}",
            "webhook": view,
        }
    item = row["payload"] if isinstance(row["payload"], dict) else {}
    notification = {name: item.get(key) for key, name in _ITEM_FIELDS.items()}
    notification["amount"] = _money(item.get("amount"))
    success = str(notification["success"]).lower() == "true"
    return {
        "at": view["received_at"],
        "kind": "adyen_notification",
        "summary": f"Adyen notified {view['event_type']}"
        f" ({'success' if success else 'failure'}): {view['outcome'] or 'not processed yet'}",
        "notification_id": row["id"],
        "notification": notification,
        "outcome": view["outcome"],
        "processed_at": view["processed_at"],
        "can_reprocess": view["outcome"] in REPROCESSABLE and row["payload"] is not None,
    }


def _event(row: outbox.Event) -> dict[str, Any]:
    view = callback_view(row)
    if view["delivered_at"]:
        state = f"delivered after {view['attempts']} attempt(s)"
    elif view["attempts"]:
        state = f"not delivered yet, {view['attempts']} attempt(s)"
    else:
        state = "not sent yet"
    return {
        "at": view["created_at"],
        "kind": "shop_event",
        "summary": f"event {view['type']} for the shop: {state}",
        "event": view,
        "can_resend": view["delivered_at"] is None,
    }


def _action(row: dict[str, Any]) -> dict[str, Any]:
    done = words.ACTIONS.get(row["action"], row["action"])
    return {
        "at": iso(row["created_at"]),
        "kind": "operator_action",
        "summary": f"{row['operator']} {done}",
        "action": row["action"],
        "operator": row["operator"],
        "target": row["target"],
        "note": row["note"],
        "detail": row["detail"],
    }


def timeline_of(rows: OrderRows) -> list[dict[str, Any]]:
    entries = (
        [_webhook(w) for w in rows.webhooks]
        + [_operation(op) for op in rows.operations]
        + [_event(c) for c in rows.callbacks]
        + [_action(a) for a in rows.actions]
    )
    # Stable: within one instant, the order above (what came in, what we did, what we
    # told, what a person did).
    return sorted(entries, key=lambda e: e["at"] or "")


def flag_explanations(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """Each flag with its reason in an operator's words and what to do."""
    out = []
    for flag in detail["flags"]:
        reason = detail["flag_reasons"].get(flag) or {}
        general = words.flag_words(flag)
        specific = words.reason_words(flag, reason.get("code"))
        out.append(
            {
                "flag": flag,
                "code": reason.get("code"),
                "message": reason.get("message"),
                "flagged_at": reason.get("flagged_at"),
                "lines": reason.get("lines") or [],
                "what_happened": specific.what,
                "what_to_do": specific.todo,
                "about_the_flag": general.what,
                "general_advice": general.todo,
            }
        )
    return out


async def order_story(pool: AsyncPool, order_id: str) -> dict[str, Any]:
    """The order (as `GET /orders/{id}`), its flags explained, and its timeline."""
    rows = await read_order_rows(pool, order_id)
    detail = detail_of(rows)
    return {
        "order_id": detail["id"],
        "order": detail,
        "flags": flag_explanations(detail),
        "timeline": timeline_of(rows),
    }
