"""POST /webhooks/adyen: Basic auth, the HMAC of every item, store, `[accepted]`, enqueue.

Nothing is acted on here: every item goes to the inbox in one transaction, the answer
goes back at once (Adyen retries, and eventually stops sending, when answers are slow),
and the worker processes each stored item afterwards.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from typing import Any

import structlog
from psycopg.types.json import Jsonb
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from integrations.adyen import hmac as adyen_hmac
from ordersync.db import AsyncPool
from ordersync.errors import BadRequest, ConfigError, Unauthorized
from ordersync.jobs import Job, enqueue_job
from service.state import AppState
from service.webhooks import read_body

log = structlog.get_logger("ordersync.webhooks")

_REQUIRED = ("pspReference", "eventCode", "success", "merchantAccountCode")


def event_key(item: Mapping[str, Any]) -> str:
    """Adyen's identity of a notification: the same one delivered again has the same key."""
    parts = (
        item.get("pspReference"),
        item.get("eventCode"),
        item.get("success"),
        item.get("originalReference"),
    )
    return ":".join("" if part is None else str(part) for part in parts)


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


def parse_items(body: bytes) -> list[dict[str, Any]]:
    """The NotificationRequestItems of a notification request; BadRequest if malformed."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("the body is not JSON") from None
    wrappers = data.get("notificationItems") if isinstance(data, dict) else None
    if not isinstance(wrappers, list) or not wrappers:
        raise BadRequest("notificationItems must be a non-empty array")
    items: list[dict[str, Any]] = []
    for index, wrapper in enumerate(wrappers):
        item = wrapper.get("NotificationRequestItem") if isinstance(wrapper, dict) else None
        if not isinstance(item, dict):
            raise BadRequest(f"notificationItems[{index}] has no NotificationRequestItem")
        missing = [key for key in _REQUIRED if not isinstance(item.get(key), str)]
        amount = item.get("amount")
        if (
            not isinstance(amount, dict)
            or not isinstance(amount.get("currency"), str)
            or isinstance(amount.get("value"), bool)
            or not isinstance(amount.get("value"), int)
        ):
            missing.append("amount")
        if missing:
            raise BadRequest(f"notificationItems[{index}] lacks {', '.join(missing)}")
        items.append(item)
    return items


async def store_items(pool: AsyncPool, items: list[dict[str, Any]]) -> list[int]:
    """Stores every item in one transaction; returns the ids of those not seen before."""
    new: list[int] = []
    async with pool.connection() as conn, conn.transaction():
        for item in items:
            payment = item.get("originalReference") or item["pspReference"]
            cursor = await conn.execute(
                """
                INSERT INTO inbox (source, event_key, event_type, order_id, payload)
                VALUES ('adyen', %s, %s,
                        (SELECT id FROM orders WHERE provider = 'adyen' AND psp_order_id = %s),
                        %s)
                ON CONFLICT (source, event_key) DO NOTHING
                RETURNING id
                """,
                (event_key(item), item["eventCode"], payment, Jsonb(item)),
            )
            row = await cursor.fetchone()
            if row is not None:
                new.append(int(row["id"]))
    return new


async def adyen_webhook(request: Request) -> Response:
    state: AppState = request.app.state.ordersync
    settings = state.settings
    keys = settings.hmac_keys
    if not (keys and settings.adyen_webhook_username and settings.adyen_webhook_password):
        raise ConfigError("Adyen notifications are not configured")
    body = await read_body(request)
    if not check_basic_auth(
        request.headers.get("authorization"),
        settings.adyen_webhook_username,
        settings.adyen_webhook_password.get_secret_value(),
    ):
        raise Unauthorized("missing or invalid basic auth")
    items = parse_items(body)
    bad = [index for index, item in enumerate(items) if not adyen_hmac.is_valid(item, keys)]
    if bad:
        # One forged item taints the request: none of it is stored.
        log.warning("adyen_hmac_invalid", items=len(items), invalid=bad)
        raise Unauthorized("invalid HMAC signature")
    new = await store_items(state.pool, items)
    log.info(
        "webhook_stored",
        source="adyen",
        items=len(items),
        new=len(new),
        event_codes=sorted({item["eventCode"] for item in items}),
    )
    for _ in new:
        state.metrics.webhook(source="adyen", outcome="applied")
    for _ in range(len(items) - len(new)):
        state.metrics.webhook(source="adyen", outcome="duplicate")
    for inbox_id in new:
        enqueue_job(Job.PROCESS_NOTIFICATION, inbox_id)
    return PlainTextResponse("[accepted]")
