"""The chart's form of several markets (contract §6): the accounts file as a ConfigMap,
each account's secrets as a Secret mounted read-only as files into web, worker and beat,
ACCOUNTS_FILE pointing at the file, and an alert on refused credentials."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.test_helm import CHART, FULLNAME, VALUE_SETS, Rendered


@pytest.fixture(scope="module")
def two_regions() -> Iterator[Rendered]:
    with helm.Chart.load(CHART) as chart:
        yield Rendered("two-regions", VALUE_SETS["two-regions"], chart)


@pytest.fixture(scope="module")
def with_values() -> Iterator[Rendered]:
    values: dict[str, Any] = {
        "accounts": {
            "file": '[klarna.eu]\nregion = "eu"\nenvironment = "playground"\n'
            'username = "env:KLARNA_EU_USERNAME"\n'
            'password = "file:/var/run/secrets/ordersync/klarna-eu/password"\n'
            'countries = ["DE"]\n',
            "secrets": [{"name": "klarna-eu", "values": {"password": "s3cret"}}],
        }
    }
    with helm.Chart.load(CHART) as chart:
        yield Rendered("values", values, chart)


def test_the_accounts_file_is_a_configmap_and_the_app_reads_it(two_regions: Rendered) -> None:
    accounts = two_regions.one("ConfigMap", f"{FULLNAME}-accounts")
    parsed = tomllib.loads(accounts["data"]["accounts.toml"])
    assert sorted(parsed["klarna"]) == ["eu", "us"]
    assert sorted(parsed["adyen"]) == ["ExampleShopEU", "ExampleShopUS"]
    config = two_regions.one("ConfigMap", FULLNAME)["data"]
    assert config["ACCOUNTS_FILE"] == "/etc/ordersync/accounts/accounts.toml"
    # References only: every secret in the file is a file: reference under a mounted Secret.
    for section in parsed.values():
        for account in section.values():
            for key in ("password", "api_key", "hmac_keys"):
                if key in account:
                    assert account[key].startswith("file:/var/run/secrets/ordersync/")


def test_each_accounts_secret_is_mounted_read_only_in_web_worker_and_beat(
    two_regions: Rendered,
) -> None:
    names = {"klarna-eu", "klarna-us", "adyen-eu", "adyen-us"}
    for role in ("web", "worker", "beat"):
        pod = two_regions.deployment(role)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["accounts"]["configMap"]["name"] == f"{FULLNAME}-accounts"
        for name in names:
            secret = volumes[f"account-{name}"]["secret"]
            assert secret["secretName"] == f"ordersync-{name}"
        (container,) = pod["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["accounts"]["mountPath"] == "/etc/ordersync/accounts"
        for name in names:
            mount = mounts[f"account-{name}"]
            assert mount["mountPath"] == f"/var/run/secrets/ordersync/{name}"
            assert mount["readOnly"] is True
        annotations = two_regions.deployment(role)["spec"]["template"]["metadata"]["annotations"]
        assert "checksum/accounts" in annotations  # a changed file rolls the pods


def test_secret_values_give_a_secret_of_the_chart(with_values: Rendered) -> None:
    secret = with_values.one("Secret", f"{FULLNAME}-account-klarna-eu")
    assert set(secret["data"]) == {"password"}
    # Never in a ConfigMap.
    for config_map in with_values.of_kind("ConfigMap"):
        assert "s3cret" not in yaml.safe_dump(config_map)


def test_without_accounts_nothing_changes() -> None:
    with helm.Chart.load(CHART) as chart:
        defaults = Rendered("defaults", {}, chart)
    assert "ACCOUNTS_FILE" not in defaults.one("ConfigMap", FULLNAME).get("data", {})
    names = [m["metadata"]["name"] for m in defaults.of_kind("ConfigMap")]
    assert f"{FULLNAME}-accounts" not in names


def test_refused_credentials_alert(two_regions: Rendered) -> None:
    (rule_set,) = two_regions.of_kind("PrometheusRule")
    rules = {r["alert"]: r for g in rule_set["spec"]["groups"] for r in g["rules"]}
    rule = rules["OrdersyncAccountCredentialsRefused"]
    assert "ordersync_account_credentials_ok" in rule["expr"]
    assert 'namespace="shop"' in rule["expr"]
    assert rule["labels"]["severity"] == "critical"
    assert "{{ $labels.account }}" in rule["annotations"]["description"]
