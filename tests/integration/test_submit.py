"""`conveyor submit`: jobs published with the envelope, ids and Kafka key asked for."""

from __future__ import annotations

import json

import pytest

from streams.commands.cli import main
from tests.support.kafka import read_topic
from tests.support.stack import Stack, patched_env

pytestmark = pytest.mark.integration


def submit(stack: Stack, *argv: str) -> int:
    with patched_env(stack.env):
        return main(["submit", *argv])


def test_submit_keys_records_by_payload_or_by_key(stack: Stack) -> None:
    payload = '{"sleep_ms": 1}'
    assert submit(stack, "probe", payload, "--id", "by-payload", "--count", "2") == 0
    assert submit(stack, "probe", payload, "--id", "by-lead", "--org", "o1", "--key", "lead-7") == 0

    records = read_topic(stack.bootstrap, stack.registry().topic_for("probe"))
    by_id = {json.loads(r.value())["id"]: r for r in records}
    assert sorted(by_id) == ["by-lead", "by-payload-0", "by-payload-1"]
    assert by_id["by-lead"].key() == b"lead-7"
    assert json.loads(by_id["by-lead"].value())["organization_id"] == "o1"
    # By default the key is the validated payload (defaults filled), as canonical JSON.
    full = json.loads(by_id["by-payload-0"].value())["payload"]
    assert full["sleep_ms"] == 1
    canonical = json.dumps(full, sort_keys=True).encode()
    assert {by_id[f"by-payload-{i}"].key() for i in (0, 1)} == {canonical}


def test_submit_refuses_an_invalid_payload(stack: Stack) -> None:
    assert submit(stack, "probe", '{"sleep_ms": "soon"}') == 2
    assert submit(stack, "no.such.type", "{}") == 2
