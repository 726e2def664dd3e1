"""Deployment artefacts agree with the one settings object (design requirement #6).

``streams.settings.Settings`` is the only source of defaults. These tests derive
everything from it at run time and check that the Helm values, the chart's
environment mapping, the Dockerfile and docs/CONFIGURATION.md neither miss a
setting nor contradict a default. When a setting is added or changed:

- update ``config:`` (or ``secrets:``) in helm/conveyor/values.yaml — the
  failures below list the missing and extra keys with the expected defaults;
- regenerate the docs: ``.venv/bin/python scripts/gen_config_docs.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import streams
from streams.cli import _parser
from streams.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "conveyor"
VALUES = CHART / "values.yaml"
HELPERS = CHART / "templates" / "_helpers.tpl"
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
        assert ref["key"] and ref["name"] == "", f"secrets.{'.'.join(path)}: no default Secret"
    assert refs[("postgres", "dsn")].get("required") is True


# --- (c) shutdown bound ----------------------------------------------------------


def test_grace_period_outlasts_the_drain_and_the_hard_exit(values: dict[str, Any]) -> None:
    grace = values["terminationGracePeriodSeconds"]
    worker = values["config"]["worker"]
    assert grace > worker["drain_timeout_s"] + worker["hard_exit_after_s"]
    defaults = Settings.model_fields["worker"].get_default(call_default_factory=True)
    assert grace > defaults.drain_timeout_s + defaults.hard_exit_after_s


# --- (d) environment names and values produced by the chart ----------------------


def _template_define(name: str) -> str:
    """The body of a named template in _helpers.tpl (up to the next definition or comment)."""
    text = HELPERS.read_text(encoding="utf-8")
    start = re.search(r'\{\{-? define "' + re.escape(name) + r'" -?\}\}', text)
    assert start, f"{name} is not defined in {HELPERS.relative_to(ROOT)}"
    body = re.split(r"\{\{-? define |\{\{/\*", text[start.end() :])[0].rstrip()
    assert body.endswith("{{- end }}"), name
    return body.removesuffix("{{- end }}").strip()


def _helm_value(value: Any) -> str:
    """What conveyor.envValue prints (Helm reads every YAML number as a float64)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and float(value).is_integer():
        return str(int(value))
    return json.dumps(value)


def _helm_env(tree: dict[str, Any], name: str) -> dict[str, str]:
    """What conveyor.configEnv renders: one variable per non-null leaf."""
    delimiter = _template_define("conveyor.envDelimiter")
    env: dict[str, str] = {}
    for key, value in tree.items():
        env_var = name + key.upper()
        if isinstance(value, dict):
            env.update(_helm_env(value, env_var + delimiter))
        elif value is not None:
            env[env_var] = _helm_value(value)
    return env


def test_the_chart_names_variables_by_the_settings_rule(values: dict[str, Any]) -> None:
    assert _template_define("conveyor.envPrefix") == ENV_PREFIX
    assert _template_define("conveyor.envDelimiter") == ENV_NESTED_DELIMITER
    walk = _template_define("conveyor.configEnv")
    assert "(upper $key)" in walk and 'include "conveyor.envDelimiter"' in walk
    rendered = _helm_env(values["config"], ENV_PREFIX)
    expected = {leaf.env for leaf in PLAIN.values() if leaf.default is not None}
    assert set(rendered) == expected
    secret_names = {ENV_PREFIX + ENV_NESTED_DELIMITER.join(p).upper() for p in SECRET}
    assert secret_names == {leaf.env for leaf in SECRET.values()}


def test_the_rendered_environment_loads_as_the_default_settings(
    values: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    defaults = load_settings()
    for name, value in _helm_env(values["config"], ENV_PREFIX).items():
        clean_env.setenv(name, value)
    assert load_settings().model_dump() == defaults.model_dump()


def test_hooks_and_worker_run_real_cli_commands() -> None:
    templates = CHART / "templates"
    commands = {
        "deployment.yaml": ["run"],
        "job-migrate.yaml": ["migrate"],
        "job-topics.yaml": ["topics", "create"],
    }
    for template, argv in commands.items():
        text = (templates / template).read_text(encoding="utf-8")
        assert json.dumps(argv) in text or f"(list {' '.join(map(json.dumps, argv))})" in text
        _parser().parse_args(argv)
    hook = (templates / "_hookjob.tpl").read_text(encoding="utf-8")
    assert '"helm.sh/hook": pre-install,pre-upgrade' in hook


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
        assert image in names or image == "python:3.11-slim", image
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


def test_configuration_doc_lists_every_variable_with_its_default() -> None:
    text = gen.render()
    for leaf in LEAVES:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{leaf.env}` |")), "")
        assert row, f"{leaf.env} is not documented"
        if leaf.default is not None and leaf.default != []:
            assert f"`{gen.env_value(leaf.default)}`" in row, row
