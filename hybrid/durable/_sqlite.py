"""The SQLite backend: one connection in WAL mode with full fsync, on the writer thread.

WAL lets readers in other connections go on while the writer commits, and
``synchronous=FULL`` fsyncs the log at every commit, so a committed batch
survives a power cut, not only a killed process. Each write batch opens with
``BEGIN IMMEDIATE``: it takes the write lock up front, where SQLite's busy
timeout applies (a deferred transaction that upgrades later can fail at once
with "database is locked" instead of waiting).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import final

from ._errors import StoreError
from ._sql import SQLITE, Backend, Cursor, Statements

DEFAULT_BUSY_TIMEOUT_MS = 5000
"""How long a write waits for another connection's lock before `StoreError` (milliseconds)."""

_SYNCHRONOUS = {True: ("FULL", 2), False: ("NORMAL", 1)}  # fsync per commit: the pragma and what it reads back


@final
class SqliteBackend(Backend):
    """A SQLite file (or ``:memory:``) for the journal.

    Args:
        path: the database file, created if missing; ``":memory:"`` for a
            database that lives as long as the journal.
        busy_timeout_ms: how long to wait for a lock another connection holds
            before the batch fails with `StoreError`.
        fsync: fsync the log at every commit (``synchronous=FULL``, the
            default); False for ``synchronous=NORMAL``: in WAL mode a commit
            then survives a killed process (it is in the OS's cache), not a
            power cut or an OS crash.
    """

    def __init__(self, path: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, fsync: bool = True) -> None:
        self.statements = Statements(SQLITE)
        self.errors = (sqlite3.Error,)
        self.description = f"SQLite database {path!r}"
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._fsync = fsync
        self._connection: sqlite3.Connection | None = None
        """Set by `open` (on the writer thread, which alone uses it); None once closed."""
        self._cursor: sqlite3.Cursor | None = None
        """The connection's one cursor, reused by every batch; None while `_connection` is."""

    def open(self) -> None:
        # Another process opening the same file at the same moment can hold the lock that
        # switching to WAL or creating the schema needs, and SQLite does not always wait
        # for it with the busy timeout (a database being converted to WAL answers BUSY at
        # once): try again, with short pauses, until the busy timeout has passed.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        pause = 0.005
        while True:
            try:
                self._open_once()
            except StoreError as error:
                cause = error.__cause__
                locked = isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause)
                if not locked or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)  # the journal's writer thread: not the trio loop
                pause = min(pause * 2, 0.1)
            else:
                return

    def _open_once(self) -> None:
        self.close()  # opening again starts from a new connection
        try:
            # isolation_level=None: the module issues no BEGIN of its own; `begin` does.
            connection = sqlite3.connect(
                self._path, timeout=self._busy_timeout_ms / 1000, isolation_level=None, check_same_thread=True
            )
        except sqlite3.Error as error:
            raise StoreError(f"{self.description}: cannot open: {error}") from error
        self._connection = connection
        self._cursor = connection.cursor()
        try:
            mode = str(connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            if mode != "wal" and self._path != ":memory:":  # pragma: no cover - a file system without WAL support
                raise StoreError(f"{self.description}: cannot enable WAL mode (journal_mode is {mode!r})")
            name, value = _SYNCHRONOUS[self._fsync]
            connection.execute(f"PRAGMA synchronous={name}")
            synchronous = connection.execute("PRAGMA synchronous").fetchone()[0]
            if synchronous != value:  # pragma: no cover - only a broken build refuses it
                raise StoreError(f"{self.description}: cannot set synchronous={name} (it reads {synchronous})")
            cursor = self.begin(writes=True)
            self.statements.ensure_schema(cursor, self.description)
            self.commit()
        except sqlite3.Error as error:
            self.close()
            raise StoreError(f"{self.description}: cannot open: {error}") from error
        except BaseException:
            self.close()
            raise

    def begin(self, writes: bool) -> Cursor:
        assert self._cursor is not None
        return self._cursor.execute("BEGIN IMMEDIATE" if writes else "BEGIN")

    def commit(self) -> None:
        assert self._connection is not None
        self._connection.execute("COMMIT")

    def rollback(self) -> None:
        connection = self._connection
        # A failed BEGIN (locked) leaves no transaction to roll back.
        if connection is not None and connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")

    @property
    def dropped(self) -> bool:
        return False  # a file does not drop: each batch just tries again

    def close(self) -> None:
        connection, self._connection, self._cursor = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
