"""``conveyor crm``'s input handling: secrets from env or stdin lines, never argv; clear errors."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from streams.commands.crm import (
    SECRETS,
    UsageError,
    account_url,
    expiry,
    read_secrets,
    refuse_secrets_in_argv,
)
from streams.settings import Settings

VALUES = {name: f"value-of-{name.lower()}-0123456789abcdef" for name in SECRETS.values()}


def test_secrets_come_from_the_environment_by_name() -> None:
    found = read_secrets("env", VALUES, io.StringIO())
    assert found == {field: VALUES[name] for field, name in SECRETS.items()}
    with pytest.raises(UsageError) as caught:
        read_secrets("env", {"KOMMO_CLIENT_SECRET": "x", "KOMMO_ACCESS_TOKEN": " "}, io.StringIO())
    assert str(caught.value).startswith(
        "KOMMO_ACCESS_TOKEN, KOMMO_REFRESH_TOKEN, KOMMO_WEBHOOK_SECRET missing or empty"
    )


def test_stdin_takes_name_value_lines_with_comments_export_and_quotes() -> None:
    text = "\n".join(
        [
            "# from the consent callback",
            "",
            f"KOMMO_CLIENT_SECRET={VALUES['KOMMO_CLIENT_SECRET']}",
            f"export KOMMO_ACCESS_TOKEN='{VALUES['KOMMO_ACCESS_TOKEN']}'",
            f'KOMMO_REFRESH_TOKEN="{VALUES["KOMMO_REFRESH_TOKEN"]}"',
            f"  KOMMO_WEBHOOK_SECRET = {VALUES['KOMMO_WEBHOOK_SECRET']}  ",
        ]
    )
    found = read_secrets("stdin", {}, io.StringIO(text))
    assert found == {field: VALUES[name] for field, name in SECRETS.items()}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("rt-3f9a2b7c", "stdin line 1: expected one of"),  # a bare token: never echoed
        ("KOMMO_TOKEN=rt-3f9a2b7c", "stdin line 1: expected one of"),
        ("KOMMO_CLIENT_SECRET=a\nKOMMO_CLIENT_SECRET=rt-3f9a2b7c", "line 2: KOMMO_CLIENT_SECRET"),
        ("KOMMO_CLIENT_SECRET=a", "KOMMO_ACCESS_TOKEN, KOMMO_REFRESH_TOKEN"),
    ],
)
def test_bad_stdin_is_explained_without_its_values(text: str, said: str) -> None:
    with pytest.raises(UsageError) as caught:
        read_secrets("stdin", {}, io.StringIO(text))
    assert said in str(caught.value) and "3f9a2b7c" not in str(caught.value)


def test_an_unknown_source_is_refused_without_echoing_it() -> None:
    with pytest.raises(UsageError) as caught:
        read_secrets("sk-live-0001", VALUES, io.StringIO())
    assert "sk-live-0001" not in str(caught.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["crm", "connect", "c1", "--client-secret", "sk-9f8e"],
        ["crm", "connect", "c1", "--client-secret=sk-9f8e"],
        ["crm", "connect", "c1", "--ACCESS-TOKEN=sk-9f8e"],
        ["crm", "connect", "c1", "--refresh-token", "sk-9f8e"],
        ["crm", "connect", "c1", "--webhook-secret", "sk-9f8e"],
        ["crm", "connect", "c1", "--token", "sk-9f8e"],
        ["crm", "connect", "c1", "--password", "sk-9f8e"],
        ["crm", "connect", "c1", "--secrets", "sk-9f8e"],
    ],
)
def test_options_named_like_a_secret_are_refused_by_name_only(argv: list[str]) -> None:
    refused = refuse_secrets_in_argv(argv)
    assert refused is not None and "never taken on the command line" in refused
    assert "sk-9f8e" not in refused


def test_ordinary_arguments_pass() -> None:
    argv = ["crm", "connect", "c1", "--org", "acme", "--secrets-from", "stdin", "--expires-in", "5"]
    assert refuse_secrets_in_argv(argv) is None


DEFAULT_HOSTS = Settings().crm.allowed_account_hosts


def test_account_urls_must_be_kommo_accounts_unless_the_allowlist_names_a_stand_in() -> None:
    assert DEFAULT_HOSTS == ["*.kommo.com"]
    assert account_url("https://Acme.kommo.com/", DEFAULT_HOSTS) == "https://acme.kommo.com"
    loopback = ["127.0.0.1:*"]
    assert account_url("http://127.0.0.1:8080", loopback) == "http://127.0.0.1:8080"
    for bad, said in (
        # the probes of issue 19: a foreign host, a private address, a look-alike suffix
        ("https://evil.example", "not an allowed Kommo account"),
        ("https://10.0.0.5:8443", "not an allowed Kommo account"),
        ("https://acme.kommo.com.evil.example", "not an allowed Kommo account"),
        ("https://kommo.com", "not an allowed Kommo account"),
        ("https://a.b.kommo.com", "not an allowed Kommo account"),
        ("https://acme.kommo.com:8443", "not an allowed Kommo account"),
        ("http://127.0.0.1:8080", "not an allowed Kommo account"),  # not on the default list
        ("http://acme.kommo.com", "served over https"),
        ("https://acme.kommo.com/api/v4", "no path"),
        ("https://user:pw@acme.kommo.com", "no path, query or credentials"),
        ("acme.kommo.com", "looks like https://"),
    ):
        with pytest.raises(UsageError, match=said):
            account_url(bad, DEFAULT_HOSTS)


def test_expiry_from_seconds_or_a_zoned_time() -> None:
    assert expiry(None, "2030-01-01T00:00:00Z") == datetime(2030, 1, 1, tzinfo=UTC)
    before = datetime.now(UTC)
    assert (expiry(60.0, None) - before).total_seconds() == pytest.approx(60.0, abs=5)
    with pytest.raises(UsageError, match="give a time zone"):
        expiry(None, "2030-01-01T00:00:00")
    with pytest.raises(UsageError, match="ISO 8601"):
        expiry(None, "tomorrow")


def test_a_short_webhook_secret_is_refused_without_echoing_it() -> None:
    short = {**VALUES, "KOMMO_WEBHOOK_SECRET": "whsec-31-characters-long-123456"}
    assert len(short["KOMMO_WEBHOOK_SECRET"]) == 31
    with pytest.raises(UsageError, match="shorter than 32 characters") as caught:
        read_secrets("env", short, io.StringIO())
    assert short["KOMMO_WEBHOOK_SECRET"] not in str(caught.value)
