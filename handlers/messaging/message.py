"""What one ``message.send`` posts to Kommo: the note, and the marker that finds it again.

Note types (Kommo's reference, ``reference/notes-types``; docs/KOMMO.md):

- ``note`` → ``common`` ("Text note"), ``params: {"text"}``.
- ``email`` → ``extended_service_message`` ("Extended service message:
  supports extended text length and can be minimized in the interface"),
  ``params: {"service", "text"}``. Kommo offers no email note type that an
  integration can create (mail notes are written by Kommo's own mailbox
  integration and carry no params in the API); of the types it does offer,
  the service messages are the ones "created by the integration", and the
  extended one takes long texts, which emails are.

The marker goes at the end of ``params.text``: Kommo keeps a note's
``params`` and returns them when it lists a lead's notes, which is the only
way to search notes (the list filters by id, type and ``updated_at``, never
by content). ``request_id`` is only echoed in the answer to the POST, not
stored with the note, and a type's other params are not documented to be
kept, so neither can identify a note whose answer was lost.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from schemas.jobs import MessageSend

NOTE_TYPES = {"note": "common", "email": "extended_service_message"}
EMAIL_SERVICE = "Email"
MARKER_DIGEST_CHARS = 20  # 80 bits of SHA-256: no two keys of one lead share a marker


def marker_of(idempotency_key: str) -> str:
    """The marker of a key: a short digest, so the key itself never shows in Kommo."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:MARKER_DIGEST_CHARS]
    return f"[conveyor:{digest}]"


@dataclass(frozen=True, slots=True)
class Message:
    """One outbound message, as the ledger and Kommo see it."""

    key: str
    organization_id: str
    connection_id: str
    lead_id: int
    channel: str
    note_type: str
    text: str

    @classmethod
    def of(cls, payload: MessageSend, organization_id: str) -> Message:
        return cls(
            payload.idempotency_key,
            organization_id,
            payload.connection_id,
            payload.lead_id,
            payload.channel,
            NOTE_TYPES[payload.channel],
            payload.text,
        )

    @property
    def marker(self) -> str:
        return marker_of(self.key)

    @property
    def fingerprint(self) -> str:
        """What must not change under one key: a key reused for another message is refused."""
        what = [self.connection_id, self.lead_id, self.channel, self.text]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()

    def note(self) -> dict[str, Any]:
        """The element of ``POST /api/v4/leads/notes`` that posts this message."""
        text = f"{self.text}\n\n{self.marker}"
        params: dict[str, Any] = {"text": text}
        if self.note_type != "common":
            params = {"service": EMAIL_SERVICE, "text": text}
        return {
            "entity_id": self.lead_id,
            "note_type": self.note_type,
            "params": params,
            "request_id": self.marker,
        }


def created_note_id(created: list[dict[str, Any]], message: Message) -> int | None:
    """The id of our note in the POST's answer, or None when the answer does not name it."""
    ours = [n for n in created if n.get("request_id") == message.marker] or (
        created if len(created) == 1 else []
    )
    note_id = ours[0].get("id") if len(ours) == 1 else None
    return note_id if isinstance(note_id, int) and not isinstance(note_id, bool) else None
