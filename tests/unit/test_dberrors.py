"""Database errors classified by SQLSTATE class, in one place (runner, mirror and guard)."""

from __future__ import annotations

import asyncpg
import pytest

from streams.dberrors import DbFault, classify, describe_db_error, is_unavailable, refused_data

E = asyncpg.exceptions

TABLE: list[tuple[BaseException, DbFault | None]] = [
    # unavailable: wait, charge nobody
    (E.ConnectionDoesNotExistError("closed"), DbFault.UNAVAILABLE),  # 08003
    (E.CannotConnectNowError("starting up"), DbFault.UNAVAILABLE),  # 57P03
    (E.AdminShutdownError("terminating"), DbFault.UNAVAILABLE),  # 57P01
    (E.TooManyConnectionsError("full"), DbFault.UNAVAILABLE),  # 53300
    (E.DiskFullError("full"), DbFault.UNAVAILABLE),  # 53100
    (E.ReadOnlySQLTransactionError("read-only"), DbFault.UNAVAILABLE),  # 25006
    (E.InvalidPasswordError("rotated"), DbFault.UNAVAILABLE),  # 28P01
    (E.InvalidCatalogNameError("no such db"), DbFault.UNAVAILABLE),  # 3D000
    (ConnectionRefusedError("refused"), DbFault.UNAVAILABLE),
    # a race with other transactions
    (E.SerializationError("40001"), DbFault.CONFLICT),
    (E.DeadlockDetectedError("40P01"), DbFault.CONFLICT),
    (E.LockNotAvailableError("55P03"), DbFault.CONFLICT),
    # the database's schema or state
    (E.UndefinedTableError("no table"), DbFault.DATABASE),  # 42P01
    (E.InsufficientPrivilegeError("denied"), DbFault.DATABASE),  # 42501
    (E.QueryCanceledError("statement timeout"), DbFault.DATABASE),  # 57014
    (E.ActiveSQLTransactionError("25001"), DbFault.DATABASE),
    (E.InternalServerError("XX000"), DbFault.DATABASE),
    # the values sent
    (E.CharacterNotInRepertoireError("0x00"), DbFault.DATA),  # 22021
    (E.InvalidTextRepresentationError("bad json"), DbFault.DATA),  # 22P02
    (E.StatementTooComplexError("stack depth limit exceeded"), DbFault.DATA),  # 54001
    (asyncpg.exceptions._base.DataError("invalid input for query argument $1"), DbFault.DATA),
    (E.UniqueViolationError("dup"), DbFault.CONSTRAINT),  # 23505
    (E.ForeignKeyViolationError("fk"), DbFault.CONSTRAINT),
    # not a database error
    (ValueError("a bug"), None),
    (RecursionError("deep"), None),
    (TimeoutError(), None),
]


@pytest.mark.parametrize(("error", "expected"), TABLE, ids=lambda v: type(v).__name__)
def test_each_error_is_classified_by_its_sqlstate_class(
    error: BaseException, expected: DbFault | None
) -> None:
    assert classify(error) is expected
    assert is_unavailable(error) is (expected is DbFault.UNAVAILABLE)
    assert refused_data(error) is (expected in (DbFault.DATA, DbFault.CONSTRAINT))


def test_an_unknown_sqlstate_is_the_databases_not_the_records() -> None:
    unknown = asyncpg.PostgresError("something new")
    unknown.sqlstate = "ZZ999"  # type: ignore[attr-defined]
    assert classify(unknown) is DbFault.DATABASE, "an unknown error never skips a record"


def test_the_description_names_the_class_and_sqlstate() -> None:
    text = describe_db_error(E.ReadOnlySQLTransactionError("cannot execute INSERT"))
    assert text == "ReadOnlySQLTransactionError [25006]: cannot execute INSERT"
