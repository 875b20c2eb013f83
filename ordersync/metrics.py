"""Prometheus metrics shared by the web and worker processes."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

WEBHOOKS = Counter(
    "ordersync_webhooks_received_total", "Webhooks received", ["source", "outcome"]
)
PSP_REQUESTS = Counter(
    "ordersync_psp_requests_total", "PSP requests made", ["provider", "operation", "outcome"]
)
PSP_LATENCY = Histogram(
    "ordersync_psp_request_seconds", "PSP request latency", ["provider", "operation"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRIES = Counter("ordersync_operation_retries_total", "Operation retries scheduled", ["operation"])
FLAGGED = Counter("ordersync_orders_flagged_total", "Orders flagged", ["flag"])


def psp_request(provider: str, operation: str, outcome: str, seconds: float) -> None:
    PSP_REQUESTS.labels(provider=provider, operation=operation, outcome=outcome).inc()
    PSP_LATENCY.labels(provider=provider, operation=operation).observe(seconds)


class Metrics:
    """A narrow facade so handlers say what happened, not how it is counted."""

    def webhook(self, *, source: str, outcome: str) -> None:
        WEBHOOKS.labels(source=source, outcome=outcome).inc()
