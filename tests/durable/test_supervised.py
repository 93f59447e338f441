"""Supervised durable children: ``ctx.spawn(factory, checkpointer=store.checkpointer(key))``.

A child that fails is restarted by its supervisor from its last checkpoint
(or from ``begin()`` with ``restart_from="scratch"``); after a process restart
a new supervisor's child goes on where the old one was. Tests taking
``journal_url`` run on SQLite and on a real Postgres server; database I/O runs
in the journal's writer thread, so real time is used (short waits, never a
timing assertion).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import attrs
import pytest
import trio
from typing_extensions import Self

import hybrid
from hybrid import Address, Agent, Next, Restart, StopKind, StopReason, Supervisor
from hybrid.durable import (
    CheckpointError,
    Durability,
    KeyCheckpointer,
    KeyInUse,
    RestartFrom,
    Status,
    Store,
    StoreError,
    open_store,
)


@attrs.define(eq=False)
class Log:
    """What the children did and how they ended; reset for each test."""

    entries: list[tuple[str, str]] = attrs.Factory(list[tuple[str, str]])
    """(state, ctx.idempotency_key) at each state entry; ("begin", "") for begin()."""
    fail: dict[str, BaseException] = attrs.Factory(dict[str, BaseException])
    """States that raise this, once, when entered."""
    block: set[str] = attrs.Factory(set[str])
    """States that wait for `release` when entered."""
    held: trio.Event = attrs.Factory(trio.Event)
    """Set when a child waits in a blocked state."""
    release: trio.Event = attrs.Factory(trio.Event)
    endings: list[StopReason] = attrs.Factory(list[StopReason])
    """Each run of a child that ended, as its supervisor saw it."""
    ended: trio.Event = attrs.Factory(trio.Event)
    """Set (and replaced) at each ending."""
    instances: list[int] = attrs.Factory(list[int])
    """id() of the agent that ran each state or fallback."""

    def reset(self) -> None:
        """Start afresh (in place: the agents reach it by its module-level name)."""
        fresh = Log()
        for field in attrs.fields(Log):
            setattr(self, field.name, getattr(fresh, field.name))

    def states(self) -> list[str]:
        """The states entered, in order."""
        return [state for state, _ in self.entries]

    async def enter(self, agent: Agent[Any], state: str) -> None:
        """Record a state entry; raise or wait if told to."""
        self.entries.append((state, agent.ctx.idempotency_key))
        error = self.fail.pop(state, None)
        if error is not None:
            raise error
        if state in self.block:
            self.held.set()
            await self.release.wait()

    async def endings_reach(self, count: int) -> None:
        """Wait until `count` runs ended; fail after 10 s."""
        with trio.fail_after(10):
            while len(self.endings) < count:
                await self.ended.wait()


LOG = Log()


@pytest.fixture(autouse=True)
def log() -> Log:
    """A fresh `LOG` for each test."""
    LOG.reset()
    return LOG


@attrs.define
class Job(Agent[str]):
    """begin -> prepare -> charge(100) -> ship -> done: the fields record its progress."""

    order: str
    progress: list[str] = attrs.Factory(list[str])

    def begin(self) -> Next[Self]:
        LOG.entries.append(("begin", ""))
        return Next.do_async(self.prepare)

    async def prepare(self) -> Next[Self]:
        await LOG.enter(self, "prepare")
        self.progress.append("prepared")
        return Next.do_async(self.charge, 100)

    async def charge(self, cents: int) -> Next[Self]:
        await LOG.enter(self, "charge")
        self.progress.append(f"charged {cents}")
        return Next.do_async(self.ship)

    async def ship(self) -> Next[Self]:
        await LOG.enter(self, "ship")
        return Next.done(f"{self.order}: {', '.join(self.progress)}")


OUTPUT = "o-1: prepared, charged 100"


@attrs.define
class Other(Agent[str]):
    """A class other than the key's."""

    def begin(self) -> Next[Self]:  # pragma: no cover - refused before it runs
        return Next.done("other")


@attrs.define
class BadOutput(Agent[int]):
    """Finishes with a value its Agent[int] cannot save."""

    def begin(self) -> Next[Self]:
        return Next.do_async(self.only)

    async def only(self) -> Next[Self]:
        await LOG.enter(self, "only")
        return Next.done(cast("int", object()))  # the wrong type on purpose


@attrs.define
class Guarded(Agent[str]):
    """A state with modifiers: a timeout and a fallback, a method of the agent."""

    order: str

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work).timeout(30).fallback(self.recover)

    async def work(self) -> Next[Self]:
        LOG.instances.append(id(self))
        await LOG.enter(self, "work")
        return Next.done(f"{self.order}: worked")

    def recover(self, error: Exception) -> Next[Self]:
        LOG.instances.append(id(self))
        return Next.done(f"{self.order}: recovered from {error}")


JOB = functools.partial(Job, "o-1")
"""The factory of the usual child."""


class Boss(Supervisor[None]):
    """Spawns one durable child under `key`; records how each of its runs ended."""

    max_restarts = 5

    def __init__(
        self,
        checkpointer: KeyCheckpointer,
        *,
        factory: Callable[[], Agent[Any]] = JOB,
        restart: Restart = Restart.TRANSIENT,
    ) -> None:
        self.checkpointer = checkpointer
        self.factory = factory
        self.restart = restart

    def begin(self) -> Next[Self]:
        self.ctx.spawn(self.factory, restart=self.restart, checkpointer=self.checkpointer, name="job")
        return Next.events()

    async def on_child_ended(self, address: Address[Any], reason: StopReason) -> None:
        LOG.endings.append(reason)
        LOG.ended.set()
        LOG.ended = trio.Event()


async def supervise(boss: Boss, endings: int) -> None:
    """Run `boss` until its child's runs ended `endings` times, then shut it down."""
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, boss)
        await LOG.endings_reach(endings)
        address.interrupt()
        await address.join()


def kinds_of(reasons: list[StopReason]) -> list[StopKind]:
    """The kind of each ending."""
    return [reason.kind for reason in reasons]


# -- restarts ----------------------------------------------------------------------------------


async def test_a_failing_durable_child_restarts_from_its_last_checkpoint(journal_url: str) -> None:
    """The restarted child goes on with the state that failed: begin and the states before it are not run again."""
    LOG.fail["ship"] = ValueError("lost parcel")
    async with open_store(journal_url) as store:
        await supervise(Boss(store.checkpointer("o-1")), endings=2)
        assert kinds_of(LOG.endings) == [StopKind.FAILED, StopKind.DONE]
        assert LOG.states() == ["begin", "prepare", "charge", "ship", "ship"]
        assert LOG.entries[-1] == LOG.entries[-2] == ("ship", "o-1#3")  # the same idempotency key
        assert await store.run(Job("o-1"), key="o-1") == OUTPUT  # recorded: nothing runs
        events = [(event.epoch, event.kind, event.state, event.detail) for event in await store.events("o-1")]
        assert events == [
            (1, "spawned", "", ""),
            (1, "async", "prepare", ""),
            (1, "async", "charge", ""),
            (1, "async", "ship", ""),
            (1, "error", "", "ValueError: lost parcel"),  # the failure, logged; the key stays unfinished
            (2, "resumed", "", ""),
            (2, "done", "", ""),
        ]
        assert store.live_keys() == []
    assert LOG.states() == ["begin", "prepare", "charge", "ship", "ship"]


async def test_restart_from_scratch_runs_begin_again_with_a_fresh_instance(journal_url: str) -> None:
    """With restart_from="scratch" a restart starts from begin() of the factory's instance, under a new spawn record."""
    LOG.fail["ship"] = ValueError("lost parcel")
    async with open_store(journal_url) as store:
        await supervise(Boss(store.checkpointer("o-1", restart_from="scratch")), endings=2)
        assert kinds_of(LOG.endings) == [StopKind.FAILED, StopKind.DONE]
        assert await store.run(Job("o-1"), key="o-1") == OUTPUT  # fresh fields: charged once, not twice
        events = [(event.epoch, event.kind) for event in await store.events("o-1")]
        assert events[4:7] == [(1, "error"), (2, "resumed"), (2, "begin")]
    assert LOG.states() == ["begin", "prepare", "charge", "ship"] * 2
    assert LOG.entries[1] != LOG.entries[5]  # a scratch run's states have new idempotency keys


async def test_a_finished_key_child_ends_at_once_with_its_recorded_output(sqlite_url: str) -> None:
    """A child whose key finished runs nothing: it ends DONE at once (a transient child is not restarted)."""
    async with open_store(sqlite_url) as store:
        assert await store.run(Job("o-1"), key="o-1") == OUTPUT
        LOG.entries.clear()
        await supervise(Boss(store.checkpointer("o-1")), endings=1)
        assert kinds_of(LOG.endings) == [StopKind.DONE]
        assert LOG.entries == []
        ending = await store.outcome("o-1")
        assert ending is not None
        assert ending.status is Status.DONE


async def test_after_a_process_restart_a_new_supervisor_resumes_the_child_from_its_checkpoint(
    journal_url: str,
) -> None:
    """The old process dies while its child is in a state; the new supervisor's child goes on from that state."""
    LOG.block.add("charge")
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        hybrid.spawn(nursery, Boss(store.checkpointer("o-1")))
        with trio.fail_after(10):
            await LOG.held.wait()
        nursery.cancel_scope.cancel()
    LOG.block.clear()
    async with open_store(journal_url) as store:
        assert await store.outcome("o-1") is None  # cancelled: unfinished
        await supervise(Boss(store.checkpointer("o-1")), endings=1)
        assert kinds_of(LOG.endings) == [StopKind.DONE]
        assert await store.run(Job("o-1"), key="o-1") == OUTPUT
    assert LOG.states() == ["begin", "prepare", "charge", "charge", "ship"]


async def test_a_resumed_child_keeps_its_state_modifiers_bound_to_the_factory_instance(sqlite_url: str) -> None:
    """After a crash, the saved timeout and fallback apply to the factory's new instance: the fallback runs on it."""
    LOG.block.add("work")
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        hybrid.spawn(nursery, Boss(store.checkpointer("g"), factory=functools.partial(Guarded, "g")))
        with trio.fail_after(10):
            await LOG.held.wait()
        nursery.cancel_scope.cancel()
    LOG.block.clear()
    LOG.instances.clear()
    LOG.fail["work"] = ValueError("jammed")
    async with open_store(sqlite_url) as store:
        await supervise(Boss(store.checkpointer("g"), factory=functools.partial(Guarded, "g")), endings=1)
        assert kinds_of(LOG.endings) == [StopKind.DONE]
        assert await store.run(Guarded("g"), key="g") == "g: recovered from jammed"
    [worked, recovered] = LOG.instances
    assert worked == recovered  # the fallback is the new instance's method, not the decoded one's


async def test_a_supervisor_shutdown_leaves_its_durable_child_unfinished(sqlite_url: str) -> None:
    """Interrupting the supervisor interrupts the child: its key stays unfinished, and store.run goes on with it."""
    LOG.block.add("charge")
    async with open_store(sqlite_url) as store:
        async with trio.open_nursery() as nursery:
            boss = hybrid.spawn(nursery, Boss(store.checkpointer("o-1")))
            with trio.fail_after(10):
                await LOG.held.wait()
            boss.interrupt()
            LOG.release.set()
            await boss.join()
        assert kinds_of(LOG.endings) == [StopKind.INTERRUPTED]
        assert await store.outcome("o-1") is None
        assert store.live_keys() == []
        LOG.block.clear()
        assert await store.run(Job("o-1"), key="o-1") == OUTPUT
    assert LOG.states()[:3] == ["begin", "prepare", "charge"]
    assert "prepare" not in LOG.states()[3:]


async def test_a_failed_child_that_is_not_restarted_stays_unfinished_and_resumable(sqlite_url: str) -> None:
    """A supervised failure is never recorded as the key's ending: a later run goes on from the checkpoint."""
    LOG.fail["ship"] = ValueError("lost parcel")
    async with open_store(sqlite_url) as store:
        await supervise(Boss(store.checkpointer("o-1"), restart=Restart.TEMPORARY), endings=1)
        assert kinds_of(LOG.endings) == [StopKind.FAILED]
        assert await store.outcome("o-1") is None
        assert await store.run(Job("o-1"), key="o-1") == OUTPUT
    assert LOG.states() == ["begin", "prepare", "charge", "ship", "ship"]


# -- refusals ----------------------------------------------------------------------------------


async def test_a_supervised_child_of_a_key_live_in_the_store_fails_with_key_in_use(sqlite_url: str) -> None:
    """Only one live run per key: the child's run fails with KeyInUse, and the live run keeps the key."""
    LOG.block.add("charge")
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        live = await store.spawn(nursery, Job("o-1"), key="o-1")
        with trio.fail_after(10):
            await LOG.held.wait()
        await supervise(Boss(store.checkpointer("o-1"), restart=Restart.TEMPORARY), endings=1)
        [reason] = LOG.endings
        assert isinstance(reason.error, KeyInUse)
        assert store.live_keys() == ["o-1"]
        LOG.release.set()
        assert await live.join() == OUTPUT


async def test_a_factory_of_another_class_is_refused_at_the_child_start(sqlite_url: str) -> None:
    """A checkpoint of one class resumed into a factory's instance of another: CheckpointError; the key is kept."""
    LOG.fail["ship"] = ValueError("lost parcel")
    async with open_store(sqlite_url) as store:
        with pytest.raises(ValueError, match="lost parcel"):
            await store.run(Job("o-1"), key="o-1")  # recorded as failed: use another key for the checkpoint
        LOG.fail["ship"] = KeyboardInterrupt()
        with pytest.raises(KeyboardInterrupt):
            await store.run(Job("o-2"), key="o-2")  # left unfinished at ship
        await supervise(Boss(store.checkpointer("o-2"), factory=Other, restart=Restart.TEMPORARY), endings=1)
        [reason] = LOG.endings
        assert isinstance(reason.error, CheckpointError)
        assert "key 'o-2' is an unfinished Job, not a Other: the factory must make its class" in str(reason.error)
        assert store.live_keys() == []
        assert await store.run(Job("o-2"), key="o-2") == "o-2: prepared, charged 100"


async def test_an_unsavable_output_of_a_supervised_child_fails_it_and_leaves_the_key_unfinished(
    sqlite_url: str,
) -> None:
    """The child fails with CheckpointError at its ending; unlike store.run, nothing is recorded for the key."""
    async with open_store(sqlite_url) as store:
        await supervise(Boss(store.checkpointer("b"), factory=BadOutput, restart=Restart.TEMPORARY), endings=1)
        [reason] = LOG.endings
        assert isinstance(reason.error, CheckpointError)
        assert "BadOutput output" in str(reason.error)
        assert await store.outcome("b") is None


async def test_a_supervised_child_whose_store_closed_fails_with_store_error(sqlite_url: str) -> None:
    """A checkpointer of a closed store refuses to start its child's run: StoreError, never an unsaved run."""
    async with open_store(sqlite_url) as store:
        checkpointer = store.checkpointer("o-1")
    await supervise(Boss(checkpointer, restart=Restart.TEMPORARY), endings=1)
    [reason] = LOG.endings
    assert isinstance(reason.error, StoreError)
    assert "the store is closed" in str(reason.error)
    assert LOG.entries == []


async def test_the_checkpointer_tells_its_key_and_durability_and_refuses_bad_options(sqlite_url: str) -> None:
    """store.checkpointer() validates its options; the checkpointer names its key and durability; no constructor."""
    async with open_store(sqlite_url) as store:
        checkpointer = store.checkpointer("o-1", durability="async", restart_from=RestartFrom.SCRATCH)
        assert checkpointer.key == "o-1"
        assert checkpointer.durability is Durability.ASYNC
        assert checkpointer.idempotency_key == "o-1#0"
        assert isinstance(checkpointer, hybrid.Checkpointer)
        with pytest.raises(ValueError, match="bogus"):
            store.checkpointer("o-1", restart_from="bogus")
        with pytest.raises(TypeError, match="no public constructor"):
            KeyCheckpointer()
        with pytest.raises(TypeError, match="no public constructor"):
            Store()


async def test_a_supervised_child_with_async_durability_restarts_from_its_checkpoint(sqlite_url: str) -> None:
    """Write-behind checkpoints serve a restart too: the failed state runs again, the ones before it do not."""
    LOG.fail["ship"] = ValueError("lost parcel")
    async with open_store(sqlite_url) as store:
        await supervise(Boss(store.checkpointer("o-1", durability=Durability.ASYNC)), endings=2)
        assert kinds_of(LOG.endings) == [StopKind.FAILED, StopKind.DONE]
        assert await store.run(Job("o-1"), key="o-1") == OUTPUT
    assert LOG.states() == ["begin", "prepare", "charge", "ship", "ship"]


@attrs.frozen
class Second:
    """Tells `Pair` to start its second child."""


class Pair(Supervisor[None]):
    """Spawns two children with one and the same checkpointer (a mistake): only one may hold the key."""

    max_restarts = 5

    def __init__(self, checkpointer: KeyCheckpointer) -> None:
        self.checkpointer = checkpointer

    def begin(self) -> Next[Self]:
        self.ctx.spawn(functools.partial(Job, "o-1"), restart=Restart.TEMPORARY, checkpointer=self.checkpointer)
        return Next.events()

    @hybrid.on_event
    async def second(self, event: Second) -> None:
        self.ctx.spawn(functools.partial(Job, "o-1"), restart=Restart.TEMPORARY, checkpointer=self.checkpointer)

    async def on_child_ended(self, address: Address[Any], reason: StopReason) -> None:
        LOG.endings.append(reason)
        LOG.ended.set()
        LOG.ended = trio.Event()


async def test_a_checkpointer_shared_by_two_live_runs_serves_the_first_and_refuses_the_second(sqlite_url: str) -> None:
    """The second run fails with KeyInUse without disturbing the first, which still saves, finishes and records."""
    LOG.block.add("charge")
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        pair = hybrid.spawn(nursery, Pair(store.checkpointer("o-1")))
        with trio.fail_after(10):
            await LOG.held.wait()
        pair.send(Second())
        await LOG.endings_reach(1)
        assert isinstance(LOG.endings[0].error, KeyInUse)
        assert store.live_keys() == ["o-1"]  # still held by the first run
        LOG.release.set()
        await LOG.endings_reach(2)
        assert kinds_of(LOG.endings) == [StopKind.FAILED, StopKind.DONE]
        pair.interrupt()
        await pair.join()
        assert await store.run(Job("o-1"), key="o-1") == OUTPUT
