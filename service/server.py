"""uvicorn's HTTP/1.1 protocol (httptools), with the bounds it does not have itself.

uvicorn bounds idle keep-alive (`timeout_keep_alive`) and, with `limit_concurrency`,
the work in progress; it does not bound how long a client may take to send its
headers or its body, how large the headers may grow (httptools buffers an unfinished
header line without limit) or how many there are. So a client could hold a
connection, and memory, for ever with one byte now and then. This subclass adds those
bounds at the protocol level, before any ASGI code runs:

- the request head (request line and headers) must arrive within
  `WEB_HEADER_TIMEOUT_SECONDS` of the connection opening or of the previous answer, in
  at most `MAX_HEAD_BYTES` bytes and `MAX_HEADERS` header lines (else `431`, or `408`
  on the clock, and the connection is closed);
- the body must arrive within `WEB_BODY_TIMEOUT_SECONDS` of the head; when it does
  not, the connection is closed, and the handler reading it sees the client gone.

It also writes an answer's head and body in one system call (`_HeadWithBody`): uvicorn
writes the head as soon as it is given, and that second write per answer was the
largest single cost of a webhook on the web process (docs/performance.md).

Why this and not another server: hypercorn and granian have a header read timeout,
but moving the web process to another server changes its worker model, its signals
and its log format for four timers; this class is about a hundred lines over uvicorn's
own protocol, and tests/service/test_server_bounds.py holds it to its behaviour.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ordersync.settings import get_settings

# The request line and headers together: 16 KiB, as h11 (uvicorn's other parser) and
# most proxies allow by default; our callers send a few hundred bytes.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _response_started(cycle: Any) -> bool:
    # A cycle that is gone writes nothing more through its transport.
    return cycle is not None and bool(cycle.response_started)


class _HeadWithBody:
    """The transport as one response cycle sees it: the head of the answer is held until
    its body is written, so that head and body leave in one write (one system call, one
    segment), as a small answer does in every other server. A head is never held past
    the current step of the event loop (a streaming answer's head goes out before its
    first chunk is ready), and an interim answer (100 Continue) is not held at all.

    The cycle is held by a weak reference: it holds this wrapper as its transport, and a
    strong one back made every answered request a reference cycle (the cycle, its scope,
    headers and event) that only the collector frees. At the collector's threshold those
    piled up to tens of thousands of objects, freed in one pause of the event loop that
    every request under way waited for (docs/performance.md, issue 20 round 5)."""

    __slots__ = ("_cycle", "_head_written", "_held", "_loop", "_transport")

    def __init__(
        self, transport: asyncio.Transport, cycle: Any, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._transport = transport
        self._cycle = weakref.ref(cycle)
        self._loop = loop
        self._held: bytes | None = None
        self._head_written = False

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._head_written and _response_started(self._cycle()):
            self._head_written = True
            self._held = data
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a deadline for the head and for the body, and bounded
    head size and header count."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout = settings.web_header_timeout_seconds
        self.body_timeout = settings.web_body_timeout_seconds
        self._deadline: asyncio.TimerHandle | None = None
        self._on_expiry: Any = None
        self._due = 0.0
        self._message_complete = False
        self._next_head(started=False)

    def _next_head(self, *, started: bool) -> None:
        self._in_head = True
        # Whether any byte of this head came: an idle connection is closed silently.
        self._head_started = started
        # Bytes received while the head is unfinished (the parser buffers them), and
        # bytes of the head as the parser hands it over (a whole head in one read).
        self._head_bytes = 0
        self._parsed_head_bytes = 0
        self._header_count = 0

    # -- the clock ---------------------------------------------------------------------

    # One timer per connection, moved lazily: a request arms and disarms the clock three
    # times, and a timer made and cancelled each time cost more than the rest of the
    # clock. A deadline later than the scheduled timer is only recorded: the timer, when
    # it fires, finds the deadline moved and waits again for what is left; a sooner one
    # reschedules it at once. Disarmed, the timer finds nothing to do.

    def _arm(self, seconds: float, on_expiry: Any) -> None:
        self._on_expiry = on_expiry
        self._due = self.loop.time() + seconds
        timer = self._deadline
        if timer is None or timer.when() > self._due:
            if timer is not None:
                timer.cancel()
            self._deadline = self.loop.call_at(self._due, self._clock)

    def _disarm(self) -> None:
        self._on_expiry = None

    def _stop_clock(self) -> None:
        self._on_expiry = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _clock(self) -> None:
        self._deadline = None
        on_expiry = self._on_expiry
        if on_expiry is None:
            return
        if self.loop.time() < self._due:
            self._deadline = self.loop.call_at(self._due, self._clock)
            return
        self._on_expiry = None
        on_expiry()

    def _head_expired(self) -> None:
        self._refuse(408 if self._head_started else None)

    def _body_expired(self) -> None:
        # The handler waiting for the body is told the client is gone (http.disconnect).
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, status: int | None) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        # An answer only where no handler is answering: while a head is being read.
        if (
            status is not None
            and self._in_head
            and (self.cycle is None or self.cycle.response_complete)
        ):
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                % (status, _REASONS[status])
            )
        self.transport.close()

    # -- the protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.status)
                return
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            # As uvicorn does (we serve no WebSockets: it logs and ignores the upgrade).
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        if self._in_head and data:
            self._head_started = True
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431)

    def _invalid(self) -> None:
        self._disarm()
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_complete = False
        self._next_head(started=True)

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            raise _Refused(431)
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > MAX_HEAD_BYTES:
            raise _Refused(431)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.body_timeout, self._body_expired)
        super().on_headers_complete()
        # The cycle's task has not run yet: it writes through the wrapper from the start.
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.transport, _HeadWithBody):
            cycle.transport = _HeadWithBody(self.transport, cycle, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._message_complete = True
        # The body is in: how long the answer takes is the handler's business.
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._message_complete:
            # Waiting for the next request: its head is on the clock (uvicorn's own
            # keep-alive timer closes an idle connection sooner).
            self._next_head(started=False)
            self._arm(self.header_timeout, self._head_expired)
        # else: answered before the body was read (refused); the body's clock runs on.
