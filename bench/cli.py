"""`python -m bench ingest|worker|latency|scale|backlog|recovery|parsing|edge|all [--quick]`."""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence

from bench.common import table, write_result

BENCHMARKS = {
    "ingest": "webhooks accepted per second at 32 connections vs a minimal receiver",
    "worker": "PSP operations per second vs Celery's no-op drain; 100 ms PSP latency",
    "latency": "webhook received -> PSP request sent, at a steady 100 and 200 webhooks/s",
    "scale": "sweeper and planner queries at 1M orders / 5M operations vs 10k",
    "backlog": "a 100k-event backlog drains with nothing lost",
    "recovery": "Postgres restarted / worker SIGKILLed -> work reaches the PSP again, in seconds",
    "parsing": "body checks on the worst inputs: time per byte at 1 MiB vs 1 KiB (linear)",
    "edge": "/healthz p99 while slowloris, header-flood, stalled-body and idle clients attack",
    "queues": "20,000 shop callbacks queued ahead of 2,000 reconciles: no reconcile waits",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("benchmark", choices=[*BENCHMARKS, "all", "plot"])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: each benchmark in well under a minute"
    )
    parser.add_argument(
        "--webhooks",
        type=int,
        default=None,
        help="scale only: retention and the inbox's hot statements at N webhooks "
        "(10000000 for the target) against a small inbox",
    )
    parser.add_argument(
        "--psp-delay-ms",
        type=int,
        default=None,
        help="worker: only the slow-PSP round, the sandbox answering after N ms; "
        "latency: the sandbox answers every request after N ms",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="worker: threads of the slow-PSP round (64); latency: threads per worker (8)",
    )
    parser.add_argument(
        "--pools",
        default=None,
        help="worker: the at-once rounds' pools, e.g. prefork:2,prefork:4,threads:16 (each "
        "against a no-op drain of its own pool and concurrency; default prefork:2,threads:16, "
        "quick threads:16)",
    )
    parser.add_argument(
        "--backlog-only",
        action="store_true",
        help="worker: only the issue's figure (a backlog queued as the product queues it), "
        "no one-order-per-message or slow-PSP round",
    )
    parser.add_argument(
        "--callbacks",
        action="store_true",
        help="worker: the shop's callback URL configured; an operation counts once its "
        "order.synced is delivered",
    )
    args = parser.parse_args(argv)
    if args.benchmark == "plot":
        from bench.plot import plot

        print(plot())
        return 0
    names = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    failed = []
    for name in names:
        print(f"# {name}: {BENCHMARKS[name]}{' (quick)' if args.quick else ''}", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"bench.{name}")
        options: dict[str, int | bool | str] = {}
        if name == "scale" and args.webhooks:
            options["webhooks"] = args.webhooks
        if name in ("worker", "latency"):
            for option in ("psp_delay_ms", "concurrency"):
                if getattr(args, option) is not None:
                    options[option] = getattr(args, option)
        if name == "worker" and args.callbacks:
            options["callbacks"] = True
        if name == "worker" and args.pools:
            options["pools"] = args.pools
        if name == "worker" and args.backlog_only:
            options["backlog_only"] = True
        rows, extra = module.run(quick=args.quick, **options)
        extra["wall_seconds"] = round(time.monotonic() - started, 1)
        path = write_result(name, args.quick, rows, extra)
        print(table(f"{name}{' (quick)' if args.quick else ''}", rows))
        print(f"({extra['wall_seconds']} s; {path})\n", flush=True)
        failed += [f"{name}: {row.name}" for row in rows if row.met is False]
    if failed:
        print("targets not met:\n  " + "\n  ".join(failed))
    return 0
