"""Simulated payment providers (Klarna OM v1 for now) for tests, demos and benchmarks.

`create_app(SandboxConfig(...))` gives a Starlette app to run under uvicorn; see
`ordersync.sandbox.app` for the control endpoints under `/_sandbox`.
"""

from ordersync.sandbox.app import SandboxConfig, create_app

__all__ = ["SandboxConfig", "create_app"]
