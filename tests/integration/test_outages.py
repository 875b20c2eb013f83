"""The receiver when its dependencies fail: never a 2xx for data it did not store."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile

import httpx
import pytest
from devrig.devstack import (
    EmbeddedPostgres,
    Process,
    RedisServer,
    free_port,
    temporary_pg_dir,
    wait_http,
    wait_until,
)

from ordersync.db import migrate
from tests.integration.stack import KETTLE, Stack, new_order_id, order_event, wait_for

pytestmark = pytest.mark.integration


def test_postgres_stopped_means_503_and_back_to_202(stack: Stack) -> None:
    pg_dir = temporary_pg_dir("ordersync-test-pg-outage-")
    postgres = EmbeddedPostgres(pg_dir / "data")
    migrate(postgres.url)
    port = free_port()
    web = Process(
        "web-outage",
        ["web", "--host", "127.0.0.1", "--port", str(port)],
        {**stack.env, "DATABASE_URL": postgres.url},
        stack.logs / "web-outage.log",
    )
    web.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", process=web)
        shop = Stack(**{**stack.__dict__, "web_url": url})

        assert shop.send(order_event(new_order_id(), "k-outage-1", [KETTLE])).status_code == 202
        postgres.stop()
        down = shop.send(order_event(new_order_id(), "k-outage-2", [KETTLE]))
        assert down.status_code == 503
        assert down.json()["error"] == "unavailable"
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["postgres"] == "down"
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200

        postgres = EmbeddedPostgres(pg_dir / "data")
        order_id = new_order_id()
        # Right after the restart the pool may still be reconnecting: the sender is told
        # 503 (send it again), never anything else, until it is stored.
        answers: list[int] = []

        def stored() -> bool:
            answers.append(shop.send(order_event(order_id, "k-outage-3", [KETTLE])).status_code)
            return answers[-1] == 202

        wait_until(stored, timeout=15, interval=0.5)
        assert set(answers) <= {202, 503}
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{url}/readyz").status_code == 200
    finally:
        web.stop()
        postgres.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


@pytest.mark.parametrize("command", ["web", "worker", "beat", "migrate"])
def test_missing_setting_stops_the_process_with_one_line_naming_it(command: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir()}
    result = subprocess.run(
        [sys.executable, "-m", "cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ordersync: missing required setting DATABASE_URL"
    ]


def test_invalid_setting_is_named_without_its_value() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": "postgresql://u:hunter2@db/x",
        "REDIS_URL": "redis://r",
        "MAX_ATTEMPTS": "many",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MAX_ATTEMPTS" in result.stderr
    assert "hunter2" not in result.stderr and "many" not in result.stderr


def test_postgres_restarted_under_a_running_stack_a_later_change_reaches_the_psp(
    stack: Stack,
) -> None:
    """Postgres restarted (every connection dies, as in a crash) under a web process and
    a worker that both hold pooled connections: a change stored afterwards reaches the
    PSP through its own task, not a later sweep (no beat runs here). Before the pools
    checked connections on checkout, the worker's task took a dead one and was dropped."""
    pg_dir = temporary_pg_dir("ordersync-test-pg-restart-")
    postgres = EmbeddedPostgres(pg_dir / "data")
    migrate(postgres.url)
    redis = RedisServer(stack.logs.parent / "redis-restart")
    redis.start()
    env = {**stack.env, "DATABASE_URL": postgres.url, "REDIS_URL": redis.url}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = [
        Process(
            "web-restart",
            ["web", "--host", "127.0.0.1", "--port", str(port)],
            env,
            stack.logs / "web-restart.log",
        ),
        Process(
            "worker-restart",
            ["worker", "--pool", "threads", "--concurrency", "4", "--metrics-port", "0"],
            env,
            stack.logs / "worker-restart.log",
        ),
    ]
    for process in processes:
        process.start()
    try:
        wait_http(f"{url}/healthz", process=processes[0])
        shop = Stack(**{**stack.__dict__, "web_url": url, "database_url": postgres.url})

        def captured(klarna_id: str) -> bool:
            return any(e["operation"] == "capture" for e in shop.ledger(klarna_id))

        # Warm both pools: an order all the way to its capture.
        before = shop.klarna_order([KETTLE])
        order_id = new_order_id()
        shipped = order_event(order_id, before, [{**KETTLE, "shipped_quantity": 1}])
        assert shop.send(shipped).status_code == 202
        wait_for(lambda: captured(before), timeout=60, what="the capture before the restart")

        postgres.restart_immediate()

        after = shop.klarna_order([KETTLE])
        order_id = new_order_id()
        shipped = order_event(order_id, after, [{**KETTLE, "shipped_quantity": 1}])
        # The sender retries a 503 (the web's own pooled connections died too).
        wait_for(
            lambda: shop.send(shipped).status_code == 202,
            timeout=60,
            interval=0.5,
            what="the webhook to be stored after the restart",
        )
        wait_for(lambda: captured(after), timeout=60, what="the capture after the restart")
    finally:
        for process in processes:
            process.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
