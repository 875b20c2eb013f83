"""The sandbox knows markets (contract §8): Klarna markets under /klarna/<market>, each
with its own credentials, and Adyen merchant accounts each with its own API key; the
credentials of another market or account → 401, as the real APIs answer."""

from __future__ import annotations

import base64

from tests.devrig.test_sandbox_support import create_order, sandbox_client

ORDER = "/ordermanagement/v1/orders"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


EU, US = basic("eu-user", "eu-pass"), basic("us-user", "us-pass")
MARKETS = {"eu": ("eu-user", "eu-pass"), "na": ("us-user", "us-pass")}


def test_klarna_markets_each_with_its_own_url_and_credentials() -> None:
    with sandbox_client(klarna_markets=MARKETS) as client:
        create_order(client, "de-1")
        create_order(client, "us-1", market="na", purchase_country="US", purchase_currency="USD")
        assert client.get("/_sandbox/klarna/markets").json() == {"markets": ["eu", "na"]}
        assert client.get(f"/klarna/na{ORDER}/us-1", headers=US).status_code == 200
        assert client.get(f"/klarna/eu{ORDER}/de-1", headers=EU).status_code == 200
        # Another market's credentials: 401, whichever order.
        assert client.get(f"/klarna/na{ORDER}/us-1", headers=EU).status_code == 401
        assert client.get(f"/klarna/eu{ORDER}/de-1", headers=US).status_code == 401
        # The right credentials at another market's URL: that market has no such order.
        assert client.get(f"/klarna/na{ORDER}/de-1", headers=US).status_code == 404
        # A made-up order id proves the credentials without touching an order.
        assert client.get(f"/klarna/na{ORDER}/nothing", headers=US).status_code == 404
        assert client.get(f"/klarna/xx{ORDER}/nothing", headers=US).status_code == 401
        # An operation under a market applies there and is logged with whose credentials.
        capture = client.post(
            f"/klarna/na{ORDER}/us-1/captures",
            headers={**US, "Klarna-Idempotency-Key": "k-1"},
            json={"captured_amount": 100, "order_lines": []},
        )
        assert capture.status_code in (201, 400), capture.text
        sent = client.get("/_sandbox/requests", params={"order_id": "us-1"}).json()["requests"]
        assert {r["account"] for r in sent if r["response_status"] != 401} == {"na"}


def test_adyen_merchant_accounts_each_with_its_own_key() -> None:
    merchants = {"ShopEU": "key-eu", "ShopUS": "key-us"}
    with sandbox_client(adyen_merchants=merchants) as client:
        created = client.post(
            "/_sandbox/adyen/payments",
            json={"value": 1000, "merchantAccount": "ShopUS", "notify": False},
        )
        psp = created.json()["pspReference"]
        body = {"merchantAccount": "ShopUS", "reference": "r-1"}
        url = f"/v71/payments/{psp}/cancels"
        assert client.post(url, json=body, headers={"X-API-Key": "key-eu"}).status_code == 401
        assert client.post(url, json=body, headers={"X-API-Key": "nobody"}).status_code == 401
        assert client.post(url, json=body, headers={"X-API-Key": "key-us"}).status_code == 201
        # /paymentMethods: a harmless read for `accounts check`, per merchant account.
        read = "/v71/paymentMethods"
        mine = {"merchantAccount": "ShopEU"}
        assert client.post(read, json=mine, headers={"X-API-Key": "key-eu"}).status_code == 200
        assert client.post(read, json=mine, headers={"X-API-Key": "key-us"}).status_code == 401
