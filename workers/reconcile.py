"""The reconciler: brings one order's PSP state to the shop's latest snapshot.

Each step is three moves, and no transaction is open while a PSP is being called:
1. under the order's row lock, plan the next operation, record it with its idempotency
   key and claim it (commit);
2. call the PSP with that key;
3. record the outcome and move the order's figures (second transaction).
A worker that dies between 1 and 3 leaves a claimed operation whose lease runs out; the
next worker first reads the order from the PSP to learn whether the call took effect.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from domain.lines import PspLine
from domain.planner import (
    NEEDS_ATTENTION,
    NEEDS_NEW_ORDER,
    Done,
    Flag,
    Kind,
    OrderView,
    Plan,
    Wait,
    plan_next,
    unauthorized_lines,
)
from ordersync import metrics
from workers import callbacks, observe, store
from workers.context import WorkerContext
from workers.crashpoints import crash_point
from workers.provider import Provider
from workers.psp import Outcome, PspError, PspResult, backoff_seconds

log = structlog.get_logger("ordersync.reconcile")

Enqueue = Callable[[str, float], None]
MAX_STEPS = 25
# Retries sooner than this ride on a Celery countdown; later ones wait for the sweeper,
# which reads next_attempt_at from Postgres (a long countdown would pin a worker slot).
COUNTDOWN_LIMIT_SECONDS = 60.0


@dataclass(frozen=True)
class Idle:
    reason: str


@dataclass(frozen=True)
class Refresh:
    order: store.Row


@dataclass(frozen=True)
class Send:
    order: store.Row
    op: store.Row
    check_first: bool


@dataclass(frozen=True)
class Again:
    pass


Action = Idle | Refresh | Send | Again


class Reconciler:
    def __init__(self, ctx: WorkerContext, enqueue: Enqueue) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.enqueue = enqueue

    def run(self, order_id: str, *, force: bool = False) -> str:
        """Steps the order until it is in sync or has to wait; returns why it stopped."""
        structlog.contextvars.bind_contextvars(order_id=order_id)
        try:
            action = self._next_action(order_id, force=force)
            for _ in range(MAX_STEPS):
                if isinstance(action, Idle):
                    log.info("reconcile_idle", reason=action.reason)
                    return action.reason
                if isinstance(action, Send):
                    # Recording the outcome also decides the next step, under the same lock
                    # and in the same transaction: one commit fewer per operation.
                    sent = self._send(action)
                    if sent is None:
                        return "waiting"
                    action = sent
                    continue
                if isinstance(action, Refresh) and not self._refresh(action.order):
                    return "refresh_failed"
                action = self._next_action(order_id, force=False)
            log.warning("reconcile_step_limit", steps=MAX_STEPS)
            self.enqueue(order_id, 0)
            return "step_limit"
        finally:
            structlog.contextvars.unbind_contextvars(
                "order_id", "operation", "idempotency_key", "operation_id"
            )

    # -- step 1: decide, under the row lock -------------------------------------------

    def _next_action(self, order_id: str, *, force: bool) -> Action:
        with self.ctx.pool.connection() as conn, conn.transaction():
            order = store.lock_order(conn, order_id)
            if order is None:
                return Idle("unknown_order")
            return self._decide(conn, order, force=force)

    def _decide(self, conn: Any, order: store.Row, *, force: bool) -> Action:
        """The next step for a locked order, inside the caller's transaction."""
        order_id = order["id"]
        now = datetime.now(UTC)
        ops = store.operations(conn, order_id)
        op = store.in_flight(ops)
        if op is not None:
            if op["status"] == "awaiting_notification":
                return Idle("awaiting_notification")
            if op["status"] == "sent" and op["lease_until"] > now:
                return Idle("in_flight_elsewhere")
            due = op["next_attempt_at"] is None or op["next_attempt_at"] <= now
            if op["status"] == "pending" and not due and not force:
                return Idle("backing_off")
            # A lease that ran out means a worker died mid-call: outcome unknown.
            check_first = op["outcome_unknown"] or op["status"] == "sent"
            claimed = store.claim_operation(conn, op["id"], self.settings.lease_seconds)
            return Send(order, claimed, check_first)
        if not force and order["next_reconcile_at"] and order["next_reconcile_at"] > now:
            return Idle("backing_off")
        psp = store.psp_state(order)
        if psp is None:
            return Refresh(order)
        snapshot = store.snapshot(order)
        view = OrderView(
            order=snapshot,
            psp=psp,
            history=store.history(ops),
            flags=frozenset(order["flags"]),
            refused_amount=order["refused_amount"],
            now=now,
            extend_within=timedelta(days=self.settings.extend_authorization_days_before),
        )
        # The increase table is Klarna's own; behind Adyen the payment method is not
        # known here, so Adyen is asked and its AUTHORISATION_ADJUSTMENT decides.
        allowed = _always if order["provider"] == "adyen" else self.settings.increase_allowed
        decision = plan_next(view, allowed)
        if isinstance(decision, Plan):
            claimed = store.insert_claimed_operation(
                conn,
                order,
                store.next_seq(ops),
                decision.kind,
                decision.amount,
                decision.lines,
                self.settings.lease_seconds,
            )
            log.info(
                "operation_planned",
                operation=decision.kind.value,
                amount=decision.amount,
                idempotency_key=claimed["idempotency_key"],
                target_version=order["version"],
            )
            return Send(order, claimed, check_first=False)
        if isinstance(decision, Flag):
            self._flag(conn, order, decision)
            return Again()
        if isinstance(decision, Wait):
            # Waiting on the shop or an operator: the sweeper need not come back.
            store.mark_in_sync(conn, order_id)
            return Idle(decision.reason)
        assert isinstance(decision, Done)
        if NEEDS_NEW_ORDER in order["flags"] and snapshot.total <= psp.authorized:
            store.clear_flag(conn, order_id, NEEDS_NEW_ORDER)
        if order["reconcile_requested_at"] is not None:
            callbacks.record_synced(conn, order)
        store.mark_in_sync(conn, order_id)
        return Idle("in_sync")

    def _flag(self, conn: Any, order: store.Row, flag: Flag) -> None:
        flag_order(conn, order, flag)

    # -- reading the PSP's view -------------------------------------------------------

    def _refresh(self, order: store.Row) -> bool:
        result = self._read(order)
        if result is None:
            return False
        if result.outcome is not Outcome.SUCCEEDED:
            with self.ctx.pool.connection() as conn, conn.transaction():
                if result.outcome is Outcome.TRANSIENT:
                    delay = self._delay(1, result)
                    store.defer_order(conn, order["id"], _after(delay))
                    self._schedule(order["id"], delay)
                else:
                    self._flag(conn, order, _error_flag("read_failed", result.error))
                    # Reading again cannot help: it waits for a person, not the sweeper.
                    store.park_order(conn, order["id"])
            return False
        with self.ctx.pool.connection() as conn, conn.transaction():
            locked = store.lock_order(conn, order["id"])
            assert locked is not None
            self._adopt(conn, locked, result.body)
        return True

    def _provider(self, order: store.Row) -> Provider | None:
        provider = self.ctx.providers.get(order["provider"])
        if provider is None:
            with self.ctx.pool.connection() as conn, conn.transaction():
                self._flag(
                    conn,
                    order,
                    Flag(
                        NEEDS_ATTENTION,
                        "provider_not_configured",
                        f"no {order['provider']} credentials configured",
                    ),
                )
        return provider

    def _read(self, order: store.Row) -> PspResult | None:
        provider = self._provider(order)
        if provider is None:
            return None
        result = provider.read(order)
        log.info("psp_order_read", outcome=result.outcome.value, http_status=result.http_status)
        return result

    def _adopt(self, conn: Any, order: store.Row, body: dict[str, Any]) -> None:
        """Takes the PSP's figures as the truth; flags what we did not know of."""
        figures = self.ctx.providers[order["provider"]].figures(body)
        # The first read has nothing to compare with: whatever is there is the start.
        known = order["authorized_amount"] is not None
        if known and (
            figures["captured"] > order["captured_amount"]
            or figures["refunded"] > order["refunded_amount"]
        ):
            log.warning(
                "psp_drift",
                psp_captured=figures["captured"],
                our_captured=order["captured_amount"],
                psp_refunded=figures["refunded"],
                our_refunded=order["refunded_amount"],
            )
            self._flag(
                conn,
                order,
                Flag(
                    NEEDS_ATTENTION,
                    "drift",
                    "the PSP shows captures or refunds this service did not make; "
                    "its figures were adopted",
                ),
            )
        store.apply_psp_figures(conn, order["id"], figures)

    # -- steps 2 and 3: call, then record ---------------------------------------------

    def _send(self, action: Send) -> Action | None:
        """Makes the call and records it; the next step, or None to wait (a retry, a
        notification, another worker)."""
        order, op = action.order, action.op
        structlog.contextvars.bind_contextvars(
            operation=op["kind"],
            idempotency_key=op["idempotency_key"],
            operation_id=str(op["id"]),
        )
        provider = self._provider(order)
        if provider is None:
            return None
        # Without a way to read the PSP's order, the idempotency key alone makes the
        # resend safe (Adyen replays the first answer).
        if action.check_first and provider.can_read:
            read = self._read(order)
            if read is None:
                return None
            if read.outcome is Outcome.SUCCEEDED and provider.applied(op, read.body):
                log.info("operation_found_applied", attempts=op["attempts"])
                return self._record(op, PspResult(Outcome.SUCCEEDED), adopt=read.body)
            if read.outcome is not Outcome.SUCCEEDED:
                return self._record(op, read)
        crash_point("before_psp_call")
        result = provider.execute(order, store.snapshot(order), op)
        crash_point("after_psp_call")
        metrics.psp_request(
            order["provider"], op["kind"], result.outcome.value, result.elapsed_seconds
        )
        log.info(
            "psp_request_done",
            outcome=result.outcome.value,
            http_status=result.http_status,
            attempts=op["attempts"],
            amount=op["amount"],
            elapsed_ms=round(result.elapsed_seconds * 1000, 1),
            error_code=result.error.code if result.error else None,
        )
        return self._record(op, result)

    def _record(
        self, op: store.Row, result: PspResult, *, adopt: dict[str, Any] | None = None
    ) -> Action | None:
        with self.ctx.pool.connection() as conn, conn.transaction():
            order = store.lock_order(conn, op["order_id"])
            assert order is not None
            if result.outcome is Outcome.RECEIVED:
                # Adyen took the request; its notification settles it.
                if not store.finish_operation(
                    conn, op, status="awaiting_notification", psp_reference=result.reference
                ):
                    self._lost_lease(op)
                    return None
                log.info("operation_awaiting_notification", psp_reference=result.reference)
                return None
            if result.outcome is Outcome.SUCCEEDED:
                if not store.finish_operation(
                    conn, op, status="succeeded", psp_reference=result.reference
                ):
                    self._lost_lease(op)
                    return None
                store.apply_success(conn, order, op)
                observe.operation_confirmed(conn, order["provider"], op)
                if adopt is not None:
                    # Found applied after an unknown outcome: count it as ours first,
                    # so that only what we truly did not make looks like drift.
                    reread = store.lock_order(conn, op["order_id"])
                    assert reread is not None
                    self._adopt(conn, reread, adopt)
                if Kind(op["kind"]) is Kind.UPDATE_AUTHORIZATION:
                    store.clear_flag(conn, order["id"], NEEDS_NEW_ORDER)
                return self._decide_again(conn, order["id"])
            error = result.error.to_json() if result.error else None
            if result.outcome is Outcome.REJECTED:
                if not store.finish_operation(conn, op, status="rejected", error=error):
                    self._lost_lease(op)
                    return None
                self._flag(conn, order, self._rejection_flag(order, op, result))
                return self._decide_again(conn, order["id"])
            attempts = int(op["attempts"])
            if attempts >= self.settings.max_attempts:
                if not store.finish_operation(conn, op, status="failed", error=error):
                    self._lost_lease(op)
                    return None
                self._flag(conn, order, _error_flag("retries_exhausted", result.error))
                return None
            delay = self._delay(attempts, result)
            if not store.finish_operation(
                conn,
                op,
                status="pending",
                error=error,
                next_attempt_at=_after(delay),
                outcome_unknown=bool(op["outcome_unknown"]) or result.maybe_applied,
            ):
                self._lost_lease(op)
                return None
        metrics.RETRIES.labels(operation=op["kind"]).inc()
        log.info("operation_retry_scheduled", attempts=attempts, delay_seconds=round(delay, 2))
        self._schedule(op["order_id"], delay)
        return None

    def _decide_again(self, conn: Any, order_id: str) -> Action:
        order = store.lock_order(conn, order_id)  # held already; read the new figures
        assert order is not None
        return self._decide(conn, order, force=False)

    def _rejection_flag(self, order: store.Row, op: store.Row, result: PspResult) -> Flag:
        error = result.error or PspError("rejected", "the PSP rejected the request")
        increase = (
            Kind(op["kind"]) is Kind.UPDATE_AUTHORIZATION
            and order["authorized_amount"] is not None
            and op["amount"] > order["authorized_amount"]
        )
        if increase and result.http_status == 403:
            authorized = store.to_lines(order["authorized_lines"] or [])
            lines: tuple[PspLine, ...] = unauthorized_lines(store.to_lines(op["lines"]), authorized)
            return Flag(NEEDS_NEW_ORDER, error.code, error.message, lines, int(op["amount"]))
        return Flag(NEEDS_ATTENTION, error.code, error.message)

    def _lost_lease(self, op: store.Row) -> None:
        # Another worker took the operation over after our lease ran out; its record wins.
        log.warning("operation_lease_lost", attempts=op["attempts"])

    def _delay(self, attempts: int, result: PspResult) -> float:
        delay = backoff_seconds(
            attempts,
            self.settings.retry_base_seconds,
            self.settings.retry_max_seconds,
            random.random(),
        )
        if result.retry_after is not None:
            delay = max(delay, result.retry_after)
        return delay

    def _schedule(self, order_id: str, delay: float) -> None:
        crash_point("in_reenqueue")
        if delay <= COUNTDOWN_LIMIT_SECONDS:
            self.enqueue(order_id, delay)


def _always(payment_method: str | None, country: str | None) -> bool:
    return True


def flag_order(conn: Any, order: store.Row, flag: Flag) -> None:
    """Flags the order, records the shop's event and counts it (also used by the Adyen
    notification processing, which settles operations outside the reconciler)."""
    reason = {
        "code": flag.code,
        "message": flag.message,
        "lines": [line.to_json() for line in flag.lines],
        "version": order["version"],
    }
    store.set_flag(conn, order["id"], flag.flag, reason, flag.refused_amount)
    if callbacks.record_flagged(conn, order, flag):
        metrics.FLAGGED.labels(flag=flag.flag).inc()
    log.warning("order_flagged", flag=flag.flag, code=flag.code, reason=flag.message)


def _after(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def _error_flag(code: str, error: PspError | None) -> Flag:
    message = f"{error.code}: {error.message}" if error else code
    return Flag(NEEDS_ATTENTION, code, message)
