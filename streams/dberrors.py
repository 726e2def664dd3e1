"""What a database error means, decided by its SQLSTATE class in this one place.

The runner (``streams.retry.decide``), the dead-letter mirror
(``streams.mirror``) and the crash guard (``streams.crashguard``) ask the
same question of every error: is the database unavailable (wait for it,
charge nobody), did this transaction lose a race (try again), is the
database's own state or schema wrong (try again; an operator must act), or
did it refuse the values sent (the data's fault: retrying the same values
fails the same way)? The answer comes from the SQLSTATE *class* (its first
two characters, PostgreSQL's appendix A), with one refinement where a class
mixes both kinds: ``25006`` (read-only transaction: a standby, or a primary
failing over) is an outage while the rest of class 25 is a program's error,
and ``57014`` (a statement cancelled by ``statement_timeout``) is the
statement's, while the rest of class 57 is an operator shutting the server
down.
"""

from __future__ import annotations

from enum import StrEnum

import asyncpg


class DbFault(StrEnum):
    UNAVAILABLE = "unavailable"  # cannot be used now: wait; the same work succeeds later
    CONFLICT = "conflict"  # the transaction lost a race with others: run it again
    DATABASE = "database"  # the database's schema, configuration or state: an operator must act
    DATA = "data"  # the values sent are invalid (class 22, or refused by the driver)
    CONSTRAINT = "constraint"  # the values conflict with the rows there (class 23)


_BY_CLASS: dict[str, DbFault] = {
    "08": DbFault.UNAVAILABLE,  # connection exception
    "28": DbFault.UNAVAILABLE,  # invalid authorization (credentials rotated, role dropped)
    "3D": DbFault.UNAVAILABLE,  # invalid catalog name (the database is gone)
    "53": DbFault.UNAVAILABLE,  # insufficient resources (connections, disk, memory)
    "57": DbFault.UNAVAILABLE,  # operator intervention (shutdown, cannot connect now)
    "58": DbFault.UNAVAILABLE,  # system error (I/O)
    "40": DbFault.CONFLICT,  # transaction rollback (serialization failure, deadlock)
    "55": DbFault.CONFLICT,  # object not in prerequisite state (lock not available)
    "22": DbFault.DATA,  # data exception
    "54": DbFault.DATA,  # program limit exceeded (a value nested or sized past a limit)
    "23": DbFault.CONSTRAINT,  # integrity constraint violation
}
_BY_CODE: dict[str, DbFault] = {
    "25006": DbFault.UNAVAILABLE,  # read-only SQL transaction: a standby, or a failover
    "57014": DbFault.DATABASE,  # query canceled (statement_timeout): not a shutdown
}


def sqlstate(exc: BaseException) -> str:
    """The error's SQLSTATE, or '' when it has none."""
    return str(getattr(exc, "sqlstate", "") or "") if isinstance(exc, asyncpg.PostgresError) else ""


def classify(exc: BaseException) -> DbFault | None:
    """What ``exc`` means if it is a database error; None when it is not one."""
    if isinstance(exc, asyncpg.PostgresError):
        state = sqlstate(exc)
        return _BY_CODE.get(state) or _BY_CLASS.get(state[:2], DbFault.DATABASE)
    if isinstance(exc, ConnectionError):
        return DbFault.UNAVAILABLE  # refused or reset before Postgres could answer
    if isinstance(exc, asyncpg.exceptions._base.DataError):
        return DbFault.DATA  # the driver could not encode a value (asyncpg's client-side check)
    if isinstance(exc, asyncpg.InterfaceError):
        return DbFault.DATABASE
    return None


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot be used now: waiting for it is the only thing to do."""
    return classify(exc) is DbFault.UNAVAILABLE


def refused_data(exc: BaseException) -> bool:
    """The database refused the values sent (invalid, or conflicting with its rows)."""
    return classify(exc) in (DbFault.DATA, DbFault.CONSTRAINT)


def describe_db_error(exc: BaseException, limit: int = 300) -> str:
    """The error's class, SQLSTATE and message, trimmed, for a log line."""
    state = sqlstate(exc)
    text = f"{type(exc).__name__}{f' [{state}]' if state else ''}: {exc}"
    return text[:limit]
