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

import random
import statistics
import time
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
            repeats=repeats or (100 if quick else 300),
            batches=20 if quick else 50,
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

GENERATE_WEBHOOKS = """
INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,
                    desired_amount)
SELECT 'o' || g, 1, 'klarna', 'k-o' || g, 'EUR', 'open', '{}'::jsonb, 8500
FROM generate_series(1, greatest(%(n)s / 10, 1)) AS g;

-- Ten webhooks per order over the last 60 days, oldest first (ids follow received_at,
-- as they do in production); all processed.
INSERT INTO inbox (source, event_key, event_type, order_id, received_at, processed_at,
                   outcome)
SELECT 'shop', 'msg_' || g, 'order.updated', 'o' || (1 + mod(g, greatest(%(n)s / 10, 1))),
       now() - interval '60 days' * (1 - g::float8 / %(n)s),
       now() - interval '60 days' * (1 - g::float8 / %(n)s), 'applied'
FROM generate_series(1, %(n)s) AS g;

-- Each webhook's body, in id order as the receiver writes them (migration 0061).
INSERT INTO inbox_bodies (inbox_id, payload)
SELECT id, '{"type": "order.updated", "order": {"id": "x", "lines": []}}'::jsonb
FROM inbox ORDER BY id;

-- One delivered event to the shop per ten webhooks, over the same 60 days.
INSERT INTO outbox (id, order_id, event_type, version, payload, created_at, delivered_at)
SELECT gen_random_uuid(), 'o' || (1 + mod(g, greatest(%(n)s / 10, 1))), 'order.synced', 1,
       '{}'::jsonb, now() - interval '60 days' * (1 - g::float8 / (%(n)s / 10)),
       now() - interval '60 days' * (1 - g::float8 / (%(n)s / 10))
FROM generate_series(1, greatest(%(n)s / 10, 1)) AS g;
"""


def _hot_queries(url: str, n: int, repeats: int) -> dict[str, float]:
    """Median ms of the statements every webhook and sweep runs against the inbox,
    rolled back: a new shop webhook stored, a repeated one, the Adyen sweep."""
    from bench.traffic import snapshot
    from data.inbox import STORE_SHOP_EVENT
    from domain.snapshot import ShopEvent
    from service.ingest import single_params

    rng = random.Random(11)
    orders = max(n // 10, 1)
    times: dict[str, list[float]] = {"store new webhook": [], "store repeated webhook": []}
    times["sweep: Adyen notifications"] = []
    with psycopg.connect(url, row_factory=dict_row) as conn:
        for i in range(repeats + 5):
            order = f"o{rng.randint(1, orders)}"
            event = ShopEvent.model_validate({"type": "order.updated", "order": snapshot(order, 2)})
            for name, key in (
                ("store new webhook", f"new_{i}_{rng.random()}"),
                ("store repeated webhook", f"msg_{rng.randint(1, n)}"),
            ):
                start = time.perf_counter()
                conn.execute(STORE_SHOP_EVENT, single_params(key, event)).fetchall()
                elapsed = time.perf_counter() - start
                conn.rollback()
                if i >= 5:
                    times[name].append(elapsed * 1000)
            if i % 10 == 0:
                start = time.perf_counter()
                conn.execute(inbox.DUE_NOTIFICATIONS, PARAMS).fetchall()
                times["sweep: Adyen notifications"].append((time.perf_counter() - start) * 1000)
                conn.rollback()
    return {name: statistics.median(values) for name, values in times.items()}


def _prune_batches(url: str, batches: int) -> dict[str, float]:
    """Median ms per 1,000 rows of a retention batch of each kind (workers/retention.py,
    default settings: 1,000-row batches), over up to `batches` consecutive batches."""
    from ordersync.db import sync_pool
    from ordersync.settings import Settings
    from workers import retention

    settings = Settings()
    pool = sync_pool(url, max_size=1)
    out: dict[str, float] = {}
    try:
        for name, one in (
            (
                "prune: inbox bodies, per 1k rows",
                lambda: retention._inbox_pass(
                    pool,
                    "inbox_bodies",
                    inbox.DELETE_BODIES,
                    settings.retention_body_days * retention.DAY,
                    settings.retention_batch,
                ),
            ),
            (
                "prune: inbox keys, per 1k rows",
                lambda: retention._inbox_pass(
                    pool,
                    "inbox_keys",
                    inbox.DELETE_KEYS,
                    settings.retention_key_days * retention.DAY,
                    settings.retention_batch,
                ),
            ),
            (
                "prune: delivered outbox, per 1k rows",
                lambda: retention._outbox_batch(
                    pool, settings.retention_outbox_days * retention.DAY, settings.retention_batch
                ),
            ),
        ):
            # Per 1,000 rows pruned, over the batches that pruned any: a small inbox runs
            # out of old rows sooner, and an empty batch would flatter it.
            times = []
            for _ in range(batches):
                start = time.perf_counter()
                result = one()
                elapsed = (time.perf_counter() - start) * 1000
                if result["pruned"]:
                    times.append(elapsed * 1000 / result["pruned"])
                if not result["more"]:
                    break
            out[name] = statistics.median(times) if times else float("nan")
    finally:
        pool.close()
    return out


def _buffers(url: str, n: int) -> dict[str, dict[str, float]]:
    """Inside Postgres, for one new webhook stored and one body-prune batch (each rolled
    back): execution time and buffers hit / read from outside shared_buffers / dirtied,
    from EXPLAIN (ANALYZE, BUFFERS). The counts do not depend on the machine's load, so
    they say whether a statement's work grows with the table when its timing is noise."""
    from bench.traffic import snapshot
    from data.inbox import STORE_SHOP_EVENT
    from domain.snapshot import ShopEvent
    from service.ingest import single_params

    event = ShopEvent.model_validate(
        {"type": "order.updated", "order": snapshot(f"o{max(n // 20, 1)}", 2)}
    )
    out: dict[str, dict[str, float]] = {}
    with psycopg.connect(url, row_factory=dict_row) as conn:
        after = conn.execute(
            "SELECT last_id FROM retention_cursor WHERE name = 'inbox_bodies'"
        ).fetchone()
        assert after is not None
        ids = [
            r["id"]
            for r in conn.execute(
                "SELECT id FROM inbox WHERE id > %s ORDER BY id LIMIT 1000", (after["last_id"],)
            ).fetchall()
        ]
        conn.rollback()
        for name, query, params in (
            ("store new webhook", STORE_SHOP_EVENT, single_params(f"diag_{n}", event)),
            ("prune: inbox bodies, one batch", inbox.DELETE_BODIES, {"ids": ids}),
        ):
            explain = conn.execute(
                sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + sql.SQL(query), params
            ).fetchone()
            conn.rollback()
            assert explain is not None
            top = explain["QUERY PLAN"][0]
            plan = top["Plan"]
            out[name] = {
                "ms": top["Execution Time"],
                "hit": plan.get("Shared Hit Blocks", 0),
                "read": plan.get("Shared Read Blocks", 0),
                "dirtied": plan.get("Shared Dirtied Blocks", 0),
            }
    return out


def _outbox_plan(url: str) -> list[str]:
    from workers import retention

    with psycopg.connect(url, row_factory=dict_row) as conn:
        explain = conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) ") + sql.SQL(outbox.DELETE_DELIVERED),
            {"age": 7 * retention.DAY, "batch": 1000},
        ).fetchone()
        conn.rollback()
    assert explain is not None
    return _nodes(explain["QUERY PLAN"][0]["Plan"])


def _generated_database(bench: Any, name: str, generate: str, n: int) -> tuple[str, float]:
    """A database of its own, migrated, filled by `generate` for `n`, vacuumed and
    checkpointed so that what is timed next starts from the same state; its URL and
    how long filling it took."""
    with bench.db() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(bench.database_url)._replace(path=f"/{name}"))
    migrate(url)
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in generate.split(";\n"):
            if statement.strip():
                conn.execute(statement, {"n": n})
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    return url, time.monotonic() - started


def run_webhooks(
    *, large: int, small: int, repeats: int, batches: int, rounds: int = 3
) -> tuple[list[Row], dict[str, Any]]:
    results: dict[str, Any] = {}
    urls: dict[int, str] = {}
    with stack() as bench:
        for n in (small, large):
            url, generated = _generated_database(bench, f"bench_webhooks_{n}", GENERATE_WEBHOOKS, n)
            print(f"  {n:,} webhooks generated in {generated:.0f} s", flush=True)
            urls[n] = url
            results[str(n)] = {"generate_seconds": generated, "rounds": []}
        # Sizes alternate, so that whatever else the machine does falls on both; each
        # figure keeps its best round. Pruning moves on each round (the next batches).
        for _ in range(rounds):
            for n, url in urls.items():
                figures = {
                    **_hot_queries(url, n, repeats),
                    **_prune_batches(url, max(1, batches // rounds)),
                }
                results[str(n)]["rounds"].append(figures)
        for n, url in urls.items():
            per_round = results[str(n)]["rounds"]
            results[str(n)]["best"] = {
                figure: min(
                    (r[figure] for r in per_round if r[figure] == r[figure]),  # not NaN
                    default=float("nan"),
                )
                for figure in per_round[0]
            }
            results[str(n)]["outbox_plan"] = _outbox_plan(url)
            results[str(n)]["buffers"] = _buffers(url, n)
    rows = []
    for figure, base in results[str(small)]["best"].items():
        value = results[str(large)]["best"][figure]
        rows.append(
            Row(
                f"{figure} @{large:,} webhooks",
                value,
                "ms",
                base,
                f"<= 1.2x @{small:,}",
                value <= 1.2 * base,
            )
        )
    print(f"  prune: delivered outbox: {' > '.join(results[str(large)]['outbox_plan'])}")
    for n in (small, large):
        for name, b in results[str(n)]["buffers"].items():
            print(
                f"  inside Postgres @{n:,}: {name}: {b['ms']:.1f} ms, buffers hit {b['hit']:.0f}"
                f" / read {b['read']:.0f} / dirtied {b['dirtied']:.0f}"
            )
    return rows, {"webhooks": [small, large], "results": results}
