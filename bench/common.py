"""What every benchmark shares: the stack (embedded Postgres, Redis, the `ordersync`
processes), percentiles, the result table and the JSON written to bench/results/."""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from devrig.demo import new_secret
from devrig.devstack import (
    EmbeddedPostgres,
    Process,
    RedisServer,
    free_port,
    temporary_pg_dir,
    wait_http,
)
from psycopg.rows import dict_row

from ordersync.db import migrate

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ADYEN_HMAC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"


class Command(Process):
    """A `Process` for a command other than `python -m cli …`."""

    def start(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self.popen = subprocess.Popen(
            [sys.executable, *self.argv],
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )


@dataclass
class Stack:
    """Postgres and Redis for one benchmark run, and the processes started on them."""

    base: Path
    database_url: str
    redis: RedisServer
    env: dict[str, str]
    postgres: EmbeddedPostgres | None = None
    pg_dir: Path | None = None
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        path = self.base / "logs"
        path.mkdir(exist_ok=True)
        return path

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        command: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        cls = Command if command else Process
        process = cls(name, list(argv), {**self.env, **(env or {})}, self.logs / f"{name}.log")
        process.start()
        self.processes[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            process.stop()

    def web(self, name: str = "web", workers: int = 1, env: Mapping[str, str] | None = None) -> str:
        port = free_port()
        process = self.start(
            name,
            ["web", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", process=process)
        return url

    def sandbox(self, delay_ms: int = 0) -> str:
        url = self.env["KLARNA_API_URL"]
        if "sandbox" not in self.processes:
            # Benchmarks measure ordersync: the sandbox skips its own OpenAPI check of every
            # request (the test suite keeps it on), so it takes less of the shared CPU.
            process = self.start(
                "sandbox", ["sandbox", "--port", url.rsplit(":", 1)[1], "--no-spec-checks"]
            )
            wait_http(f"{url}/_sandbox/health", process=process)
        httpx.delete(f"{url}/_sandbox/faults", timeout=10).raise_for_status()
        if delay_ms:
            httpx.post(
                f"{url}/_sandbox/faults",
                json={
                    "kind": "delay",
                    "ms": delay_ms,
                    "count": None,
                },
                timeout=10,
            ).raise_for_status()
        return url

    def worker(
        self,
        name: str = "worker",
        *,
        pool: str,
        concurrency: int,
        queues: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        return self.start(
            name,
            [
                "worker",
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "--metrics-port",
                "0",
                "--name",
                f"{name}@bench",
                *(["--queues", queues] if queues else []),
            ],
            env=env,
        )

    @contextmanager
    def db(self, url: str | None = None) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with psycopg.connect(
            url or self.database_url, row_factory=dict_row, autocommit=True
        ) as conn:
            yield conn

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self.pg_dir is not None:
            shutil.rmtree(self.pg_dir, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def stack() -> Iterator[Stack]:
    """A fresh embedded Postgres (or BENCH_DATABASE_URL) and Redis, migrated."""
    base = Path(tempfile.mkdtemp(prefix="ordersync-bench-"))
    postgres = None
    pg_dir = None
    database_url = os.environ.get("BENCH_DATABASE_URL")
    if not database_url:
        pg_dir = temporary_pg_dir("ordersync-bench-pg-")
        postgres = EmbeddedPostgres(pg_dir / "data")
        database_url = postgres.url
    redis = RedisServer(base / "redis")
    redis.start()
    migrate(database_url)
    sandbox_url = f"http://127.0.0.1:{free_port()}"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "SHOP_WEBHOOK_SECRETS": new_secret(),
        "KLARNA_API_URL": sandbox_url,
        "KLARNA_USERNAME": "sandbox",
        "KLARNA_PASSWORD": secrets.token_urlsafe(16),
        "ADYEN_HMAC_KEYS": ADYEN_HMAC_KEY,
        "ADYEN_WEBHOOK_USERNAME": "adyen",
        "ADYEN_WEBHOOK_PASSWORD": secrets.token_urlsafe(16),
        "OPERATOR_TOKEN": secrets.token_urlsafe(16),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    # This process publishes tasks too (benchmarks preload queues): same settings.
    os.environ.update({"DATABASE_URL": database_url, "REDIS_URL": redis.url})
    from ordersync.settings import get_settings

    get_settings.cache_clear()
    bench = Stack(
        base=base, database_url=database_url, redis=redis, env=env, postgres=postgres, pg_dir=pg_dir
    )
    try:
        yield bench
    finally:
        bench.close()


def uvicorn_command(app: str, port: int, *options: str) -> list[str]:
    """The arguments of a benchmarked ASGI app's own uvicorn process (quiet: no access
    log), the app named as `module:factory`."""
    return [
        "-m",
        "uvicorn",
        app,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *options,
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One line of a result table: a figure, its baseline, and the target it is held to."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        assert self.baseline is not None
        return self.value / self.baseline

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
        }


def table(title: str, rows: Sequence[Row]) -> str:
    head = ("figure", "value", "baseline", "ratio", "target", "met")
    body = []
    for row in rows:
        body.append(
            (
                row.name,
                f"{row.value:,.1f} {row.unit}",
                "" if row.baseline is None else f"{row.baseline:,.1f} {row.unit}",
                "" if row.ratio is None else f"{row.ratio:.2f}x",
                row.target,
                {True: "yes", False: "NO", None: ""}[row.met],
            )
        )
    widths = [max(len(str(r[i])) for r in (head, *body)) for i in range(len(head))]
    lines = [f"## {title}", "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def write_result(name: str, quick: bool, rows: Sequence[Row], extra: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}{'-quick' if quick else ''}-{stamp}.json"
    data = {
        "benchmark": name,
        "quick": quick,
        "at": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rows": [row.to_json() for row in rows],
        **extra,
    }
    path.write_text(json.dumps(data, indent=2, default=str))
    (RESULTS_DIR / f"{name}{'-quick' if quick else ''}-latest.json").write_text(
        json.dumps(data, indent=2, default=str)
    )
    return path
