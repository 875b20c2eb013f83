"""Two trees' receivers against the baseline in one stack: `python -m bench.ingest_ab
TREE_A TREE_B [--rounds N]`.

On a loaded machine two runs of `python -m bench ingest` minutes apart see different
loads; a change of a few per cent of the web process's CPU is lost between them. Here
one Postgres and one Redis serve the naive baseline, the web process of TREE_A and the
web process of TREE_B (each `ordersync web` started in its tree, e.g. a `git archive` of
a commit), and short rounds of signed shop webhooks at 32 connections go to each in
turn, so that every round of each sees nearly the same load. Each tree's server has a
database of its own in that Postgres, migrated by that tree's migrations: a change of
the schema (an index fewer) is part of what is compared. Per round: the rate, the
p99 and the CPU the server's process tree and Postgres used per request; then, per
server, the rate and CPU ratios to the baseline of the same round. Diagnostic: it
holds no target (`python -m bench ingest` does).

It also reads the load generator's CPU per request (its process is this one's child)
and prints each server's total (server, Postgres, load generator) against the
baseline's: when the quiet machine's two cores are full, the rate ratio is about the
inverse of that total ratio (docs/performance.md, issue 20 round 9), which a loaded
machine's rates cannot show.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from devrig.devstack import database_named, free_port, wait_http

from bench.baseline_app import TABLE_SQL
from bench.common import percentile, stack, uvicorn_command
from bench.ingest import CONNECTIONS, _postgres_pid, _tree_cpu_seconds, postgres_cpu_by_kind
from bench.traffic import drive, shop_webhook

_TREE = "BENCH_AB_TREE"


class _InTree(subprocess.Popen):  # type: ignore[type-arg]
    """Popen that starts a process in the tree its environment names (the bench's
    processes are started with `python -m cli`, which imports from the working
    directory first)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        tree = (kwargs.get("env") or {}).get(_TREE)
        if tree:
            kwargs["cwd"] = tree
        super().__init__(*args, **kwargs)


def _children_cpu_seconds() -> float:
    """User + system CPU of this process's children that have ended: the load
    generator's, once `drive` has waited for it."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _pg_cpu(pid: int | None) -> float:
    return _tree_cpu_seconds(pid) if pid is not None else 0.0  # BENCH_DATABASE_URL: not ours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_ab", description=__doc__)
    parser.add_argument("trees", nargs=2, type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    original = subprocess.Popen
    subprocess.Popen = _InTree  # type: ignore[misc]
    try:
        return _run(args)
    finally:
        subprocess.Popen = original  # type: ignore[misc]


def _run(args: argparse.Namespace) -> int:
    rows: dict[str, list[tuple[float, float, float, float, float]]] = {}
    latencies: dict[str, list[float]] = {}
    with stack() as bench:
        with bench.db() as conn:
            conn.execute(TABLE_SQL)
        port = free_port()
        baseline = bench.start(
            "baseline",
            uvicorn_command("bench.baseline_app:create_app", port),
            command=True,
        )
        servers = {"baseline": f"http://127.0.0.1:{port}"}
        wait_http(f"{servers['baseline']}/healthz", process=baseline)
        for label, tree in zip("AB", args.trees, strict=True):
            name = f"{label}:{tree.resolve().name}"
            database = f"ab_{label.lower()}"
            with bench.db() as conn:
                conn.execute(f"CREATE DATABASE {database}")
            url = database_named(bench.database_url, database)
            env = {**os.environ, **bench.env, "DATABASE_URL": url}
            subprocess.run(
                [sys.executable, "-m", "cli", "migrate"],
                cwd=tree.resolve(),
                env=env,
                check=True,
                capture_output=True,
            )
            servers[name] = bench.web(name, env={_TREE: str(tree.resolve()), "DATABASE_URL": url})
        postgres = _postgres_pid(bench)
        secret = bench.env["SHOP_WEBHOOK_SECRETS"].split()[0]
        for r in range(args.rounds):
            for name, url in servers.items():
                tag = uuid.uuid4().hex[:8]
                requests = [shop_webhook(secret, f"ab-{tag}-{i}") for i in range(args.requests)]
                popen = bench.processes[name].popen
                assert popen is not None
                before = (_tree_cpu_seconds(popen.pid), _pg_cpu(postgres))
                kinds_before = postgres_cpu_by_kind(postgres)
                warmup = min(300, args.requests // 10)
                loadgen = _children_cpu_seconds()
                result = drive(url, requests, concurrency=CONNECTIONS, warmup=warmup, max_seconds=6)
                sent = result.count + warmup
                client = 1000 * (_children_cpu_seconds() - loadgen) / sent
                web = 1000 * (_tree_cpu_seconds(popen.pid) - before[0]) / sent
                pg = 1000 * (_pg_cpu(postgres) - before[1]) / sent
                kinds = postgres_cpu_by_kind(postgres)
                split = {k: 1000 * (v - kinds_before.get(k, 0.0)) / sent for k, v in kinds.items()}
                lat = result.latencies_ms()
                rows.setdefault(name, []).append(
                    (result.rate, percentile(lat, 99), web, pg, client)
                )
                latencies.setdefault(name, []).extend(lat)
                print(
                    f"  round {r + 1} {name:12s} {result.rate:6.0f} req/s  p99 "
                    f"{percentile(lat, 99):6.1f} ms  CPU ms/request: server {web:.3f}  "
                    f"postgres {pg:.3f}  load generator {client:.3f}  "
                    f"(load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
                # Where the Postgres CPU went: the backends of each database (the
                # server's own and, after a round of another, its autovacuum's), WAL.
                print(
                    "      postgres by process: "
                    + ", ".join(
                        f"{k} {v:.3f}"
                        for k, v in sorted(split.items(), key=lambda kv: -kv[1])
                        if v >= 0.005
                    ),
                    flush=True,
                )
    base = rows["baseline"]
    for name, got in rows.items():
        rates = ", ".join(f"{g[0] / b[0]:.2f}" for g, b in zip(got, base, strict=True))
        cpus = ", ".join(f"{g[2] / b[2]:.2f}" for g, b in zip(got, base, strict=True))
        rate = sum(g[0] for g in got) / sum(b[0] for b in base)
        cpu = sum(g[2] for g in got) / sum(b[2] for b in base)
        total = sum(g[2] + g[3] + g[4] for g in got) / sum(b[2] + b[3] + b[4] for b in base)
        print(
            f"  {name:12s} rate {rate:.2f}x (rounds {rates})  web CPU {cpu:.2f}x "
            f"(rounds {cpus})  p99 {percentile(latencies[name], 99):.1f} ms vs "
            f"{percentile(latencies['baseline'], 99):.1f} ms  postgres "
            f"{sum(g[3] for g in got) / len(got):.3f} ms  load generator "
            f"{sum(g[4] for g in got) / len(got):.3f} ms  total CPU {total:.2f}x"
        )
    print(f"  load average after the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
