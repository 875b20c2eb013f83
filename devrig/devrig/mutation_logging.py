"""A pytest plugin for the mutation run's tests (`-p devrig.mutation_logging`, pyproject.toml
`[tool.mutmut]`): the service's own log configuration, JSON lines with plain tracebacks
(ordersync/logging.py), instead of structlog's development default.

structlog's default renders a logged exception with rich, printing every frame's local
variables; under mutmut's trampolines one ledger test that logs an exception per attempt
took 37 s of a mutant's time for this alone (0.4 s with the service's renderer). The
service never renders logs that way, so the tests see the lines production writes.
"""

from __future__ import annotations

import pytest
import structlog

from ordersync.logging import configure_logging


def pytest_configure(config: pytest.Config) -> None:
    del config
    configure_logging("INFO", "json")
    # Tests that read log events reconfigure structlog for a while (structlog.testing);
    # a logger cached on first use would keep writing past their capture.
    structlog.configure(cache_logger_on_first_use=False)
