"""The web stays responsive while clients try to hold it (loopback only, bounded).

A real `ordersync web` (uvicorn with service/server.py's bounds; Postgres and Redis are
not needed for /healthz, so none are started) is measured twice in the same run:
/healthz latency with nobody else connected (the baseline), then while at once
- slowloris: connections sending one header line every second, never the end;
- header flood: connections sending a 16 MB header without its final CRLF;
- stalled bodies: authenticated POST /webhooks/adyen declaring 1 MiB − 1 and sending
  a few bytes, and unauthenticated ones (refused before their body);
- idle: connections that open and send nothing.
Each attacker reopens its connection when the server closes it, for the whole run. The
figures: /healthz p50/p99 under attack vs the baseline (target p99 < 50 ms), how many
attack connections the server closed, and the web process's memory before and after.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Row

P99_TARGET_MS = 50.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_web(port: int, header_timeout: float, body_timeout: float) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        # Unreachable on purpose: /healthz needs neither, and the web starts without them.
        "DATABASE_URL": "postgresql://bench@127.0.0.1:1/none",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "SHOP_WEBHOOK_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "ADYEN_HMAC_KEYS": "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
        "ADYEN_WEBHOOK_USERNAME": "adyen",
        "ADYEN_WEBHOOK_PASSWORD": "bench-password",
        "WEB_HEADER_TIMEOUT_SECONDS": str(header_timeout),
        "WEB_BODY_TIMEOUT_SECONDS": str(body_timeout),
        "LOG_LEVEL": "ERROR",
        "LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "web", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90  # a busy machine imports slowly
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("ordersync web did not start")


def _healthz_latencies(port: int, count: int, interval: float) -> list[float]:
    """Blocking probes from this process; the attackers run in another, so their
    event loop never delays a probe."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        answer = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
            while chunk := sock.recv(65536):
                answer += chunk
        # A probe that is not answered 200 counts as never answered.
        ok = answer.startswith(b"HTTP/1.1 200")
        latencies.append((time.perf_counter() - started) * 1000 if ok else float("inf"))
        time.sleep(interval)
    return latencies


class Attack:
    def __init__(self, port: int, until: float) -> None:
        self.port = port
        self.until = until
        self.closed_by_server = 0
        self.opened = 0
        self.answers: dict[str, int] = {}

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A new connection to the web (counted), or None after a short pause if refused."""
        try:
            connection = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            await asyncio.sleep(0.2)
            return None
        self.opened += 1
        return connection

    async def _hold(self, kind: str, first: bytes, drip: bytes | None, every: float) -> None:
        """One attacker: connect, send `first`, then `drip` every `every` seconds until
        the server closes the connection; then again, until the run ends."""
        while time.monotonic() < self.until:
            connection = await self._connect()
            if connection is None:
                continue
            reader, writer = connection
            try:
                if first:
                    writer.write(first)
                while time.monotonic() < self.until:
                    try:
                        data = await asyncio.wait_for(reader.read(1024), timeout=every)
                    except TimeoutError:
                        if drip:
                            writer.write(drip)
                        continue
                    status = data[9:12].decode(errors="replace") if data else "closed"
                    self.answers[f"{kind} {status}"] = self.answers.get(f"{kind} {status}", 0) + 1
                    self.closed_by_server += 1
                    break
            except (ConnectionError, OSError):
                self.closed_by_server += 1
                self.answers[f"{kind} reset"] = self.answers.get(f"{kind} reset", 0) + 1
            finally:
                writer.close()
            await asyncio.sleep(0.1)

    async def _flood(self) -> None:
        """A 16 MB header without its end, as fast as the server takes it."""
        chunk = b"a" * 65536
        while time.monotonic() < self.until:
            connection = await self._connect()
            if connection is None:
                continue
            reader, writer = connection
            try:
                writer.write(b"GET / HTTP/1.1\r\nx-flood: ")
                for _ in range(256):
                    writer.write(chunk)
                    await asyncio.wait_for(writer.drain(), timeout=5)
                    if time.monotonic() >= self.until:
                        break
                await asyncio.wait_for(reader.read(1024), timeout=5)
                self.answers["flood answered"] = self.answers.get("flood answered", 0) + 1
            except (ConnectionError, OSError, TimeoutError):
                self.answers["flood cut"] = self.answers.get("flood cut", 0) + 1
            self.closed_by_server += 1
            writer.close()
            await asyncio.sleep(0.1)

    def tasks(self, slowloris: int, floods: int, stalled: int, idle: int) -> list[Any]:
        auth = base64.b64encode(b"adyen:bench-password")
        stalled_auth = (
            b"POST /webhooks/adyen HTTP/1.1\r\nhost: bench\r\nauthorization: Basic "
            + auth
            + b"\r\ncontent-type: application/json\r\ncontent-length: 1048575\r\n\r\n{"
        )
        stalled_anon = (
            b"POST /webhooks/adyen HTTP/1.1\r\nhost: bench\r\ncontent-length: 1048575\r\n\r\n{"
        )
        jobs = []
        jobs += [
            self._hold("slowloris", b"GET / HTTP/1.1\r\nhost: bench\r\n", b"x-a: b\r\n", 1.0)
            for _ in range(slowloris)
        ]
        jobs += [self._flood() for _ in range(floods)]
        jobs += [self._hold("stalled", stalled_auth, b" ", 1.0) for _ in range(stalled // 2)]
        jobs += [self._hold("stalled_unauth", stalled_anon, b" ", 1.0) for _ in range(stalled // 2)]
        jobs += [self._hold("idle", b"", None, 1.0) for _ in range(idle)]
        return jobs


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _attack(port: int, seconds: float, sizes: tuple[int, int, int, int], out: Any) -> None:
    """In its own process: every attacker for `seconds`, then its counts on `out`."""

    async def main() -> Attack:
        attack = Attack(port, time.monotonic() + seconds)
        await asyncio.gather(*attack.tasks(*sizes), return_exceptions=True)
        return attack

    attack = asyncio.run(main())
    out.put({"opened": attack.opened, "closed": attack.closed_by_server, "answers": attack.answers})


def _measure(
    port: int, seconds: float, sizes: tuple[int, int, int, int], probes: int
) -> dict[str, Any]:
    baseline = _healthz_latencies(port, probes, 0.01)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    attacker = context.Process(target=_attack, args=(port, seconds, sizes, out))
    attacker.start()
    time.sleep(min(3.0, seconds / 4))  # let the attackers connect first
    during: list[float] = []
    while attacker.is_alive() and len(during) < probes * 20:
        during += _healthz_latencies(port, 10, 0.02)
    counts = out.get(timeout=60)
    attacker.join(30)
    return {"baseline": baseline, "during": during, **counts}


def run(
    quick: bool = False,
    *,
    seconds: float | None = None,
    sizes: tuple[int, int, int, int] | None = None,
    probes: int | None = None,
) -> tuple[list[Row], dict[str, Any]]:
    seconds = seconds or (8.0 if quick else 30.0)
    # slowloris, header floods, stalled bodies, idle connections (issue 16's run:
    # 300 slowloris, 8 floods of 16 MB, 100 stalled bodies, 1,500 idle)
    sizes = sizes or ((60, 4, 20, 200) if quick else (300, 8, 100, 1500))
    probes = probes or (100 if quick else 400)
    port = _free_port()
    web = start_web(port, header_timeout=5.0, body_timeout=10.0)
    try:
        rss_before = _rss_mib(web.pid)
        result = _measure(port, seconds, sizes, probes)
        time.sleep(1)
        rss_after = _rss_mib(web.pid)
        alive = web.poll() is None
    finally:
        web.terminate()
        web.wait(30)
    base, during = result["baseline"], result["during"]
    rows = [
        Row(
            "/healthz p99 under attack (baseline: idle)",
            _pct(during, 0.99),
            "ms",
            baseline=_pct(base, 0.99),
            target=f"< {P99_TARGET_MS:g} ms",
            met=_pct(during, 0.99) < P99_TARGET_MS,
        ),
        Row(
            "/healthz p50 under attack (baseline: idle)",
            statistics.median(during),
            "ms",
            baseline=statistics.median(base),
        ),
        Row(
            "attack connections closed by the server",
            result["closed"],
            "conns",
            baseline=result["opened"],
            target="most",
            met=result["closed"] > 0,
        ),
        Row(
            "web RSS after the run (baseline: before)",
            rss_after,
            "MiB",
            baseline=rss_before,
            target="process alive",
            met=alive,
        ),
    ]
    extra = {
        "seconds": seconds,
        "slowloris_floods_stalled_idle": sizes,
        "answers": result["answers"],
        "probes": {"baseline": len(base), "during": len(during)},
        "healthz_ms": {
            "baseline": {"p50": statistics.median(base), "p99": _pct(base, 0.99)},
            "during": {
                "p50": statistics.median(during),
                "p99": _pct(during, 0.99),
                "max": max(during),
            },
        },
    }
    return rows, extra
