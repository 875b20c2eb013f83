"""Backlog: N shop webhooks arrive while no worker runs; then the workers (and beat, as
in production) start, and the bench waits until every order is in sync and checks that
nothing was lost or doubled: one inbox row per webhook, exactly one succeeded capture
per order in Postgres, and exactly one capture per order in the sandbox's ledger, each
under its own idempotency key.

Each webhook is a new order (`order.created` with a line shipped): the worker reads the
order from Klarna, then captures (two PSP requests per order).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
from devrig.devstack import wait_until

from bench.common import Row, stack
from bench.traffic import create_sandbox_orders, drive, klarna_id, shop_webhook

CONCURRENCY = 16


def run(*, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    n = 2_000 if quick else 100_000
    prefix = f"bl{uuid.uuid4().hex[:4]}-"
    ids = [f"{prefix}{i}" for i in range(n)]
    with stack() as bench:
        bench.env["SWEEP_GRACE_SECONDS"] = "60"
        sandbox = bench.sandbox()
        create_sandbox_orders(sandbox, ids)
        web = bench.web()
        secret = bench.env["SHOP_WEBHOOK_SECRETS"].split()[0]
        started = time.monotonic()
        # Signed in chunks: a signature is good for five minutes.
        for chunk in range(0, n, 20_000):
            result = drive(
                web,
                [shop_webhook(secret, o, shipped=True) for o in ids[chunk : chunk + 20_000]],
                concurrency=32,
                max_seconds=600,
            )
            if result.statuses().get(202) != len(ids[chunk : chunk + 20_000]) or result.errors:
                raise RuntimeError(f"webhooks: {result.statuses()}, {result.errors} errors")
        ingest_seconds = time.monotonic() - started
        print(f"  {n:,} webhooks stored in {ingest_seconds:.0f} s", flush=True)
        bench.start("beat", ["beat"])
        drain_started = time.monotonic()
        bench.worker(pool="threads", concurrency=CONCURRENCY)

        def done() -> bool:
            with bench.db() as conn:
                row = conn.execute(
                    "SELECT count(*) AS n FROM orders WHERE id LIKE %s "
                    "AND reconcile_requested_at IS NULL AND captured_amount = 6000",
                    (prefix + "%",),
                ).fetchone()
            assert row is not None
            return int(row["n"]) >= n

        wait_until(done, 3600 if not quick else 300, "the backlog to drain", interval=0.5)
        drain_seconds = time.monotonic() - drain_started
        print(f"  drained in {drain_seconds:.0f} s", flush=True)
        with bench.db() as conn:
            inbox = conn.execute(
                "SELECT count(*) AS n FROM inbox WHERE order_id LIKE %s", (prefix + "%",)
            ).fetchone()
            ops = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'succeeded' AND kind = 'capture') AS ok,"
                " count(*) FILTER (WHERE status <> 'succeeded') AS other,"
                " count(DISTINCT order_id) AS orders FROM operations WHERE order_id LIKE %s",
                (prefix + "%",),
            ).fetchone()
        ledger = httpx.get(f"{sandbox}/_sandbox/ledger", timeout=120).json()["entries"]
    captures = [
        e
        for e in ledger
        if e["operation"] == "capture" and e["order_id"].startswith(klarna_id(prefix))
    ]
    per_order: dict[str, int] = {}
    for entry in captures:
        per_order[entry["order_id"]] = per_order.get(entry["order_id"], 0) + 1
    keys = {e["idempotency_key"] for e in captures}
    assert inbox is not None and ops is not None
    lost = n - len(per_order)
    doubled = sum(1 for c in per_order.values() if c > 1)
    rows = [
        Row("webhooks in the backlog", n, "events"),
        Row("drain rate (reconciled orders/s, 2 PSP requests each)", n / drain_seconds, "/s"),
        Row("inbox rows", int(inbox["n"]), "rows", float(n), "= webhooks", int(inbox["n"]) == n),
        Row(
            "orders with one succeeded capture in Postgres",
            int(ops["orders"]),
            "orders",
            float(n),
            "= webhooks",
            int(ops["ok"]) == n == int(ops["orders"]) and int(ops["other"]) == 0,
        ),
        Row("orders lost (no capture at the PSP)", lost, "orders", target="0", met=lost == 0),
        Row(
            "orders captured twice at the PSP",
            doubled,
            "orders",
            target="0",
            met=doubled == 0 and len(keys) == len(captures),
        ),
    ]
    extra = {
        "webhooks": n,
        "ingest_seconds": ingest_seconds,
        "drain_seconds": drain_seconds,
        "worker": {"pool": "threads", "concurrency": CONCURRENCY},
    }
    return rows, extra
