"""Which dead letters ``conveyor dlq replay`` leaves out, and why."""

from __future__ import annotations

from typing import Any

import pytest

from streams.commands.dlq_replay import skip_reason

TOPICS = {"jobs.asset.process"}


def row(stage: str, topic: str | None = "jobs.asset.process") -> dict[str, Any]:
    return {"stage": stage, "original_topic": topic}


@pytest.mark.parametrize("stage", ["decode", "validate"])
def test_invalid_records_need_include_invalid(stage: str) -> None:
    assert "--include-invalid" in (skip_reason(row(stage), TOPICS, False) or "")
    assert skip_reason(row(stage), TOPICS, True) is None


def test_a_job_that_killed_its_worker_needs_include_crashed() -> None:
    """Replayed, it is a new record with no deaths: it would kill max_crashes workers again."""
    reason = skip_reason(row("crashed"), TOPICS, include_invalid=True)
    assert reason is not None and "--include-crashed" in reason
    assert skip_reason(row("crashed"), TOPICS, False, include_crashed=True) is None


@pytest.mark.parametrize("stage", ["handle", "timeout"])
def test_handler_failures_are_replayed(stage: str) -> None:
    assert skip_reason(row(stage), TOPICS, False) is None


def test_rows_without_a_known_topic_are_left_out() -> None:
    assert skip_reason(row("handle", None), TOPICS, False) == "no original topic recorded"
    assert "not a job topic" in (skip_reason(row("handle", "jobs.gone"), TOPICS, False) or "")
