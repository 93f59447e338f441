"""The one thread hop: where code running outside the agent's trio thread is carried back to it.

Every agent lives in one trio run, in one thread: its `Home`. Operations that
never block (`send`, `interrupt`, timers, `ctx` methods) may be called from a
sync state's worker thread and are carried to the home thread with
`trio.from_thread.run_sync`. Operations that wait (`request`, `send_wait`,
`join`) must be awaited in the home run itself; `check_awaited_at_home` refuses
them elsewhere before they touch anything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from threading import get_ident
from typing import Any, Protocol, TypeVar, final

import trio
from trio.lowlevel import RunVar, TrioToken, current_trio_token
from typing_extensions import ParamSpec

from ._exceptions import LifecycleError
from ._registry import per_run

P = ParamSpec("P")
T = TypeVar("T")


@final
class Home:
    """The trio run and the thread an agent lives in.

    Both fields are set when the agent's mailbox is made (in its trio run)
    and never change; the agents of one run share one `Home` (`current_home`).
    """

    __slots__ = ("thread_id", "token")

    def __init__(self) -> None:
        self.thread_id: int = get_ident()
        """The ident of the thread that runs the trio loop."""
        self.token: TrioToken = current_trio_token()
        """The trio run's token, to hop into it from worker threads."""


class HasHome(Protocol):
    @property
    def home(self) -> Home: ...


def at_home(home: Home, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn(*args, **kwargs)`` on `home`'s trio thread and return its result.

    Called there already, it is a plain call; from a worker thread of that run
    (a sync state), the call is carried over with `trio.from_thread.run_sync`
    and its exception re-raised in the calling thread.
    """
    if get_ident() == home.thread_id:
        return fn(*args, **kwargs)
    return trio.from_thread.run_sync(functools.partial(fn, *args, **kwargs), trio_token=home.token)


def threadsafe(home_of: Callable[[Any], Home]) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorate a method so that it always runs on its object's home thread."""

    def decorate(method: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            home = home_of(args[0])
            if get_ident() == home.thread_id:
                return method(*args, **kwargs)
            return trio.from_thread.run_sync(functools.partial(method, *args, **kwargs), trio_token=home.token)

        return wrapper

    return decorate


def check_awaited_at_home(home: Home, what: str, *, run_is_live: bool = False) -> None:
    """Refuse an await of `what` outside the agent's own trio run.

    `run_is_live`: the caller knows a task of the home run is parked right
    now. Then, in the home thread, the current run is the home run (trio runs
    never nest in one thread), and the cost of asking trio is saved.

    Raises:
        LifecycleError: called from another thread, or from another trio run
            (or from no trio run at all).
    """
    if get_ident() != home.thread_id:
        raise LifecycleError(
            f"{what} must be awaited in the trio run of the agent, in its thread; this is another thread "
            "(from a sync state, use trio.from_thread.run(...) to await it in the agent's run)"
        )
    if run_is_live:
        return
    try:
        token = current_trio_token()
    except RuntimeError:
        token = None
    if token is not home.token:
        raise LifecycleError(f"{what} must be awaited in the trio run of the agent; this is another trio run")


_HOME: RunVar[Home] = RunVar("hybrid_home")


def current_home() -> Home:
    """The `Home` of the current trio run, shared by all its mailboxes (made on first use)."""
    return per_run(_HOME, Home)
