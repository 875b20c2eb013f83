"""Request bodies checked against the vendors' own OpenAPI documents."""

from __future__ import annotations

from typing import Any

import pytest
from devrig.sandbox.specs import (
    ADYEN_CHECKOUT_V71,
    ADYEN_PAYMENT_V68,
    KLARNA_OM_V1,
    OpenApiSpec,
    UnknownOperationError,
    validate_request,
)

from tests.devrig.test_sandbox_support import (
    ORDERS,
    SEED_KETTLE,
    SPECS_DIR,
    create_order,
    ledger,
    line,
    sandbox_client,
)

needs_specs = pytest.mark.skipif(
    not (SPECS_DIR / KLARNA_OM_V1).is_file(),
    reason=f"vendor OpenAPI files not found at {SPECS_DIR} (they are never copied into the repo)",
)
KLARNA = SPECS_DIR / KLARNA_OM_V1


@needs_specs
def test_seed_example_conforms_to_klarna_schema() -> None:
    body = {"order_amount": 6000, "description": "", "order_lines": [SEED_KETTLE]}
    assert validate_request(KLARNA, "PATCH", f"{ORDERS}/abc/authorization", body) == []


@needs_specs
def test_schema_errors_name_the_field() -> None:
    body = {"captured_amount": -1, "order_lines": [{"name": 7, "quantity": 1}]}
    errors = validate_request(KLARNA, "POST", f"{ORDERS}/abc/captures", body)
    assert "$.captured_amount: -1 is less than the minimum of 0" in errors
    assert any(e.startswith("$.order_lines[0].name:") for e in errors)
    assert any("'unit_price' is a required property" in e for e in errors)


@needs_specs
def test_operations_without_body_and_unknown_operations() -> None:
    assert validate_request(KLARNA, "POST", f"{ORDERS}/abc/cancel", None) == []
    with pytest.raises(UnknownOperationError):
        validate_request(KLARNA, "DELETE", f"{ORDERS}/abc", None)
    with pytest.raises(UnknownOperationError):
        validate_request(KLARNA, "POST", "/somewhere/else", {})


@needs_specs
@pytest.mark.parametrize("prefix", ["/v71", ""])
def test_adyen_checkout_plugs_in_the_same_way(prefix: str) -> None:
    spec = SPECS_DIR / ADYEN_CHECKOUT_V71
    good = {"merchantAccount": "Shop", "amount": {"value": 315, "currency": "EUR"}}
    path = f"{prefix}/payments/PSP123/captures"
    assert validate_request(spec, "POST", path, good) == []
    errors = validate_request(spec, "POST", path, {"amount": {"value": 315}})
    assert "$: 'merchantAccount' is a required property" in errors
    assert "$.amount: 'currency' is a required property" in errors


@needs_specs
def test_adyen_classic_payment_plugs_in_the_same_way() -> None:
    spec = SPECS_DIR / ADYEN_PAYMENT_V68
    body = {
        "merchantAccount": "Shop",
        "originalReference": "PSP123",
        "modificationAmount": {"value": 315, "currency": "EUR"},
        "additionalData": {"openinvoicedata.numberOfLines": "1"},
    }
    assert validate_request(spec, "POST", "/pal/servlet/Payment/v68/capture", body) == []
    assert validate_request(spec, "POST", "/capture", {"merchantAccount": "Shop"}) != []


def test_openapi_30_nullable_and_inline_schemas() -> None:
    document: dict[str, Any] = {
        "openapi": "3.0.1",
        "servers": [{"url": "https://psp.example/api/v2"}],
        "paths": {
            "/things/{id}": {
                "put": {
                    "requestBody": {"$ref": "#/components/requestBodies/Thing"},
                },
            },
            "/things/special": {
                "put": {
                    "requestBody": {"content": {"application/json": {"schema": {"type": "array"}}}}
                }
            },
        },
        "components": {
            "requestBodies": {
                "Thing": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}
                    }
                }
            },
            "schemas": {
                "Thing": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {"size": {"type": "integer", "nullable": True, "minimum": 1}},
                }
            },
        },
    }
    spec = OpenApiSpec(document)
    assert spec.validate("PUT", "/api/v2/things/1", {"size": None}) == []
    assert spec.validate("put", "/things/1", {"size": 0}) == [
        "$.size: 0 is less than the minimum of 1"
    ]
    assert spec.validate("PUT", "/things/1", {}) == ["$: 'size' is a required property"]
    # A literal segment wins over a template parameter, as in OpenAPI path matching.
    assert spec.validate("PUT", "/things/special", []) == []


@needs_specs
def test_strict_sandbox_refuses_what_klarna_would() -> None:
    with sandbox_client(specs_dir=SPECS_DIR) as client:
        create_order(client)
        too_long = {"captured_amount": 100, "reference": "r" * 256}
        response = client.post(f"{ORDERS}/ord-1/captures", json=too_long)
        assert response.status_code == 400
        body = response.json()
        assert body["error_code"] == "BAD_VALUE"
        assert any("$.reference" in message for message in body["error_messages"])
        [logged] = client.get("/_sandbox/requests").json()["requests"]
        assert logged["spec_errors"] and logged["spec_errors"][0].startswith("$.reference")
        assert ledger(client) == []

        good = {"captured_amount": 7000, "order_lines": [line(unit_price=7000)]}
        assert client.post(f"{ORDERS}/ord-1/captures", json=good).status_code == 201


@needs_specs
def test_lenient_sandbox_records_but_applies() -> None:
    with sandbox_client(specs_dir=SPECS_DIR, strict_specs=False) as client:
        create_order(client)
        too_long = {"captured_amount": 100, "reference": "r" * 256}
        assert client.post(f"{ORDERS}/ord-1/captures", json=too_long).status_code == 201
        [logged] = client.get("/_sandbox/requests").json()["requests"]
        assert logged["spec_errors"]
        assert len(ledger(client)) == 1


def test_missing_specs_dir_means_no_spec_checks(tmp_path: Any) -> None:
    with sandbox_client(specs_dir=tmp_path) as client:
        create_order(client)
        too_long = {"captured_amount": 100, "reference": "r" * 256}
        assert client.post(f"{ORDERS}/ord-1/captures", json=too_long).status_code == 201
