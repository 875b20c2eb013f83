"""A TCP proxy that misbehaves on command: delays answers, resets the connection after
the request was sent (the PSP acted, the client never hears), or swallows everything."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading


class FaultProxy:
    MODES = ("pass", "delay", "reset_after_send", "blackhole")

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.mode = "pass"
        self.delay_seconds = 0.0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-proxy")

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def set(self, mode: str, delay_seconds: float = 0.0) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.delay_seconds = mode, delay_seconds

    def stop(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "blackhole":
            with contextlib.suppress(Exception):
                while await client_r.read(65536):
                    pass
            client_w.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(client_w)
            return
        upstream = asyncio.create_task(self._pipe(client_r, up_w))
        try:
            while True:
                chunk = await up_r.read(65536)
                if not chunk:
                    break
                if self.mode == "reset_after_send":
                    _reset(client_w)  # the upstream answered: the effect happened
                    break
                if self.mode == "delay" and self.delay_seconds:
                    await asyncio.sleep(self.delay_seconds)
                client_w.write(chunk)
                await client_w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            upstream.cancel()
            up_w.close()
            with contextlib.suppress(Exception):
                client_w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close sends RST instead of FIN, as a crashed middlebox would.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
