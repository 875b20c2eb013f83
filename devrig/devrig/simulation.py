"""A deterministic simulation of the whole reconciler (issue 11, "How it is proven").

The real parts: the Postgres schema (migrations), the shop ingest statement, the
reconciler and its SQL, the Klarna and Adyen clients (request building included), and
the Adyen inbox store and processing. The model parts: the shop, which makes random
histories of one order, and the PSPs, plugged in at the HTTP level through an
`httpx.MockTransport` whose handler applies, refuses, fails and loses answers the way
Klarna OM and Adyen Checkout do, with their idempotency-key replay.

Nothing waits on a clock: retries and leases are made due by writing the database, and
every random choice comes from one `random.Random(seed)`, so one seed replays one
history exactly. Workers crash by raising at the named crash points; two reconciles of
one order interleave by running the second inside the first one's PSP read.

After every history settles (faults off, everything due, every notification delivered)
the invariants of the issue are checked; each violation names the sequence of the issue
it belongs to where it is one of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import structlog
from psycopg import sql
from pydantic import SecretStr

from data import orders as store
from domain.lines import (
    LineLedger,
    PspLine,
    basket_lines,
    captured_total,
    klarna_order_lines,
    ledger_from,
    same_lines,
)
from domain.snapshot import OrderSnapshot, ShopEvent
from integrations.adyen.client import AdyenClient
from integrations.klarna.client import KlarnaClient
from integrations.provider import Provider
from ordersync.db import AsyncPool, SyncPool, async_pool, sync_pool
from ordersync.settings import Settings
from service import adyen_webhook, ingest
from service import order_views as operator
from workers import adyen_inbox, crashpoints, reconcile
from workers.context import WorkerContext

KLARNA_URL = "http://klarna.sim"
ADYEN_URL = "http://adyen.sim/v71"
MERCHANT = "SimMerchant"
SETTLE_ROUNDS = 12
MONEY_EFFECTS = frozenset({"capture", "refund", "cancel", "release_authorization"})

# Which sequence of issue 11 a violation code belongs to (for the report and the xfails).
SEQUENCE_OF = {
    "applied_twice": 1,
    "figures_differ": 1,
    "effects_differ": 1,
    "failed_but_applied": 1,
    "stuck_awaiting_notification": 2,
    "stranded_by_notification": 2,
    "rejected_but_applied": 3,
    "false_drift": 4,
    "stale_read_adopted": 4,
    "over_refund": 5,
    "capture_gap": 6,
    "psp_lines_differ": 7,
    "authorization_updated_to_zero": 8,
    "stuck_in_flight": 9,
    "task_died": 9,
    "key_reused_differently": 11,
    "flag_not_told": 0,
    "refusal_not_told": 13,
    "adyen_authorization_guessed": 14,
    "not_in_sync": 0,
    "crashed": 0,
}


class SimCrash(Exception):
    """A worker died at a named crash point (the process would have been SIGKILLed)."""


@dataclass(frozen=True)
class Violation:
    code: str
    detail: str

    @property
    def sequence(self) -> int:
        return SEQUENCE_OF.get(self.code, 0)


@dataclass
class Result:
    seed: int
    events: int = 0
    faults: int = 0
    violations: list[Violation] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()[:16]


# --- the PSP model ------------------------------------------------------------------------


@dataclass
class Effect:
    kind: str
    amount: int
    key: str
    reference: str | None


@dataclass
class PspOrder:
    provider: str
    psp_id: str
    authorized: int
    lines: list[dict[str, Any]]
    captured: int = 0
    refunded: int = 0
    status: str = "AUTHORIZED"
    allow_increase: bool = True
    effects: list[Effect] = field(default_factory=list)
    captures: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    zero_updates: int = 0
    refused: set[int] = field(default_factory=set)  # increases refused, by total


@dataclass
class Faults:
    """How often each thing goes wrong, per request (0 everywhere once settling)."""

    write_fail: float = 0.12  # 5xx/429/409 before anything was applied
    write_lost: float = 0.10  # applied, then the answer is lost (timeout or 5xx)
    read_fail: float = 0.10
    read_forbidden: float = 0.03  # a read answering 403
    interleave: float = 0.06  # a second reconcile runs while this read is slow
    early_notification: float = 0.25  # Adyen notifies before the sender records
    failed_then_ok: float = 0.15  # Adyen: CAPTURE success=false first
    crash: float = 0.03  # per crash point reached

    @classmethod
    def none(cls) -> Faults:
        return cls(0, 0, 0, 0, 0, 0, 0, 0)


class PspModel:
    """Klarna OM and Adyen Checkout in memory, answering over an httpx.MockTransport."""

    def __init__(self, rng: random.Random, sim: Simulation) -> None:
        self.rng = rng
        self.sim = sim
        self.faults = Faults()
        self.orders: dict[str, PspOrder] = {}
        self.replies: dict[str, tuple[str, httpx.Response]] = {}  # key -> (request, reply)
        self.first_request: dict[str, str] = {}  # key -> the first request sent with it
        self.notifications: list[dict[str, Any]] = []
        self.violations: list[Violation] = []
        self.fault_count = 0
        self.in_handler = False
        self.psp_refs = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _fault(self, probability: float) -> bool:
        if probability and self.rng.random() < probability:
            self.fault_count += 1
            return True
        return False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "klarna.sim":
            return self._klarna(request)
        return self._adyen(request)

    # -- Klarna -----------------------------------------------------------------

    def _klarna(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")  # '', ordermanagement, v1, orders, id, ...
        order = self.orders.get(parts[4])
        if order is None:
            return httpx.Response(404, json={"error_code": "NOT_FOUND"})
        if request.method == "GET":
            return self._klarna_read(order)
        key = request.headers.get("Klarna-Idempotency-Key", "")
        body = json.loads(request.content) if request.content else {}
        replay = self._replay(key, request)
        if replay is not None:
            return replay
        if self._fault(self.faults.write_fail):
            status = self.rng.choice([500, 503, 429, 409])
            self.sim.note(f"fault klarna_write_{status}")
            return httpx.Response(
                status, json={"error_code": f"SIM_{status}"}, headers=self._retry_after()
            )
        action = parts[5] if len(parts) > 5 else ""
        response = self._klarna_apply(order, action, body, key)
        self.replies[key] = (_request_digest(request), response)
        if self._fault(self.faults.write_lost):
            self.sim.note("fault klarna_answer_lost")
            if self.rng.random() < 0.5:
                raise httpx.ReadTimeout("simulated: the answer was lost", request=request)
            return httpx.Response(502, json={"error_code": "SIM_502"})
        return response

    def _retry_after(self) -> dict[str, str]:
        roll = self.rng.random()
        if roll < 0.1:
            self.sim.note("fault retry_after_malformed")
            return {"Retry-After": "soon"}  # neither seconds nor an HTTP-date
        return {"Retry-After": "1"} if roll < 0.3 else {}

    def _replay(self, key: str, request: httpx.Request) -> httpx.Response | None:
        # One key, one request: a retry that differs from the first attempt is a new
        # intent under an old key (the PSP would replay, or refuse, the first one).
        digest = _request_digest(request)
        first = self.first_request.setdefault(key, digest)
        if first != digest and not any(v.code == "key_reused_differently" for v in self.violations):
            self.violations.append(
                Violation("key_reused_differently", f"key {key[:8]} sent with another request")
            )
        if key not in self.replies:
            return None
        _, response = self.replies[key]
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )

    def _klarna_apply(
        self, order: PspOrder, action: str, body: dict[str, Any], key: str
    ) -> httpx.Response:
        open_ = order.status in ("AUTHORIZED", "PART_CAPTURED")

        def refuse(code: str) -> httpx.Response:
            return httpx.Response(403, json={"error_code": code, "error_messages": [code]})

        if action == "authorization":
            amount = int(body["order_amount"])
            if amount == 0:
                order.zero_updates += 1
            if not open_ or amount < order.captured:
                return refuse("NOT_ALLOWED")
            if amount > order.authorized and not order.allow_increase:
                order.refused.add(amount)
                return refuse("NOT_ALLOWED")
            order.authorized, order.lines = amount, body.get("order_lines") or []
            order.effects.append(Effect("update_authorization", amount, key, None))
            return httpx.Response(204)
        if action == "captures":
            amount = int(body["captured_amount"])
            if not open_ or amount > order.authorized - order.captured:
                return refuse("CAPTURE_NOT_ALLOWED")
            order.captured += amount
            order.status = "CAPTURED" if order.captured >= order.authorized else "PART_CAPTURED"
            ref = str(body.get("reference"))
            self._once(order, "capture", ref)
            order.effects.append(Effect("capture", amount, key, ref))
            capture_id = f"cap-{len(order.captures) + 1}"
            order.captures.append(
                {"capture_id": capture_id, "reference": ref, "captured_amount": amount}
            )
            return httpx.Response(201, headers={"Capture-Id": capture_id})
        if action == "refunds":
            amount = int(body["refunded_amount"])
            if amount > order.captured - order.refunded:
                return refuse("REFUND_NOT_ALLOWED")
            order.refunded += amount
            ref = str(body.get("reference"))
            self._once(order, "refund", ref)
            order.effects.append(Effect("refund", amount, key, ref))
            refund_id = f"ref-{len(order.refunds) + 1}"
            order.refunds.append(
                {"refund_id": refund_id, "reference": ref, "refunded_amount": amount}
            )
            return httpx.Response(201, headers={"Refund-Id": refund_id})
        if action == "cancel":
            if order.status != "AUTHORIZED" or order.captured:
                return refuse("CANCEL_NOT_ALLOWED")
            order.status = "CANCELLED"
            order.effects.append(Effect("cancel", 0, key, None))
            return httpx.Response(204)
        if action == "release-remaining-authorization":
            if order.status != "PART_CAPTURED":
                return refuse("NOT_ALLOWED")
            order.authorized, order.status = order.captured, "CAPTURED"
            order.effects.append(Effect("release_authorization", order.captured, key, None))
            return httpx.Response(204)
        if action == "extend-authorization-time":
            order.effects.append(Effect("extend_authorization", 0, key, None))
            return httpx.Response(204)
        return httpx.Response(404, json={"error_code": "NOT_FOUND"})

    def _once(self, order: PspOrder, kind: str, reference: str) -> None:
        if any(e.kind == kind and e.reference == reference for e in order.effects):
            self.violations.append(
                Violation("applied_twice", f"{kind} of operation {reference[:8]} applied twice")
            )

    def _klarna_read(self, order: PspOrder) -> httpx.Response:
        if self._fault(self.faults.read_fail):
            status = self.rng.choice([500, 503, 429])
            self.sim.note(f"fault klarna_read_{status}")
            return httpx.Response(status, json={"error_code": f"SIM_{status}"})
        if self._fault(self.faults.read_forbidden):
            self.sim.note("fault klarna_read_403")
            return httpx.Response(403, json={"error_code": "FORBIDDEN"})
        body = {
            "order_id": order.psp_id,
            "status": order.status,
            "order_amount": order.authorized,
            "captured_amount": order.captured,
            "refunded_amount": order.refunded,
            "purchase_country": "DE",
            "initial_payment_method": {"type": "INVOICE"},
            "order_lines": order.lines,
            "captures": list(order.captures),
            "refunds": list(order.refunds),
        }
        answer = httpx.Response(200, json=body)
        if not self.in_handler and self._fault(self.faults.interleave):
            # This read is slow: another worker reconciles the same order meanwhile,
            # and this one's answer (read before) arrives after.
            self.sim.note("fault interleaved_reconcile")
            self.in_handler = True
            try:
                self.sim.reconcile("interleaved")
            finally:
                self.in_handler = False
        return answer

    # -- Adyen ------------------------------------------------------------------

    def _adyen(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")  # '', v71, payments, ref, action
        order = self.orders.get(parts[3])
        if order is None:
            return httpx.Response(422, json={"errorCode": "167", "message": "unknown payment"})
        key = request.headers.get("Idempotency-Key", "")
        replay = self._replay(key, request)
        if replay is not None:
            return replay
        if self._fault(self.faults.write_fail):
            status = self.rng.choice([500, 503, 429])
            self.sim.note(f"fault adyen_write_{status}")
            return httpx.Response(status, json={"errorCode": f"SIM{status}", "message": "sim"})
        body = json.loads(request.content)
        self.psp_refs += 1
        psp_ref = f"M{self.sim.seed}x{self.psp_refs}"
        response = httpx.Response(
            201,
            json={"status": "received", "pspReference": psp_ref, "reference": body["reference"]},
        )
        self.replies[key] = (_request_digest(request), response)
        self._adyen_decide(order, parts[4], body, psp_ref, key)
        if self.notifications and self._fault(self.faults.early_notification):
            self.sim.note("fault early_notification")
            self.sim.deliver(self.notifications.pop())
        if self._fault(self.faults.write_lost):
            self.sim.note("fault adyen_answer_lost")
            raise httpx.ReadTimeout("simulated: the answer was lost", request=request)
        return response

    def _adyen_decide(
        self, order: PspOrder, action: str, body: dict[str, Any], psp_ref: str, key: str
    ) -> None:
        """Applies the modification (or not) and queues its notification."""
        amount = int((body.get("amount") or {}).get("value") or 0)
        open_ = order.status in ("AUTHORIZED", "PART_CAPTURED")
        event, ok, kind = "", False, action
        if action == "amountUpdates":
            event, kind = "AUTHORISATION_ADJUSTMENT", "update_authorization"
            if amount == 0:
                order.zero_updates += 1
            ok = open_ and amount >= order.captured
            if ok and amount > order.authorized and not order.allow_increase:
                order.refused.add(amount)
                ok = False
            if ok:
                order.authorized = amount
                order.lines = body.get("lineItems") or []
                if order.captured and amount == order.captured:
                    order.status = "CAPTURED"
        elif action == "captures":
            event, kind = "CAPTURE", "capture"
            ok = open_ and amount <= order.authorized - order.captured
            if ok and self._fault(self.faults.failed_then_ok):
                self.sim.note("fault capture_failed")
                ok = False
            if ok:
                order.captured += amount
                order.status = "CAPTURED" if order.captured >= order.authorized else "PART_CAPTURED"
        elif action == "refunds":
            event, kind = "REFUND", "refund"
            ok = amount <= order.captured - order.refunded
            if ok:
                order.refunded += amount
        elif action == "cancels":
            event, kind = "CANCELLATION", "cancel"
            ok = order.status == "AUTHORIZED" and order.captured == 0
            if ok:
                order.status = "CANCELLED"
        if ok:
            reference = str(body["reference"])
            if kind in ("capture", "refund"):
                self._once(order, kind, reference)
            order.effects.append(Effect(kind, amount, key, reference))
        item = {
            "pspReference": psp_ref,
            "originalReference": order.psp_id,
            "merchantReference": body["reference"],
            "merchantAccountCode": MERCHANT,
            "eventCode": event,
            "success": "true" if ok else "false",
            "amount": {"currency": "EUR", "value": amount},
            "reason": "" if ok else "refused",
        }
        self.notifications.append(item)


def _request_digest(request: httpx.Request) -> str:
    return hashlib.sha256(
        request.method.encode() + request.url.path.encode() + request.content
    ).hexdigest()


# --- the shop model -----------------------------------------------------------------------


@dataclass
class Shop:
    """One order's basket as the shop edits it; every edit is a new version."""

    rng: random.Random
    order_id: str
    provider: str
    psp_id: str
    lines: list[dict[str, Any]] = field(default_factory=list)
    discount: int = 0
    status: str = "open"
    version: int = 0
    next_line: int = 0
    parcels: int = 0

    def new_line(self) -> dict[str, Any]:
        self.next_line += 1
        return {
            "id": f"l{self.next_line}",
            "name": f"Item {self.next_line}",
            "quantity": self.rng.randint(1, 3),
            "unit_price": self.rng.choice([0, 99, 450, 1200, 2599, self.rng.randint(1, 5000)]),
            "tax_rate": self.rng.choice([0, 700, 2000, 2500]),
            "shipped_quantity": 0,
            "returned_quantity": 0,
        }

    def start(self) -> dict[str, Any]:
        self.lines = [self.new_line() for _ in range(self.rng.randint(1, 3))]
        self.lines[0]["unit_price"] = max(self.lines[0]["unit_price"], 100)  # > 0 to authorize
        if self.rng.random() < 0.5:
            self.discount = self.rng.randint(1, max(1, self._value() // 2))
        return self.snapshot()

    def _value(self) -> int:
        return sum(line["quantity"] * line["unit_price"] for line in self.lines)

    def snapshot(self) -> dict[str, Any]:
        self.version += 1
        lines = [dict(line) for line in self.lines]
        discount = min(self.discount, self._value())
        if discount:
            lines.append(
                {
                    "id": "discount",
                    "name": "Discount",
                    "type": "discount",
                    "quantity": 1,
                    "unit_price": -discount,
                    "tax_rate": 2000,
                }
            )
        payment: dict[str, Any] = (
            {"provider": "klarna", "klarna_order_id": self.psp_id}
            if self.provider == "klarna"
            else {"provider": "adyen", "psp_reference": self.psp_id}
        )
        shipping = (
            {"carrier": "DHL", "tracking_number": f"T{self.parcels}"} if self.parcels else None
        )
        return {
            "id": self.order_id,
            "shipping": shipping,
            "version": self.version,
            "currency": "EUR",
            "country": "DE",
            "status": self.status,
            "payment": payment,
            "lines": lines,
        }

    def edit(self) -> tuple[str, dict[str, Any]] | None:
        """One random edit of the basket; the event type and snapshot, or None."""
        if self.status != "open":
            return None
        rng = self.rng
        move = rng.choice(
            ["add", "remove", "swap", "price", "discount", "ship", "ship", "ship", "return",
             "quantity", "cancel", "empty"]
        )  # fmt: skip
        unshipped = [line for line in self.lines if line["shipped_quantity"] == 0]
        if move == "add":
            self.lines.append(self.new_line())
        elif move == "remove" and unshipped:
            self.lines.remove(rng.choice(unshipped))
        elif move == "swap" and unshipped:
            # Another item at the same total: only the lines change (seq 7).
            old = rng.choice(unshipped)
            new = {**self.new_line(), "quantity": old["quantity"], "unit_price": old["unit_price"]}
            self.lines[self.lines.index(old)] = new
        elif move == "price" and self.lines:
            line = rng.choice(self.lines)
            line["unit_price"] = max(0, line["unit_price"] + rng.choice([-300, -50, 50, 300]))
        elif move == "discount":
            self.discount = rng.choice(
                [0, self.discount // 2, self.discount + 100, rng.randint(0, 900)]
            )
        elif move == "ship" and self.lines:
            line = rng.choice(self.lines)
            line["shipped_quantity"] = rng.randint(line["shipped_quantity"], line["quantity"])
            self.parcels += 1
            return "order.shipped", self.snapshot()
        elif move == "return" and self.lines:
            line = rng.choice(self.lines)
            line["returned_quantity"] = rng.randint(
                line["returned_quantity"], line["shipped_quantity"]
            )
            return "order.returned", self.snapshot()
        elif move == "quantity" and self.lines:
            line = rng.choice(self.lines)
            line["quantity"] = max(line["shipped_quantity"], rng.randint(0, 4))
        elif move == "cancel" and rng.random() < 0.3:
            self.status = "cancelled"
            return "order.cancelled", self.snapshot()
        elif move == "empty" and not any(line["shipped_quantity"] for line in self.lines):
            self.lines = []  # the customer removed everything (seq 8)
        else:
            return None
        return "order.updated", self.snapshot()


# --- the simulation ----------------------------------------------------------------------


class Simulation:
    """Runs histories against one database; one instance per process."""

    def __init__(self, database_url: str, *, max_attempts: int = 3) -> None:
        self.database_url = database_url
        self.settings = Settings(
            database_url=SecretStr(database_url),
            klarna_api_url=KLARNA_URL,
            klarna_username="sim",
            klarna_password=SecretStr("sim"),  # a model PSP: no real credentials
            adyen_checkout_url=ADYEN_URL,
            adyen_api_key=SecretStr("sim"),
            adyen_merchant_account=MERCHANT,
            max_attempts=max_attempts,
            # Never due by the clock: only time_passes() makes a retry due, so the
            # wall clock decides nothing.
            retry_base_seconds=3600.0,
            retry_max_seconds=3600.0,
        )
        self.pool: SyncPool = sync_pool(database_url, max_size=4)
        self.loop = asyncio.new_event_loop()
        self.apool: AsyncPool = async_pool(database_url, max_size=2)
        self.loop.run_until_complete(self.apool.open())
        self.seed = 0
        self.rng = random.Random(0)
        self.model = PspModel(self.rng, self)
        self.http = httpx.Client(transport=httpx.MockTransport(self._handle))
        self.ctx = WorkerContext(self.settings, self.pool, self.http, self._providers())
        self.enqueued: list[tuple[str, float]] = []
        self.order_id = ""
        self.result = Result(0)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        return self.model.handle(request)

    def _providers(self) -> dict[str, Provider]:
        def captured(order_id: str) -> list[PspLine]:
            with self.pool.connection() as conn:
                return store.captured_lines(conn, order_id)

        return {
            "klarna": KlarnaClient(self.http, KLARNA_URL, "sim", "sim"),
            "adyen": AdyenClient(
                self.http,
                checkout_url=ADYEN_URL,
                api_key="sim",
                merchant_account=MERCHANT,
                captured_lines=captured,
            ),
        }

    def close(self) -> None:
        self.loop.run_until_complete(self.apool.close())
        self.loop.close()
        self.http.close()
        self.pool.close()

    def note(self, event: str) -> None:
        self.result.trace.append(event)
        if event.startswith("fault"):
            self.result.faults += 1

    # -- what the worker does ------------------------------------------------------

    def _enqueue(self, order_id: str, delay: float) -> None:
        self.enqueued.append((order_id, delay))

    @contextmanager
    def _crashes(self) -> Iterator[None]:
        original = crashpoints.crash_point

        def crash(name: str) -> None:
            assert name in crashpoints.POINTS
            if self.model._fault(self.model.faults.crash):
                self.note(f"fault crash_{name}")
                raise SimCrash(name)

        # The reconciler calls the name it imported; a raise stands in for the SIGKILL.
        setattr(reconcile, "crash_point", crash)  # noqa: B010
        try:
            yield
        finally:
            setattr(reconcile, "crash_point", original)  # noqa: B010

    def reconcile(self, why: str, *, force: bool = False) -> str:
        try:
            with self._crashes():
                reason = reconcile.Reconciler(self.ctx, self._enqueue).run(
                    self.order_id, force=force
                )
        except SimCrash:
            # The message is redelivered once the lease runs out (made due later).
            reason = "crashed"
        except Exception as exc:
            # Celery would log it and drop the message; the sweeper comes back later.
            reason = f"task_died {type(exc).__name__}"
            self.result.violations.append(Violation("task_died", f"{type(exc).__name__}: {exc}"))
        self.note(f"reconcile {why} -> {reason}")
        return reason

    def deliver(self, item: dict[str, Any]) -> None:
        """An Adyen notification through the real store and processing."""
        stored = self.loop.run_until_complete(adyen_webhook.store_items(self.apool, [item]))
        for inbox_id in stored.pending:
            outcome = adyen_inbox.process(self.ctx, inbox_id, self._enqueue)
            self.note(f"notification {item['eventCode']} {item['success']} -> {outcome}")
        if not stored.new:
            self.note(f"notification {item['eventCode']} duplicate")

    def ingest(self, event_type: str, snapshot: dict[str, Any], webhook_id: str) -> None:
        event = ShopEvent.model_validate({"type": event_type, "order": snapshot})
        stored = self.loop.run_until_complete(
            ingest.store_shop_event(self.apool, webhook_id, event)
        )
        self.note(f"shop v{snapshot['version']} {event_type} -> {stored.outcome}")

    def operator_reconcile(self) -> None:
        self.loop.run_until_complete(operator.request_reconcile(self.apool, self.order_id))
        self.reconcile("operator", force=True)

    def time_passes(self) -> None:
        """Every back-off is over and every lease has run out (a dead worker's too)."""
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE operations SET next_attempt_at = now() - interval '1 second',"
                " lease_until = CASE WHEN lease_until IS NULL THEN NULL"
                " ELSE now() - interval '1 second' END WHERE order_id = %s",
                (self.order_id,),
            )
            conn.execute(
                "UPDATE orders SET next_reconcile_at = NULL WHERE id = %s", (self.order_id,)
            )
            conn.commit()

    # -- one history -----------------------------------------------------------------

    def run(self, seed: int, *, steps: int = 14) -> Result:
        self.seed = seed
        self.rng.seed(seed)
        random.seed(seed)  # the reconciler's own jitter
        self.model.__init__(self.rng, self)  # type: ignore[misc]
        self.result = Result(seed)
        self.enqueued = []
        tag = uuid.uuid4().hex[:8]  # ids unique in the database, not part of the trace
        provider = self.rng.choice(["klarna", "klarna", "adyen"])
        self.order_id = f"sim-{seed}-{tag}"
        psp_id = f"{'K' if provider == 'klarna' else 'A'}{seed}{tag}"
        shop = Shop(self.rng, self.order_id, provider, psp_id)
        first = shop.start()
        basket = basket_lines(OrderSnapshot.model_validate(first))
        total = sum(line.total_amount for line in basket)
        psp = PspOrder(
            provider,
            psp_id,
            total,
            klarna_order_lines(basket),
            allow_increase=self.rng.random() < 0.7,
        )
        self.model.orders[psp_id] = psp
        self.note(f"start {provider} total {total} lines {len(first['lines'])}")
        if provider == "adyen" and self.rng.random() < 0.5:
            self.deliver(_authorisation(psp))
        events: list[tuple[str, dict[str, Any], str]] = [("order.created", first, f"wh-{tag}-1")]
        for _ in range(steps):
            edit = shop.edit()
            if edit is not None:
                events.append((edit[0], edit[1], f"wh-{tag}-{edit[1]['version']}"))
        self._play(events, psp)
        self._settle()
        self.result.violations += self.model.violations
        self.result.violations += self._check(psp)
        self.result.events = len(events)
        return self.result

    def _play(self, events: list[tuple[str, dict[str, Any], str]], psp: PspOrder) -> None:
        queue = list(events)
        rng = self.rng
        while queue:
            # Versions out of order and repeated: the next one, or the one after it first.
            index = 1 if len(queue) > 1 and rng.random() < 0.2 else 0
            event_type, snapshot, webhook_id = queue.pop(index)
            self.ingest(event_type, snapshot, webhook_id)
            if rng.random() < 0.1:
                self.note("fault shop_resent")
                self.ingest(event_type, snapshot, webhook_id)
                self.result.faults += 0
            for _ in range(rng.randint(0, 3)):
                action = rng.choice(
                    ["work", "work", "work", "notify", "notify", "time", "operator"]
                )
                if action == "work":
                    self.reconcile("worker")
                elif action == "notify" and self.model.notifications:
                    # Out of order, and sometimes twice.
                    pick = rng.randrange(len(self.model.notifications))
                    item = self.model.notifications[pick]
                    if rng.random() < 0.8:
                        self.model.notifications.pop(pick)
                    self.deliver(item)
                elif action == "time":
                    self.time_passes()
                elif action == "operator" and rng.random() < 0.3:
                    self.operator_reconcile()
            if psp.provider == "adyen" and rng.random() < 0.05:
                self.deliver(_authorisation(psp))  # a late (repeated) AUTHORISATION

    def _settle(self) -> None:
        """Faults off: deliver everything, make everything due, until nothing moves."""
        self.model.faults = Faults.none()
        for _ in range(SETTLE_ROUNDS):
            while self.model.notifications:
                self.deliver(self.model.notifications.pop(0))
            self.time_passes()
            self.reconcile("settle")
            if self._in_flight() is not None and self._halted():
                # needs_attention halts every automatic operation, a retry included
                # (contract §4): a person reconciles it.
                self.operator_reconcile()
            if not self.model.notifications and self._in_flight() is None:
                # Once more, to be sure nothing is left to plan.
                self.reconcile("settle")
                if not self.model.notifications and self._in_flight() is None:
                    return

    def _halted(self) -> bool:
        with self.pool.connection() as conn:
            order = store.lock_order(conn, self.order_id)
            conn.rollback()
        return order is not None and "needs_attention" in order["flags"]

    def _in_flight(self) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            return store.in_flight(store.operations(conn, self.order_id))

    # -- the invariants ---------------------------------------------------------------

    def _check(self, psp: PspOrder) -> list[Violation]:
        found: list[Violation] = []
        with self.pool.connection() as conn:
            order = store.lock_order(conn, self.order_id)
            if order is None:
                return [Violation("not_in_sync", "the order was never stored")]
            ops = store.operations(conn, self.order_id)
            outbox = conn.execute(
                "SELECT event_type FROM outbox WHERE order_id = %s", (self.order_id,)
            ).fetchall()
        flags = list(order["flags"])
        snapshot = store.snapshot(order)
        stuck = store.in_flight(ops)
        if stuck is not None:
            code = (
                "stuck_awaiting_notification"
                if stuck["status"] == "awaiting_notification"
                else "stuck_in_flight"
            )
            found.append(Violation(code, f"{stuck['kind']} still {stuck['status']}"))
        succeeded = [op for op in ops if op["status"] == "succeeded"]
        # Effect by effect, for what moves money or ends the authorization (an amount
        # update is state, checked below against the basket).
        ours = sorted(
            _effect_kind(op["kind"], psp.provider)
            for op in succeeded
            if _effect_kind(op["kind"], psp.provider) in MONEY_EFFECTS
        )
        theirs = sorted(e.kind for e in psp.effects if e.kind in MONEY_EFFECTS)
        if ours != theirs:
            found.append(Violation("effects_differ", f"PSP {theirs} vs ours {ours}"))
        applied_keys = {e.key.split(".")[0] for e in psp.effects}
        for op in ops:
            if op["status"] in ("rejected", "failed") and op["idempotency_key"] in applied_keys:
                code = (
                    "rejected_but_applied" if op["status"] == "rejected" else "failed_but_applied"
                )
                found.append(Violation(code, f"{op['kind']} {op['status']} but applied"))
        money = {
            "captured": sum(op["amount"] for op in succeeded if op["kind"] == "capture"),
            "refunded": sum(op["amount"] for op in succeeded if op["kind"] == "refund"),
        }
        if (money["captured"], money["refunded"]) != (psp.captured, psp.refunded):
            found.append(
                Violation(
                    "figures_differ",
                    f"PSP captured {psp.captured} refunded {psp.refunded}, ours {money}",
                )
            )
        if psp.provider == "klarna" and not stuck and order["captured_amount"] != psp.captured:
            found.append(
                Violation(
                    "figures_differ",
                    f"order row captured {order['captured_amount']}, PSP {psp.captured}",
                )
            )
        reasons = order["flag_reason"] or {}
        drift = (reasons.get("needs_attention") or {}).get("code") == "drift"
        if drift and ours == theirs:
            found.append(Violation("false_drift", "drift flagged though the ledgers agree"))
        if psp.zero_updates:
            found.append(
                Violation("authorization_updated_to_zero", "an emptied basket was sent as 0")
            )
        ledger = ledger_from((op["kind"], store.to_lines(op["lines"])) for op in succeeded)
        for line in snapshot.effective_lines:
            if line.reduces_total:
                continue
            entry = ledger.get(line.id, LineLedger())
            captured = entry.captured_amount + entry.captured_share
            refunded = entry.refunded_amount + entry.refunded_share
            if refunded > captured or entry.refunded_quantity > entry.captured_quantity:
                found.append(Violation("over_refund", f"line {line.id}: {refunded} > {captured}"))
        if not flags and not stuck:
            if snapshot.status == "open" and psp.status in (
                "AUTHORIZED",
                "PART_CAPTURED",
                "CAPTURED",
            ):
                for line in snapshot.effective_lines:
                    if line.reduces_total or line.total == 0:
                        continue
                    entry = ledger.get(line.id, LineLedger())
                    # Never more than shipped; fewer only where the rest is worth 0
                    # (checked below: everything shipped means the total is captured).
                    if entry.captured_quantity > line.shipped_quantity:
                        found.append(
                            Violation(
                                "capture_gap",
                                f"line {line.id}: shipped {line.shipped_quantity}, "
                                f"captured {entry.captured_quantity}",
                            )
                        )
                    held_value = (
                        entry.captured_amount
                        + entry.captured_share
                        - entry.refunded_amount
                        - entry.refunded_share
                    )
                    returned = min(line.returned_quantity, entry.captured_quantity)
                    if entry.refunded_quantity < returned and held_value > 0:
                        found.append(Violation("over_refund", f"line {line.id}: refunds missing"))
                everything = all(
                    line.shipped_quantity == line.quantity
                    for line in snapshot.effective_lines
                    if not line.reduces_total and line.total
                )
                captured_sum = captured_total(ledger)
                if captured_sum > snapshot.total or (
                    everything and captured_sum != snapshot.total and snapshot.total
                ):
                    found.append(
                        Violation(
                            "capture_gap",
                            f"all shipped: captured {captured_total(ledger)} of {snapshot.total}",
                        )
                    )
            if (
                snapshot.status == "open"
                and psp.status in ("AUTHORIZED", "PART_CAPTURED")
                and psp.captured < psp.authorized
                and snapshot.total
            ):
                updated = any(op["kind"] == "update_authorization" for op in succeeded)
                if (
                    psp.provider == "adyen"
                    and not updated
                    and order["authorized_amount"] != (psp.authorized)
                ):
                    # Taken from a snapshot stored first, not the payment (seq 14).
                    found.append(
                        Violation(
                            "adyen_authorization_guessed",
                            f"stored authorized {order['authorized_amount']}, "
                            f"Adyen {psp.authorized}",
                        )
                    )
                elif psp.authorized != snapshot.total:
                    found.append(
                        Violation(
                            "not_in_sync", f"PSP authorized {psp.authorized} of {snapshot.total}"
                        )
                    )
                elif psp.provider == "klarna" and not same_lines(
                    store.to_lines(psp.lines), basket_lines(snapshot)
                ):
                    found.append(Violation("psp_lines_differ", "the PSP holds other lines"))
        told = {row["event_type"] for row in outbox}
        new_order_events = sum(
            1 for row in outbox if row["event_type"] == "order.new_order_required"
        )
        if len(psp.refused) > new_order_events:
            found.append(
                Violation(
                    "refusal_not_told",
                    f"{len(psp.refused)} different increases refused, shop told "
                    f"{new_order_events} times",
                )
            )
        for flag in flags:
            event = (
                "order.new_order_required" if flag == "needs_new_order" else "order.needs_attention"
            )
            if event not in told:
                found.append(Violation("flag_not_told", f"{flag} without {event}"))
        if any(v.code == "stuck_awaiting_notification" for v in found):
            # Money Adyen moved for an operation left waiting: the stranded resend (seq 2).
            found = [
                Violation("stranded_by_notification", v.detail)
                if v.code in ("figures_differ", "effects_differ")
                else v
                for v in found
            ]
        if "fault interleaved_reconcile" in self.result.trace:
            # With a slow read overtaken by another reconcile, a ledger or figure that
            # went back is that read's older answer adopted (seq 4).
            found = [
                Violation("stale_read_adopted", v.detail)
                if v.code in ("figures_differ", "effects_differ")
                else v
                for v in found
            ]
        self.note(f"end flags {sorted(flags)} violations {[v.code for v in found]}")
        return found


def _effect_kind(kind: str, provider: str) -> str:
    # Behind Adyen, a release is an amount update down to what was captured.
    if provider == "adyen" and kind == "release_authorization":
        return "update_authorization"
    return kind


def _authorisation(psp: PspOrder) -> dict[str, Any]:
    return {
        "pspReference": psp.psp_id,
        "merchantAccountCode": MERCHANT,
        "eventCode": "AUTHORISATION",
        "success": "true",
        "amount": {"currency": "EUR", "value": psp.authorized},
        "reason": "",
    }


# --- runs ---------------------------------------------------------------------------------


@dataclass
class Summary:
    histories: int = 0
    events: int = 0
    faults: int = 0
    violations: int = 0
    seconds: float = 0.0
    failures: list[Result] = field(default_factory=list)
    by_sequence: dict[int, list[int]] = field(default_factory=dict)  # sequence -> seeds

    @property
    def rate(self) -> float:
        return self.histories / self.seconds if self.seconds else 0.0


@contextmanager
def quiet_logs() -> Iterator[None]:
    """The reconciler's logs off while simulating: thousands of histories, no reader."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        yield
    finally:
        structlog.configure(**before)


def run_many(
    database_url: str,
    histories: int,
    first_seed: int = 0,
    *,
    on_result: Callable[[Result], None] | None = None,
) -> Summary:
    sim = Simulation(database_url)
    summary = Summary()
    started = time.perf_counter()
    try:
        for seed in range(first_seed, first_seed + histories):
            with quiet_logs():
                result = sim.run(seed)
            summary.histories += 1
            summary.events += result.events
            summary.faults += result.faults
            if result.violations:
                summary.violations += len(result.violations)
                summary.failures.append(result)
                for violation in result.violations:
                    summary.by_sequence.setdefault(violation.sequence, []).append(seed)
            if on_result is not None:
                on_result(result)
    finally:
        sim.close()
    summary.seconds = time.perf_counter() - started
    return summary


def prepare(database_url: str) -> None:
    """Empties the tables a simulation writes and stops waiting for the disk on commit:
    only for a database made for the simulation (a crash of it loses nothing real)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE outbox, operations, inbox, adyen_payments, orders CASCADE")
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                sql.Identifier(name[0])
            )
        )


def simulate(
    histories: int,
    first_seed: int,
    *,
    database_url: str | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """The long run (`ordersync simulate`): its own embedded Postgres unless given one;
    prints the totals, every failing seed and the sequence each violation belongs to."""
    from devrig.devstack import EmbeddedPostgres, temporary_pg_dir
    from ordersync.db import migrate

    postgres = None
    if database_url is None:
        postgres = EmbeddedPostgres(temporary_pg_dir("ordersync-sim-pg-") / "data")
        database_url = postgres.url
    try:
        with quiet_logs():
            migrate(database_url)
        prepare(database_url)

        def progress(result: Result) -> None:
            for violation in result.violations:
                out(
                    f"seed {result.seed}: {violation.code} (seq {violation.sequence or '-'}): "
                    f"{violation.detail}"
                )

        summary = run_many(database_url, histories, first_seed, on_result=progress)
    finally:
        if postgres is not None:
            postgres.stop()
    out(
        f"histories {summary.histories}  events {summary.events}  faults {summary.faults}  "
        f"violations {summary.violations}  in {summary.seconds:.1f} s "
        f"({summary.rate:.1f} histories/s)"
    )
    for sequence, seeds in sorted(summary.by_sequence.items()):
        label = f"seq {sequence}" if sequence else "no numbered sequence"
        out(f"  {label}: seeds {sorted(set(seeds))[:20]}")
    if summary.failures:
        out(
            f"first failing seed: {summary.failures[0].seed} (replay: --first-seed "
            f"{summary.failures[0].seed} --histories 1)"
        )
    return 1 if summary.violations else 0
