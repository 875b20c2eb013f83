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

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from data import orders as store
from domain.lines import PspLine, lines_total
from domain.planner import (
    NEEDS_ATTENTION,
    NEEDS_NEW_ORDER,
    Attribute,
    Done,
    Flag,
    Kind,
    OrderView,
    Plan,
    PspStatus,
    Settle,
    Wait,
    explained_lines,
    halts,
    plan_next,
    unauthorized_lines,
)
from integrations.provider import Provider
from integrations.results import (
    Outcome,
    PspError,
    PspRequest,
    PspResult,
    exception_result,
    retry_delay,
)
from ordersync import metrics
from ordersync.accounts import DEFAULT
from ordersync.db import pipelined
from workers import callbacks
from workers import confirmation_metric as observe
from workers.context import WorkerContext
from workers.crashpoints import crash_point
from workers.poison import INFRASTRUCTURE

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
    order: store.Order


@dataclass(frozen=True)
class Send:
    order: store.Order
    op: store.Operation
    check_first: bool


@dataclass(frozen=True)
class Again:
    pass


@dataclass(frozen=True)
class _Retry:
    """Recorded for a retry: scheduled once the transaction is committed."""

    attempts: int
    delay: float


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
                    # In sync is the usual end: psp_request_done already said what
                    # happened (one line per operation).
                    level = logging.DEBUG if action.reason == "in_sync" else logging.INFO
                    log.log(level, "reconcile_idle", reason=action.reason)
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
                "order_id", "operation", "idempotency_key", "operation_id", "account"
            )

    # -- step 1: decide, under the row lock -------------------------------------------

    def _next_action(self, order_id: str, *, force: bool) -> Action:
        after_commit: list[Callable[[], object]] = []
        # Pipeline mode: statements whose results the next does not need are sent
        # together, and the writes go with the COMMIT (data/orders.py says which reads
        # are sent together): two round trips for a plan, not six.
        with pipelined(self.ctx.pool) as conn:
            order, ops = store.lock_with_operations(conn, order_id)
            action = (
                Idle("unknown_order")
                if order is None
                else self._decide(conn, order, ops, after_commit, force=force)
            )
        for settle in after_commit:
            settle()
        return action

    def _decide(
        self,
        conn: Any,
        order: store.LockedOrder,
        ops: list[store.Operation],
        after_commit: list[Callable[[], object]],
        *,
        force: bool,
    ) -> Action:
        """The next step for a locked order and its operations, inside the caller's
        transaction; `after_commit` collects what reads a result only after it."""
        order_id = order.id
        now = order.db_now
        op = store.in_flight(ops)
        provider = self.ctx.provider(order.provider, order.account)
        structlog.contextvars.bind_contextvars(account=order.account or DEFAULT)
        if op is not None:
            if op.status == "awaiting_notification":
                return Idle("awaiting_notification")
            # Leases and due times are compared on the database's clock (`leased`, `due`).
            if op.status == "sent" and op.leased:
                return Idle("in_flight_elsewhere")
            if op.status == "pending" and not op.due and not force:
                # No next_attempt_at: parked (an unknown outcome after the last attempt,
                # or no credentials); only an operator's reconcile wakes it.
                return Idle("backing_off" if op.next_attempt_at else "parked")
            if store.halted(order) and not force:
                # needs_attention for a failure or an unknown outcome halts every
                # automatic operation, a retry or a resumed call included: acting again
                # could repeat what went wrong. Parked until the operator's reconcile
                # releases it (data/orders.py RELEASE_*). An advisory reason does not.
                store.park_operations(conn, order_id)
                return Idle("needs_attention")
            if provider is None:
                self._park_unconfigured(conn, order, op)
                return Idle("provider_not_configured")
            # A lease that ran out means a worker died mid-call: outcome unknown. An
            # operator's reconcile reads the PSP before anything else.
            check_first = op.outcome_unknown or op.status == "sent" or force
            claimed = store.claim_operation(conn, op.id, self.settings.lease_seconds)
            return Send(order, claimed, check_first)
        if provider is None:
            self._flag(conn, order, _unconfigured(order))
            store.mark_in_sync(conn, order)  # nothing to do until someone configures it
            return Idle("provider_not_configured")
        if not force and order.next_reconcile_at and order.next_reconcile_at > now:
            return Idle("backing_off")
        psp = store.psp_state(order)
        if psp is None:
            return Refresh(order)
        snapshot = store.snapshot(order)
        view = OrderView(
            order=snapshot,
            psp=psp,
            history=store.history(ops),
            flags=frozenset(order.flags),
            refused_amount=order.refused_amount,
            now=now,
            extend_within=timedelta(days=self.settings.extend_authorization_days_before),
            acknowledged_reversal=order.acknowledged_reversal,
            told=store.attention(order),
            halting=store.halted(order),
        )
        assert provider is not None
        # Each account its own table (Klarna's); Adyen always asks (its client says so).
        decision = plan_next(view, provider.increase_allowed)
        if (
            isinstance(decision, Plan)
            and decision.kind is Kind.EXTEND_AUTHORIZATION
            and _extended_in_this_window(ops, view)
        ):
            # An extension inside this window did not move expires_at out of it:
            # asking again would loop; a person decides.
            decision = Flag(
                NEEDS_ATTENTION,
                "extension_without_effect",
                "the authorization was extended but its expiry did not move; check it",
            )
        if isinstance(decision, Plan):
            draft = store.draft_operation(
                order, store.next_seq(ops), decision.kind, decision.amount, decision.lines
            )
            # Frozen now, with the key and the account: every attempt resends exactly
            # this, with that account's URL and credentials.
            built = provider.build(order, snapshot, draft)
            request = built.to_json() if isinstance(built, PspRequest) else None
            claimed = store.insert_claimed_operation(
                conn, order, draft, request, self.settings.lease_seconds
            )
            # DEBUG: the call's own line (psp_request_done, or the attempt's error, or
            # the flag a refused build raises) carries the plan, under the operation's
            # key; one INFO line per operation is what an operator reads.
            log.debug(
                "operation_planned",
                operation=decision.kind.value,
                amount=decision.amount,
                idempotency_key=claimed.idempotency_key,
                target_version=order.version,
            )
            return Send(order, claimed, check_first=False)
        if isinstance(decision, Flag):
            self._flag(conn, order, decision)
            return Again()
        if isinstance(decision, Settle):
            # Nothing is sent: the money for these goods is held already.
            log.info("goods_settled_against_a_price_cut", lines=len(decision.lines))
            store.record_settled(conn, order, store.next_seq(ops), decision.lines)
            return Again()
        if isinstance(decision, Attribute):
            log.info("external_operation_attributed", operation_id=decision.reference)
            store.attribute_external(conn, decision.reference, decision.lines)
            return Again()
        if isinstance(decision, Wait):
            # Waiting on the shop or an operator: the sweeper need not come back.
            store.mark_in_sync(conn, order)
            return Idle(decision.reason)
        assert isinstance(decision, Done)
        if NEEDS_NEW_ORDER in order.flags and snapshot.total <= psp.authorized:
            store.clear_flag(conn, order_id, NEEDS_NEW_ORDER)
        # The event and the in-sync mark go in one statement when there is an event.
        if order.reconcile_requested_at is None or not callbacks.record_synced(
            conn, order, after_commit, in_sync=True
        ):
            store.mark_in_sync(conn, order)
        return Idle("in_sync")

    def _flag(self, conn: Any, order: store.Order, flag: Flag) -> None:
        flag_order(conn, order, flag)

    # -- reading the PSP's view -------------------------------------------------------

    def _refresh(self, order: store.Order) -> bool:
        result = self._read(order)
        if result is None:
            return False
        if result.outcome is not Outcome.SUCCEEDED:
            with self.ctx.pool.connection() as conn, conn.transaction():
                if result.outcome is Outcome.TRANSIENT:
                    delay = self._delay(1, result)
                    store.defer_order(conn, order.id, delay)
                    self._schedule(order.id, delay)
                else:
                    self._flag(conn, order, _error_flag("read_failed", result.error))
                    # Reading again cannot help: it waits for a person, not the sweeper.
                    store.park_order(conn, order.id)
            return False
        with self.ctx.pool.connection() as conn, conn.transaction():
            locked = store.lock_order(conn, order.id)
            assert locked is not None
            # `order` was read before the call: its psp_state_seq is what the read saw.
            self._adopt(conn, locked, result.body, seen=int(order.psp_state_seq))
        return True

    def _park_unconfigured(self, conn: Any, order: store.Order, op: store.Operation) -> None:
        """No client for the order's PSP: the operation waits, parked, flagged once; a
        lease that ran out leaves its outcome unknown."""
        store.park_unconfigured(conn, op.id)
        self._flag(conn, order, _unconfigured(order))

    def _provider(self, order: store.Order, request: PspRequest | None = None) -> Provider:
        """The order's account's client; for a frozen request, the account it was
        frozen for (the same: an order's account never changes). _decide checked it,
        under the lock, before any Refresh or Send."""
        account = request.account if request and request.account else order.account
        provider = self.ctx.provider(order.provider, account)
        if provider is None:
            raise LookupError(f"no client for the {order.provider} account {account}")
        return provider

    def _read(self, order: store.Order) -> PspResult | None:
        provider = self._provider(order)
        result = provider.read(order)
        log.info("psp_order_read", outcome=result.outcome.value, http_status=result.http_status)
        return result

    def _adopt(self, conn: Any, order: store.Order, body: dict[str, Any], *, seen: int) -> None:
        """Takes the PSP's figures as the truth; flags what we did not know of. A read
        is adopted only if nothing was recorded since it started (`seen`): an older,
        slower read never overwrites newer figures."""
        if int(order.psp_state_seq) != seen:
            log.info("psp_read_superseded", seen=seen, now=order.psp_state_seq)
            return
        figures = self._provider(order).figures(body)
        ops = store.operations(conn, order.id)
        if _behind_extension(figures, order, ops, self.settings):
            # Not adopted: the psp state stays unread, so the next step reads again,
            # once (the mark: next_reconcile_at set after the extension's answer).
            log.info("psp_read_behind_extension", expires_at=figures.get("expires_at"))
            store.defer_order(conn, order.id, 0)
            return
        changes = self._external_changes(conn, order, figures)
        figures = _expiry_not_behind(_not_behind(figures, ops), order)
        store.apply_psp_figures(conn, order.id, figures, seen)
        if changes:
            log.warning("psp_external_change", changes=changes)
            self._flag(
                conn,
                order,
                Flag(
                    NEEDS_ATTENTION,
                    "external_change",
                    "; ".join(changes) + " (made without this service: counted, never "
                    "repeated; an operator's reconcile takes the PSP's figures as they are)",
                    # Money in a currency the order never had cannot be counted: a
                    # person looks before anything moves.
                    halting=_foreign_currency(order, figures),
                ),
            )

    def _external_changes(
        self, conn: Any, order: store.Order, figures: dict[str, Any]
    ) -> list[str]:
        """Money the PSP shows that no operation of ours moved (contract §4): recorded as
        an external operation so the planner never makes it again; what the shop's
        snapshot does not explain is returned, to be flagged. Also the PSP's currency,
        which an order's first snapshot fixed."""
        changes: list[str] = []
        if _foreign_currency(order, figures):
            currency = figures["currency"]
            changes.append(f"the PSP's purchase currency {currency} is not the order's")
        ops = store.operations(conn, order.id)
        ours = {str(op.id) for op in ops} | {op.psp_reference for op in ops}
        history = store.history(ops)
        snapshot = store.snapshot(order)
        for kind, column in ((Kind.CAPTURE, "captured"), (Kind.REFUND, "refunded")):
            counted = sum(
                int(op.amount) for op in ops if op.kind == kind.value and op.status == "succeeded"
            )
            extra = int(figures[column]) - counted
            if extra <= 0:
                continue
            unknown = [
                m
                for m in figures.get("movements") or []
                if m["kind"] is kind and m["reference"] not in ours and m["id"] not in ours
            ]
            explained = explained_lines(snapshot, history, kind, extra)
            lines: tuple[PspLine, ...] = explained or ()
            listed = tuple(line for m in unknown for line in m["lines"])
            if sum(m["amount"] for m in unknown) == extra and lines_total(listed) == extra:
                # README "External changes": only money whose lines the PSP did not name
                # is tied to units by the shop's snapshot. Klarna's own lines are the
                # truth, and the snapshot explains them only if it names the same units
                # (seed 81622: a capture listing the cap is no capture of the hat the
                # shop shipped, as dear; the hat is still to charge).
                if explained is not None and _units(explained) != _units(listed):
                    explained = None
                lines = listed
            reference = ",".join(m["id"] for m in unknown) or f"{column}:{figures[column]}"
            store.record_external(conn, order, kind, extra, reference, lines, move_figures=False)
            if explained is None:
                changes.append(f"{column} {extra} more than this service did")
        cancelled_by_us = any(
            op.kind == Kind.CANCEL.value and op.status == "succeeded" for op in ops
        )
        if figures["status"] == PspStatus.CANCELLED.value and not cancelled_by_us:
            store.record_external(conn, order, Kind.CANCEL, 0, "cancelled", move_figures=False)
            if order.status != "cancelled":
                changes.append("the PSP order was cancelled")
        return changes

    # -- steps 2 and 3: call, then record ---------------------------------------------

    def _send(self, action: Send) -> Action | None:
        """Makes the call and records it; the next step, or None to wait (a retry, a
        notification, another worker). Whatever goes wrong between the claim and the
        record is recorded as this attempt's outcome: every attempt counts."""
        order, op = action.order, action.op
        structlog.contextvars.bind_contextvars(
            operation=op.kind,
            idempotency_key=op.idempotency_key,
            operation_id=str(op.id),
        )
        called = False
        settled: tuple[PspResult, dict[str, Any] | None, int | None] | None = None
        try:
            # The heartbeat stops before the outcome is recorded: it renews only while
            # this attempt talks to the PSP.
            with self.ctx.heartbeat.holding(op, self.settings.lease_seconds):
                request = self._request(op, order, self._provider(order))
                if isinstance(request, PspResult):
                    settled = (request, None, None)
                else:
                    provider = self._provider(order, request)
                    seen = int(order.psp_state_seq)
                    # Without a way to read the PSP's order, the idempotency key alone
                    # makes the resend safe (Adyen replays the first answer).
                    if action.check_first and provider.can_read:
                        read = self._read(order)
                        assert read is not None
                        if read.outcome is Outcome.SUCCEEDED and provider.applied(
                            replace(op, request=request.to_json()), read.body
                        ):
                            log.info("operation_found_applied", attempts=op.attempts)
                            settled = (PspResult(Outcome.SUCCEEDED), read.body, seen)
                        elif read.outcome is not Outcome.SUCCEEDED:
                            # The read's own error is never the operation's outcome: what
                            # the last send did is still unknown.
                            settled = (_unknown_after_read(read), None, None)
                    if settled is None:
                        crash_point("before_psp_call")
                        called = True
                        result = provider.send(op, request)
                        crash_point("after_psp_call")
        except Exception as exc:
            log.exception("operation_attempt_error", error=type(exc).__name__)
            # Once the call may have started, its effect is unknown.
            unknown = called or bool(op.outcome_unknown) or action.check_first
            return self._record_safely(
                op, exception_result(exc, maybe_applied=unknown), known=order
            )
        if settled is not None:
            outcome, adopt, seen_before = settled
            return self._record_safely(op, outcome, adopt=adopt, seen=seen_before, known=order)
        metrics.psp_request(
            order.provider,
            op.kind,
            result.outcome.value,
            result.elapsed_seconds,
            account=order.account or DEFAULT,
        )
        log.info(
            "psp_request_done",
            outcome=result.outcome.value,
            http_status=result.http_status,
            attempts=op.attempts,
            amount=op.amount,
            target_version=op.target_version,
            elapsed_ms=round(result.elapsed_seconds * 1000, 1),
            error_code=result.error.code if result.error else None,
        )
        return self._record_safely(op, result, known=order)

    def _record_safely(
        self,
        op: store.Operation,
        result: PspResult,
        *,
        adopt: dict[str, Any] | None = None,
        seen: int | None = None,
        known: store.Order | None = None,
    ) -> Action | None:
        """Records the outcome; a failure while recording it (a constraint, a bug) rolled
        that back, so it is recorded as this attempt's outcome instead: the call may have
        applied, so the operation is an unknown outcome, retried (check-read first) and
        parked with `needs_attention` after MAX_ATTEMPTS like any other. Never left
        `sent` under this worker's live lease, which nobody else would take over."""
        try:
            return self._record(op, result, adopt=adopt, seen=seen, known=known)
        except INFRASTRUCTURE:
            raise
        except Exception as exc:
            log.exception("operation_record_error", error=type(exc).__name__)
            error = PspError("record_failed", f"{type(exc).__name__} while recording the outcome")
            return self._record(op, PspResult(Outcome.TRANSIENT, error=error, maybe_applied=True))

    def _request(self, op: store.Operation, order: store.Order, provider: Provider) -> Any:
        """The operation's frozen request; one planned before requests were stored is
        frozen at its first attempt from now on."""
        if op.request:
            return PspRequest.from_json(op.request)
        built = provider.build(order, store.snapshot(order), op)
        if isinstance(built, PspRequest):
            with self.ctx.pool.connection() as conn, conn.transaction():
                store.set_request(conn, op.id, built.to_json())
        return built

    def _record(
        self,
        op: store.Operation,
        result: PspResult,
        *,
        adopt: dict[str, Any] | None = None,
        seen: int | None = None,
        known: store.Order | None = None,
    ) -> Action | None:
        """`known`: the order as read before the call (the record reads its snapshot
        again only if a newer version arrived meanwhile)."""
        after_commit: list[Callable[[], object]] = []
        with pipelined(self.ctx.pool) as conn:
            recorded = self._write_outcome(conn, op, result, after_commit, adopt, seen, known)
        for settle in after_commit:
            settle()
        if not isinstance(recorded, _Retry):
            return recorded
        metrics.RETRIES.labels(operation=op.kind).inc()
        log.info(
            "operation_retry_scheduled",
            attempts=recorded.attempts,
            delay_seconds=round(recorded.delay, 2),
        )
        self._schedule(op.order_id, recorded.delay)
        return None

    def _write_outcome(
        self,
        conn: Any,
        op: store.Operation,
        result: PspResult,
        after_commit: list[Callable[[], object]],
        adopt: dict[str, Any] | None,
        seen: int | None,
        known: store.Order | None = None,
    ) -> Action | _Retry | None:
        """Records the outcome under the order's row lock (the lock, the record and what
        it needs are sent together: one round trip); the next step, if there is one."""
        if result.outcome is Outcome.SUCCEEDED:
            before, after, ops = store.record_success(
                conn, op, result.reference, received=observe.wanted(op), known=known
            )
            if before is None or after is None:
                self._lost_lease(op)
                return None
            observe.operation_confirmed(op, before.provider, before.received_at)
            # Whether the read is still the newest view, before our own change.
            fresh = seen is not None and before.psp_state_seq == seen
            changed = False
            if adopt is not None and fresh:
                # Found applied after an unknown outcome: count it as ours first, so
                # that only what we truly did not make looks like drift.
                self._adopt(conn, after, adopt, seen=after.psp_state_seq)
                changed = True
            if Kind(op.kind) is Kind.UPDATE_AUTHORIZATION and NEEDS_NEW_ORDER in after.flags:
                store.clear_flag(conn, op.order_id, NEEDS_NEW_ORDER)
                changed = True
            if changed:
                return self._decide_again(conn, op.order_id, after_commit)
            return self._decide(conn, after, ops, after_commit, force=False)
        if result.outcome is Outcome.RECEIVED:
            # Adyen took the request; its notification settles it.
            _, held = store.lock_and_finish(
                conn, op, status="awaiting_notification", psp_reference=result.reference
            )
            if not held:
                self._lost_lease(op)
                return None
            log.info("operation_awaiting_notification", psp_reference=result.reference)
            return None
        error = result.error.to_json() if result.error else None
        if result.outcome is Outcome.REJECTED:
            order, held = store.lock_and_finish(conn, op, status="rejected", error=error)
            if not held:
                self._lost_lease(op)
                return None
            err = result.error or PspError("rejected", "the PSP rejected the request")
            self._flag(
                conn,
                order,
                rejection_flag(order, op, err.code, err.message, refused=result.http_status == 403),
            )
            return self._decide_again(conn, order.id, after_commit)
        attempts = int(op.attempts)
        unknown = bool(op.outcome_unknown) or result.maybe_applied
        if attempts >= self.settings.max_attempts:
            if unknown:
                # It may have applied: never `failed`, never planned anew. Parked until
                # a read of the PSP (an operator's reconcile, a notification) settles it.
                order, held = store.lock_and_finish(
                    conn, op, status="pending", error=error, outcome_unknown=True
                )
                flag = _error_flag("outcome_unknown", result.error)
            else:
                order, held = store.lock_and_finish(conn, op, status="failed", error=error)
                flag = _error_flag("retries_exhausted", result.error)
            if not held:
                self._lost_lease(op)
                return None
            self._flag(conn, order, flag)
            return None
        delay = self._delay(attempts, result)
        _, held = store.lock_and_finish(
            conn, op, status="pending", error=error, retry_in=delay, outcome_unknown=unknown
        )
        if not held:
            self._lost_lease(op)
            return None
        return _Retry(attempts, delay)

    def _decide_again(
        self, conn: Any, order_id: str, after_commit: list[Callable[[], object]]
    ) -> Action:
        # The row lock is held already: this reads what the transaction changed.
        order, ops = store.lock_with_operations(conn, order_id)
        assert order is not None
        return self._decide(conn, order, ops, after_commit, force=False)

    def _lost_lease(self, op: store.Operation) -> None:
        # Another worker took the operation over after our lease ran out; its record wins.
        log.warning("operation_lease_lost", attempts=op.attempts)

    def _delay(self, attempts: int, result: PspResult) -> float:
        return retry_delay(
            attempts,
            self.settings.retry_base_seconds,
            self.settings.retry_max_seconds,
            result.retry_after,
        )

    def _schedule(self, order_id: str, delay: float) -> None:
        crash_point("in_reenqueue")
        if delay <= COUNTDOWN_LIMIT_SECONDS:
            self.enqueue(order_id, delay)


def _not_behind(figures: dict[str, Any], ops: list[store.Operation]) -> dict[str, Any]:
    """The PSP's figures, never behind what its own confirmed answers to us (and the
    money recorded as moved without us) already said: a read that lags (a PSP replica
    behind its primary) must not undo a recorded cancel, release, capture or refund, or
    the planner would ask for it again."""
    done = [op for op in ops if op.status == "succeeded"]

    def total(kind: Kind) -> int:
        return sum(int(op.amount) for op in done if op.kind == kind.value)

    figures = dict(figures)
    figures["captured"] = max(int(figures["captured"]), total(Kind.CAPTURE))
    figures["refunded"] = max(int(figures["refunded"]), total(Kind.REFUND))
    ended = {op.kind for op in done} & {Kind.CANCEL.value, Kind.RELEASE_AUTHORIZATION.value}
    open_statuses = (PspStatus.AUTHORIZED.value, PspStatus.PART_CAPTURED.value)
    updates = [op for op in done if op.kind == Kind.UPDATE_AUTHORIZATION.value]
    if updates and not ended and figures["status"] in open_statuses:
        # Only the service changes an open authorization's amount (captures and refunds
        # leave it; a cancel, release or expiry ends it): the last update the PSP
        # confirmed is what it holds. A read showing another amount has not seen that
        # update yet, and taken as the truth it makes an increase look like a decrease
        # (sent, refused, and a person told instead of the shop, contract §4).
        figures["authorized"] = int(updates[-1].amount)
        figures["lines"] = list(updates[-1].lines)
    figures["authorized"] = max(int(figures["authorized"]), figures["captured"])
    if Kind.CANCEL.value in ended and figures["captured"] == 0:
        figures["status"] = PspStatus.CANCELLED.value
    elif ended and figures["status"] in open_statuses:
        figures["status"], figures["authorized"] = PspStatus.CAPTURED.value, figures["captured"]
    elif figures["status"] in open_statuses and figures["captured"] > 0:
        full = figures["captured"] >= figures["authorized"]
        figures["status"] = (PspStatus.CAPTURED if full else PspStatus.PART_CAPTURED).value
    return figures


def _expiry(figures: dict[str, Any]) -> datetime | None:
    value = figures.get("expires_at")
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _expiry_not_behind(figures: dict[str, Any], order: store.Order) -> dict[str, Any]:
    """An open authorization's expiry only ever moves later (an extension): a read
    showing an earlier one than was already read lags behind an extension the PSP
    made, and taken as the truth it undoes it (planned again, flagged as without
    effect)."""
    read, known = _expiry(figures), order.expires_at
    open_statuses = (PspStatus.AUTHORIZED.value, PspStatus.PART_CAPTURED.value)
    if (
        read is not None
        and known is not None
        and figures["status"] in open_statuses
        and read < known
    ):
        figures = dict(figures)
        figures["expires_at"] = known.isoformat()
    return figures


def _behind_extension(
    figures: dict[str, Any], order: store.Order, ops: list[store.Operation], settings: Any
) -> bool:
    """Whether this read, the first since an extension the PSP confirmed (204: "the
    authorization time was extended"), still shows the expiry from before it: a read
    that has not seen the extension yet. Only for an extension asked inside the
    current window, and once: the read after that one is the truth (a person is told
    if it still shows no move)."""
    read, known = _expiry(figures), order.expires_at
    if order.psp_synced_at is not None or read is None or known is None or read > known:
        return False
    if figures["status"] not in (PspStatus.AUTHORIZED.value, PspStatus.PART_CAPTURED.value):
        return False
    within = timedelta(days=settings.extend_authorization_days_before)
    again = order.next_reconcile_at
    return any(
        op.kind == Kind.EXTEND_AUTHORIZATION.value
        and op.status == "succeeded"
        and op.created_at >= known - within
        and (again is None or again < op.updated_at)
        for op in ops
    )


def _units(lines: tuple[PspLine, ...]) -> list[tuple[str, int]]:
    """The units a capture or refund names, line by line, whatever it charged for them."""
    return sorted((line.reference, line.quantity) for line in lines)


def _foreign_currency(order: store.Order, figures: dict[str, Any]) -> bool:
    """The PSP holds the payment in another currency than the order's first snapshot
    fixed (contract §4)."""
    currency = figures.get("currency")
    return bool(currency) and currency != order.currency


def flag_order(conn: Any, order: store.Order, flag: Flag) -> None:
    """Flags the order, records the shop's event and counts it (also used by the Adyen
    notification processing, which settles operations outside the reconciler)."""
    reason = {
        "code": flag.code,
        "message": flag.message,
        "lines": [line.to_json() for line in flag.lines],
        "version": order.version,
        "halts": halts(flag),
    }
    store.set_flag(conn, order.id, flag.flag, reason, flag.refused_amount)
    if callbacks.record_flagged(conn, order, flag):
        metrics.FLAGGED.labels(flag=flag.flag).inc()
    log.warning("order_flagged", flag=flag.flag, code=flag.code, reason=flag.message)


def _error_flag(code: str, error: PspError | None) -> Flag:
    message = f"{error.code}: {error.message}" if error else code
    return Flag(NEEDS_ATTENTION, code, message)


def rejection_flag(
    order: store.Order, op: store.Operation, code: str, message: str, *, refused: bool
) -> Flag:
    """The one rule for a rejected operation (the reconciler's answer, Adyen's
    notification): an increase the PSP `refused` asks the shop for a new order with the
    lines it could not authorize; anything else needs a person."""
    increase = (
        Kind(op.kind) is Kind.UPDATE_AUTHORIZATION
        and order.authorized_amount is not None
        and int(op.amount) > int(order.authorized_amount)
    )
    if increase and refused:
        authorized = store.to_lines(order.authorized_lines or [])
        lines: tuple[PspLine, ...] = unauthorized_lines(store.to_lines(op.lines), authorized)
        return Flag(NEEDS_NEW_ORDER, code, message or "increase refused", lines, int(op.amount))
    return Flag(NEEDS_ATTENTION, code, message)


def _unconfigured(order: store.Order) -> Flag:
    return Flag(
        NEEDS_ATTENTION,
        "provider_not_configured",
        f"no {order.provider} credentials configured",
    )


def _unknown_after_read(read: PspResult) -> PspResult:
    """A check-read that failed: the operation's outcome is as unknown as before."""
    error = read.error or PspError("read_failed", "the PSP's order could not be read")
    return PspResult(
        Outcome.TRANSIENT,
        error=PspError(
            f"check_read_{error.code}", error.message, error.correlation_id, error.http_status
        ),
        retry_after=read.retry_after,
        maybe_applied=True,
        http_status=read.http_status,
    )


def _extended_in_this_window(ops: list[store.Operation], view: OrderView) -> bool:
    """Whether an extension already succeeded inside the current extend window: one that
    left expires_at inside it would otherwise be planned again without end."""
    expires, within = view.psp.expires_at, view.extend_within
    if expires is None or within is None:
        return False
    return any(
        op.kind == Kind.EXTEND_AUTHORIZATION.value
        and op.status == "succeeded"
        # Asked inside the window: an extension asked before it opened (its answer
        # recorded later, from the PSP's idempotency store on a resend) extended an
        # earlier expiry, not this one.
        and op.created_at >= expires - within
        for op in ops
    )
