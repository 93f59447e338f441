"""hybrid.CircuitBreaker: closed, open, half-open on trio's clock; probes, concurrency, cancellation."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import trio
import trio.testing
from typing_extensions import assert_type

import hybrid
from hybrid import BreakerState, CircuitBreaker, CircuitOpen

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Down(Exception):
    pass


async def ok(value: int = 1) -> int:
    return value


async def down() -> int:
    raise Down("down")


async def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Down):
            await breaker.call(down)


async def test_a_new_breaker_is_closed_and_lets_calls_through() -> None:
    """Closed: call() returns fn's result and `async with` runs its body."""
    breaker = CircuitBreaker(failures=2, reset_after=10)
    assert breaker.state is CLOSED
    assert await breaker.call(ok, 7) == 7
    async with breaker:
        pass
    stats = breaker.statistics()
    assert (stats.calls, stats.successes, stats.failures, stats.rejected, stats.in_flight) == (2, 2, 0, 0, 0)


async def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    """`failures` failures in a row open it; a success in between starts the count again."""
    breaker = CircuitBreaker(failures=3, reset_after=10)
    await fail(breaker, 2)
    assert breaker.statistics().consecutive_failures == 2
    assert await breaker.call(ok) == 1
    assert breaker.statistics().consecutive_failures == 0
    await fail(breaker, 2)
    assert breaker.state is CLOSED
    await fail(breaker)
    assert breaker.state is OPEN
    stats = breaker.statistics()
    assert (stats.consecutive_failures, stats.failures, stats.successes, stats.times_opened) == (3, 5, 1, 1)


async def test_an_open_breaker_refuses_at_once_with_the_seconds_left(autojump_clock: trio.testing.MockClock) -> None:
    """Open: call() and `async with` raise CircuitOpen without running anything; retry_after counts down."""
    breaker = CircuitBreaker(failures=1, reset_after=10, name="billing")
    await fail(breaker)
    await trio.sleep(4)
    ran: list[str] = []

    async def track() -> int:
        ran.append("call")
        return 0

    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(track)
    assert refused.value.retry_after == pytest.approx(6)
    assert "billing" in str(refused.value)
    with pytest.raises(CircuitOpen):
        async with breaker:
            ran.append("body")
    await trio.sleep(5.5)
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(track)
    assert refused.value.retry_after == pytest.approx(0.5)
    assert ran == []
    stats = breaker.statistics()
    assert (stats.state, stats.rejected, stats.calls) == (OPEN, 3, 1)


async def test_it_is_half_open_after_reset_after_and_a_probe_success_closes_it(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The state turns half-open on the clock alone (read lazily); a successful probe closes it, logged at INFO."""
    caplog.set_level(logging.INFO, logger="hybrid.breaker")
    breaker = CircuitBreaker(failures=2, reset_after=10, name="db")
    await fail(breaker, 2)
    await trio.sleep(9.999)
    assert breaker.state is OPEN
    await trio.sleep(0.001)
    assert breaker.state is HALF_OPEN
    assert await breaker.call(ok, 5) == 5
    assert breaker.state is CLOSED
    stats = breaker.statistics()
    assert (stats.consecutive_failures, stats.probes_in_flight, stats.times_opened) == (0, 0, 1)
    records = [(r.levelno, r.name, r.getMessage()) for r in caplog.records]
    assert records[0][:2] == (logging.WARNING, "hybrid.breaker")
    assert "'db' opened" in records[0][2]
    assert records[-1][:2] == (logging.INFO, "hybrid.breaker")
    assert "'db' closed" in records[-1][2]
    # Closed again, it needs `failures` new failures to open.
    await fail(breaker)
    assert breaker.state is CLOSED


async def test_a_probe_failure_opens_it_again_for_another_reset_after(autojump_clock: trio.testing.MockClock) -> None:
    """A failed probe reopens the breaker; the new open period is a full reset_after from the probe's failure."""
    breaker = CircuitBreaker(failures=1, reset_after=10)
    await fail(breaker)
    await trio.sleep(12)
    assert breaker.state is HALF_OPEN
    await fail(breaker)
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(ok)
    assert refused.value.retry_after == pytest.approx(10)
    await trio.sleep(10)
    assert breaker.state is HALF_OPEN
    assert breaker.statistics().times_opened == 2


async def test_half_open_lets_at_most_probes_calls_through_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """Beyond `probes` concurrent calls, half-open callers get CircuitOpen(retry_after=0); a freed slot is reusable."""
    breaker = CircuitBreaker(failures=1, reset_after=5, probes=2, counts=Down)
    await fail(breaker)
    await trio.sleep(5)
    inside = trio.Event()
    release = trio.Event()

    async def probe() -> None:
        async with breaker:
            inside.set()
            await release.wait()
            raise ValueError("not counted")  # neither success nor failure: only frees the slot

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(_expect_value_error, probe)
        await inside.wait()
        await trio.sleep(0.1)  # both probes are inside
        assert breaker.statistics().probes_in_flight == 2
        with pytest.raises(CircuitOpen) as refused:
            await breaker.call(ok)
        assert refused.value.retry_after == 0
        assert "half-open" in str(refused.value)
        release.set()
    stats = breaker.statistics()
    assert (stats.state, stats.probes_in_flight, stats.ignored, stats.rejected) == (HALF_OPEN, 0, 2, 1)
    assert await breaker.call(ok) == 1
    assert breaker.state is CLOSED


async def _expect_value_error(fn: Any) -> None:
    with pytest.raises(ValueError, match="not counted"):
        await fn()


async def test_with_several_probes_the_first_to_come_back_decides(autojump_clock: trio.testing.MockClock) -> None:
    """A probe success closes the breaker; a failure of another probe of that period, later, changes nothing."""
    breaker = CircuitBreaker(failures=1, reset_after=5, probes=2)
    await fail(breaker)
    await trio.sleep(5)

    async def slow_failure() -> int:
        await trio.sleep(2)
        raise Down("late")

    async def quick_success() -> int:
        await trio.sleep(1)
        return 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_expect_down, breaker, slow_failure)
        nursery.start_soon(breaker.call, quick_success)
    assert breaker.state is CLOSED
    stats = breaker.statistics()
    assert (stats.consecutive_failures, stats.failures, stats.successes, stats.times_opened) == (0, 2, 1, 1)


async def _expect_down(breaker: CircuitBreaker, fn: Any) -> None:
    with pytest.raises(Down):
        await breaker.call(fn)


async def test_exceptions_not_in_counts_are_neither_success_nor_failure() -> None:
    """With counts=OSError, a ValueError propagates, is `ignored`, and leaves the failure count as it was."""
    breaker = CircuitBreaker(failures=2, reset_after=10, counts=OSError)

    async def refused() -> int:
        raise ConnectionRefusedError

    async def bad() -> int:
        raise ValueError("bad input")

    with pytest.raises(ConnectionRefusedError):
        await breaker.call(refused)
    with pytest.raises(ValueError, match="bad input"):
        await breaker.call(bad)
    stats = breaker.statistics()
    assert (stats.consecutive_failures, stats.ignored, stats.failures) == (1, 1, 1)
    with pytest.raises(ConnectionRefusedError):
        await breaker.call(refused)
    assert breaker.state is OPEN


async def test_counts_takes_a_tuple_of_exception_classes() -> None:
    """Any class of the tuple counts; the check is isinstance (subclasses count)."""
    breaker = CircuitBreaker(failures=2, reset_after=10, counts=(TimeoutError, Down))

    async def timeout() -> int:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        await breaker.call(timeout)
    await fail(breaker)
    assert breaker.state is OPEN


async def test_the_breaker_never_swallows_an_exception() -> None:
    """`async with` re-raises the body's exception, counted or not."""
    breaker = CircuitBreaker(failures=5, reset_after=10, counts=Down)
    with pytest.raises(Down):
        async with breaker:
            raise Down
    with pytest.raises(KeyError):
        async with breaker:
            raise KeyError("x")
    assert breaker.statistics().failures == 1


async def test_cancellation_inside_a_closed_breaker_counts_as_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """A call cancelled in the middle (closed) is `ignored`: the failure count neither grows nor resets."""
    breaker = CircuitBreaker(failures=2, reset_after=10)
    await fail(breaker)
    with trio.move_on_after(1) as scope:
        async with breaker:
            await trio.sleep(5)
    assert scope.cancelled_caught
    stats = breaker.statistics()
    assert (stats.state, stats.consecutive_failures, stats.ignored, stats.in_flight) == (CLOSED, 1, 1, 0)


async def test_cancellation_of_a_probe_frees_its_slot_and_decides_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A half-open probe cancelled in the middle leaves the breaker half-open with its slot free."""
    breaker = CircuitBreaker(failures=1, reset_after=10)
    await fail(breaker)
    await trio.sleep(10)
    with trio.move_on_after(1):
        async with breaker:
            assert breaker.statistics().probes_in_flight == 1
            await trio.sleep(5)
    stats = breaker.statistics()
    assert (stats.state, stats.probes_in_flight, stats.ignored, stats.times_opened) == (HALF_OPEN, 0, 1, 1)
    assert await breaker.call(ok) == 1
    assert breaker.state is CLOSED


async def test_cancellation_of_a_call_that_entered_before_it_opened_keeps_it_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Open: the only calls inside entered while closed; one cancelled now changes nothing."""
    breaker = CircuitBreaker(failures=1, reset_after=10)
    async with trio.open_nursery() as nursery:

        async def long_call() -> None:
            with trio.move_on_after(3):
                async with breaker:
                    await trio.sleep(100)

        nursery.start_soon(long_call)
        await trio.sleep(1)
        await fail(breaker)
        assert breaker.statistics().in_flight == 1
    stats = breaker.statistics()
    assert (stats.state, stats.ignored, stats.in_flight) == (OPEN, 1, 0)
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(ok)
    assert refused.value.retry_after == pytest.approx(8)


async def test_calls_started_while_closed_that_fail_after_it_opened_count_toward_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Concurrency: late failures are counted in `failures` but neither extend the open time nor reopen it."""
    breaker = CircuitBreaker(failures=2, reset_after=10)

    async def fails_at(seconds: float) -> int:
        await trio.sleep(seconds)
        raise Down

    async def succeeds_at(seconds: float) -> int:
        await trio.sleep(seconds)
        return 1

    async with trio.open_nursery() as nursery:
        for seconds in (1, 2, 3):
            nursery.start_soon(_expect_down, breaker, lambda s=seconds: fails_at(s))
        nursery.start_soon(breaker.call, lambda: succeeds_at(4))
        await trio.sleep(0.5)
        assert breaker.statistics().in_flight == 4
    # Opened at t=2 by the second failure; the one at t=3 and the success at t=4 decided nothing.
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(ok)
    assert refused.value.retry_after == pytest.approx(8)
    stats = breaker.statistics()
    assert (stats.failures, stats.successes, stats.times_opened, stats.consecutive_failures) == (3, 1, 1, 2)


async def test_concurrent_failures_while_closed_all_count(autojump_clock: trio.testing.MockClock) -> None:
    """Several tasks inside a closed breaker at once: each failure counts as it comes back."""
    breaker = CircuitBreaker(failures=3, reset_after=10)

    async def fails_at(seconds: float) -> int:
        await trio.sleep(seconds)
        raise Down

    async with trio.open_nursery() as nursery:
        for seconds in (1, 1, 2):
            nursery.start_soon(_expect_down, breaker, lambda s=seconds: fails_at(s))
        await trio.sleep(1.5)
        assert (breaker.state, breaker.statistics().consecutive_failures) == (CLOSED, 2)
    assert breaker.state is OPEN
    assert trio.current_time() == 2


async def test_reset_forces_it_closed_and_orphans_the_calls_inside(autojump_clock: trio.testing.MockClock) -> None:
    """reset() closes at once with the count at 0; a probe still running decides nothing when it fails."""
    breaker = CircuitBreaker(failures=1, reset_after=10)
    await fail(breaker)
    breaker.reset()
    assert breaker.state is CLOSED
    assert breaker.statistics().consecutive_failures == 0
    await fail(breaker)
    await trio.sleep(10)

    async def slow_failure() -> int:
        await trio.sleep(1)
        raise Down

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_expect_down, breaker, slow_failure)
        await trio.sleep(0.5)
        assert breaker.statistics().probes_in_flight == 1
        breaker.reset()
        assert breaker.statistics().probes_in_flight == 0
    assert breaker.state is CLOSED
    assert breaker.statistics().consecutive_failures == 0
    breaker.reset()  # closed already: nothing to do


async def test_nested_uses_of_one_breaker_in_one_task_pair_up() -> None:
    """Each `async with` exit matches its own entry (a per-task stack)."""
    breaker = CircuitBreaker(failures=2, reset_after=10)

    async def nested() -> None:
        async with breaker:
            async with breaker:
                pass
            raise Down

    with pytest.raises(Down):
        await nested()
    stats = breaker.statistics()
    assert (stats.calls, stats.successes, stats.failures, stats.in_flight) == (2, 1, 1, 0)


async def test_statistics_add_up_and_repr_names_the_breaker(autojump_clock: trio.testing.MockClock) -> None:
    """calls == successes + failures + ignored + in_flight; repr shows the name and the state."""
    breaker = CircuitBreaker(failures=1, reset_after=10, name="search")
    assert repr(breaker) == "<hybrid.CircuitBreaker 'search' closed, 0/1 failures>"
    assert breaker.name == "search"
    await breaker.call(ok)
    await fail(breaker)
    assert repr(breaker) == "<hybrid.CircuitBreaker 'search' open, 1/1 failures>"
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)
    stats = breaker.statistics()
    assert stats == hybrid.BreakerStatistics(
        state=OPEN,
        consecutive_failures=1,
        calls=2,
        successes=1,
        failures=1,
        ignored=0,
        rejected=1,
        in_flight=0,
        probes_in_flight=0,
        times_opened=1,
    )
    assert CircuitBreaker(failures=1, reset_after=1).name is None


def test_repr_outside_a_trio_run_does_not_need_the_clock() -> None:
    """Outside trio, an opened breaker's repr cannot tell open from half-open, and says so."""
    breaker = CircuitBreaker(failures=1, reset_after=10)
    assert "closed" in repr(breaker)

    async def open_it() -> None:
        await fail(breaker)

    trio.run(open_it)
    assert "open or half-open" in repr(breaker)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"failures": 0}, ValueError, "failures must be an int >= 1, got 0"),
        ({"failures": True}, TypeError, "failures must be an int"),
        ({"failures": 1.5}, TypeError, "failures must be an int"),
        ({"reset_after": 0}, ValueError, "reset_after must be a finite number of seconds > 0"),
        ({"reset_after": -1}, ValueError, "reset_after"),
        ({"reset_after": math.nan}, ValueError, "reset_after"),
        ({"reset_after": math.inf}, ValueError, "reset_after"),
        ({"reset_after": "1"}, TypeError, "reset_after"),
        ({"probes": 0}, ValueError, "probes must be an int >= 1, got 0"),
        ({"counts": ()}, ValueError, "counts must name at least one"),
        ({"counts": int}, TypeError, "counts takes Exception subclasses"),
        ({"counts": KeyboardInterrupt}, TypeError, "counts takes Exception subclasses"),
        ({"counts": (OSError, "x")}, TypeError, "counts takes Exception subclasses"),
        ({"name": 3}, TypeError, "name must be None or a str"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Each argument is checked when the breaker is made, with the shared messages."""
    arguments: dict[str, Any] = {"failures": 1, "reset_after": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        CircuitBreaker(**arguments)


async def test_call_is_typed_like_trio_start_soon() -> None:
    """call(fn, *args) checks args against fn and returns fn's result type (mypy and pyright check this file)."""
    breaker = CircuitBreaker(failures=1, reset_after=1)

    async def fetch(url: str, retries: int) -> bytes:
        return url.encode() * retries

    result = await breaker.call(fetch, "a", 2)
    assert_type(result, bytes)
    assert result == b"aa"

    async def misuse() -> None:  # never run: type checkers must reject these lines
        await breaker.call(fetch, 2, 2)  # type: ignore[arg-type]
        await breaker.call(fetch, "a")  # type: ignore[arg-type]

    assert callable(misuse)


async def test_call_refuses_what_is_not_callable_before_counting_it() -> None:
    """A non-callable fn is the caller's mistake, not a failure of the service: TypeError, nothing counted."""
    breaker = CircuitBreaker(failures=1, reset_after=1)
    wrong: Any = 42
    with pytest.raises(TypeError, match="needs an async function"):
        await breaker.call(wrong)
    assert breaker.statistics().calls == 0
    assert breaker.state is CLOSED
