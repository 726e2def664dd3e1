"""Secrets at rest: AES-256-GCM with a keyring, the key id stored with each value.

A keyring is ``"id:base64key,id:base64key,..."`` (each key 32 bytes); the
first key encrypts, every key decrypts. To rotate: put a new key first, keep
the old ones until every row was re-encrypted (``Keyring.reencrypt``), then
drop them.

A stored value is ``<version>:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>``.
The associated data is the caller's context: for ``v2`` (written now) the
row, the column and the account URL the secret belongs to; for ``v1``
(written before the account URL was bound) only the row and the column. So a
value copied to another row or column, or a row whose account URL was edited,
does not decrypt; and a ``v2`` value relabelled ``v1`` does not either (its
tag was made with the other context). ``reencrypt`` moves ``v1`` values to
``v2`` (``conveyor crm rotate-key``). Neither keys nor plaintexts ever appear
in an error message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "v2"  # associated data: the caller's bound context (row, column, account URL)
LEGACY_VERSION = "v1"  # associated data: the caller's legacy context (row and column only)
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class KeyringError(ValueError):
    """The keyring text is malformed (the message never contains key material)."""


class DecryptError(Exception):
    """A stored value cannot be decrypted: unknown key id, wrong row, or tampered."""


@dataclass(frozen=True, slots=True)
class Keyring:
    """Keys by id; ``current`` encrypts. Its repr names the key ids only."""

    current: str
    keys: dict[str, bytes] = field(repr=False)

    def __repr__(self) -> str:
        return f"Keyring(current={self.current!r}, key_ids={sorted(self.keys)!r})"

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """``"id:base64key,..."`` → Keyring; raises KeyringError naming the bad entry's position."""
        keys: dict[str, bytes] = {}
        entries = [e.strip() for e in text.split(",") if e.strip()]
        if not entries:
            raise KeyringError("the keyring is empty: expected 'id:base64key[,id:base64key...]'")
        for position, entry in enumerate(entries, start=1):
            key_id, sep, encoded = entry.partition(":")
            if not sep or not KEY_ID.match(key_id):
                raise KeyringError(f"keyring entry {position}: expected 'id:base64key'")
            if key_id in keys:
                raise KeyringError(f"keyring entry {position}: key id {key_id!r} repeated")
            keys[key_id] = _decode_key(encoded, position)
        return cls(entries[0].partition(":")[0], keys)

    def encrypt(self, plaintext: str, context: str) -> str:
        """Encrypt with the current key as ``v2``; ``context`` is authenticated."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.current]).encrypt(
            nonce, plaintext.encode("utf-8"), context.encode("utf-8")
        )
        return f"{VERSION}:{self.current}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def decrypt(self, stored: str, context: str, legacy_context: str | None = None) -> str:
        """The plaintext of a ``v2`` value under ``context``, or of a ``v1`` value under
        ``legacy_context`` (refused when None)."""
        version, key_id, encoded = _split(stored)
        key = self.keys.get(key_id)
        if version not in (VERSION, LEGACY_VERSION):
            raise DecryptError(f"unknown format {version!r} for {context}")
        bound = context if version == VERSION else legacy_context
        if bound is None:
            raise DecryptError(f"{context} is in the old format {version!r}, not accepted here")
        if key is None:
            raise DecryptError(f"no key {key_id!r} in the keyring for {context}")
        try:
            raw = base64.b64decode(encoded, validate=True)
            plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], bound.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptError(f"{context} does not decrypt (tampered or moved)") from None
        return plain.decode("utf-8")

    def key_id_of(self, stored: str) -> str:
        return _split(stored)[1]

    def version_of(self, stored: str) -> str:
        return _split(stored)[0]

    def reencrypt(self, stored: str, context: str, legacy_context: str | None = None) -> str | None:
        """The value as ``v2`` under the current key, or None when it already is."""
        if self.version_of(stored) == VERSION and self.key_id_of(stored) == self.current:
            return None
        return self.encrypt(self.decrypt(stored, context, legacy_context), context)


def new_key() -> str:
    """A fresh random key, base64-encoded (for ``id:<this>`` in the keyring)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _decode_key(encoded: str, position: int) -> bytes:
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"keyring entry {position}: the key is not base64") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(f"keyring entry {position}: the key must be {KEY_BYTES} bytes")
    return key


def _split(stored: str) -> tuple[str, str, str]:
    parts = stored.split(":", 2)
    if len(parts) != 3:
        raise DecryptError("stored value is not 'version:key id:data'")
    return parts[0], parts[1], parts[2]
