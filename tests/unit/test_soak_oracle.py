"""The compound-fault soak's oracle, rule by rule, on evidence made by hand."""

from __future__ import annotations

from collections import Counter

from schemas.envelope import JobEnvelope
from tests.support.soak_load import Planned
from tests.support.soak_oracle import (
    DeadLetter,
    Evidence,
    Excuse,
    judge,
    unexcused_repeats,
)


def _job(job_id: str, kind: str = "probe", good: bool = True) -> Planned:
    types = {"probe": "probe", "asset": "asset.process", "message": "message.send"}
    envelope = JobEnvelope(id=job_id, type=types[kind], payload={})
    return Planned(0.0, envelope, job_id.encode(), kind, good)


def _dead(job_id: str, at: float, offset: int, job_type: str = "probe") -> DeadLetter:
    return DeadLetter(0, offset, at, job_id, job_type, "handle", "PermanentError: no")


def _evidence(jobs: list[Planned], **over: object) -> Evidence:
    base: dict[str, object] = {
        "jobs": jobs,
        "asset_ids": {},
        "message_keys": {},
        "effects": Counter(),
        "assets": {},
        "indexed": Counter(),
        "processed": set(),
        "sends": {},
        "notes": Counter(),
        "usage": 0,
        "dead": [],
        "mirrored": set(),
        "lag": {"t.probe": 0},
        "excuses": [],
    }
    return Evidence(**{**base, **over})  # type: ignore[arg-type]


def test_repeats_need_a_death_between_them() -> None:
    kill = Excuse(105.0, "w2 SIGKILLed")
    assert unexcused_repeats([100.0, 110.0], [kill]) == []
    assert unexcused_repeats([100.0, 110.0], []) == [(100.0, 110.0)]
    assert unexcused_repeats([100.0, 110.0], [Excuse(111.0, "after")]) == [(100.0, 110.0)]
    # One death excuses one repeat: the third record needs a second one.
    assert unexcused_repeats([100.0, 110.0, 120.0], [kill]) == [(110.0, 120.0)]
    assert unexcused_repeats([110.0, 100.0], [Excuse(99.5, "a kill just before")]) == []


def test_a_completed_job_and_a_dead_lettered_bad_job_pass() -> None:
    good, bad = _job("g"), _job("b", good=False)
    ev = _evidence(
        [good, bad], effects=Counter({"g": 1}), dead=[_dead("b", 1.0, 0)], mirrored={(0, 0)}
    )
    verdict = judge(ev)
    assert verdict.ok, verdict.text()


def test_every_way_a_job_can_end_wrong_is_named() -> None:
    jobs = [_job("twice"), _job("never"), _job("both"), _job("good-dead"), _job("bad", good=False)]
    dead = [
        _dead("both", 1.0, 0),
        _dead("good-dead", 2.0, 1),
        _dead("bad", 3.0, 2),
        _dead("bad", 9.0, 3),  # again, with no death between
        _dead("stranger", 4.0, 4),
    ]
    ev = _evidence(
        jobs,
        effects=Counter({"twice": 2, "both": 1}),
        dead=dead,
        mirrored={(0, 0), (0, 1), (0, 2), (0, 3), (0, 9)},
        lag={"t.probe": 0, "t.probe.retry": 3},
    )
    verdict = judge(ev)
    text = verdict.text()
    assert "twice: 2 effect rows" in text
    assert "never (probe): never ended" in text
    assert "both: completed and dead-lettered" in text
    assert "good-dead (probe): stage handle" in text
    assert "bad: dead-lettered at 3.0 and again at 9.0" in text
    assert "stranger: a dead letter of no published job" in text
    assert "offset 4 (stranger) not mirrored" in text
    assert "offset 9 has no record" in text
    assert "t.probe.retry: lag 3" in text
    assert not verdict.ok


def test_a_repeat_after_a_kill_is_excused_and_counted() -> None:
    bad = _job("bad", good=False)
    ev = _evidence(
        [bad],
        dead=[_dead("bad", 3.0, 0), _dead("bad", 20.0, 1)],
        mirrored={(0, 0), (0, 1)},
        excuses=[Excuse(5.0, "w1 SIGKILLed")],
    )
    verdict = judge(ev)
    assert verdict.ok, verdict.text()
    assert verdict.excused == ["bad: 2 dead letters"]


def test_assets_need_their_chunks_one_indexing_and_their_follow_up() -> None:
    done, missing_kg, bad = _job("a1", "asset"), _job("a2", "asset"), _job("a3", "asset", False)
    ev = _evidence(
        [done, missing_kg, bad],
        asset_ids={"a1": "x1", "a2": "x2", "a3": "x3"},
        assets={"x1": ("completed", 4, 4), "x2": ("completed", 4, 3), "x3": ("pending", None, 0)},
        indexed=Counter({"x1": 1, "x2": 2}),
        processed={"a1:kg"},
        dead=[_dead("a3", 1.0, 0, "asset.process")],
        mirrored={(0, 0)},
    )
    text = judge(ev).text()
    assert "a2: asset x2 indexed 2 times" in text
    assert "a2: chunks_count 4 but 3 chunk rows" in text
    assert "a2:kg: the follow-up never ended" in text
    assert "a3: dead-lettered but the asset is pending" in text
    assert "a1" not in text.replace("a1:kg", "")


def test_messages_need_one_note_and_one_usage_count() -> None:
    ok, twice = _job("m1", "message"), _job("m2", "message")
    ev = _evidence(
        [ok, twice],
        message_keys={"m1": "k1", "m2": "k2"},
        sends={"k1": "sent", "k2": "sent"},
        notes=Counter({"k1": 1, "k2": 2}),
        usage=3,
    )
    text = judge(ev).text()
    assert "m2: 2 notes for key k2" in text
    assert "key k2: 2 notes" in text
    assert "usage counts 3 messages, 2 were sent" in text
    assert "m1" not in text


def test_a_poison_record_must_be_dead_lettered() -> None:
    caught, missed = _job("x1", good=False), _job("x2", good=False)
    caught = Planned(0.0, caught.envelope, b"poison", "poison", False, b"not json")
    missed = Planned(0.0, missed.envelope, b"poison", "poison", False, b"[[[")
    ev = _evidence([caught, missed], dead=[_dead("x1", 1.0, 0, "")], mirrored={(0, 0)})
    text = judge(ev).text()
    assert "x2 (poison): never ended" in text
    assert "x1" not in text


def test_recovery_is_measured_on_the_backlog_without_the_jobs_that_never_ended() -> None:
    from tests.support.soak_evidence import Backlog, Sample

    # Backlog 2 before the fault, 12 during it, back to 2 at t=15; one job published
    # at t=11 never ends, so the raw backlog stays one higher from then on.
    samples = [
        Sample(9.0, 100, 98),
        Sample(11.0, 110, 98),
        Sample(13.0, 120, 110),
        Sample(15.0, 130, 127),
        Sample(17.0, 140, 137),
    ]
    backlog = Backlog(samples, lost_at=[11.0], slack=0)
    assert backlog.recovery_s(10.0, 12.0) == 3.0
    assert Backlog(samples, lost_at=[], slack=0).recovery_s(10.0, 12.0) is None
    assert Backlog(samples, lost_at=[], slack=1).recovery_s(10.0, 12.0) == 3.0
    assert backlog.recovery_s(1.0, 2.0) is None  # no sample before the fault
