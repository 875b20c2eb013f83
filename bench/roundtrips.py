"""Round trips of one operation, end to end: `python -m bench.roundtrips [--profile N]`.

One order read from Klarna already, one line shipped: its next step is one capture (the
worker bench's workload). The reconciler runs it in this process on the worker's own
context, with every Postgres connection traced by libpq (each ReadyForQuery ends one
round trip; the statement that caused it is listed), every HTTP request to the PSP
counted, the jobs it enqueues collected (each one a Redis round trip and a task), and
its log lines counted. The order's shop callback (`order.synced`) is then delivered the
same way, since the task each operation causes is part of its cost.

`--profile N` also runs N more such operations one after another in this process
under py-spy (`record --gil --format raw`, the bench extra) and prints where the CPU of
one operation goes (bench/profile.py's summary). Diagnostic: it makes no claim on a
target.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, Stack, stack
from bench.fixtures import synced_orders


def _messages(trace: str) -> list[tuple[str, str, str]]:
    """(direction, type, rest) per protocol message; a message's text may span lines."""
    messages: list[list[str]] = []
    for line in trace.splitlines():
        fields = line.split("\t", 3)
        if len(fields) >= 3 and fields[0] in ("F", "B") and fields[1].isdigit():
            messages.append([fields[0], fields[2], fields[3] if len(fields) > 3 else ""])
        elif messages:
            messages[-1][2] += " " + line
    return [(d, t, " ".join(rest.split())) for d, t, rest in messages]


def _quoted(text: str) -> list[str]:
    parts = text.split('"')
    return parts[1::2]


def trips(trace: str, named: dict[str, str] | None = None) -> list[str]:
    """One entry per round trip: the client waits for the server after each Query, Sync
    and (pipeline mode) Flush; the entry lists the statements sent since the last wait.
    A Flush sent right after a Sync waits for nothing more (psycopg leaving a pipeline).
    Statements sent in pipeline mode without waiting share their round trip. `named`
    keeps prepared statements' SQL."""
    named = {} if named is None else named
    result: list[str] = []
    pending: list[str] = []
    previous = ""
    for direction, kind, rest in _messages(trace):
        if direction != "F":
            continue
        if kind == "Parse":
            name, sql = _quoted(rest)[:2]
            if name:
                named[name] = sql
            pending.append(sql)
        elif kind == "Bind":
            name = _quoted(rest)[1]
            if name and (not pending or pending[-1] != named.get(name)):
                pending.append(f"(prepared) {named.get(name, name)}")
        elif kind == "Query":
            result.append(_quoted(rest)[0])
        elif kind in ("Sync", "Flush") and not (kind == "Flush" and previous == "Sync"):
            result.append("; ".join(pending) or f"({kind.lower()})")
            pending = []
        previous = kind
    return result


class Traced:
    """Every connection the pool opens is traced into one file."""

    def __init__(self) -> None:
        handle, name = tempfile.mkstemp(prefix="ordersync-pqtrace-")
        self.path = Path(name)
        self.file = os.fdopen(handle, "w")

    def configure(self, conn: Any) -> None:
        from psycopg import pq

        conn.pgconn.trace(self.file.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def flush(self, pool: Any) -> None:
        # libpq writes through its own buffered stream: untracing flushes it.
        with pool.connection() as conn:
            conn.pgconn.untrace()
            self.configure(conn)

    def mark(self, pool: Any) -> int:
        self.flush(pool)
        return self.path.stat().st_size

    def since(self, pool: Any, offset: int) -> str:
        self.flush(pool)
        with self.path.open() as f:
            f.seek(offset)
            return f.read()


def _context(bench: Stack, traced: Traced | None) -> Any:
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    from ordersync.settings import get_settings
    from workers.context import build_context

    os.environ.update(bench.env)
    get_settings.cache_clear()
    ctx = build_context(get_settings())
    if traced is not None:
        ctx.pool.close()
        ctx.pool = ConnectionPool(
            bench.database_url,
            # One connection, so that one trace stream holds every round trip (the
            # reconciler holds one at a time; the lease heartbeat waits its turn).
            min_size=1,
            max_size=1,
            kwargs={"row_factory": dict_row},
            configure=traced.configure,
            open=True,
        )
        ctx.pool.wait()
    return ctx


def one_operation(bench: Stack, sandbox: str) -> dict[str, Any]:
    from ordersync import jobs
    from ordersync.logging import configure_logging
    from workers import callbacks
    from workers.reconcile import Reconciler

    with bench.db() as conn:
        (warm, order) = synced_orders(conn, sandbox, "rt-", 2, shipped=True, requested=True)
    traced = Traced()
    ctx = _context(bench, traced)
    http: collections.Counter[str] = collections.Counter()

    def count_request(request: Any) -> None:
        http[f"{request.method} {request.url.path.rsplit('/', 1)[-1]}"] += 1

    ctx.http.event_hooks["request"].append(count_request)
    logs = io.StringIO()
    saved, sys.stderr = sys.stderr, logs
    configure_logging("INFO", "json")
    try:
        # A first operation warms the pool, the clients and the snapshot cache.
        with jobs.unit_of_work(lambda _: None):
            Reconciler(ctx, lambda *_: None).run(warm)
        http.clear()
        logs.seek(0)
        logs.truncate()
        sent: list[jobs.Enqueued] = []
        offset = traced.mark(ctx.pool)
        with jobs.unit_of_work(sent.extend):
            outcome = Reconciler(
                ctx, lambda oid, delay: jobs.enqueue_job(jobs.Job.RECONCILE_ORDER, oid, delay=delay)
            ).run(order)
        reconcile_trips = trips(traced.since(ctx.pool, offset))
        reconcile_logs = len(logs.getvalue().splitlines())
        reconcile_http = dict(http)
        http.clear()
        offset = traced.mark(ctx.pool)
        delivered = callbacks.deliver_order(ctx.pool, ctx.http, ctx.settings, order)
        callback_trips = trips(traced.since(ctx.pool, offset))
    finally:
        sys.stderr = saved
        ctx.close()
        traced.file.close()
        traced.path.unlink(missing_ok=True)
    return {
        "outcome": outcome,
        "postgres_round_trips": len(reconcile_trips),
        "round_trips": reconcile_trips,
        "psp_requests": reconcile_http,
        "jobs_enqueued": [f"{job.job.value}({', '.join(map(str, job.args))})" for job in sent],
        "log_lines": reconcile_logs,
        "callback_delivery": {
            "delivered": delivered[0],
            "postgres_round_trips": len(callback_trips),
            "round_trips": callback_trips,
            "http_requests": dict(http),
        },
    }


def profile_operations(bench: Stack, sandbox: str, n: int) -> dict[str, Any]:
    """N operations in a row in this process, sampled by py-spy."""
    from bench.profile import summarise
    from ordersync import jobs
    from ordersync.logging import configure_logging
    from workers.reconcile import Reconciler

    with bench.db() as conn:
        ids = synced_orders(conn, sandbox, "rtp-", n, shipped=True, requested=True)
    ctx = _context(bench, None)
    sink = open(os.devnull, "w")  # noqa: SIM115 - the logs are rendered, then dropped
    saved, sys.stderr = sys.stderr, sink
    configure_logging("INFO", "json")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"roundtrips-profile-{time.strftime('%Y%m%dT%H%M%S')}.raw.txt"
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(os.getpid()),
            "--rate",
            "500",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # py-spy attached
        started = time.monotonic()
        for order_id in ids:
            with jobs.unit_of_work(lambda _: None):
                Reconciler(ctx, lambda *_: None).run(order_id)
        elapsed = time.monotonic() - started
    finally:
        spy.send_signal(2)
        spy.wait(30)
        sys.stderr = saved
        sink.close()
        ctx.close()
    summary = summarise(raw)
    summary |= {"operations": n, "seconds": elapsed, "ms_per_operation": 1000 * elapsed / n}
    summary["gil_ms_per_operation"] = 1000 * summary["samples"] / 500 / n
    return summary


def cpu_operations(
    bench: Stack, sandbox: str, n: int, cprofile: Path | None, batch: int = 1
) -> dict[str, Any]:
    """N operations in a row in this process, each with its callback delivery: the
    process's CPU time (user + system, `time.process_time`) per operation, a figure the
    machine's load hardly moves (the PSP, Postgres and Redis are other processes).
    With `cprofile`, the same under cProfile (CPU-time clock), its stats written there:
    counts of calls are exact, times are inflated by the profiler itself. With `batch`
    > 1, the deliveries of each `batch` operations are one batch's
    (`callbacks.deliver_orders`, as a worker's `deliver_callback_batch` task runs them)."""
    import cProfile

    from ordersync import jobs
    from ordersync.logging import configure_logging
    from workers import callbacks
    from workers.reconcile import Reconciler

    with bench.db() as conn:
        ids = synced_orders(
            conn, sandbox, f"cpu{int(cprofile is not None)}-", n + 20, shipped=True, requested=True
        )
    ctx = _context(bench, None)
    sink = open(os.devnull, "w")  # noqa: SIM115 - the logs are rendered, then dropped
    saved, sys.stderr = sys.stderr, sink
    configure_logging("INFO", "json")

    def some(order_ids: list[str]) -> None:
        for order_id in order_ids:
            with jobs.unit_of_work(lambda _: None):
                Reconciler(ctx, lambda *_: None).run(order_id)
        callbacks.deliver_orders(ctx.pool, ctx.http, ctx.settings, order_ids)

    def chunks(order_ids: list[str]) -> list[list[str]]:
        return [order_ids[i : i + batch] for i in range(0, len(order_ids), batch)]

    profiler = cProfile.Profile(time.process_time) if cprofile is not None else None
    try:
        for chunk in chunks(ids[:20]):  # warm: the pool, the clients, prepared statements
            some(chunk)
        cpu, wall = time.process_time(), time.monotonic()
        if profiler is not None:
            profiler.enable()
        for chunk in chunks(ids[20:]):
            some(chunk)
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    finally:
        sys.stderr = saved
        sink.close()
        ctx.close()
    if profiler is not None and cprofile is not None:
        profiler.dump_stats(str(cprofile))
    return {
        "operations": n,
        "cpu_ms_per_operation": 1000 * cpu / n,
        "wall_ms_per_operation": 1000 * wall / n,
        "load_average": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrips", description=__doc__)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument(
        "--cpu",
        type=int,
        default=0,
        metavar="N",
        help="N operations (each with its callback delivery): this process's CPU-ms each",
    )
    parser.add_argument("--cprofile", type=Path, help="with --cpu: cProfile stats to this file")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="K",
        help="with --cpu: the callbacks of each K operations delivered as one batch",
    )
    args = parser.parse_args(argv)
    with stack() as bench:
        bench.env["SHOP_CALLBACK_SECRET"] = "whsec_" + "QmVuY2hCZW5jaEJlbmNoQmVuY2g="
        sandbox = bench.sandbox()
        bench.env["SHOP_CALLBACK_URL"] = f"{sandbox}/_sandbox/shop/callbacks"
        result = one_operation(bench, sandbox)
        if args.profile:
            result["profile"] = profile_operations(bench, sandbox, args.profile)
        if args.cpu:
            result["cpu"] = cpu_operations(bench, sandbox, args.cpu, None, args.batch)
            if args.cprofile:
                result["cprofile"] = cpu_operations(
                    bench, sandbox, args.cpu, args.cprofile, args.batch
                )
    print(f"one capture, end to end: {result['outcome']}")
    print(f"  Postgres round trips: {result['postgres_round_trips']}")
    for i, trip in enumerate(result["round_trips"], 1):
        print(f"    {i:2}. {trip[:150]}")
    print(f"  PSP requests: {result['psp_requests']}")
    print(f"  jobs enqueued: {result['jobs_enqueued']}")
    print(f"  log lines: {result['log_lines']}")
    delivery = result["callback_delivery"]
    print(
        f"  then the callback task: {delivery['postgres_round_trips']} Postgres round trips, "
        f"HTTP {delivery['http_requests']}"
    )
    for i, trip in enumerate(delivery["round_trips"], 1):
        print(f"    {i:2}. {trip[:150]}")
    if args.profile:
        p = result["profile"]
        print(
            f"  {p['operations']} operations in a row, one thread: "
            f"{p['ms_per_operation']:.2f} ms each, GIL-holding {p['gil_ms_per_operation']:.2f} ms"
        )
        for part, pct in p["parts"].items():
            print(f"    {pct:5.1f} %  {part}")
        print("    on top of the stack:")
        for entry in p["top_self"]:
            print(f"    {entry['pct']:5.1f} %  {entry['frame']}")
    if args.cpu:
        c = result["cpu"]
        print(
            f"  {c['operations']} operations in a row, one thread, each with its callback"
            f" (delivered {args.batch} orders to a batch): "
            f"{c['cpu_ms_per_operation']:.2f} CPU-ms each (wall {c['wall_ms_per_operation']:.2f}"
            f" ms; load average {c['load_average']:.1f})"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "roundtrips-latest.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
