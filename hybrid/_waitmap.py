"""`WaitMap`: keyed wake-ups (tasks park on a key until someone wakes that key)."""

from __future__ import annotations

from typing import Any, Generic, final

import outcome
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled
from typing_extensions import TypeVar

K = TypeVar("K")
V = TypeVar("V")


@final
class WaitMap(Generic[K, V]):
    """Tasks park on a key until another task wakes that key with a value.

    The keyed wake-up of an agent OS kernel (Mayfly's wait map): a task
    waiting for "the reply to request 17" or "the lock on row 3" parks with
    ``await waits.wait(key)``; whoever produces that event calls
    ``waits.wake(key, value)``, and every task parked on that key resumes with
    `value`. ``waits.fail(key, error)`` resumes them with `error` raised.

    - A wake-up is not remembered: `wake` (or `fail`) on a key that nobody
      waits for does nothing and returns 0. To avoid missing an event, check
      the condition and park with no checkpoint in between (as a condition
      variable is used), or keep the value elsewhere too.
    - Waiters of one key are woken in the order they started waiting (FIFO):
      trio is told to resume them in that order. Trio then runs each batch of
      ready tasks in an order of its own (it varies it on purpose), so do not
      rely on the order in which woken waiters *run*.
    - A waiter cancelled while parked leaves the map at once; a key with no
      waiter left is removed, so the map never grows with keys nobody waits
      for.
    - Keys are any hashable values (`wait` raises `TypeError` for an
      unhashable key).
    - One trio run, from its own thread only: `wake` and `fail` are plain
      function calls (they never block and are not checkpoints); from another
      thread, use `trio.from_thread.run_sync(waits.wake, key, value)`.

    No trio primitive is made per key or per waiter: each parked task is one
    entry in a dict, resumed directly by trio's low-level scheduler.

    Example:
        ```python
        replies: hybrid.WaitMap[int, Reply] = hybrid.WaitMap()

        async def ask(request_id: int, message: bytes) -> Reply:
            await connection.send(request_id, message)
            return await replies.wait(request_id)

        async def read_loop() -> None:
            async for request_id, reply in connection:
                replies.wake(request_id, reply)
        ```
    """

    __slots__ = ("_waiters",)

    # For each key with at least one waiter, its parked tasks in the order
    # they parked (a dict as an ordered set: O(1) removal on cancellation).
    # A key is present iff its dict is not empty. Written by `wait` (park and
    # abort) and by `wake`/`fail`, all in the run's thread.
    _waiters: dict[K, dict[Task, None]]

    def __init__(self) -> None:
        self._waiters = {}

    def __repr__(self) -> str:
        waiting = sum(len(tasks) for tasks in self._waiters.values())
        return f"<hybrid.WaitMap: {waiting} task(s) waiting on {len(self._waiters)} key(s)>"

    async def wait(self, key: K) -> V:
        """Park until `key` is woken; return the value given to `wake`.

        A checkpoint: a cancelled waiter raises `trio.Cancelled` and is removed
        from the map.

        Raises:
            Exception: the error given to `fail` for this key.
            TypeError: `key` is not hashable.

        Example:
            ```python
            reply = await replies.wait(request_id)
            ```
        """
        task = current_task()
        tasks = self._waiters.get(key)
        if tasks is None:
            tasks = self._waiters[key] = {}
        tasks[task] = None

        def abort(_: Any) -> Abort:
            del tasks[task]
            if not tasks:
                del self._waiters[key]
            return Abort.SUCCEEDED

        value: V = await wait_task_rescheduled(abort)
        return value

    def wake(self, key: K, value: V) -> int:
        """Resume every task waiting on `key` with `value`; return how many.

        Returns 0 when nobody waits for `key`: the wake-up is not stored, a
        later `wait` does not see it. The woken tasks are rescheduled in the
        order they started waiting and run at trio's next scheduling turn.

        Example:
            ```python
            if replies.wake(request_id, reply) == 0:
                log.debug("nobody waits for the reply to %d any more", request_id)
            ```
        """
        tasks = self._waiters.pop(key, None)
        if tasks is None:
            return 0
        for task in tasks:
            reschedule(task, outcome.Value(value))
        return len(tasks)

    def fail(self, key: K, error: Exception) -> int:
        """Resume every task waiting on `key` with `error` raised in it; return how many.

        The same exception object is raised in each waiter. Returns 0 (and
        stores nothing) when nobody waits for `key`.

        Raises:
            TypeError: `error` is not an `Exception` (a `BaseException` such
                as `trio.Cancelled` cannot be sent this way).

        Example:
            ```python
            for request_id in pending:
                replies.fail(request_id, ConnectionError("connection lost"))
            ```
        """
        if not isinstance(error, Exception):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"fail takes an Exception to raise in the waiters, got {error!r}")
        tasks = self._waiters.pop(key, None)
        if tasks is None:
            return 0
        for task in tasks:
            reschedule(task, outcome.Error(error))
        return len(tasks)

    def waiting(self, key: K) -> int:
        """How many tasks wait on `key` now.

        Example:
            ```python
            assert replies.waiting(request_id) == 0
            ```
        """
        tasks = self._waiters.get(key)
        return 0 if tasks is None else len(tasks)

    def __len__(self) -> int:
        """The number of keys with at least one task waiting.

        Example:
            ```python
            assert len(hybrid.WaitMap()) == 0
            ```
        """
        return len(self._waiters)

    def __contains__(self, key: object) -> bool:
        """Whether at least one task waits on `key`.

        Example:
            ```python
            if request_id not in replies:
                log.debug("late reply to %d dropped", request_id)
            ```
        """
        return key in self._waiters
