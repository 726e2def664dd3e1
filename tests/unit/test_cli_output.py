"""What the CLI prints from the database is data: no markup, no control sequence."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from streams.commands import crm, dlq, dlq_replay
from streams.commands.safe import clean

HOSTILE = "[/] [bold red]x[/bold red] \x1b[2J\x1b]0;pwned\x07 \u202eevil\x9b31m \x00end"


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    text = io.StringIO()
    console = Console(file=text, width=400, force_terminal=True, color_system=None)
    monkeypatch.setattr(dlq, "out", console)
    monkeypatch.setattr(dlq_replay, "out", console)
    monkeypatch.setattr(dlq_replay, "err", console)
    monkeypatch.setattr(crm, "out", console)
    return text


def _dead_letter(**fields: Any) -> dict[str, Any]:
    return {
        "id": 7,
        "failed_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "job_type": "crm.webhook",
        "job_id": "job-1",
        "stage": "handle",
        "error_class": "PermanentError",
        "error_message": "ok",
        "attempts": 1,
        "status": "new",
        "replay_count": 0,
        **fields,
    }


def test_dlq_list_prints_markup_and_escape_sequences_as_inert_text(screen: io.StringIO) -> None:
    dlq.print_rows([_dead_letter(error_message=HOSTILE[:60], job_id="[/]\x1b[31m")])
    shown = screen.getvalue()
    assert "\x1b]" not in shown and "\x1b[2J" not in shown and "\x07" not in shown
    assert "\x1b[31m" not in shown and "\x9b" not in shown and "\u202e" not in shown
    assert "[/] [bold red]x[/bold red]" in shown, "markup shown as typed"
    assert "\\x1b[2J" in shown and "\\x1b]0;pwned\\x07" in shown and "\\u202eevil" in shown


def test_a_replay_report_escapes_its_reasons(screen: io.StringIO) -> None:
    report = dlq_replay.ReplayReport(skipped={1: HOSTILE}, failed={2: HOSTILE})
    dlq_replay.print_report(report, dry_run=False)
    shown = screen.getvalue()
    assert "\x1b[2J" not in shown and "\\x1b[2J" in shown and "[/]" in shown


def test_crm_list_prints_connection_fields_as_inert_text(screen: io.StringIO) -> None:
    row = {
        "id": "c1",
        "organization_id": "org-[/]",
        "base_url": "https://acme.kommo.com",
        "needs_reauth": True,
        "reauth_reason": HOSTILE,
        "sync_state": "failed",
        "sync_started_at": None,
        "sync_finished_at": None,
        "sync_error": "\x1b[1A\x1b[2Kfake line",
        "sync_pipelines": None,
        "key_ids": ["k1"],
    }
    crm.out.print(crm.connection_table([row]))
    shown = screen.getvalue()
    assert "\x1b[1A" not in shown and "\x1b[2J" not in shown
    assert "org-[/]" in shown and "\\x1b[1A\\x1b[2Kfake line" in shown


def test_clean_keeps_ordinary_text_and_escapes_every_control_character() -> None:
    assert clean("Ünïcode, tabs?\tno") == "Ünïcode, tabs?\\x09no"
    assert clean(None) == ""
    assert all(ord(c) >= 0x20 for c in clean("".join(map(chr, range(0x00, 0xA0)))))
