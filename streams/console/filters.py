"""Jinja filters of the console's templates: durations, times, sizes, query strings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jinja2


def ago(seconds: float | None) -> str:
    """A duration the way a person reads it: 4 s, 3 min 20 s, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return ""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def since(value: datetime | None) -> str:
    """How long ago ``value`` was."""
    if value is None:
        return ""
    return ago((datetime.now(UTC) - value).total_seconds())


def mib(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:.0f} MiB"


def query(params: dict[str, Any], **changes: Any) -> str:
    """``params`` with ``changes`` as a query string (None values left out)."""
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


def percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.0f} %"


def install(env: jinja2.Environment) -> None:
    env.filters.update(ago=ago, when=when, since=since, mib=mib, percent=percent)
    env.globals.update(query=query)
