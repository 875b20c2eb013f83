"""A fake Klarna (and Adyen's answers) behind httpx.MockTransport, and an order row
written straight into the real schema, for driving workers.reconcile.Reconciler."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from psycopg.types.json import Jsonb

from domain.lines import basket_lines
from domain.snapshot import OrderSnapshot
from integrations.adyen.client import AdyenClient
from integrations.klarna.client import KlarnaClient
from integrations.provider import Provider
from ordersync.db import sync_pool
from ordersync.settings import Settings
from workers.context import WorkerContext

KLARNA = "http://klarna.test"
ADYEN = "http://adyen.test/v71"

# A fault decides the answer to one request: (apply the request?, the response to give,
# or None for the normal answer; an exception type to raise instead of answering).
Fault = Callable[[httpx.Request], tuple[bool, httpx.Response | None]]


@dataclass
class KlarnaOrder:
    order_amount: int
    captured_amount: int = 0
    refunded_amount: int = 0
    status: str = "AUTHORIZED"
    order_lines: list[dict[str, Any]] = field(default_factory=list)
    captures: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    expires_at: str | None = None
    purchase_country: str = "DE"
    purchase_currency: str = "EUR"

    def body(self) -> dict[str, Any]:
        return {
            "order_amount": self.order_amount,
            "captured_amount": self.captured_amount,
            "refunded_amount": self.refunded_amount,
            "status": self.status,
            "order_lines": self.order_lines,
            "captures": self.captures,
            "refunds": self.refunds,
            "purchase_country": self.purchase_country,
            "purchase_currency": self.purchase_currency,
            "initial_payment_method": {"type": "INVOICE"},
            "expires_at": self.expires_at,
        }


class FakeKlarna:
    """Klarna's order management, with a queue of faults per (method, path suffix)."""

    def __init__(self) -> None:
        self.orders: dict[str, KlarnaOrder] = {}
        self.requests: list[httpx.Request] = []
        self.faults: list[tuple[str, str, Fault]] = []
        self.answers: dict[str, httpx.Response] = {}  # replay by idempotency key
        self.on_read: Callable[[], None] | None = None

    def fault(self, method: str, suffix: str, fault: Fault, times: int = 1) -> None:
        self.faults.extend([(method, suffix, fault)] * times)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for i, (method, suffix, fault) in enumerate(self.faults):
            if request.method == method and request.url.path.endswith(suffix):
                del self.faults[i]
                apply, response = fault(request)
                if apply:
                    self._handle(request)
                if response is not None:
                    return response
                break
        return self._handle(request)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        key = request.headers.get("klarna-idempotency-key")
        if key and key in self.answers:
            return self.answers[key]
        parts = request.url.path.split("/")
        order = self.orders[parts[4]]
        action = parts[5] if len(parts) > 5 else None
        body = json.loads(request.content) if request.content else {}
        response = httpx.Response(204)
        if request.method == "GET":
            seen = copy.deepcopy(order.body())  # what this read saw, however slow it is
            if self.on_read is not None:
                self.on_read()
            return httpx.Response(200, json=seen)
        if action == "captures":
            order.captured_amount += body["captured_amount"]
            capture_id = str(uuid.uuid4())
            order.captures.append(
                {
                    "capture_id": capture_id,
                    "reference": body.get("reference"),
                    "captured_amount": body["captured_amount"],
                    "order_lines": body.get("order_lines", []),
                }
            )
            order.status = (
                "CAPTURED" if order.captured_amount >= order.order_amount else "PART_CAPTURED"
            )
            response = httpx.Response(201, headers={"Capture-Id": capture_id})
        elif action == "refunds":
            order.refunded_amount += body["refunded_amount"]
            refund_id = str(uuid.uuid4())
            order.refunds.append(
                {
                    "refund_id": refund_id,
                    "reference": body.get("reference"),
                    "refunded_amount": body["refunded_amount"],
                    "order_lines": body.get("order_lines", []),
                }
            )
            response = httpx.Response(201, headers={"Refund-Id": refund_id})
        elif action == "cancel":
            order.status = "CANCELLED"
        elif action == "release-remaining-authorization":
            order.order_amount = order.captured_amount
            order.status = "CAPTURED"
        elif action == "authorization":
            order.order_amount = body["order_amount"]
            order.order_lines = body["order_lines"]
        if key:
            self.answers[key] = response
        return response

    def captures(self, psp_id: str) -> list[httpx.Request]:
        return [
            r
            for r in self.requests
            if r.method == "POST" and r.url.path.endswith(f"{psp_id}/captures")
        ]


def answer(status: int, apply: bool = False, **kwargs: Any) -> Fault:
    return lambda _request: (apply, httpx.Response(status, **kwargs))


def settings(database_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "klarna_api_url": KLARNA,
        "adyen_checkout_url": ADYEN,
        "adyen_merchant_account": "Test",
        "max_attempts": 3,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.02,
        "lease_seconds": 3,
        **extra,
    }
    return Settings.model_validate(values)


def context(
    database_url: str, transport: Callable[[httpx.Request], httpx.Response], **extra: Any
) -> WorkerContext:
    s = settings(database_url, **extra)
    http = httpx.Client(transport=httpx.MockTransport(transport))
    providers: dict[str, Provider] = {
        "klarna": KlarnaClient(http, KLARNA, "u", "p"),
        "adyen": AdyenClient(http, checkout_url=ADYEN, api_key="k", merchant_account="Test"),
    }
    pool = sync_pool(database_url, max_size=6)
    return WorkerContext(settings=s, pool=pool, http=http, providers=providers)


def snapshot(
    order_id: str,
    lines: list[dict[str, Any]],
    provider: str = "klarna",
    version: int = 1,
    shipping: dict[str, Any] | None = None,
) -> OrderSnapshot:
    payment = (
        {"provider": "klarna", "klarna_order_id": f"k-{order_id}"}
        if provider == "klarna"
        else {"provider": "adyen", "psp_reference": f"a{order_id.replace('-', '')}"}
    )
    return OrderSnapshot.model_validate(
        {
            "id": order_id,
            "version": version,
            "currency": "EUR",
            "country": "DE",
            "payment": payment,
            "lines": lines,
            "shipping": shipping,
        }
    )


def new_order_id() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"


def insert_order(
    ctx: WorkerContext, snap: OrderSnapshot, *, authorized: int | None = None, **columns: Any
) -> None:
    """An order as the web process stores it; for Adyen, authorized as the first read."""
    provider = snap.payment.provider
    psp_id = snap.psp_order_id
    known = provider == "adyen" or authorized is not None
    lines = [line.to_json() for line in basket_lines(snap)]
    row: dict[str, Any] = {
        "id": snap.id,
        "version": snap.version,
        "provider": provider,
        "psp_order_id": psp_id,
        "currency": snap.currency,
        "status": snap.status,
        "snapshot": Jsonb(snap.model_dump(mode="json")),
        "desired_amount": snap.total,
        "authorized_amount": (authorized if authorized is not None else snap.total)
        if known
        else None,
        "authorized_lines": Jsonb(lines if known else []),
        "psp_status": "authorized" if known else None,
        "psp_synced_at": datetime.now(UTC) if known else None,
        "psp_payment_method": "INVOICE" if known else None,
        "psp_country": "DE" if known else None,
        "reconcile_requested_at": datetime.now(UTC),
        **columns,
    }
    names = ", ".join(row)
    marks = ", ".join(f"%({k})s" for k in row)
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute(f"INSERT INTO orders ({names}) VALUES ({marks})", row)


def update_snapshot(ctx: WorkerContext, snap: OrderSnapshot) -> None:
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute(
            "UPDATE orders SET version = %s, snapshot = %s, desired_amount = %s,"
            " reconcile_requested_at = now() WHERE id = %s",
            (snap.version, Jsonb(snap.model_dump(mode="json")), snap.total, snap.id),
        )


def order_row(ctx: WorkerContext, order_id: str) -> dict[str, Any]:
    with ctx.pool.connection() as conn:
        row = conn.execute("SELECT * FROM orders WHERE id = %s", (order_id,)).fetchone()
    assert row is not None
    return dict(row)


def operations(ctx: WorkerContext, order_id: str) -> list[dict[str, Any]]:
    with ctx.pool.connection() as conn:
        return [
            dict(r)
            for r in conn.execute(
                "SELECT * FROM operations WHERE order_id = %s ORDER BY seq", (order_id,)
            ).fetchall()
        ]


def outbox(ctx: WorkerContext, order_id: str) -> list[dict[str, Any]]:
    with ctx.pool.connection() as conn:
        return [
            dict(r)
            for r in conn.execute(
                "SELECT * FROM outbox WHERE order_id = %s ORDER BY seq", (order_id,)
            ).fetchall()
        ]


def shipped(lines: list[dict[str, Any]], **quantities: int) -> list[dict[str, Any]]:
    return [
        {**line, "shipped_quantity": quantities[line["id"]]} if line["id"] in quantities else line
        for line in lines
    ]


def read_timeout(request: httpx.Request) -> tuple[bool, httpx.Response | None]:
    """A fault: the PSP's answer never comes (the request may have applied)."""
    raise httpx.ReadTimeout("slow", request=request)
