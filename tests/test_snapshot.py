"""hybrid.snapshot(): the tree of the agents alive in the run, with their counters."""

from __future__ import annotations

import enum
import functools
import json
from typing import Any

import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Supervisor
from tests.messages import Echo, Ping


class Group(enum.IntEnum):
    STORE = 1
    WORKERS = 2


class Store(Agent):
    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        pass


class Worker(Agent):
    def __init__(self, crash_at: float | None = None) -> None:
        self.crash_at = crash_at

    def begin(self) -> Next[Self]:
        if self.crash_at is not None:
            return Next.do_async(self.crash, self.crash_at)
        return Next.events()

    async def crash(self, at: float) -> Next[Self]:
        await trio.sleep(at)
        raise ValueError("crashed")

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        return request.n


class App(Supervisor):
    restart_backoff = hybrid.Backoff(initial=10)

    def begin(self) -> Next[Self]:
        self.ctx.spawn(Store(), group=Group.STORE, name="store")
        self.ctx.spawn(Worker, group=Group.WORKERS)
        self.ctx.spawn(functools.partial(Worker, 1.0), group=Group.WORKERS, name="flaky")
        return Next.events()


async def test_the_snapshot_is_the_tree_of_live_agents_in_start_order(autojump_clock: trio.testing.MockClock) -> None:
    """Roots in creation order, a supervisor's children under it in start order, with their counters."""
    async with trio.open_nursery() as nursery:
        lone = hybrid.spawn(nursery, Store(), name="lone")
        app = hybrid.spawn(nursery, App(), name="app")
        await trio.sleep(0.5)
        lone.send(Ping())
        await trio.testing.wait_all_tasks_blocked()
        tree = hybrid.snapshot()
        assert [info.name for info in tree.agents] == ["lone", "app"]
        assert [info.name for info in tree.agents[1].children] == ["app/store", "app/Worker-1", "app/flaky"]
        assert [info.name for info in tree.walk()] == ["lone", "app", "app/store", "app/Worker-1", "app/flaky"]
        lone_info, app_info = tree.agents
        assert (lone_info.agent_class, lone_info.phase, lone_info.messages_handled) == ("Store", "events", 1)
        flaky = app_info.children[2]
        assert (flaky.phase, flaky.transitions, flaky.restarts) == ("state", 1, 0)
        assert flaky.state == "Next.do_async(Worker.crash, 1.0)"
        app.interrupt()
        lone.interrupt()


async def test_a_restarting_child_shows_its_restarts_and_phase(autojump_clock: trio.testing.MockClock) -> None:
    """During its backoff a child is "restarting"; once back, it counts one restart."""
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, App(), name="app")
        await trio.sleep(2)  # flaky crashed at 1; its restart waits 10 s
        [app_info] = hybrid.snapshot().agents
        assert app_info.children[2].phase == "restarting"
        await trio.sleep(9.5)  # back at 11, in its state until it crashes again at 12
        [app_info] = hybrid.snapshot().agents
        assert (app_info.children[2].phase, app_info.children[2].restarts) == ("state", 1)
        app.interrupt()


async def test_the_snapshot_text_and_dict_show_every_agent(autojump_clock: trio.testing.MockClock) -> None:
    """str() is an indented tree, one line per agent; as_dict() is JSON-ready."""
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, App(), name="app")
        await trio.sleep(0.5)
        tree = hybrid.snapshot()
        lines = str(tree).splitlines()
        assert lines[0] == "app (App): events, mailbox 0, 0 handled, 0 transitions"
        assert lines[1] == "  app/store (Store): events, mailbox 0, 0 handled, 0 transitions"
        assert lines[3].startswith("  app/flaky (Worker): state Next.do_async(Worker.crash, 1.0), mailbox 0")
        data: dict[str, Any] = json.loads(json.dumps(tree.as_dict()))
        assert [child["name"] for child in data["agents"][0]["children"]] == ["app/store", "app/Worker-1", "app/flaky"]
        app.interrupt()
        await app.join()
        assert hybrid.snapshot().agents == ()


def test_the_snapshot_needs_a_trio_run() -> None:
    """Outside a trio run there are no agents to show: RuntimeError, as trio's run-local state."""
    with pytest.raises(RuntimeError):
        hybrid.snapshot()


async def test_class_counters_never_go_down_when_agents_end(autojump_clock: trio.testing.MockClock) -> None:
    """Totals by class include the runs that ended, failures and restarts: what metrics need."""

    def counters() -> dict[str, hybrid.ClassCounters]:
        return {c.agent_class: c for c in hybrid.snapshot().counters}

    async with trio.open_nursery() as nursery:
        stores = [hybrid.spawn(nursery, Store()) for _ in range(3)]
        for store in stores:
            store.send(Ping())
            store.send(Ping())
        await trio.testing.wait_all_tasks_blocked()
        before = counters()["Store"]
        assert (dict(before.phases), before.messages_handled) == ({"events": 3}, 6)
        for store in stores:
            store.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        after = counters()["Store"]
        assert (dict(after.phases), after.messages_handled) == ({}, 9)  # 6 pings and 3 interrupts
        app = hybrid.spawn(nursery, App(), name="app")
        await trio.sleep(11.5)  # flaky failed at 1, restarted at 11 (it fails again at 12)
        worker = counters()["Worker"]
        assert (worker.failures, worker.restarts) == (1, 1)
        app.interrupt()
