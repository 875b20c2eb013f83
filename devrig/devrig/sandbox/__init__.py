"""Simulated payment providers (Klarna OM v1 for now) for tests, demos and benchmarks.

`create_app(SandboxConfig(...))` gives a Starlette app to run under uvicorn; see
`devrig.sandbox.app` for the control endpoints under `/_sandbox`.
"""

from devrig.sandbox.app import SandboxConfig, create_app

__all__ = ["SandboxConfig", "create_app"]
