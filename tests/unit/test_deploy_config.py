"""Deployment artefacts agree with the one settings object (design requirement #6).

``streams.settings.Settings`` is the only source of defaults. These tests derive
everything from it at run time and check that the Helm values, the environment
the real helm renders for every container (loaded back into Settings), the
Dockerfile, docs/CONFIGURATION.md and the values schema neither miss a setting
nor contradict a default. When a setting is added or changed:

- update ``config:`` (or ``secrets:``) in helm/conveyor/values.yaml — the
  failures below list the missing and extra keys with the expected defaults;
- regenerate the docs and the schema's settings parts:
  ``.venv/bin/python scripts/gen_config_docs.py``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import annotated_types
import pytest
import yaml
from pydantic import SecretStr

import streams
from streams.commands.cli import _parser
from streams.registry import build_registry
from streams.settings import (
    ENV_PREFIX,
    ConfigError,
    Settings,
    env_name,
    load_settings,
)
from tests.support import chart

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "conveyor"
VALUES = CHART / "values.yaml"
DOCKERFILE = ROOT / "Dockerfile"
REGENERATE = ".venv/bin/python scripts/gen_config_docs.py"


def _load_generator() -> ModuleType:
    path = ROOT / "scripts" / "gen_config_docs.py"
    spec = importlib.util.spec_from_file_location("gen_config_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
LEAVES = list(gen.iter_leaves())
PLAIN = {leaf.path: leaf for leaf in LEAVES if not leaf.secret}
SECRET = {leaf.path: leaf for leaf in LEAVES if leaf.secret}
# The key of each secret setting in a Secret: its path, e.g. postgres-dsn.
SECRET_KEYS = {path: "-".join(path).replace("_", "-") for path in SECRET}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No CONVEYOR_* variable from the calling shell (CI exports the services')."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(VALUES.read_text(encoding="utf-8"))
    return loaded


def _flatten(
    tree: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, (*path, key))
        else:
            yield (*path, key), value


def _secret_refs(
    tree: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Leaves of ``secrets:``: the maps that carry a ``key`` (a Secret reference)."""
    for key, value in tree.items():
        if isinstance(value, dict) and "key" in value:
            yield (*path, key), value
        elif isinstance(value, dict):
            yield from _secret_refs(value, (*path, key))
        else:
            yield (*path, key), value


def _dotted(paths: Any, prefix: str = "") -> str:
    return ", ".join(prefix + ".".join(p) for p in sorted(paths)) or "none"


def _same(configured: Any, default: Any) -> bool:
    """Equal and of a compatible type (YAML 25 is fine for 25.0; 1 is not True)."""
    if isinstance(default, bool) or isinstance(configured, bool):
        return configured is default
    if isinstance(default, float):
        return isinstance(configured, int | float) and float(configured) == default
    return type(configured) is type(default) and configured == default


# --- the walk over Settings that everything else relies on ---------------------


def test_the_settings_walk_sees_every_field_with_its_effective_default(
    clean_env: pytest.MonkeyPatch,
) -> None:
    dumped = dict(_flatten(Settings().model_dump()))
    assert set(dumped) == {leaf.path for leaf in LEAVES}
    for leaf in LEAVES:
        assert dumped[leaf.path] == leaf.default, leaf.dotted
        assert leaf.env == env_name(leaf.path)
    assert PLAIN[("jobs", "asset_process", "timeout_s")].default == 300
    assert ("postgres", "dsn") in SECRET


# --- (a), (b) values.yaml config: ----------------------------------------------


def test_values_config_has_every_non_secret_setting_and_nothing_else(
    values: dict[str, Any],
) -> None:
    configured = dict(_flatten(values["config"]))
    secrets_in_config = set(configured) & set(SECRET)
    missing = set(PLAIN) - set(configured)
    extra = set(configured) - set(PLAIN) - secrets_in_config
    problems = []
    if missing:
        lines = [f"  config.{'.'.join(p)}: {json.dumps(PLAIN[p].default)}" for p in sorted(missing)]
        problems.append("missing (add with these defaults):\n" + "\n".join(lines))
    if extra:
        problems.append(f"not a setting (remove or rename): {_dotted(extra, 'config.')}")
    if secrets_in_config:
        problems.append(f"secrets go under secrets:, not {_dotted(secrets_in_config, 'config.')}")
    assert not problems, f"{VALUES.relative_to(ROOT)} is out of step with Settings:\n" + "\n".join(
        problems
    )


def test_values_config_defaults_equal_the_settings_defaults(values: dict[str, Any]) -> None:
    configured = dict(_flatten(values["config"]))
    wrong = [
        f"  config.{leaf.dotted}: {configured[path]!r} in values.yaml, {leaf.default!r} in Settings"
        for path, leaf in PLAIN.items()
        if path in configured and not _same(configured[path], leaf.default)
    ]
    assert not wrong, "values.yaml contradicts Settings:\n" + "\n".join(wrong)


def test_secret_settings_are_secret_references(values: dict[str, Any]) -> None:
    refs = dict(_secret_refs(values["secrets"]))
    assert set(refs) == set(SECRET), (
        f"values.yaml secrets: missing {_dotted(set(SECRET) - set(refs))}; "
        f"not a secret setting: {_dotted(set(refs) - set(SECRET))}"
    )
    for path, ref in refs.items():
        assert isinstance(ref, dict) and set(ref) <= {"name", "key", "required"}, path
        assert ref["name"] == "", f"secrets.{'.'.join(path)}: no default Secret"
        # Unique keys, so one Secret (existingSecret) can hold them all.
        assert ref["key"] == SECRET_KEYS[path], f"secrets.{'.'.join(path)}.key"
    assert refs[("postgres", "dsn")].get("required") is True


# --- (c) shutdown bound ----------------------------------------------------------


def test_grace_period_outlasts_the_drain_and_the_hard_exit(values: dict[str, Any]) -> None:
    grace = values["terminationGracePeriodSeconds"]
    worker = values["config"]["worker"]
    assert grace > worker["drain_timeout_s"] + worker["hard_exit_after_s"]
    defaults = Settings.model_fields["worker"].get_default(call_default_factory=True)
    assert grace > defaults.drain_timeout_s + defaults.hard_exit_after_s


# --- (d) the environment helm renders loads into Settings -------------------------
#
# The chart is rendered by the real helm (tests/support/chart.py) with every
# setting changed from its default and every secret pointing at its own Secret;
# each container's environment (ConfigMap, then env) must load into exactly
# those Settings. A template that names, formats or wires a variable wrongly
# fails here: test_the_env_check_fails_on_a_broken_template proves it.


def _non_default(leaf: Any) -> Any:
    """A valid value for ``leaf`` other than its default."""
    default, field = leaf.default, leaf.field
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return next(a for a in typing.get_args(annotation) if a != default)
    if isinstance(default, bool):
        return not default
    upper = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    below = next((m.lt for m in field.metadata if isinstance(m, annotated_types.Lt)), None)
    if isinstance(default, int):
        return default + 1 if upper is None or default + 1 <= upper else default - 1
    if isinstance(default, float):
        up = default + 0.25
        fits = (upper is None or up <= upper) and (below is None or up < below)
        return up if fits else default - 0.25
    if leaf.dotted == "kafka.bootstrap_servers":  # host:port (the NetworkPolicy reads ports)
        return "kafka-0.kafka:9093,kafka-1.kafka:9093"
    if leaf.dotted == "tracing.resource_attributes":  # key=value pairs
        return "deployment.environment=test,k8s.node.name=configured-node"
    if isinstance(default, str):
        return f"{default}-x"
    if default is None and str in typing.get_args(annotation):
        return f"/etc/conveyor/{leaf.path[-1]}.pem"  # the optional files (kafka.ssl_*_file)
    if isinstance(default, list):
        if leaf.dotted.endswith("origins"):
            return ["https://files.example", "http://10.0.0.1:9000"]
        if leaf.dotted.endswith("account_hosts"):
            return ["*.kommo.com", "*.amocrm.ru", "127.0.0.1:*"]
        if leaf.dotted == "fairness.weights":
            return ["org-big=0.5", "org-vip=3"]
        if leaf.dotted.endswith("trusted_proxies"):
            return ["10.0.0.0/8", "192.0.2.1"]
        return ["files.example", "10.0.0.0/8"]
    raise AssertionError(f"no non-default value for {leaf.dotted} ({default!r})")


def _nested(paths: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in paths.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


@contextlib.contextmanager
def _only_env(env: dict[str, str | None]) -> Iterator[None]:
    """os.environ with every CONVEYOR_* variable replaced by ``env`` (None: unset)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    for name in saved:
        del os.environ[name]
    os.environ.update({k: v for k, v in env.items() if v is not None})
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            del os.environ[name]
        os.environ.update(saved)


def settings_of(container: dict[str, Any], docs: list[dict[str, Any]]) -> Settings:
    """The Settings a container of this render starts with (a config error fails the test)."""
    with _only_env(chart.container_env(container, docs)):
        try:
            return load_settings()
        except ConfigError as exc:
            raise AssertionError(f"{container['name']}: {exc}") from None


CHANGED = {leaf.path: _non_default(leaf) for leaf in PLAIN.values()}
# The one protocol that uses every Kafka security setting, the login included.
CHANGED[("kafka", "security_protocol")] = "SASL_SSL"
SECRET_REFS = {path: {"name": "s-" + "-".join(path).replace("_", "-")} for path in SECRET}


# Hook Jobs and the console get only the secrets their command uses; the
# workers get all but the console's.
HOOK_SECRETS: dict[str, set[tuple[str, ...]]] = {
    "migrate": {("postgres", "dsn")},
    "topics": {path for path in SECRET if path[0] == "kafka"},
    "conveyor": {path for path in SECRET if path[0] != "console"},
    "console": {path for path in SECRET if path[0] in ("postgres", "kafka", "console")},
}
# What the chart sets for one container over config: (container, path) -> value.
OVERRIDES = {("console", ("console", "host")): "0.0.0.0"}


def check_chart_env(chart_dir: Path = chart.CHART) -> int:
    """Every container of a render with every value changed loads exactly those values.

    Returns how many containers were checked.
    """
    docs = chart.render(
        {"config": _nested(CHANGED), "secrets": _nested(SECRET_REFS), "console": {"enabled": True}},
        chart=chart_dir,
    )
    found = chart.containers(docs)
    assert found, "no Deployment or Job rendered"
    for where, container in found.items():
        loaded = settings_of(container, docs)
        dumped = dict(_flatten(loaded.model_dump()))
        if where.startswith("Deployment/"):  # the chart adds the pod's identity first
            dumped[RESOURCE] = _configured_part(dumped[RESOURCE], where)
        wrong = {
            ".".join(path): (dumped[path], value)
            for path, value in CHANGED.items()
            if dumped[path] != OVERRIDES.get((container["name"], path), value)
        }
        assert not wrong, f"{where}: (loaded, values) differ: {wrong}"
        given = HOOK_SECRETS.get(container["name"], set(SECRET))
        for path in SECRET:
            secret = functools.reduce(getattr, path, loaded)
            if path not in given:
                default = functools.reduce(getattr, path, Settings())
                assert secret == default, (
                    f"{where}: {env_name(path)} given to a hook that needs none"
                )
                continue
            assert isinstance(secret, SecretStr), f"{where}: {env_name(path)} not set"
            ref = SECRET_REFS[path]["name"]
            key = SECRET_KEYS[path]
            expected = chart.secret_placeholder(env_name(path), ref, key)
            assert secret.get_secret_value() == expected, f"{where}: {path}"
    return len(found)


RESOURCE = ("tracing", "resource_attributes")
IDENTITY = (
    "service.name",
    "service.version",
    "k8s.namespace.name",
    "k8s.deployment.name",
    "k8s.pod.name",
    "k8s.node.name",
)


def _configured_part(attributes: str, where: str) -> str:
    """A worker's resource attributes less the identity the chart puts first (which is
    checked here: the pod and node come from the downward API)."""
    entries = attributes.split(",")
    identity = dict(entry.split("=", 1) for entry in entries[: len(IDENTITY)])
    assert tuple(identity) == IDENTITY, f"{where}: {attributes}"
    assert identity["k8s.pod.name"] == "field:metadata.name", where
    assert identity["k8s.node.name"] == "field:spec.nodeName", where
    assert identity["k8s.deployment.name"] == where.removeprefix("Deployment/")
    return ",".join(entries[len(IDENTITY) :])


def test_every_container_loads_every_value_the_chart_is_given() -> None:
    # The worker Deployment, the console's and both hook Jobs.
    assert check_chart_env() == 4


def test_the_default_render_loads_the_default_settings_with_the_dsn() -> None:
    docs = chart.render({"existingSecret": "conveyor"})
    defaults = Settings().model_dump(exclude={"postgres": {"dsn"}})
    for where, container in chart.containers(docs).items():
        loaded = settings_of(container, docs)
        assert loaded.model_dump(exclude={"postgres": {"dsn"}}) == defaults, where
        if ("postgres", "dsn") in HOOK_SECRETS.get(container["name"], {("postgres", "dsn")}):
            assert loaded.postgres.dsn.get_secret_value() == "secret:conveyor/postgres-dsn"
        # Optional keys of the one Secret: unset when the Secret lacks them
        # (the hook Jobs are not given the LLM key at all).
        assert chart.container_env(container, docs).get("CONVEYOR_LLM__API_KEY") is None


BREAKAGES = {
    "delimiter": (
        "templates/_helpers.tpl",
        '{{- define "conveyor.envDelimiter" -}}__{{- end }}',
        '{{- define "conveyor.envDelimiter" -}}_{{- end }}',
    ),
    "lists": ("templates/_helpers.tpl", '{{ join "," . }}', '{{ join ";" . }}'),
    "numbers": ("templates/_helpers.tpl", "{{- else }}{{ toJson . }}", "{{- else }}{{ . }}"),
    "configmap not mounted": (
        "templates/deployment.yaml",
        "            - configMapRef:\n                name:",
        "            - secretRef:\n                name:",
    ),
    "secret key": ("templates/_helpers.tpl", "key: {{ $value.key | quote }}", "key: dsn"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_env_check_fails_on_a_broken_template(breakage: str, tmp_path: Path) -> None:
    broken = chart.copy_chart(tmp_path)
    template, good, bad = BREAKAGES[breakage]
    text = (broken / template).read_text(encoding="utf-8")
    assert good in text, f"{template} no longer contains {good!r}: update this test"
    (broken / template).write_text(text.replace(good, bad), encoding="utf-8")
    with pytest.raises(AssertionError):
        check_chart_env(broken)


def test_worker_groups_each_consume_their_job_types_and_share_one_configuration() -> None:
    docs = chart.render(files=[chart.CHART / "ci" / "worker-groups-values.yaml"])
    deployments = {d["metadata"]["name"]: d for d in chart.by_kind(docs, "Deployment")}
    assert set(deployments) == {"conveyor-ingest", "conveyor-light"}
    loaded = {
        name: settings_of(d["spec"]["template"]["spec"]["containers"][0], docs)
        for name, d in deployments.items()
    }
    ingest, light = loaded["conveyor-ingest"], loaded["conveyor-light"]
    consumed = {
        name: [s.job_type for s in build_registry(s).consumed] for name, s in loaded.items()
    }
    assert consumed["conveyor-ingest"] == ["asset.process", "knowledge_graph.extract"]
    # crm and message jobs have no handler yet; their policies are on in this group only.
    assert [name for name, policy in light.jobs if policy.enabled] == [
        "crm_sync_pipelines",
        "crm_webhook",
        "message_send",
    ]
    assert consumed["conveyor-light"] == []
    assert (ingest.dlq_mirror.enabled, light.dlq_mirror.enabled) == (False, True)
    assert (ingest.kafka.group_id, light.kafka.group_id) == ("conveyor-ingest", "conveyor-light")
    assert (ingest.jobs.asset_process.concurrency, light.jobs.asset_process.concurrency) == (2, 4)
    config_maps = chart.by_kind(docs, "ConfigMap")
    assert len(config_maps) == 1
    for deployment in deployments.values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"][0]["configMapRef"]["name"] == config_maps[0]["metadata"]["name"]
    # The hooks run once, with the shared configuration.
    jobs = chart.by_kind(docs, "Job")
    assert sorted(j["metadata"]["name"] for j in jobs) == ["conveyor-migrate", "conveyor-topics"]
    for job in jobs:
        hook = settings_of(job["spec"]["template"]["spec"]["containers"][0], docs)
        assert hook.kafka.group_id == "conveyor" and hook.dlq_mirror.enabled


def test_hooks_and_worker_run_real_cli_commands() -> None:
    docs = chart.render({"existingSecret": "conveyor"})
    commands = {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]["containers"][0][
            "args"
        ]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }
    assert commands == {
        "Deployment/conveyor": ["run"],
        "Job/conveyor-migrate": ["migrate"],
        "Job/conveyor-topics": ["topics", "create"],
    }
    for argv in commands.values():
        _parser().parse_args(argv)
    for job in chart.by_kind(docs, "Job"):
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == streams.__version__


# --- (e) Dockerfile ----------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).partition(" ")
        result.append((instruction.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends in a continuation"
    return result


def _key_values(args: str) -> dict[str, str]:
    """ENV/ARG arguments: ``K=V K2="V 2"``, or the legacy ``K V`` form."""
    parts = shlex.split(args)
    if "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(part.partition("=")[::2] for part in parts)


def _stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in _instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction == "FROM":
            stages.append([])
        if not stages:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            global_args.update(_key_values(args))
            continue
        stages[-1].append((instruction, args))
    return global_args, stages


def test_dockerfile_builds_from_python_slim_in_stages() -> None:
    global_args, stages = _stages()
    assert len(stages) >= 2, "multi-stage: build, then a clean runtime image"
    names: set[str] = set()
    for stage in stages:
        image, *alias = stage[0][1].split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], image)
        assert image in names or image.partition("@")[0] == "python:3.11-slim", image
        if alias:
            names.add(alias[-1])
    runs = " ".join(args for stage in stages for instruction, args in stage if instruction == "RUN")
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs), "the package is installed with pip"


def test_dockerfile_runs_conveyor_as_non_root_and_stops_on_sigterm(
    values: dict[str, Any],
) -> None:
    _, stages = _stages()
    final = dict(stages[-1])
    user = final.get("USER", "root").split(":")[0]
    assert user.isdigit() and user != "0", "a numeric non-root USER (runAsNonRoot checks it)"
    assert int(user) == values["podSecurityContext"]["runAsUser"]
    assert final.get("STOPSIGNAL") == "SIGTERM"
    assert json.loads(final["ENTRYPOINT"]) == ["conveyor"]
    assert json.loads(final["CMD"]) == ["run"]


def test_dockerfile_sets_no_default_that_contradicts_settings() -> None:
    global_args, stages = _stages()
    by_env = {leaf.env: leaf for leaf in LEAVES}
    declared = dict(global_args)
    for stage in stages:
        for instruction, args in stage:
            if instruction in ("ENV", "ARG"):
                declared.update(_key_values(args))
    for name, value in declared.items():
        if not name.startswith(ENV_PREFIX):
            continue
        leaf = by_env.get(name)
        assert leaf is not None, f"Dockerfile sets {name}, which is not a setting"
        assert not leaf.secret, f"Dockerfile must not carry the secret {name}"
        assert value == gen.env_value(leaf.default), f"{name}={value} contradicts Settings"


def test_dockerignore_admits_only_what_the_build_needs() -> None:
    text = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    assert lines[0] == "*", "allow-list: ignore everything, then admit the sources"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for needed in ["pyproject.toml", *(p.rstrip("*") for p in packages)]:
        assert f"!{needed}" in lines, f".dockerignore must admit {needed}"


# --- (f) docs/CONFIGURATION.md ------------------------------------------------------


def test_configuration_doc_is_generated_from_settings() -> None:
    committed = gen.DOC_PATH.read_text(encoding="utf-8") if gen.DOC_PATH.exists() else ""
    assert committed == gen.render(), f"docs/CONFIGURATION.md is stale: run {REGENERATE}"


def test_values_schema_settings_parts_are_generated_from_settings() -> None:
    committed = gen.SCHEMA_PATH.read_text(encoding="utf-8")
    assert committed == gen.render_schema_text(), (
        f"{gen.SCHEMA_PATH.name} is stale: run {REGENERATE}"
    )


def test_configuration_doc_lists_every_variable_with_its_default() -> None:
    text = gen.render()
    for leaf in LEAVES:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{leaf.env}` |")), "")
        assert row, f"{leaf.env} is not documented"
        if leaf.default is not None and leaf.default != []:
            assert f"`{gen.env_value(leaf.default)}`" in row, row


def test_the_base_image_is_pinned_by_digest_and_every_stage_uses_it() -> None:
    """Issue 19: a tag alone can name other bytes tomorrow; `make lock` moves the digest
    (scripts/base-image, which rewrites exactly this line)."""
    steps = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    args = [_key_values(a) for i, a in steps if i == "ARG"]
    image = next(a["PYTHON_IMAGE"] for a in args if "PYTHON_IMAGE" in a)
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", image), image
    froms = [a.split()[0] for i, a in steps if i == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    lock = (ROOT / "scripts" / "lock").read_text(encoding="utf-8")
    assert "scripts/base-image" in lock
    checked = subprocess.run(
        [str(ROOT / "scripts" / "base-image"), "--check"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert checked.stdout.strip() == image
