"""Dependencies: security floors, the hash-pinned locks and the installed environment agree.

``pyproject.toml`` declares ranges whose floors are releases with known
security fixes; ``requirements/*.lock`` (``make lock``) pin every package
with hashes; ``make venv`` and the image install only from a lock.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
DEV_LOCK = ROOT / "requirements" / "dev.lock"

# The lowest release of each parser/client that fixes what docs/SECURITY.md lists.
SECURITY_FLOORS = {
    "mammoth": Version("1.11.0"),  # CVE-2025-11849: linked images fetched
    "pypdf": Version("7.0.0"),  # FlateDecode (6.0) ... XFA, image, xref limits (7.0)
    "aiohttp": Version("3.14.4"),  # CVE-2026-128131: quadratic multi-member decompression
}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _requirements(*groups: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for group in groups:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][group]]
    return reqs + [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]


def _lock(path: Path) -> dict[str, Version]:
    """name -> pinned version; fails if any pin lacks a hash."""
    pins: dict[str, Version] = {}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text(encoding="utf-8"))
    for block in blocks:
        match = _PIN.match(block)
        if match is None:
            continue
        name = canonicalize_name(match.group(1))
        assert "--hash=sha256:" in block, f"{path.name}: {name} is pinned without a hash"
        pins[name] = Version(match.group(2))
    assert pins, f"{path.name} pins nothing"
    return pins


@pytest.mark.parametrize("name", sorted(SECURITY_FLOORS))
def test_declared_floors_exclude_vulnerable_releases(name: str) -> None:
    [req] = [r for r in _requirements() if canonicalize_name(r.name) == name]
    below = _just_below(SECURITY_FLOORS[name])
    assert not req.specifier.contains(below, prereleases=True), f"{req} admits {below}"


def _just_below(floor: Version) -> Version:
    """The highest plausible release before ``floor`` (7.0.0 -> 6.999.999)."""
    major, minor, micro = floor.major, floor.minor, floor.micro
    if micro:
        return Version(f"{major}.{minor}.{micro - 1}")
    if minor:
        return Version(f"{major}.{minor - 1}.999")
    return Version(f"{major - 1}.999.999")


@pytest.mark.parametrize("name", sorted(SECURITY_FLOORS))
def test_installed_and_locked_versions_meet_the_floors(name: str) -> None:
    floor = SECURITY_FLOORS[name]
    assert Version(metadata.version(name)) >= floor
    assert _lock(RUNTIME_LOCK)[name] >= floor


@pytest.mark.parametrize(("lock", "groups"), [(RUNTIME_LOCK, ()), (DEV_LOCK, ("dev",))])
def test_each_lock_satisfies_pyproject(lock: Path, groups: tuple[str, ...]) -> None:
    pins = _lock(lock)
    for req in _requirements(*groups):
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock.name} lacks {name}: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock.name} pins {name}=={pins[name]}, pyproject wants {req}: run `make lock`"
        )


def test_the_two_locks_pin_the_same_versions() -> None:
    runtime, dev = _lock(RUNTIME_LOCK), _lock(DEV_LOCK)
    differ = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert not differ, differ


def test_the_environment_is_installed_from_the_lock() -> None:
    drift = {}
    for name, pinned in _lock(DEV_LOCK).items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # a platform-specific pin (markers) this machine does not need
        if installed != pinned:
            drift[name] = (str(installed), str(pinned))
    assert not drift, f"installed != dev.lock (run `make venv` after `make lock`): {drift}"
