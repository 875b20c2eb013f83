"""The `ordersync` command (contract §1)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ordersync.errors import ConfigError, OrdersyncError
from ordersync.logging import configure_logging, get_logger
from ordersync.settings import Settings, get_settings


def _settings(*required: str) -> Settings:
    settings = get_settings()
    settings.require(*required)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _accounts() -> None:
    """Reads ACCOUNTS_FILE (or the single-account variables) now, so a bad file stops the
    process at start with one line naming the account and key (contract §6)."""
    from ordersync.accounts import get_accounts

    get_accounts()


def _require_dev_rig(command: str) -> None:
    """The development rig (sandbox, fault suite, dev stack, demo) is its own
    distribution, absent from the runtime image: say how to get it."""
    if importlib.util.find_spec("devrig") is None:
        raise ConfigError(
            f"'{command}' needs the development rig, which is not installed here; "
            "from a checkout: pip install -e ./devrig"
        )


def cmd_migrate(_: argparse.Namespace) -> int:
    from ordersync.db import migrate

    settings = _settings("database_url")
    assert settings.database_url is not None
    migrate(settings.database_url.get_secret_value())
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from service.server import BoundedHttpProtocol

    settings = _settings("database_url", "redis_url", "shop_webhook_secrets")
    _accounts()
    _prepare_multiprocess_metrics(create=False)
    uvicorn.run(
        "service.app:create_web_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers or settings.web_concurrency,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=25,
        # The edge's bounds (README "Security"): head and body clocks, head size and
        # header count in the protocol; idle keep-alive and work in progress here.
        http=BoundedHttpProtocol,
        timeout_keep_alive=int(settings.web_keep_alive_seconds),
        limit_concurrency=settings.web_limit_concurrency or None,
    )
    return 0


def _prepare_multiprocess_metrics(*, create: bool) -> str | None:
    """Sets up prometheus_client's multiprocess mode before anything imports it (it
    reads PROMETHEUS_MULTIPROC_DIR once, at import)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path and create:
        # The prefork pool's children count into files; the parent serves their sum.
        path = tempfile.mkdtemp(prefix="ordersync-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    if path:
        from ordersync.metrics import clear_multiprocess_dir

        clear_multiprocess_dir(path)
    return path


def cmd_worker(args: argparse.Namespace) -> int:
    from ordersync.jobs import Queue

    try:
        queues = Queue.parse(args.queues) if args.queues is not None else list(Queue)
    except ValueError as exc:
        raise ConfigError(f"--queues: {exc}") from None
    _settings("database_url", "redis_url")
    _accounts()
    if args.metrics_port:
        _prepare_multiprocess_metrics(create=True)
        from prometheus_client import start_http_server

        from ordersync.metrics import process_registry

        # A thread of the parent process, which Celery's pool children never run in.
        try:
            start_http_server(
                args.metrics_port, addr=args.metrics_host, registry=process_registry()
            )
        except OSError as exc:
            # Metrics are worth a warning, not a worker that will not start.
            get_logger("cli.main").warning(
                "worker_metrics_unavailable", port=args.metrics_port, error=str(exc)
            )
    from workers.celery_app import app
    from workers.context import size_for_concurrency

    # Threads share one process's Postgres pool and HTTP client: size them to match.
    size_for_concurrency(args.concurrency if args.pool == "threads" else 1)
    # --quiet: no banner on stdout; every line a process writes is a JSON log line.
    argv = [
        "--quiet",
        "worker",
        f"--concurrency={args.concurrency}",
        f"--pool={args.pool}",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
        f"--queues={','.join(queue.value for queue in queues)}",
    ]
    if args.name:
        argv.append(f"--hostname={args.name}")
    app.worker_main(argv)
    return 0


def cmd_beat(_: argparse.Namespace) -> int:
    from workers.celery_app import app

    _settings("database_url", "redis_url")
    _accounts()
    # The schedule file lives in a temp dir: the root filesystem may be read-only.
    schedule = Path(tempfile.gettempdir()) / "ordersync-beat-schedule"
    app.start(["--quiet", "beat", f"--schedule={schedule}", "--loglevel=INFO"])
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    _require_dev_rig("sandbox")
    import uvicorn
    from devrig.sandbox.app import SandboxConfig, create_app

    settings = _settings()
    config = SandboxConfig()
    if args.no_spec_checks:
        config.specs_dir = None
    if settings.klarna_username:
        config.klarna_username = settings.klarna_username
    if settings.klarna_password:
        config.klarna_password = settings.klarna_password.get_secret_value()
    # The sandbox plays Adyen towards the service: same key, HMAC key and webhook login.
    if settings.adyen_api_key:
        config.adyen_api_key = settings.adyen_api_key.get_secret_value()
    config.adyen_webhook_url = os.environ.get("SANDBOX_ADYEN_WEBHOOK_URL") or None
    config.adyen_hmac_key = next(iter(settings.hmac_keys), None)
    config.adyen_webhook_username = settings.adyen_webhook_username
    if settings.adyen_webhook_password:
        config.adyen_webhook_password = settings.adyen_webhook_password.get_secret_value()
    if settings.shop_callback_secret:
        config.shop_callback_secret = settings.shop_callback_secret.get_secret_value()
    _sandbox_markets(config)
    uvicorn.run(
        create_app(config), host=args.host, port=args.port, log_config=None, access_log=False
    )
    return 0


def cmd_accounts_check(args: argparse.Namespace) -> int:
    from cli import accounts as accounts_cli

    return accounts_cli.check(_settings(), args.json)


def _sandbox_markets(config: Any) -> None:
    """With ACCOUNTS_FILE, the sandbox plays each account's market: a Klarna account whose
    api_url is the sandbox's `/klarna/<market>`, an Adyen merchant account, each with
    the account's own credentials."""
    from devrig.sandbox.klarna import market_of

    from ordersync.accounts import get_accounts

    accounts = get_accounts()
    if not accounts.from_file:
        return
    for k in accounts.klarna.values():
        market = market_of(k.base_url)
        if market is not None:
            config.klarna_markets[market] = (k.username, k.password)
    for a in accounts.adyen.values():
        config.adyen_merchants[a.name] = a.api_key
        config.adyen_hmac_keys[a.name] = a.hmac_keys[0]


def cmd_dev(args: argparse.Namespace) -> int:
    _require_dev_rig("dev")
    from devrig.dev import run_dev

    return run_dev(
        Path(args.data_dir), web_port=args.port, sandbox_port=args.sandbox_port, demo=args.demo
    )


def cmd_demo(args: argparse.Namespace) -> int:
    _require_dev_rig("demo")
    from devrig.demo import run_demo

    return run_demo(args.web_url, args.sandbox_url, args.secret)


def cmd_faults(args: argparse.Namespace) -> int:
    _require_dev_rig("faults")
    from devrig.faultsuite import run_faults

    configure_logging("WARNING", "console")
    # The proxy drops connections on purpose; asyncio's complaints about it are noise.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    return run_faults(seeds, args.orders, args.events, infra=not args.no_infra, keep=args.keep)


def cmd_simulate(args: argparse.Namespace) -> int:
    _require_dev_rig("simulate")
    from devrig.simulation import simulate

    configure_logging("WARNING", "console")
    if args.coverage:
        from devrig.simulation import simulate_with_coverage

        return simulate_with_coverage(args.histories, args.first_seed)
    return simulate(
        args.histories,
        args.first_seed,
        database_url=args.database_url,
        processes=args.processes,
        fail_fast=args.fail_fast,
        verbose=args.verbose,
        kinds=not args.no_kinds,
        seconds=args.minutes * 60 if args.minutes else None,
        progress_seconds=args.progress_seconds,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ordersync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply pending migrations").set_defaults(fn=cmd_migrate)

    web = sub.add_parser("web", help="the webhook receiver and operator API")
    web.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a server in a container
    web.add_argument("--port", type=int, default=8000)
    web.add_argument(
        "--workers", type=int, default=None, help="uvicorn processes (default WEB_CONCURRENCY, 1)"
    )
    web.set_defaults(fn=cmd_web)

    worker = sub.add_parser("worker", help="the Celery worker")
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument(
        "--pool",
        choices=["prefork", "threads", "solo"],
        default="prefork",
        help="prefork: one task per child process; threads: concurrent "
        "tasks in one process (PSP calls wait on the network); "
        "see docs/performance.md",
    )
    worker.add_argument("--name", default=None, help="Celery node name")
    worker.add_argument(
        "--queues",
        default=None,
        help="comma-separated queues this worker takes (reconcile, sweeps, notifications, "
        "callbacks, retention; default all): one worker per lane gives each its own "
        "capacity, see docs/performance.md",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=9100,
        help="serve Prometheus metrics on this port (0: off)",
    )
    # Loopback unless told otherwise: the chart passes the pod's own IP, so metrics are
    # reachable by the scraper (and the NetworkPolicy) but never on every interface.
    worker.add_argument("--metrics-host", default="127.0.0.1", help="address to serve metrics on")
    worker.set_defaults(fn=cmd_worker)

    sub.add_parser("beat", help="the periodic sweeper (one replica)").set_defaults(fn=cmd_beat)

    sandbox = sub.add_parser("sandbox", help="simulated Klarna and Adyen APIs")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8100)
    sandbox.add_argument(
        "--no-spec-checks",
        action="store_true",
        help="skip the vendor OpenAPI check of each request (benchmarks)",
    )
    sandbox.set_defaults(fn=cmd_sandbox)

    dev = sub.add_parser("dev", help="everything on one machine, with embedded Postgres/Redis")
    dev.add_argument("--data-dir", default=".ordersync-dev")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--sandbox-port", type=int, default=8100)
    dev.add_argument("--demo", action="store_true", help="send a demo order through it")
    dev.set_defaults(fn=cmd_dev)

    faults = sub.add_parser("faults", help="the fault suite: crash, kill and compare ledgers")
    faults.add_argument("--seeds", type=int, default=3)
    faults.add_argument("--first-seed", type=int, default=1)
    faults.add_argument("--orders", type=int, default=20)
    faults.add_argument("--events", type=int, default=80)
    faults.add_argument("--no-infra", action="store_true", help="only worker crash points")
    faults.add_argument("--keep", action="store_true", help="keep the logs")
    faults.set_defaults(fn=cmd_faults)

    simulate = sub.add_parser(
        "simulate", help="the deterministic simulation: random histories, PSP faults, invariants"
    )
    simulate.add_argument("--histories", type=int, default=1000)
    simulate.add_argument("--first-seed", type=int, default=0)
    simulate.add_argument(
        "--database-url", help="a database for the simulation alone (emptied); default: embedded"
    )
    simulate.add_argument(
        "--processes", type=int, default=1, help="side by side, one database each"
    )
    simulate.add_argument("--fail-fast", action="store_true", help="stop at the first violation")
    simulate.add_argument("--verbose", action="store_true", help="print every history's trace")
    simulate.add_argument("--no-kinds", action="store_true", help="omit the event-kind counts")
    simulate.add_argument(
        "--minutes", type=float, help="stop when this time is spent (the totals so far)"
    )
    simulate.add_argument(
        "--progress-seconds",
        type=float,
        default=60.0,
        help="a progress line this often: histories, rate, violations, where to resume",
    )
    simulate.add_argument(
        "--coverage",
        action="store_true",
        help="line coverage of domain/ and the workers it drives, from the simulation alone",
    )
    simulate.set_defaults(fn=cmd_simulate)

    demo = sub.add_parser("demo", help="send the demo order to a running stack")
    demo.add_argument("--web-url", default="http://127.0.0.1:8000")
    demo.add_argument("--sandbox-url", default="http://127.0.0.1:8100")
    demo.add_argument("--secret", required=True, help="a SHOP_WEBHOOK_SECRETS secret")
    demo.set_defaults(fn=cmd_demo)

    accounts = sub.add_parser("accounts", help="the merchant's Klarna and Adyen accounts")
    accounts_sub = accounts.add_subparsers(dest="accounts_command", required=True)
    check = accounts_sub.add_parser(
        "check", help="one harmless read per account: are its credentials accepted?"
    )
    check.add_argument("--json", action="store_true", help="one JSON object per account")
    check.set_defaults(fn=cmd_accounts_check)

    orders = sub.add_parser("orders", help="operator commands: show, list, reconcile")
    orders_sub = orders.add_subparsers(dest="orders_command", required=True)
    show = orders_sub.add_parser("show", help="an order's state, flags and full history")
    show.add_argument("order_id")
    show.add_argument("--json", action="store_true", help="the operator API's JSON")
    show.add_argument(
        "--timeline-json", action="store_true", help="GET /orders/{id}/timeline's JSON"
    )
    show.set_defaults(fn=cmd_orders_show)
    listing = orders_sub.add_parser("list", help="flagged orders, most recently changed first")
    listing.add_argument(
        "--flag",
        choices=["needs_new_order", "needs_attention"],
        default=None,
        help="only this flag (default: any)",
    )
    listing.add_argument("--account", default=None, help="only orders of this account")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor", default=None)
    listing.add_argument("--json", action="store_true", help="the operator API's JSON")
    listing.set_defaults(fn=cmd_orders_list)
    rec = orders_sub.add_parser(
        "reconcile", help="clear the back-off and needs_attention, and reconcile now"
    )
    rec.add_argument("order_id")
    rec.add_argument("--json", action="store_true", help="the operator API's JSON")
    rec.set_defaults(fn=cmd_orders_reconcile)
    return parser


def cmd_orders_show(args: argparse.Namespace) -> int:
    from cli import orders as operator_cli

    return operator_cli.show(
        _settings("database_url"), args.order_id, args.json, args.timeline_json
    )


def cmd_orders_list(args: argparse.Namespace) -> int:
    from cli import orders as operator_cli
    from service.order_views import parse_limit

    limit = parse_limit(str(args.limit))
    return operator_cli.list_orders(
        _settings("database_url"), args.flag, limit, args.cursor, args.json, args.account
    )


def cmd_orders_reconcile(args: argparse.Namespace) -> int:
    from cli import orders as operator_cli

    settings = _settings("database_url", "redis_url")
    return operator_cli.reconcile(settings, args.order_id, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"ordersync: {exc.detail}", file=sys.stderr)
        return 2
    except OrdersyncError as exc:
        fields = "".join(f"; {f['path']}: {f['message']}" for f in exc.fields or [])
        print(f"ordersync: {exc.detail}{fields}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
