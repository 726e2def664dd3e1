"""Runtime control: pause and resume a job type (or one organization's jobs of it).

The state is the control topic (``kafka.control_topic``, compacted): the last
:class:`~schemas.fleet.PauseRecord` of each (job type, organization) says
whether it is paused. Each worker reads the topic from the beginning before
its pools start anything (``ControlPlane.start``) and then follows it, so a
pause reaches every worker within about ``POLL_MS`` and survives restarts,
rebalances and new pods.

A paused job stops *starting*: while its type has a pause, the type's pool
asks a :class:`JobGate` before it runs a record (no pause, no gate, no cost),
and a record the gate refuses is held in the pool — its
offset started and unfinished, so nothing is committed past it, and its
key's later records wait behind it. Jobs already running finish. On resume
the pool runs the held records first, in the order they came.

The organization of a record is read only while one of its job type's
organizations is paused, and cheaply: a record whose bytes contain none of
the paused organization ids cannot belong to one; the others are parsed
(only the envelope's top-level ``organization_id`` counts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from pydantic import ValidationError

from schemas.fleet import PauseRecord
from streams import metrics
from streams.follow import TopicFollower
from streams.records import Record
from streams.settings import KafkaSettings

log = structlog.get_logger(__name__)

# Organization ids that appear verbatim in any JSON encoding of them (no escapes possible).
_PLAIN = re.compile(r"[A-Za-z0-9_.:@+=-]+")


@dataclass(slots=True)
class TypePauses:
    """The pauses of one job type: the whole type, and organizations by id."""

    whole: PauseRecord | None = None
    orgs: dict[str, PauseRecord] = field(default_factory=dict)
    # Encoded forms of the paused organization ids, for the byte pre-check (None: parse).
    needles: list[bytes] | None = None

    def refresh(self) -> None:
        plain = all(_PLAIN.fullmatch(org) for org in self.orgs)
        self.needles = [org.encode() for org in self.orgs] if plain else None

    def __bool__(self) -> bool:
        return self.whole is not None or bool(self.orgs)


class Pauses:
    """Which job types and organizations are paused now, from the control records."""

    def __init__(self) -> None:
        self._types: dict[str, TypePauses] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def apply(self, record: PauseRecord) -> None:
        pauses = self._types.setdefault(record.job_type, TypePauses())
        if record.organization_id is None:
            pauses.whole = record if record.paused else None
        elif record.paused:
            pauses.orgs[record.organization_id] = record
        else:
            pauses.orgs.pop(record.organization_id, None)
        pauses.refresh()
        if not pauses:
            del self._types[record.job_type]
        for listener in self._listeners:
            listener()

    def apply_bytes(self, key: bytes | None, value: bytes | None) -> None:
        """A control topic record: a PauseRecord (anything else is logged and ignored)."""
        if value is None:
            return  # a tombstone: compaction's business, the last record stands
        try:
            record = PauseRecord.model_validate_json(value)
        except ValidationError:
            shown = (key or b"")[:200].decode(errors="replace")
            log.warning("control.record_unreadable", key=shown)
            return
        self.apply(record)

    def of(self, job_type: str) -> TypePauses | None:
        return self._types.get(job_type)

    def current(self) -> list[PauseRecord]:
        """Every pause in force, by job type then organization."""
        found: list[PauseRecord] = []
        for job_type in sorted(self._types):
            pauses = self._types[job_type]
            if pauses.whole is not None:
                found.append(pauses.whole)
            found += [pauses.orgs[org] for org in sorted(pauses.orgs)]
        return found

    def labels(self) -> list[str]:
        """``job_type`` or ``job_type@organization`` of each pause in force."""
        return [
            r.job_type if r.organization_id is None else f"{r.job_type}@{r.organization_id}"
            for r in self.current()
        ]


def organization_of(value: bytes | None) -> str | None:
    """The envelope's top-level ``organization_id`` (None when absent or unreadable)."""
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    org = data.get("organization_id") if isinstance(data, dict) else None
    return org if isinstance(org, str) else None


class JobGate:
    """Asked by a job type's pool before a record starts: may it start now?"""

    def __init__(self, job_type: str, pauses: Pauses) -> None:
        self.job_type = job_type
        self._pauses = pauses

    def __call__(self, record: Record) -> bool:
        pauses = self._pauses.of(self.job_type)
        if pauses is None:
            return True  # the common case: one dict lookup
        if pauses.whole is not None:
            return False
        value = record.value
        if not value:
            return True
        if pauses.needles is not None and not any(n in value for n in pauses.needles):
            return True  # none of the paused organizations' ids appear in it
        return organization_of(value) not in pauses.orgs


class ControlPlane:
    """A worker's view of the control topic, and the gates its pools ask."""

    def __init__(
        self, kafka: KafkaSettings, topic: str, topics_of: Callable[[str], list[str]]
    ) -> None:
        self.pauses = Pauses()
        self._topics_of = topics_of
        self._follower = TopicFollower(kafka, topic, self.pauses.apply_bytes)
        self.pauses.on_change(self._changed)

    def gate_of(self, job_type: str) -> JobGate | None:
        """The gate a job type's pool asks while the type has a pause (None: nothing paused)."""
        return JobGate(job_type, self.pauses) if self.pauses.of(job_type) else None

    def on_change(self, listener: Callable[[], None]) -> None:
        self.pauses.on_change(listener)

    async def start(self, timeout_s: float = 30.0) -> None:
        """Read every pause so far (before any job starts), then follow the topic."""
        await self._follower.start(timeout_s)
        log.info("control.loaded", topic=self._follower.topic, paused=self.pauses.labels())

    async def stop(self) -> None:
        await self._follower.stop()

    def _changed(self) -> None:
        labels = self.pauses.labels()
        metrics.set_paused(self.pauses.current(), self._topics_of)
        if self._follower.caught_up.is_set():
            log.info("control.changed", paused=labels)
