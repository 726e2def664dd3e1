"""Knowledge-graph extraction, the pure part: prompt, answer schema, normalisation, merging.

Entities are identified per organization by ``(type, normalized_name)``,
the unique key of ``kg_entities``: names are NFKC-normalised, case-folded,
whitespace-collapsed and stripped of punctuation at both ends, so "Acme
Corp." and " ACME  corp" are one entity. Relationships name their ends by
entity name; they are kept only when both ends were extracted.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_NAME_CHARS = 300
MAX_VALUE_CHARS = 1000

SYSTEM_PROMPT = """\
You extract a knowledge graph from document excerpts.
Answer with one JSON object and nothing else, of this shape:
{"entities": [{"type": str, "name": str, "value": str (optional),
               "confidence": number 0..1 (optional)}],
 "relationships": [{"source": entity name, "target": entity name, "type": str,
                    "confidence": number 0..1 (optional)}]}
Entity types are short nouns such as person, organization, product, place,
date, amount, concept. Relationship types are short snake_case verbs such as
works_at, located_in, owns, part_of. Use each entity's name exactly as in the
entities list when you refer to it in a relationship. Extract only what the
text states. If there is nothing to extract, answer {"entities": [], "relationships": []}."""

_SPACE = re.compile(r"\s+")


class InvalidExtraction(ValueError):
    """The LLM's answer is not the JSON we asked for."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class EntityOut(_Strict):
    type: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    value: str | None = Field(None, max_length=MAX_VALUE_CHARS)
    confidence: float | None = Field(None, ge=0, le=1)

    @field_validator("value", mode="before")
    @classmethod
    def _scalar_to_text(cls, value: Any) -> Any:
        return (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )


class RelationshipOut(_Strict):
    source: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    target: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    type: str = Field(min_length=1, max_length=100)
    confidence: float | None = Field(None, ge=0, le=1)


class Extraction(_Strict):
    """What the LLM must answer."""

    entities: list[EntityOut]
    relationships: list[RelationshipOut] = Field(default_factory=list)


def build_messages(texts: list[str]) -> list[dict[str, str]]:
    excerpts = "\n\n".join(f"[excerpt {i + 1}]\n{text}" for i, text in enumerate(texts))
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": excerpts},
    ]


def repair_messages(
    messages: list[dict[str, str]], answer: str, error: InvalidExtraction
) -> list[dict[str, str]]:
    """Ask again, showing the model its unusable answer and what was wrong with it."""
    return [
        *messages[:2],
        {"role": "assistant", "content": answer[:4000]},
        {
            "role": "user",
            "content": f"That answer was not usable ({error}). Answer again with only the"
            " JSON object of the required shape.",
        },
    ]


def parse_extraction(answer: str) -> Extraction:
    """Validate the LLM's text as an Extraction, or raise InvalidExtraction saying why."""
    try:
        return Extraction.model_validate(json.loads(answer))
    except json.JSONDecodeError as exc:
        raise InvalidExtraction(f"not JSON: {exc.msg} at position {exc.pos}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidExtraction(
            f"{exc.error_count()} schema error(s), first at {where or 'top level'}: {first['msg']}"
        ) from None


def normalize_name(name: str) -> str:
    """The de-duplication key of a name: NFKC, case-folded, single spaces, no end punctuation."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    text = _SPACE.sub(" ", text).strip()
    start, end = 0, len(text)
    while start < end and _is_edge_junk(text[start]):
        start += 1
    while end > start and _is_edge_junk(text[end - 1]):
        end -= 1
    return text[start:end]


def normalize_type(kind: str) -> str:
    """Entity and relationship types: normalised like names, words joined by ``_``."""
    return normalize_name(kind).replace(" ", "_")


def _is_edge_junk(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


EntityKey = tuple[str, str]  # (type, normalized_name)


@dataclass
class Entity:
    type: str
    name: str
    normalized_name: str
    value: str | None
    confidence: float | None

    @property
    def key(self) -> EntityKey:
        return (self.type, self.normalized_name)


@dataclass
class Relationship:
    source: EntityKey
    target: EntityKey
    type: str
    confidence: float | None


@dataclass
class Graph:
    """Entities and relationships merged across an asset's batches, de-duplicated."""

    entities: dict[EntityKey, Entity] = field(default_factory=dict)
    relationships: dict[tuple[EntityKey, EntityKey, str], Relationship] = field(
        default_factory=dict
    )
    dropped_relationships: int = 0

    def add(self, extraction: Extraction) -> None:
        for out in extraction.entities:
            self._add_entity(out)
        by_name = self._by_name(extraction.entities)
        for rel in extraction.relationships:
            self._add_relationship(rel, by_name)

    def _add_entity(self, out: EntityOut) -> None:
        entity = Entity(
            normalize_type(out.type), out.name, normalize_name(out.name), out.value, out.confidence
        )
        if not entity.type or not entity.normalized_name:
            return
        known = self.entities.setdefault(entity.key, entity)
        if known is not entity:
            known.value = known.value or entity.value
            known.confidence = _max(known.confidence, entity.confidence)

    def _by_name(self, entities: Iterable[EntityOut]) -> dict[str, EntityKey]:
        """Normalised name → entity key; this batch's entities win over earlier ones."""
        names = {key[1]: key for key in self.entities}
        for out in entities:
            key = (normalize_type(out.type), normalize_name(out.name))
            if key in self.entities:
                names[key[1]] = key
        return names

    def _add_relationship(self, rel: RelationshipOut, by_name: dict[str, EntityKey]) -> None:
        source = by_name.get(normalize_name(rel.source))
        target = by_name.get(normalize_name(rel.target))
        kind = normalize_type(rel.type)
        if source is None or target is None or source == target or not kind:
            self.dropped_relationships += 1
            return
        new = Relationship(source, target, kind, rel.confidence)
        known = self.relationships.setdefault((source, target, kind), new)
        if known is not new:
            known.confidence = _max(known.confidence, new.confidence)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
