"""Rules of the contract and the README that surviving mutants of the reconciler and the
Adyen inbox showed no test held (docs/mutation.md names the mutant each one kills): the
real reconciler and SQL on Postgres, the PSP played in-process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import REGISTRY

from data import orders as store
from data.orders import OperationRef
from domain.lines import PspLine, basket_lines
from domain.snapshot import OrderSnapshot
from integrations.results import PspRequest
from tests.ledger.harness import (
    FakeKlarna,
    context,
    insert_order,
    new_order_id,
    operations,
    order_row,
    read_timeout,
    shipped,
    snapshot,
    update_snapshot,
)
from tests.ledger.test_ledger_regressions import (
    adyen_notification,
    drive,
    klarna_order,
    operator_reconcile,
)
from tests.seed_basket import SHOES, SOCKS, discount
from workers import adyen_inbox, crashpoints, reconcile
from workers.context import WorkerContext
from workers.reconcile import Reconciler, _not_behind, rejection_flag

pytestmark = pytest.mark.integration


def test_adyen_authorisation_sets_the_authorized_amount_of_a_known_order(
    ctx: WorkerContext,
) -> None:
    # README, Adyen "Outcomes": AUTHORISATION records Adyen's authorized amount unless an
    # operation of ours has changed the authorization since (none has here).
    order_id = new_order_id()
    snap = snapshot(order_id, [SHOES, SOCKS], provider="adyen")
    insert_order(ctx, snap, authorized=1200)
    item = adyen_item(snap.psp_order_id, "AUTHORISATION", "true", merchantReference=order_id)
    inbox_id = adyen_notification(ctx, item)
    assert adyen_inbox.process(ctx, inbox_id, lambda *_: None) == "applied"
    assert order_row(ctx, order_id)["authorized_amount"] == 2100
    with ctx.pool.connection() as conn:
        row = conn.execute("SELECT outcome FROM inbox WHERE id = %s", (inbox_id,)).fetchone()
    assert row is not None and row["outcome"] == "applied"


def adyen_item(
    psp: str, code: str, success: str, value: int = 2100, **fields: Any
) -> dict[str, Any]:
    """A notification item of Adyen's about `psp` (a payment, or a modification with
    `originalReference`), from the merchant account Test, in EUR."""
    return {
        "pspReference": psp,
        "merchantAccountCode": "Test",
        "eventCode": code,
        "success": success,
        "amount": {"value": value, "currency": "EUR"},
        **fields,
    }


def klarna_shoes_shipped(
    ctx: WorkerContext, klarna: FakeKlarna, **insert: Any
) -> tuple[str, OrderSnapshot]:
    """A Klarna order of the shoes, marked shipped and authorized for its total, already
    read: the reconciler's next step is their capture (1200)."""
    order_id, snap = klarna_order(ctx, klarna, shipped([SHOES], shoes=1))
    insert_order(ctx, snap, authorized=snap.total, **insert)
    return order_id, snap


def _adyen_order(ctx: WorkerContext) -> tuple[str, str]:
    order_id = new_order_id()
    snap = snapshot(order_id, shipped([SHOES, SOCKS], shoes=1), provider="adyen")
    insert_order(ctx, snap)
    return order_id, snap.psp_order_id


def _payment_event(ctx: WorkerContext, psp: str, code: str, success: str) -> str:
    item = adyen_item(psp, code, success)
    return adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None)


def test_adyen_expire_marks_what_was_not_captured_as_lapsed(ctx: WorkerContext) -> None:
    order_id, psp = _adyen_order(ctx)
    assert _payment_event(ctx, psp, "EXPIRE", "true") == "applied"
    row = order_row(ctx, order_id)
    assert row["psp_status"] == "expired"
    assert row["authorized_amount"] == row["captured_amount"] == 0


@pytest.mark.parametrize(
    ("reason", "message"),
    [(None, "Adyen reports the payment as not authorised"), ("FRAUD", "FRAUD")],
)
def test_adyen_authorisation_refused_flags_the_order_for_a_person(
    ctx: WorkerContext, reason: str | None, message: str
) -> None:
    order_id, psp = _adyen_order(ctx)
    item = adyen_item(psp, "AUTHORISATION", "false", **({"reason": reason} if reason else {}))
    assert adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None) == "flagged"
    row = order_row(ctx, order_id)
    assert row["flags"] == ["needs_attention"]
    # The person reads Adyen's own reason when it gives one.
    flagged = row["flag_reason"]["needs_attention"]
    assert (flagged["code"], flagged["message"]) == ("authorisation_refused", message)


def test_a_capture_the_psp_forbids_needs_a_person_told_the_psps_reason_not_a_new_order(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # Only a refused *increase* asks the shop for a new order (README, "Refused increases").
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    forbidden = httpx.Response(403, json={"error_code": "NOT_ALLOWED"})
    klarna.fault("POST", "/captures", lambda _r: (False, forbidden))
    drive(ctx, order_id)
    (op,) = operations(ctx, order_id)
    assert op["status"] == "rejected"
    row = order_row(ctx, order_id)
    assert row["flags"] == ["needs_attention"]
    # The person reads why the PSP refused it: the PSP's own error code, not ours.
    reason = row["flag_reason"]["needs_attention"]
    assert (reason["code"], reason["message"]) == ("NOT_ALLOWED", "Forbidden")


def test_a_first_read_that_fails_for_now_is_tried_again_later_unflagged(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, snap)  # Klarna not read yet
    busy = httpx.Response(429, headers={"Retry-After": "120"})
    klarna.fault("GET", snap.psp_order_id, lambda _r: (False, busy))
    before = datetime.now(UTC)
    assert Reconciler(ctx, lambda *_: None).run(order_id) == "refresh_failed"
    row = order_row(ctx, order_id)
    assert row["flags"] == []
    assert row["next_reconcile_at"] > before + timedelta(seconds=60)  # Retry-After


def test_an_operation_in_flight_without_credentials_is_parked_and_flagged(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    klarna.fault("POST", "/captures", lambda _r: (False, httpx.Response(429)))
    Reconciler(ctx, lambda *_: None).run(order_id)  # the capture waits for its retry
    del ctx.providers["klarna"]
    drive(ctx, order_id, force=True)
    (op,) = operations(ctx, order_id)
    assert op["status"] == "pending" and op["next_attempt_at"] is None
    reason = order_row(ctx, order_id)["flag_reason"]["needs_attention"]
    assert reason["code"] == "provider_not_configured"


def test_an_unconfigured_provider_is_flagged_with_its_reason(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, snap)
    del ctx.providers["klarna"]
    drive(ctx, order_id)
    reason = order_row(ctx, order_id)["flag_reason"]["needs_attention"]
    assert reason["code"] == "provider_not_configured"


def test_a_failed_check_read_is_recorded_as_the_reads_error_with_its_correlation(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_shoes_shipped(ctx, klarna)

    unavailable = httpx.Response(
        503, json={"error_code": "SERVICE_UNAVAILABLE", "correlation_id": "corr-7"}
    )
    klarna.fault("POST", "/captures", read_timeout)
    klarna.fault("GET", snap.psp_order_id, lambda _r: (False, unavailable), times=10)
    drive(ctx, order_id)
    (op,) = operations(ctx, order_id)
    # Still unknown: the read's failure is not the capture's outcome, and the operator
    # sees which read failed and Klarna's correlation id.
    assert op["status"] == "pending" and op["outcome_unknown"]
    assert op["error"]["code"].startswith("check_read_")
    assert op["error"]["correlation_id"] == "corr-7"
    assert op["error"]["http_status"] == 503


def test_an_earlier_capture_does_not_stop_the_first_extension(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # Only an extension inside the window counts as "extended already"; a capture does not.
    soon = datetime.now(UTC) + timedelta(days=1)
    order_id, snap = klarna_order(ctx, klarna, shipped([SHOES, SOCKS], shoes=1))
    klarna.orders[snap.psp_order_id].expires_at = soon.isoformat()
    insert_order(ctx, snap, authorized=snap.total, expires_at=soon)
    drive(ctx, order_id)
    assert [op["kind"] for op in operations(ctx, order_id)][:2] == [
        "capture",
        "extend_authorization",
    ]
    extends = [r for r in klarna.requests if r.url.path.endswith("extend-authorization-time")]
    assert len(extends) == 1


def test_a_first_read_and_the_work_it_allows_happen_in_one_run(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, shipped([SHOES], shoes=1))
    insert_order(ctx, snap)  # Klarna not read yet
    assert Reconciler(ctx, lambda *_: None).run(order_id) == "in_sync"
    assert len(klarna.orders[snap.psp_order_id].captures) == 1


def test_a_first_read_klarna_refuses_flags_the_order_and_parks_it(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, snap)
    missing = httpx.Response(404, json={"error_code": "NO_SUCH_ORDER"})
    klarna.fault("GET", snap.psp_order_id, lambda _r: (False, missing))
    assert Reconciler(ctx, lambda *_: None).run(order_id) == "refresh_failed"
    row = order_row(ctx, order_id)
    assert row["flag_reason"]["needs_attention"]["code"] == "read_failed"


def _inbox_row(ctx: WorkerContext, inbox_id: int) -> dict[str, object]:
    with ctx.pool.connection() as conn:
        row = conn.execute("SELECT * FROM inbox WHERE id = %s", (inbox_id,)).fetchone()
    assert row is not None
    return dict(row)


def _capture_item(psp: str, payment: str, success: str) -> dict[str, object]:
    return adyen_item(psp, "CAPTURE", success, 1200, originalReference=payment)


def test_adyen_notifications_that_match_nothing_wait_then_are_orphaned(
    ctx: WorkerContext,
) -> None:
    item = _capture_item("MODX", "NOSUCHPAYMENT", "true")
    waiting = adyen_notification(ctx, item)
    assert adyen_inbox.process(ctx, waiting, lambda *_: None) == "unmatched"
    assert _inbox_row(ctx, waiting)["processed_at"] is None  # offered again by the sweeper
    old = adyen_notification(ctx, {**item, "pspReference": "MODY"})
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute(
            "UPDATE inbox SET received_at = now() - interval '2 days' WHERE id = %s", (old,)
        )
    assert adyen_inbox.process(ctx, old, lambda *_: None) == "orphaned"
    assert _inbox_row(ctx, old)["outcome"] == "orphaned"
    assert adyen_inbox.process(ctx, old, lambda *_: None) == "duplicate"


@contextmanager
def adyen_awaiting(
    database_url: str, *, cancelled: bool = False, **settings: Any
) -> Iterator[tuple[WorkerContext, str, str]]:
    """An Adyen order whose first operation (a capture of the shipped shoes, or the cancel
    of a cancelled order with nothing shipped) waits for its notification; Adyen answers
    each request `received` with the next pspReference, MOD1, MOD2, …"""
    refs = iter(f"MOD{n}" for n in range(1, 10))

    def adyen(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "received", "pspReference": next(refs)})

    ctx = context(database_url, adyen, **settings)
    try:
        order_id = new_order_id()
        lines = [SHOES] if cancelled else shipped([SHOES], shoes=1)
        snap = snapshot(order_id, lines, provider="adyen")
        insert_order(ctx, snap.model_copy(update={"status": "cancelled"}) if cancelled else snap)
        assert drive(ctx, order_id) == "awaiting_notification"
        yield ctx, order_id, snap.psp_order_id
    finally:
        ctx.close()


def test_adyen_a_failed_generations_repeated_notification_is_stale(database_url: str) -> None:
    with adyen_awaiting(database_url) as (ctx, order_id, payment):
        (op,) = operations(ctx, order_id)
        failed = {**_capture_item("MOD1", payment, "false"), "merchantReference": str(op["id"])}
        assert adyen_inbox.process(ctx, adyen_notification(ctx, failed), lambda *_: None) == (
            "retry"
        )
        again = adyen_notification(ctx, {**failed, "reason": "delivered twice"})
        assert adyen_inbox.process(ctx, again, lambda *_: None) == "stale"
        assert _inbox_row(ctx, again)["outcome"] == "stale"


def test_adyen_money_moved_back_after_a_success_only_flags_and_the_order_is_reconciled(
    database_url: str,
) -> None:
    # README, Adyen "Out of order": a late failure never undoes a success; it flags.
    with adyen_awaiting(database_url) as (ctx, order_id, payment):
        enqueued: list[str] = []

        def enqueue(order: str, _delay: float) -> None:
            enqueued.append(order)

        ok = _capture_item("MOD1", payment, "true")
        assert adyen_inbox.process(ctx, adyen_notification(ctx, ok), enqueue) == "succeeded"
        assert enqueued == [order_id]  # the order is reconciled after the outcome
        failed = {**ok, "eventCode": "CAPTURE_FAILED"}
        assert adyen_inbox.process(ctx, adyen_notification(ctx, failed), enqueue) == "flagged"
        (op,) = operations(ctx, order_id)
        assert op["status"] == "succeeded"
        row = order_row(ctx, order_id)
        assert row["captured_amount"] == 1200
        reason = row["flag_reason"]["needs_attention"]
        assert reason["code"] == "capture_failed_after_succeeded"
        assert reason["message"] == (
            "Adyen sent CAPTURE_FAILED (success=true) for a capture this service had "
            "recorded as succeeded; check the payment"
        )


def test_adyen_a_failed_capture_is_sent_again_later_then_fails_with_a_flag(
    database_url: str,
) -> None:
    slow = adyen_awaiting(database_url, max_attempts=2, retry_base_seconds=60, retry_max_seconds=60)
    with slow as (ctx, order_id, payment):
        delays: list[float] = []

        def enqueue(_order: str, delay: float) -> None:
            delays.append(delay)

        before = datetime.now(UTC)
        first = _capture_item("MOD1", payment, "false")
        assert adyen_inbox.process(ctx, adyen_notification(ctx, first), enqueue) == "retry"
        (op,) = operations(ctx, order_id)
        assert op["next_attempt_at"] > before  # after the back-off, not at once
        assert delays and delays[0] > 0
        with ctx.pool.connection() as conn, conn.transaction():
            conn.execute("UPDATE operations SET next_attempt_at = now() WHERE id = %s", (op["id"],))
        assert drive(ctx, order_id) == "awaiting_notification"
        last = _capture_item("MOD2", payment, "false")
        told = len(delays)
        last_id = adyen_notification(ctx, last)
        assert adyen_inbox.process(ctx, last_id, enqueue) == "failed"
        (op,) = operations(ctx, order_id)
        assert op["status"] == "failed" and op["error"]["code"] == "CAPTURE"
        reason = order_row(ctx, order_id)["flag_reason"]["needs_attention"]
        # The person reads what Adyen reported (no reason given: the capture failed).
        assert (reason["code"], reason["message"]) == (
            "retries_exhausted",
            "CAPTURE: capture failed",
        )
        # Recorded against its order, which is reconciled after it (the shop is told).
        assert _inbox_row(ctx, last_id)["order_id"] == order_id
        assert len(delays) == told + 1


def test_adyen_a_refused_cancellation_is_rejected_and_flagged(database_url: str) -> None:
    with adyen_awaiting(database_url, cancelled=True) as (ctx, order_id, payment):
        item = {**_capture_item("MOD1", payment, "false"), "eventCode": "CANCELLATION"}
        assert adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None) == (
            "rejected"
        )
        (op,) = operations(ctx, order_id)
        assert op["kind"] == "cancel" and op["status"] == "rejected"
        assert "needs_attention" in order_row(ctx, order_id)["flags"]


def test_adyen_a_rejection_of_an_operation_whose_answer_was_lost_records_adyens_reference(
    database_url: str,
) -> None:
    # README, Adyen "Outcomes": the notification settles the operation it names by our
    # operation id (merchantReference) even when Adyen's answer to the request was lost;
    # its pspReference is then recorded on the operation, which a person looks up in
    # Adyen's Customer Area.
    with adyen_awaiting(database_url, cancelled=True) as (ctx, order_id, payment):
        (op,) = operations(ctx, order_id)
        with ctx.pool.connection() as conn, conn.transaction():
            conn.execute("UPDATE operations SET psp_reference = NULL WHERE id = %s", (op["id"],))
        item = {
            **_capture_item("MOD7", payment, "false"),
            "eventCode": "CANCELLATION",
            "merchantReference": str(op["id"]),
        }
        assert adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None) == (
            "rejected"
        )
        (op,) = operations(ctx, order_id)
        assert (op["status"], op["psp_reference"]) == ("rejected", "MOD7")


def test_a_later_read_showing_money_moved_elsewhere_is_counted_and_flagged(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES, SOCKS])
    insert_order(ctx, snap, authorized=snap.total)
    # Captured in Klarna's portal, not by this service; the periodic re-read sees it.
    klarna.orders[snap.psp_order_id].captured_amount = 1200
    klarna.orders[snap.psp_order_id].status = "PART_CAPTURED"
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute("UPDATE orders SET psp_synced_at = NULL WHERE id = %s", (order_id,))
    Reconciler(ctx, lambda *_: None).run(order_id)
    row = order_row(ctx, order_id)
    assert row["captured_amount"] == 1200
    # Contract §4: money that moved without the service is counted, never repeated, and
    # flagged external_change.
    reason = row["flag_reason"]["needs_attention"]
    assert reason["code"] == "external_change" and "without this service" in reason["message"]
    # ... and the person reads what the service did with it and what a reconcile does.
    assert "never repeated; an operator's reconcile takes the PSP's figures" in reason["message"]


def _succeeded(kind: str, amount: int) -> Any:
    return SimpleNamespace(kind=kind, status="succeeded", amount=amount)


@pytest.mark.parametrize(
    ("lagging", "done", "now"),
    [
        # Released after a part capture: the read still shows the old authorization.
        (
            {"status": "part_captured", "authorized": 2100, "captured": 1200},
            [_succeeded("capture", 1200), _succeeded("release_authorization", 900)],
            {"status": "captured", "authorized": 1200, "captured": 1200},
        ),
        # Captured in full: the read does not show the capture yet.
        (
            {"status": "authorized", "authorized": 2100, "captured": 0},
            [_succeeded("capture", 2100)],
            {"status": "captured", "authorized": 2100, "captured": 2100},
        ),
    ],
    ids=["released", "captured_in_full"],
)
def test_a_lagging_read_never_undoes_what_the_psp_confirmed(
    lagging: dict[str, Any], done: list[Any], now: dict[str, Any]
) -> None:
    # A read behind the PSP's own confirmed answers keeps what they said (else the
    # planner would release or capture again).
    figures = _not_behind({**lagging, "refunded": 0}, done)
    assert {k: figures[k] for k in now} == now


def _customer_area(psp: str, code: str, success: str, account: str = "Test") -> dict[str, Any]:
    return adyen_item(
        "CA1", code, success, 1200, originalReference=psp, merchantAccountCode=account
    )


def test_adyen_a_failed_chargeback_is_not_counted_and_a_person_is_told(ctx: WorkerContext) -> None:
    order_id, psp = _adyen_order(ctx)
    # Contract §4: a chargeback is told to a person even when it failed; it moved no money.
    item = _customer_area(psp, "CHARGEBACK", "false")
    enqueued: list[str] = []
    inbox_id = adyen_notification(ctx, item)
    assert adyen_inbox.process(ctx, inbox_id, lambda order, _: enqueued.append(order)) == (
        "flagged"
    )
    row = order_row(ctx, order_id)
    assert (row["captured_amount"], row["refunded_amount"]) == (0, 0)
    reason = row["flag_reason"]["needs_attention"]
    assert reason["code"] == "external_change" and "CHARGEBACK CA1" in reason["message"]
    assert "not counted" in reason["message"]  # what the person reads it came to
    # Money that may have moved and could not be counted: a person looks first, and
    # nothing automatic goes on until an operator's reconcile.
    assert reason["halts"] is True
    # Recorded against its order, which is reconciled after it (the shop is told).
    assert _inbox_row(ctx, inbox_id)["order_id"] == order_id
    assert enqueued == [order_id]


def test_adyen_money_moved_under_another_merchant_account_is_not_counted(
    ctx: WorkerContext,
) -> None:
    order_id, psp = _adyen_order(ctx)
    # A verified HMAC says who sent it, not that it is about this order's account.
    item = _customer_area(psp, "CAPTURE", "true", account="Elsewhere")
    assert adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None) == "invalid"
    row = order_row(ctx, order_id)
    assert row["captured_amount"] == 0
    assert row["flag_reason"]["needs_attention"]["code"] == "notification_mismatch"


def test_a_flag_for_a_psp_error_tells_the_person_the_psps_code_and_message(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # A person acts on the flag alone (README, "Operator console"): when the PSP's
    # answers made the service give up, the flag carries the PSP's own code and message.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    down = httpx.Response(
        503, json={"error_code": "SERVICE_UNAVAILABLE", "error_messages": ["down for a moment"]}
    )
    klarna.fault("POST", "/captures", lambda _r: (False, down), times=10)
    drive(ctx, order_id)
    reason = order_row(ctx, order_id)["flag_reason"]["needs_attention"]
    # A 5xx may have applied: the outcome stays unknown, and the person reads Klarna's why.
    assert (reason["code"], reason["message"]) == (
        "outcome_unknown",
        "SERVICE_UNAVAILABLE: down for a moment",
    )


def test_adyen_a_customer_area_capture_the_shop_explains_is_counted_as_those_lines(
    ctx: WorkerContext,
) -> None:
    # Contract §4: money moved without the service that the shop's snapshot explains (the
    # shoes marked shipped, captured in the Customer Area at their price) is counted as
    # those units, so they are never captured again, and nobody needs to be told.
    order_id, psp = _adyen_order(ctx)
    item = _customer_area(psp, "CAPTURE", "true")
    assert adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None) == ("external")
    (op,) = operations(ctx, order_id)
    assert (op["kind"], op["status"], op["external"], op["amount"]) == (
        "capture",
        "succeeded",
        True,
        1200,
    )
    assert [(line["reference"], line["quantity"]) for line in op["lines"]] == [("shoes", 1)]
    assert order_row(ctx, order_id)["flags"] == []


def test_adyen_an_authorisation_before_its_order_is_recorded_for_it(ctx: WorkerContext) -> None:
    # README, Adyen "Outcomes": AUTHORISATION records Adyen's authorized amount also for
    # a payment whose order has not arrived yet; the inbox row says so (its outcome is
    # what the operator reads of each notification).
    item = adyen_item("PAYNOORDERYET", "AUTHORISATION", "true")
    inbox_id = adyen_notification(ctx, item)
    assert adyen_inbox.process(ctx, inbox_id, lambda *_: None) == "recorded"
    assert _inbox_row(ctx, inbox_id)["outcome"] == "recorded"
    with ctx.pool.connection() as conn:
        row = conn.execute(
            "SELECT authorized_amount FROM adyen_payments WHERE psp_reference = %s",
            ("PAYNOORDERYET",),
        ).fetchone()
    assert row is not None and row["authorized_amount"] == 2100


def test_adyen_a_capture_notified_for_another_amount_settles_nothing(database_url: str) -> None:
    # README, Ledger model: notifications whose "(for our captures, refunds, updates)
    # amount do not match change nothing and flag `notification_mismatch`", even in the
    # order's currency and from its merchant account.
    with adyen_awaiting(database_url) as (ctx, order_id, payment):
        (op,) = operations(ctx, order_id)
        item = {
            **_capture_item("MOD1", payment, "true"),
            "merchantReference": str(op["id"]),
            "amount": {"value": 1, "currency": "EUR"},
        }
        assert adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None) == (
            "invalid"
        )
        (op,) = operations(ctx, order_id)
        assert op["status"] == "awaiting_notification"
        row = order_row(ctx, order_id)
        assert row["captured_amount"] == 0
        reason = row["flag_reason"]["needs_attention"]
        assert reason["code"] == "notification_mismatch"
        assert "amount.value 1 is not the operation's 1200" in reason["message"]


def test_a_capture_whose_answer_was_lost_and_that_took_effect_is_not_sent_again(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # README, "How it works": after an answer that never came, the service first reads
    # the order; when the read shows the capture took effect, it is recorded from the
    # read and not sent again.
    order_id, snap = klarna_shoes_shipped(ctx, klarna)

    def applied_then_lost(request: httpx.Request) -> tuple[bool, httpx.Response | None]:
        klarna._handle(request)
        raise httpx.ReadTimeout("slow", request=request)

    klarna.fault("POST", "/captures", applied_then_lost)
    drive(ctx, order_id)
    (op,) = operations(ctx, order_id)
    assert op["status"] == "succeeded"
    assert len(klarna.captures(snap.psp_order_id)) == 1
    assert klarna.orders[snap.psp_order_id].captured_amount == 1200


def test_a_check_read_that_finds_a_lost_capture_applied_counts_and_flags_what_moved_outside(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # Contract §4, money that moved without the service: "When the service learns of one
    # (a PSP read, a notification), it counts it in the order's figures ... and, where
    # the shop's snapshot does not already explain it, flags needs_attention
    # (external_change)". The check-read after a lost answer is such a read: it is
    # adopted as the PSP's view, not only used to settle the operation it was made for.
    order_id, snap = klarna_shoes_shipped(ctx, klarna)
    psp = klarna.orders[snap.psp_order_id]

    def applied_lost_then_refunded_in_the_portal(
        request: httpx.Request,
    ) -> tuple[bool, httpx.Response | None]:
        klarna._handle(request)
        psp.refunded_amount += 300
        psp.refunds.append({"refund_id": "portal-1", "reference": "", "refunded_amount": 300})
        raise httpx.ReadTimeout("slow", request=request)

    klarna.fault("POST", "/captures", applied_lost_then_refunded_in_the_portal)
    drive(ctx, order_id)
    ops = operations(ctx, order_id)
    assert [(o["kind"], o["status"]) for o in ops if not o["external"]] == [
        ("capture", "succeeded")
    ]
    assert len(klarna.captures(snap.psp_order_id)) == 1
    row = order_row(ctx, order_id)
    assert (row["captured_amount"], row["refunded_amount"]) == (1200, 300)
    assert [o["amount"] for o in ops if o["external"] and o["kind"] == "refund"] == [300]
    assert row["flag_reason"]["needs_attention"]["code"] == "external_change"


def test_an_adyen_authorisation_refused_before_the_order_flags_the_order_when_it_arrives(
    ctx: WorkerContext,
) -> None:
    """Adyen's AUTHORISATION success=false can come before the shop sends the order.
    Dropped then, the order that follows would be taken as authorized for its total
    (the fallback until an AUTHORISATION is known) and its goods captured. The
    refusal is kept, like any notification for a payment not known yet, and flags the
    order when it is offered again after the order arrived."""
    order_id = new_order_id()
    snap = snapshot(order_id, shipped([SHOES, SOCKS], shoes=1), provider="adyen")
    item = adyen_item(snap.psp_order_id, "AUTHORISATION", "false", reason="Refused")
    early = adyen_notification(ctx, item)
    assert adyen_inbox.process(ctx, early, lambda *_: None) == "unmatched"
    insert_order(ctx, snap)
    assert adyen_inbox.process(ctx, early, lambda *_: None) == "flagged"
    row = order_row(ctx, order_id)
    assert row["flags"] == ["needs_attention"]
    assert row["flag_reason"]["needs_attention"]["code"] == "authorisation_refused"


def test_an_adyen_payment_whose_authorisation_was_refused_holds_nothing_to_capture_or_settle(
    ctx: WorkerContext,
) -> None:
    """Contract §4: an Adyen payment's authorized amount is its AUTHORISATION's, and a
    refused one authorized nothing. The shoes shipped and a discount takes their whole
    value: on a payment that holds money they would be settled at 0 (the last goods
    carry every share left) and the rest let go. Refused, the payment is closed at what
    was captured (0): after a person's reconcile nothing is counted captured, not even
    at 0, and nothing is sent for Adyen to refuse. Before, it stayed open at the first
    snapshot's total: the shoes were settled and a cancel sent."""
    order_id = new_order_id()
    snap = snapshot(order_id, shipped([SHOES, discount(1200)], shoes=1), provider="adyen")
    insert_order(ctx, snap)
    item = adyen_item(snap.psp_order_id, "AUTHORISATION", "false", value=0, reason="Refused")
    assert adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None) == "flagged"
    row = order_row(ctx, order_id)
    assert (row["psp_status"], row["authorized_amount"]) == ("closed", 0)
    assert row["flag_reason"]["needs_attention"]["code"] == "authorisation_refused"
    operator_reconcile(ctx, order_id)
    assert [(o["kind"], o["amount"]) for o in operations(ctx, order_id)] == []


def test_an_adyen_expire_before_its_order_is_kept_and_applied_when_the_order_arrives(
    ctx: WorkerContext,
) -> None:
    # Contract §4: an authorization that expired is money that moved without the
    # service, counted when learnt. An EXPIRE for a payment whose order has not arrived
    # is kept and offered again, as any notification for a payment not known yet:
    # dropped, the order that follows would be taken as authorized.
    order_id = new_order_id()
    snap = snapshot(order_id, shipped([SHOES, SOCKS], shoes=1), provider="adyen")
    item = adyen_item(snap.psp_order_id, "EXPIRE", "true")
    early = adyen_notification(ctx, item)
    assert adyen_inbox.process(ctx, early, lambda *_: None) == "unmatched"
    assert _inbox_row(ctx, early)["processed_at"] is None  # offered again by the sweeper
    insert_order(ctx, snap)
    assert adyen_inbox.process(ctx, early, lambda *_: None) == "applied"
    assert order_row(ctx, order_id)["psp_status"] == "expired"


def test_adyen_a_refused_authorisation_is_recorded_for_its_order_and_the_order_reconciled(
    ctx: WorkerContext,
) -> None:
    # README, Adyen "Outcomes": each notification's inbox row names the order it came to
    # (what the operator reads), and an order a notification changed is reconciled after
    # it, so the flag reaches the shop.
    order_id, psp = _adyen_order(ctx)
    item = adyen_item(psp, "AUTHORISATION", "false")
    enqueued: list[str] = []
    inbox_id = adyen_notification(ctx, item)
    outcome = adyen_inbox.process(ctx, inbox_id, lambda order, _delay: enqueued.append(order))
    assert outcome == "flagged"
    assert enqueued == [order_id]
    assert _inbox_row(ctx, inbox_id)["order_id"] == order_id


def test_a_silent_operation_settled_meanwhile_does_not_stop_the_chase_of_the_others(
    database_url: str,
) -> None:
    # README, Adyen "Silence": every operation that waited too long for its notification
    # flags its order for a person; one whose notification came between the sweep's read
    # and the chase is skipped, and the ones after it are still chased.
    with adyen_awaiting(database_url) as (ctx, first, payment):
        second = new_order_id()
        insert_order(ctx, snapshot(second, shipped([SHOES], shoes=1), provider="adyen"))
        assert drive(ctx, second) == "awaiting_notification"
        (settled,) = operations(ctx, first)
        (waiting,) = operations(ctx, second)
        ok = {**_capture_item("MOD1", payment, "true"), "merchantReference": str(settled["id"])}
        assert adyen_inbox.process(ctx, adyen_notification(ctx, ok), lambda *_: None) == (
            "succeeded"
        )
        silent = [
            OperationRef(settled["id"], first),
            OperationRef(waiting["id"], second),
        ]
        assert adyen_inbox.chase_silent_operations(ctx, silent) == 1
        assert order_row(ctx, first)["flags"] == []
        reason = order_row(ctx, second)["flag_reason"]["needs_attention"]
        assert reason["code"] == "notification_timeout"


def test_a_refused_update_of_the_same_total_needs_a_person_not_a_new_order() -> None:
    # README, "Refused increases": only a refused *increase* asks the shop for a new
    # order; an update that changes the lines but not the total is for a person.
    order: Any = SimpleNamespace(
        authorized_amount=2100, authorized_lines=[line.to_json() for line in _lines(2100)]
    )
    op: Any = SimpleNamespace(
        kind="update_authorization",
        amount=2100,
        lines=[line.to_json() for line in _lines(2100, "hat")],
    )
    flag = rejection_flag(order, op, "NOT_ALLOWED", "refused", refused=True)
    assert (flag.flag, flag.code) == ("needs_attention", "NOT_ALLOWED")


def _lines(total: int, reference: str = "shoes") -> list[PspLine]:
    item = {"id": reference, "name": reference, "quantity": 1, "unit_price": total, "tax_rate": 0}
    return basket_lines(
        OrderSnapshot.model_validate(
            {
                "id": "o",
                "version": 1,
                "currency": "EUR",
                "country": "DE",
                "status": "open",
                "payment": {"provider": "klarna", "klarna_order_id": "k"},
                "lines": [item],
            }
        )
    )


def test_adyen_an_event_the_service_does_not_act_on_is_recorded_ignored(ctx: WorkerContext) -> None:
    # README, Adyen "Outcomes": a notification of an event the service does not act on
    # (a report, a payout) is accepted and recorded `ignored`, never offered again.
    item = adyen_item("REPORT1", "REPORT_AVAILABLE", "true", 0)
    inbox_id = adyen_notification(ctx, item)
    assert adyen_inbox.process(ctx, inbox_id, lambda *_: None) == "ignored"
    row = _inbox_row(ctx, inbox_id)
    assert row["outcome"] == "ignored" and row["processed_at"] is not None


def test_a_psp_request_is_counted_under_the_orders_account(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # README, "Several markets": `ordersync_psp_requests_total` has an `account` label,
    # so an operator sees which account's credentials or limits fail.
    order_id, _ = klarna_shoes_shipped(ctx, klarna, account="eu-north")
    labels = {"provider": "klarna", "operation": "capture", "outcome": "succeeded"}

    def counted(account: str) -> float:
        value = REGISTRY.get_sample_value(
            "ordersync_psp_requests_total", {**labels, "account": account}
        )
        return value or 0.0

    before = counted("eu-north"), counted("default")
    drive(ctx, order_id)
    assert (counted("eu-north"), counted("default")) == (before[0] + 1, before[1])


def test_an_operation_planned_before_requests_were_stored_is_frozen_at_its_next_attempt(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # README, "How it works": a request is sent again exactly as first sent, under the
    # same idempotency key. An operation stored without its request (planned before
    # requests were stored) has it built at its next attempt and kept from then on.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)

    def stored_without_its_request(request: httpx.Request) -> tuple[bool, httpx.Response | None]:
        with ctx.pool.connection() as conn, conn.transaction():
            conn.execute("UPDATE operations SET request = NULL WHERE order_id = %s", (order_id,))
        raise httpx.ReadTimeout("slow", request=request)

    klarna.fault("POST", "/captures", stored_without_its_request)
    drive(ctx, order_id)
    (op,) = operations(ctx, order_id)
    assert op["status"] == "succeeded" and op["attempts"] == 2
    assert op["request"] is not None, "the request was never frozen"
    assert "captured_amount" in str(op["request"])


def test_an_operation_is_frozen_with_its_request_when_it_is_planned(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # README, "How it works": the request is built once, when the operation is planned,
    # and every attempt sends exactly it. Stored with the plan, before any call: a worker
    # that dies before its first attempt leaves nothing to rebuild from a newer snapshot.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    action = Reconciler(ctx, lambda *_: None)._next_action(order_id, force=False)
    assert isinstance(action, reconcile.Send), action
    assert klarna.requests == []
    (op,) = operations(ctx, order_id)
    assert op["request"] is not None, "the request was not frozen with the plan"
    assert PspRequest.from_json(op["request"]).json_body()["captured_amount"] == 1200


def test_an_operation_the_psp_keeps_refusing_for_now_fails_with_the_psps_last_error(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # README, "How it works": a request that never took effect and kept failing for now
    # is `failed` after the last attempt, with the PSP's error, and a person is told.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    busy = httpx.Response(429, json={"error_code": "RATE_LIMITED"}, headers={"Retry-After": "0"})
    klarna.fault("POST", "/captures", lambda _r: (False, busy), times=20)
    drive(ctx, order_id)
    (op,) = operations(ctx, order_id)
    assert (op["status"], op["attempts"]) == ("failed", ctx.settings.max_attempts)
    assert op["error"] is not None and op["error"]["http_status"] == 429, op["error"]
    row = order_row(ctx, order_id)
    assert row["flag_reason"]["needs_attention"]["code"] == "retries_exhausted"


def test_the_reconcilers_log_context_is_left_clean_after_a_run(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # README, "Several markets": the reconciler's log lines carry `account` (and the
    # order and operation) while it works on an order; a later log line of the same
    # thread (another order, a notification) never carries them.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    structlog.contextvars.clear_contextvars()
    drive(ctx, order_id)
    assert structlog.contextvars.get_contextvars() == {}


def test_adyen_a_failed_modification_nobody_asked_for_is_kept_and_offered_again(
    ctx: WorkerContext,
) -> None:
    # A failed CAPTURE for a known payment that no operation of ours matches moved no
    # money: it is kept and offered again, as any notification that matches nothing yet
    # (the operation it settles may be recorded after it), then orphaned.
    order_id, psp = _adyen_order(ctx)
    inbox_id = adyen_notification(ctx, _customer_area(psp, "CAPTURE", "false"))
    assert adyen_inbox.process(ctx, inbox_id, lambda *_: None) == "unmatched"
    assert _inbox_row(ctx, inbox_id)["processed_at"] is None
    assert order_row(ctx, order_id)["flags"] == []


def test_a_lagging_read_after_an_update_keeps_the_lines_the_psp_confirmed() -> None:
    # A read behind a confirmed authorization update keeps its amount and its lines: the
    # lines are what a later refused increase is judged against (rejection_flag).
    update = SimpleNamespace(
        kind="update_authorization", status="succeeded", amount=1650, lines=[{"reference": "new"}]
    )
    lagging = {"status": "authorized", "authorized": 2100, "captured": 0, "refunded": 0}
    figures = _not_behind({**lagging, "lines": [{"reference": "old"}]}, [update])  # type: ignore[list-item]
    assert (figures["authorized"], figures["lines"]) == (1650, [{"reference": "new"}])


def test_a_task_for_an_order_the_service_does_not_hold_ends_saying_so(ctx: WorkerContext) -> None:
    # The reconcile task's result (and its `reconcile_idle` log line) says why it
    # stopped; an order id the service does not hold ends it as `unknown_order`.
    assert Reconciler(ctx, lambda *_: None).run(new_order_id()) == "unknown_order"


def test_adyen_an_increase_adyen_confirms_clears_the_request_for_a_new_order(
    database_url: str,
) -> None:
    # Contract §4: `needs_new_order` asks the shop for a new payment; once an increase
    # succeeds the authorization covers the basket, and the reconciler clears the flag
    # when it records the success. An increase Adyen confirms by its
    # AUTHORISATION_ADJUSTMENT notification clears it the same way.
    def adyen(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "received", "pspReference": "MOD1"})

    ctx = context(database_url, adyen)
    try:
        order_id = new_order_id()
        first = snapshot(order_id, [SHOES], provider="adyen")
        insert_order(ctx, first)
        update_snapshot(ctx, snapshot(order_id, [SHOES, SOCKS], provider="adyen", version=2))
        assert drive(ctx, order_id) == "awaiting_notification"
        (op,) = operations(ctx, order_id)
        assert op["kind"] == "update_authorization"
        with ctx.pool.connection() as conn, conn.transaction():
            store.set_flag(conn, order_id, "needs_new_order", {"code": "refused"}, 2100)
        item = {
            **_capture_item("MOD1", first.psp_order_id, "true"),
            "eventCode": "AUTHORISATION_ADJUSTMENT",
            "merchantReference": str(op["id"]),
            "amount": {"value": op["amount"], "currency": "EUR"},
        }
        assert adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None) == (
            "succeeded"
        )
        assert "needs_new_order" not in order_row(ctx, order_id)["flags"]
    finally:
        ctx.close()


def test_the_reenqueue_is_a_crash_point_the_fault_suite_can_arm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # workers/crashpoints.py: the fault suite kills the worker at the points POINTS
    # names; a point named otherwise never fires, and the deaths it stands for (a worker
    # gone between its commit and the re-enqueue) are never tried.
    named: list[str] = []
    monkeypatch.setattr(reconcile, "crash_point", named.append)
    enqueued: list[tuple[str, float]] = []
    owner: Any = SimpleNamespace(enqueue=lambda order, delay: enqueued.append((order, delay)))
    Reconciler._schedule(owner, "o1", 0.5)
    assert named == ["in_reenqueue"] and set(named) <= set(crashpoints.POINTS)
    assert enqueued == [("o1", 0.5)]


def _shoes_asked_a_new_order(ctx: WorkerContext, klarna: FakeKlarna, refused: int) -> str:
    """A Klarna order of the shoes, authorized for them, flagged `needs_new_order` when
    an increase to `refused` was refused."""
    order_id, snap = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, snap, authorized=snap.total)
    with ctx.pool.connection() as conn, conn.transaction():
        store.set_flag(conn, order_id, "needs_new_order", {"code": "NOT_ALLOWED"}, refused)
    return order_id


def test_a_klarna_increase_that_succeeds_clears_the_request_for_a_new_order(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # Contract §4: `needs_new_order` asks the shop for a new payment; once an increase
    # succeeds the authorization covers the basket, and the flag is cleared then, not
    # only once the order is in sync: here the capture after it is refused, and the
    # order waits for a person. (Refused before for another total: this one is asked.)
    order_id = _shoes_asked_a_new_order(ctx, klarna, 1800)
    update_snapshot(ctx, snapshot(order_id, shipped([SHOES, SOCKS], shoes=1), version=2))
    forbidden = httpx.Response(403, json={"error_code": "NOT_ALLOWED"})
    klarna.fault("POST", "/captures", lambda _r: (False, forbidden))
    drive(ctx, order_id)
    assert [(o["kind"], o["status"]) for o in operations(ctx, order_id)] == [
        ("update_authorization", "succeeded"),
        ("capture", "rejected"),
    ]
    assert order_row(ctx, order_id)["flags"] == ["needs_attention"]


def test_the_capture_after_an_increase_that_clears_the_request_for_a_new_order_goes_on(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # The step after the increase is decided on the order as the increase left it (the
    # flag cleared), in the same run: the shoes are captured, nothing waits for the shop.
    order_id = _shoes_asked_a_new_order(ctx, klarna, 1800)
    update_snapshot(ctx, snapshot(order_id, shipped([SHOES, SOCKS], shoes=1), version=2))
    assert Reconciler(ctx, lambda *_: None).run(order_id) == "in_sync"
    assert [(o["kind"], o["status"]) for o in operations(ctx, order_id)] == [
        ("update_authorization", "succeeded"),
        ("capture", "succeeded"),
    ]
    assert order_row(ctx, order_id)["flags"] == []


def test_a_basket_back_within_the_authorization_clears_the_request_for_a_new_order(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    # Contract §4: `needs_new_order` asks the shop for a new payment for lines the
    # authorization does not cover; once the shop took them out again (the total within
    # what is authorized) nothing is asked any more, and the flag is cleared.
    order_id = _shoes_asked_a_new_order(ctx, klarna, 2100)
    update_snapshot(ctx, snapshot(order_id, [SHOES], version=2))  # the socks taken out
    drive(ctx, order_id)
    assert operations(ctx, order_id) == []
    assert order_row(ctx, order_id)["flags"] == []


def test_an_operators_reconcile_during_a_back_off_forces_one_step_then_the_back_off_stands(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """The order backs off (`defer_order`, as after a read that failed). The operator's
    reconcile goes past the back-off for the step it forces, here a capture Klarna
    refuses; what the refusal leads to waits for the order's own back-off again."""
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    with ctx.pool.connection() as conn, conn.transaction():
        store.defer_order(conn, order_id, 3600)
    forbidden = httpx.Response(403, json={"error_code": "NOT_ALLOWED"})
    klarna.fault("POST", "/captures", lambda _r: (False, forbidden))
    assert Reconciler(ctx, lambda *_: None).run(order_id, force=True) == "backing_off"
    assert [op["status"] for op in operations(ctx, order_id)] == ["rejected"]


def test_a_capture_found_applied_is_told_from_one_made_outside_by_the_reference_sent(
    ctx: WorkerContext, klarna: FakeKlarna
) -> None:
    """Our capture of the shoes applied but its answer was lost; meanwhile the socks were
    captured in Klarna's portal. The check-read finds ours by the `reference` we sent
    (our operation's id; no Capture-Id was ever read for it), so only the portal's
    capture is money moved without the service (contract §4), recorded under its id and
    with its lines."""
    order_id, snap = klarna_order(ctx, klarna, shipped([SHOES, SOCKS], shoes=1))
    insert_order(ctx, snap, authorized=snap.total)
    psp = klarna.orders[snap.psp_order_id]
    socks = [x.to_json() for x in basket_lines(snap) if x.reference == "socks"]

    def applied_then_lost(request: httpx.Request) -> tuple[bool, None]:
        klarna._handle(request)
        psp.captured_amount += 900
        psp.captures.append(
            {"capture_id": "portal-1", "captured_amount": 900, "order_lines": socks}
        )
        raise httpx.ReadTimeout("slow", request=request)

    klarna.fault("POST", "/captures", applied_then_lost)
    drive(ctx, order_id)
    ours, outside = operations(ctx, order_id)[:2]
    assert (ours["status"], ours["external"], ours["amount"]) == ("succeeded", False, 1200)
    assert (outside["external"], outside["amount"]) == (True, 900)
    assert outside["psp_reference"] == "portal-1"
    assert [(x["reference"], x["quantity"]) for x in outside["lines"]] == [("socks", 2)]


def test_a_run_that_reaches_its_step_limit_says_so_and_comes_back_at_once(
    ctx: WorkerContext, klarna: FakeKlarna, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MAX_STEPS bounds one run; an order with more to do is enqueued again at once, and
    # the run's result (the task's result) says why it stopped.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    monkeypatch.setattr(reconcile, "MAX_STEPS", 1)
    enqueued: list[tuple[str, float]] = []
    assert Reconciler(ctx, lambda *a: enqueued.append(a)).run(order_id) == "step_limit"
    assert enqueued == [(order_id, 0)]


def test_an_adyen_authorisation_is_adopted_with_the_lines_it_lists(ctx: WorkerContext) -> None:
    # README, Adyen "Outcomes": an AUTHORISATION is adopted as the authorization, its
    # amount and, when Adyen lists them (openinvoicedata), the lines it authorized:
    # what a later update or increase is compared with.
    order_id = new_order_id()
    snap = snapshot(order_id, [SHOES, SOCKS], provider="adyen")
    insert_order(ctx, snap)
    listed = {
        "openinvoicedata.numberOfLines": "1",
        "openinvoicedata.line1.itemId": "shoes",
        "openinvoicedata.line1.description": "Shoes",
        "openinvoicedata.line1.numberOfItems": "1",
        "openinvoicedata.line1.itemAmount": "1000",
        "openinvoicedata.line1.itemVatAmount": "200",
        "openinvoicedata.line1.itemVatPercentage": "2000",
    }
    item = adyen_item(snap.psp_order_id, "AUTHORISATION", "true", 1200, additionalData=listed)
    assert adyen_inbox.process(ctx, adyen_notification(ctx, item), lambda *_: None) == "applied"
    row = order_row(ctx, order_id)
    assert row["authorized_amount"] == 1200
    assert [(x["reference"], x["total_amount"]) for x in row["authorized_lines"]] == [
        ("shoes", 1200)
    ]
