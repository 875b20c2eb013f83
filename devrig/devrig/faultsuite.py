"""`ordersync faults`: tries to lose or double money, then checks it did not.

For each seed it plays random order histories (ships, returns, removed lines, cancels)
through the real stack while the worker is SIGKILLed at named crash points, Redis is
killed during a burst, Postgres is restarted with `-m immediate`, and a TCP proxy in
front of the PSP delays, resets after the request was sent, or swallows requests. Then it
compares our ledger with the sandbox's, order by order.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from devrig.demo import new_secret, signed_headers
from devrig.devstack import (
    EmbeddedPostgres,
    Process,
    RedisServer,
    free_port,
    klarna_line,
    wait_http,
)
from devrig.faultproxy import FaultProxy
from ordersync.db import migrate

CRASH_POINTS = "before_psp_call:0.08,after_psp_call:0.08,after_commit:0.05,in_reenqueue:0.03"
SWEEP_SECONDS = 1.0
CONNECT_TIMEOUT, READ_TIMEOUT = 1.0, 1.5
LEASE_SECONDS = 10.0  # as Settings.lease_seconds
PRODUCTS = [
    ("shoes", 1200, 2000),
    ("socks", 450, 2000),
    ("hat", 1999, 2500),
    ("book", 1495, 700),
    ("lamp", 4500, 2000),
    ("mug", 333, 1200),
]


@dataclass
class Order:
    id: str
    klarna_id: str
    lines: list[dict[str, Any]]
    version: int = 0
    status: str = "open"

    def event(self) -> dict[str, Any]:
        self.version += 1
        return {
            "type": "order.updated",
            "order": {
                "id": self.id,
                "version": self.version,
                "currency": "EUR",
                "country": "DE",
                "status": self.status,
                "payment": {
                    "provider": "klarna",
                    "klarna_order_id": self.klarna_id,
                    "payment_method": "INVOICE",
                },
                "lines": self.lines,
            },
        }


@dataclass
class Report:
    seed: int
    orders: int = 0
    events: int = 0
    worker_restarts: int = 0
    infra_faults: list[str] = field(default_factory=list)
    operations: int = 0
    converged_seconds: float = 0.0
    flagged: int = 0
    violations: list[str] = field(default_factory=list)


class Harness:
    def __init__(self, base: Path) -> None:
        self.base = base
        pg_dir = base / "postgres"
        pg_dir.mkdir(parents=True)
        pg_dir.chmod(0o755)
        self.postgres = EmbeddedPostgres(pg_dir / "data")
        self.redis = RedisServer(base / "redis")
        self.redis.start()
        migrate(self.postgres.url)
        sandbox_port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        self.proxy = FaultProxy(sandbox_port)
        self.proxy.start()
        web_port = free_port()
        self.web_url = f"http://127.0.0.1:{web_port}"
        self.secret = new_secret()
        self.env = {
            "DATABASE_URL": self.postgres.url,
            "REDIS_URL": self.redis.url,
            "SHOP_WEBHOOK_SECRETS": self.secret,
            "KLARNA_API_URL": f"http://127.0.0.1:{self.proxy.port}",
            "KLARNA_USERNAME": "sandbox",
            "KLARNA_PASSWORD": "sandbox",
            "LOG_FORMAT": "json",
            "RETRY_BASE_SECONDS": "0.2",
            "RETRY_MAX_SECONDS": "1",
            "MAX_ATTEMPTS": "30",
            "PSP_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT),
            "PSP_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT),
            "RECONCILE_SWEEP_SECONDS": str(SWEEP_SECONDS),
            "SWEEP_GRACE_SECONDS": "1",
        }
        logs = base / "logs"
        logs.mkdir()
        self.logs = logs
        self.sandbox = Process(
            "sandbox", ["sandbox", "--port", str(sandbox_port)], self.env, logs / "sandbox.log"
        )
        self.web = Process(
            "web",
            ["web", "--host", "127.0.0.1", "--port", str(web_port)],
            self.env,
            logs / "web.log",
        )
        self.beat = Process("beat", ["beat"], self.env, logs / "beat.log")
        self.worker = self._worker(CRASH_POINTS)
        for process in (self.sandbox, self.web, self.beat, self.worker):
            process.start()
        wait_http(f"{self.sandbox_url}/_sandbox/health", process=self.sandbox)
        wait_http(f"{self.web_url}/healthz", process=self.web)
        self.restarts = 0
        self._supervise = True
        self._supervisor = threading.Thread(target=self._keep_worker_alive, daemon=True)
        self._supervisor.start()

    def _worker(self, crash_points: str) -> Process:
        env = {**self.env, "ORDERSYNC_CRASH_POINTS": crash_points}
        return Process(
            "worker",
            ["worker", "--concurrency", "2", "--metrics-port", "0"],
            env,
            self.logs / "worker.log",
        )

    def _keep_worker_alive(self) -> None:
        while self._supervise:
            if not self.worker.running:
                self.restarts += 1
                self.worker = self._worker(self.worker.env.get("ORDERSYNC_CRASH_POINTS", ""))
                self.worker.start()
            time.sleep(0.2)

    def calm_worker(self) -> None:
        """Restart the worker without crash points, so the run can converge."""
        self._supervise = False
        self._supervisor.join(2)
        self.worker.kill()
        self.worker = self._worker("")
        self.worker.start()

    def arm_worker(self) -> None:
        self.worker.kill()
        self.worker = self._worker(CRASH_POINTS)
        self.worker.start()
        self._supervise = True
        self._supervisor = threading.Thread(target=self._keep_worker_alive, daemon=True)
        self._supervisor.start()

    def send(self, event: dict[str, Any]) -> None:
        """As a shop would: retry until the event is stored (a 5xx means not stored)."""
        body = json.dumps(event).encode()
        for _ in range(200):
            try:
                answer = httpx.post(
                    f"{self.web_url}/webhooks/shop",
                    content=body,
                    headers=signed_headers(self.secret, body),
                    timeout=10,
                )
                if answer.status_code == 202:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the receiver never stored an event")

    def db(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.postgres.url, row_factory=dict_row, autocommit=True)

    def close(self) -> None:
        self._supervise = False
        for process in (self.worker, self.beat, self.web, self.sandbox):
            process.stop()
        self.proxy.stop()
        self.redis.stop()
        self.postgres.stop()


def _new_order(h: Harness, rng: random.Random, seed: int, n: int) -> Order:
    picks = rng.sample(PRODUCTS, rng.randint(2, 4))
    lines: list[dict[str, Any]] = [
        {
            "id": name,
            "name": name.title(),
            "quantity": rng.randint(1, 3),
            "unit_price": price,
            "tax_rate": rate,
            "shipped_quantity": 0,
            "returned_quantity": 0,
        }
        for name, price, rate in picks
    ]
    if rng.random() < 0.5:
        value = sum(line["quantity"] * line["unit_price"] for line in lines)
        lines.append(
            {
                "id": "coupon",
                "name": "Coupon",
                "type": "discount",
                "quantity": 1,
                "unit_price": -(value // rng.randint(5, 12)),
                "tax_rate": 2000,
            }
        )
    klarna_lines = [klarna_line(line) for line in lines if line.get("type") != "discount"]
    discount = next((line for line in lines if line.get("type") == "discount"), None)
    if discount:
        klarna_lines.append(klarna_line(discount))
    created = httpx.post(
        f"{h.sandbox_url}/_sandbox/klarna/orders",
        json={
            "purchase_currency": "EUR",
            "purchase_country": "DE",
            "payment_method": "INVOICE",
            "order_amount": sum(line["total_amount"] for line in klarna_lines),
            "order_lines": klarna_lines,
        },
        timeout=10,
    )
    created.raise_for_status()
    return Order(f"fault-{seed}-{n}", created.json()["order_id"], lines)


def _mutate(order: Order, rng: random.Random) -> bool:
    """One change a shop might send; False when the order has nothing left to change."""
    if order.status == "cancelled":
        return False
    products = [line for line in order.lines if line.get("type") != "discount"]
    choice = rng.random()
    unshipped = [line for line in products if line["shipped_quantity"] < line["quantity"]]
    returnable = [line for line in products if line["returned_quantity"] < line["shipped_quantity"]]
    if choice < 0.55 and unshipped:
        line = rng.choice(unshipped)
        line["shipped_quantity"] += rng.randint(1, line["quantity"] - line["shipped_quantity"])
    elif choice < 0.75 and returnable:
        rng.choice(returnable)["returned_quantity"] += 1
    elif choice < 0.9 and unshipped:
        line = rng.choice(unshipped)
        line["quantity"] = max(line["shipped_quantity"], line["quantity"] - 1)
        if (
            sum(p["quantity"] * p["unit_price"] for p in products)
            + sum(d["unit_price"] for d in order.lines if d.get("type") == "discount")
            < 0
        ):
            line["quantity"] += 1
            return True
    elif choice >= 0.97:
        order.status = "cancelled"
    elif not unshipped and not returnable:
        return False
    return True


INFRA_FAULTS = ("redis", "postgres", "proxy_delay", "proxy_reset", "proxy_blackhole")


def _infra_fault(h: Harness, kind: str, report: Report) -> None:
    report.infra_faults.append(kind)
    if kind == "redis":
        h.redis.stop()
        time.sleep(1.5)
        h.redis.start()
    elif kind == "postgres":
        h.postgres.restart_immediate()
    else:
        mode = kind.removeprefix("proxy_")
        h.proxy.set(mode if mode != "reset" else "reset_after_send", delay_seconds=2.0)
        time.sleep(2.0)
        h.proxy.set("pass")


def run_seed(h: Harness, seed: int, orders: int, events: int, infra: bool) -> Report:
    rng = random.Random(seed)
    report = Report(seed=seed, orders=orders)
    restarts_before = h.restarts
    h.arm_worker()
    shop = [_new_order(h, rng, seed, n) for n in range(orders)]
    for order in shop:
        h.send(order.event())
        report.events += 1
    # Every kind of infrastructure fault once per seed, at random moments of the run.
    kinds = rng.sample(INFRA_FAULTS, k=len(INFRA_FAULTS)) if infra else []
    fault_at = dict(zip(rng.sample(range(events), k=min(events, len(kinds))), kinds, strict=False))
    for step in range(events):
        order = rng.choice(shop)
        if _mutate(order, rng):
            h.send(order.event())
            report.events += 1
        if step in fault_at:
            _infra_fault(h, fault_at[step], report)
        time.sleep(rng.uniform(0, 0.03))
    report.worker_restarts = h.restarts - restarts_before
    h.calm_worker()
    started = time.monotonic()
    _wait_converged(h, [o.id for o in shop], timeout=120)
    report.converged_seconds = round(time.monotonic() - started, 1)
    # A killed worker's claim must expire before anyone may resend (the lease), then
    # the sweeper needs at most two intervals to find and enqueue the order.
    bound = LEASE_SECONDS + 2 * SWEEP_SECONDS + 1
    if report.converged_seconds > bound:
        report.violations.append(f"converged in {report.converged_seconds} s > {bound} s")
    _check(h, shop, report)
    return report


def _wait_converged(h: Harness, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with h.db() as conn:
            row = conn.execute(
                """
                SELECT count(*) AS busy FROM orders o
                WHERE o.id = ANY(%s) AND NOT 'needs_attention' = ANY(o.flags)
                  AND (o.reconcile_requested_at IS NOT NULL OR EXISTS (
                       SELECT 1 FROM operations p WHERE p.order_id = o.id
                       AND p.status IN ('pending', 'sent')))
                """,
                (ids,),
            ).fetchone()
        if row and row["busy"] == 0:
            return
        time.sleep(0.25)


def _check(h: Harness, shop: list[Order], report: Report) -> None:
    with h.db() as conn:
        for order in shop:
            row = conn.execute("SELECT * FROM orders WHERE id = %s", (order.id,)).fetchone()
            if row is None:
                report.violations.append(f"{order.id}: lost (no order row)")
                continue
            if row["version"] != order.version:
                report.violations.append(f"{order.id}: version {row['version']} != {order.version}")
            ops = conn.execute(
                "SELECT * FROM operations WHERE order_id = %s ORDER BY seq", (order.id,)
            ).fetchall()
            report.operations += len(ops)
            if row["flags"]:
                report.flagged += 1
            if any(op["status"] in ("pending", "sent") for op in ops) and not row["flags"]:
                report.violations.append(f"{order.id}: did not converge")
            ledger = httpx.get(
                f"{h.sandbox_url}/_sandbox/ledger", params={"order_id": order.klarna_id}, timeout=10
            ).json()["entries"]
            keys = [entry["idempotency_key"] for entry in ledger]
            if len(keys) != len(set(keys)):
                report.violations.append(f"{order.id}: an idempotency key applied twice")
            ours = {op["idempotency_key"] for op in ops if op["status"] == "succeeded"}
            if set(keys) != ours:
                report.violations.append(
                    f"{order.id}: PSP applied {sorted(set(keys) - ours)} we did not record; "
                    f"we recorded {sorted(ours - set(keys))} the PSP did not apply"
                )
            klarna = httpx.get(
                f"{h.sandbox_url}/ordermanagement/v1/orders/{order.klarna_id}",
                auth=("sandbox", "sandbox"),
                timeout=10,
            ).json()
            if not (
                0
                <= klarna["refunded_amount"]
                <= klarna["captured_amount"]
                <= klarna["order_amount"]
            ):
                report.violations.append(f"{order.id}: PSP figures out of order {klarna}")
            figures = (row["authorized_amount"], row["captured_amount"], row["refunded_amount"])
            theirs = (klarna["order_amount"], klarna["captured_amount"], klarna["refunded_amount"])
            if figures != theirs:
                report.violations.append(f"{order.id}: ours {figures} != PSP's {theirs}")


def run_faults(seeds: list[int], orders: int, events: int, infra: bool, keep: bool = False) -> int:
    base = Path(tempfile.mkdtemp(prefix="ordersync-faults-"))
    base.chmod(0o755)
    harness = Harness(base)
    reports: list[Report] = []
    try:
        for seed in seeds:
            report = run_seed(harness, seed, orders, events, infra)
            reports.append(report)
            _print(report)
    finally:
        harness.close()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"logs kept in {base / 'logs'}")
    failed = [r for r in reports if r.violations]
    total = len(reports)
    print(f"faults: {total - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _print(r: Report) -> None:
    print(
        f"seed {r.seed}: {r.orders} orders, {r.events} events, {r.operations} operations, "
        f"{r.worker_restarts} worker kills, infra faults {r.infra_faults or 'none'}, "
        f"converged in {r.converged_seconds} s after the last fault, {r.flagged} flagged, "
        f"{len(r.violations)} violations",
        flush=True,
    )
    for violation in r.violations:
        print(f"  VIOLATION {violation}", flush=True)
