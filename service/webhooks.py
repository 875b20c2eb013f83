"""POST /webhooks/shop: verify, validate, store, answer, and only then enqueue."""

from __future__ import annotations

import structlog
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from domain.snapshot import ShopEvent
from ordersync.errors import PayloadTooLarge, Unauthorized, ValidationFailed
from ordersync.jobs import Job, enqueue_job
from service.state import AppState

log = structlog.get_logger("ordersync.webhooks")

MAX_BODY_BYTES = 1024 * 1024


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


def verify_shop_signature(body: bytes, headers: dict[str, str], secrets: list[str]) -> str:
    """Returns the verified webhook-id; any configured secret may have signed (rotation)."""
    for secret in secrets:
        try:
            Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            continue
        return headers["webhook-id"]
    raise Unauthorized("missing or invalid webhook signature")


def parse_event(body: bytes) -> ShopEvent:
    try:
        return ShopEvent.model_validate_json(body)
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
    body = await read_body(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    webhook_id = verify_shop_signature(body, headers, state.settings.shop_secrets)
    structlog.contextvars.bind_contextvars(webhook_id=webhook_id)
    event = parse_event(body)
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
