"""The tool registry: plain Python callables, registered by name, each with its timeout and retry policy.

A tool is any function, ``async def`` or plain ``def``; the model calls it by
name with positional arguments, and what it returns becomes, as text, the
observation the model reads next. There is no schema: the function's own
signature is the contract.

How a call runs is decided here, once, at registration, and carried out by
hybrid's state modifiers in the loop (`Turn.call_tool`):

- an ``async def`` tool runs in an async state (`Next.do_async`), on the trio
  loop; a plain ``def`` tool in a sync state (`Next.do_sync`), in a worker
  thread, so a CPU-bound or blocking tool never stalls the other conversations;
- each try is cut at `Tool.timeout` seconds (``.timeout``);
- a failed try is retried as `Tool.retry` says (``.retry``), for the error
  types it names;
- the last error becomes an observation (``.fallback``), never a crash.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs

import hybrid

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT = 10.0
"""Seconds a try of a tool may take when its registration names no timeout."""


@attrs.frozen
class Tool:
    """One registered tool.

    Attributes:
        name: what the model calls it by.
        fn: the function; ``async def`` or plain ``def``, called with the
            model's positional arguments. Its result is shown to the model as
            ``str(result)``.
        timeout: seconds one try may take; past it, the try fails with
            `trio.TooSlowError` (a sync tool's thread cannot be killed: it is
            told through `hybrid.interrupted()`, and the try fails when it returns).
        retry: how failed tries are retried; None: one try only.
    """

    name: str
    fn: Callable[..., Any]  # schema-free: the model's arguments are whatever the function takes
    timeout: float = DEFAULT_TIMEOUT
    retry: hybrid.RetryPolicy | None = None

    @property
    def is_async(self) -> bool:
        """Whether the tool is an ``async def`` function (run on the trio loop, not in a thread)."""
        return inspect.iscoroutinefunction(self.fn)


class Tools:
    """The tools a conversation's model may call, by name.

    Example:
        ```python
        tools = Tools()

        @tools.tool(timeout=2, retry=hybrid.RetryPolicy(attempts=3, initial=0.1))
        async def search(query: str) -> str:
            ...

        tools.add(calculator)  # a plain def: runs in a worker thread
        ```
    """

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: hybrid.RetryPolicy | None = None,
    ) -> Tool:
        """Register `fn` under `name` (default: its ``__name__``) and return its `Tool`.

        Raises:
            ValueError: the name is taken, or `timeout` is not a positive number of seconds.
        """
        tool = Tool(name or fn.__name__, fn, timeout, retry)
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is registered already")
        if not timeout > 0:  # NaN too
            raise ValueError(f"a tool's timeout must be a positive number of seconds, got {timeout!r}")
        self._tools[tool.name] = tool
        return tool

    def tool(
        self, *, name: str | None = None, timeout: float = DEFAULT_TIMEOUT, retry: hybrid.RetryPolicy | None = None
    ) -> Callable[[F], F]:
        """A decorator form of `add`: registers the function and returns it unchanged."""

        def register(fn: F) -> F:
            self.add(fn, name=name, timeout=timeout, retry=retry)
            return fn

        return register

    def get(self, name: str) -> Tool | None:
        """The tool registered under `name`, or None (the loop then tells the model there is none)."""
        return self._tools.get(name)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)
