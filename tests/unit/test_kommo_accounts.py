"""The allowlist of Kommo account hosts: which account URLs may receive secrets and tokens."""

from __future__ import annotations

import pytest

from handlers.providers.kommo_accounts import AccountHosts, AccountNotAllowed, parse_entry
from streams.settings import ConfigError, load_settings
from tests.support.stack import patched_env

ADMITTED = [
    (("*.kommo.com",), "https://acme.kommo.com", "https://acme.kommo.com"),
    (("*.kommo.com",), "HTTPS://ACME.Kommo.COM/", "https://acme.kommo.com"),
    (("*.kommo.com",), "https://acme.kommo.com:443", "https://acme.kommo.com:443"),
    (("*.kommo.com",), "https://a-1.kommo.com", "https://a-1.kommo.com"),
    (("acme.kommo.com",), "https://acme.kommo.com", "https://acme.kommo.com"),
    (("127.0.0.1:*",), "http://127.0.0.1:41234", "http://127.0.0.1:41234"),
    (("acct.example:8443",), "https://acct.example:8443", "https://acct.example:8443"),
    (("[::1]:*",), "http://[::1]:8080", "http://[::1]:8080"),
    (("*.kommo.com", "*.amocrm.ru"), "https://acme.amocrm.ru", "https://acme.amocrm.ru"),
]

REFUSED = [
    (("*.kommo.com",), "https://evil.example"),
    (("*.kommo.com",), "https://10.0.0.5:8443"),
    (("*.kommo.com",), "https://acme.kommo.com.evil.example"),
    (("*.kommo.com",), "https://acmekommo.com"),
    (("*.kommo.com",), "https://kommo.com"),
    (("*.kommo.com",), "https://a.b.kommo.com"),
    (("*.kommo.com",), "https://-acme.kommo.com"),
    (("*.kommo.com",), "https://acme.kommo.com:8443"),
    (("*.kommo.com",), "https://acme.amocrm.ru"),
    (("*.kommo.com",), "http://acme.kommo.com"),  # plain http only for loopback
    (("acct.example:8443",), "https://acct.example"),
    (("127.0.0.1:*",), "http://127.0.0.2:8080"),
    (("127.0.0.1:*",), "http://localhost:8080"),
    ((), "https://acme.kommo.com"),
]


@pytest.mark.parametrize(("entries", "url", "found"), ADMITTED)
def test_admitted_account_urls(entries: tuple[str, ...], url: str, found: str) -> None:
    assert AccountHosts(entries).check(url) == found


@pytest.mark.parametrize(("entries", "url"), REFUSED)
def test_refused_account_urls(entries: tuple[str, ...], url: str) -> None:
    with pytest.raises(AccountNotAllowed):
        AccountHosts(entries).check(url)


@pytest.mark.parametrize(
    "url",
    [
        "acme.kommo.com",
        "ftp://acme.kommo.com",
        "https://acme.kommo.com/api",
        "https://u:p@acme.kommo.com",
        "https://acme.kommo.com?x=1",
        "https://acme.kommo.com:port",
        "https://ac me.kommo.com",
    ],
)
def test_what_is_not_an_account_origin_is_refused_before_the_allowlist(url: str) -> None:
    with pytest.raises(ValueError):
        AccountHosts().check(url)


@pytest.mark.parametrize("entry", ["*", "*.com.", "kommo.com:http", "https://x.kommo.com", "a b"])
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_entry(entry)


def test_the_setting_takes_a_comma_list_and_refuses_a_bad_entry() -> None:
    with patched_env({"CONVEYOR_CRM__ALLOWED_ACCOUNT_HOSTS": "*.kommo.com, 127.0.0.1:*"}):
        assert load_settings().crm.allowed_account_hosts == ["*.kommo.com", "127.0.0.1:*"]
    with (
        patched_env({"CONVEYOR_CRM__ALLOWED_ACCOUNT_HOSTS": "*.kommo.com:http"}),
        pytest.raises(ConfigError) as caught,
    ):
        load_settings()
    assert caught.value.lines[0].startswith("CONVEYOR_CRM__ALLOWED_ACCOUNT_HOSTS:")
