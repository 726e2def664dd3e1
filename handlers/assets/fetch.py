"""Download an asset to a temporary file: streamed, size-capped, SSRF-guarded."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from handlers.assets.netguard import Allowlist, BlockedAddressError, check_literal_host
from handlers.deps import FetchPolicy
from handlers.errors import PermanentError, RetryableError

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


async def fetch_to_file(
    session: aiohttp.ClientSession, url: str, policy: FetchPolicy, directory: Path
) -> Path:
    """Stream ``url`` into a new file under ``directory`` and return its path.

    Redirects are followed by hand so every hop is checked by the guard.
    Raises PermanentError for what retrying cannot fix (4xx, too large,
    refused address) and RetryableError for the rest.
    """
    allowlist = Allowlist(policy.allowed_hosts)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=policy.connect_timeout_s, sock_read=policy.read_timeout_s
    )
    headers = {"Authorization": policy.auth_header} if policy.auth_header else {}
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parsed = URL(current)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise PermanentError(f"unsupported asset URL {current!r}: only http(s) is fetched")
        try:
            check_literal_host(parsed.host, allowlist)
            async with session.get(
                parsed, allow_redirects=False, timeout=timeout, headers=headers
            ) as response:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location")
                    if not location:
                        raise PermanentError(f"redirect without a Location from {parsed.host}")
                    current = urljoin(current, location)
                    continue
                _raise_for_status(response.status, parsed.host)
                return await _save(response, policy.max_bytes, directory)
        except BlockedAddressError as exc:
            raise PermanentError(str(exc)) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.__cause__, BlockedAddressError):
                raise PermanentError(str(exc.__cause__)) from None
            raise RetryableError(f"could not connect to {parsed.host}: {exc.os_error}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableError(f"download from {parsed.host} failed: {exc!r}") from None
    raise PermanentError(f"more than {MAX_REDIRECTS} redirects fetching the asset")


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
