"""AES-256-GCM secrets with a keyring: rotation, binding to row, column and account URL,
the old unbound format still readable, no key in errors."""

from __future__ import annotations

import base64

import aiohttp
import pytest
from pydantic import ValidationError

from handlers.crm.connections import context, legacy_context, open_secret
from handlers.crm.crypto import DecryptError, Keyring, KeyringError, new_key
from streams.settings import ConfigError, Settings, load_settings
from tests.support.crm import crm_deps, seal_v1, services
from tests.support.stack import patched_env

K1, K2 = new_key(), new_key()
CTX = "crm_connections/c1/refresh_token"


def test_round_trip_under_the_current_key_and_fresh_nonces() -> None:
    ring = Keyring.parse(f"k1:{K1}")
    a, b = ring.encrypt("secret-token", CTX), ring.encrypt("secret-token", CTX)
    assert a != b and "secret-token" not in a
    assert a.startswith("v2:k1:")
    assert ring.decrypt(a, CTX) == ring.decrypt(b, CTX) == "secret-token"


def test_a_new_key_first_encrypts_while_old_rows_still_decrypt() -> None:
    old = Keyring.parse(f"k1:{K1}").encrypt("refresh-1", CTX)
    rotated = Keyring.parse(f"k2:{K2}, k1:{K1}")
    assert rotated.current == "k2"
    assert rotated.decrypt(old, CTX) == "refresh-1"
    moved = rotated.reencrypt(old, CTX)
    assert moved is not None and rotated.key_id_of(moved) == "k2"
    assert rotated.reencrypt(moved, CTX) is None
    assert Keyring.parse(f"k2:{K2}").decrypt(moved, CTX) == "refresh-1"


def test_a_value_moved_to_another_row_or_column_or_tampered_does_not_decrypt() -> None:
    ring = Keyring.parse(f"k1:{K1}")
    stored = ring.encrypt("value", CTX)
    for other in ("crm_connections/c2/refresh_token", "crm_connections/c1/access_token"):
        with pytest.raises(DecryptError):
            ring.decrypt(stored, other)
    data = base64.b64decode(stored.split(":", 2)[2])
    flipped = bytes([data[-1] ^ 1])
    tampered = "v2:k1:" + base64.b64encode(data[:-1] + flipped).decode()
    with pytest.raises(DecryptError):
        ring.decrypt(tampered, CTX)


def test_a_value_under_a_dropped_key_names_the_key_id_only() -> None:
    stored = Keyring.parse(f"k1:{K1}").encrypt("value", CTX)
    with pytest.raises(DecryptError) as caught:
        Keyring.parse(f"k2:{K2}").decrypt(stored, CTX)
    assert "'k1'" in str(caught.value) and K1 not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "k1",
        f"k1:{K1},k1:{K2}",
        "k1:not base64!",
        f"k1:{base64.b64encode(b'short').decode()}",
        f"bad id:{K1}",
    ],
)
def test_malformed_keyrings_are_refused_without_echoing_key_material(text: str) -> None:
    with pytest.raises(KeyringError) as caught:
        Keyring.parse(text)
    for key in (K1, K2):
        assert key not in str(caught.value)


def test_settings_refuse_a_malformed_keyring_without_echoing_it() -> None:
    bad = f"k1:{K1},k2:{K1[:20]}"
    with patched_env({"CONVEYOR_CRM__KEYRING": bad}), pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.lines == [
        "CONVEYOR_CRM__KEYRING: Value error, keyring entry 2: the key must be 32 bytes"
    ]
    with pytest.raises(ValidationError) as raw:
        Settings(crm={"keyring": bad})
    assert K1[:20] not in str(raw.value)
    with patched_env({"CONVEYOR_CRM__KEYRING": f"new:{K2},old:{K1}"}):
        ring = load_settings().crm.keyring
    assert ring is not None and Keyring.parse(ring.get_secret_value()).current == "new"


ACME, EVIL = "https://acme.kommo.com", "https://evil.kommo.com"


def test_a_secret_is_bound_to_its_account_url_so_an_edited_row_does_not_decrypt() -> None:
    ring = Keyring.parse(f"k1:{K1}")
    stored = ring.encrypt("rt-1", context("c1", "refresh_token_enc", ACME))
    assert open_secret(ring, stored, "c1", "refresh_token_enc", ACME) == "rt-1"
    assert open_secret(ring, stored, "c1", "refresh_token_enc", ACME.upper()) == "rt-1"
    for url in (EVIL, "https://acme.kommo.com:8443", "http://127.0.0.1:9"):
        with pytest.raises(DecryptError) as caught:
            open_secret(ring, stored, "c1", "refresh_token_enc", url)
        assert "does not decrypt" in str(caught.value) and K1 not in str(caught.value)


def test_old_unbound_values_still_decrypt_until_rotate_key_binds_them() -> None:
    ring = Keyring.parse(f"k1:{K1}")
    old = seal_v1(ring, "secret-1", "c1", "client_secret_enc")
    assert open_secret(ring, old, "c1", "client_secret_enc", ACME) == "secret-1"
    with pytest.raises(DecryptError):  # a caller that accepts only the bound format
        ring.decrypt(old, context("c1", "client_secret_enc", ACME))
    bound = context("c1", "client_secret_enc", ACME)
    moved = ring.reencrypt(old, bound, legacy_context("c1", "client_secret_enc"))
    assert moved is not None and moved.startswith("v2:k1:"), "rewritten under the same key"
    assert ring.reencrypt(moved, bound) is None
    with pytest.raises(DecryptError):
        open_secret(ring, moved, "c1", "client_secret_enc", EVIL)


def test_a_bound_value_relabelled_as_the_old_format_does_not_decrypt() -> None:
    ring = Keyring.parse(f"k1:{K1}")
    stored = ring.encrypt("rt-1", context("c1", "refresh_token_enc", ACME))
    downgraded = "v1" + stored.removeprefix("v2")
    with pytest.raises(DecryptError):
        open_secret(ring, downgraded, "c1", "refresh_token_enc", EVIL)


async def test_the_keyring_and_what_holds_it_show_no_key_in_their_repr() -> None:
    raw = base64.b64decode(K1)
    ring = Keyring.parse(f"k1:{K1},k2:{K2}")
    async with aiohttp.ClientSession() as session:
        crm = services(session, ring)
        deps = crm_deps(None, session, crm)  # type: ignore[arg-type]
        tokens = crm.tokens(None, "c1", "https://acme.kommo.com")  # type: ignore[arg-type]
        shown = [repr(ring), str(ring), repr(crm), repr(deps), repr(tokens), f"{ring!r:>10}"]
    assert repr(ring) == "Keyring(current='k1', key_ids=['k1', 'k2'])"
    for text in shown:
        for key in (K1, K2, repr(raw), raw.hex(), repr(base64.b64decode(K2))):
            assert key not in text, text
