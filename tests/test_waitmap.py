"""hybrid.WaitMap: keyed wake-ups; every waiter of a key, FIFO; fail; cancellation leaves no trace."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from typing_extensions import assert_type

import hybrid
from hybrid import WaitMap


class Scheduled(trio.abc.Instrument):
    """Records the names of the tasks trio is told to resume, in that order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_wake_resumes_every_waiter_of_the_key_with_the_value_in_fifo_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """All waiters of a key get the value, rescheduled in the order they parked; other keys are untouched."""
    waits: WaitMap[str, int] = WaitMap()
    woke: list[tuple[str, int]] = []

    async def waiter(name: str, key: str, delay: float) -> None:
        await trio.sleep(delay)
        woke.append((name, await waits.wait(key)))

    async with trio.open_nursery() as nursery:
        for name, delay in [("third", 3), ("first", 1), ("second", 2)]:
            nursery.start_soon(waiter, name, "a", delay, name=name)
        nursery.start_soon(waiter, "other", "b", 0, name="other")
        await trio.sleep(5)
        assert (waits.waiting("a"), waits.waiting("b"), len(waits)) == (3, 1, 2)
        scheduled = Scheduled()
        trio.lowlevel.add_instrument(scheduled)
        try:
            assert waits.wake("a", 42) == 3
        finally:
            trio.lowlevel.remove_instrument(scheduled)
        assert scheduled.names == ["first", "second", "third"]
        await trio.sleep(1)
        # Trio runs a batch of ready tasks in an order of its own: compare as a set.
        assert sorted(woke) == [("first", 42), ("second", 42), ("third", 42)]
        assert "a" not in waits
        assert "b" in waits
        assert waits.wake("b", 7) == 1
    assert woke[-1] == ("other", 7)
    assert len(waits) == 0


async def test_a_wake_with_no_waiter_returns_zero_and_is_not_remembered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """wake before wait stores nothing: a later wait still parks."""
    waits: WaitMap[str, str] = WaitMap()
    assert waits.wake("k", "lost") == 0
    assert waits.fail("k", RuntimeError("lost")) == 0
    assert len(waits) == 0
    with trio.move_on_after(10) as scope:
        await waits.wait("k")
    assert scope.cancelled_caught
    assert len(waits) == 0


async def test_wake_from_another_task_in_the_middle_of_a_wait(autojump_clock: trio.testing.MockClock) -> None:
    """The waiter resumes when another task wakes the key, at that moment of trio's clock."""
    waits: WaitMap[int, str] = WaitMap()

    async def reply_later() -> None:
        await trio.sleep(2.5)
        assert waits.wake(17, "pong") == 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reply_later)
        reply = await waits.wait(17)
        assert_type(reply, str)
        assert reply == "pong"
        assert trio.current_time() == 2.5


async def test_fail_raises_the_error_in_every_waiter(autojump_clock: trio.testing.MockClock) -> None:
    """fail(key, error) resumes each waiter with the error raised; it returns how many."""
    waits: WaitMap[str, int] = WaitMap()
    error = ConnectionError("lost")
    caught: list[BaseException] = []

    async def waiter() -> None:
        try:
            await waits.wait("r")
        except ConnectionError as raised:
            caught.append(raised)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert waits.fail("r", error) == 2
    assert caught == [error, error]
    assert len(waits) == 0


def test_fail_takes_only_an_exception() -> None:
    """A BaseException that is not an Exception (Cancelled, KeyboardInterrupt) cannot be sent to waiters."""
    waits: WaitMap[str, int] = WaitMap()
    bad: Any = KeyboardInterrupt()
    with pytest.raises(TypeError, match="fail takes an Exception"):
        waits.fail("k", bad)


async def test_a_cancelled_waiter_leaves_and_the_key_goes_with_its_last_waiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No leak: cancelled waiters are removed at once, the others of the key stay and still wake."""
    waits: WaitMap[str, int] = WaitMap()
    got: list[int] = []

    async def waiter(timeout: float) -> None:
        with trio.move_on_after(timeout):
            got.append(await waits.wait("k"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, 1)
        nursery.start_soon(waiter, 2)
        nursery.start_soon(waiter, 100)
        await trio.sleep(1.5)
        assert waits.waiting("k") == 2
        await trio.sleep(1)
        assert waits.waiting("k") == 1
        assert waits.wake("k", 5) == 1
    assert got == [5]
    assert len(waits) == 0

    # Every waiter cancelled: the key is gone.
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter, 1)
        await trio.sleep(0.5)
        assert len(waits) == 1
    assert len(waits) == 0
    assert "k" not in waits
    assert waits.waiting("k") == 0


async def test_a_task_already_cancelled_does_not_park() -> None:
    """wait is a checkpoint: in a cancelled scope it raises Cancelled at once and leaves nothing behind."""
    waits: WaitMap[str, int] = WaitMap()
    with trio.CancelScope() as scope:
        scope.cancel()
        await waits.wait("k")
    assert scope.cancelled_caught
    assert len(waits) == 0


async def test_a_woken_waiter_cancelled_before_it_runs_still_gets_the_value(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once woken, the value is delivered: cancelling the scope afterwards does not lose it."""
    waits: WaitMap[str, int] = WaitMap()
    got: list[int] = []

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def waiter() -> None:
            with scope:
                got.append(await waits.wait("k"))

        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert waits.wake("k", 3) == 1
        scope.cancel()
    assert got == [3]


async def test_a_key_can_be_waited_on_again_after_a_wake(autojump_clock: trio.testing.MockClock) -> None:
    """A woken key is empty: new waiters form a new group, woken by the next wake only."""
    waits: WaitMap[str, int] = WaitMap()
    got: list[int] = []

    async def waiter() -> None:
        got.append(await waits.wait("k"))
        got.append(await waits.wait("k"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert waits.wake("k", 1) == 1
        await trio.sleep(1)
        assert waits.waiting("k") == 1
        assert waits.wake("k", 2) == 1
    assert got == [1, 2]


async def test_keys_must_be_hashable() -> None:
    """An unhashable key is a TypeError at wait, and nothing is left in the map."""
    waits: WaitMap[Any, int] = WaitMap()
    with pytest.raises(TypeError, match="unhashable"):
        await waits.wait([1])
    assert len(waits) == 0


async def test_repr_counts_tasks_and_keys(autojump_clock: trio.testing.MockClock) -> None:
    """repr says how many tasks wait on how many keys."""
    waits: WaitMap[int, None] = WaitMap()
    async with trio.open_nursery() as nursery:
        for key in (1, 1, 2):
            nursery.start_soon(waits.wait, key)
        await trio.sleep(1)
        assert repr(waits) == "<hybrid.WaitMap: 3 task(s) waiting on 2 key(s)>"
        waits.wake(1, None)
        waits.wake(2, None)
    assert repr(waits) == "<hybrid.WaitMap: 0 task(s) waiting on 0 key(s)>"


def test_waitmap_is_exported_and_generic() -> None:
    """hybrid.WaitMap[K, V] is subscriptable at run time, as the docs write it."""
    assert hybrid.WaitMap[str, int] is not None
    assert hybrid.WaitMap is WaitMap
