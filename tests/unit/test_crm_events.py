"""Kommo webhook bodies: nested form keys, typed events, the signature check."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

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


def test_the_signature_is_an_hmac_of_the_body_compared_in_constant_time() -> None:
    body = "leads[add][0][id]=1"
    good = signature_of("secret", body)
    verify("secret", body, good)
    verify("secret", body, "sha256=" + good.upper())
    for bad in ("", "  ", good[:-1] + "0", signature_of("other", body), "sha256=ünïcode"):
        with pytest.raises(PermanentError, match="signature is missing or wrong"):
            verify("secret", body, bad)
    with pytest.raises(PermanentError):
        verify("secret", body + " ", good)
