"""`DurableLeases`: the lease table of a store, in its database, shared by every process that opens it.

The interface is `hybrid.LeaseTable`'s, as for the in-process `hybrid.Leases`;
this module adds where the leases live (the ``hybrid_leases`` table, see
``_sql.py``) and which clock they expire on (the database's). Every operation
is one transaction of the journal's writer thread, a compare-and-set on the
name's row, so two processes (two stores on one database) never both hold a
lease of one name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import trio

from hybrid import Lease, LeaseTable, _validate

if TYPE_CHECKING:
    from ._store import Store

DEFAULT_POLL_INTERVAL = 0.5
"""Seconds between two looks at a held lease, for a waiter in `DurableLeases.wait_free` (and `hold`)."""


@final
class DurableLeases(LeaseTable):
    """Leases with a TTL and a fencing token, in the store's database: shared across processes.

    Made by [`Store.leases`][hybrid.durable.Store.leases]. The interface is
    `hybrid.LeaseTable`'s (``acquire``, ``renew``, ``release``, ``current``,
    ``is_current``, ``check``, ``wait_free``, ``hold``), the same as the
    in-process `hybrid.Leases`: code can switch between them. Use it in the
    trio run that opened the store; once the store is closed, every
    operation raises `StoreError`, as does any failure of the database.

    **Across processes.** Each operation is one transaction, a
    compare-and-set on the name's row (its token and expiry), committed
    before the call returns: two processes sharing the database never both
    hold a current lease of one name, and each new grant of a name gets a
    larger token than every earlier one (the row is never deleted).
    Calls run on the store's writer thread, grouped with the store's other
    writes, never blocking trio's loop.

    **The clock.** A lease expires on the *database's* clock, one clock for
    every process: on SQLite, the wall clock of the host (``julianday('now')``,
    to the millisecond; every process sharing a SQLite file in WAL mode runs
    on that host); on Postgres, the server's clock (``statement_timestamp()``).
    `Lease.expires_at` is that clock's time in seconds since the Unix epoch:
    compare it only with itself, never with ``time.time()`` of another host.
    The clocks of the client hosts do not matter. What does: (1) the
    holder measures its own deadline with trio's clock from *before* it sent
    the grant or renewal (the database's expiry is later), so `hold` stops
    in time as long as the two clocks run at nearly the same *rate* (drift
    far below the margin between `renew_every` and `ttl`); (2) a *step* of
    the database's clock (a manual change, an NTP step rather than a slew)
    moves every expiry by that step: a forward step ends leases early, while
    their holders still think them held. Fencing tokens keep writes ordered
    even then: give the token to the resource, and let it refuse old ones.

    **Fencing in your own tables.** In the same database, a write can check
    its token in the same transaction: ``UPDATE ... WHERE (SELECT token FROM
    hybrid_leases WHERE name = %s AND holder <> '' AND expires > <now>) = %s``.

    **Waiting.** `wait_free` (and ``hold(wait=True)``) looks again every
    `poll_interval` seconds and when the current lease is due to expire; a
    release made through the same store wakes it at once. Leases are not
    queued: whoever asks first after the name is free gets it.

    Example:
        ```python
        async with hybrid.durable.open_store("postgresql://db/app") as store:
            leases = store.leases()
            async with leases.hold("billing/nightly", socket.gethostname(), ttl=30) as lease:
                await run_nightly_billing(fencing_token=lease.token)
        ```
    """

    __slots__ = ("_poll_interval", "_store")

    _store: Store
    """The store whose database holds the leases (its journal runs every operation)."""
    _poll_interval: float
    """Seconds between two looks at a held lease for a waiter (> 0, finite)."""

    def __init__(self) -> None:
        raise TypeError("DurableLeases has no public constructor: use store.leases()")

    @classmethod
    def _make(cls, store: Store, poll_interval: object) -> DurableLeases:
        """The table of `store`, its waiters looking every `poll_interval` seconds (checked here)."""
        leases = object.__new__(cls)
        leases._store = store
        leases._poll_interval = _validate.seconds("poll_interval", poll_interval, positive=True)
        return leases

    @property
    def poll_interval(self) -> float:
        """Seconds between two looks at a held lease, for a task waiting for it."""
        return self._poll_interval

    async def _acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        return await self._grant(name, holder, ttl, renew=True)

    async def _acquire_free(self, name: str, holder: str, ttl: float) -> Lease | None:
        return await self._grant(name, holder, ttl, renew=False)

    async def _grant(self, name: str, holder: str, ttl: float, *, renew: bool) -> Lease | None:
        journal = self._store._open_journal()  # noqa: SLF001 - the store's own table
        await trio.lowlevel.checkpoint_if_cancelled()  # a caller cancelled already asks the database nothing
        return await journal.acquire_lease(name, holder, ttl, renew=renew, released=self._freed)

    async def _renew(self, lease: Lease, ttl: float) -> Lease | None:
        return await self._store._open_journal().renew_lease(lease, ttl)  # noqa: SLF001

    async def _release(self, lease: Lease) -> None:
        journal = self._store._open_journal()  # noqa: SLF001
        try:
            await journal.release_lease(lease)
        finally:  # cancelled or not, the release commits: wake this store's waiters (they look again)
            self._freed(lease.name)

    def _freed(self, name: str) -> None:
        """`name` was released through this store: its waiters here look again at once."""
        freed = self._store._lease_freed.pop(name, None)  # noqa: SLF001
        if freed is not None:
            freed.set()

    async def _latest(self, name: str) -> tuple[Lease | None, float]:
        return await self._store._open_journal().latest_lease(name)  # noqa: SLF001

    async def _wait_changed(self, name: str, remaining: float) -> None:
        freed = self._store._lease_freed  # noqa: SLF001
        event = freed.get(name)
        if event is None:
            event = freed[name] = trio.Event()
        try:
            with trio.move_on_after(min(remaining, self._poll_interval)):
                await event.wait()
        finally:  # timed out or cancelled rather than released: the last waiter drops the event
            if not event.is_set() and event.statistics().tasks_waiting == 0 and freed.get(name) is event:
                del freed[name]
