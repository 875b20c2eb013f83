"""Where the receiver's time goes: the shop webhook with parts switched off, in one run.

`python -m bench.ablation`: ordersync's receiver as is, without the Celery publish after
the commit, without log lines, and without both (each under uvicorn, 32 connections).
Diagnostic only: the variants drop guarantees production needs.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Any

from devrig.devstack import free_port, wait_http

from bench.common import stack, uvicorn_command
from bench.traffic import drive, shop_webhook


def create() -> Any:
    from service.app import create_web_app

    app = create_web_app()
    variant = os.environ.get("BENCH_VARIANT", "")
    if "noenqueue" in variant:

        async def enqueue(order_id: str, *, force: bool = False) -> None:
            return None

        app.state.ordersync.enqueue = enqueue
    if "nolog" in variant:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return app


def main() -> int:
    variants = ["as-is", "noenqueue", "nolog", "noenqueue,nolog"]
    with stack() as bench:
        secret = bench.env["SHOP_WEBHOOK_SECRETS"].split()[0]
        for variant in variants:
            port = free_port()
            process = bench.start(
                f"ablation-{variant}",
                uvicorn_command("bench.ablation:create", port),
                command=True,
                env={"BENCH_VARIANT": variant},
            )
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz", process=process)
            tag = uuid.uuid4().hex[:6]
            result = drive(
                url,
                [shop_webhook(secret, f"ab{tag}-{i}") for i in range(5300)],
                concurrency=32,
                warmup=300,
                max_seconds=10,
            )
            print(f"{variant:16s} {result.rate:7.0f} req/s  {result.statuses()}", flush=True)
            bench.stop(f"ablation-{variant}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
