"""A small HTTP/1.1 load generator on raw asyncio streams, run in its own process.

httpx spends more CPU per request than the servers under test do, which on two cores
would measure the client. This one writes pre-built requests on keep-alive connections
and reads `Content-Length` answers, nothing more: one core gives it well over ten
thousand requests a second, so the server is what limits.

`python -m bench.loadgen SPEC.json REQUESTS.jsonl OUT.json`: SPEC has `host`, `port`,
`concurrency`, `rate` (requests per second, open loop; null: closed loop, each
connection sends its next request when the answer came), `max_seconds` and `warmup`
(the first requests, sent and not recorded). Each line of REQUESTS is
`{"method", "path", "headers", "body", "tag"}`. Bounded in count (the lines) and time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Request:
    tag: str
    raw: bytes


@dataclass
class Sample:
    tag: str
    scheduled: float  # wall clock the request was due (open loop) or sent (closed loop)
    sent: float  # wall clock its first byte was written
    latency: float  # seconds from sending to the whole answer read
    status: int


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return status


def build(host: str, port: int, item: dict[str, Any]) -> Request:
    body = item.get("body", "")
    data = body.encode() if isinstance(body, str) else bytes(body)
    headers = {
        "host": f"{host}:{port}",
        "content-length": str(len(data)),
        **{k.lower(): v for k, v in (item.get("headers") or {}).items()},
    }
    head = (
        f"{item.get('method', 'POST')} {item['path']} HTTP/1.1\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    return Request(str(item.get("tag", "")), head.encode() + data)


async def run(spec: dict[str, Any], requests: list[Request]) -> dict[str, Any]:
    host, port = spec.get("host", "127.0.0.1"), int(spec["port"])
    concurrency = int(spec.get("concurrency", 32))
    rate = spec.get("rate")
    max_seconds = float(spec.get("max_seconds", 60))
    warmup = int(spec.get("warmup", 0))
    connections: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(concurrency):
        connections.put_nowait(Connection(host, port))
    samples: list[Sample] = []
    errors = 0

    async def one(request: Request, scheduled: float, record: bool) -> None:
        nonlocal errors
        conn = await connections.get()
        try:
            sent = time.time()
            start = time.perf_counter()
            status = await conn.request(request.raw)
            latency = time.perf_counter() - start
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            conn.writer = None
            return
        finally:
            connections.put_nowait(conn)
        if record:
            samples.append(Sample(request.tag, scheduled or sent, sent, latency, status))

    # Warm-up: closed loop, not recorded.
    for chunk in range(0, warmup, concurrency):
        await asyncio.gather(*(one(r, 0, False) for r in requests[chunk : chunk + concurrency]))
    measured = requests[warmup:]
    started = time.perf_counter()
    deadline = started + max_seconds
    if rate:
        interval = 1.0 / float(rate)
        tasks = []
        wall0 = time.time()
        for i, request in enumerate(measured):
            due = started + i * interval
            if due > deadline:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(request, wall0 + i * interval, True)))
        await asyncio.gather(*tasks)
    else:
        queue = iter(measured)

        async def loop() -> None:
            for request in queue:
                if time.perf_counter() > deadline:
                    return
                await one(request, 0, True)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    while not connections.empty():
        conn = connections.get_nowait()
        if conn.writer is not None:
            conn.writer.close()
    return {
        "elapsed": elapsed,
        "count": len(samples),
        "errors": errors,
        "samples": [[s.tag, s.scheduled, s.sent, s.latency, s.status] for s in samples],
    }


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0]).read())  # noqa: SIM115
    with open(argv[1]) as lines:
        requests = [
            build(spec.get("host", "127.0.0.1"), int(spec["port"]), json.loads(line))
            for line in lines
            if line.strip()
        ]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(spec, requests))
    with open(argv[2], "w") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
