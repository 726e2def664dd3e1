"""The ``message`` scenario of bench/takeover.py: message.send jobs through two SIGKILLs.

``--messages`` jobs over ``--leads`` leads, keyed by lead, are published at
``--rate`` per second to two workers with the default leases and waits
(only the keyring is set) against a local Kommo account (7 requests/s). At
a third of the notes one worker is SIGKILLed and a replacement started at
once, as Kubernetes would; at two thirds the other one, likewise.

With ``--mid-post`` (the default) each kill lands while the victim has
POSTs in flight: from the threshold on, Kommo makes every note at once but
answers ``--answer-s`` later (real Kommo takes a while to answer too), and
the victim is killed as soon as ``--in-flight`` notes appeared on its leads
since then. Their ledger rows say a POST may have been made: whoever
inherits a lead waits out the dead run's lease (``crm.message_lease_s``,
60 s), looks the note up and finds it, while the lead's later messages wait
behind it in key order. (A record the victim had claimed but not posted
waits for the lease only; one whose POST it had recorded but not yet made
waits for the lease and ``crm.message_settle_s``: 120 s from the record.)
Without ``--mid-post`` a kill usually lands between two jobs, and a
takeover costs only the group's session timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import KafkaError, Message

from bench.worker_events import (
    assignment,
    guard_lines,
    kill,
    notices,
    print_notices,
    rate,
    steady,
    takeover,
)
from handlers.messaging.message import marker_of
from schemas.envelope import JobEnvelope
from tests.support.crm import KEYRING_TEXT, register_account
from tests.support.kafka import committed_and_end
from tests.support.kommo_server import Fault, KommoServer, kommo_server
from tests.support.messages import MARKER, lead_key, ledger_figures, message_envelopes, out_of_order
from tests.support.stack import JANITOR, Stack
from tests.support.worker import WorkerProcess

POST = "POST /api/v4/leads/notes"
AFTER_S = 30.0
TARGET_S = 120.0


class Publisher(threading.Thread):
    """The envelopes, keyed by lead, at ``per_s`` a second; when each was produced, and where."""

    def __init__(self, stack: Stack, envelopes: list[JobEnvelope], per_s: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.envelopes, self.per_s = stack, envelopes, per_s
        self.at: dict[str, float] = {}
        self.partition: dict[int, int] = {}  # lead -> partition
        self.stopped = threading.Event()

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.partition[int(message.key() or b"0")] = message.partition() or 0

    def run(self) -> None:
        producer = self.stack.producer()
        topic = self.stack.registry().topic_for("message.send")
        started = time.time()
        for i, envelope in enumerate(self.envelopes):
            if self.stopped.wait(max(0.0, started + i / self.per_s - time.time())):
                break
            self.at[str(envelope.payload["idempotency_key"])] = time.time()
            value, key = envelope.to_bytes(), lead_key(envelope)
            producer.produce(topic, value, key, on_delivery=self._delivered)
            producer.poll(0)
        producer.flush(30)


class Notes:
    """When each marker's note first appeared in the account, how many it has, on which lead."""

    def __init__(self, server: KommoServer) -> None:
        self.server = server
        self.first: dict[str, float] = {}
        self.count: Counter[str] = Counter()
        self.made: list[tuple[float, int]] = []  # (first seen, lead)
        self._seen = 0

    def poll(self) -> None:
        notes = self.server.notes["leads"]
        now = time.time()
        for note in notes[self._seen :]:
            match = MARKER.search(str((note.get("params") or {}).get("text", "")))
            marker = match.group(0) if match else ""
            self.count[marker] += 1
            self.first.setdefault(marker, now)
            self.made.append((now, int(note["entity_id"])))
        self._seen = len(notes)

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.2)


async def waiting(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def posts_in_flight(
    server: KommoServer,
    notes: Notes,
    publisher: Publisher,
    theirs: set[str],
    args: argparse.Namespace,
) -> bool:
    """Answer POSTs ``--answer-s`` late until the victim's leads got ``--in-flight`` notes."""
    mine = {int(tp.rsplit(":", 1)[1]) for tp in theirs}
    wanted: int = args.in_flight
    since = time.time()
    server.chaos = [(1.0, Fault("late", delay_s=args.answer_s, route=POST))]

    def made() -> bool:
        notes.poll()
        recent = notes.made[-100:]
        return (
            sum(1 for t, lead in recent if t >= since and publisher.partition.get(lead) in mine)
            >= wanted
        )

    return await waiting(made, 60, poll_s=0.05)


def all_committed(stack: Stack) -> bool:
    topic = stack.registry().topic_for("message.send")
    offsets = committed_and_end(stack.bootstrap, f"{stack.prefix}-group", topic)
    return all(committed == end for committed, end in offsets.values())


async def committed_in(stack: Stack, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(all_committed, stack):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(1.0)
    return True


async def notes_reach(notes: Notes, count: float, timeout_s: float) -> None:
    if not await waiting(lambda: len(notes.first) >= count, timeout_s):
        raise TimeoutError(f"{count:.0f} notes not within {timeout_s:g} s")


async def two_kills(
    stack: Stack,
    server: KommoServer,
    notes: Notes,
    publisher: Publisher,
    workers: dict[str, WorkerProcess],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    topic = stack.registry().topic_for("message.send")
    logs: Path = args.logs
    workers.update({n: WorkerProcess(stack.env, logs / f"message-{n}.log").start() for n in "AB"})
    await asyncio.to_thread(steady, list(workers.values()), topic, args.partitions, False)
    publisher.start()
    kills: list[dict[str, Any]] = []
    for share, name in ((1 / 3, "A"), (2 / 3, "B")):
        await notes_reach(notes, share * args.messages, args.max_wait_s)
        at = len(notes.first)
        theirs = assignment(workers[name], topic)[1]
        mid = args.mid_post and await posts_in_flight(server, notes, publisher, theirs, args)
        killed = await asyncio.to_thread(kill, workers[name])
        server.chaos = []
        workers[f"{name}2"] = WorkerProcess(stack.env, logs / f"message-{name}2.log").start()
        live = [w for w in workers.values() if w.proc is not None and w.proc.poll() is None]
        taken = await asyncio.to_thread(takeover, live, theirs, killed)
        kills.append(
            {"name": name, "killed": killed, "taken": taken, "partitions": len(theirs)}
            | {"notes": at, "mid_post": mid}
        )
    return kills


async def message_kills(
    stack: Stack, server: KommoServer, envelopes: list[JobEnvelope], args: argparse.Namespace
) -> dict[str, Any]:
    notes = Notes(server)
    publisher = Publisher(stack, envelopes, args.rate)
    watcher = asyncio.create_task(notes.run())
    workers: dict[str, WorkerProcess] = {}
    try:
        kills = await two_kills(stack, server, notes, publisher, workers, args)
        await asyncio.to_thread(publisher.join, len(envelopes) / args.rate + 60)
        markers = {marker_of(str(e.payload["idempotency_key"])) for e in envelopes}
        await waiting(lambda: markers <= set(notes.first), args.max_wait_s)
        committed = await committed_in(stack, 120)
        await asyncio.sleep(5)  # a late second note would show now
        notes.poll()
    finally:
        publisher.stopped.set()
        watcher.cancel()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers.values()))
    return {
        "kills": kills,
        "at": publisher.at,
        "committed": committed,
        "notes": notes,
        "workers": list(workers.values()),
    }


async def message_run(dsn: str, bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "CONVEYOR_DLQ_MIRROR__ENABLED": "false",
        # The keyring only: leases, settle time, timeouts and in-place waits stay the defaults.
        "CONVEYOR_CRM__KEYRING": KEYRING_TEXT,
        "CONVEYOR_KAFKA__TOPIC_PARTITIONS": str(args.partitions),
    }
    async with (
        kommo_server(seed=args.seed) as server,
        asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool,
    ):
        org = f"org-takeover-{time.time_ns()}"
        connection = await register_account(pool, server, organization_id=org)
        leads = [server.add_lead()["id"] for _ in range(args.leads)]
        envelopes = message_envelopes(
            connection.id, leads, args.messages, organization_id=org, seed=args.seed
        )
        stack = Stack(bootstrap, dsn, extra=env)
        stack.create_topics()
        try:
            run = await message_kills(stack, server, envelopes, args)
        finally:
            JANITOR.delete(stack)
        keys = [str(e.payload["idempotency_key"]) for e in envelopes]
        run["ledger"] = await ledger_figures(pool, keys)
        run["out_of_order"] = len(out_of_order(server, envelopes))
        run["posts"] = server.calls[POST]
        run["throttled"] = sum(1 for hit in server.hits if hit.status == 429)
        run["cut_off"] = sum(1 for hit in server.hits if hit.route == POST and hit.status == 499)
    return message_figures(run, keys)


def message_figures(run: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    notes: Notes = run.pop("notes")
    workers: list[WorkerProcess] = run.pop("workers")
    at: dict[str, float] = run["at"]
    delays = sorted(notes.first[marker_of(k)] - at[k] for k in keys if marker_of(k) in notes.first)
    seen = sorted(notes.first.values())
    ours = {marker_of(k) for k in keys}
    per_key = Counter(notes.count[marker_of(k)] for k in keys)
    for k in run["kills"]:
        start = k["killed"] - 30
        k["windows"] = [
            round(rate(seen, start + i * 10, start + (i + 1) * 10) * 10) for i in range(12)
        ]
        k["after30"] = rate(seen, k["taken"], k["taken"] + AFTER_S)
        k["alone"], k["suspects"] = guard_lines(workers, k["killed"])
    return {
        **run,
        "delays": delays,
        "missing": per_key[0],
        "twice": sum(n for c, n in per_key.items() if c > 1),
        "foreign": sum(n for m, n in notes.count.items() if m not in ours),
        "notes": sum(notes.count.values()),
        "notices": notices(workers),
        "span": (max(seen) - min(at.values())) if seen and at else 0.0,
    }


def print_message(f: dict[str, Any], args: argparse.Namespace) -> None:
    how = (
        f"mid-POST, answers {args.answer_s:g} s late around the kill" if args.mid_post else "plain"
    )
    print(
        f"\n== message: {args.messages} message.send over {args.leads} leads at {args.rate:g}/s, "
        f"two SIGKILLs ({how}; each replaced), default leases; Kommo 7 requests/s =="
    )
    exact = f["missing"] == 0 and f["twice"] == 0 and f["foreign"] == 0
    print(
        f"  notes {f['notes']} for {args.messages} keys: exactly one per key "
        f"{'YES' if exact else 'NO'} ({f['missing']} missing, {f['twice']} with more than one, "
        f"{f['foreign']} foreign); leads out of publish order {f['out_of_order']}; "
        f"all committed {'yes' if f['committed'] else 'NO'}; first publish to last note "
        f"{f['span']:.0f} s"
    )
    d = f["delays"]
    p99 = statistics.quantiles(d, n=100, method="inclusive")[98] if len(d) > 1 else max(d or [0.0])
    worst = max(d) if d else float("nan")
    print(
        f"  publish-to-note delay: median {statistics.median(d) if d else 0:.1f} s, p99 "
        f"{p99:.1f} s, worst {worst:.1f} s (target <= {TARGET_S:g} s: "
        f"{'met' if worst <= TARGET_S else 'NOT met'})"
    )
    for n, k in enumerate(f["kills"], 1):
        before = " ".join(str(c) for c in k["windows"][:3])
        after = " ".join(str(c) for c in k["windows"][3:])
        print(
            f"  kill {n} ({k['name']} at {k['notes']} notes, {k['partitions']} partitions, "
            f"{'mid-POST' if k['mid_post'] else 'between jobs'}): taken over after "
            f"{k['taken'] - k['killed']:.1f} s; notes/s in the 30 s after {k['after30']:.2f} = "
            f"x{k['after30'] / args.rate:.2f} of the publish rate"
        )
        print(f"         notes per 10 s from -30 s: {before} | kill | {after}")
    alone, suspects = f["kills"][0]["alone"], f["kills"][0]["suspects"]
    ledger = f["ledger"]
    print(
        f"  guard: records run alone {alone}, suspects lines {', '.join(suspects) or '-'}; "
        f"ledger sent {ledger['sent']}, looked up {ledger['looked_up']}, posted twice "
        f"{ledger['posted_twice']}; Kommo POSTs {f['posts']} ({f['cut_off']} cut off by a kill), "
        f"429 answers {f['throttled']}"
    )
    print_notices(f["notices"])
