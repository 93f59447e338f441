"""store.leases(): leases in the store's database, shared across stores and processes, on the database's clock.

Every test taking ``journal_url`` runs on SQLite and on a real Postgres server.
Run as a program (``python -m tests.durable.test_leases URL HOLDER COUNT OUT``),
this module is the child process of the two-process test: it holds the lease
COUNT times and writes what it did to OUT.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from hybrid import Lease, LeaseLost
from hybrid.durable import DurableLeases, StoreError, open_store
from hybrid.durable._journal import Journal
from hybrid.durable._sql import SCHEMA_VERSION, Cursor
from hybrid.durable._store import Store
from tests.durable.gates import WriterGate

ROOT = Path(__file__).resolve().parents[2]


def journal_of(store: Store) -> Journal:
    return store._journal


# -- one store ------------------------------------------------------------------------------


async def test_a_free_name_is_granted_with_token_1_expiring_on_the_databases_clock(journal_url: str) -> None:
    """Token 1 at the first grant; expires_at is in seconds since the epoch on the database's clock (this host's)."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        assert isinstance(leases, DurableLeases)
        before = time.time()
        lease = await leases.acquire("job", "a", ttl=30)
        after = time.time()
        assert lease is not None
        assert (lease.name, lease.holder, lease.token, lease.ttl) == ("job", "a", 1, 30.0)
        assert before + 30 - 0.5 < lease.expires_at < after + 30 + 0.5
        assert await leases.current("job") == lease
        assert await store.leases().current("job") == lease  # every table of the store sees the same leases
        assert await leases.current("other") is None


async def test_another_holder_is_refused_and_the_holder_renews_by_acquiring_again(journal_url: str) -> None:
    """A held name returns None to others; its holder acquiring again keeps the token and moves the expiry."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        first = await leases.acquire("job", "a", ttl=30)
        assert await leases.acquire("job", "b", ttl=30) is None
        again = await leases.acquire("job", "a", ttl=60)
        assert first is not None and again is not None
        assert again.token == first.token
        assert again.expires_at > first.expires_at + 29
        assert await leases.current("job") == again


async def test_renew_keeps_the_token_and_a_released_lease_cannot_be_renewed(journal_url: str) -> None:
    """renew returns a later expiry with the same token; after release it raises LeaseLost."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await leases.acquire("job", "a", ttl=30)
        assert lease is not None
        renewed = await leases.renew(lease, ttl=60)
        assert (renewed.token, renewed.holder, renewed.ttl) == (lease.token, "a", 60.0)
        assert renewed.expires_at > lease.expires_at
        await leases.release(lease)
        with pytest.raises(LeaseLost, match=r"cannot renew lease 'job' of 'a' \(token 1\): it was released"):
            await leases.renew(renewed)
        assert await leases.current("job") is None


async def test_release_is_idempotent_and_a_stale_release_frees_nothing(journal_url: str) -> None:
    """After release the next grant has a larger token; releasing the old lease again leaves it be."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        old = await leases.acquire("job", "a", ttl=30)
        assert old is not None
        await leases.release(old)
        await leases.release(old)
        new = await leases.acquire("job", "b", ttl=30)
        assert new is not None and new.token == old.token + 1
        await leases.release(old)
        assert await leases.current("job") == new
        assert await leases.acquire("job", "c", ttl=30) is None
        with pytest.raises(LeaseLost, match="'b' holds the name now, under token 2"):
            await leases.renew(old)


async def test_an_expired_lease_is_granted_anew_with_a_larger_token(journal_url: str) -> None:
    """Past its ttl (wall time) a lease is not current; renewing it fails; another holder gets a larger token."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        old = await leases.acquire("job", "a", ttl=0.2)
        assert old is not None and await leases.is_current(old)
        await trio.sleep(0.3)
        assert await leases.current("job") is None
        assert not await leases.is_current(old)
        with pytest.raises(LeaseLost, match="it expired .* s ago without being renewed"):
            await leases.renew(old)
        again = await leases.acquire("job", "a", ttl=30)  # the same holder after expiry: a new grant
        assert again is not None and again.token == old.token + 1
        await trio.sleep(0)
        with pytest.raises(LeaseLost, match=r"lease 'job' of 'a' \(token 1\) is not current: 'a' holds the name now"):
            await leases.check(old)
        await leases.check(again)


async def test_hold_keeps_the_lease_past_its_ttl_and_releases_it_at_the_end(journal_url: str) -> None:
    """A body 1.5 ttls long keeps the lease (same token); at its end the name is free."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        # A ttl that a loaded machine's commits (an fsync each) cannot eat up: the renewals are real.
        async with leases.hold("job", "a", ttl=1) as lease:
            for _ in range(3):
                await trio.sleep(0.5)
                assert await leases.acquire("job", "b", ttl=1) is None
            current = await leases.current("job")
            assert current is not None and current.token == lease.token
            assert current.expires_at > lease.expires_at
        assert await leases.current("job") is None


async def test_a_waiting_hold_in_the_same_store_is_woken_by_the_release(journal_url: str) -> None:
    """A release through the store wakes its waiters at once, without waiting for the poll."""
    async with open_store(journal_url) as store:
        leases = store.leases(poll_interval=60)
        first = await leases.acquire("job", "a", ttl=60)
        assert first is not None
        got: list[Lease] = []

        async def second() -> None:
            async with leases.hold("job", "b", ttl=5) as lease:
                got.append(lease)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(second)
                await trio.sleep(0.1)
                assert got == []
                await leases.release(first)
        assert [lease.token for lease in got] == [first.token + 1]
        assert store._lease_freed == {}


async def test_a_waiting_hold_gets_an_expired_lease_at_its_expiry(journal_url: str) -> None:
    """A holder that stopped renewing: the waiter wakes at the expiry, not at the next poll."""
    async with open_store(journal_url) as store:
        leases = store.leases(poll_interval=60)
        stale = await leases.acquire("job", "crashed", ttl=0.3)
        assert stale is not None
        with trio.fail_after(10):
            start = trio.current_time()
            async with leases.hold("job", "b", ttl=5) as lease:
                assert 0.2 < trio.current_time() - start < 5
                assert lease.token == stale.token + 1


async def test_a_cancelled_acquire_leaves_no_grant_behind(journal_url: str) -> None:
    """Cancelled while its batch waits: the grant still commits, and is then released for the caller."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal_of(store), nursery)
            with trio.move_on_after(0.05) as scope:
                await leases.acquire("job", "a", ttl=30)
            assert scope.cancelled_caught
            gate.open()
        with trio.fail_after(10):  # the grant commits with its batch, then the release follows
            while await leases.current("job") is not None:  # noqa: ASYNC110 - polling the database
                await trio.sleep(0.01)
        lease = await leases.acquire("job", "b", ttl=30)
        assert lease is not None and lease.token == 2  # token 1 was granted, then released


async def test_a_grant_abandoned_as_the_store_closes_ends_at_its_ttl(journal_url: str) -> None:
    """A cancelled acquire whose batch commits while the store closes: its release cannot be queued any more,
    so the grant stands until its ttl (and closing does not fail)."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal_of(store), nursery)
            with trio.move_on_after(0.05):
                await leases.acquire("job", "a", ttl=0.5)
            nursery.cancel_scope.cancel()  # the gate's task: the writer goes on, the store closes
    async with open_store(journal_url) as store:
        lease = await store.leases().current("job")
        assert lease is not None and lease.holder == "a"
        await trio.sleep(0.6)
        assert await store.leases().current("job") is None


async def test_a_cancelled_acquire_that_renews_keeps_the_lease(journal_url: str) -> None:
    """A cancelled acquire by the holder itself was a renewal: the lease it had stays held."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await leases.acquire("job", "a", ttl=30)
        assert lease is not None
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal_of(store), nursery)
            with trio.move_on_after(0.05):
                await leases.acquire("job", "a", ttl=30)
            gate.open()
        current = await leases.current("job")
        assert current is not None and current.token == lease.token


async def test_a_cancelled_release_still_releases(journal_url: str) -> None:
    """Cancelling release while its batch waits does not take it back."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await leases.acquire("job", "a", ttl=30)
        assert lease is not None
        gate = WriterGate()
        async with trio.open_nursery() as nursery:
            await gate.close(journal_of(store), nursery)
            with trio.move_on_after(0.05) as scope:
                await leases.release(lease)
            assert scope.cancelled_caught
            gate.open()
        assert await leases.current("job") is None


# -- two stores, two processes ------------------------------------------------------------------


async def test_two_stores_on_one_database_never_both_hold_a_lease(journal_url: str) -> None:
    """Tasks of two stores (as two processes would) contend for one lease: the holds never overlap, tokens grow."""
    spans: list[tuple[float, float, int, str]] = []
    active: list[str] = []

    async def worker(leases: DurableLeases, holder: str) -> None:
        for _ in range(4):
            async with leases.hold("job", holder, ttl=2) as lease:
                active.append(holder)
                assert active == [holder]
                start = time.monotonic()
                await trio.sleep(0.01)
                spans.append((start, time.monotonic(), lease.token, holder))
                active.remove(holder)

    async with open_store(journal_url) as one, open_store(journal_url) as two:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index, store in enumerate((one, two, one, two)):
                    nursery.start_soon(worker, store.leases(poll_interval=0.02), f"h{index}")
    spans.sort(key=lambda span: span[2])
    assert [token for _, _, token, _ in spans] == list(range(1, 17))
    for before, after in itertools.pairwise(spans):
        assert before[1] <= after[0]


async def test_a_grant_in_one_store_fences_off_the_other(journal_url: str) -> None:
    """A lease granted in one store is seen (and refused) in the other; its expiry and release too."""
    async with open_store(journal_url) as one, open_store(journal_url) as two:
        a, b = one.leases(), two.leases(poll_interval=0.05)
        lease = await a.acquire("job", "a", ttl=0.3)
        assert lease is not None
        assert await b.acquire("job", "b", ttl=1) is None
        assert await b.is_current(lease)
        with trio.fail_after(10):
            async with b.hold("job", "b", ttl=1) as taken:  # got at the expiry, by polling
                assert taken.token == lease.token + 1
                assert not await a.is_current(lease)
                with pytest.raises(LeaseLost, match="'b' holds the name now"):
                    await a.renew(lease)
            assert await a.current("job") is None  # b's release, seen from a


def run_child(url: str, holder: str, count: int, out: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.durable.test_leases", url, holder, str(count), str(out)]
    return subprocess.Popen(command, cwd=ROOT)


def test_two_processes_competing_through_sqlite_never_overlap(tmp_path: Path) -> None:
    """Two OS processes hold one lease in turns through a SQLite file: their holds never overlap in time."""
    url = f"sqlite:///{tmp_path / 'leases.db'}?synchronous=normal"
    outs = [tmp_path / "one.json", tmp_path / "two.json"]
    children = [run_child(url, f"p{index}", 15, out) for index, out in enumerate(outs)]
    for child in children:
        assert child.wait(timeout=120) == 0
    spans = sorted((span for out in outs for span in json.loads(out.read_text())), key=lambda span: span[2])
    assert [token for _, _, token, _ in spans] == list(range(1, 31))
    assert {holder for *_, holder in spans} == {"p0", "p1"}
    for before, after in itertools.pairwise(spans):
        assert before[1] <= after[0], (before, after)


async def _child(url: str, holder: str, count: int, out: Path) -> None:
    spans: list[tuple[float, float, int, str]] = []
    async with open_store(url) as store:
        leases = store.leases(poll_interval=0.005)
        for _ in range(count):
            async with leases.hold("shared", holder, ttl=5) as lease:
                start = time.time()
                await trio.sleep(0.005)
                spans.append((start, time.time(), lease.token, holder))
            await trio.sleep(0.002)  # let the other process in now and then
    await trio.Path(out).write_text(json.dumps(spans))


# -- failures, closing, schema -------------------------------------------------------------------


async def test_every_operation_of_a_closed_store_raises_store_error(journal_url: str) -> None:
    """Once open_store's block has ended, leases() and every operation of its tables raise StoreError."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        lease = await leases.acquire("job", "a", ttl=30)
        assert lease is not None
    with pytest.raises(StoreError, match="the store is closed"):
        store.leases()
    for call in (
        lambda: leases.acquire("job", "a", ttl=1),
        lambda: leases.renew(lease),
        lambda: leases.release(lease),
        lambda: leases.current("job"),
        lambda: leases.is_current(lease),
        lambda: leases.check(lease),
        lambda: leases.wait_free("job"),
    ):
        with pytest.raises(StoreError, match="the store is closed"):
            await call()
    with pytest.raises(StoreError, match="the store is closed"):
        async with leases.hold("job", "a", ttl=1):
            pytest.fail("entered")  # pragma: no cover


async def test_a_failing_database_raises_store_error(journal_url: str) -> None:
    """A database error in a lease operation is the store's StoreError, naming the operation."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        await journal_of(store)._call(lambda cursor: cursor.execute("DROP TABLE hybrid_leases", ()))
        with pytest.raises(StoreError, match="acquire of lease 'job' was not committed"):
            await leases.acquire("job", "a", ttl=1)
        with pytest.raises(StoreError, match="read of lease 'job'"):
            await leases.current("job")


async def test_hold_loses_the_lease_at_its_ttl_when_renewals_fail_with_store_error(
    journal_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewals failing (the table is gone): logged, tried again, then LeaseLost at the ttl, from the StoreError."""
    async with open_store(journal_url) as store:
        leases = store.leases()
        start = trio.current_time()
        with pytest.raises(LeaseLost, match="not renewed within its ttl of 0.3 s") as caught:  # noqa: PT012
            async with leases.hold("job", "a", ttl=0.3):
                await journal_of(store)._call(lambda cursor: cursor.execute("DROP TABLE hybrid_leases", ()))
                await trio.sleep(10)
        assert trio.current_time() - start < 2
        assert isinstance(caught.value.__cause__, StoreError)
        assert any("renewing lease 'job'" in r.getMessage() for r in caplog.records if r.name == "hybrid.lease")
        assert any("releasing lease 'job'" in r.getMessage() for r in caplog.records if r.name == "hybrid.lease")


async def test_a_schema_1_database_gets_the_leases_table_when_opened(journal_url: str) -> None:
    """A database of schema version 1 (no leases) is migrated at open: leases work, the version is the new one."""
    async with open_store(journal_url) as store:
        journal = journal_of(store)
        await journal._call(lambda cursor: cursor.execute("DROP TABLE hybrid_leases", ()))
        await journal._call(lambda c: c.execute("UPDATE hybrid_meta SET value = '1' WHERE name = 'schema_version'", ()))
    async with open_store(journal_url) as store:
        lease = await store.leases().acquire("job", "a", ttl=30)
        assert lease is not None and lease.token == 1

        def version(cursor: Cursor) -> object:
            cursor.execute("SELECT value FROM hybrid_meta WHERE name = 'schema_version'", ())
            return cursor.fetchone()[0]

        assert await journal_of(store)._call(version, writes=False) == str(SCHEMA_VERSION) == "2"


async def test_bad_arguments_are_refused_before_the_database_is_asked(journal_url: str) -> None:
    """poll_interval, ttl, name and holder are checked at the call, as for hybrid.Leases."""
    async with open_store(journal_url) as store:
        with pytest.raises(ValueError, match="poll_interval must be a finite number of seconds > 0"):
            store.leases(poll_interval=0)
        with pytest.raises(TypeError, match="poll_interval must be"):
            store.leases(poll_interval="1")  # type: ignore[arg-type]
        leases = store.leases()
        with pytest.raises(ValueError, match="ttl must be a finite number of seconds > 0"):
            await leases.acquire("job", "a", ttl=float("nan"))
        with pytest.raises(ValueError, match="name must be a non-empty str"):
            await leases.acquire("", "a", ttl=1)
        with pytest.raises(TypeError, match="holder must be a non-empty str"):
            leases.hold("job", 7, ttl=1)  # type: ignore[arg-type]
        assert journal_of(store)._statistics().transactions == 0
    with pytest.raises(TypeError, match="no public constructor"):
        DurableLeases()


if __name__ == "__main__":
    trio.run(_child, sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
