"""The database as handlers see it: a pool of connections (asyncpg's, typed).

``Pool`` and ``Connection`` are the parts of asyncpg's API the service
uses, as Protocols: mypy strict checks every query call site against them,
and checks (through asyncpg-stubs) that asyncpg's own pool, pooled
connection and connection provide them. Unit tests give handlers fakes of
the same Protocols. Rows are asyncpg's ``Record``.
"""

# ruff: noqa: ASYNC109  (asyncpg's own signatures, timeout parameters included)
from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from asyncpg import Record as Row

__all__ = ["Connection", "Pool", "Row"]


class Connection(Protocol):
    """One connection (``asyncpg.Connection``, or one a pool lent out)."""

    async def execute(self, query: str, *args: object, timeout: float | None = ...) -> str: ...

    async def executemany(
        self, command: str, args: Iterable[Sequence[object]], *, timeout: float | None = ...
    ) -> None: ...

    async def fetch(self, query: str, *args: object, timeout: float | None = ...) -> list[Row]: ...

    async def fetchrow(
        self, query: str, *args: object, timeout: float | None = ...
    ) -> Row | None: ...

    async def fetchval(
        self, query: str, *args: object, column: int = ..., timeout: float | None = ...
    ) -> Any: ...

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Iterable[Sequence[object]],
        columns: Iterable[str] | None = ...,
        timeout: float | None = ...,
    ) -> str: ...

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...


class Pool(Protocol):
    """A connection pool (``asyncpg.Pool``): lends one connection per ``acquire``."""

    def acquire(
        self, *, timeout: float | None = ...
    ) -> AbstractAsyncContextManager[Connection]: ...

    async def close(self) -> None: ...
