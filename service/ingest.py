"""Storing what arrives: the inbox row and the order's new desired state, in one
statement (one per request, or one for a batch of requests: group commit). Nothing here
calls a PSP."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog
from psycopg import AsyncConnection, IntegrityError
from psycopg.errors import DeadlockDetected, SerializationFailure, UniqueViolation
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from data import inbox
from domain.lines import basket_lines
from domain.snapshot import ShopEvent, fixed_terms
from ordersync.accounts import DEFAULT, Accounts
from ordersync.db import AsyncPool
from ordersync.errors import Conflict, ValidationFailed

# Why a row is not stored: a payment another order holds (409), or a field the order's
# first snapshot fixed (422, naming it).
Refused = Conflict | ValidationFailed

# The field a changed account is reported under (contract §6: fixed with the order).
ACCOUNT_FIELD = {
    "klarna": "order.payment.klarna_account",
    "adyen": "order.payment.merchant_account",
}

log = structlog.get_logger("ordersync.ingest")

# What json.dumps does to a str (ensure_ascii), in C.
_quote = json.encoder.encode_basestring_ascii
# json.dumps([]): a Klarna order's basket.
_NO_BASKET = "[]"


@dataclass(frozen=True)
class Stored:
    outcome: str  # "applied", "duplicate" or "stale"
    order_id: str

    @property
    def needs_reconcile(self) -> bool:
        return self.outcome == "applied"


class _Params(NamedTuple):
    """One event's columns, encoded once. A tuple: made for every webhook, and a frozen
    dataclass's constructor sets each of its 16 fields through object.__setattr__."""

    id: str
    version: int
    provider: str
    psp_id: str
    currency: str
    status: str
    key: str
    type: str
    payload: str
    snapshot: str
    total: int
    basket: str
    fixed: str
    # The account the order belongs to (contract §6), the field naming it, and whether
    # it is its PSP's default account (which orders from before accounts, stored as
    # "default", belong to).
    account: str
    account_field: str
    account_default: bool

    @property
    def adyen(self) -> bool:
        return self.provider == "adyen"


def _params(webhook_id: str, event: ShopEvent, accounts: Accounts | None = None) -> _Params:
    """Raises the 422 naming the field when the order's payment belongs to no
    configured account (contract §6)."""
    order = event.order
    account = accounts.route(order) if accounts is not None else DEFAULT
    default = accounts.canonical(order.provider, DEFAULT) if accounts is not None else DEFAULT
    # Encoded once, by pydantic's own encoder; the event is the snapshot with its type.
    snapshot = order.model_dump_json()
    payload = f'{{"type": {_quote(event.type)}, "order": {snapshot}}}'
    # What an Adyen shopper was authorized for, so a refused increase can tell the shop
    # which lines are new.
    adyen = order.provider == "adyen"
    basket = json.dumps([line.to_json() for line in basket_lines(order)]) if adyen else _NO_BASKET
    return _Params(
        id=order.id,
        version=order.version,
        provider=order.provider,
        psp_id=order.psp_order_id,
        currency=order.currency,
        status=order.status,
        key=webhook_id,
        type=event.type,
        payload=payload,
        snapshot=snapshot,
        total=order.total,
        basket=basket,
        fixed=json.dumps(fixed_terms(order)),
        account=account,
        account_field=ACCOUNT_FIELD[order.provider],
        account_default=account == default,
    )


def _payment_taken() -> Conflict:
    return Conflict(
        "another order already uses this payment",
        fields=[{"path": "order.payment", "message": "belongs to another order"}],
    )


def _payment_changed(field: str) -> ValidationFailed:
    """Contract §4: an order's currency and payment are fixed by its first snapshot."""
    return ValidationFailed(
        "an order's currency and payment cannot change",
        fields=[{"path": field, "message": "differs from the order's first snapshot"}],
    )


def _outcome(
    order_id: str, outcome: str | None, written: bool, changed_field: str | None
) -> Stored | Refused:
    if changed_field is not None:
        return _payment_changed(changed_field)
    if outcome is None:
        return Stored("duplicate", order_id)
    if outcome == "applied" and written:
        return Stored("applied", order_id)
    # A newer version of the order was stored first (now, or by a concurrent event).
    return Stored("stale", order_id)


async def store_shop_event(
    pool: AsyncPool, webhook_id: str, event: ShopEvent, accounts: Accounts | None = None
) -> Stored:
    p = _params(webhook_id, event, accounts)
    (result,) = await _reused_keys(pool, [p], [await _store_one(pool, p)])
    if not isinstance(result, Stored):
        raise result
    await _correct_adyen_fallbacks(pool, [p], [result])
    return result


def _key_reused() -> Conflict:
    return Conflict(
        "this webhook-id was used before for a different event",
        fields=[{"path": "webhook-id", "message": "already used for another body"}],
    )


async def _reused_keys(
    pool: AsyncPool, params: Sequence[_Params], results: Sequence[Stored | Refused]
) -> list[Stored | Refused]:
    """A repeat is a repeat only if it is the same event: a webhook-id stored before with
    another body is refused (409, logged), and nothing of it is stored."""
    checked = list(results)
    repeats = [
        i for i, r in enumerate(results) if isinstance(r, Stored) and r.outcome == "duplicate"
    ]
    if not repeats:
        return checked
    async with pool.connection() as conn:
        for i in repeats:
            if await inbox.other_body_under_key(conn, params[i].key, params[i].payload):
                log.warning("webhook_id_reused", webhook_id=params[i].key[:255])
                checked[i] = _key_reused()
    return checked


async def _correct_adyen_fallbacks(
    pool: AsyncPool, params: Sequence[_Params], results: Sequence[Stored | Refused]
) -> None:
    """A late lower version of an Adyen order (rare): its total may be the authorization
    (data/inbox.py CORRECT_ADYEN_FALLBACK). Stored already; this only corrects a guess."""
    late = [
        p
        for p, r in zip(params, results, strict=True)
        if p.adyen and isinstance(r, Stored) and r.outcome == "stale"
    ]
    if not late:
        return
    async with pool.connection() as conn:
        for p in late:
            await conn.execute(inbox.CORRECT_ADYEN_FALLBACK, _single(p))


def single_params(webhook_id: str, event: ShopEvent) -> dict[str, Any]:
    """The parameters of `STORE_SHOP_EVENT` for one event (bench/scale.py times it)."""
    return _single(_params(webhook_id, event))


def _single(p: _Params) -> dict[str, Any]:
    return {
        "id": p.id,
        "version": p.version,
        "provider": p.provider,
        "psp_id": p.psp_id,
        "currency": p.currency,
        "status": p.status,
        "key": p.key,
        "type": p.type,
        "payload": p.payload,
        "snapshot": p.snapshot,
        "total": p.total,
        "adyen": p.adyen,
        "basket": Jsonb(json.loads(p.basket)),
        "fixed": p.fixed,
        "account": p.account,
        "account_field": p.account_field,
        "account_default": p.account_default,
    }


async def _store_one(pool: AsyncPool, p: _Params) -> Stored | Refused:
    params = _single(p)
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(inbox.STORE_SHOP_EVENT, params)
            row = await cursor.fetchone()
    except UniqueViolation:
        return _payment_taken()
    assert row is not None
    return _outcome(p.id, row["outcome"], row["written"], row["changed_field"])


def _rounds(events: Sequence[_Params]) -> list[list[int]]:
    """Positions of `events` split into statements in which no order, webhook-id or
    payment repeats; a repeat goes to a later statement of the same transaction, which
    sees what the earlier ones wrote (so versions apply in arrival order)."""
    # The usual batch repeats nothing: one statement, found with three sets.
    if (
        len({p.id for p in events})
        == len({p.key for p in events})
        == len({(p.provider, p.psp_id.lower()) for p in events})
        == len(events)
    ):
        return [list(range(len(events)))]
    rounds: list[list[int]] = []
    seen: list[set[tuple[str, ...]]] = []
    for i, p in enumerate(events):
        keys = {("order", p.id), ("key", p.key), ("payment", p.provider, p.psp_id.lower())}
        r = 0
        while r < len(rounds) and keys & seen[r]:
            r += 1
        if r == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[r].append(i)
        seen[r] |= keys
    return rounds


def _document(events: Sequence[_Params], positions: Sequence[int]) -> str:
    """The rows of `STORE_SHOP_EVENTS` as one JSON array, a row an array in its column
    order. The JSON columns are our own encodings (pydantic's, json.dumps'), put in as
    they are: the document holds the same JSON values, which Postgres parses once."""
    rows = []
    for i in positions:
        p = events[i]
        rows.append(
            f"[{i},{_quote(p.id)},{p.version},{_quote(p.provider)},{_quote(p.psp_id)},"
            f"{_quote(p.currency)},{_quote(p.status)},{_quote(p.key)},{_quote(p.type)},"
            f"{p.total},{_quote(p.account)},{_quote(p.account_field)},"
            f"{'true' if p.account_default else 'false'},{p.payload},{p.snapshot},"
            f"{p.basket},{p.fixed}]"
        )
    return "[" + ",".join(rows) + "]"


async def store_shop_events(
    pool: AsyncPool, events: Sequence[tuple[str, ShopEvent]], accounts: Accounts | None = None
) -> list[Stored | Refused]:
    """Stores a batch of (webhook-id, event) in one transaction: one statement, or one
    per repeat of an order within the batch. Each event gets its own outcome, or the
    Conflict its request answers with. If the batch statement fails for a reason one row
    can cause (a payment taken by a concurrent batch, a deadlock between batches), each
    event is stored on its own instead, so that row fails alone. A database that is
    down fails them all (the senders retry)."""
    routed: list[_Params | Refused] = []
    for key, event in events:
        try:
            routed.append(_params(key, event, accounts))
        except ValidationFailed as unroutable:
            routed.append(unroutable)  # that request's own 422; the others are stored
    params = [p for p in routed if isinstance(p, _Params)]
    stored = await _reused_keys(pool, params, await _store_batch(pool, params)) if params else []
    await _correct_adyen_fallbacks(pool, params, stored)
    results = iter(stored)
    return [p if not isinstance(p, _Params) else next(results) for p in routed]


async def _store_batch(pool: AsyncPool, params: Sequence[_Params]) -> list[Stored | Refused]:
    if len(params) == 1:
        return [await _store_one(pool, params[0])]
    results: list[Stored | Refused | None] = [None] * len(params)
    try:
        async with pool.connection() as conn:
            rounds = _rounds(params)
            if len(rounds) == 1:
                rows = await _execute_round(conn, params, rounds[0])
            else:
                rows = []
                async with conn.transaction():
                    for positions in rounds:
                        rows += await _execute_round(conn, params, positions)
    except (IntegrityError, DeadlockDetected, SerializationFailure):
        return [await _store_one(pool, p) for p in params]
    for row in rows:
        p = params[row["ord"]]
        results[row["ord"]] = (
            _payment_taken()
            if row["payment_taken"]
            else _outcome(p.id, row["outcome"], row["written"], row["changed_field"])
        )
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


async def _execute_round(
    conn: AsyncConnection[DictRow], params: Sequence[_Params], positions: Sequence[int]
) -> list[DictRow]:
    cursor = await conn.execute(inbox.STORE_SHOP_EVENTS, {"rows": _document(params, positions)})
    return await cursor.fetchall()
