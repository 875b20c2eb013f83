"""The sandbox application: simulated PSP APIs plus the /_sandbox control endpoints."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from devrig.sandbox import adyen, klarna, shop
from devrig.sandbox.faults import FaultSpecError, parse_fault
from devrig.sandbox.runtime import SandboxRuntime
from devrig.sandbox.specs import (
    ADYEN_CHECKOUT_V71,
    ADYEN_PAYMENT_V68,
    KLARNA_OM_V1,
    SpecSet,
    load_spec,
)

log = logging.getLogger(__name__)

SPECS_ENV = "ORDERSYNC_VENDOR_SPECS"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_specs_dir() -> Path | None:
    """$ORDERSYNC_VENDOR_SPECS, else the workspace's shared vendor-specs folder if present."""
    configured = os.environ.get(SPECS_ENV)
    if configured:
        return Path(configured)
    candidate = _REPO_ROOT.parent / "shared" / "vendor-specs"
    return candidate if candidate.is_dir() else None


@dataclass
class SandboxConfig:
    klarna_username: str = "sandbox"
    klarna_password: str = "sandbox"
    specs_dir: Path | None = field(default_factory=default_specs_dir)
    strict_specs: bool = True
    # Seeds the random draw of faults armed with a probability below 1.
    fault_seed: int | None = None
    # Checks the signature of the events the shop receiver gets (SHOP_CALLBACK_SECRET).
    shop_callback_secret: str | None = None
    # Adyen: the X-API-Key it accepts, and where and how it sends notifications.
    adyen_api_key: str = "sandbox"
    adyen_webhook_url: str | None = None
    adyen_hmac_key: str | None = None
    adyen_webhook_username: str | None = None
    adyen_webhook_password: str | None = None
    # Several markets (contract §8): Klarna markets served under /klarna/<market>, each
    # with (username, password); Adyen merchant accounts, each with its API key and HMAC
    # key. Credentials of another market or account → 401.
    klarna_markets: dict[str, tuple[str, str]] = field(default_factory=dict)
    adyen_merchants: dict[str, str] = field(default_factory=dict)
    adyen_hmac_keys: dict[str, str] = field(default_factory=dict)


def _load_specs(specs_dir: Path | None) -> SpecSet:
    specs = SpecSet()
    if specs_dir is None:
        return specs
    klarna_file = specs_dir / KLARNA_OM_V1
    if not klarna_file.is_file():
        log.warning(
            "no %s in %s: Klarna request bodies are not spec-checked", KLARNA_OM_V1, specs_dir
        )
        return specs
    try:
        specs.add(klarna.PROVIDER, load_spec(klarna_file.resolve()))
        for provider, name in (
            (adyen.PROVIDER, ADYEN_CHECKOUT_V71),
            (adyen.CLASSIC, ADYEN_PAYMENT_V68),
        ):
            if (specs_dir / name).is_file():
                specs.add(provider, load_spec((specs_dir / name).resolve()))
            else:
                log.warning("no %s in %s: Adyen bodies are not spec-checked", name, specs_dir)
    except ImportError:
        log.warning("jsonschema is not installed: request bodies are not spec-checked")
    return specs


def create_app(config: SandboxConfig | None = None) -> Starlette:
    config = config or SandboxConfig()
    runtime = SandboxRuntime(
        specs=_load_specs(config.specs_dir),
        strict_specs=config.strict_specs,
        fault_seed=config.fault_seed,
    )
    klarna_state = klarna.KlarnaState(
        runtime,
        username=config.klarna_username,
        password=config.klarna_password,
        markets=config.klarna_markets,
    )
    notifier = adyen.Notifier(
        adyen.NotifierConfig(
            url=config.adyen_webhook_url,
            hmac_key=config.adyen_hmac_key,
            hmac_keys=dict(config.adyen_hmac_keys),
            username=config.adyen_webhook_username,
            password=config.adyen_webhook_password,
        )
    )
    adyen_state = adyen.AdyenState(
        runtime, api_key=config.adyen_api_key, notifier=notifier, merchants=config.adyen_merchants
    )
    app = Starlette(
        routes=[
            *control_routes(runtime),
            *klarna.setup_routes(klarna_state),
            *klarna.routes(klarna_state),
            *adyen.setup_routes(adyen_state),
            *adyen.routes(adyen_state),
            *shop.routes(shop.ShopReceiver(secret=config.shop_callback_secret)),
        ]
    )
    app.state.config = config
    app.state.runtime = runtime
    app.state.klarna = klarna_state
    app.state.adyen = adyen_state
    return app


def control_routes(runtime: SandboxRuntime) -> list[BaseRoute]:
    """Provider-neutral /_sandbox endpoints: health, reset, faults, ledger, request log."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def reset(request: Request) -> Response:
        runtime.reset()
        return Response(status_code=204)

    async def list_faults(request: Request) -> Response:
        return JSONResponse({"faults": runtime.faults.snapshot()})

    async def arm_fault(request: Request) -> Response:
        try:
            fault = parse_fault(await request.json())
        except ValueError as exc:  # FaultSpecError, or the body is not JSON at all
            detail = str(exc) if isinstance(exc, FaultSpecError) else "body is not valid JSON"
            return JSONResponse({"error": "bad_fault", "detail": detail}, status_code=400)
        runtime.faults.arm(fault)
        return JSONResponse(fault.to_json(), status_code=201)

    async def clear_faults(request: Request) -> Response:
        runtime.faults.clear()
        return Response(status_code=204)

    async def clear_fault(request: Request) -> Response:
        found = runtime.faults.remove(request.path_params["fault_id"])
        return Response(status_code=204 if found else 404)

    async def ledger(request: Request) -> Response:
        q = request.query_params
        entries = runtime.ledger.entries(
            provider=q.get("provider"), order_id=q.get("order_id"), operation=q.get("operation")
        )
        return JSONResponse({"entries": entries})

    async def requests(request: Request) -> Response:
        q = request.query_params
        entries = runtime.requests.entries(provider=q.get("provider"), order_id=q.get("order_id"))
        return JSONResponse({"requests": entries})

    return [
        Route("/_sandbox/health", health, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/faults", list_faults, methods=["GET"]),
        Route("/_sandbox/faults", arm_fault, methods=["POST"]),
        Route("/_sandbox/faults", clear_faults, methods=["DELETE"]),
        Route("/_sandbox/faults/{fault_id}", clear_fault, methods=["DELETE"]),
        Route("/_sandbox/ledger", ledger, methods=["GET"]),
        Route("/_sandbox/requests", requests, methods=["GET"]),
    ]
