"""The mistakes a newcomer makes get a clear error or warning, where the mistake is made."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next
from tests.messages import Echo, Ping


class Server(Agent):
    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        return request.n


async def test_a_request_never_awaited_nor_forwarded_warns_as_a_coroutine_never_awaited() -> None:
    """`address.request(...)` without await sends nothing, and says so when the call is collected."""
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Server())
        call = address.request(Echo(7))  # the mistake: no await
        with pytest.warns(RuntimeWarning, match=r"request Echo\(n=7\) to Server-\d+ was never awaited nor forwarded"):
            del call  # collected at once, as a coroutine never awaited is
        assert address.statistics().messages_handled == 0
        address.interrupt()


async def test_an_awaited_or_refused_request_does_not_warn() -> None:
    """Only a request that was never used warns: awaited, forwarded or refused ones do not."""
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Server())
        assert await address.request(Echo(1)) == 1
        address.interrupt()
        await address.join()
        with pytest.raises(hybrid.AgentStopped):
            await address.request(Echo(2))
    gc.collect()  # filterwarnings = error: a warning here would fail the test


async def test_do_async_of_a_plain_function_names_the_state_and_the_fix() -> None:
    """A sync function given to Next.do_async fails the agent with InvalidTransition naming do_sync."""

    class Mixed(Agent[int]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.count)  # type: ignore[arg-type]

        def count(self) -> Next[Self]:
            return Next.done(1)

    with pytest.raises(hybrid.InvalidTransition, match=r"Mixed.count.*not an 'async def'.*Next.do_sync"):
        await Mixed().run()


async def test_a_type_error_inside_an_async_state_is_not_mistaken_for_a_plain_function() -> None:
    """A TypeError raised by the state's own code reaches the caller unchanged."""

    class Buggy(Agent[int]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.work).retry(hybrid.RetryPolicy(attempts=1))

        async def work(self) -> Next[Self]:
            raise TypeError("a bug of the state's own")

    with pytest.raises(TypeError, match="a bug of the state's own"):
        await Buggy().run()


def test_do_sync_of_an_async_function_is_refused_when_the_transition_is_built() -> None:
    """Next.do_sync(async_fn) raises at once, naming do_async."""

    async def fetch() -> Next[Any]:
        return Next.done()

    with pytest.raises(hybrid.InvalidTransition, match=r"do_sync\(.*fetch\).*'async def'.*Next.do_async"):
        Next.do_sync(fetch)  # type: ignore[arg-type]


async def test_spawning_from_a_plain_agent_says_to_subclass_supervisor() -> None:
    """self.ctx.spawn in a plain agent is an AttributeError that names hybrid.Supervisor."""

    class Parent(Agent):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(Server())  # type: ignore[attr-defined]
            return Next.events()

    with pytest.raises(AttributeError, match=r"subclass hybrid.Supervisor"):
        await Parent().run()


async def test_spawn_without_a_nursery_says_a_nursery_is_needed() -> None:
    """hybrid.spawn(None, agent) names the missing nursery."""
    with pytest.raises(TypeError, match="needs a trio nursery"):
        hybrid.spawn(None, Server())  # type: ignore[arg-type]


async def test_a_request_to_itself_from_its_own_handler_is_refused_instead_of_deadlocking() -> None:
    """As Erlang's calling_self: awaiting one's own request raises LifecycleError."""

    class Selfish(Agent):
        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            if request.n == 0:
                return await self.ctx.address.request(Echo(1))
            return request.n

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Selfish())
        with pytest.raises(hybrid.LifecycleError, match="awaited a request to itself"):
            await address.request(Echo(0))
        assert await address.request(Echo(5)) == 5  # it keeps serving
        address.interrupt()


async def test_joining_itself_is_refused_instead_of_deadlocking() -> None:
    """An agent awaiting its own join() gets LifecycleError."""

    class Joiner(Agent):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            await self.ctx.address.join()

    caught: list[BaseException] = []

    class Recording(Joiner):
        async def on_error(self, error: Exception) -> None:
            caught.append(error)

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Recording())
        address.send(Ping())
        await trio.testing.wait_all_tasks_blocked()
        assert [type(error) for error in caught] == [hybrid.LifecycleError]
        assert "its own join()" in str(caught[0])
        address.interrupt()


async def test_send_wait_to_its_own_full_mailbox_is_refused_instead_of_deadlocking() -> None:
    """Only the agent's own loop makes room: waiting for it from a handler would never end."""
    caught: list[BaseException] = []

    class Bounded(Agent):
        mailbox_capacity = 1

        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            if event.n == 0:
                self.ctx.address.send(Ping(1))  # fills the mailbox
                await self.ctx.address.send_wait(Ping(2))

        async def on_error(self, error: Exception) -> None:
            caught.append(error)

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Bounded())
        address.send(Ping(0))
        await trio.testing.wait_all_tasks_blocked()
        assert [type(error) for error in caught] == [hybrid.LifecycleError]
        assert "own full mailbox" in str(caught[0])
        address.interrupt()


class Prepared(Agent):
    def __init__(self) -> None:
        self.ready = False
        self.stopped_with: hybrid.StopReason | None = None

    def begin(self) -> Next[Self]:
        self.ready = True
        return Next.events()

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        return request.n

    async def on_stop(self, reason: hybrid.StopReason) -> None:
        self.stopped_with = reason


async def test_start_returns_once_begin_has_run() -> None:
    """hybrid.start is nursery.start for agents: begin() has run when it returns."""
    async with trio.open_nursery() as nursery:
        agent = Prepared()
        address = await hybrid.start(nursery, agent, name="prepared")
        assert agent.ready
        assert address.name == "prepared"
        assert await address.request(Echo(3)) == 3
        address.interrupt()


async def test_start_raises_the_error_of_a_begin_that_fails() -> None:
    """As nursery.start: a failure before the agent started is raised by start itself."""

    class Broken(Agent):
        def begin(self) -> Next[Self]:
            raise KeyError("no config")

    async with trio.open_nursery() as nursery:
        with pytest.raises(KeyError, match="no config"):
            await hybrid.start(nursery, Broken())
    with pytest.raises(TypeError, match="needs a trio nursery"):
        await hybrid.start(None, Broken())  # type: ignore[arg-type]


async def test_open_agent_interrupts_and_waits_on_exit_so_a_forgotten_interrupt_cannot_hang() -> None:
    """Leaving the block interrupts the agent and waits for its end."""
    agent = Prepared()
    async with hybrid.open_agent(agent) as address:
        assert agent.ready
        assert await address.request(Echo(1)) == 1
    assert not address.is_alive
    assert agent.stopped_with == hybrid.StopReason.INTERRUPTED


async def test_an_error_leaving_open_agent_cancels_the_agent() -> None:
    """An exception in the block cancels the agent, as a nursery cancels its tasks."""
    agent = Prepared()
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="boom")):
        async with hybrid.open_agent(agent):
            raise RuntimeError("boom")
    assert agent.stopped_with == hybrid.StopReason.CANCELLED
