"""The structured log events an operator reads (README, Operations, "Logs": one JSON object
per line, snake_case events, context bound onto every line): what the reconciler and the
Adyen inbox decided, under a snake_case event name, with the order, operation and
notification they concern bound as context, and nothing of one notification or order left
bound for the next. The real reconciler and SQL on Postgres, the PSP played in-process."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import LogCapture

from data import orders as store
from tests.ledger.harness import (
    FakeKlarna,
    insert_order,
    new_order_id,
    operations,
    snapshot,
    update_snapshot,
)
from tests.ledger.harness import shipped as shipped_lines
from tests.ledger.test_ledger_regressions import adyen_notification, klarna_order
from tests.ledger.test_rules_from_mutants import (
    _capture_item,
    adyen_awaiting,
    adyen_item,
    klarna_shoes_shipped,
)
from tests.seed_basket import SHOES, SOCKS
from workers import adyen_inbox
from workers.context import WorkerContext
from workers.reconcile import Reconciler

pytestmark = pytest.mark.integration

SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


@pytest.fixture
def events() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event logged during the test, with the context bound when it was logged (as
    the service's own processors merge it into each line)."""
    capture = LogCapture()
    before = structlog.get_config()
    structlog.contextvars.clear_contextvars()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, capture],
        # DEBUG lines too, whatever level the run's own configuration filters at (the
        # mutation run's is the service's INFO: devrig/mutation_logging.py).
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**before)
        structlog.contextvars.clear_contextvars()


def only(events: list[MutableMapping[str, Any]], name: str) -> MutableMapping[str, Any]:
    """The one event of that name; every event logged is named in snake_case."""
    for event in events:
        assert isinstance(event["event"], str) and SNAKE_CASE.fullmatch(event["event"]), event
    (found,) = [event for event in events if event["event"] == name]
    return found


@pytest.mark.parametrize(
    ("success", "outcome", "name", "fields"),
    [
        ("true", "succeeded", "operation_confirmed", {"amount": 1200}),
        ("false", "retry", "operation_retry_scheduled", {"attempts": 1, "cause": "CAPTURE"}),
    ],
)
def test_an_adyen_outcome_is_logged_with_the_operation_and_notification_it_settles(
    database_url: str,
    events: list[MutableMapping[str, Any]],
    success: str,
    outcome: str,
    name: str,
    fields: dict[str, Any],
) -> None:
    backoff = adyen_awaiting(database_url, retry_base_seconds=60, retry_max_seconds=60)
    with backoff as (ctx, order_id, payment):
        (op,) = operations(ctx, order_id)
        structlog.contextvars.clear_contextvars()
        events.clear()
        inbox_id = adyen_notification(ctx, _capture_item("MOD1", payment, success))
        delays: list[float] = []
        assert adyen_inbox.process(ctx, inbox_id, lambda _o, delay: delays.append(delay)) == (
            outcome
        )
    settled = only(events, name)
    assert (
        settled.items()
        >= {
            "event_code": "CAPTURE",
            "psp_reference": "MOD1",
            "operation": "capture",
            "operation_id": str(op["id"]),
            **fields,
        }.items()
    )
    if name == "operation_retry_scheduled":
        # The back-off the order is reconciled after, to the hundredth of a second.
        (delay,) = delays
        assert delay > 0 and settled["delay_seconds"] == round(delay, 2)
    # One line per notification says what it came to, for which order; what was bound
    # while it was processed is not left on it, nor on the lines that come after.
    processed = only(events, "adyen_notification_processed")
    assert (
        processed.items()
        >= {
            "inbox_id": inbox_id,
            "outcome": outcome,
            "order_id": order_id,
        }.items()
    )
    assert not processed.keys() & {"event_code", "psp_reference", "operation", "operation_id"}
    assert structlog.contextvars.get_contextvars() == {}


def test_a_worker_whose_lease_was_taken_over_records_nothing_and_says_so(
    ctx: WorkerContext, klarna: FakeKlarna, events: list[MutableMapping[str, Any]]
) -> None:
    # README, "Operation states" (`sent`): once another worker took the operation over,
    # only its record counts; the first worker's outcome is dropped, and logged with the
    # attempt it was.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)

    def taken_over(_request: httpx.Request) -> tuple[bool, None]:
        with ctx.pool.connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE operations SET lease_token = gen_random_uuid() WHERE order_id = %s",
                (order_id,),
            )
        return True, None

    klarna.fault("POST", "/captures", taken_over)
    events.clear()
    assert Reconciler(ctx, lambda *_: None).run(order_id) == "waiting"
    (op,) = operations(ctx, order_id)
    assert op["status"] == "sent"  # the other worker's claim stands
    assert (
        only(events, "operation_lease_lost").items()
        >= {
            "order_id": order_id,
            "operation": "capture",
            "operation_id": str(op["id"]),
            "attempts": 1,
        }.items()
    )


def test_a_notification_for_a_settled_operation_is_logged_stale_with_what_was_recorded(
    database_url: str, events: list[MutableMapping[str, Any]]
) -> None:
    # README, Adyen "Out of order": a repeated success changes nothing; the operator
    # reads which operation it was about and what the service had recorded for it.
    with adyen_awaiting(database_url) as (ctx, order_id, payment):
        ok = _capture_item("MOD1", payment, "true")
        assert adyen_inbox.process(ctx, adyen_notification(ctx, ok), lambda *_: None) == (
            "succeeded"
        )
        events.clear()
        assert adyen_inbox.process(ctx, adyen_notification(ctx, ok), lambda *_: None) == "stale"
        (op,) = operations(ctx, order_id)
    assert (
        only(events, "adyen_notification_stale").items()
        >= {
            "event_code": "CAPTURE",
            "psp_reference": "MOD1",
            "operation": "capture",
            "operation_id": str(op["id"]),
            "status": "succeeded",
            "success": True,
        }.items()
    )


@pytest.mark.parametrize(
    ("held", "item", "outcome", "name", "fields"),
    [
        # README, Adyen "Outcomes": an AUTHORISATION below what is captured already never
        # lowers the authorization; the operator reads that it was seen and not adopted.
        (
            {"authorized": 2100, "captured_amount": 1200},
            {"success": "true", "amount": {"value": 900, "currency": "EUR"}},
            "stale",
            "adyen_authorisation_not_adopted",
            {"amount": 900, "authorized": 2100},
        ),
        # A refused one flags the order: the flag is logged with its code and the reason
        # a person reads.
        (
            {},
            {"success": "false", "reason": "FRAUD"},
            "flagged",
            "order_flagged",
            {"flag": "needs_attention", "code": "authorisation_refused", "reason": "FRAUD"},
        ),
    ],
    ids=["not_adopted", "refused_and_flagged"],
)
def test_an_adyen_authorisation_is_logged_with_what_the_service_made_of_it(
    ctx: WorkerContext,
    events: list[MutableMapping[str, Any]],
    held: dict[str, int],
    item: dict[str, Any],
    outcome: str,
    name: str,
    fields: dict[str, Any],
) -> None:
    order_id = new_order_id()
    snap = snapshot(order_id, shipped_lines([SHOES, SOCKS], shoes=1), provider="adyen")
    insert_order(ctx, snap, **held)
    notification = {**adyen_item(snap.psp_order_id, "AUTHORISATION", "true"), **item}
    events.clear()
    assert adyen_inbox.process(ctx, adyen_notification(ctx, notification), lambda *_: None) == (
        outcome
    )
    assert (
        only(events, name).items()
        >= {"event_code": "AUTHORISATION", "psp_reference": snap.psp_order_id, **fields}.items()
    )


def test_each_psp_call_is_logged_with_its_outcome_under_the_operation(
    ctx: WorkerContext, klarna: FakeKlarna, events: list[MutableMapping[str, Any]]
) -> None:
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    events.clear()
    Reconciler(ctx, lambda *_: None).run(order_id)
    (op,) = operations(ctx, order_id)
    assert (
        only(events, "psp_request_done").items()
        >= {
            "order_id": order_id,
            "operation": "capture",
            "operation_id": str(op["id"]),
            "outcome": "succeeded",
            "http_status": 201,
            "attempts": 1,
            "amount": 1200,
            "error_code": None,
        }.items()
    )


def test_a_psp_call_is_one_info_line_carrying_the_plan(
    ctx: WorkerContext, klarna: FakeKlarna, events: list[MutableMapping[str, Any]]
) -> None:
    # One line per operation for an operator: the call's line carries what the plan's
    # line did (the kind, the amount, the key, the snapshot version it targets) under
    # the order id; the plan's own line is DEBUG.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    events.clear()
    Reconciler(ctx, lambda *_: None).run(order_id)
    (op,) = operations(ctx, order_id)
    info = [e for e in events if e.get("log_level") not in ("debug", None)]
    assert [e["event"] for e in info] == ["psp_request_done"], info
    assert (
        info[0].items()
        >= {
            "order_id": order_id,
            "operation": "capture",
            "amount": 1200,
            "idempotency_key": op["idempotency_key"],
            "target_version": op["target_version"],
        }.items()
    )
    # The plan's DEBUG line carries the same, for whoever turns DEBUG on.
    assert (
        only(events, "operation_planned").items()
        >= {"operation": "capture", "amount": 1200, "target_version": op["target_version"]}.items()
    )


def test_an_exception_inside_an_attempt_is_recorded_as_it_without_a_recording_error(
    ctx: WorkerContext, klarna: FakeKlarna, events: list[MutableMapping[str, Any]]
) -> None:
    # The attempt's outcome (unknown: the call had started) is written as it is; the
    # safety net for a failure while recording (operation_record_error) is not needed.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)

    def boom(_request: httpx.Request) -> tuple[bool, None]:
        raise RuntimeError("bug in the client")

    klarna.fault("POST", "/captures", boom)
    events.clear()
    Reconciler(ctx, lambda *_: None).run(order_id)
    assert only(events, "operation_attempt_error")["error"] == "RuntimeError"
    assert not [event for event in events if event["event"] == "operation_record_error"]
    (op,) = operations(ctx, order_id)
    assert op["outcome_unknown"] and op["error"]["code"] == "RuntimeError"


def test_a_read_of_the_psps_order_is_logged_with_its_outcome_and_http_status(
    ctx: WorkerContext, klarna: FakeKlarna, events: list[MutableMapping[str, Any]]
) -> None:
    order_id, snap = klarna_order(ctx, klarna, [SHOES])
    insert_order(ctx, snap)  # never read yet: the run reads Klarna's order first
    events.clear()
    Reconciler(ctx, lambda *_: None).run(order_id)
    read = next(event for event in events if event["event"] == "psp_order_read")
    assert (
        read.items() >= {"order_id": order_id, "outcome": "succeeded", "http_status": 200}.items()
    )


def _capture_answered(
    ctx: WorkerContext,
    klarna: FakeKlarna,
    events: list[MutableMapping[str, Any]],
    status: int,
    **answer: Any,
) -> str:
    """One run of the shoes' capture, which Klarna answers with `status` (not applied);
    the events of that run only. The order's id."""
    order_id, _ = klarna_shoes_shipped(ctx, klarna)
    response = httpx.Response(status, **answer)
    klarna.fault("POST", "/captures", lambda _r: (False, response))
    events.clear()
    Reconciler(ctx, lambda *_: None).run(order_id)
    return order_id


def test_a_retry_is_logged_with_its_back_off_and_the_order_waits_for_it(
    ctx: WorkerContext, klarna: FakeKlarna, events: list[MutableMapping[str, Any]]
) -> None:
    # Klarna asks to come back later (429, Retry-After): the operator reads the attempt
    # and the back-off the retry waits for, and a run before it is due says so.
    order_id = _capture_answered(ctx, klarna, events, 429, headers={"Retry-After": "30"})
    retry = only(events, "operation_retry_scheduled")
    assert retry["attempts"] == 1 and retry["delay_seconds"] >= 30, retry
    assert Reconciler(ctx, lambda *_: None).run(order_id) == "backing_off"


def test_an_operation_adyen_took_is_logged_with_adyens_reference(
    database_url: str, events: list[MutableMapping[str, Any]]
) -> None:
    # Adyen answers `received` with its pspReference; its notification settles the
    # operation later, and the operator finds it under that reference.
    with adyen_awaiting(database_url) as (ctx, order_id, _payment):
        (op,) = operations(ctx, order_id)
    assert (
        only(events, "operation_awaiting_notification").items()
        >= {"order_id": order_id, "operation_id": str(op["id"]), "psp_reference": "MOD1"}.items()
    )


def test_a_refused_psp_call_is_logged_with_the_psps_error_code(
    ctx: WorkerContext, klarna: FakeKlarna, events: list[MutableMapping[str, Any]]
) -> None:
    # The operator reads why the PSP refused the call on the call's own line.
    _capture_answered(ctx, klarna, events, 403, json={"error_code": "NOT_ALLOWED"})
    assert (
        only(events, "psp_request_done").items()
        >= {"outcome": "rejected", "http_status": 403, "error_code": "NOT_ALLOWED"}.items()
    )


def test_a_failure_while_recording_is_logged_with_what_was_raised(
    ctx: WorkerContext,
    klarna: FakeKlarna,
    events: list[MutableMapping[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The safety net (operation_record_error) names the exception the record raised.
    order_id, _ = klarna_shoes_shipped(ctx, klarna)

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug in record_success")

    monkeypatch.setattr(store, "record_success", broken)
    events.clear()
    Reconciler(ctx, lambda *_: None).run(order_id)
    assert only(events, "operation_record_error")["error"] == "RuntimeError"


def test_goods_settled_against_a_price_cut_are_logged_with_how_many_lines(
    ctx: WorkerContext, klarna: FakeKlarna, events: list[MutableMapping[str, Any]]
) -> None:
    # A price cut after a capture (p0: 100 captured, now free) holds money for goods
    # shipped since (p1, 60): they are settled against it, nothing is sent, and the
    # operator reads that it happened and for how many lines.
    def goods(p0: int, p1_shipped: int) -> list[dict[str, Any]]:
        prices = {"p0": (p0, 1), "p1": (60, p1_shipped), "p2": (60, 0)}
        return [
            {"id": i, "name": i, "quantity": 1, "unit_price": price, "tax_rate": 0}
            | {"shipped_quantity": shipped}
            for i, (price, shipped) in prices.items()
        ]

    order_id, first = klarna_order(ctx, klarna, goods(100, 0))
    insert_order(ctx, first, authorized=first.total)
    Reconciler(ctx, lambda *_: None).run(order_id)
    update_snapshot(ctx, snapshot(order_id, goods(0, 1), version=2))
    events.clear()
    Reconciler(ctx, lambda *_: None).run(order_id)
    settled = operations(ctx, order_id)[-1]  # recorded as a capture of 0, never sent
    assert (settled["kind"], settled["amount"]) == ("capture", 0)
    assert only(events, "goods_settled_against_a_price_cut")["lines"] == len(settled["lines"])
    assert "p1" in [line["reference"] for line in settled["lines"]]
