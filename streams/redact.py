"""Redaction of secrets in text: configured values, bearer tokens, passwords inside URLs.

Used by the log masker, for the text that leaves the worker in dead letters
and asset errors, and by ``conveyor config``. Shapes are masked even when
the value is not a configured secret: a token a provider echoes back, or a
credential an operator wrote into a URL setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

MASK = "**********"

_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+(@)")


def mask_shapes(text: str) -> str:
    """Mask bearer tokens and ``user:password@`` in URLs."""
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    if "@" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}{m.group(2)}", text)
    return text


def url_password(text: str) -> str | None:
    """The password of a ``scheme://user:password@host`` URL, if ``text`` is one.

    None too when the password repeats the URL's user or path (a local
    ``conveyor:conveyor@…/conveyor`` DSN): it is no secret alone, and masking
    the word everywhere would blank every log line that names the service.
    The whole URL, and ``user:password@`` in any URL, are still masked.
    """
    try:
        parts = urlsplit(text) if "://" in text else None
    except ValueError:
        return None
    if parts is None or not parts.password:
        return None
    if parts.password in (parts.username, parts.path.strip("/")):
        return None
    return parts.password


# Keys whose values are secrets wherever they appear in a payload or headers.
SECRET_KEYS = re.compile(
    r"(?i)(^|[_\-.])(secret|password|passwd|token|signature|authorization|api[_\-]?key|"
    r"credentials?|private[_\-]?key|cookie)($|[_\-.])"
)


def mask_json(value: object, mask: Callable[[str], str] = mask_shapes) -> object:
    """A JSON value with secret-named keys' values masked, and ``mask`` on every string."""
    if isinstance(value, dict):
        return {
            k: MASK if SECRET_KEYS.search(str(k)) and v not in (None, "") else mask_json(v, mask)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_json(v, mask) for v in value]
    if isinstance(value, str):
        return mask(value)
    return value


class Redactor:
    """Masks known secret values (longest first) and secret-shaped text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return mask_shapes(text)
