"""hybrid.quorum: the first `need` results in completion order, the rest cancelled, QuorumError as soon as lost."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Coroutine
from typing import Any, cast

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import assert_type

import hybrid
from hybrid import Agent


async def after(seconds: float, value: str, ended: list[str] | None = None) -> str:
    """Return `value` after `seconds`; record `value` in `ended` however it ends."""
    try:
        await trio.sleep(seconds)
        return value
    finally:
        if ended is not None:
            ended.append(value)


async def fail_after(seconds: float, error: Exception) -> str:
    await trio.sleep(seconds)
    raise error


async def test_results_come_in_completion_order_as_soon_as_enough_arrived(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The answer is the first `need` results by completion time, returned when the last of them arrives."""
    results = await hybrid.quorum(3, [after(3, "c"), after(1, "a"), after(5, "e"), after(2, "b"), after(4, "d")])
    assert results == ["a", "b", "c"]
    assert trio.current_time() == 3


async def test_the_slow_members_are_cancelled_and_unwound_before_quorum_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Members still running when the quorum is met see Cancelled, and their finally blocks run before the return."""
    ended: list[str] = []
    finished: list[str] = []

    async def slow(name: str) -> str:
        try:
            await trio.sleep(100)
            finished.append(name)
            return name
        finally:
            ended.append(name)

    results = await hybrid.quorum(1, [after(1, "fast"), slow("x"), slow("y")])
    assert results == ["fast"]
    assert sorted(ended) == ["x", "y"]
    assert finished == []
    assert trio.current_time() == 1


async def test_member_errors_are_tolerated_while_the_quorum_is_reachable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failures up to len - need are dropped; the results of the others are returned."""
    members = [fail_after(1, ValueError("one")), after(2, "b"), after(3, "c"), after(10, "slow")]
    assert await hybrid.quorum(2, members) == ["b", "c"]
    assert trio.current_time() == 3


async def test_quorum_error_is_raised_as_soon_as_need_is_unreachable(autojump_clock: trio.testing.MockClock) -> None:
    """Once failures exceed len - need, QuorumError comes at once (not when the slow members would end), bare."""
    first, second = ValueError("first"), OSError("second")
    ended: list[str] = []
    members = [
        after(0.5, "early"),
        fail_after(1, first),
        fail_after(2, second),
        after(10, "slow", ended),
        after(20, "slower", ended),
    ]
    with pytest.raises(hybrid.QuorumError) as caught:
        await hybrid.quorum(4, members)
    assert type(caught.value) is hybrid.QuorumError  # not an ExceptionGroup
    assert trio.current_time() == 2
    error = caught.value
    assert error.need == 4
    assert error.results == ["early"]
    assert error.errors == [first, second]
    assert sorted(ended) == ["slow", "slower"]
    assert "4" in str(error)
    cause: BaseException | None = error.__cause__
    assert isinstance(cause, ExceptionGroup)
    assert list(cast("ExceptionGroup[Exception]", cause).exceptions) == [first, second]


async def test_quorum_error_carries_every_error_including_those_raised_while_unwinding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A member that fails while being cancelled adds its error too: `errors` holds every member Exception."""
    cleanup = RuntimeError("cleanup failed")

    async def fails_on_cancel() -> str:
        try:
            await trio.sleep(100)
        finally:
            raise cleanup

    first, second = ValueError("first"), ValueError("second")
    with pytest.raises(hybrid.QuorumError) as caught:
        await hybrid.quorum(2, [fail_after(1, first), fail_after(2, second), fails_on_cancel()])
    assert caught.value.errors == [first, second, cleanup]
    assert caught.value.results == []


async def test_errors_after_the_quorum_is_met_are_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """A member that fails while being cancelled after the quorum was met changes nothing: the results stand."""

    async def fails_on_cancel() -> str:
        try:
            await trio.sleep(100)
        finally:
            raise RuntimeError("cleanup failed")

    assert await hybrid.quorum(1, [after(1, "a"), fails_on_cancel()]) == ["a"]


async def test_need_equal_to_the_number_of_members_needs_every_one(autojump_clock: trio.testing.MockClock) -> None:
    """With need == len, every result is returned in completion order; a single failure loses at once."""
    assert await hybrid.quorum(3, [after(2, "b"), after(3, "c"), after(1, "a")]) == ["a", "b", "c"]
    start = trio.current_time()
    with pytest.raises(hybrid.QuorumError) as caught:
        await hybrid.quorum(3, [after(2, "b"), fail_after(1, KeyError("k")), after(9, "c")])
    assert trio.current_time() - start == 1
    assert len(caught.value.errors) == 1


async def test_results_that_arrive_in_the_same_turn_as_the_last_needed_one_are_not_returned() -> None:
    """Members that need no checkpoint all finish in one turn; exactly `need` results come back.

    Which ones is trio's scheduling order (which it varies on purpose).
    """

    async def now(value: int) -> int:
        return value

    results = await hybrid.quorum(2, [now(1), now(2), now(3)])
    assert len(results) == 2
    assert set(results) < {1, 2, 3}


@pytest.mark.parametrize(
    ("need", "error", "match"),
    [
        (0, ValueError, r"need must be an int from 1 to 3 \(the number of awaitables\), got 0"),
        (-1, ValueError, "from 1 to 3 .*, got -1"),
        (4, ValueError, "from 1 to 3 .*, got 4"),
        (True, TypeError, "need must be an int"),
        (1.0, TypeError, "need must be an int"),
        ("2", TypeError, "need must be an int"),
    ],
)
async def test_bad_need_is_refused_before_anything_runs_and_coroutines_are_closed(
    need: Any, error: type[Exception], match: str
) -> None:
    """A bad `need` raises at the call; the coroutines given are closed (no never-awaited warning), none ran."""
    ran: list[str] = []

    async def member(name: str) -> str:
        ran.append(name)
        return name

    members = [member("a"), member("b"), member("c")]
    with pytest.raises(error, match=match):
        await hybrid.quorum(need, members)
    assert ran == []
    assert all(inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED for coro in members)


async def test_no_awaitables_is_a_value_error() -> None:
    """An empty iterable cannot reach any quorum: ValueError."""
    empty: list[Awaitable[int]] = []
    with pytest.raises(ValueError, match="at least one awaitable"):
        await hybrid.quorum(1, empty)


async def test_the_callers_cancellation_cancels_every_member_and_leaves_no_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A timeout around quorum cancels the members (their finally blocks run) and no task or nursery is left."""
    ended: list[str] = []
    results: list[str] | None = None
    nurseries = list(trio.lowlevel.current_task().child_nurseries)
    with trio.move_on_after(1.5) as scope:
        results = await hybrid.quorum(2, [after(1, "a", ended), after(2, "b", ended), after(3, "c", ended)])
    assert scope.cancelled_caught
    assert results is None
    assert sorted(ended) == ["a", "b", "c"]
    assert trio.current_time() == 1.5
    assert trio.lowlevel.current_task().child_nurseries == nurseries


async def test_a_keyboard_interrupt_from_a_member_propagates_bare_and_cancels_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A BaseException that is not an Exception is not a member failure: it propagates, outside any group."""
    ended: list[str] = []

    async def interrupted() -> str:
        await trio.sleep(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await hybrid.quorum(1, [interrupted(), after(5, "a", ended), after(6, "b", ended)])
    assert sorted(ended) == ["a", "b"]
    assert trio.current_time() == 1


async def test_quorum_takes_any_awaitable_not_only_coroutines(autojump_clock: trio.testing.MockClock) -> None:
    """An object with __await__ is a member like a coroutine."""

    @attrs.frozen
    class Delayed:
        seconds: float
        value: int

        def __await__(self) -> Any:
            return self.run().__await__()

        async def run(self) -> int:
            await trio.sleep(self.seconds)
            return self.value

    assert await hybrid.quorum(2, [Delayed(3, 3), Delayed(1, 1), Delayed(2, 2)]) == [1, 2]


@attrs.frozen
class Vote(hybrid.Request[str]):
    term: int


class Voter(Agent):
    """Answers a Vote after `delay` seconds, or raises `error` then."""

    def __init__(self, name: str, delay: float, error: Exception | None = None) -> None:
        self.name = name
        self.delay = delay
        self.error = error
        self.answered: list[int] = []

    @hybrid.on_request
    async def vote(self, request: Vote) -> str:
        await trio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        self.answered.append(request.term)
        return self.name


async def test_quorum_of_requests_to_real_agents(autojump_clock: trio.testing.MockClock) -> None:
    """Requests to agents are members: fast voters win, failing ones are tolerated, a slow one's wait is cancelled."""
    voters = [
        Voter("refuses", 0.5, PermissionError("no")),
        Voter("slow", 100),
        Voter("fast", 1),
        Voter("crashes", 1.5, RuntimeError("disk")),
        Voter("steady", 2),
    ]
    async with trio.open_nursery() as nursery:
        nodes = [hybrid.spawn(nursery, voter) for voter in voters]
        start = trio.current_time()
        winners = await hybrid.quorum(2, [node.request(Vote(1)) for node in nodes])
        assert_type(winners, list[str])
        assert winners == ["fast", "steady"]
        assert trio.current_time() - start == 2

        # Two refusals out of five: four votes can no longer come.
        start = trio.current_time()
        with pytest.raises(hybrid.QuorumError) as caught:
            await hybrid.quorum(4, [node.request(Vote(2)) for node in nodes])
        assert trio.current_time() - start == 1.5
        assert [type(error) for error in caught.value.errors] == [PermissionError, RuntimeError]
        assert caught.value.results == ["fast"]
        for node in nodes:
            node.interrupt()
    assert voters[2].answered == [1, 2]


def test_quorum_is_typed_by_its_members() -> None:
    """The result type is the members' result type (a static check: mypy and pyright run on tests)."""

    async def members() -> list[int]:
        coros: list[Coroutine[Any, Any, int]] = []
        return await hybrid.quorum(1, coros)

    assert inspect.iscoroutinefunction(members)


async def test_a_member_that_is_not_awaitable_is_a_type_error_at_the_call() -> None:
    """An async function passed uncalled is refused before anything runs, not counted as a member failure."""
    coro = after(1, "a")
    not_awaitable: Any = after
    with pytest.raises(TypeError, match="quorum takes awaitables"):
        await hybrid.quorum(1, [coro, not_awaitable])
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


@attrs.frozen
class Hold:
    """Keeps a Voter in its handler until `gate` is set, so requests queue behind it."""

    gate: trio.Event


class Holdable(Voter):
    @hybrid.on_event
    async def hold(self, event: Hold) -> None:
        await event.gate.wait()


async def test_requests_still_queued_once_the_quorum_is_decided_are_never_handled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    voters = [Holdable(f"v{i}", 0) for i in range(5)]
    async with trio.open_nursery() as nursery:
        nodes = [hybrid.spawn(nursery, voter) for voter in voters]
        for node in nodes[2:]:
            node.send(Hold(gate))  # three busy voters: their votes would queue
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(await hybrid.quorum(2, [node.request(Vote(7)) for node in nodes])) == ["v0", "v1"]
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [voter.answered for voter in voters] == [[7], [7], [], [], []]
        assert [node.statistics().messages_dropped for node in nodes] == [0, 0, 1, 1, 1]
        for node in nodes:
            node.interrupt()


async def test_a_caller_cancelled_while_its_requests_wait_withdraws_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    voters = [Holdable(f"v{i}", 0) for i in range(3)]
    async with trio.open_nursery() as nursery:
        nodes = [hybrid.spawn(nursery, voter) for voter in voters]
        for node in nodes:
            node.send(Hold(gate))
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(1) as scope:
            await hybrid.quorum(2, [node.request(Vote(1)) for node in nodes])
        assert scope.cancelled_caught
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [voter.answered for voter in voters] == [[], [], []]
        for node in nodes:
            node.interrupt()


async def test_an_agent_that_has_ended_counts_as_a_failed_member() -> None:
    voters = [Voter(f"v{i}", 0) for i in range(3)]
    async with trio.open_nursery() as nursery:
        nodes = [hybrid.spawn(nursery, voter) for voter in voters]
        nodes[0].interrupt()
        await nodes[0].join()
        assert sorted(await hybrid.quorum(2, [node.request(Vote(1)) for node in nodes])) == ["v1", "v2"]
        with pytest.raises(hybrid.QuorumError) as caught:
            await hybrid.quorum(3, [node.request(Vote(2)) for node in nodes])
        assert [type(error) for error in caught.value.errors] == [hybrid.AgentStopped]
        for node in nodes[1:]:
            node.interrupt()


async def test_requests_to_a_full_bounded_mailbox_wait_for_room(autojump_clock: trio.testing.MockClock) -> None:
    """Not every request fits at once: quorum then waits for room as awaiting each request would."""
    gate = trio.Event()
    voter = Holdable("bounded", 0)
    async with trio.open_nursery() as nursery:
        node = hybrid.spawn(nursery, voter, mailbox_capacity=1)
        other = hybrid.spawn(nursery, Voter("free", 0))
        node.send(Hold(gate))
        await trio.testing.wait_all_tasks_blocked()
        node.send(Hold(gate))  # its one place taken, until the gate opens
        nursery.start_soon(_release_later, gate)
        winners = await hybrid.quorum(2, [other.request(Vote(1)), node.request(Vote(1))])
        assert winners == ["free", "bounded"]
        node.interrupt()
        node.interrupt()  # the second interrupt cuts the remaining hold short
        other.interrupt()


async def _release_later(gate: trio.Event) -> None:
    await trio.sleep(5)
    gate.set()
