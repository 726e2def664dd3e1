"""The soak's evidence and figures: from Postgres, the dead-letter topic, Kommo and the logs."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from streams.commands.lag import group_consumer, group_lag, partition_lags
from tests.support.kafka import read_topic
from tests.support.kommo_server import KommoServer
from tests.support.messages import notes_per_key, sent_today
from tests.support.soak_fleet import Fleet
from tests.support.soak_load import Plan, Planned, Publisher
from tests.support.soak_oracle import (
    CANCELLING,
    REFUSED_COMMITS,
    SPURIOUS,
    DeadLetter,
    Evidence,
    Excuse,
)
from tests.support.soak_rig import Executed
from tests.support.stack import Stack

ASSETS = """
SELECT a.id, a.status, a.chunks_count,
       (SELECT count(*) FROM asset_chunks c WHERE c.asset_id = a.id) AS chunks
FROM assets a
"""


def _header(headers: list[tuple[str, bytes]] | None, name: str) -> str:
    for key, value in headers or []:
        if key == name:
            return value.decode("utf-8", "replace")
    return ""


def dead_letters(stack: Stack, origins: dict[tuple[str, int, int], str]) -> list[DeadLetter]:
    """Every record of the stack's dead-letter topic (through the direct listener); a poison
    record's dead letter (no job id) named after its origin (``origins``)."""
    topic = stack.registry().dlq_topic
    out = []
    for msg in read_topic(stack.bootstrap, topic):
        headers = msg.headers()
        origin = (
            _header(headers, "conveyor-original-topic"),
            int(_header(headers, "conveyor-original-partition") or -1),
            int(_header(headers, "conveyor-original-offset") or -1),
        )
        out.append(
            DeadLetter(
                msg.partition(),
                msg.offset(),
                msg.timestamp()[1] / 1000,
                origins.get(origin) or _header(headers, "conveyor-job-id"),
                _header(headers, "conveyor-job-type"),
                _header(headers, "conveyor-stage"),
                f"{_header(headers, 'conveyor-error-class')}: "
                f"{_header(headers, 'conveyor-error-message')}",
            )
        )
    return out


def lag_by_topic(stack: Stack) -> dict[str, int]:
    lag = group_lag(stack.settings(), stack.registry())
    return {t.topic: t.lag for t in lag.topics}


def _when(event: dict[str, Any]) -> float | None:
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def excuses(fleet: Fleet) -> list[Excuse]:
    """Worker deaths, non-zero exits, refused commits, members dropped from the group, and
    revokes or drains that cancelled running jobs (an unfinished head holds its partition's
    commit: the finished records behind it are delivered again)."""
    found = []
    for m in fleet.members:
        if m.fate == "sigkill" and m.fate_at is not None:
            found.append(Excuse(m.fate_at, f"{m.name} SIGKILLed"))
        elif m.exit_code not in (0, None) and m.ended_at is not None:
            found.append(Excuse(m.ended_at, f"{m.name} exited {m.exit_code}"))
    for name, event in fleet.events():
        what = str(event.get("event", ""))
        cut_short = what in CANCELLING and int(event.get("cancelled") or 0) > 0
        if what in REFUSED_COMMITS or SPURIOUS.search(what) or cut_short:
            at = _when(event)
            if at is not None:
                found.append(Excuse(at, f"{name}: {what[:80]}"))
    return found


async def gather(
    db: asyncpg.Pool,
    stack: Stack,
    plan: Plan,
    publisher: Publisher,
    kommo: KommoServer,
    fleet: Fleet,
    organization_id: str,
) -> Evidence:
    effects = Counter(
        {
            r["job_id"]: r["n"]
            for r in await db.fetch("SELECT job_id, count(*) AS n FROM probe_effects GROUP BY 1")
        }
    )
    assets = {
        r["id"]: (r["status"], r["chunks_count"], r["chunks"]) for r in await db.fetch(ASSETS)
    }
    processed = {r["job_id"] for r in await db.fetch("SELECT job_id FROM processed_jobs")}
    sends = {
        r["idempotency_key"]: r["state"]
        for r in await db.fetch("SELECT idempotency_key, state FROM message_sends")
    }
    mirrored = {
        (r["dlq_partition"], r["dlq_offset"])
        for r in await db.fetch(
            "SELECT dlq_partition, dlq_offset FROM worker_dlq WHERE dlq_topic = $1",
            stack.registry().dlq_topic,
        )
    }
    indexed = Counter(
        str(e.get("asset_id")) for _, e in fleet.events() if e.get("event") == "asset.indexed"
    )
    return Evidence(
        jobs=publisher.published(),
        asset_ids=plan.asset_ids,
        message_keys=plan.message_keys,
        effects=effects,
        assets=assets,
        indexed=indexed,
        processed=processed,
        sends=sends,
        notes=notes_per_key(kommo, list(plan.message_keys.values())),
        usage=await sent_today(db, organization_id),
        dead=await asyncio.to_thread(dead_letters, stack, dict(publisher.origins)),
        mirrored=mirrored,
        lag=await asyncio.to_thread(lag_by_topic, stack),
        excuses=excuses(fleet),
    )


# -- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    published: int
    ended: int

    @property
    def backlog(self) -> int:
        return self.published - self.ended


def never_counted(ev: Evidence) -> list[Planned]:
    """Published jobs that ``soak_load.ended`` never counted (no effect, no final status, not
    sent, no mirrored dead letter): they stay in the backlog for good."""
    mirrored = {r.job_id for r in ev.dead if (r.partition, r.offset) in ev.mirrored}
    out = []
    for job in ev.jobs:
        if job.kind == "poison":
            continue  # never counted by ``ended`` nor in the published count it is set against
        if job.kind == "probe":
            counted = ev.effects[job.id] > 0 or job.id in mirrored
        elif job.kind == "asset":
            counted = ev.assets.get(ev.asset_ids[job.id], ("",))[0] in ("completed", "failed")
        else:
            counted = ev.sends.get(ev.message_keys[job.id]) == "sent" or job.id in mirrored
        if not counted:
            out.append(job)
    return out


@dataclass(frozen=True)
class Backlog:
    """Published minus ended over time, without the jobs that never ended (``never_counted``),
    so a lost job does not make every later fault look unrecovered."""

    samples: list[Sample]
    lost_at: list[float]  # when each never-counted job was published (time.time())
    slack: int

    def at(self, sample: Sample) -> int:
        return sample.backlog - sum(1 for t in self.lost_at if t <= sample.at)

    def recovery_s(self, start: float, end: float) -> float | None:
        """Seconds from a fault's end until the backlog is back to where it was when the fault
        began (plus ``slack`` jobs); None if it never was while the soak watched."""
        before = [s for s in self.samples if s.at <= start]
        if not before:
            return None
        baseline = self.at(before[-1]) + self.slack
        for sample in self.samples:
            if sample.at >= end and self.at(sample) <= baseline:
                return round(sample.at - end, 1)
        return None


def job_figures(ev: Evidence, fleet: Fleet) -> dict[str, Any]:
    """Jobs per type and how they ended; dead letters; redeliveries (from the workers' logs)."""
    published = Counter(j.kind for j in ev.jobs)
    bad = Counter(j.kind for j in ev.jobs if not j.good)
    dead_jobs = {r.job_id for r in ev.dead}
    ends: Counter[str] = Counter()
    skipped = 0
    for _, e in fleet.events():
        if e.get("event") in ("job.succeeded", "job.dead_lettered") and e.get("job_id"):
            ends[str(e["job_id"])] += 1
            skipped += e.get("outcome") == "skipped"
    return {
        "published": dict(published),
        "meant_to_fail": dict(bad),
        "follow_ups": sum(1 for j in ev.processed if j.endswith(":kg")),
        "dead_letter_records": len(ev.dead),
        "dead_letters_by_type_stage_error": dict(
            Counter(f"{r.job_type}/{r.stage}/{r.error.partition(':')[0]}" for r in ev.dead)
        ),
        "dead_lettered_jobs": len(dead_jobs),
        "dead_lettered_twice_or_more": sum(
            1 for n in Counter(r.job_id for r in ev.dead).values() if n > 1
        ),
        "redelivered_runs": sum(n - 1 for n in ends.values() if n > 1),
        "ledger_skips": skipped,
        "retries": sum(1 for _, e in fleet.events() if e.get("event") == "job.retrying"),
        "dependency_waits": sum(
            1 for _, e in fleet.events() if e.get("event") == "job.waiting_for_dependency"
        ),
        "workers": fleet.summary(),
    }


def schedule_lines(executed: list[Executed], t0: float, backlog: Backlog) -> list[str]:
    """One line per fault: planned and actual times, target, recovery time."""
    lines = []
    for entry in sorted(executed, key=lambda e: e.applied_at):
        f = entry.fault
        end = entry.reverted_at or entry.applied_at
        rec = backlog.recovery_s(entry.applied_at, end)
        lines.append(
            f"  t={entry.applied_at - t0:7.1f}s (planned {f.at_s:6.1f}) {f.describe():<60} "
            f"target={entry.target or '-':<28} lasted={end - entry.applied_at:5.1f}s "
            f"recovered_after={'never' if rec is None else f'{rec:.1f}s'}"
            + (f" ERROR {entry.error}" if entry.error else "")
        )
    return lines


# -- what to look at when the fleet did not drain --------------------------------------------

# aiokafka's connection chatter: thousands of lines during an outage, none of them telling.
_CHATTER = ("Unable connect to node", "Unable to update metadata", "Failed fetch messages")
_SHOWN_EVENTS = 8


def diagnosis(stack: Stack, fleet: Fleet) -> str:
    """The group, the partitions still behind and what each worker did last: printed with a
    failed verdict, so a run whose worker logs are gone (a CI clone) still says where it hung."""
    lines = []
    try:
        lag = group_lag(stack.settings(), stack.registry())
        lines.append(f"group {lag.group_id}: {lag.state}, {lag.members} members")
        consumer = group_consumer(stack.settings())
        try:
            behind = [
                p for t in lag.topics if t.lag for p in partition_lags(consumer, t.topic) if p.lag
            ]
        finally:
            consumer.close()
        lines += [f"  {p.topic}:{p.partition} at {p.committed} of {p.end}" for p in behind]
    except Exception as exc:  # a diagnosis must never hide the verdict
        lines.append(f"group: unreadable ({type(exc).__name__}: {exc})")
    now = time.time()
    for m in fleet.members:
        if m.exit_code is not None and not m.alive:
            continue
        events = [
            e for e in list(m.process.events) if not str(e.get("event", "")).startswith(_CHATTER)
        ]
        assigned = [e for e in events if e.get("event") == "worker.partitions_assigned"]
        last_job = max(
            (_when(e) or 0.0 for e in events if str(e.get("event", "")).startswith("job.")),
            default=0.0,
        )
        head = (
            f"{m.name} (alive, {m.fate or 'unsignalled'}, started {now - m.started_at:.0f} s ago)"
        )
        if assigned:
            a = assigned[-1]
            head += f": generation {a.get('generation')}, {a.get('partitions')} partitions"
        head += f"; last job event {now - last_job:.0f} s ago" if last_job else "; no job event"
        lines.append(head)
        for e in events[-_SHOWN_EVENTS:]:
            extra = {
                k: v for k, v in e.items() if k not in ("event", "timestamp", "level", "logger")
            }
            lines.append(
                f"    {e.get('timestamp', '')} {str(e.get('event'))[:100]} {str(extra)[:160]}"
            )
    return "\n".join(lines)
