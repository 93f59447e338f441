"""Backoff schedules for retried states and restarted children."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import attrs


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _check_jitter(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"jitter must be between 0 and 1, got {value!r}")


def _check_attempts(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"attempts must be >= 1 (the first try counts), got {value!r}")


def _check_factor(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value >= 1 and math.isfinite(value)):
        raise ValueError(f"factor must be a finite number >= 1, got {value!r}")


def _to_tuple(value: type[BaseException] | tuple[type[BaseException], ...]) -> tuple[type[BaseException], ...]:
    types: tuple[object, ...] = value if isinstance(value, tuple) else (value,)
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"retry_on takes Exception subclasses, got {kind!r}")
    return value if isinstance(value, tuple) else (value,)


@attrs.frozen
class Backoff:
    """An exponential backoff schedule, capped, with jitter.

    The delay before retry (or restart) number ``n`` (1 for the first) is
    ``min(initial * factor ** (n - 1), max_delay)``, multiplied by a random
    factor in ``[1 - jitter, 1 + jitter]``.

    Delays are slept with `trio.sleep`, so under `trio.testing.MockClock`
    (``autojump_clock`` in pytest-trio) a one-hour backoff takes no real time.

    Attributes:
        initial: the first delay, in seconds.
        factor: growth of the delay from one try to the next (>= 1).
        max_delay: cap on any delay, before jitter.
        jitter: relative random spread of each delay, 0 (none) to 1.
        rng: the random source for jitter; pass ``random.Random(seed)`` for a
            reproducible schedule.

    Example:
        ```python
        >>> [hybrid.Backoff(initial=1, factor=3, max_delay=20).delay(n) for n in (1, 2, 3, 4)]
        [1.0, 3.0, 9.0, 20.0]
        ```
    """

    initial: float = attrs.field(default=0.1, converter=float, validator=_positive, kw_only=True)
    factor: float = attrs.field(default=2.0, converter=float, validator=_check_factor, kw_only=True)
    max_delay: float = attrs.field(default=30.0, converter=float, validator=_positive, kw_only=True)
    jitter: float = attrs.field(default=0.0, converter=float, validator=_check_jitter, kw_only=True)
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False, hash=False, kw_only=True)

    def delay(self, retry: int) -> float:
        """The delay in seconds before retry number `retry` (1-based), with jitter.

        Raises:
            ValueError: `retry` is smaller than 1.
        """
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry!r}")
        base = min(self.initial * self.factor ** (retry - 1), self.max_delay)
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

    attempts: int = attrs.field(default=3, validator=_check_attempts, kw_only=True)
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
