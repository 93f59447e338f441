"""The Postgres backend: psycopg 3's sync connection, on the journal's writer thread.

psycopg's async API runs on asyncio, not trio, so the journal drives the sync
`psycopg.Connection` from its own thread, with autocommit off: one transaction
per batch, committed by `commit`.

A dropped connection (server restart, network cut) fails the batch in flight
with the driver's error; `dropped` then tells the journal, and the next `begin`
connects again (checking the schema once more). Whether the journal may run a
failed batch again depends on where it failed, which the journal decides: only
a batch whose COMMIT was never sent has a known outcome (not committed).
"""

from __future__ import annotations

import contextlib
from typing import final

import psycopg
import psycopg.conninfo

from ._errors import StoreError
from ._sql import POSTGRES, Backend, Cursor, Statements

DEFAULT_CONNECT_TIMEOUT_S = 10
"""libpq's ``connect_timeout`` when the URL sets none: a server that does not answer fails the batch."""

# pg_advisory_xact_lock key serializing schema creation across processes ("hybrid" + 1).
_SCHEMA_LOCK = 0x6879627269640001


@final
class PostgresBackend(Backend):
    """A Postgres database for the journal.

    Args:
        url: a libpq connection URL (``postgresql://`` or ``postgres://``);
            its query parameters go to libpq (``connect_timeout``, ``options``
            such as ``-csearch_path=...`` to keep the tables in a schema...).

    Raises:
        ValueError: libpq cannot parse `url`.
    """

    def __init__(self, url: str) -> None:
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as error:
            raise ValueError(f"invalid Postgres URL: {error}") from None
        host = params.get("host") or params.get("hostaddr") or "localhost"
        where = f"{host}:{params['port']}" if "port" in params else str(host)
        self.statements = Statements(POSTGRES)
        self.errors = (psycopg.Error,)
        self.description = f"Postgres database {params.get('dbname', '')!r} at {where}"
        self._url = url
        self._timeout = None if "connect_timeout" in params else DEFAULT_CONNECT_TIMEOUT_S
        self._connection: psycopg.Connection[tuple[object, ...]] | None = None
        """The writer thread's connection; None before `open`, after `close`, and
        once a failure dropped it (`begin` connects again)."""

    def open(self) -> None:
        try:
            self._connect()
        except psycopg.Error as error:
            self.close()
            raise StoreError(f"{self.description}: cannot open: {error}") from error
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        self.close()
        connection = psycopg.connect(self._url, autocommit=False, connect_timeout=self._timeout)
        self._connection = connection
        cursor = connection.cursor()
        # Two processes opening a fresh database at once would race in CREATE TABLE.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        self.statements.ensure_schema(cursor, self.description)
        connection.commit()

    def begin(self, writes: bool) -> Cursor:
        if self._connection is None:
            self._connect()
        assert self._connection is not None
        return self._connection.cursor()  # the transaction starts at its first statement

    def commit(self) -> None:
        assert self._connection is not None
        self._connection.commit()

    def rollback(self) -> None:
        connection = self._connection
        if connection is None:
            return
        if not connection.broken:
            with contextlib.suppress(psycopg.Error):
                connection.rollback()
        if connection.broken or connection.closed:
            self.close()

    @property
    def dropped(self) -> bool:
        return self._connection is None

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(psycopg.Error):
                connection.close()
