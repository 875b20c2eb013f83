"""Worker: completed PSP operations per second, against Celery's own no-op drain rate.

The queue is filled first (N tasks), then one worker process is started and the bench
polls how many are done. Baseline: a no-op task on the same broker settings, pool and
concurrency. ordersync: N orders whose next step is one capture (lock the order, plan,
record the operation with its key, call the sandbox, record the outcome, plan again: in
sync), marked for a reconcile as the receiver leaves them, queued twice over:

- as the product queues such a backlog (the goal's figure): the worker's own sender,
  which sends the orders one unit of work asks for (a sweep finding them) ten to a
  `reconcile_orders` message (ordersync.jobs.batch_reconciles), as the web's publisher
  does with the webhooks' orders it finds queued together;
- one `reconcile_order` message per order (what orders that arrive one at a time get;
  the figure of rounds 1-4).

Then the same with every sandbox request delayed 100 ms.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis
from devrig.devstack import Process

from bench import noop_app
from bench.common import Row, Stack, stack
from bench.fixtures import queue_reconciles, synced_orders
from service.app import redis_client_url

# The worker's goal against Celery's no-op drain at the same pool and concurrency.
GOAL_VS_NOOP = 0.35


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu_seconds(root: int | None, exclude: frozenset[int] = frozenset()) -> float:
    """User + system CPU of `root` and its live children, plus what its reaped children
    used (cutime, cstime): Postgres's postmaster and every backend it forked. Children
    in `exclude` (the bench's own polling backend) are not counted."""
    if root is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = _stat(root)
    except (OSError, IndexError):
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 of stat(5); the split starts at 3.
    total = sum(int(f) for f in fields[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat(int(entry.name))
        except (OSError, IndexError):
            continue
        # ppid is field 4.
        if int(child[1]) == root and int(entry.name) not in exclude:
            total += int(child[11]) + int(child[12])
    return total / tick


def consumer_schedstat(pid: int | None) -> tuple[float, float]:
    """Seconds the process's main thread (Celery's consumer: it fetches every message,
    one at a time) has run and has waited runnable for a CPU (Linux schedstat)."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def _drain(
    done: Callable[[], int],
    total: int,
    timeout: float,
    pid: int | None = None,
    others: dict[str, int | None] | None = None,
    exclude: frozenset[int] = frozenset(),
) -> dict[str, float]:
    """Polls `done` until it reaches `total`; rate from the first completion to the last,
    and the CPU the process `pid` used per completion over the same span (and each of
    `others`, a process and its children: Postgres, Redis, the sandbox)."""
    others = others or {}
    first: float | None = None
    deadline = time.monotonic() + timeout
    while True:
        count = done()
        now = time.monotonic()
        if first is None and count > 0:
            first, first_count, first_cpu = now, count, cpu_seconds(pid)
            first_consumer = consumer_schedstat(pid)
            first_others = {name: tree_cpu_seconds(p, exclude) for name, p in others.items()}
        if count >= total:
            break
        if now > deadline:
            raise TimeoutError(f"only {count}/{total} done after {timeout:.0f} s")
        time.sleep(0.02)
    assert first is not None
    elapsed = max(now - first, 1e-3)
    finished = max(total - first_count, 1)
    consumer = consumer_schedstat(pid)
    per_op = {
        f"{name}_cpu_ms_per_op": (tree_cpu_seconds(p, exclude) - first_others[name])
        * 1000
        / finished
        for name, p in others.items()
    }
    return {
        **per_op,
        # The consumer thread's share per message: the CPU it used and the time it was
        # ready to run but waited for a core (on a loaded machine, the larger one).
        "consumer_cpu_ms_per_op": (consumer[0] - first_consumer[0]) * 1000 / finished,
        "consumer_runqueue_ms_per_op": (consumer[1] - first_consumer[1]) * 1000 / finished,
        "rate": (total - first_count) / elapsed,
        "seconds": elapsed,
        # CPU-ms per operation × operations per second = the share of a core it takes.
        "cpu_ms_per_op": (cpu_seconds(pid) - first_cpu) * 1000 / finished,
    }


def _pid(process: Process) -> int | None:
    return process.popen.pid if process.popen is not None else None


def stack_pids(bench: Stack) -> dict[str, int | None]:
    """The other processes an operation costs CPU in: Postgres (its postmaster, whose
    children are the backends), Redis and the sandbox PSP."""
    postmaster: int | None = None
    if bench.postgres is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pidfile = bench.postgres.data_dir / "postmaster.pid"
            postmaster = int(pidfile.read_text().split()[0])
    redis_process = bench.redis.process
    sandbox = bench.processes.get("sandbox")
    return {
        "postgres": postmaster,
        "redis": redis_process.pid if redis_process is not None else None,
        "sandbox": _pid(sandbox) if sandbox is not None else None,
    }


def noop_rate(bench: Stack, *, pool: str, concurrency: int, n: int) -> dict[str, float]:
    client = redis.Redis.from_url(redis_client_url(bench.redis.url))
    with noop_app.app.producer_or_acquire() as producer:
        for i in range(n):
            noop_app.noop.apply_async((i,), producer=producer)
    queued = client.llen(noop_app.QUEUE)
    assert queued == n, f"{queued} queued of {n}"
    process = bench.start(
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
        return _drain(
            lambda: n - int(client.llen(noop_app.QUEUE)),
            n,
            timeout=120,
            pid=_pid(process),
            others={"worker_tree": _pid(process), **stack_pids(bench)},
        )
    finally:
        bench.stop("noop")


def reconcile_rate(
    bench: Stack,
    sandbox: str,
    *,
    prefix: str,
    pool: str,
    concurrency: int,
    n: int,
    timeout: float,
    callbacks: bool = False,
    single: bool = False,
) -> dict[str, float]:
    """With `callbacks`, the shop's callback URL is configured (as in production): each
    operation's `order.synced` is delivered too, and an operation is done once it is.
    The orders are queued as bench/fixtures.py queue_reconciles says (`single`: one
    message per order)."""
    with bench.db() as conn:
        ids = synced_orders(conn, sandbox, prefix, n, shipped=True, requested=True)
    queue_reconciles(ids, single=single)

    counted = (
        "SELECT count(*) AS n FROM outbox WHERE order_id LIKE %s AND delivered_at IS NOT NULL"
        if callbacks
        else "SELECT count(*) AS n FROM operations WHERE order_id LIKE %s AND status = 'succeeded'"
    )

    # One connection for the polls, its backend left out of Postgres's CPU: a connection
    # per poll cost Postgres a backend's start-up every 20 ms, more than the operations.
    poll = psycopg.connect(bench.database_url, autocommit=True)

    def done() -> int:
        row = poll.execute(counted, (prefix + "%",)).fetchone()
        assert row is not None
        return int(row[0])

    env = (
        {
            "SHOP_CALLBACK_URL": f"{sandbox}/_sandbox/shop/callbacks",
            "SHOP_CALLBACK_SECRET": "whsec_" + "QmVuY2hCZW5jaEJlbmNoQmVuY2g=",
        }
        if callbacks
        else {}
    )
    name = f"worker-{prefix.rstrip('-')}"
    worker = bench.worker(name, pool=pool, concurrency=concurrency, env=env)
    try:
        result = _drain(
            done,
            n,
            timeout,
            pid=_pid(worker),
            others={"worker_tree": _pid(worker), **stack_pids(bench)},
            exclude=frozenset({poll.info.backend_pid}),
        )
    finally:
        bench.stop(f"worker-{prefix.rstrip('-')}")
        poll.close()
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


def _cpu(figures: dict[str, float]) -> str:
    """CPU-ms per task of every process it cost: the worker with its pool's children,
    Postgres with its backends, Redis, the sandbox."""
    names = ("worker_tree", "postgres", "redis", "sandbox")
    parts = [f"{name} {figures.get(name + '_cpu_ms_per_op', 0.0):.2f}" for name in names]
    total = sum(figures.get(name + "_cpu_ms_per_op", 0.0) for name in names)
    return f"CPU-ms per task: {total:.2f} = " + " + ".join(parts)


def run(
    *,
    quick: bool,
    psp_delay_ms: int | None = None,
    concurrency: int | None = None,
    callbacks: bool = False,
    pools: str | None = None,
    backlog_only: bool = False,
) -> tuple[list[Row], dict[str, Any]]:
    """`psp_delay_ms` given: only the slow-PSP round, at that delay (and `concurrency`
    threads), to find what caps it without the no-op and at-once rounds around it.
    `callbacks`: the shop's callback URL configured, each operation done once its
    `order.synced` is delivered (production's work per operation; the issue's figure
    is measured without)."""
    n = 800 if quick else 4000
    n_slow = 600 if quick else 3000
    configs = [("threads", 16)] if quick else [("prefork", 2), ("threads", 16)]
    if pools:
        # Each pool against a no-op drain of the same pool and concurrency.
        configs = [(pool, int(n)) for pool, n in (p.split(":") for p in pools.split(","))]
    if psp_delay_ms is not None:
        configs = []
    delay_ms = 100 if psp_delay_ms is None else psp_delay_ms
    # Threads waiting on a slow PSP cost little: more of them, not more processes.
    slow_concurrency = concurrency or 64
    rows: list[Row] = []
    extra: dict[str, Any] = {"tasks": n, "configs": []}
    with stack() as bench:
        sandbox = bench.sandbox()
        for pool, threads in configs:
            base = noop_rate(bench, pool=pool, concurrency=threads, n=n)
            print(
                f"  no-op     {pool}x{threads}: {base['rate']:7.0f} tasks/s ({_cpu(base)})",
                flush=True,
            )
            measured: dict[str, Any] = {"pool": pool, "concurrency": threads, "noop": base}
            for single in (False,) if backlog_only else (False, True):
                how = "one order per message" if single else "as the product queues a backlog"
                real = reconcile_rate(
                    bench,
                    sandbox,
                    prefix=f"w{pool[0]}{threads}{'s' if single else 'b'}-",
                    pool=pool,
                    concurrency=threads,
                    n=n,
                    timeout=300,
                    callbacks=callbacks,
                    single=single,
                )
                print(
                    f"  reconcile {pool}x{threads}, {how}: {real['rate']:7.0f} ops/s"
                    f" ({real['cpu_ms_per_op']:.1f} CPU-ms/op in the worker's main process;"
                    f" {_cpu(real)}; load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
                rows.append(
                    Row(
                        f"ops/s, sandbox at once, --pool {pool} --concurrency {threads}, {how}",
                        real["rate"],
                        "ops/s",
                        base["rate"],
                        f">= {GOAL_VS_NOOP}x no-op",
                        real["rate"] >= GOAL_VS_NOOP * base["rate"],
                    )
                )
                measured["reconcile_single" if single else "reconcile"] = real
            extra["configs"].append(measured)
        if backlog_only:
            return rows, extra
        bench.sandbox(delay_ms=delay_ms)
        if not quick:
            # The figure as it was measured: one order per message.
            lone = reconcile_rate(
                bench,
                sandbox,
                prefix="slows-",
                pool="threads",
                concurrency=slow_concurrency,
                n=n_slow,
                timeout=300,
                callbacks=callbacks,
                single=True,
            )
            print(
                f"  reconcile threads x{slow_concurrency}, {delay_ms} ms PSP, one order per"
                f" message: {lone['rate']:7.0f} ops/s ({lone['cpu_ms_per_op']:.1f} CPU-ms/op;"
                f" load average {os.getloadavg()[0]:.1f}; {_cpu(lone)})",
                flush=True,
            )
            rows.append(
                Row(
                    f"ops/s, PSP {delay_ms} ms, one process, --pool threads --concurrency"
                    f" {slow_concurrency}, one order per message",
                    lone["rate"],
                    "ops/s",
                    None,
                    ">= 200 ops/s",
                    lone["rate"] >= 200,
                )
            )
            extra["slow_single"] = lone
        slow = reconcile_rate(
            bench,
            sandbox,
            prefix="slow-",
            pool="threads",
            concurrency=slow_concurrency,
            n=n_slow,
            timeout=300,
            callbacks=callbacks,
        )
        print(
            f"  reconcile threads x{slow_concurrency}, {delay_ms} ms PSP, as the product queues"
            f" a backlog: {slow['rate']:7.0f} ops/s"
            f" ({slow['cpu_ms_per_op']:.1f} CPU-ms/op; consumer thread per message:"
            f" {slow['consumer_cpu_ms_per_op']:.2f} ms on a CPU,"
            f" {slow['consumer_runqueue_ms_per_op']:.2f} ms waiting for one; load average"
            f" {os.getloadavg()[0]:.1f}; {_cpu(slow)})",
            flush=True,
        )
        rows.append(
            Row(
                f"ops/s, PSP {delay_ms} ms, one process, "
                f"--pool threads --concurrency {slow_concurrency}, as the product queues a backlog",
                slow["rate"],
                "ops/s",
                None,
                ">= 200 ops/s",
                slow["rate"] >= 200,
            )
        )
        rows.append(Row("CPU per operation at the slow PSP", slow["cpu_ms_per_op"], "ms"))
        rows.append(
            Row(
                "consumer thread waiting for a CPU, per message",
                slow["consumer_runqueue_ms_per_op"],
                "ms",
            )
        )
        extra["slow"] = {
            "pool": "threads",
            "concurrency": slow_concurrency,
            "psp_delay_ms": delay_ms,
            "tasks": n_slow,
            **slow,
        }
    return rows, extra
