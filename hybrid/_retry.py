"""Backoff schedules, and the one retry loop that states and pipeline stages share."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import attrs

from . import _validate

T = TypeVar("T")


def _to_tuple(value: type[BaseException] | tuple[type[BaseException], ...]) -> tuple[type[BaseException], ...]:
    types: tuple[object, ...] = value if isinstance(value, tuple) else (value,)
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"retry_on takes Exception subclasses, got {kind!r}")
    return value if isinstance(value, tuple) else (value,)


# Converters that check the raw value (before any float()), so that bools and
# strings are refused as everywhere else.
def _initial(value: object) -> float:
    return _validate.seconds("initial", value)


def _max_delay(value: object) -> float:
    return _validate.seconds("max_delay", value)


def _factor(value: object) -> float:
    return _validate.factor("factor", value)


def _jitter(value: object) -> float:
    return _validate.fraction("jitter", value)


def _attempts(value: object) -> int:
    return _validate.count("attempts (the first try counts)", value, minimum=1)


@attrs.frozen
class Backoff:
    """An exponential backoff schedule, capped, with jitter.

    The delay before retry (or restart) number ``n`` (1 for the first) is
    ``min(initial * factor ** (n - 1), max_delay)``, multiplied by a random
    factor in ``[1 - jitter, 1 + jitter]``. Any ``n`` works: past the cap the
    delay stays at `max_delay` (no overflow however long a child keeps failing).

    Delays are slept with `trio.sleep`, so under `trio.testing.MockClock`
    (``autojump_clock`` in pytest-trio) a one-hour backoff takes no real time.

    Attributes:
        initial: the first delay, in seconds (>= 0, finite).
        factor: growth of the delay from one try to the next (>= 1, finite).
        max_delay: cap on any delay, before jitter (>= 0, finite).
        jitter: relative random spread of each delay, 0 (none) to 1.
        rng: the random source for jitter; pass ``random.Random(seed)`` for a
            reproducible schedule.

    Example:
        ```python
        >>> [hybrid.Backoff(initial=1, factor=3, max_delay=20).delay(n) for n in (1, 2, 3, 4)]
        [1.0, 3.0, 9.0, 20.0]
        ```
    """

    initial: float = attrs.field(default=0.1, converter=_initial, kw_only=True)
    factor: float = attrs.field(default=2.0, converter=_factor, kw_only=True)
    max_delay: float = attrs.field(default=30.0, converter=_max_delay, kw_only=True)
    jitter: float = attrs.field(default=0.0, converter=_jitter, kw_only=True)
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False, hash=False, kw_only=True)

    def delay(self, retry: int) -> float:
        """The delay in seconds before retry number `retry` (1-based), with jitter.

        Raises:
            ValueError: `retry` is smaller than 1.
        """
        _validate.count("the retry number", retry, minimum=1)
        if self.initial == 0:
            base = 0.0
        else:
            try:
                base = min(self.initial * self.factor ** (retry - 1), self.max_delay)
            except OverflowError:  # factor ** n past the float range: long past the cap
                base = self.max_delay
        if self.jitter:
            base *= 1 + self.rng.uniform(-self.jitter, self.jitter)
        return base


@attrs.frozen
class RetryPolicy(Backoff):
    """How a failing state is retried: a [`Backoff`][hybrid.Backoff] and a number of attempts.

    After ``attempts`` tries in all (the first one included), the last error
    goes to the state's fallback, or fails the agent. Only errors of the
    `retry_on` types are retried; others go straight to the fallback.

    Attributes:
        attempts: total number of tries, the first one included (>= 1).
        retry_on: the exception types that are retried.

    Example:
        ```python
        policy = hybrid.RetryPolicy(attempts=5, initial=0.5, factor=2, max_delay=10)
        Next.do_async(self.fetch, url).retry(policy).fallback(self.give_up)
        ```
    """

    attempts: int = attrs.field(default=3, converter=_attempts, kw_only=True)
    retry_on: tuple[type[BaseException], ...] = attrs.field(default=(Exception,), converter=_to_tuple, kw_only=True)

    def delays(self) -> Iterator[float]:
        """The delays of every retry this policy allows, in order (jitter applied).

        Example:
            ```python
            >>> list(hybrid.RetryPolicy(attempts=4, initial=1, factor=3).delays())
            [1.0, 3.0, 9.0]
            ```
        """
        for retry in range(1, self.attempts):
            yield self.delay(retry)

    def retries(self, error: BaseException) -> bool:
        """Whether `error` is of a type this policy retries."""
        return isinstance(error, self.retry_on)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy | None,
    *,
    what: object,
    logger: logging.Logger,
    wait: Callable[[float], Awaitable[bool]],
    failed: Callable[[Exception], None] | None = None,
) -> T:
    """``await attempt()``, tried again by `policy` while it raises a retried error.

    Each error is first reported to `failed`. A retry waits with
    ``await wait(delay)``, which returns False when the wait was cut short
    (an interrupt): then, as when the tries are used up, the last error is
    raised. Only `Exception`s are retried; cancellation passes through.
    """
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except Exception as error:
            if failed is not None:
                failed(error)
            if policy is None or tries >= policy.attempts or not policy.retries(error):
                raise
            delay = policy.delay(tries)
            logger.info("%s failed (%r); retry %d in %.3gs", what, error, tries, delay)
            if not await wait(delay):
                raise
