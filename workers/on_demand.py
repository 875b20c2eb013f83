"""A background thread that runs only while there is work for it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class OnDemandThread:
    """One daemon thread per process, started by the first piece of work and ended by
    its own loop once idle. Threads do not survive a fork, so a forked pool process
    starts its own on its first piece of work."""

    def __init__(self, name: str, run: Callable[[], None]) -> None:
        self._name = name
        self._run = run
        self._thread: threading.Thread | None = None
        self._pid = 0

    def ensure(self) -> None:
        """Starts the thread unless this process's is alive; call it under the owner's
        lock, the one the loop holds when it decides to end (see `ended`)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def ended(self) -> None:
        """The loop's last word, under the owner's lock: the next piece of work starts
        a new thread."""
        self._thread = None
