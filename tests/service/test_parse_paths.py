"""The shop event's two parse paths agree: the model reading the bytes itself (taken for
a body `bounded_json.plain` passes) and the bounded parser with the model on its result
(every other body, and every body the first refuses)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.traffic import snapshot
from domain.snapshot import ShopEvent
from ordersync.errors import OrdersyncError
from service import bounded_json
from service.webhooks import parse_event, parse_event_checked

VALID = json.dumps({"type": "order.created", "order": snapshot("o-1")}).encode()


def _outcome(parse: Any, body: bytes) -> tuple[str, Any]:
    try:
        event: ShopEvent = parse(body)
    except OrdersyncError as exc:
        return "refused", (exc.status_code, exc.fields)
    return "event", event


# Each replaces the valid body's `"open"` (the order's status) with something else, so
# that every one stays shallow and is read by the model's own parser first.
ODD_VALUES = [
    b'"open"',
    b'"cancelled"',
    b'"\xff"',  # not UTF-8
    b'"a\x01b"',  # a raw control character
    b'"\\u00e9"',
    b'"\\ud83d\\ude00"',  # a surrogate pair: escapes the fast path
    b'"\\u0000"',  # NUL: escapes the fast path
    b"1",
    b"1.0",
    b"true",
    b"null",
    b"NaN",
    b"1e400",
    b"123456789012",
    b"12345678901234567890123456789012345678901234567890",
    b'"open", "status": "cancelled"',  # a repeated key: the last one counts
]


@pytest.mark.parametrize("value", ODD_VALUES)
def test_both_paths_give_the_same_answer(value: bytes) -> None:
    body = VALID.replace(b'"open"', value)
    assert _outcome(parse_event, body) == _outcome(parse_event_checked, body)


def test_the_bench_body_takes_the_fast_path() -> None:
    assert bounded_json.plain(VALID)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["version", "quantity", "unit_price", "tax_rate", "id", "currency"]),
    st.one_of(
        st.integers(min_value=-(10**15), max_value=10**15),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        st.booleans(),
        st.none(),
    ),
)
def test_fuzzed_fields_get_the_same_answer(field: str, value: Any) -> None:
    event = {"type": "order.created", "order": snapshot("o-1")}
    target = (
        event["order"]["lines"][0]
        if field in ("quantity", "unit_price", "tax_rate")
        else event["order"]
    )
    target[field] = value
    body = json.dumps(event).encode()
    assert _outcome(parse_event, body) == _outcome(parse_event_checked, body)
