"""What a compromised extraction process would try: read its parent's secrets.

``attack`` runs inside a real extraction process of a real worker (started
through tests/support/hooked_worker.py with ``--extraction-probe``), as the
code of a parser exploit would. It reports what it could reach; it never
raises, so the worker carries on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

MAX_SCAN_BYTES = 1024 * 1024 * 1024
CHUNK = 1024 * 1024
_REGION = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (r.)")


def attack(needles: list[str]) -> dict[str, Any]:
    """Try the parent's ``/proc`` environment and memory; look for ``needles`` anywhere."""
    wanted = [n.encode() for n in needles if n]
    parent = os.getppid()
    own = Path("/proc/self/environ").read_bytes() + repr(dict(os.environ)).encode()
    return {
        "pid": os.getpid(),
        "parent": parent,
        "uid": os.getuid(),
        "cap_eff": _cap_eff(),
        "own_environ_leaks": [i for i, n in enumerate(wanted) if n in own],
        "parent_environ": _read_environ(parent, wanted),
        "parent_memory": _read_memory(parent, wanted),
    }


def _cap_eff() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return -1


def _read_environ(pid: int, wanted: list[bytes]) -> dict[str, Any]:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError as exc:
        return {"status": "denied", "error": type(exc).__name__}
    return {"status": "read", "leaks": [i for i, n in enumerate(wanted) if n in data]}


def _read_memory(pid: int, wanted: list[bytes]) -> dict[str, Any]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)  # noqa: SIM115
    except OSError as exc:
        return {"status": "denied", "error": type(exc).__name__}
    found: set[int] = set()
    scanned = 0
    with mem:
        for start, end in _readable(maps):
            for at in range(start, end, CHUNK):
                if scanned >= MAX_SCAN_BYTES or len(found) == len(wanted):
                    break
                try:
                    mem.seek(at)
                    block = mem.read(min(CHUNK + 256, end - at))
                except OSError:
                    break
                scanned += len(block)
                found |= {i for i, n in enumerate(wanted) if n in block}
    return {"status": "read", "leaks": sorted(found), "scanned_bytes": scanned}


def _readable(maps: str) -> list[tuple[int, int]]:
    regions = []
    for line in maps.splitlines():
        match = _REGION.match(line)
        if match and "[vvar]" not in line and "[vsyscall]" not in line:
            regions.append((int(match[1], 16), int(match[2], 16)))
    return regions
