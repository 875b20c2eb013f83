"""Issue 11, the reconciler's safety: each sequence that went wrong on 8ee2fb3, as a
test on the real schema and SQL (Postgres), the PSP played in-process."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from psycopg.types.json import Jsonb

from ordersync.db import async_pool
from service.order_views import request_reconcile
from tests.ledger.harness import (
    FakeKlarna,
    KlarnaOrder,
    answer,
    context,
    insert_order,
    new_order_id,
    operations,
    order_row,
    outbox,
    read_timeout,
    shipped,
    snapshot,
    update_snapshot,
)
from tests.seed_basket import DISCOUNT, SHOES, SOCKS
from workers import adyen_inbox, sweeper
from workers.context import WorkerContext
from workers.reconcile import Reconciler

pytestmark = pytest.mark.integration

WAITING = {"waiting", "backing_off", "in_flight_elsewhere", "refresh_failed", "step_limit"}


def drive(ctx: WorkerContext, order_id: str, *, force: bool = False, rounds: int = 60) -> str:
    """Runs the reconciler as the worker's tasks and retries would, until it rests."""
    reconciler = Reconciler(ctx, lambda *_: None)
    why = ""
    for _ in range(rounds):
        why = reconciler.run(order_id, force=force)
        force = False
        if why not in WAITING:
            return why
        time.sleep(0.03)
    return why


def operator_reconcile(ctx: WorkerContext, order_id: str) -> str:
    """POST /orders/{id}/reconcile: the service's function, then the forced task."""

    async def call() -> None:
        assert ctx.settings.database_url is not None
        pool = async_pool(ctx.settings.database_url.get_secret_value(), max_size=2)
        await pool.open()
        try:
            await request_reconcile(pool, order_id, "test")
        finally:
            await pool.close()

    asyncio.run(call())
    return drive(ctx, order_id, force=True)


def klarna_order(ctx: WorkerContext, klarna: FakeKlarna, lines: list[dict[str, Any]], **kw: Any):
    order_id = new_order_id()
    snap = snapshot(order_id, lines)
    klarna.orders[snap.psp_order_id] = KlarnaOrder(order_amount=snap.total, **kw)
    return order_id, snap


def test_seq01_exhausted_unknown_then_operator_reconcile_does_not_double_capture(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES, SOCKS, DISCOUNT])
    insert_order(ctx, snap, authorized=snap.total)
    drive(ctx, order_id)
    # The capture is applied, its answer lost; every check-read then fails.
    klarna.fault("POST", "/captures", answer(500, apply=True))
    klarna.fault("GET", snap.psp_order_id, answer(503), times=10)
    update_snapshot(ctx, snapshot(order_id, shipped([SHOES, SOCKS, DISCOUNT], shoes=1), version=2))
    drive(ctx, order_id)
    (op,) = [o for o in operations(ctx, order_id) if o["kind"] == "capture"]
    assert op["status"] != "failed" and op["outcome_unknown"]
    row = order_row(ctx, order_id)
    assert "needs_attention" in row["flags"]
    assert row["flag_reason"]["needs_attention"]["code"] == "outcome_unknown"
    klarna.faults.clear()
    operator_reconcile(ctx, order_id)
    assert len(klarna.orders[snap.psp_order_id].captures) == 1
    (op,) = [o for o in operations(ctx, order_id) if o["kind"] == "capture"]
    assert op["status"] == "succeeded"
    assert (
        order_row(ctx, order_id)["captured_amount"]
        == klarna.orders[snap.psp_order_id].captured_amount
    )


def test_seq03_failed_check_read_is_not_the_operations_outcome(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, snap, authorized=snap.total)
    drive(ctx, order_id)
    # An increase Klarna applies, the answer lost; the check-read answers 403.
    klarna.fault("PATCH", "/authorization", answer(500, apply=True))
    klarna.fault("GET", snap.psp_order_id, answer(403, json={"error_code": "FORBIDDEN"}))
    update_snapshot(ctx, snapshot(order_id, [SHOES, SOCKS], version=2))
    drive(ctx, order_id)
    (op,) = [o for o in operations(ctx, order_id) if o["kind"] == "update_authorization"]
    assert op["status"] == "succeeded"
    row = order_row(ctx, order_id)
    assert "needs_new_order" not in row["flags"]
    assert row["authorized_amount"] == klarna.orders[snap.psp_order_id].order_amount == 2100
    assert not [e for e in outbox(ctx, order_id) if e["event_type"] == "order.new_order_required"]


def test_seq04_a_slow_read_never_overwrites_newer_figures(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, shipped([SHOES, SOCKS, DISCOUNT], socks=1))
    insert_order(ctx, snap)  # Klarna's figures not read yet: both reconciles refresh

    def second_reconcile() -> None:
        klarna.on_read = None
        assert drive(ctx, order_id) == "in_sync"

    klarna.on_read = second_reconcile  # runs while the first one's read is in flight
    drive(ctx, order_id)
    assert len(klarna.orders[snap.psp_order_id].captures) == 1
    row = order_row(ctx, order_id)
    assert row["captured_amount"] == 315 and row["psp_status"] == "part_captured"
    assert row["flags"] == []


def test_seq09_malformed_retry_after_falls_back_to_backoff(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, shipped([SHOES], shoes=1))
    insert_order(ctx, snap, authorized=snap.total)
    klarna.fault("POST", "/captures", answer(503, headers={"Retry-After": "soon"}), times=2)
    drive(ctx, order_id)
    (op,) = operations(ctx, order_id)
    assert op["status"] == "succeeded" and op["attempts"] == 3
    assert len(klarna.orders[snap.psp_order_id].captures) == 1


def test_seq09_an_exception_inside_an_attempt_is_recorded_as_that_attempt(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, shipped([SHOES], shoes=1))
    insert_order(ctx, snap, authorized=snap.total)

    def boom(request: httpx.Request) -> tuple[bool, httpx.Response | None]:
        raise RuntimeError("bug in the client")

    klarna.fault("POST", "/captures", boom, times=10)
    drive(ctx, order_id)  # the exception stays inside the attempt
    (op,) = operations(ctx, order_id)
    assert op["error"]["code"] == "RuntimeError"
    assert op["attempts"] == ctx.settings.max_attempts
    # It may have reached Klarna: parked unknown, flagged, never `failed`.
    assert op["status"] == "pending" and op["outcome_unknown"]
    assert op["next_attempt_at"] is None
    assert "needs_attention" in order_row(ctx, order_id)["flags"]


def test_seq09_an_unconfigured_provider_flags_once_and_stops(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, snap)
    del ctx.providers["klarna"]
    drive(ctx, order_id)
    drive(ctx, order_id)
    row = order_row(ctx, order_id)
    assert "needs_attention" in row["flags"]
    assert row["reconcile_requested_at"] is None  # the sweeper does not come back for it
    assert len(outbox(ctx, order_id)) == 1


def test_seq10_in_progress_answer_is_an_unknown_outcome(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, shipped([SHOES], shoes=1))
    insert_order(ctx, snap, authorized=snap.total)

    klarna.fault("POST", "/captures", read_timeout)
    # The first request is still running at Klarna when the retry comes: 409, then it applies.
    klarna.fault("POST", "/captures", answer(409, apply=True, json={"error_code": "CONFLICT"}))
    drive(ctx, order_id)
    (op,) = operations(ctx, order_id)
    assert op["status"] == "succeeded"
    row = order_row(ctx, order_id)
    assert row["captured_amount"] == 1200 and row["flags"] == []
    assert len(klarna.orders[snap.psp_order_id].captures) == 1


def test_seq10_lease_is_renewed_while_a_call_runs(database_url: str) -> None:
    """A call slower than the lease: the heartbeat keeps it, so no second worker sends."""
    klarna = FakeKlarna()
    slow = context(database_url, klarna, lease_seconds=1)
    try:
        order_id, snap = klarna_order(slow, klarna, shipped([SHOES], shoes=1))
        insert_order(slow, snap, authorized=snap.total)
        seen: list[str] = []

        def slow_capture(request: httpx.Request) -> tuple[bool, httpx.Response | None]:
            time.sleep(2.5)
            seen.append(Reconciler(slow, lambda *_: None).run(order_id))  # a second worker
            return True, None

        klarna.fault("POST", "/captures", slow_capture)
        drive(slow, order_id)
        assert seen == ["in_flight_elsewhere"]
        assert len(klarna.orders[snap.psp_order_id].captures) == 1
    finally:
        slow.close()


def test_seq11_a_retry_resends_the_stored_request_byte_for_byte(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, snap, authorized=snap.total)
    ship = {"carrier": "DHL", "tracking_number": "T1"}
    update_snapshot(ctx, snapshot(order_id, shipped([SHOES], shoes=1), version=2, shipping=ship))
    klarna.fault("POST", "/captures", answer(429))
    Reconciler(ctx, lambda *_: None).run(order_id)  # 429: a retry is due
    # The shop corrects the tracking number before the retry.
    moved = {"carrier": "UPS", "tracking_number": "T2"}
    update_snapshot(ctx, snapshot(order_id, shipped([SHOES], shoes=1), version=3, shipping=moved))
    drive(ctx, order_id)
    bodies = [r.content for r in klarna.captures(snap.psp_order_id)]
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert b"DHL" in bodies[0]
    assert len(klarna.orders[snap.psp_order_id].captures) == 1


def test_seq12_sweeps_are_fair_to_a_lost_message(ctx: WorkerContext) -> None:
    stuck = f"stuck-{uuid.uuid4().hex[:8]}"
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute(
            """
            INSERT INTO orders (id, version, provider, psp_order_id, currency, status,
                                snapshot, desired_amount, reconcile_requested_at)
            SELECT %(p)s || n, 1, 'adyen', %(p)s || n, 'EUR', 'open', '{}', 0,
                   now() - interval '1 hour' + n * interval '1 ms'
            FROM generate_series(1, %(n)s) AS n
            """,
            {"p": stuck, "n": sweeper.BATCH + 20},
        )
    lost = new_order_id()
    snap = snapshot(lost, [SHOES], provider="adyen")
    insert_order(ctx, snap, reconcile_requested_at=datetime.now(UTC) - timedelta(minutes=1))
    seen: list[str] = []
    for _ in range(2):
        sweeper.sweep(ctx, lambda order_id, _delay: seen.append(order_id))
    assert lost in seen
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute("DELETE FROM orders WHERE id LIKE %s", (stuck + "%",))
        conn.execute("UPDATE orders SET reconcile_requested_at = NULL")


def test_the_periodic_sweep_reads_in_one_transaction_and_queues_each_find(
    ctx: WorkerContext,
) -> None:
    lost = new_order_id()
    insert_order(
        ctx,
        snapshot(lost, [SHOES], provider="adyen"),
        reconcile_requested_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    queued: dict[str, list[Any]] = {"reconcile": [], "delivery": [], "notification": []}
    counts = sweeper.sweep_all(
        ctx,
        lambda order_id, _delay: queued["reconcile"].append(order_id),
        lambda order_id, _delay: queued["delivery"].append(order_id),
        lambda inbox_id, _delay: queued["notification"].append(inbox_id),
    )
    assert lost in queued["reconcile"]
    assert lost not in queued["delivery"]
    assert counts["requested"] >= 1
    assert {"callbacks", "notifications", "silent_operations", "resync"} <= set(counts)
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute("UPDATE orders SET reconcile_requested_at = NULL WHERE id = %s", (lost,))


def test_seq13_a_second_refused_basket_tells_the_shop_again(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, snap, authorized=snap.total)
    drive(ctx, order_id)
    forbidden = answer(403, json={"error_code": "NOT_ALLOWED", "error_messages": ["no"]})
    klarna.fault("PATCH", "/authorization", forbidden, times=2)
    update_snapshot(ctx, snapshot(order_id, [SHOES, SOCKS], version=2))
    drive(ctx, order_id)
    bigger = {**SOCKS, "quantity": 3}
    update_snapshot(ctx, snapshot(order_id, [SHOES, bigger], version=3))
    drive(ctx, order_id)
    drive(ctx, order_id)  # the same refusal again is no news
    events = [e for e in outbox(ctx, order_id) if e["event_type"] == "order.new_order_required"]
    assert [e["version"] for e in events] == [2, 3]
    assert len({e["id"] for e in events}) == 2


def test_seq14_an_extension_that_does_not_move_expiry_is_not_planned_forever(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    soon = datetime.now(UTC) + timedelta(days=1)
    order_id, snap = klarna_order(ctx, klarna, [SHOES], expires_at=soon.isoformat())
    insert_order(ctx, snap, authorized=snap.total, expires_at=soon)
    drive(ctx, order_id)
    extends = [r for r in klarna.requests if r.url.path.endswith("extend-authorization-time")]
    assert len(extends) == 1
    assert "needs_attention" in order_row(ctx, order_id)["flags"]


def test_seq14_chasing_silent_operations_holds_no_lock_across_orders(
    ctx: WorkerContext,
) -> None:
    """Another worker holds one order: the chase skips it, flags the rest, never waits."""
    ids = []
    for _ in range(2):
        order_id = new_order_id()
        insert_order(ctx, snapshot(order_id, shipped([SHOES], shoes=1), provider="adyen"))
        ids.append(order_id)
        with ctx.pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO operations (id, order_id, seq, kind, status, amount, target_version,"
                " idempotency_key, psp_reference, updated_at) VALUES (%s, %s, 1, 'capture',"
                " 'awaiting_notification', 1200, 1, %s, 'P', now() - interval '2 days')",
                (uuid.uuid4(), order_id, str(uuid.uuid4())),
            )
    done = threading.Event()
    with ctx.pool.connection() as holder:
        holder.execute("SELECT 1 FROM orders WHERE id = %s FOR UPDATE", (ids[0],))
        chase = threading.Thread(
            target=lambda: (adyen_inbox.chase_silent_operations(ctx), done.set()), daemon=True
        )
        chase.start()
        finished = done.wait(5)
        holder.rollback()
    chase.join()
    assert finished, "the chase waited on an order another worker held"
    assert "needs_attention" in order_row(ctx, ids[1])["flags"]


def adyen_notification(ctx: WorkerContext, item: dict[str, Any]) -> int:
    with ctx.pool.connection() as conn, conn.transaction():
        row = conn.execute(
            "WITH stored AS (INSERT INTO inbox (source, event_key, event_type)"
            " VALUES ('adyen', %s, %s) RETURNING id, received_at),"
            " body AS (INSERT INTO inbox_bodies (inbox_id, payload) SELECT id, %s FROM stored),"
            " due AS (INSERT INTO adyen_due (inbox_id, received_at)"
            " SELECT id, received_at FROM stored)"
            " SELECT id FROM stored",
            (str(uuid.uuid4()), item["eventCode"], Jsonb(item)),
        ).fetchone()
    assert row is not None
    return int(row["id"])


def test_seq02_adyen_resend_settled_by_an_early_notification(database_url: str) -> None:
    state: dict[str, Any] = {"n": 0}
    holder: dict[str, WorkerContext] = {}

    def adyen(request: httpx.Request) -> httpx.Response:
        state["n"] += 1
        psp = f"MOD{state['n']}"
        if state["n"] == 2:
            # The resend's success is notified before the sender records `received`.
            body = json.loads(request.content)
            item = {
                "pspReference": psp,
                "originalReference": state["payment"],
                "merchantReference": body["reference"],
                "merchantAccountCode": "Test",
                "eventCode": "CAPTURE",
                "success": "true",
                "amount": {"value": 1200, "currency": "EUR"},
            }
            adyen_inbox.process(
                holder["ctx"], adyen_notification(holder["ctx"], item), lambda *_: None
            )
        return httpx.Response(200, json={"status": "received", "pspReference": psp})

    ctx = context(database_url, adyen)
    holder["ctx"] = ctx
    try:
        order_id = new_order_id()
        snap = snapshot(order_id, shipped([SHOES], shoes=1), provider="adyen")
        state["payment"] = snap.psp_order_id
        insert_order(ctx, snap)
        assert drive(ctx, order_id) == "awaiting_notification"
        (op,) = operations(ctx, order_id)
        failed = {
            "pspReference": "MOD1",
            "originalReference": snap.psp_order_id,
            "merchantReference": str(op["id"]),
            "merchantAccountCode": "Test",
            "eventCode": "CAPTURE_FAILED",
            "success": "true",
            "amount": {"value": 1200, "currency": "EUR"},
        }
        adyen_inbox.process(ctx, adyen_notification(ctx, failed), lambda *_: None)
        drive(ctx, order_id)
        (op,) = operations(ctx, order_id)
        assert op["status"] == "succeeded" and op["key_generation"] == 1
        assert order_row(ctx, order_id)["captured_amount"] == 1200
    finally:
        ctx.close()


def test_seq14_adyen_authorization_fallback_is_the_lowest_version(ctx: WorkerContext) -> None:
    from domain.snapshot import ShopEvent
    from service.ingest import store_shop_event

    order_id = new_order_id()
    later = snapshot(order_id, [SHOES, SOCKS], provider="adyen", version=3)
    first = snapshot(order_id, [SHOES], provider="adyen", version=1)

    async def send() -> None:
        assert ctx.settings.database_url is not None
        pool = async_pool(ctx.settings.database_url.get_secret_value(), max_size=2)
        await pool.open()
        try:
            for snap in (later, first):  # the later version arrives first
                event = ShopEvent.model_validate({"type": "order.updated", "order": snap})
                await store_shop_event(pool, str(uuid.uuid4()), event)
        finally:
            await pool.close()

    asyncio.run(send())
    row = order_row(ctx, order_id)
    assert row["version"] == 3 and row["desired_amount"] == 2100
    assert row["authorized_amount"] == 1200  # v1's total: what the shopper was authorized for


class Killed(BaseException):
    """The worker process dies mid-call: nothing after this line runs, no record."""


def test_seq10_a_worker_killed_mid_call_is_resumed_by_another_with_one_effect(
    database_url: str,
) -> None:
    klarna = FakeKlarna()
    ctx = context(database_url, klarna, lease_seconds=1)
    try:
        order_id, snap = klarna_order(ctx, klarna, shipped([SHOES], shoes=1))
        insert_order(ctx, snap, authorized=snap.total)

        def die_after_applying(request: httpx.Request) -> tuple[bool, httpx.Response | None]:
            klarna._handle(request)  # Klarna applies it
            raise Killed

        klarna.fault("POST", "/captures", die_after_applying)
        with pytest.raises(Killed):
            Reconciler(ctx, lambda *_: None).run(order_id)
        (op,) = operations(ctx, order_id)
        assert op["status"] == "sent"  # the dead worker's claim, its lease running out
        started = time.monotonic()
        other = Reconciler(ctx, lambda *_: None)
        while other.run(order_id) == "in_flight_elsewhere":
            time.sleep(0.1)
        assert time.monotonic() - started < 3  # noticed within about one lease
        (op,) = operations(ctx, order_id)
        assert op["status"] == "succeeded" and op["attempts"] == 2
        assert len(klarna.orders[snap.psp_order_id].captures) == 1
        assert order_row(ctx, order_id)["captured_amount"] == 1200
    finally:
        ctx.close()
