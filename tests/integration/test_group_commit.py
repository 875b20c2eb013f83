"""Group commit at the receiver: a batch of shop events stored by one statement in one
commit, each with its own outcome. On the stack's real Postgres, no worker involved."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from domain.snapshot import ShopEvent
from ordersync.db import async_pool
from ordersync.errors import Conflict
from service.batcher import Batcher
from service.ingest import Refused, Stored, store_shop_event, store_shop_events
from tests.integration.stack import KETTLE, Stack, new_order_id, order_event

pytestmark = pytest.mark.integration

MUG = {"id": "75002", "name": "Mug", "quantity": 2, "unit_price": 1500, "tax_rate": 2500}


def event(order_id: str, psp_id: str, version: int, lines: list[dict[str, Any]]) -> ShopEvent:
    return ShopEvent.model_validate(order_event(order_id, psp_id, lines, version=version))


def key() -> str:
    return f"msg_{uuid.uuid4().hex}"


def outcome(result: Stored | Refused) -> str:
    return result.outcome if isinstance(result, Stored) else f"{result.code}: {result.detail}"


async def store(stack: Stack, batch: Sequence[tuple[str, ShopEvent]]) -> list[Stored | Refused]:
    pool = async_pool(stack.database_url, max_size=2)
    await pool.open()
    try:
        return await store_shop_events(pool, batch)
    finally:
        await pool.close()


async def store_one(stack: Stack, webhook_id: str, shop_event: ShopEvent) -> Stored:
    pool = async_pool(stack.database_url, max_size=1)
    await pool.open()
    try:
        return await store_shop_event(pool, webhook_id, shop_event)
    finally:
        await pool.close()


def rows(stack: Stack, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(stack.database_url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


def test_one_bad_row_fails_alone(stack: Stack) -> None:
    taken, changed, stale, repeated = (new_order_id() for _ in range(4))
    psp_taken, psp_changed = f"k-{uuid.uuid4().hex}", f"k-{uuid.uuid4().hex}"
    repeated_key = key()
    # Already stored, one by one: an order holding a payment, one at version 5, and a
    # webhook-id already seen.
    asyncio.run(store_one(stack, key(), event(taken, psp_taken, 1, [KETTLE])))
    asyncio.run(store_one(stack, key(), event(changed, psp_changed, 1, [KETTLE])))
    asyncio.run(store_one(stack, key(), event(stale, f"k-{uuid.uuid4().hex}", 5, [KETTLE])))
    asyncio.run(store_one(stack, repeated_key, event(repeated, f"k-{repeated}", 1, [KETTLE])))

    good = [new_order_id() for _ in range(3)]
    batch = [
        (key(), event(good[0], f"k-{good[0]}", 1, [KETTLE])),
        # Another order's payment: 409, nothing stored for it.
        (key(), event(new_order_id(), psp_taken, 1, [KETTLE])),
        (key(), event(good[1], f"k-{good[1]}", 1, [KETTLE, MUG])),
        # A stored order's payment changed: 422 naming the field (contract §4).
        (key(), event(changed, f"k-{uuid.uuid4().hex}", 2, [KETTLE])),
        # Older than what is stored: stale (recorded, not applied).
        (
            key(),
            event(
                stale,
                rows(stack, "SELECT psp_order_id FROM orders WHERE id = %s", stale)[0][
                    "psp_order_id"
                ],
                3,
                [MUG],
            ),
        ),
        # A webhook-id already seen, the same event again: duplicate.
        (repeated_key, event(repeated, f"k-{repeated}", 1, [KETTLE])),
        (key(), event(good[2], f"k-{good[2]}", 1, [MUG])),
        # A webhook-id already seen with another event: 409, nothing stored for it.
        (repeated_key, event(repeated, f"k-{repeated}", 2, [MUG])),
    ]
    results = asyncio.run(store(stack, batch))
    assert [outcome(r) for r in results] == [
        "applied",
        "conflict: another order already uses this payment",
        "applied",
        "validation_failed: an order's currency and payment cannot change",
        "stale",
        "duplicate",
        "applied",
        "conflict: this webhook-id was used before for a different event",
    ]
    conflict = results[1]
    assert isinstance(conflict, Conflict) and conflict.status_code == 409
    stored = rows(stack, "SELECT id, version FROM orders WHERE id = ANY(%s)", good)
    assert sorted((r["id"], r["version"]) for r in stored) == sorted((g, 1) for g in good)
    assert rows(stack, "SELECT version FROM orders WHERE id = %s", stale) == [{"version": 5}]
    assert rows(stack, "SELECT version FROM orders WHERE id = %s", repeated) == [{"version": 1}]
    assert rows(stack, "SELECT version FROM orders WHERE id = %s", changed) == [{"version": 1}]
    # Every row but the conflicts has its inbox row; the conflicts have none.
    keys = [k for k, _ in batch]
    inbox = rows(stack, "SELECT event_key, outcome FROM inbox WHERE event_key = ANY(%s)", keys)
    assert {r["event_key"]: r["outcome"] for r in inbox} == {
        keys[0]: "applied",
        keys[2]: "applied",
        keys[4]: "stale",
        repeated_key: "applied",  # the first delivery's row, untouched
        keys[6]: "applied",
    }


def test_same_order_in_one_batch_keeps_version_order(stack: Stack) -> None:
    up, down = new_order_id(), new_order_id()
    batch = [
        # Arriving in version order: each applies in turn, the last one wins.
        (key(), event(up, f"k-{up}", 1, [KETTLE])),
        (key(), event(up, f"k-{up}", 2, [KETTLE, MUG])),
        (key(), event(up, f"k-{up}", 3, [MUG])),
        # Arriving out of order: the older one is stale and does not overwrite.
        (key(), event(down, f"k-{down}", 4, [KETTLE, MUG])),
        (key(), event(down, f"k-{down}", 2, [KETTLE])),
        # The same webhook twice in one batch: stored once.
    ]
    again = key()
    batch += [
        (again, event(down, f"k-{down}", 5, [MUG])),
        (again, event(down, f"k-{down}", 5, [MUG])),
    ]
    results = asyncio.run(store(stack, batch))
    assert [outcome(r) for r in results] == [
        "applied",
        "applied",
        "applied",
        "applied",
        "stale",
        "applied",
        "duplicate",
    ]
    got = rows(
        stack, "SELECT id, version, desired_amount FROM orders WHERE id = ANY(%s)", [up, down]
    )
    assert {r["id"]: (r["version"], r["desired_amount"]) for r in got} == {
        up: (3, 3000),
        down: (5, 3000),
    }


def test_concurrent_requests_share_a_batch_and_each_hears_its_own_outcome(stack: Stack) -> None:
    calls: list[int] = []

    async def main() -> list[Stored | BaseException]:
        pool = async_pool(stack.database_url, max_size=2)
        await pool.open()

        async def flush(items: Sequence[tuple[str, ShopEvent]]) -> list[Stored | Conflict]:
            calls.append(len(items))
            return await store_shop_events(pool, items)

        batcher: Batcher[tuple[str, ShopEvent], Stored] = Batcher(
            flush, window_seconds=0.05, max_items=100
        )
        order = new_order_id()
        taken = f"k-{uuid.uuid4().hex}"
        await store_shop_event(pool, key(), event(new_order_id(), taken, 1, [KETTLE]))
        try:
            return await asyncio.gather(
                batcher.submit((key(), event(order, f"k-{order}", 1, [KETTLE]))),
                batcher.submit((key(), event(new_order_id(), taken, 1, [KETTLE]))),
                batcher.submit((key(), event(order, f"k-{order}", 2, [MUG]))),
                return_exceptions=True,
            )
        finally:
            await batcher.drain()
            await pool.close()

    results = asyncio.run(main())
    assert calls == [3]
    assert [outcome(r) if not isinstance(r, Conflict) else "conflict" for r in results] == [  # type: ignore[arg-type]
        "applied",
        "conflict",
        "applied",
    ]
