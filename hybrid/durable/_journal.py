"""The journal: the trio-facing side of the store's database, and its writer thread.

`open_journal(url)` opens a SQLite file or a Postgres database and yields a
`Journal`. The journal owns one plain `threading.Thread` that holds the
connection for the journal's whole life; every database call runs there. A
trio task that calls the journal queues a request and parks (no thread of
trio's pool, no busy wait); the writer wakes it with one
`TrioToken.run_sync_soon` per batch.

Group commit. The writer takes *everything* queued as one batch and runs it in
one transaction: while it commits batch N (an fsync on SQLite, a round trip on
Postgres), the requests of many agents pile up as batch N+1. Consecutive
checkpoints of a batch go to the database together (``executemany`` on SQLite,
one statement over arrays on Postgres), and so do the batch's events.

Fencing refuses single writes, never batches: a refused checkpoint raises
`Fenced` at its own waiter while the rest of its batch commits. A database
failure (full disk, a lock held past the busy timeout, a dropped connection)
rolls the whole batch back and every waiter of that batch gets `StoreError`,
chained from the driver's error and naming the database and the operation.
A waiter never sees success for a write that was not committed.

Cancelling a waiter does not take its write back: the write is committed (or
fails) with its batch; the cancelled task just stops waiting. One exception:
a lease granted to a caller that stopped waiting is released again
(`Journal.acquire_lease`), since nobody would know to release it.

Retries. The journal retries nothing whose outcome is unknown. On Postgres,
when a batch fails because the connection it began on was found dropped (the
server restarted, an idle connection was cut) and its COMMIT was never sent,
nothing of it was committed: the journal connects again and runs that batch
once more. Any other failure goes to the waiters; the next batch connects again
if the connection is gone. SQLite waits out locks for its busy timeout
(``sqlite:///path?busy_timeout=MS``, default 5000), then fails the batch.

Logging (``hybrid.durable``): WARNING for each failed batch and each reconnect,
ERROR (with traceback) for an unexpected exception in the writer, which is a bug.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar, final
from urllib.parse import parse_qsl

import attrs
import outcome
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, TrioToken

from hybrid import Lease, _validate

from ._errors import CheckpointError, Fenced, StoreError
from ._records import Checkpoint, Claim, Ending, Event, StepKind
from ._sql import Backend, Cursor, Row, Statements
from ._sqlite import DEFAULT_BUSY_TIMEOUT_MS, SqliteBackend

logger = logging.getLogger("hybrid.durable")

T = TypeVar("T")


# -- requests -----------------------------------------------------------------


@final
@attrs.define(eq=False)
class _Txn:
    """What an operation sees of the batch's transaction (writer thread only).

    Attributes:
        cursor: the open transaction's cursor.
        now: ``time.time()`` when the batch's transaction began: every event of
            the batch is stamped with it (its commit follows within the batch's run).
        statements: the backend's statements.
        events: event rows of operations already run, appended at the end of the
            batch in one go (or before the next read, so reads see them).
        step: names what runs now, for the error message if the database fails in it.
    """

    cursor: Cursor
    now: float
    statements: Statements
    events: list[Row] = attrs.Factory(list[Row])
    step: str = "BEGIN"

    def flush(self) -> None:
        """Append the pending events now."""
        if self.events:
            self.statements.append_events(self.cursor, self.events)
            self.events.clear()


@final
class _Request(Generic[T]):
    """One queued operation, from its submission to its result.

    The writer thread reads only `checkpoint`, `run` and `writes` (set before
    the request is queued, never changed). The outcome fields and `waiters`
    belong to the trio thread: the writer hands results over with
    `run_sync_soon`, so no lock guards them.
    """

    __slots__ = ("abandoned", "checkpoint", "done", "error", "label", "run", "value", "waiters", "writes")

    def __init__(
        self,
        what: str,
        run: Callable[[_Txn], T] | None,
        *,
        writes: bool,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.label = what
        """Names the operation in errors (empty for a checkpoint, which `what` names)."""
        self.run = run
        """The operation, on the writer thread; None for a checkpoint (saved in groups)."""
        self.checkpoint = checkpoint
        """The checkpoint to save, or None for any other operation."""
        self.writes = writes
        """Whether the operation writes (SQLite then takes the write lock at BEGIN)."""
        self.done = False
        """Set (in the trio thread) once `value` or `error` holds the outcome."""
        self.value: T | None = None
        """The result, once done without error."""
        self.error: BaseException | None = None
        """The failure (`Fenced`, `StoreError`), once done."""
        self.waiters: list[Task] = []
        """Tasks parked in `wait`; each leaves the list when woken or cancelled."""
        self.abandoned: Callable[[T], None] | None = None
        """Called with the value once the request succeeds, if its waiter gave up (see `abandon`)."""

    @property
    def what(self) -> str:
        """Names the operation in errors (built only then: most requests never need it)."""
        checkpoint = self.checkpoint
        if checkpoint is None:
            return self.label
        return f"checkpoint of key {checkpoint.key!r} (epoch {checkpoint.epoch}, seq {checkpoint.seq})"

    def resolve(self, value: object, error: BaseException | None) -> None:
        """Record the outcome and wake the waiters (trio thread)."""
        self.value = value  # type: ignore[assignment]  # the operation returned a T
        self.error = error
        self.done = True
        waiters, self.waiters = self.waiters, []
        for task in waiters:
            trio.lowlevel.reschedule(task, outcome.Value(None))
        if self.abandoned is not None and error is None:
            self.abandoned(self.value)  # type: ignore[arg-type]  # done without error: a T

    def abandon(self, undo: Callable[[T], None]) -> None:
        """Its waiter gave up (cancelled): call ``undo(value)`` in the trio thread if the request succeeds.

        At once if it has succeeded already; never if it failed.
        """
        if not self.done:
            self.abandoned = undo
            return
        if self.error is None:  # pragma: no cover - a waiter is woken once done, and not cancelled after
            undo(self.value)  # type: ignore[arg-type]  # done without error: a T

    async def wait(self) -> T:
        """Wait for the outcome; a cancelled wait leaves the operation queued."""
        if self.done:
            await trio.lowlevel.checkpoint()
        else:
            task = trio.lowlevel.current_task()
            self.waiters.append(task)

            def abort(_: RaiseCancelT) -> Abort:
                self.waiters.remove(task)
                return Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # done without error: a T


@final
class Pending:
    """A checkpoint queued by `Journal.save_behind`, until its batch commits.

    The store keeps at most one `Pending` in flight per agent: it awaits the
    previous one before it queues the next checkpoint, so write-behind memory
    stays bounded by the number of agents. The journal itself does not enforce
    this. A failure nobody waits for is lost: await every `Pending`.
    """

    __slots__ = ("_request",)

    _request: _Request[None]  # the queued save

    def __init__(self) -> None:
        raise TypeError("Pending has no public constructor: use Journal.save_behind")

    @classmethod
    def _make(cls, request: _Request[None]) -> Pending:
        pending = object.__new__(cls)
        pending._request = request
        return pending

    @property
    def done(self) -> bool:
        """Whether the outcome is known (committed, or refused, or failed)."""
        return self._request.done

    async def wait(self) -> None:
        """Return once the checkpoint is committed.

        Cancelling the wait does not take the checkpoint back: it commits with
        its batch (or fails) all the same.

        Raises:
            Fenced: a newer incarnation holds the key, the key is at this seq or
                later, or it finished.
            StoreError: the database failed; the checkpoint was not committed
                (or, if the COMMIT itself failed on Postgres, may have been).
        """
        await self._request.wait()


@attrs.frozen
class _JournalStatistics:
    """Counters of the writer thread (for tests and benchmarks).

    Attributes:
        transactions: batches committed.
        items: requests completed in committed batches (refused ones included).
        largest_batch: the most requests one committed batch held.
        failed_batches: batches that failed with a database error.
        redone_batches: batches run again one write at a time because a grouped
            write was refused (their first attempt was rolled back).
        reconnects: Postgres batches run again on a new connection after the
            one they began on was found dropped (nothing of them committed).
        queued: requests waiting for the next batch now.
    """

    transactions: int
    items: int
    largest_batch: int
    failed_batches: int
    redone_batches: int
    reconnects: int
    queued: int


class _Refused(Exception):
    """A grouped write was refused: roll back and run the batch one write at a time."""


# -- the journal ----------------------------------------------------------------


@final
class Journal:
    """The store's database: checkpoints, endings and the event log of every key, and the leases.

    Made by `open_journal`. Methods are called from the trio run that opened
    it. Each one queues a request for the writer thread and waits for the
    batch that carries it (see the module docstring for group commit, errors
    and retries). After the journal closed, every method raises
    `trio.ClosedResourceError`.
    """

    __slots__ = (
        "_backend",
        "_closing",
        "_failed_batches",
        "_idle",
        "_items",
        "_largest_batch",
        "_lock",
        "_opened",
        "_queue",
        "_reconnects",
        "_redone_batches",
        "_thread",
        "_token",
        "_transactions",
        "_wakeup",
    )

    # Shared between trio and the writer thread, under _lock:
    _queue: list[_Request[Any]]  # requests of the next batch, in submission order
    _closing: bool  # set once by close: no new request; the writer drains and stops
    _lock: threading.Lock
    _wakeup: threading.Condition  # on _lock: the writer waits for requests here
    _idle: bool  # the writer waits on _wakeup (so a request must notify it); set by the writer
    # Fixed at creation:
    _backend: Backend  # the connection: used by the writer thread only
    _token: TrioToken  # the trio run that opened the journal: results go there
    _thread: threading.Thread
    _opened: _Request[None]  # resolved once the writer opened the database (or failed to)
    # Written by the writer thread only (plain ints: readers may see them late):
    _transactions: int
    _items: int
    _largest_batch: int
    _failed_batches: int
    _redone_batches: int
    _reconnects: int

    def __init__(self) -> None:
        raise TypeError("Journal has no public constructor: use open_journal(url)")

    @classmethod
    def _make(cls, backend: Backend) -> Journal:
        journal = object.__new__(cls)
        journal._queue = []
        journal._closing = False
        journal._lock = threading.Lock()
        journal._wakeup = threading.Condition(journal._lock)
        journal._idle = False
        journal._backend = backend
        journal._token = trio.lowlevel.current_trio_token()
        journal._opened = _Request[None]("open", None, writes=True)
        journal._transactions = journal._items = journal._largest_batch = 0
        journal._failed_batches = journal._redone_batches = journal._reconnects = 0
        # A daemon: a process that exits without closing the journal must not hang
        # on it; a transaction cut short is rolled back by the database.
        journal._thread = threading.Thread(
            target=journal._main, name=f"hybrid.durable writer ({backend.description})", daemon=True
        )
        return journal

    # -- public API ---------------------------------------------------------------

    async def claim(
        self, key: str, *, agent_class: str, version: int, kind: StepKind, state: str, payload: bytes
    ) -> Claim:
        """Claim `key` for a new incarnation, in one transaction.

        - A new key: its row is inserted with this spawn checkpoint (epoch 1,
          seq 0, running) and "spawned" is logged; returns ``Claim(1, None, None)``.
        - An unfinished key: its epoch goes up by one, which fences off any older
          incarnation still writing, and "resumed" is logged; returns the new
          epoch and the latest checkpoint (the given one is ignored). The
          checkpoint's `epoch` is the new one: the row keeps one epoch, the
          incarnation that holds it.
        - A finished key: nothing changes; returns its last epoch and `Ending`.

        Args:
            key: the key.
            agent_class: the registry name of the agent's class (new key only).
            version: the class's checkpoint version (new key only).
            kind: what the agent does first, normally `StepKind.BEGIN` (new key only).
            state: the state's name (new key only).
            payload: the codec's bytes of the spawn record (new key only).

        Raises:
            StoreError: the database failed; nothing was claimed (or, if the
                COMMIT itself failed on Postgres, it may have been).
        """

        def run(txn: _Txn) -> Claim:
            claim, event = txn.statements.claim(
                txn.cursor, txn.now, key, agent_class=agent_class, version=version, kind=kind, state=state,
                payload=payload,
            )  # fmt: skip
            if event is not None:
                txn.events.append(event)
            return claim

        return await self._submit(_Request(f"claim of key {key!r}", run, writes=True)).wait()

    async def save(self, checkpoint: Checkpoint) -> None:
        """Save a checkpoint (sync durability): return once its batch is committed.

        The row takes it only while it is running under ``checkpoint.epoch`` with
        a seq below ``checkpoint.seq``; the event (kind = ``checkpoint.kind``) is
        logged in the same transaction. Cancelling the call does not take the
        checkpoint back: it commits with its batch all the same.

        Raises:
            Fenced: a newer incarnation claimed the key, the key is at this seq
                or later, or it finished; nothing was written.
            StoreError: the database failed; the checkpoint was not committed
                (or, if the COMMIT itself failed on Postgres, may have been).
        """
        # Annotated rather than called as _Request[None](...): a subscripted call costs microseconds.
        request: _Request[None] = _Request("", None, writes=True, checkpoint=checkpoint)
        await self._submit(request).wait()

    def save_behind(self, checkpoint: Checkpoint) -> Pending:
        """Queue a checkpoint for the next batch (async durability) and return at once.

        The same write as `save`; its outcome comes from `Pending.wait`. Keep at
        most one in flight per key (await the previous `Pending` first): the
        journal does not check it, and the order of two queued checkpoints of
        one key is the order of the calls.

        Raises:
            trio.ClosedResourceError: the journal is closed.
        """
        request: _Request[None] = _Request("", None, writes=True, checkpoint=checkpoint)
        return Pending._make(self._submit(request))

    async def finish(self, key: str, epoch: int, seq: int, ending: Ending) -> None:
        """Record how `key` ended: the ending replaces its checkpoint, and is logged.

        Fenced like `save`: `seq` is the ending's own transition number, above
        the latest checkpoint's. The event's kind is the status ("done",
        "failed", "stopped") and its detail the error text of a failure.

        Raises:
            Fenced: a newer incarnation claimed the key, its seq is not below
                `seq`, or it finished already.
            StoreError: the database failed (as for `save`).
        """

        def run(txn: _Txn) -> None:
            txn.events.append(txn.statements.finish(txn.cursor, txn.now, key, epoch=epoch, seq=seq, ending=ending))

        await self._submit(_Request(f"ending of key {key!r}", run, writes=True)).wait()

    async def note(self, key: str, epoch: int, seq: int, kind: str, detail: str) -> None:
        """Append an event that changes no checkpoint (a supervised run's failure: the key stays unfinished).

        Raises:
            StoreError: the database failed (as for `save`).
        """

        def run(txn: _Txn) -> None:
            txn.events.append((key, epoch, seq, txn.now, kind, "", detail))

        await self._submit(_Request(f"event of key {key!r}", run, writes=True)).wait()

    # -- leases (``_leases.py``: `DurableLeases`) ------------------------------------

    async def acquire_lease(
        self,
        name: str,
        holder: str,
        ttl: float,
        *,
        renew: bool = True,
        released: Callable[[str], None] | None = None,
    ) -> Lease | None:
        """Renew `holder`'s current lease of `name` (unless not `renew`), or grant the name if it is free.

        None if another holder has it (or, when not `renew`, `holder` has).

        Cancel-safe: a new grant made for a caller that was cancelled while
        waiting is released once its batch commits (a renewal stays), and
        ``released(name)`` is then called (trio thread) once that release
        has committed.

        Raises:
            StoreError: the database failed; nothing was granted (or, if the
                COMMIT itself failed on Postgres, the grant may stand until
                it expires).
        """

        def run(txn: _Txn) -> tuple[Lease, bool] | None:
            return txn.statements.acquire_lease(txn.cursor, name, holder, ttl, renew=renew)

        request = self._submit(_Request(f"acquire of lease {name!r}", run, writes=True))
        try:
            granted = await request.wait()
        except BaseException:  # re-raised: the grant, if there is one, must not outlive the caller
            request.abandon(functools.partial(self._release_abandoned, released))
            raise
        return None if granted is None else granted[0]

    def _release_abandoned(self, released: Callable[[str], None] | None, granted: tuple[Lease, bool] | None) -> None:
        """Release a new grant nobody waits for (trio thread); if that fails, it expires at its ttl."""
        if granted is None or not granted[1]:
            return
        lease = granted[0]

        def run(txn: _Txn) -> bool:
            return txn.statements.release_lease(txn.cursor, lease)

        release: _Request[bool] = _Request(f"release of abandoned lease {lease.name!r}", run, writes=True)
        if released is not None:
            release.abandoned = lambda freed: released(lease.name) if freed else None  # on its commit
        with contextlib.suppress(trio.ClosedResourceError):  # closing: the lease ends at its ttl
            self._submit(release)

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend `lease` to `ttl` from now if its grant is current (the new record); None if not.

        Raises:
            StoreError: the database failed (the lease may still have been renewed
                if the COMMIT itself failed on Postgres).
        """

        def run(txn: _Txn) -> Lease | None:
            return txn.statements.renew_lease(txn.cursor, lease, ttl)

        return await self._submit(_Request(f"renewal of lease {lease.name!r}", run, writes=True)).wait()

    async def release_lease(self, lease: Lease) -> bool:
        """Release `lease` if its grant is the latest of its name; whether it was.

        Cancelling the call does not take the release back: it commits with its batch.

        Raises:
            StoreError: the database failed; the lease was not released.
        """

        def run(txn: _Txn) -> bool:
            return txn.statements.release_lease(txn.cursor, lease)

        return await self._submit(_Request(f"release of lease {lease.name!r}", run, writes=True)).wait()

    async def latest_lease(self, name: str) -> tuple[Lease | None, float]:
        """The latest unreleased grant of `name` (expired or not), and the database's clock now."""
        return await self._read(f"lease {name!r}", lambda txn: txn.statements.latest_lease(txn.cursor, name))

    async def checkpoint(self, key: str) -> Checkpoint | None:
        """The latest checkpoint of `key` if it is unfinished, else None."""
        return await self._read(f"checkpoint of key {key!r}", lambda txn: txn.statements.checkpoint(txn.cursor, key))

    async def ending(self, key: str) -> Ending | None:
        """How `key` ended, or None if it is unknown or unfinished."""
        return await self._read(f"ending of key {key!r}", lambda txn: txn.statements.ending(txn.cursor, key))

    async def unfinished(self) -> list[Checkpoint]:
        """The checkpoint of every running key, in key order (code point order)."""
        return await self._read("unfinished keys", lambda txn: txn.statements.unfinished(txn.cursor))

    async def events(
        self, key: str | None = None, *, since: float | None = None, limit: int | None = None
    ) -> list[Event]:
        """The event log, oldest first.

        Args:
            key: only this key's events; all keys' if None.
            since: only events committed at this time (seconds since the epoch)
                or later.
            limit: at most this many events: the oldest ones that match.
        """
        # Checked here, not by the driver: a value it cannot bind would fail the whole batch.
        limit = _validate.count("limit", limit, maximum=_validate.SQL_INT_MAX, optional=True)
        since = _validate.moment("since", since)
        return await self._read(
            "event log", lambda txn: txn.statements.events(txn.cursor, key, since, limit)
        )  # fmt: skip

    async def prune(
        self, *, keep_events: int | None = None, older_than: float | None = None, finished_before: float | None = None
    ) -> int:
        """Apply a retention policy, in one transaction; None leaves that part out.

        The row of a running key (its latest checkpoint) is never deleted.

        Args:
            keep_events: keep only the newest this many events of each key.
            older_than: delete the events committed before this time.
            finished_before: delete the keys that ended before this time: their
                row (ending) and their events. Such a key can then be started anew.

        Returns:
            The number of rows deleted (events and keys).
        """
        # Checked here, not by the driver: a value it cannot bind would fail the whole batch,
        # and NaN would mean "nothing" on SQLite and "everything" on Postgres.
        keep_events = _validate.count("keep_events", keep_events, maximum=_validate.SQL_INT_MAX, optional=True)
        older_than = _validate.moment("older_than", older_than)
        finished_before = _validate.moment("finished_before", finished_before)

        def run(txn: _Txn) -> int:
            txn.flush()
            return txn.statements.prune(
                txn.cursor, keep_events=keep_events, older_than=older_than, finished_before=finished_before
            )

        return await self._submit(_Request("prune", run, writes=True)).wait()

    # -- private API (the store, tests, benchmarks) --------------------------------

    def _statistics(self) -> _JournalStatistics:
        """The writer's counters now (any thread)."""
        return _JournalStatistics(
            transactions=self._transactions,
            items=self._items,
            largest_batch=self._largest_batch,
            failed_batches=self._failed_batches,
            redone_batches=self._redone_batches,
            reconnects=self._reconnects,
            queued=len(self._queue),
        )

    async def _call(self, fn: Callable[[Cursor], T], *, writes: bool = True) -> T:
        """Run ``fn(cursor)`` on the writer thread, inside a batch's transaction.

        A driver error in `fn` fails the whole batch like any database failure.
        """

        def run(txn: _Txn) -> T:
            txn.flush()
            return fn(txn.cursor)

        return await self._submit(_Request("call", run, writes=writes)).wait()

    async def _read(self, what: str, fn: Callable[[_Txn], T]) -> T:
        def run(txn: _Txn) -> T:
            txn.flush()
            return fn(txn)

        return await self._submit(_Request(f"read of {what}", run, writes=False)).wait()

    def _submit(self, request: _Request[T]) -> _Request[T]:
        with self._lock:
            if self._closing:
                raise trio.ClosedResourceError("the journal is closed")
            self._queue.append(request)
            if self._idle:  # a busy writer looks at the queue anyway: skip Condition.notify's cost
                self._idle = False
                self._wakeup.notify()
        return request

    async def _open(self) -> None:
        self._thread.start()
        await self._opened.wait()

    async def _close(self) -> None:
        """Commit what is queued, close the connection and join the writer thread."""
        with self._lock:
            self._closing = True
            self._wakeup.notify()
        if self._thread.is_alive():
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._thread.join)

    # -- the writer thread -----------------------------------------------------------

    def _main(self) -> None:
        backend = self._backend
        try:
            backend.open()
        except BaseException as error:  # handed to the trio side, which raises it
            self._deliver([self._opened], [(None, error)])
            return
        self._deliver([self._opened], [(None, None)])
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._closing:
                        self._idle = True
                        self._wakeup.wait()
                        self._idle = False
                    batch, self._queue = self._queue, []
                if not batch:  # closing, and nothing queued any more
                    break
                self._run_batch(batch)
        finally:
            backend.close()

    def _run_batch(self, batch: list[_Request[Any]]) -> None:
        backend = self._backend
        writes = any(request.writes for request in batch)
        grouped = True
        retried = False
        while True:
            connected = not backend.dropped
            txn: _Txn | None = None
            try:
                txn = _Txn(backend.begin(writes), time.time(), backend.statements)
                results = self._execute(txn, batch, grouped=grouped)
                txn.step = "appending to the event log"
                txn.flush()
                txn.step = "COMMIT"
                backend.commit()
            except _Refused:
                backend.rollback()
                grouped = False
                self._redone_batches += 1
                continue
            except backend.errors as error:
                backend.rollback()
                step = "BEGIN" if txn is None else txn.step
                if step != "COMMIT" and connected and backend.dropped and not retried:
                    # Found dropped before COMMIT was sent: nothing of the batch was
                    # committed, so running it again on a new connection is safe.
                    logger.warning("%s: connection lost (%s); connecting again", backend.description, error)
                    retried = True
                    self._reconnects += 1
                    continue
                self._fail(batch, step, error)
                return
            except Exception as error:
                logger.exception("%s: unexpected error in the journal's writer", backend.description)
                backend.rollback()
                self._fail(batch, "BEGIN" if txn is None else txn.step, error)
                return
            break
        self._transactions += 1
        self._items += len(batch)
        self._largest_batch = max(self._largest_batch, len(batch))
        self._deliver(batch, results)

    def _execute(
        self, txn: _Txn, batch: list[_Request[Any]], *, grouped: bool
    ) -> list[tuple[object, BaseException | None]]:
        """Run the batch's operations in order: a (value, error) for each.

        Refused writes are results (`Fenced`), not failures. With `grouped`,
        consecutive checkpoints go in one statement; if any of them is refused,
        `_Refused` asks for a redo without grouping.
        """
        statements = txn.statements
        cursor = txn.cursor
        now = txn.now
        results: list[tuple[object, BaseException | None]] = []
        index = 0
        while index < len(batch):
            request = batch[index]
            checkpoint = request.checkpoint
            if checkpoint is not None and grouped:
                end = index + 1
                while end < len(batch) and batch[end].checkpoint is not None:
                    end += 1
                if end - index > 1:
                    checkpoints: list[Checkpoint] = [r.checkpoint for r in batch[index:end] if r.checkpoint]
                    txn.step = f"saving {len(checkpoints)} checkpoints"
                    if statements.save_many(cursor, now, checkpoints) != len(checkpoints):
                        raise _Refused
                    txn.events.extend(statements.save_event(c, now) for c in checkpoints)
                    results.extend((None, None) for _ in checkpoints)
                    index = end
                    continue
            txn.step = request.what
            try:
                if checkpoint is not None:
                    txn.events.append(statements.save_one(cursor, now, checkpoint))
                    value: object = None
                else:
                    assert request.run is not None
                    value = request.run(txn)
            except (Fenced, StoreError, CheckpointError) as refused:  # this request's outcome, not the database's
                results.append((None, refused))
            else:
                results.append((value, None))
            index += 1
        return results

    def _fail(self, batch: list[_Request[Any]], step: str, error: Exception) -> None:
        """Fail every request of a rolled-back batch with its own `StoreError`."""
        self._failed_batches += 1
        backend = self._backend
        logger.warning("%s: %s failed; a batch of %d rolled back: %s", backend.description, step, len(batch), error)
        if step == "COMMIT" and backend.dropped:
            # The server may have committed before the connection went: say so.
            outcome_text = "may or may not have been committed"
        else:
            outcome_text = "was not committed"
        results: list[tuple[object, BaseException | None]] = []
        for request in batch:
            failure = StoreError(
                f"{request.what or 'request'} {outcome_text}: {backend.description}: {step} failed"
                f" (batch of {len(batch)}): {type(error).__name__}: {error}"
            )
            failure.__cause__ = error
            results.append((None, failure))
        self._deliver(batch, results)

    def _deliver(self, batch: list[_Request[Any]], results: list[tuple[object, BaseException | None]]) -> None:
        """Hand a batch's outcomes to the trio thread, with one wakeup for all of them."""

        def resolve() -> None:
            for request, (value, error) in zip(batch, results, strict=True):
                request.resolve(value, error)

        with contextlib.suppress(trio.RunFinishedError):  # the trio run is gone: nobody waits
            self._token.run_sync_soon(resolve)


def _backend(url: str) -> Backend:
    """The backend `url` names (no I/O: connecting is the writer thread's job)."""
    scheme, found, rest = url.partition("://")
    if not found:
        return SqliteBackend(url)
    scheme = scheme.lower()
    if scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db.
        if rest.startswith("/"):
            rest = rest[1:]
        path, _, query = rest.partition("?")
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
        busy_timeout = options.pop("busy_timeout", str(DEFAULT_BUSY_TIMEOUT_MS))
        synchronous = options.pop("synchronous", "full").lower()
        if options:
            known = "busy_timeout, synchronous"
            raise ValueError(f"unknown SQLite URL option(s): {', '.join(sorted(options))} (known: {known})")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be full or normal, not {synchronous!r}")
        try:
            busy_timeout_ms = int(busy_timeout)
        except ValueError:
            raise ValueError(f"busy_timeout must be a number of milliseconds, not {busy_timeout!r}") from None
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout must be >= 0 milliseconds, not {busy_timeout_ms}")
        return SqliteBackend(path or ":memory:", busy_timeout_ms=busy_timeout_ms, fsync=synchronous == "full")
    if scheme in ("postgresql", "postgres"):
        try:
            from ._postgres import PostgresBackend  # noqa: PLC0415 - psycopg is an extra: import it only when asked
        except ImportError as error:  # pragma: no cover - tested in a subprocess (tests/durable/test_store.py)
            raise ImportError(
                f"a Postgres store needs psycopg 3: pip install 'trio-hybrid[durable-postgres]' ({error})",
                name=error.name,
            ) from error

        return PostgresBackend(url)
    raise ValueError(f"unknown journal URL scheme {scheme!r}: use a path, sqlite:///path or postgresql://...")


@asynccontextmanager
async def open_journal(url: str) -> AsyncGenerator[Journal]:
    """Open the journal at `url`, creating its schema on first open.

    Args:
        url: where the journal lives:

            - a file path, or ``sqlite:///relative/path`` / ``sqlite:////absolute/path``
              (SQLAlchemy's convention), or ``sqlite:///:memory:`` (a database
              that lives as long as the journal): SQLite in WAL mode with full
              fsync. URL options: ``?busy_timeout=MS``, how long a write waits
              for a lock another connection holds before it fails with
              `StoreError` (default 5000); ``?synchronous=normal``, commits
              without an fsync each (SQLite's ``synchronous=NORMAL`` in WAL
              mode): a commit survives a killed process, not a power cut or
              an OS crash, and costs a fraction (the default is ``full``).
            - ``postgresql://...`` or ``postgres://...``: a libpq URL; its query
              parameters go to libpq (``connect_timeout`` defaults to 10 s).
              Needs the ``durable-postgres`` extra (psycopg 3).

    Leaving the context commits what is queued, closes the connection and joins
    the writer thread (shielded from cancellation: queued writes are not dropped).

    Raises:
        ValueError: the URL's scheme or options are unknown.
        StoreError: the database cannot be opened, or its schema version is
            newer than this code's.
    """
    journal = Journal._make(_backend(url))
    try:
        await journal._open()  # noqa: SLF001 - the journal's own module
        yield journal
    finally:
        await journal._close()  # noqa: SLF001
