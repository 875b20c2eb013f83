"""The worker's HTTP client (ordersync/http.py, workers/context.py): httpx's client over
the standard library's transport, with httpx's meaning of each failure for money."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import httpx
import pytest

from integrations.results import transport_failure
from ordersync.http import LeanTransport, WorkerClient, environment_proxies


class _Server:
    """A one-thread HTTP/1.1 server answering each request on a kept-alive connection;
    `close_after` answers then closes the connection (the server's idle timeout)."""

    def __init__(self, *, close_after: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.close_after = close_after
        self.requests = 0
        self.connections = 0
        self.closed = threading.Event()  # set once a connection has been closed
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while True:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if b"\r\n\r\n" not in data:
                        break
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(data) < length:
                        data += conn.recv(65536)
                    data = data[length:]
                    self.requests += 1
                    body = b'{"ok": true}'
                    conn.sendall(
                        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                        b"Set-Cookie: sid=1; Path=/\r\nCapture-Id: c-1\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    if self.close_after:
                        break
            self.closed.set()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def _client() -> WorkerClient:
    return WorkerClient(transport=LeanTransport(), timeout=httpx.Timeout(5, connect=2))


def test_a_request_and_its_answer_go_through_as_httpx_would(server: _Server) -> None:
    with _client() as client:
        for _ in range(3):
            response = client.post(
                f"http://127.0.0.1:{server.port}/orders/o-1/captures",
                content=b'{"captured_amount": 100}',
                headers={"Klarna-Idempotency-Key": "k-1"},
                auth=("user", "secret"),
            )
            assert (response.status_code, response.reason_phrase) == (201, "Created")
            assert response.json() == {"ok": True}
            assert response.headers["Capture-Id"] == "c-1"
        # One kept-alive connection, and no cookie kept from the answers.
        assert (server.requests, server.connections) == (3, 1)
        assert len(client.cookies.jar) == 0


def test_a_connection_the_server_closed_is_not_used_again() -> None:
    server = _Server(close_after=True)
    try:
        with _client() as client:
            url = f"http://127.0.0.1:{server.port}/x"
            assert client.post(url, content=b"{}").status_code == 201
            # The server's idle timeout closes the connection while it is idle; a FIN
            # still in flight when the next request leaves is another case (an outcome
            # that may have applied, settled by the PSP's idempotency key).
            assert server.closed.wait(5)
            assert client.post(url, content=b"{}").status_code == 201
        assert (server.requests, server.connections) == (2, 2)
    finally:
        server.close()


def test_nothing_listening_is_a_connect_error_never_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _client() as client, pytest.raises(httpx.ConnectError) as caught:
        client.post(f"http://127.0.0.1:{port}/x", content=b"{}")
    assert transport_failure(caught.value).maybe_applied is False


def test_a_silent_server_is_a_read_timeout_that_may_have_applied() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        client = WorkerClient(transport=LeanTransport(), timeout=httpx.Timeout(0.3, connect=2))
        with client, pytest.raises(httpx.ReadTimeout) as caught:
            client.post(f"http://127.0.0.1:{silent.getsockname()[1]}/x", content=b"{}")
        assert transport_failure(caught.value).maybe_applied is True
    finally:
        silent.close()


def test_a_proxy_in_the_environment_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    assert environment_proxies() is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert environment_proxies() is True


class _Closing:
    """A server that reads each request whole and then, by its script, answers it
    ("answer"), closes the connection without a byte of answer ("close"; "reset": with
    an RST) as an idle close crossing the request on the wire does, or sends the start
    of an answer and closes ("partial"). Each request it read is counted per connection."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.seen: list[int] = []  # the connection number of each request read
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        number = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            number += 1
            with conn:
                data = b""
                while self.script:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if b"\r\n\r\n" not in data:
                        break
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    while len(data) < length:
                        data += conn.recv(65536)
                    data = data[length:]
                    self.seen.append(number)
                    action = self.script.pop(0)
                    if action == "answer":
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                        continue
                    if action == "reset":
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    elif action == "partial":
                        conn.sendall(b"HTTP/1.1 20")
                    break

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("close", ["close", "reset"])
def test_a_reused_connection_closed_without_an_answer_is_resent_once_with_a_key(
    close: str,
) -> None:
    # The server's idle close crossed the second request: it had not answered a byte.
    # With an idempotency key the request goes once more, on a new connection (had the
    # server acted on it, the PSP replays its first answer to the same key).
    server = _Closing(["answer", close, "answer"])
    try:
        with _client() as client:
            url = f"http://127.0.0.1:{server.port}/x"
            keyed = {"Klarna-Idempotency-Key": "k-1"}
            assert client.post(url, content=b"{}", headers=keyed).status_code == 200
            assert client.post(url, content=b"{}", headers=keyed).status_code == 200
        assert server.seen == [1, 1, 2]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("script", "headers", "error"),
    [
        # No idempotency key: never sent twice; an outcome that may have applied.
        (["answer", "close"], {}, httpx.RemoteProtocolError),
        (["answer", "reset"], {}, httpx.ReadError),
        # The answer had begun: not a close crossing the request.
        (["answer", "partial"], {"Idempotency-Key": "k-1"}, httpx.RemoteProtocolError),
    ],
)
def test_a_close_without_a_key_or_after_an_answer_began_is_never_resent(
    script: list[str], headers: dict[str, str], error: type[httpx.HTTPError]
) -> None:
    server = _Closing([*script, "answer"])
    try:
        with _client() as client:
            url = f"http://127.0.0.1:{server.port}/x"
            assert client.post(url, content=b"{}", headers=headers).status_code == 200
            with pytest.raises(error) as caught:
                client.post(url, content=b"{}", headers=headers)
        assert transport_failure(caught.value).maybe_applied is True
        assert server.seen == [1, 1]
    finally:
        server.close()


def test_a_new_connection_closed_without_an_answer_is_not_resent() -> None:
    # Only a reused connection can have met the server's idle close: on a connection of
    # our own, a close without an answer is the server's doing, even with a key.
    server = _Closing(["close", "answer"])
    try:
        with _client() as client, pytest.raises(httpx.RemoteProtocolError):
            client.post(
                f"http://127.0.0.1:{server.port}/x",
                content=b"{}",
                headers={"Idempotency-Key": "k-1"},
            )
        assert server.seen == [1]
    finally:
        server.close()


def test_a_chunked_answer_and_an_answer_without_a_body_are_read_whole() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            for answer in answers:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        with _client() as client:
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
            got = [client.get(url) for _ in answers]
        assert [(r.status_code, r.content) for r in got] == [(200, b"{}"), (204, b""), (200, b"{}")]
    finally:
        listener.close()


class _Recording:
    """A socket whose writes are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def test_a_request_s_head_and_body_leave_in_one_write(server: _Server) -> None:
    # http.client writes the head and the body with a send each: two segments, and a
    # server woken twice for one request.
    from ordersync.http import _OneWrite

    conn = _OneWrite("127.0.0.1", server.port, timeout=5)
    conn.connect()
    assert conn.sock is not None
    recording = _Recording(conn.sock)
    conn.sock = recording  # type: ignore[assignment]
    try:
        conn.putrequest("POST", "/orders/o-1/captures", skip_accept_encoding=True)
        conn.putheader("Content-Length", "24")
        conn.send_whole(b'{"captured_amount": 100}')
        assert conn.getresponse().read() == b'{"ok": true}'
    finally:
        conn.sock = recording.sock
        conn.close()
    assert len(recording.writes) == 1
    assert recording.writes[0].startswith(b"POST /orders/o-1/captures HTTP/1.1\r\n")
    assert recording.writes[0].endswith(b'\r\n\r\n{"captured_amount": 100}')
