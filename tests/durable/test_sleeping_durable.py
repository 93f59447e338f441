"""Supervised durable children that hibernate, tested as an adversary would.

Two features meet here: a supervised child that gives its trio task up
while idle (``hibernate_after``), and a supervised child that checkpoints its fields
(``ctx.spawn(..., checkpointer=store.checkpointer(key))``). These tests attack where
they meet: a sleeping durable child woken by a message that changes its fields, then
failing; restarts of sleeping siblings; the supervisor interrupted or cancelled while
its durable children sleep; ``store.resume`` afterwards; the store closed under
sleeping children; requests answered (or not) while a child is stopped or restarted.

Database I/O runs in the journal's writer thread, so real time is used with short
waits (never a timing assertion). Tests taking ``journal_url`` run on SQLite and on a
real Postgres server.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Address, Agent, Next, Restart, StopKind, StopReason, Strategy, Supervisor
from hybrid.durable import (
    Durability,
    Fenced,
    KeyCheckpointer,
    RestartFrom,
    Status,
    Store,
    StoreError,
    open_store,
)

# -- messages ----------------------------------------------------------------------------------


@attrs.frozen
class Add:
    """An event: add `amount` to the balance."""

    amount: int


@attrs.frozen
class Deposit(hybrid.Request[int]):
    """Add `amount` to the balance; answered with the new balance."""

    amount: int


@attrs.frozen
class Balance(hybrid.Request[int]):
    """The balance, changing nothing."""


@attrs.frozen
class Info(hybrid.Request[tuple[str, int]]):
    """The agent's name field and balance, changing nothing."""


@attrs.frozen
class Crash:
    """An event: add `amount` to the balance, then fail (``Next.fail``) after the handler."""

    amount: int


@attrs.frozen
class Oops:
    """An event: add `amount` to the balance, then raise from the handler (the actor goes on)."""

    amount: int


@attrs.frozen
class Close:
    """An event: finish done with the balance as output."""


# -- what the agents did -----------------------------------------------------------------------


@attrs.define(eq=False)
class Notes:
    """What the children did and how their runs ended; reset for each test."""

    begins: list[str] = attrs.Factory(list[str])
    """The key (`Account.name`) of each begin() run."""
    stops: list[tuple[str, StopKind]] = attrs.Factory(list[tuple[str, StopKind]])
    """(name, kind) at each on_stop."""
    endings: list[tuple[str, StopReason]] = attrs.Factory(list[tuple[str, StopReason]])
    """(child name, reason) of each run that ended, as its supervisor saw it."""
    ended: trio.Event = attrs.Factory(trio.Event)
    """Set (and replaced) at each ending."""
    hold_interrupt: trio.Event | None = None
    """When set, on_interrupt waits for it (and `in_interrupt` tells the test it waits)."""
    in_interrupt: trio.Event = attrs.Factory(trio.Event)
    hold_ended: trio.Event | None = None
    """When set, the supervisor's on_child_ended waits for it (`in_ended` tells)."""
    in_ended: trio.Event = attrs.Factory(trio.Event)

    def reset(self) -> None:
        fresh = Notes()
        for field in attrs.fields(Notes):
            setattr(self, field.name, getattr(fresh, field.name))

    async def endings_reach(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.endings) < count:
                await self.ended.wait()


NOTES = Notes()


@pytest.fixture(autouse=True)
def notes() -> Notes:
    NOTES.reset()
    return NOTES


# -- agents ------------------------------------------------------------------------------------


@attrs.define
class Account(Agent[int]):
    """A durable actor that hibernates as soon as it is idle; its balance is its durable state."""

    hibernate_after: ClassVar[float | None] = 0

    name: str
    balance: int = 0

    def begin(self) -> Next[Self]:
        NOTES.begins.append(self.name)
        return Next.events()

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.balance += event.amount

    @hybrid.on_event
    async def crash(self, event: Crash) -> None:
        self.balance += event.amount
        self.ctx.do_next(Next.fail(ValueError(f"crash of {self.name}")))

    @hybrid.on_event
    async def oops(self, event: Oops) -> None:
        self.balance += event.amount
        raise RuntimeError("oops")  # to on_error: the actor goes on

    async def on_error(self, error: Exception) -> None:
        pass

    @hybrid.on_event
    async def close(self, event: Close) -> None:
        self.ctx.do_next(Next.done(self.balance))

    @hybrid.on_request
    async def deposit(self, request: Deposit) -> int:
        self.balance += request.amount
        return self.balance

    @hybrid.on_request
    async def get_balance(self, request: Balance) -> int:
        return self.balance

    @hybrid.on_request
    async def info(self, request: Info) -> tuple[str, int]:
        return self.name, self.balance

    async def on_interrupt(self) -> None:
        hold = NOTES.hold_interrupt
        if hold is not None:
            NOTES.in_interrupt.set()
            await hold.wait()

    async def on_stop(self, reason: StopReason) -> None:
        NOTES.stops.append((self.name, reason.kind))


@attrs.define
class Wakeful(Account):
    """An Account whose class keeps its task: only ``ctx.spawn(..., hibernate_after=...)`` makes it sleep."""

    hibernate_after: ClassVar[float | None] = None


@attrs.define
class Ticker(Agent[int]):
    """A durable sleeper that asks itself for a wake-up (a timer) that changes its fields."""

    hibernate_after: ClassVar[float | None] = 0

    name: str = "t"
    ticks: int = 0

    def begin(self) -> Next[Self]:
        NOTES.begins.append(self.name)
        self.ctx.send_after(0.01, Add(1))
        return Next.events()

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.ticks += event.amount

    @hybrid.on_request
    async def get_balance(self, request: Balance) -> int:
        return self.ticks

    @hybrid.on_request
    async def info(self, request: Info) -> tuple[str, int]:
        return self.name, self.ticks


# -- supervisors -------------------------------------------------------------------------------


@attrs.frozen
class Spec:
    """One durable child: its key (also its name), its factory, its restart policy."""

    key: str
    factory: Callable[[], Agent[Any]]
    restart: Restart = Restart.PERMANENT
    restart_from: RestartFrom = RestartFrom.CHECKPOINT
    hibernate_after: float | None = None
    durability: Durability = Durability.SYNC
    wrap: Callable[[KeyCheckpointer], hybrid.Checkpointer] | None = None
    """Wraps the store's checkpointer (to cut the run short at one of its awaits)."""


def account(key: str, **options: Any) -> Spec:
    return Spec(key, functools.partial(Account, key), **options)


class Bank(Supervisor[None]):
    """Spawns a durable child per spec (named by its key); records how each of their runs ended."""

    max_restarts = 10

    def __init__(self, store: Store, specs: Sequence[Spec]) -> None:
        self.store = store
        self.specs = specs
        self.checkpointers: dict[str, KeyCheckpointer] = {}
        self.kids: dict[str, Address[Any]] = {}

    def begin(self) -> Next[Self]:
        for spec in self.specs:
            checkpointer = self.store.checkpointer(spec.key, restart_from=spec.restart_from, durability=spec.durability)
            self.checkpointers[spec.key] = checkpointer
            self.kids[spec.key] = self.ctx.spawn(
                spec.factory,
                restart=spec.restart,
                checkpointer=checkpointer if spec.wrap is None else spec.wrap(checkpointer),
                name=spec.key,
                hibernate_after=spec.hibernate_after,
            )
        return Next.events()

    async def on_child_ended(self, address: Address[Any], reason: StopReason) -> None:
        NOTES.endings.append((address.name.rsplit("/", 1)[-1], reason))
        NOTES.ended.set()
        NOTES.ended = trio.Event()
        hold = NOTES.hold_ended
        if hold is not None:
            NOTES.in_ended.set()
            await hold.wait()


class AllBank(Bank):
    strategy = Strategy.ONE_FOR_ALL


class RestBank(Bank):
    strategy = Strategy.REST_FOR_ONE


# -- helpers -----------------------------------------------------------------------------------


def hibernating(address: Address[Any]) -> bool:
    return address.statistics().hibernating


async def until_asleep(*addresses: Address[Any]) -> None:
    """Wait until every address's agent hibernates; fail after 10 s."""
    with trio.fail_after(10):
        while not all(hibernating(address) for address in addresses):  # noqa: ASYNC110 - no event to wait on
            await trio.sleep(0.005)


async def fund_and_sleep(bank: Bank, unit: int = 1) -> None:
    """Deposit `unit`, 2 `unit`, 3 `unit`... into its children in key order, then wait until they all sleep."""
    for amount, key in enumerate(bank.kids, start=1):
        assert await bank.kids[key].request(Deposit(amount * unit)) == amount * unit
    await until_asleep(*bank.kids.values())


async def start_bank(nursery: trio.Nursery, bank: Bank) -> Address[Bank]:
    """Spawn `bank` and wait until its children exist (its begin() has run)."""
    address = hybrid.spawn(nursery, bank)
    with trio.fail_after(10):
        while len(bank.kids) < len(bank.specs):  # noqa: ASYNC110 - begin() sets no event
            await trio.sleep(0.005)
    return address


async def balances_after_resume(url: str, *, agents: Sequence[type[Agent[Any]]] = (Account,)) -> dict[str, int]:
    """Open the store anew (a process restart), resume every unfinished key once, and ask each its balance.

    Also checks that each key is resumed exactly once and that nothing stays live.
    """
    result: dict[str, int] = {}
    async with open_store(url, agents=agents) as store:
        async with trio.open_nursery() as nursery:
            addresses = await store.resume(nursery)
            assert len(addresses) == len(store.live_keys())  # one run per key, no key twice
            assert await store.resume(nursery) == []  # all live already: nothing resumed twice
            for address in addresses:
                name, balance = await address.request(Info())
                assert name not in result
                result[name] = balance
                address.interrupt()
        assert store.live_keys() == []
    return result


def kinds(endings: list[tuple[str, StopReason]]) -> list[tuple[str, StopKind]]:
    return [(name, reason.kind) for name, reason in endings]


# -- a sleeping child woken, then failing --------------------------------------------------------


async def test_a_sleeping_child_woken_by_a_change_then_failing_restarts_with_the_saved_fields(
    journal_url: str,
) -> None:
    """Deposit wakes it (saved), Crash wakes it, changes the balance (saved) and fails: the restart has both."""
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [account("a")])
        boss = await start_bank(nursery, bank)
        a = bank.kids["a"]
        await until_asleep(a)
        assert await a.request(Deposit(5)) == 5
        await until_asleep(a)
        a.send(Crash(3))
        await NOTES.endings_reach(1)
        assert await a.request(Balance()) == 8  # the new instance: fields from the checkpoint
        await until_asleep(a)  # and it sleeps again
        assert NOTES.begins == ["a"]  # restarted from the actor-mode checkpoint, not begin()
        assert kinds(NOTES.endings) == [("a", StopKind.FAILED)]
        assert store.live_keys() == ["a"]
        boss.interrupt()
        await boss.join()
        assert store.live_keys() == []
        assert await store.outcome("a") is None  # interrupted: unfinished
        events = [(event.epoch, event.kind) for event in await store.events("a")]
        assert events[0] == (1, "spawned")
        assert (1, "error") in events
        assert events[-1] == (2, "resumed") or events[-1][1] == "events"
        assert [e for e in events if e[1] == "resumed"] == [(2, "resumed")]
    assert await balances_after_resume(journal_url) == {"a": 8}


async def test_a_sleeping_child_with_write_behind_checkpoints_restarts_with_the_saved_fields(sqlite_url: str) -> None:
    """Async durability: the write of a change may still be in flight when the child sleeps or fails; none is lost."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [account("a", durability=Durability.ASYNC)])
        boss = await start_bank(nursery, bank)
        a = bank.kids["a"]
        a.send(Add(2))
        a.send(Oops(3))  # the handler raises after its change: the change is still saved
        await until_asleep(a)
        a.send(Crash(4))
        await NOTES.endings_reach(1)
        assert await a.request(Balance()) == 9
        boss.interrupt()
        await boss.join()
        assert store.live_keys() == []
    assert await balances_after_resume(sqlite_url) == {"a": 9}


async def test_a_sleeping_child_restarted_from_scratch_forgets_its_fields(sqlite_url: str) -> None:
    """restart_from="scratch": the restarted sleeper runs begin() again with the factory's fresh fields."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [account("a", restart_from=RestartFrom.SCRATCH)])
        boss = await start_bank(nursery, bank)
        a = bank.kids["a"]
        assert await a.request(Deposit(5)) == 5
        await until_asleep(a)
        a.send(Crash(3))
        await NOTES.endings_reach(1)
        assert await a.request(Balance()) == 0
        assert NOTES.begins == ["a", "a"]
        boss.interrupt()
        await boss.join()
        assert store.live_keys() == []
    assert await balances_after_resume(sqlite_url) == {"a": 0}


async def test_a_child_made_to_sleep_by_spawn_saves_each_change_after_waking(sqlite_url: str) -> None:
    """``ctx.spawn(..., hibernate_after=0)`` on a class that keeps its task: it sleeps, and each change is saved."""
    spec = Spec("w", functools.partial(Wakeful, "w"), hibernate_after=0)
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [spec])
        boss = await start_bank(nursery, bank)
        w = bank.kids["w"]
        await until_asleep(w)
        w.send(Add(2))
        await until_asleep(w)
        assert await w.request(Deposit(3)) == 5
        await until_asleep(w)
        boss.interrupt()
        await boss.join()
        assert store.live_keys() == []
    assert await balances_after_resume(sqlite_url, agents=[Wakeful]) == {"w": 5}


async def test_a_timer_that_wakes_a_sleeping_durable_child_has_its_change_saved(sqlite_url: str) -> None:
    """A tick queued by ``send_after`` wakes the sleeper; what its handler changed is checkpointed."""
    spec = Spec("t", Ticker)
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [spec])
        boss = await start_bank(nursery, bank)
        t = bank.kids["t"]
        with trio.fail_after(10):
            while await t.request(Balance()) < 1:  # noqa: ASYNC110 - the tick sets no event
                await trio.sleep(0.005)
        await until_asleep(t)
        boss.interrupt()
        await boss.join()
    assert await balances_after_resume(sqlite_url, agents=[Ticker]) == {"t": 1}


# -- the supervisor ends while its durable children sleep -----------------------------------------


async def test_an_interrupted_supervisor_leaves_every_sleeping_key_unfinished_and_released(journal_url: str) -> None:
    """Ordered shutdown wakes each sleeping child; each key stays unfinished with its fields; none stays live."""
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [account("a"), account("b"), account("c")])
        boss = await start_bank(nursery, bank)
        await fund_and_sleep(bank, 10)
        assert store.live_keys() == ["a", "b", "c"]
        boss.interrupt()
        await boss.join()
        assert store.live_keys() == []
        assert sorted(kinds(NOTES.endings)) == [(key, StopKind.INTERRUPTED) for key in "abc"]
        for key in "abc":
            assert await store.outcome(key) is None
    assert await balances_after_resume(journal_url) == {"a": 10, "b": 20, "c": 30}


async def test_a_cancelled_supervisor_ends_its_sleeping_durable_children_unfinished(journal_url: str) -> None:
    """The nursery is cancelled while the children sleep (the keeper ends them): keys unfinished, none live."""
    async with open_store(journal_url) as store:
        async with trio.open_nursery() as nursery:
            bank = Bank(store, [account("a"), account("b")])
            await start_bank(nursery, bank)
            assert await bank.kids["a"].request(Deposit(1)) == 1
            bank.kids["b"].send(Add(2))
            await until_asleep(*bank.kids.values())
            assert bank.kids["b"].statistics().messages_handled == 1
            nursery.cancel_scope.cancel()
        assert sorted(NOTES.stops) == [("a", StopKind.CANCELLED), ("b", StopKind.CANCELLED)]
        assert store.live_keys() == []
        for key in "ab":
            assert await store.outcome(key) is None
    assert await balances_after_resume(journal_url) == {"a": 1, "b": 2}


async def test_a_supervisor_cancelled_as_a_message_wakes_a_sleeping_child_leaves_no_key_live(
    sqlite_url: str,
) -> None:
    """A message wakes the sleeper (a new task is queued) in the very tick the nursery is cancelled."""
    async with open_store(sqlite_url) as store:
        async with trio.open_nursery() as nursery:
            bank = Bank(store, [account("a")])
            await start_bank(nursery, bank)
            a = bank.kids["a"]
            assert await a.request(Deposit(4)) == 4
            await until_asleep(a)
            a.send(Add(100))  # wakes it: its new task has not run yet
            nursery.cancel_scope.cancel()
        assert NOTES.stops == [("a", StopKind.CANCELLED)]
        assert store.live_keys() == []
    # The Add was never handled (its task started cancelled): the saved balance is 4.
    assert await balances_after_resume(sqlite_url) == {"a": 4}


# -- restarts of sleeping siblings ---------------------------------------------------------------


async def test_one_for_all_restarts_sleeping_durable_siblings_from_their_checkpoints(journal_url: str) -> None:
    """A sibling fails: the sleeping ones are woken, interrupted, and restarted each with its saved balance."""
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        bank = AllBank(store, [account("a"), account("b"), account("c")])
        boss = await start_bank(nursery, bank)
        await fund_and_sleep(bank)
        bank.kids["b"].send(Crash(10))
        await NOTES.endings_reach(3)
        assert sorted(kinds(NOTES.endings)) == [
            ("a", StopKind.INTERRUPTED),
            ("b", StopKind.FAILED),
            ("c", StopKind.INTERRUPTED),
        ]
        assert [await bank.kids[key].request(Balance()) for key in "abc"] == [1, 12, 3]
        await until_asleep(*bank.kids.values())
        assert store.live_keys() == ["a", "b", "c"]
        assert NOTES.begins == ["a", "b", "c"]
        for key in "abc":
            resumed = [event.epoch for event in await store.events(key) if event.kind == "resumed"]
            assert resumed == [2]  # claimed once more, by the restart: never twice
        boss.interrupt()
        await boss.join()
        assert store.live_keys() == []
    assert await balances_after_resume(journal_url) == {"a": 1, "b": 12, "c": 3}


async def test_rest_for_one_restarts_only_the_later_sleeping_siblings(sqlite_url: str) -> None:
    """b fails: c (started after it) is restarted from its checkpoint; a keeps its run and its epoch."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        bank = RestBank(store, [account("a"), account("b"), account("c")])
        boss = await start_bank(nursery, bank)
        await fund_and_sleep(bank)
        bank.kids["b"].send(Crash(10))
        await NOTES.endings_reach(2)
        assert sorted(kinds(NOTES.endings)) == [("b", StopKind.FAILED), ("c", StopKind.INTERRUPTED)]
        assert [await bank.kids[key].request(Balance()) for key in "abc"] == [1, 12, 3]
        assert [event.kind for event in await store.events("a") if event.kind == "resumed"] == []
        boss.interrupt()
        await boss.join()
        assert store.live_keys() == []
    assert await balances_after_resume(sqlite_url) == {"a": 1, "b": 12, "c": 3}


async def test_a_deposit_sent_to_a_sleeping_sibling_as_another_fails_is_saved_once(journal_url: str) -> None:
    """One-for-all: b's Crash and a Deposit to sleeping a in one tick; the answer is a's saved balance."""
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        bank = AllBank(store, [account("a"), account("b")])
        boss = await start_bank(nursery, bank)
        assert await bank.kids["a"].request(Deposit(1)) == 1
        await until_asleep(*bank.kids.values())
        bank.kids["b"].send(Crash(1))
        answer = await bank.kids["a"].request(Deposit(5))
        assert answer == 6
        await NOTES.endings_reach(2)
        assert await bank.kids["a"].request(Balance()) == 6  # the restarted instance has it
        boss.interrupt()
        await boss.join()
        assert store.live_keys() == []
    assert await balances_after_resume(journal_url) == {"a": 6, "b": 1}


# -- requests while a child is stopped or restarted ---------------------------------------------------


async def test_a_request_sent_while_the_child_restarts_is_answered_by_the_restored_instance(
    sqlite_url: str,
) -> None:
    """Sent after the failed run ended, before the restart: it waits, and the restored instance saves it."""
    NOTES.hold_ended = trio.Event()
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [account("a")])
        boss = await start_bank(nursery, bank)
        a = bank.kids["a"]
        assert await a.request(Deposit(2)) == 2
        await until_asleep(a)
        a.send(Crash(3))
        with trio.fail_after(10):
            await NOTES.in_ended.wait()  # the run ended; the supervisor decides its restart after this hook
        assert store.live_keys() == []  # the ended run released the key
        async with trio.open_nursery() as asking:
            answers: list[int] = []

            async def ask() -> None:
                answers.append(await a.request(Deposit(10)))

            asking.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []  # waits for the next instance
            NOTES.hold_ended.set()
        assert answers == [15]
        await until_asleep(a)
        boss.interrupt()
        await boss.join()
    assert await balances_after_resume(sqlite_url) == {"a": 15}


async def test_a_request_answered_by_a_sleeping_durable_child_is_saved_before_the_answer(sqlite_url: str) -> None:
    """The answer comes once the change is committed: a second connection to the database already sees it."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [account("a")])
        boss = await start_bank(nursery, bank)
        a = bank.kids["a"]
        for expected in (3, 6, 9):
            await until_asleep(a)
            assert await a.request(Deposit(3)) == expected
            async with open_store(sqlite_url) as other:  # another process reading the same database
                events = await other.events("a")
            assert sum(event.kind == "events" for event in events) == expected // 3 + 1  # + the entry
        boss.interrupt()
        await boss.join()


# -- requests handled while an interrupted child finishes: saved before answered -------------------


async def test_a_request_queued_behind_an_interrupt_of_a_sleeper_is_answered_only_if_saved(sqlite_url: str) -> None:
    """interrupt(), then a Deposit to a sleeping permanent child: answered while it finishes, so saved then."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [account("a")])
        boss = await start_bank(nursery, bank)
        a = bank.kids["a"]
        assert await a.request(Deposit(1)) == 1
        await until_asleep(a)
        a.interrupt()  # queued first: the run ends interrupted (unfinished), then restarts
        assert await a.request(Deposit(10)) == 11  # answered by the finishing run
        await NOTES.endings_reach(1)
        assert kinds(NOTES.endings) == [("a", StopKind.INTERRUPTED)]
        assert await a.request(Balance()) == 11  # the restarted run has the answered deposit
        boss.interrupt()
        await boss.join()


async def test_a_request_answered_during_a_graceful_shutdown_survives_the_resume(journal_url: str) -> None:
    """The supervisor is interrupted (SIGTERM); a request reaches a child during its on_interrupt and is answered.

    The key stays unfinished (a graceful shutdown does not end durable work), so
    the next process resumes it: it must have what the answered request changed.
    """
    NOTES.hold_interrupt = trio.Event()
    async with open_store(journal_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [account("a")])
        boss = await start_bank(nursery, bank)
        a = bank.kids["a"]
        assert await a.request(Deposit(1)) == 1
        await until_asleep(a)
        boss.interrupt()
        with trio.fail_after(10):
            await NOTES.in_interrupt.wait()  # the shutdown woke it; its mailbox is still open
        answers: list[int] = []
        answered = trio.Event()

        async def ask() -> None:
            answers.append(await a.request(Deposit(10)))
            answered.set()

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        NOTES.hold_interrupt.set()
        await boss.join()
        with trio.fail_after(10):
            await answered.wait()  # the answer went before the child ended; its caller may run later
        assert answers == [11]
        assert store.live_keys() == []
        assert await store.outcome("a") is None
    assert await balances_after_resume(journal_url) == {"a": 11}


# -- the store closed under sleeping children -----------------------------------------------------


async def test_a_sleeping_child_woken_after_the_store_closed_fails_clearly(sqlite_url: str) -> None:
    """A change that cannot be saved: the caller gets StoreError, the child fails with it, nothing is lost silently."""
    async with trio.open_nursery() as nursery:
        async with open_store(sqlite_url) as store:
            bank = Bank(store, [account("a", restart=Restart.TEMPORARY), account("b", restart=Restart.TEMPORARY)])
            boss = await start_bank(nursery, bank)
            a, b = bank.kids["a"], bank.kids["b"]
            assert await a.request(Deposit(7)) == 7
            await until_asleep(a, b)
        assert store.live_keys() == ["a", "b"]  # still held by the sleeping runs
        with pytest.raises(StoreError, match="closed"):
            await a.request(Deposit(1))
        b.send(Add(1))  # an event: nobody to answer, the child must fail all the same
        await NOTES.endings_reach(2)
        reasons = dict(NOTES.endings)
        assert isinstance(reasons["a"].error, StoreError)
        assert isinstance(reasons["b"].error, StoreError)
        assert store.live_keys() == []
        boss.interrupt()
        await boss.join()
    assert await balances_after_resume(sqlite_url) == {"a": 7, "b": 0}


async def test_a_sleeping_child_asked_without_change_after_the_store_closed_still_answers(sqlite_url: str) -> None:
    """Nothing to save: a read-only request is answered; the key is released when the child is interrupted."""
    async with trio.open_nursery() as nursery:
        async with open_store(sqlite_url) as store:
            bank = Bank(store, [account("a", restart=Restart.TRANSIENT)])
            boss = await start_bank(nursery, bank)
            a = bank.kids["a"]
            assert await a.request(Deposit(7)) == 7
            await until_asleep(a)
        assert await a.request(Balance()) == 7
        boss.interrupt()
        await boss.join()
        assert kinds(NOTES.endings) == [("a", StopKind.INTERRUPTED)]
        assert store.live_keys() == []
    assert await balances_after_resume(sqlite_url) == {"a": 7}


async def test_a_permanent_sleeping_child_of_a_closed_store_ends_its_supervisor_not_a_silent_loop(
    sqlite_url: str,
) -> None:
    """Each restart's claim fails with StoreError: the restart intensity gives up, the supervisor fails."""
    failures: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        async with open_store(sqlite_url) as store:
            bank = Bank(store, [account("a")])

            async def run_bank() -> None:
                try:
                    await bank.run()
                except hybrid.RestartIntensityExceeded as error:
                    failures.append(error)

            nursery.start_soon(run_bank)
            with trio.fail_after(10):
                while "a" not in bank.kids:  # noqa: ASYNC110 - begin() sets no event
                    await trio.sleep(0.005)
            a = bank.kids["a"]
            await until_asleep(a)
        a.send(Add(1))
    [failure] = failures
    assert isinstance(failure, hybrid.RestartIntensityExceeded)
    assert NOTES.endings
    assert all(isinstance(reason.error, StoreError) for _, reason in NOTES.endings)
    assert store.live_keys() == []
    assert not a.is_alive
    assert await balances_after_resume(sqlite_url) == {"a": 0}


async def test_a_sleeping_child_told_to_finish_after_the_store_closed_fails_instead_of_ending_done(
    sqlite_url: str,
) -> None:
    """Its ending cannot be recorded: it fails with StoreError (never a silent done), and the key stays unfinished."""
    async with trio.open_nursery() as nursery:
        async with open_store(sqlite_url) as store:
            bank = Bank(store, [account("a", restart=Restart.TEMPORARY)])
            boss = await start_bank(nursery, bank)
            a = bank.kids["a"]
            assert await a.request(Deposit(3)) == 3
            await until_asleep(a)
        a.send(Close())
        await NOTES.endings_reach(1)
        boss.interrupt()
        await boss.join()
    [(name, reason)] = NOTES.endings
    assert name == "a"
    assert isinstance(reason.error, StoreError)
    assert store.live_keys() == []
    assert await balances_after_resume(sqlite_url) == {"a": 3}


# -- finishing while asleep ------------------------------------------------------------------------


async def test_a_sleeping_child_that_finishes_records_its_output_and_is_not_resumed(sqlite_url: str) -> None:
    """Close wakes it; it ends done with its balance; the key is finished: resume brings nothing back."""
    async with open_store(sqlite_url) as store, trio.open_nursery() as nursery:
        bank = Bank(store, [account("a", restart=Restart.TRANSIENT), account("b")])
        boss = await start_bank(nursery, bank)
        assert await bank.kids["a"].request(Deposit(9)) == 9
        await until_asleep(*bank.kids.values())
        bank.kids["a"].send(Close())
        await NOTES.endings_reach(1)
        assert kinds(NOTES.endings) == [("a", StopKind.DONE)]
        ending = await store.outcome("a")
        assert ending is not None
        assert ending.status is Status.DONE
        assert store.live_keys() == ["b"]
        boss.interrupt()
        await boss.join()
    assert await balances_after_resume(sqlite_url) == {"b": 0}


# -- cancellation at each await of the checkpointer ------------------------------------------------


class Cutting:
    """A `hybrid.Checkpointer` that hands every call to a store's `KeyCheckpointer`, and cuts the run at one of them.

    At the `nth` call of `method` it cancels `scope` (the whole tree: the crash of the
    process) just before handing the call on (``before``) or just after it returned
    (then a schedule point raises the cancellation there).
    """

    def __init__(self, inner: KeyCheckpointer, method: str, nth: int, before: bool) -> None:
        self.inner = inner
        self.method = method
        self.nth = nth
        self.before = before
        self.calls: dict[str, int] = {}
        self.scope: trio.CancelScope | None = None
        self.cut = False

    @property
    def idempotency_key(self) -> str:
        return self.inner.idempotency_key

    def _due(self, method: str) -> bool:
        self.calls[method] = self.calls.get(method, 0) + 1
        return method == self.method and self.calls[method] == self.nth

    def _cut(self) -> None:
        assert self.scope is not None
        self.cut = True
        self.scope.cancel()

    async def _call(self, method: str, call: Callable[[], Any]) -> Any:
        due = self._due(method)
        if due and self.before:
            self._cut()
        result = await call()
        if due and not self.before:
            self._cut()
            await trio.lowlevel.checkpoint()
        return result

    async def start(self, agent: Any) -> Next[Any] | None:
        result: Next[Any] | None = await self._call("start", lambda: self.inner.start(agent))
        return result

    async def transition(self, agent: Any, nxt: Next[Any]) -> None:
        await self._call("transition", lambda: self.inner.transition(agent, nxt))

    async def handled(self, agent: Any) -> None:
        await self._call("handled", lambda: self.inner.handled(agent))

    async def ended(self, agent: Any, reason: StopReason, output: Any) -> None:
        await self._call("ended", lambda: self.inner.ended(agent, reason, output))


# The scenario's calls, in order, and the balances a resume may find after a cut there:
# start 1, transition 1 (actor mode), handled 1 (Deposit 5), handled 2 (Crash +3, then it
# fails), ended 1 (failed: unfinished), start 2 (the restart's claim), transition 2 (its
# resumed actor mode), handled 3 (Deposit 1), ended 2 (the shutdown: interrupted).
CUTS: dict[tuple[str, int], set[int | None]] = {
    ("start", 1): {None, 0},  # None: the key may not exist (its claim did not commit)
    ("transition", 1): {0},
    ("handled", 1): {0, 5},
    ("handled", 2): {5, 8},
    ("ended", 1): {8},
    ("start", 2): {8},
    ("transition", 2): {8},
    ("handled", 3): {8, 9},
    ("ended", 2): {9},
}


@pytest.mark.parametrize(
    ("method", "nth", "before"),
    [(method, nth, before) for (method, nth), before in itertools.product(CUTS, (True, False))],
)
async def test_a_crash_at_any_await_of_a_sleeping_durable_child_leaves_its_key_resumable(
    sqlite_url: str, method: str, nth: int, before: bool
) -> None:
    """The tree is cancelled at one await of the checkpointer: no key stays live; a resume finds a saved balance."""
    cutters: list[Cutting] = []
    async with open_store(sqlite_url) as store:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                def wrap(inner: KeyCheckpointer) -> hybrid.Checkpointer:
                    cutter = Cutting(inner, method, nth, before)
                    cutter.scope = nursery.cancel_scope
                    cutters.append(cutter)
                    return cutter

                bank = Bank(store, [Spec("a", functools.partial(Account, "a"), wrap=wrap)])
                boss = hybrid.spawn(nursery, bank)
                with trio.fail_after(5):
                    while "a" not in bank.kids:  # noqa: ASYNC110 - begin() sets no event
                        await trio.sleep(0.005)
                a = bank.kids["a"]
                await until_asleep(a)
                assert await a.request(Deposit(5)) == 5
                await until_asleep(a)
                a.send(Crash(3))
                await NOTES.endings_reach(1)
                assert await a.request(Deposit(1)) == 9
                await until_asleep(a)
                boss.interrupt()
                await boss.join()
        [cutter] = cutters
        assert cutter.cut  # the cut point was reached
        assert store.live_keys() == []
    found = await balances_after_resume(sqlite_url)
    assert found.get("a") in CUTS[method, nth]


# -- another process takes the key over while the child sleeps --------------------------------------


async def test_a_sleeping_child_fenced_off_by_another_process_does_not_take_its_key_back(sqlite_url: str) -> None:
    """Process B resumes key "a" while process A's supervised child sleeps on it; A's child is woken and fenced.

    A's child fails with Fenced (its change is not written). Its supervisor's restart
    must not claim the key again: that would fence off B, the newer run, in turn.
    """
    async with open_store(sqlite_url) as store_a, trio.open_nursery() as nursery:
        bank = Bank(store_a, [account("a", restart=Restart.TRANSIENT)])
        boss = await start_bank(nursery, bank)
        a = bank.kids["a"]
        assert await a.request(Deposit(1)) == 1
        await until_asleep(a)
        async with open_store(sqlite_url) as store_b, trio.open_nursery() as nursery_b:
            b = await store_b.spawn(nursery_b, Account("a"), key="a")  # resumed: epoch 2
            assert await b.request(Balance()) == 1
            with pytest.raises(Fenced):
                await a.request(Deposit(10))
            await NOTES.endings_reach(1)
            assert isinstance(NOTES.endings[0][1].error, Fenced)
            await trio.sleep(0.05)  # room for a restart, if the supervisor makes one
            assert await b.request(Deposit(100)) == 101  # B still owns the key
            b.interrupt()
        boss.interrupt()
        await boss.join()
        assert store_a.live_keys() == []
    assert await balances_after_resume(sqlite_url) == {"a": 101}


async def test_a_permanent_child_fenced_off_stops_at_each_restart_until_its_supervisor_gives_up(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A permanent child is started again however it ended: each restart stops at once without claiming the key.

    The newer run keeps the key throughout; the supervisor's intensity ends the
    loop (loud: RestartIntensityExceeded), and the log says why each run stopped.
    """

    class Strict(Bank):
        max_restarts = 3

    async with open_store(sqlite_url) as store_b, trio.open_nursery() as nursery_b:
        stores: list[Store] = []
        taken: list[Address[Account]] = []
        with pytest.RaisesGroup(pytest.RaisesExc(hybrid.RestartIntensityExceeded, match="more than 3 restarts")):
            async with open_store(sqlite_url) as store_a, trio.open_nursery() as nursery:
                stores.append(store_a)
                bank = Strict(store_a, [account("a", restart=Restart.PERMANENT)])
                await start_bank(nursery, bank)
                a = bank.kids["a"]
                assert await a.request(Deposit(1)) == 1
                await until_asleep(a)
                taken.append(await store_b.spawn(nursery_b, Account("a"), key="a"))  # resumed: epoch 2
                with pytest.raises(Fenced):
                    await a.request(Deposit(10))
                with trio.fail_after(10):
                    await trio.sleep_forever()  # until the supervisor gives up
        assert stores[0].live_keys() == []
        assert isinstance(NOTES.endings[0][1].error, Fenced)
        assert [reason.kind for _, reason in NOTES.endings[1:]] == [StopKind.STOPPED] * 3
        b = taken[0]
        assert await b.request(Deposit(100)) == 101  # B kept the key throughout
        b.interrupt()
    assert caplog.text.count("a newer run took it over; Account stops instead of claiming it back") == 3
    assert await balances_after_resume(sqlite_url) == {"a": 101}
