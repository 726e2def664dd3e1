"""The compound-fault soak's schedule: which fault, when, for how long — a pure function of a seed.

The schedule is a list of episodes. Each episode starts one or two faults
(two with probability ``PAIR_P``: the lasting one first, the other
starting while it is in force — compound faults), and the next episode begins after the longest
of them ended plus a recovery gap. Kinds come from shuffled decks: the first
deck holds every kind of ``REQUIRED`` (so even the short run injects each of
them), the next ones every kind of ``KINDS``. The schedule runs until its
window has passed and the first deck is used up.

Worker faults name no worker: ``pick`` (0 to 1) chooses one among the workers
alive at that moment, in start order, so a seed gives the same choices
given the same fleet. ``size`` (the fleet size the schedule expects) keeps
scaling between ``MIN_WORKERS`` and ``MAX_WORKERS``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

START_WORKERS, MIN_WORKERS, MAX_WORKERS = 3, 2, 5
PAIR_P = 0.7
GAP_S = (3.0, 8.0)  # recovery time between episodes

#: kind -> (duration range in seconds; 0 for an instant fault)
KINDS: dict[str, tuple[float, float]] = {
    "sigkill": (0.0, 0.0),  # SIGKILL one worker; a replacement starts (as Kubernetes would)
    "sigterm": (0.0, 0.0),  # SIGTERM one worker (drain, exit 0); a replacement starts
    "scale_up": (0.0, 0.0),  # one worker more (a rebalance)
    "scale_down": (0.0, 0.0),  # SIGTERM one worker, no replacement (a rebalance)
    "pg_outage": (4.0, 15.0),  # the Postgres proxy disabled: connections closed and refused
    "pg_read_only": (4.0, 15.0),  # default_transaction_read_only on the soak database
    "broker_restart": (3.0, 10.0),  # the broker stopped (SIGTERM), down this long, started
    "kafka_latency": (5.0, 20.0),  # latency toxic on the Kafka proxy
    "kafka_reset": (3.0, 10.0),  # reset_peer toxic: links reset after a moment
    "pg_latency": (5.0, 20.0),  # latency toxic on the Postgres proxy
    "pg_reset": (3.0, 10.0),  # reset_peer toxic on Postgres links
    "kafka_stall": (3.0, 10.0),  # timeout toxic: Kafka links stall, then close
    "pg_stall": (3.0, 10.0),  # timeout toxic: Postgres links stall, then close
    "kafka_bandwidth": (5.0, 20.0),  # bandwidth toxic: Kafka at a few KB/s
}
REQUIRED = (
    "sigkill",
    "sigterm",
    "scale_up",
    "scale_down",
    "pg_outage",
    "pg_read_only",
    "broker_restart",
    "kafka_latency",
    "kafka_reset",
    "pg_latency",
    "pg_reset",
)
WORKER_KINDS = frozenset({"sigkill", "sigterm", "scale_up", "scale_down"})


@dataclass(frozen=True)
class Fault:
    """One planned fault: ``at_s`` after the soak's start, for ``duration_s``."""

    at_s: float
    kind: str
    duration_s: float
    pick: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ends_s(self) -> float:
        return self.at_s + self.duration_s

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        span = f" for {self.duration_s:.1f}s" if self.duration_s else ""
        return f"{self.kind}{span}{' ' + extra if extra else ''}"


def _params(kind: str, rnd: random.Random) -> dict[str, Any]:
    if kind.endswith("_latency"):
        high = 400 if kind.startswith("kafka") else 200
        latency = rnd.randint(20, high)
        return {"latency_ms": latency, "jitter_ms": rnd.randint(0, latency // 2)}
    if kind.endswith("_reset"):
        return {"after_ms": rnd.randint(100, 3000), "toxicity": round(rnd.uniform(0.3, 1.0), 2)}
    if kind.endswith("_stall"):
        return {"close_after_ms": rnd.randint(1000, 8000)}
    if kind == "kafka_bandwidth":
        return {"rate_kb_s": rnd.randint(4, 64)}
    return {}


def _allowed(kind: str, size: int) -> bool:
    if kind == "scale_up":
        return size < MAX_WORKERS
    if kind == "scale_down":
        return size > MIN_WORKERS
    return True


class _Deck:
    """Shuffled kinds: first every REQUIRED one, then every kind, again and again."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.cards = list(REQUIRED)
        self.rnd.shuffle(self.cards)
        self.first_left = len(self.cards)  # cards of the first deck not drawn yet

    def draw(self, size: int) -> str:
        """The next kind the fleet's size allows (a scale past a bound waits for later)."""
        while True:
            for i, kind in enumerate(self.cards):
                if _allowed(kind, size):
                    self.first_left -= i < self.first_left
                    return self.cards.pop(i)
            fresh = list(KINDS)
            self.rnd.shuffle(fresh)
            self.cards += fresh


def make_schedule(
    seed: int, window_s: float, *, lead_in_s: float = 10.0, time_scale: float = 1.0
) -> list[Fault]:
    """The faults for ``seed``: from ``lead_in_s`` until ``window_s`` (and every REQUIRED kind);
    ``time_scale`` shortens every duration and gap (the short run)."""
    rnd = random.Random(seed)
    deck = _Deck(rnd)
    faults: list[Fault] = []
    at, size = lead_in_s, START_WORKERS
    while at < window_s or deck.first_left:
        kinds = [deck.draw(size) for _ in range(2 if rnd.random() < PAIR_P else 1)]
        kinds.sort(key=lambda k: -KINDS[k][1])  # a lasting fault first, the other inside it
        episode_end = at
        for n, kind in enumerate(kinds):
            low, high = KINDS[kind]
            duration = round(rnd.uniform(low, high) * time_scale, 1) if high else 0.0
            # The second fault starts while the first is in force (or soon after an instant one).
            start = at + (rnd.uniform(0.0, max(3.0, 0.6 * (episode_end - at))) if n else 0.0)
            fault = Fault(
                round(start, 1), kind, duration, int(rnd.random() * 1000) / 1000, _params(kind, rnd)
            )
            size += {"scale_up": 1, "scale_down": -1}.get(kind, 0)
            faults.append(fault)
            episode_end = max(episode_end, fault.ends_s)
        at = round(episode_end + rnd.uniform(*GAP_S) * time_scale, 1)
    return sorted(faults, key=lambda f: f.at_s)


def overlapping_pairs(faults: list[Fault]) -> int:
    """How many pairs of faults are in force at the same moment (instant ones count at ``at_s``)."""
    count = 0
    for i, a in enumerate(faults):
        for b in faults[i + 1 :]:
            if b.at_s <= a.ends_s and a.at_s <= b.ends_s:
                count += 1
    return count
