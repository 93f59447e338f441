"""Fault injection: a 3-level tree of 100+ agents under random crashes for a simulated hour.

A seeded chaos task crashes (or, for transient leaves, finishes) random leaves.
An independent model of the restart rules replays the same actions; at the
end the tree must match it: instance counts per leaf, which leaves run, and
no task or thread left over once the tree is shut down.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import attrs
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Restart, Strategy, Supervisor

LEAVES_PER_MID = 25
POLICIES = [Restart.PERMANENT] * 20 + [Restart.TRANSIENT] * 3 + [Restart.TEMPORARY] * 2
STRATEGIES = [Strategy.ONE_FOR_ONE, Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE, Strategy.ONE_FOR_ONE]
HOUR = 3600.0


@attrs.frozen
class Crash:
    pass


@attrs.frozen
class Finish:
    pass


class Leaf(Agent[None]):
    @hybrid.on_event
    async def crash(self, event: Crash) -> None:
        self.ctx.do_next(Next.fail(RuntimeError("injected crash")))

    @hybrid.on_event
    async def finish(self, event: Finish) -> None:
        self.ctx.do_next(Next.done())


@attrs.define
class LeafModel:
    policy: Restart
    instances: int = 1
    alive: bool = True


class Model:
    """The restart rules, written independently of the supervisor's code."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.leaves = [LeafModel(policy) for policy in POLICIES]

    def crash(self, index: int) -> None:
        leaf = self.leaves[index]
        if leaf.policy is Restart.TEMPORARY:
            leaf.alive = False
            return
        if self.strategy is Strategy.ONE_FOR_ONE:
            affected = [leaf]
        elif self.strategy is Strategy.ONE_FOR_ALL:
            affected = [other for other in self.leaves if other.alive]
        else:
            affected = [other for other in self.leaves[index:] if other.alive]
        for other in affected:
            if other.policy is Restart.TEMPORARY:
                other.alive = False
            else:
                other.instances += 1

    def finish(self, index: int) -> None:
        self.leaves[index].alive = False  # only transient leaves are finished


def counting(counts: list[int], index: int) -> Callable[[], Leaf]:
    def make() -> Leaf:
        counts[index] += 1
        return Leaf()

    return make


class Mid(Supervisor):
    max_restarts = 50
    restart_period = 60

    def __init__(self, counts: list[int], addresses: list[hybrid.Address[Leaf]]) -> None:
        self.counts = counts
        self.addresses = addresses

    def begin(self) -> Next[Self]:
        self.addresses.clear()
        for index, policy in enumerate(POLICIES):
            self.addresses.append(self.ctx.spawn(counting(self.counts, index), restart=policy))
        return Next.events()


def make_mid_class(strategy: Strategy) -> type[Mid]:
    return type(f"Mid_{strategy.value}", (Mid,), {"strategy": strategy})


class Root(Supervisor):
    max_restarts = 0  # a mid failing would break the model: make it loud

    def __init__(self, mids: list[tuple[type[Mid], list[int], list[hybrid.Address[Leaf]]]]) -> None:
        self.mids = mids

    def begin(self) -> Next[Self]:
        for group, (cls, counts, addresses) in enumerate(self.mids):
            self.ctx.spawn(cls(counts, addresses), group=group)
        return Next.events()


async def test_random_crashes_for_a_simulated_hour_leave_the_tree_as_the_policies_say(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(20261121)
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    threads_before = set(threading.enumerate())
    counts = [[0] * LEAVES_PER_MID for _ in STRATEGIES]
    addresses: list[list[hybrid.Address[Leaf]]] = [[] for _ in STRATEGIES]
    models = [Model(strategy) for strategy in STRATEGIES]
    mids = [(make_mid_class(strategy), counts[i], addresses[i]) for i, strategy in enumerate(STRATEGIES)]
    actions = {"crash": 0, "finish": 0, "gone": 0}

    async with trio.open_nursery() as nursery:
        root = hybrid.spawn(nursery, Root(mids))
        start = trio.current_time()
        await trio.sleep(1)
        assert sum(len(a) for a in addresses) == 100
        while trio.current_time() - start < HOUR:
            await trio.sleep(rng.uniform(1, 20))
            mid = rng.randrange(len(STRATEGIES))
            index = rng.randrange(LEAVES_PER_MID)
            finish = POLICIES[index] is Restart.TRANSIENT and rng.random() < 0.3
            try:
                addresses[mid][index].send(Finish() if finish else Crash())
            except hybrid.AgentStopped:
                assert not models[mid].leaves[index].alive
                actions["gone"] += 1
                continue
            if finish:
                models[mid].finish(index)
                actions["finish"] += 1
            else:
                models[mid].crash(index)
                actions["crash"] += 1
            await trio.testing.wait_all_tasks_blocked()

        assert actions["crash"] > 200 and actions["finish"] > 0 and actions["gone"] > 0
        for mid, model in enumerate(models):
            assert counts[mid] == [leaf.instances for leaf in model.leaves], STRATEGIES[mid]
            for index, leaf in enumerate(model.leaves):
                assert addresses[mid][index].is_alive == leaf.alive, (STRATEGIES[mid], index)
                if POLICIES[index] is Restart.PERMANENT:
                    assert addresses[mid][index].is_alive
        root.interrupt()

    assert not root.is_alive
    assert all(not address.is_alive for group in addresses for address in group)
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before
    assert set(threading.enumerate()) <= threads_before  # none left over (earlier tests' idle ones may have ended)
