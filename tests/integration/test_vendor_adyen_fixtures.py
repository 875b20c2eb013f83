"""Adyen's API libraries' HMAC and notification fixtures, as a test of our HMAC check and
of POST /webhooks/adyen (the real app in process, on the stack's Postgres).

Data: tests/fixtures/adyen_hmac.json (each case names its upstream repository, file and
test in `source`) and tests/fixtures/adyen_notifications/ (byte-for-byte samples; their
README names each file's upstream path).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from integrations.adyen import hmac as adyen_hmac
from integrations.adyen.notifications import ACTED_ON
from service.adyen_webhook import event_key
from tests.integration.edge import adyen_auth, assert_error_json, in_process, inbox_rows
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[1] / "fixtures"
DATA = json.loads((FIXTURES / "adyen_hmac.json").read_text())
ITEMS = [c for c in DATA["cases"] if c["kind"] == "notification_request_item"]
# The keys of the libraries' tests that are real Adyen keys (64 hex characters); one
# test uses "11aa", which our settings refuse at start, so only is_valid sees it.
KEYS = sorted({c["hmac_key"] for c in ITEMS if len(c["hmac_key"]) == 64})
OUR_KEY = "A1" * 32


@pytest.fixture(scope="module")
def client(stack: Stack) -> Any:
    with in_process(stack, adyen_hmac_keys=" ".join([*KEYS, OUR_KEY])) as client:
        yield client


def _post(client: TestClient, stack: Stack, body: bytes) -> Any:
    return client.post("/webhooks/adyen", content=body, headers=adyen_auth(stack))


def _envelope(item: dict[str, Any]) -> bytes:
    return json.dumps(
        {"live": "false", "notificationItems": [{"NotificationRequestItem": item}]}
    ).encode()


@pytest.mark.parametrize("case", ITEMS, ids=[c["id"] for c in ITEMS])
def test_adyen_hmac_case(case: dict[str, Any]) -> None:
    """is_valid agrees with the library test; 'error' cases (the library raises) are
    simply not valid here."""
    valid = adyen_hmac.is_valid(case["notification_request_item"], [case["hmac_key"]])
    assert valid is (case["expected"] == "valid"), case["reason"]


@pytest.mark.parametrize("case", ITEMS, ids=[c["id"] for c in ITEMS])
def test_adyen_hmac_case_through_the_endpoint(
    client: TestClient, stack: Stack, case: dict[str, Any]
) -> None:
    item = case["notification_request_item"]
    response = _post(client, stack, _envelope(item))
    if case["expected"] == "valid" and len(case["hmac_key"]) == 64:
        assert response.status_code == 200 and response.text == "[accepted]", response.text
        assert len(inbox_rows(stack, "adyen", event_key(item))) == 1
    else:
        assert response.status_code in (400, 401), response.text
        assert_error_json(response)


SAMPLES = sorted(p for p in (FIXTURES / "adyen_notifications").rglob("*.json"))
SIGNED_BY_KNOWN_KEY = {
    m["file"].removeprefix("adyen_notifications/")
    for m in DATA["notification_mocks"]
    if m.get("verified_with_key")
}


def _items_of(data: Any) -> list[dict[str, Any]] | None:
    if isinstance(data, dict) and isinstance(data.get("notificationItems"), list):
        return [w.get("NotificationRequestItem") for w in data["notificationItems"]]
    if isinstance(data, dict) and "pspReference" in data and "eventCode" in data:
        return [data]  # a bare NotificationRequestItem
    return None


def _sample_id(path: Path) -> str:
    return str(path.relative_to(FIXTURES / "adyen_notifications"))


@pytest.mark.parametrize("path", SAMPLES, ids=[_sample_id(p) for p in SAMPLES])
def test_adyen_sample_as_sent(client: TestClient, stack: Stack, path: Path) -> None:
    """Each sample as the library ships it: accepted when its key is known, otherwise a
    401 (signature made with an unpublished key) or 400 (not a payments notification) —
    never a 5xx."""
    data = json.loads(path.read_text())
    items = _items_of(data)
    body = _envelope(data) if items == [data] else path.read_bytes()
    response = _post(client, stack, body)
    if _sample_id(path) in SIGNED_BY_KNOWN_KEY:
        assert response.status_code == 200 and response.text == "[accepted]", response.text
    else:
        assert response.status_code in (400, 401), response.text
        assert_error_json(response)
        if items is None:
            assert response.status_code == 400


@pytest.mark.parametrize("path", SAMPLES, ids=[_sample_id(p) for p in SAMPLES])
def test_adyen_sample_signed_with_our_key(client: TestClient, stack: Stack, path: Path) -> None:
    """The same samples signed with our key (fresh pspReferences): every payments sample
    is accepted and stored, whatever unknown field it has or optional one it lacks; one
    we act on that fails its checks is stored as `invalid`, not refused."""
    data = json.loads(path.read_text())
    items = _items_of(data)
    if items is None:
        pytest.skip("not a payments NotificationRequestItem (Balance Platform or MarketPay)")
    signed = []
    for item in items:
        item = dict(item, pspReference=uuid.uuid4().hex[:16].upper())
        additional = dict(item.get("additionalData") or {})
        additional["hmacSignature"] = adyen_hmac.sign(item, OUR_KEY)
        signed.append(dict(item, additionalData=additional))
    body = json.dumps(
        {"live": "false", "notificationItems": [{"NotificationRequestItem": i} for i in signed]}
    )
    response = _post(client, stack, body.encode())
    assert response.status_code == 200 and response.text == "[accepted]", response.text
    for item in signed:
        rows = inbox_rows(stack, "adyen", event_key(item))
        assert len(rows) == 1
        if item["eventCode"] not in ACTED_ON:
            assert rows[0]["outcome"] == "ignored"
