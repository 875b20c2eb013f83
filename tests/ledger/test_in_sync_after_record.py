"""The in-sync step after an operation's record (clearing what is due, `order.synced`)
is decided on the order as it is when the outcome is recorded, never on the order the
operation was planned on: a shop snapshot that arrives while the PSP is being called
must still be reconciled. Holds today's path, and any path that sends the in-sync step
with the record (it has to be guarded by "nothing changed since the plan")."""

from __future__ import annotations

import httpx
import pytest

from tests.ledger.harness import (
    FakeKlarna,
    KlarnaOrder,
    insert_order,
    new_order_id,
    order_row,
    outbox,
    shipped,
    snapshot,
    update_snapshot,
)
from tests.seed_basket import SHOES, SOCKS
from workers.context import WorkerContext
from workers.reconcile import Reconciler

pytestmark = pytest.mark.integration


def test_a_snapshot_arriving_during_the_call_is_not_marked_in_sync(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id = new_order_id()
    first = snapshot(order_id, shipped([SHOES, SOCKS], socks=2))
    klarna.orders[first.psp_order_id] = KlarnaOrder(order_amount=first.total)
    insert_order(ctx, first, authorized=first.total)
    second = snapshot(order_id, shipped([SHOES, SOCKS], socks=2, shoes=1), version=2)

    def newer_snapshot_meanwhile(_: httpx.Request) -> tuple[bool, httpx.Response | None]:
        update_snapshot(ctx, second)  # the web process, while the capture is sent
        return False, None  # then the capture is answered as usual

    klarna.fault("POST", "/captures", newer_snapshot_meanwhile)
    # One task: the socks' capture was planned on version 1; once it is recorded, the
    # next step is the shoes' capture for version 2, not "in sync".
    assert Reconciler(ctx, lambda *_: None).run(order_id) == "in_sync"
    captures = klarna.orders[first.psp_order_id].captures
    assert [c["captured_amount"] for c in captures] == [900, 1200]
    row = order_row(ctx, order_id)
    assert row["version"] == 2 and row["captured_amount"] == second.total
    synced = [e for e in outbox(ctx, order_id) if e["event_type"] == "order.synced"]
    assert [e["version"] for e in synced] == [2]


def test_a_snapshot_arriving_during_the_last_call_leaves_the_order_due(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """A snapshot that brings no new work, arriving during the order's last call: the
    order ends in sync, and `order.synced` names the version it is in sync with (2),
    not the version the operation was planned on (an in-sync step sent with the record
    from the plan's view would name 1)."""
    order_id = new_order_id()
    first = snapshot(order_id, shipped([SHOES, SOCKS], socks=2, shoes=1))
    klarna.orders[first.psp_order_id] = KlarnaOrder(order_amount=first.total)
    insert_order(ctx, first, authorized=first.total)
    second = snapshot(order_id, shipped([SHOES, SOCKS], socks=2, shoes=1), version=2)

    def newer_snapshot_meanwhile(_: httpx.Request) -> tuple[bool, httpx.Response | None]:
        update_snapshot(ctx, second)
        return False, None

    klarna.fault("POST", "/captures", newer_snapshot_meanwhile)
    assert Reconciler(ctx, lambda *_: None).run(order_id) == "in_sync"
    assert len(klarna.orders[first.psp_order_id].captures) == 1
    row = order_row(ctx, order_id)
    assert row["version"] == 2 and row["reconcile_requested_at"] is None
    synced = [e for e in outbox(ctx, order_id) if e["event_type"] == "order.synced"]
    assert [e["version"] for e in synced] == [2]
