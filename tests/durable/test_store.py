"""The store: durable runs by key, resumes, fencing, write-behind, actor mode, failures of the database.

Every test taking ``journal_url`` runs on SQLite and on a real Postgres server.
The test agents record each state they enter in `WORLD` (reset for every test),
which can also hold an agent inside a state (a `Gate`) or make a state raise:
a "crash" is a run cancelled while an agent is held, and a "process restart"
is a new `open_store` on the same URL. Database I/O runs in the journal's
writer thread, so these tests use real time (short waits), never
``autojump_clock``, and never assert on timing.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, cast

import attrs
import pytest
import trio
from typing_extensions import Self

import hybrid
from hybrid import Address, Agent, Next
from hybrid.durable import (
    CheckpointError,
    Durability,
    DurableError,
    Fenced,
    KeyInUse,
    RecordedFailure,
    Status,
    Store,
    StoreError,
    durable,
    open_store,
)
from hybrid.durable._journal import Journal, Pending, open_journal
from hybrid.durable._records import Checkpoint, Claim, StepKind
from hybrid.durable._sql import Cursor
from tests.durable.postgres import PostgresServer

# -- the world the test agents report to ---------------------------------------------------


@attrs.define(eq=False)
class Gate:
    """An agent held inside a state until the test releases it."""

    state: str
    idempotency_key: str
    released: trio.Event = attrs.Factory(trio.Event)
    taken: bool = False

    def release(self) -> None:
        """Let the agent go on with its state."""
        self.released.set()


@attrs.define(eq=False)
class World:
    """What the test agents did, and what they are told to do; reset for each test."""

    entries: list[str] = attrs.Factory(list[str])
    """Each state entered (and "begin"), in order."""
    keys: list[tuple[str, str]] = attrs.Factory(list[tuple[str, str]])
    """(state, ctx.idempotency_key) at each state entry."""
    block: set[str] = attrs.Factory(set[str])
    """States that wait for a release (a `Gate`) when entered."""
    fail: dict[str, BaseException] = attrs.Factory(dict[str, BaseException])
    """States (and "begin") that raise this, once, when entered."""
    hook: Callable[[str], Awaitable[None]] | None = None
    """Awaited at each state entry, with the state's name."""
    gates: list[Gate] = attrs.Factory(list[Gate])
    arrived: trio.Event = attrs.Factory(trio.Event)
    closing: list[socket.socket] = attrs.Factory(list[socket.socket])
    """Sockets the agents made: closed after the test."""

    def reset(self) -> None:
        """Start afresh (in place: the agents reach it by its module-level name)."""
        fresh = World()
        for field in attrs.fields(World):
            setattr(self, field.name, getattr(fresh, field.name))

    def begin(self) -> None:
        """Record a begin(); raise if told to."""
        self.entries.append("begin")
        error = self.fail.pop("begin", None)
        if error is not None:
            raise error

    async def enter(self, agent: Agent[Any], state: str) -> None:
        """Record a state entry; run the hook; raise or hold if told to."""
        try:
            key = agent.ctx.idempotency_key
        except hybrid.LifecycleError:  # not durable: run without a store
            key = ""
        self.entries.append(state)
        self.keys.append((state, key))
        if self.hook is not None:
            await self.hook(state)
        error = self.fail.pop(state, None)
        if error is not None:
            raise error
        if state in self.block:
            gate = Gate(state, key)
            self.gates.append(gate)
            self.arrived.set()
            self.arrived = trio.Event()
            await gate.released.wait()

    async def reached(self, state: str) -> Gate:
        """Wait until an agent is held in `state` (each gate is returned once); fail after 10 s."""
        with trio.fail_after(10):
            while True:
                for gate in self.gates:
                    if gate.state == state and not gate.taken:
                        gate.taken = True
                        return gate
                await self.arrived.wait()

    def count(self, state: str) -> int:
        """How many times `state` was entered."""
        return self.entries.count(state)


WORLD = World()


@pytest.fixture(autouse=True)
def world() -> Generator[World]:
    """A fresh `WORLD` for each test; the sockets its agents made are closed after it."""
    WORLD.reset()
    yield WORLD
    for sock in WORLD.closing:
        sock.close()


# -- the test agents ------------------------------------------------------------------------


@attrs.define
class Steps(Agent[str]):
    """begin -> first(1) -> second -> done("n:trail"); its fields are its durable state."""

    n: int = 0
    trail: list[str] = attrs.Factory(list[str])

    def begin(self) -> Next[Self]:
        WORLD.begin()
        return Next.do_async(self.first, 1)

    async def first(self, amount: int) -> Next[Self]:
        await WORLD.enter(self, "first")
        self.n += amount
        self.trail.append("first")
        return Next.do_async(self.second)

    async def second(self) -> Next[Self]:
        await WORLD.enter(self, "second")
        self.trail.append("second")
        return Next.done(f"{self.n}:{','.join(self.trail)}")


STEPS_OUTPUT = "1:first,second"


@attrs.define
class Chain(Agent[int]):
    """step(1) -> step(2) -> ... -> step(last) -> done(last)."""

    last: int = 3

    def begin(self) -> Next[Self]:
        return Next.do_async(self.step, 1)

    async def step(self, i: int) -> Next[Self]:
        await WORLD.enter(self, "step")
        if i < self.last:
            return Next.do_async(self.step, i + 1)
        return Next.done(i)


@attrs.define
class Quick(Agent[str]):
    """One state, then done: its ending directly follows the state."""

    def begin(self) -> Next[Self]:
        return Next.do_async(self.only)

    async def only(self) -> Next[Self]:
        await WORLD.enter(self, "only")
        return Next.done("quick")


@attrs.define
class Halting(Agent[str]):
    """Ends with Next.stop() after one state."""

    def begin(self) -> Next[Self]:
        return Next.do_async(self.only)

    async def only(self) -> Next[Self]:
        await WORLD.enter(self, "only")
        return Next.stop()


@attrs.define
class Careless(Agent[str]):
    """Does, in `prepare`, the thing `mode` names that cannot be checkpointed."""

    mode: str
    thing: Any = None  # annotated Any: only JSON-like builtins may be saved in it

    def begin(self) -> Next[Self]:
        return Next.do_async(self.prepare)

    async def prepare(self) -> Next[Self]:
        await WORLD.enter(self, "prepare")
        if self.mode == "lambda":
            return Next.do_sync(lambda: Next.done("never"))
        if self.mode == "closure":

            async def inner() -> Next[Self]:
                return Next.done("never")  # pragma: no cover - refused before it runs

            return Next.do_async(inner)
        if self.mode == "lock field":
            self.thing = threading.Lock()
            return Next.do_async(self.finish)
        if self.mode == "socket field":
            sock = socket.socket()
            WORLD.closing.append(sock)
            self.thing = sock
            return Next.do_async(self.finish)
        if self.mode == "lock argument":
            return Next.do_async(self.use, threading.Lock())
        if self.mode == "perform":
            return Next.perform(Performer())
        assert self.mode == "output"
        return Next.done(cast("str", threading.Lock()))

    async def use(self, thing: Any) -> Next[Self]:  # pragma: no cover - refused before it runs
        return Next.done("used")

    async def finish(self) -> Next[Self]:  # pragma: no cover - refused before it runs
        return Next.done("finished")


class Performer:
    """A custom state kind: an object, not a method of the agent."""

    async def perform(self, agent: Agent[Any]) -> Next[Any]:  # pragma: no cover - refused before it runs
        return Next.done("performed")


@durable(name="tests.Shape")
@attrs.define
class ShapeV1(Agent[str]):
    """A class as it was when its checkpoints were written."""

    count: int = 0

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work)

    async def work(self) -> Next[Self]:
        await WORLD.enter(self, "work")
        return Next.done("v1")


@durable(name="tests.Shape")
@attrs.define
class ShapeV2(Agent[str]):
    """The same checkpoint name, after its fields changed (and no upgrade function)."""

    label: str = ""

    def begin(self) -> Next[Self]:  # pragma: no cover - never resumed: the checkpoint does not fit
        return Next.do_async(self.work)

    async def work(self) -> Next[Self]:  # pragma: no cover - never resumed: the checkpoint does not fit
        await WORLD.enter(self, "work")
        return Next.done("v2")


@attrs.frozen
class Add:
    """Event: add to the balance."""

    amount: int


@attrs.frozen
class Noop:
    """Event: changes nothing."""


@attrs.frozen
class Close:
    """Event: finish with the balance."""


@attrs.frozen
class Total(hybrid.Request[int]):
    """Request: the balance."""


@attrs.frozen
class Deposit(hybrid.Request[int]):
    """Request: add to the balance, answer the new balance."""

    amount: int


@attrs.frozen
class Bump(hybrid.Request[int]):
    """Inline request: add one, answer the new balance."""


@attrs.define
class Account(Agent[int]):
    """An actor whose balance (a field) changes by events and requests."""

    balance: int = 0

    def begin(self) -> Next[Self]:
        return Next.do_async(self.warm_up)

    async def warm_up(self) -> Next[Self]:
        await WORLD.enter(self, "warm_up")
        return Next.events()

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.balance += event.amount

    @hybrid.on_event
    async def noop(self, event: Noop) -> None:
        pass

    @hybrid.on_event
    async def close(self, event: Close) -> None:
        self.ctx.do_next(Next.done(self.balance))

    @hybrid.on_request
    async def total(self, request: Total) -> int:
        return self.balance

    @hybrid.on_request
    async def deposit(self, request: Deposit) -> int:
        self.balance += request.amount
        return self.balance

    @hybrid.on_request(inline=True)
    async def bump(self, request: Bump) -> int:
        self.balance += 1
        return self.balance


@attrs.define
class TippedSteps(Steps):
    """`Steps` that also takes tips by request: a field changed outside its states."""

    @hybrid.on_request
    async def tip(self, request: Deposit) -> int:
        self.n += request.amount
        return self.n


@attrs.define
class Sleepy(Account):
    """An Account that gives its task up after 10 ms idle in actor mode (hibernation)."""

    hibernate_after: ClassVar[float | None] = 0.01


@attrs.define
class Threaded(Agent[int]):
    """A sync state (in a worker thread) between two async ones."""

    base: int = 0

    def begin(self) -> Next[Self]:
        return Next.do_sync(self.compute, 20)

    def compute(self, amount: int) -> Next[Self]:
        WORLD.entries.append(f"compute {self.ctx.idempotency_key}")
        self.base += amount
        return Next.do_async(self.finish, 2)

    async def finish(self, extra: int) -> Next[Self]:
        await WORLD.enter(self, "finish")
        return Next.done(self.base + extra)


# -- helpers --------------------------------------------------------------------------------


async def crash_while_held(store: Store, agent: Agent[Any], key: str, state: str) -> None:
    """Run `agent` under `key` until it is held in `state`, then cancel it: the crash of its process."""
    WORLD.block.add(state)
    async with trio.open_nursery() as nursery:
        await store.spawn(nursery, agent, key=key)
        await WORLD.reached(state)
        nursery.cancel_scope.cancel()
    WORLD.block.discard(state)


async def run_catching(
    store: Store,
    agent: Agent[Any],
    key: str,
    expected: type[BaseException],
    errors: list[BaseException],
    durability: Durability | str | None = None,
) -> None:
    """Run `agent` under `key` (a task of a test's nursery); the `expected` error it raises goes to `errors`."""
    try:
        await store.run(agent, key=key, durability=durability)
    except expected as error:
        errors.append(error)


async def until(condition: Callable[[], bool]) -> None:
    """Wait (polling, real time) until `condition()` holds; fail after 10 s."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - a generic poll of lists other tasks fill
            await trio.sleep(0.005)


async def committed(journal: Journal, key: str, seq: int) -> None:
    """Wait until `key`'s checkpoint in the database is at `seq` or later; fail after 10 s."""
    with trio.fail_after(10):
        while True:
            checkpoint = await journal.checkpoint(key)
            if checkpoint is not None and checkpoint.seq >= seq:
                return
            await trio.sleep(0.005)


async def kinds(store: Store, key: str) -> list[tuple[str, str]]:
    """The (kind, state) of each event of `key`, oldest first."""
    return [(event.kind, event.state) for event in await store.events(key)]


@asynccontextmanager
async def writer_held(journal: Journal) -> AsyncGenerator[None]:
    """Hold the journal's writer thread inside a read-only batch: what is queued meanwhile waits."""
    entered = threading.Event()
    release = threading.Event()

    def hold(cursor: Cursor) -> None:
        entered.set()
        release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: journal._call(hold, writes=False))
        await trio.to_thread.run_sync(entered.wait)
        try:
            yield
        finally:
            release.set()


def journal_of(store: Store) -> Journal:
    """The store's journal (private: the tests reach under the store)."""
    return store._journal


class StandIn:
    """Stands for a store's journal: what a subclass does not define goes to the real one."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)


class Tripwire(StandIn):
    """Stands for a store's journal: each of its awaits is a numbered point, and `scope` is cancelled at one.

    Points are counted before and after every awaited journal call (claim,
    save, a write-behind's wait, finish), so cancelling at each number in
    turn cancels the durable path at each of its awaits.
    """

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.points = 0
        self.at = -1
        self.scope: trio.CancelScope | None = None

    async def _point(self) -> None:
        if self.points == self.at:
            assert self.scope is not None
            self.scope.cancel()
        self.points += 1

    async def _around(self, call: Callable[[], Awaitable[Any]]) -> Any:
        await self._point()
        result = await call()
        await self._point()
        await trio.lowlevel.checkpoint()
        return result

    async def claim(self, key: str, **options: Any) -> Claim:
        result: Claim = await self._around(lambda: self._journal.claim(key, **options))
        return result

    async def save(self, checkpoint: Checkpoint) -> None:
        await self._around(lambda: self._journal.save(checkpoint))

    def save_behind(self, checkpoint: Checkpoint) -> Any:
        return _TripPending(self, self._journal.save_behind(checkpoint))

    async def finish(self, *args: Any) -> None:
        await self._around(lambda: self._journal.finish(*args))


class _TripPending:
    """A write-behind `Pending` whose wait is two points of its `Tripwire`."""

    def __init__(self, wire: Tripwire, pending: Pending) -> None:
        self._wire = wire
        self._pending = pending

    @property
    def done(self) -> bool:
        return self._pending.done  # pragma: no cover - the store does not ask

    async def wait(self) -> None:
        await self._wire._around(self._pending.wait)


class Listing(StandIn):
    """Stands for a store's journal whose list of unfinished keys is an old one (another process moved on)."""

    def __init__(self, journal: Journal, listed: list[Checkpoint]) -> None:
        super().__init__(journal)
        self._listed = listed

    async def unfinished(self) -> list[Checkpoint]:
        return self._listed


class InFlight(StandIn):
    """Stands for a store's journal: records, at each write-behind, how many of the key's were still in flight."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.pending: dict[str, list[Pending]] = {}
        self.most = 0
        self.writes = 0

    def save_behind(self, checkpoint: Checkpoint) -> Pending:
        mine = self.pending.setdefault(checkpoint.key, [])
        self.most = max(self.most, sum(1 for pending in mine if not pending.done))
        self.writes += 1
        pending = self._journal.save_behind(checkpoint)
        mine.append(pending)
        return pending


# -- running, finished keys -------------------------------------------------------------------


async def test_a_run_to_done_returns_its_output_and_records_it(journal_url: str) -> None:
    """store.run returns the agent's output; the key's outcome is DONE with that output, and the log tells the run."""
    async with open_store(journal_url) as store:
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
        ending = await store.outcome("k")
        assert ending is not None
        assert ending.status is Status.DONE
        assert ending.output is not None
        assert ending.error is None
        assert await kinds(store, "k") == [("spawned", ""), ("async", "first"), ("async", "second"), ("done", "")]
        assert await store.outcome("unknown") is None
        assert store.live_keys() == []
    assert WORLD.entries == ["begin", "first", "second"]


async def test_running_a_finished_key_returns_its_output_without_running_anything(journal_url: str) -> None:
    """A finished key's run (in this process or the next) ends at once with the recorded output: no begin, no state."""
    async with open_store(journal_url) as store:
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
        assert await store.run(Steps(n=41), key="k") == STEPS_OUTPUT
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        address = await store.spawn(nursery, Steps(), key="k")
        assert await address.join() == STEPS_OUTPUT
        assert await kinds(store, "k") == [("spawned", ""), ("async", "first"), ("async", "second"), ("done", "")]
    assert WORLD.entries == ["begin", "first", "second"]


async def test_a_failed_key_raises_recorded_failure_without_running_again(journal_url: str) -> None:
    """A failure is recorded ("Type: text"); running the key again raises RecordedFailure, running nothing."""
    WORLD.fail["second"] = ValueError("boom")
    async with open_store(journal_url) as store:
        with pytest.raises(ValueError, match="boom"):
            await store.run(Steps(), key="k")
        ending = await store.outcome("k")
        assert ending is not None
        assert ending.status is Status.FAILED
        assert ending.error == "ValueError: boom"
        assert ending.output is None
        with pytest.raises(RecordedFailure, match="key 'k' failed earlier: ValueError: boom") as caught:
            await store.run(Steps(), key="k")
        assert caught.value.key == "k"
        assert caught.value.error == "ValueError: boom"
        assert isinstance(caught.value, DurableError)
        events = await store.events("k")
        assert (events[-1].kind, events[-1].detail) == ("failed", "ValueError: boom")
        assert store.live_keys() == []
        with pytest.RaisesGroup(RecordedFailure):
            async with trio.open_nursery() as nursery:
                address = await store.spawn(nursery, Steps(), key="k")
                with pytest.raises(RecordedFailure):
                    await address.join()
    assert WORLD.entries == ["begin", "first", "second"]


async def test_an_error_text_no_database_could_store_is_recorded_escaped(journal_url: str) -> None:
    """A failure whose message holds a NUL and a lone surrogate (binary data quoted, say) is still recorded.

    Both are escaped: Postgres text holds no NUL, and UTF-8 no lone surrogate; refused
    in the writer thread, the ending would fail the whole batch it is written in.
    """
    WORLD.fail["second"] = ValueError("bad byte \x00 and \ud800 here")
    async with open_store(journal_url) as store:
        with pytest.raises(ValueError, match="bad byte"):
            await store.run(Steps(), key="k")
        ending = await store.outcome("k")
        assert ending is not None
        assert ending.status is Status.FAILED
        assert ending.error == "ValueError: bad byte \\x00 and \\ud800 here"
        events = await store.events("k")
        assert (events[-1].kind, events[-1].detail) == ("failed", ending.error)


@pytest.mark.parametrize("key", ["nul\x00key", "lone\ud800surrogate"])
async def test_a_key_no_database_could_store_is_refused_at_the_call(sqlite_url: str, key: str) -> None:
    """A durable key with a NUL or a lone surrogate: ValueError where it is given, before any database work."""
    async with open_store(sqlite_url) as store:
        with pytest.raises(ValueError, match="a durable key must"):
            await store.run(Steps(), key=key)
        with pytest.raises(ValueError, match="a durable key must"):
            store.checkpointer(key)
        with pytest.raises(ValueError, match="a durable key must"):
            await store.outcome(key)
        with pytest.raises(ValueError, match="a durable key must"):
            await store.events(key)
        assert await store.events() == []
    assert WORLD.entries == []


async def test_next_stop_records_stopped_and_a_later_run_returns_none(sqlite_url: str) -> None:
    """Next.stop() finishes the key as STOPPED: it is not resumed, and running it again returns None at once."""
    async with open_store(sqlite_url) as store:
        assert await store.run(Halting(), key="k") is None
        ending = await store.outcome("k")
        assert ending is not None
        assert ending.status is Status.STOPPED
        assert await store.run(Halting(), key="k") is None
        async with trio.open_nursery() as nursery:
            assert await store.resume(nursery) == []
    assert WORLD.entries == ["only"]


async def test_an_unfinished_key_resumes_from_a_new_instance_and_the_given_one_is_discarded(journal_url: str) -> None:
    """The instance given for an unfinished key is not run: a new one is decoded from the checkpoint."""
    async with open_store(journal_url) as store:
        await crash_while_held(store, Steps(), "k", "second")
    async with open_store(journal_url) as store:
        given = Steps(n=100, trail=["bogus"])
        assert await store.run(given, key="k") == STEPS_OUTPUT
        assert given.n == 100  # never run: no field of it changed
    assert WORLD.entries == ["begin", "first", "second", "second"]


async def test_an_unfinished_key_run_with_another_class_is_refused_and_stays_resumable(sqlite_url: str) -> None:
    """Running an unfinished key with an agent of another class raises CheckpointError; the key is left as it was."""
    async with open_store(sqlite_url) as store:
        await crash_while_held(store, Steps(), "k", "second")
        with pytest.raises(CheckpointError, match="key 'k' is an unfinished Steps, not a Chain"):
            await store.run(Chain(), key="k")
        assert store.live_keys() == []
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT


async def test_bad_arguments_are_refused_before_the_key_is_claimed(sqlite_url: str) -> None:
    """A key that is not a non-empty str, a non-agent or an unknown durability is refused; nothing is written."""
    async with open_store(sqlite_url) as store:
        with pytest.raises(TypeError, match="non-empty str"):
            await store.run(Steps(), key="")
        with pytest.raises(TypeError, match="non-empty str"):
            await store.run(Steps(), key=cast("str", 7))
        with pytest.raises(TypeError, match="needs an Agent instance"):
            await store.run(cast("Agent[Any]", object()), key="k")
        with pytest.raises(ValueError, match="bogus"):
            await store.run(Steps(), key="k", durability="bogus")
        with pytest.raises(TypeError, match="non-empty str"):
            store.checkpointer("")
        assert await store.events() == []
        assert store.live_keys() == []
    with pytest.raises(ValueError, match="bogus"):
        async with open_store(sqlite_url, durability="bogus"):
            pass  # pragma: no cover - not reached
    assert WORLD.entries == []


async def test_an_agent_that_already_ran_is_refused_before_its_key_is_claimed(sqlite_url: str) -> None:
    """An agent runs once: a used instance is refused by run and spawn before it could leave a spawn record."""
    used = Steps()
    await used.run()
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        with pytest.raises(hybrid.LifecycleError, match="already started"):
            await store.run(used, key="k")
        with pytest.raises(hybrid.LifecycleError, match="already started"):
            await store.spawn(nursery, used, key="k")
        assert await store.events() == []
        assert store.live_keys() == []


async def test_a_spawn_refused_after_the_claim_releases_the_key_and_leaves_it_resumable(sqlite_url: str) -> None:
    """hybrid.spawn refusing the call (a bad mailbox_capacity) raises at the call; the claimed key stays unfinished."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        with pytest.raises(TypeError, match="trio nursery"):
            await store.spawn(cast("trio.Nursery", object()), Steps(), key="k")
        assert await store.events() == []
        with pytest.raises(ValueError, match="mailbox_capacity"):
            await store.spawn(nursery, Steps(), key="k", mailbox_capacity=-1)
        assert store.live_keys() == []
        assert await kinds(store, "k") == [("spawned", "")]
        address = await store.spawn(nursery, Steps(), key="k", mailbox_capacity=4)
        assert await address.join() == STEPS_OUTPUT


# -- when checkpoints commit -----------------------------------------------------------------


async def test_the_spawn_record_is_written_before_begin_so_a_crash_before_any_state_resumes(journal_url: str) -> None:
    """A run cut short right after its claim (before begin) left a spawn record: the next process runs it from begin."""
    async with open_store(journal_url) as store:
        wire = Tripwire(journal_of(store))
        store._journal = cast("Journal", wire)
        with trio.CancelScope() as scope:
            wire.scope, wire.at = scope, 1  # just after the claim committed
            await store.run(Steps(), key="k")
        assert scope.cancelled_caught
        assert store.live_keys() == []
        assert WORLD.entries == []
    async with open_store(journal_url, agents=[Steps]) as store, open_journal(journal_url) as journal:
        checkpoint = await journal.checkpoint("k")
        assert checkpoint is not None
        assert (checkpoint.kind, checkpoint.seq, checkpoint.state) == (StepKind.BEGIN, 0, "")
        async with trio.open_nursery() as nursery:
            [address] = await store.resume(nursery)
            assert await address.join() == STEPS_OUTPUT
    assert WORLD.entries == ["begin", "first", "second"]


async def test_a_state_cut_short_runs_exactly_once_more_after_a_restart(journal_url: str) -> None:
    """Cancelled right after the first state's checkpoint, a new store resumes it: that state runs once more."""
    async with open_store(journal_url) as store:
        await crash_while_held(store, Steps(), "k", "first")
        assert await store.outcome("k") is None
    async with open_store(journal_url) as store:
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.entries == ["begin", "first", "first", "second"]


async def test_the_checkpoint_of_a_state_is_committed_before_the_state_starts(journal_url: str) -> None:
    """Inside each state, a second journal on the same database already reads that state's checkpoint and event."""
    seen: list[tuple[str, int, str, str]] = []

    async def look(state: str) -> None:
        async with open_store(journal_url) as other, open_journal(journal_url) as journal:
            checkpoint = await journal.checkpoint("k")
            assert checkpoint is not None
            last = (await other.events("k"))[-1]
            seen.append((state, checkpoint.seq, checkpoint.state, last.state))

    WORLD.hook = look
    async with open_store(journal_url) as store:
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert seen == [("first", 1, "first", "first"), ("second", 2, "second", "second")]


async def test_sync_durability_starts_no_state_until_its_checkpoint_commits(journal_url: str) -> None:
    """While the writer thread is held, a sync run does not enter its next state; it does once the commit is done."""
    released = False

    async def check(state: str) -> None:
        assert released, f"{state} started before its checkpoint committed"

    WORLD.hook = check
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        WORLD.block.add("first")
        address = await store.spawn(nursery, Steps(), key="k")
        released = True  # the first state's save has no writer to wait for yet
        gate = await WORLD.reached("first")
        async with writer_held(journal_of(store)):
            released = False
            gate.release()
            await trio.sleep(0.05)
            assert WORLD.entries == ["begin", "first"]
            released = True
        assert await address.join() == STEPS_OUTPUT


async def test_async_durability_starts_the_state_while_its_checkpoint_is_in_flight(journal_url: str) -> None:
    """Write-behind: with the writer held, the next state starts at once; its checkpoint commits later."""
    async with (
        open_store(journal_url, durability=Durability.ASYNC) as store,
        open_journal(journal_url) as other,
        trio.open_nursery() as nursery,
    ):
        assert store.durability is Durability.ASYNC
        WORLD.block.update({"first", "second"})
        address = await store.spawn(nursery, Steps(), key="k")
        gate = await WORLD.reached("first")
        await committed(other, "k", 1)  # the next transition must not wait for this one
        async with writer_held(journal_of(store)):
            gate.release()
            await WORLD.reached("second")  # entered while the writer cannot commit its checkpoint
            WORLD.block.clear()
            WORLD.gates[-1].release()
        assert await address.join() == STEPS_OUTPUT
        assert await kinds(store, "k") == [("spawned", ""), ("async", "first"), ("async", "second"), ("done", "")]


async def test_async_durability_keeps_at_most_one_write_in_flight_per_agent(journal_url: str) -> None:
    """Each write-behind waits for the agent's previous one, however many agents write at once; every one commits."""
    async with open_store(journal_url) as store:
        flight = InFlight(journal_of(store))
        store._journal = cast("Journal", flight)
        async with trio.open_nursery() as nursery:
            addresses = [await store.spawn(nursery, Chain(last=6), key=f"k{i}", durability="async") for i in range(10)]
            assert [await address.join() for address in addresses] == [6] * 10
        assert flight.writes == 60
        assert flight.most == 0  # no earlier write of the key was still in flight at any write-behind
        for i in range(10):
            assert [kind for kind, _ in await kinds(store, f"k{i}")] == ["spawned", *["async"] * 6, "done"]


# -- idempotency keys -------------------------------------------------------------------------


async def test_the_idempotency_key_is_stable_across_a_resume_and_differs_between_states(journal_url: str) -> None:
    """ctx.idempotency_key names the checkpoint of the running state: the same after a resume, another per state."""
    async with open_store(journal_url) as store:
        await crash_while_held(store, Steps(), "k", "second")
    async with open_store(journal_url) as store:
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.keys == [("first", "k#1"), ("second", "k#2"), ("second", "k#2")]


async def test_a_state_that_re_enters_itself_gets_a_new_idempotency_key_each_time(sqlite_url: str) -> None:
    """Each entry of a self-re-entering state is its own checkpoint, with its own key."""
    async with open_store(sqlite_url) as store:
        assert await store.run(Chain(last=3), key="c") == 3
    assert WORLD.keys == [("step", "c#1"), ("step", "c#2"), ("step", "c#3")]


# -- one live run per key -----------------------------------------------------------------------


async def test_a_second_spawn_of_a_live_key_raises_key_in_use_until_the_run_ends(sqlite_url: str) -> None:
    """While a key runs, spawn and run of it raise KeyInUse at the call; once it ended, the key is free again."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        WORLD.block.add("first")
        address = await store.spawn(nursery, Steps(), key="k")
        gate = await WORLD.reached("first")
        assert store.live_keys() == ["k"]
        with pytest.raises(KeyInUse, match="key 'k' has a live run in this store"):
            await store.spawn(nursery, Steps(), key="k")
        with pytest.raises(KeyInUse):
            await store.run(Steps(), key="k")
        assert isinstance(KeyInUse("x"), RuntimeError)
        gate.release()
        assert await address.join() == STEPS_OUTPUT
        assert store.live_keys() == []
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.entries == ["begin", "first", "second"]


async def test_a_key_is_free_again_after_its_run_failed_or_was_cancelled(sqlite_url: str) -> None:
    """A failed run and a cancelled run both release their key."""
    async with open_store(sqlite_url) as store:
        WORLD.fail["first"] = ValueError("boom")
        with pytest.raises(ValueError, match="boom"):
            await store.run(Steps(), key="failed")
        assert store.live_keys() == []
        await crash_while_held(store, Steps(), "cancelled", "first")
        assert store.live_keys() == []
        assert await store.run(Steps(), key="cancelled") == STEPS_OUTPUT


# -- fencing -----------------------------------------------------------------------------------


async def test_a_resumed_run_fences_off_the_older_one_which_cannot_overwrite_it(journal_url: str) -> None:
    """Two stores run one key: the older run's next transition raises Fenced and writes nothing; the newer finishes."""
    fenced: list[BaseException] = []
    outputs: list[str] = []

    async def fresh(store: Store) -> None:
        outputs.append(await store.run(Steps(), key="k"))

    WORLD.block.add("first")
    async with open_store(journal_url) as old, open_store(journal_url) as new, trio.open_nursery() as nursery:
        nursery.start_soon(run_catching, old, Steps(), "k", Fenced, fenced)
        old_gate = await WORLD.reached("first")
        nursery.start_soon(fresh, new)
        new_gate = await WORLD.reached("first")  # resumed: the same state again, under the next epoch
        old_gate.release()
        await until(lambda: bool(fenced))
        assert "key 'k': a newer run took it over" in str(fenced[0])
        assert isinstance(fenced[0].__cause__, Fenced)
        assert old.live_keys() == []
        assert ("async", "second") not in await kinds(new, "k")  # the stale transition was not written
        new_gate.release()
        await until(lambda: bool(outputs))
        events = [(e.epoch, e.seq, e.kind, e.state) for e in await new.events("k")]
    assert outputs == [STEPS_OUTPUT]
    assert events == [
        (1, 0, "spawned", ""),
        (1, 1, "async", "first"),
        (2, 1, "resumed", ""),
        (2, 2, "async", "second"),
        (2, 3, "done", ""),
    ]
    assert WORLD.entries == ["begin", "first", "first", "second"]


async def test_a_stale_run_that_ends_does_not_record_its_ending(journal_url: str) -> None:
    """A fenced-off run whose state returns Next.done fails with Fenced; only the newer run's ending is recorded."""
    stale_errors: list[BaseException] = []

    WORLD.block.add("only")
    async with open_store(journal_url) as old, open_store(journal_url) as new, trio.open_nursery() as nursery:
        nursery.start_soon(run_catching, old, Quick(), "q", Fenced, stale_errors)
        old_gate = await WORLD.reached("only")
        address = await new.spawn(nursery, Quick(), key="q")
        new_gate = await WORLD.reached("only")
        old_gate.release()
        await until(lambda: bool(stale_errors))
        assert "this ending is not recorded" in str(stale_errors[0])
        assert await new.outcome("q") is None
        new_gate.release()
        assert await address.join() == "quick"
        assert [(e.epoch, e.kind) for e in await new.events("q")][-1] == (2, "done")
        assert [e.kind for e in await new.events("q")].count("done") == 1


async def test_a_fenced_write_behind_surfaces_at_the_next_transition(journal_url: str) -> None:
    """Async durability: a checkpoint refused after its state started fails the run at its next transition."""
    failures: list[BaseException] = []

    WORLD.block.add("step")
    async with open_store(journal_url) as store, open_journal(journal_url) as other, trio.open_nursery() as nursery:
        nursery.start_soon(run_catching, store, Chain(last=3), "c", Fenced, failures, "async")
        gate = await WORLD.reached("step")
        await committed(other, "c", 1)  # step(1)'s write-behind
        async with writer_held(journal_of(store)):
            gate.release()
            second = await WORLD.reached("step")  # step(2) started; its checkpoint waits for the writer
            claim = await other.claim("c", agent_class="x", version=1, kind=StepKind.BEGIN, state="", payload=b"")
            assert claim.epoch == 2
        second.release()
        await until(lambda: bool(failures))
    assert "key 'c': a newer run took it over" in str(failures[0])
    assert WORLD.count("step") == 2  # step(3) never started


async def test_a_fenced_write_behind_surfaces_at_the_ending(journal_url: str) -> None:
    """Async durability: a refused checkpoint of the last state fails the run when it ends; no ending is recorded."""
    failures: list[BaseException] = []

    WORLD.block.add("step")
    async with open_store(journal_url) as store, open_journal(journal_url) as other, trio.open_nursery() as nursery:
        nursery.start_soon(run_catching, store, Chain(last=2), "c", Fenced, failures, Durability.ASYNC)
        gate = await WORLD.reached("step")
        await committed(other, "c", 1)  # step(1)'s write-behind
        async with writer_held(journal_of(store)):
            gate.release()
            second = await WORLD.reached("step")
            await other.claim("c", agent_class="x", version=1, kind=StepKind.BEGIN, state="", payload=b"")
        second.release()
        await until(lambda: bool(failures))
        assert await store.outcome("c") is None
        assert "done" not in [kind for kind, _ in await kinds(store, "c")]
    assert WORLD.count("step") == 2


# -- values that cannot be checkpointed -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "named"),
    [
        ("lambda", r"Careless state .*<lambda>: .*not a lambda, closure"),
        ("closure", r"Careless state .*inner.*not a lambda, closure"),
        ("lock field", r"Careless field 'thing'"),
        ("socket field", r"Careless field 'thing'"),
        ("lock argument", r"Careless\.use .*thing"),
        ("perform", r"Careless: Next\.perform\(\.\.\.\) cannot be checkpointed"),
    ],
)
async def test_an_unencodable_transition_raises_checkpoint_error_at_that_transition(
    journal_url: str, mode: str, named: str
) -> None:
    """A lambda or closure state, a lock or socket in a field or argument, a performer: CheckpointError naming it."""
    async with open_store(journal_url) as store:
        with pytest.raises(CheckpointError, match=f"key 'k': {named}"):
            await store.run(Careless(mode), key="k")
        assert WORLD.entries == ["prepare"]  # refused at the transition after it, before anything else ran
        ending = await store.outcome("k")
        assert ending is not None
        assert ending.status is Status.FAILED
        assert (ending.error or "").startswith("CheckpointError: key 'k'")
        assert store.live_keys() == []


async def test_an_unencodable_output_fails_the_key_with_checkpoint_error(journal_url: str) -> None:
    """A Next.done value that cannot be saved fails the run with CheckpointError, and the key is recorded FAILED."""
    async with open_store(journal_url) as store:
        with pytest.raises(CheckpointError, match="key 'k': Careless output"):
            await store.run(Careless("output"), key="k")
        ending = await store.outcome("k")
        assert ending is not None
        assert ending.status is Status.FAILED
        assert "Careless output" in (ending.error or "")
        assert store.live_keys() == []
        with pytest.raises(RecordedFailure, match="CheckpointError"):
            await store.run(Careless("output"), key="k")


async def test_an_unencodable_agent_is_refused_at_the_call_and_its_key_is_not_created(sqlite_url: str) -> None:
    """An agent whose fields cannot be saved is refused before its spawn record is written: the key stays unknown."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        with pytest.raises(CheckpointError, match="key 'k': Careless field 'thing'"):
            await store.run(Careless("x", thing=threading.Lock()), key="k")
        with pytest.raises(CheckpointError, match="key 'k': Careless field 'thing'"):
            await store.spawn(nursery, Careless("x", thing={1, 2}), key="k")
        assert await store.events("k") == []
        assert store.live_keys() == []
        with pytest.raises(CheckpointError, match="must be an Agent subclass"):
            store.register(cast("type[Agent[Any]]", Performer))
    assert WORLD.entries == []


async def test_a_checkpoint_of_a_class_that_changed_shape_is_refused_at_resume(journal_url: str) -> None:
    """A class whose fields changed since its checkpoint: run and resume raise CheckpointError; the key is kept."""
    async with open_store(journal_url, agents=[ShapeV1]) as store:
        await crash_while_held(store, ShapeV1(count=3), "s", "work")
    async with open_store(journal_url, agents=[ShapeV2]) as store, trio.open_nursery() as nursery:
        with pytest.raises(CheckpointError, match="key 's': ShapeV2 field"):
            await store.run(ShapeV2(), key="s")
        with pytest.raises(CheckpointError, match="key 's': ShapeV2 field"):
            await store.resume(nursery)
        assert store.live_keys() == []
    async with open_store(journal_url, agents=[ShapeV1]) as store:
        assert await store.run(ShapeV1(), key="s") == "v1"  # the old code still resumes it
    assert WORLD.entries == ["work", "work"]


async def test_resume_of_a_class_no_one_registered_raises_checkpoint_error(sqlite_url: str) -> None:
    """resume() needs the class of every unfinished key: an unknown one raises CheckpointError naming it."""
    async with open_store(sqlite_url) as store:
        await crash_while_held(store, ShapeV1(), "s", "work")
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        with pytest.raises(CheckpointError, match="key 's': unknown agent class 'tests.Shape'"):
            await store.resume(nursery)
        store.register(ShapeV1)
        [address] = await store.resume(nursery)
        assert await address.join() == "v1"


async def test_resume_starts_no_agent_when_one_checkpoint_is_bad(journal_url: str) -> None:
    """One undecodable checkpoint among good ones: resume raises, starts nothing and claims nothing."""
    async with open_store(journal_url) as store:
        await crash_while_held(store, Steps(), "a-good", "second")
        await crash_while_held(store, ShapeV1(), "b-bad", "work")
        await crash_while_held(store, Steps(), "c-good", "second")
    entries = list(WORLD.entries)
    async with open_store(journal_url, agents=[Steps, ShapeV2]) as store:
        async with trio.open_nursery() as nursery:
            with pytest.raises(CheckpointError, match="key 'b-bad'"):
                await store.resume(nursery)
            assert store.live_keys() == []
        assert WORLD.entries == entries
        for key in ("a-good", "c-good"):
            assert "resumed" not in [kind for kind, _ in await kinds(store, key)]
    async with open_store(journal_url, agents=[Steps, ShapeV1]) as store, trio.open_nursery() as nursery:
        addresses = await store.resume(nursery)
        assert sorted([await address.join() for address in addresses]) == [STEPS_OUTPUT, STEPS_OUTPUT, "v1"]


# -- resuming after a restart of the process ---------------------------------------------------------


async def test_resume_brings_back_every_unfinished_key_and_no_other(journal_url: str) -> None:
    """After a process restart, resume() spawns the unfinished keys only: not finished ones, not those live here."""
    async with open_store(journal_url) as store:
        assert await store.run(Steps(), key="finished") == STEPS_OUTPUT
        await crash_while_held(store, Steps(), "x", "first")
        await crash_while_held(store, Steps(), "y", "second")
        await crash_while_held(store, Steps(), "live", "second")
    WORLD.entries.clear()
    async with open_store(journal_url, agents=[Steps]) as store, trio.open_nursery() as nursery:
        WORLD.block.add("second")
        live = await store.spawn(nursery, Steps(), key="live")
        gate = await WORLD.reached("second")
        WORLD.block.clear()
        addresses = await store.resume(nursery)
        assert len(addresses) == 2
        assert sorted(store.live_keys()) == ["live", "x", "y"]
        assert [await address.join() for address in addresses] == [STEPS_OUTPUT, STEPS_OUTPUT]
        gate.release()
        assert await live.join() == STEPS_OUTPUT
        assert await store.resume(nursery) == []
    assert sorted(WORLD.entries) == sorted(["second", "first", "second", "second"])


async def test_resume_skips_a_key_that_finished_after_it_was_listed(sqlite_url: str) -> None:
    """A key listed as unfinished that another process finished before the claim is skipped, not an error."""
    async with open_store(sqlite_url) as store:
        await crash_while_held(store, Steps(), "k", "first")
        listing = Listing(journal_of(store), await journal_of(store).unfinished())
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
        store._journal = cast("Journal", listing)
        async with trio.open_nursery() as nursery:
            assert await store.resume(nursery) == []
        assert store.live_keys() == []
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT


async def test_resume_of_a_key_pruned_after_it_was_listed_records_it_stopped(sqlite_url: str) -> None:
    """A listed key that finished and was pruned before the claim is not run from nothing: it ends as stopped."""
    async with open_store(sqlite_url) as store:
        await crash_while_held(store, Steps(), "k", "first")
        listing = Listing(journal_of(store), await journal_of(store).unfinished())
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
        assert await store.prune(finished_before=time.time() + 60) > 0
        store._journal = cast("Journal", listing)
        async with trio.open_nursery() as nursery:
            assert await store.resume(nursery) == []
        assert store.live_keys() == []
        ending = await store.outcome("k")
        assert ending is not None
        assert ending.status is Status.STOPPED
    assert WORLD.entries == ["begin", "first", "first", "second"]


async def test_resume_passes_over_a_key_started_here_while_it_claimed_others(sqlite_url: str) -> None:
    """A key that another task of this store started during resume()'s claims is left to that run."""
    async with open_store(sqlite_url) as store:
        await crash_while_held(store, Steps(), "a", "first")
        await crash_while_held(store, Steps(), "b", "first")
        journal = journal_of(store)

        class Meanwhile(StandIn):
            async def claim(self, key: str, **options: Any) -> Claim:
                if key == "a":  # while resume() claims "a", "b" is started by another task
                    store._journal = journal
                    addresses.append(await store.spawn(nursery, Steps(), key="b"))
                return await journal.claim(key, **options)

        addresses: list[Address[Any]] = []
        async with trio.open_nursery() as nursery:
            store._journal = cast("Journal", Meanwhile(journal))
            addresses += await store.resume(nursery)
            assert len(addresses) == 2
            assert [await address.join() for address in addresses] == [STEPS_OUTPUT, STEPS_OUTPUT]
    assert WORLD.count("first") == 4


async def test_resume_releases_the_keys_it_claimed_when_a_later_claim_fails(sqlite_url: str) -> None:
    """A database failure while resume() claims: the error is raised, and no key stays held or started."""
    async with open_store(sqlite_url) as store:
        await crash_while_held(store, Steps(), "a", "first")
        await crash_while_held(store, Steps(), "b", "first")
        journal = journal_of(store)

        class Failing(StandIn):
            async def claim(self, key: str, **options: Any) -> Claim:
                if key == "b":
                    raise StoreError("disk full")
                return await journal.claim(key, **options)

        store._journal = cast("Journal", Failing(journal))
        async with trio.open_nursery() as nursery:
            with pytest.raises(StoreError, match="disk full"):
                await store.resume(nursery)
            assert store.live_keys() == []
        store._journal = journal
        async with trio.open_nursery() as nursery:
            assert len(await store.resume(nursery)) == 2
    assert WORLD.count("first") == 4


async def test_the_event_log_tells_a_key_whole_story(journal_url: str) -> None:
    """events(key): spawned, each transition, resumed (under the next epoch), and the ending, in commit order."""
    start = time.time() - 5
    async with open_store(journal_url) as store:
        await crash_while_held(store, Steps(), "k", "first")
    async with open_store(journal_url) as store:
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
        assert await store.run(Quick(), key="other") == "quick"
        events = await store.events("k")
        assert [(e.key, e.epoch, e.seq, e.kind, e.state) for e in events] == [
            ("k", 1, 0, "spawned", ""),
            ("k", 1, 1, "async", "first"),
            ("k", 2, 1, "resumed", ""),
            ("k", 2, 2, "async", "second"),
            ("k", 2, 3, "done", ""),
        ]
        times = [e.time for e in events]
        assert times == sorted(times)
        assert times[0] >= start
        assert len(await store.events()) == 8
        assert await store.events(limit=2) == events[:2]
        assert {e.key for e in await store.events(since=times[-1])} <= {"k", "other"}


# -- retention -------------------------------------------------------------------------------


async def test_prune_keeps_the_latest_checkpoint_of_a_running_key(journal_url: str) -> None:
    """The strictest retention deletes history and finished keys, never a running key's checkpoint."""
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        assert await store.run(Quick(), key="finished") == "quick"
        WORLD.block.add("second")
        address = await store.spawn(nursery, Steps(), key="running")
        gate = await WORLD.reached("second")
        later = time.time() + 60
        deleted = await store.prune(keep_events=0, older_than=later, finished_before=later)
        assert deleted >= 5
        assert await store.events() == []
        assert await store.outcome("finished") is None
        gate.release()
        assert await address.join() == STEPS_OUTPUT  # its checkpoint was still there to write over
        assert await kinds(store, "running") == [("done", "")]
        assert await store.run(Quick(), key="finished") == "quick"  # pruned: a new key again
    assert WORLD.entries == ["only", "begin", "first", "second", "only"]


async def test_prune_of_a_crashed_key_still_resumes_it_from_its_checkpoint(sqlite_url: str) -> None:
    """A crashed key's events pruned, its checkpoint kept: the next run goes on from it, not from begin."""
    async with open_store(sqlite_url) as store:
        await crash_while_held(store, Steps(), "k", "second")
        await store.prune(keep_events=1)
        assert await kinds(store, "k") == [("async", "second")]
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.entries == ["begin", "first", "second", "second"]


# -- actor mode -----------------------------------------------------------------------------------


async def test_actor_fields_changed_by_events_and_requests_are_resumed(journal_url: str) -> None:
    """An actor's fields, changed by an event, a queued request and an inline request, come back after a crash."""
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        address = await store.spawn(nursery, Account(), key="acct")
        address.send(Add(2))
        assert await address.request(Deposit(3)) == 5
        assert await address.request(Bump()) == 6
        assert await address.request(Total()) == 6  # handled after Bump's checkpoint: it is saved
        nursery.cancel_scope.cancel()
    async with open_store(journal_url, agents=[Account]) as store, trio.open_nursery() as nursery:
        [address] = await store.resume(nursery)
        assert await address.request(Total()) == 6
        address.send(Add(1))
        address.send(Close())
        assert await address.join() == 7
    assert WORLD.entries == ["warm_up"]  # resumed in actor mode: warm_up is not run again


async def test_an_actor_message_that_changes_nothing_writes_no_checkpoint(journal_url: str) -> None:
    """Only a handled message that changed the fields writes a checkpoint (one event); others write nothing."""
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        address = await store.spawn(nursery, Account(), key="acct")
        for message in (Noop(), Noop(), Add(0), Add(2), Noop(), Add(0)):
            address.send(message)
        assert await address.request(Total()) == 2
        assert await address.request(Deposit(0)) == 2
        address.interrupt()
        assert await address.join() is None
        assert await kinds(store, "acct") == [("spawned", ""), ("async", "warm_up"), ("events", ""), ("events", "")]
        assert await store.outcome("acct") is None  # interrupted: left unfinished, resumed next time


async def test_an_actor_mailbox_is_not_durable(journal_url: str) -> None:
    """Messages queued when the process dies are lost: the resumed actor has its saved fields only."""
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        WORLD.block.add("warm_up")
        address = await store.spawn(nursery, Account(balance=10), key="acct")
        await WORLD.reached("warm_up")
        address.send(Add(5))  # queued: the agent is in a state
        nursery.cancel_scope.cancel()
    WORLD.block.clear()
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        address = await store.spawn(nursery, Account(), key="acct")
        assert await address.request(Total()) == 10
        address.send(Close())
        assert await address.join() == 10


async def test_a_hibernating_actor_saves_what_each_message_changed(journal_url: str) -> None:
    """An actor that gives its task up between messages still saves its fields after each one, and resumes them."""
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        address = await store.spawn(nursery, Sleepy(), key="acct")
        for amount in (1, 2, 3):
            await trio.sleep(0.05)  # long enough to hibernate
            assert await address.request(Deposit(amount)) == sum(range(1, amount + 1))
        assert await address.request(Bump()) == 7
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    async with open_store(journal_url, agents=[Sleepy]) as store, trio.open_nursery() as nursery:
        [address] = await store.resume(nursery)
        assert await address.request(Total()) == 7
        address.send(Close())
        assert await address.join() == 7


async def test_a_sync_state_is_checkpointed_and_resumed_like_an_async_one(sqlite_url: str) -> None:
    """A do_sync state's checkpoint (kind "sync") commits before it runs in its thread; the run resumes after it."""
    async with open_store(sqlite_url) as store:
        await crash_while_held(store, Threaded(), "t", "finish")
        assert await kinds(store, "t") == [("spawned", ""), ("sync", "compute"), ("async", "finish")]
    async with open_store(sqlite_url) as store:
        assert await store.run(Threaded(), key="t") == 22
    assert WORLD.entries == ["compute t#1", "finish", "finish"]


# -- the database fails -----------------------------------------------------------------------------


async def test_a_locked_sqlite_database_fails_the_agent_with_store_error_and_the_key_stays_resumable(
    tmp_path: Any,
) -> None:
    """A transition that cannot commit (the file locked past busy_timeout) fails the run; nothing goes on unsaved."""
    path = tmp_path / "store.db"
    url = f"sqlite:///{path}?busy_timeout=50"
    WORLD.block.add("first")
    async with open_store(url) as store, trio.open_nursery() as nursery:
        failures: list[BaseException] = []
        nursery.start_soon(run_catching, store, Steps(), "k", StoreError, failures)
        gate = await WORLD.reached("first")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            gate.release()
            await until(lambda: bool(failures))
        finally:
            other.close()
        assert "database is locked" in str(failures[0])
        assert isinstance(failures[0], OSError)
        assert store.live_keys() == []
        assert WORLD.count("second") == 0
        assert await store.outcome("k") is None  # not recorded as failed: the key is resumable
        WORLD.block.clear()
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.entries == ["begin", "first", "first", "second"]


async def test_a_stopped_postgres_server_fails_the_agent_and_it_resumes_once_the_server_is_back(
    postgres_server: PostgresServer,
) -> None:
    """With the server gone mid-run the next transition raises StoreError (no state runs unsaved); later it resumes."""
    url = postgres_server.new_schema_url()
    WORLD.block.add("first")
    async with open_store(url) as store, trio.open_nursery() as nursery:
        failures: list[BaseException] = []
        nursery.start_soon(run_catching, store, Steps(), "k", StoreError, failures)
        gate = await WORLD.reached("first")
        await trio.to_thread.run_sync(postgres_server.stop)
        try:
            gate.release()
            await until(lambda: bool(failures))
        finally:
            await trio.to_thread.run_sync(postgres_server.start)
        assert "Postgres database 'hybrid'" in str(failures[0])
        assert WORLD.count("second") == 0
        assert store.live_keys() == []
        WORLD.block.clear()
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.entries == ["begin", "first", "first", "second"]


async def test_an_agent_still_running_when_its_store_closes_fails_at_its_next_transition(sqlite_url: str) -> None:
    """Leaving open_store while an agent runs: its next transition raises StoreError; the key stays resumable."""
    failures: list[BaseException] = []

    WORLD.block.add("first")
    async with trio.open_nursery() as nursery:
        async with open_store(sqlite_url) as store:
            nursery.start_soon(run_catching, store, Steps(), "k", StoreError, failures)
            gate = await WORLD.reached("first")
        gate.release()
    assert "the store is closed" in str(failures[0])
    assert WORLD.count("second") == 0
    assert store.live_keys() == []
    with pytest.raises(StoreError, match="the store is closed"):
        await store.run(Steps(), key="k")
    with pytest.raises(StoreError, match="the store is closed"):
        await store.events("k")
    with pytest.raises(StoreError, match="the store is closed"):
        store.checkpointer("k")
    WORLD.block.clear()
    async with open_store(sqlite_url) as store:
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT


# -- cancellation and BaseException ------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_cancelling_at_every_await_of_the_durable_path_never_strands_the_key(
    sqlite_url: str, durability: str
) -> None:
    """Cancelled at each await of claim, saves, write-behinds and ending: the key is released and finishes right."""
    async with open_store(sqlite_url, durability=durability) as store:
        wire = Tripwire(journal_of(store))
        store._journal = cast("Journal", wire)
        assert await store.run(Steps(), key="probe") == STEPS_OUTPUT
        points = wire.points
        assert points >= 8
        for at in range(points):
            key = f"k{at}"
            wire.points = 0
            with trio.CancelScope() as scope:
                wire.scope, wire.at = scope, at
                await store.run(Steps(), key=key)
            wire.at = -1
            assert store.live_keys() == [], at
            assert await store.run(Steps(), key=key) == STEPS_OUTPUT, at


async def test_a_cancelled_spawned_agent_at_each_point_is_resumed_by_the_next_process(sqlite_url: str) -> None:
    """Spawned agents cancelled at each await: a new store's resume finishes every one of them."""
    async with open_store(sqlite_url) as store:
        wire = Tripwire(journal_of(store))
        store._journal = cast("Journal", wire)
        for at in range(2, 8):
            wire.points = 0
            async with trio.open_nursery() as nursery:
                wire.scope, wire.at = nursery.cancel_scope, at
                await store.spawn(nursery, Steps(), key=f"k{at}")
            assert store.live_keys() == []
    async with open_store(sqlite_url, agents=[Steps]) as store, trio.open_nursery() as nursery:
        outputs = [await address.join() for address in await store.resume(nursery)]
        assert outputs == [STEPS_OUTPUT] * len(outputs)
        for at in range(2, 8):
            assert await store.run(Steps(), key=f"k{at}") == STEPS_OUTPUT


async def test_keyboard_interrupt_in_a_state_leaves_the_key_unfinished_and_released(journal_url: str) -> None:
    """A BaseException from a state is not a recorded failure: the key is released and resumes next time."""
    WORLD.fail["second"] = KeyboardInterrupt()
    async with open_store(journal_url) as store:
        with pytest.raises(KeyboardInterrupt):
            await store.run(Steps(), key="k")
        assert store.live_keys() == []
        assert await store.outcome("k") is None
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.entries == ["begin", "first", "second", "second"]


async def test_keyboard_interrupt_in_begin_leaves_the_spawn_record_to_resume(sqlite_url: str) -> None:
    """Interrupted in begin(), before any state: the spawn record stays, and the next run starts from begin again."""
    WORLD.fail["begin"] = KeyboardInterrupt()
    async with open_store(sqlite_url) as store:
        with pytest.raises(KeyboardInterrupt):
            await store.run(Steps(), key="k")
        assert store.live_keys() == []
        assert await kinds(store, "k") == [("spawned", "")]
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.entries == ["begin", "begin", "first", "second"]


async def test_an_interrupted_run_leaves_its_key_unfinished(sqlite_url: str) -> None:
    """An interrupt (a graceful shutdown) ends the run but not the key: the next process goes on with it."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        WORLD.block.add("first")
        address = await store.spawn(nursery, Steps(), key="k")
        gate = await WORLD.reached("first")
        address.interrupt()
        gate.release()
        assert await address.join() is None
        assert await store.outcome("k") is None
        assert store.live_keys() == []
    WORLD.block.clear()
    async with open_store(sqlite_url) as store:
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.count("second") == 1


# -- what the run loop does for a checkpointer ------------------------------------------------------------


async def test_a_request_is_not_answered_before_the_fields_it_changed_are_saved(tmp_path: Any) -> None:
    """When the checkpoint after a request cannot commit, its caller gets the StoreError, not an unsaved answer."""
    path = tmp_path / "store.db"
    answers: list[int] = []
    async with open_store(f"sqlite:///{path}?busy_timeout=50") as store:
        with pytest.RaisesGroup(StoreError):
            async with trio.open_nursery() as nursery:
                address = await store.spawn(nursery, Account(), key="acct")
                await committed(journal_of(store), "acct", 2)  # in actor mode
                other = sqlite3.connect(path, isolation_level=None)
                try:
                    other.execute("BEGIN EXCLUSIVE")
                    with pytest.raises(StoreError, match="was not committed"):  # not confirmed: never saved
                        answers.append(await address.request(Deposit(5)))
                    await trio.sleep_forever()  # until the agent's StoreError cancels this task
                finally:
                    other.close()
    assert answers == []


async def test_a_state_that_finished_before_a_graceful_shutdown_does_not_run_again(sqlite_url: str) -> None:
    """Interrupted in a state: that state completes; the next process goes on with the transition it returned."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        WORLD.block.add("first")
        address = await store.spawn(nursery, Steps(), key="k")
        gate = await WORLD.reached("first")
        address.interrupt()
        gate.release()
        assert await address.join() is None
    WORLD.block.clear()
    async with open_store(sqlite_url) as store:
        assert await store.run(Steps(), key="k") == STEPS_OUTPUT
    assert WORLD.entries == ["begin", "first", "second"]


async def test_a_request_handled_as_an_interrupted_state_machine_finishes_is_saved_with_its_next_state(
    journal_url: str,
) -> None:
    """Interrupted in a state, with a request queued meanwhile: the request is handled as the run finishes.

    Its change is saved before its answer, with the state's next transition (not
    actor mode): the next process runs that state with what the request changed.
    """
    answers: list[int] = []
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        WORLD.block.add("first")
        address = await store.spawn(nursery, TippedSteps(), key="k")
        gate = await WORLD.reached("first")
        address.interrupt()

        async def tip() -> None:
            answers.append(await address.request(Deposit(10)))

        async with trio.open_nursery() as asking:
            asking.start_soon(tip)
            await trio.testing.wait_all_tasks_blocked()  # the request waits behind the interrupt
            gate.release()
        assert answers == [11]
        assert await address.join() is None
        assert await store.outcome("k") is None
    WORLD.block.clear()
    async with open_store(journal_url) as store:
        with trio.fail_after(10):
            assert await store.run(TippedSteps(), key="k") == "11:first,second"
    assert WORLD.entries == ["begin", "first", "second"]


# -- the extras ------------------------------------------------------------------------------------------


def test_without_msgspec_the_import_says_which_extra_to_install() -> None:
    """import hybrid.durable with msgspec missing: an ImportError naming the durable extra."""
    code = (
        "import sys; sys.modules['msgspec'] = None\n"
        "try:\n    import hybrid.durable\n"
        "except ImportError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "hybrid.durable needs msgspec: pip install 'trio-hybrid[durable]'" in done.stdout


def test_without_psycopg_a_postgres_url_says_which_extra_to_install() -> None:
    """open_store('postgresql://...') with psycopg missing: an ImportError naming the durable-postgres extra."""
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "import trio, hybrid.durable\n"
        "async def main():\n"
        "    async with hybrid.durable.open_store('postgresql://localhost/none'):\n        pass\n"
        "try:\n    trio.run(main)\n"
        "except ImportError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "a Postgres store needs psycopg 3: pip install 'trio-hybrid[durable-postgres]'" in done.stdout
