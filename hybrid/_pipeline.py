"""Pipelines: agents (and functions) composed as reusable blocks.

Built only on the public agent API: a `Pipeline` is an agent whose single
async state runs a few tasks per stage, linked by bounded buffers; agent
stages run each item's agent through an `AgentRunner`.

::

    source or feed ──> [feeder] ──> buffer ──> [stage 1: `concurrency` workers] ──> buffer ──> ...
        ... ──> [last stage's workers] ──> results list, or buffer ──> [sink] ──> open_pipeline's consumer

A worker takes an item, processes it and sends its outputs on, then takes
the next. Items are numbered as they are taken (buffers are FIFO), and in
an ordered stage a worker whose item finished before the items ahead of it
waits, holding its slot, until the worker of the item ahead sends its
outputs on too: the items in flight, waiting ones included, never exceed
`concurrency`. A full buffer blocks the workers putting into it, which stop
taking items, and so on up to the source: memory stays bounded by the
buffers and the concurrency limits.

Taking a buffered item, or putting one into a buffer with room, is not a
schedule point (`_Buffer`): a stage runs through what is buffered in one
scheduling turn, and yields every `_FAIRNESS` items, as an agent's message
loop does. Waiting for an item, for room or for a turn is a cancellable
park. A plain ``async def`` stage is awaited directly, without the general
path's checks and output list (`_StageRun.fast`).
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, final, overload

import attrs
import trio
from trio.lowlevel import (
    Abort,
    cancel_shielded_checkpoint,
    checkpoint,
    current_clock,
    current_task,
    reschedule,
    wait_task_rescheduled,
)
from typing_extensions import Self, TypeVar

from ._address import Address
from ._agent import Agent, AgentRunner, spawn
from ._exceptions import AgentStopped, LifecycleError
from ._next import Next
from ._retry import RetryPolicy, retrying

logger = logging.getLogger("hybrid.pipeline")

# The items of a stage, pipeline or run. The defaults make a bare `Pipeline`
# or `PipelineRun` annotation mean "of any items", as before they were generic.
In_contra = TypeVar("In_contra", contravariant=True, default=Any)
Out_co = TypeVar("Out_co", covariant=True, default=Any)
In = TypeVar("In", default=Any)
Out = TypeVar("Out", default=Any)
# A stage's input and output, inferred from `fn`. A lambda's parameter has
# no annotation to infer InT from: pyright checks the lambda's body with the
# parameter typed as the unsolved InT, so its bound must accept any use of it
# (`word.split()`; unbounded is object, which does not), and both checkers
# then give the stage InT's default. OutT needs a default too, as it follows
# InT in the signatures' type parameters.
InT = TypeVar("InT", bound=Any, default=Any)
OutT = TypeVar("OutT", default=Any)
T = TypeVar("T")
# The items between the stages of a chain, in order.
S1 = TypeVar("S1")
S2 = TypeVar("S2")
S3 = TypeVar("S3")
S4 = TypeVar("S4")
S5 = TypeVar("S5")
S6 = TypeVar("S6")
S7 = TypeVar("S7")


def _check_concurrency(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {value!r}")


def _check_callable(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise TypeError(f"a stage needs a callable (an agent class or factory, or a function), got {value!r}")


def _check_on_error(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in ("fail", "skip"):
        raise ValueError(f'on_error must be "fail" or "skip", got {value!r}')


@attrs.frozen(init=False)
class Stage(Generic[In_contra, Out_co]):
    """One step of a [`Pipeline`][hybrid.Pipeline]: turns an input item into output items.

    `fn` is called with the item and may return:

    - an agent (an `Agent` class is the simplest factory): the agent runs, and
      the value it gives to ``Next.done`` is the output. An agent that ends in
      another way (stopped, interrupted, failed) is an error of this item.
    - an awaitable (an ``async def`` function): its result is the output.
    - anything else (a plain function): the value is the output. With
      ``in_thread=True`` a plain function runs in a worker thread.

    A ``Stage[In, Out]`` takes `In` items and sends `Out` items on. The type
    checkers infer both from `fn`: its parameter is `In`, and `Out` is what
    an `Agent[Out]` gives to ``Next.done`` (``Stage(Fetch)``, with
    ``class Fetch(Agent[Page])`` whose ``__init__`` takes ``url: str``, is a
    ``Stage[str, Page]``), what an ``async def`` returns, or what a plain
    function returns. With ``split=True``, `fn` returns an iterable or an
    async iterable of `Out` (or an agent or awaitable giving one; a
    `Pipeline[X, Out]` gives its `Out` items); with ``filter=True`` the
    stage is a ``Stage[In, In]``.

    What the types do not check:

    - that an agent stage's agent ends with ``Next.done``: one that ends
      otherwise fails its item at run time; nor that the value it gives to
      ``Next.done`` is its `Agent[Out]` type (the stage trusts the latter).
      A `Pipeline` run by a stage always outputs its list of results, but
      its type, ``Agent[list[Out] | None]``, admits None as well.
    - a lambda stage: its parameter has no annotation, so its input is
      `Any` (pyright may infer it from the stage before, within one
      `Pipeline(...)` call; mypy does not), and mypy often takes its
      output as `Any` too. Use a ``def`` with annotations where the types
      matter.
    - `split` and `filter` given as a `bool` variable rather than a literal:
      mypy rejects the call, and pyright types the stage as either outcome.
      Both True at once is rejected, as it is at run time.

    Attributes:
        fn: the agent class or factory, or the function, called with each item.
        concurrency: items processed at once by this stage (>= 1).
        split: the output is an iterable (or async iterable) of items, sent on
            one by one: one input, several outputs (or none).
        filter: `fn` is a predicate: the item itself goes on if it returns a
            true value, and is dropped otherwise.
        retry: retry an item that fails, with this backoff, before `on_error`.
        on_error: ``"fail"`` fails the whole pipeline with the item's error;
            ``"skip"`` drops the item, logs it (WARNING, ``hybrid.pipeline``)
            and reports it in `Pipeline.skipped` and the statistics.
        in_thread: run a plain function in a worker thread (`trio.to_thread`).
        name: the stage's name in statistics and logs (default: `fn`'s name).

    Example:
        ```python
        Pipeline(
            Stage(Fetch, concurrency=8, retry=hybrid.RetryPolicy(attempts=3), on_error="skip"),
            Stage(extract_links, split=True),
            Stage(is_new, filter=True),
            Stage(store),
        )
        ```
    """

    fn: Callable[[In_contra], Any] = attrs.field(validator=_check_callable)
    concurrency: int = attrs.field(default=1, validator=_check_concurrency, kw_only=True)
    split: bool = attrs.field(default=False, kw_only=True)
    filter: bool = attrs.field(default=False, kw_only=True)
    retry: RetryPolicy | None = attrs.field(default=None, kw_only=True)
    on_error: Literal["fail", "skip"] = attrs.field(default="fail", validator=_check_on_error, kw_only=True)
    in_thread: bool = attrs.field(default=False, kw_only=True)
    name: str = attrs.field(default="", kw_only=True)

    if TYPE_CHECKING:
        # The constructor's types, one signature per kind of `fn` in the
        # order `_call` tells them apart (an agent, an awaitable, a value),
        # then the same with `split`, then `filter`. pyright picks the first
        # signature that a `fn` returning Any (a lambda's, often) matches,
        # so the first one must map Any to Any: hence no signature for a
        # Pipeline without `split` (first, it would give list[Any]; after
        # the agent one, it would never be picked). Such a `fn` is an agent
        # whose output is `list[Out] | None`.
        #
        # They are declared on __new__ rather than on __init__ overloads
        # annotating `self`: from those, pyright types a lambda's parameter
        # as the unsolved InT and lets it leak into the stage (then into the
        # pipeline, as Unknown), where __new__ gives it InT's default, Any.
        # At run time there is no __new__: __init__ below hands the
        # arguments to attrs.
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], Agent[OutT]],
            *,
            split: Literal[False] = False,
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], Awaitable[OutT]],
            *,
            split: Literal[False] = False,
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], OutT],
            *,
            split: Literal[False] = False,
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], Pipeline[Any, OutT]],
            *,
            split: Literal[True],
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], Agent[Iterable[OutT]]],
            *,
            split: Literal[True],
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], Agent[AsyncIterable[OutT]]],
            *,
            split: Literal[True],
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], Awaitable[Iterable[OutT]]],
            *,
            split: Literal[True],
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], Awaitable[AsyncIterable[OutT]]],
            *,
            split: Literal[True],
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], AsyncIterable[OutT]],
            *,
            split: Literal[True],
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], Iterable[OutT]],
            *,
            split: Literal[True],
            filter: Literal[False] = False,
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, OutT]: ...
        @overload
        def __new__(
            cls,
            fn: Callable[[InT], object],
            *,
            split: Literal[False] = False,
            filter: Literal[True],
            concurrency: int = 1,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[InT, InT]: ...
        def __new__(
            cls,
            fn: Callable[[Any], Any],
            *,
            concurrency: int = 1,
            split: bool = False,
            filter: bool = False,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> Stage[Any, Any]:
            return super().__new__(cls)

    else:

        def __init__(
            self,
            fn: Callable[[Any], Any],
            *,
            concurrency: int = 1,
            split: bool = False,
            filter: bool = False,
            retry: RetryPolicy | None = None,
            on_error: Literal["fail", "skip"] = "fail",
            in_thread: bool = False,
            name: str = "",
        ) -> None:
            # The type checkers do not read this branch: the annotations are
            # for run-time introspection (the signature attrs would make).
            # attrs' own __init__ (init=False keeps its name free) sets the
            # fields, runs their validators, then __attrs_post_init__.
            self.__attrs_init__(
                fn,
                concurrency=concurrency,
                split=split,
                filter=filter,
                retry=retry,
                on_error=on_error,
                in_thread=in_thread,
                name=name,
            )

    def __attrs_post_init__(self) -> None:
        if self.split and self.filter:
            raise ValueError("a stage either splits or filters, not both")
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"retry needs a hybrid.RetryPolicy, got {self.retry!r}")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.fn, "__qualname__", None) or repr(self.fn))

    async def _call(self, item: In_contra) -> list[Any]:
        """Process one item once: the list of its outputs."""
        fn = self.fn
        if self.in_thread:
            result = await trio.to_thread.run_sync(fn, item)
        else:
            result = fn(item)
        if isinstance(result, Agent):
            agent: Agent[Any] = result  # pyright: ignore[reportUnknownVariableType]
            runner = AgentRunner(agent)
            reason = await runner.run()
            if reason.error is not None:
                raise reason.error
            if not reason.done:
                raise AgentStopped(f"stage {self.name}: {type(agent).__qualname__} ended {reason} without an output")
            result = runner.output
        elif inspect.isawaitable(result):
            result = await result
        if self.filter:
            return [item] if result else []
        if self.split:
            if isinstance(result, AsyncIterable):
                return [output async for output in result]  # pyright: ignore[reportUnknownVariableType]
            if not isinstance(result, Iterable):
                raise TypeError(f"stage {self.name} splits its output, but returned {result!r}, not an iterable")
            return list(result)  # pyright: ignore[reportUnknownArgumentType]
        return [result]


@attrs.frozen
class SkippedItem:
    """An item that a stage with ``on_error="skip"`` dropped.

    Attributes:
        stage: the stage's name.
        item: the input item that failed.
        error: why (the last error, after any retries).
    """

    stage: str
    item: object
    error: BaseException


@attrs.frozen
class StageStatistics:
    """A snapshot of one stage, from [`Pipeline.statistics()`][hybrid.Pipeline.statistics].

    Attributes:
        name: the stage's name.
        items_in: items taken from the input buffer.
        items_out: items sent on (after split and filter).
        failed: items whose processing raised (each try counts).
        skipped: items dropped by ``on_error="skip"``.
        in_flight: items being processed, or processed and waiting to be sent on.
        buffer_depth: items waiting in the stage's input buffer.
        buffer_size: the bound of that buffer.
        latency_mean: mean processing time of one item, in seconds (0 before any).
        latency_max: the longest processing time seen, in seconds.
    """

    name: str
    items_in: int
    items_out: int
    failed: int
    skipped: int
    in_flight: int
    buffer_depth: int
    buffer_size: float
    latency_mean: float
    latency_max: float


# The project's fairness rule (API.md, "Fairness"; ``hybrid._runtime.FAIRNESS``,
# which this module, built on public names only, does not import): a loop that
# takes or sends items without a schedule point yields at least every 64 of them.
_FAIRNESS: Final = 64

# Markers, never items: the end of a buffer's input; "no item (yet)"; and,
# handed to a worker waiting for its turn, "the items ahead went on, but the
# next buffer is full: send your outputs on yourself".
_END: Any = object()
_EMPTY: Any = object()
_TURN: Any = object()


@final
class _Waiter:
    """A task of a pipeline (a worker, the feeder, the sink), as it parks; one per task, reused.

    A task parks in one of three places: a buffer's `getters` (waiting for
    an item), its `putters` (waiting for room, with the item it still
    owns), or, for a worker of an ordered stage, the stage's `turns`
    (waiting for the items ahead of its own to go on, its outputs ready).

    Fields (written by the task itself before it parks, then by the task
    that wakes it, all in the trio thread):
        task: the task.
        queue: the getters or putters queue it waits in; None otherwise
            (waiting for its turn, or not parked). The task that wakes it
            pops it from there; a cancellation removes it.
        turns: for a worker of an ordered stage, the stage's map of workers
            waiting for their turn, by sequence; None otherwise.
        item: a putter's item, until it is in the buffer. For a woken
            getter, the item handed to it (or `_END`); for a worker woken
            from its turn, `_EMPTY` (its outputs went on: take an item) or
            `_TURN` (the next buffer is full: send the outputs on yourself).
        sequence: a woken getter's item's place in input order; waiting for
            its turn, that of the item whose outputs it holds.
        outputs: waiting for its turn, the outputs of its item.
    """

    __slots__ = ("item", "outputs", "queue", "sequence", "task", "turns")

    def __init__(self, turns: dict[int, _Waiter] | None = None) -> None:
        self.task = current_task()
        self.queue: deque[_Waiter] | None = None
        self.turns = turns
        self.item: Any = None
        self.sequence = 0
        self.outputs: list[Any] = []

    def abort(self, raise_cancel: Any) -> Abort:
        # Only a task still parked can be cancelled: one that was woken was
        # rescheduled, and trio no longer aborts it.
        queue = self.queue
        if queue is not None:
            # A putter takes its item away with it; the item stays counted
            # in flight by its stage (or is reported, for a fed item).
            queue.remove(self)
            self.queue = None
        else:
            # Waiting for its turn (whoever ends that wait takes it out of
            # `turns` first): its outputs are dropped with the item, which
            # stays counted in flight.
            assert self.turns is not None
            del self.turns[self.sequence]
        return Abort.SUCCEEDED


@final
class _Buffer:
    """A bounded FIFO between two stages (or between the source and the first one).

    Unlike a trio memory channel, taking an item that is there, or putting
    one where there is room, is not a schedule point: a stage runs through
    what is buffered in one scheduling turn, and its loops yield every
    `_FAIRNESS` items instead (the same rule as an agent's message loop).
    Only a taker facing an empty buffer, or a putter facing a full one,
    parks, cancellably.

    Invariants: getters wait only while `items` is empty and putters only
    while it is full, so at most one of the two queues is non-empty; every
    item is in `items`, or held by exactly one task (a parked putter, or the
    taker it was handed to). Items are taken in the order they were put,
    and the count of items taken so far is the next one's place in input
    order (its sequence), which ordered stages use to send outputs on in
    order. An item handed to a parked getter is numbered when it is handed
    over, not when the getter runs: getters woken together run in no
    particular order.

    Fields (written only from the trio thread, by the tasks on either side):
        items: the buffered items, at most `capacity`.
        capacity: the bound (the pipeline's `buffer`).
        taken: items taken so far, handed-over ones included.
        closed: no more puts (the end of input); takers get `_END` once
            `items` is empty.
        getters, putters: the parked tasks, in arrival order.
    """

    __slots__ = ("capacity", "closed", "getters", "items", "putters", "taken")

    def __init__(self, capacity: int) -> None:
        self.items: deque[Any] = deque()
        self.capacity = capacity
        self.taken = 0
        self.closed = False
        self.getters: deque[_Waiter] = deque()
        self.putters: deque[_Waiter] = deque()

    def put_nowait(self, item: Any) -> bool:
        """Put `item` (to a parked getter first); False, with nothing done, if the buffer is full."""
        if self.getters:
            getter = self.getters.popleft()
            getter.queue = None
            getter.item = item
            getter.sequence = self.taken
            self.taken += 1
            reschedule(getter.task)
            return True
        if len(self.items) < self.capacity:
            self.items.append(item)
            return True
        return False

    async def put(self, waiter: _Waiter, item: Any) -> None:
        """Park until `item` is in the buffer (after `put_nowait` found it full)."""
        waiter.item = item
        waiter.queue = self.putters
        self.putters.append(waiter)
        await wait_task_rescheduled(waiter.abort)

    def get_nowait(self) -> Any:
        """The next item; `_END` if the buffer is closed and empty; `_EMPTY` if none is there yet."""
        items = self.items
        if items:
            item = items.popleft()
            self.taken += 1
            if self.putters:
                self.admit()
            return item
        return _END if self.closed else _EMPTY

    async def get(self, waiter: _Waiter) -> None:
        """Park until an item comes (after `get_nowait` found none); it is then in `waiter.item`."""
        waiter.queue = self.getters
        self.getters.append(waiter)
        await wait_task_rescheduled(waiter.abort)

    def admit(self) -> None:
        """A taker made room: the first parked putter's item goes in, and the putter goes on."""
        putter = self.putters.popleft()
        putter.queue = None
        self.items.append(putter.item)
        reschedule(putter.task)

    def release(self, waiter: _Waiter) -> None:
        """Let a worker parked for its turn go on: to take an item when it runs, or to wait for one parked."""
        if self.items or self.closed:
            # It takes its item itself when it runs: items are numbered in
            # the order processing starts, which keeps ordered stages in order.
            waiter.item = _EMPTY
            reschedule(waiter.task)
        else:  # nothing for it yet: it waits for an item instead, without waking up in between
            waiter.queue = self.getters
            self.getters.append(waiter)

    def close(self) -> None:
        """No more input: the parked getters (only there while the buffer is empty) get `_END`."""
        self.closed = True
        while self.getters:
            getter = self.getters.popleft()
            getter.queue = None
            getter.item = _END
            reschedule(getter.task)


@final
class _Results:
    """The last stage's outlet when the pipeline collects its results: `Pipeline.results` itself."""

    __slots__ = ("done", "results")

    def __init__(self, results: list[Any], done: trio.Event) -> None:
        self.results = results
        self.done = done

    def put_nowait(self, item: Any) -> bool:
        self.results.append(item)
        return True

    async def put(self, waiter: _Waiter, item: Any) -> None:  # pragma: no cover - put_nowait always has room
        self.results.append(item)

    def close(self) -> None:
        self.done.set()


class _Outlet(Protocol):
    """Where a stage sends its outputs: the next stage's `_Buffer`, or `_Results`."""

    def put_nowait(self, item: Any) -> bool: ...
    async def put(self, waiter: _Waiter, item: Any) -> None: ...
    def close(self) -> None: ...


@final
class _StageRun:
    """One stage's machinery and counters in a pipeline (the `StageStatistics` are read from it).

    Fields (written by the stage's workers, read by `Pipeline.statistics`):
        stage: the stage.
        input: its input buffer; ``input.taken`` is the items taken (items_in).
        output: where its outputs go, set when the pipeline starts.
        fast: `fn` is an ``async def`` called as is (no agent, split,
            filter, thread or retry): one output per item, no list.
        in_order: outputs go on in input order while several items are in
            flight (an ordered pipeline, concurrency above 1).
        done: items whose outputs all went on (or that had none); the items
            in flight are ``input.taken - done``.
        items_out, failed, skipped: as in `StageStatistics`.
        finished, latency_total, latency_max: items processed (outputs
            ready; failed ones excepted) and their processing times.
        next_emit: (in order) the sequence of the next item to send on.
        turns: (in order) workers parked with their outputs ready, waiting
            for the items ahead to go on, by sequence.
        workers: workers still running; the last one out closes `output`.
    """

    __slots__ = (
        "done",
        "failed",
        "fast",
        "finished",
        "in_order",
        "input",
        "items_out",
        "latency_max",
        "latency_total",
        "next_emit",
        "output",
        "skipped",
        "stage",
        "turns",
        "workers",
    )

    def __init__(self, stage: Stage[Any, Any], buffer: int, ordered: bool) -> None:
        self.stage = stage
        self.input = _Buffer(buffer)
        self.output: _Outlet | None = None
        self.fast = (
            stage.retry is None
            and not (stage.split or stage.filter or stage.in_thread)
            and inspect.iscoroutinefunction(stage.fn)
        )
        self.in_order = ordered and stage.concurrency > 1
        self.done = 0
        self.items_out = 0
        self.failed = 0
        self.skipped = 0
        self.finished = 0
        self.latency_total = 0.0
        self.latency_max = 0.0
        self.next_emit = 0
        self.turns: dict[int, _Waiter] = {}
        self.workers = 0


@final
class _ItemOf:
    """What a retry log line names: formatted only if a line is written."""

    __slots__ = ("item", "stage")

    def __init__(self, stage: str, item: object) -> None:
        self.stage = stage
        self.item = item

    def __str__(self) -> str:
        return f"stage {self.stage} on {self.item!r}"


async def _sleep(delay: float) -> bool:
    await trio.sleep(delay)
    return True


class Pipeline(Agent[list[Out] | None], Generic[In, Out]):
    """Stages composed into one agent: each stage's outputs are the next stage's inputs.

    Run it as any agent: ``await Pipeline(...stages, source=items).run()``
    returns the list of the last stage's outputs (in input order when
    `ordered`). To stream results, or to feed items one by one, use
    [`open_pipeline`][hybrid.open_pipeline]. A pipeline is an agent, so it can
    be a supervisor's child, or the agent a stage of another pipeline makes.

    Buffers between stages hold at most `buffer` items: a slow stage slows
    the ones before it, down to the source, instead of growing memory.

    Interrupting a pipeline stops it from taking new input; the items already
    in it finish (or fail, by their stages' policies). A second interrupt
    cancels them: they are counted as in flight in `statistics()` at the end.
    As with any agent, an interrupted pipeline's output is None (the results
    are in `results` when they were collected).

    A ``Pipeline[In, Out]`` takes `In` items (from `source`, or fed) and its
    last stage outputs `Out` items: it is an ``Agent[list[Out] | None]``.
    The type checkers chain up to six stages: each stage's input type must
    accept the previous stage's output type, and the first one the items
    of `source`; a mismatch is a type error. What they do not check:

    - a pipeline of seven stages or more: the chain is not checked, and it
      is a ``Pipeline[In, Any]`` (`In` from the first stage).
    - stages whose types are `Any` (lambda stages, see `Stage`): any item
      goes in or out of them.

    Args:
        *stages: the stages, in order (at least one).
        source: the input items (an iterable or an async iterable); None to
            feed them through `open_pipeline` instead.
        buffer: the bound of each buffer between stages (>= 1).
        ordered: outputs in input order (True), or as they finish (False).

    Attributes:
        results: the outputs collected so far (not when streaming).
        skipped: the items dropped by ``on_error="skip"`` stages (the last 1,000).

    Example:
        ```python
        pipeline = Pipeline(Stage(fetch, concurrency=8), Stage(parse), source=urls)
        pages = await pipeline.run()
        ```
    """

    # One signature per length of the chain; past six stages, an unchecked one.
    @overload
    def __init__(
        self: Pipeline[S1, S2],
        s1: Stage[S1, S2],
        /,
        *,
        source: Iterable[S1] | AsyncIterable[S1] | None = None,
        buffer: int = 16,
        ordered: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Pipeline[S1, S3],
        s1: Stage[S1, S2],
        s2: Stage[S2, S3],
        /,
        *,
        source: Iterable[S1] | AsyncIterable[S1] | None = None,
        buffer: int = 16,
        ordered: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Pipeline[S1, S4],
        s1: Stage[S1, S2],
        s2: Stage[S2, S3],
        s3: Stage[S3, S4],
        /,
        *,
        source: Iterable[S1] | AsyncIterable[S1] | None = None,
        buffer: int = 16,
        ordered: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Pipeline[S1, S5],
        s1: Stage[S1, S2],
        s2: Stage[S2, S3],
        s3: Stage[S3, S4],
        s4: Stage[S4, S5],
        /,
        *,
        source: Iterable[S1] | AsyncIterable[S1] | None = None,
        buffer: int = 16,
        ordered: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Pipeline[S1, S6],
        s1: Stage[S1, S2],
        s2: Stage[S2, S3],
        s3: Stage[S3, S4],
        s4: Stage[S4, S5],
        s5: Stage[S5, S6],
        /,
        *,
        source: Iterable[S1] | AsyncIterable[S1] | None = None,
        buffer: int = 16,
        ordered: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Pipeline[S1, S7],
        s1: Stage[S1, S2],
        s2: Stage[S2, S3],
        s3: Stage[S3, S4],
        s4: Stage[S4, S5],
        s5: Stage[S5, S6],
        s6: Stage[S6, S7],
        /,
        *,
        source: Iterable[S1] | AsyncIterable[S1] | None = None,
        buffer: int = 16,
        ordered: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Pipeline[S1, Any],
        s1: Stage[S1, Any],
        s2: Stage[Any, Any],
        s3: Stage[Any, Any],
        s4: Stage[Any, Any],
        s5: Stage[Any, Any],
        s6: Stage[Any, Any],
        s7: Stage[Any, Any],
        /,
        *stages: Stage[Any, Any],
        source: Iterable[S1] | AsyncIterable[S1] | None = None,
        buffer: int = 16,
        ordered: bool = True,
    ) -> None: ...
    def __init__(
        self,
        *stages: Stage[Any, Any],
        source: Iterable[Any] | AsyncIterable[Any] | None = None,
        buffer: int = 16,
        ordered: bool = True,
    ) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        for stage in stages:
            if not isinstance(stage, Stage):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(f"pipeline stages are hybrid.Stage objects, got {stage!r}")
        if source is not None and not isinstance(source, (Iterable, AsyncIterable)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"source must be an iterable or an async iterable, got {source!r}")
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"buffer must be an int >= 1, got {buffer!r}")
        self.stages = stages
        self.source: Iterable[In] | AsyncIterable[In] | None = source
        self.buffer = buffer
        self.ordered = ordered
        self.results: list[Out] = []
        self.skipped: deque[SkippedItem] = deque(maxlen=1000)
        self._runs = [_StageRun(stage, buffer, ordered) for stage in stages]
        # Set by open_pipeline: items fed by the caller, results streamed to it.
        self._input: trio.MemoryReceiveChannel[In] | None = None
        self._feed: trio.MemorySendChannel[In] | None = None
        self._output: trio.MemorySendChannel[Out] | None = None
        self._failure: BaseException | None = None
        self._feeder = trio.CancelScope()
        self._scope = trio.CancelScope()
        self._all_stages_done = trio.Event()

    def begin(self) -> Next[Self]:
        """The pipeline's one state: run every stage until the input is through."""
        return Next.do_async(self._process)

    def statistics(self) -> tuple[StageStatistics, ...]:
        """A snapshot of every stage, in order."""
        snapshot: list[StageStatistics] = []
        for run in self._runs:
            taken = run.input.taken
            snapshot.append(
                StageStatistics(
                    name=run.stage.name,
                    items_in=taken,
                    items_out=run.items_out,
                    failed=run.failed,
                    skipped=run.skipped,
                    in_flight=taken - run.done,
                    buffer_depth=len(run.input.items),
                    buffer_size=self.buffer,
                    latency_mean=run.latency_total / run.finished if run.finished else 0.0,
                    latency_max=run.latency_max,
                )
            )
        return tuple(snapshot)

    async def _process(self) -> Next[Self]:
        runs = self._runs
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            # The last stage appends to `results`, or hands its outputs to a
            # sink task that streams them to open_pipeline's consumer.
            last: _Outlet
            if self._output is None:
                last = _Results(self.results, self._all_stages_done)
            else:
                sink = _Buffer(self.buffer)
                nursery.start_soon(self._sink, sink, self._output)
                last = sink
            for run, after in zip(runs, [*runs[1:], None], strict=True):
                run.output = last if after is None else after.input
            # One feeder task brings the items in, from the source or from
            # what open_pipeline's caller feeds; each stage runs `concurrency`
            # workers, each taking an item, processing it and sending its
            # outputs on.
            nursery.start_soon(self._feed_source, runs[0].input)
            for run in runs:
                run.workers = run.stage.concurrency
                for _ in range(run.stage.concurrency):
                    nursery.start_soon(self._work, run)
            nursery.start_soon(self._stop_taking_input_when_interrupted)
            await self._all_stages_done.wait()
            nursery.cancel_scope.cancel()  # the interrupt watcher
        if self._failure is not None:
            raise self._failure
        return Next.done(None if self._output is not None else self.results)

    async def _stop_taking_input_when_interrupted(self) -> None:
        await self.ctx.wait_interrupted()
        # Close the input, not the first buffer: the items already buffered
        # still go through, and the stages end one after the other. Items fed
        # through open_pipeline were accepted: the feeder still hands on the
        # one it holds; feed() calls still waiting raise AgentStopped.
        if self._feed is not None:
            self._feed.close()
        else:
            self._feeder.cancel()

    async def _feed_source(self, first: _Buffer) -> None:
        waiter = _Waiter()
        held: Any = _END
        try:
            with self._feeder:
                source = self.source if self._input is None else self._input
                if source is None:
                    return
                steps = 0
                if isinstance(source, AsyncIterable):
                    async for item in source:
                        held = item
                        if not first.put_nowait(item):
                            await first.put(waiter, item)
                        held = _END
                        steps += 1
                        if steps >= _FAIRNESS:
                            steps = 0
                            await checkpoint()
                else:
                    feeder = self._feeder
                    for item in source:
                        if feeder.cancel_called:  # interrupted: a sync source is not read further
                            break
                        held = item
                        if not first.put_nowait(item):
                            await first.put(waiter, item)
                        held = _END
                        steps += 1
                        if steps >= _FAIRNESS:
                            steps = 0
                            await checkpoint()
        finally:
            first.close()
            if held is not _END and self._input is not None:
                # A fed item that never entered the first stage (the
                # pipeline was cancelled or failed): reported, not lost.
                error = AgentStopped("the pipeline ended before this fed item entered it")
                self.skipped.append(SkippedItem("<input>", held, error))
                logger.warning("pipeline ended before the fed item %r entered it", held)

    async def _sink(self, last: _Buffer, output: trio.MemorySendChannel[Any]) -> None:
        waiter = _Waiter()
        steps = 0
        try:
            while True:
                item = last.get_nowait()
                if item is _EMPTY:
                    await last.get(waiter)
                    item = waiter.item
                if item is _END:
                    break
                try:
                    output.send_nowait(item)
                except trio.WouldBlock:
                    await output.send(item)
                steps += 1
                if steps >= _FAIRNESS:
                    steps = 0
                    # Not a cancel point: when the pipeline fails, what the
                    # last stage sent on before still reaches the consumer, as
                    # far as the results buffer has room.
                    await cancel_shielded_checkpoint()
        except trio.BrokenResourceError:
            # The consumer of open_pipeline left: nobody wants more results.
            self._scope.cancel()
        finally:
            output.close()
            self._all_stages_done.set()

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        else:  # the pipeline already fails with the first error: this one is logged
            logger.error("another stage failed while the pipeline was failing", exc_info=error)
        self._scope.cancel()

    async def _work(self, run: _StageRun) -> None:
        """One worker of a stage: take an item, process it, send its outputs on; until the input ends.

        Taking a buffered item and sending into a buffer with room are not
        schedule points: the loop yields every `_FAIRNESS` items instead
        (parking counts as yielding). The clock is read once per item: the
        end of one item's processing is the start of the next, unless the
        worker waited in between.
        """
        source = run.input
        items = source.items
        fn = run.stage.fn
        fast = run.fast
        turns = run.turns if run.in_order else None
        waiter = _Waiter(turns)
        now = current_clock().current_time
        output: Any = None
        outputs: list[Any] | None = None
        item: Any = _EMPTY
        sequence = 0
        steps = 0
        mark = now()
        while True:
            if item is _EMPTY:
                if items:
                    item = items.popleft()
                    sequence = source.taken
                    source.taken = sequence + 1
                    if source.putters:
                        source.admit()
                elif source.closed:
                    break
                else:
                    await source.get(waiter)
                    item = waiter.item
                    sequence = waiter.sequence
                    steps = 0
                    mark = now()
            if item is _END:
                break
            if fast:
                try:
                    output = await fn(item)
                except Exception as error:
                    run.failed += 1
                    outputs = self._item_failed(run, item, error)
                    if outputs is None:
                        return
                else:
                    outputs = None  # one output, in `output`
            else:
                outputs = await self._attempt(run, item)
                if outputs is None:
                    return
            end = now()
            elapsed = end - mark
            mark = end
            run.finished += 1
            run.latency_total += elapsed
            run.latency_max = max(run.latency_max, elapsed)
            item = _EMPTY
            if turns is not None and sequence != run.next_emit:
                # Items ahead are still in flight: park, holding the slot,
                # until the worker that sends them on sends these outputs on
                # too and hands this one its next item (or the end); or, if
                # the next buffer is full, hands it its turn to send them.
                waiter.outputs = [output] if outputs is None else outputs
                waiter.sequence = sequence
                turns[sequence] = waiter
                await wait_task_rescheduled(waiter.abort)
                steps = 0
                mark = now()
                if waiter.item is not _TURN:
                    item = waiter.item
                    sequence = waiter.sequence
                    continue
                outputs = waiter.outputs
            out = run.output
            assert out is not None
            if outputs is None:
                if not out.put_nowait(output):
                    await out.put(waiter, output)
                    steps = 0
                    mark = now()
                run.items_out += 1
            elif outputs:
                await self._send_on(out, waiter, outputs)
                run.items_out += len(outputs)
                mark = now()
            run.done += 1
            if turns is not None:
                run.next_emit = sequence + 1
                if turns:
                    self._send_on_in_turn(run, out)
            steps += 1
            if steps >= _FAIRNESS:
                steps = 0
                await checkpoint()
                mark = now()
        run.workers -= 1
        if run.workers == 0:  # the last one out: every output of this stage went on
            assert run.output is not None
            run.output.close()

    async def _attempt(self, run: _StageRun, item: object) -> list[Any] | None:
        """The outputs of one item, after retries and the error policy; None if the pipeline failed."""
        stage = run.stage
        policy = stage.retry
        try:
            if policy is None:  # without the retry loop's frames
                try:
                    return await stage._call(item)  # noqa: SLF001 - the stage is this module's
                except Exception:
                    run.failed += 1
                    raise

            def failed(error: Exception) -> None:
                run.failed += 1

            return await retrying(
                lambda: stage._call(item),  # noqa: SLF001
                policy,
                what=_ItemOf(stage.name, item),
                logger=logger,
                wait=_sleep,
                failed=failed,
            )
        except Exception as error:
            return self._item_failed(run, item, error)

    def _item_failed(self, run: _StageRun, item: object, error: Exception) -> list[Any] | None:
        """Apply the stage's error policy: the item's outputs (none) when skipped; None when the pipeline fails."""
        stage = run.stage
        if stage.on_error == "fail":
            self._fail(error)
            return None
        run.skipped += 1
        self.skipped.append(SkippedItem(stage.name, item, error))
        logger.warning("stage %s skipped %r: %r", stage.name, item, error)
        return []

    @staticmethod
    async def _send_on(out: _Outlet, waiter: _Waiter, outputs: list[Any]) -> None:
        for output in outputs:
            if not out.put_nowait(output):
                await out.put(waiter, output)

    @staticmethod
    def _send_on_in_turn(run: _StageRun, out: _Outlet) -> None:
        """Send on the outputs of the workers waiting next in line, while there is room, and release them."""
        turns = run.turns
        while (turn := turns.pop(run.next_emit, None)) is not None:
            outputs = turn.outputs
            sent = 0
            for output in outputs:
                if not out.put_nowait(output):
                    break
                sent += 1
            run.items_out += sent
            if sent < len(outputs):
                # The next buffer is full: the worker of these outputs sends
                # the rest on itself (a worker only ever parks with its own
                # item), and takes the turn on from there.
                del outputs[:sent]
                turn.item = _TURN
                reschedule(turn.task)
                return
            run.done += 1
            run.next_emit += 1
            turn.outputs = []
            run.input.release(turn)


@final
class PipelineRun(Generic[In, Out]):
    """A running pipeline from [`open_pipeline`][hybrid.open_pipeline]: feed it, iterate its results.

    ``async for result in run`` yields the last stage's outputs as they come
    (in input order when the pipeline is `ordered`); the iteration ends when
    the pipeline has finished. A ``PipelineRun[In, Out]`` is fed `In` items
    and yields `Out` items, the types of its pipeline's first and last stages.
    """

    __slots__ = ("_feed", "_pipeline", "_results", "address")

    def __init__(
        self,
        pipeline: Pipeline[In, Out],
        address: Address[Pipeline[In, Out]],
        feed: trio.MemorySendChannel[In] | None,
        results: trio.MemoryReceiveChannel[Out],
    ) -> None:
        self._pipeline = pipeline
        self.address: Address[Pipeline[In, Out]] = address
        """The running pipeline's address (interrupt it, join it, read its statistics)."""
        self._feed = feed
        self._results = results

    async def feed(self, item: In) -> None:
        """Send `item` into the pipeline, waiting for room in its first buffer.

        Raises:
            AgentStopped: the pipeline takes no more input (closed, interrupted or ended).
            LifecycleError: the pipeline was opened with a `source`.
        """
        if self._feed is None:
            raise LifecycleError("this pipeline reads its own source; it cannot be fed")
        if self._pipeline.ctx.interrupted:  # before its watcher task has closed the input
            raise AgentStopped(f"the pipeline takes no more input; {item!r} was not fed")
        try:
            await self._feed.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise AgentStopped(f"the pipeline takes no more input; {item!r} was not fed") from None

    def close(self) -> None:
        """No more input: the pipeline finishes once the items in it are through. Idempotent."""
        if self._feed is not None:
            self._feed.close()

    def statistics(self) -> tuple[StageStatistics, ...]:
        """A snapshot of every stage (see `Pipeline.statistics`)."""
        return self._pipeline.statistics()

    @property
    def skipped(self) -> deque[SkippedItem]:
        """The items dropped by ``on_error="skip"`` stages (the last 1,000)."""
        return self._pipeline.skipped

    def __aiter__(self) -> AsyncIterator[Out]:
        return self._results.__aiter__()


@overload
def open_pipeline(
    s1: Stage[S1, S2],
    /,
    *,
    source: Iterable[S1] | AsyncIterable[S1] | None = None,
    buffer: int = 16,
    ordered: bool = True,
) -> AbstractAsyncContextManager[PipelineRun[S1, S2]]: ...


@overload
def open_pipeline(
    s1: Stage[S1, S2],
    s2: Stage[S2, S3],
    /,
    *,
    source: Iterable[S1] | AsyncIterable[S1] | None = None,
    buffer: int = 16,
    ordered: bool = True,
) -> AbstractAsyncContextManager[PipelineRun[S1, S3]]: ...


@overload
def open_pipeline(
    s1: Stage[S1, S2],
    s2: Stage[S2, S3],
    s3: Stage[S3, S4],
    /,
    *,
    source: Iterable[S1] | AsyncIterable[S1] | None = None,
    buffer: int = 16,
    ordered: bool = True,
) -> AbstractAsyncContextManager[PipelineRun[S1, S4]]: ...


@overload
def open_pipeline(
    s1: Stage[S1, S2],
    s2: Stage[S2, S3],
    s3: Stage[S3, S4],
    s4: Stage[S4, S5],
    /,
    *,
    source: Iterable[S1] | AsyncIterable[S1] | None = None,
    buffer: int = 16,
    ordered: bool = True,
) -> AbstractAsyncContextManager[PipelineRun[S1, S5]]: ...


@overload
def open_pipeline(
    s1: Stage[S1, S2],
    s2: Stage[S2, S3],
    s3: Stage[S3, S4],
    s4: Stage[S4, S5],
    s5: Stage[S5, S6],
    /,
    *,
    source: Iterable[S1] | AsyncIterable[S1] | None = None,
    buffer: int = 16,
    ordered: bool = True,
) -> AbstractAsyncContextManager[PipelineRun[S1, S6]]: ...


@overload
def open_pipeline(
    s1: Stage[S1, S2],
    s2: Stage[S2, S3],
    s3: Stage[S3, S4],
    s4: Stage[S4, S5],
    s5: Stage[S5, S6],
    s6: Stage[S6, S7],
    /,
    *,
    source: Iterable[S1] | AsyncIterable[S1] | None = None,
    buffer: int = 16,
    ordered: bool = True,
) -> AbstractAsyncContextManager[PipelineRun[S1, S7]]: ...


@overload
def open_pipeline(
    s1: Stage[S1, Any],
    s2: Stage[Any, Any],
    s3: Stage[Any, Any],
    s4: Stage[Any, Any],
    s5: Stage[Any, Any],
    s6: Stage[Any, Any],
    s7: Stage[Any, Any],
    /,
    *stages: Stage[Any, Any],
    source: Iterable[S1] | AsyncIterable[S1] | None = None,
    buffer: int = 16,
    ordered: bool = True,
) -> AbstractAsyncContextManager[PipelineRun[S1, Any]]: ...


@asynccontextmanager
async def open_pipeline(
    *stages: Stage[Any, Any],
    source: Iterable[Any] | AsyncIterable[Any] | None = None,
    buffer: int = 16,
    ordered: bool = True,
) -> AsyncGenerator[PipelineRun[Any, Any]]:
    """Run a pipeline for the duration of an ``async with`` block; stream its results.

    Without a `source`, feed items with ``await run.feed(item)`` and call
    ``run.close()`` when there are no more. Results arrive through
    ``async for result in run``, through a buffer of `buffer` items: a
    consumer that lags slows the whole pipeline down (backpressure).

    Leaving the block stops the pipeline (cancelling what is still in it). If
    the pipeline fails, its error leaves the block, as a trio task's would
    (in an `ExceptionGroup`).

    The stages are typed as for [`Pipeline`][hybrid.Pipeline] (a chain of up
    to six is checked), and the run is a ``PipelineRun[In, Out]``: it is fed
    `In` items and yields `Out` items.

    Example:
        ```python
        async with hybrid.open_pipeline(Stage(fetch, concurrency=4), Stage(parse)) as run:
            async with trio.open_nursery() as nursery:

                async def feeder() -> None:
                    for url in urls:
                        await run.feed(url)
                    run.close()

                nursery.start_soon(feeder)
                async for page in run:
                    print(page)
        ```
    """
    pipeline: Pipeline[Any, Any] = Pipeline(*stages, source=source, buffer=buffer, ordered=ordered)
    feed: trio.MemorySendChannel[Any] | None = None
    if source is None:
        # Unbuffered: the pipeline's own first buffer holds what is fed.
        feed, pipeline._input = trio.open_memory_channel[Any](0)  # noqa: SLF001 - this module's pipeline
        pipeline._feed = feed  # noqa: SLF001
    output, results = trio.open_memory_channel[Any](buffer)
    pipeline._output = output  # noqa: SLF001
    async with trio.open_nursery() as nursery:
        address = spawn(nursery, pipeline)
        try:
            yield PipelineRun(pipeline, address, feed, results)
        finally:
            results.close()
            if feed is not None:
                feed.close()
            if not pipeline._all_stages_done.is_set():  # noqa: SLF001
                # Left before the end: stop what is still in the pipeline.
                address.interrupt()
                address.interrupt()


@asynccontextmanager
async def open_merge(*sources: AsyncIterable[T], buffer: int = 16) -> AsyncGenerator[AsyncIterator[T]]:
    """Merge several async iterables (pipelines' results, say) into one: a fan-in.

    Items arrive as they come from any source; the merged iteration ends when
    every source is exhausted. An error in a source leaves the block (in an
    `ExceptionGroup`), as a trio task's would. The merged items have the
    sources' item type (when the sources' types differ, mypy takes their
    common base class, pyright their union).

    Example:
        ```python
        async with hybrid.open_pipeline(Stage(fetch), source=news) as a, \\
                   hybrid.open_pipeline(Stage(fetch), source=blogs) as b, \\
                   hybrid.open_merge(a, b) as merged:
            async for page in merged:
                index(page)
        ```
    """
    send, receive = trio.open_memory_channel[T](buffer)

    async def forward(source: AsyncIterable[T], send: trio.MemorySendChannel[T]) -> None:
        async with send:
            async for item in source:
                await send.send(item)

    async with trio.open_nursery() as nursery:
        async with send:
            for source in sources:
                nursery.start_soon(forward, source, send.clone())
        try:
            yield receive.__aiter__()
        finally:
            nursery.cancel_scope.cancel()
