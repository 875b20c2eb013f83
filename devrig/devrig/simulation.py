"""A deterministic simulation of the whole service, judged by an independent oracle.

The real parts: the Postgres schema (migrations), the shop ingest statements (one by
one and group commit), the task layer's poison guard, the reconciler and its SQL, the
Klarna and Adyen clients (Checkout and classic), the Adyen inbox store and processing,
the sweeper and the delivery of the service's events to the shop. The model parts: the
shop, which makes random histories of one or more orders; the PSPs, plugged in at the
HTTP level through an `httpx.MockTransport` that applies, refuses, fails, lags and loses
answers the way Klarna OM and Adyen do, acts as a merchant would by hand (captures,
refunds and cancels outside the service, expiry, chargebacks) and keeps the lines of
every capture and refund; and the shop's callback endpoint.

What a history must end at comes from `devrig.oracle`, which shares no code with the
product: the PSP's ledger against the oracle effect by effect (per line: units
captured, at which price and tax, units refunded, at what), the product's figures
against the PSP's, and every flag against the flags the oracle calls for. A flagged
order is checked like any other.

Nothing waits on a clock: retries, leases, sweeps and timeouts are made due by writing
the database, and every random choice comes from one `random.Random(seed)`, so one seed
replays one history exactly. Workers die for real: `WorkerDeath` is a BaseException
raised at every named crash point and inside recording, which nothing of the product
catches, so the task ends there and its lease runs out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import structlog
import uvloop
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import SecretStr

from data import orders as store
from devrig.oracle import (
    CUT_REFUND,
    REDUCING,
    SHARED_UP,
    Booked,
    Oracle,
    _State,
    check_ledger,
    ended_as,
    tax_in,
)
from domain.lines import PspLine
from domain.snapshot import ShopEvent
from integrations import results as psp_results
from integrations.adyen.client import AdyenClient
from integrations.klarna.client import KlarnaClient
from integrations.provider import Provider
from ordersync.accounts import Accounts, AdyenAccount, KlarnaAccount
from ordersync.db import AsyncPool, SyncPool, async_pool, sync_pool
from ordersync.errors import OrdersyncError
from ordersync.http import WorkerClient
from ordersync.settings import Settings
from service import adyen_webhook, ingest
from service import order_views as operator
from workers import adyen_inbox, callbacks, crashpoints, poison, reconcile, sweeper
from workers.context import WorkerContext, account_clients

KLARNA_URL = "http://klarna.sim"
ADYEN_URL = "http://adyen.sim/v71"
PAL_URL = "http://adyen.sim/pal/servlet/Payment/v68"
SHOP_URL = "http://shop.sim/callbacks"
MERCHANT = "SimMerchant"
# The merchant's accounts (contract §6): two Klarna accounts, each its own host and
# credentials, and two Adyen merchant accounts, each its own API key. name -> (host,
# region, username, password, countries) / merchant account -> API key.
KLARNA_ACCOUNTS = {
    "eu": ("klarna-eu.sim", "eu", "sim-eu", "pw-eu", ("DE", "SE", "AT")),
    "us": ("klarna-us.sim", "na", "sim-us", "pw-us", ("US",)),
}
ADYEN_KEYS = {"SimEU": "key-eu", "SimUS": "key-us"}
SETTLE_ROUNDS = 14
# How often the first read after a lost Klarna answer still lags behind the write.
LAG_AFTER_LOST = 0.5
# Trouble a history may plan for an order's next PSP requests (the faults each one is):
# an applied request whose answer is lost and whose resend meets the rate limit; an
# Adyen capture that fails first and is reported failed a second time while resent.
TROUBLE_FAULTS = {
    "lost_then_429": ("answer_lost", "resend_429"),
    "capture_fails_twice": ("capture_fails", "failure_again"),
}
TROUBLE = {
    "klarna": ("lost_then_429",),
    "adyen": ("lost_then_429", "capture_fails_twice", "capture_fails_twice"),
}
# Time passes, in one statement: every back-off and lease runs out, stored work is past
# its grace period, events for the shop are due; with `resync`, every PSP read is old.
# An order row is written only if a value changes (a new row version, and the trigger's
# run, for nothing otherwise). With `leases`, it returns the operations left `sent` with
# their lease run out as they were before time passed: every part of one statement reads
# the same snapshot, so that is what a read just before it would return.
TIME_PASSES = """
WITH ops AS (
    UPDATE operations
    SET next_attempt_at = CASE WHEN next_attempt_at IS NULL THEN NULL
                               ELSE now() - interval '1 second' END,
        lease_until = CASE WHEN lease_until IS NULL THEN NULL
                           ELSE now() - interval '1 second' END
    WHERE order_id = ANY(%(ids)s)
      AND (next_attempt_at IS NOT NULL OR lease_until IS NOT NULL)
), ords AS (
    UPDATE orders
    SET next_reconcile_at = NULL, sweep_after = NULL,
        reconcile_requested_at = reconcile_requested_at - interval '2 hours',
        psp_synced_at = CASE WHEN %(resync)s THEN psp_synced_at - interval '7 days'
                             ELSE psp_synced_at END
    WHERE id = ANY(%(ids)s)
      AND (next_reconcile_at IS NOT NULL OR sweep_after IS NOT NULL
           OR reconcile_requested_at IS NOT NULL
           OR (%(resync)s AND psp_synced_at IS NOT NULL))
), events AS (
    UPDATE outbox SET next_attempt_at = now() - interval '1 second', lease_until = NULL
    WHERE order_id = ANY(%(ids)s) AND delivered_at IS NULL
), notifications AS (
    UPDATE inbox SET received_at = received_at - interval '2 hours'
    WHERE source = 'adyen' AND processed_at IS NULL
), due AS (
    -- The sweep's copy of their age (data/inbox.py, adyen_due). One that matched
    -- nothing is offered again after a back-off of at most an hour (MARK_UNMATCHED):
    -- it runs out as every other does, so a refusal that came before its order is
    -- matched once the order is stored (README "Out of order, twice, early").
    UPDATE adyen_due SET received_at = received_at - interval '2 hours',
                         next_attempt_at = CASE WHEN unmatched THEN now() - interval '1 second'
                                                ELSE next_attempt_at END
)
SELECT kind FROM operations
WHERE %(leases)s AND order_id = ANY(%(ids)s) AND status = 'sent' AND lease_until < now()
"""
# The flags the orders carry now, and the flag events each ever recorded for the shop.
FLAGS_OF = """
SELECT id AS order_id, 'now' AS kind, f AS flag, flag_reason -> f ->> 'code' AS code
FROM orders, unnest(flags) AS f WHERE id = ANY(%(ids)s)
UNION ALL
SELECT order_id, 'told', event_type, payload -> 'data' -> 'reason' ->> 'code'
FROM outbox WHERE order_id = ANY(%(ids)s) AND event_type <> 'order.synced'
"""
# Whether the orders are settled (nothing in flight, nothing for the shop undelivered, no
# notification waiting: a count of what is left, in the `busy` row) and, in the same
# round trip, their flags (FLAGS_OF), which a settle point reads next when it is. A
# pending operation with no next attempt is parked for a person (an unknown outcome
# after the last attempt, no credentials): no time passing, sweep or reconcile moves it,
# only an operator's reconcile or a notification (counted apart), so it is settled; the
# barrier's operator acts on its flag, and one left at the end is `stuck_in_flight`.
QUIET_AND_FLAGS = f"""
SELECT NULL::text AS order_id, 'busy' AS kind,
       ((SELECT count(*) FROM operations WHERE order_id = ANY(%(ids)s)
           AND status IN ('pending', 'sent', 'awaiting_notification')
           AND NOT (status = 'pending' AND next_attempt_at IS NULL))
        + (SELECT count(*) FROM outbox WHERE order_id = ANY(%(ids)s)
           AND delivered_at IS NULL AND parked_at IS NULL)
        + (SELECT count(*) FROM inbox WHERE source = 'adyen' AND processed_at IS NULL
           AND outcome IS DISTINCT FROM 'unmatched'))::text AS flag,
       NULL::text AS code
UNION ALL
{FLAGS_OF}
"""  # noqa: S608
Flags = dict[str, tuple[set[tuple[str, str]], set[tuple[str, str]]]]
# Where a worker may die: the product's named points, and inside recording an outcome.
DEATH_POINTS = (*crashpoints.POINTS, "in_record", "in_apply_success")

# Which sequence of issue 19 a violation code belongs to (for the report).
SEQUENCE_OF = {
    "captured_units": 1,
    "refunded_units": 2,
    "captures_not_total": 4,
    "quantities_reversed_missing": 5,
    "applied_twice": 6,
    "identity_change_stored": 9,
    "notification_mismatch_applied": 9,
    "stuck_in_flight": 10,
    "stuck_awaiting_notification": 10,
    "task_poisoned": 11,
    "refund_not_at_captured_price": 14,
    "shop_events_out_of_order": 13,
    "lease_not_swept": 10,
}


class WorkerDeath(BaseException):
    """The worker process died here (SIGKILL, OOM): nothing of ours may catch it."""


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
    kinds: set[str] = field(default_factory=set)  # event kinds and outcomes this history hit

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
    currency: str
    authorized: int
    lines: list[dict[str, Any]]
    captured: int = 0
    refunded: int = 0
    status: str = "AUTHORIZED"
    allow_increase: bool = True
    effects: list[Effect] = field(default_factory=list)
    captures: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    # (capture | refund, amount, lines) as booked, ours and the merchant's by hand.
    ledger: list[tuple[str, int, list[Booked]]] = field(default_factory=list)
    # Indexes in `ledger` of the merchant's Customer Area captures and refunds: Adyen
    # notifies only their amount, so the product learns their lines from the shop only.
    unlisted: set[int] = field(default_factory=set)
    # Indexes in `ledger` of every capture and refund made by hand (not the service's).
    outside: set[int] = field(default_factory=set)
    charged_back: int = 0
    zero_updates: int = 0
    refused: set[int] = field(default_factory=set)
    before_last: dict[str, Any] | None = None  # what a lagging read still shows
    types: dict[str, str] = field(default_factory=dict)  # line reference -> type
    account: str = ""  # the merchant's account the payment was made in
    # A write's answer was lost: the next read may come from a replica behind it.
    answer_lost: bool = False
    last_read: int = -1  # the model's call number of the last answered read
    # Klarna OM `expires_at`: the order can be captured only until then (None: not
    # modelled for this history); `extended`: extensions Klarna granted.
    expires_at: datetime | None = None
    extended: int = 0
    extend_refused: bool = False  # Klarna will not extend this one (403 NOT_ALLOWED)


def _can_expire(psp: PspOrder) -> bool:
    """Whether the PSP has an authorization left that can lapse. One whose every
    authorized cent is captured (lowered to the captures, or a capture made before the
    service's first read that took all of it) has nothing left to expire: Klarna calls
    such an order fully captured (a release is refused "Order is fully captured"), and
    Adyen has no remaining amount to notify an EXPIRE of."""
    return psp.status in ("AUTHORIZED", "PART_CAPTURED") and psp.authorized > psp.captured


@dataclass
class Faults:
    """How often each thing goes wrong, per request (0 everywhere once settling)."""

    write_fail: float = 0.10  # 5xx/429/409 before anything was applied
    write_lost: float = 0.08  # applied, then the answer is lost (timeout, 5xx, 409)
    connect_error: float = 0.03  # refused before anything was sent
    read_fail: float = 0.08
    read_lag: float = 0.10  # Klarna: a read that does not show the last change yet
    interleave: float = 0.06  # another task runs while this PSP call is slow
    early_notification: float = 0.25  # Adyen notifies before the sender records
    failed_then_ok: float = 0.12  # Adyen: CAPTURE success=false first
    mismatched_twin: float = 0.08  # Adyen: a twin notification with other figures
    death: float = 0.025  # per death point reached
    # A resend of a request the PSP already answered meets its rate limit (429), which
    # is checked before its idempotency layer replays the first answer.
    rate_limited: float = 0.3

    @classmethod
    def none(cls) -> Faults:
        return cls(*[0] * len(fields(cls)))


def _book_klarna(lines: list[dict[str, Any]], types: dict[str, str]) -> list[Booked]:
    return [
        Booked(
            str(line["reference"]),
            str(line.get("type") or types.get(str(line["reference"]), "physical")),
            int(line["quantity"]),
            int(line["total_amount"]),
            int(line["total_tax_amount"]),
            int(line["tax_rate"]),
        )
        for line in lines
    ]


def _book_per_unit(
    items: list[tuple[str, int, int, int, int]], types: dict[str, str]
) -> list[Booked]:
    """(reference, quantity, unit amount incl. tax, unit tax, rate) groups → whole lines."""
    merged: dict[tuple[str, bool], list[int]] = {}
    for reference, quantity, unit, tax, rate in items:
        # Adyen items carry no type: one below nothing with a goods line's id is a
        # price cut given back for that line's captured units (README "Ledger model"),
        # a discount, never goods.
        cut = unit < 0 and types.get(reference, "discount") not in REDUCING | SHARED_UP
        entry = merged.setdefault((reference, cut), [0, 0, 0, rate])
        entry[0] += quantity
        entry[1] += quantity * unit
        entry[2] += quantity * tax
    # A reference the shop never named is the discount line the service adds for an
    # unitemised discount (contract §4 `amount`). Its share is rounded cumulatively, so
    # after the shop lowers that discount a later capture may carry a positive share back:
    # it is still the discount line, never goods.
    return [
        Booked(ref, "discount" if cut else types.get(ref, "discount"), q, total, tax, rate)
        for (ref, cut), (q, total, tax, rate) in merged.items()
    ]


def _settled(ops: list[Any]) -> list[tuple[int, str, list[Booked]]]:
    """(seq, "settle", lines) of the goods the service settled against a price cut it
    already held (README "Ledger model"): a capture of 0, recorded, never sent."""
    return [
        (int(op.seq), "settle", _book_klarna(list(op.lines), {}))
        for op in ops
        if op.kind == "capture" and op.status == "succeeded" and not op.external and not op.amount
    ]


def _with_settled(psp: PspOrder, ops: list[Any]) -> list[tuple[str, int, list[Booked]]]:
    """The PSP's ledger with the service's settlements in place: each after as many of
    the service's own captures and refunds as came before it (the PSP books those in
    the order the service made them, one in flight at a time), and after as many of
    the captures and refunds made by hand as the service had recorded before it (it
    settles against the money it knows the PSP holds; seed 87054)."""
    settled = _settled(ops)
    if not settled:
        return psp.ledger
    moved = [
        op
        for op in ops
        if op.kind in ("capture", "refund") and op.status == "succeeded" and op.amount
    ]
    ours = sorted(int(op.seq) for op in moved if not op.external)
    # (A chargeback is recorded as a refund made outside but is no booking of the
    # ledger: the model keeps it apart, `charged_back`.)
    theirs = sorted(
        int(op.seq)
        for op in moved
        if op.external and "CHARGEBACK" not in str(getattr(op, "psp_reference", "") or "")
    )
    result: list[tuple[str, int, list[Booked]]] = []
    made = by_hand = 0
    pending = list(settled)
    for index, entry in enumerate(psp.ledger):
        while (
            pending
            and sum(1 for seq in ours if seq < pending[0][0]) <= made
            and sum(1 for seq in theirs if seq < pending[0][0]) <= by_hand
        ):
            result.append(("settle", 0, pending.pop(0)[2]))
        result.append(entry)
        if index in psp.outside:
            by_hand += 1
        else:
            made += 1
    result.extend(("settle", 0, lines) for _, _, lines in pending)
    return result


class PspModel:
    """Klarna OM, Adyen Checkout and classic Pal in memory, answering over HTTP."""

    def __init__(self, rng: random.Random, sim: Simulation) -> None:
        self.rng = rng
        self.sim = sim
        self.faults = Faults()
        self.orders: dict[str, PspOrder] = {}
        self.replies: dict[str, tuple[str, httpx.Response]] = {}
        self.first_request: dict[str, str] = {}
        self.notifications: list[dict[str, Any]] = []
        self.violations: list[Violation] = []
        self.fault_count = 0
        self.depth = 0
        self.psp_refs = 0
        self.shop_events: list[tuple[str, str, str]] = []  # (order id, type, webhook-id)
        # Our operation id -> a failure notification Adyen sends again at its resend.
        self.late_failures: dict[str, dict[str, Any]] = {}
        self.calls = 0  # Klarna calls so far; a key -> the call that applied it
        # A history's planned trouble: PSP order id -> faults that happen at their next
        # chance, faults on or off (each is counted and noted as a fault).
        self.forced: dict[str, set[str]] = {}
        self.held: dict[str, dict[str, Any]] = {}  # key -> its notification, until resent
        self.applied_at: dict[str, int] = {}

    def _fault(self, probability: float, name: str) -> bool:
        if probability and self.rng.random() < probability:
            self.fault_count += 1
            self.sim.note(f"fault {name}")
            return True
        return False

    def _forced(self, order: PspOrder, what: str) -> bool:
        planned = self.forced.get(order.psp_id, set())
        if what not in planned:
            return False
        planned.discard(what)
        return self._fault(1, f"planned_{what}")

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "shop.sim":
            return self._shop(request)
        if self.depth == 0 and self._fault(self.faults.interleave, "interleaved_task"):
            # This call is slow: another worker runs a task meanwhile.
            self.depth += 1
            try:
                self.sim.work_one()
            finally:
                self.depth -= 1
        refused = self._cross_account(request)
        if refused is not None:
            return refused
        if request.url.host.startswith("klarna"):
            response = self._klarna(request)
        else:
            response = self._adyen(request)
        if self.depth == 0 and request.method != "GET":
            if self.sim.more.slow_call(request):
                return response
            self.sim.gaps.slow_answer(request)
        return response

    def _cross_account(self, request: httpx.Request) -> httpx.Response | None:
        """Every request goes out with the order's own account: Klarna's host and Basic
        credentials, Adyen's API key and merchantAccount. Anything else is answered 401,
        as the real PSPs do, and is a `cross_account` violation."""
        body = json.loads(request.content) if request.content else {}
        parts = request.url.path.split("/")
        if request.url.host.startswith("klarna"):
            order = self.orders.get(parts[4]) if len(parts) > 4 else None
            if order is None:
                return None
            host, _, username, password, _ = KLARNA_ACCOUNTS[order.account]
            basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            sent = (request.url.host, request.headers.get("Authorization"))
            ok = sent == (host, f"Basic {basic}")
        else:
            psp_id = body.get("originalReference") if "/pal/" in request.url.path else None
            order = self.orders.get(str(psp_id or (parts[3] if len(parts) > 3 else "")))
            if order is None:
                return None
            sent = (request.headers.get("X-API-Key"), body.get("merchantAccount"))
            ok = sent == (ADYEN_KEYS[order.account], order.account)
        if ok:
            return None
        self.violations.append(
            Violation(
                "cross_account",
                f"{order.psp_id} of account {order.account} sent to {request.url.host} "
                f"with another account's credentials",
            )
        )
        return httpx.Response(401, json={"error_code": "BAD_CREDENTIALS"})

    # -- the shop's callback endpoint ------------------------------------------------

    def _shop(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        refused = self.sim.gaps.shop_answer(request, body)
        if refused is not None:
            return refused
        if self._fault(self.faults.write_fail, "shop_callback_500"):
            return httpx.Response(500)
        if self.depth == 0 and self._fault(self.faults.interleave, "second_deliverer"):
            # A second deliverer runs while this one's POST is in flight.
            self.depth += 1
            try:
                self.sim.deliver_callbacks(str(body["order_id"]))
            finally:
                self.depth -= 1
        self.shop_events.append(
            (str(body["order_id"]), str(body["type"]), request.headers.get("webhook-id", ""))
        )
        return httpx.Response(204)

    # -- Klarna -----------------------------------------------------------------

    def _klarna(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")  # '', ordermanagement, v1, orders, id, ...
        order = self.orders.get(parts[4])
        if order is None:
            return httpx.Response(404, json={"error_code": "NOT_FOUND"})
        self.calls += 1
        if request.method == "GET":
            return self._klarna_read(order)
        key = request.headers.get("Klarna-Idempotency-Key", "")
        body = json.loads(request.content) if request.content else {}
        self.sim.more.one_in_flight(order, key)
        if key in self.applied_at and order.last_read < self.applied_at[key]:
            # Contract §5: an unknown outcome is resolved by asking the PSP. A request
            # that took effect is sent again only after a read of the order since.
            found = Violation("resent_without_check_read", f"key {key[:8]} sent again unread")
            if found not in self.violations:
                self.violations.append(found)
        if key in self.replies and (
            self._forced(order, "resend_429")
            or self._fault(self.faults.rate_limited, "klarna_resend_429")
        ):
            return httpx.Response(
                429, json={"error_code": "TOO_MANY_REQUESTS"}, headers=self._retry_after()
            )
        replay = self._replay(key, request)
        if replay is not None:
            return replay
        if self._fault(self.faults.connect_error, "klarna_connect_error"):
            raise httpx.ConnectError("simulated: connection refused", request=request)
        if self.rng.random() < self.faults.write_fail:
            status = self.rng.choice([500, 503, 429, 409])
            self._fault(1, f"klarna_write_{status}")
            return httpx.Response(
                status, json={"error_code": f"SIM_{status}"}, headers=self._retry_after()
            )
        action = parts[5] if len(parts) > 5 else ""
        before = self._klarna_body(order)
        response = self._klarna_apply(order, action, body, key)
        if response.status_code < 300:
            order.before_last = before
            self.applied_at[key] = self.calls
        self.replies[key] = (_request_digest(request), response)
        if self._forced(order, "answer_lost") or self.rng.random() < self.faults.write_lost:
            order.answer_lost = True
            roll = self.rng.random()
            if roll < 0.4:
                self._fault(1, "klarna_answer_lost")
                raise httpx.ReadTimeout("simulated: the answer was lost", request=request)
            if roll < 0.7:
                self._fault(1, "klarna_409_applied_later")
                return httpx.Response(409, json={"error_code": "CONFLICT"})
            self._fault(1, "klarna_502_after_apply")
            return httpx.Response(502, json={"error_code": "SIM_502"})
        return response

    def _retry_after(self) -> dict[str, str]:
        roll = self.rng.random()
        if roll < 0.1:
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
            if not open_ or amount < order.captured or order.captured >= order.authorized:
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
            ref = str(body.get("reference"))
            capture_id = self._klarna_book(
                order, "capture", amount, body.get("order_lines") or [], ref
            )
            self._once(order, "capture", ref)
            order.effects.append(Effect("capture", amount, key, ref))
            return httpx.Response(201, headers={"Capture-Id": capture_id})
        if action == "refunds":
            amount = int(body["refunded_amount"])
            if amount > order.captured - order.refunded - order.charged_back:
                return refuse("REFUND_NOT_ALLOWED")
            ref = str(body.get("reference"))
            refund_id = self._klarna_book(
                order, "refund", amount, body.get("order_lines") or [], ref
            )
            self._once(order, "refund", ref)
            order.effects.append(Effect("refund", amount, key, ref))
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
            # Klarna OM: 403 "not allowed ... The order being expired or cancelled are
            # among the possible causes".
            if not open_:
                return refuse("NOT_ALLOWED")
            if order.extend_refused:
                self.sim.kind("klarna_extension_refused")
                return refuse("NOT_ALLOWED")
            if order.expires_at is not None:
                self.sim.kind("klarna_authorization_extended")
                order.expires_at += KLARNA_EXTENSION
                order.extended += 1
            order.effects.append(Effect("extend_authorization", 0, key, None))
            return httpx.Response(204)
        return httpx.Response(404, json={"error_code": "NOT_FOUND"})

    def _klarna_book(
        self, order: PspOrder, what: str, amount: int, lines: list[dict[str, Any]], ref: str
    ) -> str:
        """A capture or refund in Klarna's order: its figures, its list and the ledger."""
        if what == "capture":
            order.captured += amount
            order.status = "CAPTURED" if order.captured >= order.authorized else "PART_CAPTURED"
        else:
            order.refunded += amount
        order.ledger.append((what, amount, _book_klarna(lines, order.types)))
        listed = order.captures if what == "capture" else order.refunds
        booking_id = f"{what[:3]}-{len(listed) + 1}"
        listed.append(
            {
                f"{what}_id": booking_id,
                "reference": ref,
                ("captured_amount" if what == "capture" else "refunded_amount"): amount,
                "order_lines": lines,
            }
        )
        return booking_id

    def _once(self, order: PspOrder, kind: str, reference: str) -> None:
        if any(e.kind == kind and e.reference == reference for e in order.effects):
            self.violations.append(
                Violation("applied_twice", f"{kind} of operation {reference[:8]} applied twice")
            )

    def _klarna_body(self, order: PspOrder) -> dict[str, Any]:
        return {
            "order_id": order.psp_id,
            "status": order.status,
            "purchase_currency": order.currency,
            "order_amount": order.authorized,
            "original_order_amount": order.authorized,
            "captured_amount": order.captured,
            "refunded_amount": order.refunded,
            "remaining_authorized_amount": max(order.authorized - order.captured, 0),
            "purchase_country": "DE",
            "initial_payment_method": {"type": "INVOICE"},
            **(
                {"expires_at": order.expires_at.isoformat().replace("+00:00", "Z")}
                if order.expires_at is not None
                else {}
            ),
            "order_lines": list(order.lines),
            "captures": list(order.captures),
            "refunds": list(order.refunds),
        }

    def _klarna_read(self, order: PspOrder) -> httpx.Response:
        refused = self.sim.gaps.klarna_read_refused(order)
        if refused is not None:
            return refused
        if self.rng.random() < self.faults.read_fail:
            status = self.rng.choice([500, 503, 429])
            self._fault(1, f"klarna_read_{status}")
            return httpx.Response(status, json={"error_code": f"SIM_{status}"})
        lag, name = self.faults.read_lag, "klarna_read_lag"
        if order.answer_lost:
            # The check-read after a lost answer (a fault earlier, so also once faults
            # are off): only the idempotency key keeps a resend from applying a second
            # time when this read lags the write.
            lag, name = LAG_AFTER_LOST, "klarna_read_lag_after_lost_answer"
        order.answer_lost = False
        order.last_read = self.calls
        if order.before_last is not None and self._fault(lag, name):
            return httpx.Response(200, json=order.before_last)
        return httpx.Response(200, json=self._klarna_body(order))

    # -- Adyen ------------------------------------------------------------------

    def _adyen(self, request: httpx.Request) -> httpx.Response:
        classic = "/pal/" in request.url.path
        body = json.loads(request.content)
        if classic:
            action = request.url.path.rsplit("/", 1)[1]  # capture | refund | cancel
            psp_id = str(body.get("originalReference"))
        else:
            parts = request.url.path.split("/")  # '', v71, payments, ref, action
            psp_id, action = parts[3], parts[4]
        order = self.orders.get(psp_id)
        if order is None:
            return httpx.Response(422, json={"errorCode": "167", "message": "unknown payment"})
        key = request.headers.get("Idempotency-Key", "")
        self.sim.more.one_in_flight(order, key)
        if key in self.held:
            # The notification of a request whose answer was lost comes after its resend.
            self.notifications.append(self.held.pop(key))
        if key in self.replies and (
            self._forced(order, "resend_429")
            or self._fault(self.faults.rate_limited, "adyen_resend_429")
        ):
            return httpx.Response(429, json={"errorCode": "SIM429", "message": "rate limited"})
        replay = self._replay(key, request)
        if replay is not None:
            return replay
        if self._fault(self.faults.connect_error, "adyen_connect_error"):
            raise httpx.ConnectError("simulated: connection refused", request=request)
        if self.rng.random() < self.faults.write_fail:
            status = self.rng.choice([500, 503, 429])
            self._fault(1, f"adyen_write_{status}")
            return httpx.Response(status, json={"errorCode": f"SIM{status}", "message": "sim"})
        self.psp_refs += 1
        psp_ref = f"M{self.sim.seed}x{self.psp_refs}"
        if classic:
            self.sim.kind("adyen_classic")
            response = httpx.Response(
                200, json={"pspReference": psp_ref, "response": f"[{action}-received]"}
            )
            amount = int((body.get("modificationAmount") or {}).get("value") or 0)
            action = {"capture": "captures", "refund": "refunds", "cancel": "cancels"}[action]
            lines = _openinvoice(body.get("additionalData") or {}, order.types)
        else:
            response = httpx.Response(
                201,
                json={
                    "status": "received",
                    "pspReference": psp_ref,
                    "reference": body["reference"],
                },
            )
            amount = int((body.get("amount") or {}).get("value") or 0)
            lines = _book_per_unit(
                [
                    (
                        str(item["id"]),
                        int(item["quantity"]),
                        int(item["amountIncludingTax"]),
                        int(item["taxAmount"]),
                        int(item["taxPercentage"]),
                    )
                    for item in body.get("lineItems") or []
                ],
                order.types,
            )
        self.replies[key] = (_request_digest(request), response)
        late = self.late_failures.pop(str(body.get("reference")), None)
        self._adyen_decide(order, action, amount, lines, body, psp_ref, key)
        if late is not None:
            # The failed generation's second notification, while its resend is out.
            self.sim.kind("adyen_failed_generation_notified_again")
            self.sim.deliver(late)
        if self._forced(order, "answer_lost"):
            self.held[key] = self.notifications.pop()
            raise httpx.ReadTimeout("simulated: the answer was lost", request=request)
        if self.notifications and self._fault(self.faults.early_notification, "early_notification"):
            self.sim.deliver(self.notifications.pop())
        if self._fault(self.faults.write_lost, "adyen_answer_lost"):
            raise httpx.ReadTimeout("simulated: the answer was lost", request=request)
        return response

    def _adyen_decide(
        self,
        order: PspOrder,
        action: str,
        amount: int,
        lines: list[Booked],
        body: dict[str, Any],
        psp_ref: str,
        key: str,
    ) -> None:
        """Applies the modification (or not) and queues its notification."""
        open_ = order.status in ("AUTHORIZED", "PART_CAPTURED")
        event, ok, kind = "", False, action
        failed_first = False
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
            if ok and (
                self._forced(order, "capture_fails")
                or self._fault(self.faults.failed_then_ok, "capture_failed_first")
            ):
                ok, failed_first = False, True
            if ok:
                order.captured += amount
                order.status = "CAPTURED" if order.captured >= order.authorized else "PART_CAPTURED"
                order.ledger.append(("capture", amount, lines))
        elif action == "refunds":
            event, kind = "REFUND", "refund"
            ok = amount <= order.captured - order.refunded - order.charged_back
            if ok:
                order.refunded += amount
                order.ledger.append(("refund", amount, lines))
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
        item = _adyen_item(order, event, ok, amount, psp_ref, str(body["reference"]))
        if not ok:
            item["reason"] = "refused"
        again = failed_first and self._forced(order, "failure_again")
        if failed_first and not again and self.rng.random() < 0.3:
            item["eventCode"] = "CAPTURE_FAILED"
            item["success"] = "true"
            self.sim.kind("adyen_capture_failed")
        elif again or (failed_first and self.rng.random() < 0.5):
            # Adyen reports the failed capture a second time (CAPTURE_FAILED), late:
            # it arrives once the operation was sent again under its next key.
            self.late_failures[str(body["reference"])] = {
                **item,
                "eventCode": "CAPTURE_FAILED",
                "success": "true",
            }
        if ok:
            self.sim.gaps.twin_first(order, item, amount)
            self.sim.gaps.expire_in_flight(order, kind)
        if ok and self._fault(self.faults.mismatched_twin, "mismatched_twin"):
            twin = dict(item)
            self.psp_refs += 1
            twin["pspReference"] = f"X{self.sim.seed}x{self.psp_refs}"
            what = self.rng.choice(["amount", "currency", "merchant"])
            self.sim.kind(f"notification_wrong_{what}")
            self.sim.orders_by_psp[order.psp_id].oracle.foreign_notification()
            if what == "amount":
                twin["amount"] = {"currency": order.currency, "value": amount + 1}
            elif what == "currency":
                twin["amount"] = {"currency": "USD", "value": amount}
            else:
                twin["merchantAccountCode"] = "SomeoneElse"
            self.notifications.append(twin)
        if not self.sim.gaps.notified_late(order, item, kind, ok):
            self.notifications.append(item)
        if failed_first:
            # Adyen's own retry went through after all: success follows the failure.
            pass

    # -- the merchant by hand, and the payment's own life ---------------------------

    def external(self, order: PspOrder, what: str, units: list[tuple[str, int, int, int]]) -> int:
        """A capture, refund or cancel made in the Merchant Portal / Customer Area, an
        expiry or a chargeback. `units`: (reference, quantity, unit amount, rate)."""
        lines: list[dict[str, Any]] = [
            {
                "type": order.types.get(ref, "physical"),
                "reference": ref,
                "name": ref,
                "quantity": q,
                "unit_price": unit,
                "tax_rate": rate,
                "total_amount": q * unit,
                "total_discount_amount": 0,
                "total_tax_amount": tax_in(q * unit, rate),
            }
            for ref, q, unit, rate in units
        ]
        amount = sum(int(line["total_amount"]) for line in lines)
        self.psp_refs += 1
        psp_ref = f"E{self.sim.seed}x{self.psp_refs}"
        if what in ("capture", "refund"):
            # Booked like any other (Klarna lists it in its order); Adyen notifies it.
            self._klarna_book(order, what, amount, lines, f"portal-{psp_ref}")
            order.outside.add(len(order.ledger) - 1)
            self.sim.gaps.unlisted_portal_refund(order, what)
            if order.provider == "adyen":
                order.unlisted.add(len(order.ledger) - 1)
                event = "CAPTURE" if what == "capture" else "REFUND"
                self.notifications.append(_adyen_item(order, event, True, amount, psp_ref, ""))
                self.sim.more.portal_twin(order, what)
        elif what == "cancel":
            order.status = "CANCELLED"
            if order.provider == "adyen":
                self.notifications.append(_adyen_item(order, "CANCELLATION", True, 0, psp_ref, ""))
        elif what == "expire":
            order.status = "EXPIRED"
            if order.provider == "adyen":
                remaining = order.authorized - order.captured
                item = _adyen_item(order, "EXPIRE", True, remaining, order.psp_id, "")
                item.pop("originalReference")
                self.notifications.append(item)
        elif what == "chargeback":
            amount = order.captured - order.refunded - order.charged_back
            order.charged_back += amount
            self.notifications.append(_adyen_item(order, "CHARGEBACK", True, amount, psp_ref, ""))
        order.before_last = None
        return amount


def _adyen_item(
    order: PspOrder, event: str, ok: bool, amount: int, psp_ref: str, reference: str
) -> dict[str, Any]:
    return {
        "pspReference": psp_ref,
        "originalReference": order.psp_id,
        "merchantReference": reference,
        "merchantAccountCode": order.account or MERCHANT,
        "eventCode": event,
        "success": "true" if ok else "false",
        "amount": {"currency": order.currency, "value": amount},
        "reason": "",
    }


# How the service describes a price cut it refunds whole (README "Ledger model"): the
# merchant's Customer Area shows Adyen classic's lines by description alone, and this one
# reads as money given back on the goods named after it, not as one of them returned.
PRICE_ADJUSTMENT = "Price adjustment: "


def _openinvoice(data: dict[str, Any], types: dict[str, str]) -> list[Booked]:
    items = []
    for n in range(1, int(data.get("openinvoicedata.numberOfLines", 0)) + 1):
        prefix = f"openinvoicedata.line{n}."
        net = int(data[prefix + "itemAmount"])
        tax = int(data[prefix + "itemVatAmount"])
        description = str(data[prefix + "description"])
        if description.startswith(PRICE_ADJUSTMENT):
            # Booked as the cut refund a Klarna order lists by its reference, never as
            # a unit of those goods coming back.
            description = description.removeprefix(PRICE_ADJUSTMENT) + CUT_REFUND
        items.append(
            (
                description,  # the simulated shop names a line by its id
                int(data[prefix + "numberOfItems"]),
                net + tax,
                tax,
                int(data[prefix + "itemVatPercentage"]),
            )
        )
    return _book_per_unit(items, types)


def _request_digest(request: httpx.Request) -> str:
    return hashlib.sha256(
        request.method.encode() + request.url.path.encode() + request.content
    ).hexdigest()


# --- the shop model -----------------------------------------------------------------------

GOODS_TYPES = ("physical", "physical", "physical", "digital")
# The shop's edits, "ship" weighted up (most histories should capture something).
MOVES = (
    *("add", "add_other", "remove", "swap", "price", "tax", "discount"),
    *("ship", "ship", "ship", "ship_fee", "return", "quantity_up", "quantity_down"),
    *("cancel", "empty", "reverse", "currency", "payment", "unitemised", "account"),
)
# The moves that change what the first snapshot fixes (§4: answered 422).
IDENTITY_MOVES = frozenset({"currency", "payment", "account"})
OTHER_TYPES = ("shipping_fee", "surcharge", "sales_tax", "discount", "gift_card", "store_credit")


@dataclass
class Shop:
    """One order's basket as the shop edits it; every edit is a new version."""

    rng: random.Random
    order_id: str
    provider: str
    psp_id: str
    lines: list[dict[str, Any]] = field(default_factory=list)
    status: str = "open"
    version: int = 0
    next_line: int = 0
    parcels: int = 0
    unitemised: int = 0
    types: dict[str, str] = field(default_factory=dict)
    account: str = ""  # the merchant's account (Klarna: by the country)
    country: str = "DE"

    def new_line(self, line_type: str | None = None) -> dict[str, Any]:
        self.next_line += 1
        line_type = line_type or self.rng.choice(GOODS_TYPES)
        line_id = f"l{self.next_line}"
        self.types[line_id] = line_type
        line: dict[str, Any] = {
            "id": line_id,
            "name": line_id,  # Adyen classic lines carry only a description: the id
            "type": line_type,
            "quantity": self.rng.randint(1, 3),
            "unit_price": self.rng.choice([0, 99, 450, 1200, 2599, self.rng.randint(1, 5000)]),
            "tax_rate": self.rng.choice([0, 700, 2000, 2500]),
            "shipped_quantity": 0,
            "returned_quantity": 0,
        }
        if self.rng.random() < 0.3:
            # What Klarna shows the customer: carried on every request.
            line["product_url"] = f"https://shop.example/p/{line_id}"
            line["image_url"] = f"https://shop.example/i/{line_id}.jpg"
            line["quantity_unit"] = "pcs"
        if line_type in ("shipping_fee", "surcharge", "sales_tax"):
            line["quantity"] = 1
            line["unit_price"] = self.rng.choice([495, 150, self.rng.randint(1, 900)])
        elif line_type in REDUCING:
            line["quantity"] = 1
            line["unit_price"] = -self.rng.randint(1, 900)
            line["tax_rate"] = self.rng.choice([0, 2000])
        return line

    def start(self) -> dict[str, Any]:
        self.lines = [self.new_line() for _ in range(self.rng.randint(1, 3))]
        self.lines[0]["unit_price"] = max(self.lines[0]["unit_price"], 100)  # > 0 to authorize
        for _ in range(self.rng.choice([0, 0, 1, 2])):
            self.lines.append(self.new_line(self.rng.choice(OTHER_TYPES)))
        if self.rng.random() < 0.1:
            self.unitemised = self.rng.randint(1, 300)
        if _total(self.snapshot()) <= 0:
            # Something to authorize: nothing that takes the total to 0 at checkout.
            self.lines = [line for line in self.lines if line["type"] not in REDUCING]
            self.unitemised = 0
        self.version = 0
        return self.snapshot()

    def _fit(self) -> list[dict[str, Any]]:
        """The lines with reducing lines cut to what the rest is worth (≥ 0 in all)."""
        positive = sum(
            line["quantity"] * line["unit_price"]
            for line in self.lines
            if line["type"] not in REDUCING
        )
        out = []
        for line in self.lines:
            line = dict(line)
            if line["type"] in REDUCING:
                take = min(-line["unit_price"], positive)
                positive -= take
                line["unit_price"] = -take
            out.append(line)
        return out

    def snapshot(self, **change: Any) -> dict[str, Any]:
        self.version += 1
        lines = self._fit()
        payment: dict[str, Any] = (
            {"provider": "klarna", "klarna_order_id": self.psp_id}
            if self.provider == "klarna"
            else {
                "provider": "adyen",
                "psp_reference": self.psp_id,
                "merchant_account": self.account or MERCHANT,
            }
        )
        shipping = (
            {"carrier": "DHL", "tracking_number": f"T{self.parcels}"} if self.parcels else None
        )
        snap: dict[str, Any] = {
            "id": self.order_id,
            "shipping": shipping,
            "version": self.version,
            "currency": "EUR",
            "country": self.country,
            "status": self.status,
            "payment": payment,
            "lines": lines,
        }
        total = sum(line["quantity"] * line["unit_price"] for line in lines)
        if self.unitemised and total > self.unitemised:
            snap["amount"] = total - self.unitemised
        snap.update(change)
        return snap

    def switch_account(self) -> dict[str, Any]:
        """A snapshot naming the merchant's other account for the same payment: refused
        (422) like a payment change, and the shop goes on with its own account."""
        changed = dict(self.snapshot()["payment"])
        self.version -= 1
        if self.provider == "klarna":
            changed["klarna_account"] = "us" if self.account == "eu" else "eu"
        else:
            changed["merchant_account"] = "SimUS" if self.account == "SimEU" else "SimEU"
        return self.snapshot(payment=changed)

    def goods(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["type"] not in REDUCING | SHARED_UP]

    def edit(self, captured: Callable[[str], int]) -> tuple[str, str, dict[str, Any]] | None:
        """One random edit; (move, event type, snapshot), or None. `captured(line id)`:
        units the PSP holds for a line at the last settle point (for reversals)."""
        move = self.next_move()
        return None if move is None else self.apply(move, captured)

    def next_move(self) -> str | None:
        rng = self.rng
        if self.status == "cancelled":
            return "reopen" if rng.random() < 0.3 else None
        return str(rng.choice(MOVES))

    def apply(
        self, move: str, captured: Callable[[str], int]
    ) -> tuple[str, str, dict[str, Any]] | None:
        rng = self.rng
        if move == "reopen":
            self.status = "open"
            return "reopen", "order.updated", self.snapshot()
        # Nothing the PSP holds units of is taken away (a unit captured outside, say).
        unshipped = [
            line
            for line in self.lines
            if line.get("shipped_quantity", 0) == 0 and captured(line["id"]) == 0
        ]
        goods = self.goods()
        if move == "add":
            self.lines.append(self.new_line())
        elif move == "add_other":
            self.lines.append(self.new_line(rng.choice(OTHER_TYPES)))
        elif move == "remove" and unshipped:
            self.lines.remove(rng.choice(unshipped))
        elif move == "swap" and unshipped:
            old = rng.choice(unshipped)
            new = {
                **self.new_line(old["type"]),
                "quantity": old["quantity"],
                "unit_price": old["unit_price"],
            }
            self.lines[self.lines.index(old)] = new
        elif move in ("price", "tax") and self.lines:
            line = rng.choice(self.lines)
            if move == "tax" and line["type"] not in REDUCING:
                line["tax_rate"] = rng.choice([0, 700, 2000, 2500])
            elif line["type"] in REDUCING:
                line["unit_price"] = min(-1, line["unit_price"] + rng.choice([-300, -50, 50, 300]))
            else:
                line["unit_price"] = max(0, line["unit_price"] + rng.choice([-300, -50, 50, 300]))
        elif move == "discount":
            reducing = [line for line in self.lines if line["type"] in REDUCING]
            if reducing:
                line = rng.choice(reducing)
                line["unit_price"] = -rng.choice([1, -line["unit_price"] // 2, rng.randint(1, 900)])
            else:
                self.lines.append(self.new_line("discount"))
        elif move == "ship" and goods:
            line = rng.choice([g for g in goods if g["type"] in ("physical", "digital")] or goods)
            line["shipped_quantity"] = rng.randint(line["shipped_quantity"], line["quantity"])
            self.parcels += 1
            return move, "order.shipped", self.snapshot()
        elif move == "ship_fee":
            fees = [g for g in goods if g["type"] in ("shipping_fee", "surcharge")]
            if not fees:
                return None
            fees[0]["shipped_quantity"] = fees[0]["quantity"]
            return move, "order.shipped", self.snapshot()
        elif move == "return" and goods:
            line = rng.choice(goods)
            line["returned_quantity"] = rng.randint(
                line["returned_quantity"], line["shipped_quantity"]
            )
            return move, "order.returned", self.snapshot()
        elif move == "quantity_up" and goods:
            line = rng.choice(goods)
            if line["type"] in ("physical", "digital"):
                line["quantity"] += rng.randint(1, 2)
        elif move == "quantity_down" and goods:
            line = rng.choice(goods)
            if line["type"] not in ("physical", "digital"):
                return None  # a fee is charged whole, with the first capture
            line["quantity"] = max(
                line["shipped_quantity"], captured(line["id"]), line["quantity"] - 1
            )
        elif move == "cancel":
            self.status = "cancelled"
            return move, "order.cancelled", self.snapshot()
        elif move == "empty" and not any(
            line["shipped_quantity"] or captured(line["id"]) for line in self.lines
        ):
            self.lines = []
        elif move == "reverse":
            held = [line for line in goods if captured(line["id"]) > 0]
            if not held:
                return None
            line = rng.choice(held)
            if line["returned_quantity"] and rng.random() < 0.5:
                line["returned_quantity"] = 0  # an exchange booked on the same line
            else:
                line["shipped_quantity"] = rng.randint(0, captured(line["id"]) - 1)
                line["returned_quantity"] = min(line["returned_quantity"], line["shipped_quantity"])
            return move, "order.updated", self.snapshot()
        elif move == "currency":
            return move, "order.updated", self.snapshot(currency="SEK")
        elif move == "payment":
            changed = dict(self.snapshot()["payment"])
            self.version -= 1
            if self.provider == "klarna":
                changed["klarna_order_id"] = self.psp_id + "x"
            else:
                changed["psp_reference"] = self.psp_id + "X"
            return move, "order.updated", self.snapshot(payment=changed)
        elif move == "unitemised":
            self.unitemised = rng.choice([0, rng.randint(1, 300)])
        elif move == "account":
            return move, "order.updated", self.switch_account()
        else:
            return None
        return move, "order.updated", self.snapshot()


# --- the kinds a history draws apart from its script ------------------------------------

# The share of histories that draw each kind. They come from a Random of the history's own
# seed kept apart from its main one: one seed still replays one history, and a history
# that draws none of them is the history its seed named before they existed.
GAPS = {
    "slow_call_past_lease": 0.10,  # a worker's own PSP call outlives its lease
    "twin_first": 0.15,  # a mismatched notification arrives before the real one
    "failure_after_success": 0.25,  # CAPTURE_FAILED / REFUNDED_REVERSED after success
    "notified_after_timeout": 0.10,  # Adyen silent past NOTIFICATION_TIMEOUT_SECONDS
    "ignored_event_code": 0.08,  # REPORT_AVAILABLE, OFFER_CLOSED
    "orphan_notification": 0.06,  # matches nothing for NOTIFICATION_ORPHAN_SECONDS
    "klarna_read_refused": 0.06,  # a Klarna read answered 403 / 404
    "portal_refund_unlisted": 0.5,  # a Klarna portal refund that lists no lines
    "purchase_currency_differs": 0.05,  # Klarna holds the payment in another currency
    "shop_refuses_one_event": 0.06,  # the shop answers one event 4xx for ever
    "shop_unreachable": 0.08,  # the shop's callback endpoint refuses connections
    "expire_before_capture": 0.30,  # Adyen's EXPIRE overtakes an in-flight CAPTURE
    "task_raises": 0.08,  # a reconcile task raises once, or every time (poisoned)
}
# Adyen's event codes the service does not act on (stored, then ignored).
IGNORED_CODES = ("REPORT_AVAILABLE", "OFFER_CLOSED")
# What Adyen reports when a modification that succeeded fails after all.
FAILED_AFTER = {"capture": "CAPTURE_FAILED", "refund": "REFUNDED_REVERSED"}


T = TypeVar("T")


class SimulatedBug(RuntimeError):
    """Raised inside a task on purpose (task_raises): what a bug would raise."""


class SimulatedOutage(psycopg.OperationalError):
    """Raised inside a task on purpose (task_raises): the database went away."""


def sweep_leases_and_run(sim: Simulation) -> None:
    """The lease sweep, now, in the middle of another task, and the tasks it hands out
    run at once (nested: the PSP model's interleaving faults stay off inside)."""
    sim.model.depth += 1
    try:
        before = len(sim.jobs)
        with sim.pool.connection() as conn:
            sweeper.sweep_leases(conn, sim._enqueue)
            conn.commit()
        taken, sim.jobs[before:] = sim.jobs[before:], []
        for job in taken:
            sim.run_task(job)
    finally:
        sim.model.depth -= 1


class Draws:
    """One history's draws of a family of kinds: its own random stream (named by
    `STREAM` and the seed, so adding a family leaves the others' histories as they
    were), the kinds it made on, and the references it invents (tagged `TAG`)."""

    KINDS: dict[str, float]
    STREAM: str
    TAG: str

    def __init__(self, sim: Simulation, seed: int) -> None:
        self.sim = sim
        self.seed = seed
        self.rng = random.Random(f"{self.STREAM}-{seed}")
        self.on = {name for name, share in self.KINDS.items() if self.rng.random() < share}
        self.refs = 0

    def take(self, name: str, chance: float = 1.0) -> bool:
        """Whether this history makes `name` now; `chance` < 1 keeps it for later too."""
        if name not in self.on or self.rng.random() >= chance:
            return False
        if chance >= 1.0:
            self.on.discard(name)
        self.sim.kind(f"gap_{name}")
        return True

    def _ref(self, letter: str) -> str:
        self.refs += 1
        return f"{letter}{self.seed}{self.TAG}{self.refs}"


class Gaps(Draws):
    """One history's draws of the kinds in GAPS, and the state each needs."""

    KINDS = GAPS
    STREAM = "gaps"
    TAG = "g"

    def __init__(self, sim: Simulation, seed: int) -> None:
        super().__init__(sim, seed)
        self.late: list[dict[str, Any]] = []  # notifications sent only after the timeout
        self.orphans: list[str] = []  # pspReferences of notifications that match nothing
        self.after: list[dict[str, Any]] = []  # failures, once their success was processed
        self.refused: dict[str, tuple[str, str]] = {}  # webhook-id -> (order id, type)
        self.unreachable = 2  # connections the shop's endpoint still refuses

    def settling(self) -> bool:
        """Faults are off at a settle point: a worker's lease and Adyen's silence are
        faults like the others there."""
        return self.sim.model.faults == Faults.none()

    def _fault(self, name: str) -> None:
        self.sim.model.fault_count += 1
        self.sim.note(f"fault {name}")

    # -- the worker ---------------------------------------------------------------

    def slow_answer(self, request: httpx.Request) -> None:
        """The PSP applied a write, but its answer comes after the sender's lease ran
        out (its heartbeat could not renew): the lease sweep finds the operation and
        another worker takes it over (check-read, or the key's replay) before the first
        one records; that one must find its lease gone and record nothing."""
        if self.settling() or not self.take("slow_call_past_lease"):
            return
        self._fault("lease_ran_out_in_call")
        sim = self.sim
        sim.own.execute(
            "UPDATE operations SET lease_until = now() - interval '1 second'"
            " WHERE order_id = ANY(%(ids)s) AND status = 'sent'",
            {"ids": list(sim.orders)},
        )
        sweep_leases_and_run(sim)

    def failing(self, run: Callable[[], T]) -> Callable[[], T]:
        """A reconcile task that raises before it does anything: once (the poison guard
        tries it again), or on each of its tries (it flags task_failed and parks the
        order until an operator's reconcile), or the database is away (the guard lets
        it through, the message is offered again)."""
        if self.settling() or not self.take("task_raises"):
            return run
        outage = self.rng.random() < 0.3
        left = [1 if outage else self.rng.choice([1, poison.MAX_TRIES])]
        self._fault("task_meets_database_away" if outage else f"task_raises_{left[0]}_times")

        def raising() -> T:
            if left[0]:
                left[0] -= 1
                if outage:
                    raise SimulatedOutage("simulated: the database went away")
                raise SimulatedBug("simulated: a bug in the task")
            return run()

        return raising

    # -- Adyen's notifications ------------------------------------------------------

    def expire_in_flight(self, order: PspOrder, kind: str) -> None:
        """The rest of the authorization expires while a part capture is in flight:
        Adyen's EXPIRE is notified before that capture's CAPTURE."""
        if kind != "capture" or order.status != "PART_CAPTURED" or self.settling():
            return
        if not self.take("expire_before_capture"):
            return
        self.sim.model.external(order, "expire", [])
        self.sim.orders_by_psp[order.psp_id].oracle.expire(capture_in_flight=True)

    def twin_first(self, order: PspOrder, item: dict[str, Any], amount: int) -> None:
        """A notification naming the payment (and, for a modification, our operation)
        whose currency, merchant account or amount is not its own, delivered before the
        real one: it must change nothing (an AUTHORISATION's amount is the PSP's to say,
        so its twin differs in currency or account only)."""
        if not self.take("twin_first", 0.5):
            return
        twin = dict(item)
        twin["pspReference"] = self._ref("T")
        choices = ["currency", "merchant"]
        if item["eventCode"] != "AUTHORISATION":
            choices.append("amount")
        what = self.rng.choice(choices)
        if what == "amount":
            twin["amount"] = {"currency": order.currency, "value": amount + 1}
        elif what == "currency":
            twin["amount"] = {"currency": "SEK", "value": amount}
        else:
            twin["merchantAccountCode"] = "SomeoneElse"
        self.sim.kind(f"notification_wrong_{what}_first_{item['eventCode'].lower()}")
        self.sim.orders_by_psp[order.psp_id].oracle.foreign_notification()
        self.sim.deliver(twin)

    def notified_late(self, order: PspOrder, item: dict[str, Any], kind: str, ok: bool) -> bool:
        """Adyen stays silent past NOTIFICATION_TIMEOUT_SECONDS (held until the next
        settle point, where the operation is aged past it first); or a modification that
        succeeded fails after all (its failure follows its success). True: held."""
        later = ok and kind in FAILED_AFTER and not self.settling()
        if later and self.take("failure_after_success"):
            self.after.append({**item, "eventCode": FAILED_AFTER[kind], "reason": "scheme"})
        if "answer_lost" in self.sim.model.forced.get(order.psp_id, set()):
            return False  # that fault holds the last notification itself
        if self.settling() or not self.take("notified_after_timeout", 0.5):
            return False
        self.late.append(item)
        return True

    def _failures_after_success(self) -> None:
        """Adyen reports a capture (refund) it confirmed as failed after all, once the
        service processed the success. The README's rule ("a late failure never undoes a
        success ... only flags needs_attention") leaves the money to a person: the
        model's ledger keeps it, so a build that lets the failure override the success
        shows as figures that differ from the PSP's."""
        sim = self.sim
        if not self.after:
            return
        sim._drain()
        rows = sim.own.execute(
            "SELECT psp_reference AS ref FROM operations WHERE status = 'succeeded'"
            " AND order_id = ANY(%(ids)s) AND psp_reference = ANY(%(refs)s)",
            {"ids": list(sim.orders), "refs": [str(x["pspReference"]) for x in self.after]},
        ).fetchall()
        done = {row["ref"] for row in rows}
        for failure in [x for x in self.after if x["pspReference"] in done]:
            self.after.remove(failure)
            order = sim.orders_by_psp[str(failure["originalReference"])]
            self._fault(f"{failure['eventCode'].lower()}_after_success")
            order.oracle.failed_after_success(str(failure["eventCode"]))
            sim.model.notifications.append(failure)

    def at_barrier(self) -> None:
        """At a settle point: what was held past the timeout comes (after the sweep saw
        the operation silent that long), an event code we ignore, a notification that
        matches nothing (aged past the orphan cut-off at the next settle point)."""
        sim = self.sim
        self._failures_after_success()
        if self.late:
            self._fault("notification_after_timeout")
            sim.own.execute(
                "UPDATE operations SET updated_at = updated_at - make_interval(secs => %(s)s)"
                " WHERE order_id = ANY(%(ids)s) AND status = 'awaiting_notification'",
                {"s": sim.settings.notification_timeout_seconds + 60, "ids": list(sim.orders)},
            )
            sim.sweep()
            sim.model.notifications += self.late
            self.late = []
        if self.orphans:
            # A day passes for what matched nothing (only the history's orphans do).
            sim.own.execute(
                "WITH due AS (UPDATE adyen_due"
                " SET received_at = received_at - make_interval(secs => %(s)s),"
                " next_attempt_at = now() - interval '1 second' WHERE unmatched)"
                " UPDATE inbox SET received_at = received_at - make_interval(secs => %(s)s)"
                " WHERE source = 'adyen' AND processed_at IS NULL AND outcome = 'unmatched'",
                {"s": sim.settings.notification_orphan_seconds + 60},
            )
            self.orphans = []
        adyen = [o.psp for o in sim.orders.values() if o.psp.provider == "adyen"]
        if adyen and self.take("ignored_event_code"):
            psp = self.rng.choice(adyen)
            code = self.rng.choice(IGNORED_CODES)
            sim.kind(f"adyen_ignored_{code.lower()}")
            sim.deliver(_adyen_item(psp, code, True, 0, self._ref("R"), ""))
        if self.take("orphan_notification"):
            stranger = PspOrder("adyen", self._ref("U"), "EUR", 100, [], account="SimEU")
            item = _adyen_item(stranger, "CAPTURE", True, 100, self._ref("P"), "")
            self.orphans.append(str(item["pspReference"]))
            sim.deliver(item)

    # -- Klarna ---------------------------------------------------------------------

    def klarna_read_refused(self, order: PspOrder) -> httpx.Response | None:
        """A read answered 403 or 404 (credentials rotated, the order archived): not
        transient; a person looks, and an operator's reconcile reads again."""
        if not self.take("klarna_read_refused"):
            return None
        status = self.rng.choice([403, 404])
        self._fault(f"klarna_read_{status}")
        code = "FORBIDDEN" if status == 403 else "NO_SUCH_ORDER"
        return httpx.Response(status, json={"error_code": code, "error_messages": [code]})

    def unlisted_portal_refund(self, order: PspOrder, what: str) -> None:
        """A Merchant Portal refund Klarna lists without its lines (a refund of an
        amount): the service learns its units from the shop's returns only."""
        if what != "refund" or order.provider != "klarna":
            return
        if not self.take("portal_refund_unlisted"):
            return
        order.refunds[-1]["order_lines"] = []
        order.unlisted.add(len(order.ledger) - 1)

    def foreign_currency(self, order: Order) -> None:
        """Klarna holds the payment in another currency than the first snapshot fixed."""
        if order.psp.provider != "klarna" or not self.take("purchase_currency_differs"):
            return
        order.psp.currency = "SEK"
        order.oracle.foreign_currency()

    # -- the shop's callback endpoint -------------------------------------------------

    def shop_answer(self, request: httpx.Request, body: dict[str, Any]) -> httpx.Response | None:
        """The shop refuses one event for ever (410: it will never take it) or its
        endpoint cannot be reached for a while; None: it answers as usual."""
        webhook = request.headers.get("webhook-id", "")
        if webhook in self.refused:
            return httpx.Response(410)
        if self.take("shop_refuses_one_event"):
            self.refused[webhook] = (str(body["order_id"]), str(body["type"]))
            return httpx.Response(410)
        if self.unreachable and "shop_unreachable" in self.on:
            self.unreachable -= 1
            self.sim.kind("gap_shop_unreachable")
            self._fault("shop_unreachable")
            raise httpx.ConnectError("simulated: the shop is unreachable", request=request)
        return None

    def refused_events(self, order_id: str) -> set[str]:
        """Types of the order's events the shop refused for ever (it was told them)."""
        return {kind for order, kind in self.refused.values() if order == order_id}


# More kinds the contract and the PSPs produce, drawn from a Random of their own again
# (`more-<seed>`), so that every history that drew none of them, and every draw of GAPS,
# stays the one its seed named before they existed.
MORE_GAPS = {
    "authorisation_refused": 0.06,  # Adyen AUTHORISATION success=false, before or after the order
    "portal_figures_wrong": 0.15,  # a Customer Area capture/refund notified with wrong figures
    "heartbeat_renews": 0.10,  # a PSP call slower than the lease, kept by the heartbeat
    "heartbeat_stops": 0.05,  # the worker dies in its call: no renewal, the lease runs out
    "klarna_expiry": 0.15,  # a Klarna authorization with an expiry date, extended or not
}
# Klarna extends an authorization by this much (as the sandbox does).
KLARNA_EXTENSION = timedelta(days=28)
# An amount no payment of a simulated order can reach (its totals stay far below).
BEYOND_ANY_PAYMENT = 5_000_000


class MoreGaps(Draws):
    """One history's draws of the kinds in MORE_GAPS, and the state each needs."""

    KINDS = MORE_GAPS
    STREAM = "more"
    TAG = "m"

    def __init__(self, sim: Simulation, seed: int) -> None:
        super().__init__(sim, seed)
        self.in_call: dict[str, str] = {}  # PSP order id -> key of a write still under way
        self.barriers = 0
        # PSP order id -> the settle point at which the product had seen its
        # authorization's expiry inside the extend window.
        self.expiring: dict[str, int] = {}

    def _violation(self, code: str, detail: str) -> None:
        found = Violation(code, detail)
        if found not in self.sim.result.violations:
            self.sim.result.violations.append(found)

    # -- Adyen: a refused authorisation ---------------------------------------------

    def refuse_authorisation(self, order: Order, script: list[tuple[str, Any]]) -> None:
        """Adyen refuses the payment (AUTHORISATION success=false), notified once the
        shop has sent the order or before: nothing is authorized, every modification is refused."""
        if order.psp.provider != "adyen" or not self.take("authorisation_refused"):
            return
        order.psp.status, order.psp.authorized = "REFUSED", 0
        order.oracle.authorisation_refused()
        script[:] = [step for step in script if step[0] != "authorisation"]
        created = next(n for n, step in enumerate(script) if step[0] == "shop")
        # Adyen's notification may also come before the shop sends the order.
        early = self.rng.random() < 0.3
        if early:
            self.sim.kind("adyen_authorisation_refused_before_the_order")
        at = created if early else created + 1 + self.rng.randrange(3)
        script.insert(at, ("refused", order.shop.order_id))

    def refused(self, order: Order) -> None:
        total = _total(order.first)
        item = _adyen_item(order.psp, "AUTHORISATION", False, total, order.psp.psp_id, "")
        item["reason"] = "Refused"
        self.sim.note(f"psp authorisation refused for {order.shop.order_id}")
        self.sim.deliver(item)
        if self.rng.random() < 0.3:
            self.sim.kind("adyen_authorisation_refused_twice")
            self.sim.model.notifications.append(dict(item))

    # -- Adyen: a Customer Area movement notified with figures it cannot have -------

    def portal_twin(self, order: PspOrder, what: str) -> None:
        """A Customer Area capture or refund, and a notification for the payment with
        figures it cannot have beside it (delivered once or twice, in any order)."""
        if not self.take("portal_figures_wrong", 0.6):
            return
        self._wrong(order, what, "beside_real" if self.rng.random() < 0.6 else "twice")

    def _wrong(self, order: PspOrder, what: str, variant: str) -> None:
        event = "CAPTURE" if what == "capture" else "REFUND"
        how = self.rng.choice(["amount", "currency", "merchant"])
        held = order.captured - order.refunded - order.charged_back
        amount = max(held, 1) if what == "refund" else max(order.authorized - order.captured, 1)
        item = _adyen_item(order, event, True, amount, self._ref("W"), "")
        if how == "amount":
            # More than the payment ever held (a refund) or was authorized (a capture).
            item["amount"] = {"currency": order.currency, "value": BEYOND_ANY_PAYMENT + amount}
        elif how == "currency":
            item["amount"] = {"currency": "SEK", "value": amount}
        else:
            # The merchant's other account (its HMAC verifies), not this payment's.
            item["merchantAccountCode"] = next(a for a in ADYEN_KEYS if a != order.account)
        self.sim.kind(f"portal_wrong_{how}_{event.lower()}_{variant}")
        self.sim.note(f"psp notifies {event} {how} wrong ({variant})")
        self.sim.orders_by_psp[order.psp_id].oracle.foreign_notification()
        if variant == "twice":
            self.sim.deliver(item)
            self.sim.model.notifications.append(dict(item))
        elif variant == "alone":
            self.sim.deliver(item)
        else:
            self.sim.model.notifications.append(item)

    # -- the worker's lease ---------------------------------------------------------

    def one_in_flight(self, order: PspOrder, key: str) -> None:
        """Contract §5 "At most one PSP operation per order is in flight": no write for
        an order whose earlier write is still under way (its sender alive, its lease
        kept by the heartbeat)."""
        under_way = self.in_call.get(order.psp_id)
        if under_way is not None:
            self._violation(
                "two_in_flight",
                f"{order.psp_id}: a write (key {key[:8]}) sent while key {under_way[:8]}'s"
                " call was still under way",
            )

    def slow_call(self, request: httpx.Request) -> bool:
        """A PSP call slower than the lease (True: this call was it). `heartbeat_renews`:
        its heartbeat renews the lease in the middle of it, the old lease would have run
        out, and a sweep runs: nothing may take it over or send for that order
        meanwhile. `heartbeat_stops`: the worker dies in the call after the PSP applied
        it; a sweep before its lease runs out takes nothing, and the one after does."""
        if self.sim.gaps.settling() or not self.on & {"heartbeat_renews", "heartbeat_stops"}:
            return False
        psp_id = _psp_id_of(request)
        order = self.sim.orders_by_psp.get(psp_id) if psp_id else None
        if order is None:
            return False
        if self.take("heartbeat_renews", 0.5):
            self._renewed(order, request)
            return True
        if self.take("heartbeat_stops", 0.5):
            self._stopped(order)
        return False

    def _age_lease(self, order: Order, to: str) -> None:
        self.sim.own.execute(
            f"UPDATE operations SET lease_until = {to}"  # noqa: S608 (two fixed forms)
            " WHERE order_id = %(id)s AND status = 'sent' AND lease_until IS NOT NULL",
            {"id": order.shop.order_id},
        )

    def _renewed(self, order: Order, request: httpx.Request) -> None:
        sim = self.sim
        sim.note(f"slow call for {order.shop.order_id}: the heartbeat renews its lease")
        # Most of the lease has passed when the heartbeat beats ...
        self._age_lease(order, "now() + interval '1 second'")
        sim.ctx.heartbeat.beat()
        # ... and the rest of the old lease passes: unrenewed, it has run out now.
        self._age_lease(order, "lease_until - interval '2 seconds'")
        key = request.headers.get("Klarna-Idempotency-Key") or request.headers.get(
            "Idempotency-Key", ""
        )
        self.in_call[order.psp.psp_id] = key
        try:
            sweep_leases_and_run(self.sim)
        finally:
            self.in_call.pop(order.psp.psp_id, None)

    def _stopped(self, order: Order) -> None:
        sim = self.sim
        # The lease is nearly out, not yet: a sweep now must leave the operation alone.
        self._age_lease(order, "now() + interval '1 second'")
        self.in_call[order.psp.psp_id] = "dying"
        try:
            sweep_leases_and_run(self.sim)
        finally:
            self.in_call.pop(order.psp.psp_id, None)
        sim.model.fault_count += 1
        sim.note("fault death_in_psp_call")
        raise WorkerDeath("in_psp_call")

    # -- Klarna: the authorization's expiry date ------------------------------------

    def klarna_expiry(self, order: Order) -> None:
        """A Klarna authorization with an expiry date (OM `expires_at`): inside the
        extend window from the start, or later as days pass at settle points."""
        if order.psp.provider != "klarna" or not self.take("klarna_expiry"):
            return
        days = self.rng.choice([1, 2, 10, 20])
        order.psp.expires_at = datetime.now(UTC) + timedelta(days=days)
        self.sim.kind(f"klarna_expires_in_{'window' if days < 3 else 'weeks'}")
        if self.rng.random() < 0.3:
            # Klarna answers 403 to extend-authorization-time for this one: the goods
            # may still be waiting when the date passes.
            order.psp.extend_refused = True
            order.oracle.rejected("extend_authorization", "NOT_ALLOWED")

    def _window(self) -> timedelta:
        return timedelta(days=self.sim.settings.extend_authorization_days_before)

    def at_barrier(self) -> None:
        """At a settle point, before it settles: days pass towards a Klarna order's
        expiry (into the extend window), or an expiry the product saw coming at an
        earlier settle point passes; and a Customer Area movement that never happened is
        notified with figures the payment cannot have."""
        sim = self.sim
        self.barriers += 1
        now = datetime.now(UTC)
        for order in sim.orders.values():
            psp = order.psp
            if psp.expires_at is None or not _can_expire(psp):
                continue
            inside = psp.expires_at - now <= self._window()
            if psp.psp_id in self.expiring and not inside:
                sim.kind("klarna_extended_before_expiry")
                del self.expiring[psp.psp_id]
            elif psp.psp_id in self.expiring and self.rng.random() < 0.5:
                self._lapse(order)
            elif not inside and self.rng.random() < 0.5:
                sim.note(f"days pass: {order.shop.order_id} expires within a day")
                passed = psp.expires_at - (now + timedelta(days=1))
                psp.expires_at -= passed
                # Those days passed for what the service wrote of the order too (the
                # clock it judges "extended in this window" by).
                sim.own.execute(
                    "UPDATE operations SET updated_at = updated_at - %(passed)s,"
                    " created_at = created_at - %(passed)s WHERE order_id = %(id)s",
                    {"passed": passed, "id": order.shop.order_id},
                )
                # And for the expiry the service read: the model moves dates back
                # rather than its clock on, so a date it stored moves back with them.
                sim.own.execute(
                    "UPDATE orders SET expires_at = expires_at - %(passed)s WHERE id = %(id)s",
                    {"passed": passed, "id": order.shop.order_id},
                )
                # A replica is not days behind: what a lagging read showed is gone.
                psp.before_last = None
        adyen = [o for o in sim.orders.values() if o.psp.provider == "adyen"]
        adyen = [o for o in adyen if o.psp.status != "REFUSED"]
        if adyen and self.take("portal_figures_wrong", 0.3):
            self._wrong(self.rng.choice(adyen).psp, self.rng.choice(["capture", "refund"]), "alone")

    def _lapse(self, order: Order) -> None:
        """The expiry date passes unextended: Klarna's order is EXPIRED (the service
        learns it at its next read)."""
        psp, sim = order.psp, self.sim
        del self.expiring[psp.psp_id]
        sim.kind("klarna_authorization_lapsed")
        sim.note(f"psp expires {order.shop.order_id}: expires_at passed")
        psp.status = "EXPIRED"
        psp.before_last = None
        # Drawn at the settle point, after the window's snapshots and the tasks that ran
        # between them: a capture the service made for them may have gone before the
        # date passed, or not (§4 counts the expiry without ordering it against the
        # service's captures; seed 87368), as for an expiry with a capture in flight.
        # The date was inside the extend window: an extension may be on its way too.
        order.oracle.expire(capture_in_flight=True, window_done=True, extension_due=True)

    def after_settle(self, flagged: set[str]) -> None:
        """A settle point has settled (every Klarna order read again): an expiry inside
        the extend window is seen now. An order with goods still to ship and nothing
        holding it (no flag) must have been extended out of the window by now (§3
        `extend_authorization`; README EXTEND_AUTHORIZATION_DAYS_BEFORE): goods that
        ship after the date could no longer be captured."""
        now = datetime.now(UTC)
        for order in self.sim.orders.values():
            psp = order.psp
            if psp.expires_at is None or not _can_expire(psp):
                continue
            if psp.expires_at - now > self._window():
                continue
            stored = order.oracle.stored
            waiting = (
                stored is not None
                and stored["status"] == "open"
                and any(
                    line["type"] in ("physical", "digital")
                    and int(line["quantity"]) > int(line.get("shipped_quantity", 0))
                    and int(line["quantity"]) * int(line["unit_price"]) > 0
                    for line in stored["lines"]
                )
            )
            if waiting and order.shop.order_id not in flagged:
                self._violation(
                    "authorization_not_extended",
                    f"{order.shop.order_id.replace(self.sim._tag, '')}: expires"
                    f" {psp.expires_at:%Y-%m-%d %H:%M} with goods to ship, still not"
                    " extended once settled",
                )
            self.expiring.setdefault(psp.psp_id, self.barriers)


def _psp_id_of(request: httpx.Request) -> str | None:
    """The PSP order a Klarna or Adyen write names."""
    parts = request.url.path.split("/")
    if request.url.host.startswith("klarna"):
        return parts[4] if len(parts) > 4 else None
    if "/pal/" in request.url.path:
        body = json.loads(request.content) if request.content else {}
        return str(body.get("originalReference") or "") or None
    return parts[3] if len(parts) > 3 else None


# --- the simulation ----------------------------------------------------------------------


@dataclass
class Order:
    """One order of a history: the shop, the PSP's side and the oracle."""

    shop: Shop
    psp: PspOrder
    oracle: Oracle
    first: dict[str, Any] = field(default_factory=dict)  # the first snapshot
    raised: set[tuple[str, str]] = field(default_factory=set)  # (flag, reason code)
    statuses: list[tuple[int, int]] = field(default_factory=list)  # (version, HTTP status)


class Simulation:
    """Runs histories against one database; one instance per process."""

    def __init__(self, database_url: str, *, max_attempts: int = 2) -> None:
        self.database_url = database_url
        common: dict[str, Any] = {
            "database_url": SecretStr(database_url),
            "klarna_api_url": KLARNA_URL,
            "klarna_username": "sim",
            "klarna_password": SecretStr("sim"),  # a model PSP: no real credentials
            "adyen_checkout_url": ADYEN_URL,
            "adyen_api_key": SecretStr("sim"),
            "adyen_merchant_account": MERCHANT,
            "max_attempts": max_attempts,
            "shop_callback_url": SHOP_URL,
            "shop_callback_secret": SecretStr("whsec_" + "c2ltdWxhdGVkLXNob3Atc2VjcmV0"),
            # Never due by the clock: only time_passes() makes a retry due.
            "retry_base_seconds": 3600.0,
            "retry_max_seconds": 3600.0,
            # Leases and grace periods longer than any history: only time_passes() ends
            # them, so a loaded machine's slow wall clock changes nothing.
            "lease_seconds": 3600.0,
            "sweep_grace_seconds": 3600.0,
        }
        self.settings = Settings(**common)
        self.pool: SyncPool = sync_pool(database_url, max_size=4)
        # The harness's own reads and its clock, one statement each: in autocommit, one
        # round trip per statement instead of three (BEGIN, the statement, COMMIT).
        self.own = psycopg.connect(database_url, autocommit=True, row_factory=dict_row)
        # uvloop (uvicorn's loop when installed, as it is with the service) for the
        # webhook stores: a loop turn or several per statement. One coroutine runs at a
        # time, so what it does happens in the same order (docs/simulation-speed.md).
        self.loop = uvloop.new_event_loop()
        self.apool: AsyncPool = async_pool(database_url, max_size=2)
        self.loop.run_until_complete(self.apool.open())
        self.seed = 0
        self.rng = random.Random(0)
        self.jitter = random.Random(0)
        self.model = PspModel(self.rng, self)
        # The worker's own client class (ordersync/http.py: no cookie jar), over the
        # PSP model: the requests go out as the worker sends them.
        self.http = WorkerClient(transport=httpx.MockTransport(self._handle))
        self.accounts = sim_accounts("checkout")
        self.contexts = {
            api: WorkerContext(
                self.settings,
                self.pool,
                self.http,
                self._providers(api),
                by_account=account_clients(self.http, sim_accounts(api), self._captured),
            )
            for api in ("checkout", "classic")
        }
        self.ctx = self.contexts["checkout"]
        self.jobs: list[tuple[str, Any]] = []
        self.orders: dict[str, Order] = {}
        self.orders_by_psp: dict[str, Order] = {}
        self._events = 0
        self._tag = ""
        self._runs = 0  # histories run: every FRESH_EVERY-th starts from new files
        self.result = Result(0)
        self.gaps = Gaps(self, 0)
        self.more = MoreGaps(self, 0)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        return self.model.handle(request)

    def _providers(self, api: str) -> dict[str, Provider]:
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
                modifications_api="classic" if api == "classic" else "checkout",
                pal_url=PAL_URL,
                captured_lines=captured,
            ),
        }

    def _captured(self, order_id: str) -> list[PspLine]:
        with self.pool.connection() as conn:
            return store.captured_lines(conn, order_id)

    def close(self) -> None:
        self.loop.run_until_complete(self.apool.close())
        self.loop.close()
        self.http.close()
        self.own.close()
        self.pool.close()

    def note(self, event: str) -> None:
        # The ids' random tag keeps them unique in the database; it is not the history.
        self.result.trace.append(event.replace(self._tag, "") if self._tag else event)
        if event.startswith("fault"):
            self.result.faults += 1
            self.result.kinds.add(event)
            for order in self.orders.values():
                order.oracle.fault()

    def kind(self, name: str) -> None:
        self.result.kinds.add(name)

    # -- the task layer -----------------------------------------------------------

    def _enqueue(self, order_id: str, delay: float) -> None:
        self.jobs.append(("reconcile", order_id))

    def _enqueue_notification(self, inbox_id: int, delay: float) -> None:
        self.jobs.append(("notification", inbox_id))

    def _enqueue_delivery(self, order_id: str, delay: float) -> None:
        self.jobs.append(("deliver", order_id))

    def _die(self, name: str) -> None:
        if self.model.rng.random() < self.model.faults.death:
            self.model.fault_count += 1
            self.note(f"fault death_{name}")
            raise WorkerDeath(name)

    @contextmanager
    def _deaths(self) -> Iterator[None]:
        """Deaths at the product's crash points and inside recording an outcome."""

        def crash(name: str) -> None:
            assert name in crashpoints.POINTS
            self._die(name)

        def finish(*args: Any, **kwargs: Any) -> Any:
            done = saved[(store, "finish_operation")](*args, **kwargs)
            self._die("in_record")  # written, not committed: the transaction is lost
            return done

        def apply(*args: Any, **kwargs: Any) -> Any:
            self._die("in_apply_success")
            return saved[(store, "apply_success")](*args, **kwargs)

        def lock_and_finish(*args: Any, **kwargs: Any) -> Any:
            done = saved[(store, "lock_and_finish")](*args, **kwargs)
            self._die("in_record")
            return done

        def record_success(*args: Any, **kwargs: Any) -> Any:
            # The outcome and the figures are one statement now: both deaths after it,
            # in the order the two writes had (neither is committed).
            done = saved[(store, "record_success")](*args, **kwargs)
            self._die("in_record")
            if done[1] is not None:
                self._die("in_apply_success")
            return done

        def enqueue_job(job: Any, order_id: str, **_: Any) -> None:
            self._enqueue_delivery(order_id, 0)

        patches: dict[tuple[Any, str], Any] = {
            # The reconciler calls the name it imported.
            (reconcile, "crash_point"): crash,
            (store, "finish_operation"): finish,
            (store, "apply_success"): apply,
            (store, "lock_and_finish"): lock_and_finish,
            (store, "record_success"): record_success,
            # The events for the shop are sent by the task the product asks for.
            (callbacks, "get_settings"): lambda: self.settings,
            (callbacks, "enqueue_job"): enqueue_job,
            (sweeper, "NOTIFICATION_GRACE_SECONDS"): 3600,
            # The back-off's jitter (`retry_delay`) from the history's own stream. It
            # drew from the process-wide `random`, which psycopg_pool draws from too,
            # once per connection it opens (its max_lifetime jitter), in its own thread:
            # the first history of a process (the web pool grows to its second
            # connection) and any history where a death closed a pooled connection got
            # other delays than the same seed run elsewhere (seed 1006 alone, or inside
            # 1001-1200: two histories).
            (psp_results, "random"): self.jitter,
        }
        saved = {key: getattr(*key) for key in patches}
        for (module, name), value in patches.items():
            setattr(module, name, value)
        try:
            yield
        finally:
            for (module, name), value in saved.items():
                setattr(module, name, value)

    def run_task(self, job: tuple[str, Any], *, force: bool = False) -> None:
        """One Celery task, as workers/tasks.py runs it: the poison guard around the plain
        function; a WorkerDeath ends it with nothing caught (the message is lost with the
        worker; the sweeper finds what it left)."""
        what, arg = job
        try:
            with self._deaths():
                if what == "reconcile":
                    outcome = poison.guarded(
                        self.gaps.failing(
                            lambda: reconcile.Reconciler(self.ctx, self._enqueue).run(
                                arg, force=force
                            )
                        ),
                        lambda exc: self._poisoned(
                            exc,
                            lambda: poison.record_order_failure(
                                self.ctx, arg, "reconcile_order", exc
                            ),
                        ),
                    )
                    self._die("after_commit")
                elif what == "notification":
                    outcome = poison.guarded(
                        lambda: adyen_inbox.process(self.ctx, arg, self._enqueue),
                        lambda exc: self._poisoned(
                            exc,
                            lambda: poison.record_notification_failure(
                                self.ctx, arg, "process_notification", exc
                            ),
                        ),
                    )
                else:
                    self.deliver_callbacks(arg)
                    outcome = "delivered"
            self.note(f"task {what} -> {outcome}")
        except WorkerDeath as death:
            self.note(f"task {what} died at {death}")
        except SimulatedOutage:
            # Infrastructure, not the row's fault: the guard lets it through and the
            # message is offered again as it is (Celery's retry).
            self.note(f"task {what} met the database away; offered again")
            self.jobs.append(job)

    def _poisoned(self, exc: Exception, record: Callable[[], None]) -> None:
        if isinstance(exc, SimulatedBug):
            record()  # raised on purpose: the guard's own path, not a product bug
            return
        found = Violation("task_poisoned", f"{type(exc).__name__}: {exc} at {poison.where(exc)}")
        if found not in self.result.violations:
            self.result.violations.append(found)
        record()

    def deliver_callbacks(self, order_id: str) -> None:
        callbacks.deliver_order(self.pool, self.http, self.settings, order_id)

    def work_one(self) -> None:
        """A worker takes the next message (not always the oldest: several workers)."""
        if not self.jobs:
            return
        pick = 0 if self.rng.random() < 0.7 else self.rng.randrange(len(self.jobs))
        self.run_task(self.jobs.pop(pick))

    def deliver(self, item: dict[str, Any]) -> None:
        """An Adyen notification through the real store; its task is queued."""
        stored = self.loop.run_until_complete(adyen_webhook.store_items(self.apool, [item]))
        self.kind(f"adyen_{item['eventCode'].lower()}_{item['success']}")
        for inbox_id in stored.pending:
            self._enqueue_notification(inbox_id, 0)
        if not stored.new:
            self.note(f"notification {item['eventCode']} duplicate")

    def ingest(self, events: list[tuple[str, dict[str, Any], str]]) -> None:
        """Shop webhooks through the real store: one by one, or a group commit."""
        parsed = []
        for event_type, snapshot, webhook_id in events:
            parsed.append(
                (webhook_id, ShopEvent.model_validate({"type": event_type, "order": snapshot}))
            )
            order = self.orders[snapshot["id"]]
            verdict = order.oracle.snapshot(snapshot)
            self.kind(f"snapshot_{verdict}")
        if len(parsed) == 1 or self.rng.random() < 0.4:
            outcomes: list[Any] = []
            for one in parsed:
                try:
                    outcomes.append(
                        self.loop.run_until_complete(
                            ingest.store_shop_event(self.apool, *one, self.accounts)
                        )
                    )
                except OrdersyncError as exc:
                    outcomes.append(exc)
        else:
            self.kind("group_commit")
            outcomes = self.loop.run_until_complete(
                ingest.store_shop_events(self.apool, parsed, self.accounts)
            )
        for (_, snapshot, _), outcome in zip(events, outcomes, strict=True):
            order = self.orders[snapshot["id"]]
            status = getattr(outcome, "status_code", 202)
            order.statuses.append((snapshot["version"], status))
            self.note(
                f"shop {snapshot['id']} v{snapshot['version']} {snapshot['status']} "
                f"{[_brief(x) for x in snapshot['lines']]}"
                + (f" amount {snapshot['amount']}" if snapshot.get("amount") is not None else "")
                + f" -> {getattr(outcome, 'outcome', status)}"
            )
            if status == 202 and getattr(outcome, "needs_reconcile", False):
                self._enqueue(snapshot["id"], 0)

    def operator_reconcile(self, order_id: str) -> None:
        try:
            self.loop.run_until_complete(
                operator.request_reconcile(self.apool, order_id, "simulation")
            )
        except OrdersyncError:
            return  # not stored (yet): the operator gets a 404
        self.run_task(("reconcile", order_id), force=True)

    def time_passes(self, *, resync: bool = False, leases: bool = False) -> None:
        """Every back-off and lease runs out, stored work is past its grace; with
        `resync`, the periodic re-read of every Klarna order is due. With `leases`,
        first: no operation may be left `sent` with its lease run out (see
        `_sweep_alone`)."""
        rows = self.own.execute(
            TIME_PASSES, {"ids": list(self.orders), "resync": resync, "leases": leases}
        ).fetchall()
        for row in rows:
            found = Violation("lease_not_swept", f"{row['kind']} left sent, its lease run out")
            if found not in self.result.violations:
                self.result.violations.append(found)

    def sweep(self) -> None:
        with self._deaths():  # the patched grace period; nothing here dies
            sweeper.sweep_all(
                self.ctx, self._enqueue, self._enqueue_delivery, self._enqueue_notification
            )

    # -- one history -----------------------------------------------------------------

    def run(self, seed: int, *, steps: int = 12) -> Result:
        # Every history starts from empty tables: the sweeps and time passing are global,
        # so rows an earlier history left would draw on this one's random numbers, and a
        # seed found in a long run would not replay alone (`--first-seed S --histories 1`).
        self.own.execute(EMPTY_TABLES if self._runs % FRESH_EVERY == 0 else DELETE_ROWS)
        self._runs += 1
        self.seed = seed
        self.rng.seed(seed)
        random.seed(seed)
        self.jitter.seed(seed)  # the back-off's jitter (see `_deaths`)
        self.model.__init__(self.rng, self)  # type: ignore[misc]
        self.gaps = Gaps(self, seed)
        self.more = MoreGaps(self, seed)
        self.result = Result(seed)
        self.jobs = []
        self.orders = {}
        self.orders_by_psp = {}
        self._events = 0
        rng = self.rng
        classic = rng.random() < 0.25
        self.ctx = self.contexts["classic" if classic else "checkout"]
        tag = self._tag = uuid.uuid4().hex[:8]  # ids unique in the database
        scripts = [
            self._start_order(f"sim-{seed}-{n}-{tag}", f"{seed}{n}{tag}", steps)
            for n in range(1 if rng.random() < 0.6 else 2)
        ]
        if len(scripts) > 1:
            self.kind("several_orders")
        for order in self.orders.values():
            self.gaps.foreign_currency(order)
        for order, own in zip(self.orders.values(), scripts, strict=True):
            self.more.refuse_authorisation(order, own)
            self.more.klarna_expiry(order)
        script: list[tuple[str, Any]] = []
        while any(scripts):
            # Interleaved, each order's own steps in their order.
            source = rng.choice([s for s in scripts if s])
            script.append(source.pop(0))
        self._play(script)
        self._barrier(final=True)
        self.result.violations += self.model.violations
        for order in self.orders.values():
            self.result.violations += self._check(order)
            self.result.violations += self._check_account(order)
        self.result.events = self._events
        return self.result

    def _start_order(self, order_id: str, psp_suffix: str, steps: int) -> list[tuple[str, Any]]:
        rng = self.rng
        provider = rng.choice(["klarna", "klarna", "adyen"])
        psp_id = f"{'K' if provider == 'klarna' else 'A'}{psp_suffix}"
        shop = Shop(rng, order_id, provider, psp_id)
        shop.account, shop.country = _place(rng, provider)
        first = shop.start()
        total = _total(first)
        psp = PspOrder(
            provider,
            psp_id,
            "EUR",
            total,
            [
                {
                    **line,
                    "reference": line["id"],
                    "total_amount": line["quantity"] * line["unit_price"],
                }
                for line in first["lines"]
                if line["quantity"]
            ],
            allow_increase=rng.random() < 0.7,
            types=shop.types,
        )
        psp.account = shop.account
        self.kind(f"account_{shop.account}")
        self.note(f"account {order_id} {shop.account} {shop.country}")
        self.model.orders[psp_id] = psp
        order = Order(shop, psp, Oracle(total, refuses_increases=not psp.allow_increase), first)
        self.orders[order_id] = order
        self.orders_by_psp[psp_id] = order
        self.kind(f"provider_{provider}")
        self.note(f"start {order_id} {provider} total {total}")
        script: list[tuple[str, Any]] = []
        if provider == "adyen" and rng.random() < 0.6:
            script.append(("authorisation", order_id))
        if provider == "klarna" and rng.random() < 0.1:
            script.append(("psp", (order_id, "capture_before_read")))
        script.append(("shop", (order_id, "created", "order.created", first)))
        for _ in range(steps):
            roll = rng.random()
            if roll < 0.04:
                script.append(("barrier", order_id))
                continue
            if roll < 0.10:
                what = rng.choice(["capture", "refund", "cancel", "expire", "chargeback"])
                if what == "chargeback" and provider != "adyen":
                    what = "refund"
                script += [("barrier", order_id), ("psp", (order_id, what)), ("barrier", order_id)]
                continue
            script.append(("edit", order_id))
        if rng.random() < 0.5:
            # Planned trouble for the order's next PSP request from a random point on.
            trouble = rng.choice(TROUBLE[provider])
            script.insert(rng.randrange(1, len(script) + 1), ("trouble", (order_id, trouble)))
        return script

    def _edit(self, order_id: str) -> tuple[str, str, str, dict[str, Any]] | None:
        """The shop's next edit, made now: what it may take away depends on what the PSP
        holds, and a reversal or a reopen is judged against a settle point."""
        order = self.orders[order_id]
        move = order.shop.next_move()
        if move is None:
            return None
        if move in ("reverse", "reopen"):
            self.note("barrier")
            self._barrier()
        edit = order.shop.apply(move, lambda line_id: order.oracle.state.captured.get(line_id, 0))
        if edit is None:
            return None
        return (order_id, *edit)

    def _play(self, script: list[tuple[str, Any]]) -> None:
        rng = self.rng
        queue = list(script)
        while queue:
            # A shop webhook may overtake the next one (versions out of order).
            index = 0
            step, arg = queue.pop(index)
            if step == "edit":
                edit = self._edit(arg)
                if edit is None:
                    continue
                step, arg = "shop", edit
            if step == "shop":
                batch = [arg]
                if queue and queue[0][0] in ("shop", "edit") and rng.random() < 0.3:
                    # The next webhook too: stored in one group commit, or overtaking.
                    following = queue.pop(0)
                    more = self._edit(following[1]) if following[0] == "edit" else following[1]
                    if more is not None:
                        # A snapshot that changes the currency or payment (another
                        # account, another PSP id) never overtakes: stored first, it
                        # would be the one that fixes them, and the PSP knows the order
                        # under the first one. (Drawn as before, so that every other
                        # history stays the one its seed named.)
                        overtakes = more[1] != "account" and rng.random() < 0.4
                        if overtakes and more[1] not in IDENTITY_MOVES:
                            self.kind("versions_out_of_order")
                            batch.insert(0, more)
                        else:
                            batch.append(more)
                self._shop_step(batch)
                if arg[1] == "empty":
                    self.note("barrier")
                    self._barrier()
            elif step == "barrier":
                self.note("barrier")
                self._barrier()
            elif step == "authorisation":
                psp = self.orders[arg].psp
                self.kind("adyen_authorisation_first")
                self.gaps.twin_first(
                    psp,
                    _adyen_item(psp, "AUTHORISATION", True, psp.authorized, psp.psp_id, ""),
                    psp.authorized,
                )
                self.deliver(
                    _adyen_item(psp, "AUTHORISATION", True, psp.authorized, psp.psp_id, "")
                )
            elif step == "psp":
                self._psp_step(*arg)
            elif step == "refused":
                self.more.refused(self.orders[arg])
            elif step == "trouble":
                order_id, trouble = arg
                self.kind(f"trouble_{trouble}")
                self.note(f"trouble {trouble} planned for {order_id}")
                planned = self.model.forced.setdefault(self.orders[order_id].psp.psp_id, set())
                planned |= set(TROUBLE_FAULTS[trouble])
            for _ in range(rng.randint(0, 3)):
                self._background()

    def _shop_step(self, batch: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        events = []
        self._events += len(batch)
        for order_id, move, event_type, snapshot in batch:
            self.kind(f"shop_{move}")
            self.kind(f"status_{snapshot['status']}")
            for line in snapshot["lines"]:
                self.kind(f"line_{line['type']}")
            events.append((event_type, snapshot, f"wh-{order_id}-{snapshot['version']}-{move}"))
        self.ingest(events)
        if self.rng.random() < 0.1:
            self.note("fault shop_resent")
            self.ingest(events[:1])

    def _background(self) -> None:
        action = self.rng.choice(
            ["work", "work", "work", "work", "notify", "notify", "time", "sweep", "operator"]
        )
        if action == "work":
            self.work_one()
        elif action == "notify" and self.model.notifications:
            # Out of order, and sometimes twice.
            pick = self.rng.randrange(len(self.model.notifications))
            item = self.model.notifications[pick]
            if self.rng.random() < 0.85:
                self.model.notifications.pop(pick)
            else:
                self.kind("notification_twice")
            self.deliver(item)
        elif action == "time":
            self.time_passes()
        elif action == "sweep":
            self.sweep()
        elif action == "operator" and self.rng.random() < 0.3:
            self.kind("operator_reconcile_random")
            self.operator_reconcile(self.rng.choice(list(self.orders)))

    def _psp_step(self, order_id: str, what: str) -> None:
        order = self.orders[order_id]
        psp, oracle = order.psp, order.oracle
        held = oracle.state.captured
        stored = oracle.stored or {"lines": []}
        self.kind(f"external_{what}")
        if what in ("capture", "capture_before_read"):
            snap_lines = stored["lines"] if oracle.stored else order.first["lines"]
            candidates = [
                line
                for line in snap_lines
                if line["type"] in ("physical", "digital")
                and line["quantity"] > max(held.get(line["id"], 0), line.get("shipped_quantity", 0))
                and line["unit_price"] > 0
            ]
            if not candidates or psp.status not in ("AUTHORIZED", "PART_CAPTURED"):
                return
            line = self.rng.choice(candidates)
            value = line["unit_price"]
            if value > psp.authorized - psp.captured:
                return
            self.model.external(psp, "capture", [(line["id"], 1, value, line["tax_rate"])])
            oracle.external_capture(
                line["id"], 1, value, named=psp.provider == "klarna", tax_rate=line["tax_rate"]
            )
        elif what == "refund":
            candidates = _merchant_refundable(stored["lines"], oracle.state)
            if not candidates:
                return
            line = self.rng.choice(candidates)
            away = oracle.state.charged_back_units.get(line["id"], 0)
            unit = _captured_unit_value(psp, line["id"], away=away)
            if unit is None:
                return  # a refund of nothing is no money moved (§4), and no PSP takes one
            self.model.external(psp, "refund", [(line["id"], 1, unit, line["tax_rate"])])
            listed = len(psp.ledger) - 1 not in psp.unlisted
            oracle.external_refund(line["id"], 1, named=listed, value=unit)
        elif what == "cancel":
            if psp.status != "AUTHORIZED" or psp.captured:
                return
            self.model.external(psp, "cancel", [])
            oracle.external_cancel()
        elif what == "expire":
            if not _can_expire(psp):
                return
            self.model.external(psp, "expire", [])
            oracle.expire()
        elif what == "chargeback":
            if psp.captured - psp.refunded - psp.charged_back <= 0:
                return
            self.model.external(psp, "chargeback", [])
            oracle.chargeback()
        self.note(f"psp {what} on {order_id}")

    def _barrier(self, *, final: bool = False) -> None:
        """A settle point: faults off, everything delivered and due, until nothing moves;
        then the flags are read, and an operator reconciles what needs attention (as a
        person would after looking), and it settles again."""
        faults = self.model.faults
        self.model.faults = Faults.none()
        self.gaps.at_barrier()
        self.more.at_barrier()
        # Each settle returns the flags read with its last check when it went quiet:
        # nothing moves between that read and their use here.
        settled = self._sweep_alone()
        if settled is None:
            settled = self._settle(leases=True)
        for _ in range(3):
            flags = settled if settled is not None else self._flags()
            flagged = []
            for order_id, (told, now) in flags.items():
                self.orders[order_id].raised |= told | now
                if any(flag == "needs_attention" for flag, _ in now):
                    flagged.append(order_id)
            if not flagged:
                break  # nothing moved since these flags were read
            for order_id in flagged:
                self.kind("operator_reconcile_after_flag")
                self.operator_reconcile(order_id)
            # What the reconciles queued (the shop's events) first: often that is all.
            self._drain()
            settled = self._quiet()
            if settled is None:
                settled = self._settle()
        else:
            flags = settled if settled is not None else self._flags()
            for order_id, (told, now) in flags.items():
                self.orders[order_id].raised |= told | now
        if any(order.psp.expires_at is not None for order in self.orders.values()):
            # Nothing moved since `flags` were read.
            self.more.after_settle({o for o, (_, now) in flags.items() if now})
        for order in self.orders.values():
            if not final:
                order.oracle.settle()
        self.model.faults = faults if not final else Faults.none()

    def _sweep_alone(self) -> Flags | None:
        """The first round of a settle point is the periodic sweep's alone, with every
        Klarna order's re-read due: what a lost message, a dead worker or a due retry
        left is found by the sweep as in production (the settle rounds enqueue every
        order, which would hide a sweep that misses it). Returns the orders' flags when
        that leaves nothing in flight, undelivered or unprocessed (`_quiet`): then it is
        settled. Else the settle rounds follow, and the first one's time passing reads
        that no operation was left `sent` with its lease run out after this round
        (`_settle(leases=True)`)."""
        self.time_passes(resync=True)
        self.sweep()
        self._drain()
        return self._quiet()

    def _settle(self, *, resync: bool = False, leases: bool = False) -> Flags | None:
        """Until nothing moves: time passes (retries, leases, grace periods due), the
        sweeper runs, every order is reconciled, every message and notification is
        handled. Returns the flags read with the check that found it quiet (None: it
        never was)."""
        for _ in range(SETTLE_ROUNDS):
            self.time_passes(resync=resync, leases=leases)
            resync = leases = False
            self.sweep()
            for order_id in self.orders:
                # Every order is reconciled this round: once, also when the sweep just
                # queued it (a second message in a row finds nothing to do).
                if ("reconcile", order_id) not in self.jobs:
                    self._enqueue(order_id, 0)
            self._drain()
            flags = self._quiet()
            if flags is not None:
                return flags
        return None

    def _drain(self) -> None:
        while self.jobs or self.model.notifications:
            while self.model.notifications:
                self.deliver(self.model.notifications.pop(0))
            while self.jobs:
                self.run_task(self.jobs.pop(0))

    def _quiet(self) -> Flags | None:
        """Nothing in flight, nothing for the shop undelivered, no notification waiting:
        then the orders' flags (`_flags`), read in the same statement; else None."""
        rows = self.own.execute(QUIET_AND_FLAGS, {"ids": list(self.orders)}).fetchall()
        if any(row["kind"] == "busy" and row["flag"] != "0" for row in rows):
            return None
        return self._found_flags([row for row in rows if row["kind"] != "busy"])

    def _flags(self) -> Flags:
        """Per order, (flag, reason code) of every event the shop was ever told of, and
        of the flags the order carries now: every order in one statement."""
        return self._found_flags(self.own.execute(FLAGS_OF, {"ids": list(self.orders)}).fetchall())

    def _found_flags(self, rows: list[dict[str, Any]]) -> Flags:
        found: Flags = {order_id: (set(), set()) for order_id in self.orders}
        for row in rows:
            told, now = found[row["order_id"]]
            if row["kind"] == "now":
                now.add((row["flag"], row["code"] or ""))
            elif row["flag"] == "order.needs_attention":
                told.add(("needs_attention", row["code"] or ""))
            elif row["flag"] == "order.new_order_required":
                told.add(("needs_new_order", row["code"] or ""))
        return found

    # -- the checks -------------------------------------------------------------------

    def _check_account(self, order: Order) -> list[Violation]:
        """The order was stored in its own account, and every operation's request was
        frozen for that account (each attempt resends it with that account's client)."""
        account = order.shop.account
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT account FROM orders WHERE id = %s", (order.shop.order_id,)
            ).fetchone()
            ops = store.operations(conn, order.shop.order_id) if row is not None else []
        found: list[Violation] = []
        if row is not None and row["account"] != account:
            found.append(Violation("cross_account", f"order stored in {row['account']}"))
        for op in ops:
            frozen = (op.request or {}).get("account", account)
            if frozen != account:
                found.append(Violation("cross_account", f"{op.kind} frozen for {frozen}"))
        return found

    def _check(self, order: Order) -> list[Violation]:
        found: list[Violation] = []
        exp = order.oracle.expectation()
        psp = order.psp
        order_id = order.shop.order_id
        self.result.kinds |= {f"outcome_{name}" for name in exp.outcomes}
        self.note(
            f"expect {order_id}: {exp.authorization} authorized {exp.authorized} total "
            f"{exp.total} lines "
            f"{ {k: (v.captured_range or v.captured, v.refunded) for k, v in exp.lines.items()} } "
            f"required {sorted(exp.required)}"
        )
        self.note(
            f"psp {order_id}: {psp.status} authorized {psp.authorized} "
            f"captured {psp.captured} "
            f"refunded {psp.refunded} ledger "
            f"{[(w, a, [(b.reference, b.quantity, b.total) for b in ls]) for w, a, ls in psp.ledger]}"  # noqa: E501
        )
        with self.pool.connection() as conn:
            row = store.lock_order(conn, order_id)
            ops = store.operations(conn, order_id) if row is not None else []
            outbox = conn.execute(
                "SELECT event_type, seq, id FROM outbox WHERE order_id = %s ORDER BY seq",
                (order_id,),
            ).fetchall()
        if row is None:
            return [Violation("never_stored", "the order was never stored")]
        # 1. Snapshots: a currency or payment change is 422 and stores nothing.
        for version, status in order.statuses:
            if version in exp.rejected_versions and status != 422:
                found.append(
                    Violation("identity_change_stored", f"v{version} answered {status}, not 422")
                )
        # 2. Nothing left in flight once everything settled.
        stuck = store.in_flight(ops)
        if stuck is not None:
            code = (
                "stuck_awaiting_notification"
                if stuck.status == "awaiting_notification"
                else "stuck_in_flight"
            )
            found.append(Violation(code, f"{stuck.kind} still {stuck.status}"))
        # 3. The PSP's ledger against the oracle, effect by effect, per line; with the
        # goods the service settled against a price cut it held (no PSP call), in place.
        settled = _settled(ops)
        if settled:
            self.note(
                f"settled {order_id}: "
                f"{[[(b.reference, b.quantity, b.total) for b in ls] for _, _, ls in settled]}"
            )
        for code, detail in check_ledger(_with_settled(psp, ops), exp):
            found.append(Violation(code, detail))
        # 4. The authorization's end.
        end = psp.status
        want = exp.authorization
        if exp.uncertain_end:
            pass
        elif not ended_as(
            want, end, provider=psp.provider, authorized=psp.authorized, captured=psp.captured
        ):
            found.append(
                Violation(
                    "authorization_end",
                    f"PSP {end} (authorized {psp.authorized}, captured {psp.captured}), "
                    f"expected {want}",
                )
            )
        if (
            want == "open"
            and not exp.uncertain_end
            and exp.authorized is not None
            and psp.captured < psp.authorized
            and exp.total > 0
            and not (exp.authorized_low or exp.authorized)
            <= psp.authorized
            <= (exp.authorized_high or exp.authorized)
        ):
            found.append(
                Violation(
                    "authorization_amount",
                    f"PSP authorized {psp.authorized}, expected {exp.authorized}",
                )
            )
        if psp.zero_updates:
            found.append(Violation("authorization_updated_to_zero", "an emptied basket sent as 0"))
        # 5. The product's figures against the PSP's.
        if stuck is None:
            ours = (row.captured_amount, row.refunded_amount)
            theirs = (psp.captured, psp.refunded + psp.charged_back)
            if ours != theirs:
                found.append(
                    Violation("figures_differ", f"order captured/refunded {ours}, PSP {theirs}")
                )
            view = self.loop.run_until_complete(operator.order_detail(self.apool, order_id))
            # Contract §4 counts money moved without the service in the order's figures;
            # an Adyen notification names no lines, so the units of such a movement are
            # in the per-line figures only once the shop's snapshot explains them.
            booked: dict[str, list[int]] = {}
            unlisted: dict[str, list[int]] = {}
            for index, (what, _, lines) in enumerate(psp.ledger):
                for line in lines:
                    if line.type in REDUCING | SHARED_UP:
                        continue
                    into = unlisted if index in psp.unlisted else booked
                    counts = into.setdefault(line.reference, [0, 0])
                    counts[0 if what == "capture" else 1] += line.quantity
            for _, _, lines in settled:
                for line in lines:
                    if line.type not in REDUCING | SHARED_UP:
                        booked.setdefault(line.reference, [0, 0])[0] += line.quantity
            for line in view["lines"]:
                if line["type"] in REDUCING | SHARED_UP:
                    continue
                have = [line["captured_quantity"], line["refunded_quantity"]]
                known = booked.get(line["id"], [0, 0])
                maybe = list(unlisted.get(line["id"], [0, 0]))
                # A chargeback gave back the money of the units it took (not booked as a
                # refund of lines): a build may count returned units among them.
                maybe[1] += order.oracle.state.charged_back_units.get(line["id"], 0)
                maybe[1] += exp.charged_back_maybe.get(line["id"], 0)
                # A capture whose lines Adyen did not name may be counted as units of
                # a line worth as much when the money moved.
                maybe[0] += sum(exp.interchangeable.get(line["id"], {}).values())
                # Units an unnamed capture that filled the basket may stand for beyond
                # those the PSP booked it on (Expectation.paid_whole): the build may tie
                # the money to them once they ship, or keep it unnamed until then.
                maybe[0] += exp.paid_whole.get(line["id"], 0)
                # The same for a refund whose lines the PSP did not name.
                maybe[1] += sum(exp.interchangeable_back.get(line["id"], {}).values())
                if not all(k <= h <= k + m for h, k, m in zip(have, known, maybe, strict=True)):
                    found.append(
                        Violation(
                            "line_figures_differ",
                            f"{line['id']}: ours {have}, PSP {known}"
                            + (
                                f" and {maybe} of lines Adyen did not name"
                                if maybe != [0, 0]
                                else ""
                            ),
                        )
                    )
        # 6. Flags: each one the oracle calls for, and none it does not allow.
        for flag, reason in sorted(exp.required):
            hit = any(f == flag and (not reason or r == reason) for f, r in order.raised)
            if not hit:
                code = (
                    "quantities_reversed_missing"
                    if reason == "quantities_reversed"
                    else "flag_missing"
                )
                found.append(Violation(code, f"{flag} {reason or ''} never raised"))
        for flag, reason in sorted(order.raised):
            ok = (
                (flag, reason) in exp.allowed
                or (flag == "needs_new_order" and (flag, "") in exp.allowed)
                or (flag == "needs_attention" and exp.any_attention)
            )
            if not ok:
                found.append(Violation("flag_not_called_for", f"{flag} {reason}"))
        # 7. The shop was told, in order.
        told = [(t, w) for o, t, w in self.model.shop_events if o == order_id]
        # An event the shop refused for ever (4xx) was told, and is left parked.
        refused = self.gaps.refused_events(order_id)
        told_types = {t for t, _ in told} | refused
        for flag, _ in order.raised:
            event = (
                "order.new_order_required" if flag == "needs_new_order" else "order.needs_attention"
            )
            if event not in told_types:
                found.append(Violation("flag_not_told", f"{flag} without {event} delivered"))
        seq_of = {_webhook_id(r["id"]): r["seq"] for r in outbox}
        seqs = [seq_of.get(w, -1) for _, w in told]
        first_seen = list(dict.fromkeys(seqs))
        if first_seen != sorted(first_seen):
            found.append(Violation("shop_events_out_of_order", f"seq {first_seen}"))
        undelivered = len(outbox) - len(set(seqs)) - len(refused)
        if undelivered > 0:
            found.append(Violation("shop_event_not_delivered", f"{undelivered} events"))
        self.note(
            f"end {order_id} raised {sorted(order.raised)} violations {[v.code for v in found]}"
        )
        return found


def sim_accounts(api: str) -> Accounts:
    """The merchant's accounts as ACCOUNTS_FILE would give them, built in code; `api`:
    which Adyen modifications API (Checkout or classic Pal) the history speaks."""
    return Accounts(
        klarna={
            name: KlarnaAccount(
                name, f"http://{host}", region, user, password, countries=frozenset(countries)
            )
            for name, (host, region, user, password, countries) in KLARNA_ACCOUNTS.items()
        },
        adyen={
            code: AdyenAccount(
                code,
                ADYEN_URL,
                PAL_URL,
                key,
                modifications_api="classic" if api == "classic" else "checkout",
                merchant_account=code,
            )
            for code, key in ADYEN_KEYS.items()
        },
        from_file=True,
        defaults={"adyen": "SimEU", "klarna": "eu"},
    )


def _place(rng: random.Random, provider: str) -> tuple[str, str]:
    """(account, country) of a new order: Klarna routes by the country, Adyen by the
    payment's merchant account."""
    if provider == "klarna":
        country = rng.choice(["DE", "SE", "US"])
        return ("us" if country == "US" else "eu"), country
    account = rng.choice(sorted(ADYEN_KEYS))
    return account, "US" if account == "SimUS" else "DE"


def _brief(line: dict[str, Any]) -> tuple[Any, ...]:
    return (
        line["id"],
        line["type"][:4],
        line["quantity"],
        line["unit_price"],
        line["shipped_quantity"],
        line["returned_quantity"],
    )


def _webhook_id(event_id: Any) -> str:
    from data.outbox import webhook_id

    return webhook_id(event_id)


def _total(snapshot: dict[str, Any]) -> int:
    from devrig.oracle import order_total

    return order_total(snapshot)


def _merchant_refundable(lines: list[dict[str, Any]], state: _State) -> list[dict[str, Any]]:
    """The goods lines of which a merchant can refund a unit by hand: captured and still
    held, neither refunded, nor marked returned (the service refunds those), nor given
    back by a chargeback. §4 counts a chargeback "in the order's figures, never makes it
    a second time": the customer has that money back, and a refund of it would be booked
    on a unit at whatever is left (seed 108386: an l2 unit at 442, captured at 795)."""
    return [
        line
        for line in lines
        if line["type"] in ("physical", "digital")
        and state.captured.get(line["id"], 0) - state.charged_back_units.get(line["id"], 0)
        > max(state.refunded.get(line["id"], 0), int(line.get("returned_quantity", 0)))
    ]


def _captured_unit_value(psp: PspOrder, reference: str, *, away: int = 0) -> int | None:
    """What one unit of the line still held was captured at, its share of order-level
    lines in (rounded down), no more than what is still captured and not given back.
    Units come back in the order they were captured: a unit refunded already is not
    refunded again at its price (a merchant gives back what the unit was paid), nor one
    a chargeback gave back (`away` units, the model's chargeback names no lines). None
    when the unit is held at nothing or below: a price cut given back in full, the
    order-level share it carried included, leaves it below nothing (README "Ledger
    model"), and a refund of that is no money moved (§4) nor one a PSP takes (Klarna's
    `refunded_amount` minimum 0; seed 94745's merchant refunded −4)."""
    captured: list[int] = []
    back = 0
    # What the line's units were paid and what refunds gave back for them, shares in:
    # the last unit held gives back the rest (below).
    paid = given_back = 0
    for what, _, lines in psp.ledger:
        # A price cut given back for a line's captured units (a discount with the id of
        # goods): those units', not a share of the request's.
        cuts = [
            b
            for b in lines
            if b.type in REDUCING and psp.types.get(b.reference, "discount") not in REDUCING
        ]
        cut = sum(b.total for b in cuts if b.reference == reference)
        if what == "refund":
            # A cut no capture was left to give back, refunded whole (README "Ledger
            # model": `<line id>#price-cut`): the units still held were paid that much
            # less, so the merchant gives back no more for one (seed 85268).
            cut = -sum(b.total for b in lines if b.reference == reference + CUT_REFUND)
        if cut and captured:
            # The units still held take it: those refunded went back at their price.
            # By value, as the oracle spreads a cut (`_cut`): units held at different
            # prices (a discount share on one, none on a unit captured before the
            # discount) are each held at their captured price less their part of it,
            # so a merchant refunds none above what the oracle holds it at (seed 213438:
            # 450 and 324 cut by 600 are held at 101 and 72, not 150 and 24).
            first = min(back, len(captured) - 1)
            kept = len(captured) - first
            worth = sum(captured[first:])
            captured = captured[:first] + [
                unit + (cut * unit // worth if worth > 0 else cut // kept)
                for unit in captured[first:]
            ]
            paid += cut
        lines = [b for b in lines if b not in cuts]
        units = [b for b in lines if b.type not in REDUCING | SHARED_UP]
        shared = sum(b.total for b in lines if b.type in REDUCING | SHARED_UP)
        value = sum(b.total for b in units)
        for line in units:
            if line.reference != reference or not line.quantity:
                continue
            share = shared * line.total // value if value else 0
            if what == "capture":
                captured += [(line.total + share) // line.quantity] * line.quantity
                paid += line.total + share
            else:
                back += line.quantity
                given_back += line.total + share
    if not captured:
        return None
    unit = captured[min(back + away, len(captured) - 1)]
    if back == len(captured) - 1 and not away:
        # The last unit held: the service may have refunded the others at their line's
        # share rather than in the order captured (the oracle: "nothing says which came
        # back", all of it once all are back), so a merchant gives back what the line
        # still holds, not the last capture's unit (seed 93930: 2329, not 1790). (With
        # units a chargeback gave back, the line's rest is not known per unit: the
        # capture order stands.)
        unit = max(paid - given_back, 0)
    unit = min(unit, psp.captured - psp.refunded - psp.charged_back)
    return unit if unit > 0 else None


# --- runs ---------------------------------------------------------------------------------


@dataclass
class Summary:
    histories: int = 0
    events: int = 0
    faults: int = 0
    violations: int = 0
    seconds: float = 0.0
    failures: list[Result] = field(default_factory=list)
    by_code: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    first_seeds: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.histories / self.seconds if self.seconds else 0.0

    def add(self, result: Result) -> None:
        self.histories += 1
        self.events += result.events
        self.faults += result.faults
        self.kinds.update(result.kinds)
        if result.violations:
            self.violations += len(result.violations)
            if len(self.failures) < 50:
                self.failures.append(result)
            for violation in result.violations:
                self.by_code[violation.code] += 1
                self.first_seeds.setdefault(violation.code, result.seed)

    def merge(self, other: Summary) -> None:
        self.histories += other.histories
        self.events += other.events
        self.faults += other.faults
        self.violations += other.violations
        self.failures += other.failures[: max(0, 50 - len(self.failures))]
        self.by_code.update(other.by_code)
        self.kinds.update(other.kinds)
        for code, seed in other.first_seeds.items():
            self.first_seeds[code] = min(seed, self.first_seeds.get(code, seed))


@contextmanager
def quiet_logs() -> Iterator[None]:
    """The service's logs off while simulating: thousands of histories, no reader."""
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
    fail_fast: bool = False,
    seconds: float | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> Summary:
    sim = Simulation(database_url)
    started = time.perf_counter()
    try:
        summary = run_seeds(
            sim,
            range(first_seed, first_seed + histories),
            fail_fast=fail_fast,
            deadline=None if seconds is None else time.time() + seconds,
            on_result=on_result,
        )
    finally:
        sim.close()
    summary.seconds = time.perf_counter() - started
    return summary


def run_seeds(
    sim: Simulation,
    seeds: range,
    *,
    fail_fast: bool = False,
    deadline: float | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> Summary:
    """One history per seed, in order, on one Simulation; stops early at `deadline`
    (time.time()) or, with `fail_fast`, after the first history with a violation."""
    summary = Summary()
    for seed in seeds:
        if deadline is not None and time.time() > deadline:
            break  # the time budget is spent: the totals so far
        with quiet_logs():
            try:
                result = sim.run(seed)
            except Exception as exc:
                result = stopped(sim, seed, exc)
        summary.add(result)
        if on_result is not None:
            on_result(result)
        if fail_fast and result.violations:
            break
    return summary


# The repository: an exception raised in its devrig package (the oracle, the PSP and shop
# models) is the judge's, in its other packages the product's.
REPOSITORY = Path(__file__).resolve().parent.parent.parent


def stopped(sim: Any, seed: int, exc: Exception) -> Result:
    """A history that raised instead of ending: one violation, and the run goes on with
    the next seed (a long run must not die on one history). `judge_error` when the
    innermost frame of the repository's code it passed through is the harness's (the
    oracle judging, the models); `product_crash` when it is the product's outside a task
    (a task's own exceptions are the poison guard's, `task_poisoned`). What the history
    did so far is kept for --verbose."""
    result = getattr(sim, "result", None)
    if not isinstance(result, Result) or result.seed != seed:
        result = Result(seed)  # raised before the history began
    result.events = getattr(sim, "_events", result.events)
    code = "judge_error" if _raised_in_harness(exc) else "product_crash"
    found = Violation(code, f"{type(exc).__name__}: {exc} at {poison.where(exc)}")
    result.violations.append(found)
    result.trace.append(f"history stopped: {found.code} {found.detail}")
    return result


def _raised_in_harness(exc: BaseException) -> bool:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if "site-packages" in path.parts or not path.is_relative_to(REPOSITORY):
            continue  # a library's or the standard library's: whoever called it
        # The product's packages are the repository's top-level ones but the harness's
        # (devrig) and the tests' (a stand-in for the oracle there).
        return path.relative_to(REPOSITORY).parts[0] in ("devrig", "tests")
    return True


# Every history starts from tables with no rows. Mostly a DELETE: a TRUNCATE gives every
# table and index new files and invalidates every cached plan of every connection (the
# pools' and the harness's), which then plan all their statements again in the next
# history: ~15 ms of the server's CPU a history (docs/simulation-speed.md, third
# session). Where rows land in the heap no longer names a history: every read whose rows
# set the order of tasks orders them itself (the sweep's due notifications by
# received_at and id; the sweep's orders sorted by id; callbacks by order id), and no
# autovacuum runs (THROWAWAY_SERVER). The same seeds give the same traces history for
# history after a DELETE as from fresh tables (docs/simulation-speed.md). The dead rows a
# DELETE leaves are dropped with the files by a TRUNCATE every FRESH_EVERY histories, so
# the tables stay a few pages long however long the run.
EMPTY_TABLES = (
    "TRUNCATE outbox, operations, inbox, inbox_bodies, adyen_due, adyen_payments, orders CASCADE"
)
# Children first (operations and outbox reference orders).
DELETE_ROWS = (
    "DELETE FROM outbox; DELETE FROM operations; DELETE FROM inbox; DELETE FROM inbox_bodies;"
    " DELETE FROM adyen_due; DELETE FROM adyen_payments; DELETE FROM orders"
)
FRESH_EVERY = 25


# Only for a server started for the simulation alone: a crash of it loses nothing real,
# so nothing waits for the disk (the product's own defaults are not touched). No
# autovacuum either: every history starts from empty tables (EMPTY_TABLES), so there is
# nothing to reclaim between them, and a vacuum or analyze started by the wall clock in
# the middle of a history would move where its later rows land (and the planner's
# estimates), which a replayed seed must not depend on; its workers' CPU is saved too.
# Nor the table counters and activity reports only autovacuum and monitoring read.
THROWAWAY_SERVER = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "autovacuum": "off",
    "track_counts": "off",
    "track_activities": "off",
}


def throwaway_server(database_url: str) -> None:
    """Tells an embedded server made for this run never to wait for its disk."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, value in THROWAWAY_SERVER.items():
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        conn.execute("SELECT pg_reload_conf()")


def prepare(database_url: str) -> None:
    """Empties the tables a simulation writes and stops waiting for the disk on commit:
    only for a database made for the simulation (a crash of it loses nothing real)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(EMPTY_TABLES)
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                sql.Identifier(name[0])
            )
        )


# A process of a parallel run reports after this many histories: often enough for a
# progress line, seldom enough to cost nothing.
BLOCK = 20


def _process(
    url: str, seeds: range, fail_fast: bool, deadline: float | None, stop: Any, reports: Any
) -> None:
    """One process of a parallel run: its own database, its seeds in order, a report
    (seeds done, their Summary) after every block; None when it ends."""
    try:
        with quiet_logs():
            sim = Simulation(url)
        try:
            for start in range(0, len(seeds), BLOCK):
                if stop.is_set():
                    break
                block = seeds[start : start + BLOCK]
                part = run_seeds(sim, block, fail_fast=fail_fast, deadline=deadline)
                reports.put((block[: part.histories], part))
                if part.histories < len(block):
                    break  # fail_fast or the deadline
        finally:
            sim.close()
    finally:
        reports.put(None)


class Progress:
    """Now and then one line for a long run: histories done, the rate, violations so far,
    and the seed below which every history is done (where a stopped run resumes)."""

    def __init__(
        self, out: Callable[[str], None], first_seed: int, histories: int, every: float
    ) -> None:
        self.out = out
        self.end = first_seed + histories
        self.histories = histories
        self.every = every
        self.resume = first_seed  # every seed below it is done
        self.done: set[int] = set()  # seeds done above `resume`
        self.count = 0
        self.violations = 0
        self.started = self.shown = time.perf_counter()

    def add(self, seeds: range, violations: int) -> None:
        self.count += len(seeds)
        self.violations += violations
        self.done.update(seeds)
        while self.resume in self.done:
            self.done.discard(self.resume)
            self.resume += 1
        now = time.perf_counter()
        if now - self.shown < self.every:
            return
        self.shown = now
        rate = self.count / (now - self.started)
        left = self.end - self.resume
        rest = f"; the rest: --first-seed {self.resume} --histories {left}" if left else ""
        self.out(
            f"progress: {self.count}/{self.histories} histories, {rate:.1f} histories/s,"
            f" violations {self.violations}, every seed below {self.resume} done{rest}"
        )


def _parallel(
    urls: list[str],
    histories: int,
    first_seed: int,
    *,
    fail_fast: bool,
    seconds: float | None,
    progress: Progress,
) -> Summary:
    """One process per database; process n runs every len(urls)-th seed from
    first_seed + n, in order (a history can see what earlier histories left in its
    database, so the same seeds on the same number of processes replay the same run)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    reports = context.Queue()
    deadline = None if seconds is None else time.time() + seconds
    end = first_seed + histories
    processes = [
        context.Process(
            target=_process,
            args=(
                url,
                range(first_seed + n, end, len(urls)),
                fail_fast,
                deadline,
                stop,
                reports,
            ),
        )
        for n, url in enumerate(urls)
    ]
    for process in processes:
        process.start()
    summary = Summary()
    running = len(processes)
    while running:
        report = reports.get()
        if report is None:
            running -= 1
            continue
        seeds, part = report
        summary.merge(part)
        progress.add(seeds, part.violations)
        if fail_fast and part.violations:
            stop.set()
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise RuntimeError(f"simulation processes failed: exit codes {failed}")
    return summary


def _databases(url: str, count: int) -> list[str]:
    """`count` databases made from the migrated one (a template copy is instant)."""
    name = str(psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "postgres")
    urls = [url]
    with psycopg.connect(
        psycopg.conninfo.make_conninfo(url, dbname="template1"), autocommit=True
    ) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        for n in range(1, count):
            clone = f"{name}_sim{n}"
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(clone)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(clone), sql.Identifier(name)
                )
            )
            urls.append(psycopg.conninfo.make_conninfo(url, dbname=clone))
    return urls


def _say(line: str) -> None:
    print(line, flush=True)  # a long run's progress reaches a log file as it happens


def report(summary: Summary, out: Callable[[str], None], *, kinds: bool = True) -> None:
    out(
        f"histories {summary.histories}  events {summary.events}  faults {summary.faults}  "
        f"violations {summary.violations}  in {summary.seconds:.1f} s "
        f"({summary.rate:.1f} histories/s)"
    )
    if kinds:
        out("event kinds and outcomes (histories that hit each):")
        for name, count in sorted(summary.kinds.items()):
            out(f"  {name:<44} {count}")
    out(f"cross_account {summary.by_code['cross_account']}")
    for code, count in summary.by_code.most_common():
        seq = SEQUENCE_OF.get(code)
        out(
            f"  violation {code} (seq {seq or '-'}): {count}, first seed "
            f"{summary.first_seeds[code]} (replay: --first-seed {summary.first_seeds[code]}"
            " --histories 1 --verbose)"
        )


def simulate(
    histories: int,
    first_seed: int,
    *,
    database_url: str | None = None,
    processes: int = 1,
    fail_fast: bool = False,
    verbose: bool = False,
    kinds: bool = True,
    seconds: float | None = None,
    progress_seconds: float = 60.0,
    out: Callable[[str], None] | None = None,
) -> int:
    """The long run (`ordersync simulate`): its own embedded Postgres unless given one;
    `processes` side by side, each on its own copy of the database; prints the totals,
    the event kinds hit, every violation code with its first seed."""
    from devrig.devstack import EmbeddedPostgres, temporary_pg_dir
    from ordersync.db import migrate

    out = out or _say
    postgres = None
    if database_url is None:
        postgres = EmbeddedPostgres(temporary_pg_dir("ordersync-sim-pg-") / "data")
        database_url = postgres.url
        throwaway_server(database_url)
    started = time.perf_counter()
    try:
        with quiet_logs():
            migrate(database_url)
        prepare(database_url)
        progress = Progress(out, first_seed, histories, progress_seconds)
        if processes <= 1:

            def on_result(result: Result) -> None:
                if verbose:
                    for line in result.trace:
                        out(f"  {line}")
                for violation in result.violations:
                    out(
                        f"seed {result.seed}: {violation.code} (seq {violation.sequence or '-'}):"
                        f" {violation.detail}"
                    )
                progress.add(range(result.seed, result.seed + 1), len(result.violations))

            summary = run_many(
                database_url,
                histories,
                first_seed,
                fail_fast=fail_fast,
                seconds=seconds,
                on_result=on_result,
            )
        else:
            urls = _databases(database_url, processes)
            summary = _parallel(
                urls,
                histories,
                first_seed,
                fail_fast=fail_fast,
                seconds=seconds,
                progress=progress,
            )
            for result in summary.failures[:20]:
                for violation in result.violations:
                    out(f"seed {result.seed}: {violation.code}: {violation.detail}")
    finally:
        if postgres is not None:
            postgres.stop()
    summary.seconds = time.perf_counter() - started
    out(f"processes {processes}")
    report(summary, out, kinds=kinds)
    return 1 if summary.violations else 0


COVERED = (
    "*/domain/*",
    "*/workers/reconcile.py",
    "*/workers/adyen_inbox.py",
    "*/workers/sweeper.py",
    "*/workers/callbacks.py",
    "*/workers/poison.py",
)


def simulate_with_coverage(histories: int, first_seed: int) -> int:
    """`ordersync simulate --coverage`: the same run under `coverage` (started before
    anything of the product is imported), then the missed lines of what it drives."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    data = Path(tempfile.mkdtemp(prefix="ordersync-sim-cov-")) / ".coverage"
    include = ",".join(COVERED)
    run = [sys.executable, "-m", "coverage", "run", f"--data-file={data}", f"--include={include}"]
    args = ["-m", "cli", "simulate", "--histories", str(histories)]
    args += ["--first-seed", str(first_seed), "--no-kinds"]
    status = subprocess.call([*run, *args])
    subprocess.call(
        [
            sys.executable,
            "-m",
            "coverage",
            "report",
            f"--data-file={data}",
            "-m",
            f"--include={include}",
        ]
    )
    for line in name_uncovered(data, COVERED):
        print(line)
    return status


def name_uncovered(data_file: Any, include: tuple[str, ...]) -> list[str]:
    """Every run of missed lines as `lines  function  first statement`, per file: what
    docs/simulation-coverage.md explains line by line."""
    import ast
    import os
    from pathlib import Path

    import coverage

    cov = coverage.Coverage(data_file=str(data_file), include=list(include))
    cov.load()
    out: list[str] = []
    for path in sorted(cov.get_data().measured_files()):
        _, _, _, missing, _ = cov.analysis2(path)
        if not missing:
            continue
        source = Path(path).read_text()
        text = source.splitlines()
        spans: list[tuple[int, int, str]] = []
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                spans.append((node.lineno, node.end_lineno or node.lineno, node.name))
        runs: list[list[int]] = []
        for number in missing:
            if runs and number - runs[-1][-1] <= 1 + _blank_between(text, runs[-1][-1], number):
                runs[-1].append(number)
            else:
                runs.append([number])
        out.append(f"== {os.path.relpath(path)}")
        for run in runs:
            first, last = run[0], run[-1]
            inner = [s for s in spans if s[0] <= first <= s[1]]
            name = min(inner, key=lambda s: s[1] - s[0])[2] if inner else "(module)"
            where = f"{first}" if first == last else f"{first}-{last}"
            out.append(f"  {where:<9}{name:<30}{text[first - 1].strip()}")
    return out


def _blank_between(text: list[str], after: int, before: int) -> int:
    """Lines between two missed ones that coverage never counts (blank, comments)."""
    between = text[after : before - 1]
    skipped = [x for x in between if not x.strip() or x.strip().startswith("#")]
    return len(skipped) if len(skipped) == len(between) else 0
