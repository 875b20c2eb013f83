"""The web process writes one log line per webhook: the cheap paths that render it must
give the very line the general ones give (no secret or personal datum let through, the
same bytes)."""

from __future__ import annotations

import copy
import json
from typing import Any

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ordersync import logging as ordersync_logging
from ordersync.logging import REDACTED, _dumps, redact

# Keys and texts that exercise every branch of redact(): sensitive keys, every value
# pattern's needles, long values, nested values.
_KEYS = st.sampled_from(
    [
        "event",
        "webhook_id",
        "order_id",
        "outcome",
        "detail",
        "email",
        "password",
        "customer",
        "headers",
        "exc_info",
        "request_id",
        "version",
    ]
)
_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "msg_2abc",
            "postgresql://user:pw@db/x",
            "user:pw@db",
            "password=hunter2",
            "whsec_abcdef",
            "v1," + "A" * 43 + "=",
            "Bearer abc.def",
            "mail a.b@example.com",
            "+49 30 1234567",
            "x" * 1500,
            "ok\0@",
        ]
    ),
)
# A loaded machine makes generation slow; the property is what counts.
_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
_VALUE = st.one_of(
    _TEXT,
    st.integers(),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(_TEXT, max_size=3),
    st.dictionaries(_KEYS, _TEXT, max_size=3),
    st.binary(max_size=10),
)


def _slow_redact(event: dict[str, Any]) -> dict[str, Any]:
    """redact() without its shortcut: every value through the scrubbers."""
    original = ordersync_logging._nothing_to_redact
    ordersync_logging._nothing_to_redact = lambda _event: False  # type: ignore[assignment]
    try:
        return dict(redact(None, "info", event))
    finally:
        ordersync_logging._nothing_to_redact = original


@_SETTINGS
@given(st.dictionaries(_KEYS, _VALUE, max_size=6))
def test_redact_shortcut_changes_nothing_the_scrubbers_would(event: dict[str, Any]) -> None:
    assert dict(redact(None, "info", copy.deepcopy(event))) == _slow_redact(copy.deepcopy(event))


def test_redact_still_scrubs_an_ordinary_line_with_a_secret_in_it() -> None:
    event = {"event": "webhook_stored", "detail": "postgresql://u:pw@db/x", "email": "a"}
    redacted = redact(None, "info", event)
    assert ":pw@" not in json.dumps(redacted)
    assert redacted["email"] == REDACTED


class _Odd:
    def __repr__(self) -> str:
        return "<odd>"


@_SETTINGS
@given(st.dictionaries(st.text(max_size=10), _VALUE, max_size=6))
def test_renderer_writes_what_json_dumps_writes(event: dict[str, Any]) -> None:
    renderer = structlog.processors.JSONRenderer()
    event["odd"] = _Odd()
    assert _dumps(event, default=renderer._dumps_kw["default"]) == renderer(None, "info", event)
