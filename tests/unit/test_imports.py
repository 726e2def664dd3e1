"""Every module of the service imports: an undeclared dependency fails here."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ("streams", "handlers", "schemas")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            names.append(info.name)
    return sorted(names)


def test_the_service_has_modules() -> None:
    assert {"streams.runner", "streams.offsets", "handlers.errors"} <= set(_modules())


@pytest.mark.parametrize("name", _modules())
def test_module_imports(name: str) -> None:
    importlib.import_module(name)
