"""Adversarial tests of the durable store's operations: cancellation anywhere, bad arguments, closing, races.

Each test states the promise it attacks (see ``docs/guides/durable.md``). Seven of
them found a bug each (a resume into a closed nursery, a closed store seen by a
supervised child, arguments the driver cannot bind, NaN times, keys too long to
index, an error whose str() raises), fixed since; all are kept as regression tests.
Database I/O runs in the journal's writer thread, so these tests use real time
(short waits), never ``autojump_clock``, and never assert on timing. Tests taking ``journal_url`` run on SQLite and on a
real Postgres server.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Address, Agent, Next, Restart, StopReason, Supervisor
from hybrid.durable import (
    Durability,
    Fenced,
    KeyCheckpointer,
    KeyInUse,
    Status,
    Store,
    StoreError,
    open_store,
)
from hybrid.durable._journal import Journal, open_journal
from tests.durable.gates import WriterGate
from tests.durable.postgres import PostgresServer

# -- what the agents do --------------------------------------------------------------------


@attrs.define(eq=False)
class Track:
    """What the test agents did, and where they wait; reset for each test."""

    entries: list[str] = attrs.Factory(list[str])
    """Each state entered (and "begin"), in order."""
    hold: dict[str, trio.Event] = attrs.Factory(dict[str, trio.Event])
    """States that wait for their event when entered."""
    held: list[str] = attrs.Factory(list[str])
    """States an agent waits in now (or waited in)."""
    fail: dict[str, BaseException] = attrs.Factory(dict[str, BaseException])
    """States that raise this, once, when entered."""
    hook: Callable[[str], Awaitable[None]] | None = None
    """Awaited at each state entry."""

    def reset(self) -> None:
        """Start afresh (in place: the agents reach it by its module-level name)."""
        fresh = Track()
        for field in attrs.fields(Track):
            setattr(self, field.name, getattr(fresh, field.name))

    async def enter(self, state: str) -> None:
        """Record a state entry; raise or wait if told to."""
        self.entries.append(state)
        if self.hook is not None:
            await self.hook(state)
        error = self.fail.pop(state, None)
        if error is not None:
            raise error
        event = self.hold.get(state)
        if event is not None:
            self.held.append(state)
            await event.wait()

    def count(self, state: str) -> int:
        """How many times `state` was entered."""
        return self.entries.count(state)


TRACK = Track()


@pytest.fixture(autouse=True)
def track() -> Track:
    """A fresh `TRACK` for each test."""
    TRACK.reset()
    return TRACK


@attrs.define
class Walk(Agent[str]):
    """begin -> first(1) -> second -> done("n:trail")."""

    n: int = 0
    trail: list[str] = attrs.Factory(list[str])

    def begin(self) -> Next[Self]:
        TRACK.entries.append("begin")
        return Next.do_async(self.first, 1)

    async def first(self, amount: int) -> Next[Self]:
        await TRACK.enter("first")
        self.n += amount
        self.trail.append("first")
        return Next.do_async(self.second)

    async def second(self) -> Next[Self]:
        await TRACK.enter("second")
        self.trail.append("second")
        return Next.done(f"{self.n}:{','.join(self.trail)}")


WALKED = "1:first,second"


@attrs.define
class Instant(Agent[str]):
    """Done in begin(): a spawn record, then its ending."""

    label: str = "instant"

    def begin(self) -> Next[Self]:
        return Next.done(self.label)


@attrs.define
class Counter(Agent[int]):
    """step(1) -> ... -> step(last) -> done(last)."""

    last: int = 2

    def begin(self) -> Next[Self]:
        return Next.do_async(self.step, 1)

    async def step(self, i: int) -> Next[Self]:
        await TRACK.enter(f"step{i}")
        if i < self.last:
            return Next.do_async(self.step, i + 1)
        return Next.done(i)


class UnprintableError(Exception):
    """An error whose str() raises (a broken __str__ of a third-party error)."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class Abort(BaseException):
    """A custom BaseException (not an Exception): not the agent's failure, an escape."""


@attrs.frozen
class Poke:
    """Event: add one."""


@attrs.frozen
class GoWork:
    """Event: the handler sends the agent into its `work` state with ctx.do_next."""


@attrs.frozen
class Finish:
    """Event: the handler ends the agent with ctx.do_next(Next.done(count))."""


@attrs.frozen
class Halt:
    """Event: the handler ends the agent with ctx.stop()."""


@attrs.frozen
class Explode:
    """Event: the handler raises `Abort`."""


@attrs.define
class Desk(Agent[int]):
    """An actor whose handlers steer it: ctx.do_next into a state, to done, or ctx.stop()."""

    count: int = 0

    def begin(self) -> Next[Self]:
        return Next.events()

    @hybrid.on_event
    async def poke(self, event: Poke) -> None:
        self.count += 1

    @hybrid.on_event
    async def go_work(self, event: GoWork) -> None:
        self.count += 10
        self.ctx.do_next(Next.do_async(self.work, 5))

    @hybrid.on_event
    async def finish(self, event: Finish) -> None:
        self.ctx.do_next(Next.done(self.count))

    @hybrid.on_event
    async def halt(self, event: Halt) -> None:
        self.ctx.stop()

    @hybrid.on_event
    async def explode(self, event: Explode) -> None:
        self.count += 1000
        raise Abort

    async def work(self, amount: int) -> Next[Self]:
        await TRACK.enter("work")
        self.count += amount
        return Next.events()


# -- helpers --------------------------------------------------------------------------------


def journal_of(store: Store) -> Journal:
    """The store's journal (private: the tests reach under the store)."""
    return store._journal


async def until(condition: Callable[[], bool]) -> None:
    """Wait (polling, real time) until `condition()` holds; fail after 10 s."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - a generic poll of what other tasks and threads fill
            await trio.sleep(0.002)


async def held_in(state: str) -> None:
    """Wait until an agent waits in `state`."""
    await until(lambda: state in TRACK.held)


async def crash_in(store: Store, agent: Agent[Any], key: str, state: str) -> None:
    """Run `agent` under `key` until it waits in `state`, then cancel it: the crash of its process."""
    TRACK.hold[state] = trio.Event()
    async with trio.open_nursery() as nursery:
        await store.spawn(nursery, agent, key=key)
        await held_in(state)
        nursery.cancel_scope.cancel()
    del TRACK.hold[state]
    TRACK.held.clear()


async def catching(outcomes: list[object], run: Callable[[], Awaitable[object]]) -> None:
    """Append what `run()` returns, or the Exception it raises, to `outcomes`."""
    try:
        outcomes.append(await run())
    except Exception as error:
        outcomes.append(error)


async def yield_once(state: str) -> None:
    """A state hook with one schedule point: a place inside the state for a cancellation to land."""
    await trio.sleep(0)


class StepCanceller(trio.abc.Instrument):
    """Cancels `scope` just before the `at`-th step of the watched tasks (counted from 0).

    The tasks watched are the one given, and every task spawned while the
    instrument is installed (a spawned agent's), so that the cancellation lands
    at each await of the store's code and the agent's in turn.
    """

    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope, at: int) -> None:
        self.watched = {task}
        self.scope = scope
        self.at = at
        self.steps = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.watched.add(task)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task in self.watched:
            if self.steps == self.at:
                self.scope.cancel()
            self.steps += 1


class Installed:
    """Installs an instrument for a `with` block."""

    def __init__(self, instrument: trio.abc.Instrument) -> None:
        self.instrument = instrument

    def __enter__(self) -> None:
        trio.lowlevel.add_instrument(self.instrument)

    def __exit__(self, *exc: object) -> None:
        trio.lowlevel.remove_instrument(self.instrument)


async def key_state(url: str, key: str) -> tuple[str, int] | None:
    """A fresh store's view of `key`: ("running", seq), (status, -1) once ended, or None if unknown."""
    async with open_journal(url) as journal:
        checkpoint = await journal.checkpoint(key)
        if checkpoint is not None:
            return ("running", checkpoint.seq)
        ending = await journal.ending(key)
        return None if ending is None else (ending.status.value, -1)


# -- cancellation at every step ---------------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_store_run_cancelled_before_each_of_its_steps_leaves_the_key_released_and_finishable(
    sqlite_url: str, durability: str
) -> None:
    """Cancelled at every scheduling step of store.run (store, runtime and agent code): the key is never held.

    Afterwards no KeyInUse is left behind, and a new run of the key ends with the
    agent's output; the key is either finished (the run got that far) or resumable.
    """
    TRACK.hook = yield_once
    async with open_store(sqlite_url, durability=durability) as store:
        probe = StepCanceller(trio.lowlevel.current_task(), trio.CancelScope(), -1)
        with Installed(probe):
            assert await store.run(Walk(), key="probe") == WALKED
        total = probe.steps
        assert total >= 5  # the first step, then one wake-up per journal call: claim, two saves, ending
        cancelled = 0
        for at in range(total + 1):
            key = f"k{at}"
            with trio.CancelScope() as scope, Installed(StepCanceller(trio.lowlevel.current_task(), scope, at)):
                await store.run(Walk(), key=key)
            cancelled += scope.cancelled_caught
            assert store.live_keys() == [], at
            assert await store.run(Walk(), key=key) == WALKED, at
            ending = await store.outcome(key)
            assert ending is not None
            assert ending.status is Status.DONE, at
        assert cancelled >= total - 3  # the last wake-ups (the ending's) need no checkpoint after them


async def test_store_spawn_cancelled_at_each_step_of_the_spawner_and_the_agent_never_strands_the_key(
    sqlite_url: str,
) -> None:
    """The nursery cancelled at each step of the spawning task or the agent's task: the key is released each time."""
    TRACK.hook = yield_once
    cancelled = 0
    async with open_store(sqlite_url) as store:
        probe = StepCanceller(trio.lowlevel.current_task(), trio.CancelScope(), -1)
        async with trio.open_nursery() as nursery:
            with Installed(probe):
                address = await store.spawn(nursery, Walk(), key="probe")
                assert await address.join() == WALKED
        total = probe.steps
        for at in range(total + 1):
            key = f"k{at}"
            async with trio.open_nursery() as nursery:
                with Installed(StepCanceller(trio.lowlevel.current_task(), nursery.cancel_scope, at)):
                    address = await store.spawn(nursery, Walk(), key=key)
                    await address.join()
            cancelled += nursery.cancel_scope.cancelled_caught
            assert store.live_keys() == [], at
        assert cancelled >= total - 3
        entries = TRACK.count("begin")
    async with open_store(sqlite_url, agents=[Walk]) as store, trio.open_nursery() as nursery:
        addresses = await store.resume(nursery)
        assert [await address.join() for address in addresses] == [WALKED] * len(addresses)
        for at in range(total + 1):
            assert await store.run(Walk(), key=f"k{at}") == WALKED
        assert store.live_keys() == []
    assert TRACK.count("begin") >= entries


async def test_store_resume_cancelled_at_each_step_leaves_every_key_released_and_resumable(sqlite_url: str) -> None:
    """resume() (and the agents it started) cancelled at each step: no key stays held; the next resume finishes all."""
    async with open_store(sqlite_url) as store:
        for key in ("a", "b", "c"):
            await crash_in(store, Walk(), key, "second")
    async with open_store(sqlite_url, agents=[Walk]) as store:
        at = 0
        while True:
            async with trio.open_nursery() as nursery:
                canceller = StepCanceller(trio.lowlevel.current_task(), nursery.cancel_scope, at)
                with Installed(canceller):
                    await store.resume(nursery)
            assert store.live_keys() == [], at
            if canceller.steps <= at:  # ran to the end without reaching the step: every key finished
                break
            at += 1
        assert at >= 4
        for key in ("a", "b", "c"):
            ending = await store.outcome(key)
            assert ending is not None
            assert ending.status is Status.DONE
        assert await store.run(Walk(), key="a") == WALKED


async def test_a_state_that_cancels_its_own_run_leaves_the_key_unfinished_and_free(sqlite_url: str) -> None:
    """The agent's state cancels the scope around store.run: the key is unfinished, released, resumed from there."""
    async with open_store(sqlite_url) as store:
        with trio.CancelScope() as scope:

            async def cancel(state: str) -> None:
                if state == "second":
                    scope.cancel()
                    await trio.lowlevel.checkpoint()  # the state is cancelled here, inside it

            TRACK.hook = cancel
            await store.run(Walk(), key="k")
        assert scope.cancelled_caught
        assert store.live_keys() == []
        assert await store.outcome("k") is None
        TRACK.hook = None
        assert await store.run(Walk(), key="k") == WALKED
    assert TRACK.entries == ["begin", "first", "second", "second"]


# -- resume -------------------------------------------------------------------------------------


async def test_resume_into_a_closed_nursery_raises_and_releases_every_key(journal_url: str) -> None:
    """store.spawn releases the key when hybrid.spawn refuses the nursery; resume must too."""
    async with open_store(journal_url) as store:
        await crash_in(store, Walk(), "a", "first")
        await crash_in(store, Walk(), "b", "first")
    async with open_store(journal_url, agents=[Walk]) as store:
        async with trio.open_nursery() as closed:
            pass
        with pytest.raises(RuntimeError, match="closed"):
            await store.resume(closed)
        assert store.live_keys() == []  # fails: ['a', 'b'] stay held, and run/spawn of them raise KeyInUse
        assert await store.run(Walk(), key="a") == WALKED


async def test_two_concurrent_resumes_bring_back_each_key_exactly_once(journal_url: str) -> None:
    """Two resume() calls of one store at once: every unfinished key is started by exactly one of them."""
    keys = [f"k{i}" for i in range(6)]
    async with open_store(journal_url) as store:
        for key in keys:
            await crash_in(store, Walk(), key, "second")
    TRACK.entries.clear()
    got: list[list[Address[Any]]] = []
    async with open_store(journal_url, agents=[Walk]) as store, trio.open_nursery() as nursery:

        async def resume() -> None:
            got.append(await store.resume(nursery))

        async with trio.open_nursery() as both:
            both.start_soon(resume)
            both.start_soon(resume)
        addresses = got[0] + got[1]
        assert len(addresses) == len(keys)
        assert [await address.join() for address in addresses] == [WALKED] * len(keys)
        assert await store.resume(nursery) == []
        for key in keys:
            assert [event.kind for event in await store.events(key)].count("resumed") == 1
    assert TRACK.entries == ["second"] * len(keys)


async def test_resume_racing_a_run_of_the_same_key_runs_it_once(journal_url: str) -> None:
    """store.run(key) and store.resume() started together: the key runs once; the loser skips it or gets KeyInUse."""
    async with open_store(journal_url) as store:
        await crash_in(store, Walk(), "k", "second")
    TRACK.entries.clear()
    outcomes: list[object] = []
    async with open_store(journal_url, agents=[Walk]) as store, trio.open_nursery() as nursery:

        async def resume() -> list[Any]:
            return [await address.join() for address in await store.resume(nursery)]

        async with trio.open_nursery() as both:
            both.start_soon(catching, outcomes, lambda: store.run(Walk(), key="k"))
            both.start_soon(catching, outcomes, resume)
        assert store.live_keys() == []
    assert TRACK.entries == ["second"]
    assert sorted(map(repr, outcomes)) in (
        sorted([repr(WALKED), repr([])]),
        sorted([repr(KeyInUse("key 'k' has a live run in this store")), repr([WALKED])]),
    )


async def test_a_second_store_on_the_same_file_that_resumes_a_live_key_fences_the_first_off(sqlite_url: str) -> None:
    """Two stores of one process on one SQLite file: the second's resume() takes the key; the first run gets Fenced."""
    outcomes: list[object] = []
    TRACK.hold["first"] = trio.Event()
    async with (
        open_store(sqlite_url) as first,
        open_store(sqlite_url, agents=[Walk]) as second,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(catching, outcomes, lambda: first.run(Walk(), key="k"))
        await held_in("first")
        assert first.live_keys() == ["k"]
        assert second.live_keys() == []
        [address] = await second.resume(nursery)  # resumes the key: the same state again, next epoch
        await until(lambda: TRACK.held.count("first") == 2)
        TRACK.hold["first"].set()
        assert await address.join() == WALKED
        await until(lambda: bool(outcomes))
        assert first.live_keys() == []
        assert second.live_keys() == []
        events = [(event.epoch, event.kind) for event in await second.events("k")]
    [stale] = outcomes
    assert isinstance(stale, Fenced)
    assert events[-1] == (2, "done")
    assert [kind for _, kind in events].count("done") == 1
    assert await key_state(sqlite_url, "k") == ("done", -1)


# -- the database fails under write-behind ---------------------------------------------------------


async def test_async_durability_a_failed_last_write_fails_the_run_instead_of_recording_its_ending(
    tmp_path: Path,
) -> None:
    """Write-behind on a locked SQLite file: the last state's checkpoint fails; the run raises StoreError, not done.

    The key stays unfinished (no ending recorded even once the lock is gone), and
    the next run goes on from the last checkpoint that committed.
    """
    path = tmp_path / "store.db"
    url = f"sqlite:///{path}?busy_timeout=50"
    outcomes: list[object] = []
    TRACK.hold["step1"] = trio.Event()
    TRACK.hold["step2"] = trio.Event()
    async with open_store(url, durability="async") as store, trio.open_nursery() as nursery:
        nursery.start_soon(catching, outcomes, lambda: store.run(Counter(last=2), key="c"))
        await held_in("step1")
        await until(lambda: journal_of(store)._statistics().queued == 0)
        async with open_journal(url) as other:
            await until_committed(other, "c", 1)
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            failed = journal_of(store)._statistics().failed_batches
            TRACK.hold["step1"].set()
            await held_in("step2")  # started at once: its checkpoint is in flight, and fails
            await until(lambda: journal_of(store)._statistics().failed_batches > failed)
        finally:
            locker.close()
        TRACK.hold["step2"].set()
        await until(lambda: bool(outcomes))
        [error] = outcomes
        assert isinstance(error, StoreError)
        assert "database is locked" in str(error)
        assert await store.outcome("c") is None
        assert store.live_keys() == []
    assert await key_state(url, "c") == ("running", 1)
    del TRACK.hold["step1"], TRACK.hold["step2"]
    async with open_store(url) as store:
        assert await store.run(Counter(last=2), key="c") == 2
    assert TRACK.entries == ["step1", "step2", "step1", "step2"]


async def until_committed(journal: Journal, key: str, seq: int) -> None:
    """Wait until `key`'s checkpoint in the database is at `seq` or later; fail after 10 s."""
    with trio.fail_after(10):
        while True:
            checkpoint = await journal.checkpoint(key)
            if checkpoint is not None and checkpoint.seq >= seq:
                return
            await trio.sleep(0.005)


async def test_async_durability_records_the_ending_before_run_returns(journal_url: str) -> None:
    """Write-behind still records the ending (and the checkpoints before it) before store.run returns."""
    async with open_store(journal_url, durability=Durability.ASYNC) as store:
        assert await store.run(Counter(last=4), key="c") == 4
        assert await key_state(journal_url, "c") == ("done", -1)
        assert [event.kind for event in await store.events("c")] == ["spawned", *["async"] * 4, "done"]


# -- closing the store --------------------------------------------------------------------------


async def test_leaving_open_store_commits_a_write_behind_still_queued(sqlite_url: str) -> None:
    """An agent's write-behind queued as open_store's block ends is committed; the agent then fails with StoreError."""
    outcomes: list[object] = []
    TRACK.hold["second"] = trio.Event()
    async with trio.open_nursery() as nursery:
        async with open_store(sqlite_url, durability="async") as store:
            nursery.start_soon(catching, outcomes, lambda: store.run(Walk(), key="k"))
            await held_in("second")  # its checkpoint may still be queued
        assert await key_state(sqlite_url, "k") == ("running", 2)
        TRACK.hold["second"].set()
    [error] = outcomes
    assert isinstance(error, StoreError)
    assert "the store is closed" in str(error)
    assert await key_state(sqlite_url, "k") == ("running", 2)  # nothing written after the store closed
    del TRACK.hold["second"]
    async with open_store(sqlite_url) as store:
        assert await store.run(Walk(), key="k") == WALKED
    assert TRACK.entries == ["begin", "first", "second", "second"]


async def test_an_agent_whose_store_closes_while_its_checkpoint_waits_for_the_writer_gets_that_commit(
    sqlite_url: str,
) -> None:
    """A sync checkpoint queued behind a held writer as the store closes is committed, not dropped.

    The agent then enters the state it names (saved: that is allowed) and fails at
    its ending with StoreError; nothing after the close is written.
    """
    outcomes: list[object] = []
    TRACK.hold["first"] = trio.Event()
    gate = WriterGate()

    async def open_once_closed(store: Store) -> None:
        await until(lambda: store._closed)
        gate.open()

    async with trio.open_nursery() as nursery, open_store(sqlite_url) as store:
        nursery.start_soon(catching, outcomes, lambda: store.run(Walk(), key="k"))
        await held_in("first")
        await gate.close(journal_of(store), nursery)
        TRACK.hold["first"].set()
        await trio.testing.wait_all_tasks_blocked()  # its checkpoint of "second" waits for the writer
        nursery.start_soon(open_once_closed, store)
    [error] = outcomes
    assert isinstance(error, StoreError)
    assert "the store is closed" in str(error)
    assert TRACK.entries == ["begin", "first", "second"]
    assert await key_state(sqlite_url, "k") == ("running", 2)


class Boss(Supervisor[None]):
    """Supervises one durable child under `checkpointer`; records its endings."""

    max_restarts = 1

    def __init__(self, checkpointer: KeyCheckpointer, endings: list[StopReason]) -> None:
        self.checkpointer = checkpointer
        self.endings = endings

    def begin(self) -> Next[Self]:
        self.ctx.spawn(Walk, restart=Restart.TEMPORARY, checkpointer=self.checkpointer, name="walker")
        return Next.events()

    async def on_child_ended(self, address: Address[Any], reason: StopReason) -> None:
        self.endings.append(reason)


async def test_a_supervised_child_that_fails_after_its_store_closed_fails_with_store_error(sqlite_url: str) -> None:
    """The agent's failure is noted in the log with journal.note, which skips the closed-store check.

    Every other write of a closed store raises StoreError ("the store is closed");
    this one raises trio.ClosedResourceError from the journal, and the child's own
    error is lost.
    """
    endings: list[StopReason] = []
    release = trio.Event()

    async def fail_when_released(state: str) -> None:
        TRACK.held.append(state)
        await release.wait()
        raise ValueError("the agent's own failure")

    TRACK.hook = fail_when_released
    async with trio.open_nursery() as nursery:
        async with open_store(sqlite_url) as store:
            boss = hybrid.spawn(nursery, Boss(store.checkpointer("k"), endings))
            await held_in("first")
        release.set()  # the store closed; the child's state now fails
        await until(lambda: bool(endings))
        boss.interrupt()
    [reason] = endings
    assert isinstance(reason.error, StoreError)  # fails: trio.ClosedResourceError('the journal is closed')


# -- arguments the database cannot take ------------------------------------------------------------


@pytest.mark.parametrize("limit", [2**70, math.nan, 1.5], ids=["huge", "nan", "fraction"])
async def test_a_bad_events_limit_is_refused_at_the_call_and_fails_no_other_write(sqlite_url: str, limit: Any) -> None:
    """events(limit=2**70 / nan / 1.5) is read in the batch of other agents' checkpoints.

    It should raise TypeError/ValueError at the call (as limit=-1 does). Instead the
    driver fails inside the writer (OverflowError logged as a bug in the writer, or
    "datatype mismatch"), the whole batch rolls back, and an agent whose checkpoint
    shared the batch fails with StoreError.
    """
    outcomes: list[object] = []
    reads: list[object] = []
    TRACK.hold["first"] = trio.Event()
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        nursery.start_soon(catching, outcomes, lambda: store.run(Walk(), key="k"))
        await held_in("first")
        gate = WriterGate()
        await gate.close(journal_of(store), nursery)
        TRACK.hold["first"].set()  # its checkpoint of "second" queues behind the held writer
        nursery.start_soon(catching, reads, lambda: store.events(limit=limit))
        await trio.testing.wait_all_tasks_blocked()
        gate.open()
        await until(lambda: bool(outcomes) and bool(reads))
    assert outcomes == [WALKED]  # fails: StoreError "... failed (batch of 2)": the bad read took the agent down
    [read] = reads
    assert isinstance(read, (TypeError, ValueError)), read


async def test_a_keep_events_too_large_for_the_database_is_refused_at_the_call(sqlite_url: str) -> None:
    """prune(keep_events=huge) should keep everything or raise ValueError at the call, not fail in the writer."""
    async with open_store(sqlite_url) as store:
        assert await store.run(Instant(), key="k") == "instant"
        with pytest.raises(ValueError, match="keep_events"):
            await store.prune(keep_events=2**70)  # raises StoreError: "unexpected error in the journal's writer"
        assert len(await store.events("k")) == 2


@pytest.mark.parametrize("option", ["older_than", "finished_before"])
async def test_prune_refuses_a_nan_time_instead_of_deleting_by_backend_whim(journal_url: str, option: str) -> None:
    """NaN is no time: SQLite binds it as NULL (deletes nothing), Postgres sorts it above every time (deletes all)."""
    async with open_store(journal_url) as store:
        assert await store.run(Instant(), key="k") == "instant"
        options: dict[str, float] = {option: math.nan}
        with pytest.raises(ValueError, match=option):
            await store.prune(older_than=options.get("older_than"), finished_before=options.get("finished_before"))
        assert len(await store.events("k")) == 2
        assert await store.outcome("k") is not None


async def test_a_key_too_long_for_the_postgres_index_fails_its_caller_alone(postgres_server: PostgresServer) -> None:
    """_check_key refuses keys no database stores, so that a bad one fails its caller alone; a long key slips by.

    On Postgres a key whose index entry exceeds the btree limit (about 2.7 kB after
    compression) fails its claim in the writer, rolling back the whole batch: an
    agent whose checkpoint shared it fails with StoreError. (SQLite takes the key.)
    """
    url = postgres_server.new_schema_url()
    long_key = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(3000))  # 9 kB, incompressible
    outcomes: list[object] = []
    claims: list[object] = []
    TRACK.hold["first"] = trio.Event()
    async with open_store(url) as store, trio.open_nursery() as nursery:
        nursery.start_soon(catching, outcomes, lambda: store.run(Walk(), key="k"))
        await held_in("first")
        gate = WriterGate()
        await gate.close(journal_of(store), nursery)
        TRACK.hold["first"].set()
        nursery.start_soon(catching, claims, lambda: store.run(Instant(), key=long_key))
        await trio.testing.wait_all_tasks_blocked()
        gate.open()
        await until(lambda: bool(outcomes) and bool(claims))
    assert outcomes == [WALKED]  # fails: StoreError, "index row size ... exceeds btree ... maximum"


async def test_events_edge_arguments_answer_as_documented(journal_url: str) -> None:
    """limit=0 is empty, a negative limit a ValueError, an unknown key empty, since=±inf none or all; oldest first."""
    async with open_store(journal_url) as store:
        assert await store.run(Walk(), key="a") == WALKED
        assert await store.run(Instant(), key="b") == "instant"
        everything = await store.events()
        assert len(everything) == 6
        assert await store.events(limit=0) == []
        assert await store.events("a", limit=0) == []
        with pytest.raises(ValueError, match="limit must be None or an int from 0"):
            await store.events(limit=-1)
        assert await store.events("no such key") == []
        assert await store.events("no such key", since=0, limit=5) == []
        assert await store.events(since=math.inf) == []
        assert await store.events(since=-math.inf) == everything
        assert await store.events(limit=2**62) == everything
        assert await store.events(since=everything[-1].time + 3600) == []
        assert await store.events(since=0, limit=3) == everything[:3]
        assert [event.seq for event in await store.events("a")] == [0, 1, 2, 3]
        assert [event.time for event in everything] == sorted(event.time for event in everything)
        with pytest.raises(ValueError, match="keep_events must be None or an int from 0"):
            await store.prune(keep_events=-1)
        with pytest.raises(ValueError, match="since must be a time in seconds since the epoch, not NaN"):
            await store.events(since=math.nan)
        with pytest.raises(TypeError, match="since must be None or a time in seconds since the epoch"):
            await store.events(since="yesterday")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Store.resume needs a trio nursery"):
            await store.resume("not a nursery")  # type: ignore[arg-type]
        assert await store.events() == everything


# -- how failures are recorded ----------------------------------------------------------------------


async def test_a_failure_whose_str_raises_is_still_recorded_as_failed(sqlite_url: str) -> None:
    """store.run of an agent failing with an error whose __str__ raises.

    It should raise that error and record the key FAILED (with some text, as
    traceback does: "<exception str() failed>"). Instead _error_text's f-string
    raises RuntimeError inside ended(): the run raises that RuntimeError, and the
    key stays unfinished, so the next run runs the failing state again.
    """
    TRACK.fail["second"] = UnprintableError()
    async with open_store(sqlite_url) as store:
        with pytest.raises(UnprintableError):
            await store.run(Walk(), key="k")
        assert store.live_keys() == []
        ending = await store.outcome("k")
        assert ending is not None
        assert ending.status is Status.FAILED
        assert (ending.error or "").startswith("UnprintableError")


async def test_a_huge_failure_text_is_recorded_whole(journal_url: str) -> None:
    """A 2 MB error message is recorded as it is, and read back whole by outcome() and events()."""
    text = "x" * 2_000_000
    TRACK.fail["first"] = ValueError(text)
    async with open_store(journal_url) as store:
        with pytest.raises(ValueError, match="^x+$"):
            await store.run(Walk(), key="k")
        ending = await store.outcome("k")
        assert ending is not None
        assert ending.error == f"ValueError: {text}"
        assert (await store.events("k"))[-1].detail == ending.error


async def test_a_custom_base_exception_in_a_state_leaves_the_key_unfinished_and_free(journal_url: str) -> None:
    """A BaseException subclass from a state escapes store.run unchanged; the key resumes from that state."""
    TRACK.fail["second"] = Abort()
    async with open_store(journal_url) as store:
        with pytest.raises(Abort):
            await store.run(Walk(), key="k")
        assert store.live_keys() == []
        assert await store.outcome("k") is None
        assert await key_state(journal_url, "k") == ("running", 2)
        assert await store.run(Walk(), key="k") == WALKED
    assert TRACK.entries == ["begin", "first", "second", "second"]


async def test_a_custom_base_exception_from_an_actor_handler_keeps_the_last_saved_fields(journal_url: str) -> None:
    """A handler raising a BaseException mid-change: the key stays unfinished with the fields saved before it."""
    async with open_store(journal_url) as store:
        with pytest.RaisesGroup(Abort):
            async with trio.open_nursery() as nursery:
                address = await store.spawn(nursery, Desk(), key="d")
                address.send(Poke())
                address.send(Poke())
                address.send(Explode())
        assert store.live_keys() == []
        assert await store.outcome("d") is None
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        address = await store.spawn(nursery, Desk(), key="d")
        address.send(Finish())
        assert await address.join() == 2


# -- actor mode steered from handlers -----------------------------------------------------------------


async def test_a_state_chosen_by_a_handler_with_do_next_is_saved_before_it_starts(journal_url: str) -> None:
    """ctx.do_next(Next.do_async(work)) from a handler: the checkpoint naming work commits before work runs."""
    seen: list[tuple[str, int, str]] = []

    async def look(state: str) -> None:
        async with open_journal(journal_url) as journal:
            checkpoint = await journal.checkpoint("d")
            assert checkpoint is not None
            seen.append((state, checkpoint.seq, checkpoint.state))

    TRACK.hook = look
    TRACK.hold["work"] = trio.Event()
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        address = await store.spawn(nursery, Desk(), key="d")
        address.send(Poke())
        address.send(GoWork())
        await held_in("work")
        nursery.cancel_scope.cancel()  # a crash inside work
    assert seen == [("work", 4, "work")]
    del TRACK.hold["work"]
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        address = await store.spawn(nursery, Desk(), key="d")  # goes on in work(5), with count 11
        address.send(Finish())
        assert await address.join() == 16
    assert TRACK.entries == ["work", "work"]


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_ctx_stop_and_done_from_handlers_are_recorded_as_the_ending(journal_url: str, durability: str) -> None:
    """A handler's ctx.stop() records STOPPED, its ctx.do_next(Next.done(x)) records DONE x, before join returns."""
    async with open_store(journal_url, durability=durability) as store, trio.open_nursery() as nursery:
        stopped = await store.spawn(nursery, Desk(), key="stopped")
        stopped.send(Poke())
        stopped.send(Halt())
        assert await stopped.join() is None
        assert await key_state(journal_url, "stopped") == ("stopped", -1)
        done = await store.spawn(nursery, Desk(), key="done")
        for _ in range(3):
            done.send(Poke())
        done.send(Finish())
        assert await done.join() == 3
        assert await key_state(journal_url, "done") == ("done", -1)
        assert await store.run(Desk(count=99), key="done") == 3
        assert await store.run(Desk(count=99), key="stopped") is None
        assert store.live_keys() == []


# -- keys ------------------------------------------------------------------------------------------


async def test_unusual_unicode_keys_are_distinct_and_resume_in_code_point_order(journal_url: str) -> None:
    """NFC and NFD spellings, emoji, RTL, line separators, a 1,000-character key: each its own key, kept as given."""
    keys = [
        "caf\u00e9",
        "cafe\u0301",
        "\U0001f600 \U0001f469\u200d\U0001f4bb",
        "\u05e9\u05dc\u05d5\u05dd",
        "line\u2028sep",
        " ",
        "\t",
        "K" * 1000,
        "\U0010ffff",
    ]
    async with open_store(journal_url) as store:
        for key in keys:
            await crash_in(store, Walk(), key, "second")
        assert await store.run(Instant(), key="\u00e9") == "instant"
    async with open_store(journal_url, agents=[Walk]) as store, trio.open_nursery() as nursery:
        started = await store.resume(nursery)
        assert len(started) == len(keys)
        assert [await address.join() for address in started] == [WALKED] * len(keys)
        for key in keys:
            ending = await store.outcome(key)
            assert ending is not None
            assert ending.status is Status.DONE
            assert {event.key for event in await store.events(key)} == {key}
        listed: list[str] = []
        for event in await store.events():
            if event.kind == "resumed":
                listed.append(event.key)
        assert listed == sorted(keys)


async def test_a_key_longer_than_any_database_indexes_is_refused_at_the_call(sqlite_url: str) -> None:
    """Over 1,024 bytes of UTF-8 a key is refused where it is given, on SQLite as on Postgres; at the bound it runs."""
    at_bound = "\u4e00" * 341 + "k"  # 1,024 bytes
    over = at_bound + "k"
    async with open_store(sqlite_url) as store:
        with pytest.raises(ValueError, match="at most 1024 bytes"):
            await store.run(Walk(), key=over)
        assert store.live_keys() == []
        await crash_in(store, Walk(), at_bound, "second")
    async with open_store(sqlite_url) as store:
        assert await store.run(Walk(), key=at_bound) == WALKED
        ending = await store.outcome(at_bound)
        assert ending is not None
        assert ending.status is Status.DONE


# -- prune while agents run ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep_events", "older_than", "finished_before"),
    list(itertools.product([None, 0, 1], [None, "future"], [None, "future"])),
)
async def test_prune_in_any_combination_never_touches_a_running_or_crashed_key(
    journal_url: str, keep_events: int | None, older_than: str | None, finished_before: str | None
) -> None:
    """Any retention policy, while one key runs and another crashed: both go on from their own checkpoints."""
    later = time.time() + 3600
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        assert await store.run(Instant(), key="finished") == "instant"
        await crash_in(store, Walk(), "crashed", "second")
        TRACK.hold["second"] = trio.Event()
        running = await store.spawn(nursery, Walk(), key="running")
        await held_in("second")
        await store.prune(
            keep_events=keep_events,
            older_than=None if older_than is None else later,
            finished_before=None if finished_before is None else later,
        )
        assert await key_state(journal_url, "running") == ("running", 2)
        assert await key_state(journal_url, "crashed") == ("running", 2)
        assert await key_state(journal_url, "finished") == (None if finished_before else ("done", -1))
        TRACK.hold["second"].set()
        assert await running.join() == WALKED
        assert await store.run(Walk(), key="crashed") == WALKED
        assert store.live_keys() == []
    assert TRACK.count("begin") == 2
    assert TRACK.count("first") == 2


# -- many agents --------------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_a_thousand_agents_finishing_together_each_record_their_own_ending(
    sqlite_url: str, durability: str
) -> None:
    """1,000 agents started and finished at once (group-committed batches): every ending is its own, none lost."""
    count = 1000
    async with open_store(sqlite_url, durability=durability) as store:
        outputs: dict[int, object] = {}

        async def one(i: int, nursery: trio.Nursery) -> None:
            address = await store.spawn(nursery, Instant(label=f"out{i}"), key=f"k{i}")
            outputs[i] = await address.join()

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i, nursery)
        assert [outputs[i] for i in range(count)] == [f"out{i}" for i in range(count)]
        assert store.live_keys() == []
        assert journal_of(store)._statistics().largest_batch > 1
        kinds = [event.kind for event in await store.events()]
        assert kinds.count("spawned") == count
        assert kinds.count("done") == count
    async with open_store(sqlite_url) as store:
        assert await store.run(Instant(label="other"), key="k999") == "out999"
        async with trio.open_nursery() as nursery:
            assert await store.resume(nursery) == []
