"""The Helm chart in helm/ordersync, rendered by real Helm (helm-python-sdk, no binary).

Each value set (the chart defaults and every file in helm/values-examples/) is rendered
once per session; the tests then assert what a platform team relies on rather than the
exact YAML, so the templates stay free to change shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ordersync"
EXAMPLES_DIR = REPO / "helm" / "values-examples"
DOCS = REPO / "docs" / "deployment.md"

RELEASE = "ordersync"
NAMESPACE = "shop"
# Helm's fullname drops the chart name when the release name already contains it.
FULLNAME = "ordersync"

# The oldest Kubernetes the chart's kubeVersion still admits that kubernetes-validate has
# schemas for, and the newest it ships: a field removed or renamed in between shows up.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

# Prometheus Operator CRDs: kubernetes-validate only knows built-in kinds, so these are
# checked by the dedicated tests below instead of by schema.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

# Contract section 2 plus the two deployment settings; split as the app reads them.
SECRET_SETTINGS = {
    "OPERATOR_TOKENS",
    "DATABASE_URL",
    "REDIS_URL",
    "SHOP_WEBHOOK_SECRETS",
    "SHOP_CALLBACK_SECRET",
    "KLARNA_USERNAME",
    "KLARNA_PASSWORD",
    "ADYEN_API_KEY",
    "ADYEN_HMAC_KEYS",
    "ADYEN_WEBHOOK_USERNAME",
    "ADYEN_WEBHOOK_PASSWORD",
    "OPERATOR_TOKEN",
}
PLAIN_SETTINGS = {
    "LOG_LEVEL",
    "LOG_FORMAT",
    "KLARNA_API_URL",
    "ADYEN_CHECKOUT_URL",
    "ADYEN_MERCHANT_ACCOUNT",
    "ADYEN_MODIFICATIONS_API",
    "ADYEN_PAL_URL",
    "SHOP_CALLBACK_URL",
    "RECONCILE_SWEEP_SECONDS",
}

ROLES = {"web", "worker", "beat"}


def _load_value_sets() -> dict[str, dict[str, Any]]:
    sets: dict[str, dict[str, Any]] = {"defaults": {}}
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        sets[path.stem] = yaml.safe_load(path.read_text()) or {}
    return sets


VALUE_SETS = _load_value_sets()


class Rendered:
    """One value set, rendered: the merged values and the manifests by kind."""

    def __init__(self, name: str, values: dict[str, Any], chart: helm.Chart) -> None:
        self.name = name
        self.user_values = values
        self.values = chart.merge_values(values)
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        self.manifests: list[dict[str, Any]] = []
        self.texts: list[tuple[dict[str, Any], str]] = []
        for path, text in files.items():
            if path.endswith("NOTES.txt"):
                continue
            for doc_text in re.split(r"^---\s*$", text, flags=re.MULTILINE):
                doc = yaml.safe_load(doc_text)
                if doc:
                    self.manifests.append(doc)
                    self.texts.append((doc, doc_text))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        matches = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def deployment(self, role: str) -> dict[str, Any]:
        return self.one("Deployment", f"{self.fullname}-{role}")

    fullname = FULLNAME

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for m in self.manifests:
            if m["kind"] in {"Deployment", "Job"}:
                yield m["metadata"]["name"], m["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def rendered_sets(chart: helm.Chart) -> dict[str, Rendered]:
    return {name: Rendered(name, values, chart) for name, values in VALUE_SETS.items()}


@pytest.fixture(params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, rendered_sets: dict[str, Rendered]) -> Rendered:
    return rendered_sets[request.param]


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def _hook_events(manifest: dict[str, Any]) -> set[str]:
    hooks = manifest["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return {h.strip() for h in hooks.split(",") if h.strip()}


# --- the chart as a whole ---------------------------------------------------------------


def test_value_sets_exist() -> None:
    # The three documented scenarios; a rename must update docs/deployment.md too.
    assert {"minimal-existing-secret", "production", "adyen-classic"} <= set(VALUE_SETS)


def test_every_value_set_is_documented() -> None:
    docs = DOCS.read_text()
    for name in VALUE_SETS:
        if name != "defaults":
            assert f"helm/values-examples/{name}.yaml" in docs, name


def test_lint_is_clean(rendered: Rendered) -> None:
    report = helm.lint(
        CHART, rendered.user_values, strict=True, namespace=NAMESPACE, kube_version="v1.29.0"
    )
    assert report["errors"] == []
    # Severity 1 is info ("icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_manifests_are_valid_kubernetes(rendered: Rendered) -> None:
    assert rendered.manifests
    problems = []
    for manifest in rendered.manifests:
        if manifest["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = "/".join(str(p) for p in error.absolute_path)
                problems.append(
                    f"{version} {manifest['kind']}/{manifest['metadata']['name']} "
                    f"at {where}: {error.message}"
                )
    assert problems == []


def test_names_are_unique(rendered: Rendered) -> None:
    keys = [(m["kind"], m["metadata"]["name"]) for m in rendered.manifests]
    assert len(keys) == len(set(keys))


def test_one_image_and_the_role_is_the_argument(rendered: Rendered) -> None:
    images = set()
    for _, pod in rendered.pod_specs():
        for container in _containers(pod):
            images.add(container["image"])
            # The image's entrypoint (tini -- ordersync) stays; only the role is chosen.
            assert "command" not in container
    assert len(images) == 1
    for role in ROLES:
        if role == "beat" and not rendered.values["beat"]["enabled"]:
            continue
        (container,) = rendered.deployment(role)["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] == role


# --- probes and termination -------------------------------------------------------------


def test_web_probes(rendered: Rendered) -> None:
    pod = rendered.deployment("web")["spec"]["template"]["spec"]
    (web,) = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for p in web["ports"]}
    assert port_names["http"] == 8000
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # Liveness must not depend on Postgres/Redis, or a database blip restarts every pod.
    assert web["livenessProbe"]["httpGet"]["path"] != "/readyz"
    assert web["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_worker_liveness_pings_its_own_celery_node(rendered: Rendered) -> None:
    (worker,) = rendered.deployment("worker")["spec"]["template"]["spec"]["containers"]
    if not rendered.values["worker"]["livenessProbe"]["enabled"]:
        assert "livenessProbe" not in worker
        return
    probe = worker["livenessProbe"]
    command = " ".join(probe["exec"]["command"])
    assert "celery -A workers.celery_app inspect ping" in command
    assert '"celery@$HOSTNAME"' in command
    assert probe["exec"]["command"][:2] == ["sh", "-c"]
    # Celery's own --timeout must expire before the kubelet gives up on the probe.
    timeout = int(re.search(r"--timeout (\d+)", command).group(1))
    assert timeout < probe["timeoutSeconds"]


def test_graceful_termination_outlasts_a_psp_call(rendered: Rendered) -> None:
    psp_timeout = 30
    worker = rendered.deployment("worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= 60
    web = rendered.deployment("web")["spec"]["template"]["spec"]
    (container,) = web["containers"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert web["terminationGracePeriodSeconds"] >= pre_stop + psp_timeout


def test_beat_is_a_singleton(rendered: Rendered) -> None:
    if not rendered.values["beat"]["enabled"]:
        pytest.skip("beat disabled")
    beat = rendered.deployment("beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    scaled = {
        h["spec"]["scaleTargetRef"]["name"] for h in rendered.of_kind("HorizontalPodAutoscaler")
    }
    assert beat["metadata"]["name"] not in scaled


def test_rolling_updates_keep_web_capacity(rendered: Rendered) -> None:
    strategy = rendered.deployment("web")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


# --- security ---------------------------------------------------------------------------


def test_pods_run_locked_down(rendered: Rendered) -> None:
    for name, pod in rendered.pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod.get("hostNetwork") is not True, name
        for container in _containers(pod):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc.get("privileged") is not True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc["capabilities"].get("add"), name


def test_writable_paths_are_emptydirs(rendered: Rendered) -> None:
    # With a read-only root filesystem, anything the app writes must land on a volume.
    for name, pod in rendered.pod_specs():
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in _containers(pod):
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert "emptyDir" in mounts["/tmp"], name
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            if "PROMETHEUS_MULTIPROC_DIR" in env:
                assert "emptyDir" in mounts[env["PROMETHEUS_MULTIPROC_DIR"]], name
            if "workingDir" in container:
                assert container["workingDir"] in mounts, name
    (worker,) = rendered.deployment("worker")["spec"]["template"]["spec"]["containers"]
    assert "PROMETHEUS_MULTIPROC_DIR" in {e["name"] for e in worker["env"]}


def test_resources_are_set(rendered: Rendered) -> None:
    for name, pod in rendered.pod_specs():
        for container in _containers(pod):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


# --- configuration and secrets ----------------------------------------------------------


def test_secrets_never_in_configmaps(rendered: Rendered) -> None:
    for configmap in rendered.of_kind("ConfigMap"):
        assert not SECRET_SETTINGS & set(configmap.get("data") or {}), configmap["metadata"]
    for name, pod in rendered.pod_specs():
        for container in _containers(pod):
            literal = {e["name"] for e in container.get("env") or [] if "value" in e}
            assert not SECRET_SETTINGS & literal, name


def test_secret_values_appear_only_in_secrets(rendered: Rendered) -> None:
    values = [
        str(v) for v in (rendered.values["secrets"]["values"] or {}).values() if str(v).strip()
    ]
    for manifest, text in rendered.texts:
        if manifest["kind"] == "Secret":
            continue
        for value in values:
            assert value not in text, f"a secret leaks into {manifest['kind']}"


# What each process reads (README "Security"): each pod holds these and no other secret.
SECRETS_BY_ROLE = {
    "web": {
        "DATABASE_URL",
        "REDIS_URL",
        "SHOP_WEBHOOK_SECRETS",
        "ADYEN_HMAC_KEYS",
        "ADYEN_WEBHOOK_USERNAME",
        "ADYEN_WEBHOOK_PASSWORD",
        "OPERATOR_TOKEN",
        "OPERATOR_TOKENS",
    },
    "worker": {
        "DATABASE_URL",
        "REDIS_URL",
        "SHOP_CALLBACK_SECRET",
        "KLARNA_USERNAME",
        "KLARNA_PASSWORD",
        "ADYEN_API_KEY",
    },
    "beat": {"DATABASE_URL", "REDIS_URL"},
}


def test_every_setting_reaches_every_long_running_pod(rendered: Rendered) -> None:
    fullname = rendered.fullname
    secret_name = rendered.values["secrets"]["existingSecret"] or fullname
    for role in ROLES:
        if role == "beat" and not rendered.values["beat"]["enabled"]:
            continue
        (container,) = rendered.deployment(role)["spec"]["template"]["spec"]["containers"]
        sources = container["envFrom"]
        assert {"configMapRef": {"name": fullname}} in sources, role
        # No whole Secret: each process gets the keys it reads, by name.
        assert not any("secretRef" in source for source in sources), role
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container.get("env") or []
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert set(refs) == SECRETS_BY_ROLE[role], role
        assert all(r["name"] == secret_name and r["key"] == k for k, r in refs.items()), role
    if not rendered.values["secrets"]["existingSecret"]:
        rendered.one("Secret", fullname)
    else:
        assert all(s["metadata"]["name"] != fullname for s in rendered.of_kind("Secret"))


def test_a_full_value_set_wires_every_contract_setting(rendered_sets: dict[str, Rendered]) -> None:
    # adyen-classic fills every setting, so every one must come out the other end, each
    # on its proper side.
    full = rendered_sets["adyen-classic"]
    configmap = full.one("ConfigMap", full.fullname)
    secret = full.one("Secret", full.fullname)
    assert set(configmap["data"]) == PLAIN_SETTINGS
    assert set(secret["data"]) == SECRET_SETTINGS


def test_chart_knows_the_same_secret_list(chart: helm.Chart) -> None:
    helpers = next(t["data"] for t in chart.templates if t["name"].endswith("_helpers.tpl"))
    block = re.search(r'define "ordersync.secretKeys" -}}\s*(.*?)\s*{{-', helpers, re.S)
    assert set(block.group(1).split()) == SECRET_SETTINGS
    assert set(chart.values["secrets"]["values"]) == SECRET_SETTINGS
    assert set(chart.values["config"]) == PLAIN_SETTINGS


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"ADYEN_API_KEY": "AQE-oops"}}, "config.ADYEN_API_KEY is a secret"),
        ({"config": {"DATABASE_URL": "postgresql://x"}}, "config.DATABASE_URL is a secret"),
        ({"config": {"ADYEN_MODIFICATIONS_API": "classic"}}, "ADYEN_PAL_URL must be set"),
        (
            {"secrets": {"existingSecret": "s", "values": {"OPERATOR_TOKEN": "t"}}},
            "either secrets.existingSecret or secrets.values",
        ),
        # values.schema.json: a typo fails the install instead of being silently ignored.
        ({"worker": {"concurency": 8}}, "'concurency' not allowed"),
        ({"worker": {"terminationGracePeriodSeconds": 30}}, "want 60"),
        ({"config": {"ADYEN_MODIFICATIONS_API": "soap"}}, "ADYEN_MODIFICATIONS_API"),
    ],
)
def test_misconfiguration_fails_at_render(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)
    # The refusal must not echo the secret it refused.
    assert "AQE-oops" not in str(caught.value)


def test_config_change_rolls_the_pods(
    chart: helm.Chart, rendered_sets: dict[str, Rendered]
) -> None:
    before = rendered_sets["defaults"].deployment("worker")
    after = Rendered("debug", {"config": {"LOG_LEVEL": "DEBUG"}}, chart).deployment("worker")
    key = "checksum/config"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_worker_pool_is_celerys_default_unless_set_and_lanes_inherit_it(
    chart: helm.Chart, rendered_sets: dict[str, Rendered]
) -> None:
    def args(rendered: Rendered, role: str) -> list[str]:
        return list(rendered.deployment(role)["spec"]["template"]["spec"]["containers"][0]["args"])

    assert "--pool" not in args(rendered_sets["defaults"], "worker")
    threads = Rendered("threads", {"worker": {"pool": "threads", "concurrency": 16}}, chart)
    for role in ("worker", "worker-callbacks"):
        got = args(threads, role)
        assert got[got.index("--pool") + 1] == "threads", role


# --- migrations -------------------------------------------------------------------------


def test_migration_job_runs_before_the_deployments_roll(rendered: Rendered) -> None:
    job = rendered.one("Job", f"{rendered.fullname}-migrate")
    assert {"pre-install", "pre-upgrade"} <= _hook_events(job)
    assert "before-hook-creation" in job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    for deployment in rendered.of_kind("Deployment"):
        # A Deployment that were itself a hook would roll before the migration finished.
        assert not _hook_events(deployment), deployment["metadata"]["name"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["activeDeadlineSeconds"] > 0


def test_migration_job_needs_nothing_the_release_creates_later(rendered: Rendered) -> None:
    # On a first install, hooks run before the release's own objects exist: whatever the
    # Job references must be an earlier hook or something that predates the release.
    job = rendered.one("Job", f"{rendered.fullname}-migrate")
    job_weight = int(job["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
    earlier_hooks = {
        (m["kind"], m["metadata"]["name"])
        for m in rendered.manifests
        if _hook_events(m) >= _hook_events(job)
        and int(m["metadata"]["annotations"].get("helm.sh/hook-weight", "0")) < job_weight
    }
    existing_secret = rendered.values["secrets"]["existingSecret"]
    release_objects = {
        (m["kind"], m["metadata"]["name"]) for m in rendered.manifests if not _hook_events(m)
    }

    def allowed(kind: str, name: str) -> bool:
        if (kind, name) in earlier_hooks:
            return True
        if kind == "Secret" and name == existing_secret:
            return True
        return (kind, name) not in release_objects

    pod = job["spec"]["template"]["spec"]
    if "serviceAccountName" in pod:
        assert allowed("ServiceAccount", pod["serviceAccountName"])
    (container,) = pod["containers"]
    for source in container.get("envFrom", []):
        for key, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            if key in source:
                assert allowed(kind, source[key]["name"]), source
    for env in container.get("env") or []:
        ref = env.get("valueFrom", {})
        if "secretKeyRef" in ref:
            assert allowed("Secret", ref["secretKeyRef"]["name"]), env
        if "configMapKeyRef" in ref:
            assert allowed("ConfigMap", ref["configMapKeyRef"]["name"]), env
    names = {e["name"] for e in container.get("env") or []}
    assert not SECRET_SETTINGS & {e["name"] for e in container.get("env") or [] if "value" in e}
    configured = {k for k, v in rendered.values["config"].items() if str(v) != ""}
    assert configured <= names


def test_migration_hook_secret_holds_only_the_database_url(
    rendered_sets: dict[str, Rendered],
) -> None:
    full = rendered_sets["adyen-classic"]
    hook_secret = full.one("Secret", f"{full.fullname}-migrate")
    assert set(hook_secret["data"]) == {"DATABASE_URL"}
    assert "hook-succeeded" in hook_secret["metadata"]["annotations"]["helm.sh/hook-delete-policy"]


# --- networking, scaling, disruption ----------------------------------------------------


def _pod_labels(rendered: Rendered, role: str) -> dict[str, str]:
    return rendered.deployment(role)["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_reaches_the_web_pods_only(rendered: Rendered) -> None:
    service = rendered.one("Service", rendered.fullname)
    assert _selects(service["spec"]["selector"], _pod_labels(rendered, "web"))
    assert not _selects(service["spec"]["selector"], _pod_labels(rendered, "worker"))
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_ingress_points_at_the_service(rendered: Rendered) -> None:
    ingresses = {i["metadata"]["name"]: i for i in rendered.of_kind("Ingress")}
    public = ingresses.pop(rendered.fullname, None)
    console = ingresses.pop(f"{rendered.fullname}-console", None)
    assert ingresses == {}
    assert (public is not None) == rendered.values["ingress"]["enabled"]
    assert (console is not None) == rendered.values["consoleIngress"]["enabled"]
    for ingress in (public, console):
        for rule in ingress["spec"]["rules"] if ingress else []:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend == {"name": rendered.fullname, "port": {"name": "http"}}
    for rule in public["spec"]["rules"] if public else []:
        for path in rule["http"]["paths"]:
            # The operator API, the console and /metrics are not for the internet.
            assert not path["path"].startswith(("/orders", "/metrics", "/console"))
            assert path["path"] != "/"
    # The console's own Ingress carries /console and nothing else.
    for rule in console["spec"]["rules"] if console else []:
        assert [p["path"] for p in rule["http"]["paths"]] == ["/console"]


def test_production_keeps_the_console_on_an_internal_ingress(
    rendered_sets: dict[str, Rendered],
) -> None:
    production = rendered_sets["production"]
    public = production.one("Ingress", production.fullname)
    console = production.one("Ingress", f"{production.fullname}-console")
    assert console["spec"]["ingressClassName"] != public["spec"]["ingressClassName"]
    assert console["spec"]["tls"]
    hosts = {r["host"] for r in public["spec"]["rules"]}
    assert hosts.isdisjoint(r["host"] for r in console["spec"]["rules"])


def test_hpa_targets_exist_and_own_the_replica_count(rendered: Rendered) -> None:
    for role in ("web", "worker"):
        deployment = rendered.deployment(role)
        hpas = [
            h
            for h in rendered.of_kind("HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        ]
        if rendered.values[role]["autoscaling"]["enabled"]:
            (hpa,) = hpas
            assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
            assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
            # A fixed replica count would fight the HPA on every helm upgrade.
            assert "replicas" not in deployment["spec"]
        else:
            assert hpas == []


def test_disruption_budgets_match_their_pods(rendered: Rendered) -> None:
    budgets = rendered.of_kind("PodDisruptionBudget")
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        matched = [r for r in ROLES if _selects(selector, _pod_labels(rendered, r))]
        assert matched in (["web"], ["worker"]), budget["metadata"]["name"]
        # maxUnavailable never blocks a node drain, whatever the replica count.
        assert "minAvailable" not in budget["spec"]


def test_production_has_the_full_set(rendered_sets: dict[str, Rendered]) -> None:
    prod = rendered_sets["production"]
    kinds = {m["kind"] for m in prod.manifests}
    assert {
        "Deployment",
        "Job",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds
    assert len(prod.of_kind("HorizontalPodAutoscaler")) == 2
    assert len(prod.of_kind("PodDisruptionBudget")) == 2
    assert (
        "@sha256:" in prod.deployment("web")["spec"]["template"]["spec"]["containers"][0]["image"]
    )


def test_network_policy(rendered_sets: dict[str, Rendered]) -> None:
    prod = rendered_sets["production"]
    policies = {p["metadata"]["name"]: p["spec"] for p in prod.of_kind("NetworkPolicy")}
    base = policies[prod.fullname]
    for role in ROLES:
        assert _selects(base["podSelector"]["matchLabels"], _pod_labels(prod, role))
    assert base["ingress"] == []
    egress_ports = {p["port"] for rule in base["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 5432, 6379}
    # HTTPS out: the worker alone, to the internet but not the cluster or the metadata
    # service.
    https = policies[f"{prod.fullname}-worker-egress"]
    assert _selects(https["podSelector"]["matchLabels"], _pod_labels(prod, "worker"))
    assert not _selects(https["podSelector"]["matchLabels"], _pod_labels(prod, "web"))
    (rule,) = https["egress"]
    assert rule["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert rule["to"][0]["ipBlock"]["except"], "not the cluster, not the metadata service"
    web = policies[f"{prod.fullname}-web"]
    assert _selects(web["podSelector"]["matchLabels"], _pod_labels(prod, "web"))
    assert not _selects(web["podSelector"]["matchLabels"], _pod_labels(prod, "worker"))
    (rule,) = web["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"], "production restricts who reaches the web pods"
    # On by default: a value set turns it off only by saying so.
    for name in VALUE_SETS:
        enabled = VALUE_SETS[name].get("networkPolicy", {}).get("enabled", True)
        assert bool(rendered_sets[name].of_kind("NetworkPolicy")) == enabled, name


def test_worker_metrics_listen_on_the_pod_address_only(rendered: Rendered) -> None:
    (container,) = rendered.deployment("worker")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--metrics-host") + 1] == "$(POD_IP)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_service_monitor_scrapes_the_web_service(rendered_sets: dict[str, Rendered]) -> None:
    prod = rendered_sets["production"]
    (monitor,) = prod.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = prod.one("Service", prod.fullname)
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert rendered_sets["defaults"].of_kind("ServiceMonitor") == []


def test_prometheus_rules(rendered_sets: dict[str, Rendered]) -> None:
    prod = rendered_sets["production"]
    (rule_set,) = prod.of_kind("PrometheusRule")
    assert rule_set["apiVersion"] == "monitoring.coreos.com/v1"
    rules = {r["alert"]: r for g in rule_set["spec"]["groups"] for r in g["rules"]}
    expected_metric = {
        "OrdersyncInboxBacklog": "ordersync_inbox_oldest_unprocessed_seconds",
        "OrdersyncPSPErrorRate": "ordersync_psp_requests_total",
        "OrdersyncOrdersFlagged": "ordersync_orders_flagged_total",
        "OrdersyncWorkerHeartbeatMissing": "ordersync_worker_heartbeat_timestamp_seconds",
    }
    for alert, metric in expected_metric.items():
        rule = rules[alert]
        assert metric in rule["expr"], alert
        assert f'namespace="{NAMESPACE}"' in rule["expr"], alert
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["labels"]["team"] == "checkout"
        assert rule["annotations"]["summary"]
        # Helm must have passed Prometheus' own template syntax through untouched.
        assert "<no value>" not in str(rule)
    assert "{{ $value" in rules["OrdersyncInboxBacklog"]["annotations"]["description"]
    assert 'outcome!~"' in rules["OrdersyncPSPErrorRate"]["expr"]
    assert rendered_sets["defaults"].of_kind("PrometheusRule") == []


def test_every_queue_has_a_worker_and_money_its_own(rendered: Rendered) -> None:
    from ordersync.jobs import Queue

    taken: dict[str, set[str]] = {}
    for deployment in rendered.of_kind("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        if args[0] != "worker":
            continue
        queues = set(args[args.index("--queues") + 1].split(","))
        assert queues <= {queue.name.lower() for queue in Queue}
        taken[deployment["metadata"]["name"]] = queues
    assert set().union(*taken.values()) == {queue.name.lower() for queue in Queue}
    # Reconciles share their workers with nothing that can pile up in front of them.
    money = [queues for queues in taken.values() if "reconcile" in queues]
    assert money and all(queues <= {"reconcile", "sweeps"} for queues in money)
    # A lane's pods are its Deployment's alone (selectors never overlap).
    selectors = [
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
        for d in rendered.of_kind("Deployment")
    ]
    assert len(selectors) == len(set(selectors))
