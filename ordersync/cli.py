"""The `ordersync` command (contract §1)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ordersync.errors import ConfigError
from ordersync.logging import configure_logging
from ordersync.settings import Settings, get_settings


def _settings(*required: str) -> Settings:
    settings = get_settings()
    settings.require(*required)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def cmd_migrate(_: argparse.Namespace) -> int:
    from ordersync.db import migrate

    settings = _settings("database_url")
    assert settings.database_url is not None
    migrate(settings.database_url.get_secret_value())
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    _settings("database_url", "redis_url", "shop_webhook_secrets")
    uvicorn.run(
        "service.app:create_web_app", factory=True, host=args.host, port=args.port,
        workers=args.workers, log_config=None, access_log=False,
        timeout_graceful_shutdown=25,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.celery_app import app

    _settings("database_url", "redis_url")
    argv = ["worker", f"--concurrency={args.concurrency}", "--without-gossip",
            "--without-mingle", "--loglevel=INFO"]
    if args.name:
        argv.append(f"--hostname={args.name}")
    app.worker_main(argv)
    return 0


def cmd_beat(_: argparse.Namespace) -> int:
    from workers.celery_app import app

    _settings("database_url", "redis_url")
    # The schedule file lives in a temp dir: the root filesystem may be read-only.
    schedule = Path(tempfile.gettempdir()) / "ordersync-beat-schedule"
    app.start(["beat", f"--schedule={schedule}", "--loglevel=INFO"])
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    import uvicorn

    from ordersync.sandbox.app import SandboxConfig, create_app

    settings = _settings()
    config = SandboxConfig()
    if settings.klarna_username:
        config.klarna_username = settings.klarna_username
    if settings.klarna_password:
        config.klarna_password = settings.klarna_password.get_secret_value()
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_config=None,
                access_log=False)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from ordersync.dev import run_dev

    return run_dev(Path(args.data_dir), web_port=args.port, sandbox_port=args.sandbox_port,
                   demo=args.demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ordersync.demo import run_demo

    return run_demo(args.web_url, args.sandbox_url, args.secret)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ordersync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply pending migrations").set_defaults(fn=cmd_migrate)

    web = sub.add_parser("web", help="the webhook receiver and operator API")
    web.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a server in a container
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--workers", type=int, default=1)
    web.set_defaults(fn=cmd_web)

    worker = sub.add_parser("worker", help="the Celery worker")
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument("--name", default=None, help="Celery node name")
    worker.set_defaults(fn=cmd_worker)

    sub.add_parser("beat", help="the periodic sweeper (one replica)").set_defaults(fn=cmd_beat)

    sandbox = sub.add_parser("sandbox", help="simulated Klarna and Adyen APIs")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8100)
    sandbox.set_defaults(fn=cmd_sandbox)

    dev = sub.add_parser("dev", help="everything on one machine, with embedded Postgres/Redis")
    dev.add_argument("--data-dir", default=".ordersync-dev")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--sandbox-port", type=int, default=8100)
    dev.add_argument("--demo", action="store_true", help="send a demo order through it")
    dev.set_defaults(fn=cmd_dev)

    demo = sub.add_parser("demo", help="send the demo order to a running stack")
    demo.add_argument("--web-url", default="http://127.0.0.1:8000")
    demo.add_argument("--sandbox-url", default="http://127.0.0.1:8100")
    demo.add_argument("--secret", required=True, help="a SHOP_WEBHOOK_SECRETS secret")
    demo.set_defaults(fn=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"ordersync: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
