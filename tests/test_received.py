"""Instrument.message_received: how long each message waited, and its sender's contextvars."""

from __future__ import annotations

import contextvars
from contextvars import Context
from typing import Any, cast

import attrs
import outcome
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
import hybrid.testing
from hybrid import Agent, Next
from tests.messages import Echo, Ping

who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@attrs.frozen
class Tock:
    pass


@attrs.frozen
class Arm:
    """Asks the server to start a timer whose tick is a `Tock`."""


class Received(hybrid.Instrument):
    """Records (agent name, message, waited, the sender's `who`) for each message received."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object, float | None, str | None]] = []
        self.kinds: list[str] = []
        self.handled: list[object] = []

    def message_received(
        self,
        address: hybrid.Address[Any],
        message: object,
        kind: hybrid.MessageKind,
        waited: float | None,
        sender: Context | None,
    ) -> None:
        self.kinds.append(kind)
        self.seen.append((address.name, message, waited, None if sender is None else sender.run(who.get)))

    def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
        self.handled.append(message)


class Server(Agent):
    def __init__(self) -> None:
        self.pings: list[int] = []

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.pings.append(event.n)
        if event.n < 0:
            raise ValueError(f"bad ping {event.n}")
        if event.n == 0:
            await trio.sleep(0.01)  # the messages behind it wait at least this long

    @hybrid.on_event
    async def tock(self, event: Tock) -> None:
        pass

    @hybrid.on_event
    async def arm(self, event: Arm) -> None:
        self.ctx.send_after(0, Tock())

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        return request.n


class Client(Agent):
    def __init__(self, server: hybrid.Address[Server]) -> None:
        self.server = server
        self.answers: list[int] = []

    def begin(self) -> Next[Self]:
        who.set("client")
        self.server.request(Echo(7)).forward_to(self.ctx)
        return Next.events()

    @hybrid.on_response
    async def got(self, request: Echo, response: outcome.Outcome[int]) -> None:
        self.answers.append(response.unwrap())
        self.ctx.shutdown()


async def test_every_kind_of_message_carries_its_wait_and_sender() -> None:
    received = Received()
    hybrid.add_instrument(received)
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Server(), name="server")
        who.set("main")
        server.send(Ping(0))
        server.send(Ping(1))  # waits behind Ping(0)'s sleep
        await server.send_wait(Ping(2))
        assert await server.request(Echo(3)) == 3
        client = hybrid.spawn(nursery, Client(server), name="client")
        await client.join()
        server.send(Arm())  # a tick: a timer of the server itself
        await hybrid.testing.wait_idle(server)
        await trio.testing.wait_all_tasks_blocked()
        await hybrid.testing.wait_idle(server)
        server.interrupt()

    by_message = {message: (name, waited, sender) for name, message, waited, sender in received.seen}
    assert by_message[Ping(0)][0] == "server"
    waited_1 = by_message[Ping(1)][1]
    assert waited_1 is not None
    assert waited_1 >= 0.01
    assert by_message[Ping(0)][2] == by_message[Ping(2)][2] == by_message[Echo(3)][2] == "main"
    # The forwarded request came from the client's task; its answer went back to the client.
    echo_7 = [(name, sender) for name, message, _, sender in received.seen if message == Echo(7)]
    assert ("server", "client") in echo_7  # the request, from the client's context
    assert [name for name, _ in echo_7].count("client") == 1  # the answer, received by the client
    assert all(waited is not None and waited >= 0 for _, _, waited, _ in received.seen)
    assert Tock() in by_message
    kinds = {
        (name, repr(message)): kind for (name, message, _, _), kind in zip(received.seen, received.kinds, strict=True)
    }
    assert kinds[("server", repr(Ping(0)))] == kinds[("server", repr(Tock()))] == "event"
    assert kinds[("server", repr(Echo(7)))] == "request"
    assert kinds[("client", repr(Echo(7)))] == "response"
    assert received.handled.count(Ping(1)) == 1
    assert len(received.handled) == len(received.seen)


def stamping(address: hybrid.Address[Any]) -> bool:
    """Whether the mailbox stamps, checked both ways: its flag, and send()'s fast path closed."""
    mailbox = address._mailbox
    assert (mailbox.stamping or mailbox.asleep) == (Ping not in mailbox.fast)
    return mailbox.stamping


async def test_stamping_switches_every_live_mailbox_on_and_off() -> None:
    """Registering the instrument stamps from then on; removing it brings back send()'s fast path."""
    received = Received()
    plain = hybrid.Instrument()  # overrides nothing: no stamps
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, server_agent := Server())
        server.send(Ping(5))  # queued before any instrument: received with no stamp
        hybrid.add_instrument(plain)
        assert not stamping(server)
        hybrid.add_instrument(received)
        assert stamping(server)
        server.send(Ping(6))
        late = hybrid.spawn(nursery, Server())  # made while stamping: stamps from the start
        assert stamping(late)
        late.send(Ping(8))
        await hybrid.testing.wait_idle(server, late)
        hybrid.remove_instrument(received)
        assert not stamping(server)
        assert not stamping(late)
        server.send(Ping(9))  # fast path again: nobody is told
        await hybrid.testing.wait_idle(server)
        hybrid.remove_instrument(plain)
        server.interrupt()
        late.interrupt()
    assert sorted((message.n, waited is None, sender) for _, message, waited, sender in received.seen) == [  # type: ignore[attr-defined]
        (5, True, None),
        (6, False, "nobody"),
        (8, False, "nobody"),
    ]
    assert server_agent.pings == [5, 6, 9]


async def test_stamped_events_queued_when_the_instrument_leaves_are_still_handled() -> None:
    received = Received()
    hybrid.add_instrument(received)
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, server_agent := Server())
        for n in range(1, 4):
            server.send(Ping(n))
        hybrid.remove_instrument(received)
        await hybrid.testing.wait_idle(server)
        server.interrupt()
    assert received.seen == []
    assert server_agent.pings == [1, 2, 3]


async def test_a_request_whose_caller_left_is_not_received() -> None:
    received = Received()
    hybrid.add_instrument(received)
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Server())
        server.send(Ping(0))  # the server sleeps in this handler
        with trio.move_on_after(0.001):
            await server.request(Echo(1))
        await hybrid.testing.wait_idle(server)
        server.interrupt()
    assert [message for _, message, _, _ in received.seen] == [Ping(0)]
    assert server._mailbox.dropped == 1


class Crashing(Agent):
    """Crashes in its first handler."""

    def __init__(self, log: list[int]) -> None:
        self.log = log

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.log.append(event.n)
        if event.n == 0:
            self.ctx.do_next(Next.fail(ValueError("crash")))


async def test_stamped_messages_wait_for_a_restarted_child(autojump_clock: trio.testing.MockClock) -> None:
    """Sent while the restart waits for its backoff, they are handed over to the next instance."""
    log: list[int] = []
    received = Received()
    hybrid.add_instrument(received)

    class App(hybrid.Supervisor):
        restart_backoff = hybrid.Backoff(initial=10)

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(lambda: Crashing(log), name="child")
            self.child.send(Ping(0))
            return Next.events()

    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, App())
        await trio.sleep(5)  # the child crashed; its restart waits
        child = cast("hybrid.Address[Crashing]", app._rt.agent.child)  # type: ignore[attr-defined]
        child.send(Ping(1))
        child.send(Ping(2))
        await trio.sleep(10)
        app.interrupt()
    assert log == [0, 1, 2]
    waits = {message: waited for name, message, waited, _ in received.seen if name == "App-1/child"}
    assert waits[Ping(1)] is not None  # stamped by the old instance's mailbox, read by the new one


@pytest.mark.parametrize("queued_before", [False, True])
async def test_a_raising_message_received_hook_is_removed_and_the_agent_goes_on(queued_before: bool) -> None:
    class Raising(hybrid.Instrument):
        def message_received(
            self,
            address: hybrid.Address[Any],
            message: object,
            kind: hybrid.MessageKind,
            waited: float | None,
            sender: Context | None,
        ) -> None:
            raise RuntimeError("instrument bug")

    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, server_agent := Server())
        if queued_before:
            server.send(Ping(1))
        hybrid.add_instrument(Raising())
        server.send(Ping(2))
        await hybrid.testing.wait_idle(server)
        assert not stamping(server)  # the instrument left: stamping stopped
        server.interrupt()
    assert server_agent.pings == ([1, 2] if queued_before else [2])


async def test_a_stamped_event_whose_handler_raises_goes_to_on_error(caplog: pytest.LogCaptureFixture) -> None:
    received = Received()
    hybrid.add_instrument(received)
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, server_agent := Server())
        server.send(Ping(-1))
        server.send(Ping(4))
        await hybrid.testing.wait_idle(server)
        server.interrupt()
    assert server_agent.pings == [-1, 4]  # it kept running
    assert "bad ping -1" in caplog.text
    assert received.handled == [Ping(-1), Ping(4)]


class Failures(hybrid.Instrument):
    """Watches failures only: no stamps, so events stay bare."""

    def __init__(self) -> None:
        self.failed: list[tuple[object, str, str]] = []

    def message_failed(
        self, address: hybrid.Address[Any], message: object, kind: hybrid.MessageKind, error: Exception
    ) -> None:
        self.failed.append((message, str(kind), str(error)))


@attrs.frozen
class Ring:
    pass


class Fragile(Agent):
    def __init__(self, server: hybrid.Address[Server] | None = None) -> None:
        self.server = server
        self.errors: list[str] = []

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        if event.n == 1:
            self.ctx.send_after(0, Ring())
        elif event.n == 2:
            assert self.server is not None
            self.server.request(Echo(5)).forward_to(self.ctx)
        else:
            raise ValueError("event")

    @hybrid.on_event
    async def ring(self, event: Ring) -> None:
        raise ValueError("tick")

    @hybrid.on_response
    async def answered(self, request: Echo, response: outcome.Outcome[int]) -> None:
        raise ValueError("response")

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        raise ValueError("request")

    async def on_error(self, error: Exception) -> None:
        self.errors.append(str(error))


async def test_every_kind_of_handler_failure_is_reported_before_on_error_or_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failures = Failures()
    hybrid.add_instrument(failures)
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Server())
        fragile = hybrid.spawn(nursery, agent := Fragile(server))
        assert not fragile._mailbox.stamping  # message_failed alone needs no stamps
        for n in (0, 1, 2):
            fragile.send(Ping(n))
        with pytest.raises(ValueError, match="request"):
            await fragile.request(Echo(1))
        await trio.sleep(1)
        await hybrid.testing.wait_idle(fragile)
        fragile.interrupt()
        server.interrupt()
    assert sorted(failures.failed, key=repr) == sorted(
        [
            (Ping(0), "event", "event"),
            (Ring(), "event", "tick"),
            (Echo(5), "response", "response"),
            (Echo(1), "request", "request"),
        ],
        key=repr,
    )
    assert sorted(agent.errors) == ["event", "response", "tick"]
