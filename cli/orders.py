"""`ordersync orders show|list|reconcile`: the operator API's functions, run against the
database directly (no web process needed) and printed as tables or, with --json, as the
API's own JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO, TypeVar

from ordersync import jobs
from ordersync.db import async_pool
from ordersync.jobs import Job, enqueue_job
from ordersync.settings import Settings
from service import order_views as operator

T = TypeVar("T")


async def _with_pool(database_url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    pool = async_pool(database_url, max_size=2)
    await pool.open(wait=True, timeout=10)
    try:
        return await work(pool)
    finally:
        await pool.close()


def run(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    assert settings.database_url is not None
    return asyncio.run(_with_pool(settings.database_url.get_secret_value(), work))


# -- formatting -----------------------------------------------------------------------


def money(amount: int | None, currency: str) -> str:
    if amount is None:
        return "-"
    sign = "-" if amount < 0 else ""
    units, cents = divmod(abs(amount), 100)
    return f"{sign}{units}.{cents:02d} {currency}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _short_time(value: str | None) -> str:
    if not value:
        return "-"
    return value.replace("T", " ")[:19]


def _reference(payment: dict[str, Any]) -> str:
    reference = payment.get("klarna_order_id") or payment.get("psp_reference") or "-"
    return f"{payment.get('provider')} {reference}"


def format_order(order: dict[str, Any]) -> str:
    cur = order["currency"]
    amounts = order["amounts"]
    payment = order["payment"]
    out = [
        f"order {order['id']}  v{order['version']}  {order['status']}  {cur}",
        f"payment   {_reference(payment)}  "
        f"({payment.get('payment_method') or '-'}, {payment.get('country') or '-'})",
        f"account   {order.get('account') or 'default'}",
        f"psp       {order['psp']['status'] or 'not read yet'}, "
        f"synced {_short_time(order['psp']['synced_at'])}, "
        f"expires {_short_time(order['psp']['expires_at'])}",
        "amounts   "
        + "  ".join(
            f"{name} {money(amounts[name], cur)}"
            for name in ("ordered", "authorized", "captured", "refunded")
        ),
    ]
    if order["flags"]:
        for flag in order["flags"]:
            reason = order["flag_reasons"].get(flag) or {}
            out.append(f"FLAG      {flag}: {reason.get('code', '?')}: {reason.get('message', '')}")
            for line in reason.get("lines") or []:
                out.append(
                    f"          not authorized: {line.get('reference')} "
                    f"x{line.get('quantity')} {money(line.get('total_amount'), cur)}"
                )
        if "needs_attention" in order["flags"]:
            out.append(
                "          automatic operations are halted; after fixing the cause: "
                f"ordersync orders reconcile {order['id']}"
            )
    else:
        out.append("flags     none")
    reconcile = order["reconcile"]
    if reconcile["requested_at"]:
        out.append(
            f"pending   reconcile requested {_short_time(reconcile['requested_at'])}"
            + (f", next try {_short_time(reconcile['next_at'])}" if reconcile["next_at"] else "")
        )
    if order.get("lines"):
        out += [
            "",
            "lines",
            table(
                ["id", "name", "qty", "shipped", "captured", "returned", "refunded", "total"],
                [
                    [
                        ln["id"],
                        ln.get("name"),
                        ln["quantity"],
                        ln["shipped_quantity"],
                        ln["captured_quantity"],
                        ln["returned_quantity"],
                        ln["refunded_quantity"],
                        money(_line_total(ln), cur),
                    ]
                    for ln in order["lines"]
                ],
            ),
        ]
    if order.get("operations"):
        out += [
            "",
            "operations",
            table(
                [
                    "#",
                    "kind",
                    "status",
                    "amount",
                    "tries",
                    "idempotency key",
                    "psp ref",
                    "error",
                    "updated",
                ],
                [
                    [
                        op["seq"],
                        op["kind"],
                        op["status"],
                        money(op["amount"], cur),
                        op["attempts"],
                        op["idempotency_key"],
                        op["psp_reference"],
                        _error(op["error"]),
                        _short_time(op["updated_at"]),
                    ]
                    for op in order["operations"]
                ],
            ),
        ]
    if order.get("webhooks"):
        out += [
            "",
            "webhooks received",
            table(
                ["received", "source", "type", "version", "outcome", "webhook id"],
                [
                    [
                        _short_time(w["received_at"]),
                        w["source"],
                        w["event_type"],
                        w["version"],
                        w["outcome"],
                        w["webhook_id"],
                    ]
                    for w in order["webhooks"]
                ],
            ),
        ]
    if order.get("callbacks"):
        out += [
            "",
            "events sent to the shop",
            table(
                ["created", "type", "version", "tries", "delivered", "last error", "webhook id"],
                [
                    [
                        _short_time(c["created_at"]),
                        c["type"],
                        c["version"],
                        c["attempts"],
                        _short_time(c["delivered_at"]) if c["delivered_at"] else "not yet",
                        c["last_error"],
                        c["webhook_id"],
                    ]
                    for c in order["callbacks"]
                ],
            ),
        ]
    return "\n".join(out)


def _line_total(line: dict[str, Any]) -> int:
    if line.get("total_amount") is not None:
        return int(line["total_amount"])
    return int(
        line["quantity"] * line.get("unit_price", 0) - (line.get("total_discount_amount") or 0)
    )


def _error(error: dict[str, Any] | None) -> str | None:
    if not error:
        return None
    text = f"{error.get('code')}: {error.get('message')}"
    if error.get("correlation_id"):
        text += f" (correlation {error['correlation_id']})"
    return text


def format_list(page: dict[str, Any]) -> str:
    orders = page["orders"]
    if not orders:
        return "no flagged orders"
    out = table(
        ["order", "v", "flags", "reason", "ordered", "authorized", "captured", "updated"],
        [
            [
                o["id"],
                o["version"],
                ",".join(o["flags"]),
                "; ".join(f"{(r or {}).get('code')}" for r in o["flag_reasons"].values()),
                money(o["amounts"]["ordered"], o["currency"]),
                money(o["amounts"]["authorized"], o["currency"]),
                money(o["amounts"]["captured"], o["currency"]),
                _short_time(o["updated_at"]),
            ]
            for o in orders
        ],
    )
    if page["next_cursor"]:
        out += f"\nmore: --cursor {page['next_cursor']}"
    return out


def emit(data: dict[str, Any], text: str, as_json: bool, stream: TextIO = sys.stdout) -> None:
    stream.write((json.dumps(data, indent=2) if as_json else text) + "\n")


# -- commands -------------------------------------------------------------------------


def show(settings: Settings, order_id: str, as_json: bool) -> int:
    order = run(settings, lambda pool: operator.order_detail(pool, order_id))
    emit(order, format_order(order), as_json)
    return 0


def list_orders(
    settings: Settings,
    flag: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
    account: str | None = None,
) -> int:
    flag = operator.parse_flag(flag)
    account = operator.parse_account(account)
    page = run(settings, lambda pool: operator.list_flagged(pool, flag, limit, cursor, account))
    emit(page, format_list(page), as_json)
    return 0


def reconcile(settings: Settings, order_id: str, as_json: bool) -> int:
    from workers.celery_app import send_jobs

    result = run(settings, lambda pool: operator.request_reconcile(pool, order_id))
    unit = jobs.begin()
    enqueue_job(Job.RECONCILE_ORDER, order_id, force=True)
    # Recorded in Postgres already: if Redis is down, the sweeper picks it up.
    sent = jobs.end(unit, send_jobs)
    queued = "queued" if sent else "not queued; the sweeper will pick it up"
    cleared = ", ".join(result["cleared_flags"]) or "no flags"
    emit(
        {**result, "queued": queued == "queued"},
        f"reconcile of {order_id} requested: cleared {cleared}; task {queued}",
        as_json,
    )
    return 0
