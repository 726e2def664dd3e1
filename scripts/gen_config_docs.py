"""Generate docs/CONFIGURATION.md and the Helm values schema's settings parts.

The settings object is the only source of defaults (design requirement #6), so
the configuration reference is generated from it rather than written by hand,
and so are the ``config``, ``secrets`` and ``jobType`` definitions of
helm/conveyor/values.schema.json (the rest of that file is written by hand).
``tests/unit/test_deploy_config.py`` fails when a committed file differs from
what this script produces; after changing settings, run::

    .venv/bin/python scripts/gen_config_docs.py

``--check`` exits 1 instead of writing when a file is out of date.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streams.settings import (  # noqa: E402
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    Settings,
    env_name,
)

DOC_PATH = ROOT / "docs" / "CONFIGURATION.md"
SCHEMA_PATH = ROOT / "helm" / "conveyor" / "values.schema.json"
REGENERATE = ".venv/bin/python scripts/gen_config_docs.py"


@dataclass(frozen=True)
class Leaf:
    """One settable value: its path in Settings, environment variable and default."""

    path: tuple[str, ...]
    field: FieldInfo
    default: Any
    secret: bool

    @property
    def env(self) -> str:
        return env_name(self.path)

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Group:
    """A nested settings model and the leaves directly under it."""

    path: tuple[str, ...]
    model: type[BaseModel]
    leaves: tuple[Leaf, ...]


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def is_secret(annotation: Any) -> bool:
    """True for ``SecretStr`` and ``SecretStr | None`` (and any union containing it)."""
    if annotation is SecretStr:
        return True
    return any(is_secret(arg) for arg in typing.get_args(annotation))


def iter_groups(
    model: type[BaseModel] = Settings,
    instance: BaseModel | None = None,
    path: tuple[str, ...] = (),
) -> Iterator[Group]:
    """Every settings group, depth first, with effective defaults.

    Defaults come from the parent's default instance, not the field's class
    default, so ``jobs.asset_process.timeout_s`` is 300 (its registered
    policy), not JobPolicy's 60. The environment is never read.
    """
    leaves: list[Leaf] = []
    nested: list[tuple[str, type[BaseModel], BaseModel]] = []
    for name, field in model.model_fields.items():
        if instance is None:
            default = field.get_default(call_default_factory=True)
        else:
            default = getattr(instance, name)
        if _is_group(field.annotation):
            nested.append((name, typing.cast(type[BaseModel], field.annotation), default))
        else:
            leaves.append(Leaf((*path, name), field, default, is_secret(field.annotation)))
    if leaves:
        yield Group(path, model, tuple(leaves))
    for name, sub_model, sub_instance in nested:
        yield from iter_groups(sub_model, sub_instance, (*path, name))


def iter_leaves() -> Iterator[Leaf]:
    """Every settable value of Settings, in declaration order."""
    for group in iter_groups():
        yield from group.leaves


def env_value(value: Any) -> str:
    """``value`` as it is written in an environment variable (lists: comma-separated)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(env_value(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _type_name(annotation: Any) -> str:
    if is_secret(annotation):
        return "secret"
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (list, tuple, set):
        return f"list of {_type_name(args[0])} (comma-separated)" if args else "list"
    if origin in (typing.Union, types.UnionType):
        inner = " \\| ".join(_type_name(a) for a in args)
        return f"{inner} (optional)"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.MinLen, "min_length", "length ≥"),
    (annotated_types.MaxLen, "max_length", "length ≤"),
)


def _constraints(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for kind, attr, symbol in _BOUNDS:
            if isinstance(meta, kind):
                parts.append(f"{symbol} {env_value(getattr(meta, attr))}")
    return ", ".join(parts)


def _default_cell(leaf: Leaf) -> str:
    value = leaf.default
    if value is None:
        return "*unset*"
    if isinstance(value, list | tuple) and not value:
        return "*empty*"
    text = env_value(value)
    return f"`{text}`" if text else '`""`'


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _helm_key(leaf: Leaf) -> str:
    return f"`{'secrets' if leaf.secret else 'config'}.{leaf.dotted}`"


def _table(leaves: tuple[Leaf, ...]) -> list[str]:
    lines = [
        "| Variable | Helm value | Type | Default | Description |",
        "|---|---|---|---|---|",
    ]
    for leaf in leaves:
        kind = _type_name(leaf.field.annotation)
        bounds = _constraints(leaf.field)
        type_cell = f"{kind}, {bounds}" if bounds else kind
        description = _cell(leaf.field.description or "")
        lines.append(
            f"| `{leaf.env}` | {_helm_key(leaf)} | {type_cell} | {_default_cell(leaf)} "
            f"| {description} |"
        )
    return lines


_HEADER = f"""\
# Configuration

<!-- Generated by scripts/gen_config_docs.py from streams/settings.py.
     Do not edit by hand: run `{REGENERATE}`. -->

Every setting of the worker lives in one object, `streams.settings.Settings`,
and this page is generated from it, so the defaults below are the defaults the
code uses. The Dockerfile sets none, and the Helm chart's values repeat them
exactly; `tests/unit/test_deploy_config.py` checks both.

- **Environment variables**: the prefix `{ENV_PREFIX}`, then the group and field
  names in upper case joined by `{ENV_NESTED_DELIMITER}`, e.g.
  `CONVEYOR_JOBS__ASSET_PROCESS__CONCURRENCY=8`. Setting one field of a group
  keeps the defaults of the others.
- **Lists** are comma-separated: `CONVEYOR_HTTP__ALLOWED_HOSTS=127.0.0.1:*,files.internal`.
- **Unknown or invalid variables** under the prefix stop the worker at start-up
  with exit code 2 and one line per problem, e.g.
  `CONVEYOR_KAFKA__COMMIT_INTERVAL_S: Input should be greater than 0`.
- **Secrets** (type *secret*) are masked by `conveyor config`, never logged,
  and in the Helm chart come from Kubernetes Secrets (`secrets.*` values,
  see [DEPLOYING.md](DEPLOYING.md)), never from `values.yaml`.
- **Helm**: `config.<group>.<field>` in `helm/conveyor/values.yaml` sets the
  variable of the same path; its defaults equal the ones below.
- `conveyor config` prints the effective configuration with secrets masked.
"""


def _summary(model: Any) -> str:
    doc = (getattr(model, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def render() -> str:
    """The full text of docs/CONFIGURATION.md."""
    lines = [_HEADER]
    current_top: str | None = None
    described: set[type[BaseModel]] = set()
    for group in iter_groups():
        top = group.path[0] if group.path else ""
        if top != current_top:
            current_top = top
            model = Settings.model_fields[top].annotation if top else Settings
            lines.extend([f"## `{top}`" if top else "## Top level", "", _summary(model), ""])
        if len(group.path) > 1:
            lines.extend([f"### `{'.'.join(group.path)}`", ""])
            if group.model not in described:
                lines.extend([_summary(group.model), ""])
        described.add(group.model)
        lines.extend(_table(group.leaves))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --- helm/conveyor/values.schema.json -------------------------------------------

_SCHEMA_BOUNDS = {
    annotated_types.Ge: ("ge", "minimum"),
    annotated_types.Gt: ("gt", "exclusiveMinimum"),
    annotated_types.Le: ("le", "maximum"),
    annotated_types.Lt: ("lt", "exclusiveMaximum"),
    annotated_types.MinLen: ("min_length", "minLength"),
    annotated_types.MaxLen: ("max_length", "maxLength"),
}


def _leaf_schema(field: FieldInfo) -> dict[str, Any]:
    """A config leaf as a values key: its type and bounds, or null (the code's default)."""
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    schema: dict[str, Any]
    if typing.get_origin(annotation) is Literal:
        schema = {"enum": [*typing.get_args(annotation), None]}
    elif typing.get_origin(annotation) in (list, tuple, set):
        schema = {"type": ["array", "null"], "items": {"type": "string"}}
    else:
        kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
        schema = {"type": [kinds[annotation], "null"]}
    for meta in field.metadata:
        for kind, (attr, keyword) in _SCHEMA_BOUNDS.items():
            if isinstance(meta, kind):
                schema[keyword] = getattr(meta, attr)
    if field.description:
        schema["description"] = field.description
    return schema


def _model_schemas(defs: dict[str, Any], secret: bool) -> dict[str, Any]:
    """The config (or secrets) tree of Settings; one definition per settings model."""

    def walk(model: type[BaseModel]) -> dict[str, Any] | None:
        properties: dict[str, Any] = {}
        for name, field in model.model_fields.items():
            if _is_group(field.annotation):
                sub = typing.cast(type[BaseModel], field.annotation)
                if walk(sub) is not None:
                    properties[name] = {"$ref": f"#/$defs/{_def_name(sub, secret)}"}
            elif is_secret(field.annotation) == secret:
                properties[name] = {"$ref": "#/$defs/secretRef"} if secret else _leaf_schema(field)
        if not properties:
            return None
        schema = {"type": "object", "additionalProperties": False, "properties": properties}
        doc = _summary(model)
        if doc:
            schema = {"description": doc, **schema}
        defs[_def_name(model, secret)] = schema
        return schema

    tree = walk(Settings)
    assert tree is not None
    del defs[_def_name(Settings, secret)]
    return tree


def _def_name(model: type[BaseModel], secret: bool) -> str:
    return f"{'secrets' if secret else 'settings'}.{model.__name__}"


def render_schema(current: dict[str, Any]) -> dict[str, Any]:
    """``current`` (the committed schema) with its generated definitions replaced."""
    defs = {
        name: value
        for name, value in current["$defs"].items()
        if not name.startswith(("settings.", "secrets."))
    }
    generated: dict[str, Any] = {}
    defs["config"] = _model_schemas(generated, secret=False)
    defs["secrets"] = _model_schemas(generated, secret=True)
    defs["jobType"] = {"enum": list(Settings.model_fields["jobs"].annotation.model_fields)}
    defs.update(sorted(generated.items()))
    return {**current, "$defs": defs}


def _compact_json(value: Any, indent: int = 0, width: int = 100) -> str:
    """JSON indented by 2, with any value that fits in the line kept on one line."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(flat) + indent <= width or not isinstance(value, dict | list) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [
            f"{pad}{json.dumps(k)}: {_compact_json(v, indent + 2, width)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + _compact_json(v, indent + 2, width) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def render_schema_text() -> str:
    current = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return _compact_json(render_schema(current)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = 0
    for path, text in ((DOC_PATH, render()), (SCHEMA_PATH, render_schema_text())):
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if args.check:
            if current != text:
                sys.stderr.write(f"{path.relative_to(ROOT)} is stale: run {REGENERATE}\n")
                stale = 1
        elif current != text:
            path.write_text(text, encoding="utf-8")
            sys.stdout.write(f"wrote {path.relative_to(ROOT)}\n")
    return stale


if __name__ == "__main__":
    sys.exit(main())
