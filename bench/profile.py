"""Where a worker's CPU goes: `python -m bench.profile [--quick]`.

The worker bench's workload (orders read from Klarna already, each one capture away
from in sync) run by one worker (`--pool threads --concurrency 16`) while py-spy samples
it (`py-spy record --pid … --gil --format raw`: only the thread holding the GIL is
sampled, so a sample is Python CPU; a thread waiting on a socket or for the GIL is not
counted). Prints the share of samples that pass through each part
(inclusive: a sample in pydantic called from psycopg counts for both) and the functions
most often on top of the stack, and writes both to bench/results/profile-*.json with
the raw stacks next to it. Diagnostic: it makes no claim on a target.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devrig.devstack import wait_until

from bench.common import RESULTS_DIR, Stack, stack
from bench.fixtures import queue_reconciles, synced_orders

# Inclusive categories, by a substring of the frame (py-spy: "function (file:line)").
PARTS = {
    "pydantic (validation, dump)": ("pydantic",),
    "psycopg (queries, adaptation)": ("psycopg",),
    "JSON encode/decode": ("json/", "jsonb", "Jsonb"),
    "httpx / httpcore (PSP call)": ("httpx", "httpcore", "h11"),
    "logging (structlog, redaction)": ("structlog", "ordersync/logging.py", "logging/"),
    "celery / kombu (task machinery)": ("celery", "kombu", "billiard"),
    "planner and lines (domain/)": ("domain/",),
    "prometheus metrics": ("prometheus_client",),
}


def raw_stacks(raw: Path) -> Iterator[tuple[list[str], int]]:
    """Each stack of py-spy's raw output (its frames, outermost first) and its samples."""
    for line in raw.read_text().splitlines():
        stacks, _, count_text = line.rpartition(" ")
        if count_text.isdigit():
            yield stacks.split(";"), int(count_text)


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in raw_stacks(raw):
        total += count
        for part, needles in PARTS.items():
            if any(needle in frame for frame in frames for needle in needles):
                inclusive[part] += count
        leaves[_short(frames[-1])] += count
    return {
        "samples": total,
        "parts": {part: round(100 * inclusive[part] / max(total, 1), 1) for part in PARTS},
        "top_self": [
            {"frame": frame, "pct": round(100 * n / max(total, 1), 1)}
            for frame, n in leaves.most_common(top)
        ],
    }


def record_gil(pid: int, seconds: float, *, rate: int, raw: Path) -> None:
    """`py-spy record` of one process for `seconds`, only the thread holding the GIL,
    written raw (one folded stack a line) to `raw`."""
    spy = Path(sys.executable).with_name("py-spy")
    subprocess.run(
        [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--nonblocking",
            "--gil",
        ],
        check=True,
        capture_output=True,
    )


def _short(frame: str) -> str:
    # "fn (/long/path/site-packages/pkg/mod.py:12)" -> "fn (pkg/mod.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"


def profile(
    bench: Stack,
    *,
    n: int,
    seconds: float,
    tag: str,
    concurrency: int = 16,
    psp_delay_ms: int = 0,
    single: bool = False,
) -> dict[str, Any]:
    sandbox = bench.sandbox()
    with bench.db() as conn:
        ids = synced_orders(conn, sandbox, f"prof-{tag}-", n, shipped=True, requested=True)
    queue_reconciles(ids, single=single)
    bench.sandbox(delay_ms=psp_delay_ms)
    worker = bench.worker(f"worker-prof-{tag}", pool="threads", concurrency=concurrency)
    assert worker.popen is not None

    def done() -> int:
        with bench.db() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM operations WHERE order_id LIKE %s "
                "AND status = 'succeeded'",
                (f"prof-{tag}-%",),
            ).fetchone()
        assert row is not None
        return int(row["n"])

    wait_until(lambda: done() > 0, timeout=60, what="the first operation")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"profile-{tag}-{time.strftime('%Y%m%dT%H%M%S')}.raw.txt"
    started, first = time.monotonic(), done()
    record_gil(worker.popen.pid, seconds, rate=200, raw=raw)
    elapsed = time.monotonic() - started
    ops = done() - first
    bench.stop(f"worker-prof-{tag}")
    summary = summarise(raw)
    summary |= {"ops_during_profile": ops, "ops_per_s": ops / elapsed, "raw": str(raw)}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tag", default="now", help="a label for the result file")
    parser.add_argument("--concurrency", type=int, default=16, help="the worker's threads")
    parser.add_argument(
        "--psp-delay-ms", type=int, default=0, help="the sandbox answers after N ms"
    )
    parser.add_argument(
        "--single", action="store_true", help="one order per message (default: as the product)"
    )
    args = parser.parse_args(argv)
    n, seconds = (1500, 6.0) if args.quick else (6000, 20.0)
    with stack() as bench:
        summary = profile(
            bench,
            n=n,
            seconds=seconds,
            tag=args.tag,
            concurrency=args.concurrency,
            psp_delay_ms=args.psp_delay_ms,
            single=args.single,
        )
    print(f"{summary['samples']} busy samples, {summary['ops_per_s']:.0f} ops/s while sampled")
    for part, pct in summary["parts"].items():
        print(f"  {pct:5.1f} %  {part}")
    print("  on top of the stack:")
    for entry in summary["top_self"]:
        print(f"  {entry['pct']:5.1f} %  {entry['frame']}")
    path = RESULTS_DIR / f"profile-{args.tag}-latest.json"
    path.write_text(json.dumps({**summary, "cpus": os.cpu_count()}, indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
