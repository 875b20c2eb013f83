"""Ingest: signed webhooks accepted per second at 32 connections, against a baseline.

Baseline and ordersync's receiver run in turn on the same Postgres and Redis, each as
one uvicorn server with the same worker count, driven by the same load generator (its
own process). Rounds alternate (baseline, shop, adyen, shop without group commit,
baseline, …) so that noise from a shared machine falls on all; every round sends fresh,
pre-signed requests. `shop-single` is the same receiver with WEB_BATCH_WINDOW_MS=0 (one
commit per request), to show what group commit itself buys in the same run.
BENCH_WEB_WORKERS sets the uvicorn process count of every server (default 1; 2 where a
core is free).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from devrig.devstack import free_port, wait_http

from bench.baseline_app import TABLE_SQL
from bench.common import ADYEN_HMAC_KEY, Row, Stack, percentile, stack
from bench.traffic import LoadResult, adyen_notification, drive, shop_webhook

CONNECTIONS = 32


def _summary(result: LoadResult) -> dict[str, Any]:
    latencies = result.latencies_ms()
    return {
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
    with stack() as bench:
        with bench.db() as conn:
            conn.execute(TABLE_SQL)
        port = free_port()
        baseline = bench.start(
            "baseline",
            [
                "-m",
                "uvicorn",
                "bench.baseline_app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            command=True,
        )
        baseline_url = f"http://127.0.0.1:{port}"
        wait_http(f"{baseline_url}/healthz", process=baseline)
        web_url = bench.web(workers=workers)
        single_url = bench.web("web-single", workers=workers, env={"WEB_BATCH_WINDOW_MS": "0"})
        for r in range(rounds):
            for name, url, kind in (
                ("baseline", baseline_url, "shop"),
                ("shop", web_url, "shop"),
                ("adyen", web_url, "adyen"),
                ("shop-single", single_url, "shop"),
            ):
                tag = uuid.uuid4().hex[:8]
                result = drive(
                    url,
                    _requests(kind, bench, warmup + count, tag),
                    concurrency=CONNECTIONS,
                    warmup=warmup,
                    max_seconds=max_seconds,
                )
                summary = _summary(result)
                ok = summary["statuses"].get(202 if kind == "shop" else 200, 0)
                if ok != result.count or result.errors:
                    raise RuntimeError(
                        f"{name} round {r}: {summary['statuses']}, "
                        f"{result.errors} transport errors; see {bench.logs}"
                    )
                rounds_data[name].append(summary)
                samples[name] += result.latencies_ms()
                print(
                    f"  round {r + 1} {name:8s} {summary['rate']:8.0f} req/s  "
                    f"p50 {summary['p50_ms']:6.1f} ms  p99 {summary['p99_ms']:6.1f} ms",
                    flush=True,
                )

    def mean_rate(name: str) -> float:
        return float(sum(d["rate"] for d in rounds_data[name]) / len(rounds_data[name]))

    base_rate = mean_rate("baseline")
    rows: list[Row] = []
    for name, label in (
        ("shop", "POST /webhooks/shop"),
        ("adyen", "POST /webhooks/adyen"),
        ("shop-single", "POST /webhooks/shop, no group commit"),
    ):
        rate = mean_rate(name)
        held = name != "shop-single"  # a diagnostic row, held to no target
        rows.append(
            Row(
                f"{label} accepted/s @{CONNECTIONS}",
                rate,
                "req/s",
                base_rate,
                ">= 1.0x baseline" if held else "",
                rate >= base_rate if held else None,
            )
        )
        p99 = percentile(samples[name], 99)
        rows.append(
            Row(
                f"{label} p50",
                percentile(samples[name], 50),
                "ms",
                percentile(samples["baseline"], 50),
            )
        )
        rows.append(
            Row(
                f"{label} p99",
                p99,
                "ms",
                percentile(samples["baseline"], 99),
                "< 50 ms" if held else "",
                p99 < 50 if held else None,
            )
        )
    extra = {
        "connections": CONNECTIONS,
        "uvicorn_workers": workers,
        "rounds": rounds_data,
        "latency_ms": {k: sorted(v) for k, v in samples.items()},
    }
    return rows, extra
