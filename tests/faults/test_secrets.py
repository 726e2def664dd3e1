"""A provider that echoes the API key in its error: the key reaches no log, dead letter or row."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from handlers.crm.crypto import new_key
from schemas.envelope import JobEnvelope
from tests.support.dlq import wait_dlq
from tests.support.http import file_server
from tests.support.openai_server import openai_server
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

SECRET = "sk-live-" + uuid.uuid4().hex  # the worker's key; the server expects another


async def test_an_echoed_api_key_is_masked_everywhere(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    async with file_server() as files, openai_server(api_key="the-right-key") as api:
        asset_id = f"a-{uuid.uuid4().hex[:12]}"
        await db.execute(
            "INSERT INTO assets (id, organization_id, source_url, mime_type)"
            " VALUES ($1, 'org-1', $2, 'text/plain')",
            asset_id,
            files.add("notes.txt", b"Some text worth embedding. " * 40),
        )
        worker = worker_factory(
            stack,
            CONVEYOR_EMBEDDING__PROVIDER="openai",
            CONVEYOR_EMBEDDING__BASE_URL=api.base_url,
            CONVEYOR_EMBEDDING__API_KEY=SECRET,
        )
        worker.wait_ready()
        job = JobEnvelope(
            type="asset.process", organization_id="org-1", payload={"asset_id": asset_id}
        )
        stack.publish([job])
        [row] = await wait_dlq(db, stack, 1)
        assert 401 in api.statuses("/embeddings"), "the server did see the key and refuse it"

    asset = await db.fetchrow("SELECT status, error FROM assets WHERE id = $1", asset_id)
    assert asset["status"] == "failed"
    assert "HTTP 401" in asset["error"] and "check the API key" in asset["error"]
    assert "Incorrect API key provided: Bearer ***" in asset["error"], "the echo, scrubbed"
    assert "HTTP 401" in row["error_message"]
    stored = [asset["error"], row["error_message"], row["error_stack"], str(row["headers"])]
    assert all(SECRET not in text for text in stored), stored
    worker.stop()
    log = worker.log_path.read_text()
    assert "job.dead_lettered" in log
    assert SECRET not in log


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_extraction_processes_inherit_no_secret(stack: Stack, worker_factory: Any) -> None:
    """Parsers read hostile files: the processes they run in get no CONVEYOR_* variable."""
    worker = worker_factory(
        stack,
        CONVEYOR_LLM__API_KEY=SECRET,
        CONVEYOR_EMBEDDING__API_KEY=SECRET + "-embedding",
        CONVEYOR_EXTRACT__WORKERS="2",
    )
    worker.wait_ready()
    assert worker.proc is not None
    children = _children(worker.proc.pid)
    assert len(children) >= 2, "the extraction processes are running"
    for child in children:
        environ = Path(f"/proc/{child}/environ").read_bytes()
        assert b"CONVEYOR_" not in environ, (
            child,
            b"CONVEYOR_" + environ.split(b"CONVEYOR_")[1][:30],
        )
        assert SECRET.encode() not in environ


KEYRING_SECRET = f"probe:{new_key()}"
LOWER_CASE_SECRET = "sk-lower-" + uuid.uuid4().hex


def test_an_extraction_process_cannot_read_the_workers_environment_or_memory(
    stack: Stack, worker_factory: Any, tmp_path: Path
) -> None:
    """Issue 19: code running in an extraction process (a parser exploit) tries the
    worker's /proc environ and memory, and its own environment, for the secrets the
    operator gave — the keyring in upper case, an API key in a lower-case variable
    (pydantic-settings reads both). Tests run as root, and root's capabilities would
    decide alone (a process without them may not read one with them): the worker is
    started without any capability, as the chart's pod runs, so worker and extraction
    process are the same user with none — and only the worker being non-dumpable
    stands between them."""
    report = tmp_path / "probe.json"
    worker = worker_factory(
        stack,
        hooks=["--extraction-probe", str(report)],
        capabilities=False,
        CONVEYOR_CRM__KEYRING=KEYRING_SECRET,
        conveyor_llm__api_key=LOWER_CASE_SECRET,
        CONVEYOR_EXTRACT__WORKERS="1",
    )
    worker.wait_ready()
    assert worker.proc is not None
    found = json.loads(report.read_text())
    assert found["needles"] == 2
    # the control: the secrets are still in the worker's original environment block,
    # readable by a process with CAP_SYS_PTRACE (this test, as root)
    worker_pid = found["parent"]
    assert "setpriv" not in Path(f"/proc/{worker_pid}/cmdline").read_text()
    assert Path(f"/proc/{worker_pid}/status").read_text().count("CapEff:\t0000000000000000")
    environ = Path(f"/proc/{worker_pid}/environ").read_bytes()
    assert KEYRING_SECRET.encode() in environ and LOWER_CASE_SECRET.encode() in environ
    assert found["cap_eff"] == 0, "the extraction process holds no capability"
    assert found["own_environ_leaks"] == [], "neither variable was inherited"
    assert found["parent_environ"] == {"status": "denied", "error": "PermissionError"}
    assert found["parent_memory"] == {"status": "denied", "error": "PermissionError"}
