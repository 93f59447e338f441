"""State kept per trio run: agent names, unique among the agents alive in the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, final

from trio.lowlevel import RunVar

from ._exceptions import NameInUse

T = TypeVar("T")


def per_run(var: RunVar[T], make: Callable[[], T]) -> T:
    """The value of `var` in the current trio run, made at first use.

    Raises:
        RuntimeError: called outside a trio run.
    """
    try:
        return var.get()
    except LookupError:
        value = make()
        var.set(value)
        return value


@final
class Ended:
    """What the runs and addresses of one agent class that are gone counted (monotonic)."""

    __slots__ = ("dropped", "failures", "handled", "restarts", "transitions")

    def __init__(self) -> None:
        self.handled = 0
        self.dropped = 0
        self.transitions = 0
        self.failures = 0
        self.restarts = 0


@final
class Names:
    """The names in use in one trio run, and a counter per class for default names.

    Only the runtime writes it, on the trio thread: a name is claimed when an
    agent's address is made and released when the address is given up (when
    its agent ended and no successor will take it over). `used` maps each name
    to its address (None between the claim and the address being made), in
    the order the addresses were made: `hybrid.snapshot()` reads it.
    """

    __slots__ = ("counters", "ended", "used")

    def __init__(self) -> None:
        self.used: dict[str, object] = {}
        self.counters: dict[str, int] = {}
        self.ended: dict[str, Ended] = {}
        """By agent class: the counters of runs that ended and addresses given up, and
        restarts, so that totals (metrics) never go down when agents end."""

    def of(self, class_name: str) -> Ended:
        ended = self.ended.get(class_name)
        if ended is None:
            ended = self.ended[class_name] = Ended()
        return ended

    def claim(self, name: str | None, class_name: str) -> str:
        if name is None:
            n = self.counters.get(class_name, 0)
            while True:
                n += 1
                name = f"{class_name}-{n}"
                if name not in self.used:
                    break
            self.counters[class_name] = n
        else:
            if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(f"an agent name must be a non-empty str, got {name!r}")
            if name in self.used:
                raise NameInUse(f"the agent name {name!r} is in use by an agent alive in this trio run")
        self.used[name] = None
        return name

    def release(self, name: str) -> None:
        self.used.pop(name, None)


_NAMES: RunVar[Names] = RunVar("hybrid_names")


def current_names() -> Names:
    return per_run(_NAMES, Names)
