"""Ingest: signed webhooks accepted per second at 32 connections, against a baseline.

Baseline and ordersync's receiver run in turn on the same Postgres and Redis, each as
one uvicorn server with the same worker count, driven by the same load generator (its
own process). Rounds alternate (baseline, shop, adyen, shop without group commit,
baseline, …) so that noise from a shared machine falls on all; every round sends fresh,
pre-signed requests. `shop-single` is the same receiver with WEB_BATCH_WINDOW_MS=0 (one
commit per request), to show what group commit itself buys in the same run.
BENCH_WEB_WORKERS sets the uvicorn process count of every server (default 1; 2 where a
core is free).

Besides rates and latencies, each round reads the CPU time the server's processes and
Postgres's used (from /proc), per request sent: on a shared machine the rate moves with
everyone else's load, the CPU a request costs much less.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from devrig.devstack import free_port, wait_http

from bench.baseline_app import TABLE_SQL
from bench.common import ADYEN_HMAC_KEY, Row, Stack, percentile, stack, uvicorn_command
from bench.traffic import LoadResult, adyen_notification, drive, shop_webhook

CONNECTIONS = 32
# Held to: shop webhooks accepted at this multiple of the baseline's rate, with a p99 no
# worse than the baseline's, both from the same run.
TARGET_RATIO = 1.25
_TICKS = os.sysconf("SC_CLK_TCK")


def _processes() -> tuple[dict[int, list[int]], dict[int, list[str]]]:
    """Every process's children, and its /proc stat fields after the command name."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        stats[int(entry.name)] = fields
    return children, stats


def _cpu(fields: list[str], first: int = 11) -> float:
    """utime + stime (or, from 13, the reaped children's cutime + cstime) in seconds."""
    return (int(fields[first]) + int(fields[first + 1])) / _TICKS


def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU of `root` and every process below it (uvicorn's workers,
    Postgres's backends); processes that ended meanwhile are not counted."""
    children, stats = _processes()
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += _cpu(stats[pid]) if pid in stats else 0.0
        todo += children.get(pid, [])
    return total


def postgres_cpu_by_kind(root: int | None) -> dict[str, float]:
    """The CPU seconds of the Postgres under `root` by kind of process: a backend by its
    database (`backend:<db>`), each background process by its title (`walwriter`,
    `checkpointer`, `autovacuum worker`, ...), and `exited`: what processes that have
    ended (autovacuum workers, closed connections) used, which the postmaster's
    children's times hold. Where a whole-server figure goes."""
    if root is None:
        return {}
    children, stats = _processes()
    out: dict[str, float] = {}
    if root in stats:
        out["postmaster"] = _cpu(stats[root])
        out["exited"] = _cpu(stats[root], 13)
    for pid in children.get(root, []):
        try:
            title = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        title = title.replace("\0", " ").strip().removeprefix("postgres: ")
        words = title.split()
        # A backend is "<user> <database> [local] <state>"; background processes are named.
        kind = f"backend:{words[1]}" if "[local]" in words or "(" in title else title
        if "autovacuum worker" in title:
            kind = "autovacuum worker"
        out[kind] = out.get(kind, 0.0) + _cpu(stats[pid])
    return out


def _postgres_pid(bench: Stack) -> int | None:
    if bench.postgres is None:
        return None  # BENCH_DATABASE_URL: not ours to measure
    pidfile = bench.postgres.data_dir / "postmaster.pid"
    return int(pidfile.read_text().split()[0]) if pidfile.exists() else None


def _wal(bench: Stack) -> dict[str, float]:
    """The whole server's WAL so far: its insert position (exact, at once; pg_stat_wal's
    bytes lag by up to a second of each backend's stats) and the full-page images
    (pg_stat_wal): what the round's requests wrote, with what autovacuum and the
    checkpointer add, which `bench.ingest_statement` leaves out. Each server's rounds
    run alone."""
    with bench.db() as conn:
        row = conn.execute(
            "SELECT pg_current_wal_insert_lsn() - '0/0' AS at, wal_fpi FROM pg_stat_wal"
        ).fetchone()
    assert row is not None
    return {"bytes": float(row["at"]), "fpi": float(row["wal_fpi"])}


def _summary(result: LoadResult, cpu: dict[str, float], sent: int) -> dict[str, Any]:
    latencies = result.latencies_ms()
    return {
        # CPU milliseconds per request sent (warm-up included), by process tree.
        "cpu_ms_per_request": {k: 1000 * v / max(sent, 1) for k, v in cpu.items()},
        "rate": result.rate,
        "count": result.count,
        "errors": result.errors,
        "elapsed": result.elapsed,
        "statuses": result.statuses(),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def _requests(kind: str, bench: Stack, n: int, run: str) -> list[dict[str, Any]]:
    if kind == "adyen":
        env = bench.env
        return [
            adyen_notification(
                ADYEN_HMAC_KEY,
                env["ADYEN_WEBHOOK_USERNAME"],
                env["ADYEN_WEBHOOK_PASSWORD"],
                f"{run}{i:09d}",
            )
            for i in range(n)
        ]
    secret = bench.env["SHOP_WEBHOOK_SECRETS"].split()[0]
    return [shop_webhook(secret, f"in-{run}-{i}") for i in range(n)]


def run(*, quick: bool, workers: int | None = None) -> tuple[list[Row], dict[str, Any]]:
    workers = workers or int(os.environ.get("BENCH_WEB_WORKERS", "1"))
    count = 3000 if quick else 20000
    warmup = 300 if quick else 1000
    max_seconds = 8.0 if quick else 30.0
    rounds = 1 if quick else 3
    names = ("baseline", "shop", "adyen", "shop-single")
    rounds_data: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    print(f"  {workers} server process(es) each, {CONNECTIONS} connections", flush=True)
    with stack() as bench:
        with bench.db() as conn:
            conn.execute(TABLE_SQL)
        port = free_port()
        baseline = bench.start(
            "baseline",
            uvicorn_command("bench.baseline_app:create_app", port, "--workers", str(workers)),
            command=True,
        )
        baseline_url = f"http://127.0.0.1:{port}"
        wait_http(f"{baseline_url}/healthz", process=baseline)
        web_url = bench.web(workers=workers)
        single_url = bench.web("web-single", workers=workers, env={"WEB_BATCH_WINDOW_MS": "0"})
        postgres = _postgres_pid(bench)
        for r in range(rounds):
            for name, process, url, kind in (
                ("baseline", "baseline", baseline_url, "shop"),
                ("shop", "web", web_url, "shop"),
                ("adyen", "web", web_url, "adyen"),
                ("shop-single", "web-single", single_url, "shop"),
            ):
                tag = uuid.uuid4().hex[:8]
                requests = _requests(kind, bench, warmup + count, tag)
                popen = bench.processes[process].popen
                assert popen is not None
                pids = {"server": popen.pid}
                if postgres is not None:
                    pids["postgres"] = postgres
                before = {k: _tree_cpu_seconds(pid) for k, pid in pids.items()}
                wal_before = _wal(bench)
                result = drive(
                    url,
                    requests,
                    concurrency=CONNECTIONS,
                    warmup=warmup,
                    max_seconds=max_seconds,
                )
                cpu = {k: _tree_cpu_seconds(pid) - before[k] for k, pid in pids.items()}
                summary = _summary(result, cpu, warmup + result.count)
                summary["wal_per_request"] = {
                    k: (_wal(bench)[k] - wal_before[k]) / max(warmup + result.count, 1)
                    for k in wal_before
                }
                ok = summary["statuses"].get(202 if kind == "shop" else 200, 0)
                if ok != result.count or result.errors:
                    raise RuntimeError(
                        f"{name} round {r}: {summary['statuses']}, "
                        f"{result.errors} transport errors; see {bench.logs}"
                    )
                rounds_data[name].append(summary)
                samples[name] += result.latencies_ms()
                per_request = "  ".join(
                    f"{k} {v:.2f}" for k, v in summary["cpu_ms_per_request"].items()
                )
                wal = summary["wal_per_request"]
                print(
                    f"  round {r + 1} {name:11s} {summary['rate']:7.0f} req/s  "
                    f"p50 {summary['p50_ms']:6.1f} ms  p99 {summary['p99_ms']:6.1f} ms  "
                    f"CPU ms/request: {per_request}  "
                    f"WAL/request: {wal['bytes']:.0f} B, {wal['fpi']:.2f} FPI",
                    flush=True,
                )
    rows = _rows(rounds_data, samples)
    _print_verdict(rows, rounds_data)
    extra = {
        "connections": CONNECTIONS,
        "uvicorn_workers": workers,
        "load_average": os.getloadavg(),
        "rounds": rounds_data,
        "latency_ms": {k: sorted(v) for k, v in samples.items()},
    }
    return rows, extra


def _mean(rounds: list[dict[str, Any]], key: str) -> float:
    return float(sum(d[key] for d in rounds) / len(rounds))


def _mean_cpu(rounds: list[dict[str, Any]], part: str) -> float:
    return float(sum(d["cpu_ms_per_request"][part] for d in rounds) / len(rounds))


def _rows(
    rounds_data: dict[str, list[dict[str, Any]]], samples: dict[str, list[float]]
) -> list[Row]:
    base_rate = _mean(rounds_data["baseline"], "rate")
    base_p99 = percentile(samples["baseline"], 99)
    rows: list[Row] = []
    for name, label in (
        ("shop", "POST /webhooks/shop"),
        ("adyen", "POST /webhooks/adyen"),
        ("shop-single", "POST /webhooks/shop, no group commit"),
    ):
        rate = _mean(rounds_data[name], "rate")
        held = name == "shop"  # the others are diagnostic rows, held to no target
        p99 = percentile(samples[name], 99)
        rows += [
            Row(
                f"{label} accepted/s @{CONNECTIONS}",
                rate,
                "req/s",
                base_rate,
                f">= {TARGET_RATIO}x baseline" if held else "",
                rate >= TARGET_RATIO * base_rate if held else None,
            ),
            Row(
                f"{label} p50",
                percentile(samples[name], 50),
                "ms",
                percentile(samples["baseline"], 50),
            ),
            Row(
                f"{label} p99",
                p99,
                "ms",
                base_p99,
                "<= baseline p99" if held else "",
                p99 <= base_p99 if held else None,
            ),
        ]
        for part in rounds_data[name][0]["cpu_ms_per_request"]:
            rows.append(
                Row(
                    f"{label} CPU per request, {part}",
                    _mean_cpu(rounds_data[name], part),
                    "ms",
                    _mean_cpu(rounds_data["baseline"], part),
                )
            )
    return rows


def _print_verdict(rows: list[Row], rounds_data: dict[str, list[dict[str, Any]]]) -> None:
    """The figures the target is judged on, in one line each, with every round's ratio."""
    rate, _, p99 = rows[0], rows[1], rows[2]
    per_round = ", ".join(
        f"{shop['rate'] / base['rate']:.2f}x"
        for shop, base in zip(rounds_data["shop"], rounds_data["baseline"], strict=True)
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"  shop/baseline rate: {rate.ratio or 0:.2f}x (rounds: {per_round}; target >= "
        f"{TARGET_RATIO}x): {'met' if rate.met else 'NOT met'}\n"
        f"  shop p99 {p99.value:.1f} ms vs baseline p99 {p99.baseline or 0:.1f} ms: "
        f"{'met' if p99.met else 'NOT met'}\n"
        f"  load average after the run: {load}",
        flush=True,
    )
