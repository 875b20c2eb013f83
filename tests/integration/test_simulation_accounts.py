"""Histories across the merchant's accounts (contract §6) in the deterministic simulation
(devrig/devrig/simulation.py): two Klarna accounts with their own hosts and credentials,
two Adyen merchant accounts with their own API keys, orders spread over them. The PSP
model answers 401 and records `cross_account` for any request that goes out with another
account's host, credentials or merchant account, and every stored operation's frozen
request must name the order's own account.

The long run is `ordersync simulate --histories N --first-seed S` (it prints
`cross_account N`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from devrig.devstack import EmbeddedPostgres, temporary_pg_dir

from devrig import simulation
from ordersync.accounts import Accounts
from ordersync.db import migrate

HISTORIES = 20


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    postgres = EmbeddedPostgres(temporary_pg_dir("ordersync-sim-accounts-pg-") / "data")
    try:
        with simulation.quiet_logs():
            migrate(postgres.url)
        simulation.prepare(postgres.url)
        yield postgres.url
    finally:
        postgres.stop()


@pytest.mark.timeout(300)
def test_no_request_goes_out_with_another_accounts_credentials(database_url: str) -> None:
    summary = simulation.run_many(database_url, HISTORIES, first_seed=1)
    assert summary.histories == HISTORIES
    # The histories really span the accounts, and a snapshot moving the payment to the
    # other account is refused among the other identity changes.
    for account in ("eu", "us", "SimEU", "SimUS"):
        assert summary.kinds[f"account_{account}"] > 0
    assert summary.kinds["snapshot_rejected"] > 0
    assert summary.by_code["cross_account"] == 0


@pytest.mark.timeout(300)
def test_a_client_with_another_accounts_credentials_is_caught(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check bites: the US clients speak with the EU credentials.
    real = simulation.sim_accounts

    def crossed(api: str) -> Accounts:
        accounts = real(api)
        klarna = dict(accounts.klarna)
        adyen = dict(accounts.adyen)
        klarna["us"] = dataclasses.replace(klarna["us"], password="pw-eu")
        adyen["SimUS"] = dataclasses.replace(adyen["SimUS"], api_key="key-eu")
        return dataclasses.replace(accounts, klarna=klarna, adyen=adyen)

    monkeypatch.setattr(simulation, "sim_accounts", crossed)
    summary = simulation.run_many(database_url, 6, first_seed=1)
    assert summary.by_code["cross_account"] > 0
