"""@hybrid.on_request(route=True): the request moves, with its caller, to the agent the router names."""

from __future__ import annotations

from typing import Any

import attrs
import outcome
import pytest
import trio
import trio.testing

import hybrid
from hybrid import Agent


@attrs.frozen
class Work(hybrid.Request[str]):
    target: int
    seconds: float = 0.0


@attrs.frozen
class Other(hybrid.Request[int]):
    pass


class Worker(Agent):
    @hybrid.on_request
    async def work(self, request: Work) -> str:
        if request.seconds < 0:
            raise ValueError("negative work")
        await trio.sleep(request.seconds)
        return self.ctx.address.name


class Router(Agent):
    def __init__(self, targets: list[Any]) -> None:
        self.targets = targets
        self.routed = 0

    @hybrid.on_request(route=True)
    async def work(self, request: Work) -> Any:
        self.routed += 1
        return self.targets[request.target]

    @hybrid.on_request(route=True)
    async def other(self, request: Other) -> Any:
        return self.targets[0]


async def test_the_chosen_agent_answers_the_caller_and_the_router_is_free_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        workers = [hybrid.spawn(nursery, Worker(), name=f"w{i}") for i in range(3)]
        router = hybrid.spawn(nursery, Router(list(workers)))
        answers: dict[int, str] = {}

        async def ask(i: int) -> None:
            answers[i] = await router.request(Work(i % 3, seconds=1))

        start = trio.current_time()
        async with trio.open_nursery() as callers:
            for i in range(3):
                callers.start_soon(ask, i)
        # Three workers in parallel: one second, not three (the router did not wait for answers).
        assert trio.current_time() - start == 1
        assert answers == {0: "w0", 1: "w1", 2: "w2"}
        assert router.statistics().messages_handled == 3
        for address in [*workers, router]:
            address.interrupt()


async def test_the_chosen_agents_error_reaches_the_caller() -> None:
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Worker())
        router = hybrid.spawn(nursery, Router([worker]))
        with pytest.raises(ValueError, match="negative work"):
            await router.request(Work(0, seconds=-1))
        assert await router.request(Work(0)) == worker.name
        worker.interrupt()
        router.interrupt()


async def test_a_router_returning_no_address_fails_the_caller_with_a_type_error() -> None:
    async with trio.open_nursery() as nursery:
        router = hybrid.spawn(nursery, Router(["not an address"]))
        with pytest.raises(TypeError, match=r"route=True handler must return the hybrid.Address that answers"):
            await router.request(Work(0))
        router.interrupt()


async def test_a_router_routing_to_itself_fails_the_caller() -> None:
    targets: list[Any] = []
    async with trio.open_nursery() as nursery:
        router = hybrid.spawn(nursery, Router(targets))
        targets.append(router)
        with pytest.raises(hybrid.LifecycleError, match="routed .* to itself"):
            await router.request(Work(0))
        router.interrupt()


async def test_a_request_the_chosen_agent_does_not_handle_fails_the_caller_with_unhandled_message() -> None:
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Worker())
        router = hybrid.spawn(nursery, Router([worker]))
        with pytest.raises(hybrid.UnhandledMessage, match="Worker has no @hybrid.on_request handler for Other"):
            await router.request(Other())
        worker.interrupt()
        router.interrupt()


async def test_a_request_routed_to_an_ended_agent_fails_with_agent_stopped() -> None:
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Worker())
        worker.interrupt()
        await worker.join()
        router = hybrid.spawn(nursery, Router([worker]))
        with pytest.raises(hybrid.AgentStopped, match="has ended"):
            await router.request(Work(0))
        router.interrupt()


async def test_a_full_bounded_target_holds_the_router_until_it_has_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Worker(), mailbox_capacity=1)
        router = hybrid.spawn(nursery, Router([worker]))
        done: list[float] = []

        async def ask() -> None:
            await router.request(Work(0, seconds=1))
            done.append(trio.current_time())

        async with trio.open_nursery() as callers:
            for _ in range(4):
                callers.start_soon(ask)
            await trio.sleep(0.5)
            # One handled by the worker, one queued there; the router waits with the third.
            assert worker.statistics().mailbox_depth == 1
            assert router.statistics().mailbox_depth == 1
        assert done == [1, 2, 3, 4]
        worker.interrupt()
        router.interrupt()


async def test_a_caller_that_gives_up_while_the_router_waits_for_room_sends_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Worker(), mailbox_capacity=1)
        router = hybrid.spawn(nursery, Router([worker]))

        async def occupy() -> None:
            await worker.request(Work(0, seconds=10))

        nursery.start_soon(occupy)
        nursery.start_soon(occupy)
        await trio.sleep(1)  # the worker busy, its one place taken
        with trio.move_on_after(1):
            await router.request(Work(0, seconds=5))
        await trio.sleep(30)
        # The abandoned request never reached the worker: it handled the two others only.
        assert worker.statistics().messages_handled == 2
        worker.interrupt()
        router.interrupt()


async def test_a_forwarded_request_can_be_routed_and_the_answer_arrives_at_on_response() -> None:
    got: list[outcome.Outcome[str]] = []

    class Client(Agent):
        def __init__(self, router: hybrid.Address[Router]) -> None:
            self.router = router

        def begin(self) -> hybrid.Next[Client]:
            self.router.request(Work(0)).forward_to(self.ctx)
            return hybrid.Next.events()

        @hybrid.on_response
        async def answered(self, request: Work, response: outcome.Outcome[str]) -> None:
            got.append(response)
            self.ctx.shutdown()

    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, Worker(), name="answerer")
        router = hybrid.spawn(nursery, Router([worker]))
        await hybrid.spawn(nursery, Client(router)).join()
        worker.interrupt()
        router.interrupt()
    assert got == [outcome.Value("answerer")]


def test_a_handler_cannot_be_both_inline_and_route() -> None:
    with pytest.raises(hybrid.HandlerDefinitionError, match="cannot be both inline and route"):

        class Both(Agent):  # pyright: ignore[reportUnusedClass]
            @hybrid.on_request(inline=True, route=True)
            async def work(self, request: Work) -> Any:
                return None


def test_route_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"on_request\(route=...\) must be True or False, got 1"):
        hybrid.on_request(route=1)  # type: ignore[call-overload]


class Picky(Agent):
    @staticmethod
    def message_priority(message: object) -> int:
        if isinstance(message, Work) and message.target < 0:
            raise ValueError("no priority for negative targets")
        return 0

    @hybrid.on_request
    async def work(self, request: Work) -> str:
        return "ok"


async def test_a_routed_request_the_targets_priority_function_refuses_fails_the_caller_not_the_router() -> None:
    async with trio.open_nursery() as nursery:
        picky = hybrid.spawn(nursery, Picky())

        class ToPicky(Agent):
            @hybrid.on_request(route=True)
            async def work(self, request: Work) -> hybrid.Address[Picky]:
                return picky

        router = hybrid.spawn(nursery, ToPicky())
        with pytest.raises(ValueError, match="no priority for negative targets"):
            await router.request(Work(-1))
        assert await router.request(Work(0)) == "ok"  # the router goes on
        picky.interrupt()
        router.interrupt()


async def test_a_request_routed_back_to_the_agent_awaiting_it_fails_instead_of_deadlocking() -> None:
    class Caller(Agent):
        def __init__(self) -> None:
            self.router: hybrid.Address[Router] | None = None

        @hybrid.on_request
        async def work(self, request: Work) -> str:
            assert self.router is not None
            if request.seconds == 0:
                return await self.router.request(Work(0, seconds=1))  # routed back here
            return "inner"

    async with trio.open_nursery() as nursery:
        caller = Caller()
        address = hybrid.spawn(nursery, caller)
        router = hybrid.spawn(nursery, Router([address]))
        caller.router = router
        with trio.fail_after(5), pytest.raises(hybrid.LifecycleError, match="which awaits it: it would wait forever"):
            await address.request(Work(0))
        address.interrupt()
        router.interrupt()


class EndsSlowly(Worker):
    """Its on_stop awaits: its address refuses messages until its run has ended."""

    async def on_stop(self, reason: hybrid.StopReason) -> None:
        await trio.sleep(1)


async def test_a_request_routed_to_an_agent_that_is_ending_waits_for_its_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    made: list[EndsSlowly] = []

    def factory() -> EndsSlowly:
        made.append(EndsSlowly())
        return made[-1]

    class Parent(hybrid.Supervisor):
        def begin(self) -> hybrid.Next[Parent]:
            self.ctx.spawn(factory, name="w")
            return hybrid.Next.events()

    async with trio.open_nursery() as nursery:
        parent = hybrid.spawn(nursery, Parent(), name="p")
        await trio.testing.wait_all_tasks_blocked()
        worker = made[0].ctx.address
        router = hybrid.spawn(nursery, Router([worker]))
        made[0].ctx.do_next(hybrid.Next.fail(RuntimeError("crash")))
        await trio.sleep(0.5)  # in its on_stop: refusing
        with pytest.raises(hybrid.AgentStopped):
            await worker.request(Work(0))  # what a direct caller sees in that window
        assert await router.request(Work(0)) == "p/w"  # the router waited for the restart
        assert len(made) == 2
        router.interrupt()
        parent.interrupt()


async def test_a_request_routed_to_an_agent_that_ends_for_good_fails_with_agent_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        worker = hybrid.spawn(nursery, EndsSlowly())
        router = hybrid.spawn(nursery, Router([worker]))
        worker.interrupt()
        await trio.sleep(0.5)
        with pytest.raises(hybrid.AgentStopped, match="has ended"):
            await router.request(Work(0))
        router.interrupt()
