"""The OpenAPI document served at /openapi.json: valid OpenAPI 3.1, and it describes
every route the app serves."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from ordersync.settings import Settings
from service.app import create_app
from service.meta_routes import openapi_document

SETTINGS = Settings(
    database_url="postgresql://nobody@127.0.0.1:1/none",
    redis_url="redis://127.0.0.1:1/0",
    shop_webhook_secrets="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    operator_token=None,
)


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_is_described() -> None:
    documented = {
        (path, method.upper())
        for path, item in openapi_document()["paths"].items()
        for method in item
    }
    app = create_app(SETTINGS)
    served = {
        (route.path, method)
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"
    }
    assert served - documented == set()
    # The contract's endpoints, including the Adyen webhook that another module serves.
    assert {
        ("/webhooks/adyen", "POST"),
        ("/metrics", "GET"),
        ("/orders", "GET"),
        ("/orders/{order_id}", "GET"),
        ("/orders/{order_id}/reconcile", "POST"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/openapi.json", "GET"),
        ("/webhooks/shop", "POST"),
    } <= documented


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/orders/1001"),
        ("GET", "/orders"),
        ("POST", "/orders/1001/reconcile"),
    ],
)
def test_operator_api_is_503_without_a_token(method: str, path: str) -> None:
    # No lifespan: the token is checked before anything touches Postgres.
    client = TestClient(create_app(SETTINGS))
    answer = client.request(method, path, headers={"Authorization": "Bearer x"})
    assert answer.status_code == 503
    assert answer.json()["error"] == "unavailable"


def test_openapi_json_is_served() -> None:
    answer = TestClient(create_app(SETTINGS)).get("/openapi.json")
    assert answer.status_code == 200 and answer.json()["paths"]


def test_request_schemas_state_every_limit_the_models_hold() -> None:
    """The request bodies are described by the models that validate them (issue 16,
    finding 12): what a client generated from the document sends, we accept."""
    from domain.snapshot import ShopEvent
    from service.adyen_webhook import AdyenNotificationRequest

    schemas = openapi_document()["components"]["schemas"]
    expected = ShopEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    expected.pop("$defs")
    assert schemas["ShopEvent"] == expected
    order, line = schemas["OrderSnapshot"], schemas["Line"]
    assert {"id", "version", "currency", "country", "payment", "lines"} <= set(order["required"])
    assert order["properties"]["id"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
    assert order["properties"]["lines"]["maxItems"] == 1000
    assert line["properties"]["tax_rate"]["maximum"] == 10000
    assert line["properties"]["unit_price"]["maximum"] == 100_000_000
    assert set(schemas["LineType"]["enum"]) == {
        "physical",
        "digital",
        "discount",
        "shipping_fee",
        "sales_tax",
        "store_credit",
        "gift_card",
        "surcharge",
    }
    assert "total_discount_amount ≤ quantity × unit_price" in line["description"]
    adyen = schemas["AdyenNotification"]
    assert (
        adyen
        == AdyenNotificationRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        | {"$defs": adyen.get("$defs")}
        or "$defs" not in adyen
    )
    items = adyen["properties"]["notificationItems"]
    assert (items["minItems"], items["maxItems"]) == (1, 100)
    validate(openapi_document())
