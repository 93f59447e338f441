"""Supervision under faults, in the manner of OTP's supervisor_SUITE and Akka's SupervisorSpec.

Each test makes children end in ways that race with the supervisor's own work
(slow hooks, a flooded mailbox, overlapping restarts, restart backoff, a
shutdown in progress) and then checks what a supervisor promises: one restart
per death, exactly one live instance per child spec, addresses that keep
reaching the current instance, hooks that never overlap, start and stop
order, crash reports, instruments and names. Time is simulated
(``autojump_clock``): a deadlock fails a ``trio.fail_after`` guard at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, StopKind, StopReason, Strategy, Supervisor

GUARD = 36_000  # simulated seconds: a deadlock fails the test instead of hanging it


# -- messages ----------------------------------------------------------------


@attrs.frozen
class Crash:
    pass


@attrs.frozen
class Note:
    n: int


@attrs.frozen
class Who(hybrid.Request[tuple[str, int]]):
    pass


@attrs.frozen
class Noise:
    n: int = 0


@attrs.frozen
class SpawnMore:
    keys: tuple[str, ...]


@attrs.frozen
class SpawnLate:
    key: str
    group: int
    stop_delay: float = 1.0


@attrs.frozen
class TrySpawn:
    name: str


@attrs.frozen
class Finish:
    pass


# -- what happened to the children --------------------------------------------


class Ledger:
    """Every instance of every child spec: made, begun, ended, and what it handled."""

    def __init__(self) -> None:
        self.start = trio.current_time()
        self.made: Counter[str] = Counter()
        self.alive: defaultdict[str, set[int]] = defaultdict(set)
        self.starts: list[str] = []  # "key#n", in the order the begin() calls ran
        self.saw_before: dict[str, str | None] = {}  # "key#n" -> the start recorded before it
        self.notes: list[tuple[str, int, int]] = []  # (key, instance, note)
        self.reasons: defaultdict[str, list[StopReason]] = defaultdict(list)
        self.events: list[tuple[float, str]] = []

    def log(self, text: str) -> None:
        self.events.append((round(trio.current_time() - self.start, 6), text))

    def texts(self) -> list[str]:
        return [text for _, text in self.events]

    def live(self, key: str) -> int:
        return len(self.alive[key])

    def begun(self, key: str) -> int:
        return sum(1 for start in self.starts if start.split("#")[0] == key)

    def factory(
        self, key: str, *, lifetimes: Sequence[float | None] = (None,), stop_delay: float = 0.0
    ) -> Callable[[], Child]:
        """Instance n (from 1) lives lifetimes[n-1] seconds then raises (the last one repeats; None: forever)."""

        def make() -> Child:
            self.made[key] += 1
            n = self.made[key]
            return Child(self, key, n, lifetimes[min(n, len(lifetimes)) - 1], stop_delay)

        return make


class Child(Agent):
    """A child that records its life in a `Ledger`; crashes after `lifetime` or on `Crash`."""

    def __init__(
        self, ledger: Ledger, key: str, n: int, lifetime: float | None = None, stop_delay: float = 0.0
    ) -> None:
        self.ledger = ledger
        self.key = key
        self.n = n
        self.lifetime = lifetime
        self.stop_delay = stop_delay

    def begin(self) -> Next[Self]:
        ledger = self.ledger
        me = f"{self.key}#{self.n}"
        ledger.saw_before[me] = ledger.starts[-1] if ledger.starts else None
        ledger.starts.append(me)
        ledger.alive[self.key].add(self.n)
        ledger.log(f"start {me}")
        if self.lifetime is None:
            return Next.events()
        return Next.do_async(self.live, self.lifetime)

    async def live(self, lifetime: float) -> Next[Self]:
        await trio.sleep(lifetime)
        raise ValueError(f"{self.key}#{self.n} crashed")

    @hybrid.on_event
    async def crash(self, event: Crash) -> None:
        self.ctx.do_next(Next.fail(ValueError(f"{self.key}#{self.n} crashed")))

    @hybrid.on_event
    async def note(self, event: Note) -> None:
        self.ledger.notes.append((self.key, self.n, event.n))

    @hybrid.on_request
    async def who(self, request: Who) -> tuple[str, int]:
        return (self.key, self.n)

    async def on_interrupt(self) -> None:
        self.ledger.log(f"{self.key} interrupted")
        if self.stop_delay:
            await trio.sleep(self.stop_delay)

    async def on_stop(self, reason: StopReason) -> None:
        self.ledger.alive[self.key].discard(self.n)
        self.ledger.reasons[self.key].append(reason)
        self.ledger.log(f"{self.key} stopped {reason.kind.value}")


class Sup(Supervisor):
    """A supervisor of `specs` that watches its own hooks and handlers for overlaps."""

    max_restarts: ClassVar[int | None] = 1000
    restart_period = 1000.0
    hook_delay: float = 0.0
    hook_raises: bool = False
    noise_delay: float = 0.0
    notify_on_end: bool = False  # on_child_ended sends Note(100) to the child that ended

    def __init__(
        self,
        ledger: Ledger,
        specs: Sequence[tuple[str, Callable[[], Agent[Any]] | Agent[Any]]] = (),
        groups: dict[str, int] | None = None,
    ) -> None:
        self.ledger = ledger
        self.specs = specs
        self.groups = groups or {}
        self.addresses: dict[str, hybrid.Address[Any]] = {}
        self.hook_calls: list[tuple[hybrid.Address[Any], StopReason]] = []
        self.depth = 0
        self.overlaps: list[str] = []
        self.errors: list[Exception] = []
        self.refused: list[str] = []
        self.spawn_errors: list[BaseException] = []
        self.noise = 0

    def begin(self) -> Next[Self]:
        for key, spec in self.specs:
            self.addresses[key] = self.ctx.spawn(spec, group=self.groups.get(key, 0))
        return Next.events()

    def _enter(self, what: str) -> None:
        self.depth += 1
        if self.depth > 1:
            self.overlaps.append(f"{what} at {trio.current_time() - self.ledger.start:g}")

    async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
        self._enter("on_child_ended")
        try:
            self.hook_calls.append((address, reason))
            if self.notify_on_end:
                try:
                    address.send(Note(100))
                except hybrid.AgentStopped:
                    self.refused.append(f"hook at {trio.current_time() - self.ledger.start:g}")
            if self.hook_delay:
                await trio.sleep(self.hook_delay)
            if self.hook_raises:
                raise RuntimeError("hook broke")
        finally:
            self.depth -= 1

    @hybrid.on_event
    async def noisy(self, event: Noise) -> None:
        self._enter("noise handler")
        try:
            self.noise += 1
            await trio.sleep(self.noise_delay)
        finally:
            self.depth -= 1

    @hybrid.on_event
    async def spawn_more(self, event: SpawnMore) -> None:
        for key in event.keys:
            self.addresses[key] = self.ctx.spawn(self.ledger.factory(key))

    @hybrid.on_event
    async def spawn_late(self, event: SpawnLate) -> None:
        child = Child(self.ledger, event.key, 1, None, event.stop_delay)
        self.addresses[event.key] = self.ctx.spawn(child, group=event.group)

    @hybrid.on_event
    async def try_spawn(self, event: TrySpawn) -> None:
        try:  # instances of this factory are recorded under "try-{name}", apart from the child's own
            self.ctx.spawn(self.ledger.factory(f"try-{event.name}"), name=event.name)
        except Exception as error:
            self.spawn_errors.append(error)

    @hybrid.on_event
    async def finish(self, event: Finish) -> None:
        self.ctx.do_next(Next.done())

    async def on_error(self, error: Exception) -> None:
        self.errors.append(error)


def configured(strategy: Strategy = Strategy.ONE_FOR_ONE, **attributes: Any) -> type[Sup]:
    """A `Sup` subclass with these class attributes (strategy, restart_backoff, hook_delay...)."""
    return type(f"Sup_{strategy.name}", (Sup,), {"strategy": strategy, **attributes})


def live_counts(ledger: Ledger, keys: Sequence[str]) -> dict[str, int]:
    return {key: ledger.live(key) for key in keys}


def at_most_one_kind(reasons: Sequence[StopReason]) -> list[str]:
    return [reason.kind.value for reason in reasons]


async def flood(address: hybrid.Address[Any], count: int, every: int = 100, pause: float = 0.05) -> None:
    """Send `count` Noise events to `address`, `every` at a time, `pause` seconds apart."""
    for n in range(count):
        try:
            address.send(Noise(n))
        except hybrid.AgentStopped:
            return
        if n % every == every - 1:
            await trio.sleep(pause)


# -- 1. one death is one restart ----------------------------------------------

RESTARTED_WHEN_B_DIES = {
    Strategy.ONE_FOR_ONE: {"a": 1, "b": 2, "c": 1},
    Strategy.ONE_FOR_ALL: {"a": 2, "b": 2, "c": 2},
    Strategy.REST_FOR_ONE: {"a": 1, "b": 2, "c": 2},
}


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize(
    ("hook_delay", "noise"),
    [(5.0, 0), (0.0, 2000), (5.0, 2000), (0.5, 300)],
    ids=["slow-hook", "flooded-mailbox", "slow-hook-and-flood", "short-hook-short-flood"],
)
async def test_one_death_is_one_restart_whatever_the_strategy_the_hook_latency_or_the_mailbox_load(
    autojump_clock: trio.testing.MockClock, strategy: Strategy, hook_delay: float, noise: int
) -> None:
    """A single crash starts each affected child exactly once more, and nothing is restarted twice."""
    ledger = Ledger()
    sup = configured(strategy, hook_delay=hook_delay, noise_delay=0.001)(
        ledger, [(key, ledger.factory(key)) for key in "abc"]
    )
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            sup.addresses["b"].send(Crash())
            for n in range(noise // 2):  # a burst queued at once, the rest while the restart goes on
                address.send(Noise(n))
            nursery.start_soon(flood, address, noise // 2)
            await trio.sleep(300)
            assert dict(ledger.made) == RESTARTED_WHEN_B_DIES[strategy]
            assert {key: ledger.begun(key) for key in "abc"} == RESTARTED_WHEN_B_DIES[strategy]
            assert live_counts(ledger, "abc") == {"a": 1, "b": 1, "c": 1}
            failed = [child for child, reason in sup.hook_calls if reason.failed]
            assert failed == [sup.addresses["b"]]
            address.interrupt()
    assert dict(ledger.made) == RESTARTED_WHEN_B_DIES[strategy]  # and none during the shutdown
    assert live_counts(ledger, "abc") == {"a": 0, "b": 0, "c": 0}
    assert sup.errors == []


@pytest.mark.parametrize("strategy", list(Strategy))
async def test_two_deaths_far_apart_with_a_slow_hook_are_two_restarts_of_each_affected_child(
    autojump_clock: trio.testing.MockClock, strategy: Strategy
) -> None:
    """Two deaths far enough apart to be two restarts: each restarts the affected children once."""
    ledger = Ledger()
    sup = configured(strategy, hook_delay=3.0)(ledger, [(key, ledger.factory(key)) for key in "abc"])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            sup.addresses["b"].send(Crash())
            await trio.sleep(100)
            sup.addresses["b"].send(Crash())
            await trio.sleep(100)
            once = RESTARTED_WHEN_B_DIES[strategy]
            assert dict(ledger.made) == {key: 1 + 2 * (count - 1) for key, count in once.items()}
            assert live_counts(ledger, "abc") == {"a": 1, "b": 1, "c": 1}
            address.interrupt()


# -- 2. overlapping restarts ----------------------------------------------------

FOUR = ("a", "b", "c", "d")


@pytest.mark.parametrize("strategy", [Strategy.REST_FOR_ONE, Strategy.ONE_FOR_ALL])
@pytest.mark.parametrize(("first", "second"), [("a", "d"), ("d", "a"), ("b", "c"), ("c", "b"), ("b", "a")])
@pytest.mark.parametrize(
    "gap", [None, 0.0, 0.5, 1.0, 1.5], ids=["same-tick", "next-tick", "in-backoff", "at-restart", "after"]
)
async def test_overlapping_restarts_leave_every_child_supervised_exactly_once(
    autojump_clock: trio.testing.MockClock, strategy: Strategy, first: str, second: str, gap: float | None
) -> None:
    """Two crashes that overlap a restart (8 rounds): one live instance per spec, no duplicate child, all answer."""
    ledger = Ledger()
    backoff = hybrid.Backoff(initial=1, factor=1)
    sup = configured(strategy, restart_backoff=backoff)(ledger, [(key, ledger.factory(key)) for key in FOUR])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            addresses = dict(sup.addresses)
            for _ in range(8):
                with contextlib.suppress(hybrid.AgentStopped):  # refusals are another test's business
                    addresses[first].send(Crash())
                if gap is not None:
                    await trio.sleep(gap)
                with contextlib.suppress(hybrid.AgentStopped):
                    addresses[second].send(Crash())
                await trio.sleep(30)

                assert live_counts(ledger, FOUR) == dict.fromkeys(FOUR, 1)
                children = sup.ctx.children()
                assert len(children) == len(set(children)) == len(FOUR)
                assert set(children) == set(addresses.values())
                for key, child in addresses.items():
                    with trio.fail_after(10):
                        answer = await child.request(Who())
                    assert answer[0] == key
                    assert ledger.alive[key] == {answer[1]}
                assert sup.errors == []
            address.interrupt()
    assert live_counts(ledger, FOUR) == dict.fromkeys(FOUR, 0)
    # Every instance was supervised: none was left to be cancelled with the supervisor's tasks.
    kinds = {reason.kind for key in FOUR for reason in ledger.reasons[key]}
    assert kinds <= {StopKind.FAILED, StopKind.INTERRUPTED}


@pytest.mark.parametrize("strategy", [Strategy.REST_FOR_ONE, Strategy.ONE_FOR_ALL])
async def test_a_crash_storm_across_all_children_of_a_group_restart_settles_to_one_instance_each(
    autojump_clock: trio.testing.MockClock, strategy: Strategy
) -> None:
    """Every child crashes at once, then again during the restart's backoff: still one live instance each."""
    ledger = Ledger()
    keys = [f"k{i}" for i in range(8)]
    sup = configured(strategy, restart_backoff=hybrid.Backoff(initial=0.5, factor=1))(
        ledger, [(key, ledger.factory(key)) for key in keys]
    )
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            addresses = dict(sup.addresses)
            for child in reversed(list(addresses.values())):
                child.send(Crash())
            await trio.sleep(0.25)
            for child in addresses.values():
                with contextlib.suppress(hybrid.AgentStopped):
                    child.send(Crash())
            await trio.sleep(120)
            assert live_counts(ledger, keys) == dict.fromkeys(keys, 1)
            children = sup.ctx.children()
            assert len(children) == len(set(children)) == len(keys)
            for key, child in addresses.items():
                with trio.fail_after(10):
                    assert (await child.request(Who()))[0] == key
            address.interrupt()
    assert live_counts(ledger, keys) == dict.fromkeys(keys, 0)


# -- 3. on_child_ended runs alone --------------------------------------------------


@pytest.mark.parametrize("scenario", ["crashes", "interrupted", "finishes", "crashes-while-stopping"])
@pytest.mark.parametrize("hook_raises", [False, True], ids=["hook-returns", "hook-raises"])
async def test_on_child_ended_never_runs_concurrently_with_itself_or_another_handler(
    autojump_clock: trio.testing.MockClock, scenario: str, hook_raises: bool
) -> None:
    """Several children end together (also while the supervisor finishes): the hook and handlers never overlap."""
    ledger = Ledger()
    cls = configured(hook_delay=1.0, hook_raises=hook_raises, noise_delay=0.05)
    if scenario == "crashes":
        specs: list[tuple[str, Callable[[], Agent[Any]] | Agent[Any]]] = [
            (f"t{i}", Child(ledger, f"t{i}", 1, lifetime=1)) for i in range(5)
        ]
        groups: dict[str, int] = {}
    elif scenario == "crashes-while-stopping":
        # Group 0 crashes at t=1.5 while group 1 takes until t=2 to stop.
        specs = [(f"t{i}", Child(ledger, f"t{i}", 1, lifetime=1.5)) for i in range(3)]
        specs += [(f"s{i}", Child(ledger, f"s{i}", 1, stop_delay=1)) for i in range(2)]
        groups = {"s0": 1, "s1": 1}
    else:
        delays = [0, 0, 0.5, 0.5, 1]
        specs = [(f"s{i}", Child(ledger, f"s{i}", 1, stop_delay=delays[i])) for i in range(5)]
        groups = {}
    sup = cls(ledger, specs, groups)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            nursery.start_soon(flood, address, 400, 10, 0.1)
            await trio.sleep(1)
            if scenario in ("interrupted", "crashes-while-stopping"):
                address.interrupt()
            elif scenario == "finishes":
                address.send(Finish())
            else:
                await trio.sleep(30)
                address.interrupt()
            await address.join()
    assert sup.overlaps == []
    assert len(sup.hook_calls) == 5
    assert len({child for child, _ in sup.hook_calls}) == 5
    if hook_raises:
        assert [str(error) for error in sup.errors] == ["hook broke"] * 5
    else:
        assert sup.errors == []


async def test_an_error_in_on_child_ended_while_the_supervisor_finishes_goes_to_on_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The hook's exception for a child stopped by the shutdown reaches on_error; the supervisor ends interrupted."""
    ledger = Ledger()
    sup = configured(hook_raises=True)(ledger, [("a", ledger.factory("a")), ("b", ledger.factory("b"))], {"b": 1})
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            address.interrupt()
            await address.join()
    assert [str(error) for error in sup.errors] == ["hook broke", "hook broke"]
    assert address.statistics().reason == StopReason.INTERRUPTED


# -- 4. start order ---------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 7, 50])
@pytest.mark.parametrize("where", ["begin", "handler"])
async def test_children_start_in_spawn_order_each_begin_after_the_previous_one(
    autojump_clock: trio.testing.MockClock, count: int, where: str
) -> None:
    """Child k's begin() runs after child k-1's, whatever order trio would schedule new tasks in (16 supervisors)."""
    for _ in range(16):  # trio reverses a batch of new tasks half the time: one lucky order proves nothing
        ledger = Ledger()
        keys = tuple(f"c{i:02}" for i in range(count))
        specs = [(key, ledger.factory(key)) for key in keys] if where == "begin" else []
        sup = Sup(ledger, specs)
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                address = hybrid.spawn(nursery, sup)
                if where == "handler":
                    address.send(SpawnMore(keys))
                await trio.sleep(1)
                address.interrupt()
        expected = [f"{key}#1" for key in keys]
        assert ledger.starts == expected
        assert [ledger.saw_before[start] for start in expected] == [None, *expected[:-1]]


@pytest.mark.parametrize(
    ("strategy", "crashed"),
    [(Strategy.ONE_FOR_ALL, 0), (Strategy.ONE_FOR_ALL, 17), (Strategy.ONE_FOR_ALL, 49), (Strategy.REST_FOR_ONE, 17)],
)
async def test_a_restart_of_several_children_starts_them_again_in_spawn_order(
    autojump_clock: trio.testing.MockClock, strategy: Strategy, crashed: int
) -> None:
    """One-for-all and rest-for-one restarts start the children again one after the other, in spawn order (4 times)."""
    ledger = Ledger()
    keys = [f"c{i:02}" for i in range(50)]
    affected = keys if strategy is Strategy.ONE_FOR_ALL else keys[crashed:]
    sup = configured(strategy)(ledger, [(key, ledger.factory(key)) for key in keys])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            for round_ in range(2, 6):
                mark = len(ledger.events)
                sup.addresses[keys[crashed]].send(Crash())
                await trio.sleep(60)
                restarted = [start for start in ledger.starts if start.endswith(f"#{round_}")]
                assert restarted == [f"{key}#{round_}" for key in affected]
                assert [ledger.saw_before[start] for start in restarted[1:]] == restarted[:-1]
                # The old instances all end (latest started first) before the first new one starts.
                texts = [text for _, text in ledger.events[mark:]]
                first_start = texts.index(f"start {restarted[0]}")
                stopped = [text for text in texts if text.endswith(("stopped interrupted", "stopped failed"))]
                assert len(stopped) == len(affected)
                assert max(texts.index(text) for text in stopped) < first_start
            address.interrupt()


# -- 5. a restarting child's address keeps working -----------------------------------


class Watcher(Agent):
    """Monitors `target`; when it ends, sends it `Note(note)` at once."""

    def __init__(self, target: hybrid.Address[Any], note: int, refused: list[str]) -> None:
        self.target = target
        self.note = note
        self.refused = refused
        self.seen = trio.Event()

    def begin(self) -> Next[Self]:
        self.ctx.monitor(self.target)
        return Next.events()

    @hybrid.on_event
    async def ended(self, event: hybrid.Ended) -> None:
        try:
            self.target.send(Note(self.note))
        except hybrid.AgentStopped:
            self.refused.append("monitor")
        self.seen.set()


@pytest.mark.parametrize(
    ("strategy", "crashed", "target"),
    [
        (Strategy.ONE_FOR_ONE, "b", "b"),
        (Strategy.ONE_FOR_ALL, "b", "b"),
        (Strategy.ONE_FOR_ALL, "b", "a"),
        (Strategy.REST_FOR_ONE, "b", "b"),
        (Strategy.REST_FOR_ONE, "b", "c"),
    ],
)
@pytest.mark.parametrize("backoff", [None, 1.0], ids=["no-backoff", "backoff"])
async def test_messages_sent_right_after_a_child_ended_reach_its_next_instance(
    autojump_clock: trio.testing.MockClock, strategy: Strategy, crashed: str, target: str, backoff: float | None
) -> None:
    """on_child_ended, a monitor and a task that saw the end all reach the new instance; nothing is refused."""
    ledger = Ledger()
    restart_backoff = None if backoff is None else hybrid.Backoff(initial=backoff, factor=1)
    sup = configured(strategy, restart_backoff=restart_backoff, notify_on_end=True)(
        ledger, [(key, ledger.factory(key)) for key in "abc"]
    )
    refused: list[str] = []
    answers: list[tuple[str, int]] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(0.5)
            child = sup.addresses[target]
            watcher = Watcher(child, 200, refused)
            watching = hybrid.spawn(nursery, watcher)

            async def sends_once_it_saw_the_end() -> None:
                await watcher.seen.wait()
                try:
                    child.send(Note(300))
                    answers.append(await child.request(Who()))
                except hybrid.AgentStopped:
                    refused.append("task")

            nursery.start_soon(sends_once_it_saw_the_end)
            await trio.sleep(0.5)
            sup.addresses[crashed].send(Crash())
            await trio.sleep(30)
            assert sup.refused == []
            assert refused == []
            [current] = ledger.alive[target]
            assert current > 1
            assert answers == [(target, current)]
            mine = sorted(note for key, n, note in ledger.notes if key == target and n == current)
            assert mine == [100, 200, 300]
            assert all(n == current for key, n, _ in ledger.notes if key == target)
            sup.notify_on_end = False
            watching.interrupt()
            address.interrupt()


@pytest.mark.parametrize(
    ("strategy", "target"),
    [
        (Strategy.ONE_FOR_ONE, "b"),
        (Strategy.ONE_FOR_ALL, "a"),
        (Strategy.ONE_FOR_ALL, "c"),
        (Strategy.REST_FOR_ONE, "c"),
    ],
)
async def test_messages_and_requests_sent_during_the_restart_backoff_are_handled_by_the_new_instance(
    autojump_clock: trio.testing.MockClock, strategy: Strategy, target: str
) -> None:
    """During a 2 s backoff, notes sent every 0.1 s and a request all reach the next instance, in order."""
    ledger = Ledger()
    sup = configured(strategy, restart_backoff=hybrid.Backoff(initial=2, factor=1))(
        ledger, [(key, ledger.factory(key)) for key in "abc"]
    )
    refused: list[int] = []
    answers: list[tuple[str, int]] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            child = sup.addresses[target]
            sup.addresses["b"].send(Crash())
            await trio.sleep(0.05)

            async def ask() -> None:
                answers.append(await child.request(Who()))

            for n in range(19):
                try:
                    child.send(Note(n))
                except hybrid.AgentStopped:
                    refused.append(n)
                if n == 5:
                    nursery.start_soon(ask)
                await trio.sleep(0.1)
            await trio.sleep(10)
            assert refused == []
            [current] = ledger.alive[target]
            assert answers == [(target, current)]
            assert [(n, note) for key, n, note in ledger.notes if key == target] == [(current, n) for n in range(19)]
            address.interrupt()


# -- 6. a factory that raises during a restart ---------------------------------------


def flaky_factory(
    ledger: Ledger, key: str, calls: list[float], failing: Callable[[int], bool], first_lifetime: float = 1.0
) -> Callable[[], Child]:
    """Call k (from 1) raises OSError when failing(k); instance 1 crashes after first_lifetime."""

    def make() -> Child:
        calls.append(trio.current_time())
        k = len(calls)
        if failing(k):
            raise OSError(f"cannot build {key} (call {k})")
        ledger.made[key] += 1
        return Child(ledger, key, k, first_lifetime if k == 1 else None)

    return make


@pytest.mark.parametrize(
    ("strategy", "crashed"),
    [(Strategy.ONE_FOR_ONE, "c"), (Strategy.ONE_FOR_ALL, "a"), (Strategy.REST_FOR_ONE, "b")],
)
async def test_a_factory_that_raises_during_a_restart_is_retried_with_backoff_until_the_child_is_back(
    autojump_clock: trio.testing.MockClock, strategy: Strategy, crashed: str
) -> None:
    """Two failed builds of c's next instance are retried (not all at once); then c runs again and answers."""
    ledger = Ledger()
    calls: list[float] = []
    specs: list[tuple[str, Callable[[], Agent[Any]] | Agent[Any]]] = [
        ("a", ledger.factory("a", lifetimes=[1.0 if crashed == "a" else None, None])),
        ("b", ledger.factory("b", lifetimes=[1.0 if crashed == "b" else None, None])),
        ("c", flaky_factory(ledger, "c", calls, lambda k: k in (2, 3), 1.0 if crashed == "c" else 3600.0)),
    ]
    sup = configured(strategy, max_restarts=10, restart_period=100, restart_backoff=hybrid.Backoff(initial=1))(
        ledger, specs
    )
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(60)
            assert address.is_alive
            assert len(calls) == 4
            assert all(later > earlier for earlier, later in itertools.pairwise(calls[1:]))
            assert live_counts(ledger, "abc") == {"a": 1, "b": 1, "c": 1}
            with trio.fail_after(10):
                assert await sup.addresses["c"].request(Who()) == ("c", 4)
            address.interrupt()


async def test_a_factory_that_keeps_raising_fails_the_supervisor_with_restart_intensity_exceeded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failed builds count toward the intensity: after max_restarts it fails, not with the factory's error."""
    ledger = Ledger()
    calls: list[float] = []

    class Strict(Sup):
        max_restarts = 3
        restart_period = 100
        restart_backoff = hybrid.Backoff(initial=0.5)

    sup = Strict(ledger, [("a", flaky_factory(ledger, "a", calls, lambda k: k > 1))])
    with trio.fail_after(GUARD), pytest.raises(hybrid.RestartIntensityExceeded) as caught:
        await sup.run()
    assert 1 + 3 <= len(calls) <= 1 + 4  # retried up to the intensity, not given up at the first raise
    assert any(isinstance(error, OSError) for error in caught.value.errors)


# -- 7. unlimited restarts -----------------------------------------------------------


async def test_unlimited_restarts_keep_a_child_that_crashed_a_thousand_times_supervised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_restarts = None: a child that crashes every second is restarted 1,000 times and still runs."""
    ledger = Ledger()

    class Unlimited(Sup):
        max_restarts = None
        restart_period = 5.0

    sup = Unlimited(ledger, [("a", ledger.factory("a", lifetimes=[1.0] * 1000 + [None]))])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1200)
            assert address.is_alive
            assert ledger.made["a"] == 1001
            assert ledger.live("a") == 1
            with trio.fail_after(10):
                assert await sup.addresses["a"].request(Who()) == ("a", 1001)
            address.interrupt()


async def test_unlimited_restarts_with_backoff_survive_attempt_numbers_past_float_range(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A window that never forgets and a doubling backoff: restart 1,100 still computes its delay (the cap)."""
    ledger = Ledger()

    class Relentless(Sup):
        max_restarts = None
        restart_period = 1e9
        restart_backoff = hybrid.Backoff(initial=0.001, factor=2, max_delay=0.01)

    sup = Relentless(ledger, [("a", ledger.factory("a", lifetimes=[0.0] * 1100 + [None]))])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            for _ in range(60):
                if ledger.made["a"] >= 1101:
                    break
                await trio.sleep(1)
                assert address.is_alive
                assert sup.errors == []
            assert ledger.made["a"] == 1101
            assert ledger.live("a") == 1
            address.interrupt()


@pytest.mark.parametrize("attempt", [1025, 10**6, 2**63, 10**30])
@pytest.mark.parametrize(("factor", "jitter"), [(2.0, 0.0), (10.0, 0.0), (2.0, 0.5), (1.5, 1.0)])
def test_backoff_delay_never_overflows_and_stays_within_the_cap(attempt: int, factor: float, jitter: float) -> None:
    """Backoff.delay(n) for huge n is a finite number no greater than max_delay times (1 + jitter)."""
    backoff = hybrid.Backoff(initial=1, factor=factor, max_delay=30, jitter=jitter)
    delay = backoff.delay(attempt)
    assert isinstance(delay, float)
    assert 30 * (1 - jitter) <= delay <= 30 * (1 + jitter)


def test_backoff_with_a_zero_initial_delay_stays_zero_for_huge_attempt_numbers() -> None:
    """0 x (an overflowing power) must not become NaN: the delay stays 0."""
    assert hybrid.Backoff(initial=0, factor=2, max_delay=30).delay(10**6) == 0.0


# -- 8. children spawned while the supervisor shuts down -----------------------------------


async def test_children_spawned_during_the_ordered_shutdown_are_interrupted_and_awaited_in_group_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Late children in a higher, a middle and a lower group: interrupted in their group's turn, never cancelled."""
    ledger = Ledger()
    specs: list[tuple[str, Callable[[], Agent[Any]] | Agent[Any]]] = [
        ("storage", Child(ledger, "storage", 1, stop_delay=2)),
        ("http", Child(ledger, "http", 1, stop_delay=2)),
    ]
    sup = Sup(ledger, specs, {"storage": 1, "http": 3})
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            ledger.start = trio.current_time()
            address.interrupt()  # http stops from 0 to 2
            await trio.sleep(1)
            address.send(SpawnLate("higher", 5))
            address.send(SpawnLate("middle", 2))
            address.send(SpawnLate("lower", 0))
            await address.join()
    interrupts = [(t, text) for t, text in ledger.events if text.endswith(" interrupted") and "stopped" not in text]
    assert interrupts == [
        (0, "http interrupted"),
        (1, "higher interrupted"),
        (2, "middle interrupted"),
        (3, "storage interrupted"),
        (5, "lower interrupted"),
    ]
    for key in ("higher", "middle", "lower", "storage", "http"):
        assert at_most_one_kind(ledger.reasons[key]) == ["interrupted"], key
    assert ledger.events[-1] == (6, "lower stopped interrupted")


@pytest.mark.parametrize("hook_delay", [0.0, 1.0])
async def test_a_child_spawned_by_on_child_ended_as_the_last_group_stops_is_interrupted_not_cancelled(
    autojump_clock: trio.testing.MockClock, hook_delay: float
) -> None:
    """The hook spawns a child into a lower group while the last child ends: it is interrupted and awaited."""
    ledger = Ledger()

    class Respawns(Sup):
        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            await super().on_child_ended(address, reason)
            if address is self.addresses.get("storage"):
                self.addresses["late"] = self.ctx.spawn(Child(self.ledger, "late", 1, stop_delay=1), group=0)

    sup = Respawns(ledger, [("storage", Child(ledger, "storage", 1, stop_delay=1))], {"storage": 1})
    sup.hook_delay = hook_delay
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            address.interrupt()
            await address.join()
    assert "late interrupted" in ledger.texts()
    assert at_most_one_kind(ledger.reasons["late"]) == ["interrupted"]
    assert ledger.texts()[-1] == "late stopped interrupted"


# -- 9. crash reports ------------------------------------------------------------------


def supervisor_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "hybrid.supervisor" and r.levelno == level]


def restart_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in supervisor_records(caplog, logging.INFO) if "restart" in r.getMessage().lower()]


async def test_a_failed_child_is_logged_at_error_with_its_traceback_and_each_restart_at_info(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Two crashes of a permanent child: two ERROR crash reports carrying the exception, two INFO restarts."""
    caplog.set_level(logging.INFO, logger="hybrid")
    ledger = Ledger()
    sup = Sup(ledger, [("a", ledger.factory("a", lifetimes=[1, 1, None]))])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(10)
            address.interrupt()
    errors = supervisor_records(caplog, logging.ERROR)
    assert len(errors) == 2
    for record, n in zip(errors, (1, 2), strict=True):
        assert record.exc_info is not None
        _, error, traceback = record.exc_info
        assert isinstance(error, ValueError)
        assert str(error) == f"a#{n} crashed"
        assert traceback is not None
    assert len(restart_records(caplog)) == 2


async def test_a_temporary_child_that_fails_is_logged_at_error_and_not_reported_as_restarted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A temporary child's failure is a crash report too, with its traceback; nothing says it restarted."""
    caplog.set_level(logging.INFO, logger="hybrid")
    ledger = Ledger()
    sup = Sup(ledger, [("t", Child(ledger, "t", 1, lifetime=1))])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(5)
            address.interrupt()
    [record] = supervisor_records(caplog, logging.ERROR)
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert record.exc_info[2] is not None
    assert restart_records(caplog) == []


async def test_only_the_child_that_failed_gets_a_crash_report_when_one_for_all_stops_the_others(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Siblings interrupted by the strategy did not fail: one ERROR record, for the one that did."""
    caplog.set_level(logging.INFO, logger="hybrid")
    ledger = Ledger()
    sup = configured(Strategy.ONE_FOR_ALL)(ledger, [(key, ledger.factory(key)) for key in "abc"])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            sup.addresses["b"].send(Crash())
            await trio.sleep(5)
            address.interrupt()
    [record] = supervisor_records(caplog, logging.ERROR)
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "b#1 crashed"
    assert len(restart_records(caplog)) >= 1


# -- 10. cost and scale -----------------------------------------------------------------


class Leaf(Agent):
    def __init__(self, group: int, stopped: list[tuple[int, StopKind]]) -> None:
        self.group = group
        self.stopped = stopped

    async def on_stop(self, reason: StopReason) -> None:
        self.stopped.append((self.group, reason.kind))


class Wide(Supervisor):
    def __init__(self, count: int, stopped: list[tuple[int, StopKind]]) -> None:
        self.count = count
        self.stopped = stopped

    def begin(self) -> Next[Self]:
        for group in range(self.count):
            self.ctx.spawn(Leaf(group, self.stopped), group=group)
        return Next.events()


async def test_ten_thousand_children_in_ten_thousand_groups_stop_in_strictly_descending_group_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The ordered shutdown of 10,000 single-member groups ends each child interrupted, greatest group first."""
    stopped: list[tuple[int, StopKind]] = []
    count = 10_000
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, Wide(count, stopped))
            await trio.sleep(1)
            address.interrupt()
            await address.join()
    assert [group for group, _ in stopped] == list(range(count - 1, -1, -1))
    assert {kind for _, kind in stopped} == {StopKind.INTERRUPTED}


async def test_a_restart_storm_of_a_thousand_children_restarts_each_exactly_once_per_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1,000 one-for-one children all crash at once, three times: each has exactly one live instance, n+1 made."""
    ledger = Ledger()
    keys = [f"w{i}" for i in range(1000)]

    class Storm(Sup):
        max_restarts = 10**9  # not None: this test is about the storm, not the unlimited setting

    sup = Storm(ledger, [(key, ledger.factory(key)) for key in keys])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            for storm in range(1, 4):
                for key in keys:
                    sup.addresses[key].send(Crash())
                await trio.sleep(10)
                assert set(ledger.made.values()) == {storm + 1}
                assert set(live_counts(ledger, keys).values()) == {1}
                children = sup.ctx.children()
                assert len(children) == len(set(children)) == 1000
            address.interrupt()
    assert set(live_counts(ledger, keys).values()) == {0}


async def test_a_one_for_all_storm_over_a_thousand_children_settles_to_one_instance_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten children of a 1,000-child one-for-all supervisor crash at once: every spec ends with one live instance."""
    ledger = Ledger()
    keys = [f"w{i:04}" for i in range(1000)]

    class AllStorm(Sup):
        strategy = Strategy.ONE_FOR_ALL
        max_restarts = 10**9

    sup = AllStorm(ledger, [(key, ledger.factory(key)) for key in keys])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            for index in range(0, 1000, 100):
                sup.addresses[keys[index]].send(Crash())
            await trio.sleep(60)
            assert set(live_counts(ledger, keys).values()) == {1}
            children = sup.ctx.children()
            assert len(children) == len(set(children)) == 1000
            restarted = [start for start in ledger.starts if not start.endswith("#1")]
            # Whatever the number of rounds, each round started the children in spawn order.
            assert len(restarted) % 1000 == 0 and restarted
            for round_start in range(0, len(restarted), 1000):
                chunk = [start.split("#")[0] for start in restarted[round_start : round_start + 1000]]
                assert chunk == keys
            address.interrupt()


# -- 11. nested supervisors ----------------------------------------------------------------


async def test_a_grandchild_failure_escalates_through_each_intensity_with_every_error_attached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Leaf fails, the middle supervisor (intensity 0) fails, the root (intensity 0) fails: errors nest."""
    ledger = Ledger()

    class Middle(Sup):
        max_restarts = 0

    class Root(Sup):
        max_restarts = 0

    def middle() -> Middle:
        return Middle(ledger, [("leaf", ledger.factory("leaf", lifetimes=[1]))])

    with trio.fail_after(GUARD), pytest.raises(hybrid.RestartIntensityExceeded) as caught:
        await Root(ledger, [("middle", middle)]).run()
    [inner] = caught.value.errors
    assert isinstance(inner, hybrid.RestartIntensityExceeded)
    [leaf_error] = inner.errors
    assert isinstance(leaf_error, ValueError)
    assert str(leaf_error) == "leaf#1 crashed"
    assert ledger.live("leaf") == 0


async def test_restarting_a_middle_supervisor_restarts_its_children_fresh_under_the_same_names(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The middle gives up after two leaf crashes and is restarted: its children start anew, named root/middle/..."""
    ledger = Ledger()
    middles: list[hybrid.Address[Any]] = []
    leaves: list[hybrid.Address[Any]] = []

    class Middle(Supervisor):
        max_restarts = 1
        restart_period = 100

        def begin(self) -> Next[Self]:
            middles.append(self.ctx.address)
            leaves.append(self.ctx.spawn(ledger.factory("leaf", lifetimes=[1]), name="leaf"))
            self.ctx.spawn(ledger.factory("sibling"), name="sibling")
            return Next.events()

    class Root(Supervisor):
        max_restarts = 10
        restart_period = 100

        def begin(self) -> Next[Self]:
            self.ctx.spawn(Middle, name="middle")
            return Next.events()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            root = hybrid.spawn(nursery, Root(), name="root")
            await trio.sleep(0.5)
            assert root.name == "root"
            assert leaves[0].name == "root/middle/leaf"
            await trio.sleep(2)  # leaf crashed at 1 (restarted) and 2 (middle gives up, root restarts it)
            assert ledger.made["sibling"] == 2  # the new middle made a fresh sibling, not a restarted one
            assert ledger.live("sibling") == 1
            assert ledger.live("leaf") <= 1
            assert len(middles) == 2
            assert len({middle.name for middle in middles}) == 1
            assert middles[0].name == "root/middle"
            assert [leaf.name for leaf in leaves] == ["root/middle/leaf"] * 2
            root.interrupt()
    assert ledger.live("sibling") == 0
    assert ledger.live("leaf") == 0


# -- 12. instruments see restarts --------------------------------------------------------


RestartRecord = tuple[hybrid.Address[Any], hybrid.Address[Any], StopReason]


def restart_journal() -> tuple[Any, list[RestartRecord]]:
    """A registered instrument that records child_restarted calls (built here: the API may be missing)."""
    restarts: list[RestartRecord] = []

    class RestartJournal(hybrid.Instrument):
        def child_restarted(
            self, supervisor: hybrid.Address[Any], child: hybrid.Address[Any], reason: StopReason
        ) -> None:
            restarts.append((supervisor, child, reason))

    journal = RestartJournal()
    hybrid.add_instrument(journal)
    return journal, restarts


async def test_the_instrument_hears_of_each_restart_once_with_the_child_and_the_reason_it_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two crashes of a one-for-one child: two child_restarted calls, each with the failure that ended that run."""
    _, restarts = restart_journal()
    ledger = Ledger()
    sup = Sup(ledger, [("a", ledger.factory("a", lifetimes=[1, 1, None])), ("t", Child(ledger, "t", 1, lifetime=2))])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(10)
            address.interrupt()
    child = sup.addresses["a"]
    assert [(s, c) for s, c, _ in restarts] == [(address, child), (address, child)]
    assert [str(reason.error) for _, _, reason in restarts] == ["a#1 crashed", "a#2 crashed"]
    assert all(reason.failed for _, _, reason in restarts)


async def test_the_instrument_hears_of_every_child_a_one_for_all_restart_starts_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One-for-all after b fails: a, b and c are each reported once; b failed, a and c were interrupted."""
    _, restarts = restart_journal()
    ledger = Ledger()
    sup = configured(Strategy.ONE_FOR_ALL)(ledger, [(key, ledger.factory(key)) for key in "abc"])
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            sup.addresses["b"].send(Crash())
            await trio.sleep(5)
            address.interrupt()
    by_child = {child: reason for _, child, reason in restarts}
    assert len(restarts) == 3
    assert set(by_child) == set(sup.addresses.values())
    assert by_child[sup.addresses["a"]] == StopReason.INTERRUPTED
    assert by_child[sup.addresses["c"]] == StopReason.INTERRUPTED
    assert by_child[sup.addresses["b"]].failed
    assert str(by_child[sup.addresses["b"]].error) == "b#1 crashed"
    assert {s for s, _, _ in restarts} == {address}


# -- names of supervised children ------------------------------------------------------------


async def test_supervised_children_are_named_under_their_supervisor_and_keep_their_name_across_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """root/db keeps its name through a restart; the name stays taken during the backoff; defaults are prefixed too."""
    ledger = Ledger()

    class Named(Sup):
        restart_backoff = hybrid.Backoff(initial=2, factor=1)

        def begin(self) -> Next[Self]:
            self.addresses["db"] = self.ctx.spawn(ledger.factory("db", lifetimes=[1, None]), name="db")
            self.addresses["anon"] = self.ctx.spawn(ledger.factory("anon"))
            return Next.events()

    sup = Named(ledger)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup, name="root")
            await trio.sleep(0.5)
            db = sup.addresses["db"]
            assert db.name == "root/db"
            assert re.fullmatch(r"root/Child-\d+", sup.addresses["anon"].name)
            address.send(TrySpawn("db"))  # a live child already has that name
            await trio.sleep(1)  # db#1 crashed at 1; db#2 starts at 3
            address.send(TrySpawn("db"))  # still taken: the child is restarting under it
            await trio.sleep(5)
            assert ledger.alive["db"] == {2}
            assert db.name == "root/db"
            assert [type(error) for error in sup.spawn_errors] == [hybrid.NameInUse, hybrid.NameInUse]
            assert ledger.begun("try-db") == 0
            assert sup.ctx.children().count(db) == 1
            address.interrupt()
