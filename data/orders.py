"""The worker's reads and writes of orders and operations (sync psycopg).

Every function takes an open connection and runs inside the caller's transaction;
none of them commits, so the reconciler decides where each transaction ends.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Required, TypedDict, TypeVar, Unpack

from psycopg import AsyncConnection, Connection
from psycopg.rows import BaseRowFactory, RowMaker, class_row, no_result, tuple_row
from psycopg.types.json import Jsonb

from data import inbox
from data.workers import lease_token
from domain.lines import PspLine
from domain.planner import IN_FLIGHT, Kind, PastOperation, PspState, PspStatus
from domain.snapshot import LineType, OrderSnapshot
from ordersync.db import kept_cursor

Row = dict[str, Any]
_T = TypeVar("_T")


@dataclass(slots=True)
class Order:
    """A row of `orders`, as the repository reads it (every column, by name)."""

    id: str
    version: int
    provider: str
    psp_order_id: str
    currency: str
    status: str
    snapshot: dict[str, Any]
    desired_amount: int
    authorized_amount: int | None
    captured_amount: int
    refunded_amount: int
    authorized_lines: list[dict[str, Any]]
    psp_status: str | None
    psp_payment_method: str | None
    psp_country: str | None
    psp_synced_at: datetime | None
    expires_at: datetime | None
    flags: list[str]
    flag_reason: dict[str, Any] | None
    refused_amount: int | None
    reconcile_requested_at: datetime | None
    next_reconcile_at: datetime | None
    created_at: datetime
    updated_at: datetime
    psp_state_seq: int
    sweep_after: datetime | None
    fixed_terms: dict[str, Any] | None
    acknowledged_reversal: str | None
    account: str


@dataclass(slots=True)
class LockedOrder(Order):
    """The order read under its row lock, with the database's clock: now(), the start of
    the transaction, which every lease and due time this transaction writes is set
    from (so the planner, the leases and the rows written agree on one instant)."""

    db_now: datetime


@dataclass(slots=True)
class Operation:
    """A row of `operations`. `leased` and `due` are computed on the database's clock by
    the reads that need them (OPERATIONS); rows from other statements leave them False."""

    id: uuid.UUID
    order_id: str
    seq: int
    kind: str
    status: str
    amount: int
    lines: list[dict[str, Any]]
    target_version: int
    idempotency_key: str
    attempts: int
    next_attempt_at: datetime | None
    lease_token: uuid.UUID | None
    lease_until: datetime | None
    outcome_unknown: bool
    psp_reference: str | None
    error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    key_generation: int
    request: dict[str, Any] | None
    failed_psp_references: list[str]
    external: bool
    # Money moved without the service: the shop's snapshot stored when it was learnt
    # (NULL for the service's own operations).
    basis: dict[str, Any] | None
    leased: bool = False
    due: bool = False


@dataclass(slots=True)
class Draft:
    """An operation not stored yet: enough for a client to build its request."""

    id: uuid.UUID
    order_id: str
    seq: int
    kind: str
    amount: int
    lines: list[dict[str, Any]]
    idempotency_key: str
    key_generation: int = 0
    request: dict[str, Any] | None = None


def _columns(row: type[Any], prefix: str = "") -> str:
    """The stored columns of a row class, in its order: statements name their columns,
    so a column added by a migration is read only once its row class has the field."""
    computed = {"leased", "due", "db_now"}
    return ", ".join(prefix + f.name for f in fields(row) if f.name not in computed)


def _positional_row(cls: type[_T]) -> BaseRowFactory[_T]:
    """Rows of `cls` built from the values in the order they come: every statement read
    with it selects the class's columns (`_columns`) and then its computed ones, which
    are its last fields, in field order. psycopg's `class_row` decodes every column's
    name for each result and builds a dict per row (an eighth of the worker's psycopg
    calls per operation). A result whose width or last column does not match the class
    is refused, never read into the wrong fields."""
    names = [f.name.encode() for f in fields(cls)]  # type: ignore[arg-type]

    def factory(cursor: Any) -> RowMaker[_T]:
        result = cursor.pgresult
        width = result.nfields if result is not None else 0
        if width == 0:
            return no_result
        if width > len(names) or result.fname(width - 1) != names[width - 1]:
            raise TypeError(f"{cls.__name__} cannot be read from these columns")

        def row(values: Sequence[Any]) -> _T:
            return cls(*values)

        return row

    return factory


ORDER_COLUMNS = _columns(Order)
OPERATION_COLUMNS = _columns(Operation)
_ORDER = _positional_row(Order)
_LOCKED = _positional_row(LockedOrder)
_OPERATION = _positional_row(Operation)

# An operation in one of these may still take effect at the PSP: at most one per order
# (the operations_one_in_flight index), and nothing new is planned beside it.
_KEY_NAMESPACE = uuid.UUID("5d1c8f0e-3b9a-4f57-9c61-0a7e2b4d8c13")


# Named so that bench/scale.py times these very statements at 1M orders.
LOCK_ORDER = f"SELECT {ORDER_COLUMNS}, now() AS db_now FROM orders WHERE id = %(id)s FOR UPDATE"  # noqa: S608
# Leases and retry times are set on the database's clock, so they are compared on it too:
# `leased` and `due` are computed by Postgres, never from the worker's clock.
OPERATIONS = f"""
SELECT {OPERATION_COLUMNS}, coalesce(lease_until > now(), false) AS leased,
       coalesce(next_attempt_at <= now(), false) AS due
FROM operations WHERE order_id = %(id)s ORDER BY seq
"""  # noqa: S608
INSERT_CLAIMED_OPERATION = """
INSERT INTO operations (id, order_id, seq, kind, status, amount, lines, target_version,
                        idempotency_key, attempts, lease_token, lease_until, request)
VALUES (%(id)s, %(order_id)s, %(seq)s, %(kind)s, 'sent', %(amount)s, %(lines)s, %(version)s,
        %(key)s, 1, %(token)s, now() + make_interval(secs => %(lease)s), %(request)s)
"""
SET_REQUEST = "UPDATE operations SET request = %(request)s WHERE id = %(id)s"
# The heartbeat of a worker process (workers/heartbeat.py): every lease it still holds,
# in one statement.
RENEW_LEASES = """
UPDATE operations o SET lease_until = now() + make_interval(secs => held.lease)
FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[], %(leases)s::float8[]) AS held(id, token, lease)
WHERE o.id = held.id AND o.lease_token = held.token AND o.status = 'sent'
RETURNING o.id
"""
# The PSP's figures, adopted only if none were recorded since the read started.
APPLY_PSP_FIGURES = """
UPDATE orders
SET authorized_amount = %(authorized)s, captured_amount = %(captured)s,
    refunded_amount = %(refunded)s, psp_status = %(status)s,
    psp_payment_method = coalesce(%(payment_method)s, psp_payment_method),
    psp_country = coalesce(%(country)s, psp_country),
    expires_at = coalesce(%(expires_at)s, expires_at),
    authorized_lines = %(lines)s,
    psp_synced_at = now(), next_reconcile_at = NULL, updated_at = now()
WHERE id = %(id)s AND psp_state_seq = %(seen)s
RETURNING id
"""


def lock_order(conn: Connection[Row], order_id: str) -> LockedOrder | None:
    return conn.cursor(row_factory=_LOCKED).execute(LOCK_ORDER, {"id": order_id}).fetchone()


@dataclass(slots=True)
class _LockedWithOperations(LockedOrder):
    operations: list[dict[str, Any]] | None


# The order under its row lock, the clock, and then the order's operations, read by a
# statement of its own inside the function (migrations/0211), after the lock was
# granted: what was committed while it was waited for is among them. One statement
# where the lock and OPERATIONS took two.
LOCK_WITH_OPERATIONS = f"""
SELECT {_columns(Order, "(r.r_order).")}, r.r_now AS db_now, r.r_operations AS operations
FROM ordersync_lock_with_operations(%(id)s) AS r
"""  # noqa: S608
_LOCKED_WITH_OPERATIONS = _positional_row(_LockedWithOperations)


def lock_with_operations(
    conn: Connection[Row], order_id: str
) -> tuple[LockedOrder | None, list[Operation]]:
    """The order under its row lock, the clock, and the order's operations: one
    statement (no row, and no operations, for an unknown order)."""
    cursor = kept_cursor(conn, LOCK_WITH_OPERATIONS, _LOCKED_WITH_OPERATIONS)
    row = cursor.execute(LOCK_WITH_OPERATIONS, {"id": order_id}).fetchone()
    if row is None:
        return None, []
    ops = operations_from_json(row.operations)
    row.operations = None
    return row, ops


def _timestamp(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


# How a column of `operations` comes out of JSON into an Operation's field; the others
# are JSON's own types (text, numbers, booleans, the jsonb columns).
_FROM_JSON: dict[str, Callable[[Any], Any]] = {
    "id": uuid.UUID,
    "lease_token": _uuid,
    "next_attempt_at": _timestamp,
    "lease_until": _timestamp,
    "created_at": _timestamp,
    "updated_at": _timestamp,
}
_STORED_OPERATION_FIELDS = [
    (f.name, _FROM_JSON.get(f.name)) for f in fields(Operation) if f.name not in ("leased", "due")
]


def operations_from_json(data: Sequence[dict[str, Any]] | None) -> list[Operation]:
    """The operations as `ordersync_operations` (migrations/0211) returns them, oldest
    first, typed as OPERATIONS reads them (tests/data/test_next_step_reads.py holds
    the two equal)."""
    ops: list[Operation] = []
    for item in data or ():
        row = item["row"]
        values: list[Any] = [
            row[name] if convert is None else convert(row[name])
            for name, convert in _STORED_OPERATION_FIELDS
        ]
        # `leased` and `due` last, as the class has them (the computed fields).
        values += (item["leased"], item["due"])
        ops.append(Operation(*values))
    return ops


def operations(conn: Connection[Row], order_id: str) -> list[Operation]:
    """All of the order's operations, oldest first: the in-flight one, the history the
    planner reads and the next sequence number all come from this one query."""
    return conn.cursor(row_factory=_OPERATION).execute(OPERATIONS, {"id": order_id}).fetchall()


def in_flight(ops: Sequence[Operation]) -> Operation | None:
    return next((op for op in ops if op.status in IN_FLIGHT), None)


def history(ops: Sequence[Operation]) -> list[PastOperation]:
    return [
        PastOperation(
            Kind(r.kind),
            r.status,
            r.amount,
            to_lines(r.lines),
            external=r.external,
            reference=str(r.id),
            version=r.target_version,
            basis=_basis(r),
        )
        for r in ops
    ]


def _basis(op: Operation) -> OrderSnapshot | None:
    """The snapshot stored when money moved without the service was learnt: the one of
    the operation's target version, which never changes under that version (so the
    parsed-snapshot cache serves it)."""
    if op.basis is None:
        return None
    return _parsed(op.order_id, op.target_version, op.basis)


def next_seq(ops: Sequence[Operation]) -> int:
    return ops[-1].seq + 1 if ops else 1


def to_lines(data: Iterable[Any]) -> tuple[PspLine, ...]:
    return tuple(PspLine.from_json(item) for item in data)


def psp_state(order: Order) -> PspState | None:
    if order.psp_synced_at is None or order.authorized_amount is None:
        return None
    return PspState(
        status=PspStatus(order.psp_status or PspStatus.AUTHORIZED),
        authorized=order.authorized_amount,
        captured=order.captured_amount,
        refunded=order.refunded_amount,
        payment_method=order.psp_payment_method,
        country=order.psp_country,
        authorized_lines=to_lines(order.authorized_lines or []),
        expires_at=order.expires_at,
    )


# Parsed snapshots by (order id, version). A stored snapshot never changes under the
# same version (the receiver writes one only with a higher version), and an
# OrderSnapshot is frozen, so one validation serves every step of an operation (plan,
# send, plan again) and every thread of the process, instead of one per step.
_SNAPSHOTS: OrderedDict[tuple[str, int], OrderSnapshot] = OrderedDict()
_SNAPSHOTS_LOCK = threading.Lock()
_SNAPSHOTS_MAX = 2048


def snapshot(order: Order) -> OrderSnapshot:
    return _parsed(order.id, order.version, order.snapshot)


def _parsed(order_id: str, version: int, data: dict[str, Any]) -> OrderSnapshot:
    key = (order_id, version)
    with _SNAPSHOTS_LOCK:
        parsed = _SNAPSHOTS.get(key)
        if parsed is not None:
            _SNAPSHOTS.move_to_end(key)
            return parsed
    parsed = OrderSnapshot.model_validate(data)
    with _SNAPSHOTS_LOCK:
        _SNAPSHOTS[key] = parsed
        while len(_SNAPSHOTS) > _SNAPSHOTS_MAX:
            _SNAPSHOTS.popitem(last=False)
    return parsed


def idempotency_key(order: Order, seq: int, kind: Kind) -> str:
    """Derived from the order and the operation's place in it: the same plan made twice
    (say, after a crash before the commit) gets the same key."""
    name = f"{order.provider}:{order.psp_order_id}:{seq}:{kind.value}"
    return str(uuid.uuid5(_KEY_NAMESPACE, name))


def draft_operation(
    order: Order, seq: int, kind: Kind, amount: int, lines: Sequence[PspLine]
) -> Draft:
    return Draft(
        id=uuid.uuid4(),
        order_id=order.id,
        seq=seq,
        kind=kind.value,
        amount=amount,
        lines=[line.to_json() for line in lines],
        idempotency_key=idempotency_key(order, seq, kind),
    )


def insert_claimed_operation(
    conn: Connection[Row],
    order: LockedOrder,
    draft: Draft,
    request: dict[str, Any] | None,
    lease_seconds: float,
) -> Operation:
    """Records the operation, its key and its frozen request, already claimed by this
    worker for sending, in the transaction that locked `order`.

    `seq` comes from the operations read under the order's row lock, so no other
    worker can take the same number (and the unique index would refuse it). The row is
    returned as written without reading it back (nothing to wait for in pipeline mode):
    every value is ours but the times, which are now(), the transaction's start, read
    with the lock (`order.db_now`)."""
    token = lease_token()
    # A kept cursor: nothing reads this statement's result, and its eleven parameters'
    # dumpers are found once per connection.
    kept_cursor(conn, INSERT_CLAIMED_OPERATION, tuple_row).execute(
        INSERT_CLAIMED_OPERATION,
        {
            "id": draft.id,
            "order_id": order.id,
            "seq": draft.seq,
            "kind": draft.kind,
            "amount": draft.amount,
            "lines": Jsonb(draft.lines),
            "version": order.version,
            "key": draft.idempotency_key,
            "token": token,
            "lease": lease_seconds,
            "request": Jsonb(request) if request is not None else None,
        },
    )
    return Operation(
        id=draft.id,
        order_id=order.id,
        seq=draft.seq,
        kind=draft.kind,
        status="sent",
        amount=draft.amount,
        lines=draft.lines,
        target_version=order.version,
        idempotency_key=draft.idempotency_key,
        attempts=1,
        next_attempt_at=None,
        lease_token=token,
        lease_until=order.db_now + timedelta(seconds=lease_seconds),
        outcome_unknown=False,
        psp_reference=None,
        error=None,
        created_at=order.db_now,
        updated_at=order.db_now,
        key_generation=0,
        request=request,
        failed_psp_references=[],
        external=False,
        basis=None,
    )


def set_request(conn: Connection[Row], op_id: uuid.UUID, request: dict[str, Any]) -> None:
    """Freezes the request of an operation planned before requests were stored."""
    conn.execute(SET_REQUEST, {"id": op_id, "request": Jsonb(request)})


def renew_leases(
    conn: Connection[Row], held: Sequence[tuple[uuid.UUID, uuid.UUID, float]]
) -> set[uuid.UUID]:
    """Renews each (operation, lease token, lease seconds) still held; the ids renewed."""
    params = {
        "ids": [op_id for op_id, _, _ in held],
        "tokens": [token for _, token, _ in held],
        "leases": [lease for _, _, lease in held],
    }
    return {row["id"] for row in conn.execute(RENEW_LEASES, params).fetchall()}


def claim_operation(conn: Connection[Row], op_id: uuid.UUID, lease_seconds: float) -> Operation:
    row = (
        conn.cursor(row_factory=_OPERATION)
        .execute(
            f"""
        UPDATE operations
        SET status = 'sent', attempts = attempts + 1, lease_token = %s,
            -- Taken over from a worker whose lease ran out: its call may have applied.
            outcome_unknown = outcome_unknown OR status = 'sent',
            lease_until = now() + make_interval(secs => %s), updated_at = now()
        WHERE id = %s
        RETURNING {OPERATION_COLUMNS}
        """,  # noqa: S608
            (lease_token(), lease_seconds, op_id),
        )
        .fetchone()
    )
    assert row is not None
    return row


# An outcome, written only while this worker holds the lease; `retry_in` seconds from
# now on the database's clock (NULL: not due, or settled).
FINISH_OPERATION = """
UPDATE operations
SET status = %(status)s, psp_reference = coalesce(%(psp)s, psp_reference), error = %(error)s,
    next_attempt_at = now() + make_interval(secs => %(retry_in)s),
    outcome_unknown = %(unknown)s, lease_token = NULL, lease_until = NULL, updated_at = now()
WHERE id = %(op_id)s AND lease_token = %(token)s
"""


class Outcome(TypedDict, total=False):
    """What finish_operation writes: the status, and what the attempt left to know."""

    status: Required[str]
    psp_reference: str | None
    error: dict[str, Any] | None
    retry_in: float | None
    outcome_unknown: bool


def _finish_params(op: Operation, **outcome: Unpack[Outcome]) -> dict[str, Any]:
    error = outcome.get("error")
    return {
        "status": outcome["status"],
        "psp": outcome.get("psp_reference"),
        "error": Jsonb(error) if error else None,
        "retry_in": outcome.get("retry_in"),
        "unknown": outcome.get("outcome_unknown", False),
        "op_id": op.id,
        "token": op.lease_token,
    }


def finish_operation(conn: Connection[Row], op: Operation, **outcome: Unpack[Outcome]) -> bool:
    """Writes an outcome if this worker still holds the lease; False if it lost it."""
    params = _finish_params(op, **outcome)
    return conn.execute(FINISH_OPERATION + " RETURNING id", params).fetchone() is not None


def lock_and_finish(
    conn: Connection[Row], op: Operation, **outcome: Unpack[Outcome]
) -> tuple[LockedOrder, bool]:
    """Locks the operation's order, then writes the outcome as finish_operation does;
    both sent before either is read: in pipeline mode, one round trip."""
    params = _finish_params(op, **outcome)
    order = conn.cursor(row_factory=_LOCKED).execute(LOCK_ORDER, {"id": op.order_id})
    finished = conn.execute(FINISH_OPERATION + " RETURNING id", params)
    locked = order.fetchone()
    assert locked is not None  # an operation's order is never deleted before it
    return locked, finished.fetchone() is not None


# Whether an order's standing needs_attention halts automatic operations (its reason's
# `halts`, written from domain/planner.py halts; a reason stored before it was kept
# halts, as every reason did then). For the sweeps, which skip what waits for a person.
STANDING_HALTS = "coalesce((flag_reason -> 'needs_attention' ->> 'halts')::boolean, true)"
HALTED = f"('needs_attention' = ANY(flags) AND {STANDING_HALTS})"


def set_flag(
    conn: Connection[Row],
    order_id: str,
    flag: str,
    reason: dict[str, Any],
    refused_amount: int | None = None,
) -> None:
    """Flags the order. A needs_attention reason carries `halts` (domain/planner.py
    halts; without it, it halts) and `told`, the reasons told while the flag stands."""
    code = reason.get("code")
    if flag == "needs_attention":
        reason = {**reason, "halts": bool(reason.get("halts", True)), "told": [code]}
    conn.execute(
        f"""
        UPDATE orders
        SET flags = CASE WHEN %(flag)s = ANY(flags) THEN flags ELSE flags || %(flag)s END,
            -- The first needs_attention reason that halts stands until an operator
            -- clears it: it is the one the shop was told, and what went wrong first.
            -- While only advisory reasons stand (they halt nothing), a reason that
            -- halts takes their place, and each new one joins `told`. flagged_at:
            -- since when the flag has waited for a person (the console); a flag raised
            -- again keeps its first time.
            flag_reason = CASE
                WHEN %(flag)s = 'needs_attention' AND %(flag)s = ANY(flags)
                     AND flag_reason ? %(flag)s THEN
                    CASE WHEN {STANDING_HALTS} THEN flag_reason
                    ELSE flag_reason || jsonb_build_object(%(flag)s,
                        (CASE WHEN %(halts)s THEN %(reason)s::jsonb
                              ELSE flag_reason -> %(flag)s END)
                        || jsonb_build_object(
                               'flagged_at', flag_reason -> %(flag)s -> 'flagged_at',
                               'told', (coalesce(flag_reason -> %(flag)s -> 'told',
                                                 jsonb_build_array(
                                                     flag_reason -> %(flag)s -> 'code'))
                                        - %(code)s::text) || to_jsonb(%(code)s::text)))
                    END
                ELSE coalesce(flag_reason, '{{}}'::jsonb)
                     || jsonb_build_object(%(flag)s, %(reason)s::jsonb
                        || jsonb_build_object('flagged_at', coalesce(
                               flag_reason -> %(flag)s -> 'flagged_at', to_jsonb(now())))) END,
            refused_amount = coalesce(%(refused)s, refused_amount),
            updated_at = now()
        WHERE id = %(id)s
        """,  # noqa: S608
        {
            "flag": flag,
            "reason": Jsonb(reason),
            "refused": refused_amount,
            "id": order_id,
            "halts": bool(reason.get("halts", True)),
            "code": code,
        },
    )


def attention(order: Order) -> frozenset[str]:
    """The needs_attention reasons told while the flag stands (domain/planner.py
    OrderView.told); a reason stored before `told` was kept is its own."""
    if "needs_attention" not in (order.flags or []):
        return frozenset()
    reason = (order.flag_reason or {}).get("needs_attention") or {}
    told = reason.get("told") or ([reason["code"]] if reason.get("code") else [])
    return frozenset(str(code) for code in told)


def halted(order: Order) -> bool:
    """Whether the order's needs_attention halts automatic operations (STANDING_HALTS,
    read in Python)."""
    if "needs_attention" not in (order.flags or []):
        return False
    reason = (order.flag_reason or {}).get("needs_attention") or {}
    return reason.get("halts") is not False


def clear_flag(conn: Connection[Row], order_id: str, flag: str) -> None:
    conn.execute(
        """
        UPDATE orders
        SET flags = array_remove(flags, %(flag)s),
            flag_reason = CASE WHEN flag_reason IS NULL THEN NULL ELSE flag_reason - %(flag)s END,
            refused_amount = CASE WHEN %(flag)s = 'needs_new_order' THEN NULL
                                  ELSE refused_amount END,
            updated_at = now()
        WHERE id = %(id)s AND %(flag)s = ANY(flags)
        """,
        {"flag": flag, "id": order_id},
    )


def apply_psp_figures(
    conn: Connection[Row], order_id: str, figures: dict[str, Any], seen: int
) -> bool:
    """Adopts the PSP's own view of the order (after reading it), unless our figures
    changed since the read started (`seen`: the order's psp_state_seq then): False."""
    row = conn.execute(
        APPLY_PSP_FIGURES,
        {**figures, "lines": Jsonb(figures["lines"]), "id": order_id, "seen": seen},
    ).fetchone()
    return row is not None


# How a succeeded operation `op` (kind, amount, lines) moves the figures of its order
# `o`: the one rule, for our own operations and for money moved without us.
_SUCCESS_FIGURES = """
    authorized_amount = CASE op.kind
        WHEN 'update_authorization' THEN op.amount
        -- A capture the PSP confirms is counted whatever we believed of the
        -- authorization (an EXPIRE may have arrived before this capture's own
        -- notification): the authorization is at least what was captured under it.
        WHEN 'capture' THEN greatest(o.authorized_amount, o.captured_amount + op.amount)
        WHEN 'release_authorization' THEN o.captured_amount
        ELSE o.authorized_amount END,
    authorized_lines = CASE op.kind WHEN 'update_authorization' THEN op.lines
                                    ELSE o.authorized_lines END,
    captured_amount = o.captured_amount + CASE op.kind WHEN 'capture' THEN op.amount ELSE 0 END,
    refunded_amount = o.refunded_amount + CASE op.kind WHEN 'refund' THEN op.amount ELSE 0 END,
    psp_status = CASE
        WHEN op.kind = 'capture' AND coalesce(o.psp_status, '') NOT IN ('expired', 'closed')
        THEN CASE WHEN o.captured_amount + op.amount >= o.authorized_amount THEN 'captured'
                  ELSE 'part_captured' END
        WHEN op.kind = 'cancel' THEN 'cancelled'
        WHEN op.kind = 'release_authorization' THEN 'captured'
        ELSE o.psp_status END,
    -- An extension's new expiry is Klarna's to say: read the order again before the
    -- next step.
    psp_synced_at = CASE op.kind WHEN 'extend_authorization' THEN NULL
                                 ELSE o.psp_synced_at END,
    updated_at = now()
"""
APPLY_SUCCESS = f"""
UPDATE orders o SET {_SUCCESS_FIGURES}
FROM (SELECT %(kind)s::text AS kind, %(amount)s::bigint AS amount, %(lines)s::jsonb AS lines)
     AS op
WHERE o.id = %(id)s
"""  # noqa: S608


def apply_success(conn: Connection[Row], order: Order, op: Operation) -> None:
    """Moves the order's PSP figures by what a succeeded operation did."""
    params = {"kind": op.kind, "amount": op.amount, "lines": Jsonb(op.lines), "id": order.id}
    conn.execute(APPLY_SUCCESS, params)


@dataclass(slots=True)
class RecordLock:
    """The order as recording an outcome read it under its row lock (taken before the
    operation's row is written, as every writer of both does): its PSP, its state
    sequence before the record, and when the shop's snapshot version the operation was
    planned for arrived (the confirmation metric; None when not asked)."""

    provider: str
    psp_state_seq: int
    received_at: datetime | None


@dataclass(slots=True)
class RecordedOrder(LockedOrder):
    """The order after a success was recorded, with what the record read before it."""

    seq_before: int
    received_at: datetime | None
    operations: list[dict[str, Any]] | None


# Our operation succeeded: under the order's row lock, recorded (if the lease is still
# ours) and the order's figures moved by it, by one function (migrations/0141, 0211)
# whose statements each see what was committed before the lock was granted; it returns
# the order as it now is and its operations after the record (no order when the lease
# was lost). The inbox read of the confirmation metric rides along (the version
# it looks for arrived before the operation was planned: this statement's snapshot has
# it). One statement where the lock, the record and the figures took two.
# The order's snapshot is left out when its version is the one the caller read already
# (`known`): it never changes under a version, and decoding it is most of the row.
_RECORDED_COLUMNS = _columns(Order, "(r.r_order).").replace(
    "(r.r_order).snapshot,",
    "CASE WHEN (r.r_order).version = %(known)s THEN NULL ELSE (r.r_order).snapshot END"
    " AS snapshot,",
)
RECORD_SUCCESS = f"""
SELECT {_RECORDED_COLUMNS}, r.r_now AS db_now, r.r_seq_before AS seq_before,
       CASE WHEN %(received)s THEN ({inbox.VERSION_RECEIVED_AT}) END AS received_at,
       r.r_operations AS operations
FROM ordersync_record_success(%(order_id)s, %(op_id)s, %(token)s, %(psp)s) AS r
"""  # noqa: S608
_RECORDED = _positional_row(RecordedOrder)


def record_success(
    conn: Connection[Row],
    op: Operation,
    psp_reference: str | None,
    *,
    received: bool = False,
    known: Order | None = None,
) -> tuple[RecordLock | None, LockedOrder | None, list[Operation]]:
    """Under the order's row lock: the operation recorded as succeeded and the order's
    figures moved by it, if this worker still holds the lease (else nothing changes:
    None, None and the operations). What the lock read of the order before (with
    `received`: when the operation's snapshot version arrived), the order after and its
    operations after, from one statement. `known`: the order as the caller read it
    before (its snapshot is not read again if the version is still the same)."""
    params = {
        "known": known.version if known is not None else None,
        "order_id": op.order_id,
        "op_id": op.id,
        "token": op.lease_token,
        "psp": psp_reference,
        "version": op.target_version,
        "received": received,
    }
    cursor = kept_cursor(conn, RECORD_SUCCESS, _RECORDED)
    recorded = cursor.execute(RECORD_SUCCESS, params).fetchone()
    assert recorded is not None
    ops = operations_from_json(recorded.operations)
    recorded.operations = None
    if recorded.id is None:  # the lease was lost: nothing was written
        return None, None, ops
    if recorded.snapshot is None:
        assert known is not None and known.version == recorded.version
        recorded.snapshot = known.snapshot
    before = RecordLock(recorded.provider, recorded.seq_before, recorded.received_at)
    return before, recorded, ops


# Money that moved without the service, as a succeeded operation that was never sent:
# the ledger counts it and the planner never makes it again. Its key is derived from
# the PSP's own reference, so learning of it twice records it once.
INSERT_EXTERNAL_OPERATION = f"""
INSERT INTO operations (id, order_id, seq, kind, status, amount, lines, target_version,
                        idempotency_key, attempts, psp_reference, external, basis)
VALUES (%(id)s, %(order_id)s,
        (SELECT coalesce(max(seq), 0) + 1 FROM operations WHERE order_id = %(order_id)s),
        %(kind)s, 'succeeded', %(amount)s, %(lines)s, %(version)s, %(key)s, 0,
        %(reference)s, true, %(basis)s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {OPERATION_COLUMNS}
"""  # noqa: S608


def record_external(
    conn: Connection[Row],
    order: Order,
    kind: Kind,
    amount: int,
    reference: str,
    lines: Sequence[PspLine] = (),
    *,
    move_figures: bool = True,
) -> bool:
    """Records money the PSP moved without us (contract §4) under the order's row lock;
    with `move_figures`, the order's figures move by it (a notification; a read adopts
    the PSP's figures itself). False if it was recorded before."""
    row = (
        conn.cursor(row_factory=_OPERATION)
        .execute(
            INSERT_EXTERNAL_OPERATION,
            {
                "id": uuid.uuid4(),
                "order_id": order.id,
                "kind": kind.value,
                "amount": amount,
                "lines": Jsonb([line.to_json() for line in lines]),
                "version": order.version,
                "key": str(uuid.uuid5(_KEY_NAMESPACE, f"external:{order.id}:{reference}")),
                "reference": reference,
                # The prices its units had then: unnamed money is tied to units at
                # those, never at a price the shop set later (domain/planner.py).
                "basis": Jsonb(order.snapshot),
            },
        )
        .fetchone()
    )
    if row is None:
        return False
    if move_figures:
        apply_success(conn, order, row)
    return True


# Goods a price cut already held takes whole (domain/planner.py Settle): a capture of 0,
# succeeded and never sent; its key is its place in the order, as an operation's is.
INSERT_SETTLED_OPERATION = f"""
INSERT INTO operations (id, order_id, seq, kind, status, amount, lines, target_version,
                        idempotency_key, attempts, external)
VALUES (%(id)s, %(order_id)s, %(seq)s, 'capture', 'succeeded', 0, %(lines)s, %(version)s,
        %(key)s, 0, false)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {OPERATION_COLUMNS}
"""  # noqa: S608


def record_settled(conn: Connection[Row], order: Order, seq: int, lines: Sequence[PspLine]) -> None:
    """Records goods settled against money already held as a succeeded capture of 0
    (nothing was sent; the order's figures do not move), under the order's row lock."""
    conn.execute(
        INSERT_SETTLED_OPERATION,
        {
            "id": uuid.uuid4(),
            "order_id": order.id,
            "seq": seq,
            "lines": Jsonb([line.to_json() for line in lines]),
            "version": order.version,
            "key": idempotency_key(order, seq, Kind.CAPTURE),
        },
    )


def attribute_external(conn: Connection[Row], op_id: str, lines: Sequence[PspLine]) -> None:
    """Names the units an external capture or refund moved (domain/planner.py Attribute)."""
    conn.execute(
        "UPDATE operations SET lines = %s, updated_at = now()"
        " WHERE id = %s AND external AND lines = '[]'::jsonb",
        (Jsonb([line.to_json() for line in lines]), op_id),
    )


# Far enough that no sweep reaches it (Postgres' 'infinity' does not load into a Python
# datetime); the operator's reconcile clears it.
PARKED_UNTIL = "9999-12-31T00:00:00Z"


def park_order(conn: Connection[Row], order_id: str) -> None:
    """The order waits for a person: no sweep picks it up again until the operator's
    reconcile (`POST /orders/{id}/reconcile`) releases it."""
    conn.execute(
        "UPDATE orders SET reconcile_requested_at = NULL, next_reconcile_at = %s,"
        " updated_at = now() WHERE id = %s",
        (PARKED_UNTIL, order_id),
    )


# Also sent with the order's `order.synced` event, in one statement (data/outbox.py
# INSERT_EVENT_IN_SYNC).
MARK_IN_SYNC = """
UPDATE orders SET reconcile_requested_at = NULL, next_reconcile_at = NULL, sweep_after = NULL
WHERE id = %(order_id)s
"""


def mark_in_sync(conn: Connection[Row], order: Order) -> None:
    """Nothing is due for the order: no request, retry time or sweep mark. `order` is
    the row as locked in this transaction: when it has none of them, nothing is sent (an
    UPDATE that changes nothing still writes a row version and its index entries)."""
    if (
        order.reconcile_requested_at is None
        and order.next_reconcile_at is None
        and order.sweep_after is None
    ):
        return
    conn.execute(MARK_IN_SYNC, {"order_id": order.id})


def defer_order(conn: Connection[Row], order_id: str, seconds: float) -> None:
    """Not reconciled again for `seconds`, on the database's clock (as every due time)."""
    conn.execute(
        "UPDATE orders SET next_reconcile_at = now() + make_interval(secs => %s),"
        " updated_at = now() WHERE id = %s",
        (seconds, order_id),
    )


def captured_lines(conn: Connection[Row], order_id: str) -> list[PspLine]:
    """Every line captured so far for the order, merged per shop line (for a release)."""
    rows = conn.execute(
        "SELECT id, amount, lines FROM operations WHERE order_id = %s AND kind = 'capture' "
        "AND status = 'succeeded' ORDER BY seq",
        (order_id,),
    ).fetchall()
    merged: dict[str, PspLine] = {}
    for row in rows:
        for line in to_lines(row["lines"]) or _unnamed_capture(row):
            before = merged.get(line.reference)
            if before is None:
                merged[line.reference] = line
                continue
            quantity = before.quantity + (0 if line.type is LineType.DISCOUNT else line.quantity)
            total = before.total_amount + line.total_amount
            unit = before.unit_price if line.type is not LineType.DISCOUNT else total
            merged[line.reference] = PspLine(
                reference=line.reference,
                name=line.name,
                type=line.type,
                quantity=quantity,
                unit_price=unit,
                tax_rate=line.tax_rate,
                total_amount=total,
                total_discount_amount=quantity * unit - total,
                total_tax_amount=before.total_tax_amount + line.total_tax_amount,
                quantity_unit=line.quantity_unit,
                product_url=line.product_url,
                image_url=line.image_url,
            )
    return list(merged.values())


def _unnamed_capture(row: Row) -> tuple[PspLine, ...]:
    """Money captured without the service whose lines the PSP did not name (an Adyen
    Customer Area capture the shop's snapshot has not explained): one line of its own,
    so that a release, which updates the authorization down to what was captured, still
    names lines that add up to it (contract §4 step 4 lets go of the rest)."""
    amount = int(row["amount"])
    if amount <= 0:
        return ()
    return (
        PspLine(
            reference=f"captured-{row['id']}",
            name="Captured without this service",
            type=LineType.PHYSICAL,
            quantity=1,
            unit_price=amount,
            tax_rate=0,
            total_amount=amount,
            total_discount_amount=0,
            total_tax_amount=0,
        ),
    )


# -- the sweeper's (workers/sweeper.py) ------------------------------------------------

# Soonest due first. A parked operation (pending without next_attempt_at: an unknown
# outcome after its last attempt, no credentials) is not due; an operator wakes it.
# At most one operation per order is in flight, so each order comes once.
DUE_RETRIES = """
SELECT order_id FROM operations
WHERE (status = 'pending' AND next_attempt_at <= now())
   OR (status = 'sent' AND lease_until < now())
ORDER BY coalesce(next_attempt_at, lease_until)
LIMIT %(batch)s
"""
# Operations being sent whose lease ends within `horizon` seconds (0: has ended), with
# the seconds left, soonest first: a worker that starts schedules a resume for the
# moment each ends, and beat's short lease sweep finds those that have. A `sent`
# operation parked by workers/poison.py has its lease set far ahead: never in reach.
LEASES_ENDING = """
SELECT order_id, greatest(0, extract(epoch FROM lease_until - now()))::float8 AS wait
FROM operations
WHERE status = 'sent' AND lease_until < now() + make_interval(secs => %(horizon)s)
ORDER BY lease_until
LIMIT %(batch)s
"""
# Orders the web process marked but whose task never ran (Redis was down, the message
# was lost): a live task takes far less than the grace period. Soonest due first, and
# each order offered is pushed back by its own age (capped at 5 minutes; reset when it
# is in sync), so orders that stay marked for long (waiting on a notification) cannot
# push a lost message's order out of every sweep.
# Handed out in a fixed order: an UPDATE's RETURNING follows no ORDER BY.
REQUESTED = """
WITH offered AS (
UPDATE orders
SET sweep_after = now() + least(interval '5 minutes',
                                greatest(make_interval(secs => %(grace)s),
                                         now() - reconcile_requested_at))
WHERE id IN (
    SELECT id FROM orders
    WHERE reconcile_requested_at < now() - make_interval(secs => %(grace)s)
      AND (next_reconcile_at IS NULL OR next_reconcile_at <= now())
      AND (sweep_after IS NULL OR sweep_after <= now())
    ORDER BY greatest(coalesce(next_reconcile_at, reconcile_requested_at),
                      coalesce(sweep_after, reconcile_requested_at))
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, reconcile_requested_at
)
SELECT id FROM offered ORDER BY reconcile_requested_at, id
"""
# Unfinished Klarna orders are read again now and then (drift: captures or refunds made
# outside this service), and before their authorization expires.
# Handed out in a fixed order, as REQUESTED.
RESYNC = f"""
WITH offered AS (
UPDATE orders SET psp_synced_at = NULL, reconcile_requested_at = now()
WHERE id IN (
    SELECT id FROM orders
    WHERE provider = 'klarna'
      AND reconcile_requested_at IS NULL
      AND NOT {HALTED}
      AND ((status = 'open' AND psp_status IN ('authorized', 'part_captured')
            AND (psp_synced_at < now() - make_interval(secs => %(resync)s)
                 OR (expires_at < now() + make_interval(days => %(days)s)
                     AND captured_amount < desired_amount)))
           -- Captured orders too while money is held, and orders whose authorization
           -- expired after a part capture: a refund made in Klarna's portal is money
           -- that moved without the service (contract §4); only a read shows it
           -- (index orders_resync_held, migration 0095).
           OR (psp_status IN ('captured', 'expired') AND refunded_amount < captured_amount
               AND psp_synced_at < now() - make_interval(secs => %(resync)s)))
    ORDER BY psp_synced_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
)
SELECT id FROM offered ORDER BY id
"""  # noqa: S608

# An operation with no client for its PSP: parked, flagged once; a lease that ran out
# leaves its outcome unknown.
PARK_UNCONFIGURED = """
UPDATE operations SET status = 'pending', next_attempt_at = NULL,
       outcome_unknown = outcome_unknown OR status = 'sent',
       lease_token = NULL, lease_until = NULL, updated_at = now()
WHERE id = %(id)s
"""


def park_unconfigured(conn: Connection[Row], op_id: uuid.UUID) -> None:
    conn.execute(PARK_UNCONFIGURED, {"id": op_id})


# Pending operations wait until the operator's reconcile sets next_attempt_at again; a
# `sent` one whose lease ran out keeps its lease until then (its outcome is unknown, so
# it is checked, never resent blindly, when it is released). workers/poison.py.
PARK_OPERATIONS = """
UPDATE operations
SET next_attempt_at = CASE WHEN status = 'pending' THEN %(until)s ELSE next_attempt_at END,
    lease_until = CASE WHEN status = 'sent' THEN %(until)s ELSE lease_until END,
    updated_at = now()
WHERE order_id = %(id)s AND status IN ('pending', 'sent')
"""


def park_operations(conn: Connection[Row], order_id: str) -> None:
    conn.execute(PARK_OPERATIONS, {"until": PARKED_UNTIL, "id": order_id})


# -- Adyen notifications (workers/adyen_inbox.py) -------------------------------------

# The operation a modification notification answers: by the modification's pspReference,
# or by our operation id (the request's `reference`) when the sender has not recorded
# that reference yet. The order by the case-insensitive unique index, then exactly.
MATCH_OPERATION = """
SELECT o.id, o.order_id FROM operations o JOIN orders r ON r.id = o.order_id
WHERE r.provider = 'adyen'
  AND lower(r.psp_order_id) = lower(%(payment)s) AND r.psp_order_id = %(payment)s
  AND (o.psp_reference = %(psp)s OR o.id = %(op_id)s)
ORDER BY (o.psp_reference IS NOT DISTINCT FROM %(psp)s) DESC
LIMIT 1
"""
# A notification failed this generation: the next is sent under a new key, and a
# notification for this modification can never settle the operation again.
RETRY_GENERATION = """
UPDATE operations
SET status = 'pending', key_generation = key_generation + 1,
    next_attempt_at = now() + make_interval(secs => %(delay)s), error = %(error)s,
    psp_reference = NULL,
    failed_psp_references = array_append(failed_psp_references, %(psp)s),
    lease_token = NULL, lease_until = NULL, updated_at = now()
WHERE id = %(id)s
"""
# Operations whose notification never came, oldest first; each is then flagged in its
# own short transaction, skipping an order another worker holds.
SILENT_OPERATIONS = f"""
SELECT o.id, o.order_id FROM operations o JOIN orders r ON r.id = o.order_id
WHERE o.status = 'awaiting_notification'
  AND o.updated_at < now() - make_interval(secs => %(timeout)s)
  AND NOT {HALTED}
ORDER BY o.updated_at
LIMIT %(batch)s
"""  # noqa: S608
LOCK_ORDER_SKIP_LOCKED = (
    f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = %(id)s FOR UPDATE SKIP LOCKED"  # noqa: S608
)
OPERATION = f"""
SELECT {OPERATION_COLUMNS} FROM operations
WHERE id = %(id)s AND (%(status)s::text IS NULL OR status = %(status)s)
"""  # noqa: S608
# The lease goes too: a sender still between its call and its record must find its
# lease gone and leave this outcome alone.
SETTLE_OPERATION = """
UPDATE operations
SET status = %(status)s, psp_reference = coalesce(psp_reference, %(psp)s), error = %(error)s,
    next_attempt_at = NULL, lease_token = NULL, lease_until = NULL, updated_at = now()
WHERE id = %(id)s
"""
# Payment ids are looked up by the case-insensitive unique index (migration 0221: the
# exact one is gone), then matched exactly.
ADYEN_ORDER = """
SELECT id FROM orders
WHERE provider = 'adyen' AND lower(psp_order_id) = lower(%(payment)s)
  AND psp_order_id = %(payment)s
"""
# The authorization ended at the PSP (Adyen's EXPIRE: 'expired'; Adyen's AUTHORISATION
# refused: 'closed'): it holds no more than was captured under it.
MARK_ENDED = """
UPDATE orders SET psp_status = %(status)s, authorized_amount = captured_amount,
                  updated_at = now()
WHERE id = %(id)s
"""
# An operation of ours changed the authorization: a late AUTHORISATION must not undo it.
AUTHORIZATION_CHANGED_BY_US = """
SELECT 1 FROM operations
WHERE order_id = %(id)s AND kind IN ('update_authorization', 'release_authorization', 'cancel')
  AND status IN ('succeeded', 'sent', 'awaiting_notification', 'pending')
LIMIT 1
"""
ADOPT_ADYEN_AUTHORIZATION = """
UPDATE orders
SET authorized_amount = %(amount)s,
    authorized_lines = CASE WHEN %(has_lines)s THEN %(lines)s ELSE authorized_lines END,
    psp_synced_at = coalesce(psp_synced_at, now()), updated_at = now(),
    reconcile_requested_at = coalesce(reconcile_requested_at, now())
WHERE id = %(id)s
"""


@dataclass(slots=True)
class OperationRef:
    """An operation found by a notification or a sweep, and its order."""

    id: uuid.UUID
    order_id: str


_REF = class_row(OperationRef)


def match_adyen_operation(
    conn: Connection[Row], payment: str, psp_reference: str, op_id: uuid.UUID | None
) -> OperationRef | None:
    params = {"payment": payment, "psp": psp_reference, "op_id": op_id}
    return conn.cursor(row_factory=_REF).execute(MATCH_OPERATION, params).fetchone()


def operation(
    conn: Connection[Row], op_id: uuid.UUID, status: str | None = None
) -> Operation | None:
    params = {"id": op_id, "status": status}
    return conn.cursor(row_factory=_OPERATION).execute(OPERATION, params).fetchone()


def retry_generation(
    conn: Connection[Row], op_id: uuid.UUID, delay: float, error: dict[str, Any], psp: str
) -> None:
    """Due in `delay` seconds on the database's clock."""
    params = {"delay": delay, "error": Jsonb(error), "psp": psp, "id": op_id}
    conn.execute(RETRY_GENERATION, params)


def settle_operation(
    conn: Connection[Row],
    op_id: uuid.UUID,
    status: str,
    psp_reference: str,
    error: dict[str, Any] | None,
) -> None:
    params = {
        "status": status,
        "psp": psp_reference,
        "error": Jsonb(error) if error else None,
        "id": op_id,
    }
    conn.execute(SETTLE_OPERATION, params)


def adyen_order(conn: Connection[Row], payment: str) -> str | None:
    """Our order id of an Adyen payment, if we have it."""
    row = conn.execute(ADYEN_ORDER, {"payment": payment}).fetchone()
    return None if row is None else str(row["id"])


def mark_expired(conn: Connection[Row], order_id: str) -> None:
    conn.execute(MARK_ENDED, {"id": order_id, "status": "expired"})


def mark_refused(conn: Connection[Row], order_id: str) -> None:
    """The payment was never authorized (Adyen's AUTHORISATION refused): it holds
    nothing, so the planner never counts goods paid against it (not even settled at 0)
    and sends it nothing to refuse; closed, as an authorization that ended at the PSP."""
    conn.execute(MARK_ENDED, {"id": order_id, "status": "closed"})


def authorization_changed_by_us(conn: Connection[Row], order_id: str) -> bool:
    return conn.execute(AUTHORIZATION_CHANGED_BY_US, {"id": order_id}).fetchone() is not None


def adopt_adyen_authorization(
    conn: Connection[Row], order_id: str, amount: int, lines: list[dict[str, Any]]
) -> None:
    params = {"amount": amount, "has_lines": bool(lines), "lines": Jsonb(lines), "id": order_id}
    conn.execute(ADOPT_ADYEN_AUTHORIZATION, params)


def silent_operations(
    conn: Connection[Row], timeout: float, batch: int
) -> Callable[[], list[OperationRef]]:
    """Sends the read; the function returned reads the operations found. In pipeline
    mode, read them after the commit: no round trip of their own."""
    params = {"timeout": timeout, "batch": batch}
    return conn.cursor(row_factory=_REF).execute(SILENT_OPERATIONS, params).fetchall


def lock_order_skip_locked(conn: Connection[Row], order_id: str) -> Order | None:
    params = {"id": order_id}
    return conn.cursor(row_factory=_ORDER).execute(LOCK_ORDER_SKIP_LOCKED, params).fetchone()


# -- the operator's reconcile (async: the web process) ---------------------------------

LOCK_FLAGS = "SELECT flags FROM orders WHERE id = %(id)s FOR UPDATE"
# Clears the back-off and needs_attention; a Klarna order's figures are marked stale so
# the forced reconcile reads the PSP before anything else.
RELEASE_ORDER = """
UPDATE orders
SET flags = array_remove(flags, 'needs_attention'),
    flag_reason = CASE WHEN flag_reason IS NULL THEN NULL
                       ELSE flag_reason - 'needs_attention' END,
    -- Reconciling a quantities_reversed flag acknowledges that very reversal.
    acknowledged_reversal = CASE
        WHEN flag_reason -> 'needs_attention' ->> 'code' = 'quantities_reversed'
        THEN flag_reason -> 'needs_attention' ->> 'message' ELSE acknowledged_reversal END,
    next_reconcile_at = NULL,
    psp_synced_at = CASE WHEN provider = 'klarna' THEN NULL ELSE psp_synced_at END,
    reconcile_requested_at = coalesce(reconcile_requested_at, now()),
    updated_at = now()
WHERE id = %(id)s
RETURNING flags
"""
RELEASE_PENDING = """
UPDATE operations SET next_attempt_at = now(), updated_at = now()
WHERE order_id = %(id)s AND status = 'pending'
"""
# A `sent` operation parked by a task that kept failing (workers/poison.py): its lease
# runs out now, and the reconciler checks it with the PSP.
RELEASE_PARKED_SENT = """
UPDATE operations SET lease_until = now(), updated_at = now()
WHERE order_id = %(id)s AND status = 'sent' AND lease_until = %(parked)s
"""


async def release_for_operator(
    conn: AsyncConnection[Row], order_id: str
) -> tuple[list[str], list[str], int] | None:
    """Flags before and after, and how many retries were released; None: no such order.
    Inside the caller's transaction."""
    before = await (await conn.execute(LOCK_FLAGS, {"id": order_id})).fetchone()
    if before is None:
        return None
    after = await (await conn.execute(RELEASE_ORDER, {"id": order_id})).fetchone()
    assert after is not None
    released = await conn.execute(RELEASE_PENDING, {"id": order_id})
    await conn.execute(RELEASE_PARKED_SENT, {"id": order_id, "parked": PARKED_UNTIL})
    return list(before["flags"]), list(after["flags"]), released.rowcount


# -- reads for operators and metrics (async: the web process) --------------------------

ORDER = f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = %(id)s"  # noqa: S608
FLAG_COUNTS = (
    "SELECT flag, count(*) AS n FROM orders, unnest(flags) AS flag"
    " WHERE flags <> '{}' GROUP BY flag"
)
# Walks orders_flagged (updated_at DESC, id DESC) from the cursor on. `reason` is a flag
# reason's code; `search` a shop order id or the PSP's order id / pspReference (any case).
FLAGGED_PAGE = f"""
SELECT {ORDER_COLUMNS} FROM orders
WHERE flags <> '{{}}'
  AND (%(flag)s::text IS NULL OR %(flag)s = ANY(flags))
  AND (%(account)s::text IS NULL OR account = %(account)s)
  AND (%(reason)s::text IS NULL OR EXISTS (
      SELECT 1 FROM jsonb_each(coalesce(flag_reason, '{{}}'::jsonb)) AS r(flag, reason)
      WHERE r.reason ->> 'code' = %(reason)s))
  AND (%(search)s::text IS NULL OR id = %(search)s OR lower(psp_order_id) = lower(%(search)s))
  AND (%(after_at)s::timestamptz IS NULL OR (updated_at, id) < (%(after_at)s, %(after_id)s))
ORDER BY updated_at DESC, id DESC
LIMIT %(limit)s
"""  # noqa: S608


# Operations that may still take effect at the PSP (domain IN_FLIGHT), by status, and
# the age of the oldest.
IN_FLIGHT_COUNTS = """
SELECT status, count(*) AS n,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest
FROM operations WHERE status IN ('pending', 'sent', 'awaiting_notification')
GROUP BY status
"""


async def in_flight_counts(conn: AsyncConnection[Row]) -> list[Row]:
    return await (await conn.execute(IN_FLIGHT_COUNTS)).fetchall()


async def read_order(conn: AsyncConnection[Row], order_id: str) -> Order | None:
    cursor = conn.cursor(row_factory=_ORDER)
    return await (await cursor.execute(ORDER, {"id": order_id})).fetchone()


async def read_operations(conn: AsyncConnection[Row], order_id: str) -> list[Operation]:
    cursor = conn.cursor(row_factory=_OPERATION)
    return await (await cursor.execute(OPERATIONS, {"id": order_id})).fetchall()


async def flag_counts(conn: AsyncConnection[Row]) -> dict[str, int]:
    rows = await (await conn.execute(FLAG_COUNTS)).fetchall()
    return {row["flag"]: int(row["n"]) for row in rows}


async def flagged_page(
    conn: AsyncConnection[Row],
    flag: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
    account: str | None = None,
    reason: str | None = None,
    search: str | None = None,
) -> list[Order]:
    """Flagged orders (with `flag`, or any; of `account`, or any), most recently changed
    first, after `after`."""
    after_at, after_id = after if after is not None else (None, None)
    params = {
        "flag": flag,
        "after_at": after_at,
        "after_id": after_id,
        "limit": limit,
        "account": account,
        "reason": reason,
        "search": search,
    }
    cursor = conn.cursor(row_factory=_ORDER)
    return await (await cursor.execute(FLAGGED_PAGE, params)).fetchall()
