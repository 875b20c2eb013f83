"""POST /webhooks/shop: verify, validate, store, answer, and only then enqueue.

The webhook routes are plain ASGI apps (`Endpoint`): Starlette's Request, Headers and
Response objects cost more CPU per webhook than the signature check does, and these
routes need none of them. They still sit behind the app's middleware (request id,
security headers, the unit of work) and its exception handlers, which turn what a
handler raises into the same answers as on every other route."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

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


Headers = dict[str, str]
# An answer: status, content type, body.
Answer = tuple[int, bytes, bytes]
Handler = Callable[[AppState, Headers, Receive], Awaitable[Answer]]


class Endpoint:
    """A webhook route as an ASGI app: `handler` gets the app's state, the request's
    headers among `reads` (a repeated header: its last value) and the ASGI receive
    channel, and returns the answer. What it raises goes to the app's handlers."""

    def __init__(self, handler: Handler, reads: tuple[str, ...]) -> None:
        self.handler = handler
        # ASGI servers give header names in lower case.
        self.reads = frozenset(name.encode("latin-1") for name in reads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reads = self.reads
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in reads
        }
        status, content_type, body = await self.handler(
            scope["app"].state.ordersync, headers, receive
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", content_type),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def json_answer(status: int, content: Any) -> Answer:
    """As Starlette's JSONResponse renders it."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return status, b"application/json", body.encode()


async def read_body(
    headers: Mapping[str, str], receive: Receive, limit: int = MAX_BODY_BYTES
) -> bytes:
    """The raw body, refused as soon as it is known to exceed `limit`; ClientDisconnect
    if the client goes (or is cut off by the server's body clock) before the end."""
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
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
    return _verify_checked(body, signature_headers(headers), secrets)


def _verify_checked(body: bytes, checked: dict[str, str], secrets: list[str]) -> str:
    """verify_shop_signature on what `signature_headers` returned."""
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
    """The event, or the 4xx naming what is wrong. Parsed by us within bounds, never by
    the signature library."""
    if bounded_json.plain(body):
        # Nothing in it the bounds refuse: the model reads the bytes in one pass of its
        # own parser, without Python objects for the whole body first. A body it refuses
        # takes the full path, whose answer names the field.
        try:
            return ShopEvent.model_validate_json(body)
        except ValidationError:
            pass
    return parse_event_checked(body)


def parse_event_checked(body: bytes) -> ShopEvent:
    """`parse_event` by the bounded parser and the model on its result, for every body."""
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


# The three answers a stored shop webhook gets, rendered once.
_STORED = {
    outcome: json_answer(202, {"status": outcome}) for outcome in ("applied", "duplicate", "stale")
}


async def _shop_webhook(state: AppState, headers: Headers, receive: Receive) -> Answer:
    checked = signature_headers(headers)
    body = await read_body(headers, receive)

    def check() -> tuple[str, ShopEvent]:
        webhook_id = _verify_checked(body, checked, state.settings.shop_secrets)
        structlog.contextvars.bind_contextvars(webhook_id=webhook_id)
        return webhook_id, parse_event(body)

    webhook_id, event = await off_loop(body, check)
    structlog.contextvars.bind_contextvars(webhook_id=webhook_id, order_id=event.order.id)
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
    return _STORED[stored.outcome]


shop_webhook = Endpoint(
    _shop_webhook, reads=("content-length", "webhook-id", "webhook-timestamp", "webhook-signature")
)
