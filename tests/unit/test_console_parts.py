"""The console's pure parts: logins, sealed sessions, proxies, origins, rates, masking."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from streams.commands.lag import PartitionLag
from streams.console.auth import Authenticator, same_origin
from streams.console.filters import ago
from streams.console.state import Offsets, Sample
from streams.dlq_detail import masked_payload, split_headers
from streams.redact import MASK, Redactor
from streams.settings import ConsoleSettings, console_logins

TOKENS = "vera:viewer:" + "v" * 24 + ",otto:operator:" + "o" * 24


def auth(**changes: object) -> Authenticator:
    return Authenticator(ConsoleSettings(tokens=SecretStr(TOKENS), **changes))  # type: ignore[arg-type]


def test_tokens_name_a_person_and_a_role() -> None:
    a = auth()
    assert a.login("o" * 24) == ("otto", "operator")
    assert a.login("v" * 24) == ("vera", "viewer")
    assert a.login("o" * 23) is None and a.login("") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("vera:viewer", "not name:role:token"),
        ("vera:admin:" + "x" * 24, "viewer or operator"),
        ("vera:viewer:short", "at least 24"),
        ("a:viewer:" + "x" * 24 + ",b:operator:" + "x" * 24, "the same token twice"),
    ],
)
def test_bad_token_lists_are_refused_without_echoing_the_token(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        console_logins(text)
    assert "x" * 24 not in str(caught.value)
    settings = ConsoleSettings(tokens=SecretStr(text))
    assert any(problem in line for line in settings.problems())


def test_nobody_could_log_in_without_tokens_or_proxies() -> None:
    assert "nobody could log in" in ConsoleSettings().problems()[0]
    assert ConsoleSettings(trusted_proxies=["10.0.0.0/8"]).problems() == []


def test_a_session_cookie_is_sealed_and_expires() -> None:
    a = auth()
    session = a.new_session("otto", "operator")
    cookie = a.seal(session)
    assert a.unseal(cookie) == session
    data, _, signature = cookie.rpartition(".")
    forged = a.seal(a.new_session("vera", "operator")).rpartition(".")[0] + "." + signature
    assert a.unseal(forged) is None, "another body with this signature"
    assert a.unseal(data + "." + signature[::-1]) is None
    assert auth().unseal(cookie) is None, "another process's random key"
    keyed = auth(session_key=SecretStr("k" * 32))
    assert auth(session_key=SecretStr("k" * 32)).unseal(keyed.seal(session)) == session
    expired = a.seal(a.new_session("otto", "operator").__class__("otto", "operator", "c", 1.0))
    assert a.unseal(expired) is None and time.time() > 1.0


def test_only_listed_proxies_are_trusted_and_only_named_users_operate() -> None:
    a = auth(trusted_proxies=["10.1.0.0/16", "::1"], proxy_operators=["olga"])
    assert a.trusted("10.1.2.3") and a.trusted("::1")
    assert not a.trusted("10.2.0.1") and not a.trusted("127.0.0.1") and not a.trusted(None)
    assert a.proxy_role("olga") == "operator" and a.proxy_role("pat") == "viewer"
    assert auth(trusted_proxies=["10.0.0.0/8"], proxy_operators=["*"]).proxy_role("x") == (
        "operator"
    )


def test_same_origin() -> None:
    assert same_origin(None, "127.0.0.1:9180"), "no Origin: not a cross-site browser request"
    assert same_origin("http://127.0.0.1:9180", "127.0.0.1:9180")
    assert not same_origin("http://evil.test", "127.0.0.1:9180")
    assert not same_origin("null", "127.0.0.1:9180")


def test_rates_come_from_how_far_committed_offsets_moved() -> None:
    offsets = Offsets()
    assert offsets.rate("t", "jobs.t").per_minute is None
    offsets.add(Sample(0.0, [PartitionLag("jobs.t", 0, 0, 100, 150)]))
    offsets.add(Sample(30.0, [PartitionLag("jobs.t", 0, 0, 160, 200)]))
    rate = offsets.rate("t", "jobs.t")
    assert rate.per_minute == 120.0 and rate.window_s == 30.0 == offsets.window_s()
    offsets.add(Sample(4000.0, [PartitionLag("jobs.t", 0, 0, 400, 400)]))
    assert len(offsets.samples) == 1, "samples older than an hour are dropped"


def test_payloads_and_headers_are_shown_masked() -> None:
    mask = Redactor(["configured-secret-value"])
    raw = (
        b'{"payload": {"signature": "abc", "url": "https://u:pw@h/x",'
        b' "n": "configured-secret-value"}}'
    )
    text, is_json, truncated = masked_payload(raw, mask)
    assert is_json and not truncated
    assert "abc" not in text and "pw@" not in text and "configured-secret-value" not in text
    assert text.count(MASK) == 3
    own, ours = split_headers(
        {"Authorization": "Bearer t0k3n", "conveyor-error-class": "X", "conveyor-error-stack": "s"},
        mask,
    )
    assert own == {"Authorization": MASK} and ours == {"conveyor-error-class": "X"}
    assert masked_payload(b"not json Bearer abcdef", mask)[0] == f"not json Bearer {MASK}"


def test_durations_read_as_a_person_says_them() -> None:
    assert [ago(4), ago(200), ago(7500), ago(3 * 86400 + 7200)] == [
        "4 s",
        "3 min 20 s",
        "2 h 5 min",
        "3 d 2 h",
    ]
