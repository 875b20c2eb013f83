"""`ordersync dev`: the whole service on one machine, for development and demos."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from pathlib import Path

from devrig.demo import new_secret, run_demo
from devrig.devstack import EmbeddedPostgres, Process, RedisServer, wait_http
from ordersync.db import migrate
from ordersync.logging import configure_logging


def _dev_secrets(data_dir: Path) -> dict[str, str]:
    """Stable across runs, so a shop configured once keeps working."""
    path = data_dir / "secrets.json"
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text())
        if "KLARNA_US_PASSWORD" not in loaded:  # a data folder from before markets
            loaded.update(_market_secrets())
            path.write_text(json.dumps(loaded, indent=2))
        return loaded
    values = {
        "SHOP_WEBHOOK_SECRETS": new_secret(),
        "OPERATOR_TOKEN": secrets.token_urlsafe(24),
        "ADYEN_HMAC_KEYS": secrets.token_hex(32).upper(),
        "ADYEN_API_KEY": secrets.token_urlsafe(24),
        "ADYEN_WEBHOOK_USERNAME": "adyen",
        "ADYEN_WEBHOOK_PASSWORD": secrets.token_urlsafe(16),
    }
    values.update(_market_secrets())
    path.write_text(json.dumps(values, indent=2))
    path.chmod(0o600)
    return values


def _market_secrets() -> dict[str, str]:
    return {
        "KLARNA_EU_USERNAME": "merchant-eu",
        "KLARNA_EU_PASSWORD": secrets.token_urlsafe(16),
        "KLARNA_US_USERNAME": "merchant-us",
        "KLARNA_US_PASSWORD": secrets.token_urlsafe(16),
        "ADYEN_EU_API_KEY": secrets.token_urlsafe(24),
        "ADYEN_EU_HMAC_KEYS": secrets.token_hex(32).upper(),
        "ADYEN_US_API_KEY": secrets.token_urlsafe(24),
        "ADYEN_US_HMAC_KEYS": secrets.token_hex(32).upper(),
    }


DEV_ACCOUNTS = """\
# ordersync dev: the merchant's accounts (contract §6), each market played by the sandbox
# under its own URL with its own credentials; secrets by reference only.
[klarna.eu]
api_url = "{sandbox}/klarna/eu"
region = "eu"
username = "env:KLARNA_EU_USERNAME"
password = "env:KLARNA_EU_PASSWORD"
countries = ["DE", "AT", "NL", "SE", "NO", "FI", "DK"]

[klarna.us]
api_url = "{sandbox}/klarna/na"
region = "na"
username = "env:KLARNA_US_USERNAME"
password = "env:KLARNA_US_PASSWORD"
countries = ["US"]

[adyen.OrdersyncEU]
checkout_url = "{sandbox}/v71"
api_key = "env:ADYEN_EU_API_KEY"
hmac_keys = "env:ADYEN_EU_HMAC_KEYS"
default = true

[adyen.OrdersyncUS]
checkout_url = "{sandbox}/v71"
pal_url = "{sandbox}/pal/servlet/Payment/v68"
modifications_api = "classic"
api_key = "env:ADYEN_US_API_KEY"
hmac_keys = "env:ADYEN_US_HMAC_KEYS"
"""


def write_dev_accounts(data_dir: Path, sandbox_url: str) -> Path:
    path = data_dir / "accounts.toml"
    path.write_text(DEV_ACCOUNTS.format(sandbox=sandbox_url))
    return path


def run_dev(data_dir: Path, *, web_port: int, sandbox_port: int, demo: bool) -> int:
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"), os.environ.get("LOG_FORMAT"))
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    postgres: EmbeddedPostgres | None = None
    redis: RedisServer | None = None
    processes: list[Process] = []
    try:
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            postgres = EmbeddedPostgres(data_dir / "postgres")
            database_url = postgres.url
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis = RedisServer(data_dir / "redis")
            redis.start()
            redis_url = redis.url
        migrate(database_url)

        values = _dev_secrets(data_dir)
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        web_url = f"http://127.0.0.1:{web_port}"
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "KLARNA_API_URL": sandbox_url,
            "KLARNA_USERNAME": "sandbox",
            "KLARNA_PASSWORD": "sandbox",
            "ADYEN_CHECKOUT_URL": f"{sandbox_url}/v71",
            "ADYEN_PAL_URL": f"{sandbox_url}/pal/servlet/Payment/v68",
            "ADYEN_MERCHANT_ACCOUNT": "OrdersyncDev",
            "SANDBOX_ADYEN_WEBHOOK_URL": f"{web_url}/webhooks/adyen",
            "RECONCILE_SWEEP_SECONDS": "5",
            # The sandbox plays the shop's receiver too: `ordersync orders show ID` lists
            # the events it got.
            "SHOP_CALLBACK_URL": f"{sandbox_url}/_sandbox/shop/callbacks",
            "SHOP_CALLBACK_SECRET": new_secret(),
            **values,
        }
        # Two Klarna markets and two Adyen merchant accounts, each with its own
        # credentials, as a shop selling in Europe and the US would have them.
        env["ACCOUNTS_FILE"] = str(write_dev_accounts(data_dir, sandbox_url))
        logs = data_dir / "logs"
        logs.mkdir(exist_ok=True)
        processes = [
            Process("sandbox", ["sandbox", "--port", str(sandbox_port)], env, logs / "sandbox.log"),
            Process(
                "web",
                ["web", "--host", "127.0.0.1", "--port", str(web_port)],
                env,
                logs / "web.log",
            ),
            Process("worker", ["worker", "--concurrency", "2"], env, logs / "worker.log"),
            Process("beat", ["beat"], env, logs / "beat.log"),
        ]
        for process in processes:
            process.start()
        wait_http(f"{sandbox_url}/_sandbox/health", process=processes[0])
        wait_http(f"{web_url}/healthz", process=processes[1])
        print(_banner(web_url, sandbox_url, env, logs), flush=True)
        if demo:
            time.sleep(1.0)  # let the worker finish connecting to Redis
            run_demo(web_url, sandbox_url, values["SHOP_WEBHOOK_SECRETS"])
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(p.running for p in processes):
            time.sleep(0.5)
        dead = [p.name for p in processes if not p.running]
        print(f"ordersync dev: {', '.join(dead)} exited; see {logs}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()
        print("ordersync dev: stopped", flush=True)


def _banner(web_url: str, sandbox_url: str, env: dict[str, str], logs: Path) -> str:
    return f"""
ordersync dev is running (Ctrl-C stops everything)

  receiver      {web_url}/webhooks/shop    (Standard Webhooks, secret below)
  operator API  {web_url}/orders           (Authorization: Bearer $OPERATOR_TOKEN)
  metrics       {web_url}/metrics
  sandbox       {sandbox_url}              (Klarna OM /ordermanagement/v1, Adyen /v71)
  accounts      {env["ACCOUNTS_FILE"]}
                Klarna eu (DE, AT, NL, SE, NO, FI, DK) {sandbox_url}/klarna/eu
                Klarna us (US)                         {sandbox_url}/klarna/na
                Adyen OrdersyncEU (default), OrdersyncUS (classic)
  logs          {logs}/

  SHOP_WEBHOOK_SECRETS={env["SHOP_WEBHOOK_SECRETS"]}
  OPERATOR_TOKEN={env["OPERATOR_TOKEN"]}
  ADYEN_EU_HMAC_KEYS={env["ADYEN_EU_HMAC_KEYS"]}  (OrdersyncEU)
  ADYEN_US_HMAC_KEYS={env["ADYEN_US_HMAC_KEYS"]}  (OrdersyncUS)
  DATABASE_URL={env["DATABASE_URL"]}
  REDIS_URL={env["REDIS_URL"]}
"""
