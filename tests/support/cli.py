"""The ``conveyor`` command as a subprocess (operator commands are tested as run)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from tests.support.worker import ROOT


def conveyor(
    *args: str, env: Mapping[str, str], stdin: str | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``conveyor ARGS`` with ``env`` over this environment (minus any ``KOMMO_*``)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KOMMO_")}
    return subprocess.run(
        [sys.executable, "-m", "streams.commands.cli", *args],
        env={**base, **env, "COLUMNS": "200"},
        input=stdin,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
