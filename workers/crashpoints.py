"""Named places where the fault suite may kill the worker (SIGKILL, no clean-up).

Inert unless ORDERSYNC_CRASH_POINTS is set, e.g. "before_psp_call:0.1,after_commit:0.05":
each named point then kills the whole worker process group with that probability, the
way an OOM kill or a node failure would. Production never sets it.
"""

from __future__ import annotations

import os
import random
import signal
from functools import cache

ENV = "ORDERSYNC_CRASH_POINTS"
POINTS = ("before_psp_call", "after_psp_call", "after_commit", "in_reenqueue")


@cache
def _armed() -> dict[str, float]:
    spec = os.environ.get(ENV, "")
    armed: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, probability = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {name!r}")
        armed[name] = float(probability or 1)
    return armed


def crash_point(name: str) -> None:
    probability = _armed().get(name)
    if probability is None or random.random() >= probability:
        return
    # The fault suite's log shows which point fired; then the process group dies at once.
    os.write(2, f'{{"event": "crash_point_fired", "point": "{name}"}}\n'.encode())
    os.killpg(os.getpgid(0), signal.SIGKILL)
