"""Adyen notifications, in the worker: settle our operations and record the payment.

The web process stored each notification item in the inbox and answered `[accepted]`;
this module turns one stored item into its effect, in one transaction that also marks
the item processed, so an item is applied at most once however often it is delivered
or enqueued.

Rules that keep the ledger sound whatever the order of arrival:
- an operation is settled only while it is in flight (`sent`, `awaiting_notification`;
  `pending` only when no answer ever reached us); a notification for a settled
  operation never changes its outcome, so a late failure never undoes a success
  (money moved back after a success, such as CAPTURE_FAILED, only flags it for a person);
- a notification may arrive before the worker that sent the request has recorded
  `awaiting_notification`: it is matched by our operation id (the request's
  `reference`), settles the operation and takes the sender's lease away, so the
  sender's late write finds the lease gone and changes nothing. That holds for every
  key generation: only a notification for a modification a notification already
  failed (`failed_psp_references`) is stale; any other one is the latest's outcome;
- a notification that matches nothing stays unprocessed; the sweeper offers it again
  until `NOTIFICATION_ORPHAN_SECONDS` have passed, then it is recorded as orphaned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from psycopg import Connection

from data import adyen_payments, inbox
from data import orders as store
from domain.planner import (
    EXTERNAL_CHANGE,
    NEEDS_ATTENTION,
    NEEDS_NEW_ORDER,
    Flag,
    Kind,
    explained_lines,
)
from integrations.adyen.notifications import (
    AMOUNT_CHECKED,
    CHARGEBACKS,
    EXTERNAL_KINDS,
    PAYMENT_EVENTS,
    SETTLES,
    Notification,
    Verdict,
    decide,
    mismatch,
    openinvoice_lines,
)
from integrations.results import retry_delay
from ordersync.settings import Settings
from workers.context import WorkerContext
from workers.reconcile import COUNTDOWN_LIMIT_SECONDS, flag_order
from workers.reconcile import rejection_flag as _rejection_flag

log = structlog.get_logger("ordersync.adyen")

Row = dict[str, Any]
Enqueue = Callable[[str, float], None]
SILENT_BATCH = 500


def rejection_flag(n: Notification, order: store.Order, op: store.Operation) -> Flag:
    """The reconciler's rule (workers/reconcile.py rejection_flag); an increase is
    refused when AUTHORISATION_ADJUSTMENT says so."""
    error = n.error()
    return _rejection_flag(
        order,
        op,
        error["code"],
        error["message"],
        refused=n.event_code == "AUTHORISATION_ADJUSTMENT",
    )


# --- applying (one transaction) ---------------------------------------------------------


@dataclass(frozen=True)
class Processed:
    outcome: str
    order_id: str | None = None
    retry_in: float | None = None


def process(ctx: WorkerContext, inbox_id: int, enqueue: Enqueue) -> str:
    """Applies one stored notification; returns what it came to."""
    with ctx.pool.connection() as conn, conn.transaction():
        result = _process(conn, ctx.settings, inbox_id)
    log.info(
        "adyen_notification_processed",
        inbox_id=inbox_id,
        outcome=result.outcome,
        order_id=result.order_id,
    )
    if result.order_id is not None and result.outcome not in ("unmatched", "duplicate"):
        # After the commit, so the reconciler sees what the notification changed.
        delay = result.retry_in or 0.0
        if delay <= COUNTDOWN_LIMIT_SECONDS:
            enqueue(result.order_id, delay)
    return result.outcome


def _process(conn: Connection[Row], settings: Settings, inbox_id: int) -> Processed:
    row = inbox.lock_notification(conn, inbox_id)
    if row is None or row["processed_at"] is not None:
        return Processed("duplicate")
    n = Notification.from_item(row["payload"])
    structlog.contextvars.bind_contextvars(event_code=n.event_code, psp_reference=n.psp_reference)
    try:
        if n.event_code in PAYMENT_EVENTS:
            result = _payment_event(conn, settings, n)
        elif n.event_code in SETTLES:
            result = _modification(conn, settings, n)
        elif n.event_code in CHARGEBACKS:
            result = _without_us(conn, settings, n)
        else:
            result = Processed("ignored")
        if result.outcome == "unmatched":
            # Its age on the database's clock, as every due time.
            if row["age_seconds"] < settings.notification_orphan_seconds:
                inbox.mark_unmatched(conn, inbox_id, settings.notification_orphan_seconds)
                return result
            log.warning(
                "adyen_notification_orphaned", inbox_id=inbox_id, success=n.success, amount=n.amount
            )
            result = Processed("orphaned")
        inbox.mark_processed(conn, inbox_id, result.outcome, result.order_id)
        return result
    finally:
        structlog.contextvars.unbind_contextvars("event_code", "psp_reference")


def _modification(conn: Connection[Row], settings: Settings, n: Notification) -> Processed:
    found = store.match_adyen_operation(conn, n.payment_reference, n.psp_reference, n.operation_id)
    if found is None:
        # No operation of ours asked for it: made in the Customer Area, if the order is ours.
        return _without_us(conn, settings, n)
    # The order's row lock first, as the reconciler takes it: whoever comes second
    # sees what the first one wrote.
    order = store.lock_order(conn, found.order_id)
    assert order is not None
    op = store.operation(conn, found.id)
    assert op is not None
    if n.psp_reference in (op.failed_psp_references or []):
        # A modification a notification failed already: the operation was sent again
        # under a new key since, and only that one's outcome counts now.
        return Processed("stale", order.id)
    kind = Kind(op.kind)
    wrong = mismatch(
        n,
        currency=order.currency,
        merchant_account=_merchant_account(order, settings),
        amount=int(op.amount) if kind in AMOUNT_CHECKED else None,
    )
    if wrong is not None:
        return _mismatched(conn, n, order, wrong)
    verdict = decide(n, op)
    structlog.contextvars.bind_contextvars(operation=op.kind, operation_id=str(op.id))
    try:
        return _apply(conn, settings, n, order, op, verdict)
    finally:
        structlog.contextvars.unbind_contextvars("operation", "operation_id")


def _apply(
    conn: Connection[Row],
    settings: Settings,
    n: Notification,
    order: store.Order,
    op: store.Operation,
    verdict: Verdict,
) -> Processed:
    order_id = order.id
    if verdict is Verdict.STALE:
        log.info("adyen_notification_stale", status=op.status, success=n.success)
        return Processed("stale", order_id)
    if verdict is Verdict.FLAG:
        flag_order(
            conn,
            order,
            Flag(
                NEEDS_ATTENTION,
                f"{n.event_code.lower()}_after_{op.status}",
                f"Adyen sent {n.event_code} (success={str(n.success).lower()}) for a "
                f"{op.kind} this service had recorded as {op.status}; check the payment",
            ),
        )
        return Processed("flagged", order_id)
    if verdict is Verdict.SUCCEED:
        _settle(conn, op, "succeeded", n.psp_reference, error=None)
        store.apply_success(conn, order, op)
        if Kind(op.kind) is Kind.UPDATE_AUTHORIZATION:
            store.clear_flag(conn, order_id, NEEDS_NEW_ORDER)
        log.info("operation_confirmed", amount=op.amount)
        return Processed("succeeded", order_id)
    if verdict is Verdict.REJECT:
        _settle(conn, op, "rejected", n.psp_reference, error=n.error())
        flag_order(conn, order, rejection_flag(n, order, op))
        return Processed("rejected", order_id)
    attempts = int(op.attempts)
    if attempts >= settings.max_attempts:
        _settle(conn, op, "failed", n.psp_reference, error=n.error())
        flag_order(
            conn,
            order,
            Flag(
                NEEDS_ATTENTION,
                "retries_exhausted",
                f"{n.event_code}: {n.reason or 'capture failed'}",
            ),
        )
        return Processed("failed", order_id)
    delay = retry_delay(attempts, settings.retry_base_seconds, settings.retry_max_seconds)
    store.retry_generation(conn, op.id, delay, n.error(), n.psp_reference)
    log.info(
        "operation_retry_scheduled",
        attempts=attempts,
        delay_seconds=round(delay, 2),
        cause=n.event_code,
    )
    return Processed("retry", order_id, retry_in=delay)


def _settle(
    conn: Connection[Row],
    op: store.Operation,
    status: str,
    psp_reference: str,
    error: dict[str, Any] | None,
) -> None:
    # The lease goes too: a sender still between its call and its record must find
    # its lease gone and leave this outcome alone.
    store.settle_operation(conn, op.id, status, psp_reference, error)


def _merchant_account(order: store.Order, settings: Settings) -> str | None:
    """The merchant account the order's payment belongs to: its snapshot's, or the
    configured one."""
    payment = (order.snapshot or {}).get("payment") or {}
    return payment.get("merchant_account") or settings.adyen_merchant_account


def _mismatched(
    conn: Connection[Row], n: Notification, order: store.Order, wrong: str
) -> Processed:
    """A notification about this order that does not match it: no effect, a person looks."""
    log.warning("adyen_notification_mismatch", detail=wrong)
    flag_order(
        conn,
        order,
        Flag(
            NEEDS_ATTENTION,
            "notification_mismatch",
            f"Adyen sent {n.event_code} {n.psp_reference} for this payment, but its {wrong}; "
            "nothing was recorded from it",
        ),
    )
    return Processed("invalid", order.id)


def _without_us(conn: Connection[Row], settings: Settings, n: Notification) -> Processed:
    """Money that moved without the service (a Customer Area capture, refund or cancel,
    a chargeback): counted once (the notification is processed once, and its operation
    row's key is unique), never made again, and a person is told (contract §4)."""
    order_id = store.adyen_order(conn, n.payment_reference)
    if order_id is None:
        return Processed("unmatched")
    order = store.lock_order(conn, order_id)
    assert order is not None
    kind = EXTERNAL_KINDS.get(n.event_code)
    if kind is None or not n.success:
        if n.event_code in CHARGEBACKS:
            # Money that may have moved and could not be counted: a person looks first.
            flag_order(conn, order, _external_flag(n, "not counted", halting=True))
            return Processed("flagged", order.id)
        return Processed("unmatched")
    wrong = mismatch(
        n, currency=order.currency, merchant_account=_merchant_account(order, settings)
    )
    if wrong is not None:
        return _mismatched(conn, n, order, wrong)
    amount = n.amount if kind is not Kind.CANCEL else 0
    most = _most_it_could_move(order)
    if kind is not Kind.CANCEL and most is not None and amount > most:
        # No capture or refund of this payment can be larger than its authorization (or
        # what was captured of it): figures the payment cannot have are not its money.
        # Counting them would move our books by money that never moved (contract §4
        # counts money "that moved without the service"), so nothing is recorded and a
        # person looks, as for a notification in another currency.
        return _mismatched(
            conn, n, order, f"amount.value {amount} is more than this payment holds ({most})"
        )
    if kind is Kind.REFUND:
        amount = min(amount, int(order.captured_amount) - int(order.refunded_amount))
    ops = store.operations(conn, order.id)
    # What the shop's snapshot already says (and no operation of ours is under way
    # that could be the same money): counted as those lines, nothing to tell.
    explained = (
        None
        if store.in_flight(ops) is not None
        else explained_lines(store.snapshot(order), store.history(ops), kind, amount)
    )
    reference = f"adyen:{n.psp_reference}:{n.event_code}"
    if not store.record_external(conn, order, kind, amount, reference, explained or ()):
        # Counted already (the same movement notified again): nothing new to tell.
        return Processed("external", order.id)
    if explained is None or n.event_code in CHARGEBACKS:
        flag_order(conn, order, _external_flag(n, "counted, never repeated"))
    return Processed("external", order.id)


def _most_it_could_move(order: store.Order) -> int | None:
    """The most one capture or refund of the order's payment can be: its authorization,
    or what was captured when that is more (None: not known yet)."""
    if order.authorized_amount is None:
        return None
    return max(int(order.authorized_amount), int(order.captured_amount))


def _external_flag(n: Notification, what: str, *, halting: bool = False) -> Flag:
    return Flag(
        NEEDS_ATTENTION,
        EXTERNAL_CHANGE,
        f"Adyen {n.event_code} {n.psp_reference} of {n.amount} {n.currency} was not asked "
        f"for by this service (Customer Area, chargeback); {what}. An operator's "
        "reconcile takes the figures as they are now",
        halting=halting,
    )


def _payment_event(conn: Connection[Row], settings: Settings, n: Notification) -> Processed:
    order_id = store.adyen_order(conn, n.payment_reference)
    order = store.lock_order(conn, order_id) if order_id else None
    if order is not None:
        wrong = mismatch(
            n, currency=order.currency, merchant_account=_merchant_account(order, settings)
        )
        if wrong is not None:
            return _mismatched(conn, n, order, wrong)
    if n.event_code == "EXPIRE":
        if order is None:
            return Processed("unmatched")
        if n.success:
            # What was not captured has lapsed.
            store.mark_expired(conn, order.id)
        return Processed("applied" if n.success else "ignored", order.id)
    if not n.success:
        if order is None:
            # A refusal that comes before the shop's order is kept and offered again,
            # as a notification for a payment not known yet is: dropped, the order that
            # follows would be taken as authorized (contract §4: the authorization comes
            # from Adyen's AUTHORISATION).
            return Processed("unmatched")
        # Contract §4: an Adyen payment's authorized amount is its AUTHORISATION's; a
        # refused one authorized nothing. Left open at the first snapshot's total, the
        # planner would take it as holding money (goods settled against it at 0, captures
        # and cancels sent for the PSP to refuse).
        store.mark_refused(conn, order.id)
        flag_order(
            conn,
            order,
            Flag(
                NEEDS_ATTENTION,
                "authorisation_refused",
                n.reason or "Adyen reports the payment as not authorised",
            ),
        )
        return Processed("flagged", order.id)
    lines = [line.to_json() for line in openinvoice_lines(n.additional)]
    adyen_payments.record(conn, n.psp_reference, n.amount, n.currency, n.merchant_account, lines)
    if order is None:
        return Processed("recorded")
    return Processed(_correct_authorization(conn, order, n.amount, lines), order.id)


def _correct_authorization(
    conn: Connection[Row], order: store.Order, amount: int, lines: list[dict[str, Any]]
) -> str:
    """Adopts the authorized amount of AUTHORISATION unless an operation of ours has
    changed the authorization since, which a late AUTHORISATION must not undo."""
    changed = store.authorization_changed_by_us(conn, order.id)
    if changed or amount < order.captured_amount:
        log.info(
            "adyen_authorisation_not_adopted", amount=amount, authorized=order.authorized_amount
        )
        return "stale"
    store.adopt_adyen_authorization(conn, order.id, amount, lines)
    return "applied"


# --- the sweeper's part -----------------------------------------------------------------


def chase_silent_operations(
    ctx: WorkerContext, silent: list[store.OperationRef] | None = None
) -> int:
    """Flags orders whose operation has waited for its notification too long (`silent`:
    those operations, read by the caller with its own sweep's reads).

    The operation stays `awaiting_notification`: the notification may still come and
    settle it, and sending it again could do it twice. A person checks the payment.
    One short transaction per order, skipping orders another worker holds: a sweep
    never holds many order locks, so two sweeps cannot deadlock.
    """
    timeout = ctx.settings.notification_timeout_seconds
    flagged = 0
    if silent is None:
        with ctx.pool.connection() as conn:
            silent = store.silent_operations(conn, timeout, SILENT_BATCH)()
            conn.commit()
    for row in silent:
        with ctx.pool.connection() as conn, conn.transaction():
            order = store.lock_order_skip_locked(conn, row.order_id)
            if order is None:
                continue
            op = store.operation(conn, row.id, status="awaiting_notification")
            if op is None:
                continue
            flag_order(
                conn,
                order,
                Flag(
                    NEEDS_ATTENTION,
                    "notification_timeout",
                    f"no Adyen notification for {op.kind} {op.psp_reference} within "
                    f"{int(timeout)} s; check the payment in Adyen's Customer Area",
                ),
            )
            flagged += 1
    return flagged
