"""The real app in process (service.app's factory), on the stack's Postgres and Redis:
what the hostile-input tests and the fuzz suite send requests through. The stack's
worker picks up what this app enqueues, as it would from the deployed web process."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from devrig.demo import signed_headers
from starlette.testclient import TestClient

from integrations.adyen import hmac as adyen_hmac
from ordersync.settings import Settings
from service.app import create_app
from tests.integration.stack import Stack


def settings_for(stack: Stack, **overrides: Any) -> Settings:
    values: dict[str, Any] = {key.lower(): value for key, value in stack.env.items()}
    values.update(overrides)
    return Settings(**values)


@contextmanager
def in_process(stack: Stack, **overrides: Any) -> Iterator[TestClient]:
    app = create_app(settings_for(stack, **overrides))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def shop_headers(stack: Stack, body: bytes, webhook_id: str | None = None) -> dict[str, str]:
    return signed_headers(stack.secret, body, webhook_id)


def adyen_auth(stack: Stack) -> dict[str, str]:
    user = stack.env["ADYEN_WEBHOOK_USERNAME"]
    password = stack.env["ADYEN_WEBHOOK_PASSWORD"]
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}", "content-type": "application/json"}


def signed_item(stack: Stack, item: dict[str, Any]) -> dict[str, Any]:
    key = stack.env["ADYEN_HMAC_KEYS"].split()[0]
    signed = dict(item)
    if signed.get("additionalData") is not None and not isinstance(signed["additionalData"], dict):
        return signed  # nowhere to put a signature: it goes unsigned (and gets a 401)
    additional = dict(signed.get("additionalData") or {})
    additional["hmacSignature"] = adyen_hmac.sign(signed, key)
    signed["additionalData"] = additional
    return signed


def envelope(*items: dict[str, Any]) -> bytes:
    return json.dumps(
        {"live": "false", "notificationItems": [{"NotificationRequestItem": i} for i in items]}
    ).encode()


def operator_headers(stack: Stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.operator_token}"}


def inbox_rows(stack: Stack, source: str, event_key: str) -> list[dict[str, Any]]:
    with stack.db() as conn:
        return conn.execute(
            "SELECT * FROM inbox WHERE source = %s AND event_key = %s", (source, event_key)
        ).fetchall()


def assert_error_json(response: Any) -> dict[str, Any]:
    """A 4xx in the contract's error format (§3)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    body = response.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), body
    if "fields" in body:
        assert all(isinstance(f.get("path"), str) for f in body["fields"]), body
    assert response.headers.get("x-request-id")
    return dict(body)
