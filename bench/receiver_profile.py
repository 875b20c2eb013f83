"""Where the web process's CPU goes per webhook: `python -m bench.receiver_profile [--adyen]`.

One `ordersync web` on the bench stack, driven at 32 connections by the load generator
(as `python -m bench ingest` does), while py-spy samples it (`--gil`: only the thread
holding the GIL, so a sample is CPU of the event loop; waiting in epoll is not counted).
Each sample is put in the first part its stack passes through, in the order of `PARTS`
(exclusive: the shares add up to 100 %), and the CPU the process used per request
(from /proc) turns shares into microseconds. Diagnostic: it makes no claim on a target.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
import uuid
from pathlib import Path

from bench.common import ADYEN_HMAC_KEY, RESULTS_DIR, stack
from bench.ingest import _tree_cpu_seconds
from bench.profile import record_gil
from bench.traffic import adyen_notification, drive, shop_webhook

# First match wins, by a substring of a frame ("function (file:line)").
PARTS = {
    "logging (structlog, redaction)": ("structlog", "ordersync/logging.py", "logging/__init__"),
    "publish after the answer (Celery message, Redis)": (
        "publisher.py",
        "redis/",
        "ordersync/jobs.py",
    ),
    "signature (Standard Webhooks) / Adyen HMAC": (
        "standardwebhooks",
        "verify_shop_signature",
        "signature_headers",
        "adyen/hmac.py",
    ),
    "JSON bounds (bounded_json)": ("bounded_json",),
    "model validation (pydantic)": ("model_validate", "parse_items"),
    "encode for storage (ingest._params)": ("_params (",),
    "store (batcher, psycopg)": ("psycopg", "batcher.py", "service/ingest.py", "store_items"),
    "write the answer (head + body, the write system call)": ("RequestResponseCycle.send",),
    "metrics": ("prometheus", "ordersync/metrics.py"),
    "handler, read body": ("service/webhooks.py", "service/adyen_webhook.py"),
    "Starlette layers, RequestContext": ("starlette/", "service/app.py", "proxy_headers"),
    "HTTP parsing, protocol (uvicorn, BoundedHttpProtocol)": (
        "httptools_impl",
        "service/server.py",
        "flow_control",
    ),
}


def attribute(raw: Path) -> dict[str, float]:
    """Share of samples per part (and "event loop, other"), in percent."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stacks, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = stacks.split(";")
        count = int(count_text)
        total += count
        part = next(
            (
                name
                for name, needles in PARTS.items()
                if any(needle in frame for frame in frames for needle in needles)
            ),
            "event loop, other",
        )
        counts[part] += count
    return {part: 100 * counts[part] / max(total, 1) for part in [*PARTS, "event loop, other"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver_profile", description=__doc__)
    parser.add_argument("--adyen", action="store_true", help="Adyen notifications, not shop")
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args(argv)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"receiver-profile-{time.strftime('%Y%m%dT%H%M%S')}.raw.txt"
    with stack() as bench:
        url = bench.web()
        popen = bench.processes["web"].popen
        assert popen is not None
        tag = uuid.uuid4().hex[:6]
        n = 400 * (args.seconds + 6)
        if args.adyen:
            env = bench.env
            requests = [
                adyen_notification(
                    ADYEN_HMAC_KEY,
                    env["ADYEN_WEBHOOK_USERNAME"],
                    env["ADYEN_WEBHOOK_PASSWORD"],
                    f"{tag}{i:09d}",
                )
                for i in range(n)
            ]
        else:
            secret = bench.env["SHOP_WEBHOOK_SECRETS"].split()[0]
            requests = [shop_webhook(secret, f"prof-{tag}-{i}") for i in range(n)]

        def record() -> None:
            time.sleep(3)  # past the warm-up
            record_gil(popen.pid, args.seconds, rate=250, raw=raw)

        recorder = threading.Thread(target=record)
        before = _tree_cpu_seconds(popen.pid)
        recorder.start()
        result = drive(url, requests, concurrency=32, warmup=300, max_seconds=args.seconds + 6)
        recorder.join()
        cpu_us = 1e6 * (_tree_cpu_seconds(popen.pid) - before) / max(result.count + 300, 1)
    print(f"{result.rate:.0f} req/s; web process CPU {cpu_us:.0f} µs per request")
    for part, share in attribute(raw).items():
        print(f"  {share:5.1f} %  {share * cpu_us / 100:6.0f} µs  {part}")
    print(raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
