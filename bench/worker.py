"""Worker: completed PSP operations per second, against Celery's own no-op drain rate.

The queue is filled first (N tasks), then one worker process is started and the bench
polls how many are done. Baseline: a no-op task on the same broker settings, pool and
concurrency. ordersync: `reconcile_order` for N orders whose next step is one capture
(lock the order, plan, record the operation with its key, call the sandbox, record the
outcome, plan again: in sync). Then the same with every sandbox request delayed 100 ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from bench import noop_app
from bench.common import Row, Stack, stack
from bench.fixtures import synced_orders
from service.app import redis_client_url


def _drain(done: Callable[[], int], total: int, timeout: float) -> dict[str, float]:
    """Polls `done` until it reaches `total`; rate from the first completion to the last."""
    first: float | None = None
    deadline = time.monotonic() + timeout
    while True:
        count = done()
        now = time.monotonic()
        if first is None and count > 0:
            first, first_count = now, count
        if count >= total:
            break
        if now > deadline:
            raise TimeoutError(f"only {count}/{total} done after {timeout:.0f} s")
        time.sleep(0.02)
    assert first is not None
    elapsed = max(now - first, 1e-3)
    return {"rate": (total - first_count) / elapsed, "seconds": elapsed}


def noop_rate(bench: Stack, *, pool: str, concurrency: int, n: int) -> dict[str, float]:
    client = redis.Redis.from_url(redis_client_url(bench.redis.url))
    with noop_app.app.producer_or_acquire() as producer:
        for i in range(n):
            noop_app.noop.apply_async((i,), producer=producer)
    queued = client.llen(noop_app.QUEUE)
    assert queued == n, f"{queued} queued of {n}"
    bench.start(
        "noop",
        [
            "-m",
            "celery",
            "-A",
            "bench.noop_app",
            "--quiet",
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
            "-n",
            "noop@bench",
        ],
        command=True,
    )
    try:
        return _drain(lambda: n - int(client.llen(noop_app.QUEUE)), n, timeout=120)
    finally:
        bench.stop("noop")


def reconcile_rate(
    bench: Stack, sandbox: str, *, prefix: str, pool: str, concurrency: int, n: int, timeout: float
) -> dict[str, float]:
    from workers.tasks import reconcile_order

    with bench.db() as conn:
        ids = synced_orders(conn, sandbox, prefix, n, shipped=True, requested=True)
    with reconcile_order.app.producer_or_acquire() as producer:
        for order_id in ids:
            reconcile_order.apply_async((order_id,), producer=producer)

    def done() -> int:
        with bench.db() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM operations WHERE order_id LIKE %s "
                "AND status = 'succeeded'",
                (prefix + "%",),
            ).fetchone()
        assert row is not None
        return int(row["n"])

    bench.worker(f"worker-{prefix.rstrip('-')}", pool=pool, concurrency=concurrency)
    try:
        result = _drain(done, n, timeout)
    finally:
        bench.stop(f"worker-{prefix.rstrip('-')}")
    with bench.db() as conn:
        row = conn.execute(
            "SELECT count(*) AS ops, count(DISTINCT order_id) AS orders, "
            "count(*) FILTER (WHERE status <> 'succeeded') AS other "
            "FROM operations WHERE order_id LIKE %s",
            (prefix + "%",),
        ).fetchone()
    assert row is not None
    if (row["ops"], row["orders"], row["other"]) != (n, n, 0):
        raise RuntimeError(f"expected {n} succeeded captures, one per order: {row}")
    return result


def run(*, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    n = 800 if quick else 4000
    n_slow = 600 if quick else 3000
    configs = [("threads", 16)] if quick else [("prefork", 2), ("threads", 16)]
    # Threads waiting on a slow PSP cost little: more of them, not more processes.
    slow_concurrency = 64
    rows: list[Row] = []
    extra: dict[str, Any] = {"tasks": n, "configs": []}
    with stack() as bench:
        sandbox = bench.sandbox()
        for pool, concurrency in configs:
            base = noop_rate(bench, pool=pool, concurrency=concurrency, n=n)
            print(f"  no-op     {pool}x{concurrency}: {base['rate']:7.0f} tasks/s", flush=True)
            real = reconcile_rate(
                bench,
                sandbox,
                prefix=f"w{pool[0]}{concurrency}-",
                pool=pool,
                concurrency=concurrency,
                n=n,
                timeout=300,
            )
            print(f"  reconcile {pool}x{concurrency}: {real['rate']:7.0f} ops/s", flush=True)
            rows.append(
                Row(
                    f"ops/s, sandbox at once, --pool {pool} --concurrency {concurrency}",
                    real["rate"],
                    "ops/s",
                    base["rate"],
                    ">= 0.5x no-op",
                    real["rate"] >= 0.5 * base["rate"],
                )
            )
            extra["configs"].append(
                {"pool": pool, "concurrency": concurrency, "noop": base, "reconcile": real}
            )
        bench.sandbox(delay_ms=100)
        slow = reconcile_rate(
            bench,
            sandbox,
            prefix="slow-",
            pool="threads",
            concurrency=slow_concurrency,
            n=n_slow,
            timeout=300,
        )
        print(
            f"  reconcile threads x{slow_concurrency}, 100 ms PSP: {slow['rate']:7.0f} ops/s",
            flush=True,
        )
        rows.append(
            Row(
                f"ops/s, PSP 100 ms, one process, --pool threads --concurrency {slow_concurrency}",
                slow["rate"],
                "ops/s",
                None,
                ">= 200 ops/s",
                slow["rate"] >= 200,
            )
        )
        extra["slow"] = {
            "pool": "threads",
            "concurrency": slow_concurrency,
            "tasks": n_slow,
            **slow,
        }
    return rows, extra
