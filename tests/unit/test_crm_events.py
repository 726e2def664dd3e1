"""Kommo webhook bodies: nested form keys, typed events, the signature check."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from handlers.crm.events import (
    EntityEvent,
    MessageEvent,
    NoteEvent,
    UnknownEvent,
    parse_delivery,
    parse_form,
)
from handlers.crm.webhook import signature_of, verify
from handlers.errors import PermanentError
from schemas.jobs import CrmWebhook
from tests.support.kommo_server import form_encode

T0 = 1_759_572_000


def test_nested_keys_become_dicts_and_index_levels_lists() -> None:
    body = (
        "leads%5Bstatus%5D%5B1%5D%5Bid%5D=4822&leads[status][0][id]=4821"
        "&leads[status][0][tags][]=a&leads[status][0][tags][]=b"
        "&account[subdomain]=acme&plain=1&broken[key=x&deep[a][b][c][d][e][f][g][h][i]=z"
    )
    tree = parse_form(body)
    assert tree["leads"]["status"] == [{"id": "4821", "tags": ["a", "b"]}, {"id": "4822"}]
    assert tree["account"] == {"subdomain": "acme"} and tree["plain"] == "1"
    assert tree["broken[key"] == "x"
    assert tree["deep"]["a"]["b"]["c"]["d"]["e"]["f"]["g"] == "z"  # 8 levels kept, no more
    assert parse_form("a[b]=1&a=2") == {"a": {"b": "1"}}  # nested wins over a scalar


def test_a_delivery_becomes_typed_events_and_unknown_kinds_are_kept() -> None:
    body = form_encode(
        {
            "leads": {
                "status": [{"id": 4821, "status_id": 142, "pipeline_id": 11, "last_modified": T0}],
                "add": [{"id": 4900, "name": "New", "price": "1500", "date_create": T0}],
                "delete": [{"id": 4700, "status_id": 143, "pipeline_id": 11}],
                "note": [{"note": {"id": 9, "element_id": 4821, "note_type": 4, "text": "Hi"}}],
            },
            "contacts": {
                "update": [
                    {"id": 77, "name": "Ann", "type": "contact", "last_modified": T0 + 5},
                    {"id": 78, "name": "Acme Inc", "type": "company", "last_modified": T0},
                ]
            },
            "message": {
                "add": [{"id": "m1", "type": "incoming", "text": "Hello", "contact_id": 77}]
            },
            "task": {"add": [{"id": 5, "text": "Call"}]},
            "account": {"id": 31361463, "subdomain": "acme"},
        }
    )
    delivery = parse_delivery(body)
    assert delivery.account == {"id": "31361463", "subdomain": "acme"}
    kinds = [e.kind for e in delivery.events]
    assert kinds == [
        "leads.status",
        "leads.add",
        "leads.delete",
        "leads.note",
        "contacts.update",
        "companies.update",
        "message.add",
        "task.add",
    ]
    status, added, deleted, note, contact, company, message, task = delivery.events
    assert isinstance(status, EntityEvent) and status.status_id == 142
    assert status.updated_at == datetime.fromtimestamp(T0, UTC)
    assert isinstance(added, EntityEvent) and added.price == "1500" and added.updated_at
    assert isinstance(deleted, EntityEvent) and deleted.updated_at is None
    assert isinstance(note, NoteEvent) and (note.entity_id, note.text) == (4821, "Hi")
    assert isinstance(contact, EntityEvent) and contact.name == "Ann"
    assert isinstance(company, UnknownEvent) and isinstance(task, UnknownEvent)
    assert isinstance(message, MessageEvent) and message.direction == "incoming"
    assert delivery.unknown_kinds == ["companies.update", "task.add"]


def test_odd_bodies_give_unknown_events_not_errors() -> None:
    delivery = parse_delivery("leads[update][0][name]=no id&leads=scalar&garbage&%ZZ=1")
    assert {e.kind for e in delivery.events} <= {"leads.update", "leads", "garbage", "%ZZ"}
    assert all(isinstance(e, UnknownEvent) for e in delivery.events)
    assert parse_delivery("").events == []
    when = parse_delivery("leads[update][0][id]=1&leads[update][0][last_modified]=" + "9" * 30)
    assert isinstance(when.events[0], EntityEvent) and when.events[0].updated_at is None


SECRET = "whsec-0123456789abcdef0123456789abcdef"


def _hook(body: str, timestamp: int, signature: str = "", event_id: str = "evt-1") -> CrmWebhook:
    return CrmWebhook(
        connection_id="acme-main",
        event_id=event_id,
        timestamp=timestamp,
        signature=signature or signature_of(SECRET, "acme-main", event_id, timestamp, body),
        body=body,
    )


def test_the_edge_signs_exactly_the_documented_string() -> None:
    body = "leads[add][0][id]=1&account[subdomain]=acme"
    text = f"conveyor-webhook-v1\n{T0}\nacme-main\nevt-1\n{body}".encode()
    expected = hmac.new(SECRET.encode(), text, hashlib.sha256).hexdigest()
    assert signature_of(SECRET, "acme-main", "evt-1", T0, body) == expected
    verify(SECRET, _hook(body, T0, expected), max_age_s=60, now=T0)
    verify(SECRET, _hook(body, T0, "sha256=" + expected.upper()), max_age_s=60, now=T0)


def test_the_signature_covers_the_event_id_the_time_the_connection_and_the_body() -> None:
    body = "leads[add][0][id]=1"
    good = _hook(body, T0)
    for bad in ("", "  ", good.signature[:-1] + "0", "sha256=ünïcode"):
        with pytest.raises(PermanentError, match="signature is missing or wrong"):
            verify(SECRET, good.model_copy(update={"signature": bad}), 60, now=T0)
    # the replay: the same body and signature republished under a new event id
    for change in (
        {"event_id": "evt-2"},
        {"timestamp": T0 + 1},
        {"connection_id": "other"},
        {"body": body + " "},
    ):
        with pytest.raises(PermanentError, match="signature is missing or wrong"):
            verify(SECRET, good.model_copy(update=change), 60, now=T0)
    body_only = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    with pytest.raises(PermanentError, match="signature is missing or wrong"):  # the old scheme
        verify(SECRET, good.model_copy(update={"signature": body_only}), 60, now=T0)


def test_a_delivery_older_than_the_window_or_from_the_future_is_refused() -> None:
    hook = _hook("leads[add][0][id]=1", T0)
    verify(SECRET, hook, max_age_s=600, now=T0 + 600)
    with pytest.raises(PermanentError, match=r"past crm\.webhook_max_age_s"):
        verify(SECRET, hook, max_age_s=600, now=T0 + 601)
    with pytest.raises(PermanentError, match="in the future"):
        verify(SECRET, hook, max_age_s=600, now=T0 - 301)


def test_a_short_webhook_secret_is_refused() -> None:
    short = "s" * 31
    hook = CrmWebhook(
        connection_id="c",
        event_id="e",
        timestamp=T0,
        signature=signature_of(short, "c", "e", T0, "x"),
        body="x",
    )
    with pytest.raises(PermanentError, match="shorter than 32 characters"):
        verify(short, hook, 60, now=T0)


@pytest.mark.parametrize("field", ["connection_id", "event_id"])
def test_ids_with_control_characters_are_refused_so_the_signed_string_is_unambiguous(
    field: str,
) -> None:
    with pytest.raises(ValidationError):
        CrmWebhook.model_validate({**_hook("x", T0).model_dump(), field: "a\nb"})


def test_a_version_1_payload_is_refused_at_validation() -> None:
    with pytest.raises(ValidationError, match="schema_version"):
        CrmWebhook.model_validate(
            {
                "schema_version": 1,
                "connection_id": "c",
                "event_id": "e",
                "signature": "s",
                "body": "",
            }
        )
