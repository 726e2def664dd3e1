"""Download an asset to a temporary file: streamed, size-capped, SSRF-guarded."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from handlers import tracing
from handlers.assets.netguard import Allowlist, BlockedAddressError, check_host
from handlers.deps import FetchPolicy
from handlers.errors import PermanentError, RetryableError

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def origin_of(url: str | URL) -> str:
    """``scheme://host:port`` with the default port spelled out, lower-cased host."""
    parsed = URL(url) if isinstance(url, str) else url
    return f"{parsed.scheme.lower()}://{(parsed.host or '').lower().rstrip('.')}:{parsed.port}"


async def fetch_to_file(
    session: aiohttp.ClientSession, url: str, policy: FetchPolicy, directory: Path
) -> Path:
    """Stream ``url`` into a new file under ``directory`` and return its path.

    Redirects are followed by hand so every hop is checked by the guard. The
    storage credential goes only to a storage origin, and once a redirect
    leaves the origins it stays off for the rest of the chain. Raises
    PermanentError for what retrying cannot fix (4xx, too large, refused
    or invalid address) and RetryableError for the rest.
    """
    allowlist = Allowlist(policy.allowed_hosts)
    origins = {origin_of(o) for o in policy.auth_origins}
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=policy.connect_timeout_s, sock_read=policy.read_timeout_s
    )
    credential = policy.auth_header
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parsed = _parse(current)
        if credential is not None and origin_of(parsed) not in origins:
            credential = None
        headers = {"Authorization": credential} if credential else {}
        try:
            check_host(parsed.raw_host or "", parsed.port or 0, allowlist)
            with _hop_span(parsed) as span:
                async with session.get(
                    parsed, allow_redirects=False, timeout=timeout, headers=headers
                ) as response:
                    span.set("http.response.status_code", response.status)
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.headers.get("Location")
                        if not location:
                            raise PermanentError(f"redirect without a Location from {parsed.host}")
                        current = urljoin(current, location)
                        continue
                    _raise_for_status(response.status, parsed.host or "")
                    return await _save(response, policy.max_bytes, directory)
        except BlockedAddressError as exc:
            raise PermanentError(str(exc)) from None
        except aiohttp.InvalidURL as exc:
            raise PermanentError(f"invalid asset URL: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.__cause__, BlockedAddressError):
                raise PermanentError(str(exc.__cause__)) from None
            raise RetryableError(f"could not connect to {parsed.host}: {exc.os_error}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableError(f"download from {parsed.host} failed: {exc!r}") from None
    raise PermanentError(f"more than {MAX_REDIRECTS} redirects fetching the asset")


def _hop_span(url: URL) -> tracing.Span:
    """A GET of the download: host and port only, since the URL's path and query come
    from a user and may be a capability (a signed link)."""
    return tracing.http("GET", url.scheme, url.host or "", url.port, None)


def _parse(url: str) -> URL:
    """The URL, or PermanentError unless it is an http(s) URL with a host and no user info."""
    try:
        parsed = URL(url)
        ok = parsed.scheme in ("http", "https") and bool(parsed.host) and parsed.port is not None
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise PermanentError(f"unsupported asset URL {url[:200]!r}: only http(s) is fetched")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise PermanentError("asset URLs with user:password@ in them are not fetched")
    return parsed


def _raise_for_status(status: int, host: str) -> None:
    if status == 429 or status >= 500:
        raise RetryableError(f"storage at {host} answered HTTP {status}")
    if status >= 400:
        raise PermanentError(f"storage at {host} answered HTTP {status}; the file is unavailable")


async def _save(response: aiohttp.ClientResponse, max_bytes: int, directory: Path) -> Path:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise PermanentError(f"file is {_mib(declared)}; limit is {_mib(max_bytes)}")
    fd, name = tempfile.mkstemp(prefix="asset-", dir=directory)
    path = Path(name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for block in response.content.iter_chunked(CHUNK_BYTES):
                written += len(block)
                if written > max_bytes:
                    raise PermanentError(f"file is over the {_mib(max_bytes)} limit")
                out.write(block)
    except BaseException:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - a local unlink, never blocks long
        raise
    return path
