"""The foreign seam: an ordinary `Address` whose agent lives elsewhere, reached through a `Link`.

A `Loopback` link plays the other process: it records what the address hands
it, and the test answers calls (`complete`), fails them, or ends the run
(`ForeignRun.finish`) as a real link would on the messages of a remote node.
"""

from __future__ import annotations

import contextvars
import random
import threading
from typing import Any

import attrs
import outcome
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, RequestCall, Restart, StopKind, StopReason
from hybrid._foreign import (
    ForeignRun,
    Link,
    answer_into,
    complete,
    fail_soon,
    foreign_address,
    is_foreign,
    on_given_up,
    request_of,
)
from hybrid._mailbox import UNBOUNDED, can_gather
from hybrid.testing import wait_idle

# -- messages and agents ---------------------------------------------------------------


@attrs.frozen
class Note:
    text: str = ""


@attrs.frozen
class Ask(hybrid.Request[int]):
    n: int = 0


@attrs.frozen
class Stranger:
    """An event that `Remote` does not handle."""


@attrs.frozen
class StrangeAsk(hybrid.Request[int]):
    """A request that `Remote` does not handle."""


class Remote(Agent[str]):
    """The class named for the foreign addresses (and, spawned locally, a local peer)."""

    @hybrid.on_event
    async def note(self, event: Note) -> None:
        pass

    @hybrid.on_request
    async def ask(self, request: Ask) -> int:
        return request.n * 10


class Loopback:
    """A `Link` to nowhere: it records what it is handed; the test plays the other side."""

    def __init__(self) -> None:
        self.delivered: list[object] = []
        self.calls: list[RequestCall[Any]] = []
        self.withdrawn: list[RequestCall[Any]] = []
        self.interrupts = 0
        self.watches = 0
        """Times someone started waiting for the end (`join`, a monitor)."""
        self.refuse: Exception | None = None
        """`deliver` raises this (the event is not sent)."""
        self.fail_calls: Exception | None = None
        """`call` fails every call with this, with `fail_soon` (a link that is down)."""
        self.threads: set[int] = set()
        """The threads the link's methods were called in."""
        self._arrived = trio.Event()

    def deliver(self, event: object) -> None:
        self.threads.add(threading.get_ident())
        if self.refuse is not None:
            raise self.refuse
        self.delivered.append(event)

    def call(self, call: RequestCall[Any]) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append(call)
        if self.fail_calls is not None:
            fail_soon(call, self.fail_calls)
        self._arrived.set()
        self._arrived = trio.Event()

    def withdraw(self, call: RequestCall[Any]) -> None:
        self.threads.add(threading.get_ident())
        self.withdrawn.append(call)

    def interrupt(self) -> None:
        self.threads.add(threading.get_ident())
        self.interrupts += 1

    def watched(self) -> None:
        self.threads.add(threading.get_ident())
        self.watches += 1

    async def next_call(self, count: int = 1) -> RequestCall[Any]:
        """Wait until `count` calls have come; return the last of them."""
        while len(self.calls) < count:
            await self._arrived.wait()
        return self.calls[count - 1]


def remote(link: Link, name: str = "node-b/Remote-1") -> tuple[hybrid.Address[Remote], ForeignRun]:
    """A foreign address of a `Remote` agent, reached through `link`."""
    return foreign_address(name, Remote, link)


def answer(call: RequestCall[Any], value: object) -> None:
    complete(call, outcome.Value(value))


def fail(call: RequestCall[Any], error: BaseException) -> None:
    complete(call, outcome.Error(error))


# -- sending: type check, deliver, statistics ------------------------------------------


async def test_send_and_request_of_an_unhandled_type_raise_in_the_sender_and_reach_no_link() -> None:
    """The sender's type check uses the named class's handlers: an unhandled type raises and nothing is sent."""
    link = Loopback()
    address, _ = remote(link)
    with pytest.raises(hybrid.UnhandledMessage):
        address.send(Stranger())
    with pytest.raises(hybrid.UnhandledMessage):
        address.request(StrangeAsk())
    with pytest.raises(hybrid.UnhandledMessage):
        await address.send_wait(Stranger())
    assert not address.handles(Stranger)
    assert address.handles(Note)
    assert address.handles(Ask)
    assert (link.delivered, link.calls, link.withdrawn) == ([], [], [])


async def test_send_hands_the_event_to_the_link_and_never_queues() -> None:
    """`send` calls `link.deliver(event)` on the home thread; the mailbox never has a queue."""
    link = Loopback()
    address, _ = remote(link)
    address.send(Note("a"))
    address.send(Note("b"))
    assert link.delivered == [Note("a"), Note("b")]
    assert address._mailbox.queue is None
    assert link.threads == {threading.get_ident()}
    assert is_foreign(address)
    assert address.name == "node-b/Remote-1"
    assert address.agent_type is Remote


async def test_the_statistics_of_a_foreign_address_show_a_remote_agent_without_a_queue() -> None:
    """Statistics: phase "remote", depth 0, no capacity, no local counters."""
    link = Loopback()
    address, _ = remote(link)
    address.send(Note())
    stats = address.statistics()
    assert stats.phase == "remote"
    assert stats.mailbox_depth == 0
    assert stats.mailbox_capacity is None
    assert stats.senders_waiting == 0
    assert (stats.messages_handled, stats.messages_dropped, stats.transitions) == (0, 0, 0)
    assert stats.state is None
    assert stats.reason is None
    assert not stats.hibernating
    assert not stats.idle
    assert address._mailbox.limit == UNBOUNDED


async def test_a_deliver_that_raises_raises_in_the_sender() -> None:
    """A link that cannot send an event raises its error out of `send` (and `send_wait`)."""
    link = Loopback()
    address, _ = remote(link)
    link.refuse = ConnectionError("link down")
    with pytest.raises(ConnectionError, match="link down"):
        address.send(Note())
    with pytest.raises(ConnectionError, match="link down"):
        await address.send_wait(Note())
    assert link.delivered == []
    link.refuse = None
    address.send(Note("after"))
    assert link.delivered == [Note("after")]


async def test_send_wait_is_send_plus_a_checkpoint() -> None:
    """`send_wait` to a foreign address hands the event over at once and checkpoints."""
    link = Loopback()
    address, run = remote(link)
    with trio.testing.assert_checkpoints():
        await address.send_wait(Note("w"))
    assert link.delivered == [Note("w")]
    with trio.CancelScope() as scope:
        scope.cancel()
        await address.send_wait(Note("cancelled"))  # a caller already cancelled sends nothing
    assert scope.cancelled_caught
    assert link.delivered == [Note("w")]
    run.finish(StopReason.DONE)
    with pytest.raises(hybrid.AgentStopped):
        await address.send_wait(Note("late"))
    assert link.delivered == [Note("w")]


async def test_a_foreign_mailbox_never_takes_a_fast_path_whatever_toggles_it() -> None:
    """Stamping or sleeping toggled on a foreign mailbox leaves it without a fast path: sends reach the link."""
    link = Loopback()
    address, _ = remote(link)
    mailbox = address._mailbox
    for on in (True, False):
        mailbox.set_stamping(on)
        mailbox.set_asleep(False)
        assert len(mailbox.fast) == 0
        address.send(Note(str(on)))
    assert link.delivered == [Note("True"), Note("False")]
    assert mailbox.queue is None


# -- requests ------------------------------------------------------------------------------


async def test_an_awaited_request_parks_until_the_link_completes_it_with_a_value() -> None:
    """`await request` sends through `link.call` and parks until another task completes the call."""
    link = Loopback()
    address, _ = remote(link)
    answers: list[int] = []

    async def caller() -> None:
        answers.append(await address.request(Ask(4)))

    async def server() -> None:
        call = await link.next_call()
        assert request_of(call) == Ask(4)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []  # the caller is still parked
        answer(call, 40)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        nursery.start_soon(server)
    assert answers == [40]
    assert link.threads == {threading.get_ident()}
    assert link.withdrawn == []


async def test_an_awaited_request_raises_the_error_the_link_completes_it_with() -> None:
    """A call completed with an error raises that error in the caller."""
    link = Loopback()
    address, _ = remote(link)
    failures: list[Exception] = []

    async def caller() -> None:
        with pytest.raises(ValueError, match="no such account") as info:
            await address.request(Ask(1))
        failures.append(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        call = await link.next_call()
        await trio.testing.wait_all_tasks_blocked()
        fail(call, ValueError("no such account"))
    assert len(failures) == 1
    assert link.withdrawn == []


async def test_a_request_made_but_never_awaited_sends_nothing() -> None:
    """A request neither awaited nor forwarded never reaches `link.call` (and warns, as locally)."""
    link = Loopback()
    address, _ = remote(link)
    call = address.request(Ask(1))
    with pytest.warns(RuntimeWarning, match="never awaited nor forwarded"):
        del call  # the last reference: collected at once
    assert link.calls == []


async def test_a_caller_already_cancelled_sends_nothing() -> None:
    """A request awaited in a cancelled scope never reaches `link.call`."""
    link = Loopback()
    address, _ = remote(link)
    with trio.CancelScope() as scope:
        scope.cancel()
        await address.request(Ask(1))
    assert scope.cancelled_caught
    assert (link.calls, link.withdrawn) == ([], [])


async def test_a_deadline_withdraws_the_call_once_and_a_late_answer_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller's trio deadline calls `link.withdraw(call)` exactly once; completing it afterwards does nothing."""
    link = Loopback()
    address, _ = remote(link)
    with trio.move_on_after(5) as scope:
        await address.request(Ask(1))
    assert scope.cancelled_caught
    assert len(link.calls) == 1
    call = link.calls[0]
    assert link.withdrawn == [call]
    answer(call, 10)  # the late answer: dropped, no error
    fail(call, ValueError("late failure"))  # and so is a late failure
    await trio.testing.wait_all_tasks_blocked()
    assert link.withdrawn == [call]
    assert link.delivered == []


async def test_a_link_failing_with_fail_soon_gives_its_error_to_the_caller() -> None:
    """A call that `link.call` fails with `fail_soon` raises the link's error in the awaiting caller."""
    link = Loopback()
    address, _ = remote(link)
    link.fail_calls = ConnectionError("link down")
    with pytest.raises(ConnectionError, match="link down"):
        await address.request(Ask(1))
    assert len(link.calls) == 1
    assert link.withdrawn == []


# -- forwarded requests ----------------------------------------------------------------------


@attrs.frozen
class Forward:
    n: int


class Client(Agent[tuple[Ask, outcome.Outcome[int]]]):
    """Forwards an `Ask` to `server` and ends with what its `on_response` handler got."""

    def __init__(self, server: hybrid.Address[Remote]) -> None:
        self.server = server

    @hybrid.on_event
    async def forward(self, event: Forward) -> None:
        self.server.request(Ask(event.n)).forward_to(self.ctx)

    @hybrid.on_response
    async def got(self, request: Ask, response: outcome.Outcome[int]) -> None:
        self.ctx.do_next(Next.done((request, response)))


async def test_a_forwarded_request_answer_reaches_the_on_response_handler() -> None:
    """`request(...).forward_to(ctx)` sends at once; the link's answer arrives at the agent's `on_response`."""
    link = Loopback()
    address, _ = remote(link)
    async with trio.open_nursery() as nursery:
        client = hybrid.spawn(nursery, Client(address))
        client.send(Forward(3))
        call = await link.next_call()
        assert request_of(call) == Ask(3)
        answer(call, 30)
        request, response = await client.join()
    assert request == Ask(3)
    assert response == outcome.Value(30)


async def test_a_forwarded_request_failure_reaches_the_on_response_handler_as_an_error() -> None:
    """A call the link fails arrives at the forwarding agent's `on_response` as `outcome.Error`."""
    link = Loopback()
    address, _ = remote(link)
    error = ValueError("refused")
    async with trio.open_nursery() as nursery:
        client = hybrid.spawn(nursery, Client(address))
        client.send(Forward(3))
        call = await link.next_call()
        fail(call, error)
        _, response = await client.join()
    assert isinstance(response, outcome.Error)
    assert response.error is error


async def test_a_forwarded_request_on_a_failing_link_reaches_the_on_response_handler_as_an_error() -> None:
    """A forwarded call that `link.call` fails with `fail_soon` arrives at `on_response` as `outcome.Error`."""
    link = Loopback()
    address, _ = remote(link)
    link.fail_calls = ConnectionError("link down")
    async with trio.open_nursery() as nursery:
        client = hybrid.spawn(nursery, Client(address))
        client.send(Forward(3))
        _, response = await client.join()
    assert isinstance(response, outcome.Error)
    assert isinstance(response.error, ConnectionError)


# -- quorum ------------------------------------------------------------------------------------


async def test_a_quorum_of_foreign_calls_is_taskless_and_withdraws_the_losers() -> None:
    """`hybrid.quorum` over foreign calls starts no task per call, and withdraws the calls still out."""
    link = Loopback()
    addresses = [remote(link, f"node-{i}/Remote")[0] for i in range(3)]
    calls = [address.request(Ask(i)) for i, address in enumerate(addresses)]
    assert can_gather(calls)
    results: list[list[int]] = []

    async def vote() -> None:
        results.append(await hybrid.quorum(2, calls))

    async with trio.open_nursery() as nursery:
        await trio.testing.wait_all_tasks_blocked()
        before = trio.lowlevel.current_statistics().tasks_living
        nursery.start_soon(vote)
        await link.next_call(3)
        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().tasks_living == before + 1  # the voter alone
        assert link.calls == calls
        first, second, third = calls
        answer(third, 3)
        answer(first, 1)
    assert results == [[3, 1]]
    assert link.withdrawn == [second]
    answer(second, 2)  # a late answer to a withdrawn call: dropped


async def test_a_quorum_mixing_local_and_foreign_calls_is_taskless_and_withdraws_the_foreign_loser() -> None:
    """A quorum of local and foreign calls gathers them without tasks; the local wins, the foreign is withdrawn."""
    link = Loopback()
    foreign, _ = remote(link)
    async with trio.open_nursery() as nursery:
        local = hybrid.spawn(nursery, Remote())
        await trio.testing.wait_all_tasks_blocked()
        calls = [foreign.request(Ask(8)), local.request(Ask(7))]
        assert can_gather(calls)
        assert await hybrid.quorum(1, calls) == [70]
        assert link.calls == calls[:1]
        assert link.withdrawn == calls[:1]
        local.interrupt()


async def test_a_quorum_over_a_failing_link_raises_quorum_error() -> None:
    """A quorum whose link fails every call raises `QuorumError` with the link's errors."""
    link = Loopback()
    link.fail_calls = ConnectionError("link down")
    addresses = [remote(link, f"node-{i}/Remote")[0] for i in range(3)]
    with pytest.raises(hybrid.QuorumError) as info:
        await hybrid.quorum(2, [address.request(Ask(i)) for i, address in enumerate(addresses)])
    assert len(link.calls) == 3
    assert len(info.value.errors) == 2  # decided at the second failure: the third is dropped
    assert all(isinstance(error, ConnectionError) for error in info.value.errors)
    assert info.value.results == []


async def test_a_cancelled_quorum_withdraws_every_foreign_call(autojump_clock: trio.testing.MockClock) -> None:
    """A quorum over foreign calls cancelled by a deadline withdraws each of its calls once."""
    link = Loopback()
    addresses = [remote(link, f"node-{i}/Remote")[0] for i in range(3)]
    with trio.move_on_after(1) as scope:
        await hybrid.quorum(2, [address.request(Ask(i)) for i, address in enumerate(addresses)])
    assert scope.cancelled_caught
    assert len(link.calls) == 3
    assert link.withdrawn == link.calls


async def test_answer_into_sends_a_foreign_call_whose_answer_goes_to_the_gathering() -> None:
    """`answer_into` sends a new call to the link; its completion goes to `gathering.answered`, once."""
    link = Loopback()
    address, run = remote(link)

    class Gathering:
        def __init__(self) -> None:
            self.answers: list[tuple[RequestCall[Any], outcome.Outcome[Any]]] = []

        def answered(self, call: RequestCall[Any], result: outcome.Outcome[Any]) -> None:
            self.answers.append((call, result))

    gathering = Gathering()
    call = address.request(Ask(2))
    assert answer_into(call, gathering) is True
    assert link.calls == [call]
    assert answer_into(call, gathering) is False  # sent already
    answer(call, 20)
    answer(call, 21)  # a second completion is dropped
    assert gathering.answers == [(call, outcome.Value(20))]
    run.finish(StopReason.DONE)
    ended = address.request(Ask(3))
    assert answer_into(ended, gathering) is False  # a closed address: the caller awaits instead
    with pytest.raises(hybrid.AgentStopped):
        await ended
    assert link.calls == [call]


# -- routers -----------------------------------------------------------------------------------


class Router(Agent):
    """Routes every `Ask` and `StrangeAsk` to `target` (a foreign address)."""

    def __init__(self, target: hybrid.Address[Any]) -> None:
        self.target = target

    @hybrid.on_request(route=True)
    async def ask(self, request: Ask) -> hybrid.Address[Any]:
        return self.target

    @hybrid.on_request(route=True)
    async def strange(self, request: StrangeAsk) -> hybrid.Address[Any]:
        return self.target


async def test_a_router_can_move_a_call_to_a_foreign_address_whose_answer_reaches_the_caller() -> None:
    """A `route=True` handler returning a foreign address moves the call to its link; the answer reaches the caller."""
    link = Loopback()
    foreign, _ = remote(link)
    answers: list[int] = []
    async with trio.open_nursery() as nursery:
        router = hybrid.spawn(nursery, Router(foreign))

        async def caller() -> None:
            answers.append(await router.request(Ask(5)))

        nursery.start_soon(caller)
        call = await link.next_call()
        assert request_of(call) == Ask(5)
        await trio.testing.wait_all_tasks_blocked()
        answer(call, 50)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [50]
        router.interrupt()


async def test_a_router_moving_a_call_to_an_ended_or_unfit_foreign_address_fails_the_caller() -> None:
    """A call routed to an ended foreign address fails with `AgentStopped`; an unhandled one, `UnhandledMessage`."""
    link = Loopback()
    foreign, run = remote(link)
    async with trio.open_nursery() as nursery:
        router = hybrid.spawn(nursery, Router(foreign))
        with pytest.raises(hybrid.UnhandledMessage):
            await router.request(StrangeAsk())
        run.finish(StopReason.INTERRUPTED)
        with pytest.raises(hybrid.AgentStopped):
            await router.request(Ask(1))
        router.interrupt()
    assert link.calls == []


# -- interrupt, join, is_alive, finish -----------------------------------------------------


async def test_interrupt_goes_to_the_link_until_the_run_finishes() -> None:
    """`interrupt()` calls `link.interrupt()`; after `finish` it does nothing."""
    link = Loopback()
    address, run = remote(link)
    address.interrupt()
    address.interrupt()
    assert link.interrupts == 2
    run.finish(StopReason.INTERRUPTED)
    address.interrupt()
    assert link.interrupts == 2


async def test_interrupt_and_send_from_a_worker_thread_reach_the_link_on_the_home_thread() -> None:
    """From a worker thread, `interrupt()` and `send()` hop to the home trio thread before reaching the link."""
    link = Loopback()
    address, _ = remote(link)
    await trio.to_thread.run_sync(address.interrupt)
    await trio.to_thread.run_sync(address.send, Note("from a thread"))
    assert link.interrupts == 1
    assert link.delivered == [Note("from a thread")]
    assert link.threads == {threading.get_ident()}
    link.refuse = ConnectionError("link down")
    with pytest.raises(ConnectionError):  # the link's error is raised in the worker thread
        await trio.to_thread.run_sync(address.send, Note())


async def test_join_waits_for_finish_and_returns_the_output() -> None:
    """`join()` parks until the link finishes the run, then returns its output (every joiner)."""
    link = Loopback()
    address, run = remote(link)
    outputs: list[str] = []

    async def joiner() -> None:
        outputs.append(await address.join())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(joiner)
        nursery.start_soon(joiner)
        await trio.testing.wait_all_tasks_blocked()
        assert outputs == []
        run.finish(StopReason.DONE, "output")
    assert outputs == ["output", "output"]
    assert await address.join() == "output"


async def test_join_raises_the_error_the_run_finished_with() -> None:
    """`join()` of a run finished as failed raises its error, also after the end."""
    link = Loopback()
    address, run = remote(link)
    error = ValueError("remote failure")

    async def joiner() -> None:
        with pytest.raises(ValueError, match="remote failure"):
            await address.join()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(joiner)
        await trio.testing.wait_all_tasks_blocked()
        run.finish(StopReason(StopKind.FAILED, error), error=error)
    with pytest.raises(ValueError, match="remote failure"):
        await address.join()
    assert address.statistics().reason == StopReason(StopKind.FAILED, error)


async def test_join_of_an_ended_foreign_address_returns_at_once_but_is_a_checkpoint() -> None:
    """`join()` after the end returns at once, still checkpointing: a cancelled caller is cancelled."""
    link = Loopback()
    address, run = remote(link)
    run.finish(StopReason.DONE, "output")
    with trio.testing.assert_checkpoints():
        assert await address.join() == "output"
    with trio.CancelScope() as scope:
        scope.cancel()
        await address.join()
        pytest.fail("join() did not checkpoint")  # pragma: no cover
    assert scope.cancelled_caught


async def test_is_alive_until_finish_then_send_and_request_fail_with_agent_stopped() -> None:
    """`is_alive` is True until `finish`; afterwards `send` raises and `request` fails with `AgentStopped`."""
    link = Loopback()
    address, run = remote(link)
    alive_before = address.is_alive
    run.finish(StopReason.STOPPED)
    assert alive_before
    assert not address.is_alive
    with pytest.raises(hybrid.AgentStopped):
        address.send(Note())
    with pytest.raises(hybrid.AgentStopped):
        await address.request(Ask(1))
    assert (link.delivered, link.calls) == ([], [])
    assert address.statistics().phase == "ended"
    assert address.statistics().reason == StopReason.STOPPED


async def test_finish_happens_once() -> None:
    """A second `finish` is ignored: the first ending stands."""
    link = Loopback()
    address, run = remote(link)
    run.finish(StopReason.DONE, "first")
    run.finish(StopReason(StopKind.FAILED, ValueError("second")), "second", ValueError("second"))
    assert run.reason == StopReason.DONE
    assert await address.join() == "first"


async def test_repr_shows_remote_then_ended() -> None:
    """`repr(address)` says "(remote)" while it runs and "(ended)" after `finish`."""
    link = Loopback()
    address, run = remote(link, "node-b/Remote-7")
    assert repr(address) == "<Address of node-b/Remote-7 (remote)>"
    assert run.name == address.name == "node-b/Remote-7"
    run.finish(StopReason.DONE)
    assert repr(address) == "<Address of node-b/Remote-7 (ended)>"


async def test_a_foreign_address_cannot_be_reused_by_an_agent_runner() -> None:
    """`AgentRunner(agent, address=foreign)` raises `ValueError`, running or ended."""
    link = Loopback()
    address, run = remote(link)
    with pytest.raises(ValueError, match="another process"):
        hybrid.AgentRunner(Remote(), address=address)
    run.finish(StopReason.DONE)
    with pytest.raises(ValueError, match="another process"):
        hybrid.AgentRunner(Remote(), address=address)


# -- monitors -------------------------------------------------------------------------------


@attrs.frozen
class Watch:
    pass


class Watcher(Agent):
    """Monitors `target` on `Watch`; records the `Ended` events it gets."""

    def __init__(self, target: hybrid.Address[Any]) -> None:
        self.target = target
        self.seen: list[hybrid.Ended] = []
        self.monitors: list[hybrid.Monitor] = []

    @hybrid.on_event
    async def watch(self, event: Watch) -> None:
        self.monitors.append(self.ctx.monitor(self.target))

    @hybrid.on_event
    async def ended(self, event: hybrid.Ended) -> None:
        self.seen.append(event)


async def test_a_monitor_of_a_foreign_address_delivers_ended_once() -> None:
    """`ctx.monitor(foreign)` delivers `Ended(address, reason)` once, when the link finishes the run."""
    link = Loopback()
    address, run = remote(link)
    watcher = Watcher(address)
    async with trio.open_nursery() as nursery:
        watcher_address = hybrid.spawn(nursery, watcher)
        watcher_address.send(Watch())
        await wait_idle(watcher_address)
        assert watcher.seen == []
        run.finish(StopReason.INTERRUPTED)
        run.finish(StopReason.DONE)  # ignored: no second event
        await wait_idle(watcher_address)
        assert [(event.address, event.reason) for event in watcher.seen] == [(address, StopReason.INTERRUPTED)]
        watcher_address.interrupt()


async def test_a_cancelled_monitor_of_a_foreign_address_delivers_nothing() -> None:
    """`Monitor.cancel()` before the end prevents the `Ended` event (and is idempotent)."""
    link = Loopback()
    address, run = remote(link)
    watcher = Watcher(address)
    async with trio.open_nursery() as nursery:
        watcher_address = hybrid.spawn(nursery, watcher)
        watcher_address.send(Watch())
        watcher_address.send(Watch())
        await wait_idle(watcher_address)
        first, second = watcher.monitors
        first.cancel()
        first.cancel()
        run.finish(StopReason.DONE)
        second.cancel()  # after the end: nothing to cancel
        await wait_idle(watcher_address)
        assert [event.reason for event in watcher.seen] == [StopReason.DONE]  # the second monitor's only
        watcher_address.interrupt()


async def test_monitoring_an_ended_foreign_address_delivers_ended_at_once() -> None:
    """A monitor of a foreign address whose run has finished delivers `Ended` at once."""
    link = Loopback()
    address, run = remote(link)
    error = ValueError("gone")
    run.finish(StopReason(StopKind.FAILED, error), error=error)
    watcher = Watcher(address)
    async with trio.open_nursery() as nursery:
        watcher_address = hybrid.spawn(nursery, watcher)
        watcher_address.send(Watch())
        await wait_idle(watcher_address)
        assert [(event.address, event.reason) for event in watcher.seen] == [(address, run.reason)]
        assert run.reason == StopReason(StopKind.FAILED, error)
        watcher_address.interrupt()


# -- instruments ---------------------------------------------------------------------------------


class Received(hybrid.Instrument):
    """Watches messages received: live local mailboxes stamp what they queue."""

    def __init__(self) -> None:
        self.received: list[object] = []

    def message_received(
        self,
        address: hybrid.Address[Any],
        message: object,
        kind: hybrid.MessageKind,
        waited: float | None,
        sender: contextvars.Context | None,
    ) -> None:
        self.received.append(message)


async def test_instruments_never_wrap_what_the_link_is_handed() -> None:
    """While an instrument watches messages received, the link gets the raw event and an unstamped call."""
    link = Loopback()
    before, _ = remote(link, "node-b/before")
    instrument = Received()
    hybrid.add_instrument(instrument)
    after, _ = remote(link, "node-b/after")

    async def ask(address: hybrid.Address[Remote]) -> None:
        await address.request(Ask(1))

    async with trio.open_nursery() as nursery:
        local = hybrid.spawn(nursery, Remote())
        assert local._mailbox.stamping  # the instrument does stamp local mailboxes
        for address in (before, after):
            address.send(Note(address.name))
            nursery.start_soon(ask, address)
        await link.next_call(2)
        for call in link.calls:
            answer(call, 0)
        local.interrupt()
    assert link.delivered == [Note("node-b/before"), Note("node-b/after")]
    assert all(type(event) is Note for event in link.delivered)
    assert all(type(call) is RequestCall and call.stamp is None for call in link.calls)
    assert instrument.received == []  # what the link was handed is received on the other side, not here


# -- on_given_up ------------------------------------------------------------------------------


@attrs.frozen
class Finish:
    output: str


@attrs.frozen
class Crash:
    why: str


class Child(Agent[str]):
    """An actor that finishes, or fails, when told to."""

    @hybrid.on_event
    async def finish(self, event: Finish) -> None:
        self.ctx.do_next(Next.done(event.output))

    @hybrid.on_event
    async def crash(self, event: Crash) -> None:
        self.ctx.do_next(Next.fail(ValueError(event.why)))


Farewells = list[tuple[StopReason, Any, BaseException | None]]


def recorder() -> tuple[Farewells, Any]:
    """A list of farewells and the farewell function that appends to it."""
    farewells: Farewells = []

    def farewell(reason: StopReason, output: Any, error: BaseException | None) -> None:
        farewells.append((reason, output, error))

    return farewells, farewell


async def test_on_given_up_is_called_once_when_a_local_agent_ends() -> None:
    """A plain local agent that ends calls the farewell once, with its reason and output."""
    farewells, farewell = recorder()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Child())
        on_given_up(address, farewell)
        address.send(Finish("out"))
        assert await address.join() == "out"
    await trio.testing.wait_all_tasks_blocked()
    assert farewells == [(StopReason.DONE, "out", None)]


async def test_on_given_up_passes_the_error_of_a_failed_agent() -> None:
    """A local agent that fails calls the farewell with the FAILED reason and its error."""
    farewells, farewell = recorder()
    runner = hybrid.AgentRunner(Child())
    on_given_up(runner.address, farewell)
    runner.address.send(Crash("broken"))
    reason = await runner.run()
    assert reason.failed
    [(given_reason, output, error)] = farewells
    assert given_reason == reason
    assert output is None
    assert isinstance(error, ValueError)
    assert error is reason.error


async def test_on_given_up_waits_through_a_supervisor_restart_and_is_called_when_the_child_is_given_up() -> None:
    """A supervised PERMANENT child: no farewell at its restart, one when the supervisor stops and gives it up."""
    starts: list[Child] = []

    def make_child() -> Child:
        child = Child()
        starts.append(child)
        return child

    class App(hybrid.Supervisor):
        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(make_child, restart=Restart.PERMANENT)
            return Next.events()

    farewells, farewell = recorder()
    app = App()
    async with trio.open_nursery() as nursery:
        app_address = hybrid.spawn(nursery, app)
        await trio.testing.wait_all_tasks_blocked()
        child = app.child
        on_given_up(child, farewell)
        child.send(Finish("first run"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(starts) == 2  # restarted behind the same address
        alive_between_runs = child.is_alive
        assert farewells == []
        app_address.interrupt()
        await app_address.join()
    assert alive_between_runs
    assert not child.is_alive
    assert farewells == [(StopReason.INTERRUPTED, None, None)]


async def test_on_given_up_waits_while_a_runner_keeps_the_address_and_is_called_at_discard() -> None:
    """A run with keep_address=True ends without a farewell; reusing the address calls none either; discard calls it."""
    farewells, farewell = recorder()
    first = hybrid.AgentRunner(Child(), keep_address=True)
    address = first.address
    on_given_up(address, farewell)
    address.send(Finish("one"))
    assert (await first.run()).done
    assert farewells == []
    second = hybrid.AgentRunner(Child(), address=address, keep_address=True)
    address.send(Finish("two"))
    assert (await second.run()).done
    assert farewells == []
    second.discard()
    assert farewells == [(StopReason.DONE, "two", None)]
    second.discard()  # given up already: no second call
    assert len(farewells) == 1


async def test_on_given_up_is_called_when_a_runner_is_discarded_without_running() -> None:
    """An agent discarded before it runs gives its address up: the farewell says it was stopped."""
    farewells, farewell = recorder()
    runner = hybrid.AgentRunner(Child())
    on_given_up(runner.address, farewell)
    runner.discard()
    assert farewells == [(StopReason.STOPPED, None, None)]


async def test_on_given_up_is_called_when_a_runner_keeping_its_address_is_discarded_without_running() -> None:
    """`AgentRunner(keep_address=True).discard()` before the run gives the address up (as its docstring says)."""
    farewells, farewell = recorder()
    runner = hybrid.AgentRunner(Child(), keep_address=True)
    on_given_up(runner.address, farewell)
    runner.discard()
    assert not runner.address.is_alive
    assert farewells == [(StopReason.STOPPED, None, None)]


async def test_a_cancelled_on_given_up_is_never_called() -> None:
    """The function `on_given_up` returns cancels the farewell (and does nothing once it was called)."""
    kept, keep = recorder()
    dropped, drop = recorder()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Child())
        cancel_kept = on_given_up(address, keep)
        cancel = on_given_up(address, drop)
        cancel()
        cancel()
        address.send(Finish("out"))
        await address.join()
    assert dropped == []
    assert kept == [(StopReason.DONE, "out", None)]
    cancel_kept()  # called already: nothing to cancel
    assert len(kept) == 1


async def test_on_given_up_of_an_ended_address_is_called_at_once() -> None:
    """An address already given up calls the farewell at once; its cancel function does nothing."""
    farewells, farewell = recorder()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Child())
        address.send(Finish("out"))
        await address.join()
    cancel = on_given_up(address, farewell)
    assert farewells == [(StopReason.DONE, "out", None)]
    cancel()
    assert len(farewells) == 1


async def test_on_given_up_refuses_a_foreign_address() -> None:
    """`on_given_up` of a foreign address raises `ValueError`: its end is the link's to report."""
    link = Loopback()
    address, _ = remote(link)
    _, farewell = recorder()
    with pytest.raises(ValueError, match="another process"):
        on_given_up(address, farewell)


# -- random interleavings --------------------------------------------------------------------


OPS = [
    *["request"] * 4,
    *["withdraw"] * 2,
    *["answer"] * 2,
    "fail",
    "late",
    "send",
    *["settle"] * 2,
    "finish",
]
"""The steps of a random interleaving, weighted so that most calls are answered or withdrawn before the end."""


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(st.sampled_from(OPS), max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_interleavings_keep_every_call_completed_or_withdrawn_once(ops: list[str], seed: int) -> None:
    """Random send, request, withdraw, answer, finish: each call ends once; nothing goes out after finish."""
    pick = random.Random(seed)

    async def main() -> None:
        link = Loopback()
        address, run = remote(link)
        scopes: list[trio.CancelScope] = []
        results: dict[int, tuple[str, object]] = {}
        answered: dict[int, int] = {}  # id(call) -> times the link completed it before a withdraw
        sent_at_finish: tuple[int, int] | None = None

        async def caller(index: int, scope: trio.CancelScope) -> None:
            with scope:
                try:
                    results[index] = ("value", await address.request(Ask(index)))
                except (ValueError, hybrid.AgentStopped) as error:
                    results[index] = ("error", error)
                return
            results[index] = ("cancelled", None)

        def out() -> list[RequestCall[Any]]:
            """The calls the link still owes an answer."""
            withdrawn = {id(call) for call in link.withdrawn}
            return [call for call in link.calls if id(call) not in withdrawn and id(call) not in answered]

        def settle_all() -> None:
            for call in out():
                answered[id(call)] = 1
                fail(call, hybrid.AgentStopped("the node ended"))

        async with trio.open_nursery() as nursery:
            for op in ops:
                if op == "send":
                    try:
                        address.send(Note())
                    except hybrid.AgentStopped:
                        assert sent_at_finish is not None
                elif op == "request":
                    scope = trio.CancelScope()
                    nursery.start_soon(caller, len(scopes), scope)
                    scopes.append(scope)
                elif op == "withdraw" and scopes:
                    pick.choice(scopes).cancel()
                elif op in ("answer", "fail") and out():
                    call = pick.choice(out())
                    answered[id(call)] = 1
                    if op == "answer":
                        answer(call, -1)
                    else:
                        fail(call, ValueError("refused"))
                elif op == "late" and link.withdrawn:
                    answer(pick.choice(link.withdrawn), -2)  # to a withdrawn call: dropped
                elif op == "settle":
                    await trio.testing.wait_all_tasks_blocked()
                elif op == "finish" and sent_at_finish is None:
                    await trio.testing.wait_all_tasks_blocked()
                    run.finish(StopReason.INTERRUPTED)
                    settle_all()  # as a link does when the node ends: every call still out fails
                    sent_at_finish = (len(link.delivered), len(link.calls))
                await trio.lowlevel.checkpoint()
            await trio.testing.wait_all_tasks_blocked()
            settle_all()
        if sent_at_finish is not None:  # nothing went out after finish
            assert (len(link.delivered), len(link.calls)) == sent_at_finish
        withdrawn = [id(call) for call in link.withdrawn]
        assert len(set(withdrawn)) == len(withdrawn)  # withdrawn at most once
        assert len(results) == len(scopes)  # every caller ended, once
        seen: dict[int, RequestCall[Any]] = {}
        for call in link.calls:
            request = request_of(call)
            assert isinstance(request, Ask)
            seen[request.n] = call
            assert (id(call) in answered) != (id(call) in withdrawn)  # answered or withdrawn, exactly one
        for index, (kind, result) in results.items():
            sent = seen.get(index)
            if sent is None:  # never sent: its caller was cancelled first, or the run had ended
                assert kind == "cancelled" or isinstance(result, hybrid.AgentStopped)
            elif id(sent) in withdrawn:  # its caller gave up: the late answers were dropped
                assert kind == "cancelled"
            else:
                assert kind in ("value", "error")
                assert result == -1 or isinstance(result, ValueError | hybrid.AgentStopped)
        assert link.threads <= {threading.get_ident()}

    trio.run(main)
