"""Issue 16's findings that need no database: linear body checks, auth before the
body, a client gone mid-body, no host reflection, no-store, settings that fail whole in
one line, every DSN form redacted, bounded log lines, the order id pattern and the
CLI's quoting, Adyen items kept to an allow-list, Adyen's JSON booleans in the HMAC."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from bench.parsing import worst_bodies
from cli import main as cli
from cli.orders import printable
from domain.snapshot import ShopEvent
from integrations.adyen import hmac as adyen_hmac
from integrations.adyen.notifications import stored_item
from ordersync import settings as settings_module
from ordersync.accounts import build_accounts
from ordersync.errors import BadRequest, OrdersyncError
from ordersync.logging import MAX_VALUE_CHARS, redact, scrub_text
from ordersync.settings import Settings
from service import bounded_json
from service.adyen_webhook import adyen_webhook, parse_items
from service.app import RequestContext, create_app
from service.webhooks import parse_event, shop_webhook

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HMAC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
SETTINGS = Settings(
    database_url="postgresql://nobody@127.0.0.1:1/none",
    redis_url="redis://127.0.0.1:1/0",
    shop_webhook_secrets=SECRET,
    operator_token=None,
)

# -- 1. body checks linear in the body's size ----------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", sorted(worst_bodies(1)))
def test_worst_bodies_of_a_mebibyte_are_judged_at_once(name: str) -> None:
    """On 489c33b the first took minutes (a backtracking regex on the event loop); the
    timeout is a hang guard, the figures are bench/parsing.py's."""
    body = worst_bodies(1024 * 1024)[name]
    try:
        bounded_json.loads(body)
    except OrdersyncError as exc:
        assert exc.status_code in (400, 422)


# Fragments of the worst inputs, put together at random: the fuzz test's alphabet.
FRAGMENTS = [
    b'\\"',
    b"\\",
    b'"',
    b"[",
    b"]",
    b"{",
    b"}",
    b":",
    b",",
    b"9" * 50,
    b"1.5e",
    b"-",
    b'"k"',
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b" ",
    b"\xff",
    b"NaN",
]


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=40),
    repeat=st.integers(min_value=1, max_value=2000),
    prefix=st.sampled_from([b"", b'{"notificationItems":', b'{"type":"order.created","order":']),
)
def test_fuzzed_worst_fragments_are_judged_quickly_and_only_with_4xx(
    parts: list[bytes], repeat: int, prefix: bytes
) -> None:
    """Worst fragments, repeated up to some hundred kilobytes, through every check a
    body meets (bounded JSON, the shop's model, the Adyen envelope): each answer is a
    value or a 4xx error, never another exception; the timeout guards against hangs."""
    body = prefix + b"".join(parts) * repeat
    for check in (bounded_json.loads, parse_event, parse_items):
        try:
            check(body)
        except OrdersyncError as exc:
            assert 400 <= exc.status_code < 500


def test_depth_is_still_bounded() -> None:
    assert bounded_json.loads(b"[" * 32 + b"]" * 32) is not None
    for body in (b"[" * 33 + b"]" * 33, b'{"a":' * 40 + b"1" + b"}" * 40):
        with pytest.raises(BadRequest) as raised:
            bounded_json.loads(body)
        assert raised.value.fields == [{"path": "body", "message": "nested deeper than 32"}]


def test_a_long_key_path_is_cut_before_it_is_copied() -> None:
    body = json.dumps({"k" * 100_000: ["\u0000"] * 5}).encode()
    with pytest.raises(OrdersyncError) as raised:
        bounded_json.loads(body)
    assert all(len(f["path"]) <= bounded_json.MAX_PATH_CHARS for f in raised.value.fields or [])


# -- 2. authentication before the body -------------------------------------------------


def _handler_app(**settings: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/webhooks/adyen", adyen_webhook, methods=["POST"]),
            Route("/webhooks/shop", shop_webhook, methods=["POST"]),
        ]
    )
    values = {
        "adyen_hmac_keys": HMAC_KEY,
        "adyen_webhook_username": "adyen",
        "adyen_webhook_password": "pw-for-adyen",
        "shop_webhook_secrets": SECRET,
        **settings,
    }
    built = Settings(**values)
    app.state.ordersync = SimpleNamespace(settings=built, accounts=build_accounts(built))
    return app


async def _call(app: Starlette, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """(status, how many times the app asked for the body)."""
    asked = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-length", b"1048575"), *headers],
        "app": app,
    }
    try:
        await app(scope, receive, send)
    except OrdersyncError as exc:  # no exception handlers in this bare app
        status = exc.status_code
    return status, asked


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/webhooks/adyen", []),
        ("/webhooks/adyen", [(b"authorization", b"Basic " + base64.b64encode(b"adyen:wrong"))]),
        ("/webhooks/shop", []),
        ("/webhooks/shop", [(b"webhook-id", b"msg_1"), (b"webhook-timestamp", b"1")]),
        (
            "/webhooks/shop",
            [(b"webhook-id", b"msg_1"), (b"webhook-signature", b"v1,short")],
        ),
    ],
    ids=[
        "adyen_no_auth",
        "adyen_wrong_password",
        "shop_no_headers",
        "shop_no_signature",
        "shop_malformed_signature",
    ],
)
def test_unauthenticated_requests_are_refused_before_the_body(
    path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    status, asked = asyncio.run(_call(_handler_app(), path, headers))
    assert (status, asked) == (401, 0)


# -- 3. a client that goes away mid-body -------------------------------------------------


def test_a_client_gone_mid_body_is_not_an_unhandled_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ClientDisconnect()

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def sender(_: Any) -> None:
        return None

    with capture_logs() as logs:
        asyncio.run(
            RequestContext(app, send_jobs=sender)(
                {"type": "http", "path": "/webhooks/shop", "headers": []}, None, send
            )
        )
    events = [entry["event"] for entry in logs]
    assert "unhandled_error" not in events and "client_disconnected" in events
    assert sent == []


# -- 7, 11. operator answers are not cached; no host reflection --------------------------


def test_answers_carry_no_store_and_no_redirect_uses_the_host() -> None:
    client = TestClient(create_app(SETTINGS), raise_server_exceptions=False)
    answer = client.get("/orders/", headers={"host": "evil.example"}, follow_redirects=False)
    assert answer.status_code == 404
    assert "location" not in answer.headers
    for path in ("/orders/1001", "/healthz", "/orders/"):
        headers = client.get(path, follow_redirects=False).headers
        assert headers["cache-control"] == "no-store", path
        assert headers["x-content-type-options"] == "nosniff"


# -- 6. settings: validated whole, one line, exit 2, nothing secret ----------------------


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DATABASE_URL": "app:S3cretPW@host/db"}, ["DATABASE_URL"]),
        ({"DATABASE_URL": "postgresql://app:S3cretPW@host:port/db"}, ["DATABASE_URL"]),
        ({"REDIS_URL": "redis://:S3cretPW@host:63x9/0"}, ["REDIS_URL"]),
        ({"KLARNA_INCREASE_ALLOWED": '{"INVOICE": ["S3cretPW"'}, ["KLARNA_INCREASE_ALLOWED"]),
        (
            {
                "DATABASE_URL": "app:S3cretPW@host/db",
                "REDIS_URL": "S3cretPW",
                "MAX_ATTEMPTS": "S3cretPW",
            },
            ["DATABASE_URL", "REDIS_URL", "MAX_ATTEMPTS"],
        ),
    ],
    ids=["dsn_without_scheme", "url_bad_port", "redis_bad_port", "bad_json", "all_at_once"],
)
def test_bad_settings_stop_in_one_line_with_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    names: list[str],
) -> None:
    base = {"DATABASE_URL": "postgresql://h/db", "REDIS_URL": "redis://h:6379/0"}
    for key, value in {**base, **env}.items():
        monkeypatch.setenv(key, value)
    settings_module.get_settings.cache_clear()
    try:
        assert cli.main(["migrate"]) == 2
    finally:
        settings_module.get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ordersync: invalid settings: ")
    assert "S3cretPW" not in err
    for name in names:
        assert name in err


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:S3cretPW@db:5432/ordersync",
        "app:S3cretPW@db/ordersync",
        "host=db user=app password=S3cretPW dbname=ordersync",
        "host=db password = 'S3cret PW' dbname=ordersync",
        "postgresql://app@db/ordersync?password=S3cretPW&sslmode=require",
        "redis://:S3cretPW@redis:6379/0",
        "rediss://default:S3cretPW@redis:6380",
        'missing "=" after "app:S3cretPW@host/db" in connection info string',
    ],
)
def test_every_dsn_form_is_redacted(dsn: str) -> None:
    scrubbed = scrub_text(dsn)
    assert "S3cret" not in scrubbed and "[redacted]" in scrubbed


def test_log_values_are_bounded() -> None:
    event = {"event": "x", "reason": "r" * 100_000, "items": list(range(10_000))}
    out = redact(None, "info", event)
    assert len(out["reason"]) < MAX_VALUE_CHARS + 40
    assert len(json.dumps(out)) < 5000
    logging.getLogger(__name__).debug("bounded")


# -- 8. order ids ---------------------------------------------------------------------


BAD_ORDER_IDS = [
    "D/1",
    "..",
    ".",
    "\x1b[31m1",
    "1\r\n2",
    "1\u202e2",
    "1\u200b2",
    "",
    "a" * 65,
    "-1",
    "1 2",
    "1%2F2",
]


@pytest.mark.parametrize("order_id", BAD_ORDER_IDS)
def test_order_ids_outside_the_pattern_are_refused(order_id: str) -> None:
    event = _event(order_id)
    with pytest.raises(ValidationError) as raised:
        ShopEvent.model_validate(event)
    assert raised.value.errors()[0]["loc"] == ("order", "id")


@pytest.mark.parametrize("order_id", ["1001", "a", "A-1_2.3:4", "9" * 64, "shop:DE:1001"])
def test_order_ids_in_the_pattern_are_taken(order_id: str) -> None:
    assert ShopEvent.model_validate(_event(order_id)).order.id == order_id


def _event(order_id: str) -> dict[str, Any]:
    return {
        "type": "order.created",
        "order": {
            "id": order_id,
            "version": 1,
            "currency": "EUR",
            "country": "DE",
            "payment": {"provider": "klarna", "klarna_order_id": "k-1"},
            "lines": [],
        },
    }


def test_the_cli_prints_what_a_sender_wrote_quoted() -> None:
    text = printable("Kettle\x1b[2J\r\u202eevil\u200b\nnext line € ü")
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert "\u200b" not in text
    assert "\\u001b[2J" in text and "\\u202e" in text and "\nnext line € ü" in text


# -- 5. Adyen items: only what we act on is kept -------------------------------------------

SHOPPER = {
    "shopperEmail": "annegret.quistorp@example.org",
    "shopperName": "Annegret Quistorp-Vielhaber",
    "shopperIP": "203.0.113.77",
    "shopperReference": "cust-88412",
    "additionalData": {
        "billingAddress.street": "Zwetschgenallee",
        "billingAddress.houseNumberOrName": "17",
        "billingAddress.postalCode": "10999",
        "shopperTelephone": "+49 30 98765432",
        "cardSummary": "0008",
        "expiryDate": "03/2030",
        "hmacSignature": "x",
        "openinvoicedata.numberOfLines": "1",
        "openinvoicedata.line1.itemId": "sku-1",
        "openinvoicedata.line1.description": "Kettle",
    },
}


def test_a_stored_adyen_item_holds_no_shopper_data() -> None:
    item = {
        "pspReference": "VZ6GZ9MGQFJSKK65",
        "eventCode": "AUTHORISATION",
        "success": "true",
        "reason": "033608:0008:03/2030",
        "amount": {"value": 1000, "currency": "EUR", "shopper": "x"},
        **SHOPPER,
    }
    kept = stored_item(item)
    text = json.dumps(kept)
    for needle in (
        "annegret",
        "Quistorp",
        "203.0.113",
        "cust-88412",
        "Zwetschgen",
        "10999",
        "98765432",
        "03/2030",
        "hmacSignature",
        "cardSummary",
        "shopper",
    ):
        assert needle not in text, needle
    assert kept["additionalData"] == {
        "openinvoicedata.numberOfLines": "1",
        "openinvoicedata.line1.itemId": "sku-1",
        "openinvoicedata.line1.description": "Kettle",
    }
    failed = stored_item({**item, "success": "false", "reason": "Insufficient balance"})
    assert failed["reason"] == "Insufficient balance"


# -- 13. JSON booleans and null in Adyen's signing string -----------------------------------


def test_the_dotnet_merchant_webhook_payload_verifies_once_signed() -> None:
    """The .NET library's fixture sends `"success": true` and `"originalreference": null`;
    its HMAC validator signs `true`, as the Java and Node libraries do."""
    envelope = json.loads(
        (FIXTURES / "adyen_notifications/dotnet/merchant-webhook-payload.json").read_text()
    )
    item = envelope["notificationItems"][0]["NotificationRequestItem"]
    assert item["success"] is True
    data = ":".join(
        [
            item["pspReference"],
            "",
            item["merchantAccountCode"],
            item["merchantReference"],
            str(item["amount"]["value"]),
            item["amount"]["currency"],
            item["eventCode"],
            "true",
        ]
    )
    digest = hmac.new(bytes.fromhex(HMAC_KEY), data.encode(), hashlib.sha256).digest()
    item["additionalData"]["hmacSignature"] = base64.b64encode(digest).decode()
    assert adyen_hmac.signing_string(item) == data
    assert adyen_hmac.is_valid(item, [HMAC_KEY])
    assert adyen_hmac.render(False) == "false" and adyen_hmac.render(None) == ""
