"""NUL characters never reach a Postgres text or jsonb value (pure parts)."""

from __future__ import annotations

import json

import asyncpg
import pytest
from pydantic import ValidationError

from handlers.assets.chunking import Page, chunk_pages
from handlers.dlq_mirror import NOTE_NUL_PAYLOAD, row_of
from schemas.assets import AssetStatus, AssetStatusUpdate
from schemas.dlq import DeadLetterRecord
from schemas.envelope import JobEnvelope
from streams.retry import DeadLetter, decide
from streams.settings import Settings


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"id": "a\x00"}, "id"),
        ({"organization_id": "o\x00"}, "organization_id"),
        ({"payload": {"asset_id": "a\x00b"}}, "payload.asset_id"),
        ({"payload": {"items": [{"x": "ok"}, {"y": "\x00"}]}}, "payload.items[1].y"),
        ({"payload": {"k\x00": 1}}, "payload.k\x00"),
    ],
)
def test_an_envelope_with_a_nul_is_invalid(fields: dict[str, object], where: str) -> None:
    data = {"type": "asset.process", "payload": {}, **fields}
    with pytest.raises(ValidationError, match="contains a NUL character") as caught:
        JobEnvelope.model_validate_json(json.dumps(data))
    assert where in str(caught.value)


def test_chunks_never_hold_a_nul() -> None:
    chunks = chunk_pages([Page(1, "alpha\x00beta " * 100), Page(2, "\x00gamma")], 120, 20)
    assert chunks and not any("\x00" in c.text for c in chunks)
    assert "alphabeta" in chunks[0].text and "gamma" in chunks[-1].text


def test_an_asset_error_loses_its_nuls() -> None:
    update = AssetStatusUpdate(status=AssetStatus.FAILED, error="asset a\x00b does not exist")
    assert update.error == "asset ab does not exist"


def test_a_database_data_error_is_not_retried() -> None:
    error = asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence: 0x00")
    decision = decide(error, 1, Settings().jobs.probe.model_copy(update={"max_attempts": 5}))
    assert isinstance(decision, DeadLetter)
    assert "refused the job's data" in decision.summary


def test_a_dead_letter_row_holds_no_nul_and_flags_the_payload() -> None:
    record = DeadLetterRecord(
        dlq_topic="dlq",
        dlq_partition=0,
        dlq_offset=7,
        key=b"k\x00",
        value=json.dumps({"payload": {"asset_id": "a\x00"}}).encode(),
        headers={"conveyor-error-message": "bad\x00thing", "x\x00": "y"},
    )
    row = row_of(record)
    text = [v for v in row if isinstance(v, str)]
    assert not any("\x00" in v for v in text)
    assert "\\u0000" not in row[21], "headers jsonb text has no escaped NUL either"
    assert row[14] == "badthing" and row[22] is None and NOTE_NUL_PAYLOAD in row[23]
    assert row[19] == b"k\x00" and row[20] == record.value, "raw bytes unchanged"
