from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devrig.demo import new_secret
from devrig.devstack import (
    EmbeddedPostgres,
    Process,
    RedisServer,
    free_port,
    temporary_pg_dir,
    wait_http,
)

from ordersync.db import migrate
from tests.integration.edge import in_process
from tests.integration.stack import CUSTOMER, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("stack")
    postgres = None
    database_url = os.environ.get("TEST_DATABASE_URL")
    if not database_url:
        pg_dir = temporary_pg_dir("ordersync-test-pg-")
        postgres = EmbeddedPostgres(pg_dir / "data")
        database_url = postgres.url
    redis = RedisServer(base / "redis")
    redis.start()
    migrate(database_url)

    sandbox_url = f"http://127.0.0.1:{free_port()}"
    web_port = free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    token = secrets.token_urlsafe(16)
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "SHOP_WEBHOOK_SECRETS": f"{new_secret()} {new_secret()}",
        "OPERATOR_TOKEN": token,
        # Named operators for the console: their actions carry the name.
        "OPERATOR_TOKENS": f"alice={secrets.token_urlsafe(16)} bob={secrets.token_urlsafe(16)}",
        "KLARNA_API_URL": sandbox_url,
        "KLARNA_USERNAME": "sandbox",
        # Random, so the log check can tell it from the word "sandbox".
        "KLARNA_PASSWORD": secrets.token_urlsafe(16),
        "SHOP_CALLBACK_URL": f"{sandbox_url}/_sandbox/shop/callbacks",
        "SHOP_CALLBACK_SECRET": new_secret(),
        # Adyen: the sandbox plays it and notifies the stack's web process.
        "ADYEN_CHECKOUT_URL": f"{sandbox_url}/v71",
        "ADYEN_PAL_URL": f"{sandbox_url}/pal/servlet/Payment/v68",
        "ADYEN_API_KEY": secrets.token_urlsafe(16),
        "ADYEN_MERCHANT_ACCOUNT": "OrdersyncTest",
        "ADYEN_HMAC_KEYS": f"{secrets.token_hex(32).upper()} {secrets.token_hex(32).upper()}",
        "ADYEN_WEBHOOK_USERNAME": "adyen",
        "ADYEN_WEBHOOK_PASSWORD": secrets.token_urlsafe(16),
        "SANDBOX_ADYEN_WEBHOOK_URL": f"{web_url}/webhooks/adyen",
        "NOTIFICATION_ORPHAN_SECONDS": "3",
        "LOG_FORMAT": "json",
        # Fast retries and sweeps so fault tests finish in seconds.
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "1",
        "MAX_ATTEMPTS": "4",
        "PSP_READ_TIMEOUT_SECONDS": "2",
        "PSP_CONNECT_TIMEOUT_SECONDS": "1",
        "RECONCILE_SWEEP_SECONDS": "1",
        "SWEEP_GRACE_SECONDS": "1",
    }
    logs = base / "logs"
    logs.mkdir()
    stack = Stack(
        database_url=database_url,
        redis_url=redis.url,
        web_url=web_url,
        sandbox_url=sandbox_url,
        secret=env["SHOP_WEBHOOK_SECRETS"].split()[1],
        operator_token=token,
        env=env,
        logs=logs,
        redis=redis,
    )
    sandbox_port = sandbox_url.rsplit(":", 1)[1]
    worker_metrics_port = free_port()
    stack.worker_metrics_url = f"http://127.0.0.1:{worker_metrics_port}/metrics"
    stack.processes = {
        "sandbox": Process(
            "sandbox", ["sandbox", "--port", sandbox_port], env, logs / "sandbox.log"
        ),
        "web": Process(
            "web", ["web", "--host", "127.0.0.1", "--port", str(web_port)], env, logs / "web.log"
        ),
        "worker": Process(
            "worker",
            [
                "worker",
                "--concurrency",
                "2",
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(worker_metrics_port),
            ],
            env,
            logs / "worker.log",
        ),
        "beat": Process("beat", ["beat"], env, logs / "beat.log"),
    }
    for process in stack.processes.values():
        process.start()
    try:
        wait_http(f"{sandbox_url}/_sandbox/health", process=stack.processes["sandbox"])
        wait_http(f"{web_url}/healthz", process=stack.processes["web"])
        yield stack
    finally:
        for process in stack.processes.values():
            process.stop()
        redis.stop()
        if postgres is not None:
            postgres.stop()
            shutil.rmtree(pg_dir, ignore_errors=True)
        _keep_logs(logs)
    _assert_logs_clean(stack)


def _assert_logs_clean(stack: Stack) -> None:
    """At the session's end, over every process's log: one JSON object per line, and no
    secret or personal datum anywhere (test_logs_private.py sends the bait)."""
    import base64
    import json
    import re

    env = stack.env
    basic = f"{env['KLARNA_USERNAME']}:{env['KLARNA_PASSWORD']}".encode()
    private = {
        "OPERATOR_TOKEN": env["OPERATOR_TOKEN"],
        "KLARNA_PASSWORD": env["KLARNA_PASSWORD"],
        "Klarna Basic credentials": base64.b64encode(basic).decode(),
        **{f"customer {key}": value for key, value in CUSTOMER.items()},
    }
    for entry in env["OPERATOR_TOKENS"].split():
        name, _, named_token = entry.partition("=")
        private[f"OPERATOR_TOKENS {name}"] = named_token
    # Standard Webhooks secrets, with and without their prefix.
    for name in ("SHOP_WEBHOOK_SECRETS", "SHOP_CALLBACK_SECRET"):
        for i, secret in enumerate(env[name].split()):
            private[f"{name}[{i}]"] = secret
            private[f"{name}[{i}] key"] = secret.removeprefix("whsec_")
    problems = []
    for path in sorted(stack.logs.glob("*.log")):
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            # Celery (and billiard, for a pool child it had to end) write these to the raw
            # stderr on shutdown, past any logging.
            if not line.strip() or line.startswith(
                ("worker: Warm shutdown", "Process 'ForkPoolWorker-")
            ):
                continue
            try:
                record = json.loads(line)
                assert isinstance(record, dict) and record.get("event")
            except (ValueError, AssertionError):
                problems.append(f"{path.name}:{number}: not a JSON log line: {line[:120]}")
            # Whole words only: the postal code's digits may well occur in a duration.
            problems += [
                f"{path.name}:{number}: contains {what}"
                for what, value in private.items()
                if value and re.search(rf"(?<![\w.]){re.escape(value)}(?!\w)", line)
            ]
    assert problems == [], "\n".join(problems[:20])


def _keep_logs(logs: Path) -> None:
    # CI shows these when a test fails; locally they stay in pytest's temp dir.
    target = os.environ.get("ORDERSYNC_TEST_LOGS")
    if target:
        shutil.copytree(logs, target, dirs_exist_ok=True)


@pytest.fixture(autouse=True)
def _no_faults(stack: Stack) -> Iterator[None]:
    yield
    stack.clear_faults()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Any]:
    """The app in-process over the stack's database (a module may define its own)."""
    with in_process(stack) as client:
        yield client
