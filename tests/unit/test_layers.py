"""The rooms and what each may import (docs/ARCHITECTURE.md): streams -> handlers -> schemas.

Every import of the service is read from the source (module level, inside
functions and under TYPE_CHECKING alike) and checked against the rules:
nothing imports backwards, handlers never see Faust, Kafka or the
environment, only the operator commands use CLI libraries, and the domain
rooms of handlers/ do not import each other (messaging may use crm). The
console (streams/console/) is a room of its own: it reads Postgres and the
fleet topics and reuses the commands' dead-letter code, but never imports
the worker's engine (runner, pools, consumer, lifecycle, Faust).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "streams", "handlers")
DOMAINS = ("assets", "knowledge_graph", "crm", "messaging")
# Messages go to CRM leads through the CRM's connections: the one edge between domains.
DOMAIN_EDGES = {("messaging", "crm")}
KAFKA = ("faust", "mode", "aiokafka", "confluent_kafka")
CLI = ("rich", "argparse")
# What the console may not import: the worker's engine.
ENGINE_MODULES = (
    "runner pool pool_queue pool_flow agents consumer lifecycle app worker crashguard isolation"
    " publish mirror retry offsets runtime decode report"
)
ENGINE = (*(f"streams.{m}" for m in ENGINE_MODULES.split()), "faust", "mode")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def imports(name: str, source: str, is_package: bool = False) -> Iterator[str]:
    """Every module ``name`` imports (``from a.b import c`` yields a.b and a.b.c)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def room(module: str) -> str:
    """``streams.commands`` and ``streams.console`` for their rooms, else the top package."""
    for inner in ("streams.commands", "streams.console"):
        if module == inner or module.startswith(inner + "."):
            return inner
    return module.split(".")[0]


def domain(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "handlers" and parts[1] in DOMAINS else None


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(name: str, source: str | None = None) -> list[str]:
    found = []
    here = room(name)
    if source is None:
        path = MODULES[name]
        source, is_package = path.read_text(encoding="utf-8"), path.name == "__init__.py"
    else:
        is_package = False
    for target in set(imports(name, source, is_package)):
        there = room(target)
        if here == "schemas" and there in ("handlers", "streams", "streams.commands"):
            found.append(f"schemas imports {target}")
        if here == "handlers" and there in ("streams", "streams.commands"):
            found.append(f"handlers import {target}")
        if here == "handlers" and under(target, *KAFKA):
            found.append(f"handlers import {target}")
        if here == "streams" and there in ("streams.commands", "streams.console"):
            found.append(f"the engine imports {target}")
        if here == "streams.console" and under(target, *ENGINE):
            found.append(f"the console imports the engine's {target}")
        if here != "streams.commands" and under(target, *CLI):
            found.append(f"only commands use {target}")
        mine, theirs = domain(name), domain(target)
        if mine and theirs and mine != theirs and (mine, theirs) not in DOMAIN_EDGES:
            found.append(f"room {mine} imports room {theirs} ({target})")
    return sorted(found)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_rooms(name: str) -> None:
    assert violations(name) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if room(n) == "handlers"))
def test_handlers_never_read_the_environment(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    reads = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in ("environ", "getenv", "environb")
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    ]
    assert reads == []


def test_the_rules_catch_a_backward_import() -> None:
    """The checker itself: a made-up module of each room importing what it may not."""
    cases = {
        "schemas.x": "import handlers.deps",
        "handlers.x": "from streams.settings import Settings",
        "handlers.y": "import faust",
        "streams.x": "from streams.commands import cli",
        "streams.y": "from rich.console import Console",
        "handlers.assets.x": "from handlers.crm import sync",
        "streams.console.x": "from streams.runner import JobRunner",
        "streams.z": "from streams.console import app",
    }
    for name, source in cases.items():
        assert violations(name, source), f"{name}: {source!r} passed"
    assert violations("streams.commands.x", "from rich.console import Console") == []
    assert violations("handlers.messaging.x", "from handlers.crm import connections") == []
    assert violations("handlers.crm.x", "from handlers.messaging import send")
