"""A stand-in for the shop's callback receiver: records the events ordersync sends to
SHOP_CALLBACK_URL, checks their Standard Webhooks signature, and can be told to fail
the next deliveries of one order (to see them retried).

  POST   /_sandbox/shop/callbacks        the receiver (point SHOP_CALLBACK_URL here)
  GET    /_sandbox/shop/callbacks        what arrived, every attempt (?order_id=)
  POST   /_sandbox/shop/callbacks/fail   {"order_id": "…", "count": 2, "status": 503}
  DELETE /_sandbox/shop/callbacks        forget everything
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

# Enough for any test or demo run; the oldest are dropped first.
MAX_RECORDS = 10_000


@dataclass
class ShopReceiver:
    secret: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    # order id -> (failures still to answer, status to answer them with)
    failures: dict[str, tuple[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def receive(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        verified: bool | None = None
        if self.secret:
            try:
                Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        order_id = event.get("order_id") if isinstance(event, dict) else None
        with self.lock:
            status = 200 if verified is not False else 401
            left, fail_status = self.failures.get(str(order_id), (0, 503))
            if status == 200 and left > 0:
                self.failures[str(order_id)] = (left - 1, fail_status)
                status = fail_status
            record = {
                "webhook_id": headers.get("webhook-id"),
                "webhook_timestamp": headers.get("webhook-timestamp"),
                "verified": verified,
                "answered": status,
                "order_id": order_id,
                "event": event,
            }
            self.records.append(record)
            del self.records[:-MAX_RECORDS]
        return status, record

    def entries(self, order_id: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if order_id is None or r["order_id"] == order_id]


def routes(receiver: ShopReceiver) -> list[BaseRoute]:
    async def receive(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, _ = receiver.receive(await request.body(), headers)
        return JSONResponse(
            {"status": "received" if status == 200 else "refused"}, status_code=status
        )

    async def listing(request: Request) -> Response:
        return JSONResponse({"callbacks": receiver.entries(request.query_params.get("order_id"))})

    async def fail(request: Request) -> Response:
        try:
            spec = await request.json()
            order_id, count = str(spec["order_id"]), int(spec.get("count", 1))
            status = int(spec.get("status", 503))
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {"error": "bad_request", "detail": "expected {order_id, count, status}"}, 400
            )
        with receiver.lock:
            receiver.failures[order_id] = (count, status)
        return JSONResponse({"order_id": order_id, "count": count, "status": status}, 201)

    async def clear(request: Request) -> Response:
        with receiver.lock:
            receiver.records.clear()
            receiver.failures.clear()
        return Response(status_code=204)

    return [
        Route("/_sandbox/shop/callbacks", receive, methods=["POST"]),
        Route("/_sandbox/shop/callbacks", listing, methods=["GET"]),
        Route("/_sandbox/shop/callbacks", clear, methods=["DELETE"]),
        Route("/_sandbox/shop/callbacks/fail", fail, methods=["POST"]),
    ]
