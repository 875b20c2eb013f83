"""Recovery: seconds from a failure's end to work reaching the PSP again.

1. Postgres restarted (`pg_ctl restart -m immediate`: every connection dies, as in a
   crash) under a running web process and worker that hold pooled connections. From
   the moment Postgres accepts connections again, a shop webhook is sent (and sent
   again while the web answers 503, as a sender would); the figure is the time from
   Postgres back to the capture it causes arriving at the sandbox. No beat runs, so a
   sweep cannot hide a dropped task.
2. A worker SIGKILLed while its capture is held at the PSP (the sandbox applies it, then
   holds the answer 3 s); a new worker starts at once. The figure is the time from that
   restart (under the same node name, as a container restarted in its pod) to the
   operation recorded as succeeded: the new worker ends the leases its dead predecessor
   held and resumes them at once (worker incarnations, data/workers.py), schedules the
   resume of every other lease ending within one lease, and beat's short lease sweep
   (LEASE_SWEEP_SECONDS, 2 s) finds expired leases too; the resume reads the PSP first,
   finds the capture made, and sends nothing again. Measured twice: with beat at
   production's defaults (full sweep every 30 s), and with no beat at all (the
   restarted worker alone). Target: <= 10 s after the restart, with the 10 s lease.

Each is measured `rounds` times (1 with --quick); the median and the worst are kept.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
from devrig.devstack import wait_until

from bench.common import Row, Stack, stack
from bench.fixtures import synced_orders
from bench.traffic import klarna_id, shop_webhook

WORKER_ARGS = {"pool": "threads", "concurrency": 4}


def _captured(sandbox: str, order_id: str) -> bool:
    entries = httpx.get(
        f"{sandbox}/_sandbox/ledger", params={"order_id": klarna_id(order_id)}, timeout=10
    ).json()["entries"]
    return any(e["operation"] == "capture" for e in entries)


def _send(web: str, request: dict[str, Any]) -> int:
    try:
        return httpx.post(
            web + request["path"],
            content=request["body"].encode(),
            headers=request["headers"],
            timeout=5,
        ).status_code
    except httpx.HTTPError:
        return 0


def postgres_restart(bench: Stack, web: str, sandbox: str, tag: str) -> dict[str, float]:
    assert bench.postgres is not None, "needs the bench's own Postgres (not BENCH_DATABASE_URL)"
    secret = bench.env["SHOP_WEBHOOK_SECRETS"].split()[0]
    with bench.db() as conn:
        warm, order = synced_orders(conn, sandbox, f"rec-{tag}-", 2, shipped=False, requested=False)
    # Both processes hold pooled connections before the restart.
    assert _send(web, shop_webhook(secret, warm, version=2, shipped=True)) == 202
    wait_until(lambda: _captured(sandbox, warm), timeout=60, what="the warm-up capture")
    bench.postgres.restart_immediate()
    back = time.monotonic()
    request = shop_webhook(secret, order, version=2, shipped=True)
    attempts = 0
    while True:
        attempts += 1
        if _send(web, request) == 202:
            break
        if time.monotonic() - back > 60:
            raise TimeoutError("the web did not store the webhook within 60 s")
        time.sleep(0.1)
    stored = time.monotonic()
    wait_until(lambda: _captured(sandbox, order), timeout=120, interval=0.05, what="the capture")
    done = time.monotonic()
    return {
        "postgres_back_to_psp_s": done - back,
        "postgres_back_to_stored_s": stored - back,
        "webhook_attempts": attempts,
    }


def worker_killed(bench: Stack, sandbox: str, tag: str, name: str) -> tuple[dict[str, float], str]:
    from workers.tasks import reconcile_order

    with bench.db() as conn:
        (order,) = synced_orders(conn, sandbox, f"kill-{tag}-", 1, shipped=True, requested=True)
    httpx.post(
        f"{sandbox}/_sandbox/faults",
        json={
            "kind": "delay",
            "ms": 3000,
            "after_apply": True,
            "count": 1,
            "path_contains": "/captures",
        },
        timeout=10,
    ).raise_for_status()
    reconcile_order.delay(order)

    def status() -> str | None:
        with bench.db() as conn:
            row = conn.execute(
                "SELECT status FROM operations WHERE order_id = %s", (order,)
            ).fetchone()
        return None if row is None else str(row["status"])

    wait_until(lambda: status() == "sent", timeout=60, interval=0.02, what="the capture sent")
    wait_until(lambda: _captured(sandbox, order), timeout=60, interval=0.02, what="applied")
    bench.processes[name].kill()
    restarted = time.monotonic()
    # Restarted under the same node name, as a container restarted in its pod is.
    new_name = name
    bench.worker(new_name, **WORKER_ARGS)  # type: ignore[arg-type]
    wait_until(lambda: status() == "succeeded", timeout=180, interval=0.05, what="the resume")
    done = time.monotonic()
    entries = httpx.get(
        f"{sandbox}/_sandbox/ledger", params={"order_id": klarna_id(order)}, timeout=10
    ).json()["entries"]
    captures = sum(1 for e in entries if e["operation"] == "capture")
    if captures != 1:
        raise RuntimeError(f"expected exactly one capture at the PSP, found {captures}")
    # Includes the restarted worker's own start-up (interpreter, imports, broker).
    return {"restart_to_succeeded_s": done - restarted}, new_name


def run(*, quick: bool, kill: bool = True) -> tuple[list[Row], dict[str, Any]]:
    rounds = 1 if quick else 3
    restarts: list[dict[str, float]] = []
    kills: list[dict[str, float]] = []
    lone: list[dict[str, float]] = []
    with stack() as bench:
        sandbox = bench.sandbox()
        web = bench.web()
        worker = "worker"
        bench.worker(worker, **WORKER_ARGS)  # type: ignore[arg-type]
        for r in range(rounds):
            restarts.append(postgres_restart(bench, web, sandbox, f"{r}"))
            print(
                f"  round {r + 1} Postgres back -> capture at PSP "
                f"{restarts[-1]['postgres_back_to_psp_s']:.2f} s",
                flush=True,
            )
        if kill:
            # Beat at production's defaults (no RECONCILE_SWEEP_SECONDS override), then none.
            bench.start("beat", ["beat"])
            for label, results in (("beat at its defaults", kills), ("no beat", lone)):
                if label == "no beat":
                    bench.stop("beat")
                for r in range(rounds):
                    result, worker = worker_killed(bench, sandbox, f"{label[0]}{r}", worker)
                    results.append(result)
                    print(
                        f"  round {r + 1} worker SIGKILL, restarted -> operation succeeded "
                        f"{result['restart_to_succeeded_s']:.2f} s ({label})",
                        flush=True,
                    )
    rows = []
    back = [r["postgres_back_to_psp_s"] for r in restarts]
    rows.append(
        Row(
            "Postgres restarted -> capture at PSP, median",
            statistics.median(back),
            "s",
            None,
            "<= 5 s",
            statistics.median(back) <= 5,
        )
    )
    rows.append(Row("Postgres restarted -> capture at PSP, worst", max(back), "s"))
    for label, results in (("beat at its defaults", kills), ("no beat", lone)):
        if not results:
            continue
        resumed = [k["restart_to_succeeded_s"] for k in results]
        rows.append(
            Row(
                f"worker SIGKILLed mid-capture, restarted -> succeeded ({label}), worst",
                max(resumed),
                "s",
                None,
                "<= 10 s",
                max(resumed) <= 10,
            )
        )
    return rows, {
        "restarts": restarts,
        "kills": kills,
        "kills_without_beat": lone,
        "worker": WORKER_ARGS,
    }
