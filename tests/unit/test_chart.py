"""The Helm chart, rendered by the real helm: valid for Kubernetes, and refusing mistakes.

Every values file in helm/conveyor/ci/ (minimal, full — every option on — and
one per feature) renders manifests that pass strict schema validation for the
oldest and the newest Kubernetes the chart supports. The values ↔ settings
checks are in test_deploy_config.py.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401  (registers the metric families)
from streams.settings import Settings
from tests.support import chart

CI_VALUES = sorted((chart.CHART / "ci").glob("*-values.yaml"))
FULL = chart.CHART / "ci" / "full-values.yaml"
DEPLOYING = chart.ROOT / "docs" / "DEPLOYING.md"
SECRET = {"existingSecret": "conveyor"}


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = doc["spec"]["template"]["spec"]
    return pod


def _env(doc: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in _pod(doc)["containers"][0]["env"]}


# --- every values file renders valid manifests --------------------------------------


def test_ci_has_minimal_full_and_per_feature_values() -> None:
    names = {path.name.removesuffix("-values.yaml") for path in CI_VALUES}
    assert {"minimal", "full", "worker-groups", "autoscaling", "monitoring"} <= names
    assert {"network-policy", "metrics-off"} <= names


@pytest.mark.parametrize("kube_version", chart.KUBE_VERSIONS)
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_values_render_manifests_valid_for_kubernetes(values: Path, kube_version: str) -> None:
    docs = chart.render(files=[values], kube_version=kube_version)
    problems = [p for doc in docs for p in chart.schema_problems(doc, kube_version)]
    assert not problems, "\n".join(problems)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate resources: {names}"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_values_pass_helm_lint_strict(values: Path) -> None:
    assert chart.lint([values]) == ""


def test_full_values_switch_every_template_on() -> None:
    docs = chart.render(files=[FULL])
    kinds = {doc["kind"] for doc in docs}
    templates = [p.stem for p in (chart.CHART / "templates").glob("*.yaml")]
    expected = {
        "configmap": "ConfigMap",
        "deployment": "Deployment",
        "job-migrate": "Job",
        "job-topics": "Job",
        "networkpolicy": "NetworkPolicy",
        "pdb": "PodDisruptionBudget",
        "prometheusrule": "PrometheusRule",
        "scaledobject": "ScaledObject",
        "service-metrics": "Service",
        "serviceaccount": "ServiceAccount",
        "servicemonitor": "ServiceMonitor",
    }
    assert sorted(templates) == sorted(expected), "a new template: add it here and to full-values"
    assert kinds == set(expected.values())


def test_a_default_install_has_probes_metrics_and_the_metrics_service() -> None:
    docs = chart.render(SECRET)
    port = Settings().worker.metrics_port
    assert port > 0, "the container's default must turn metrics on"
    container = _pod(chart.one(docs, "Deployment"))["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = chart.one(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == port
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "worker"


def test_metrics_port_0_means_no_port_probe_or_service() -> None:
    docs = chart.render(files=[chart.CHART / "ci" / "metrics-off-values.yaml"])
    container = _pod(chart.one(docs, "Deployment"))["containers"][0]
    assert not {"ports", "livenessProbe", "readinessProbe"} & set(container)
    assert not chart.by_kind(docs, "Service")
    error = chart.render_error(
        {
            **SECRET,
            "config": {"worker": {"metrics_port": 0}},
            "metrics": {"serviceMonitor": {"enabled": True}},
        }
    )
    assert "config.worker.metrics_port > 0" in error


# --- the schema refuses unknown keys, naming them ------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCont": 3}, "'replicaCont'"),
        (
            {"config": {"kafak": {"bootstrap_servers": "k:9092"}}},
            "at '/config': additional properties 'kafak'",
        ),
        (
            {"secrets": {"llm": {"api_key": {"nmae": "x"}}}},
            "at '/secrets/llm/api_key': additional properties 'nmae'",
        ),
        ({"config": {"jobs": {"asset_proces": {"concurrency": 2}}}}, "'asset_proces'"),
        (
            {"config": {"jobs": {"asset_process": {"concurrency": 0}}}},
            "/config/jobs/asset_process/concurrency",
        ),
        ({"config": {"logging": {"level": "verbose"}}}, "/config/logging/level"),
        ({"workerGroups": {"a": {"jobTypes": ["asset.process"]}}}, "/workerGroups/a/jobTypes/0"),
        ({"workerGroups": {"a": {"replica": 2}}}, "'replica'"),
        ({"autoscaling": {"lagTreshold": 5}}, "'lagTreshold'"),
        ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ],
)
def test_the_schema_refuses_a_mistake_naming_it(values: dict[str, Any], named: str) -> None:
    error = chart.render_error({**SECRET, **values})
    assert "don't meet the specifications of the schema" in error
    assert named in error


# --- secrets ---------------------------------------------------------------------------


def test_rendering_without_a_dsn_fails() -> None:
    error = chart.render_error()
    assert "set existingSecret or secrets.postgres.dsn.name" in error


def test_existing_secret_holds_every_secret_and_a_named_one_overrides_it() -> None:
    docs = chart.render(
        {**SECRET, "secrets": {"llm": {"api_key": {"name": "openrouter", "key": "api-key"}}}}
    )
    for doc in chart.by_kind(docs, "Deployment") + chart.by_kind(docs, "Job"):
        env = _env(doc)
        refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
        assert refs["CONVEYOR_POSTGRES__DSN"] == {"name": "conveyor", "key": "postgres-dsn"}
        assert refs["CONVEYOR_SENTRY__DSN"] == {
            "name": "conveyor",
            "key": "sentry-dsn",
            "optional": True,
        }
        assert refs["CONVEYOR_LLM__API_KEY"] == {"name": "openrouter", "key": "api-key"}


def test_extra_env_and_env_from_reach_workers_and_hooks_but_cannot_shadow_a_setting() -> None:
    docs = chart.render(files=[FULL])
    for doc in chart.by_kind(docs, "Deployment") + chart.by_kind(docs, "Job"):
        container = _pod(doc)["containers"][0]
        assert "SSL_CERT_FILE" in _env(doc), doc["metadata"]["name"]
        assert {"configMapRef": {"name": "proxy-settings", "optional": True}} in container[
            "envFrom"
        ]
    extra = [{"name": "CONVEYOR_KAFKA__GROUP_ID", "value": "other"}]
    error = chart.render_error({**SECRET, "extraEnv": extra})
    assert "extraEnv sets CONVEYOR_KAFKA__GROUP_ID" in error


# --- image, pod metadata and placement -------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({}, "conveyor:0.1.0"),
        ({"repository": "r.example/c", "tag": "1.2"}, "r.example/c:1.2"),
        ({"digest": "sha256:" + "a" * 64}, "conveyor@sha256:" + "a" * 64),
        ({"tag": "1.2", "digest": "sha256:" + "b" * 64}, "conveyor:1.2@sha256:" + "b" * 64),
    ],
)
def test_image_by_tag_or_digest(image: dict[str, str], expected: str) -> None:
    docs = chart.render({**SECRET, "image": image})
    for doc in chart.by_kind(docs, "Deployment") + chart.by_kind(docs, "Job"):
        assert _pod(doc)["containers"][0]["image"] == expected


def test_pod_settings_apply_to_every_group_unless_the_group_sets_its_own() -> None:
    docs = chart.render(files=[FULL])
    ingest = chart.one(docs, "Deployment", "conveyor-ingest")
    light = chart.one(docs, "Deployment", "conveyor-light")
    assert _pod(light)["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert _pod(ingest)["nodeSelector"] == {"node.example.com/pool": "large"}
    assert _pod(light)["priorityClassName"] == "jobs"
    assert _pod(ingest)["priorityClassName"] == "jobs-heavy"
    assert "tolerations" in _pod(light) and "tolerations" not in _pod(ingest)
    assert _pod(light)["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert ingest["spec"]["template"]["metadata"]["labels"]["tier"] == "heavy"
    assert light["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    assert light["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "platform"
    assert ingest["spec"]["template"]["metadata"]["annotations"]["example.com/group"] == "ingest"
    resources = _pod(ingest)["containers"][0]["resources"]
    assert resources["limits"]["memory"] == "4Gi"
    # Hooks: the release-wide placement.
    for job in chart.by_kind(docs, "Job"):
        assert _pod(job)["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_a_config_change_rolls_the_workers() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = chart.one(chart.render(values), "Deployment")
        annotation: str = deployment["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        return annotation

    assert checksum(SECRET) != checksum({**SECRET, "config": {"chunking": {"size": 700}}})


# --- shutdown bound ----------------------------------------------------------------------


def test_a_grace_period_not_above_drain_plus_hard_exit_fails() -> None:
    error = chart.render_error({**SECRET, "terminationGracePeriodSeconds": 35})
    assert "terminationGracePeriodSeconds (35) must be greater than" in error
    assert "(35, worker group default)" in error
    groups = {
        "ingest": {"jobTypes": ["asset_process", "knowledge_graph_extract"], "dlqMirror": True},
        "light": {
            "jobTypes": ["crm_sync_pipelines", "crm_webhook", "message_send"],
            "config": {"worker": {"drain_timeout_s": 40}},
        },
    }
    error = chart.render_error({**SECRET, "workerGroups": groups})
    assert "(50, worker group light)" in error


# --- worker groups ----------------------------------------------------------------------

INGEST = ["asset_process", "knowledge_graph_extract"]
LIGHT = ["crm_sync_pipelines", "crm_webhook", "message_send"]


def _groups(**groups: dict[str, Any]) -> dict[str, Any]:
    return {**SECRET, "workerGroups": groups}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            _groups(
                a={"jobTypes": INGEST, "dlqMirror": True}, b={"jobTypes": [*LIGHT, "asset_process"]}
            ),
            "asset_process is in workerGroups.a and workerGroups.b.jobTypes",
        ),
        (
            _groups(a={"jobTypes": INGEST, "dlqMirror": True}, b={"jobTypes": LIGHT[:2]}),
            "config.jobs.message_send is enabled but no worker group lists it",
        ),
        (
            _groups(
                a={"jobTypes": INGEST, "dlqMirror": True}, b={"jobTypes": LIGHT, "dlqMirror": True}
            ),
            "exactly one worker group (dlqMirror: true), not 2",
        ),
        (
            _groups(a={"jobTypes": INGEST}, b={"jobTypes": LIGHT}),
            "exactly one worker group (dlqMirror: true), not 0",
        ),
        (
            _groups(a={"jobTypes": [*INGEST, *LIGHT, "probe"], "dlqMirror": True}),
            "workerGroups.a.jobTypes lists probe, which config.jobs.probe.enabled turns off",
        ),
        (
            _groups(a={"jobTypes": [*INGEST, *LIGHT], "dlqMirror": True}, b={}),
            "workerGroups.b runs nothing",
        ),
        (
            _groups(
                a={"jobTypes": INGEST, "config": {"jobs": {"asset_process": {"topic": "t"}}}},
                b={"jobTypes": LIGHT, "dlqMirror": True},
            ),
            "workerGroups.a.config.jobs.asset_process.topic cannot differ per worker group",
        ),
        (
            _groups(
                a={"jobTypes": INGEST, "config": {"kafka": {"dlq_topic": "d"}}},
                b={"jobTypes": LIGHT, "dlqMirror": True},
            ),
            "workerGroups.a.config.kafka.dlq_topic cannot differ per worker group",
        ),
    ],
)
def test_worker_group_mistakes_are_refused(values: dict[str, Any], message: str) -> None:
    assert message in chart.render_error(values)


def test_worker_groups_get_a_deployment_and_a_disruption_budget_each() -> None:
    docs = chart.render(files=[chart.CHART / "ci" / "worker-groups-values.yaml"])
    deployments = {d["metadata"]["name"]: d for d in chart.by_kind(docs, "Deployment")}
    assert deployments["conveyor-ingest"]["spec"]["replicas"] == 3
    assert deployments["conveyor-light"]["spec"]["replicas"] == 2
    selectors = [d["spec"]["selector"]["matchLabels"] for d in deployments.values()]
    assert selectors[0] != selectors[1], "each Deployment must own only its pods"
    budgets = {
        p["metadata"]["name"]: p["spec"]["selector"]["matchLabels"]
        for p in chart.by_kind(docs, "PodDisruptionBudget")
    }
    assert budgets == {
        name: d["spec"]["selector"]["matchLabels"] for name, d in deployments.items()
    }


# --- autoscaling (KEDA) -------------------------------------------------------------------


def test_autoscaling_makes_a_scaled_object_per_group_and_leaves_out_replicas() -> None:
    docs = chart.render(files=[FULL])
    ingest = chart.one(docs, "Deployment", "conveyor-ingest")
    assert "replicas" not in ingest["spec"]
    assert chart.one(docs, "Deployment", "conveyor-light")["spec"]["replicas"] == 2
    scaled = chart.one(docs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "conveyor-ingest",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
    kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
    jobs = Settings().jobs
    topics = [jobs.asset_process.topic, jobs.knowledge_graph_extract.topic]
    assert [t["metadata"]["topic"] for t in kafka] == [x for t in topics for x in (t, t + ".retry")]
    group_id = _env(ingest)["CONVEYOR_KAFKA__GROUP_ID"]["value"]
    for trigger in kafka:
        metadata = trigger["metadata"]
        assert metadata["consumerGroup"] == group_id
        assert metadata["bootstrapServers"] == "kafka-0.kafka:9092,kafka-1.kafka:9093"
        assert metadata["excludePersistentLag"] == "true"
        assert metadata["lagThreshold"] == "50"
        assert metadata["offsetResetPolicy"] == "earliest"
        assert metadata["sasl"] == "scram_sha512"
        assert trigger["authenticationRef"] == {"name": "kafka-auth"}
    assert [t["type"] for t in spec["triggers"]][-1] == "prometheus"
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]


def test_autoscaling_refuses_more_replicas_than_partitions() -> None:
    values = {**SECRET, "autoscaling": {"enabled": True, "maxReplicaCount": 7}}
    error = chart.render_error(values)
    assert "autoscaling.maxReplicaCount (7) is above config.kafka.topic_partitions (6)" in error
    values["config"] = {"kafka": {"topic_partitions": 12}}
    assert chart.one(chart.render(values), "ScaledObject")["spec"]["maxReplicaCount"] == 7
    group = {
        "jobTypes": [*INGEST, *LIGHT],
        "dlqMirror": True,
        "autoscaling": {"enabled": True, "maxReplicaCount": 9},
    }
    error = chart.render_error(_groups(all=group))
    assert "workerGroups.all.autoscaling.maxReplicaCount (9)" in error


# --- Prometheus Operator -------------------------------------------------------------------


def _exported_metric_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.update(sample.name for sample in family.samples)
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_alerts_use_metrics_the_worker_exports_and_each_has_a_runbook() -> None:
    docs = chart.render(files=[chart.CHART / "ci" / "monitoring-values.yaml"])
    rules = chart.one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    alerts = {rule["alert"] for rule in rules}
    assert alerts == {
        "ConveyorDeadLetters",
        "ConveyorJobsTimingOut",
        "ConveyorConsumerLagGrowing",
        "ConveyorNoPartitionsAssigned",
        "ConveyorEventLoopLag",
    }
    exported = _exported_metric_names()
    for rule in rules:
        expr = rule["expr"]
        used = set(re.findall(r"\b(conveyor_[a-z_]+)\b", expr))
        assert used <= exported, f"{rule['alert']} uses {used - exported}, not exported"
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), rule["alert"]
    lag = next(r for r in rules if r["alert"] == "ConveyorConsumerLagGrowing")
    assert "kafka_consumergroup_lag{consumergroup=~`conveyor`}" in lag["expr"]
    docs_text = DEPLOYING.read_text(encoding="utf-8")
    for alert in alerts:
        assert f"#### {alert}" in docs_text, f"{alert} has no runbook in docs/DEPLOYING.md"


def test_service_monitor_scrapes_the_metrics_service_with_the_worker_group() -> None:
    docs = chart.render(files=[FULL])
    monitor = chart.one(docs, "ServiceMonitor")
    service = chart.one(docs, "Service")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["relabelings"][0]["targetLabel"] == "worker_group"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    rule = chart.one(docs, "PrometheusRule")
    urls = [
        r.get("annotations", {}).get("runbook_url")
        for r in rule["spec"]["groups"][0]["rules"]
        if "alert" in r
    ]
    assert "https://git.example.com/conveyor/docs/DEPLOYING.md#conveyordeadletters" in urls


def test_no_partitions_alert_per_group_not_for_one_allowed_to_scale_to_zero() -> None:
    values = {
        **SECRET,
        "metrics": {"prometheusRule": {"enabled": True}},
        "workerGroups": {
            "ingest": {"jobTypes": INGEST, "autoscaling": {"enabled": True, "minReplicaCount": 0}},
            "light": {"jobTypes": LIGHT, "dlqMirror": True},
        },
    }
    rules = chart.one(chart.render(values), "PrometheusRule")["spec"]["groups"][0]["rules"]
    groups = [
        r["labels"]["worker_group"] for r in rules if r["alert"] == "ConveyorNoPartitionsAssigned"
    ]
    assert groups == ["light"]


# --- NetworkPolicy ---------------------------------------------------------------------------

MUST_NOT_REACH = [
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "127.0.0.1",
    "fd00::1",
    "fe80::1",
    "::1",
    "::ffff:10.0.0.1",
]


def _allowed(rule: dict[str, Any], address: str) -> bool:
    """Whether an egress rule's ipBlocks let ``address`` through (pure, no packet sent)."""
    ip = ipaddress.ip_address(address)
    for peer in rule["to"]:
        block = peer.get("ipBlock")
        if not block:
            continue
        cidr = ipaddress.ip_network(block["cidr"])
        if ip.version == cidr.version and ip in cidr:
            excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
            if not any(ip in e for e in excepted):
                return True
    return False


def test_network_policy_lets_out_only_dns_kafka_postgres_and_the_public_internet() -> None:
    docs = chart.render(files=[FULL])
    policy = chart.one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "conveyor",
        "app.kubernetes.io/instance": "conveyor",
    }
    port = Settings().worker.metrics_port
    assert [rule["ports"] for rule in policy["ingress"]] == [[{"port": port, "protocol": "TCP"}]]
    dns, kafka, postgres, internet, extra = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert kafka["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert kafka["ports"] == [{"port": 9092, "protocol": "TCP"}, {"port": 9093, "protocol": "TCP"}]
    assert postgres["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert {p["port"] for p in internet["ports"]} == {80, 443}
    for address in MUST_NOT_REACH:
        assert not _allowed(internet, address), address
    for address in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"):
        assert _allowed(internet, address), address
    for block in (p["ipBlock"] for p in internet["to"]):
        cidr = ipaddress.ip_network(block["cidr"])
        assert all(ipaddress.ip_network(e).subnet_of(cidr) for e in block["except"])  # type: ignore[arg-type]
    assert extra["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_network_policy_needs_to_know_where_kafka_and_postgres_are() -> None:
    error = chart.render_error({**SECRET, "networkPolicy": {"enabled": True}})
    assert "networkPolicy.kafka.to must say where the Kafka brokers are" in error
    values = {**SECRET, "networkPolicy": {"enabled": True, "kafka": {"to": [{"podSelector": {}}]}}}
    assert "networkPolicy.postgres.to must say where Postgres is" in chart.render_error(values)


# --- docs ------------------------------------------------------------------------------------


def _documented_values(schema: dict[str, Any]) -> Iterator[str]:
    """Every value a user sets, from the schema: down to the settings and Kubernetes objects."""
    defs = schema["$defs"]
    whole = {"config", "secrets", "resources", "object", "list", "stringMap"}

    def walk(node: dict[str, Any], path: str) -> Iterator[str]:
        while "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name in whole or (name == "autoscaling" and path.startswith("workerGroups")):
                yield path
                return
            node = defs[name]
        if "properties" in node:
            for key, sub in node["properties"].items():
                yield from walk(sub, f"{path}.{key}" if path else key)
        elif isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}.<name>")
        else:
            yield path

    yield from walk(schema, "")


def test_deploying_documents_every_value() -> None:
    schema = json.loads((chart.CHART / "values.schema.json").read_text(encoding="utf-8"))
    reference = DEPLOYING.read_text(encoding="utf-8").split("## Values reference", 1)[1]
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    cells = " ".join(row.split(" | ")[0] for row in rows)
    missing = []
    for path in _documented_values(schema):
        parent, _, leaf = path.rpartition(".")
        # `a.b`, or grouped in one row as `a.b` / `.c`, or `a.b`, `.c`.
        if f"`{path}`" not in cells and not (parent and f"`.{leaf}`" in cells and parent in cells):
            missing.append(path)
    assert not missing, f"docs/DEPLOYING.md, Values reference lacks: {missing}"
