"""A dead letter made fit to show: its payload and headers with secrets masked.

Used by ``conveyor dlq show`` and the console's dead-letter page. The raw
bytes stay in ``worker_dlq`` untouched (a replay sends them as they were);
what is shown has every configured secret value, every secret-named field
(``signature``, ``*_token``, ``password``...), bearer tokens and passwords in
URLs masked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.dlq import HEADER_PREFIX
from streams.redact import Redactor, mask_json

MAX_SHOWN_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class ShownDeadLetter:
    payload: str  # pretty JSON, or the masked text when it is not JSON
    payload_is_json: bool
    truncated: bool
    own_headers: dict[str, str]
    conveyor_headers: dict[str, str]
    key: str | None


def masked_payload(raw: bytes | None, mask: Redactor) -> tuple[str, bool, bool]:
    """(text, is JSON, truncated) of a record value, secrets masked."""
    if not raw:
        return "", False, False
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        shown = mask(text[:MAX_SHOWN_CHARS])
        return shown, False, len(text) > MAX_SHOWN_CHARS
    pretty = json.dumps(mask_json(data, mask), indent=2, ensure_ascii=False, sort_keys=False)
    return pretty[:MAX_SHOWN_CHARS], True, len(pretty) > MAX_SHOWN_CHARS


def split_headers(
    stored: str | Mapping[str, str] | None, mask: Redactor
) -> tuple[dict[str, str], dict[str, str]]:
    """(the record's own headers, the conveyor-* failure headers), masked."""
    headers: Mapping[str, Any] = (
        json.loads(stored) if isinstance(stored, str) else dict(stored or {})
    )
    masked = mask_json(dict(headers), mask)
    assert isinstance(masked, dict)
    own = {k: str(v) for k, v in masked.items() if not k.startswith(HEADER_PREFIX)}
    ours = {
        k: str(v)
        for k, v in masked.items()
        if k.startswith(HEADER_PREFIX) and k != f"{HEADER_PREFIX}error-stack"
    }
    return own, ours


def shown(row: Any, mask: Redactor) -> ShownDeadLetter:
    """``row``: a ``worker_dlq`` row (an asyncpg Record or a mapping)."""
    payload, is_json, truncated = masked_payload(row["raw_value"], mask)
    own, ours = split_headers(row["headers"], mask)
    key = row["raw_key"]
    return ShownDeadLetter(
        payload=payload,
        payload_is_json=is_json,
        truncated=truncated,
        own_headers=own,
        conveyor_headers=ours,
        key=None if key is None else mask(bytes(key)[:500].decode("utf-8", "replace")),
    )
