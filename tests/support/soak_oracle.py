"""The soak's oracle: what must hold once the faults are over and the fleet has drained.

Pure functions of the evidence (``soak_evidence.gather``), so each rule is
tested on its own (tests/unit/test_soak_oracle.py). The rules:

1. **Every published job ended exactly once**: a ``good`` job completed —
   probe: exactly one effect row; asset: ``completed`` with ``chunks_count``
   chunks, indexed by one run (one ``asset.indexed`` line), and its
   knowledge-graph follow-up recorded in the ledger; message: ``sent`` with
   exactly one note — and has no dead letter; a ``bad`` job has no effect
   and a dead letter (an asset: ``failed``). A job with both, or neither,
   fails.
2. **A dead letter is written once, unless a worker died with it**: dead
   letters are at least once (docs/RELIABILITY.md, "Dead letters"): a worker
   killed after the dead-letter publish was acknowledged but before its
   offset was committed dead-letters the job again on redelivery; so does a
   worker whose commit the broker refused (it was dropped from the group).
   So a job may have n > 1 dead-letter records only if, between each two
   consecutive ones (by record timestamp, the first one's minus 1 s), the
   soak SIGKILLed a worker, a worker exited with a non-zero code, a worker
   logged a refused commit (``worker.revoke_commit_failed``,
   ``worker.drain_commit_failed``), was dropped from its group
   (``SPURIOUS``), or cancelled running jobs at a revoke or drain (their
   partitions' commits stop below them, so the dead letters finished behind
   them are written again on redelivery: seen with a revoke that came while
   the crash guard waited out a read-only database). Every other repeat is a
   violation.
3. **Faults dead-letter no good job**: an outage, a read-only database, a
   broker restart or a network fault is not the job's fault (the runner
   waits for dependencies); a good job in the dead-letter topic is a
   violation, with its stage and error.
4. **Every record of the dead-letter topic is in ``worker_dlq``** (by
   partition and offset), and no row there lacks its record.
5. **No partition stuck**: the group's lag is 0 on every topic of the
   catalog (job, retry and dead-letter topics) at the end of the drain.
6. **No note twice**: Kommo holds at most one note per idempotency key, and
   the organization's usage counts each sent message once.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.support.soak_load import Planned

# aiokafka's words when the group dropped a member that was alive (tests/e2e/test_chaos.py).
SPURIOUS = re.compile(
    r"member_id was not recognized|Heartbeat session expired|generation id is not\s+current"
)
REFUSED_COMMITS = frozenset({"worker.revoke_commit_failed", "worker.drain_commit_failed"})
# A revoke or drain that cancelled running jobs (``cancelled`` > 0): each left its
# partition's commit below it, so the finished records behind it run again.
CANCELLING = frozenset({"worker.partitions_revoked", "worker.drained"})
EXCUSE_LEAD_S = 1.0


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    at: float  # record timestamp, seconds since the epoch
    job_id: str
    job_type: str
    stage: str
    error: str


@dataclass(frozen=True)
class Excuse:
    """An event that can make a worker write a dead letter twice."""

    at: float
    what: str


@dataclass
class Evidence:
    """What the soak saw at the end (``soak_evidence.gather``)."""

    jobs: list[Planned]  # every published job
    asset_ids: dict[str, str]  # job id -> asset id
    message_keys: dict[str, str]  # job id -> idempotency key
    effects: Counter[str]  # probe job id -> effect rows
    assets: dict[str, tuple[str, int | None, int]]  # asset id -> (status, chunks_count, chunks)
    indexed: Counter[str]  # asset id -> asset.indexed log lines
    processed: set[str]  # job ids in the ledger (processed_jobs)
    sends: dict[str, str]  # idempotency key -> message_sends state
    notes: Counter[str]  # idempotency key -> notes in Kommo
    usage: int  # message_usage of the soak's organization today
    dead: list[DeadLetter]
    mirrored: set[tuple[int, int]]  # (partition, offset) in worker_dlq
    lag: dict[str, int]  # topic -> the group's lag
    excuses: list[Excuse]


@dataclass
class Verdict:
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    excused: list[str] = field(default_factory=list)

    def add(self, rule: str, what: str) -> None:
        self.violations[rule].append(what)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def text(self, examples: int = 8) -> str:
        lines = []
        for rule, found in self.violations.items():
            lines.append(f"{rule}: {len(found)}")
            lines += [f"    {line}" for line in found[:examples]]
            if len(found) > examples:
                lines.append(f"    … and {len(found) - examples} more")
        return "\n".join(lines)


def unexcused_repeats(
    times: Iterable[float], excuses: Iterable[Excuse]
) -> list[tuple[float, float]]:
    """The consecutive pairs of a job's dead-letter times that no excuse falls between (rule 2)."""
    ordered = sorted(times)
    marks = sorted(e.at for e in excuses)
    return [
        (a, b)
        for a, b in itertools.pairwise(ordered)
        if not any(a - EXCUSE_LEAD_S <= m <= b for m in marks)
    ]


def kg_id(job_id: str) -> str:
    return f"{job_id}:kg"


def _completed(job: Planned, ev: Evidence, verdict: Verdict) -> bool:
    """Whether ``job`` completed; a completion applied twice is a violation of its own."""
    rule = "1. ended exactly once"
    if job.kind == "poison":
        return False  # it can only be dead-lettered
    if job.kind == "probe":
        if ev.effects[job.id] > 1:
            verdict.add(rule, f"{job.id}: {ev.effects[job.id]} effect rows")
        return ev.effects[job.id] >= 1
    if job.kind == "asset":
        asset = ev.asset_ids[job.id]
        status, count, chunks = ev.assets.get(asset, ("missing", None, 0))
        if ev.indexed[asset] > 1:
            verdict.add(rule, f"{job.id}: asset {asset} indexed {ev.indexed[asset]} times")
        if status == "completed" and count != chunks:
            verdict.add(rule, f"{job.id}: chunks_count {count} but {chunks} chunk rows")
        return status == "completed"
    key = ev.message_keys[job.id]
    if ev.notes[key] > 1:
        verdict.add(rule, f"{job.id}: {ev.notes[key]} notes for key {key}")
    sent = ev.sends.get(key) == "sent"
    if sent and not ev.notes[key]:
        verdict.add(rule, f"{job.id}: recorded as sent, but Kommo holds no note for {key}")
    return sent


def judge(ev: Evidence) -> Verdict:
    verdict = Verdict()
    dead_by_job: defaultdict[str, list[DeadLetter]] = defaultdict(list)
    for record in ev.dead:
        dead_by_job[record.job_id].append(record)
    known = {j.id for j in ev.jobs}
    for job in ev.jobs:
        _judge_job(job, ev, dead_by_job.get(job.id, []), verdict)
        if (
            job.kind == "asset"
            and job.good
            and ev.assets.get(ev.asset_ids[job.id], ("",))[0] == "completed"
        ):
            follow_up = kg_id(job.id)
            known.add(follow_up)
            if follow_up not in ev.processed and follow_up not in dead_by_job:
                verdict.add("1. ended exactly once", f"{follow_up}: the follow-up never ended")
    for job_id, records in dead_by_job.items():
        _judge_repeats(job_id, records, ev.excuses, verdict)
        if job_id not in known:
            verdict.add("1. ended exactly once", f"{job_id}: a dead letter of no published job")
        elif job_id.endswith(":kg"):
            _good_dead_lettered(job_id, records, verdict)
    _judge_mirror(ev, verdict)
    for topic, lag in sorted(ev.lag.items()):
        if lag:
            verdict.add("5. no partition stuck", f"{topic}: lag {lag}")
    for key, n in sorted(ev.notes.items()):
        if n > 1:
            verdict.add("6. no note twice", f"key {key}: {n} notes")
    sent = sum(1 for state in ev.sends.values() if state == "sent")
    if ev.usage != sent:
        verdict.add("6. no note twice", f"usage counts {ev.usage} messages, {sent} were sent")
    return verdict


def _judge_job(job: Planned, ev: Evidence, records: list[DeadLetter], verdict: Verdict) -> None:
    rule = "1. ended exactly once"
    completed = _completed(job, ev, verdict)
    if completed and records:
        verdict.add(rule, f"{job.id}: completed and dead-lettered ({records[0].error[:120]})")
    elif not completed and not records:
        verdict.add(rule, f"{job.id} ({job.kind}): never ended")
    if job.good and records and not completed:
        _good_dead_lettered(job.id, records, verdict)
    if not job.good and job.kind == "asset" and records:
        status = ev.assets.get(ev.asset_ids[job.id], ("missing",))[0]
        if status != "failed":
            verdict.add(rule, f"{job.id}: dead-lettered but the asset is {status}")


def _good_dead_lettered(job_id: str, records: list[DeadLetter], verdict: Verdict) -> None:
    first = records[0]
    verdict.add(
        "3. faults dead-letter no good job",
        f"{job_id} ({first.job_type}): stage {first.stage}: {first.error[:200]}",
    )


def _judge_repeats(
    job_id: str, records: list[DeadLetter], excuses: list[Excuse], verdict: Verdict
) -> None:
    if len(records) < 2:
        return
    bare = unexcused_repeats([r.at for r in records], excuses)
    for a, b in bare:
        verdict.add(
            "2. a dead letter is written once unless a worker died with it",
            f"{job_id}: dead-lettered at {a:.1f} and again at {b:.1f}, no worker death between",
        )
    if not bare:
        verdict.excused.append(f"{job_id}: {len(records)} dead letters")


def _judge_mirror(ev: Evidence, verdict: Verdict) -> None:
    on_topic = {(r.partition, r.offset) for r in ev.dead}
    rule = "4. every dead letter in worker_dlq"
    for partition, offset in sorted(on_topic - ev.mirrored):
        job = next(r.job_id for r in ev.dead if (r.partition, r.offset) == (partition, offset))
        verdict.add(rule, f"partition {partition} offset {offset} ({job}) not mirrored")
    for partition, offset in sorted(ev.mirrored - on_topic):
        verdict.add(rule, f"worker_dlq row for partition {partition} offset {offset} has no record")
