"""Conveyor's streaming layer: the Faust app, agents, runner, offsets and CLI."""

from __future__ import annotations

__version__ = "0.1.0"
