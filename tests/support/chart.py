"""The Helm chart as the real ``helm`` renders it, and strict schema checks of the result.

``helm`` is the pinned build of ``scripts/helm`` (``$CONVEYOR_HELM`` when set,
else ``scripts/helm --path``, which builds it once into the tools cache;
``make test`` does that before pytest so no test waits for a build).

Built-in kinds are validated with kubernetes-validate in strict mode (unknown
fields are errors) for each of ``KUBE_VERSIONS``. The custom resources the
chart can render (KEDA ScaledObject, Prometheus Operator ServiceMonitor and
PrometheusRule) are checked against ``CRD_SCHEMAS``: the fields of those CRDs
that the chart uses, written here from their API references, with unknown
fields refused as the API server does under strict field validation.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "conveyor"
HELM_SCRIPT = ROOT / "scripts" / "helm"
RELEASE = "conveyor"
# The least a render needs: one Secret for every secret setting.
SECRET = {"existingSecret": "conveyor"}
NAMESPACE = "jobs"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest.
KUBE_VERSIONS = ("1.29.0", "1.37.0")


class RenderError(Exception):
    """helm refused to render; the message is its stderr."""


@functools.cache
def helm_binary() -> str:
    found = os.environ.get("CONVEYOR_HELM")
    if found:
        return found
    done = subprocess.run(
        [str(HELM_SCRIPT), "--path"], check=True, capture_output=True, text=True, timeout=900
    )
    return done.stdout.strip()


def render(
    values: Mapping[str, Any] | None = None,
    *,
    files: Iterable[Path] = (),
    chart: Path = CHART,
    kube_version: str = KUBE_VERSIONS[-1],
) -> list[dict[str, Any]]:
    """The manifests ``helm template`` renders for these values, in its order."""
    with tempfile.TemporaryDirectory(prefix="conveyor-helm-") as tmp:
        args = [helm_binary(), "template", RELEASE, str(chart), "--namespace", NAMESPACE]
        args += ["--kube-version", kube_version]
        for path in files:
            args += ["--values", str(path)]
        if values:
            extra = Path(tmp) / "values.yaml"
            extra.write_text(yaml.safe_dump(dict(values)), encoding="utf-8")
            args += ["--values", str(extra)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def lint(files: Iterable[Path] = (), kube_version: str = KUBE_VERSIONS[-1]) -> str:
    """``helm lint --strict`` of the chart with these values files: its output if it fails."""
    args = [helm_binary(), "lint", "--strict", str(CHART), "--kube-version", kube_version]
    for path in files:
        args += ["--values", str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return "" if done.returncode == 0 else done.stdout + done.stderr


def render_error(values: Mapping[str, Any] | None = None, **kwargs: Any) -> str:
    """helm's error for values it must refuse (fails the test if it renders)."""
    try:
        docs = render(values, **kwargs)
    except RenderError as exc:
        return str(exc)
    kinds = [doc["kind"] for doc in docs]
    raise AssertionError(f"helm rendered {kinds} for values it should refuse: {values}")


def copy_chart(destination: Path) -> Path:
    """A copy of the chart to break on purpose."""
    target = destination / "conveyor"
    shutil.copytree(CHART, target)
    return target


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment or Job."""
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def env_entries(doc: dict[str, Any]) -> dict[str, Any]:
    """The first container's env entries by name."""
    return {e["name"]: e for e in pod_spec(doc)["containers"][0]["env"]}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}: {[d['metadata'] for d in found]}"
    return found[0]


# --- environment of a container, as the kubelet assembles it ---------------------

SECRET_PLACEHOLDER = "secret:{name}/{key}"


_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def secret_placeholder(env_name: str, name: str, key: str) -> str:
    """What a test pretends Secret ``name``'s ``key`` holds, in the shape its setting takes.

    Most secrets are free text (``secret:<name>/<key>``); a keyring must parse,
    so its placeholder is one key whose bytes are derived from the same text.
    """
    text = SECRET_PLACEHOLDER.format(name=name, key=key)
    if env_name.endswith("KEYRING"):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        return f"k1:{digest}"
    if env_name.endswith("TRACING__HEADERS"):  # name=value pairs
        return f"x-placeholder={text}"
    return text


def container_env(
    container: Mapping[str, Any], docs: list[dict[str, Any]]
) -> dict[str, str | None]:
    """The container's variables: envFrom ConfigMaps first, then env over them.

    A secretKeyRef becomes ``secret:<name>/<key>``; an optional one is None
    (the key may be missing from the Secret). Only ConfigMaps rendered by the
    chart can be resolved; anything else fails the test.
    """
    env: dict[str, str | None] = {}
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and ref["name"] in config_maps:
            env.update(config_maps[ref["name"]])
    names = [entry["name"] for entry in container.get("env", [])]
    duplicated = {name for name in names if names.count(name) > 1}
    assert not duplicated, f"{container['name']} sets {sorted(duplicated)} twice"
    for entry in container.get("env", []):
        if "value" in entry:  # $(NAME) is Kubernetes' reference to a variable set before
            env[entry["name"]] = _REFERENCE.sub(lambda m: env.get(m[1]) or m[0], entry["value"])
            continue
        if "fieldRef" in entry["valueFrom"]:  # the downward API
            env[entry["name"]] = f"field:{entry['valueFrom']['fieldRef']['fieldPath']}"
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        value = secret_placeholder(entry["name"], ref["name"], ref["key"])
        env[entry["name"]] = None if ref.get("optional") else value
    return env


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every Conveyor container by '<Kind>/<name>'."""
    found = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                found[f"{doc['kind']}/{doc['metadata']['name']}"] = container
    return found


# --- strict schema validation -----------------------------------------------------

_DURATION = (
    "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                *("replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep"),
                *("lowercase", "uppercase", "keepequal", "dropequal"),
            ]
        },
    },
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): _resource(
        "keda.sh/v1alpha1",
        "ScaledObject",
        {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "initialCooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            # Every value a string: KEDA's map[string]string.
                            "metadata": _STRING_MAP,
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"type": "string"},
                                },
                            },
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector"],
            "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _resource(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "labels": _STRING_MAP,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string", "pattern": _DURATION},
                                        "keep_firing_for": {"type": "string", "pattern": _DURATION},
                                        "labels": _STRING_MAP,
                                        "annotations": _STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    ),
}


def schema_problems(doc: Mapping[str, Any], kube_version: str) -> list[str]:
    """Why ``doc`` would be refused (strict field validation), or nothing."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')} on {kube_version}"
    crd = CRD_SCHEMAS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if crd is not None:
        errors = jsonschema.Draft202012Validator(crd).iter_errors(doc)
        return [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(dict(doc), kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: no schema: {exc}"]
    return []
