"""Adversarial tests of leases kept in the durable store (``store.leases()``) and the lease machinery they use.

Two stores on one database stand in for two processes. The database side
expires leases on wall-clock time, so these tests use short real ttls with
generous margins and assert outcomes, never timings. Tests taking
``journal_url`` run on SQLite and on a real Postgres server.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from hybrid import Lease, LeaseLost, Leases, LeaseTable
from hybrid.durable import DurableLeases, StoreError, open_store
from hybrid.durable._journal import Journal
from hybrid.durable._sql import Cursor
from hybrid.durable._store import Store
from tests.durable.gates import WriterGate
from tests.durable.postgres import PostgresServer


def journal_of(store: Store) -> Journal:
    return store._journal


def transactions(store: Store) -> int:
    return journal_of(store)._statistics().transactions


async def acquired(leases: LeaseTable, name: str, holder: str, *, ttl: float = 30) -> Lease:
    lease = await leases.acquire(name, holder, ttl=ttl)
    assert lease is not None, f"{holder!r} could not acquire {name!r}"
    return lease


async def eventually_free(leases: LeaseTable, name: str) -> None:
    """Poll the database until `name` has no current lease (an abandoned grant is released after its batch)."""
    with trio.fail_after(10):
        while await leases.current(name) is not None:  # noqa: ASYNC110 - polling the database
            await trio.sleep(0.01)


async def sleep_past(leases: DurableLeases, lease: Lease) -> None:
    """Sleep until the database's clock is past `lease.expires_at` (checked on the database, not assumed)."""
    with trio.fail_after(10):
        while await leases.is_current(lease):  # noqa: ASYNC110 - polling the database
            await trio.sleep(0.02)


def sqlite_url(tmp_path: Path, *, busy_timeout_ms: int | None = None) -> tuple[str, Path]:
    path = tmp_path / "leases.db"
    query = "" if busy_timeout_ms is None else f"?busy_timeout={busy_timeout_ms}"
    return f"sqlite:///{path}{query}", path


def lock_sqlite(path: Path) -> sqlite3.Connection:
    """Another connection takes the SQLite file's write lock (and keeps it until rolled back)."""
    connection = sqlite3.connect(path, timeout=10, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    return connection


# -- two holders racing ------------------------------------------------------------------------------


async def test_many_holders_of_two_stores_racing_for_a_free_name_exactly_one_wins(journal_url: str) -> None:
    """Six holders (three per store) acquire one free name at once, many rounds: one grant each round."""
    async with open_store(journal_url) as one, open_store(journal_url) as two:
        tables = (one.leases(), two.leases())
        previous: Lease | None = None
        for round_ in range(8):
            got: list[Lease | None] = []

            async def contend(table: DurableLeases, holder: str, got: list[Lease | None] = got) -> None:
                got.append(await table.acquire("job", holder, ttl=30))

            async with trio.open_nursery() as nursery:
                for index in range(6):
                    nursery.start_soon(contend, tables[index % 2], f"h{round_}-{index}")
            winners = [lease for lease in got if lease is not None]
            assert len(got) == 6
            assert len(winners) == 1, winners
            (winner,) = winners
            assert await tables[0].current("job") == winner == await tables[1].current("job")
            if previous is not None:
                assert winner.token == previous.token + 1
            previous = winner
            await tables[round_ % 2].release(winner)  # released through either store


async def test_a_renewal_racing_the_expiry_and_another_holders_acquire_never_both_succeed(journal_url: str) -> None:
    """At the expiry boundary, the holder's renewal and a rival's acquire (each for 30 s) are never both granted."""
    async with open_store(journal_url) as one, open_store(journal_url) as two:
        mine, theirs = one.leases(), two.leases()
        for round_ in range(12):
            name = f"edge-{round_}"
            lease = await acquired(mine, name, "a", ttl=0.05)
            await trio.sleep(0.03 + 0.003 * round_)  # around the expiry, on either side
            renewed: list[Lease] = []
            rival: list[Lease | None] = []

            async def renew(lease: Lease = lease, renewed: list[Lease] = renewed) -> None:
                with contextlib.suppress(LeaseLost):
                    renewed.append(await mine.renew(lease, ttl=30))

            async def take(name: str = name, rival: list[Lease | None] = rival) -> None:
                rival.append(await theirs.acquire(name, "b", ttl=30))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(renew)
                nursery.start_soon(take)
            won = rival[0] is not None
            assert not (renewed and won), (renewed, rival)
            current = await mine.current(name)
            if renewed:
                assert current is not None and current.token == lease.token == renewed[0].token
                assert current.holder == "a"
            elif won:
                assert current is not None and current.token == lease.token + 1 and current.holder == "b"
                with pytest.raises(LeaseLost, match="'b' holds the name now"):
                    await mine.renew(lease)


async def test_a_holder_whose_lease_expired_learns_it_at_every_step_and_the_new_token_is_larger(
    journal_url: str,
) -> None:
    """The old holder still thinks it holds: renew, check, acquire all tell it otherwise; its release frees nothing."""
    async with open_store(journal_url) as one, open_store(journal_url) as two:
        old_side, new_side = one.leases(), two.leases()
        old = await acquired(old_side, "job", "a", ttl=0.1)
        await sleep_past(old_side, old)
        new = await acquired(new_side, "job", "b")
        assert new.token > old.token
        with pytest.raises(LeaseLost, match="'b' holds the name now, under token 2"):
            await old_side.renew(old)
        with pytest.raises(LeaseLost, match="'b' holds the name now"):
            await old_side.check(old)
        assert not await old_side.is_current(old)
        assert await old_side.acquire("job", "a", ttl=30) is None  # the same holder string gets nothing
        await old_side.release(old)  # stale: frees nothing
        await old_side.release(old)
        assert await new_side.current("job") == new
        assert await old_side.is_current(new)
        renewed = await new_side.renew(new)
        assert renewed.token == new.token


async def test_tokens_strictly_increase_across_expiries_releases_and_regrants_through_two_stores(
    journal_url: str,
) -> None:
    """Every new grant of a name has a larger token than all before it; renewals (acquire again) keep it."""
    async with open_store(journal_url) as one, open_store(journal_url) as two:
        tables = (one.leases(), two.leases())
        grants: list[int] = []
        for step in range(6):
            table = tables[step % 2]
            other = tables[(step + 1) % 2]
            holder = "a" if step % 3 else "b"
            lease = await acquired(table, "job", holder, ttl=0.1 if step % 2 else 30)
            again = await acquired(table, "job", holder, ttl=lease.ttl)  # the holder acquiring again: a renewal
            assert again.token == lease.token
            grants.append(lease.token)
            if step % 2:
                await sleep_past(other, again)  # ended by expiry, never released
            else:
                await other.release(lease)  # ended by a release through the other store
            await other.release(lease)  # stale and double releases change nothing
        assert grants == list(range(1, 7))
        assert await tables[0].current("job") is None
        latest = await acquired(tables[1], "job", "z")
        assert latest.token == 7


async def test_names_differing_in_case_space_or_normalisation_are_distinct_leases(journal_url: str) -> None:
    """The name is compared byte for byte on both databases: each variant is its own lease, token 1."""
    names = ["job", "Job", "job ", " job", "caf\u00e9", "cafe\u0301"]
    async with open_store(journal_url) as store:
        leases = store.leases()
        for index, name in enumerate(names):
            lease = await acquired(leases, name, f"h{index}")
            assert lease.token == 1
        for index, name in enumerate(names):
            current = await leases.current(name)
            assert current is not None and current.holder == f"h{index}"


# -- release, renew, check on stale or forged leases ---------------------------------------------------


async def test_release_after_expiry_frees_the_name_and_a_renewal_after_release_is_lost(journal_url: str) -> None:
    """An expired, never-taken lease can still be released; after that it cannot be renewed nor checked."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await acquired(leases, "job", "a", ttl=0.1)
        await sleep_past(leases, lease)
        with pytest.raises(LeaseLost, match="it expired .* ago without being renewed"):
            await leases.renew(lease)
        await leases.release(lease)
        await leases.release(lease)
        with pytest.raises(LeaseLost, match="it was released"):
            await leases.renew(lease)
        with pytest.raises(LeaseLost, match="is not current: it was released"):
            await leases.check(lease)
        again = await acquired(leases, "job", "a")
        assert again.token == lease.token + 1
        with pytest.raises(LeaseLost, match="'a' holds the name now, under token 2"):  # same holder, older token
            await leases.renew(lease)


async def test_forged_tokens_neither_renew_nor_release_nor_pass_a_check(journal_url: str) -> None:
    """A token the table never granted (too large, zero, negative, another name's) acts on nothing."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        real = await acquired(leases, "job", "a")
        for token in (real.token + 1, 0, -1, 2**62):
            forged = attrs.evolve(real, token=token)
            assert not await leases.is_current(forged)
            with pytest.raises(LeaseLost):
                await leases.renew(forged)
            with pytest.raises(LeaseLost):
                await leases.check(forged)
            await leases.release(forged)
            assert await leases.current("job") == real
        elsewhere = attrs.evolve(real, name="other")  # token 1 of a name never granted
        assert not await leases.is_current(elsewhere)
        with pytest.raises(LeaseLost):
            await leases.renew(elsewhere)
        await leases.release(elsewhere)
        assert await leases.current("job") == real
        assert await leases.current("other") is None


# -- cancellation -------------------------------------------------------------------------------------


async def test_acquire_cancelled_at_every_moment_leaves_the_name_held_by_its_caller_or_by_nobody(
    journal_url: str,
) -> None:
    """Sweep the cancellation over the whole acquire (before, in the queue, in the writer, after): either the
    caller got the lease (and it is current) or the name ends up free: never held by a holder that does not know."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        got = 0
        delays = [step * 0.0003 for step in range(40)] + [10.0]  # the last one always gets through
        for step, delay in enumerate(delays):
            name = f"job-{step}"
            result: Lease | None = None
            with trio.move_on_after(delay) as scope:
                result = await leases.acquire(name, "a", ttl=30)
            if result is not None:
                got += 1
                assert not scope.cancelled_caught
                assert await leases.current(name) == result
                await leases.release(result)
            else:
                assert scope.cancelled_caught
                await eventually_free(leases, name)
            rival = await acquired(leases, name, "b")
            assert rival.token in (1, 2)
        assert got > 0  # the sweep reached past the end of the call


async def test_an_already_cancelled_acquire_asks_the_database_nothing(journal_url: str) -> None:
    async with open_store(journal_url) as store:
        leases = store.leases()
        await leases.current("job")
        before = transactions(store)
        with trio.CancelScope() as scope:
            scope.cancel()
            await leases.acquire("job", "a", ttl=30)
            pytest.fail("not cancelled")  # pragma: no cover
        assert transactions(store) == before
        assert await leases.current("job") is None


async def test_a_release_in_an_already_cancelled_scope_still_releases(journal_url: str) -> None:
    """release takes effect even if the caller is cancelled during the call, including before it starts."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await acquired(leases, "job", "a")
        with trio.CancelScope() as scope:
            scope.cancel()
            await leases.release(lease)
        assert scope.cancelled_caught
        await eventually_free(leases, "job")


async def test_a_grant_abandoned_by_a_cancelled_acquire_goes_to_a_waiter_of_the_other_store(journal_url: str) -> None:
    """A cancelled acquire's grant is released; a hold() of another store waiting for the name gets it (token 2)."""
    async with open_store(journal_url) as one, open_store(journal_url) as two:
        gate = WriterGate()
        got: list[Lease] = []

        async def wait_for_it() -> None:
            async with two.leases(poll_interval=0.05).hold("job", "b", ttl=5) as lease:
                got.append(lease)

        first = await acquired(one.leases(), "job", "x")
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_it)
                await trio.sleep(0.1)
                await gate.close(journal_of(one), nursery)
                # One batch of store one: x's release, then a's grant (which a stops waiting for):
                # store two never sees the name free in between.
                nursery.start_soon(one.leases().release, first)
                await trio.sleep(0.01)
                with trio.move_on_after(0.05) as scope:
                    await one.leases().acquire("job", "a", ttl=30)
                assert scope.cancelled_caught
                gate.open()
        assert [lease.token for lease in got] == [3]


async def test_a_waiter_of_the_same_store_is_woken_when_an_abandoned_grant_is_released(journal_url: str) -> None:
    """DurableLeases.wait_free: 'a release made through the same store wakes it at once'; the release of an
    abandoned grant is made by the store itself, yet the waiter sleeps for its whole poll interval (60 s here)."""
    async with open_store(journal_url) as store:
        leases = store.leases(poll_interval=60)
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal_of(store), nursery)
            with trio.move_on_after(0.05) as scope:
                await leases.acquire("job", "crashed", ttl=60)
            assert scope.cancelled_caught
            # The waiter's first look is queued behind the grant: it sees the name held, then waits.
            done = trio.Event()

            async def waiter() -> None:
                await leases.wait_free("job")
                done.set()

            nursery.start_soon(waiter)
            await trio.sleep(0.05)
            gate.open()
            await eventually_free(leases, "job")  # the abandoned grant was released through this store
            with trio.move_on_after(1.5):  # far less than the poll interval
                await done.wait()
            nursery.cancel_scope.cancel()
        assert done.is_set()


async def test_a_hold_cancelled_at_every_moment_of_its_entry_leaves_no_grant(journal_url: str) -> None:
    """Sweep the cancellation over hold()'s entry (its look, its acquire, the start of the block): whether the
    block was entered or not, the name is free afterwards, and the next grant's token shows every grant made."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        entered = 0
        delays = [step * 0.0003 for step in range(40)] + [10.0]  # the last one always gets in
        for step, delay in enumerate(delays):
            name = f"job-{step}"
            with trio.move_on_after(delay):
                async with leases.hold(name, "a", ttl=30):
                    entered += 1
                    await trio.sleep(0.01)
            await eventually_free(leases, name)
            assert (await acquired(leases, name, "b")).token in (1, 2)
        assert entered > 0  # the sweep reached into the block


async def test_a_hold_cancelled_from_outside_releases_before_the_block_is_left(journal_url: str) -> None:
    """Cancelled in its body, hold releases (shielded) before the cancellation leaves the block."""
    async with open_store(journal_url) as one, open_store(journal_url) as two:
        leases = one.leases()
        with trio.move_on_after(0.2) as scope:
            async with leases.hold("job", "a", ttl=30, renew_every=0.05):
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert await two.leases().current("job") is None  # released before the block was left, seen elsewhere


async def test_a_cancelled_renewal_keeps_the_grant_and_its_token(journal_url: str) -> None:
    """A renewal cancelled in the writer's queue may or may not commit; either way the same grant stays current."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await acquired(leases, "job", "a")
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal_of(store), nursery)
            with trio.move_on_after(0.05) as scope:
                await leases.renew(lease, ttl=60)
            assert scope.cancelled_caught
            gate.open()
        current = await leases.current("job")
        assert current is not None and current.token == lease.token
        assert (await leases.renew(lease)).token == lease.token


# -- hold under races --------------------------------------------------------------------------------


async def test_a_hold_block_whose_lease_is_taken_over_is_cancelled_with_lease_lost(journal_url: str) -> None:
    """The lease of a running block is released (by its own token) and taken by another store: LeaseLost."""
    async with open_store(journal_url) as one, open_store(journal_url) as two:
        leases, rival = one.leases(), two.leases()
        with trio.fail_after(10), pytest.raises(LeaseLost, match="was lost while held") as caught:  # noqa: PT012
            async with leases.hold("job", "a", ttl=5, renew_every=0.05) as lease:
                await leases.release(lease)
                taken = await acquired(rival, "job", "b")
                assert taken.token == lease.token + 1
                await trio.sleep(10)
        # The keeper's renewal ran after the release, before or after b's grant:
        assert "'b' holds the name now" in str(caught.value) or "it was released" in str(caught.value)
        current = await rival.current("job")
        assert current is not None and current.holder == "b"  # the exit's release was stale: b keeps it


async def test_hold_without_wait_raises_would_block_while_the_other_store_holds_and_leaves_nothing(
    journal_url: str,
) -> None:
    async with open_store(journal_url) as one, open_store(journal_url) as two:
        held = await acquired(one.leases(), "job", "a")
        with pytest.raises(trio.WouldBlock):
            async with two.leases().hold("job", "b", ttl=5, wait=False):
                pytest.fail("entered")  # pragma: no cover
        assert await two.leases().current("job") == held


async def test_two_hold_blocks_of_one_holder_started_together_do_not_both_enter(journal_url: str) -> None:
    """hold() raises ValueError when 'holder already holds the lease': it should, or make the second block wait,
    rather than let both blocks run on one grant (the first to leave then releases it under the other)."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        inside: list[int] = []
        overlapped = False
        refused = 0

        async def block() -> None:
            nonlocal overlapped, refused
            try:
                async with leases.hold("job", "worker", ttl=5) as lease:
                    inside.append(lease.token)
                    overlapped = overlapped or len(inside) > 1
                    await trio.sleep(0.2)
                    inside.remove(lease.token)
            except ValueError:
                refused += 1

        gate = WriterGate()  # both blocks' first looks go in one batch
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await gate.close(journal_of(store), nursery)
                nursery.start_soon(block)
                nursery.start_soon(block)
                await trio.sleep(0.05)
                gate.open()
        assert not overlapped, "two blocks of one holder held the same lease at once"
        assert refused == 1


async def test_in_process_two_hold_blocks_of_one_holder_started_together_do_not_both_enter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """hybrid.Leases reads after its checkpoint and grants before its next one: the second block is refused."""
    leases = Leases()
    inside = 0
    most = 0
    refused = 0

    async def block() -> None:
        nonlocal inside, most, refused
        try:
            async with leases.hold("job", "worker", ttl=5):
                inside += 1
                most = max(most, inside)
                await trio.sleep(1)
                inside -= 1
        except ValueError:
            refused += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(block)
        nursery.start_soon(block)
    assert (most, refused) == (1, 1)


# -- a closed store, a failing database ---------------------------------------------------------------


async def test_a_store_closed_under_a_hold_block_ends_it_with_lease_lost(journal_url: str) -> None:
    """The block outlives its store: renewals fail with StoreError, the block gets LeaseLost at its ttl,
    and the grant left in the database ends at its ttl (a later grant gets the next token)."""
    lost: list[LeaseLost] = []

    async def holder(leases: DurableLeases, task_status: trio.TaskStatus[Lease]) -> None:
        try:
            async with leases.hold("job", "a", ttl=1, renew_every=0.1) as lease:
                task_status.started(lease)
                await trio.sleep(10)
        except LeaseLost as error:
            lost.append(error)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, open_store(journal_url) as store:
            lease = await nursery.start(holder, store.leases())
            await trio.sleep(0.15)  # at least one renewal
    assert len(lost) == 1
    assert isinstance(lost[0].__cause__, StoreError)
    assert "the store is closed" in str(lost[0].__cause__)
    async with open_store(journal_url) as store:
        leases = store.leases()
        await eventually_free(leases, "job")
        assert (await acquired(leases, "job", "b")).token == lease.token + 1


async def test_a_locked_sqlite_file_makes_renew_and_release_raise_store_error_never_succeed(tmp_path: Path) -> None:
    """Another connection holds the write lock past the busy timeout: renew and release raise StoreError,
    a rival's acquire too; once the lock goes, the same lease renews (it was never lost)."""
    url, path = sqlite_url(tmp_path, busy_timeout_ms=50)
    async with open_store(url) as store:
        leases = store.leases()
        lease = await acquired(leases, "job", "a")
        locker = lock_sqlite(path)
        try:
            with pytest.raises(StoreError, match=r"renewal of lease 'job' was not committed.*locked"):
                await leases.renew(lease, ttl=60)
            with pytest.raises(StoreError, match=r"release of lease 'job' was not committed.*locked"):
                await leases.release(lease)
            with pytest.raises(StoreError, match="locked"):
                await leases.acquire("job", "b", ttl=30)
            assert await leases.is_current(lease)  # reads still work (WAL)
        finally:
            locker.rollback()
            locker.close()
        renewed = await leases.renew(lease, ttl=60)
        assert renewed.token == lease.token and renewed.expires_at > lease.expires_at


async def test_a_hold_whose_renewals_hit_a_locked_sqlite_file_gets_lease_lost_at_its_ttl(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder must learn it (may have) lost the lease: its block is cancelled, LeaseLost from StoreError."""
    url, path = sqlite_url(tmp_path, busy_timeout_ms=50)
    caplog.set_level(logging.WARNING, logger="hybrid.lease")
    async with open_store(url) as store, open_store(url) as other:
        leases = store.leases()
        locker: sqlite3.Connection | None = None
        held: list[Lease] = []
        try:
            with trio.fail_after(10), pytest.raises(LeaseLost, match="not renewed within its ttl") as caught:  # noqa: PT012
                async with leases.hold("job", "a", ttl=1, renew_every=0.1) as lease:
                    held.append(lease)
                    locker = lock_sqlite(path)
                    await trio.sleep(10)
        finally:
            if locker is not None:
                locker.rollback()
                locker.close()
        assert isinstance(caught.value.__cause__, StoreError)
        messages = [record.getMessage() for record in caplog.records]
        assert any("renewing lease 'job'" in message for message in messages)
        assert any("releasing lease 'job'" in message for message in messages)  # locked too: left to expire
        rival = other.leases()
        await eventually_free(rival, "job")
        assert (await acquired(rival, "job", "b")).token == held[0].token + 1


# -- ttl and argument edges --------------------------------------------------------------------------

BAD_TTLS: list[tuple[object, type[Exception]]] = [
    (0, ValueError),
    (0.0, ValueError),
    (-1, ValueError),
    (-0.0, ValueError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    (float("-inf"), ValueError),
    (True, TypeError),
    ("1", TypeError),
    (None, TypeError),
]


@pytest.mark.parametrize(("ttl", "error"), BAD_TTLS)
async def test_a_bad_ttl_is_refused_at_every_entry_point_before_the_database(
    tmp_path: Path, ttl: object, error: type[Exception]
) -> None:
    url, _ = sqlite_url(tmp_path)
    async with open_store(url) as store:
        leases = store.leases()
        lease = await acquired(leases, "job", "a")
        before = transactions(store)
        with pytest.raises(error, match="ttl must be"):
            await leases.acquire("other", "a", ttl=ttl)  # type: ignore[arg-type]
        if ttl is not None:  # renew(ttl=None) means the lease's own ttl
            with pytest.raises(error, match="ttl must be"):
                await leases.renew(lease, ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(error, match="ttl must be"):
            leases.hold("other", "a", ttl=ttl)  # type: ignore[arg-type]
        if ttl is not None:  # renew_every=None means ttl / 3
            with pytest.raises(error, match="renew_every must be"):
                leases.hold("other", "a", ttl=10, renew_every=ttl)  # type: ignore[arg-type]
        assert transactions(store) == before
        assert await leases.current("job") == lease


async def test_renew_every_not_shorter_than_ttl_is_refused() -> None:
    leases = Leases()
    for every in (10, 10.0, 11, 1e300):
        with pytest.raises(ValueError, match="renew_every must be shorter than ttl"):
            leases.hold("job", "a", ttl=10, renew_every=every)


async def test_an_int_ttl_too_large_for_a_float_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ttl must be"):
        await Leases().acquire("job", "a", ttl=10**400)


@pytest.mark.parametrize("ttl", [1e300, sys.float_info.max])
async def test_a_huge_ttl_works_end_to_end(journal_url: str, ttl: float) -> None:
    """A finite ttl far beyond any clock: granted, current, renewed, held and released like any other."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await acquired(leases, "job", "a", ttl=ttl)
        assert math.isfinite(lease.expires_at) and lease.ttl == ttl
        assert await leases.current("job") == lease
        assert await leases.acquire("job", "b", ttl=1) is None
        renewed = await leases.renew(lease)
        assert renewed.token == lease.token
        await leases.release(renewed)
        assert await leases.current("job") is None
        async with leases.hold("job", "c", ttl=ttl) as held:
            assert held.token == lease.token + 1
            assert await leases.is_current(held)
        assert await leases.current("job") is None


async def test_a_tiny_ttl_grant_never_blocks_anyone_and_tokens_still_grow(journal_url: str) -> None:
    """A ttl below the clock's resolution is accepted (> 0): the grant ends at once, the next one is larger."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        tiny = await leases.acquire("job", "a", ttl=1e-9)
        assert tiny is not None and tiny.token == 1
        await sleep_past(leases, tiny)
        with pytest.raises(LeaseLost):
            await leases.renew(tiny)
        after = await acquired(leases, "job", "b")
        assert after.token == 2


async def test_renewing_a_lease_record_with_a_negative_ttl_is_refused_not_silently_expired(journal_url: str) -> None:
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await acquired(leases, "job", "a")
        with pytest.raises(ValueError, match="ttl"):
            await leases.renew(attrs.evolve(lease, ttl=-5.0))
        assert await leases.is_current(lease)


@pytest.mark.parametrize("ttl", [float("nan"), float("inf")])
async def test_renewing_a_lease_record_with_a_non_finite_ttl_is_refused_at_the_call(
    journal_url: str, ttl: float
) -> None:
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await acquired(leases, "job", "a")
        before = transactions(store)
        with pytest.raises(ValueError, match="ttl"):
            await leases.renew(attrs.evolve(lease, ttl=ttl))
        assert transactions(store) == before


# -- names the database cannot take ------------------------------------------------------------------


async def test_a_name_that_is_not_encodable_is_refused_at_the_call(journal_url: str) -> None:
    async with open_store(journal_url) as store:
        leases = store.leases()
        with pytest.raises((ValueError, TypeError)):
            await leases.acquire("job\ud800", "a", ttl=30)
        with pytest.raises((ValueError, TypeError)):
            await leases.acquire("job", "a\udfff", ttl=30)


async def test_an_unencodable_name_does_not_fail_other_callers_in_the_same_batch(journal_url: str) -> None:
    async with open_store(journal_url) as store:
        leases = store.leases()
        gate = WriterGate()
        outcomes: dict[str, object] = {}

        async def call(label: str, fn: Callable[[], Awaitable[object]]) -> None:
            try:
                outcomes[label] = await fn()
            except (StoreError, ValueError, TypeError) as error:
                outcomes[label] = error

        async with trio.open_nursery() as nursery:
            await gate.close(journal_of(store), nursery)
            nursery.start_soon(call, "good", lambda: leases.acquire("good", "a", ttl=30))
            await trio.sleep(0.02)
            nursery.start_soon(call, "bad", lambda: leases.acquire("bad\ud800", "a", ttl=30))
            await trio.sleep(0.02)
            gate.open()
        assert isinstance(outcomes["good"], Lease), outcomes


async def check_nul_name(url: str) -> None:
    async with open_store(url) as store:
        leases = store.leases()
        try:
            lease = await leases.acquire("a\x00b", "h", ttl=30)
        except ValueError:
            return  # refused at the call: fine too
        assert lease is not None
        assert await leases.current("a\x00b") == lease
        assert await leases.current("a\x00c") is None
        assert await leases.current("a") is None


async def test_a_name_with_a_nul_character_is_its_own_lease_on_sqlite(tmp_path: Path) -> None:
    await check_nul_name(sqlite_url(tmp_path)[0])


async def test_a_name_with_a_nul_character_works_or_is_refused_at_the_call_on_postgres(
    postgres_server: PostgresServer,
) -> None:
    await check_nul_name(postgres_server.new_schema_url())


# -- the fencing recipe of the DurableLeases docstring ---------------------------------------------


async def test_the_documented_fencing_update_refuses_a_stale_token(journal_url: str) -> None:
    """The docstring's ``UPDATE ... WHERE (SELECT token FROM hybrid_leases WHERE name = ? AND holder <> ''
    AND expires > <now>) = ?`` writes for the current token only: not an expired, released or older one."""
    async with open_store(journal_url) as store:
        journal = journal_of(store)
        dialect = journal._backend.statements.dialect
        sql = dialect.sql
        await journal._call(lambda cursor: cursor.execute("CREATE TABLE fenced (id INTEGER PRIMARY KEY, v TEXT)", ()))
        await journal._call(lambda cursor: cursor.execute("INSERT INTO fenced (id, v) VALUES (1, '')", ()))
        update = sql(
            "UPDATE fenced SET v = ? WHERE id = 1 AND (SELECT token FROM hybrid_leases WHERE name = ?"
            " AND holder <> '' AND expires > " + dialect.now + ") = ?"
        )

        async def write(value: str, lease: Lease) -> int:
            def run(cursor: Cursor) -> int:
                cursor.execute(update, (value, lease.name, lease.token))
                return cursor.rowcount

            return await journal._call(run)

        leases = store.leases()
        old = await acquired(leases, "job", "a", ttl=0.1)
        assert await write("old", old) == 1
        await sleep_past(leases, old)
        assert await write("old, expired", old) == 0
        new = await acquired(leases, "job", "b")
        assert await write("new", new) == 1
        assert await write("old, stale", old) == 0
        await leases.release(new)
        assert await write("new, released", new) == 0


async def test_a_nan_ttl_record_cannot_wedge_a_name_on_postgres(postgres_server: PostgresServer) -> None:
    async with open_store(postgres_server.new_schema_url()) as store:
        leases = store.leases(poll_interval=0.05)
        lease = await acquired(leases, "job", "a", ttl=0.2)
        with contextlib.suppress(ValueError, StoreError):
            await leases.renew(attrs.evolve(lease, ttl=float("nan")))
        with trio.fail_after(5):
            await leases.wait_free("job")
            assert await leases.current("job") is None
            assert await leases.acquire("job", "b", ttl=30) is not None
