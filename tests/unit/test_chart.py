"""The Helm chart, rendered by the real helm: valid for Kubernetes, and refusing mistakes.

Every values file in helm/conveyor/ci/ (minimal, full — every option on — and
one per feature) renders manifests that pass strict schema validation for the
oldest and the newest Kubernetes the chart supports. Worker groups and
autoscaling, monitoring and the NetworkPolicy have their own test_chart_*
files; the values ↔ settings checks are in test_deploy_config.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.settings import ExtractSettings, Settings
from tests.support import chart

CI_VALUES = sorted((chart.CHART / "ci").glob("*-values.yaml"))
FULL = chart.CHART / "ci" / "full-values.yaml"
DEPLOYING = chart.ROOT / "docs" / "DEPLOYING.md"
# The worker process and multiprocessing's resource tracker, above their
# measured ~125 MB (docs/BENCHMARKS.md, the memory table).
WORKER_BYTES = 160 * 2**20
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


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
        "console": "Ingress",  # and a Deployment and a Service
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
    docs = chart.render(chart.SECRET)
    port = Settings().worker.metrics_port
    assert port > 0, "the container's default must turn metrics on"
    container = chart.pod_spec(chart.one(docs, "Deployment"))["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = chart.one(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == port
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "worker"


def test_metrics_port_0_means_no_port_probe_or_service() -> None:
    docs = chart.render(files=[chart.CHART / "ci" / "metrics-off-values.yaml"])
    container = chart.pod_spec(chart.one(docs, "Deployment"))["containers"][0]
    assert not {"ports", "livenessProbe", "readinessProbe"} & set(container)
    assert not chart.by_kind(docs, "Service")
    error = chart.render_error(
        {
            **chart.SECRET,
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
    error = chart.render_error({**chart.SECRET, **values})
    assert "don't meet the specifications of the schema" in error
    assert named in error


# --- secrets ---------------------------------------------------------------------------


def test_rendering_without_a_dsn_fails() -> None:
    error = chart.render_error()
    assert "set existingSecret or secrets.postgres.dsn.name" in error


def test_existing_secret_holds_every_secret_and_a_named_one_overrides_it() -> None:
    docs = chart.render(
        {**chart.SECRET, "secrets": {"llm": {"api_key": {"name": "openrouter", "key": "api-key"}}}}
    )
    dsn = {"name": "conveyor", "key": "postgres-dsn"}
    for doc in chart.by_kind(docs, "Deployment"):
        env = chart.env_entries(doc)
        refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
        assert refs["CONVEYOR_POSTGRES__DSN"] == dsn
        assert refs["CONVEYOR_SENTRY__DSN"] == {
            "name": "conveyor",
            "key": "sentry-dsn",
            "optional": True,
        }
        assert refs["CONVEYOR_LLM__API_KEY"] == {"name": "openrouter", "key": "api-key"}
    # Hook Jobs get only the secrets their command uses (migrate: the DSN; topics: Kafka's).
    hooks = {}
    for doc in chart.by_kind(docs, "Job"):
        env = chart.env_entries(doc)
        refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
        hooks[doc["metadata"]["labels"]["app.kubernetes.io/component"]] = refs
    kafka = {
        f"CONVEYOR_KAFKA__{field.upper()}": {
            "name": "conveyor",
            "key": f"kafka-{field.replace('_', '-')}",
            "optional": True,
        }
        for field in ("sasl_username", "sasl_password", "ssl_key_password")
    }
    assert hooks == {"migrate": {"CONVEYOR_POSTGRES__DSN": dsn}, "topics": kafka}


def test_extra_env_and_env_from_reach_workers_and_hooks_but_cannot_shadow_a_setting() -> None:
    docs = chart.render(files=[FULL])
    for doc in chart.by_kind(docs, "Deployment") + chart.by_kind(docs, "Job"):
        container = chart.pod_spec(doc)["containers"][0]
        assert "SSL_CERT_FILE" in chart.env_entries(doc), doc["metadata"]["name"]
        assert {"configMapRef": {"name": "proxy-settings", "optional": True}} in container[
            "envFrom"
        ]
    extra = [{"name": "CONVEYOR_KAFKA__GROUP_ID", "value": "other"}]
    error = chart.render_error({**chart.SECRET, "extraEnv": extra})
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
    docs = chart.render({**chart.SECRET, "image": image})
    for doc in chart.by_kind(docs, "Deployment") + chart.by_kind(docs, "Job"):
        assert chart.pod_spec(doc)["containers"][0]["image"] == expected


def test_pod_settings_apply_to_every_group_unless_the_group_sets_its_own() -> None:
    docs = chart.render(files=[FULL])
    ingest = chart.one(docs, "Deployment", "conveyor-ingest")
    light = chart.one(docs, "Deployment", "conveyor-light")
    assert chart.pod_spec(light)["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert chart.pod_spec(ingest)["nodeSelector"] == {"node.example.com/pool": "large"}
    assert chart.pod_spec(light)["priorityClassName"] == "jobs"
    assert chart.pod_spec(ingest)["priorityClassName"] == "jobs-heavy"
    assert "tolerations" in chart.pod_spec(light) and "tolerations" not in chart.pod_spec(ingest)
    assert chart.pod_spec(light)["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert ingest["spec"]["template"]["metadata"]["labels"]["tier"] == "heavy"
    assert light["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    assert light["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "platform"
    assert ingest["spec"]["template"]["metadata"]["annotations"]["example.com/group"] == "ingest"
    resources = chart.pod_spec(ingest)["containers"][0]["resources"]
    assert resources["limits"]["memory"] == "4Gi"
    # Hooks: the release-wide placement.
    for job in chart.by_kind(docs, "Job"):
        assert chart.pod_spec(job)["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_a_config_change_rolls_the_workers() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = chart.one(chart.render(values), "Deployment")
        annotation: str = deployment["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        return annotation

    assert checksum(chart.SECRET) != checksum(
        {**chart.SECRET, "config": {"chunking": {"size": 700}}}
    )


# --- shutdown bound ----------------------------------------------------------------------


def test_a_grace_period_not_above_drain_plus_hard_exit_fails() -> None:
    error = chart.render_error({**chart.SECRET, "terminationGracePeriodSeconds": 35})
    assert "terminationGracePeriodSeconds (35) must be greater than" in error
    assert "(35, worker group default)" in error
    groups = {
        "ingest": {"jobTypes": ["asset_process", "knowledge_graph_extract"], "dlqMirror": True},
        "light": {
            "jobTypes": ["crm_sync_pipelines", "crm_webhook", "message_send"],
            "config": {"worker": {"drain_timeout_s": 40}},
        },
    }
    error = chart.render_error({**chart.SECRET, "workerGroups": groups})
    assert "(50, worker group light)" in error


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


def _bytes(quantity: str) -> int:
    for suffix, factor in UNITS.items():
        if quantity.endswith(suffix):
            return int(float(quantity.removesuffix(suffix)) * factor)
    return int(quantity)


def test_the_default_memory_limit_holds_every_extraction_process_at_its_ceiling() -> None:
    """A document that needs more than the ceiling fails alone; it never OOM-kills the pod."""
    docs = chart.render(files=[chart.CHART / "ci" / "minimal-values.yaml"])
    container = chart.pod_spec(chart.one(docs, "Deployment"))["containers"][0]
    env = chart.container_env(container, docs)
    defaults = ExtractSettings()
    workers = int(env.get("CONVEYOR_EXTRACT__WORKERS") or defaults.workers)
    ceiling = int(env.get("CONVEYOR_EXTRACT__MEMORY_LIMIT_BYTES") or defaults.memory_limit_bytes)
    limit = _bytes(container["resources"]["limits"]["memory"])
    assert limit >= WORKER_BYTES + workers * ceiling, (limit, workers, ceiling)
