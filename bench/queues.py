"""Queues: 20,000 shop callbacks queued ahead of 2,000 reconciles; no reconcile waits.

Every order of the reconciles is read from Klarna already and its next step is one
capture (as in `bench worker`); every order of the callbacks has one undelivered
`order.needs_attention` event, POSTed to the sandbox's shop endpoint. All the callback
tasks are queued first, then all the reconciles, then the workers start. Three rounds,
same run, fresh orders each:

- baseline: the reconciles alone, one worker taking reconcile and sweeps;
- lanes: the same worker, and a second one taking callbacks, notifications and
  retention (as the Helm chart deploys them), both queues full;
- one queue: the callbacks put on the reconcile queue, as every task was before
  queues were split, and one worker taking it.

Figures: seconds from the moment the reconciles are queued (the workers running, the
callbacks queued just before) to the first and to the last reconcile recorded as
succeeded; the lanes' over the baseline's is the delay callbacks cause.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis
from devrig.demo import new_secret
from devrig.devstack import wait_until

from bench.common import Row, Stack, stack
from bench.fixtures import insert_synced_orders, synced_orders
from ordersync.jobs import Job, Queue
from service.app import redis_client_url
from service.publisher import Message, celery_message

MONEY = "reconcile,sweeps"
REST = "callbacks,notifications,retention"
WORKER = {"pool": "threads", "concurrency": 16}


def _callback_orders(bench: Stack, prefix: str, n: int) -> list[str]:
    """n orders in sync, each with one undelivered needs_attention event for the shop."""
    with bench.db() as conn:
        insert_synced_orders(conn, prefix, n, version=1, shipped=False, requested=False)
        conn.execute(
            """
            INSERT INTO outbox (id, order_id, event_type, version, payload)
            SELECT gen_random_uuid(), o.id, 'order.needs_attention', 1,
                   jsonb_build_object('type', 'order.needs_attention', 'order_id', o.id,
                                      'version', 1, 'occurred_at', now(),
                                      'data', %(data)s::jsonb)
            FROM orders o WHERE o.id LIKE %(like)s
            """,
            {
                "data": json.dumps({"reason": {"code": "bench", "message": "queued ahead"}}),
                "like": prefix + "%",
            },
        )
    return [f"{prefix}{i}" for i in range(n)]


def _count(bench: Stack, sql: str, prefix: str) -> int:
    with bench.db() as conn:
        row = conn.execute(sql, (prefix + "%",)).fetchone()
    assert row is not None
    return int(row["n"])


RECONCILED = "SELECT count(*) AS n FROM operations WHERE order_id LIKE %s AND status = 'succeeded'"
DELIVERED = "SELECT count(*) AS n FROM outbox WHERE order_id LIKE %s AND delivered_at IS NOT NULL"


def _push(bench: Stack, queue: Queue, task: str, order_ids: list[str]) -> None:
    """Queues one task per order the way the web process does: Celery messages written
    straight to the queue's list, many per round trip, so queueing 20,000 takes a
    moment rather than the time a worker needs to start working them."""
    client = redis.Redis.from_url(redis_client_url(bench.redis.url))
    for i in range(0, len(order_ids), 1000):
        chunk = order_ids[i : i + 1000]
        client.lpush(
            queue.value, *(celery_message(Message(task, (oid,), queue=queue)) for oid in chunk)
        )


def _wait_ready(names: list[str], timeout: float = 120) -> None:
    from workers.celery_app import app

    wanted = {f"celery@{name}@bench" for name in names} | {f"{name}@bench" for name in names}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answered = {node for reply in app.control.ping(timeout=0.5) for node in reply}
        if len(answered & wanted) >= len(names):
            return
    raise TimeoutError(f"workers {names} not ready after {timeout:.0f} s")


def _round(
    bench: Stack,
    sandbox: str,
    tag: str,
    *,
    reconciles: int,
    callbacks: int,
    lanes: bool,
    one_queue: bool,
    timeout: float,
    bounded: bool = False,
) -> dict[str, float]:
    money_prefix, shop_prefix = f"q{tag}-r-", f"q{tag}-c-"
    shop_orders = _callback_orders(bench, shop_prefix, callbacks) if callbacks else []
    with bench.db() as conn:
        ids = synced_orders(conn, sandbox, money_prefix, reconciles, shipped=True, requested=True)
    names = [f"money-{tag}"]
    bench.worker(names[0], **WORKER, queues=MONEY)  # type: ignore[arg-type]
    if lanes:
        names.append(f"rest-{tag}")
        bench.worker(names[1], **WORKER, queues=REST)  # type: ignore[arg-type]
    try:
        _wait_ready(names)
        # One operation first, so that the figures are not the first task's start-up
        # (the worker's pool, its HTTP client, imports).
        with bench.db() as conn:
            warm = synced_orders(conn, sandbox, f"q{tag}-w-", 1, shipped=True, requested=True)
        _push(bench, Queue.RECONCILE, Job.RECONCILE_ORDER.value, warm)
        wait_until(lambda: _count(bench, RECONCILED, f"q{tag}-w-") == 1, timeout=120)
        # Every callback ahead of every reconcile; the clock starts when the reconciles
        # are queued.
        callback_queue = Queue.RECONCILE if one_queue else Queue.CALLBACKS
        _push(bench, callback_queue, Job.DELIVER_CALLBACKS.value, shop_orders)
        started = time.monotonic()
        _push(bench, Queue.RECONCILE, Job.RECONCILE_ORDER.value, ids)
        first = last = None
        deadline = started + timeout
        while True:
            done = _count(bench, RECONCILED, money_prefix)
            now = time.monotonic()
            if first is None and done:
                first = now - started
            if done >= reconciles:
                last = now - started
                break
            if now > deadline:
                if not bounded:
                    raise TimeoutError(f"{done}/{reconciles} reconciles after {timeout:.0f} s")
                # A lower bound is the figure: the reconciles are still waiting.
                first = first if first is not None else now - started
                last = now - started
                break
            time.sleep(0.05)
        delivered = _count(bench, DELIVERED, shop_prefix) if callbacks else 0
    finally:
        for name in names:
            bench.stop(name)
    assert first is not None and last is not None
    return {
        "gave_up": float(done < reconciles),
        "first_reconcile_s": first,
        "last_reconcile_s": last,
        "callbacks_delivered_by_then": delivered,
        "reconciles": reconciles,
        "callbacks": callbacks,
    }


def run(
    *,
    quick: bool,
    reconciles: int | None = None,
    callbacks: int | None = None,
    before: bool = True,
) -> tuple[list[Row], dict[str, Any]]:
    reconciles = reconciles or (400 if quick else 2000)
    callbacks = callbacks or (4000 if quick else 20000)
    rounds: dict[str, dict[str, float]] = {}
    with stack() as bench:
        bench.env["SHOP_CALLBACK_SECRET"] = new_secret()
        sandbox = bench.sandbox()
        bench.env["SHOP_CALLBACK_URL"] = f"{sandbox}/_sandbox/shop/callbacks"
        tag = uuid.uuid4().hex[:4]
        timeout = 120 + reconciles * 0.1 + callbacks * 0.05
        for name, options in (
            ("baseline", {"callbacks": 0, "lanes": False, "one_queue": False}),
            ("lanes", {"callbacks": callbacks, "lanes": True, "one_queue": False}),
            ("one queue", {"callbacks": callbacks, "lanes": False, "one_queue": True}),
        ):
            if name == "one queue" and not before:
                continue
            if name == "one queue":
                # Enough to show the wait; past it the figures are lower bounds.
                options["bounded"] = True
                timeout = max(60.0, 5 * rounds["baseline"]["last_reconcile_s"])
            result = _round(
                bench,
                sandbox,
                f"{tag}{name[0]}",
                reconciles=reconciles,
                timeout=timeout,
                **options,  # type: ignore[arg-type]
            )
            rounds[name] = result
            print(
                f"  {name:9}: first reconcile {result['first_reconcile_s']:6.2f} s, "
                f"last {result['last_reconcile_s']:6.2f} s, "
                f"callbacks delivered by then {int(result['callbacks_delivered_by_then'])}",
                flush=True,
            )
    base, lanes = rounds["baseline"], rounds["lanes"]
    ahead = f"{callbacks:,} callbacks queued ahead"
    rows = [
        Row(
            f"first of {reconciles:,} reconciles, {ahead}, lanes",
            lanes["first_reconcile_s"],
            "s",
            base["first_reconcile_s"],
            "<= 1 s more than the baseline (nothing waits)",
            lanes["first_reconcile_s"] <= base["first_reconcile_s"] + 1,
        ),
        Row(
            f"last of {reconciles:,} reconciles, {ahead}, lanes",
            lanes["last_reconcile_s"],
            "s",
            base["last_reconcile_s"],
            "<= 2x the baseline (cores shared only)",
            lanes["last_reconcile_s"] <= 2 * base["last_reconcile_s"],
        ),
    ]
    single = rounds.get("one queue")
    rows += (
        []
        if single is None
        else [
            Row(
                f"first of {reconciles:,} reconciles, {ahead}, one queue (before)"
                + (" (still waiting: at least)" if single["gave_up"] else ""),
                single["first_reconcile_s"],
                "s",
                base["first_reconcile_s"],
            ),
            Row(
                f"last of {reconciles:,} reconciles, {ahead}, one queue (before)"
                + (" (still waiting: at least)" if single["gave_up"] else ""),
                single["last_reconcile_s"],
                "s",
                base["last_reconcile_s"],
            ),
        ]
    )
    return rows, {"rounds": rounds, "worker": WORKER, "money": MONEY, "rest": REST}
