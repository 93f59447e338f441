"""`quorum`: the first `need` results of several awaitables, the rest cancelled."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Iterable
from typing import Any, Generic, TypeVar, cast

import outcome
import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

from . import _validate
from ._exceptions import QuorumError
from ._mailbox import RequestCall, can_gather

T = TypeVar("T")


class _Tally(Generic[T]):
    """What the members of one `quorum` call have brought back so far.

    Written only by the member tasks of that call, all in its nursery (so in
    one trio thread, never concurrently); read by the call once the nursery
    has exited.
    """

    __slots__ = ("errors", "lost", "need", "results", "scope", "tolerated")

    def __init__(self, need: int, size: int, scope: trio.CancelScope) -> None:
        self.need = need
        # How many members may fail with `need` still reachable.
        self.tolerated = size - need
        # Every result, in completion order: the first `need` are the answer.
        self.results: list[T] = []
        # Every member's Exception, in the order they came back.
        self.errors: list[Exception] = []
        # The nursery's cancel scope: cancelled once the outcome is decided.
        self.scope = scope
        # True once too many members failed: the call raises QuorumError.
        self.lost = False

    async def run(self, awaitable: Awaitable[T]) -> None:
        """Await one member and record what it brings back (a BaseException propagates)."""
        try:
            value = await awaitable
        except Exception as error:
            self.errors.append(error)
            if not self.lost and len(self.results) < self.need and len(self.errors) > self.tolerated:
                self.lost = True
                self.scope.cancel()
        else:
            self.results.append(value)
            if len(self.results) == self.need and not self.lost:
                self.scope.cancel()


class _Gathered(Generic[T]):
    """A quorum of hybrid requests sent without a task each: their answers come here.

    `answered` runs in the answering agents' tasks (all on this trio thread);
    the caller parks until `decided`, then withdraws the requests still out.
    """

    __slots__ = ("decided", "errors", "lost", "need", "results", "task", "tolerated")

    def __init__(self, need: int, size: int, task: Task) -> None:
        self.need = need
        self.tolerated = size - need
        self.results: list[T] = []
        self.errors: list[Exception] = []
        self.task: Task | None = task
        """The parked caller, until it is woken (decided) or gives up (None)."""
        self.decided = False
        self.lost = False

    def answered(self, call: RequestCall[Any], result: outcome.Outcome[Any]) -> None:
        if self.decided:
            return  # came after the outcome: dropped, as a cancelled member's
        if isinstance(result, outcome.Value):
            value: T = cast("outcome.Value[T]", result).value
            self.results.append(value)
            if len(self.results) == self.need:
                self._decide()
        else:
            failed = cast("outcome.Error", result)
            error = cast("Exception", failed.error)  # a handler's Exception, or AgentStopped
            self.errors.append(error)
            if len(self.errors) > self.tolerated:
                self.lost = True
                self._decide()

    def _decide(self) -> None:
        self.decided = True
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task)


async def _gather(need: int, calls: list[RequestCall[T]]) -> _Gathered[T]:
    """Send every request now, park until `need` answers or too many failures, withdraw the rest."""
    await trio.lowlevel.checkpoint_if_cancelled()  # a caller already cancelled sends nothing
    gathered: _Gathered[T] = _Gathered(need, len(calls), current_task())
    for call in calls:
        sent = call._gather_into(gathered)  # noqa: SLF001 - checked by can_gather
        assert sent

    def abort(raise_cancel: Any) -> Abort:
        gathered.decided = True
        gathered.task = None
        for call in calls:
            call._withdraw()  # noqa: SLF001
        return Abort.SUCCEEDED

    await wait_task_rescheduled(abort)
    for call in calls:
        call._withdraw()  # noqa: SLF001 - the requests still out: never handled if queued, else dropped
    return gathered


async def quorum(need: int, awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all of `awaitables` at once; return the first `need` results, cancelling the rest.

    Each awaitable runs in a task of its own, in a nursery inside this call.
    As soon as `need` of them have returned, the call cancels the others,
    waits for them to unwind (as a nursery does), and returns the `need`
    results **in completion order** (the first to finish comes first; not
    the order of `awaitables`; members that finish in one scheduling turn come
    in the order trio ran them).

    A member that raises an `Exception` is tolerated while `need` results
    remain reachable; its error is then dropped (as are the errors of members
    that fail while being cancelled once the quorum is met). As soon as too
    many have failed for `need` to be reached (more than
    ``len(awaitables) - need``), the members still running are cancelled and,
    once they have unwound, [`QuorumError`][hybrid.QuorumError] is raised,
    never inside an `ExceptionGroup`. It carries every member error collected
    (``errors``, in the order they failed; also chained as an `ExceptionGroup`
    in ``__cause__`` so tracebacks show them) and the results that did arrive.

    A member that raises a `BaseException` that is not an `Exception` (a
    `KeyboardInterrupt`, say) cancels the others and propagates as it is; the
    caller's own cancellation propagates normally (`trio.Cancelled` is never
    caught). Members that are cancelled see `trio.Cancelled` at their next
    checkpoint; their ``finally`` blocks run before `quorum` returns.

    Anything awaitable works: coroutines, or hybrid requests,
    ``[address.request(Vote()) for address in nodes]``. When every member is
    a hybrid request (to agents of this trio run, with room for it), no task
    is started: the requests are queued at once, their answers counted as
    they come, and the caller parks once (about a third of the cost). The
    semantics are the same: once the outcome is decided, a request still
    queued is never handled and the answer of one being handled is dropped
    (its handler runs to its end, as for any caller that gave up); errors
    that come after the outcome are dropped too.

    Args:
        need: how many results are needed: an int, 1 to the number of
            awaitables.
        awaitables: the members, iterated once, at the call.

    Returns:
        The first `need` results, in completion order.

    Raises:
        QuorumError: too many members failed for `need` results to be reached.
        TypeError: `need` is not an int (a bool is not an int here), or a
            member is not awaitable (an async function not called, say).
        ValueError: `awaitables` is empty, or `need` is below 1 or above the
            number of awaitables. On these errors and the TypeErrors above,
            nothing is started: coroutine objects among `awaitables` are
            closed, so no "never awaited" warning fires; other awaitables are
            left as they are, never awaited (a hybrid request then warns that
            it was never sent).

    Example:
        ```python
        # A majority of five replicas must acknowledge the write.
        acks = await hybrid.quorum(3, [replica.request(Write(key, value)) for replica in replicas])
        ```
    """
    members = list(awaitables)
    try:
        if isinstance(need, bool) or not isinstance(need, int):  # pyright: ignore[reportUnnecessaryIsInstance]
            _validate.count("need", need, minimum=1)  # raises the TypeError, worded as everywhere
        if not members:
            raise ValueError("quorum needs at least one awaitable, got none")
        if not 1 <= need <= len(members):
            raise ValueError(f"need must be an int from 1 to {len(members)} (the number of awaitables), got {need}")
        for member in members:
            if not inspect.isawaitable(member):
                raise TypeError(f"quorum takes awaitables, got {member!r} (call the async function first)")
    except (TypeError, ValueError):
        for member in members:
            if inspect.iscoroutine(member):
                member.close()
        raise
    if can_gather(members):
        # Hybrid requests only: sent at once, their answers counted as they come, no task each.
        gathered = await _gather(need, cast("list[RequestCall[T]]", members))
        if gathered.lost:
            raise _quorum_error(need, len(members), gathered.results, gathered.errors)
        return gathered.results[:need]
    try:
        async with trio.open_nursery() as nursery:
            tally: _Tally[T] = _Tally(need, len(members), nursery.cancel_scope)
            for member in members:
                nursery.start_soon(tally.run, member)
    except BaseExceptionGroup as group:
        # A member raised a BaseException that is not an Exception (members
        # keep their Exceptions): hand it back bare, as one awaitable awaited
        # without a nursery would raise it. Anything else (Cancelled from the
        # caller's scope among it) propagates untouched.
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup | trio.Cancelled):
            raise group.exceptions[0] from None
        raise
    if tally.lost:
        raise _quorum_error(need, len(members), tally.results, tally.errors)
    return tally.results[:need]


def _quorum_error(need: int, size: int, results: list[Any], errors: list[Exception]) -> QuorumError:
    message = (
        f"quorum needs {need} of {size} results but {len(errors)} failed, so at most {size - len(errors)} can arrive"
    )
    failure = QuorumError(message, need=need, results=list(results), errors=list(errors))
    failure.__cause__ = ExceptionGroup("the failures of the quorum's members", errors)
    return failure
