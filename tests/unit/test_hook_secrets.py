"""Helm hook Jobs get only the secrets their command uses (what each template asks for;
the rendered Jobs are checked in test_chart.py)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

TEMPLATES = Path(__file__).resolve().parents[2] / "helm" / "conveyor" / "templates"
VALUES = TEMPLATES.parent / "values.yaml"

# What each hook command reads: `migrate` connects to Postgres; `topics create`
# talks to Kafka only (its login and key passphrase, with TLS/SASL).
NEEDED = {"job-migrate.yaml": ["postgres"], "job-topics.yaml": ["kafka"]}


def _secret_groups(template: str) -> list[str]:
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    match = re.search(r'"secrets" \(list((?: "[a-z_]+")*)\)', text)
    assert match, f"{template} must pass the hook Job its secrets explicitly"
    return re.findall(r'"([a-z_]+)"', match.group(1))


def test_each_hook_gets_exactly_the_secrets_it_uses() -> None:
    groups = set(yaml.safe_load(VALUES.read_text(encoding="utf-8"))["secrets"])
    for template, needed in NEEDED.items():
        assert _secret_groups(template) == needed, template
        assert set(needed) <= groups
