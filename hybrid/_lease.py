"""Leases with a TTL, renewal and a fencing token: `LeaseTable`, its in-process `Leases`, and `hold`.

A lease lends a *name* (a job, a shard, the leadership of a group) to one
*holder* for a while (its TTL). The holder renews it before it runs out, and
releases it when done; if the holder dies, the lease expires and another holder
can take it. Every grant carries a *fencing token*, an int that strictly
increases each time the name is granted, so a resource can refuse a holder
whose lease has already passed to someone else.

What a table guarantees, on its clock:

- at any instant, a name has at most one current (unexpired, unreleased) lease;
- each new grant of a name (after expiry or release) gets a larger token than
  every earlier grant of that name; renewing keeps the token;
- renewing, releasing and checking act on one grant, named by its token: a
  stale lease (an older token) can neither renew nor free a newer holder's lease.

What no table can guarantee: that the old holder has *stopped* when its lease
expired (a process paused by a long GC, a swapped-out VM, a slow network). That
is what the token is for: hand it to the resource with each write, and let the
resource refuse a token lower than the highest it has seen (or check it is
still current in the same transaction as the write).

Layout: `Lease` (one grant, a frozen record); `LeaseTable` (the interface and
everything shared by every backend: argument checks, `check`, `current`,
`wait_free` and `hold`, written once over five small hooks); `Leases` (the
in-process table, on trio's clock). ``hybrid.durable`` implements the same
interface on its store's database (``store.leases()``).

Logging (``hybrid.lease``): WARNING when a renewal inside `LeaseTable.hold`
fails with an `OSError` (retried until the TTL runs out) and when releasing at
the end of `hold` fails (the lease then ends at its TTL).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import final

import attrs
import trio

from . import _validate
from ._exceptions import LeaseLost

logger = logging.getLogger("hybrid.lease")


@final
@attrs.frozen
class Lease:
    """One grant of a lease: who holds which name, under which token, until when.

    A record, never changed: `LeaseTable.renew` returns a new one (same
    token, later `expires_at`). Tables make them; pass them back to `renew`,
    `release`, `is_current` and `check`, and pass `token` to the resources the
    lease guards.

    Attributes:
        name: what is leased; a non-empty str (UTF-8 text without NUL),
            unique within its table.
        holder: who holds it; a non-empty str (the same). Two callers using the same
            holder string are the same holder (acquiring again renews).
        token: the fencing token, >= 1. Strictly greater than the token of
            every earlier grant of `name` in the same table; the same for
            every renewal of this grant. (The in-process `Leases` numbers all
            its grants in one sequence, so its tokens are unique across names
            too; a durable table counts per name.)
        expires_at: when this grant ends unless renewed, on the table's clock:
            ``trio.current_time()`` for `Leases`; for ``hybrid.durable`` the
            database's clock in seconds since the Unix epoch (see
            ``DurableLeases``). The lease is current while the table's clock
            is below it.
        ttl: the time to live of the operation that produced this record
            (the grant or the latest renewal), in seconds, > 0: `expires_at`
            is that operation's time plus `ttl`. `renew` uses it by default.

    Example:
        ```python
        lease = await leases.acquire("nightly-report", "worker-3", ttl=30)
        if lease is not None:
            await storage.write(report, fencing_token=lease.token)
        ```
    """

    name: str
    holder: str
    token: int
    expires_at: float
    ttl: float


def _text(what: str, value: object) -> str:
    """A non-empty str that every backend stores as it is: UTF-8 text without NUL (Postgres holds no NUL)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a non-empty str, got {value!r}")
    if not value:
        raise ValueError(f"{what} must be a non-empty str, got ''")
    return _validate.indexable(what, value)


def _ttl(value: object) -> float:
    return _validate.seconds("ttl", value, positive=True)


def _lease(value: object) -> Lease:
    if not isinstance(value, Lease):
        raise TypeError(f"expected a hybrid.Lease, got {value!r}")
    return value


def _describe(lease: Lease) -> str:
    return f"lease {lease.name!r} of {lease.holder!r} (token {lease.token})"


def _why_not_current(lease: Lease, latest: Lease | None, now: float) -> str | None:
    """Why `lease` is not the current grant of its name, given the table's `latest` grant at `now`; None if it is."""
    if latest is None:
        return "it was released: nobody holds the name now"
    if latest.token == lease.token:
        if now < latest.expires_at:
            return None
        return f"it expired {now - latest.expires_at:.3g} s ago without being renewed"
    if latest.token < lease.token:
        return f"the table never granted token {lease.token} (its latest grant of the name is token {latest.token})"
    if now < latest.expires_at:
        return f"{latest.holder!r} holds the name now, under token {latest.token}"
    return f"the name was granted again since (token {latest.token}, to {latest.holder!r})"


class LeaseTable(abc.ABC):
    """A table of leases: the interface every backend offers, and what they share.

    Backends: the in-process [`Leases`][hybrid.Leases] (trio's clock) and
    ``hybrid.durable``'s ``store.leases()`` (a table in the store's database,
    shared by every process that opens it). Code written against this
    interface runs on either.

    Every method is a trio checkpoint. Arguments are checked at the call: a
    `name` or `holder` that is not a non-empty str (or holds a NUL or a lone
    surrogate, which a database cannot store), a `ttl` that is not a finite
    number of seconds > 0 (bools and NaN included) raise `TypeError` or
    `ValueError` before anything happens.

    Implementing a table: subclass it and implement the five hooks
    ``_acquire``, ``_renew``, ``_release``, ``_latest`` and
    ``_wait_changed`` (their docstrings give their contracts, arguments
    already checked); the public methods and `hold` are built on them.
    Override ``_acquire_free`` too, as one atomic step (its default looks,
    then acquires), so that two `hold` blocks of one holder never both enter.
    (`hold` enters through ``_acquire_free``, not through `acquire`: a
    subclass that wraps `acquire`, to log or count, wraps it too.)

    Example:
        ```python
        async def run_shard(table: hybrid.LeaseTable, shard: str, me: str) -> None:
            async with table.hold(f"shard/{shard}", me, ttl=10) as lease:
                await process(shard, fencing_token=lease.token)
        ```
    """

    __slots__ = ()

    # -- the interface -------------------------------------------------------------

    async def acquire(self, name: str, holder: str, *, ttl: float) -> Lease | None:
        """Grant `name` to `holder` for `ttl` seconds if it is free; None if another holder has it.

        The name is free when it was never granted, was released, or its
        lease expired: the grant then gets a new token, larger than every
        earlier one of the name. If `holder` already holds it, this renews
        it (same token, `ttl` from now). Never waits for the name: see
        `wait_free` and `hold`.

        Raises:
            TypeError: `name` or `holder` is not a str, `ttl` not a number.
            ValueError: `name` or `holder` is empty, holds a NUL or a lone surrogate, or is longer than
                1,024 bytes of UTF-8; `ttl` is not finite and > 0.

        Example:
            ```python
            lease = await leases.acquire("leader", "node-1", ttl=5)
            if lease is None:
                return  # somebody else leads
            ```
        """
        seconds = self._check_grant(name, holder, ttl)
        return await self._acquire(name, holder, seconds)

    async def renew(self, lease: Lease, *, ttl: float | None = None) -> Lease:
        """Extend `lease` to `ttl` seconds from now (default: ``lease.ttl``); return the new record.

        The returned record has the same token and a later `expires_at`.

        Raises:
            LeaseLost: the lease is no longer current: it expired, was
                released, or the name was granted again (its token is stale).
                The message says which.
            TypeError: `lease` is not a `Lease`, `ttl` not a number.
            ValueError: `ttl` (or, without it, ``lease.ttl``) is not finite and > 0.

        Example:
            ```python
            lease = await leases.renew(lease)
            ```
        """
        _lease(lease)
        seconds = _validate.seconds("lease.ttl", lease.ttl, positive=True) if ttl is None else _ttl(ttl)
        renewed = await self._renew(lease, seconds)
        if renewed is None:
            latest, now = await self._latest(lease.name)
            reason = _why_not_current(lease, latest, now) or "it was not current when the renewal ran"
            raise LeaseLost(f"cannot renew {_describe(lease)}: {reason}")
        return renewed

    async def release(self, lease: Lease) -> None:
        """Give `lease` up now, so another holder can acquire the name at once.

        Idempotent, and harmless on a stale lease: it frees the name only if
        `lease`'s token is the current one, never a newer holder's lease.
        The release takes effect even if the calling task is cancelled
        during the call (as ``aclose`` does).

        Raises:
            TypeError: `lease` is not a `Lease`.

        Example:
            ```python
            try:
                await work(lease.token)
            finally:
                await leases.release(lease)
            ```
        """
        await self._release(_lease(lease))

    async def current(self, name: str) -> Lease | None:
        """The current (unexpired, unreleased) lease of `name` now, or None if the name is free.

        Raises:
            TypeError: `name` is not a str.
            ValueError: `name` is empty, holds a NUL or a lone surrogate, or is longer than 1,024
                bytes of UTF-8.

        Example:
            ```python
            leader = await leases.current("leader")
            print("no leader" if leader is None else f"{leader.holder} leads")
            ```
        """
        _text("name", name)
        latest, now = await self._latest(name)
        return latest if latest is not None and now < latest.expires_at else None

    async def is_current(self, lease: Lease) -> bool:
        """Whether `lease`'s grant is the current lease of its name now (its token is current, unexpired).

        For fencing: a resource given a token asks whether it is still the
        current one. The answer can change right after (the lease may expire
        the next moment); for a strict guarantee, have the resource compare
        tokens (refuse any lower than the highest it saw).

        Raises:
            TypeError: `lease` is not a `Lease`.

        Example:
            ```python
            if not await leases.is_current(lease):
                raise RuntimeError("stale writer")
            ```
        """
        _lease(lease)
        latest, now = await self._latest(lease.name)
        return _why_not_current(lease, latest, now) is None

    async def check(self, lease: Lease) -> None:
        """Raise `LeaseLost` unless `lease` is current now (`is_current`, with the reason in the message).

        Raises:
            LeaseLost: the lease expired, was released, or the name was
                granted again.
            TypeError: `lease` is not a `Lease`.

        Example:
            ```python
            await leases.check(lease)  # before an irreversible step
            await payments.capture(order)
            ```
        """
        _lease(lease)
        latest, now = await self._latest(lease.name)
        reason = _why_not_current(lease, latest, now)
        if reason is not None:
            raise LeaseLost(f"{_describe(lease)} is not current: {reason}")

    async def wait_free(self, name: str) -> None:
        """Return once `name` has no current lease (at once if it has none).

        The name may be taken again by the time the caller acts: `acquire`
        then returns None, and the caller waits again (`hold` does this).
        Wakes when the current lease expires, and when it is released (at
        once for `Leases`; for a durable table, at once for a release made
        through the same store, else at its next poll).

        Raises:
            TypeError: `name` is not a str.
            ValueError: `name` is empty, holds a NUL or a lone surrogate, or is longer than 1,024
                bytes of UTF-8.

        Example:
            ```python
            while (lease := await leases.acquire("job", me, ttl=30)) is None:
                await leases.wait_free("job")
            ```
        """
        _text("name", name)
        while True:
            latest, now = await self._latest(name)
            if latest is None or now >= latest.expires_at:
                return
            await self._wait_changed(name, latest.expires_at - now)

    def hold(
        self,
        name: str,
        holder: str,
        *,
        ttl: float,
        renew_every: float | None = None,
        wait: bool = True,
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold `name` for the duration of an ``async with`` block: acquire, keep renewed, release.

        Entering acquires the lease (waiting until it is free when `wait`),
        and yields the `Lease` as granted (its `expires_at` is not updated by
        the renewals; its `token` stays valid). A background task renews it
        every `renew_every` seconds. Leaving the block releases it (shielded
        from cancellation, for at most `ttl` seconds: after that the lease
        has ended by itself; a release that fails with an `OSError` is logged
        and left to expire).

        If the lease is lost while the block runs, the block is cancelled and
        `LeaseLost` is raised out of the ``async with`` (as `trio.fail_after`
        turns its cancellation into `TooSlowError`): when a renewal raises
        `LeaseLost`, or when `ttl` passes (on trio's clock, counted from
        before the last successful acquire or renewal was sent) without a
        successful renewal. A renewal failing with an `OSError` (a database
        error such as ``StoreError``, a network error) is logged and tried
        again every `renew_every` until then. `LeaseLost` is also raised if
        the block ends normally after its lease ran out without it reaching a
        checkpoint; an exception of the block itself propagates unchanged.

        So a block that leaves without `LeaseLost` held the lease throughout
        (on the table's clock, under the clock assumptions of its backend).
        The converse does not hold: code that runs without reaching a trio
        checkpoint runs on past the end of its lease, which is why resources
        should check the token.

        Args:
            name: the lease's name.
            holder: who holds it.
            ttl: the lease's time to live, renewed: how long the lease
                outlives a holder that stops renewing (a crashed process).
            renew_every: seconds between renewals; default ``ttl / 3``, so
                that two renewals may fail before the lease runs out. Must be
                shorter than `ttl`.
            wait: wait for the lease while another holder has it (the
                default). If False and the lease is held, entering raises
                `trio.WouldBlock`.

        Raises:
            TypeError: `name` or `holder` not a str; `ttl` or `renew_every`
                not a number.
            ValueError: `name` or `holder` empty; `ttl` or `renew_every` not
                finite and > 0, or `renew_every` >= `ttl`; or `holder`
                already holds the lease (another block of the same holder
                name: each block needs a holder name of its own).

        Example:
            ```python
            async with leases.hold("billing/nightly", "worker-3", ttl=30) as lease:
                for batch in batches:
                    await ledger.apply(batch, fencing_token=lease.token)
            ```
        """
        seconds = self._check_grant(name, holder, ttl)
        if renew_every is None:
            every = seconds / 3
        else:
            every = _validate.seconds("renew_every", renew_every, positive=True)
            if every >= seconds:
                raise ValueError(f"renew_every must be shorter than ttl ({seconds!r} s), got {renew_every!r}")
        return _hold(self, name, holder, ttl=seconds, every=every, wait=wait)

    # -- the hooks a backend implements ------------------------------------------------

    @abc.abstractmethod
    async def _acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Atomically: renew `holder`'s current lease of `name`, or grant a free name anew, or return None.

        A new grant takes a token larger than every earlier grant of `name`.
        If cancelled, it must not leave a new grant behind.
        """

    async def _acquire_free(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Grant `name` anew if it is free; None if anyone holds it, `holder` included (never renews).

        What `hold` enters with: two blocks of one holder must not share a grant.
        This default looks, then acquires: override it with one atomic step (the
        two tables here do), or two blocks started together may both enter.
        """
        if await self.current(name) is not None:
            return None
        return await self._acquire(name, holder, ttl)

    @abc.abstractmethod
    async def _renew(self, lease: Lease, ttl: float) -> Lease | None:
        """Atomically: extend the grant `lease.token` of `lease.name` by `ttl` from now if it is current; else None."""

    @abc.abstractmethod
    async def _release(self, lease: Lease) -> None:
        """Atomically: end the grant `lease.token` of `lease.name` if it is the latest (expired or not).

        Must take effect even if the calling task is cancelled.
        """

    @abc.abstractmethod
    async def _latest(self, name: str) -> tuple[Lease | None, float]:
        """The latest grant of `name`, expired or not (None if released or never granted), and the table's clock now."""

    @abc.abstractmethod
    async def _wait_changed(self, name: str, remaining: float) -> None:
        """Wait until `name`'s lease may have ended: at most `remaining` seconds (its time left), less if released."""

    # -- shared --------------------------------------------------------------------------

    @staticmethod
    def _check_grant(name: object, holder: object, ttl: object) -> float:
        _text("name", name)
        _text("holder", holder)
        return _ttl(ttl)


@final
class Leases(LeaseTable):
    """The in-process lease table, on trio's clock (so `trio.testing.MockClock` drives it).

    For tasks of one trio run: a name is held by at most one holder at a
    time, a lease expires `ttl` seconds (of ``trio.current_time()``) after
    its grant or latest renewal, and every grant gets the next token of one
    sequence for the whole table (1, 2, 3...), so tokens also increase per
    name. A release wakes the tasks waiting in `wait_free` (or `hold`) at
    once; an expiry wakes them at its deadline. The table keeps the latest
    grant of each name until it is released or granted again. Use it from
    the trio run that made it.

    For leases that several processes share, use ``hybrid.durable``'s
    ``store.leases()``, which has the same interface.

    Example:
        ```python
        leases = hybrid.Leases()

        async def worker(me: str) -> None:
            async with leases.hold("compaction", me, ttl=10) as lease:
                await compact(fencing_token=lease.token)

        async with trio.open_nursery() as nursery:
            for me in ("a", "b", "c"):
                nursery.start_soon(worker, me)  # one compacts at a time
        ```
    """

    __slots__ = ("_freed", "_held", "_tokens")

    _held: dict[str, Lease]
    """The latest grant of each name, current or expired; a release removes it, a new grant replaces it."""
    _tokens: int
    """The last token granted (0 before the first): each new grant, of any name, takes the next."""
    _freed: dict[str, trio.Event]
    """Names whose lease a task waits for: set and removed by the release, or removed by the last waiter to time out."""

    def __init__(self) -> None:
        self._held = {}
        self._tokens = 0
        self._freed = {}

    async def _acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        held = self._held.get(name)
        lease: Lease | None
        if held is not None and now < held.expires_at:
            lease = attrs.evolve(held, expires_at=now + ttl, ttl=ttl) if held.holder == holder else None
        else:
            self._tokens += 1
            lease = Lease(name=name, holder=holder, token=self._tokens, expires_at=now + ttl, ttl=ttl)
        if lease is not None:
            self._held[name] = lease
        await trio.lowlevel.cancel_shielded_checkpoint()
        return lease

    async def _acquire_free(self, name: str, holder: str, ttl: float) -> Lease | None:
        held = self._held.get(name)
        if held is not None and trio.current_time() < held.expires_at:
            await trio.lowlevel.checkpoint()
            return None
        return await self._acquire(name, holder, ttl)  # no checkpoint before it: nothing changes in between

    async def _renew(self, lease: Lease, ttl: float) -> Lease | None:
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        held = self._held.get(lease.name)
        renewed: Lease | None = None
        if held is not None and held.token == lease.token and now < held.expires_at:
            renewed = self._held[lease.name] = attrs.evolve(held, expires_at=now + ttl, ttl=ttl)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return renewed

    async def _release(self, lease: Lease) -> None:
        held = self._held.get(lease.name)
        if held is not None and held.token == lease.token:
            del self._held[lease.name]
            freed = self._freed.pop(lease.name, None)
            if freed is not None:
                freed.set()
        await trio.lowlevel.checkpoint()  # after the release: a cancelled caller has released all the same

    async def _latest(self, name: str) -> tuple[Lease | None, float]:
        await trio.lowlevel.checkpoint()  # read after it: what the caller gets is true when it resumes
        return self._held.get(name), trio.current_time()

    async def _wait_changed(self, name: str, remaining: float) -> None:
        freed = self._freed.get(name)
        if freed is None:
            freed = self._freed[name] = trio.Event()
        try:
            with trio.move_on_after(remaining):
                await freed.wait()
        finally:  # expired or cancelled rather than released: the last waiter drops the event
            if not freed.is_set() and freed.statistics().tasks_waiting == 0 and self._freed.get(name) is freed:
                del self._freed[name]


# -- hold ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Keeper:
    """Renews the lease of one `hold` block from a task of its own, and cancels the block when the lease is lost.

    Written by the renewing task only, read by the block's task once the
    renewing task has ended (or while it sleeps: both run in one trio thread).
    """

    table: LeaseTable
    lease: Lease
    """The latest record of the grant: the one acquired, then each renewal's (the token never changes)."""
    ttl: float
    every: float
    """Seconds between renewals (and between attempts after a failed one)."""
    scope: trio.CancelScope
    """The block's cancel scope. Its deadline is when the lease ends by trio's clock: the time just
    before the last successful acquire or renewal was sent, plus `ttl`; each renewal moves it on."""
    lost: LeaseLost | None = None
    """Set once a renewal raised `LeaseLost`; the block is then cancelled and nothing renews any more."""
    failure: OSError | None = None
    """The error of the latest renewal if it failed with an `OSError` (None after a success)."""

    async def run(self, sent: float) -> None:
        while True:
            await trio.sleep_until(sent + self.every)
            sent = trio.current_time()
            if sent >= self.scope.deadline:
                return  # too late: the lease has ended, and the block is being cancelled
            try:
                self.lease = await self.table.renew(self.lease, ttl=self.ttl)
            except LeaseLost as lost:
                self.lost = lost
                self.scope.cancel()
                return
            except OSError as error:  # the database or the network: try again, while the TTL lasts
                self.failure = error
                lease = _describe(self.lease)
                logger.warning("renewing %s failed; trying again in %.3g s: %s", lease, self.every, error)
                continue
            self.failure = None
            self.scope.deadline = sent + self.ttl

    def outcome(self) -> LeaseLost | None:
        """The `LeaseLost` to raise after the block ended normally or was cancelled by this keeper, if any."""
        if self.lost is not None:
            error = LeaseLost(f"{_describe(self.lease)} was lost while held; the block was cancelled: {self.lost}")
            error.__cause__ = self.lost
            return error
        if self.scope.cancel_called or trio.current_time() >= self.scope.deadline:
            block = "was cancelled" if self.scope.cancelled_caught else "ran past its end"
            last = "" if self.failure is None else f" (last renewal: {type(self.failure).__name__}: {self.failure})"
            error = LeaseLost(
                f"{_describe(self.lease)} was not renewed within its ttl of {self.ttl:g} s; the block {block}{last}"
            )
            error.__cause__ = self.failure
            return error
        return None


@asynccontextmanager
async def _hold(
    table: LeaseTable, name: str, holder: str, *, ttl: float, every: float, wait: bool
) -> AsyncGenerator[Lease]:
    """`LeaseTable.hold` (its arguments checked)."""
    while True:
        sent = trio.current_time()
        # A new grant only: acquire() would renew a grant this holder has already, and two
        # blocks would share one lease (the first to leave would release it under the other).
        lease = await table._acquire_free(name, holder, ttl)  # noqa: SLF001 - the table's own hook
        if lease is not None:
            break
        held = await table.current(name)
        if held is not None and held.holder == holder:
            raise ValueError(
                f"{holder!r} already holds lease {name!r} (token {held.token}); a hold() block needs a "
                "holder name of its own (add a task or process id to it)"
            )
        if not wait:
            raise trio.WouldBlock(f"lease {name!r} is held by another holder than {holder!r}")
        await table.wait_free(name)
    keeper = _Keeper(table, lease, ttl, every, trio.CancelScope(deadline=sent + ttl))
    try:
        escaped: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keeper.run, sent, name=f"hybrid lease keeper {name!r}")
                try:
                    with keeper.scope:
                        yield lease
                except BaseException as error:  # the block's own: handed back bare below, not in a group
                    escaped = error
                    raise
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Only the block raised (the keeper raises nothing but a bug): give it back
            # as the block raised it, as it would have left without this nursery.
            others = group.split(lambda exc: exc is escaped or isinstance(exc, trio.Cancelled))[1]
            if escaped is None or others is not None:
                raise
        if escaped is not None:
            raise escaped
        lost = keeper.outcome()
        if lost is not None:
            raise lost
    finally:
        await _release_at_exit(table, keeper.lease)


async def _release_at_exit(table: LeaseTable, lease: Lease) -> None:
    """Release the lease of a `hold` block, shielded, for at most its ttl (after which it has expired anyway)."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + lease.ttl):
        try:
            await table.release(lease)
        except OSError as error:
            logger.warning("releasing %s failed; it ends at its ttl: %s", _describe(lease), error)
