"""The Standard Webhooks libraries' published test cases, as a test of our verification
(service.webhooks.verify_shop_signature) and of our secret settings.

Data: tests/fixtures/standardwebhooks.json, each case with the upstream file and test it
came from (`source`, `also_in`). A valid case must verify; an invalid one must be a 401
(Unauthorized), never any other exception — that is what turned four of these cases into
500s before. Cases of the `derived` section are ours, marked as such in the file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks.webhooks as library
from pydantic import ValidationError

from ordersync.errors import Unauthorized
from ordersync.settings import Settings
from service.webhooks import verify_shop_signature

DATA = json.loads((Path(__file__).parents[1] / "fixtures" / "standardwebhooks.json").read_text())
CASES = [c for c in DATA["cases"] if c["mode"] == "verify"]
# Go's VerifyIgnoringTimestamp has no counterpart here: we always check the timestamp.
IGNORING_TIMESTAMP = [c for c in DATA["cases"] if c["mode"] == "verify_ignoring_timestamp"]


def _frozen_at(moment: int) -> type[datetime]:
    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Frozen:  # type: ignore[override]
            return cls.fromtimestamp(moment, tz or UTC)

    return Frozen


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_standard_webhooks_case(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(library, "datetime", _frozen_at(int(case["verify_at"])))
    headers = {k.lower(): v for k, v in case["headers"].items()}
    body = case["payload"].encode()
    if case["expected"] == "valid":
        assert verify_shop_signature(body, headers, [case["secret"]]) == headers["webhook-id"]
    else:
        with pytest.raises(Unauthorized):
            verify_shop_signature(body, headers, [case["secret"]])


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_standard_webhooks_case_during_rotation(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same outcome when another (valid) secret is tried first."""
    monkeypatch.setattr(library, "datetime", _frozen_at(int(case["verify_at"])))
    headers = {k.lower(): v for k, v in case["headers"].items()}
    secrets = ["whsec_" + "A" * 43 + "=", case["secret"]]
    body = case["payload"].encode()
    if case["expected"] == "valid":
        assert verify_shop_signature(body, headers, secrets) == headers["webhook-id"]
    else:
        with pytest.raises(Unauthorized):
            verify_shop_signature(body, headers, secrets)


@pytest.mark.parametrize("case", IGNORING_TIMESTAMP, ids=[c["id"] for c in IGNORING_TIMESTAMP])
def test_timestamp_is_always_checked(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Go's VerifyIgnoringTimestamp cases, verified at a time far from their timestamp:
    we have no such mode, so each is a 401 (never a crash)."""
    monkeypatch.setattr(library, "datetime", _frozen_at(int(case["verify_at"]) + 10 * 3600))
    headers = {k.lower(): v for k, v in case["headers"].items()}
    with pytest.raises(Unauthorized):
        verify_shop_signature(case["payload"].encode(), headers, [case["secret"]])


SECRET_CASES = [c for c in DATA["secret_cases"] if isinstance(c["secret"], str)]


@pytest.mark.parametrize("case", SECRET_CASES, ids=[repr(c["secret"]) for c in SECRET_CASES])
def test_empty_secret_cases_stop_the_web_process(case: dict[str, Any]) -> None:
    """The libraries refuse an empty secret; our settings refuse it at start."""
    try:
        settings = Settings(shop_webhook_secrets=case["secret"])
    except ValidationError as exc:
        assert "shop_webhook_secrets" in str(exc)
        return
    # An empty value is no value: the web process's `require` stops it.
    assert settings.shop_webhook_secrets is None


def test_every_valid_upstream_secret_is_accepted_by_settings() -> None:
    secrets = sorted({c["secret"] for c in DATA["cases"]})
    assert Settings(shop_webhook_secrets=" ".join(secrets)).shop_secrets == secrets
