"""The retention job on a real Postgres: bodies first, keys later, delivered outbox
rows, in small batches; orders, operations and unprocessed rows are kept."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.rows import dict_row

from domain.snapshot import ShopEvent
from ordersync.db import async_pool, migrate, sync_pool
from ordersync.settings import Settings
from service.ingest import store_shop_event
from tests.integration.stack import KETTLE, Stack, order_event
from workers import retention

pytestmark = pytest.mark.integration


@pytest.fixture
def database(stack: Stack) -> Iterator[str]:
    """A database of its own: the walk follows ids, so back-dated rows must be the only
    rows (in the shared database other tests' fresh rows come first)."""
    name = f"retention_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(stack.database_url)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def rows(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def test_bodies_then_keys_then_outbox_in_small_batches(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (id, version, provider, psp_order_id, currency, status, "
            "snapshot, desired_amount) VALUES ('o1', 1, 'klarna', 'k1', 'EUR', 'open', '{}', 0)"
        )
        # Oldest first, as ids follow received_at: 40 days (processed x5, one not),
        # 10 days (processed x3), 1 day (processed).
        for age, processed, n in ((40, True, 5), (40, False, 1), (10, True, 3), (1, True, 1)):
            for _ in range(n):
                conn.execute(
                    "WITH stored AS (INSERT INTO inbox (source, event_key, event_type, order_id, "
                    "received_at, processed_at) VALUES ('shop', %s, 'order.updated', 'o1', "
                    "now() - make_interval(days => %s), CASE WHEN %s THEN now() END) "
                    "RETURNING id) "
                    "INSERT INTO inbox_bodies (inbox_id, payload) "
                    "SELECT id, '{\"x\": 1}' FROM stored",
                    (f"msg_{age}_{uuid.uuid4().hex}", age, processed),
                )
        for age in (10, 10, 10, 1):
            conn.execute(
                "INSERT INTO outbox (id, order_id, event_type, version, payload, delivered_at) "
                "VALUES (%s, 'o1', 'order.synced', 1, '{}', now() - make_interval(days => %s))",
                (uuid.uuid4(), age),
            )
        conn.execute(
            "INSERT INTO outbox (id, order_id, event_type, version, payload) "
            "VALUES (%s, 'o1', 'order.synced', 1, '{}')",
            (uuid.uuid4(),),
        )
    settings = Settings(retention_batch=2, retention_max_batches=100)
    pool = sync_pool(database, max_size=1)
    try:
        counts = retention.prune(pool, settings)
        assert counts == {
            "inbox_bodies": 8,  # 5 + 3 processed rows older than 7 days
            "inbox_bodies_kept_unprocessed": 1,
            "inbox_keys": 5,  # processed rows older than 35 days
            "inbox_keys_kept_unprocessed": 1,
            "outbox": 3,
        }
        left = rows(
            database,
            "SELECT extract(day FROM now() - received_at)::int AS age, b.inbox_id IS NULL AS "
            "pruned, processed_at IS NULL AS unprocessed FROM inbox "
            "LEFT JOIN inbox_bodies b ON b.inbox_id = inbox.id ORDER BY id",
        )
        assert [(r["age"], r["pruned"], r["unprocessed"]) for r in left] == [
            (40, False, True),  # not processed: kept whole
            (10, True, False),
            (10, True, False),
            (10, True, False),
            (1, False, False),
        ]
        outbox = rows(database, "SELECT delivered_at IS NULL AS pending FROM outbox")
        assert sorted(r["pending"] for r in outbox) == [False, True]
        assert rows(database, "SELECT id FROM orders") == [{"id": "o1"}]
        # A second run finds nothing more to do.
        assert retention.prune(pool, settings) == {
            "inbox_bodies": 0,
            "inbox_keys": 0,
            "outbox": 0,
        }
    finally:
        pool.close()


def test_a_resent_webhook_is_a_duplicate_after_its_body_is_pruned(database: str) -> None:
    shop_event = ShopEvent.model_validate(order_event("o-dup", "k-dup", [KETTLE]))
    newer = ShopEvent.model_validate(order_event("o-dup", "k-dup", [KETTLE], version=2))
    key = f"msg_{uuid.uuid4().hex}"

    async def store(event: ShopEvent, key: str) -> str:
        pool = async_pool(database, max_size=1)
        await pool.open()
        try:
            return (await store_shop_event(pool, key, event)).outcome
        finally:
            await pool.close()

    assert asyncio.run(store(shop_event, key)) == "applied"
    # Replaced by a newer snapshot, its body is in inbox_bodies (migration 0241).
    assert asyncio.run(store(newer, f"msg_{uuid.uuid4().hex}")) == "applied"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("UPDATE inbox SET received_at = now() - interval '8 days'")
    pool = sync_pool(database, max_size=1)
    try:
        # The newer one's body is the order's snapshot, kept with the order.
        assert retention.prune(pool, Settings())["inbox_bodies"] == 1
    finally:
        pool.close()
    assert rows(database, "SELECT count(*) AS n FROM inbox") == [{"n": 2}]
    assert rows(database, "SELECT count(*) AS n FROM inbox_bodies") == [{"n": 0}]
    assert asyncio.run(store(shop_event, key)) == "duplicate"
