"""An in-memory stand-in for the asset tables, behind ``handlers.db`` Pool and Connection.

It answers the statements of ``handlers.assets.store`` and
``handlers.ledger`` (matched by the constants themselves, so a new
statement fails loudly instead of being answered wrongly) and keeps every
status write, so a unit test sees the order of an asset's statuses. A
transaction keeps its writes only when it ends without an error. The
status rule itself (statuses never move back) is Postgres's: the
integration ring tests it; here ``refuse_status`` stands in for a refusal.
"""

# ruff: noqa: ASYNC109  (the signatures of handlers.db, timeout parameters included)
from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from handlers import ledger
from handlers.assets import store


@dataclass
class Tables:
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)
    processed: dict[str, str] = field(default_factory=dict)  # job id -> outcome
    chunks: dict[str, list[Sequence[object]]] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusWrite:
    asset_id: str
    status: str
    progress: int | None
    chunks_count: int | None
    error: str | None


class FakeConnection:
    """``handlers.db.Connection`` over ``Tables``."""

    def __init__(self, db: FakeDb) -> None:
        self._db = db

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        if query == store.DELETE_CHUNKS:
            self._db.tables.chunks.pop(str(args[0]), None)
            return "DELETE"
        raise AssertionError(f"unexpected statement: {query.strip()[:60]}")

    async def executemany(
        self, command: str, args: Iterable[Sequence[object]], *, timeout: float | None = None
    ) -> None:
        raise AssertionError(f"unexpected statement: {command.strip()[:60]}")

    async def fetch(self, query: str, *args: object, timeout: float | None = None) -> list[Any]:
        raise AssertionError(f"unexpected query: {query.strip()[:60]}")

    async def fetchrow(self, query: str, *args: object, timeout: float | None = None) -> Any:
        if query == store.LOAD_ASSET:
            return self._db.tables.assets.get(str(args[0]))
        raise AssertionError(f"unexpected query: {query.strip()[:60]}")

    async def fetchval(
        self, query: str, *args: object, column: int = 0, timeout: float | None = None
    ) -> Any:
        tables = self._db.tables
        if query == ledger.IS_PROCESSED:
            return tables.processed.get(str(args[0]))
        if query == ledger.CLAIM:
            job_id = str(args[0])
            if job_id in tables.processed:
                return None
            tables.processed[job_id] = str(args[2])
            return job_id
        if query == store.COUNT_CHUNKS:
            return len(tables.chunks.get(str(args[0]), []))
        if query == store.UPDATE_STATUS:
            return self._update_status(*args)
        raise AssertionError(f"unexpected query: {query.strip()[:60]}")

    def _update_status(self, asset_id: object, status: object, error: object, *rest: object) -> Any:
        chunks_count, progress = rest[0], rest[1]
        if self._db.refuse_status or str(asset_id) not in self._db.tables.assets:
            return None
        self._db.tables.assets[str(asset_id)]["status"] = status
        self._db.writes.append(
            StatusWrite(str(asset_id), str(status), progress, chunks_count, error)
        )
        return True

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Iterable[Sequence[object]],
        columns: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> str:
        assert table_name == "asset_chunks" and list(columns or ()) == list(store.CHUNK_COLUMNS)
        rows = list(records)
        for row in rows:
            self._db.tables.chunks.setdefault(str(row[0]), []).append(row)
        return f"COPY {len(rows)}"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        saved = copy.deepcopy(self._db.tables)
        written = len(self._db.writes)
        try:
            yield
        except BaseException:
            self._db.tables = saved
            del self._db.writes[written:]
            raise


class FakeDb:
    """``handlers.db.Pool``: one FakeConnection per ``acquire``, all over the same tables."""

    def __init__(self) -> None:
        self.tables = Tables()
        self.writes: list[StatusWrite] = []
        self.refuse_status = False  # every status write is refused (a newer job's final status)
        self.closed = False

    def add_asset(self, asset_id: str, url: str, mime_type: str = "text/plain") -> None:
        self.tables.assets[asset_id] = {
            "id": asset_id,
            "organization_id": "org-1",
            "source_url": url,
            "mime_type": mime_type,
            "filename": None,
            "status": "pending",
        }

    @asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[FakeConnection]:
        yield FakeConnection(self)

    async def close(self) -> None:
        self.closed = True
