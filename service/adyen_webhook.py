"""POST /webhooks/adyen: Basic auth, the HMAC of every item, store, `[accepted]`, enqueue.

Nothing is acted on here: every item goes to the inbox in one transaction, the answer
goes back at once (Adyen retries, and eventually stops sending, when answers are slow),
and the worker processes each stored item afterwards.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Receive

from data import inbox
from domain.snapshot import MAX_AMOUNT, PSP_REFERENCE_PATTERN
from integrations.adyen import hmac as adyen_hmac
from integrations.adyen.notifications import ACTED_ON, stored_item
from ordersync.db import AsyncPool
from ordersync.errors import (
    BadRequest,
    ConfigError,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
)
from ordersync.jobs import Job, enqueue_job
from service import bounded_json
from service.state import AppState
from service.webhooks import (
    Answer,
    Endpoint,
    Headers,
    off_loop,
    read_body,
    validation_fields,
)

log = structlog.get_logger("ordersync.webhooks")

# Adyen batches notification items: its documentation describes a request holding a
# few items (it sends each event as soon as it can, and retries a batch as a whole). The
# cap keeps one request's work bounded while leaving a wide margin above that.
MAX_ITEMS = 100
# How many bad indexes a log line lists.
MAX_LOGGED = 10
# Events the worker acts on: their items are checked in full; any other verified item
# is stored and ignored, whatever it lacks.
_PSP_REFERENCE = re.compile(PSP_REFERENCE_PATTERN)
_CURRENCY = re.compile(r"[A-Z]{3}")
MAX_TEXT = 4096


def event_key(item: Mapping[str, Any]) -> str:
    """Adyen's identity of a notification: the same one delivered again has the same key."""
    parts = (
        item.get("pspReference"),
        item.get("eventCode"),
        item.get("success"),
        item.get("originalReference"),
    )
    return ":".join(adyen_hmac.render(part) for part in parts)


def check_basic_auth(header: str | None, username: str, password: str) -> bool:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, sep, given_password = decoded.partition(":")
    # Both comparisons always run, so the timing does not tell which part was wrong.
    user_ok = secrets.compare_digest(given_user.encode(), username.encode())
    password_ok = secrets.compare_digest(given_password.encode(), password.encode())
    return bool(sep) and user_ok and password_ok


class NotificationRequestItem(BaseModel):
    """What the envelope, the HMAC and the inbox key need of an item; its content is
    judged by `item_problem` once it verifies (liberal intake: Adyen adds fields)."""

    model_config = ConfigDict(extra="allow")

    pspReference: str = Field(min_length=1, max_length=MAX_TEXT)  # noqa: N815 - Adyen's name
    eventCode: str = Field(min_length=1, max_length=MAX_TEXT)  # noqa: N815
    # The signing string reads amount.value and amount.currency.
    amount: dict[str, Any] | None = None
    success: Annotated[
        Any,
        Field(
            default=None,
            description='"true" or "false" (Adyen sends text; its libraries\' fixtures'
            " also a JSON boolean); required for the events we act on",
        ),
    ]


class NotificationItemWrapper(BaseModel):
    model_config = ConfigDict(extra="allow")

    NotificationRequestItem: NotificationRequestItem


class AdyenNotificationRequest(BaseModel):
    """Adyen's notification request (Webhooks v1): 1 to MAX_ITEMS items."""

    model_config = ConfigDict(extra="allow")

    live: Any = None
    notificationItems: list[NotificationItemWrapper] = Field(  # noqa: N815
        min_length=1, max_length=MAX_ITEMS
    )


def parse_items(body: bytes) -> list[dict[str, Any]]:
    """The NotificationRequestItems of a notification request; BadRequest if the
    envelope is malformed (AdyenNotificationRequest, which the OpenAPI document states),
    PayloadTooLarge beyond MAX_ITEMS items."""
    try:
        data = bounded_json.loads(body)
    except ValidationFailed as exc:
        raise BadRequest(exc.detail, fields=exc.fields) from None
    wrappers = data.get("notificationItems") if isinstance(data, dict) else None
    if isinstance(wrappers, list) and len(wrappers) > MAX_ITEMS:
        raise PayloadTooLarge(
            f"more than {MAX_ITEMS} notification items",
            fields=[{"path": "notificationItems", "message": f"at most {MAX_ITEMS} items"}],
        )
    try:
        AdyenNotificationRequest.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(
            "the notification request is malformed", fields=validation_fields(exc)
        ) from None
    # The items as sent (every field, in order): the HMAC is over what Adyen signed.
    return [wrapper["NotificationRequestItem"] for wrapper in data["notificationItems"]]


def item_problem(item: Mapping[str, Any]) -> str | None:
    """Why the worker could not act on a verified item (the field), or None. Items of
    events we do not act on have no problem whatever they lack."""
    if item["eventCode"] not in ACTED_ON:
        return None
    if not _PSP_REFERENCE.fullmatch(item["pspReference"]):
        return "pspReference"
    original = item.get("originalReference")
    if original not in (None, "") and not (
        isinstance(original, str) and _PSP_REFERENCE.fullmatch(original)
    ):
        return "originalReference"
    # Adyen sends a string; its libraries' fixtures also a JSON boolean.
    success = item.get("success")
    if not (isinstance(success, bool) or success in ("true", "false")):
        return "success"
    amount = item.get("amount")
    if not isinstance(amount, dict):
        return "amount"
    value = amount.get("value")
    # Webhooks v1 `Amount.value` is int64; what we act on is held to the order model's
    # ceiling (domain.snapshot.MAX_AMOUNT), and a negative amount means nothing to us.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
        return "amount.value"
    # Webhooks v1 `Amount.currency`: three characters (ISO 4217).
    if not (isinstance(amount.get("currency"), str) and _CURRENCY.fullmatch(amount["currency"])):
        return "amount.currency"
    for key in ("merchantReference", "merchantAccountCode", "reason"):
        if item.get(key) is not None and not (
            isinstance(item[key], str) and len(item[key]) <= MAX_TEXT
        ):
            return key
    if item.get("additionalData") is not None and not isinstance(item["additionalData"], dict):
        return "additionalData"
    return None


@dataclass(frozen=True)
class StoredItems:
    pending: list[int]  # new items for the worker
    invalid: int  # new items recorded as invalid
    ignored: int  # new items of events we do not act on

    @property
    def new(self) -> int:
        return len(self.pending) + self.invalid + self.ignored


async def store_items(
    pool: AsyncPool, items: list[dict[str, Any]], invalid: set[int] | None = None
) -> StoredItems:
    """Stores every item in one statement; returns the new ones."""
    invalid = invalid or set()
    rows = [
        {
            "key": event_key(item),
            "type": item["eventCode"],
            "payment": str(item.get("originalReference") or item["pspReference"]),
            # Only what we act on is kept: no shopper data reaches the database.
            "payload": stored_item(item),
            "outcome": (
                "invalid"
                if index in invalid
                else None
                if item["eventCode"] in ACTED_ON
                else "ignored"
            ),
        }
        for index, item in enumerate(items)
    ]
    async with pool.connection() as conn:
        cursor = await conn.execute(inbox.STORE_ADYEN_ITEMS, (Jsonb(rows),))
        stored = await cursor.fetchall()
    outcomes = [row["outcome"] for row in stored]
    return StoredItems(
        pending=[int(row["id"]) for row in stored if row["outcome"] is None],
        invalid=outcomes.count("invalid"),
        ignored=outcomes.count("ignored"),
    )


# Adyen's documented acknowledgement, as PlainTextResponse renders it.
_ACCEPTED: Answer = (200, b"text/plain; charset=utf-8", b"[accepted]")


async def _adyen_webhook(state: AppState, headers: Headers, receive: Receive) -> Answer:
    settings = state.settings
    accounts = state.accounts
    has_keys = any(account.hmac_keys for account in accounts.adyen.values())
    if not (has_keys and settings.adyen_webhook_username and settings.adyen_webhook_password):
        raise ConfigError("Adyen notifications are not configured")
    # Before a byte of the body is read: a request without the login costs no body.
    if not check_basic_auth(
        headers.get("authorization"),
        settings.adyen_webhook_username,
        settings.adyen_webhook_password.get_secret_value(),
    ):
        raise Unauthorized("missing or invalid basic auth")
    body = await read_body(headers, receive)

    def check() -> tuple[list[dict[str, Any]], list[int], list[int]]:
        items = parse_items(body)
        # Each item is checked with the keys of its own merchant account (contract §6);
        # one for a merchant account that is not ours is refused like a forged one.
        item_keys = [accounts.hmac_keys_for(_merchant_code(item)) for item in items]
        foreign = [index for index, keys in enumerate(item_keys) if keys is None]
        bad = [
            index
            for index, (item, keys) in enumerate(zip(items, item_keys, strict=True))
            if keys is not None and not adyen_hmac.is_valid(item, keys)
        ]
        return items, foreign, bad

    items, foreign, bad = await off_loop(body, check)
    if foreign:
        log.warning(
            "adyen_merchant_account_unknown",
            items=len(items),
            unknown=len(foreign),
            first=foreign[:MAX_LOGGED],
        )
        raise Unauthorized("notification for a merchant account not configured")
    if bad:
        # One forged item taints the request: none of it is stored.
        log.warning(
            "adyen_hmac_invalid", items=len(items), invalid=len(bad), first=bad[:MAX_LOGGED]
        )
        raise Unauthorized("invalid HMAC signature")
    problems = {index: item_problem(item) for index, item in enumerate(items)}
    invalid = {index: field for index, field in problems.items() if field is not None}
    if invalid:
        log.warning(
            "adyen_items_invalid",
            items=len(items),
            invalid=len(invalid),
            first=[{"index": i, "field": f} for i, f in list(invalid.items())[:MAX_LOGGED]],
        )
    stored = await store_items(state.pool, items, set(invalid))
    new = stored.pending
    log.info(
        "webhook_stored",
        source="adyen",
        items=len(items),
        new=stored.new,
        invalid=stored.invalid,
        ignored=stored.ignored,
        event_codes=sorted({str(item["eventCode"])[:64] for item in items})[:MAX_LOGGED],
    )
    state.metrics.webhook(source="adyen", outcome="applied", count=len(new))
    state.metrics.webhook(source="adyen", outcome="invalid", count=stored.invalid)
    state.metrics.webhook(source="adyen", outcome="ignored", count=stored.ignored)
    state.metrics.webhook(source="adyen", outcome="duplicate", count=len(items) - stored.new)
    for inbox_id in new:
        enqueue_job(Job.PROCESS_NOTIFICATION, inbox_id)
    return _ACCEPTED


adyen_webhook = Endpoint(_adyen_webhook, reads=("content-length", "authorization"))


def _merchant_code(item: dict[str, Any]) -> str | None:
    code = item.get("merchantAccountCode")
    return code if isinstance(code, str) else None
