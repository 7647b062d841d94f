# -*- test-case-name: tests.test_store -*-
"""
What a client is told when the database behind the run store fails.

The database's own message names the server's side of things: a SQLite
error from the operating system carries the file's path, a PostgreSQL
connection error the host, port, user and database.  Those go to the
operator's log (see L{SQLStore<ai_agent.store._sql.SQLStore>}); the client
gets L{neutralReason}: one of a few fixed phrases chosen from the error's
code, never from its text.
"""

from __future__ import annotations

import errno
import os

#: SQLite's primary result codes (C{sqlite3.Error.sqlite_errorname}, whose
#: extended forms such as C{SQLITE_IOERR_WRITE} start with them), in words.
_SQLITE_REASONS = {
    "SQLITE_BUSY": "the database is locked by another writer",
    "SQLITE_LOCKED": "the database is locked by another writer",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_CANTOPEN": "the database file cannot be opened",
    "SQLITE_READONLY": "the database is read-only",
    "SQLITE_IOERR": "a disk input/output error",
    "SQLITE_CORRUPT": "the database file is damaged",
    "SQLITE_NOTADB": "the database file is damaged",
    "SQLITE_PERM": "permission denied",
    "SQLITE_AUTH": "permission denied",
    "SQLITE_NOMEM": "the server is out of memory",
}

#: PostgreSQL SQLSTATE codes and classes (their first two characters), in
#: words; the longest matching prefix wins.
_SQLSTATE_REASONS = {
    "08": "the database cannot be reached",
    "28": "the database refused the login",
    "3D": "the database does not exist",
    "42501": "permission denied",
    "53": "the database is out of resources (disk, memory or connections)",
    "57014": "a database statement took too long",
    "57P": "the database is shutting down or restarting",
    "40": "a database transaction conflict",
    "25006": "the database is read-only",
}

#: An error from the operating system, by C{errno}.
_ERRNO_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def neutralReason(error: BaseException) -> str:
    """
    Why the database failed, in words that name no file, host, port, user,
    database or password: fit for a client.  Chosen from the error's code
    (SQLite's result code, PostgreSQL's SQLSTATE, the system's C{errno}),
    never from its message, except PostgreSQL connection failures, which
    carry no SQLSTATE and are told apart by a fixed phrase of libpq's.
    """
    if isinstance(error, OSError):
        known = _ERRNO_REASONS.get(error.errno or 0)
        if known is not None:
            return known
        if error.errno:
            # The system's text for the number, without the file name.
            return f"a file system error ({os.strerror(error.errno).lower()})"
        return "a file system error"
    name = getattr(error, "sqlite_errorname", None)
    if isinstance(name, str):
        for prefix, reason in _SQLITE_REASONS.items():
            if name == prefix or name.startswith(prefix + "_"):
                return reason
        return f"a database error ({name})"
    if hasattr(error, "sqlstate"):
        return _postgresReason(error)
    return "a database error"


def _postgresReason(error: BaseException) -> str:
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str) and state:
        for length in (5, 3, 2):
            known = _SQLSTATE_REASONS.get(state[:length])
            if known is not None:
                return known
        return f"a database error (SQLSTATE {state})"
    # libpq's connection failures have no SQLSTATE: a wrong password is
    # still worth telling apart from a server that is not there.
    if "authentication failed" in str(error):
        return _SQLSTATE_REASONS["28"]
    return _SQLSTATE_REASONS["08"]


__all__ = ["neutralReason"]
