"""Kommo webhook deliveries: form-encoded nested keys → typed events.

Kommo posts ``application/x-www-form-urlencoded`` bodies whose keys nest
with brackets — ``leads[status][0][id]=…&account[subdomain]=…`` — one
top-level key per entity (``leads``, ``contacts``, ``companies``, ``task``,
``message``, ...), then the action (``add``, ``update``, ``status``,
``delete``, ``restore``, ``responsible``, ``note``), then a list of items.
What we apply: leads and contacts (add/update/status/restore/responsible,
delete), notes on them, incoming messages. Anything else becomes an
UnknownEvent: stored and reported, never a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
PART = re.compile(r"\[([^\[\]]*)\]")
MAX_DEPTH = 8
APPLIED_ENTITIES = ("leads", "contacts")
ENTITY_ACTIONS = frozenset({"add", "update", "status", "delete", "restore", "responsible"})

Entity = Literal["leads", "contacts"]


@dataclass(frozen=True, slots=True)
class EntityEvent:
    """A lead or contact added, changed, moved, restored or deleted."""

    entity: Entity
    action: str
    id: int
    updated_at: datetime | None
    name: str | None = None
    status_id: int | None = None
    pipeline_id: int | None = None
    price: str | None = None
    responsible_user_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"{self.entity}.{self.action}"


@dataclass(frozen=True, slots=True)
class NoteEvent:
    entity: str
    entity_id: int | None
    note_id: str | None
    note_type: str | None
    text: str | None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"{self.entity}.note"


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A chat message (``message[add]``): ``direction`` is Kommo's ``type`` (incoming...)."""

    id: str | None
    direction: str | None
    text: str | None
    contact_id: int | None
    talk_id: str | None
    created_at: datetime | None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "message.add"


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    kind: str
    data: Any = None


Event = EntityEvent | NoteEvent | MessageEvent | UnknownEvent


@dataclass(frozen=True, slots=True)
class Delivery:
    """``nul_removed``: NUL characters (``%00``) taken out of keys and values, which
    Postgres refuses in text and jsonb."""

    account: dict[str, Any]
    events: list[Event]
    nul_removed: int = 0

    @property
    def unknown_kinds(self) -> list[str]:
        return sorted({e.kind for e in self.events if isinstance(e, UnknownEvent)})


def decoded_pairs(body: str) -> tuple[list[tuple[str, str]], int]:
    """The body's decoded key/value pairs without NUL characters, and how many were removed.

    ``%00`` decodes to NUL, which Postgres cannot store: left in, the delivery
    would fail at the database, permanently, however often it is retried.
    """
    pairs, removed = [], 0
    for key, value in parse_qsl(body, keep_blank_values=True):
        removed += key.count("\x00") + value.count("\x00")
        pairs.append((key.replace("\x00", ""), value.replace("\x00", "")))
    return pairs, removed


def parse_form(body: str) -> dict[str, Any]:
    """Nested keys into nested values; a level whose keys are all indices becomes a list."""
    return _tree(decoded_pairs(body)[0])


def _tree(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in pairs:
        node = tree
        path = _path(key)
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):  # a scalar and a nested value at one path
                child = node[part] = {}
            node = child
        leaf = path[-1] if path[-1] != "" else str(len(node))  # tags[]=a&tags[]=b
        if not isinstance(node.get(leaf), dict):
            node[leaf] = value
    listed: dict[str, Any] = _listify(tree)
    return listed


def parse_delivery(body: str) -> Delivery:
    pairs, removed = decoded_pairs(body)
    tree = _tree(pairs)
    account = tree.pop("account", {})
    events: list[Event] = []
    for entity, actions in tree.items():
        if not isinstance(actions, dict):
            events.append(UnknownEvent(entity, actions))
            continue
        for action, items in actions.items():
            for item in items if isinstance(items, list) else [items]:
                events.append(_event(entity, action, item))
    return Delivery(account if isinstance(account, dict) else {}, events, removed)


def _event(entity: str, action: str, item: Any) -> Event:
    if not isinstance(item, dict):
        return UnknownEvent(f"{entity}.{action}", item)
    if action == "note" and entity in ("leads", "contacts", "companies"):
        return _note(entity, item)
    if entity == "message" and action == "add":
        return MessageEvent(
            _text(item.get("id")),
            _text(item.get("type")),
            _text(item.get("text")),
            _int(item.get("contact_id")),
            _text(item.get("talk_id")),
            _time(item.get("created_at")),
            item,
        )
    lead_or_contact = entity in APPLIED_ENTITIES and item.get("type") != "company"
    if lead_or_contact and action in ENTITY_ACTIONS and _int(item.get("id")) is not None:
        return _entity(entity, action, item)
    kind = "companies" if item.get("type") == "company" else entity
    return UnknownEvent(f"{kind}.{action}", item)


def _entity(entity: str, action: str, item: dict[str, Any]) -> EntityEvent:
    when = item.get("last_modified") or item.get("updated_at")
    if when is None and action == "add":
        when = item.get("date_create") or item.get("created_at")
    return EntityEvent(
        "leads" if entity == "leads" else "contacts",
        action,
        _int(item["id"]) or 0,
        _time(when),
        name=_text(item.get("name")),
        status_id=_int(item.get("status_id")),
        pipeline_id=_int(item.get("pipeline_id")),
        price=_text(item.get("price")) if _number(item.get("price")) else None,
        responsible_user_id=_int(item.get("responsible_user_id")),
        data=item,
    )


def _note(entity: str, item: dict[str, Any]) -> NoteEvent:
    nested = item.get("note")
    note: dict[str, Any] = nested if isinstance(nested, dict) else item
    return NoteEvent(
        entity,
        _int(note.get("element_id") or note.get("entity_id")),
        _text(note.get("id")),
        _text(note.get("note_type")),
        _text(note.get("text")),
        item,
    )


def _path(key: str) -> list[str]:
    match = KEY.match(key)
    if match is None:
        return [key]
    parts = [match.group(1), *PART.findall(match.group(2))]
    return parts[:MAX_DEPTH]


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> bool:
    try:
        float(str(value))
    except (TypeError, ValueError):
        return False
    return True


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, dict | list) else str(value)


def _time(value: Any) -> datetime | None:
    seconds = _int(value)
    if seconds is None or seconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
