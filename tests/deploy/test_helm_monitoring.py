"""The chart's monitoring: the worker's metrics port and PodMonitor, the alert rules and
the Grafana dashboard, checked against the metrics the app really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.test_helm import CHART, NAMESPACE, VALUE_SETS, Rendered, _selects

ORDERSYNC_METRIC = re.compile(r"\bordersync_[a-z_]+\b")


@pytest.fixture(scope="module")
def sets() -> Iterator[dict[str, Rendered]]:
    with helm.Chart.load(CHART) as chart:
        yield {name: Rendered(name, values, chart) for name, values in VALUE_SETS.items()}


def exported_metrics() -> set[str]:
    """Every series name the web and worker processes can expose."""
    import asyncio

    from ordersync import metrics
    from service import meta_routes as observability

    names = set()
    for collector in (
        metrics.WEBHOOKS,
        metrics.PSP_REQUESTS,
        metrics.PSP_LATENCY,
        metrics.RETRIES,
        metrics.FLAGGED,
        metrics.CONFIRMATION,
        metrics.CALLBACKS,
        metrics.HEARTBEAT,
        metrics.ACCOUNT_CHECK,
        metrics.ACCOUNT_CHECK_TIME,
    ):
        for family in collector.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
        kind = collector._type  # type: ignore[attr-defined]
        base = collector._name  # type: ignore[attr-defined]
        names.update(
            {
                "counter": [f"{base}_total"],
                "histogram": [f"{base}_bucket", f"{base}_count", f"{base}_sum"],
            }.get(kind, [base])
        )

    class Rows:
        async def fetchall(self) -> list[Any]:
            return []

        async def fetchone(self) -> dict[str, Any]:
            return {"backlog": 0, "oldest": 0.0, "parked": 0}

    class Conn:
        async def execute(self, *_: Any) -> Rows:
            return Rows()

    class Pool:
        def connection(self) -> Any:
            import contextlib

            @contextlib.asynccontextmanager
            async def connect() -> Any:
                yield Conn()

            return connect()

    class State:
        pool = Pool()
        probes = pool  # /metrics reads through the probes' own pool

    families = asyncio.run(observability.database_gauges(State()))  # type: ignore[arg-type]
    names.update(family.name for family in families)
    names.add("ordersync_database_up")
    return names


def test_worker_serves_metrics_on_a_named_port(sets: dict[str, Rendered]) -> None:
    for rendered in sets.values():
        (container,) = rendered.deployment("worker")["spec"]["template"]["spec"]["containers"]
        port = rendered.values["worker"]["metricsPort"]
        args = container["args"]
        assert args[args.index("--metrics-port") + 1] == str(port)
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        multiproc_dir = rendered.values["worker"]["prometheusMultiprocDir"]
        assert env["PROMETHEUS_MULTIPROC_DIR"] == multiproc_dir


def test_pod_monitor_scrapes_the_worker_pods(sets: dict[str, Rendered]) -> None:
    prod = sets["production"]
    (monitor,) = prod.of_kind("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    worker_labels = prod.deployment("worker")["spec"]["template"]["metadata"]["labels"]
    web_labels = prod.deployment("web")["spec"]["template"]["metadata"]["labels"]
    assert _selects(monitor["spec"]["selector"]["matchLabels"], worker_labels)
    assert not _selects(monitor["spec"]["selector"]["matchLabels"], web_labels)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert sets["defaults"].of_kind("PodMonitor") == []


def test_network_policy_lets_prometheus_reach_the_worker_metrics(
    sets: dict[str, Rendered],
) -> None:
    prod = sets["production"]
    policy = prod.one("NetworkPolicy", f"{prod.fullname}-worker-metrics")["spec"]
    worker_labels = prod.deployment("worker")["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["podSelector"]["matchLabels"], worker_labels)
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"], "production lets only its monitoring namespace in"


def test_alerts_use_metrics_the_app_exports(sets: dict[str, Rendered]) -> None:
    (rule_set,) = sets["production"].of_kind("PrometheusRule")
    rules = {r["alert"]: r for g in rule_set["spec"]["groups"] for r in g["rules"]}
    assert {
        "OrdersyncInboxBacklog",
        "OrdersyncPSPErrorRate",
        "OrdersyncOrdersFlagged",
        "OrdersyncWorkerHeartbeatMissing",
        "OrdersyncCallbacksBacklog",
    } <= set(rules)
    exported = exported_metrics()
    for alert, rule in rules.items():
        used = set(ORDERSYNC_METRIC.findall(rule["expr"]))
        assert used, alert
        assert used <= exported, (alert, used - exported)
        assert f'namespace="{NAMESPACE}"' in rule["expr"]
    # The outcomes the PSP error alert treats as fine are outcomes the app records.
    from integrations.results import Outcome

    ok = rules["OrdersyncPSPErrorRate"]["expr"].split('outcome!~"')[1].split('"')[0]
    assert set(ok.split("|")) == {o.value for o in Outcome} - {"transient"}


def test_grafana_dashboard_ships_behind_its_switch(sets: dict[str, Rendered]) -> None:
    prod = sets["production"]
    (config_map,) = [
        m
        for m in prod.of_kind("ConfigMap")
        if m["metadata"]["name"] == f"{prod.fullname}-dashboard"
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"]["grafana_folder"] == "Shop"
    dashboard = json.loads(config_map["data"]["ordersync.json"])
    assert dashboard["uid"] == "ordersync" and dashboard["panels"]
    exported = exported_metrics()
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"], panel["title"]
            used |= set(ORDERSYNC_METRIC.findall(target["expr"]))
    assert used <= exported, used - exported
    # Every alert's metric is on the dashboard, so a page has a graph to look at.
    assert {
        "ordersync_inbox_oldest_unprocessed_seconds",
        "ordersync_psp_requests_total",
        "ordersync_orders_flagged_total",
        "ordersync_worker_heartbeat_timestamp_seconds",
        "ordersync_callbacks_oldest_undelivered_seconds",
        "ordersync_snapshot_to_confirmation_seconds_bucket",
    } <= used
    assert [
        m
        for m in sets["defaults"].of_kind("ConfigMap")
        if m["metadata"]["name"].endswith("-dashboard")
    ] == []
