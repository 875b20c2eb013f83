"""Latency: webhook received → PSP request sent, at a steady 100 and 200 webhooks/s.

Each rate on a stack of its own, one after the other (BENCH_LATENCY_RATE: that rate only).

The whole stack runs (web, one worker process with the threads pool, the sandbox
answering at once). Each webhook ships a line of an order that is otherwise in sync, so
its effect is exactly one capture. Measured from timestamps, without changing
production code: the load generator's send time (wall clock), the inbox row's
`received_at` (Postgres), and the sandbox request log's `at` for the capture (wall
clock, millisecond resolution). All clocks are this machine's.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import psycopg
from devrig.devstack import wait_until

from bench.common import Row, percentile, stack
from bench.fixtures import synced_orders
from bench.traffic import drive, klarna_id, shop_webhook

# The rates; BENCH_LATENCY_RATE measures the path at one rate only.
RATES = (
    [float(os.environ["BENCH_LATENCY_RATE"])]
    if os.environ.get("BENCH_LATENCY_RATE")
    else [100.0, 200.0]
)
CONCURRENCY = 8
# One worker process per core, as a deployment would run them: a process's threads share
# one interpreter lock, so a single process tops out below 200 operations per second here.
WORKER_PROCESSES = 2


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run(
    *, quick: bool, psp_delay_ms: int = 0, concurrency: int = CONCURRENCY
) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    extra: dict[str, Any] = {"rates": {}}
    for rate in RATES:
        measured, details = measure(
            rate,
            seconds=5 if quick else 30,
            psp_delay_ms=psp_delay_ms,
            concurrency=concurrency,
        )
        rows += measured
        extra["rates"][f"{rate:.0f}"] = details
    return rows, extra


# Upper bounds (ms) of the printed histogram of webhook sent -> capture at the PSP.
BUCKETS_MS = (10, 25, 50, 100, 150, 250, 500, 1000, 2500, 10000)


def histogram(values: list[float]) -> list[tuple[str, int]]:
    """Counts per bucket of BUCKETS_MS, the last one open-ended."""
    counts = [0] * (len(BUCKETS_MS) + 1)
    for value in values:
        counts[next((i for i, b in enumerate(BUCKETS_MS) if value <= b), len(BUCKETS_MS))] += 1
    labels = [f"<= {b} ms" for b in BUCKETS_MS] + [f"> {BUCKETS_MS[-1]} ms"]
    return list(zip(labels, counts, strict=True))


def timeline(sent: dict[str, float], e2e: dict[str, float]) -> list[dict[str, float]]:
    """Per second of the run (by send time): webhooks sent, p50, p99 and max."""
    t0 = min(sent.values())
    seconds: dict[int, list[float]] = {}
    for order, at in sent.items():
        seconds.setdefault(int(at - t0), []).append(e2e[order])
    return [
        {
            "second": second,
            "sent": len(values),
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": max(values),
        }
        for second, values in sorted(seconds.items())
    ]


# What Postgres did during the run that can stall a commit: checkpoints (PostgreSQL 17
# moved their counters to pg_stat_checkpointer) and autovacuum/autoanalyze runs.
PG_ACTIVITY = """
SELECT (SELECT sum(coalesce(autovacuum_count, 0) + coalesce(autoanalyze_count, 0))
        FROM pg_stat_user_tables) AS autovacuum_runs
"""


def postgres_activity(conn: Any) -> dict[str, int]:
    row = conn.execute(PG_ACTIVITY).fetchone()
    out = {"autovacuum_runs": int(row["autovacuum_runs"] or 0)}
    for view, timed, requested in (
        ("pg_stat_checkpointer", "num_timed", "num_requested"),
        ("pg_stat_bgwriter", "checkpoints_timed", "checkpoints_req"),
    ):
        try:
            found = conn.execute(f"SELECT {timed} + {requested} AS n FROM {view}").fetchone()
        except psycopg.errors.UndefinedTable:
            continue
        except psycopg.errors.UndefinedColumn:
            continue
        out["checkpoints"] = int(found["n"])
        break
    return out


def measure(
    rate: float, *, seconds: float, psp_delay_ms: int = 0, concurrency: int = CONCURRENCY
) -> tuple[list[Row], dict[str, Any]]:
    n = int(rate * seconds)
    load_before = os.getloadavg()
    with stack() as bench:
        sandbox = bench.sandbox(delay_ms=psp_delay_ms)
        prefix = f"lat{uuid.uuid4().hex[:4]}-"
        with bench.db() as conn:
            ids = synced_orders(conn, sandbox, prefix, n, shipped=False, requested=False)
            # A few orders of its own warm the worker up (first connections, imports).
            warm = synced_orders(conn, sandbox, prefix + "w", 50, shipped=False, requested=False)
        web = bench.web()
        for index in range(WORKER_PROCESSES):
            bench.worker(f"worker-{index}", pool="threads", concurrency=concurrency)
        # Beat runs as in production: its sweeps colliding with the work are part of the tail.
        bench.start("beat", ["beat"], env={"TMPDIR": str(bench.base)})
        secret = bench.env["SHOP_WEBHOOK_SECRETS"].split()[0]
        drive(
            web,
            [
                shop_webhook(secret, o, version=2, shipped=True, event_type="order.shipped")
                for o in warm
            ],
            concurrency=8,
            max_seconds=30,
        )

        def warmed_up() -> bool:
            with bench.db() as conn:
                row = conn.execute(
                    "SELECT count(*) AS n FROM operations WHERE order_id LIKE %s"
                    " AND status = 'succeeded'",
                    (prefix + "w%",),
                ).fetchone()
            return row is not None and row["n"] >= len(warm)

        # The run starts once both workers are up and have done work: a worker's start-up
        # (imports, first connections) is not the latency of a webhook.
        wait_until(warmed_up, 120, "the warm-up captures", interval=0.5)
        with bench.db() as conn:
            # The set-up's bulk inserts are not the run's: their checkpoint comes now.
            conn.execute("CHECKPOINT")
            pg_before = postgres_activity(conn)
        result = drive(
            web,
            [
                shop_webhook(secret, o, version=2, shipped=True, event_type="order.shipped")
                for o in ids
            ],
            concurrency=32,
            rate=rate,
            max_seconds=seconds + 5,
        )
        statuses = result.statuses()
        if statuses.get(202) != n or result.errors:
            raise RuntimeError(f"webhooks: {statuses}, {result.errors} errors")

        def captured() -> list[dict[str, Any]] | None:
            entries = httpx.get(
                f"{sandbox}/_sandbox/requests", params={"provider": "klarna"}, timeout=60
            ).json()["requests"]
            mine = [
                e
                for e in entries
                if e["method"] == "POST"
                and e["path"].endswith("/captures")
                and (e["order_id"] or "").startswith(klarna_id(prefix))
                and not (e["order_id"] or "").startswith(klarna_id(prefix + "w"))
            ]
            return mine if len(mine) >= n or time.monotonic() > give_up else None

        # A rate the machine does not sustain leaves a backlog: past the wait, what was
        # not captured counts at the time waited (so its percentiles are lower bounds).
        give_up = time.monotonic() + 120
        entries = wait_until(captured, 180, f"{n} captures at the sandbox", interval=1)
        gave_up_at = time.time()
        with bench.db() as conn:
            pg_after = postgres_activity(conn)
            inbox = {
                r["order_id"]: r["received_at"].timestamp()
                for r in conn.execute(
                    "SELECT order_id, received_at FROM inbox WHERE order_id LIKE %s",
                    (prefix + "%",),
                )
            }
    sent = {s[0]: s[2] for s in result.samples}
    scheduled = {s[0]: s[1] for s in result.samples}
    first_capture: dict[str, float] = {}
    for entry in entries:
        order_id = entry["order_id"][len("k-") :]
        at = _epoch(entry["at"])
        first_capture[order_id] = min(at, first_capture.get(order_id, at))
    missing = [o for o in ids if o not in first_capture]
    for o in missing:
        first_capture[o] = gave_up_at
    e2e = [(first_capture[o] - sent[o]) * 1000 for o in ids]
    by_order = dict(zip(ids, e2e, strict=True))
    seconds_run = timeline(sent, by_order)
    load_after = os.getloadavg()
    postgres = {k: pg_after.get(k, 0) - pg_before.get(k, 0) for k in pg_after}
    print(
        f"  @{rate:.0f}/s: load average {load_before[0]:.1f} before, {load_after[0]:.1f} after;"
        f" during the run Postgres made {postgres.get('checkpoints', 0)} checkpoint(s),"
        f" {postgres['autovacuum_runs']} autovacuum/analyze run(s)"
    )
    print("  webhook sent -> capture at PSP:")
    for label, count in histogram(e2e):
        print(f"    {label:>12}: {count:6d}  {'#' * round(60 * count / max(len(e2e), 1))}")
    slow_seconds = [s for s in seconds_run if s["p99_ms"] > 150]
    print(
        f"  seconds of the run with p99 > 150 ms: {len(slow_seconds)} of {len(seconds_run)}"
        + "".join(
            f"\n    +{s['second']:.0f}s: p50 {s['p50_ms']:.0f}, p99 {s['p99_ms']:.0f},"
            f" max {s['max_ms']:.0f} ms"
            for s in slow_seconds[:15]
        )
    )
    from_inbox = [(first_capture[o] - inbox[o]) * 1000 for o in ids if o in inbox]
    lag = [(sent[o] - scheduled[o]) * 1000 for o in ids]
    achieved = n / (max(sent.values()) - min(sent.values()))
    web_ms = result.latencies_ms()
    p50, p99 = percentile(e2e, 50), percentile(e2e, 99)
    label = f"@{rate:.0f}/s" + (f" ({len(missing)} not captured: lower bounds)" if missing else "")
    rows = [
        Row(f"{label} webhooks sent per second", achieved, "/s"),
        Row(
            f"{label} webhook sent -> capture at PSP, p50",
            p50,
            "ms",
            target="<= 25 ms",
            met=p50 <= 25,
        ),
        Row(f"{label} webhook sent -> capture at PSP, p90", percentile(e2e, 90), "ms"),
        Row(
            f"{label} webhook sent -> capture at PSP, p99",
            p99,
            "ms",
            target="<= 150 ms" if rate <= 100 else "",
            met=p99 <= 150 if rate <= 100 else None,
        ),
        Row(f"{label} webhook sent -> capture at PSP, p99.9", percentile(e2e, 99.9), "ms"),
        Row(f"{label} webhook sent -> capture at PSP, max", max(e2e), "ms"),
        Row(f"{label} inbox received_at -> capture at PSP, p50", percentile(from_inbox, 50), "ms"),
        Row(f"{label} inbox received_at -> capture at PSP, p99", percentile(from_inbox, 99), "ms"),
        Row(f"{label} webhook answer (202), p50", percentile(web_ms, 50), "ms"),
        Row(f"{label} webhook answer (202), p99", percentile(web_ms, 99), "ms"),
        Row(f"{label} load generator lag behind schedule, p99", percentile(lag, 99), "ms"),
    ]
    extra = {
        "not_captured": len(missing),
        "rate": rate,
        "webhooks": n,
        "worker": {
            "pool": "threads",
            "concurrency": concurrency,
            "processes": WORKER_PROCESSES,
        },
        "psp_delay_ms": psp_delay_ms,
        "load_average": {"before": load_before, "after": load_after},
        "postgres_during_run": postgres,
        "histogram_ms": histogram(e2e),
        "timeline": seconds_run,
        "latency_ms": {
            "end_to_end": sorted(e2e),
            "inbox_to_psp": sorted(from_inbox),
            "webhook_answer": sorted(web_ms),
        },
    }
    return rows, extra
