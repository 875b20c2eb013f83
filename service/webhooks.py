"""POST /webhooks/shop: verify, validate, store, answer, and only then enqueue."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import TypeVar

import structlog
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from domain.snapshot import ShopEvent
from ordersync.errors import PayloadTooLarge, Unauthorized, ValidationFailed
from ordersync.jobs import Job, enqueue_job
from service import bounded_json
from service.state import AppState

log = structlog.get_logger("ordersync.webhooks")

MAX_BODY_BYTES = 1024 * 1024
# A well-formed v1 entry: "v1," and the base64 of a 32-byte HMAC-SHA256.
_V1_ENTRY = re.compile(r"v1,[A-Za-z0-9+/]{43}=")
# Rotation needs two or three; more well-formed entries than this are not looked at, so
# a long header cannot make us hash the body many times.
MAX_SIGNATURE_ENTRIES = 8
# What we store as the inbox key: printable ASCII of a sane length.
_WEBHOOK_ID = re.compile(r"[\x21-\x7e]{1,255}")
_TIMESTAMP = re.compile(r"[0-9]{1,20}")
# Bodies above this are checked (signature, JSON, model) in a worker thread.
OFF_LOOP_BYTES = 64 * 1024
T = TypeVar("T")
# Every way the Standard Webhooks library fails to verify: its own error, and what it
# lets escape on malformed input (binascii.Error and UnicodeDecodeError are ValueErrors).
_VERIFY_FAILURES = (WebhookVerificationError, ValueError, TypeError, OverflowError)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refused as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def signature_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers the signature is checked with, or Unauthorized: checked before a
    byte of the body is read, so a request that cannot be signed costs no body.

    Each entry of `webhook-signature` counts on its own: malformed ones are dropped
    before the library sees the header, so one bad entry cannot sink a valid one.
    """
    entries = [e for e in headers.get("webhook-signature", "").split(" ") if _V1_ENTRY.fullmatch(e)]
    if not (
        entries
        and _WEBHOOK_ID.fullmatch(headers.get("webhook-id", ""))
        and _TIMESTAMP.fullmatch(headers.get("webhook-timestamp", ""))
    ):
        raise Unauthorized("missing or invalid webhook signature")
    return {**headers, "webhook-signature": " ".join(entries[:MAX_SIGNATURE_ENTRIES])}


@functools.lru_cache(maxsize=16)
def _webhook(secret: str) -> Webhook:
    # The configured secrets are few and fixed: each is decoded once, not per request.
    return Webhook(secret)


def verify_shop_signature(body: bytes, headers: dict[str, str], secrets: list[str]) -> str:
    """Returns the verified webhook-id; any configured secret may have signed (rotation).
    No failure of the library is anything but a 401."""
    checked = signature_headers(headers)
    for secret in secrets:
        try:
            _webhook(secret).verify(body, checked, json_parse=False)
        except _VERIFY_FAILURES:
            continue
        return checked["webhook-id"]
    raise Unauthorized("missing or invalid webhook signature")


async def off_loop(body: bytes, check: Callable[[], T]) -> T:
    """`check()`, which reads `body`: on the event loop for a small body, in a thread
    for a large one, so that other requests (and /healthz) are answered meanwhile.
    Every check is linear in the body's size (bench/parsing.py)."""
    if len(body) <= OFF_LOOP_BYTES:
        return check()
    return await asyncio.to_thread(check)


def parse_event(body: bytes) -> ShopEvent:
    # Parsed by us within bounds, never by the signature library.
    data = bounded_json.loads(body)
    try:
        return ShopEvent.model_validate(data)
    except ValidationError as exc:
        fields = validation_fields(exc)
        raise ValidationFailed("the event failed validation", fields=fields) from None


def validation_fields(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"path": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
        for error in exc.errors(include_url=False, include_input=False)
    ]


async def shop_webhook(request: Request) -> Response:
    state: AppState = request.app.state.ordersync
    headers = {k.lower(): v for k, v in request.headers.items()}
    signature_headers(headers)
    body = await read_body(request)

    def check() -> tuple[str, ShopEvent]:
        webhook_id = verify_shop_signature(body, headers, state.settings.shop_secrets)
        structlog.contextvars.bind_contextvars(webhook_id=webhook_id)
        return webhook_id, parse_event(body)

    webhook_id, event = await off_loop(body, check)
    structlog.contextvars.bind_contextvars(webhook_id=webhook_id)
    structlog.contextvars.bind_contextvars(order_id=event.order.id)
    stored = await state.store_shop_event(webhook_id, event)
    log.info(
        "webhook_stored",
        source="shop",
        event_type=event.type,
        outcome=stored.outcome,
        version=event.order.version,
    )
    state.metrics.webhook(source="shop", outcome=stored.outcome)
    if stored.needs_reconcile:
        enqueue_job(Job.RECONCILE_ORDER, stored.order_id)
    return JSONResponse({"status": stored.outcome}, status_code=202)
