"""Transitions: what an agent does next."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, Protocol, final

import attrs
from typing_extensions import TypeVar, TypeVarTuple

from . import _validate
from ._exceptions import InvalidTransition
from ._retry import RetryPolicy

A = TypeVar("A")
A_co = TypeVar("A_co", covariant=True)
Ts = TypeVarTuple("Ts")

# Transition kinds. The three state kinds come first so that the run loop can
# recognise a state with one comparison (``kind <= PERFORM``).
ASYNC: int = 0
SYNC: int = 1
PERFORM: int = 2
EVENTS: int = 3
DONE: int = 4
STOP: int = 5
FAIL: int = 6
INTERRUPT: int = 7

KindName = Literal["do_async", "do_sync", "perform", "events", "done", "stop", "fail", "interrupt"]

_KIND_NAMES: tuple[KindName, ...] = (
    "do_async",
    "do_sync",
    "perform",
    "events",
    "done",
    "stop",
    "fail",
    "interrupt",
)


@attrs.frozen
class Modifiers:
    """The modifiers of one state (`Next.modifiers`): fallback, retry policy, timeout.

    Made by `Next.fallback`, `Next.retry` and `Next.timeout`; None where not set.
    """

    fallback: Callable[[Exception], Next[Any]] | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None


class Performer(Protocol[A]):
    """A custom kind of state: anything with ``async perform(agent) -> Next``.

    Frameworks built on hybrid use performers to add their own state kinds
    (for example "wait for a tool call", "stream tokens"). The runtime awaits
    ``performer.perform(agent)`` as it awaits a `do_async` state, so the same
    modifiers, interrupt rules and fairness apply.

    Example:
        ```python
        class Sleep:
            def __init__(self, seconds: float, then: Next[Any]) -> None:
                self.seconds, self.then = seconds, then

            async def perform(self, agent: Agent[Any]) -> Next[Any]:
                await trio.sleep(self.seconds)
                return self.then

        return Next.perform(Sleep(1.0, Next.done()))
        ```
    """

    async def perform(self, agent: A, /) -> Next[A]:
        """Run the state for `agent` and return the following transition."""
        ...


_new = object.__new__


@final
class Next(Generic[A_co]):
    """A transition: what the agent does next.

    Build one with the static constructors, never with ``Next(...)``:

    | transition | meaning |
    |---|---|
    | `Next.do_async(fn, *args)` | next state: ``await fn(*args)``, which returns the following `Next` |
    | `Next.do_sync(fn, *args)` | next state: ``fn(*args)`` in a worker thread (`trio.to_thread`) |
    | `Next.events()` | actor mode: handle mailbox messages until a handler schedules a transition |
    | `Next.done(value=None)` | finish: close the mailbox, handle what is queued, output `value` |
    | `Next.stop()` | end at once: queued events are dropped, queued requests fail |
    | `Next.fail(error)` | end at once as failed with `error` |
    | `Next.interrupt()` | run `on_interrupt()`, then finish as `done()` does |
    | `Next.perform(performer)` | a custom state: ``await performer.perform(agent)`` |

    A state transition (`do_async`, `do_sync`, `perform`) takes modifiers,
    each returning a new `Next`: `.fallback(fn)`, `.retry(policy)` and
    `.timeout(seconds)`. They apply in this order: each try runs under the
    timeout; a failed try is retried by the policy; the last error goes to
    the fallback (or fails the agent).

    Example:
        ```python
        class Download(Agent[int]):
            def begin(self) -> Next[Self]:
                return Next.do_async(self.fetch, "https://example.org").timeout(10)

            async def fetch(self, url: str) -> Next[Self]:
                text = await get(url)
                return Next.do_sync(self.count, text)

            def count(self, text: str) -> Next[Self]:
                return Next.done(len(text))
        ```
    """

    __slots__ = ("_args", "_fn", "_kind", "_mods", "_value")

    _kind: int
    _fn: Any
    _args: tuple[Any, ...]
    _value: Any
    _mods: Modifiers | None

    def __init__(self) -> None:
        raise TypeError(
            "Next has no public constructor: use Next.do_async, Next.do_sync, "
            "Next.events, Next.done, Next.stop, Next.fail, Next.interrupt or Next.perform"
        )

    @staticmethod
    def do_async(fn: Callable[[*Ts], Awaitable[Next[A]]], *args: *Ts) -> Next[A]:
        """Next state: ``await fn(*args)``; it returns the following transition.

        Arguments are positional only (trio's ``fn, *args`` convention); pass
        mutable state as an argument: ``Next.do_async(self.poll, Counters())``.
        """
        # Inlined rather than shared with do_sync: this runs on every transition.
        if not callable(fn):
            raise InvalidTransition(f"Next.do_async needs a callable, got {fn!r}")
        n: Next[A] = _new(Next)  # pyright: ignore[reportUnknownVariableType]
        n._kind = ASYNC
        n._fn = fn
        n._args = args
        n._value = None
        n._mods = None
        return n

    @staticmethod
    def do_sync(fn: Callable[[*Ts], Next[A]], *args: *Ts) -> Next[A]:
        """Next state: ``fn(*args)`` in a worker thread; it returns the following transition.

        The trio loop stays free meanwhile. The function can call `self.ctx`
        methods and poll [`hybrid.interrupted()`][hybrid.interrupted] to stop
        early; it cannot be cancelled otherwise (threads cannot be killed).
        """
        if not callable(fn):
            raise InvalidTransition(f"Next.do_sync needs a callable, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise InvalidTransition(
                f"Next.do_sync({_callable_name(fn)}) got an 'async def' function: a worker thread cannot "
                "await it; use Next.do_async for an async state"
            )
        return _state(SYNC, fn, args)

    @staticmethod
    def perform(performer: Performer[A]) -> Next[A]:
        """Next state: ``await performer.perform(agent)``, a custom state kind."""
        if not callable(getattr(performer, "perform", None)):
            raise InvalidTransition(
                f"Next.perform needs an object with an async perform(agent) method, got {performer!r}"
            )
        return _state(PERFORM, performer, ())

    @staticmethod
    def events() -> Next[Any]:
        """Actor mode: handle mailbox messages one at a time.

        The agent stays in actor mode until a handler schedules a transition
        with `self.ctx.do_next(...)`, `self.ctx.shutdown()` or `self.ctx.stop()`,
        or until it is interrupted.
        """
        return _EVENTS

    @staticmethod
    def done(value: object = None) -> Next[Any]:
        """Finish with `value` as the output.

        The mailbox closes (new messages raise `AgentStopped` in their sender),
        the messages already queued are handled, then the agent ends.
        """
        if value is None:
            return _DONE_NONE
        return _make(DONE, value)

    @staticmethod
    def stop() -> Next[Any]:
        """End at once: queued events are dropped, queued requests fail with `AgentStopped`."""
        return _STOP

    @staticmethod
    def fail(error: Exception) -> Next[Any]:
        """End at once as failed with `error`; `run()` and `join()` raise it."""
        if not isinstance(error, Exception):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidTransition(f"Next.fail needs an Exception instance, got {error!r}")
        return _make(FAIL, error)

    @staticmethod
    def interrupt() -> Next[Any]:
        """Run the agent's `on_interrupt()` hook, then finish as `done()` does.

        If the hook schedules a transition with `self.ctx.do_next`, the agent
        takes it instead.
        """
        return _INTERRUPT

    # -- modifiers ---------------------------------------------------------

    def fallback(self: Next[A], fn: Callable[[Exception], Next[A]]) -> Next[A]:
        """When the state raises, `fn(error)` chooses the next transition.

        Without a fallback, a state that raises fails the agent
        (``Next.fail(error)``). With `.retry(...)`, the fallback sees the
        error of the last try.
        """
        if not callable(fn):
            raise InvalidTransition(f"fallback needs a callable, got {fn!r}")
        return self._modified("fallback", fallback=fn)

    def retry(self, policy: RetryPolicy) -> Next[A_co]:
        """Re-run the state when it raises, waiting by `policy` between tries."""
        if not isinstance(policy, RetryPolicy):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidTransition(f"retry needs a hybrid.RetryPolicy, got {policy!r}")
        return self._modified("retry", retry=policy)

    def timeout(self, seconds: float) -> Next[A_co]:
        """Each try of the state fails with `trio.TooSlowError` after `seconds`.

        A sync state cannot be killed: past the deadline,
        [`hybrid.interrupted()`][hybrid.interrupted] turns true in its thread,
        and the state fails as soon as the function returns.
        """
        try:  # math.inf: no deadline, as trio.fail_after says it
            checked = _validate.seconds("timeout", seconds, positive=True, infinite=True)
        except (TypeError, ValueError) as error:
            raise InvalidTransition(str(error)) from None
        return self._modified("timeout", timeout=checked)

    def _modified(self, what: str, **changes: Any) -> Next[A_co]:
        if self._kind > PERFORM:
            raise InvalidTransition(f".{what}() applies to a state (do_async, do_sync, perform), not to {self!r}")
        n: Next[A_co] = _state(self._kind, self._fn, self._args)
        n._mods = attrs.evolve(self._mods or _NO_MODS, **changes)
        return n

    # -- introspection -----------------------------------------------------

    @property
    def kind(self) -> KindName:
        """The kind of transition, as the name of its constructor (``"do_async"``...)."""
        return _KIND_NAMES[self._kind]

    @property
    def function(self) -> Any:
        """The state's function (`do_async`, `do_sync`) or performer (`perform`); None for other transitions.

        For those who read transitions (checkpointers, instruments), not to
        run them: the run loop calls it with `args`.
        """
        return self._fn

    @property
    def args(self) -> tuple[Any, ...]:
        """The state's arguments, as given to `do_async`/`do_sync` (empty for other transitions)."""
        return self._args

    @property
    def modifiers(self) -> Modifiers | None:
        """The state's fallback, retry policy and timeout; None when it has none."""
        return self._mods

    @property
    def is_state(self) -> bool:
        """Whether this transition enters a state (`do_async`, `do_sync` or `perform`)."""
        return self._kind <= PERFORM

    @property
    def state_name(self) -> str | None:
        """The state's short name, for labels (metrics, traces, diagrams); None if not a state.

        The function's ``__name__`` for `do_async`/`do_sync` (a method's own
        name: ``"fetch"``; a `functools.partial`'s function's; a callable
        object's class name), the performer's class name for `perform`:
        never anything that differs from one agent to the next.

        Example:
            ```python
            assert Next.do_async(self.fetch, url).state_name == "fetch"
            assert Next.done().state_name is None
            ```
        """
        kind = self._kind
        if kind > PERFORM:
            return None
        fn = self._fn
        if kind == PERFORM:
            return type(fn).__name__
        while isinstance(fn, functools.partial):  # a bounded label: never a repr with an address
            fn = fn.func
        name: str = getattr(fn, "__name__", None) or type(fn).__name__
        return name

    def __repr__(self) -> str:
        kind = self._kind
        if kind <= PERFORM:
            target = self._fn if kind == PERFORM else _callable_name(self._fn)
            parts = [str(target) if kind != PERFORM else repr(target)]
            parts += [repr(arg) for arg in self._args]
            text = f"Next.{_KIND_NAMES[kind]}({', '.join(parts)})"
            mods = self._mods
            if mods is not None:
                if mods.retry is not None:
                    text += f".retry(attempts={mods.retry.attempts})"
                if mods.timeout is not None:
                    text += f".timeout({mods.timeout})"
                if mods.fallback is not None:
                    text += f".fallback({_callable_name(mods.fallback)})"
            return text
        if kind in (DONE, FAIL) and self._value is not None:
            return f"Next.{_KIND_NAMES[kind]}({self._value!r})"
        return f"Next.{_KIND_NAMES[kind]}()"


def _callable_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _state(kind: int, fn: Any, args: tuple[Any, ...]) -> Next[Any]:
    n: Next[Any] = _new(Next)  # pyright: ignore[reportUnknownVariableType]
    n._kind = kind
    n._fn = fn
    n._args = args
    n._value = None
    n._mods = None
    return n


def _make(kind: int, value: object = None) -> Next[Any]:
    n: Next[Any] = _new(Next)  # pyright: ignore[reportUnknownVariableType]
    n._kind = kind
    n._fn = None
    n._args = ()
    n._value = value
    n._mods = None
    return n


# Argument-less transitions are shared: they carry no state.
_EVENTS = _make(EVENTS)
_DONE_NONE = _make(DONE)
_STOP = _make(STOP)
_INTERRUPT = _make(INTERRUPT)
_NO_MODS = Modifiers()
