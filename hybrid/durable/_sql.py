"""The journal's schema and statements, one text for SQLite and Postgres.

Both backends keep the same four tables, with the same meaning:

```
hybrid_meta    name TEXT PRIMARY KEY, value TEXT      ("schema_version", "2")
hybrid_keys    one row per key: the latest checkpoint of a running key, or the ending of a finished one
    key          TEXT PRIMARY KEY (Postgres: COLLATE "C", so keys sort by code point as in SQLite)
    epoch        BIGINT   the incarnation that holds the key: 1 at the first claim, +1 at each resume
    seq          BIGINT   the transition number of the latest write (0 = the spawn record)
    status       TEXT     "running", "done", "failed" or "stopped" (`Status`)
    agent_class  TEXT, version BIGINT, kind TEXT, state TEXT, payload BLOB/BYTEA
                          the checkpoint (`Checkpoint`); once finished kind = state = "" and payload IS NULL
    output       BLOB/BYTEA  Next.done's value (status "done" only)
    error        TEXT     "TypeName: text" (status "failed" only)
    updated      DOUBLE PRECISION  seconds since the epoch of the latest write (of the ending, once finished)
hybrid_events  the append-only log, oldest first by id
    id           INTEGER PRIMARY KEY (SQLite rowid) / BIGINT identity (Postgres)
    key, epoch, seq, time, kind, state, detail     as in `Event`
hybrid_leases  one row per lease name ever granted (schema version 2; see ``_leases.py``)
    name         TEXT PRIMARY KEY (Postgres: COLLATE "C")
    holder       TEXT     who holds (or last held) the name; '' once released
    token        BIGINT   the fencing token of the latest grant: 1 at the first, +1 at each new grant
                          (rows are never deleted, so a name's tokens only grow)
    ttl          DOUBLE PRECISION  the ttl of the latest grant or renewal, in seconds
    expires      DOUBLE PRECISION  when the latest grant ends, on the database's clock (`Dialect.now`)
```

A lease is current while ``holder <> '' AND expires > now``. Every lease
operation is one or two statements in one transaction of the writer, each a
compare-and-set on the row (the token, the expiry): SQLite serializes them
with its write lock, Postgres with the row's lock (``UPDATE`` and ``INSERT
... ON CONFLICT DO UPDATE`` re-check their ``WHERE`` on the row's latest
version under READ COMMITTED).

Indexes: running keys by key (`unfinished`), finished keys by `updated`
(`prune(finished_before=...)`), events by (key, id) and by time.

Fencing is one conditional UPDATE: a write applies only while the row is
running under the writer's epoch with an older seq (``WHERE key = ? AND epoch
= ? AND seq < ? AND status = 'running'``). A refused write changes nothing and
raises nothing at the database: it is a `Fenced` for that write alone, so the
other writes of the same transaction commit.

Statements are written with ``?`` placeholders; `Dialect.sql` turns them into
psycopg's ``%s`` (none of the texts holds a literal ``?`` or ``%``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, cast, final

import attrs
from typing_extensions import LiteralString

from hybrid import Lease

from ._errors import CheckpointError, Fenced, StoreError
from ._records import Checkpoint, Claim, Ending, Event, Status, StepKind

SCHEMA_VERSION = 2
"""The schema version this code writes; a database with a newer one is refused, an older one migrated.

1: keys and events. 2: leases (``hybrid_leases``).
"""

Row = tuple[Any, ...]
"""One row as the drivers return it: its values' types follow the column types."""


class Cursor(Protocol):
    """The part of a DB-API 2 cursor the journal uses (`sqlite3.Cursor`, `psycopg.Cursor`)."""

    @property
    def rowcount(self) -> int:
        """Rows changed by the last execute (the sum over an executemany)."""
        ...

    def execute(self, sql: LiteralString, params: Sequence[Any], /) -> object:
        """Run one statement."""
        ...

    def executemany(self, sql: LiteralString, params: Iterable[Sequence[Any]], /) -> object:
        """Run one statement once per parameter tuple (psycopg pipelines them)."""
        ...

    def fetchone(self) -> Any:
        """The next row of the last query, or None."""
        ...

    def fetchall(self) -> Any:
        """The remaining rows of the last query."""
        ...


@final
@attrs.frozen
class Dialect:
    """What differs between SQLite and Postgres: placeholders and a few column types.

    Attributes:
        name: "sqlite" or "postgres".
        placeholder: the driver's parameter marker (``?`` or ``%s``).
        blob: the bytes column type (``BLOB`` or ``BYTEA``).
        key: the key column type (Postgres sorts keys by code point, as SQLite does).
        event_id: the events' id column, increasing in insertion order.
        arrays: whether a batch's rows go in one statement as arrays (Postgres'
            ``unnest``: one statement instead of one per row, which the server
            pays for even when pipelined); else ``executemany`` (SQLite, in process).
        now: an SQL expression of the database's clock, in seconds since the
            Unix epoch, the same value wherever it appears in one statement:
            SQLite's ``julianday('now')`` (the wall clock of the host, to the
            millisecond), Postgres' ``statement_timestamp()`` (the server's
            clock when the statement began). Leases expire on it.
    """

    name: LiteralString
    placeholder: LiteralString
    blob: LiteralString
    key: LiteralString
    event_id: LiteralString
    arrays: bool
    now: LiteralString

    def sql(self, text: LiteralString) -> LiteralString:
        """``text`` with its ``?`` placeholders in this driver's style."""
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    blob="BLOB",
    key="TEXT",
    event_id="INTEGER PRIMARY KEY",  # the rowid: new rows always get a larger one than any left
    arrays=False,
    # 'now' is computed once per sqlite3_step: one value for the whole statement.
    now="((julianday('now') - 2440587.5) * 86400.0)",
)
POSTGRES = Dialect(
    name="postgres",
    placeholder="%s",
    blob="BYTEA",
    key='TEXT COLLATE "C"',
    event_id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    arrays=True,
    now="CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION)",
)


def _schema(dialect: Dialect) -> list[LiteralString]:
    return [
        f"""CREATE TABLE hybrid_keys (
            key {dialect.key} PRIMARY KEY,
            epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'stopped')),
            agent_class TEXT NOT NULL,
            version BIGINT NOT NULL,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            payload {dialect.blob},
            output {dialect.blob},
            error TEXT,
            updated DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX hybrid_keys_running ON hybrid_keys (key) WHERE status = 'running'",
        "CREATE INDEX hybrid_keys_ended ON hybrid_keys (updated) WHERE status <> 'running'",
        f"""CREATE TABLE hybrid_events (
            id {dialect.event_id},
            key {dialect.key} NOT NULL,
            epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            time DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX hybrid_events_key ON hybrid_events (key, id)",
        "CREATE INDEX hybrid_events_time ON hybrid_events (time)",
        *_leases_schema(dialect),
    ]


def _leases_schema(dialect: Dialect) -> list[LiteralString]:
    """Schema version 2: the leases table (also the migration from version 1)."""
    return [
        f"""CREATE TABLE hybrid_leases (
            name {dialect.key} PRIMARY KEY,
            holder TEXT NOT NULL,
            token BIGINT NOT NULL CHECK (token > 0),
            ttl DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL
        )""",
    ]


_MIGRATIONS: dict[int, Callable[[Dialect], list[LiteralString]]] = {1: _leases_schema}
"""The statements taking a database from schema version n to n + 1."""


@final
class Statements:
    """Every statement the journal runs, rendered once for one dialect.

    Each method runs on the writer thread inside a transaction the backend
    opened; none commits. A refused write raises `Fenced` without touching the
    database, so the transaction stays usable for the batch's other writes.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        """The dialect these statements are rendered for."""
        sql = dialect.sql
        self._schema = _schema(dialect)
        self._meta_table: LiteralString = (
            "CREATE TABLE IF NOT EXISTS hybrid_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        self._meta_version: LiteralString = sql("SELECT value FROM hybrid_meta WHERE name = ?")
        self._meta_insert: LiteralString = sql("INSERT INTO hybrid_meta (name, value) VALUES (?, ?)")
        self._meta_update: LiteralString = sql("UPDATE hybrid_meta SET value = ? WHERE name = ?")
        self._insert_key: LiteralString = sql(
            "INSERT INTO hybrid_keys (key, epoch, seq, status, agent_class, version, kind, state, payload, updated)"
            " VALUES (?, 1, 0, 'running', ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
        )
        self._bump_epoch: LiteralString = sql(
            "UPDATE hybrid_keys SET epoch = epoch + 1, updated = ? WHERE key = ? AND status = 'running'"
            " RETURNING key, epoch, seq, agent_class, version, kind, state, payload"
        )
        self._row_ending: LiteralString = sql("SELECT epoch, status, output, error FROM hybrid_keys WHERE key = ?")
        self._row_position: LiteralString = sql("SELECT epoch, seq, status FROM hybrid_keys WHERE key = ?")
        self.save: LiteralString = sql(
            "UPDATE hybrid_keys SET seq = ?, agent_class = ?, version = ?, kind = ?, state = ?, payload = ?,"
            " updated = ? WHERE key = ? AND epoch = ? AND seq < ? AND status = 'running'"
        )
        """The fenced checkpoint update (parameters: `save_params`)."""
        self._finish: LiteralString = sql(
            "UPDATE hybrid_keys SET seq = ?, status = ?, kind = '', state = '', payload = NULL, output = ?,"
            " error = ?, updated = ? WHERE key = ? AND epoch = ? AND seq < ? AND status = 'running'"
        )
        self.insert_event: LiteralString = sql(
            "INSERT INTO hybrid_events (key, epoch, seq, time, kind, state, detail) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        """Appends one event (parameters: key, epoch, seq, time, kind, state, detail)."""
        # Postgres: many rows in one statement. Two checkpoints of one key in one
        # statement would match one row once: the count comes up short and the
        # journal redoes the batch one write at a time, as for a refused write.
        self._save_arrays: LiteralString = sql(
            "UPDATE hybrid_keys AS k SET seq = v.seq, agent_class = v.agent_class, version = v.version,"
            " kind = v.kind, state = v.state, payload = v.payload, updated = ?"
            " FROM unnest(?::text[], ?::bigint[], ?::bigint[], ?::text[], ?::bigint[], ?::text[], ?::text[],"
            " ?::bytea[]) AS v(key, epoch, seq, agent_class, version, kind, state, payload)"
            " WHERE k.key = v.key AND k.epoch = v.epoch AND k.seq < v.seq AND k.status = 'running'"
        )
        self._insert_event_arrays: LiteralString = sql(
            "INSERT INTO hybrid_events (key, epoch, seq, time, kind, state, detail) SELECT * FROM"
            " unnest(?::text[], ?::bigint[], ?::bigint[], ?::float8[], ?::text[], ?::text[], ?::text[])"
        )
        self._checkpoint: LiteralString = sql(
            "SELECT key, epoch, seq, agent_class, version, kind, state, payload FROM hybrid_keys"
            " WHERE key = ? AND status = 'running'"
        )
        self._ending: LiteralString = sql(
            "SELECT status, output, error FROM hybrid_keys WHERE key = ? AND status <> 'running'"
        )
        self._unfinished: LiteralString = (
            "SELECT key, epoch, seq, agent_class, version, kind, state, payload FROM hybrid_keys"
            " WHERE status = 'running' ORDER BY key"
        )
        self._prune_ranked: LiteralString = sql(
            "DELETE FROM hybrid_events WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER"
            " (PARTITION BY key ORDER BY id DESC) AS newer FROM hybrid_events) AS ranked WHERE newer > ?)"
        )
        self._prune_old: LiteralString = sql("DELETE FROM hybrid_events WHERE time < ?")
        self._prune_ended_events: LiteralString = sql(
            "DELETE FROM hybrid_events WHERE key IN"
            " (SELECT key FROM hybrid_keys WHERE status <> 'running' AND updated < ?)"
        )
        self._prune_ended_keys: LiteralString = sql("DELETE FROM hybrid_keys WHERE status <> 'running' AND updated < ?")

        # The lease statements read the database's clock where they say {now}.
        def clocked(text: LiteralString) -> LiteralString:
            return sql(text).replace("{now}", dialect.now)

        self._lease_extend: LiteralString = clocked(
            "UPDATE hybrid_leases SET ttl = ?, expires = {now} + ? WHERE name = ? AND holder = ? AND expires > {now}"
            " RETURNING token, expires"
        )
        # A free name: inserted at token 1, or its row takes the next token. The WHERE is
        # re-checked on the row's latest version, so a held name is never taken.
        self._lease_grant: LiteralString = clocked(
            "INSERT INTO hybrid_leases AS l (name, holder, token, ttl, expires) VALUES (?, ?, 1, ?, {now} + ?)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = l.token + 1, ttl = excluded.ttl,"
            " expires = excluded.expires WHERE l.holder = '' OR l.expires <= {now}"
            " RETURNING token, expires"
        )
        self._lease_renew: LiteralString = clocked(
            "UPDATE hybrid_leases SET ttl = ?, expires = {now} + ? WHERE name = ? AND token = ? AND holder <> ''"
            " AND expires > {now} RETURNING holder, expires"
        )
        self._lease_release: LiteralString = sql(
            "UPDATE hybrid_leases SET holder = '' WHERE name = ? AND token = ? AND holder <> ''"
        )
        self._lease_latest: LiteralString = clocked(
            "SELECT l.holder, l.token, l.ttl, l.expires, c.now FROM (SELECT {now} AS now) AS c"
            " LEFT JOIN hybrid_leases AS l ON l.name = ? AND l.holder <> ''"
        )

    # -- schema -----------------------------------------------------------------

    def ensure_schema(self, cursor: Cursor, database: str) -> bool:
        """Create the tables on first open, or check the version of existing ones and migrate an older one.

        Returns:
            True if this call created the schema.

        Raises:
            StoreError: the database's schema version is not this code's.
        """
        cursor.execute(self._meta_table, ())
        cursor.execute(self._meta_version, ("schema_version",))
        row: Row | None = cursor.fetchone()
        if row is None:
            for statement in self._schema:
                cursor.execute(statement, ())
            cursor.execute(self._meta_insert, ("schema_version", str(SCHEMA_VERSION)))
            return True
        found = int(row[0])
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{database} has journal schema version {found}, newer than version {SCHEMA_VERSION}"
                " that this hybrid knows: upgrade hybrid to open it"
            )
        if found < SCHEMA_VERSION:  # migrate, in the transaction that checks: all or nothing
            for version in range(found, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version](self.dialect):
                    cursor.execute(statement, ())
            cursor.execute(self._meta_update, (str(SCHEMA_VERSION), "schema_version"))
        return False

    # -- writes -----------------------------------------------------------------

    def claim(
        self,
        cursor: Cursor,
        now: float,
        key: str,
        *,
        agent_class: str,
        version: int,
        kind: StepKind,
        state: str,
        payload: bytes,
    ) -> tuple[Claim, Row | None]:
        """Claim `key`: insert it, resume it under the next epoch, or report its ending.

        Returns:
            The claim, and the event row to append (None for a finished key).
        """
        # A second process may insert the same key at the same moment (Postgres):
        # ON CONFLICT turns that race into a resume instead of an aborted batch.
        cursor.execute(self._insert_key, (key, agent_class, version, kind.value, state, payload, now))
        if cursor.rowcount == 1:
            return Claim(epoch=1, checkpoint=None, ending=None), (key, 1, 0, now, "spawned", "", "")
        cursor.execute(self._bump_epoch, (now, key))
        row: Row | None = cursor.fetchone()
        if row is not None:
            checkpoint = _checkpoint(row)
            event = (key, checkpoint.epoch, checkpoint.seq, now, "resumed", "", "")
            return Claim(epoch=checkpoint.epoch, checkpoint=checkpoint, ending=None), event
        cursor.execute(self._row_ending, (key,))
        row = cursor.fetchone()
        if row is None:  # pragma: no cover - deleted between the statements (a prune in another process)
            raise StoreError(f"key {key!r} vanished while being claimed; claim it again")
        return Claim(epoch=int(row[0]), checkpoint=None, ending=_ending(row[1:])), None

    @staticmethod
    def save_params(checkpoint: Checkpoint, now: float) -> Row:
        """The parameters of `save` for one checkpoint."""
        c = checkpoint
        return (c.seq, c.agent_class, c.version, c.kind.value, c.state, c.payload, now, c.key, c.epoch, c.seq)

    @staticmethod
    def save_event(checkpoint: Checkpoint, now: float) -> Row:
        """The event row of one applied checkpoint."""
        c = checkpoint
        return (c.key, c.epoch, c.seq, now, c.kind.value, c.state, "")

    def save_one(self, cursor: Cursor, now: float, checkpoint: Checkpoint) -> Row:
        """Apply one checkpoint if its fencing allows.

        Returns:
            The event row to append.

        Raises:
            Fenced: the row is of another epoch, at this seq or later, or finished.
        """
        cursor.execute(self.save, self.save_params(checkpoint, now))
        if cursor.rowcount != 1:
            raise self._refused(cursor, "checkpoint", checkpoint.key, checkpoint.epoch, checkpoint.seq)
        return self.save_event(checkpoint, now)

    def finish(self, cursor: Cursor, now: float, key: str, *, epoch: int, seq: int, ending: Ending) -> Row:
        """Replace the key's checkpoint with its ending, fenced like `save_one`.

        Returns:
            The event row to append.
        """
        params = (seq, ending.status.value, ending.output, ending.error, now, key, epoch, seq)
        cursor.execute(self._finish, params)
        if cursor.rowcount != 1:
            raise self._refused(cursor, f"ending ({ending.status.value})", key, epoch, seq)
        return (key, epoch, seq, now, ending.status.value, "", ending.error or "")

    def _refused(self, cursor: Cursor, what: str, key: str, epoch: int, seq: int) -> Fenced:
        cursor.execute(self._row_position, (key,))
        row: Row | None = cursor.fetchone()
        head = f"{what} of key {key!r} (epoch {epoch}, seq {seq}) refused"
        if row is None:
            return Fenced(f"{head}: the key has no row (never claimed, or pruned)")
        row_epoch, row_seq, status = int(row[0]), int(row[1]), str(row[2])
        if status != Status.RUNNING:
            return Fenced(f"{head}: the key already ended ({status})")
        if row_epoch > epoch:
            return Fenced(f"{head}: a newer incarnation claimed the key (epoch {row_epoch})")
        if row_epoch < epoch:
            return Fenced(f"{head}: epoch {epoch} was never claimed (the key is at epoch {row_epoch})")
        return Fenced(f"{head}: the key is at seq {row_seq} already")

    def save_many(self, cursor: Cursor, now: float, checkpoints: Sequence[Checkpoint]) -> int:
        """Apply the checkpoints that fencing allows, in one go.

        Returns:
            How many were applied: if fewer than all, roll back and use `save_one`
            to learn which were refused.
        """
        if self.dialect.arrays:
            rows = [
                (c.key, c.epoch, c.seq, c.agent_class, c.version, c.kind.value, c.state, c.payload) for c in checkpoints
            ]
            cursor.execute(self._save_arrays, [now, *(list(column) for column in zip(*rows, strict=True))])
        else:
            cursor.executemany(self.save, [self.save_params(c, now) for c in checkpoints])
        return cursor.rowcount

    def append_events(self, cursor: Cursor, events: Sequence[Row]) -> None:
        """Append event rows (at least one), in order."""
        if len(events) == 1:
            cursor.execute(self.insert_event, events[0])
        elif self.dialect.arrays:
            cursor.execute(self._insert_event_arrays, [list(column) for column in zip(*events, strict=True)])
        else:
            cursor.executemany(self.insert_event, events)

    def prune(
        self,
        cursor: Cursor,
        *,
        keep_events: int | None,
        older_than: float | None,
        finished_before: float | None,
    ) -> int:
        """Delete old events and finished keys; the row of a running key is never touched.

        Returns:
            The number of rows deleted (events and keys).
        """
        deleted = 0
        if keep_events is not None:
            cursor.execute(self._prune_ranked, (keep_events,))
            deleted += cursor.rowcount
        if older_than is not None:
            cursor.execute(self._prune_old, (older_than,))
            deleted += cursor.rowcount
        if finished_before is not None:
            cursor.execute(self._prune_ended_events, (finished_before,))
            deleted += cursor.rowcount
            cursor.execute(self._prune_ended_keys, (finished_before,))
            deleted += cursor.rowcount
        return deleted

    # -- reads ------------------------------------------------------------------

    def checkpoint(self, cursor: Cursor, key: str) -> Checkpoint | None:
        """The checkpoint of a running key, else None."""
        cursor.execute(self._checkpoint, (key,))
        row: Row | None = cursor.fetchone()
        return None if row is None else _checkpoint(row)

    def ending(self, cursor: Cursor, key: str) -> Ending | None:
        """The ending of a finished key, else None."""
        cursor.execute(self._ending, (key,))
        row: Row | None = cursor.fetchone()
        return None if row is None else _ending(row)

    def unfinished(self, cursor: Cursor) -> list[Checkpoint]:
        """Every running key's checkpoint, in key order."""
        cursor.execute(self._unfinished, ())
        rows: list[Row] = cursor.fetchall()
        return [_checkpoint(row) for row in rows]

    def events(self, cursor: Cursor, key: str | None, since: float | None, limit: int | None) -> list[Event]:
        """The log, oldest first: of one key or all, from `since` on, at most `limit` entries."""
        text: LiteralString = "SELECT key, epoch, seq, time, kind, state, detail FROM hybrid_events"
        params: list[object] = []
        conditions: list[LiteralString] = []
        if key is not None:
            conditions.append("key = ?")
            params.append(key)
        if since is not None:
            conditions.append("time >= ?")
            params.append(since)
        if conditions:
            text += " WHERE " + " AND ".join(conditions)
        text += " ORDER BY id"
        if limit is not None:
            text += " LIMIT ?"
            params.append(limit)
        cursor.execute(self.dialect.sql(text), params)
        rows: list[Row] = cursor.fetchall()
        return [
            Event(key=str(k), epoch=int(e), seq=int(s), time=float(t), kind=str(kd), state=str(st), detail=str(d))
            for k, e, s, t, kd, st, d in rows
        ]

    # -- leases ------------------------------------------------------------------

    def acquire_lease(
        self, cursor: Cursor, name: str, holder: str, ttl: float, *, renew: bool = True
    ) -> tuple[Lease, bool] | None:
        """Renew `holder`'s current lease of `name` (unless not `renew`), or grant the name if it is free.

        Returns:
            The lease and whether it is a new grant (False: a renewal, same
            token); None if another holder has a current lease (or `holder`
            has, when not `renew`).
        """
        row: Row | None
        if renew:
            cursor.execute(self._lease_extend, (ttl, ttl, name, holder))
            row = cursor.fetchone()
            if row is not None:
                return Lease(name=name, holder=holder, token=int(row[0]), expires_at=float(row[1]), ttl=ttl), False
        cursor.execute(self._lease_grant, (name, holder, ttl, ttl))
        row = cursor.fetchone()
        if row is None:
            return None
        return Lease(name=name, holder=holder, token=int(row[0]), expires_at=float(row[1]), ttl=ttl), True

    def renew_lease(self, cursor: Cursor, lease: Lease, ttl: float) -> Lease | None:
        """Extend the grant `lease.token` of its name to `ttl` from now if it is current; else None."""
        cursor.execute(self._lease_renew, (ttl, ttl, lease.name, lease.token))
        row: Row | None = cursor.fetchone()
        if row is None:
            return None
        return Lease(name=lease.name, holder=str(row[0]), token=lease.token, expires_at=float(row[1]), ttl=ttl)

    def release_lease(self, cursor: Cursor, lease: Lease) -> bool:
        """Release the grant `lease.token` of its name if it is the latest; whether it was."""
        cursor.execute(self._lease_release, (lease.name, lease.token))
        return cursor.rowcount == 1

    def latest_lease(self, cursor: Cursor, name: str) -> tuple[Lease | None, float]:
        """The latest unreleased grant of `name` (expired or not) and the database's clock now."""
        cursor.execute(self._lease_latest, (name,))
        holder, token, ttl, expires, now = cursor.fetchone()
        if holder is None:
            return None, float(now)
        lease = Lease(name=name, holder=str(holder), token=int(token), expires_at=float(expires), ttl=float(ttl))
        return lease, float(now)


def _checkpoint(row: Row) -> Checkpoint:
    """The checkpoint of a key's row.

    Raises:
        CheckpointError: naming the key: a column holds what the journal never
            writes there (the row was changed by hand, or the file is damaged).
    """
    key, epoch, seq, agent_class, version, kind, state, payload = row
    try:
        if not isinstance(payload, bytes | bytearray | memoryview):  # bytes(an int) would make zeros
            raise TypeError(f"its payload column holds a value of type {type(payload).__name__}, not bytes")
        return Checkpoint(
            key=str(key),
            epoch=int(epoch),
            seq=int(seq),
            agent_class=str(agent_class),
            version=int(version),
            kind=StepKind(kind),
            state=str(state),
            payload=bytes(cast("bytes", payload)),
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"key {key!r}: {agent_class}: its stored checkpoint is damaged: {err}") from err


def _ending(row: Row) -> Ending:
    status, output, error = row
    return Ending(
        status=Status(status),
        output=None if output is None else bytes(output),
        error=None if error is None else str(error),
    )


class Backend(abc.ABC):
    """One database connection, owned by the journal's writer thread.

    Every method runs on that thread. A transaction is `begin` ... `commit`,
    or `rollback` after a driver error (one of `errors`).
    """

    statements: Statements
    """The statements in this backend's dialect."""
    errors: tuple[type[Exception], ...]
    """The driver's exception types: a database failure, reported as `StoreError`."""
    description: str
    """Names the database in error messages (never a password)."""

    @abc.abstractmethod
    def open(self) -> None:
        """Connect and create or check the schema.

        Raises:
            StoreError: the database cannot be opened or has a newer schema.
        """

    @abc.abstractmethod
    def begin(self, writes: bool) -> Cursor:
        """Start a transaction (reconnecting first if a failure dropped the connection).

        Args:
            writes: whether the transaction writes (SQLite takes the write lock up front).
        """

    @abc.abstractmethod
    def commit(self) -> None:
        """Commit the transaction `begin` started."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Roll back after a failure; never raises (a broken connection is dropped)."""

    @property
    @abc.abstractmethod
    def dropped(self) -> bool:
        """Whether the last failure dropped the connection (the next `begin` reconnects)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; never raises."""
