"""The edge's connection bounds (service/server.py), on a real uvicorn server over
loopback: head size and header count, the head and body clocks, idle keep-alive, and
/healthz answered while slow and stalled clients hold connections (the small form of
`python -m bench edge`). Also: `ordersync web` runs uvicorn with them."""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from cli import main as cli
from ordersync.settings import Settings
from service import server as server_module
from service.server import MAX_HEAD_BYTES, MAX_HEADERS, BoundedHttpProtocol

HEAD_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
KEEP_ALIVE = 1
seen_disconnects: list[str] = []


async def tiny_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/body":
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen_disconnects.append(scope["path"])
                return
            if not message.get("more_body"):
                break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    patch = pytest.MonkeyPatch()
    patch.setattr(
        server_module,
        "get_settings",
        lambda: Settings(
            web_header_timeout_seconds=HEAD_TIMEOUT, web_body_timeout_seconds=BODY_TIMEOUT
        ),
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    config = uvicorn.Config(
        tiny_app,
        host="127.0.0.1",
        port=free,
        http=BoundedHttpProtocol,
        timeout_keep_alive=KEEP_ALIVE,
        log_config=None,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield free
    server.should_exit = True
    thread.join(10)
    patch.undo()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a timeout here means it never did). A reset
    is a close too: a server that closes with the client's late bytes unread makes its
    kernel answer them with RST."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def healthz(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return read_all(sock)


def test_a_head_without_its_end_is_cut_at_the_limit(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nx-flood: ")
        with pytest.raises(OSError):
            for _ in range(64):  # 4 MiB offered; the server stops reading at 16 KiB
                sock.sendall(b"a" * 65536)
        answer = b""
        with contextlib.suppress(OSError):  # reset: the server closed with unread data
            answer = read_all(sock)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431")


def test_a_complete_head_over_the_limit_is_refused(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nx-big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 431")


def test_too_many_headers_are_refused(port: int) -> None:
    headers = b"".join(b"x-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 431")


def test_a_normal_request_is_answered(port: int) -> None:
    headers = b"".join(b"x-%d: 1\r\n" % i for i in range(MAX_HEADERS - 3))
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n" + headers + b"\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 200")


def test_a_slow_head_is_cut_off_by_its_clock(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        for _ in range(3):  # slowloris: a header line now and then
            time.sleep(HEAD_TIMEOUT / 3)
            try:
                sock.sendall(b"x-a: b\r\n")
            except OSError:
                break
        answer = read_all(sock)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_a_silent_connection_is_closed(port: int) -> None:
    with connect(port) as sock:
        answer = read_all(sock)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_a_stalled_body_is_cut_off_and_the_handler_told(port: int) -> None:
    seen_disconnects.clear()
    with connect(port) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        assert read_all(sock) == b""
    deadline = time.monotonic() + 5
    while not seen_disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen_disconnects == ["/body"]


def test_an_idle_keep_alive_connection_is_closed(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        assert read_all(sock) == b""  # closed by the server, not by this test's timeout


def test_a_connection_sending_each_head_in_time_is_never_cut_by_an_earlier_clock(
    port: int,
) -> None:
    # The head and body clocks share one timer that is moved lazily: a timer set for an
    # earlier request's deadline must find the deadline moved, not cut this request.
    with connect(port) as sock:
        for _ in range(4):  # 1.2 s in all: more than two head clocks
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(HEAD_TIMEOUT * 0.6)


def test_a_slow_head_after_an_answer_is_cut_by_its_own_clock(port: int) -> None:
    # The head clock of a kept-alive connection runs from the previous answer, also when
    # the connection's one timer was set for an earlier deadline.
    with connect(port) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nok")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        time.sleep(HEAD_TIMEOUT * 0.6)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        answer = read_all(sock)
        cut = time.monotonic() - answered
    assert answer.startswith(b"HTTP/1.1 408")
    assert HEAD_TIMEOUT * 0.9 <= cut < HEAD_TIMEOUT + 0.4


def test_healthz_is_answered_while_slow_clients_hold_connections(port: int) -> None:
    """Slowloris, header flood and stalled bodies at once (bounded: 60 connections,
    about a second); every /healthz meanwhile is answered, and they are all closed."""
    held: list[socket.socket] = []
    try:
        for i in range(20):
            slow = connect(port)
            slow.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
            flood = connect(port)
            flood.sendall(b"GET / HTTP/1.1\r\nx-flood: " + b"a" * 8000)
            stalled = connect(port)
            stalled.sendall(
                b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n%d" % i
            )
            held += [slow, flood, stalled]
        answers = [healthz(port) for _ in range(20)]
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
        for sock in held:
            answer = read_all(sock)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:40]
    finally:
        for sock in held:
            sock.close()


def test_ordersync_web_runs_uvicorn_with_the_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: ran.update(kwargs))
    monkeypatch.setattr(
        cli,
        "_settings",
        lambda *required: Settings(database_url="postgresql://h/db", redis_url="redis://h:6379/0"),
    )
    assert cli.main(["web"]) == 0
    assert ran["http"] is BoundedHttpProtocol
    assert ran["timeout_keep_alive"] == 5
    assert ran["limit_concurrency"] is None  # idle connections must not starve /healthz


def test_answered_requests_leave_no_reference_cycle(port: int) -> None:
    """Each answered request is freed when it ends, not by the collector: garbage left
    for the collector piles up until its threshold and is then freed in one long pause
    of the event loop, which every request under way waits for (the receiver's p99)."""
    gc.collect()
    gc.disable()
    try:
        with connect(port) as sock:
            for _ in range(20):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.1)  # the server's side of the connection is closed too
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left.count("RequestResponseCycle") == 0, sorted(set(left))
