"""What a worker waits on: `python -m bench.waits [--pool prefork:2] [-n N]`.

The worker bench's backlog (orders one capture away from in sync, queued as the product
queues them) drained by one worker while
- Postgres's view of the worker's backends is sampled every ~2 ms (`pg_stat_activity`:
  `active` with no wait event is a backend computing; `ClientRead` is a backend waiting
  for the worker; `WALSync`/`WALWrite`/`WalSync…` is a commit waiting for its flush;
  `Lock` a row lock), and
- py-spy samples the worker's pool children with `--idle` (every thread, running or not)
  so each sample says where a child's wall time goes: in a Postgres round trip, the PSP
  call, the broker, or Python.

Also printed: the server's durability settings (`fsync`, `synchronous_commit`,
`wal_sync_method`, `commit_delay`) and what an 8 KiB `fdatasync` costs in the
server's own data directory (p50/p90/p99 of 300), measured before the drain. And
`pg_stat_wal`'s syncs per operation over the drain. Diagnostic: it makes no claim on
a target.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import RESULTS_DIR, Stack, stack
from bench.fixtures import queue_reconciles, synced_orders
from bench.profile import raw_stacks
from bench.worker import _pid, stack_pids, tree_cpu_seconds

SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "commit_delay",
    "commit_siblings",
    "full_page_writes",
    "wal_buffers",
    "shared_buffers",
    "shared_preload_libraries",
)


def fdatasync_ms(directory: Path, n: int = 300) -> dict[str, float]:
    """An 8 KiB overwrite and its fdatasync, as a WAL flush of one commit does."""
    path = directory / "ordersync-bench-fdatasync"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 8192
        os.pwrite(fd, block * 64, 0)
        os.fsync(fd)
        times = []
        for i in range(n):
            os.pwrite(fd, block, (i % 64) * 8192)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    times.sort()
    return {
        "p50": times[n // 2],
        "p90": times[n * 9 // 10],
        "p99": times[n * 99 // 100],
        "mean": statistics.fmean(times),
    }


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Sampler(threading.Thread):
    """pg_stat_activity of every backend but its own and `skip`, every ~2 ms."""

    def __init__(self, url: str, skip: set[int]) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)
        self.skip = skip | {self.conn.info.backend_pid}
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        query = (
            "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity"
            " WHERE backend_type = 'client backend'"
        )
        while not self.stop.is_set():
            rows = self.conn.execute(query).fetchall()
            for pid, state, wtype, wevent in rows:
                if pid in self.skip:
                    continue
                if state == "idle":
                    what = "idle (between transactions)"
                elif state == "active" and wevent is None:
                    what = "active, computing"
                else:
                    what = f"{state}: {wtype}/{wevent}"
                self.counts[what] += 1
            self.samples += 1
            time.sleep(0.002)
        self.conn.close()


def spy_argv(py_spy: Path, raw: Path, pid: int) -> list[str]:
    """py-spy's sampling of one child, every thread (`--idle`: wall time, not CPU).
    `--nonblocking`: a blocking py-spy stops the child for each sample, and on a loaded
    machine a stop lasts until py-spy itself gets a CPU. The sampled child then ran 3.6x
    slower than its sibling (587 against 2,117 operations) and its first round trip 4.7x
    longer (7.7 against 1.6 ms mean), so its shares described the sampling, not the
    worker (docs/performance.md, round 8)."""
    return [
        str(py_spy),
        "record",
        "--idle",
        "--nonblocking",
        "--rate",
        "1000",
        "--format",
        "raw",
        "--output",
        str(raw),
        "--pid",
        str(pid),
    ]


# Where a pool child's wall time goes, by the innermost frame of an --idle sample: a
# wait for Postgres (named by the data/ or ordersync/db.py function that waited: the
# `pipelined` block's exit is its commit), the PSP's answer, or anything else (Python
# running, or waiting for the GIL).
def _where(frames: list[str]) -> str:
    leaf = frames[-1]
    if "Connection.wait" in leaf:
        own = [f for f in frames if "data/" in f or "ordersync/db.py" in f]
        return "Postgres: " + (own[-1].split(" (")[0] if own else "?")
    if "SocketIO.readinto" in leaf:
        return "PSP answer (socket read)"
    return "Python (running or waiting for the GIL)"


def summarise_idle(raw: Path) -> dict[str, Any]:
    where: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in raw_stacks(raw):
        # Only the thread that runs tasks: the heartbeat and Celery's own threads idle.
        if not any("reconcile" in f for f in frames):
            continue
        total += count
        where[_where(frames)] += count
    return {
        "samples": total,
        "where": {k: round(100 * v / max(total, 1), 1) for k, v in where.most_common()},
    }


def run(bench: Stack, pool: str, concurrency: int, n: int, env: dict[str, str]) -> dict[str, Any]:
    sandbox = bench.sandbox()
    with bench.db() as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[f"{name}"]  # type: ignore[index]
            for name in SETTINGS
        }
        data_dir = Path(conn.execute("SHOW data_directory").fetchone()["data_directory"])  # type: ignore[index]
    sync = fdatasync_ms(data_dir / "pg_wal") if os.access(data_dir / "pg_wal", os.W_OK) else {}
    with bench.db() as conn:
        ids = synced_orders(conn, sandbox, "wt-", n, shipped=True, requested=True)
    queue_reconciles(ids)
    poll = psycopg.connect(bench.database_url, autocommit=True)

    def done() -> int:
        row = poll.execute(
            "SELECT count(*) FROM operations WHERE order_id LIKE 'wt-%' AND status = 'succeeded'"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def wal() -> tuple[int, int, int]:
        row = poll.execute("SELECT wal_records, wal_bytes::bigint, 0 FROM pg_stat_wal").fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), 0

    worker = bench.worker("worker-waits", pool=pool, concurrency=concurrency, env=env)
    sampler = None
    spy = None
    raw = RESULTS_DIR / f"waits-{time.strftime('%Y%m%dT%H%M%S')}.raw.txt"
    try:
        while done() == 0:
            time.sleep(0.01)
        pid = _pid(worker)
        assert pid is not None
        children = _children(pid) if pool == "prefork" else [pid]
        sampler = Sampler(bench.database_url, {poll.info.backend_pid})
        first, first_time = done(), time.monotonic()
        wal_before = wal()
        cpu_pg = tree_cpu_seconds(stack_pids(bench)["postgres"])
        cpu_worker = tree_cpu_seconds(pid)
        sampler.start()
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        cpu_children = {child: tree_cpu_seconds(child) for child in children}
        spy = subprocess.Popen(
            spy_argv(Path(sys.executable).with_name("py-spy"), raw, children[0]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while done() < n * 0.9:
            time.sleep(0.02)
        last, last_time = done(), time.monotonic()
        wal_after = wal()
        cpu_pg = tree_cpu_seconds(stack_pids(bench)["postgres"]) - cpu_pg
        cpu_worker = tree_cpu_seconds(pid) - cpu_worker
        cpu_children = {c: tree_cpu_seconds(c) - before for c, before in cpu_children.items()}
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        if sampler is not None:
            sampler.stop.set()
            sampler.join()
        bench.stop("worker-waits")
        poll.close()
    ops = max(last - first, 1)
    total = sum(sampler.counts.values()) if sampler else 0
    return {
        "pool": f"{pool}x{concurrency}",
        "settings": settings,
        "fdatasync_ms_in_pg_wal": sync,
        "ops_per_s": ops / (last_time - first_time),
        "load_average": os.getloadavg()[0],
        "wal_records_per_op": (wal_after[0] - wal_before[0]) / ops,
        "wal_bytes_per_op": (wal_after[1] - wal_before[1]) / ops,
        "cpu_ms_per_op": {"worker_tree": 1000 * cpu_worker / ops, "postgres": 1000 * cpu_pg / ops},
        "backends": {k: round(100 * v / max(total, 1), 1) for k, v in sampler.counts.most_common()}
        if sampler
        else {},
        "backend_samples": total,
        "child": summarise_idle(raw) if raw.exists() else {},
        # The sampled child's share of its pool's CPU: about 1/children when the sampling
        # does not slow it (a blocking py-spy at 1000 Hz left it 22 % of the operations
        # of two children, round 8).
        "sampled_child_cpu_share": round(
            cpu_children.get(children[0], 0.0) / max(sum(cpu_children.values()), 1e-9), 3
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waits", description=__doc__)
    parser.add_argument("--pool", default="prefork:2")
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument(
        "--pgoption",
        action="append",
        default=[],
        help="a PGOPTIONS -c setting for the worker's connections (diagnostic only)",
    )
    args = parser.parse_args(argv)
    pool, concurrency = args.pool.split(":")
    env = {"PGOPTIONS": " ".join(f"-c {o}" for o in args.pgoption)} if args.pgoption else {}
    with stack() as bench:
        result = run(bench, pool, int(concurrency), args.n, env)
    print(json.dumps(result, indent=2, default=str))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "waits-latest.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
