"""Pure parts of issue 12: bounded JSON, the PSP limits in the snapshot (checked against
the vendors' own API descriptions when ../shared/vendor-specs is there), quoted PSP
paths, PSP client errors caught, and settings that stop the process at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from cli import main as cli
from domain import snapshot as snap
from integrations.klarna.client import KlarnaClient
from integrations.results import Outcome, path_segment
from ordersync import settings as settings_module
from ordersync.errors import BadRequest, ValidationFailed
from service import bounded_json

VENDOR_SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "vendor-specs"

# -- bounded JSON -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error", "path"),
    [
        (b"\xff", BadRequest, "body"),
        (b"[" * 20000 + b"]" * 20000, BadRequest, "body"),
        (b'{"a": ' + b"[" * 33 + b"]" * 33 + b"}", BadRequest, "body"),
        (b'{"a": ' + b"9" * 5000 + b"}", ValidationFailed, "a"),
        (b'{"a": [1, 1.' + b"5" * 5000 + b"]}", ValidationFailed, "a.1"),
        (b'{"a": NaN}', BadRequest, "body"),
        (b'{"a": -Infinity}', BadRequest, "body"),
        (b'{"a": {"b": "x\\u0000"}}', ValidationFailed, "a.b"),
        (b'{"a": ["\\ud800"]}', ValidationFailed, "a.0"),
        (b'{"\\u0000": 1}', ValidationFailed, "body"),
        (b'{"a": "\\udfff\\ud800"}', ValidationFailed, "a"),
        (b"", BadRequest, "body"),
        (b'{"a": 1', BadRequest, "body"),
    ],
    ids=[
        "non_utf8",
        "nested_20000",
        "nested_33",
        "integer_5000_digits",
        "float_5000_digits",
        "nan",
        "minus_infinity",
        "nul",
        "lone_high_surrogate",
        "nul_in_key",
        "reversed_surrogate_pair",
        "empty",
        "truncated",
    ],
)
def test_bounded_json_refuses(body: bytes, error: type[Exception], path: str) -> None:
    with pytest.raises(error) as raised:
        bounded_json.loads(body)
    fields = raised.value.fields or []  # type: ignore[attr-defined]
    assert fields and fields[0]["path"] == path


def test_bounded_json_keeps_what_is_fine() -> None:
    text = '{"a": [1, -2, 9223372036854775807, "x\\"[{", "💶", "\\ud83d\\udcb6"], "b": {"c": null}}'
    assert bounded_json.loads(text.encode()) == json.loads(text)
    assert bounded_json.loads(b"[" * 32 + b"]" * 32) is not None


def test_bounded_json_path_is_bounded() -> None:
    body = json.dumps({"k" * 5000: "\u0000"}).encode()
    with pytest.raises(ValidationFailed) as raised:
        bounded_json.loads(body)
    assert len(raised.value.fields[0]["path"]) <= bounded_json.MAX_PATH_CHARS  # type: ignore[index]


# -- the snapshot holds the PSPs' limits ------------------------------------------------


def _spec(name: str) -> dict[str, Any]:
    path = VENDOR_SPECS / name
    if not path.exists():
        pytest.skip(f"vendor specs not found at {VENDOR_SPECS} (never copied into the repo)")
    return dict(json.loads(path.read_text()))


def test_limits_are_klarnas_own() -> None:
    schemas = _spec("klarna-order-management-v1.openapi.json")["components"]["schemas"]
    line = schemas["order_line"]["properties"]
    for field in ("total_amount", "unit_price", "total_discount_amount", "total_tax_amount"):
        assert line[field]["maximum"] == snap.MAX_AMOUNT, field
    assert (
        schemas["Update_authorization"]["properties"]["order_amount"]["maximum"] == snap.MAX_AMOUNT
    )
    assert schemas["CaptureObject"]["properties"]["captured_amount"]["maximum"] == snap.MAX_AMOUNT
    assert schemas["RefundObject"]["properties"]["refunded_amount"]["maximum"] == snap.MAX_AMOUNT
    for name in ("Update_authorization", "CaptureObject", "RefundObject"):
        assert schemas[name]["properties"]["order_lines"]["maxItems"] == snap.MAX_PSP_LINES


def test_adyen_amount_is_int64() -> None:
    schemas = _spec("adyen-Webhooks-v1.openapi.json")["components"]["schemas"]
    assert schemas["Amount"]["properties"]["value"]["format"] == "int64"
    assert snap.MAX_AMOUNT < 2**63


def _order(**fields: Any) -> dict[str, Any]:
    order = {
        "id": "1",
        "version": 1,
        "currency": "EUR",
        "country": "DE",
        "payment": {"provider": "klarna", "klarna_order_id": "k-1"},
        "lines": [{"id": "a", "name": "A", "quantity": 1, "unit_price": 100, "tax_rate": 0}],
    }
    order.update(fields)
    return order


def _line(i: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"l{i}", "name": "x", "quantity": 1, "unit_price": 1, "tax_rate": 0, **fields}


@pytest.mark.parametrize(
    "order",
    [
        _order(lines=[_line(0, quantity=1000, unit_price=100_000)]),
        _order(lines=[_line(i) for i in range(1000)]),
        _order(lines=[_line(i) for i in range(999)], amount=990),
        _order(lines=[_line(0, unit_price=10**8), _line(1, unit_price=10**8)], amount=10**8),
        _order(version=2**63 - 1),
    ],
    ids=[
        "line_at_the_limit",
        "1000_lines",
        "999_lines_plus_discount",
        "discount_at_the_limit",
        "version_max",
    ],
)
def test_orders_at_the_limits_are_accepted(order: dict[str, Any]) -> None:
    parsed = snap.OrderSnapshot.model_validate(order)
    assert parsed.total <= snap.MAX_AMOUNT
    assert len(parsed.effective_lines) <= snap.MAX_PSP_LINES


@pytest.mark.parametrize(
    "order",
    [
        _order(lines=[_line(0, quantity=1000, unit_price=100_001)]),
        _order(lines=[_line(0, quantity=1000, unit_price=107_002, total_amount=107_002_000)]),
        _order(lines=[_line(0, unit_price=6 * 10**7), _line(1, unit_price=6 * 10**7)]),
        _order(lines=[_line(i) for i in range(1000)], amount=999),
        _order(lines=[_line(0, unit_price=10**8), _line(1, unit_price=10**8)], amount=5 * 10**7),
        _order(
            payment={"provider": "adyen", "psp_reference": "PSP1"},
            lines=[_line(i, quantity=3, unit_price=1, total_discount_amount=1) for i in range(501)],
        ),
        _order(version=2**63),
        _order(lines=[_line(0, quantity=-1)]),
    ],
    ids=[
        "line_total_over",
        "line_total_over_explicit",
        "order_total_over",
        "discount_line_makes_1001",
        "discount_below_its_floor",
        "adyen_split_makes_1002",
        "version_2_pow_63",
        "negative_quantity",
    ],
)
def test_orders_past_the_limits_are_refused(order: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        snap.OrderSnapshot.model_validate(order)


# -- PSP paths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("..", "%2E%2E"),
        (
            "abc/../../../settlements/v1/x#",
            "abc%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fsettlements%2Fv1%2Fx%23",
        ),
        ("k-p2#", "k-p2%23"),
        ("a?b=1", "a%3Fb%3D1"),
        ("k\x01p", "k%01p"),
        ("f3392f8b-6116-4073-ab96-e330819e2c07", "f3392f8b-6116-4073-ab96-e330819e2c07"),
    ],
    ids=["dot_dot", "path_climb", "fragment", "query", "control_character", "uuid"],
)
def test_path_segment(value: str, quoted: str) -> None:
    assert path_segment(value) == quoted
    url = httpx.URL(f"https://api.example/ordermanagement/v1/orders/{path_segment(value)}/captures")
    assert url.path.startswith("/ordermanagement/v1/orders/") and url.path.endswith("/captures")
    assert url.fragment == "" and url.query == b""


def test_klarna_client_quotes_the_id_and_catches_client_errors() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"error_code": "NO_SUCH_ORDER"})

    client = KlarnaClient(
        httpx.Client(transport=httpx.MockTransport(handler)), "https://k.example", "u", "p"
    )
    client.get_order("abc/../../../settlements/v1/x#")
    assert seen == [
        "/ordermanagement/v1/orders/abc%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fsettlements%2Fv1%2Fx%23"
    ]
    # A base URL httpx cannot build a request from: InvalidURL, not an HTTPError.
    broken = KlarnaClient(httpx.Client(), "https://bad host\x00", "u", "p")
    result = broken.get_order("k-1")
    assert result.outcome is Outcome.REJECTED and result.error is not None
    assert result.error.code == "InvalidURL" and not result.maybe_applied


# -- settings fail fast -----------------------------------------------------------------

BAD_SETTINGS = {
    "shop_secret_plain": ("SHOP_WEBHOOK_SECRETS", "plain"),
    "shop_secret_prefix_only": ("SHOP_WEBHOOK_SECRETS", "whsec_"),
    "shop_secret_bad_base64": ("SHOP_WEBHOOK_SECRETS", "whsec_!!notbase64!!"),
    "shop_secret_too_short": ("SHOP_WEBHOOK_SECRETS", "whsec_QUJD"),
    "shop_second_secret_bad": ("SHOP_WEBHOOK_SECRETS", "whsec_" + "A" * 43 + "= whsec_x%y"),
    "hmac_key_not_hex": ("ADYEN_HMAC_KEYS", "Z" * 64),
    "hmac_key_short": ("ADYEN_HMAC_KEYS", "44782DEF"),
    "hmac_key_long": ("ADYEN_HMAC_KEYS", "A" * 66),
    "hmac_second_key_bad": ("ADYEN_HMAC_KEYS", "A" * 64 + " secretvalue"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS.values()), ids=list(BAD_SETTINGS))
def test_malformed_secret_stops_the_process(
    case: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name, value = case
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/x")
    monkeypatch.setenv("REDIS_URL", "redis://localhost")
    monkeypatch.setenv("SHOP_WEBHOOK_SECRETS", "whsec_" + "A" * 43 + "=")
    monkeypatch.setenv(name, value)
    settings_module.get_settings.cache_clear()
    try:
        assert cli.main(["web"]) == 2
    finally:
        settings_module.get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err
    # Never the value (the message itself explains the `whsec_` form).
    shown = err.replace("(whsec_ followed", "")
    for part in value.split():
        assert part not in shown


def test_empty_shop_secrets_stop_the_web_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/x")
    monkeypatch.setenv("REDIS_URL", "redis://localhost")
    monkeypatch.setenv("SHOP_WEBHOOK_SECRETS", "  ")
    settings_module.get_settings.cache_clear()
    try:
        assert cli.main(["web"]) == 2
    finally:
        settings_module.get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.strip() == "ordersync: missing required setting SHOP_WEBHOOK_SECRETS"


def test_empty_hmac_keys_mean_adyen_is_off() -> None:
    # The chart renders an unset ADYEN_HMAC_KEYS as "": Adyen notifications are off (503).
    assert settings_module.Settings(adyen_hmac_keys="").hmac_keys == []


def test_settings_errors_never_carry_the_value() -> None:
    with pytest.raises(ValidationError) as raised:
        settings_module.Settings(shop_webhook_secrets="whsec_topsecretvalue!")
    assert "topsecretvalue" not in str(raised.value)
