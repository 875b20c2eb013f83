"""`ordersync dev` runs with two Klarna markets and two Adyen merchant accounts: its
accounts file is a valid ACCOUNTS_FILE, and the sandbox plays each market."""

from __future__ import annotations

from pathlib import Path

from devrig.dev import _market_secrets, write_dev_accounts
from devrig.sandbox.klarna import market_of

from ordersync.accounts import load_file


def test_the_dev_accounts_file_makes_two_markets_of_each(tmp_path: Path) -> None:
    path = write_dev_accounts(tmp_path, "http://127.0.0.1:8100")
    accounts = load_file(path, _market_secrets())
    assert sorted(accounts.klarna) == ["eu", "us"]
    assert sorted(accounts.adyen) == ["OrdersyncEU", "OrdersyncUS"]
    assert [market_of(k.base_url) for k in accounts.klarna.values()] == ["eu", "na"]
    assert "DE" in accounts.klarna["eu"].countries and accounts.klarna["us"].countries == {"US"}
    # Each its own credentials.
    assert accounts.klarna["eu"].password != accounts.klarna["us"].password
    assert accounts.adyen["OrdersyncEU"].api_key != accounts.adyen["OrdersyncUS"].api_key
    assert market_of("http://127.0.0.1:8100") is None
