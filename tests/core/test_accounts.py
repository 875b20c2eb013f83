"""ACCOUNTS_FILE (contract §6): parsing, secrets by reference, refusals that name the
account and key but never a value, routing, and the single-account variables unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from domain.snapshot import OrderSnapshot
from ordersync.accounts import DEFAULT, KLARNA_BASE_URLS, build_accounts, from_settings, load_file
from ordersync.errors import ConfigError, ValidationFailed
from ordersync.settings import Settings

HMAC_EU = "A1" * 32
HMAC_US = "B2" * 32
SECRET_VALUES = ["eu-pass-s3cret", "us-pass-s3cret", "eu-api-key-s3cret", HMAC_EU, HMAC_US]

GOOD = """
[klarna.eu]
region = "eu"
environment = "playground"
username = "env:K_EU_USER"
password = "file:{secret_file}"
countries = ["DE", "AT", "SE"]
increase_allowed = {{ INVOICE = ["DE"] }}

[klarna.us]
region = "na"
environment = "live"
username = "PK_US_123"
password = "env:K_US_PASS"
countries = ["US"]

[klarna.sandbox]
api_url = "http://127.0.0.1:8100/klarna/oc/"
username = "env:K_EU_USER"
password = "env:K_US_PASS"
countries = ["AU"]

[adyen.ShopEU]
checkout_url = "https://checkout-test.adyen.com/v71"
api_key = "env:A_EU_KEY"
hmac_keys = "env:A_EU_HMAC"

[adyen.ShopUS]
checkout_url = "https://checkout-test.adyen.com/v71"
pal_url = "https://pal-test.adyen.com/pal/servlet/Payment/v68"
modifications_api = "classic"
api_key = "env:A_US_KEY"
hmac_keys = "env:A_US_HMAC"
default = true
"""

ENV = {
    "K_EU_USER": "eu-user",
    "K_US_PASS": "us-pass-s3cret",
    "A_EU_KEY": "eu-api-key-s3cret",
    "A_EU_HMAC": f"{HMAC_EU} {HMAC_US}",
    "A_US_KEY": "us-api-key-s3cret",
    "A_US_HMAC": HMAC_US,
}


def write(tmp_path: Path, text: str) -> Path:
    secret = tmp_path / "klarna-eu-password"
    secret.write_text("eu-pass-s3cret\n")
    path = tmp_path / "accounts.toml"
    path.write_text(text.format(secret_file=secret))
    return path


def snapshot(payment: dict[str, Any], country: str = "DE") -> OrderSnapshot:
    return OrderSnapshot.model_validate(
        {
            "id": "o-1",
            "version": 1,
            "currency": "EUR",
            "country": country,
            "status": "open",
            "payment": payment,
            "lines": [
                {"id": "a", "name": "A", "quantity": 1, "unit_price": 100, "tax_rate": 0},
            ],
        }
    )


def klarna(**extra: Any) -> dict[str, Any]:
    return {"provider": "klarna", "klarna_order_id": "k-1", **extra}


def test_the_file_gives_each_account_its_url_and_secrets(tmp_path: Path) -> None:
    accounts = load_file(write(tmp_path, GOOD), ENV)
    eu, us, sandbox = accounts.klarna["eu"], accounts.klarna["us"], accounts.klarna["sandbox"]
    assert eu.base_url == "https://api.playground.klarna.com"
    assert us.base_url == "https://api-na.klarna.com" == KLARNA_BASE_URLS[("na", "live")]
    assert sandbox.base_url == "http://127.0.0.1:8100/klarna/oc"
    assert (eu.username, eu.password) == ("eu-user", "eu-pass-s3cret")  # file: is stripped
    assert (us.username, us.password) == ("PK_US_123", "us-pass-s3cret")
    assert eu.allows_increase("INVOICE", "DE") and not eu.allows_increase("INVOICE", "AT")
    assert us.allows_increase("INVOICE", "US")  # the seed's table by default
    shop_eu, shop_us = accounts.adyen["ShopEU"], accounts.adyen["ShopUS"]
    assert shop_eu.hmac_keys == (HMAC_EU, HMAC_US) and shop_eu.modifications_api == "checkout"
    assert shop_us.modifications_api == "classic" and shop_us.merchant_account == "ShopUS"
    assert accounts.defaults == {"adyen": "ShopUS"}  # three Klarna accounts, none marked
    for account in [*accounts.klarna.values(), *accounts.adyen.values()]:
        assert not any(value in repr(account) for value in SECRET_VALUES)


def test_routing_by_name_then_country_and_by_merchant_account(tmp_path: Path) -> None:
    accounts = load_file(write(tmp_path, GOOD), ENV)
    assert accounts.route(snapshot(klarna(), "SE")) == "eu"
    assert accounts.route(snapshot(klarna(), "US")) == "us"
    assert accounts.route(snapshot(klarna(klarna_account="us"), "DE")) == "us"
    adyen = {"provider": "adyen", "psp_reference": "P1"}
    assert accounts.route(snapshot({**adyen, "merchant_account": "ShopEU"})) == "ShopEU"
    assert accounts.route(snapshot(adyen)) == "ShopUS"  # the default merchant account
    for payment, country, field in [
        (klarna(), "FR", "order.country"),
        (klarna(klarna_account="mars"), "DE", "order.payment.klarna_account"),
        ({**adyen, "merchant_account": "ShopXX"}, "DE", "order.payment.merchant_account"),
    ]:
        with pytest.raises(ValidationFailed) as caught:
            accounts.route(snapshot(payment, country))
        assert caught.value.status_code == 422
        assert caught.value.fields == [
            {"path": field, "message": caught.value.fields[0]["message"]}
        ]
    # HMAC keys by merchantAccountCode; an unknown one has none.
    assert accounts.hmac_keys_for("ShopUS") == (HMAC_US,)
    assert accounts.hmac_keys_for("ShopXX") is None
    assert accounts.canonical("adyen", DEFAULT) == "ShopUS"
    assert accounts.canonical("adyen", None) == "ShopUS"
    assert accounts.canonical("klarna", "eu") == "eu"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('password = "env:K_US_PASS"', 'password = "us-pass-s3cret"'),
            "klarna.us.password: a secret must be a reference",
        ),
        (
            ('api_key = "env:A_EU_KEY"', 'api_key = "eu-api-key-s3cret"'),
            "adyen.ShopEU.api_key: a secret must be a reference",
        ),
        (
            ('countries = ["US"]', 'countries = ["US", "DE"]'),
            "klarna.us.countries: DE is also in klarna.eu",
        ),
        (
            ('countries = ["US"]', 'countries = ["US"]\nsecret = "x"'),
            "klarna.us.secret: unknown key",
        ),
        (
            ('api_key = "env:A_US_KEY"', 'api_key = "env:A_MISSING"'),
            "adyen.ShopUS.api_key: variable A_MISSING is not set",
        ),
        (
            ('password = "env:K_US_PASS"', 'password = "file:/nonexistent/pw"'),
            "klarna.us.password: file /nonexistent/pw cannot be read",
        ),
        (
            ('environment = "live"', 'environment = "staging"'),
            "klarna.us.environment: must be live or playground",
        ),
        (('region = "na"', 'region = "us"'), "klarna.us.region: must be eu, na or oc"),
        (
            ('hmac_keys = "env:A_US_HMAC"', 'hmac_keys = "env:K_US_PASS"'),
            "adyen.ShopUS.hmac_keys: entry 1 is not an Adyen HMAC key",
        ),
    ],
)
def test_a_bad_file_names_account_and_key_never_a_value(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError) as caught:
        load_file(write(tmp_path, GOOD.replace(old, new, 1)), ENV)
    line = caught.value.detail
    assert message in line and "\n" not in line
    assert not any(value in line for value in SECRET_VALUES)


def test_a_literal_secret_stops_the_process_at_start_with_exit_2(tmp_path: Path) -> None:
    path = write(
        tmp_path, GOOD.replace('api_key = "env:A_EU_KEY"', 'api_key = "eu-api-key-s3cret"')
    )
    env = {
        **ENV,
        "PATH": "/usr/bin:/bin",
        "ACCOUNTS_FILE": str(path),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ordersync"), "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ordersync: ACCOUNTS_FILE: adyen.ShopEU.api_key: a secret must be a reference"
        " (env:NAME or file:/path), not the value"
    ]
    assert "s3cret" not in result.stderr + result.stdout


def test_without_the_file_the_old_variables_make_one_account_each() -> None:
    settings = Settings(
        klarna_api_url="https://api.playground.klarna.com/",
        klarna_username="u",
        klarna_password=SecretStr("p"),
        klarna_increase_allowed={"INVOICE": ["SE"]},
        adyen_checkout_url="https://checkout-test.adyen.com/v71",
        adyen_api_key=SecretStr("k"),
        adyen_merchant_account="Legacy",
        adyen_hmac_keys=SecretStr(HMAC_EU),
    )
    accounts = build_accounts(settings)
    assert not accounts.from_file
    k = accounts.klarna[DEFAULT]
    assert (k.base_url, k.username, k.password) == ("https://api.playground.klarna.com", "u", "p")
    assert k.allows_increase("INVOICE", "SE") and not k.allows_increase("INVOICE", "DE")
    a = accounts.adyen[DEFAULT]
    assert (a.checkout_url, a.api_key, a.merchant_account) == (
        "https://checkout-test.adyen.com/v71",
        "k",
        "Legacy",
    )
    # Everything routes to the one account, any country or merchant account, as before;
    # every notification is checked with the one set of keys.
    assert accounts.route(snapshot(klarna(), "FR")) == DEFAULT
    adyen = {"provider": "adyen", "psp_reference": "P1", "merchant_account": "Other"}
    assert accounts.route(snapshot(adyen)) == DEFAULT
    assert accounts.hmac_keys_for("Anything") == (HMAC_EU,)
    assert from_settings(Settings()).klarna == {}
