"""`CircuitBreaker`: closed, open, half-open, on trio's clock."""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import final

import attrs
import trio
from typing_extensions import TypeVar, TypeVarTuple

from . import _validate
from ._exceptions import CircuitOpen

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

logger = logging.getLogger("hybrid.breaker")


class BreakerState(enum.Enum):
    """The state of a [`CircuitBreaker`][hybrid.CircuitBreaker].

    Attributes:
        CLOSED: calls pass; enough consecutive failures open the breaker.
        OPEN: every call is refused at once with `CircuitOpen`, until
            `reset_after` seconds have passed since it opened.
        HALF_OPEN: `reset_after` has passed: a few calls (`probes`) are let
            through to test the service; a probe's success closes the breaker,
            its failure opens it again.

    Example:
        ```python
        if breaker.state is hybrid.BreakerState.OPEN:
            return cached_answer()
        ```
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@attrs.frozen
class BreakerStatistics:
    """A snapshot of a [`CircuitBreaker`][hybrid.CircuitBreaker]'s counters.

    Made by [`CircuitBreaker.statistics`][hybrid.CircuitBreaker.statistics].
    Every call that the breaker let in ends as exactly one of `successes`,
    `failures` or `ignored`, or is still running (`in_flight`), so
    ``calls == successes + failures + ignored + in_flight``.

    Attributes:
        state: the state now (half-open is computed from trio's clock).
        consecutive_failures: counted failures in a row among the calls that
            decide the state, reset to 0 by a success, a closing or `reset()`.
            The breaker opens when it reaches `failures` while closed.
        calls: calls let in since the breaker was made (probes included;
            refused calls are not).
        successes: calls that returned without an exception.
        failures: calls that raised a counted exception (an instance of
            `counts`), including those that came back after the breaker had
            already changed state and so decided nothing.
        ignored: calls that ended by an exception not in `counts` or by
            cancellation: neither success nor failure.
        rejected: calls refused with `CircuitOpen`.
        in_flight: calls let in that have not come back yet.
        probes_in_flight: half-open probes running now (at most `probes`).
        times_opened: how many times the breaker opened (probe failures that
            reopened it included).

    Example:
        ```python
        stats = breaker.statistics()
        log.info("%s: %d rejected, opened %d times", stats.state, stats.rejected, stats.times_opened)
        ```
    """

    state: BreakerState
    consecutive_failures: int
    calls: int
    successes: int
    failures: int
    ignored: int
    rejected: int
    in_flight: int
    probes_in_flight: int
    times_opened: int


def _counted_types(counts: type[Exception] | tuple[type[Exception], ...]) -> tuple[type[Exception], ...]:
    kinds: tuple[object, ...] = counts if isinstance(counts, tuple) else (counts,)
    if not kinds:
        raise ValueError("counts must name at least one Exception subclass, got ()")
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"counts takes Exception subclasses, got {kind!r}")
    return counts if isinstance(counts, tuple) else (counts,)


# A call let in carries a ticket: the breaker's generation when it entered,
# and whether it is a half-open probe. Its outcome decides something only if
# the generation is still the current one.
_Ticket = tuple[int, bool]


@final
class CircuitBreaker:
    """Stops calling a failing service for a while, then tests it with a few probes.

    Closed (the start), calls pass; `failures` *consecutive* failures open
    it (a success resets the count). Open, every call is refused at once with
    [`CircuitOpen`][hybrid.CircuitOpen], whose ``retry_after`` says how many
    seconds are left. `reset_after` seconds after it opened, the breaker is
    half-open: at most `probes` calls at once are let through; other callers
    meanwhile get ``CircuitOpen(retry_after=0)``. A probe's success closes it;
    a probe's failure opens it again for another `reset_after` seconds.

    A failure is an exception that is an instance of `counts` (checked with
    `isinstance`, as ``except counts`` would; an `ExceptionGroup` is one
    exception). A call that ends by another exception, or by cancellation
    (any `BaseException` that is not a counted `Exception`), is neither a
    success nor a failure: it only frees its probe slot. Exceptions always
    propagate to the caller; the breaker never swallows one.

    Time is trio's (`trio.current_time()`), so `trio.testing.MockClock`
    drives it; half-open is computed when `state` is read or a call enters,
    no task runs in the background. Use a breaker from one trio run (it is
    not thread-safe); entering and leaving never block and are not
    checkpoints.

    Concurrency: any number of tasks may be inside a closed breaker at once;
    their outcomes count as they come back. An outcome decides something only
    while the breaker is still in the state (the *generation*) in which its
    call entered: a call let in while closed that comes back after the
    breaker opened (or after `reset()`) is counted in the statistics but
    changes nothing: a failure does not extend the open time, a success does
    not close it (only a probe closes an open breaker). Likewise, with
    several probes, the first probe to come back decides; the others' outcomes
    are then only counted.

    Args:
        failures: consecutive counted failures that open the breaker (>= 1).
        reset_after: seconds the breaker stays open before it lets probes
            through (> 0, finite).
        probes: half-open calls let through at once (>= 1).
        counts: the exception class (or tuple of classes, all `Exception`
            subclasses) that count as failures.
        name: a name for logs and `repr`.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: `failures` or `probes` below 1, `reset_after` not a
            positive finite number, or an empty `counts`.

    Logs, on the ``hybrid.breaker`` logger: opening at WARNING, closing at
    INFO, the first probe of a half-open period at DEBUG.

    Example:
        ```python
        breaker = hybrid.CircuitBreaker(failures=5, reset_after=30, counts=OSError, name="billing")

        async def charge(order: Order) -> Receipt:
            try:
                return await breaker.call(billing.charge, order)
            except hybrid.CircuitOpen as refused:
                raise TryLater(refused.retry_after) from refused

        # or around a block:
        async with breaker:
            await billing.refund(order)
        ```
    """

    __slots__ = (
        "_calls",
        "_consecutive",
        "_counts",
        "_failures",
        "_failures_total",
        "_generation",
        "_ignored",
        "_name",
        "_open_until",
        "_opened",
        "_probes",
        "_probing",
        "_rejected",
        "_reset_after",
        "_successes",
        "_tickets",
    )

    # Configuration, fixed at construction.
    _failures: int
    _reset_after: float
    _probes: int
    _counts: tuple[type[Exception], ...]
    _name: str | None
    # The state, in one field: None while closed; otherwise the time (trio's
    # clock) at which the open period ends. Open before it, half-open from it.
    _open_until: float | None
    # Bumped at each change of state (open, close, reset): a call's outcome
    # decides something only if its ticket carries the current generation.
    _generation: int
    # Counted failures in a row among calls of the current generation (see
    # BreakerStatistics.consecutive_failures).
    _consecutive: int
    # Probes of the current generation still running (<= _probes).
    _probing: int
    # The tickets of the calls inside `async with`, per task (a stack: one task
    # may nest two uses of one breaker). `call()` keeps its ticket in a local.
    _tickets: dict[trio.lowlevel.Task, list[_Ticket]]
    # Counters, only ever increased (in_flight is derived from them).
    _calls: int
    _successes: int
    _failures_total: int
    _ignored: int
    _rejected: int
    _opened: int

    def __init__(
        self,
        *,
        failures: int,
        reset_after: float,
        probes: int = 1,
        counts: type[Exception] | tuple[type[Exception], ...] = Exception,
        name: str | None = None,
    ) -> None:
        self._failures = _validate.count("failures", failures, minimum=1)
        self._reset_after = _validate.seconds("reset_after", reset_after, positive=True)
        self._probes = _validate.count("probes", probes, minimum=1)
        self._counts = _counted_types(counts)
        if name is not None and not isinstance(name, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"name must be None or a str, got {name!r}")
        self._name = name
        self._open_until = None
        self._generation = 0
        self._consecutive = 0
        self._probing = 0
        self._tickets = {}
        self._calls = self._successes = self._failures_total = 0
        self._ignored = self._rejected = self._opened = 0

    def __repr__(self) -> str:
        name = "" if self._name is None else f" {self._name!r}"
        try:
            state = self.state.value
        except RuntimeError:  # outside a trio run: no clock to tell open from half-open
            state = "open or half-open"
        return f"<hybrid.CircuitBreaker{name} {state}, {self._consecutive}/{self._failures} failures>"

    @property
    def name(self) -> str | None:
        """The name given at construction (None if none), used in logs and errors.

        Example:
            ```python
            assert hybrid.CircuitBreaker(failures=3, reset_after=10, name="db").name == "db"
            ```
        """
        return self._name

    @property
    def state(self) -> BreakerState:
        """The state now; half-open is computed from trio's clock.

        Reading it while open, in a trio run, tells whether `reset_after` has
        passed (a closed breaker is read without the clock).

        Example:
            ```python
            breaker = hybrid.CircuitBreaker(failures=1, reset_after=10)
            assert breaker.state is hybrid.BreakerState.CLOSED
            ```
        """
        open_until = self._open_until
        if open_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if trio.current_time() < open_until else BreakerState.HALF_OPEN

    def statistics(self) -> BreakerStatistics:
        """A snapshot of the breaker's state and counters.

        Example:
            ```python
            stats = breaker.statistics()
            assert stats.calls == stats.successes + stats.failures + stats.ignored + stats.in_flight
            ```
        """
        return BreakerStatistics(
            state=self.state,
            consecutive_failures=self._consecutive,
            calls=self._calls,
            successes=self._successes,
            failures=self._failures_total,
            ignored=self._ignored,
            rejected=self._rejected,
            in_flight=self._calls - self._successes - self._failures_total - self._ignored,
            probes_in_flight=self._probing,
            times_opened=self._opened,
        )

    def reset(self) -> None:
        """Force the breaker closed, with no failures counted.

        Calls running now decide nothing when they come back (they belong to
        the previous generation); they are still counted in the statistics.

        Example:
            ```python
            await deploy_fix()
            breaker.reset()  # do not wait for reset_after
            ```
        """
        was_closed = self._open_until is None
        self._close()
        if not was_closed:
            logger.info("%s closed by reset()", self._label())

    async def __aenter__(self) -> None:
        """Enter as one call; raise `CircuitOpen` if the breaker refuses it.

        Raises:
            CircuitOpen: the breaker is open, or half-open with every probe
                slot taken.

        Example:
            ```python
            async with breaker:
                await fetch(url)
            ```
        """
        ticket = self._enter()
        self._tickets.setdefault(trio.lowlevel.current_task(), []).append(ticket)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Record the call's outcome; the exception (if any) propagates.

        Example:
            ```python
            async with breaker:
                raise OSError("down")  # counted, then re-raised
            ```
        """
        task = trio.lowlevel.current_task()
        stack = self._tickets[task]
        ticket = stack.pop()
        if not stack:
            del self._tickets[task]
        self._exit(ticket, error)

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Return ``await fn(*args)`` through the breaker.

        Arguments are positional (trio's ``fn, *args`` convention; use
        `functools.partial` for keywords).

        Raises:
            CircuitOpen: the breaker refuses the call; `fn` is not called.
            TypeError: `fn` is not callable (checked before the breaker
                counts anything).

        Example:
            ```python
            page = await breaker.call(fetch, "https://example.org")
            ```
        """
        if not callable(fn):
            raise TypeError(f"CircuitBreaker.call needs an async function, got {fn!r}")
        ticket = self._enter()
        try:
            result = await fn(*args)
        except BaseException as error:
            self._exit(ticket, error)
            raise
        self._exit(ticket, None)
        return result

    # The machinery.

    def _label(self) -> str:
        return "circuit breaker" if self._name is None else f"circuit breaker {self._name!r}"

    def _enter(self) -> _Ticket:
        """Let one call in (its ticket) or raise `CircuitOpen`."""
        open_until = self._open_until
        probe = False
        if open_until is not None:
            now = trio.current_time()
            if now < open_until:
                self._rejected += 1
                left = open_until - now
                raise CircuitOpen(f"{self._label()} is open: retry after {left:.3g}s", retry_after=left)
            if self._probing >= self._probes:
                self._rejected += 1
                raise CircuitOpen(
                    f"{self._label()} is half-open and its {self._probes} probe(s) are busy", retry_after=0.0
                )
            if self._probing == 0:
                logger.debug("%s is half-open: a probe goes through", self._label())
            self._probing += 1
            probe = True
        self._calls += 1
        return (self._generation, probe)

    def _exit(self, ticket: _Ticket, error: BaseException | None) -> None:
        """Count the outcome of the call holding `ticket`; change state if it decides."""
        generation, probe = ticket
        counted = isinstance(error, Exception) and isinstance(error, self._counts)
        if error is None:
            self._successes += 1
        elif counted:
            self._failures_total += 1
        else:
            self._ignored += 1
        if generation != self._generation:
            return  # the breaker changed state since this call entered
        # Only a probe enters a half-open breaker, so a current non-probe call
        # entered, and comes back, while closed.
        if probe:
            self._probing -= 1
            if error is None:
                self._close()
                logger.info("%s closed: a probe succeeded", self._label())
            elif counted:
                self._consecutive += 1
                self._open(f"a probe failed ({error!r})")
        elif error is None:
            self._consecutive = 0
        elif counted:
            self._consecutive += 1
            if self._consecutive >= self._failures:
                self._open(f"{self._consecutive} consecutive failures, the last {error!r}")

    def _open(self, why: str) -> None:
        self._open_until = trio.current_time() + self._reset_after
        self._generation += 1
        self._probing = 0
        self._opened += 1
        logger.warning("%s opened: %s; probes in %.3gs", self._label(), why, self._reset_after)

    def _close(self) -> None:
        self._open_until = None
        self._generation += 1
        self._probing = 0
        self._consecutive = 0
