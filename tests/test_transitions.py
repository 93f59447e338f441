"""States and transitions: do_async, do_sync, perform, done, stop, fail, modifiers."""

from __future__ import annotations

import math
import random
import threading
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next
from tests.fairness import gaps, sample_progress


class ThreeStates(Agent[int]):
    def __init__(self) -> None:
        self.trio_thread = threading.get_ident()
        self.sync_thread: int | None = None

    def begin(self) -> Next[Self]:
        return Next.do_async(self.fetch, "hello world")

    async def fetch(self, text: str) -> Next[Self]:
        await trio.sleep(0)
        return Next.do_sync(self.count, text)

    def count(self, text: str) -> Next[Self]:
        self.sync_thread = threading.get_ident()
        return Next.done(len(text))


async def test_three_state_machine_returns_the_done_value_from_run() -> None:
    agent = ThreeStates()
    assert await agent.run() == 11


async def test_sync_state_runs_in_a_worker_thread_not_on_the_trio_thread() -> None:
    agent = ThreeStates()
    await agent.run()
    assert agent.sync_thread is not None
    assert agent.sync_thread != agent.trio_thread


@attrs.define
class Counters:
    polls: int = 0


class Poller(Agent[Counters]):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.poll, Counters())

    async def poll(self, counters: Counters) -> Next[Self]:
        counters.polls += 1
        if counters.polls == 200:
            return Next.done(counters)
        return Next.do_async(self.poll, counters)


async def test_a_state_reenters_itself_with_mutable_state_as_argument() -> None:
    assert (await Poller().run()).polls == 200


async def test_self_transitions_yield_to_other_tasks_at_least_every_64_steps() -> None:
    progress: list[int] = []

    class Busy(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.step, 0)

        async def step(self, i: int) -> Next[Self]:  # never awaits anything
            progress.append(i)
            return Next.done() if i == 1000 else Next.do_async(self.step, i + 1)

    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_progress, progress, 1001, seen)  # steps 0 to 1000
        await trio.lowlevel.checkpoint()
        await Busy().run()
    assert len(seen) >= 1000 // 128
    # trio runs each batch of runnable tasks in random order, so the observer
    # can see two of the agent's turns (of at most 64 steps each) in a row.
    assert max(gaps(seen)) <= 2 * 64


class Stopper(Agent[int | None]):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.go)

    async def go(self) -> Next[Self]:
        return Next.stop()


async def test_next_stop_ends_the_agent_and_run_returns_none() -> None:
    assert await Stopper().run() is None


async def test_next_fail_raises_the_error_from_run() -> None:
    class Failing(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.fail(KeyError("gone"))

    with pytest.raises(KeyError, match="gone"):
        await Failing().run()


async def test_a_state_that_raises_without_fallback_fails_the_agent() -> None:
    class Raises(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.go)

        async def go(self) -> Next[Self]:
            raise ValueError("bad state")

    with pytest.raises(ValueError, match="bad state"):
        await Raises().run()


async def test_a_sync_state_that_raises_fails_the_agent_with_that_error() -> None:
    class SyncRaises(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_sync(self.go)

        def go(self) -> Next[Self]:
            raise ZeroDivisionError("sync")

    with pytest.raises(ZeroDivisionError, match="sync"):
        await SyncRaises().run()


async def test_a_state_returning_something_else_than_next_fails_with_invalid_transition() -> None:
    class Returns42(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.go)

        async def go(self) -> Any:
            return 42

    with pytest.raises(hybrid.InvalidTransition, match="must return a Next, got 42"):
        await Returns42().run()


async def test_begin_returning_something_else_than_next_fails_with_invalid_transition() -> None:
    class BadBegin(Agent[None]):
        def begin(self) -> Any:
            return None

    with pytest.raises(hybrid.InvalidTransition, match=r"begin\(\) must return a Next"):
        await BadBegin().run()


class Fetcher(Agent[str]):
    def __init__(self, failures: int, policy: hybrid.RetryPolicy | None = None) -> None:
        self.failures = failures
        self.calls: list[float] = []
        self.policy = policy
        self.fallback_error: Exception | None = None

    def begin(self) -> Next[Self]:
        nxt = Next.do_async(self.fetch)
        if self.policy is not None:
            nxt = nxt.retry(self.policy)
        return nxt.fallback(self.cached)

    async def fetch(self) -> Next[Self]:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise ConnectionError(f"try {len(self.calls)}")
        return Next.done("fresh")

    def cached(self, error: Exception) -> Next[Self]:
        self.fallback_error = error
        return Next.done("cached")


async def test_fallback_chooses_the_next_transition_when_the_state_raises() -> None:
    agent = Fetcher(failures=1)
    assert await agent.run() == "cached"
    assert isinstance(agent.fallback_error, ConnectionError)


async def test_retry_reruns_the_state_with_exponential_backoff(autojump_clock: trio.testing.MockClock) -> None:
    agent = Fetcher(failures=3, policy=hybrid.RetryPolicy(attempts=5, initial=1, factor=2, max_delay=100))
    start = trio.current_time()
    assert await agent.run() == "fresh"
    offsets = [round(t - start, 6) for t in agent.calls]
    assert offsets == [0, 1, 3, 7]


async def test_retry_caps_delays_at_max_delay(autojump_clock: trio.testing.MockClock) -> None:
    agent = Fetcher(failures=5, policy=hybrid.RetryPolicy(attempts=6, initial=10, factor=10, max_delay=60))
    start = trio.current_time()
    assert await agent.run() == "fresh"
    offsets = [round(t - start, 6) for t in agent.calls]
    assert offsets == [0, 10, 70, 130, 190, 250]


async def test_retry_gives_the_last_error_to_the_fallback_after_all_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = Fetcher(failures=100, policy=hybrid.RetryPolicy(attempts=3, initial=1))
    assert await agent.run() == "cached"
    assert len(agent.calls) == 3
    assert str(agent.fallback_error) == "try 3"


async def test_retry_without_fallback_fails_with_the_last_error(autojump_clock: trio.testing.MockClock) -> None:
    class NoFallback(Fetcher):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.fetch).retry(hybrid.RetryPolicy(attempts=2, initial=0.5))

    agent = NoFallback(failures=100)
    with pytest.raises(ConnectionError, match="try 2"):
        await agent.run()


async def test_retry_on_limits_which_errors_are_retried(autojump_clock: trio.testing.MockClock) -> None:
    class Picky(Fetcher):
        def begin(self) -> Next[Self]:
            policy = hybrid.RetryPolicy(attempts=5, retry_on=TimeoutError)
            return Next.do_async(self.fetch).retry(policy).fallback(self.cached)

    agent = Picky(failures=100)
    assert await agent.run() == "cached"
    assert len(agent.calls) == 1  # ConnectionError is not retried


def test_retry_policy_jitter_stays_within_its_bounds_and_is_reproducible() -> None:
    policy = hybrid.RetryPolicy(attempts=50, initial=1, factor=1, jitter=0.25, rng=random.Random(3))
    delays = list(policy.delays())
    assert len(delays) == 49
    assert all(0.75 <= d <= 1.25 for d in delays)
    assert len(set(delays)) > 1
    again = hybrid.RetryPolicy(attempts=50, initial=1, factor=1, jitter=0.25, rng=random.Random(3))
    assert list(again.delays()) == delays


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "attempts .* must be an int >= 1"),
        ({"initial": -1}, "initial must be a finite number of seconds >= 0"),
        ({"factor": 0.5}, "factor must be a finite number >= 1"),
        ({"max_delay": math.inf}, "max_delay must be a finite number"),
        ({"jitter": 1.5}, "jitter must be a number between 0 and 1"),
    ],
)
def test_retry_policy_rejects_bad_values_with_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hybrid.RetryPolicy(**kwargs)


def test_retry_policy_rejects_non_exception_retry_on_and_bad_retry_numbers() -> None:
    with pytest.raises(TypeError, match="retry_on takes Exception subclasses"):
        hybrid.RetryPolicy(retry_on=(KeyboardInterrupt,))
    with pytest.raises(ValueError, match="the retry number must be an int >= 1"):
        hybrid.RetryPolicy().delay(0)


async def test_timeout_fails_a_slow_async_state_with_too_slow_error(autojump_clock: trio.testing.MockClock) -> None:
    class Slow(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.wait).timeout(5)

        async def wait(self) -> Next[Self]:
            await trio.sleep(3600)
            return Next.done()

    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await Slow().run()
    assert trio.current_time() - start == pytest.approx(5)


async def test_timeout_applies_per_try_and_the_fallback_sees_too_slow_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tries: list[float] = []

    class SlowThenFallback(Agent[str]):
        def begin(self) -> Next[Self]:
            policy = hybrid.RetryPolicy(attempts=3, initial=1, factor=1)
            return Next.do_async(self.wait).timeout(2).retry(policy).fallback(self.fell_back)

        async def wait(self) -> Next[Self]:
            tries.append(trio.current_time())
            await trio.sleep(10)
            return Next.done("never")

        def fell_back(self, error: Exception) -> Next[Self]:
            assert isinstance(error, trio.TooSlowError)
            return Next.done("fallback")

    start = trio.current_time()
    assert await SlowThenFallback().run() == "fallback"
    assert [round(t - start, 6) for t in tries] == [0, 3, 6]


async def test_a_sync_state_past_its_timeout_sees_interrupted_and_fails_with_too_slow_error() -> None:
    observed: list[bool] = []

    class SyncSlow(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_sync(self.spin).timeout(0.05)

        def spin(self) -> Next[Self]:
            deadline = trio.from_thread.run_sync(trio.current_time) + 30
            while not hybrid.interrupted():
                if trio.from_thread.run_sync(trio.current_time) > deadline:
                    break
                threading.Event().wait(0.001)
            observed.append(hybrid.interrupted())
            return Next.done()

    with pytest.raises(trio.TooSlowError):
        await SyncSlow().run()
    assert observed == [True]


async def test_fallback_returning_something_else_than_next_fails_with_invalid_transition() -> None:
    class BadFallback(Agent[None]):
        def begin(self) -> Next[Self]:
            return Next.do_async(self.go).fallback(lambda error: "oops")  # type: ignore[arg-type,return-value]

        async def go(self) -> Next[Self]:
            raise ValueError("x")

    with pytest.raises(hybrid.InvalidTransition, match="fallback .* must return a Next"):
        await BadFallback().run()


class Sleep:
    def __init__(self, seconds: float, then: Next[Any]) -> None:
        self.seconds = seconds
        self.then = then
        self.agent: Any = None

    async def perform(self, agent: Any) -> Next[Any]:
        self.agent = agent
        await trio.sleep(self.seconds)
        return self.then


async def test_perform_runs_a_custom_performer_with_the_agent(autojump_clock: trio.testing.MockClock) -> None:
    performer = Sleep(7, Next.done("slept"))

    class Custom(Agent[str]):
        def begin(self) -> Next[Self]:
            return Next.perform(performer)

    agent = Custom()
    start = trio.current_time()
    assert await agent.run() == "slept"
    assert performer.agent is agent
    assert trio.current_time() - start == pytest.approx(7)


async def test_perform_takes_modifiers_like_any_state(autojump_clock: trio.testing.MockClock) -> None:
    class Custom(Agent[str]):
        def begin(self) -> Next[Self]:
            return Next.perform(Sleep(100, Next.done("late"))).timeout(1).fallback(lambda e: Next.done("fast"))

    assert await Custom().run() == "fast"


def test_next_has_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="Next has no public constructor"):
        Next()


def test_transition_constructors_reject_bad_arguments_where_they_are_called() -> None:
    with pytest.raises(hybrid.InvalidTransition, match="do_async needs a callable"):
        Next.do_async(42)  # type: ignore[arg-type]
    with pytest.raises(hybrid.InvalidTransition, match="do_sync needs a callable"):
        Next.do_sync("nope")  # type: ignore[arg-type]
    with pytest.raises(hybrid.InvalidTransition, match="perform needs an object with an async perform"):
        Next.perform(object())  # type: ignore[arg-type]
    with pytest.raises(hybrid.InvalidTransition, match="fail needs an Exception instance"):
        Next.fail(ValueError)  # type: ignore[arg-type]


async def _noop() -> Next[Any]:
    return Next.done()


def test_modifiers_apply_only_to_states_and_check_their_arguments() -> None:
    with pytest.raises(hybrid.InvalidTransition, match=r"\.timeout\(\) applies to a state"):
        Next.events().timeout(1)
    with pytest.raises(hybrid.InvalidTransition, match=r"\.fallback\(\) applies to a state"):
        Next.done(1).fallback(lambda e: Next.done())
    state = Next.do_async(_noop)
    with pytest.raises(hybrid.InvalidTransition, match="timeout must be a number of seconds > 0"):
        state.timeout(0)
    with pytest.raises(hybrid.InvalidTransition, match="timeout must be a number of seconds > 0"):
        state.timeout("1")  # type: ignore[arg-type]
    with pytest.raises(hybrid.InvalidTransition, match="timeout must be a number of seconds > 0"):
        state.timeout(True)
    assert state.timeout(math.inf).kind == "do_async"  # no deadline, as trio.fail_after(math.inf)
    with pytest.raises(hybrid.InvalidTransition, match="needs a hybrid.RetryPolicy"):
        state.retry(3)  # type: ignore[arg-type]
    with pytest.raises(hybrid.InvalidTransition, match="fallback needs a callable"):
        state.fallback(None)  # type: ignore[arg-type]


def test_modifiers_return_new_transitions_and_leave_the_original_unchanged() -> None:
    state = Next.do_async(_noop)
    with_timeout = state.timeout(3)
    assert with_timeout is not state
    assert repr(state) == "Next.do_async(_noop)"
    assert repr(with_timeout) == "Next.do_async(_noop).timeout(3.0)"
    retried = with_timeout.retry(hybrid.RetryPolicy(attempts=2)).fallback(lambda e: Next.done())
    assert "retry(attempts=2)" in repr(retried)
    assert ".fallback(" in repr(retried)


def test_next_kind_and_repr_describe_the_transition() -> None:
    assert Next.events().kind == "events"
    assert Next.done().kind == "done"
    assert repr(Next.done(3)) == "Next.done(3)"
    assert repr(Next.stop()) == "Next.stop()"
    assert Next.interrupt().kind == "interrupt"
    assert Next.fail(ValueError("x")).kind == "fail"
    assert Next.do_sync(len, "abc").kind == "do_sync"  # type: ignore[arg-type]
    assert Next.do_async(_noop).is_state
    assert not Next.events().is_state
    assert Next.events() is Next.events()  # argument-less transitions are shared
    assert "Sleep" in repr(Next.perform(Sleep(1, Next.done())))
