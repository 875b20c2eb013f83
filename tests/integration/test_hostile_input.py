"""Every hostile input of issue 12, by name, through the real app in process (real
Postgres and Redis, the stack's worker behind them): a 4xx with the contract's error
JSON naming the field, nothing stored for what is refused, never a 5xx."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from service import order_views as operator_module
from tests.integration.edge import (
    adyen_auth,
    assert_error_json,
    envelope,
    in_process,
    inbox_rows,
    operator_headers,
    shop_headers,
    signed_item,
)
from tests.integration.stack import KETTLE, Stack, new_order_id, order_event, wait_for

pytestmark = pytest.mark.integration


def _event(**order: Any) -> dict[str, Any]:
    event = order_event(new_order_id(), f"k-{uuid.uuid4().hex[:8]}", [KETTLE])
    event["order"].update(order)
    return event


def _post_shop(client: TestClient, stack: Stack, body: bytes) -> tuple[Any, str]:
    webhook_id = f"msg_{uuid.uuid4().hex}"
    response = client.post(
        "/webhooks/shop", content=body, headers=shop_headers(stack, body, webhook_id)
    )
    return response, webhook_id


# -- unauthenticated: no secret needed -------------------------------------------------


def _valid_signature(stack: Stack, body: bytes) -> tuple[dict[str, str], str]:
    headers = shop_headers(stack, body)
    return headers, headers["webhook-signature"]


UNSIGNED = {
    "garbage": "garbage",
    "v1_a_b": "v1,a,b",
    "v1_abc": "v1,abc",
    "v1_not_base64": "v1,dawfeoifkpqwoekfpqoekf",
    "single_space": " ",
    "v1a_only": "v1a,abc",
}


@pytest.mark.parametrize("signature", list(UNSIGNED.values()), ids=list(UNSIGNED))
def test_malformed_signature_is_401(client: TestClient, stack: Stack, signature: str) -> None:
    body = json.dumps(_event()).encode()
    headers = shop_headers(stack, body)
    headers["webhook-signature"] = signature
    response = client.post("/webhooks/shop", content=body, headers=headers)
    assert response.status_code == 401
    assert_error_json(response)
    assert inbox_rows(stack, "shop", headers["webhook-id"]) == []


def test_truncated_signature_is_401(client: TestClient, stack: Stack) -> None:
    body = json.dumps(_event()).encode()
    headers, valid = _valid_signature(stack, body)
    headers["webhook-signature"] = valid[:12]
    response = client.post("/webhooks/shop", content=body, headers=headers)
    assert response.status_code == 401
    assert_error_json(response)


def test_non_utf8_body_unsigned_is_401(client: TestClient, stack: Stack) -> None:
    response = client.post(
        "/webhooks/shop",
        content=b"\xff",
        headers={"webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,abc"},
    )
    assert response.status_code == 401
    assert_error_json(response)


MALFORMED_BEFORE_VALID = {
    "garbage_then_valid": "garbage {valid}",
    "two_spaces_between": "v1,AAAA  {valid}",
    "v1a_then_valid": "v1a {valid}",
    "v1_a_b_then_valid": "v1,a,b {valid}",
    "truncated_then_valid": "v1,g0hM9 {valid}",
}


@pytest.mark.parametrize(
    "template", list(MALFORMED_BEFORE_VALID.values()), ids=list(MALFORMED_BEFORE_VALID)
)
def test_malformed_entry_does_not_sink_a_valid_one(
    client: TestClient, stack: Stack, template: str
) -> None:
    body = json.dumps(_event()).encode()
    headers, valid = _valid_signature(stack, body)
    headers["webhook-signature"] = template.format(valid=valid)
    response = client.post("/webhooks/shop", content=body, headers=headers)
    assert response.status_code == 202, response.text


def test_adyen_nested_20000_deep_is_400(client: TestClient, stack: Stack) -> None:
    body = b"[" * 20000 + b"]" * 20000
    response = client.post("/webhooks/adyen", content=body, headers=adyen_auth(stack))
    assert response.status_code == 400
    assert_error_json(response)


def test_adyen_5000_digit_integer_is_400(client: TestClient, stack: Stack) -> None:
    body = b'{"notificationItems": ' + b"9" * 5000 + b"}"
    response = client.post("/webhooks/adyen", content=body, headers=adyen_auth(stack))
    assert response.status_code == 400
    assert_error_json(response)


OPERATOR_PARAMS = {
    "limit_superscript_two": ("limit", "²"),
    "limit_5000_digits": ("limit", "9" * 5000),
    "limit_zero": ("limit", "0"),
    "limit_negative": ("limit", "-1"),
    "cursor_deep_brackets": ("cursor", "[" * 5000),
    "cursor_base64_of_deep_json": (
        "cursor",
        base64.urlsafe_b64encode(b"[" * 300).decode().rstrip("="),
    ),
    "cursor_not_a_pair": ("cursor", base64.urlsafe_b64encode(b'{"a": 1}').decode()),
    "cursor_nul_order_id": (
        "cursor",
        base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", "\\u0000"]').decode(),
    ),
    "flag_unknown": ("flag", "nope"),
}


@pytest.mark.parametrize("param", list(OPERATOR_PARAMS.values()), ids=list(OPERATOR_PARAMS))
def test_operator_parameter_is_4xx(
    client: TestClient, stack: Stack, param: tuple[str, str]
) -> None:
    name, value = param
    response = client.get("/orders", params={name: value}, headers=operator_headers(stack))
    assert response.status_code == 422
    body = assert_error_json(response)
    assert body["fields"][0]["path"] == f"query.{name}"


@pytest.mark.parametrize(
    "order_id", ["a\x00b", "\ud800", "x" * 5000], ids=["nul", "lone_surrogate", "too_long"]
)
def test_operator_order_id_is_404(client: TestClient, stack: Stack, order_id: str) -> None:
    response = client.get(
        "/orders/" + order_id.encode("utf-8", "surrogatepass").hex(),
        headers=operator_headers(stack),
    )
    assert response.status_code == 404
    assert operator_module.parse_order_id.__name__  # the helper below checks the raw ids
    with pytest.raises(operator_module.NotFound):
        operator_module.parse_order_id(order_id)


def test_500_carries_x_request_id(
    client: TestClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(operator_module, "list_flagged", broken)
    response = client.get("/orders", headers=operator_headers(stack))
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "detail": "unexpected error"}
    assert response.headers.get("x-request-id")


# -- signed but bad: each a 4xx naming the field, nothing stored -----------------------


def _big_lines(count: int, **line: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"l{i}", "name": "x", "quantity": 1, "unit_price": 100, "tax_rate": 0, **line}
        for i in range(count)
    ]


def _with(**order: Any) -> bytes:
    return json.dumps(_event(**order)).encode()


def _adyen_payment() -> dict[str, Any]:
    return {"provider": "adyen", "psp_reference": "PSP" + uuid.uuid4().hex[:12].upper()}


SIGNED_BAD: dict[str, tuple[bytes, int, str]] = {
    "not_json": (b"{not json", 400, "body"),
    "empty": (b"", 400, "body"),
    "truncated": (_with()[:-10], 400, "body"),
    "nested_20000_deep": (b"[" * 20000 + b"]" * 20000, 400, "body"),
    "integer_5000_digits": (
        b'{"type": "order.created", "order": ' + b"9" * 5000 + b"}",
        422,
        "order",
    ),
    "nan": (b'{"type": "order.created", "order": NaN}', 400, "body"),
    "top_level_array": (b"[]", 422, "body"),
    "version_2_pow_63": (_with(version=2**63), 422, "order.version"),
    "nul_in_order_id": (_with(id="a\u0000b"), 422, "order.id"),
    "nul_in_line_name": (
        _with(lines=[dict(KETTLE, name="Ket\u0000tle")]),
        422,
        "order.lines.0.name",
    ),
    "lone_surrogate_in_line_name": (
        json.dumps(_event(lines=[dict(KETTLE, name="\ud800")])).encode(),
        422,
        "order.lines.0.name",
    ),
    "line_1000_x_107002": (
        _with(lines=[dict(KETTLE, quantity=1000, unit_price=107002)]),
        422,
        "order.lines.0",
    ),
    "line_10000_x_10e8": (
        _with(lines=[dict(KETTLE, quantity=10000, unit_price=10**8)]),
        422,
        "order.lines.0",
    ),
    "two_lines_of_6e7": (
        _with(
            lines=[dict(KETTLE, unit_price=6 * 10**7), dict(KETTLE, id="b", unit_price=6 * 10**7)]
        ),
        422,
        "order",
    ),
    "1000_lines_plus_discount_line": (
        _with(lines=_big_lines(1000), amount=99_000),
        422,
        "order.amount",
    ),
    "adyen_lines_doubled_past_1000": (
        _with(
            payment=_adyen_payment(),
            lines=_big_lines(600, quantity=3, unit_price=1, total_discount_amount=1),
        ),
        422,
        "order.lines",
    ),
    "discount_line_below_its_floor": (
        _with(
            lines=[dict(KETTLE, unit_price=10**8), dict(KETTLE, id="b", unit_price=10**8)],
            amount=5 * 10**7,
        ),
        422,
        "order.amount",
    ),
}

PSP_IDS = {
    "dot_dot": "..",
    "path_climb": "abc/../../../settlements/v1/x#",
    "fragment": "k-p2#",
    "query": "k-p2?x=1",
    "control_character": "k\u0001p",
    "slash": "a/b",
    "percent": "a%2Fb",
}
for _name, _value in PSP_IDS.items():
    SIGNED_BAD[f"klarna_order_id_{_name}"] = (
        _with(payment={"provider": "klarna", "klarna_order_id": _value}),
        422,
        "order.payment.klarna.klarna_order_id",
    )
    SIGNED_BAD[f"psp_reference_{_name}"] = (
        _with(payment={"provider": "adyen", "psp_reference": _value}),
        422,
        "order.payment.adyen.psp_reference",
    )


@pytest.mark.parametrize("case", list(SIGNED_BAD.values()), ids=list(SIGNED_BAD))
def test_signed_but_bad_is_4xx_and_stores_nothing(
    client: TestClient, stack: Stack, case: tuple[bytes, int, str]
) -> None:
    body, status, path = case
    response, webhook_id = _post_shop(client, stack, body)
    assert response.status_code == status, response.text[:300]
    error = assert_error_json(response)
    paths = [f["path"] for f in error.get("fields", [])]
    assert any(p == path or p.startswith(path + ".") for p in paths), paths
    assert inbox_rows(stack, "shop", webhook_id) == []


def test_largest_accepted_order_is_stored(client: TestClient, stack: Stack) -> None:
    body = _with(lines=[dict(KETTLE, quantity=1000, unit_price=100_000)])
    response, webhook_id = _post_shop(client, stack, body)
    assert response.status_code == 202, response.text
    assert len(inbox_rows(stack, "shop", webhook_id)) == 1


# -- Adyen in, liberally where it costs nothing ----------------------------------------


def _item(**fields: Any) -> dict[str, Any]:
    item = {
        "pspReference": "P" + uuid.uuid4().hex[:15].upper(),
        "merchantAccountCode": "OrdersyncTest",
        "merchantReference": "ref",
        "eventCode": "AUTHORISATION",
        "success": "true",
        "amount": {"value": 1000, "currency": "EUR"},
        "eventDate": "2026-01-01T00:00:00+01:00",
    }
    item.update(fields)
    return {k: v for k, v in item.items() if v is not None}


def _post_adyen(client: TestClient, stack: Stack, *items: dict[str, Any]) -> Any:
    body = envelope(*(signed_item(stack, i) for i in items))
    return client.post("/webhooks/adyen", content=body, headers=adyen_auth(stack))


def _adyen_row(stack: Stack, item: dict[str, Any]) -> dict[str, Any]:
    from service.adyen_webhook import event_key

    rows = inbox_rows(stack, "adyen", event_key(item))
    assert len(rows) == 1, rows
    return rows[0]


def test_report_available_without_amount_is_stored_and_ignored(
    client: TestClient, stack: Stack
) -> None:
    # Adyen's Java library, testValidateHMACMissingOptionalField: no amount at all.
    item = _item(eventCode="REPORT_AVAILABLE", amount=None, reason="https://x/report.csv")
    response = _post_adyen(client, stack, item)
    assert response.status_code == 200 and response.text == "[accepted]"
    row = _adyen_row(stack, item)
    assert row["outcome"] == "ignored" and row["processed_at"] is not None


ADYEN_ACTED_ON_BAD = {
    "amount_1e30": ({"amount": {"value": 10**30, "currency": "EUR"}}, "amount.value"),
    "amount_negative": ({"amount": {"value": -5, "currency": "EUR"}}, "amount.value"),
    "amount_missing": ({"amount": None}, "amount"),
    "currency_lowercase": ({"amount": {"value": 5, "currency": "eur"}}, "amount.currency"),
    "success_not_boolean_text": ({"success": "yes"}, "success"),
    "psp_reference_path": ({"pspReference": "../x"}, "pspReference"),
}


@pytest.mark.parametrize("case", list(ADYEN_ACTED_ON_BAD.values()), ids=list(ADYEN_ACTED_ON_BAD))
def test_adyen_bad_acted_on_item_is_recorded_not_retried(
    client: TestClient, stack: Stack, case: tuple[dict[str, Any], str]
) -> None:
    fields, field = case
    item = _item(**fields)
    with capture_logs() as logs:
        response = _post_adyen(client, stack, item)
    assert response.status_code == 200 and response.text == "[accepted]"
    row = _adyen_row(stack, item)
    assert row["outcome"] == "invalid" and row["processed_at"] is not None
    invalid = [entry for entry in logs if entry["event"] == "adyen_items_invalid"]
    assert invalid and invalid[0]["first"] == [{"index": 0, "field": field}]


ADYEN_NUL = {
    "nul_in_reason": {"reason": "a\u0000b"},
    "nul_in_additional_data": {"additionalData": {"x": "a\u0000b"}},
    "lone_surrogate_in_reason": {"reason": "\ud800"},
}


@pytest.mark.parametrize("fields", list(ADYEN_NUL.values()), ids=list(ADYEN_NUL))
def test_adyen_unstorable_text_is_400(
    client: TestClient, stack: Stack, fields: dict[str, Any]
) -> None:
    item = _item(**fields)
    response = _post_adyen(client, stack, item)
    assert response.status_code == 400
    assert_error_json(response)
    from service.adyen_webhook import event_key

    assert inbox_rows(stack, "adyen", event_key(item)) == []


def test_adyen_items_over_the_cap_are_413(client: TestClient, stack: Stack) -> None:
    body = envelope(*[_item() for _ in range(3500)])
    response = client.post("/webhooks/adyen", content=body, headers=adyen_auth(stack))
    assert response.status_code == 413
    assert_error_json(response)


def test_adyen_full_batch_is_stored_in_one_statement(client: TestClient, stack: Stack) -> None:
    from service.adyen_webhook import MAX_ITEMS

    items = [_item(eventCode="REPORT_AVAILABLE") for _ in range(MAX_ITEMS)]
    response = _post_adyen(client, stack, *items)
    assert response.status_code == 200
    for item in items[:: MAX_ITEMS // 5]:
        assert _adyen_row(stack, item)["outcome"] == "ignored"


def test_adyen_hmac_invalid_log_is_bounded(client: TestClient, stack: Stack) -> None:
    from service.adyen_webhook import MAX_ITEMS

    items = [
        dict(signed_item(stack, _item()), merchantReference="tampered") for _ in range(MAX_ITEMS)
    ]
    with capture_logs() as logs:
        response = client.post(
            "/webhooks/adyen", content=envelope(*items), headers=adyen_auth(stack)
        )
    assert response.status_code == 401
    line = next(entry for entry in logs if entry["event"] == "adyen_hmac_invalid")
    assert line["invalid"] == MAX_ITEMS and len(line["first"]) == 10
    assert len(json.dumps(line)) < 1000


def test_probes_do_not_use_the_webhook_pool(stack: Stack) -> None:
    with in_process(stack) as client:
        state = client.app.state.ordersync  # type: ignore[attr-defined]
        before = state.pool.get_stats().get("requests_num", 0)
        for _ in range(5):
            assert client.get("/readyz").status_code == 200
            assert client.get("/metrics").status_code == 200
        assert state.pool.get_stats().get("requests_num", 0) == before
        assert state.probe_pool is not None and state.probe_pool is not state.pool


# -- no poison in the worker ------------------------------------------------------------


def test_order_a_task_cannot_get_past_is_flagged_and_parked(
    client: TestClient, stack: Stack
) -> None:
    klarna_id = stack.klarna_order([KETTLE])
    event = order_event(new_order_id(), klarna_id, [KETTLE])
    order_id = event["order"]["id"]
    response, _ = _post_shop(client, stack, json.dumps(event).encode())
    assert response.status_code == 202
    wait_for(lambda: (stack.order_row(order_id) or {}).get("reconcile_requested_at") is None)
    # A row no sender could produce: the reconciler fails on it every time.
    with stack.db() as conn:
        conn.execute(
            # A new version too: the worker caches a version's parsed snapshot.
            "UPDATE orders SET snapshot = '{\"broken\": true}', psp_synced_at = NULL,"
            " version = version + 1, reconcile_requested_at = now() - interval '1 hour'"
            " WHERE id = %s",
            (order_id,),
        )

    def flagged() -> dict[str, Any] | None:
        row = stack.order_row(order_id)
        return row if row and "needs_attention" in row["flags"] else None

    row = wait_for(flagged, timeout=30)
    reason = row["flag_reason"]["needs_attention"]
    assert reason["code"] == "task_failed"
    assert "ValidationError" in reason["message"] and "reconcile_order" in reason["message"]
    assert row["reconcile_requested_at"] is None


def test_notification_a_task_cannot_process_is_recorded(stack: Stack) -> None:
    key = f"poison-{uuid.uuid4().hex}"
    with stack.db() as conn:
        # Stored before this change made the edge check items: no pspReference at all.
        row = conn.execute(
            "WITH stored AS (INSERT INTO inbox (source, event_key, event_type, received_at)"
            " VALUES ('adyen', %s, 'CAPTURE', now() - interval '1 minute')"
            " RETURNING id, received_at),"
            " body AS (INSERT INTO inbox_bodies (inbox_id, payload)"
            ' SELECT id, \'{"eventCode": "CAPTURE"}\' FROM stored),'
            " due AS (INSERT INTO adyen_due (inbox_id, received_at)"
            " SELECT id, received_at FROM stored)"
            " SELECT id FROM stored",
            (key,),
        ).fetchone()
    assert row is not None

    def settled() -> dict[str, Any] | None:
        rows = inbox_rows(stack, "adyen", key)
        return rows[0] if rows and rows[0]["processed_at"] is not None else None

    assert wait_for(settled, timeout=30)["outcome"] == "failed"


def test_order_whose_psp_read_is_refused_is_not_read_on_every_sweep(
    client: TestClient, stack: Stack
) -> None:
    # Found by the fuzz suite: a Klarna id that names no order was flagged, then read
    # again on every sweep.
    event = order_event(new_order_id(), f"k-{uuid.uuid4().hex[:10]}", [KETTLE])
    order_id = event["order"]["id"]
    response, _ = _post_shop(client, stack, json.dumps(event).encode())
    assert response.status_code == 202
    row = wait_for(
        lambda: (r := stack.order_row(order_id)) and "needs_attention" in r["flags"] and r,
        timeout=30,
    )
    assert row["flag_reason"]["needs_attention"]["code"] == "read_failed"
    reads = len(stack.psp_requests(event["order"]["payment"]["klarna_order_id"]))
    time.sleep(3 * float(stack.env["RECONCILE_SWEEP_SECONDS"]))
    assert len(stack.psp_requests(event["order"]["payment"]["klarna_order_id"])) == reads
    assert (stack.order_row(order_id) or {})["reconcile_requested_at"] is None
