"""The worker's HTTP transport: httpx's client API over the standard library's
`http.client`, for the worker's PSP calls and shop callbacks.

httpx's own transport (httpcore and h11) spent a quarter of a worker's Python CPU per
operation (`python -m bench.profile`): request and response objects per layer, event
state machines, and a connection pool lock that 64 threads waiting on a slow PSP contend
for. `http.client` writes the request and parses the answer in a few calls. The client
around it is still `httpx.Client` (timeouts, auth, event hooks, mock transports in the
tests), so callers and the error classification (`integrations/results.py`) see httpx's
request, response and exceptions as before. A proxy named by the environment is
followed by httpx only through its own transport: workers/context.py keeps httpx's
then (`environment_proxies`).

What a transport must get right for money, as httpcore did:
- an error while connecting means nothing was sent (`ConnectError`, `ConnectTimeout`);
  any error after the request started to go out may have reached the PSP
  (`WriteError`, `ReadError`, `ReadTimeout`, `RemoteProtocolError`);
- a kept-alive connection the server has closed is never used: one whose socket is
  readable while idle (the server's FIN) or idle longer than the keep-alive expiry is
  dropped at checkout;
- only a request that could not be written on a reused connection is sent again, on a
  new one: the server cannot have acted on a request it did not receive whole;
- or one written on a reused connection that the server closed without a byte of an
  answer (its idle close crossing the request on the wire), when the request carries an
  idempotency key (`IDEMPOTENCY_HEADERS`): once, on a new connection, as Go's net/http
  does. Had the server acted on it, the PSP answers the resend with the first answer
  (that is what the key is for); a request without a key is never sent twice. A
  connection of our own, or an answer that had begun, is never resent.
"""

from __future__ import annotations

import functools
import http.client
import re
import select
import socket
import ssl
import threading
import time
import urllib.request
from typing import Any

import httpx

# A connection: (scheme, host, port).
_Key = tuple[str, str, int]

# The headers that make a request safe to send twice (the PSP replays its first answer):
# Klarna's, Adyen's (and the IETF draft's), and its older `X-` spelling.
IDEMPOTENCY_HEADERS = ("klarna-idempotency-key", "idempotency-key", "x-idempotency-key")


class _NoAnswer(ConnectionError):
    """The server closed (or reset) the connection before a byte of the answer came."""


class _Answer(http.client.HTTPResponse):
    """An answer whose absence is told apart: before its status line is read, the first
    byte is waited for (a peek into the reader's buffer, no extra read), and an end of
    the stream or a reset there is `_NoAnswer`; the rest is http.client's own `begin`."""

    def begin(self) -> None:
        try:
            first = self.fp.peek(1)
        except ConnectionResetError as exc:
            raise _NoAnswer(str(exc) or "connection reset before an answer") from exc
        if not first:
            raise _NoAnswer("Remote end closed connection without response")
        super().begin()


class _OneWrite(http.client.HTTPConnection):
    """http.client writes a request's head and its body with a `send` each: two writes,
    two TCP segments (TCP_NODELAY), and a server that reads the head alone wakes again
    for the body. `send_whole` holds what `endheaders` sends and writes it at once; a
    failed write is a request not sent, as before."""

    _held: list[bytes] | None = None

    def send(self, data: Any) -> None:
        held = self._held
        if held is not None and isinstance(data, bytes | bytearray):
            held.append(bytes(data))
            return
        super().send(data)

    def send_whole(self, body: bytes | None) -> None:
        self._held = []
        try:
            self.endheaders(body)
            whole = b"".join(self._held)
        finally:
            self._held = None
        super().send(whole)


class _OneWriteHTTPS(_OneWrite, http.client.HTTPSConnection):
    pass


class _Connection:
    __slots__ = ("conn", "idle_since")

    def __init__(self, conn: _OneWrite) -> None:
        self.conn = conn
        self.idle_since = 0.0


def _stale(entry: _Connection, now: float, expiry: float) -> bool:
    sock = entry.conn.sock
    if sock is None or now - entry.idle_since > expiry:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    # An idle HTTP/1.1 connection has nothing to read unless the server closed it.
    return bool(readable)


class LeanTransport(httpx.BaseTransport):
    """HTTP/1.1 over `http.client`, one request per connection at a time, connections
    kept alive per host and reused (at most `max_idle` idle per host)."""

    def __init__(
        self,
        *,
        max_idle: int = 10,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[_Key, list[_Connection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}", request=request)
        key = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        body = request.read()
        entry = self._checkout(key)
        reused = entry is not None
        if entry is None:
            entry = self._connect(key, timeouts, request)
        try:
            response = self._exchange(entry, request, body, timeouts, resend=reused)
        except _NotSent:
            entry.conn.close()
            if not reused:
                raise httpx.WriteError("the request could not be sent", request=request) from None
            # A kept-alive connection closed under us before the request went out whole:
            # the server has not seen it.
            return self._once_more(key, timeouts, request, body)
        except _Resend:
            # Closed by the server without a byte of answer, with an idempotency key.
            return self._once_more(key, timeouts, request, body)
        return response

    def _once_more(
        self,
        key: _Key,
        timeouts: dict[str, float | None],
        request: httpx.Request,
        body: bytes,
    ) -> httpx.Response:
        """The request sent a second time, on a connection of its own; a second failure
        to send it (or a second close without an answer) is the caller's error."""
        entry = self._connect(key, timeouts, request)
        try:
            return self._exchange(entry, request, body, timeouts)
        except _NotSent as exc:
            entry.conn.close()
            raise httpx.WriteError(str(exc.__cause__ or exc), request=request) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for entries in idle.values():
            for entry in entries:
                entry.conn.close()

    # -- connections ------------------------------------------------------------------

    def _checkout(self, key: _Key) -> _Connection | None:
        now = time.monotonic()
        while True:
            with self._lock:
                entries = self._idle.get(key)
                if not entries:
                    return None
                entry = entries.pop()
            if not _stale(entry, now, self._expiry):
                return entry
            entry.conn.close()

    def _checkin(self, key: _Key, entry: _Connection) -> None:
        entry.idle_since = time.monotonic()
        with self._lock:
            if not self._closed:
                entries = self._idle.setdefault(key, [])
                if len(entries) < self._max_idle:
                    entries.append(entry)
                    return
        entry.conn.close()

    def _connect(
        self, key: _Key, timeouts: dict[str, float | None], request: httpx.Request
    ) -> _Connection:
        scheme, host, port = key
        connect = timeouts.get("connect")
        conn: _OneWrite
        if scheme == "https":
            context = self._ssl or httpx.create_ssl_context()
            conn = _OneWriteHTTPS(host, port, timeout=connect, context=context)
        else:
            conn = _OneWrite(host, port, timeout=connect)
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except OSError as exc:
            conn.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.response_class = _Answer
        return _Connection(conn)

    # -- one exchange -----------------------------------------------------------------

    def _exchange(
        self,
        entry: _Connection,
        request: httpx.Request,
        body: bytes,
        timeouts: dict[str, float | None],
        *,
        resend: bool = False,
    ) -> httpx.Response:
        """`resend`: the connection was reused, so a close without an answer may be the
        server's idle close crossing the request (`_Resend` if the request may go twice)."""
        conn = entry.conn
        assert conn.sock is not None
        _set_timeout(conn.sock, timeouts.get("write"))
        try:
            conn.putrequest(
                request.method,
                request.url.raw_path.decode("ascii"),
                skip_host=True,
                skip_accept_encoding=True,
            )
            for name, value in request.headers.raw:
                if name.lower() == b"transfer-encoding":
                    # The body was read whole above: sent with its length, not chunked.
                    conn.putheader(b"Content-Length", str(len(body)).encode())
                    continue
                conn.putheader(name, value)
            conn.send_whole(body or None)
        except (OSError, http.client.HTTPException) as exc:
            raise _NotSent from exc
        try:
            _set_timeout(conn.sock, timeouts.get("read"))
            answer = conn.getresponse()
            content = answer.read()
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except _NoAnswer as exc:
            conn.close()
            if resend and _idempotent(request):
                raise _Resend from exc
            if isinstance(exc.__cause__, ConnectionResetError):
                raise httpx.ReadError(str(exc), request=request) from exc
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except http.client.HTTPException as exc:
            conn.close()
            raise httpx.RemoteProtocolError(
                str(exc) or type(exc).__name__, request=request
            ) from exc
        except OSError as exc:
            conn.close()
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        extensions: dict[str, Any] = {
            "http_version": b"HTTP/1.1",
            "reason_phrase": answer.reason.encode("latin-1", "replace"),
        }
        response = httpx.Response(
            answer.status,
            headers=answer.getheaders(),
            stream=httpx.ByteStream(content),
            request=request,
            extensions=extensions,
        )
        if answer.will_close:
            conn.close()
        else:
            self._checkin(_key_of(request), entry)
        return response


def _set_timeout(sock: socket.socket, timeout: float | None) -> None:
    # Each settimeout is a system call (the socket's blocking mode set again); the
    # worker's write and read timeouts are one figure, kept across requests.
    if sock.gettimeout() != timeout:
        sock.settimeout(timeout)


class _NotSent(Exception):
    """The request did not go out whole: the server cannot have acted on it."""


class _Resend(Exception):
    """A reused connection closed without a byte of the answer to a request that carries
    an idempotency key: it may be sent once more, on a new connection."""


def _idempotent(request: httpx.Request) -> bool:
    headers = request.headers
    return any(headers.get(name) for name in IDEMPOTENCY_HEADERS)


def _key_of(request: httpx.Request) -> _Key:
    url = request.url
    return (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))


def environment_proxies() -> bool:
    """Whether the environment names an HTTP proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY,
    any case), which httpx follows only through its own transport."""
    proxies = urllib.request.getproxies_environment()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


class _NoCookies(httpx.Cookies):
    """A jar that never takes a cookie: nothing to send, nothing to read back."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class WorkerClient(httpx.Client):
    """`httpx.Client` without a cookie jar. The PSPs' APIs and the shop's callback
    endpoint authenticate every request on its own and set no session; and one client
    serves every account, so a cookie one account's answer set would go out with
    another account's requests to the same host. Reading each answer's headers into a
    jar (through `email.message` objects) was also a twentieth of the worker's CPU per
    operation."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: httpx._types.CookieTypes) -> None:
        raise TypeError("the worker's HTTP client keeps no cookies")


_NO_COOKIES = _NoCookies()


# A path made only of unreserved characters and slashes, with no dot segment: httpx
# keeps it exactly as it is (nothing to escape, nothing to normalize).
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+")


@functools.lru_cache(maxsize=64)
def _parsed(base: str) -> httpx.URL:
    return httpx.URL(base)


def url_at(base: str, path: str = "") -> httpx.URL:
    """`httpx.URL(base + path)`, with the base parsed once per process. httpx parses a
    URL given as text on every request (a check of each character, the escapes of
    each part): two per operation (the PSP call, the shop's callback), a twentieth of
    a worker's Python CPU per operation (`bench.roundtrips --cprofile`). A path that
    is not plain, or a base with a query or fragment, is parsed as text, as before;
    tests/core/test_http_url.py holds the result equal to httpx's own parse."""
    root = _parsed(base)
    if not path:
        return root
    ref = root._uri_reference
    if ref.query is not None or ref.fragment is not None or not _PLAIN_PATH.fullmatch(path):
        return httpx.URL(base + path)
    url = httpx.URL(root)
    url._uri_reference = ref._replace(path=ref.path + path)
    return url
