"""Knowledge-graph extraction, the pure part: answer validation, names, merging."""

from __future__ import annotations

import json

import pytest

from handlers.knowledge_graph.graph import (
    Extraction,
    Graph,
    InvalidExtraction,
    normalize_name,
    normalize_type,
    parse_extraction,
    repair_messages,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Acme Corp.", "acme corp"),
        ("  ACME\tcorp ", "acme corp"),
        ("«Acme  Corp»", "acme corp"),
        ("\uff21\uff23\uff2d\uff25 Corp", "acme corp"),  # full-width letters (NFKC)
        ("Straße", "strasse"),  # case folding, not just lower()
        ("ﬁnance", "finance"),  # ligature (NFKC)
        ("O'Brien", "o'brien"),  # inner punctuation stays
        ("C++", "c++"),  # symbols are not punctuation
        ("...", ""),
    ],
)
def test_names_are_normalised(name: str, expected: str) -> None:
    assert normalize_name(name) == expected


def test_types_join_words_with_underscores() -> None:
    assert normalize_type(" Works At ") == "works_at"
    assert normalize_type("ORGANIZATION") == "organization"


def _extraction(entities: list[dict[str, object]], rels: list[dict[str, object]]) -> Extraction:
    return Extraction.model_validate({"entities": entities, "relationships": rels})


def test_entities_are_deduplicated_and_merged() -> None:
    graph = Graph()
    graph.add(
        _extraction(
            [
                {"type": "Organization", "name": "Acme Corp.", "confidence": 0.4},
                {"type": "organization", "name": "ACME corp", "value": "ACME", "confidence": 0.9},
                {"type": "person", "name": "Acme Corp"},  # same name, other type: distinct
            ],
            [],
        )
    )
    assert sorted(graph.entities) == [("organization", "acme corp"), ("person", "acme corp")]
    org = graph.entities[("organization", "acme corp")]
    assert (org.name, org.value, org.confidence) == ("Acme Corp.", "ACME", 0.9)


def test_relationships_resolve_by_normalised_name_and_upsert() -> None:
    graph = Graph()
    people = [{"type": "person", "name": "Ada Lovelace"}, {"type": "org", "name": "Acme"}]
    rel = {"source": "ada lovelace", "target": "ACME.", "type": "WORKS AT", "confidence": 0.5}
    graph.add(_extraction(people, [rel]))
    graph.add(_extraction([], [{**rel, "confidence": 0.8}]))  # a later batch names them again
    graph.add(_extraction([], [{"source": "Ada Lovelace", "target": "Nobody", "type": "knows"}]))
    graph.add(_extraction([], [{"source": "Acme", "target": "acme", "type": "is"}]))
    assert list(graph.relationships) == [(("person", "ada lovelace"), ("org", "acme"), "works_at")]
    only = next(iter(graph.relationships.values()))
    assert only.confidence == 0.8
    assert graph.dropped_relationships == 2  # unknown end, self-loop


def test_entities_whose_name_is_only_punctuation_are_dropped() -> None:
    graph = Graph()
    graph.add(_extraction([{"type": "thing", "name": "--"}], []))
    assert graph.entities == {}


def test_a_valid_answer_parses() -> None:
    answer = json.dumps(
        {
            "entities": [{"type": "amount", "name": "budget", "value": 1200, "confidence": 1}],
            "relationships": [],
            "notes": "extra keys are ignored",
        }
    )
    parsed = parse_extraction(answer)
    assert parsed.entities[0].value == "1200"


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("here you go: {", "not JSON"),
        ('{"relationships": []}', "entities"),
        ('{"entities": [{"type": "x"}]}', "entities.0.name"),
        ('{"entities": [{"type": "x", "name": "y", "confidence": 7}]}', "confidence"),
        ('{"entities": [], "relationships": [{"source": "a"}]}', "relationships.0"),
        ("[]", "top level"),
    ],
)
def test_invalid_answers_say_what_is_wrong(answer: str, problem: str) -> None:
    with pytest.raises(InvalidExtraction, match=problem):
        parse_extraction(answer)


def test_repair_prompt_shows_the_model_its_mistake() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    repaired = repair_messages(messages, "oops", InvalidExtraction("not JSON"))
    assert [m["role"] for m in repaired] == ["system", "user", "assistant", "user"]
    assert repaired[2]["content"] == "oops" and "not JSON" in repaired[3]["content"]
