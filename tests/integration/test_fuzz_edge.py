"""The fuzz suite of the edge (issue 12): Hypothesis-generated requests through the real
app in process and through the live stack, on a real Postgres, Redis and worker.

What holds for every request: the status is below 500; a 4xx carries the contract's
error JSON; what was refused is not stored; and what was stored is settled by the
worker (in sync, or flagged) without looping on it. The number of cases each test ran
is printed at the end (`pytest -s`) and kept in CASES.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from service.adyen_webhook import event_key
from service.bounded_json import text_problem
from tests.integration.edge import (
    adyen_auth,
    assert_error_json,
    envelope,
    in_process,
    operator_headers,
    shop_headers,
    signed_item,
)
from tests.integration.stack import Stack, wait_for

pytestmark = pytest.mark.integration

CASES: Counter[str] = Counter()
STORED_ORDERS: set[str] = set()
STORED_NOTIFICATIONS: set[int] = set()


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- hostile values ----------------------------------------------------------------------

EDGE_INTS = [
    0,
    -1,
    1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    10**8,
    10**8 + 1,
    -(10**8) - 1,
    10**30,
    10**39,
]
EDGE_TEXT = [
    "",
    "\u0000",
    "a\u0000b",
    "\ud800",
    "\udfff",
    "..",
    "../x",
    "k-p2#",
    "a/b",
    "k\u0001p",
    "x" * 300,
    "💶",
    "NaN",
    "null",
    " ",
    "%2e%2e",
]

scalars = st.one_of(
    st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(EDGE_TEXT),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
hostile = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the valid value, sometimes a hostile one (so that some events pass and
    reach the worker, and the rest fail on one field at a time)."""
    # (one_of would merge the repeated branch: a weighted pick instead)
    return st.integers(min_value=0, max_value=7).flatmap(lambda n: hostile if n == 7 else valid)


def _line(index: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "id": maybe(st.just(f"sku-{index}")),
            "name": maybe(st.sampled_from(["Kettle", "Toaster"])),
            "type": maybe(st.sampled_from(["physical", "digital", "shipping_fee"])),
            "quantity": maybe(st.integers(min_value=0, max_value=5)),
            "unit_price": maybe(st.integers(min_value=0, max_value=10_000)),
            "tax_rate": maybe(st.sampled_from([0, 2000, 2500])),
        },
        optional={
            "shipped_quantity": maybe(st.integers(min_value=0, max_value=1)),
            "total_amount": hostile,
            "total_discount_amount": maybe(st.integers(min_value=0, max_value=100)),
            "product_url": hostile,
        },
    )


@st.composite
def shop_events(draw: st.DrawFn) -> dict[str, Any]:
    lines = [draw(_line(i)) for i in range(draw(st.integers(min_value=0, max_value=3)))]
    klarna = {"provider": "klarna", "klarna_order_id": f"k-{uuid.uuid4().hex[:10]}"}
    adyen = {"provider": "adyen", "psp_reference": f"FZ{uuid.uuid4().hex[:14].upper()}"}
    payment = draw(
        st.one_of(
            st.just(klarna),
            st.just(adyen),
            st.fixed_dictionaries(
                {"provider": maybe(st.just("klarna")), "klarna_order_id": hostile}
            ),
            st.fixed_dictionaries({"provider": st.just("adyen"), "psp_reference": hostile}),
        )
    )
    order = draw(
        st.fixed_dictionaries(
            {
                "id": maybe(st.just(f"fz-{uuid.uuid4().hex[:12]}")),
                "version": maybe(st.integers(min_value=0, max_value=3)),
                "currency": maybe(st.just("EUR")),
                "country": maybe(st.just("DE")),
                "status": maybe(st.sampled_from(["open", "cancelled"])),
                "payment": maybe(st.just(payment)),
                "lines": maybe(st.just(lines)),
            },
            optional={"amount": hostile, "shipping": hostile},
        )
    )
    return draw(
        st.fixed_dictionaries(
            {
                "type": maybe(st.sampled_from(["order.created", "order.updated"])),
                "order": maybe(st.just(order)),
            }
        )
    )


@st.composite
def adyen_items(draw: st.DrawFn) -> dict[str, Any]:
    item = draw(
        st.fixed_dictionaries(
            {
                "pspReference": maybe(st.just(f"FZ{uuid.uuid4().hex[:14].upper()}")),
                "eventCode": maybe(
                    st.sampled_from(
                        [
                            "AUTHORISATION",
                            "CAPTURE",
                            "REFUND",
                            "REPORT_AVAILABLE",
                            "CANCELLATION",
                            "EXPIRE",
                            "CHARGEBACK",
                        ]
                    )
                ),
                "success": maybe(st.sampled_from(["true", "false"])),
                "amount": maybe(
                    st.fixed_dictionaries(
                        {
                            "value": maybe(st.integers(min_value=0, max_value=10**6)),
                            "currency": maybe(st.just("EUR")),
                        }
                    )
                ),
            },
            optional={
                "merchantAccountCode": maybe(st.just("OrdersyncTest")),
                "merchantReference": maybe(st.just(str(uuid.uuid4()))),
                "originalReference": maybe(st.just(f"FZ{uuid.uuid4().hex[:14].upper()}")),
                "reason": maybe(st.just("refused")),
                "additionalData": maybe(
                    st.dictionaries(st.sampled_from(["a", "b"]), st.text(max_size=8), max_size=2)
                ),
            },
        )
    )
    return item


# -- the checks --------------------------------------------------------------------------


def _stored_shop(stack: Stack, webhook_id: str) -> list[dict[str, Any]]:
    with stack.db() as conn:
        return conn.execute(
            "SELECT order_id FROM inbox WHERE source = 'shop' AND event_key = %s", (webhook_id,)
        ).fetchall()


def _adyen_count(stack: Stack, keys: list[str]) -> int:
    with stack.db() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM inbox WHERE source = 'adyen' AND event_key = ANY(%s)",
            (keys,),
        ).fetchone()
    assert row is not None
    return int(row["n"])


def check_shop(response: Any, stack: Stack, webhook_id: str) -> None:
    assert response.status_code < 500, response.text[:300]
    stored = _stored_shop(stack, webhook_id)
    if response.status_code == 202:
        assert len(stored) == 1
        STORED_ORDERS.add(stored[0]["order_id"])
    else:
        assert_error_json(response)
        assert stored == [], "a refused event was stored"


def _adyen_keys(items: list[dict[str, Any]]) -> list[str]:
    # A key Postgres cannot hold as text cannot have been stored: not looked up.
    return [key for key in map(event_key, items) if not text_problem(key)]


def check_adyen(response: Any, stack: Stack, items: list[dict[str, Any]], before: int) -> None:
    assert response.status_code < 500, response.text[:300]
    keys = _adyen_keys(items)
    if response.status_code == 200:
        assert response.text == "[accepted]"
        with stack.db() as conn:
            rows = conn.execute(
                "SELECT id, processed_at FROM inbox WHERE source = 'adyen' AND event_key = ANY(%s)",
                (keys,),
            ).fetchall()
        assert len(rows) == len(set(keys))
        STORED_NOTIFICATIONS.update(row["id"] for row in rows if row["processed_at"] is None)
    else:
        assert_error_json(response)
        assert _adyen_count(stack, keys) == before, "a refused envelope was stored"


# -- in process ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(stack: Stack) -> Any:
    with in_process(stack) as client:
        yield client


@fuzz(150)
@given(body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_fuzz_unsigned_bytes(client: TestClient, stack: Stack, body: bytes) -> None:
    CASES["unsigned bytes, /webhooks/shop and /webhooks/adyen (in process)"] += 1
    response = client.post("/webhooks/shop", content=body, headers={"webhook-id": "x"})
    assert response.status_code == 401
    assert_error_json(response)
    # With Adyen's Basic auth but no HMAC: never stored, never a 5xx.
    response = client.post("/webhooks/adyen", content=body, headers=adyen_auth(stack))
    assert response.status_code in (400, 401, 413, 422), response.text[:200]
    assert_error_json(response)


@fuzz(250)
@given(event=shop_events())
def test_fuzz_signed_shop_events(client: TestClient, stack: Stack, event: dict[str, Any]) -> None:
    CASES["signed shop events (in process)"] += 1
    body = json.dumps(event).encode()
    webhook_id = f"msg_{uuid.uuid4().hex}"
    response = client.post(
        "/webhooks/shop", content=body, headers=shop_headers(stack, body, webhook_id)
    )
    check_shop(response, stack, webhook_id)


@fuzz(150)
@given(items=st.lists(adyen_items(), min_size=1, max_size=4))
def test_fuzz_signed_adyen_envelopes(
    client: TestClient, stack: Stack, items: list[dict[str, Any]]
) -> None:
    CASES["signed Adyen envelopes (in process)"] += 1
    before = _adyen_count(stack, _adyen_keys(items))
    signed = [signed_item(stack, item) for item in items]
    response = client.post("/webhooks/adyen", content=envelope(*signed), headers=adyen_auth(stack))
    check_adyen(response, stack, items, before)


@fuzz(150)
@given(
    limit=st.one_of(st.none(), st.text(max_size=8), st.integers(-5, 10**6).map(str)),
    cursor=st.one_of(
        st.none(),
        st.text(max_size=40),
        st.binary(max_size=60).map(lambda b: __import__("base64").urlsafe_b64encode(b).decode()),
    ),
    flag=st.one_of(
        st.none(), st.sampled_from(["needs_attention", "needs_new_order"]), st.text(max_size=8)
    ),
    order_id=st.text(min_size=1, max_size=20),
)
def test_fuzz_operator_parameters(
    client: TestClient, stack: Stack, limit: Any, cursor: Any, flag: Any, order_id: str
) -> None:
    CASES["operator API parameters (in process)"] += 1
    params = {
        k: v for k, v in {"limit": limit, "cursor": cursor, "flag": flag}.items() if v is not None
    }
    response = client.get("/orders", params=params, headers=operator_headers(stack))
    assert response.status_code in (200, 422), response.text[:200]
    if response.status_code == 422:
        assert assert_error_json(response)["fields"][0]["path"].startswith("query.")
    response = client.get(
        f"/orders/{order_id.encode('utf-8', 'surrogatepass').hex()}",
        headers=operator_headers(stack),
    )
    assert response.status_code in (200, 404)


# -- the console ---------------------------------------------------------------------------

# Markup that must never come back unescaped: the console's pages hold no <script> or
# <img> of their own, so finding one means a value went out raw.
MARKUP = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "'><b>x</b>", "{{7*7}}"]
console_text = st.one_of(
    st.sampled_from(EDGE_TEXT + MARKUP),
    st.text(max_size=30),
    st.sampled_from(MARKUP).map(lambda m: m + "x" * 70),
)
console_actions = st.sampled_from(
    ["reconcile", "reprocess", "resend", "acknowledge", "x", "..", ""]
)


@pytest.fixture(scope="module")
def console_client(stack: Stack) -> Any:
    import re

    with in_process(stack) as client:
        page = client.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        answer = client.post(
            "/console/login",
            data={"csrf": csrf.group(1), "token": stack.operator_token},
            follow_redirects=False,
        )
        assert answer.status_code == 303
        form = client.get("/console/health")
        client.csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[attr-defined,union-attr]
        yield client


def _quoted(text: str) -> str:
    from urllib.parse import quote

    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def check_console(response: Any) -> None:
    assert response.status_code < 500, response.text[:300]
    text = response.text
    assert "<script" not in text and "<img" not in text and "<b>x" not in text, text[:500]
    assert response.headers.get("cache-control") == "no-store"


@fuzz(60)
@given(
    flag=console_text | st.sampled_from(["needs_new_order", "needs_attention"]),
    reason=console_text,
    q=console_text,
    cursor=console_text,
    order_id=console_text,
    action=console_actions,
    target=console_text,
    done=console_text,
    next_page=console_text,
)
def test_fuzz_console_query_parameters(
    console_client: TestClient,
    flag: str,
    reason: str,
    q: str,
    cursor: str,
    order_id: str,
    action: str,
    target: str,
    done: str,
    next_page: str,
) -> None:
    CASES["console pages and query parameters (in process)"] += 1
    client = console_client
    query = f"flag={_quoted(flag)}&reason={_quoted(reason)}&q={_quoted(q)}&cursor={_quoted(cursor)}"
    check_console(client.get(f"/console?{query}"))
    oid = _quoted(order_id) or "x"
    check_console(client.get(f"/console/orders/{oid}?done={_quoted(done)}"))
    check_console(client.get(f"/console/orders/{oid}/confirm/{action}?target={_quoted(target)}"))
    check_console(client.get(f"/console/login?next={_quoted(next_page)}"))


@fuzz(60)
@given(
    order_id=console_text,
    action=console_actions,
    target=console_text,
    note=console_text,
    csrf=st.one_of(st.none(), st.just("valid"), console_text),
)
def test_fuzz_console_forms(
    console_client: TestClient, order_id: str, action: str, target: str, note: str, csrf: Any
) -> None:
    CASES["console forms (in process)"] += 1
    client = console_client
    form = {"target": target, "note": note}
    if csrf == "valid":
        form["csrf"] = client.csrf  # type: ignore[attr-defined]
    elif csrf is not None:
        form["csrf"] = csrf
    oid = _quoted(order_id) or "x"
    answer = client.post(
        f"/console/orders/{oid}/{_quoted(action) or 'x'}",
        content="&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in form.items()),
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    if csrf != "valid":
        assert answer.status_code in (403, 404, 405), answer.status_code
    check_console(answer)
    # A login form with hostile fields: refused, never a 5xx.
    login = {"token": note, "csrf": target, "next": order_id}
    answer = client.post(
        "/console/login",
        content="&".join(f"{k}={_quoted(v)}" for k, v in login.items()),
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert answer.status_code in (401, 403), answer.status_code
    check_console(answer)


# -- the live stack -----------------------------------------------------------------------


@fuzz(40)
@given(event=shop_events())
def test_fuzz_live_shop_events(stack: Stack, event: dict[str, Any]) -> None:
    CASES["signed shop events (live stack)"] += 1
    body = json.dumps(event).encode()
    webhook_id = f"msg_{uuid.uuid4().hex}"
    response = httpx.post(
        f"{stack.web_url}/webhooks/shop",
        content=body,
        headers=shop_headers(stack, body, webhook_id),
        timeout=15,
    )
    check_shop(response, stack, webhook_id)


@fuzz(30)
@given(items=st.lists(adyen_items(), min_size=1, max_size=3))
def test_fuzz_live_adyen_envelopes(stack: Stack, items: list[dict[str, Any]]) -> None:
    CASES["signed Adyen envelopes (live stack)"] += 1
    before = _adyen_count(stack, _adyen_keys(items))
    signed = [signed_item(stack, item) for item in items]
    response = httpx.post(
        f"{stack.web_url}/webhooks/adyen",
        content=envelope(*signed),
        headers=adyen_auth(stack),
        timeout=15,
    )
    check_adyen(response, stack, items, before)


@fuzz(30)
@given(body=st.binary(max_size=200), limit=st.text(max_size=6))
def test_fuzz_live_unsigned_and_operator(stack: Stack, body: bytes, limit: str) -> None:
    CASES["unsigned bytes and operator limits (live stack)"] += 1
    response = httpx.post(f"{stack.web_url}/webhooks/shop", content=body, timeout=15)
    assert response.status_code == 401
    assert_error_json(response)
    response = httpx.get(
        f"{stack.web_url}/orders",
        params={"limit": limit},
        headers=operator_headers(stack),
        timeout=15,
    )
    assert response.status_code in (200, 422)


# -- and the worker settles what was stored -------------------------------------------------


def test_worker_settles_everything_stored(stack: Stack) -> None:
    """Every stored order ends in sync or flagged, and every stored notification is
    processed (or orphaned), with no order still being retried."""

    def unsettled() -> list[str]:
        with stack.db() as conn:
            # Settled: nothing left for a sweep to pick up (a flag alone is not enough:
            # a flagged order that is still swept is a loop).
            orders = conn.execute(
                """
                SELECT o.id FROM orders o
                WHERE o.id = ANY(%s)
                  AND ((o.reconcile_requested_at IS NOT NULL
                        AND coalesce(o.next_reconcile_at, now()) <= now())
                       OR EXISTS (SELECT 1 FROM operations p WHERE p.order_id = o.id
                                  AND ((p.status = 'pending'
                                        AND coalesce(p.next_attempt_at, p.created_at) <= now())
                                       OR (p.status = 'sent' AND p.lease_until < now()))))
                """,
                (sorted(STORED_ORDERS),),
            ).fetchall()
            inbox = conn.execute(
                "SELECT id FROM inbox WHERE id = ANY(%s) AND processed_at IS NULL",
                (sorted(STORED_NOTIFICATIONS),),
            ).fetchall()
        return [r["id"] for r in orders] + [str(r["id"]) for r in inbox]

    wait_for(lambda: not unsettled() or None, timeout=60, what="the worker to settle")
    with stack.db() as conn:
        row = conn.execute(
            "SELECT max(attempts) AS attempts FROM operations WHERE order_id = ANY(%s)",
            (sorted(STORED_ORDERS),),
        ).fetchone()
    assert row is not None
    assert (row["attempts"] or 0) <= int(stack.env["MAX_ATTEMPTS"]) + 1, "an operation looped"
    print(
        f"\nfuzz cases run: {dict(CASES)}; total {sum(CASES.values())};"
        f" orders stored {len(STORED_ORDERS)}, notifications stored {len(STORED_NOTIFICATIONS)}"
    )
