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
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from psycopg import Connection
from psycopg.types.json import Jsonb

from data import orders as store
from domain.planner import NEEDS_ATTENTION, NEEDS_NEW_ORDER, Flag, Kind
from integrations.adyen.notifications import (
    PAYMENT_EVENTS,
    SETTLES,
    Notification,
    Verdict,
    decide,
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

# --- SQL (the inbox's Adyen rows and adyen_payments) ----------------------------------

# The operation a modification notification answers: by the modification's pspReference,
# or by our operation id (the request's `reference`) when the sender has not recorded
# that reference yet.
MATCH_OPERATION = """
SELECT o.id, o.order_id FROM operations o JOIN orders r ON r.id = o.order_id
WHERE r.provider = 'adyen'
  AND r.psp_order_id = %(payment)s
  AND (o.psp_reference = %(psp)s OR o.id = %(op_id)s)
ORDER BY (o.psp_reference IS NOT DISTINCT FROM %(psp)s) DESC
LIMIT 1
"""
# A notification failed this generation: the next is sent under a new key, and a
# notification for this modification can never settle the operation again.
RETRY_GENERATION = """
UPDATE operations
SET status = 'pending', key_generation = key_generation + 1,
    next_attempt_at = %(at)s, error = %(error)s, psp_reference = NULL,
    failed_psp_references = array_append(failed_psp_references, %(psp)s),
    lease_token = NULL, lease_until = NULL, updated_at = now()
WHERE id = %(id)s
"""
# Operations whose notification never came, oldest first; each is then flagged in its
# own short transaction, skipping an order another worker holds.
SILENT_OPERATIONS = """
SELECT o.id, o.order_id FROM operations o JOIN orders r ON r.id = o.order_id
WHERE o.status = 'awaiting_notification'
  AND o.updated_at < now() - make_interval(secs => %(timeout)s)
  AND NOT ('needs_attention' = ANY(r.flags))
ORDER BY o.updated_at
LIMIT %(batch)s
"""
LOCK_ORDER_SKIP_LOCKED = "SELECT * FROM orders WHERE id = %(id)s FOR UPDATE SKIP LOCKED"
SILENT_BATCH = 500
# Unprocessed notifications, by when each is next due; each offered one is pushed back by
# its own age (capped), so one that matches nothing for hours cannot crowd out the rest.
DUE_NOTIFICATIONS = """
UPDATE inbox
SET next_attempt_at = now() + least(interval '5 minutes',
                                    greatest(make_interval(secs => %(grace)s),
                                             now() - received_at))
WHERE id IN (
    SELECT id FROM inbox
    WHERE source = 'adyen' AND processed_at IS NULL
      AND coalesce(next_attempt_at, received_at + make_interval(secs => %(grace)s)) <= now()
    ORDER BY coalesce(next_attempt_at, received_at)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""


def rejection_flag(n: Notification, order: Row, op: Row) -> Flag:
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
    row = conn.execute(
        "SELECT * FROM inbox WHERE id = %s AND source = 'adyen' FOR UPDATE", (inbox_id,)
    ).fetchone()
    if row is None or row["processed_at"] is not None:
        return Processed("duplicate")
    n = Notification.from_item(row["payload"])
    structlog.contextvars.bind_contextvars(event_code=n.event_code, psp_reference=n.psp_reference)
    try:
        if n.event_code in PAYMENT_EVENTS:
            result = _payment_event(conn, n)
        elif n.event_code in SETTLES:
            result = _modification(conn, settings, n)
        else:
            result = Processed("ignored")
        if result.outcome == "unmatched":
            age = datetime.now(UTC) - row["received_at"]
            if age.total_seconds() < settings.notification_orphan_seconds:
                conn.execute("UPDATE inbox SET outcome = 'unmatched' WHERE id = %s", (inbox_id,))
                return result
            log.warning(
                "adyen_notification_orphaned", inbox_id=inbox_id, success=n.success, amount=n.amount
            )
            result = Processed("orphaned")
        conn.execute(
            "UPDATE inbox SET processed_at = now(), outcome = %s, "
            "order_id = coalesce(order_id, %s) WHERE id = %s",
            (result.outcome, result.order_id, inbox_id),
        )
        return result
    finally:
        structlog.contextvars.unbind_contextvars("event_code", "psp_reference")


def _modification(conn: Connection[Row], settings: Settings, n: Notification) -> Processed:
    found = conn.execute(
        MATCH_OPERATION,
        {"psp": n.psp_reference, "op_id": n.operation_id, "payment": n.payment_reference},
    ).fetchone()
    if found is None:
        return Processed("unmatched")
    # The order's row lock first, as the reconciler takes it: whoever comes second
    # sees what the first one wrote.
    order = store.lock_order(conn, found["order_id"])
    assert order is not None
    op = conn.execute("SELECT * FROM operations WHERE id = %s", (found["id"],)).fetchone()
    assert op is not None
    if n.psp_reference in (op["failed_psp_references"] or []):
        # A modification a notification failed already: the operation was sent again
        # under a new key since, and only that one's outcome counts now.
        return Processed("stale", order["id"])
    verdict = decide(n, op)
    structlog.contextvars.bind_contextvars(operation=op["kind"], operation_id=str(op["id"]))
    try:
        return _apply(conn, settings, n, order, op, verdict)
    finally:
        structlog.contextvars.unbind_contextvars("operation", "operation_id")


def _apply(
    conn: Connection[Row],
    settings: Settings,
    n: Notification,
    order: Row,
    op: Row,
    verdict: Verdict,
) -> Processed:
    order_id = order["id"]
    if verdict is Verdict.STALE:
        log.info("adyen_notification_stale", status=op["status"], success=n.success)
        return Processed("stale", order_id)
    if verdict is Verdict.FLAG:
        flag_order(
            conn,
            order,
            Flag(
                NEEDS_ATTENTION,
                f"{n.event_code.lower()}_after_{op['status']}",
                f"Adyen sent {n.event_code} (success={str(n.success).lower()}) for a "
                f"{op['kind']} this service had recorded as {op['status']}; check the payment",
            ),
        )
        return Processed("flagged", order_id)
    if verdict is Verdict.SUCCEED:
        _settle(conn, op, "succeeded", n.psp_reference, error=None)
        store.apply_success(conn, order, op)
        if Kind(op["kind"]) is Kind.UPDATE_AUTHORIZATION:
            store.clear_flag(conn, order_id, NEEDS_NEW_ORDER)
        log.info("operation_confirmed", amount=op["amount"])
        return Processed("succeeded", order_id)
    if verdict is Verdict.REJECT:
        _settle(conn, op, "rejected", n.psp_reference, error=n.error())
        flag_order(conn, order, rejection_flag(n, order, op))
        return Processed("rejected", order_id)
    attempts = int(op["attempts"])
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
    conn.execute(
        RETRY_GENERATION,
        {
            "at": datetime.now(UTC) + timedelta(seconds=delay),
            "error": Jsonb(n.error()),
            "psp": n.psp_reference,
            "id": op["id"],
        },
    )
    log.info(
        "operation_retry_scheduled",
        attempts=attempts,
        delay_seconds=round(delay, 2),
        cause=n.event_code,
    )
    return Processed("retry", order_id, retry_in=delay)


def _settle(
    conn: Connection[Row],
    op: Row,
    status: str,
    psp_reference: str,
    error: dict[str, Any] | None,
) -> None:
    # The lease goes too: a sender still between its call and its record must find
    # its lease gone and leave this outcome alone.
    conn.execute(
        """
        UPDATE operations
        SET status = %s, psp_reference = coalesce(psp_reference, %s), error = %s,
            next_attempt_at = NULL, lease_token = NULL, lease_until = NULL, updated_at = now()
        WHERE id = %s
        """,
        (status, psp_reference, Jsonb(error) if error else None, op["id"]),
    )


def _payment_event(conn: Connection[Row], n: Notification) -> Processed:
    order_row = conn.execute(
        "SELECT id FROM orders WHERE provider = 'adyen' AND psp_order_id = %s",
        (n.payment_reference,),
    ).fetchone()
    order = store.lock_order(conn, order_row["id"]) if order_row else None
    if n.event_code == "EXPIRE":
        if order is None:
            return Processed("unmatched")
        if n.success:
            # What was not captured has lapsed.
            conn.execute(
                "UPDATE orders SET psp_status = 'expired', authorized_amount = captured_amount,"
                " updated_at = now() WHERE id = %s",
                (order["id"],),
            )
        return Processed("applied" if n.success else "ignored", order["id"])
    if not n.success:
        if order is None:
            return Processed("ignored")
        flag_order(
            conn,
            order,
            Flag(
                NEEDS_ATTENTION,
                "authorisation_refused",
                n.reason or "Adyen reports the payment as not authorised",
            ),
        )
        return Processed("flagged", order["id"])
    lines = [line.to_json() for line in openinvoice_lines(n.additional)]
    conn.execute(
        """
        INSERT INTO adyen_payments (psp_reference, authorized_amount, currency,
                                    merchant_account, lines)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (psp_reference) DO UPDATE
        SET authorized_amount = EXCLUDED.authorized_amount, currency = EXCLUDED.currency,
            merchant_account = EXCLUDED.merchant_account, lines = EXCLUDED.lines
        """,
        (n.psp_reference, n.amount, n.currency, n.merchant_account, Jsonb(lines)),
    )
    if order is None:
        return Processed("recorded")
    return Processed(_correct_authorization(conn, order, n.amount, lines), order["id"])


def _correct_authorization(
    conn: Connection[Row], order: Row, amount: int, lines: list[dict[str, Any]]
) -> str:
    """Adopts the authorized amount of AUTHORISATION unless an operation of ours has
    changed the authorization since, which a late AUTHORISATION must not undo."""
    changed = conn.execute(
        """
        SELECT 1 FROM operations
        WHERE order_id = %s AND kind IN ('update_authorization', 'release_authorization',
                                         'cancel')
          AND status IN ('succeeded', 'sent', 'awaiting_notification', 'pending')
        LIMIT 1
        """,
        (order["id"],),
    ).fetchone()
    if changed is not None or amount < order["captured_amount"]:
        log.info(
            "adyen_authorisation_not_adopted", amount=amount, authorized=order["authorized_amount"]
        )
        return "stale"
    conn.execute(
        """
        UPDATE orders
        SET authorized_amount = %s,
            authorized_lines = CASE WHEN %s THEN %s ELSE authorized_lines END,
            psp_synced_at = coalesce(psp_synced_at, now()), updated_at = now(),
            reconcile_requested_at = coalesce(reconcile_requested_at, now())
        WHERE id = %s
        """,
        (amount, bool(lines), Jsonb(lines), order["id"]),
    )
    return "applied"


# --- the sweeper's part -----------------------------------------------------------------


def chase_silent_operations(ctx: WorkerContext) -> int:
    """Flags orders whose operation has waited for its notification too long.

    The operation stays `awaiting_notification`: the notification may still come and
    settle it, and sending it again could do it twice. A person checks the payment.
    One short transaction per order, skipping orders another worker holds: a sweep
    never holds many order locks, so two sweeps cannot deadlock.
    """
    timeout = ctx.settings.notification_timeout_seconds
    flagged = 0
    with ctx.pool.connection() as conn:
        silent = conn.execute(
            SILENT_OPERATIONS, {"timeout": timeout, "batch": SILENT_BATCH}
        ).fetchall()
        conn.commit()
    for row in silent:
        with ctx.pool.connection() as conn, conn.transaction():
            order = conn.execute(LOCK_ORDER_SKIP_LOCKED, {"id": row["order_id"]}).fetchone()
            if order is None:
                continue
            op = conn.execute(
                "SELECT * FROM operations WHERE id = %s AND status = 'awaiting_notification'",
                (row["id"],),
            ).fetchone()
            if op is None:
                continue
            flag_order(
                conn,
                order,
                Flag(
                    NEEDS_ATTENTION,
                    "notification_timeout",
                    f"no Adyen notification for {op['kind']} {op['psp_reference']} within "
                    f"{int(timeout)} s; check the payment in Adyen's Customer Area",
                ),
            )
            flagged += 1
    return flagged
