"""Nodes as separate processes: registry, membership and death-watch, remote spawn, restarts.

A node process (``node_process.py``) serves counters; the test is another node. Killing,
stopping and racing real processes is the point: nothing here is simulated. Time is
real; waits are bounded with ``trio.fail_after`` and leases are short (1 s).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import attrs
import pytest
import trio
from typing_extensions import Self

import hybrid
from hybrid import NameInUse
from hybrid.codec import CodecError
from hybrid.remote import NodeLost, connect
from tests.remote.agents import Add, Counter, Get, Stop, Watcher
from tests.remote.nats import NatsServer
from tests.remote.processes import node_process

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "connect_timeout": 5.0, "close_timeout": 2.0, "lease": 1}
LONG_LEASE: dict[str, Any] = {**FAST, "lease": 30}
"""For tests where no node may be lost by accident."""


async def test_a_killed_node_is_detected_its_monitors_fire_and_its_requests_fail(nats_server: NatsServer) -> None:
    """SIGKILL a serving node: within its lease, monitors get `Ended` with `NodeLost`, waiting requests fail."""
    async with (
        connect(nats_server.url, node="caller", **FAST) as node,
        trio.open_nursery() as nursery,
        node_process(nats_server, "server", "counter") as process,
    ):
        remote = node.lookup("counter", Counter)
        remote.send(Add(4))
        with trio.fail_after(10):
            assert await remote.request(Get()) == 4
            assert "server" in node.nodes
        watcher: hybrid.Address[Watcher] = await nursery.start(hybrid.AgentRunner(Watcher(remote)).run)
        await trio.testing.wait_all_tasks_blocked()
        os.kill(process.pid, signal.SIGSTOP)  # the next request is never answered
        failed = trio.Event()

        async def waiting() -> None:
            with pytest.raises(NodeLost, match="server"):
                await remote.request(Get())
            failed.set()

        nursery.start_soon(waiting)
        await trio.sleep(0.1)
        process.kill()
        with trio.fail_after(10):  # a 1 s lease, the server's marker scan, the watch
            reason = await watcher.join()
            await failed.wait()
        assert reason.failed
        assert isinstance(reason.error, NodeLost)
        assert reason.error.node == "server"
        assert not remote.is_alive
        assert "server" not in node.nodes
        with pytest.raises(NodeLost):
            await remote.join()


async def test_monitoring_a_name_nobody_publishes_ends_at_once(nats_server: NatsServer) -> None:
    """A monitor of a name that is not published delivers `Ended` (failed, `AgentStopped`) at once: noproc."""
    async with connect(nats_server.url, node="caller", **FAST) as node, trio.open_nursery() as nursery:
        ghost = node.lookup("ghost", Counter)
        with trio.fail_after(10):
            reason = await (await nursery.start(hybrid.AgentRunner(Watcher(ghost)).run)).join()
        assert reason.failed
        assert isinstance(reason.error, hybrid.AgentStopped)


async def test_a_name_is_unique_across_nodes_until_its_node_is_lost(nats_server: NatsServer) -> None:
    """Publishing a name another live node serves: `NameInUse`; once that node is killed, the name can be taken."""
    async with connect(nats_server.url, node="mine", **FAST) as node, trio.open_nursery() as nursery:
        local: hybrid.Address[Counter] = await nursery.start(hybrid.AgentRunner(Counter(total=7)).run)
        async with node_process(nats_server, "theirs", "counter") as process:
            with pytest.raises(NameInUse, match="theirs"):
                await node.publish("counter", local)
            process.kill()
            with trio.fail_after(10):
                await node.wait_nodes(lambda nodes: "theirs" not in nodes)
        await node.publish("counter", local)  # the lost node's entry is taken over
        with trio.fail_after(10):
            assert await node.lookup("counter", Counter).request(Get()) == 7
        local.interrupt()


async def test_node_names_are_unique_among_live_nodes(nats_server: NatsServer) -> None:
    """A second node with a live node's name is refused; the name is free once that node left."""
    async with connect(nats_server.url, node="twin", **FAST):
        with pytest.raises(NameInUse, match="twin"):
            async with connect(nats_server.url, node="twin", **FAST):
                pass  # pragma: no cover
    async with connect(nats_server.url, node="twin", **FAST) as again:
        assert "twin" in again.nodes


async def test_a_stopped_node_times_out_then_answers_when_it_continues(nats_server: NatsServer) -> None:
    """SIGSTOP a serving node (shorter than its lease): requests hit the caller's deadline, then work again."""
    async with (
        connect(nats_server.url, node="caller", **LONG_LEASE) as node,
        node_process(nats_server, "server", "counter") as process,
    ):
        remote = node.lookup("counter", Counter)
        os.kill(process.pid, signal.SIGSTOP)
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.5):
            await remote.request(Get())
        os.kill(process.pid, signal.SIGCONT)
        with trio.fail_after(10):
            assert await remote.request(Get()) == 0
        assert node.statistics().calls_waiting == 0


@attrs.frozen
class Describe(hybrid.Request[str]):
    """What a `Made` agent was made from."""


@attrs.define(eq=False)
class Made(hybrid.Agent[str]):
    """An agent made by a registered factory from typed arguments."""

    label: str
    counts: list[int]

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()

    @hybrid.on_request
    async def describe(self, request: Describe) -> str:
        return f"{self.label}:{sum(self.counts)}"


def make_nothing() -> int:
    """Not a factory: it makes no agent."""
    return 0


def make_counter(start: int) -> Counter:
    """A factory function: a counter starting at `start`."""
    return Counter(total=start)


async def test_remote_spawn_by_registered_factory(nats_server: NatsServer) -> None:
    """`spawn(on=..., factory, *args)` starts an agent on that node from typed arguments and returns its address."""
    async with connect(nats_server.url, node="a", **FAST) as a, connect(nats_server.url, node="b", **FAST) as b:
        b.register_factory(Made)
        b.register_factory(make_counter)
        with trio.fail_after(10):
            made = await a.spawn("b", Made, "x", [1, 2, 3])
            assert await made.request(Describe()) == "x:6"
            counter = await a.spawn("b", make_counter, 5, name="five")
            assert counter.name == "five"
            assert await counter.request(Get()) == 5
            await counter.request(Stop())
            assert await counter.join() == 5
            with pytest.raises(CodecError):
                await a.spawn("b", Made, "x", ["not", "ints"])
            with pytest.raises(LookupError, match="no factory"):
                await a.spawn("b", Made, "x", [], factory_name="unknown")
            with pytest.raises(NodeLost, match="nowhere"):
                await a.spawn("nowhere", Made, "x", [])
            await a.spawn("b", make_counter, 1, name="five-again")
            with pytest.raises(NameInUse):
                await a.spawn("b", make_counter, 1, name="five-again")
        assert b.statistics().spawned == 3
        with pytest.raises(ValueError, match="Agent"):
            b.register_factory(make_nothing)  # type: ignore[arg-type]


@attrs.define(eq=False)
class Flaky(hybrid.Agent[None]):
    """Fails on `Stop(fail=...)`; counts from zero again after each restart."""

    total: int = 0

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()

    @hybrid.on_event
    async def add(self, event: Add) -> None:
        self.total += event.n

    @hybrid.on_request
    async def get(self, request: Get) -> int:
        return self.total

    @hybrid.on_request
    async def stop(self, request: Stop) -> None:
        self.ctx.do_next(hybrid.Next.fail(ValueError(request.fail)))


class Keeper(hybrid.Supervisor):
    """Restarts its one `Flaky` child (a factory: restartable)."""

    child: hybrid.Address[Flaky]

    def begin(self) -> hybrid.Next[Self]:
        self.child = self.ctx.spawn(Flaky)
        return hybrid.Next.events()


async def test_a_published_child_restarted_by_its_supervisor_stays_reachable(nats_server: NatsServer) -> None:
    """A supervisor restarts a published child: the remote address keeps working; its end comes when given up."""
    async with (
        connect(nats_server.url, node="a", **FAST) as a,
        connect(nats_server.url, node="b", **FAST) as b,
        trio.open_nursery() as nursery,
    ):
        keeper = Keeper()
        supervisor: hybrid.Address[Keeper] = await nursery.start(hybrid.AgentRunner(keeper).run)
        await a.publish("flaky", keeper.child)
        remote = b.lookup("flaky", Flaky)
        with trio.fail_after(10):
            remote.send(Add(3))
            assert await remote.request(Get()) == 3
            await remote.request(Stop(fail="again"))  # answered, then the child fails and is restarted
            assert await remote.request(Get()) == 0  # the new instance, behind the same name
            assert remote.is_alive
            assert a.statistics().published == 1
            supervisor.interrupt()
            await remote.join()  # given up with the supervisor: the end is announced
        assert remote.statistics().reason == hybrid.StopReason.INTERRUPTED


async def test_leaving_the_cluster_cleanly_is_seen_at_once(nats_server: NatsServer) -> None:
    """A node that leaves cleanly deletes its lease: the others drop it at once, not after the lease."""
    async with connect(nats_server.url, node="stays", **LONG_LEASE) as stays:
        async with connect(nats_server.url, node="leaves", **LONG_LEASE):
            with trio.fail_after(10):
                await stays.wait_nodes(lambda nodes: "leaves" in nodes)
        with trio.fail_after(5):
            await stays.wait_nodes(lambda nodes: "leaves" not in nodes)


async def test_a_quorum_decides_while_a_node_is_stopped_and_withdraws_the_rest(nats_server: NatsServer) -> None:
    """Two of three agents live on a stopped node: a quorum of one decides with the third and withdraws the others."""
    async with (
        connect(nats_server.url, node="caller", **LONG_LEASE) as node,
        trio.open_nursery() as nursery,
        node_process(nats_server, "server", "c1", "c2") as process,
    ):
        local: hybrid.Address[Counter] = await nursery.start(hybrid.AgentRunner(Counter(total=5)).run)
        await node.publish("c0", local)
        remotes = [node.lookup(f"c{n}", Counter) for n in range(3)]
        os.kill(process.pid, signal.SIGSTOP)
        with trio.fail_after(10):
            assert await hybrid.quorum(1, [remote.request(Get()) for remote in remotes]) == [5]
        assert node.statistics().calls_waiting == 0
        os.kill(process.pid, signal.SIGCONT)
        with trio.fail_after(10):
            assert sorted(await hybrid.quorum(3, [remote.request(Get()) for remote in remotes])) == [0, 0, 5]
        local.interrupt()
