"""Runtime control: the pauses the control topic says, the gate, and the pool holding records."""

from __future__ import annotations

import asyncio
import json

from schemas.dlq import FailureContext
from schemas.fleet import PauseRecord, pause_key
from streams.control import JobGate, Pauses, organization_of
from streams.records import Record
from streams.settings import Settings
from streams.status import Sources, StatusReporter
from tests.unit.test_pool import OTHER, TP, Flow, close, pool
from tests.unit.test_pool_ordering import Jobs


def pause(job_type: str = "t", org: str | None = None, paused: bool = True) -> PauseRecord:
    return PauseRecord(job_type=job_type, organization_id=org, paused=paused, reason="r", by="me")


def job(offset: int, org: str | None = None, tp: tuple[str, int] = TP, key: bytes | None = None):
    value = json.dumps({"id": f"j{offset}", "type": "t", "organization_id": org, "payload": {}})
    return Record(tp[0], tp[1], offset, key, value.encode(), (), None)


def test_the_last_record_of_a_key_decides() -> None:
    pauses = Pauses()
    pauses.apply(pause())
    pauses.apply(pause(org="acme"))
    pauses.apply(pause("other", org="beta"))
    assert pauses.labels() == ["other@beta", "t", "t@acme"]
    pauses.apply(pause(paused=False))
    assert pauses.labels() == ["other@beta", "t@acme"], "resuming the type leaves its org pauses"
    pauses.apply(pause(org="acme", paused=False))
    pauses.apply(pause("other", org="beta", paused=False))
    assert pauses.labels() == [] and pauses.of("t") is None


def test_control_records_are_read_from_bytes_and_bad_ones_ignored() -> None:
    pauses = Pauses()
    changes: list[int] = []
    pauses.on_change(lambda: changes.append(1))
    record = pause(org="acme")
    pauses.apply_bytes(record.key, record.to_bytes())
    pauses.apply_bytes(b"x", b"not json")
    pauses.apply_bytes(record.key, None)  # a tombstone does not resume
    assert pauses.labels() == ["t@acme"] and changes == [1]
    assert record.key == pause_key("t", "acme") != pause_key("t", None)


def test_the_gate_refuses_a_paused_type_and_only_the_paused_organization() -> None:
    pauses = Pauses()
    gate = JobGate("t", pauses)
    assert gate(job(0, "acme"))
    pauses.apply(pause(org="acme"))
    assert not gate(job(0, "acme"))
    assert gate(job(1, "acme-corp")), "another org whose id contains the paused one"
    assert gate(job(2, None)) and gate(job(3, "beta"))
    nested = b'{"id": "x", "organization_id": "beta", "payload": {"organization_id": "acme"}}'
    assert gate(Record("t", 0, 4, None, nested, (), None)), "only the top-level field counts"
    assert gate(Record("t", 0, 5, None, b"\xff not json acme", (), None)), "undecodable: runs"
    assert JobGate("u", pauses)(job(6, "acme")), "another job type"
    pauses.apply(pause())
    assert not gate(job(7, "beta")) and not gate(job(8, None))


def test_organizations_with_characters_json_may_escape_are_parsed() -> None:
    pauses = Pauses()
    gate = JobGate("t", pauses)
    org = 'caf\u00e9 "east"/1'
    pauses.apply(pause(org=org))
    escaped = json.dumps({"id": "x", "organization_id": org}, ensure_ascii=True).encode()
    assert org.encode() not in escaped, "the raw bytes do not contain the id"
    assert not gate(Record("t", 0, 0, None, escaped, (), None))
    assert organization_of(escaped) == org


async def test_a_paused_type_starts_nothing_holds_its_offsets_and_resumes_in_order() -> None:
    jobs = Jobs(hold=True)
    pauses = Pauses()
    p, tracker = pool(jobs, concurrency=2, high_water=100)
    p.gate = JobGate("t", pauses)  # what lifecycle sets while "t" has a pause
    records = [job(i) for i in range(6)]
    p.submit(TP, records[0])
    p.submit(TP, records[1])
    await jobs.until(lambda: len(jobs.running) == 2, "two running")
    pauses.apply(pause())
    for rec in records[2:]:
        p.submit(TP, rec)
    jobs.release(records[0])
    jobs.release(records[1])
    await jobs.until(lambda: len(jobs.ended) == 2, "the running ones finish")
    await asyncio.sleep(0.01)
    assert [r.offset for r in jobs.started] == [0, 1], "nothing started while paused"
    assert p.held == 4 and p.waiting == 4 and p.in_flight == 0
    assert tracker.committable(TP) == 2, "committed up to the first held record, not past it"
    pauses.apply(pause(paused=False))
    assert p.release_held() == 4
    await jobs.until(lambda: len(jobs.started) == 4, "resumed")
    assert [r.offset for r in jobs.started] == [0, 1, 2, 3], "held records go in offset order"
    for rec in records[2:]:
        jobs.release(rec)
    await jobs.until(lambda: len(jobs.ended) == 6, "all done")
    assert p.held == 0 and tracker.committable(TP) == 6
    await close(p)


async def test_an_organization_pause_keeps_key_order_and_lets_other_keys_run() -> None:
    jobs = Jobs()
    pauses = Pauses()
    p, tracker = pool(jobs, concurrency=4, ordering="key", high_water=100)
    p.gate = JobGate("t", pauses)
    pauses.apply(pause(org="acme"))
    sequence = [
        job(0, "acme", key=b"A"),
        job(1, "beta", key=b"A"),  # same key, other org: must not overtake offset 0
        job(2, "beta", key=b"B"),
        job(3, "acme", key=b"C"),
        job(4, "beta", key=b"B"),
    ]
    for rec in sequence:
        p.submit(TP, rec)
    await jobs.until(lambda: len(jobs.ended) == 2, "key B runs")
    await asyncio.sleep(0.01)
    assert [r.offset for r in jobs.ended] == [2, 4]
    assert p.held == 2 and tracker.committable(TP) is None, "offset 0 is held: nothing commits"
    pauses.apply(pause(org="acme", paused=False))
    p.release_held()
    await jobs.until(lambda: len(jobs.ended) == 5, "all done")
    order = [r.offset for r in jobs.ended]
    assert order.index(0) < order.index(1), "key A in offset order"
    assert not jobs.overlaps and tracker.committable(TP) == 5
    await close(p)


async def test_held_records_are_dropped_unfinished_at_a_revoke_and_bound_the_backlog() -> None:
    jobs = Jobs()
    pauses = Pauses()
    flow: Flow = []
    p, tracker = pool(jobs, concurrency=2, flow=flow, high_water=4)
    p.gate = JobGate("t", pauses)
    pauses.apply(pause())
    for i in range(4):
        p.submit(TP, job(i))
    p.submit(OTHER, job(0, tp=OTHER))
    await asyncio.sleep(0.01)
    assert p.held == 5 and not jobs.started
    assert flow[-1] == (False, frozenset({TP})), "a partition holding high_water records pauses"
    tracker.revoke([TP])
    await p.drain(0.1, [TP])
    assert p.held == 1 and tracker.committable(TP) is None, "dropped, never finished"
    pauses.apply(pause(paused=False))
    p.release_held()
    await jobs.until(lambda: len(jobs.ended) == 1, "the kept partition's record runs")
    assert tracker.committable(OTHER) == 1
    await close(p)


async def test_a_status_report_lists_running_jobs_oldest_first_with_their_identity() -> None:
    jobs = Jobs(hold=True)
    p, _ = pool(jobs, concurrency=3, high_water=100)
    retry = FailureContext(attempts=2).to_headers()
    first = job(0, "acme", key=b"lead-1")
    second = Record(TP[0], TP[1], 1, None, job(1, "beta").value, retry, None, trusted=True)
    p.submit(TP, first)
    await asyncio.sleep(0.05)
    p.submit(TP, second)
    await jobs.until(lambda: len(jobs.running) == 2, "both running")
    pauses = Pauses()
    pauses.apply(pause(org="gamma"))
    sources = Sources(
        pools=lambda: [p],
        partitions=lambda: [],
        paused=pauses.labels,
        state=lambda: "running",
        loop_lag_ms=lambda: 1.5,
    )
    report = StatusReporter(Settings(), sources).report()
    assert [(j.job_id, j.organization_id, j.key, j.attempt) for j in report.in_flight] == [
        ("j0", "acme", "lead-1", 1),
        ("j1", "beta", None, 3),
    ], "oldest first; a retry record's attempt counts the attempts before it"
    assert report.in_flight[0].age_s >= 0.05 > report.in_flight[1].age_s
    assert report.pools[0].in_flight == 2 and report.pools[0].concurrency == 3
    assert report.paused == ["t@gamma"] and report.loop_lag_ms == 1.5
    assert report.rss_bytes and report.rss_bytes > 1_000_000
    assert not report.gone()
    jobs.release(first)
    jobs.release(second)
    await close(p)
