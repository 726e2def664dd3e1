"""What message.send posts: note types per channel, the marker, reading Kommo's answer."""

from __future__ import annotations

import pytest

from handlers.messaging.message import Message, created_note_id, marker_of
from schemas.jobs import MessageSend


def _message(channel: str = "note", text: str = "Hi", key: str = "key-1") -> Message:
    payload = MessageSend(
        connection_id="conn-1",
        lead_id=42,
        channel=channel,  # type: ignore[arg-type]
        text=text,
        idempotency_key=key,
    )
    return Message.of(payload, "org-1")


def test_the_marker_is_a_digest_of_the_key_not_the_key() -> None:
    marker = marker_of("order-1234-shipped")
    assert marker == marker_of("order-1234-shipped")
    assert marker != marker_of("order-1234-shipped ")
    assert "order" not in marker
    assert marker.startswith("[conveyor:") and len(marker) == len("[conveyor:]") + 20


@pytest.mark.parametrize(
    ("channel", "note_type", "params"),
    [
        ("note", "common", {"text": "Hi\n\n{marker}"}),
        ("email", "extended_service_message", {"service": "Email", "text": "Hi\n\n{marker}"}),
    ],
)
def test_each_channel_posts_its_note_type_with_the_marker_in_the_text(
    channel: str, note_type: str, params: dict[str, str]
) -> None:
    m = _message(channel)
    expected = {k: v.format(marker=m.marker) for k, v in params.items()}
    assert m.note() == {
        "entity_id": 42,
        "note_type": note_type,
        "params": expected,
        "request_id": m.marker,
    }


def test_the_fingerprint_changes_with_what_is_sent_but_not_with_the_key() -> None:
    base = _message()
    assert _message(key="key-2").fingerprint == base.fingerprint
    assert _message(text="Hello").fingerprint != base.fingerprint
    assert _message(channel="email").fingerprint != base.fingerprint


def test_the_created_note_is_read_from_kommos_answer() -> None:
    m = _message()
    ours = {"id": 7, "request_id": m.marker}
    assert created_note_id([ours], m) == 7
    assert created_note_id([{"id": 9, "request_id": "other"}, ours], m) == 7
    assert created_note_id([{"id": 8}], m) == 8  # one note, no request_id echoed
    assert created_note_id([], m) is None
    assert created_note_id([{"id": 8}, {"id": 9}], m) is None  # which one?
    assert created_note_id([{"id": "8", "request_id": m.marker}], m) is None
    assert created_note_id([{"id": True, "request_id": m.marker}], m) is None
