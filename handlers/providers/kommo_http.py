"""What the Kommo API client (kommo.py) and its token endpoint (kommo_oauth.py) share:
one HTTP answer, Kommo's problem detail in one line (secrets masked), the reason of a
failed exchange, the refusal of a redirect, the guard on a next page's link (it stays
on the account), and the span of a call."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from handlers import tracing
from handlers.errors import PermanentError, RetryableError
from handlers.providers.kommo_accounts import origin

DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def redirect_refused(what: str, status: int) -> str:
    return (
        f"Kommo answered {what} with a redirect (HTTP {status}): not followed, since it would"
        " carry a token or secret to another address; check the connection's account URL"
    )


def next_page(body: Any, current: str, account: str) -> str | None:
    """The next page's URL, resolved against this one; only on ``account`` (an origin).

    A link elsewhere (``.evil.example/…`` glued to the host, another host, a
    scheme change) would take the Bearer token with it: PermanentError, so a
    sync never applies a list cut short either.
    """
    href = body.get("_links", {}).get("next", {}).get("href")
    if not isinstance(href, str) or not href:
        return None
    following = urljoin(current, href.strip())
    parts = urlsplit(following)
    try:
        same = origin(f"{parts.scheme}://{parts.netloc}") == account
    except ValueError:
        same = False
    if not same or parts.username or parts.password:
        raise PermanentError(
            f"Kommo: the next page of {url_path(current)} is linked on another origin;"
            " not followed (it would carry the token)"
        )
    return None if following == current else following


def decode(answer: Answer) -> Any:
    try:
        return json.loads(answer.body) if answer.body else None
    except ValueError:
        raise RetryableError(f"Kommo: HTTP {answer.status} with a body that is not JSON") from None


def problem_detail(raw: bytes, secrets: tuple[str, ...] = ()) -> str:
    """Kommo's problem+json in one line: title, detail, hint, validation errors."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        parts = [str(doc[k]) for k in ("title", "detail", "hint") if doc.get(k)]
        parts += _validation_errors(doc.get("validation-errors"))
        text = "; ".join(parts)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())[:DETAIL_CHARS]
    return f": {text}" if text else ""


def _validation_errors(value: Any) -> list[str]:
    found = []
    for item in value if isinstance(value, list) else []:
        for error in item.get("errors", []) if isinstance(item, dict) else []:
            if isinstance(error, dict):
                found.append(f"{error.get('path')}: {error.get('code')} {error.get('detail', '')}")
    return found


def transport_reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    return f"connection failed ({type(exc).__name__})"


def url_path(url: str) -> str:
    return urlsplit(url).path


def http_span(method: str, url: str) -> tracing.Span:
    """An HTTP client span of a Kommo call: the account's origin and the API path; the
    query, the token and the body stay out."""
    parts = urlsplit(url)
    return tracing.http(method, parts.scheme, parts.hostname or "", parts.port, parts.path)
