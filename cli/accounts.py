"""`ordersync accounts check`: a table of every account, where it points and whether
its credentials are accepted; exit status 1 if any is not."""

from __future__ import annotations

import json
import sys

import httpx

from cli.orders import table
from ordersync.accounts import get_accounts
from ordersync.settings import Settings
from workers.accounts_check import check_accounts


def check(settings: Settings, as_json: bool) -> int:
    accounts = get_accounts()
    timeout = httpx.Timeout(
        settings.psp_read_timeout_seconds, connect=settings.psp_connect_timeout_seconds
    )
    with httpx.Client(timeout=timeout, headers={"User-Agent": "ordersync/0.1"}) as http:
        checked = check_accounts(accounts, http)
    if as_json:
        for c in checked:
            sys.stdout.write(
                json.dumps(
                    {
                        "provider": c.provider,
                        "account": c.account,
                        "where": c.where,
                        "result": c.result,
                        "detail": c.detail,
                    }
                )
                + "\n"
            )
    elif not checked:
        sys.stdout.write("no accounts configured\n")
    else:
        rows = [[c.provider, c.account, c.where, c.result, c.detail] for c in checked]
        sys.stdout.write(table(["provider", "account", "region / URL", "result", ""], rows) + "\n")
    return 0 if all(c.ok for c in checked) else 1
