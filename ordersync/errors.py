"""One error base class; each error knows the HTTP status and code it is answered with."""

from __future__ import annotations

from typing import Any


class OrdersyncError(Exception):
    status_code = 500
    code = "internal_error"
    # Extra response headers, e.g. WWW-Authenticate on a 401.
    headers: dict[str, str] = {}

    def __init__(self, detail: str, *, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.fields is not None:
            body["fields"] = self.fields
        return body


class BadRequest(OrdersyncError):
    status_code = 400
    code = "bad_request"


class Unauthorized(OrdersyncError):
    status_code = 401
    code = "unauthorized"


class NotFound(OrdersyncError):
    status_code = 404
    code = "not_found"


class Conflict(OrdersyncError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(OrdersyncError):
    status_code = 413
    code = "payload_too_large"


class ValidationFailed(OrdersyncError):
    status_code = 422
    code = "validation_failed"


class ServiceUnavailable(OrdersyncError):
    status_code = 503
    code = "unavailable"


class ConfigError(OrdersyncError):
    """A setting is missing or invalid: the process cannot start."""

    status_code = 503
    code = "not_configured"
