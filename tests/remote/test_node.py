"""Remote addresses: `connect`, `Node.publish` and `Node.lookup` against a real nats-server.

Two nodes share one server, in one trio run (each with its own connection, as two
processes would have); tests that need a process to die use ``node_process.py``.
Time is real: waits are bounded with ``trio.fail_after`` and never asserted tightly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import outcome
import pytest
import trio
from typing_extensions import Self

import hybrid
from hybrid import NameInUse
from hybrid.codec import CodecError
from hybrid.remote import MessageTooLarge, Node, RemoteFailure, RemoteUnavailable, connect
from hybrid.remote import _wire as wire
from tests.remote.agents import Add, Counter, Fail, Get, Note, Stop, Unrelated, Wait, Watcher, WrongAnswer
from tests.remote.nats import NatsServer

FAST: dict[str, Any] = {"reconnect_wait": 0.05, "connect_timeout": 2.0, "close_timeout": 2.0}


async def run(nursery: trio.Nursery, agent: hybrid.Agent[Any]) -> hybrid.Address[Any]:
    """Start `agent` in `nursery`; its failure ends it (seen by `join`), not the nursery."""
    address: hybrid.Address[Any] = await nursery.start(hybrid.AgentRunner(agent).run)
    return address


async def awaited(awaitable: Awaitable[Any]) -> None:
    """Await `awaitable` (a request) in a task of its own."""
    await awaitable


@asynccontextmanager
async def two_nodes(server: NatsServer, **options: Any) -> AsyncGenerator[tuple[Node, Node]]:
    """A serving node "a" and a calling node "b" on `server`."""
    async with (
        connect(server.url, node="a", **{**FAST, **options}) as a,
        connect(server.url, node="b", **{**FAST, **options}) as b,
    ):
        yield a, b


@asynccontextmanager
async def served_counter(server: NatsServer) -> AsyncGenerator[tuple[Node, Node, hybrid.Address[Counter], Counter]]:
    """A counter published as "counter" by node "a", and node "b"'s address of it."""
    counter = Counter()
    async with two_nodes(server) as (a, b), trio.open_nursery() as nursery:
        local = await run(nursery, counter)
        await a.publish("counter", local)
        yield a, b, b.lookup("counter", Counter), counter
        local.interrupt()


async def test_sends_then_a_request_arrive_in_order(nats_server: NatsServer) -> None:
    """Events sent to a remote address are handled, in order, before a later request from the same node."""
    async with served_counter(nats_server) as (_, b, remote, _):
        for n in range(1, 101):
            remote.send(Add(n))
        with trio.fail_after(10):
            assert await remote.request(Get()) == 5050
        assert b.statistics().calls_waiting == 0


async def test_a_request_to_a_name_nobody_serves_fails_with_agent_stopped(nats_server: NatsServer) -> None:
    """No agent behind the name: `AgentStopped` at once (NATS no-responders), not a timeout."""
    async with two_nodes(nats_server) as (_, b):
        ghost = b.lookup("ghost", Counter)
        with trio.fail_after(5), pytest.raises(hybrid.AgentStopped, match="ghost"):
            await ghost.request(Get())


async def test_the_sender_checks_the_message_type_against_the_class(nats_server: NatsServer) -> None:
    """A message the named class does not handle is refused in the sender, before any I/O."""
    async with two_nodes(nats_server) as (_, b):
        remote = b.lookup("counter", Unrelated)
        with pytest.raises(hybrid.UnhandledMessage):
            remote.send(Add(1))
        with pytest.raises(hybrid.UnhandledMessage):
            remote.request(Get())


async def test_errors_cross_as_registered_types_or_remote_failures(nats_server: NatsServer) -> None:
    """A registered exception type is rebuilt as itself; any other arrives as `RemoteFailure`; the agent goes on."""
    async with served_counter(nats_server) as (_, _, remote, _):
        with trio.fail_after(10):
            with pytest.raises(KeyError, match="boom"):
                await remote.request(Fail("key", "boom"))
            with pytest.raises(RemoteFailure) as caught:
                await remote.request(Fail("own", "mine"))
            assert caught.value.type_name == "tests.remote.agents.OwnError"
            assert caught.value.message == "mine"
            remote.send(Add(2))
            assert await remote.request(Get()) == 2


async def test_an_answer_that_does_not_fit_the_request_type_is_an_error(nats_server: NatsServer) -> None:
    """A handler's answer that does not encode as the request's ``R`` reaches the caller as an error."""
    async with served_counter(nats_server) as (_, _, remote, _):
        with trio.fail_after(10), pytest.raises(CodecError, match="int"):
            await remote.request(WrongAnswer())


async def test_a_deadline_withdraws_the_request_and_skips_it_if_queued(nats_server: NatsServer) -> None:
    """The caller's trio deadline: `TooSlowError`, no waiter left, and a request still queued there is never handled."""
    async with served_counter(nats_server) as (_, b, remote, counter):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(awaited, remote.request(Wait(0.5, "first"))))
            await trio.sleep(0.1)  # "first" is being handled
            with pytest.raises(trio.TooSlowError), trio.fail_after(0.1):
                await remote.request(Wait(0, "second"))  # queued behind "first", then given up
        with trio.fail_after(10):
            assert await remote.request(Wait(0, "third")) == "third"
        assert counter.handled == ["first", "third"]
        assert b.statistics().calls_waiting == 0


async def test_forward_to_delivers_the_remote_answer_to_on_response(nats_server: NatsServer) -> None:
    """``request(...).forward_to(ctx)`` to a remote agent: the answer arrives at the forwarder's `on_response`."""

    @attrs.define(eq=False)
    class Asker(hybrid.Agent[list[Any]]):
        target: hybrid.Address[Counter]
        answers: list[Any] = attrs.Factory(list[Any])

        def begin(self) -> hybrid.Next[Self]:
            self.target.request(Get()).forward_to(self.ctx)
            self.target.request(Fail("key", "no")).forward_to(self.ctx)
            return hybrid.Next.events()

        @hybrid.on_response
        async def got(self, request: Get | Fail, result: outcome.Outcome[int]) -> None:
            self.answers.append((type(request).__name__, result))
            if len(self.answers) == 2:
                self.ctx.do_next(hybrid.Next.done(self.answers))

    async with served_counter(nats_server) as (_, _, remote, _):
        remote.send(Add(7))
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                answers = await (await run(nursery, Asker(remote))).join()
    assert answers[0] == ("Get", outcome.Value(7))
    assert answers[1][0] == "Fail"
    assert isinstance(answers[1][1].error, KeyError)


async def test_quorum_over_remote_requests(nats_server: NatsServer) -> None:
    """`hybrid.quorum` decides over remote requests (taskless), withdrawing the losers."""
    async with two_nodes(nats_server) as (a, b):
        counters = [Counter(total=n) for n in range(3)]
        async with trio.open_nursery() as nursery:
            for n, counter in enumerate(counters):
                address = await nursery.start(hybrid.AgentRunner(counter).run)
                await a.publish(f"c{n}", address)
            remotes = [b.lookup(f"c{n}", Counter) for n in range(3)]
            with trio.fail_after(10):
                answers = await hybrid.quorum(2, [remote.request(Get()) for remote in remotes])
            assert len(answers) == 2
            assert set(answers) <= {0, 1, 2}
            for remote in remotes:
                remote.interrupt()


async def test_interrupt_join_and_monitor_across_nodes(nats_server: NatsServer) -> None:
    """A remote interrupt ends the agent after what was sent before; `join`, `is_alive` and monitors see the end."""
    counter = Counter()
    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        local = await run(nursery, counter)
        await a.publish("counter", local)
        remote = b.lookup("counter", Counter)
        watcher = await run(nursery, Watcher(remote))
        await trio.testing.wait_all_tasks_blocked()
        remote.send(Add(3))
        remote.interrupt()
        with trio.fail_after(10):
            assert await remote.join() is None  # interrupted: no output
            reason = await watcher.join()
        assert reason.interrupted
        assert counter.interrupted
        assert counter.total == 3  # the event sent before the interrupt was handled
        assert not remote.is_alive
        assert repr(remote).endswith("(ended)>")
        with pytest.raises(hybrid.AgentStopped):
            remote.send(Add(1))
        assert b.lookup("counter", Counter) is not remote  # a new address: the name may be published again


async def test_a_failed_remote_agent_raises_from_join(nats_server: NatsServer) -> None:
    """A remote agent that fails: `join()` raises the rebuilt error and the reason says failed."""
    async with served_counter(nats_server) as (_, _, remote, _):
        with trio.fail_after(10):
            await remote.request(Stop(fail="gave up"))
            with pytest.raises(ValueError, match="gave up"):
                await remote.join()
        reason = remote.statistics().reason
        assert reason is not None
        assert reason.failed


async def test_the_name_is_free_again_once_the_agent_ended(nats_server: NatsServer) -> None:
    """A published agent that ends unpublishes its name: another agent can take it."""
    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        first = await run(nursery, Counter(total=1))
        await a.publish("counter", first)
        with trio.fail_after(10):
            remote = b.lookup("counter", Counter)
            await remote.request(Stop())
            assert await remote.join() == 1  # the output, decoded as the T of Agent[T]
            await first.join()
            await trio.testing.wait_all_tasks_blocked()
        second = await run(nursery, Counter(total=2))
        await a.publish("counter", second)
        with trio.fail_after(10):
            assert await b.lookup("counter", Counter).request(Get()) == 2
        second.interrupt()


async def test_publish_refuses_bad_names_duplicates_and_foreign_addresses(nats_server: NatsServer) -> None:
    """Bad names, a name published twice, a remote or ended address: clear errors, before any I/O."""
    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        local = await run(nursery, Counter())
        for bad in ("", "a.b", "*", ">", "x" * 65, "sp ace"):
            with pytest.raises(ValueError):
                await a.publish(bad, local)
            with pytest.raises(ValueError):
                b.lookup(bad, Counter)
        await a.publish("counter", local)
        with pytest.raises(NameInUse):
            await a.publish("counter", local)
        with pytest.raises(ValueError, match="only a local agent"):
            await b.publish("again", b.lookup("counter", Counter))
        with pytest.raises(ValueError, match="Agent subclass"):
            b.lookup("counter", int)  # type: ignore[type-var]
        local.interrupt()
        await local.join()
        with pytest.raises(hybrid.AgentStopped):
            await a.publish("later", local)


async def test_undecodable_and_unknown_messages_are_dropped_with_an_error_reply(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, an unknown type, a type the agent does not handle: dropped and logged, a request gets an error."""
    caplog.set_level(logging.WARNING, logger="hybrid.remote")
    async with served_counter(nats_server) as (a, b, remote, _):
        subject = "hybrid.default.agent.counter"
        unknown = wire.ENCODER.encode(wire.Envelope(wire.Kind.REQUEST, "no.such.Type", 1, b"\x80"))
        unhandled = wire.ENCODER.encode(wire.Envelope(wire.Kind.EVENT, "tests.remote.agents.Get", 1, b"\x80"))
        with trio.fail_after(10):
            for payload in (b"\xc1garbage", unknown):
                reply = await b.transport.request(subject, payload)
                decoded = wire.REPLY.decode(reply.data)
                assert decoded.failed
            b.transport.publish(subject, unhandled)
            b.transport.publish(subject, b"")
            remote.send(Add(5))
            assert await remote.request(Get()) == 5
        assert a.statistics().dropped == 4
        assert "dropped a message" in caplog.text


async def test_a_bounded_full_mailbox_makes_a_request_wait_in_a_task(nats_server: NatsServer) -> None:
    """A request to a full bounded mailbox waits for room on the serving node; events to it are dropped and counted."""
    counter = Counter()
    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        runner = hybrid.AgentRunner(counter, mailbox_capacity=1)
        local = await nursery.start(runner.run)
        await a.publish("counter", local)
        remote = b.lookup("counter", Counter)
        with trio.fail_after(10):
            first = trio.Event()

            async def slow() -> None:
                await remote.request(Wait(0.3, "slow"))
                first.set()

            nursery.start_soon(slow)
            await trio.sleep(0.1)  # "slow" is being handled: the mailbox is empty
            local.send(Add(1))  # now it is full
            remote.send(Add(100))  # dropped on the serving node
            assert await remote.request(Get()) == 1  # waited for room
            await first.wait()
        assert a.statistics().dropped == 1
        local.interrupt()


async def test_the_server_stopped_mid_run(nats_server: NatsServer) -> None:
    """Server down: sends raise `RemoteUnavailable`, waiting requests fail with it; after a restart service resumes."""
    async with served_counter(nats_server) as (_, b, remote, _):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                failed = trio.Event()

                async def waiting() -> None:
                    with pytest.raises(RemoteUnavailable):
                        await remote.request(Wait(5, "never"))
                    failed.set()

                nursery.start_soon(waiting)
                await trio.sleep(0.2)
                nats_server.stop()
                await failed.wait()
            with pytest.raises(RemoteUnavailable):
                remote.send(Add(1))
            nats_server.start()
            await b.transport.wait_connected()
            while True:  # node "a" reconnects too, and restores its subscription
                try:
                    assert await remote.request(Get()) == 0
                    break
                except (RemoteUnavailable, hybrid.AgentStopped):
                    await trio.sleep(0.05)
        assert b.statistics().calls_waiting == 0


async def test_leaving_connect_unpublishes(nats_server: NatsServer) -> None:
    """A node that closes stops serving its names: remote requests then fail with `AgentStopped`."""
    async with connect(nats_server.url, node="b", **FAST) as b, trio.open_nursery() as nursery:
        local = await run(nursery, Counter())
        async with connect(nats_server.url, node="a", **FAST) as a:
            await a.publish("counter", local)
            with trio.fail_after(10):
                assert await b.lookup("counter", Counter).request(Get()) == 0
        with trio.fail_after(10), pytest.raises(hybrid.AgentStopped):
            await b.lookup("counter", Counter).request(Get())
        with pytest.raises(RemoteUnavailable):
            a.lookup("x", Counter)
        local.interrupt()


async def test_an_exception_leaves_connect_bare(nats_server: NatsServer) -> None:
    """An exception raised in the block comes out as itself, not in an ExceptionGroup."""
    with pytest.raises(KeyError):
        async with connect(nats_server.url, node="a", **FAST):
            raise KeyError("mine")


async def test_bad_node_and_cluster_names(nats_server: NatsServer) -> None:
    """Node and cluster names follow the name rule: `ValueError` before connecting."""
    with pytest.raises(ValueError):
        async with connect(nats_server.url, node="a.b"):
            pass  # pragma: no cover
    with pytest.raises(ValueError):
        async with connect(nats_server.url, node="a", cluster="c_1"):
            pass  # pragma: no cover


async def test_a_message_over_max_payload_is_refused_in_the_sender(nats_server: NatsServer) -> None:
    """An event or request bigger than the server accepts: `MessageTooLarge` in the sender, nothing sent."""
    async with served_counter(nats_server) as (_, b, remote, counter):
        big = "x" * (b.transport.max_payload + 1)
        with pytest.raises(MessageTooLarge):
            remote.send(Note(big))
        with trio.fail_after(10), pytest.raises(MessageTooLarge):
            await remote.request(Wait(0, big))
        with trio.fail_after(10):
            assert await remote.request(Get()) == 0
        assert counter.handled == []


async def test_ten_thousand_pipelined_sends_then_a_request_arrive_in_order(nats_server: NatsServer) -> None:
    """Sends are not awaited: 10k of them, then a request, are all handled, in order, before the answer."""
    async with served_counter(nats_server) as (a, _, remote, _):
        for _ in range(10_000):
            remote.send(Add(1))
        with trio.fail_after(30):
            assert await remote.request(Get()) == 10_000
        assert a.statistics().dropped == 0


async def test_a_router_may_route_requests_to_remote_agents(nats_server: NatsServer) -> None:
    """A ``route=True`` handler returning a remote address: the request is answered by the remote agent."""

    @attrs.define(eq=False)
    class Router(hybrid.Agent[None]):
        targets: list[hybrid.Address[Counter]]
        turn: int = 0

        def begin(self) -> hybrid.Next[Self]:
            return hybrid.Next.events()

        @hybrid.on_request(route=True)
        async def route(self, request: Get) -> hybrid.Address[Counter]:
            self.turn += 1
            return self.targets[self.turn % len(self.targets)]

    async with two_nodes(nats_server) as (a, b), trio.open_nursery() as nursery:
        for n in range(2):
            await a.publish(f"c{n}", await run(nursery, Counter(total=10 * (n + 1))))
        router = await run(nursery, Router([b.lookup(f"c{n}", Counter) for n in range(2)]))
        with trio.fail_after(10):
            answers = [await router.request(Get()) for _ in range(4)]
        assert sorted(answers) == [10, 10, 20, 20]
        nursery.cancel_scope.cancel()
