"""Scale: the sweeper's and the planner's queries at 1M orders / 5M operations against
the same queries at 10k orders / 50k operations, in two databases of one server.

Rows are generated set-based (generate_series). The shape: five operations per order
(all settled), one shop webhook per order in the inbox, most orders finished. The
working set the sweeper looks for is the same size in both databases (100 orders asked
to reconcile, 100 due for a Klarna re-read, 50 retries due, 20 expired leases, 50
expiring authorizations), since it follows the rate of work, not the history; the
history is what grows a hundredfold. The time of each query is the median of repeated
calls as the worker makes them (client side, one connection); UPDATEs run in a
transaction that is rolled back.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from bench.common import Row, stack
from data import inbox, orders, outbox
from data import orders as store
from ordersync.db import migrate
from workers import sweeper

SMALL = 10_000
GENERATE = """
INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,
                    desired_amount, authorized_amount, captured_amount, psp_status,
                    psp_payment_method, psp_country, psp_synced_at, expires_at,
                    reconcile_requested_at, created_at, updated_at)
SELECT 'o' || g, 3, 'klarna', 'k' || g, 'EUR', 'open', '{"id": "x", "lines": []}'::jsonb,
       8500, 8500,
       CASE WHEN mod(g, 20) = 0 THEN 0 ELSE 8500 END,
       CASE WHEN mod(g, 20) = 0 THEN 'authorized' ELSE 'captured' END,
       'INVOICE', 'DE',
       CASE WHEN mod(g, 20) = 0 AND g <= 2000 THEN now() - interval '7 hours'
            ELSE now() - mod(g, 300) * interval '1 minute' END,
       CASE WHEN mod(g, 20) = 0 AND g > 2000 AND g <= 3000 THEN now() + interval '1 day'
            ELSE now() + interval '20 days' END,
       CASE WHEN mod(g, 20) = 1 AND g <= 2000 THEN now() - interval '1 minute' END,
       now() - interval '30 days', now() - interval '30 days'
FROM generate_series(1, %(n)s) AS g;

INSERT INTO operations (id, order_id, seq, kind, status, amount, lines, target_version,
                        idempotency_key, attempts, created_at, updated_at)
SELECT gen_random_uuid(), 'o' || g, s,
       CASE s WHEN 1 THEN 'update_authorization' WHEN 5 THEN 'refund' ELSE 'capture' END,
       'succeeded', 1000, '[]'::jsonb, 3, md5('o' || g || ':' || s), 1,
       now() - interval '29 days', now() - interval '29 days'
FROM generate_series(1, %(n)s) AS g, generate_series(1, 5) AS s;

-- The working set: a sixth operation still in flight on some orders.
INSERT INTO operations (id, order_id, seq, kind, status, amount, target_version,
                        idempotency_key, attempts, next_attempt_at, lease_token, lease_until)
SELECT gen_random_uuid(), 'o' || g, 6, 'capture',
       CASE WHEN g <= 500 THEN 'pending' ELSE 'sent' END, 100, 3, md5('o' || g || ':6'), 1,
       CASE WHEN g <= 500 THEN now() - interval '1 second' END,
       CASE WHEN g > 500 THEN gen_random_uuid() END,
       CASE WHEN g > 500 THEN now() - interval '1 minute' END
FROM generate_series(10, least(700, %(n)s), 10) AS g;

INSERT INTO inbox (source, event_key, event_type, order_id, received_at, processed_at,
                   outcome)
SELECT 'shop', 'msg_' || g, 'order.updated', 'o' || g,
       now() - interval '30 days', now() - interval '30 days', 'applied'
FROM generate_series(1, %(n)s) AS g;

INSERT INTO inbox_bodies (inbox_id, payload) SELECT id, '{}'::jsonb FROM inbox;
"""

# The statements production runs (data/orders.py, data/outbox.py, data/inbox.py), with the
# parameters of the default settings.
PARAMS = {"batch": sweeper.BATCH, "grace": 10, "resync": 21600, "days": 3}
QUERIES: list[tuple[str, str, bool]] = [  # (name, SQL, takes an order id)
    ("lock_order", store.LOCK_ORDER, True),
    ("operations (in flight, history, next seq)", store.OPERATIONS, True),
    ("sweep: due retries and leases", orders.DUE_RETRIES, False),
    ("sweep: requested", orders.REQUESTED, False),
    ("sweep: Klarna re-read (UPDATE)", orders.RESYNC, False),
    ("sweep: Adyen notifications", inbox.DUE_NOTIFICATIONS, False),
    ("sweep: callbacks", outbox.UNDELIVERED_CALLBACKS, False),
]


def _nodes(plan: dict[str, Any]) -> list[str]:
    name = plan["Node Type"]
    if "Index Name" in plan:
        name += f" ({plan['Index Name']})"
    elif "Relation Name" in plan:
        name += f" ({plan['Relation Name']})"
    return [name] + [n for child in plan.get("Plans", []) for n in _nodes(child)]


def measure(url: str, n: int, repeats: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    rng = random.Random(7)
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute("ANALYZE")
        conn.commit()
        for name, query, point in QUERIES:
            calls = repeats if point else max(10, repeats // 10)
            params = [{**PARAMS, "id": f"o{rng.randint(1, n)}"} for _ in range(calls + 5)]
            times = []
            for i, p in enumerate(params):
                start = time.perf_counter()
                conn.execute(query, p).fetchall()
                elapsed = time.perf_counter() - start
                conn.rollback()
                if i >= 5:  # the first calls warm caches and prepare
                    times.append(elapsed * 1000)
            explain = conn.execute(
                sql.SQL("EXPLAIN (FORMAT JSON) ") + sql.SQL(query), params[0]
            ).fetchone()
            conn.rollback()
            assert explain is not None
            plan = explain["QUERY PLAN"][0]["Plan"]
            out[name] = {
                "median_ms": statistics.median(times),
                "calls": len(times),
                "nodes": _nodes(plan),
            }
    return out


def without_new_indexes(url: str, calls: int) -> dict[str, Any]:
    """The re-read sweep as it was before migrations/0004_indexes.sql (rolled back)."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute("DROP INDEX orders_resync_due, orders_expiring")
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            conn.execute("SAVEPOINT s")
            conn.execute(orders.RESYNC, PARAMS).fetchall()
            conn.execute("ROLLBACK TO SAVEPOINT s")
            times.append((time.perf_counter() - start) * 1000)
        explain = conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) ") + sql.SQL(orders.RESYNC), PARAMS
        ).fetchone()
        conn.rollback()
    assert explain is not None
    return {
        "median_ms": statistics.median(times),
        "nodes": _nodes(explain["QUERY PLAN"][0]["Plan"]),
    }


def run(
    *,
    quick: bool,
    small: int = SMALL,
    large: int | None = None,
    repeats: int | None = None,
    webhooks: int | None = None,
) -> tuple[list[Row], dict[str, Any]]:
    if webhooks:
        # Retention at scale: prune batches and the inbox's hot statements at `webhooks`
        # (10M for the target; --quick: 1M) against 100k (--quick: 20k).
        return run_webhooks(
            large=webhooks,
            small=20_000 if quick else 100_000,
            repeats=repeats or (360 if quick else 900),
        )
    large = large or (100_000 if quick else 1_000_000)
    repeats = repeats or (200 if quick else 500)
    rounds = 3
    results: dict[str, Any] = {}
    urls: dict[int, str] = {}
    with stack() as bench:
        for n in (small, large):
            url, generated = _generated_database(bench, f"bench_scale_{n}", GENERATE, n)
            print(
                f"  {n:,} orders, {5 * n:,} operations generated in {generated:.0f} s", flush=True
            )
            urls[n] = url
            results[str(n)] = {"generate_seconds": generated, "rounds": []}
        # Alternate the sizes, so that whatever else the machine does falls on both;
        # each query keeps its best round's median.
        for _ in range(rounds):
            for n, url in urls.items():
                results[str(n)]["rounds"].append(measure(url, n, repeats))
        results["without_0004"] = without_new_indexes(urls[large], repeats // 10)
    for n in urls:
        per_round = results[str(n)]["rounds"]
        results[str(n)]["queries"] = {
            name: {**per_round[0][name], "median_ms": min(r[name]["median_ms"] for r in per_round)}
            for name, _, _ in QUERIES
        }
    rows = []
    small_q, large_q = results[str(small)]["queries"], results[str(large)]["queries"]
    for name, _, _ in QUERIES:
        value, base = large_q[name]["median_ms"], small_q[name]["median_ms"]
        rows.append(
            Row(
                f"{name} @{large // 1000}k orders",
                value,
                "ms",
                base,
                f"<= 1.2x @{small // 1000}k",
                value <= 1.2 * base,
            )
        )
        print(f"  {name}: {' > '.join(large_q[name]['nodes'])}")
    before = results["without_0004"]
    rows.append(
        Row(
            f"sweep: Klarna re-read @{large // 1000}k, without 0004_indexes",
            before["median_ms"],
            "ms",
            small_q["sweep: Klarna re-read (UPDATE)"]["median_ms"],
        )
    )
    print(f"  without 0004_indexes: {' > '.join(before['nodes'])}")
    return rows, {"sizes": [small, large], "results": results}


# -- webhooks mode: `python -m bench scale --webhooks N` ---------------------------------
#
# The database is shaped as retention leaves it, plus a backlog for the batches timed:
# - `n` webhooks kept over the last 35 days (RETENTION_KEY_DAYS), ids following
#   received_at as in production; one in five from Adyen; all processed but a working
#   set that follows the rate of work, not the history (the same at every size): 50 Adyen
#   notifications due now, 20 unmatched ones backed off (next_attempt_at ahead);
# - a body (the receiver's own, ~0.5 kB) only for the last 7 days (RETENTION_BODY_DAYS):
#   older ones were pruned;
# - one order per ten webhooks, each order's webhooks over its first days; the order's
#   snapshot is a real one (~0.4 kB);
# - one delivered outbox event per ten webhooks, kept for 7 days (RETENTION_OUTBOX_DAYS);
# - a backlog of BACKLOG old rows of each kind (webhooks with bodies received 36-40 days
#   ago, delivered outbox rows 8-10 days old) at ids and times before the kept ones, as
#   a retention stopped for a few days leaves them: what the timed batches prune. It is
#   the same at both sizes, and is written again (untimed, at both sizes alike) when a
#   kind has no full batch left, so each figure has as many full batches as asked.
BACKLOG = 10_000
KEEP_DAYS = 35  # RETENTION_KEY_DAYS
BODY_DAYS = 7  # RETENTION_BODY_DAYS, RETENTION_OUTBOX_DAYS
DUE_ADYEN = 50
BACKED_OFF_ADYEN = 20
# New webhooks go to one of the most recent orders (as many at every size): an order's
# webhooks come in its first days, so the orders being written follow the rate of work.
RECENT_ORDERS = 1_000

GENERATE_ORDERS = """
INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,
                    desired_amount, created_at, updated_at)
SELECT 'o' || g, 1, 'klarna', 'k-o' || g, 'EUR', 'open',
       replace(%(snapshot)s, '@ID@', 'o' || g)::jsonb, 8500,
       now() - interval '1 day' * (%(days)s * (1 - (g - 1)::float8 / %(orders)s)),
       now() - interval '1 day' * (%(days)s * (1 - (g - 1)::float8 / %(orders)s))
FROM generate_series(1, %(orders)s) AS g
"""
# Kept webhooks: ids backlog+1 .. backlog+n over the last KEEP_DAYS (minus an hour, so
# that none is old enough for the key pass when the bench starts). Webhook g goes to an
# order created up to ~a thirtieth of the history before it.
GENERATE_INBOX = """
INSERT INTO inbox (id, source, event_key, event_type, order_id, received_at, processed_at,
                   outcome, payload_sha256)
SELECT %(backlog)s + g,
       CASE WHEN mod(g, 5) = 0 THEN 'adyen' ELSE 'shop' END,
       CASE WHEN mod(g, 5) = 0 THEN 'psp_' ELSE 'msg_' END || g,
       CASE WHEN mod(g, 5) = 0 THEN 'CAPTURE' ELSE 'order.updated' END,
       'o' || greatest(1, 1 + (g - 1) / 10 - mod(g::bigint * 7919, greatest(%(orders)s / 30, 1))),
       t.at,
       CASE WHEN mod(g, 5) = 0 AND mod(g, %(backed_off_every)s) = 0 THEN NULL ELSE t.at END,
       CASE WHEN mod(g, 5) = 0 AND mod(g, %(backed_off_every)s) = 0 THEN 'unmatched'
            ELSE 'applied' END,
       sha256(convert_to('msg_' || g, 'UTF8'))
FROM generate_series(1, %(n)s) AS g,
     LATERAL (SELECT now() - interval '1 hour'
                     - (make_interval(days => %(keep_days)s) - interval '2 hours')
                       * (1 - g::float8 / %(n)s) AS at) AS t
"""
GENERATE_BODIES = """
INSERT INTO inbox_bodies (inbox_id, payload)
SELECT id, replace(%(body)s, '@ID@', order_id)::jsonb FROM inbox
WHERE id > %(backlog)s
  AND received_at > now() - make_interval(days => %(body_days)s) + interval '1 hour'
ORDER BY id
"""
# The working set of the Adyen sweep: due now (received a minute ago), for recent orders.
GENERATE_DUE = """
INSERT INTO inbox (source, event_key, event_type, order_id, received_at)
SELECT 'adyen', 'due_' || g, 'AUTHORISATION', 'o' || (%(orders)s + 1 - g),
       now() - interval '1 minute'
FROM generate_series(1, %(due)s) AS g
"""
GENERATE_DUE_BODIES = """
INSERT INTO inbox_bodies (inbox_id, payload)
SELECT id, '{"eventCode": "AUTHORISATION"}'::jsonb FROM inbox WHERE event_key LIKE 'due_%%'
"""
# Each unprocessed notification's row of the sweep's state (data/inbox.py, adyen_due), as
# the receiver and the worker write it: the unmatched ones backed off for half an hour.
# After the backlog's few unprocessed rows are written (they are due, as before).
GENERATE_ADYEN_DUE = """
INSERT INTO adyen_due (inbox_id, received_at, next_attempt_at, unmatched)
SELECT id, received_at,
       CASE WHEN outcome = 'unmatched' THEN now() + interval '30 minutes' END,
       outcome IS NOT DISTINCT FROM 'unmatched'
FROM inbox WHERE source = 'adyen' AND processed_at IS NULL
ON CONFLICT (inbox_id) DO NOTHING
"""
GENERATE_OUTBOX = """
INSERT INTO outbox (id, order_id, event_type, version, payload, created_at, delivered_at)
SELECT gen_random_uuid(), 'o' || greatest(1, 1 + mod(g::bigint * 7919, %(orders)s)), 'order.synced',
       1, '{"type": "order.synced"}'::jsonb, t.at, t.at
FROM generate_series(1, %(outbox)s) AS g,
     LATERAL (SELECT now() - interval '1 hour'
                     - (make_interval(days => %(body_days)s) - interval '2 hours')
                       * (1 - g::float8 / %(outbox)s) AS at) AS t
"""
# The backlog (written at generation and again when spent): ids 1..backlog, received
# 40-36 days ago, with bodies; a few of them never processed (retention passes over and
# keeps those: they are written once and stay); delivered outbox rows 10-8 days old.
BACKLOG_SQL = """
DELETE FROM inbox_bodies WHERE inbox_id <= %(backlog)s AND mod(inbox_id, 2000) <> 0;
DELETE FROM inbox WHERE id <= %(backlog)s AND processed_at IS NOT NULL;
DELETE FROM outbox WHERE delivered_at < now() - make_interval(days => %(body_days)s);
INSERT INTO inbox (id, source, event_key, event_type, order_id, received_at, processed_at,
                   outcome, payload_sha256)
SELECT g, CASE WHEN mod(g, 5) = 0 THEN 'adyen' ELSE 'shop' END,
       'old_' || g || '_' || %(fill)s, 'order.updated', 'o' || (1 + mod(g, %(orders)s)),
       t.at, CASE WHEN mod(g, 2000) = 0 THEN NULL ELSE t.at END, 'applied',
       sha256(convert_to('old_' || g, 'UTF8'))
FROM generate_series(1, %(backlog)s) AS g,
     LATERAL (SELECT now() - interval '40 days' + interval '4 days' * g / %(backlog)s AS at) t
WHERE mod(g, 2000) <> 0 OR %(fill)s = 0;
INSERT INTO inbox_bodies (inbox_id, payload)
SELECT id, replace(%(body)s, '@ID@', order_id)::jsonb FROM inbox
WHERE id <= %(backlog)s ORDER BY id
ON CONFLICT (inbox_id) DO NOTHING;
INSERT INTO outbox (id, order_id, event_type, version, payload, created_at, delivered_at)
SELECT gen_random_uuid(), 'o' || (1 + mod(g, %(orders)s)), 'order.synced', 1,
       '{"type": "order.synced"}'::jsonb, t.at, t.at
FROM generate_series(1, %(backlog)s) AS g,
     LATERAL (SELECT now() - interval '10 days' + interval '2 days' * g / %(backlog)s AS at) t;
UPDATE retention_cursor SET last_id = 0
"""
# Secondary indexes dropped for the bulk load and built after it (a load through them
# is a random leaf per row: most of the generation time), with the leaf density an
# index grown by inserts has: ~70% for keys that arrive in no order (B-tree leaves split
# in two), the default 90% for keys that arrive in order. The fillfactor is reset
# after the build, so the definitions are the migrations' own.
GROWN_FILL = {"inbox_event_once": 70, "inbox_order": 70, "outbox_order": 70, "outbox_pkey": 70}


def _templates() -> dict[str, str]:
    """A real shop webhook's body and order snapshot, with '@ID@' for the order id."""
    import json

    from bench.traffic import snapshot

    order = snapshot("@ID@", 2)
    return {
        "body": json.dumps({"type": "order.updated", "order": order}),
        "snapshot": json.dumps(order),
    }


def _shape(n: int, fill: int = 0) -> dict[str, Any]:
    orders = max(n // 10, RECENT_ORDERS)
    return {
        "n": n,
        "orders": orders,
        "outbox": max(n // 10 * BODY_DAYS // KEEP_DAYS, 1),
        "backlog": BACKLOG,
        "days": KEEP_DAYS + 5,
        "keep_days": KEEP_DAYS,
        "body_days": BODY_DAYS,
        "due": DUE_ADYEN,
        "backed_off_every": max(5, n // BACKED_OFF_ADYEN // 5 * 5),
        "fill": fill,
        **_templates(),
    }


def _bulk_load(conn: psycopg.Connection[Any], n: int) -> None:
    """Fill a migrated database for `n` webhooks (autocommit connection)."""
    p = _shape(n)
    # Foreign keys are checked by construction (every order id generated exists).
    conn.execute("SET session_replication_role = replica")
    conn.execute("SET maintenance_work_mem = '256MB'")
    rebuild: list[tuple[str, str, str | None]] = []  # (name, create, constraint table)
    for row in conn.execute(
        """SELECT i.indexname, i.indexdef, i.tablename, c.contype
           FROM pg_indexes i LEFT JOIN pg_constraint c ON c.conname = i.indexname
           WHERE i.schemaname = 'public' AND i.tablename IN ('inbox', 'outbox')
             AND i.indexdef NOT LIKE '%% WHERE %%' AND coalesce(c.contype, 'u') = 'u'"""
    ).fetchall():
        name, create, table, contype = row
        if contype == "u":
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(table), sql.Identifier(name)
                )
            )
            rebuild.append((name, create, table))
        else:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
            rebuild.append((name, create, None))
    for statement in (GENERATE_ORDERS, GENERATE_INBOX, GENERATE_BODIES):
        conn.execute(statement, p)
    # Webhooks received from now on take ids after the kept ones, as the receiver's would.
    conn.execute("SELECT setval('inbox_id_seq', %(backlog)s + %(n)s)", p)
    for statement in (GENERATE_DUE, GENERATE_DUE_BODIES, GENERATE_OUTBOX):
        conn.execute(statement, p)
    _write_backlog(conn, n, 0)
    conn.execute(GENERATE_ADYEN_DUE)
    conn.execute("SELECT setval('inbox_id_seq', (SELECT max(id) FROM inbox))")
    for name, create, table in rebuild:
        fill = GROWN_FILL.get(name)
        conn.execute(create + (f" WITH (fillfactor = {fill})" if fill else ""))
        if fill:
            conn.execute(sql.SQL("ALTER INDEX {} RESET (fillfactor)").format(sql.Identifier(name)))
        if table is not None:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE USING INDEX {}").format(
                    sql.Identifier(table), sql.Identifier(name), sql.Identifier(name)
                )
            )
    conn.execute("RESET session_replication_role")


def _write_backlog(conn: psycopg.Connection[Any], n: int, fill: int) -> None:
    p = _shape(n, fill)
    for statement in BACKLOG_SQL.split(";\n"):
        conn.execute(statement, p)


# The tables that grow with the history: at the large size, a plan that reads one of them
# whole (a Seq Scan) is a statement whose cost grows with it.
LARGE_TABLES = ("inbox", "inbox_bodies", "outbox", "orders")
# The figures, in the order they are printed; the last is a diagnostic with no target.
FIGURES = (
    "store new webhook",
    "store repeated webhook",
    "sweep: Adyen notifications",
    "prune: inbox bodies, per 1k rows",
    "prune: inbox keys, per 1k rows",
    "prune: delivered outbox, per 1k rows",
    "store new webhook, an order from anywhere in the history",
    "sweep: the same rows selected and locked, not updated",
)
HELD = FIGURES[:6]
# The Adyen sweep's own SELECT ... FOR UPDATE SKIP LOCKED, without its UPDATE: the same
# rows found through the same indexes and locked (a heap write), but no new row versions
# and so no index entries written. Beside the sweep, it says which part grows.
_DUE = inbox.DUE_NOTIFICATIONS
DUE_SELECT_ONLY = _DUE[
    _DUE.index("SELECT inbox_id FROM adyen_due") : _DUE.index("FOR UPDATE SKIP LOCKED")
    + len("FOR UPDATE SKIP LOCKED")
]


class Backend:
    """The CPU time a Postgres backend has spent, from /proc/<pid>/schedstat (ns
    resolution): time on a CPU, and time spent runnable but waiting for one. On a loaded
    machine the second grows with everyone else's work; the first is the statement's own
    cost (its parsing, planning, buffer and index work, WAL, the page reads from the
    OS's cache). None of it when Postgres is not a local process (BENCH_DATABASE_URL
    pointing elsewhere)."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/schedstat")

    def read(self) -> tuple[int, int] | None:
        try:
            on_cpu, waiting, _ = self.path.read_text().split()
        except (OSError, ValueError):
            return None
        return int(on_cpu), int(waiting)


class _Samples:
    """Per figure and size: client-side ms, and the backend's on-CPU and run-queue ms."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.wait: list[float] = []

    def add(
        self,
        wall_s: float,
        before: tuple[int, int] | None,
        after: tuple[int, int] | None,
        per: float = 1.0,
    ) -> None:
        self.wall.append(wall_s * 1000 * per)
        if before is not None and after is not None:
            self.cpu.append((after[0] - before[0]) / 1e6 * per)
            self.wait.append((after[1] - before[1]) / 1e6 * per)

    def summary(self) -> dict[str, float]:
        def median(values: list[float]) -> float:
            return statistics.median(values) if values else float("nan")

        return {
            "wall_ms": median(self.wall),
            "backend_cpu_ms": median(self.cpu),
            "backend_wait_ms": median(self.wait),
            "samples": len(self.wall),
        }


def _store_event(order: str) -> Any:
    from bench.traffic import snapshot
    from domain.snapshot import ShopEvent

    return ShopEvent.model_validate({"type": "order.updated", "order": snapshot(order, 2)})


def _recent_order(n: int, rng: random.Random) -> str:
    orders = _shape_orders(n)
    return f"o{rng.randint(orders - RECENT_ORDERS + 1, orders)}"


def _any_order(n: int, rng: random.Random) -> str:
    return f"o{rng.randint(1, _shape_orders(n))}"


def _shape_orders(n: int) -> int:
    return max(n // 10, RECENT_ORDERS)


def _hot_calls(n: int, i: int, rng: random.Random) -> list[tuple[str, str, Any]]:
    """The statements every webhook and sweep runs against the inbox, with parameters."""
    from data.inbox import STORE_SHOP_EVENT
    from service.ingest import single_params

    return [
        (
            "store new webhook",
            STORE_SHOP_EVENT,
            single_params(f"new_{i}_{rng.random()}", _store_event(_recent_order(n, rng))),
        ),
        (
            "store repeated webhook",
            STORE_SHOP_EVENT,
            single_params(
                f"msg_{rng.randint(0, max(n // 5 - 1, 0)) * 5 + 1}",
                _store_event(_recent_order(n, rng)),
            ),
        ),
        ("sweep: Adyen notifications", inbox.DUE_NOTIFICATIONS, PARAMS),
        (
            "store new webhook, an order from anywhere in the history",
            STORE_SHOP_EVENT,
            single_params(f"any_{i}_{rng.random()}", _store_event(_any_order(n, rng))),
        ),
        ("sweep: the same rows selected and locked, not updated", DUE_SELECT_ONLY, PARAMS),
    ]


def _prune_kinds(settings: Any) -> list[tuple[str, Any]]:
    """Each kind of retention batch (workers/retention.py, default settings: 1,000-row
    batches), as a function of the pool it runs on."""
    from workers import retention

    return [
        (
            "prune: inbox bodies, per 1k rows",
            lambda pool: retention._inbox_pass(
                pool,
                "inbox_bodies",
                inbox.DELETE_BODIES,
                settings.retention_body_days * retention.DAY,
                settings.retention_batch,
            ),
        ),
        (
            "prune: inbox keys, per 1k rows",
            lambda pool: retention._inbox_pass(
                pool,
                "inbox_keys",
                inbox.DELETE_KEYS,
                settings.retention_key_days * retention.DAY,
                settings.retention_batch,
            ),
        ),
        (
            "prune: delivered outbox, per 1k rows",
            lambda pool: retention._outbox_batch(
                pool, settings.retention_outbox_days * retention.DAY, settings.retention_batch
            ),
        ),
    ]


def _interleaved(
    conns: dict[int, psycopg.Connection[Any]],
    pools: dict[int, Any],
    samples: dict[int, dict[str, _Samples]],
    repeats: int,
    rng: random.Random,
    refills: dict[int, int],
) -> None:
    """`repeats` rounds; in each, at both sizes (which goes first alternates): the hot
    statements, rolled back, and one retention batch, committed, of the next kind in
    turn; so store and sweep are timed with retention running, and a burst of load
    elsewhere falls on both sizes alike. A batch counts when it pruned a full batch (a
    short last batch would be timed per 1,000 rows on fewer). A size whose backlog of a
    kind is spent gets it written again before the next round (untimed). The first
    rounds warm caches and prepare, and are not counted."""
    from ordersync.settings import Settings

    settings = Settings()
    kinds = _prune_kinds(settings)
    sizes = list(conns)
    backends = {n: Backend(conn.info.backend_pid) for n, conn in conns.items()}
    warm = 6
    for i in range(repeats + warm):
        spent: set[int] = set()
        name, one = kinds[i % len(kinds)]
        for n in sizes if i % 2 == 0 else sizes[::-1]:
            conn, backend = conns[n], backends[n]
            for figure, query, params in _hot_calls(n, i, rng):
                before = backend.read()
                start = time.perf_counter()
                conn.execute(query, params).fetchall()
                elapsed = time.perf_counter() - start
                after = backend.read()
                conn.rollback()
                if i >= warm:
                    samples[n][figure].add(elapsed, before, after)
            pool = pools[n]
            with pool.connection() as pconn:
                pbackend = Backend(pconn.info.backend_pid)
            before = pbackend.read()
            start = time.perf_counter()
            result = one(pool)
            elapsed = time.perf_counter() - start
            after = pbackend.read()
            # A full batch: the backlog's few unprocessed rows are passed over and kept.
            full = result["pruned"] >= 0.99 * settings.retention_batch
            if full and i >= warm:
                samples[n][name].add(elapsed, before, after, per=1000 / result["pruned"])
            if not full or not result["more"]:
                spent.add(n)
        for n in spent:
            refills[n] += 1
            with pools[n].connection() as pconn:
                pconn.autocommit = True
                try:
                    _write_backlog(pconn, n, refills[n])
                finally:
                    pconn.autocommit = False


def _explain(conn: psycopg.Connection[Any], query: str, params: Any) -> dict[str, Any]:
    explain = conn.execute(
        sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + sql.SQL(query), params
    ).fetchone()
    conn.rollback()
    assert explain is not None
    top = explain["QUERY PLAN"][0]
    plan = top["Plan"]
    return {
        "ms": top["Execution Time"],
        "hit": plan.get("Shared Hit Blocks", 0),
        "read": plan.get("Shared Read Blocks", 0),
        "dirtied": plan.get("Shared Dirtied Blocks", 0),
        # Time spent reading those blocks from the OS (track_io_timing): I/O, not CPU.
        "read_ms": sum(v for k, v in plan.items() if k.endswith("Read Time")),
        "nodes": _nodes(plan),
    }


def _next_old_ids(conn: psycopg.Connection[Any], cursor: str, days: float) -> list[int]:
    """The ids the next batch of the retention pass `cursor` would prune."""
    after = conn.execute(
        "SELECT last_id FROM retention_cursor WHERE name = %s", (cursor,)
    ).fetchone()
    assert after is not None
    rows = conn.execute(
        "SELECT id FROM inbox WHERE id > %s AND received_at < now() - make_interval(secs => %s)"
        " AND processed_at IS NOT NULL ORDER BY id LIMIT 1000",
        (after["last_id"], days * 86400),
    ).fetchall()
    conn.rollback()
    return [r["id"] for r in rows]


def _inside(urls: dict[int, str], repeats: int) -> dict[int, dict[str, dict[str, Any]]]:
    """Inside Postgres: `EXPLAIN (ANALYZE, BUFFERS)` of each statement at each size, rolled
    back, `repeats` times with the sizes taking turns; the median execution time, buffer
    counts (hit, read from outside shared_buffers, dirtied) and the time those reads took,
    and the plan. The counts do not depend on the machine's load, so they say whether a
    statement's work grows with the table when its timing is noise; the plan says which
    indexes it uses."""
    from ordersync.settings import Settings
    from workers import retention

    settings = Settings()
    rng = random.Random(13)
    sizes = list(urls)
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {n: {} for n in sizes}
    with contextlib.ExitStack() as stack:
        conns = {
            n: stack.enter_context(psycopg.connect(url, row_factory=dict_row))
            for n, url in urls.items()
        }
        for conn in conns.values():
            conn.autocommit = True
            with contextlib.suppress(psycopg.Error):  # superuser only
                conn.execute("SET track_io_timing = on")
            conn.autocommit = False
        for i in range(repeats):
            for n in sizes if i % 2 == 0 else sizes[::-1]:
                conn = conns[n]
                statements = [
                    *_hot_calls(n, 1_000_000 + i, rng),
                    (
                        "prune: inbox bodies, per 1k rows",
                        inbox.DELETE_BODIES,
                        {"ids": _next_old_ids(conn, "inbox_bodies", settings.retention_body_days)},
                    ),
                    (
                        "prune: inbox keys, per 1k rows",
                        inbox.DELETE_KEYS,
                        {"ids": _next_old_ids(conn, "inbox_keys", settings.retention_key_days)},
                    ),
                    (
                        "prune: delivered outbox, per 1k rows",
                        outbox.DELETE_DELIVERED,
                        {
                            "age": settings.retention_outbox_days * retention.DAY,
                            "batch": settings.retention_batch,
                        },
                    ),
                ]
                for name, query, params in statements:
                    runs[n].setdefault(name, []).append(_explain(conn, query, params))
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for n, per_statement in runs.items():
        out[n] = {}
        for name, explained in per_statement.items():
            out[n][name] = {
                key: statistics.median(e[key] for e in explained)
                for key in ("ms", "hit", "read", "dirtied", "read_ms")
            }
            out[n][name]["nodes"] = explained[-1]["nodes"]
    return out


def _seq_scans(nodes: list[str]) -> list[str]:
    return [node for node in nodes if node in {f"Seq Scan ({t})" for t in LARGE_TABLES}]


def _generated_database(bench: Any, name: str, generate: Any, n: int) -> tuple[str, float]:
    """A database of its own, migrated, filled by `generate` for `n` (SQL statements, or a
    function of an autocommit connection and `n`), vacuumed and checkpointed so that what
    is timed next starts from the same state; its URL and how long filling it took."""
    with bench.db() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(bench.database_url)._replace(path=f"/{name}"))
    migrate(url)
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        if callable(generate):
            generate(conn, n)
        else:
            for statement in generate.split(";\n"):
                if statement.strip():
                    conn.execute(statement, {"n": n})
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
        if callable(generate):
            # The timed part leaves the same dead rows at both sizes (batches, and the
            # rolled-back sweeps and stores); autovacuum would clean them up at the small
            # size only (its threshold is a fifth of the table: 2 M dead rows at 10 M),
            # and the comparison would no longer be of the same operations on the same
            # state. So it is off for these tables at both sizes while they are timed.
            # (adyen_due, the sweep's state, is the same few rows at both sizes: its
            # autovacuum runs alike at both.)
            for table in ("inbox", "inbox_bodies", "outbox", "orders"):
                conn.execute(
                    sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(
                        sql.Identifier(table)
                    )
                )
    return url, time.monotonic() - started


def _table_sizes(url: str) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(
            """SELECT c.relname, c.reltuples::bigint AS rows,
                      pg_total_relation_size(c.oid) AS bytes
               FROM pg_class c WHERE c.relname IN ('inbox', 'inbox_bodies', 'outbox', 'orders')"""
        ).fetchall()
        sizes: dict[str, Any] = {
            r["relname"]: {"rows": r["rows"], "mb": round(r["bytes"] / 2**20)} for r in rows
        }
        # Each index's size and B-tree depth (pageinspect, where the server has it): a
        # statement that writes an index entry descends one page per level.
        with contextlib.suppress(psycopg.Error):
            conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
            for r in conn.execute(
                """SELECT i.indexrelid::regclass::text AS name,
                          pg_relation_size(i.indexrelid) AS bytes,
                          (bt_metap(i.indexrelid::regclass::text)).level + 1 AS levels
                   FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
                   WHERE c.relname = 'inbox'"""
            ).fetchall():
                sizes[r["name"]] = {"mb": round(r["bytes"] / 2**20), "levels": r["levels"]}
        conn.rollback()
    return sizes


def run_webhooks(*, large: int, small: int, repeats: int) -> tuple[list[Row], dict[str, Any]]:
    """Retention and the inbox's hot statements at `large` webhooks against `small`, in
    two databases of one server, with retention running: `repeats` rounds, each the hot
    statements and one retention batch at both sizes, the sizes taking turns; every
    figure has `repeats` samples per size (prunes: a third each). What the rest of the
    machine does falls on both alike, and a ratio of two such medians holds on a loaded
    machine. Each figure is held to <= 1.2x twice: the time as the worker sees it
    (client side), and the CPU time the Postgres backend spent on it (on a CPU, from
    /proc; the time it waited for one is printed beside it). The plans at the large
    size must read no large table whole."""
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    urls: dict[int, str] = {}
    sizes = (small, large)
    with stack() as bench:
        for n in sizes:
            url, generated = _generated_database(bench, f"bench_webhooks_{n}", _bulk_load, n)
            tables = _table_sizes(url)
            print(f"  {n:,} webhooks generated in {generated:.0f} s: {tables}", flush=True)
            urls[n] = url
            results[str(n)] = {"generate_seconds": generated, "tables": tables}
        inside = _inside(urls, repeats=5 if repeats >= 50 else 2)
        samples = {n: {figure: _Samples() for figure in FIGURES} for n in sizes}
        rng = random.Random(11)
        refills = {n: 0 for n in sizes}
        from ordersync.db import sync_pool

        started = time.monotonic()
        with contextlib.ExitStack() as stack_:
            conns = {
                n: stack_.enter_context(psycopg.connect(url, row_factory=dict_row))
                for n, url in urls.items()
            }
            pools = {n: sync_pool(url, max_size=1) for n, url in urls.items()}
            for pool in pools.values():
                stack_.callback(pool.close)
            _interleaved(conns, pools, samples, repeats, rng, refills)
        results["measure_seconds"] = time.monotonic() - started
        for n in sizes:
            results[str(n)]["figures"] = {f: samples[n][f].summary() for f in FIGURES}
            results[str(n)]["inside"] = inside[n]
            results[str(n)]["backlog_refills"] = refills[n]
    results["load_after"] = os.getloadavg()
    rows: list[Row] = []
    lines = []
    for figure in FIGURES:
        held = figure in HELD
        base, value = results[str(small)]["figures"][figure], results[str(large)]["figures"][figure]
        rows.append(
            Row(
                f"{figure} @{large:,} webhooks",
                value["wall_ms"],
                "ms",
                base["wall_ms"],
                f"<= 1.2x @{small:,}" if held else "",
                value["wall_ms"] <= 1.2 * base["wall_ms"] if held else None,
            )
        )
        if value["backend_cpu_ms"] == value["backend_cpu_ms"]:  # not NaN: a local server
            rows.append(
                Row(
                    f"{figure}, Postgres backend CPU @{large:,} webhooks",
                    value["backend_cpu_ms"],
                    "ms",
                    base["backend_cpu_ms"],
                    f"<= 1.2x @{small:,}" if held else "",
                    value["backend_cpu_ms"] <= 1.2 * base["backend_cpu_ms"] if held else None,
                )
            )
        lines.append(
            f"  {figure}: {value['samples']} / {base['samples']} samples; backend waited for a"
            f" CPU {value['backend_wait_ms']:.2f} / {base['backend_wait_ms']:.2f} ms (median)"
        )
    scans = []
    for figure in FIGURES:
        for n in sizes:
            b = results[str(n)]["inside"][figure]
            lines.append(
                f"  inside Postgres @{n:,}: {figure}: {b['ms']:.2f} ms, buffers hit {b['hit']:.0f}"
                f" / read {b['read']:.0f} ({b['read_ms']:.2f} ms) / dirtied {b['dirtied']:.0f};"
                f" {' > '.join(b['nodes'])}"
            )
        scans += _seq_scans(results[str(large)]["inside"][figure]["nodes"])
    rows.append(
        Row(
            f"plans @{large:,} webhooks: Seq Scans of {', '.join(LARGE_TABLES)}",
            float(len(scans)),
            "",
            None,
            "0",
            not scans,
        )
    )
    lines.append(
        f"  backlog written again: {refills}; measured in {results['measure_seconds']:.0f} s;"
        f" load average {results['load_before']} -> {results['load_after']}"
    )
    print("\n".join(lines), flush=True)
    return rows, {"webhooks": [small, large], "results": results, "load_average": os.getloadavg()}
