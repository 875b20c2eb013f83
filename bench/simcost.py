"""CPU a simulated history costs: `python -m bench.simcost [--first-seed S] [--histories N]`.

Runs the seeds in this process on an embedded server of its own (migrated, prepared and
set up as `ordersync simulate` sets up its own) with `pg_stat_statements` loaded, after
one warm-up history, and prints per history: the client's CPU (getrusage, user + sys),
the server's CPU (every backend of the postmaster, from /proc, plus what its ended
children used), the statements the server executed and their execution time, and the
statements that cost the most. CPU seconds per history hold on a shared machine where
wall-clock rates do not (docs/simulation-speed.md). Diagnostic: it makes no claim.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from devrig.devstack import EmbeddedPostgres, temporary_pg_dir

from devrig import simulation
from ordersync.db import migrate

TICKS = os.sysconf("SC_CLK_TCK")


def _postmaster_procs(data_dir: Path) -> tuple[int, list[tuple[int, int, list[str]]]]:
    """The postmaster's pid, and every process's (pid, ppid, /proc/<pid>/stat fields
    after the command name)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    procs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        procs.append((int(entry), int(fields[1]), fields))
    return postmaster, procs


def _server_cpu(data_dir: Path) -> float:
    """CPU seconds of the postmaster's children, live (utime + stime) and ended (the
    postmaster's cutime + cstime)."""
    postmaster, procs = _postmaster_procs(data_dir)
    total = 0
    for pid, ppid, fields in procs:
        if ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
        if pid == postmaster:
            total += int(fields[13]) + int(fields[14])
    return total / TICKS


def _postmaster_children(data_dir: Path) -> list[int]:
    postmaster, procs = _postmaster_procs(data_dir)
    return [pid for pid, ppid, _ in procs if ppid == postmaster]


def _sched(pids: list[int]) -> dict[tuple[int, str], tuple[int, int]]:
    """Per thread of the processes: (ns on a CPU, ns runnable but waiting for one),
    from /proc/<pid>/task/<tid>/schedstat."""
    out: dict[tuple[int, str], tuple[int, int]] = {}
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                on_cpu, waiting, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            except (OSError, ValueError):
                continue
            out[(pid, tid)] = (int(on_cpu), int(waiting))
    return out


def _sched_delta(
    before: dict[tuple[int, str], tuple[int, int]], after: dict[tuple[int, str], tuple[int, int]]
) -> tuple[float, float]:
    """Seconds on a CPU and waiting for one between two `_sched` reads (threads alive at
    the second; one that ended in between is not counted)."""
    on_cpu = waiting = 0
    for key, (cpu, wait) in after.items():
        cpu0, wait0 = before.get(key, (0, 0))
        on_cpu += cpu - cpu0
        waiting += wait - wait0
    return on_cpu / 1e9, waiting / 1e9


def _count_round_trips() -> collections.Counter[str]:
    """Counts every wait of a psycopg connection for the server (about one round trip
    each) by the first caller outside psycopg, the pool and contextlib."""
    counts: collections.Counter[str] = collections.Counter()
    skip = ("psycopg", "contextlib", "asyncio", "ordersync/db.py")

    def caller() -> str:
        frame = sys._getframe(2)
        while frame is not None and any(s in frame.f_code.co_filename for s in skip):
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return "?"
        name = frame.f_code.co_filename.split("/")[-1]
        return f"{name}:{frame.f_code.co_name}"

    sync_wait = psycopg.Connection.wait
    async_wait = psycopg.AsyncConnection.wait

    def wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts[caller()] += 1
        return sync_wait(self, *args, **kwargs)

    async def await_(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["async " + caller()] += 1
        return await async_wait(self, *args, **kwargs)

    psycopg.Connection.wait = wait  # type: ignore[method-assign]
    psycopg.AsyncConnection.wait = await_  # type: ignore[method-assign]
    return counts


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simcost")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--histories", type=int, default=40)
    parser.add_argument("--top", type=int, default=25, help="statements listed")
    parser.add_argument(
        "--trips", action="store_true", help="count round trips by caller (slower: no CPU)"
    )
    parser.add_argument(
        "--sched",
        action="store_true",
        help="split the wall time: on a CPU, waiting for one, and neither (from schedstat)",
    )
    args = parser.parse_args(argv)
    if "SIMCOST_PREPARE" in os.environ:  # an experiment: psycopg's prepare_threshold
        from psycopg._preparing import PrepareManager

        value = os.environ["SIMCOST_PREPARE"]
        PrepareManager.prepare_threshold = None if value == "none" else int(value)
    base = temporary_pg_dir("ordersync-simcost-")
    postgres = EmbeddedPostgres(base / "data")
    try:
        url = postgres.url
        simulation.throwaway_server(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
            for setting in filter(None, os.environ.get("SIMCOST_SERVER", "").split(";")):
                conn.execute(f"ALTER SYSTEM SET {setting}")  # an experiment's settings
        postgres.restart_immediate()
        with simulation.quiet_logs():
            migrate(url)
        simulation.prepare(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            for statement in filter(None, os.environ.get("SIMCOST_SQL", "").split(";")):
                conn.execute(statement)  # an experiment's schema change
        with simulation.quiet_logs():
            sim = simulation.Simulation(url)
        try:
            with simulation.quiet_logs():
                sim.run(args.first_seed - 1)  # warm-up: imports, caches, prepared plans
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
            trips = _count_round_trips() if args.trips else None
            client, server = _client_cpu(), _server_cpu(base / "data")
            if args.sched:
                sched_client = _sched([os.getpid()])
                sched_server = _sched(_postmaster_children(base / "data"))
                wall = time.perf_counter()
            digests: list[str] = []
            summary = simulation.run_seeds(
                sim,
                range(args.first_seed, args.first_seed + args.histories),
                on_result=lambda result: digests.append(result.digest),
            )
            if args.sched:
                wall = time.perf_counter() - wall
                sched_client_delta = _sched_delta(sched_client, _sched([os.getpid()]))
                sched_server_delta = _sched_delta(
                    sched_server, _sched(_postmaster_children(base / "data"))
                )
            client = _client_cpu() - client
            server = _server_cpu(base / "data") - server
        finally:
            sim.close()
        n = summary.histories
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT calls, total_exec_time + total_plan_time, query, total_plan_time, plans"
                " FROM pg_stat_statements"
                " WHERE query NOT LIKE '%%pg_stat_statements%%' ORDER BY calls DESC"
            ).fetchall()
        calls = sum(r[0] for r in rows)
        executing = sum(r[1] for r in rows)
        planning = sum(r[3] for r in rows)
        plans = sum(r[4] for r in rows)
        print(
            f"seeds {args.first_seed}-{args.first_seed + n - 1}: histories {n}"
            f"  events {summary.events}  faults {summary.faults}"
            f"  violations {summary.violations}  kinds {len(summary.kinds)}"
            # One digest of every history's trace: equal on two trees, the same histories.
            f"  traces {hashlib.sha256(' '.join(digests).encode()).hexdigest()[:16]}"
        )
        print(
            f"per history: client CPU {1000 * client / n:.1f} ms, server CPU"
            f" {1000 * server / n:.1f} ms, total {1000 * (client + server) / n:.1f} ms;"
            f" statements {calls / n:.1f}, server planning + execution {executing / n:.1f} ms"
            f" (planning {planning / n:.1f} ms, {plans / n:.1f} plans)"
        )
        if args.sched:
            # A history is a ping-pong of the client and its backends: at any moment one
            # of them runs or waits for a CPU, unless a message is in transit. What is
            # left of the wall time after the four is that (negative: they overlapped,
            # a pipeline's statements running while the client prepares the next).
            # Waiting for a CPU on a quiet machine is the wake-up of the other side:
            # what more processes than cores, or one core per client and its
            # backends, could take back; on a loaded one it is mostly the load.
            (c_cpu, c_wait), (s_cpu, s_wait) = sched_client_delta, sched_server_delta
            print(
                f"wall per history {1000 * wall / n:.1f} ms: client on a CPU"
                f" {1000 * c_cpu / n:.1f} ms, waiting for one {1000 * c_wait / n:.1f} ms;"
                f" server on a CPU {1000 * s_cpu / n:.1f} ms, waiting for one"
                f" {1000 * s_wait / n:.1f} ms; neither"
                f" {1000 * (wall - c_cpu - c_wait - s_cpu - s_wait) / n:.1f} ms"
                f" (load average {os.getloadavg()[0]:.1f})"
            )
        print("statements per history (calls, exec ms), most called first:")
        for count, ms, query, *_ in rows[: args.top]:
            print(f"  {count / n:7.1f} {ms / n:7.2f}  {' '.join(query.split())[:110]}")
        print("statements planned most per history (plans, planning ms):")
        for _, _, query, plan_ms, plans in sorted(rows, key=lambda r: -r[4])[: args.top]:
            print(f"  {plans / n:7.1f} {plan_ms / n:7.2f}  {' '.join(query.split())[:110]}")
        if trips is not None:
            print(f"round trips per history: {sum(trips.values()) / n:.1f}, by caller:")
            for where, count in trips.most_common(args.top):
                print(f"  {count / n:7.1f}  {where}")
    finally:
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
