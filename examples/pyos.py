"""A small operating system in the manner of David Beazley's PyOS: tasks yield system calls.

A task's program is a generator that yields system calls (``tid = yield GetId()``,
``item = yield WaitKey("item")``, a bare ``yield`` gives the CPU up) and gets each
call's result back as the value of the ``yield``. Each task runs as an agent (a
`Task`); each system call is a custom state kind, a performer: when the program
yields one, the task's agent enters ``Next.perform(call)``, and the call does its
work against the `Kernel` and returns the task's next transition, the continuation
``Next.do_async(task.step, result)`` that feeds the result back into the program.

The kernel has one CPU: it grants it to one task at a time, the ready task of the
highest priority first (first come, first served within a priority), and a task
keeps it for one step, from one ``yield`` to the next. Everything that parks a
task is a keyed wake-up in one `hybrid.WaitMap`: the CPU grant (key: the task),
the end of a sleep, a `WaitKey` (key: any value a `Signal` names) and the end of a
task (`WaitTask`). Killing a task interrupts its agent: its ``on_stop`` runs and
the tasks waiting for its end are woken.

Time is the kernel's clock, so the log is the same on every run: each step costs
one tick (1 ms); when every task waits, the kernel sleeps with `trio.sleep` until
the first sleeper is due (so under trio's `MockClock` a test runs it at once).
Trio runs the tasks it wakes together in an order of its own; the kernel does not
depend on it: it picks the next task only once every woken task is back in the
ready queue. The demo's clock reaches 34 ms; it takes a few ms of real time:

    python examples/pyos.py
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable, Generator, Hashable, Sequence
from typing import Any, final

import attrs
import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next

TICK = 0.001
"""The length of one tick of the kernel's clock, in seconds: one step of a task costs one tick."""


class State(enum.Enum):
    """Where a task is in its life: the one field of the process table that says it."""

    READY = "ready"
    """In the ready queue, waiting for the CPU."""
    RUNNING = "running"
    """Has the CPU (one task at most)."""
    WAITING = "waiting"
    """Parked on a key (`WaitKey`, `WaitTask`) until someone wakes it."""
    SLEEPING = "sleeping"
    """Parked until a tick of the kernel's clock (`Sleep`)."""
    DONE = "done"
    """Its program returned."""
    KILLED = "killed"
    """Another task (or the kernel) killed it."""
    CRASHED = "crashed"
    """Its program raised."""


ENDED = (State.DONE, State.KILLED, State.CRASHED)


@attrs.define
class Process:
    """One row of the kernel's process table.

    Written by the kernel and by the system calls of the running task (one at a
    time: the CPU is the lock), all in the trio thread.
    """

    tid: int
    name: str
    priority: int
    state: State
    started: int
    """The tick it was spawned at."""
    ended: int | None = None
    """The tick it ended at; None while it lives."""
    cpu: int = 0
    """How many steps (ticks of CPU) it has run."""
    result: object = None
    """DONE: what the program returned; CRASHED: its exception; KILLED: the id of the killer (0: the kernel)."""
    address: hybrid.Address[Task] | None = attrs.field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        """Whether it has not ended yet."""
        return self.state not in ENDED


# -- the keys of the kernel's wake-ups (apart from the keys programs choose) --


@attrs.frozen
class _Cpu:
    """Task `tid` gets the CPU."""

    tid: int


@attrs.frozen
class _Timer:
    """Task `tid`'s sleep is over."""

    tid: int


@attrs.frozen
class _Exited:
    """Task `tid` has ended (what `WaitTask` waits for)."""

    tid: int


@attrs.frozen
class _Settled:
    """No task runs or is on its way to park: the kernel may pick the next one."""


_SETTLED = _Settled()


# -- system calls ---------------------------------------------------------------


class SysCall:
    """A system call: what a program yields; a performer (``async perform(task) -> Next``).

    The task's agent runs ``perform`` as its state; the call works on the
    kernel, then returns ``Next.do_async(task.step, result)`` once the task has
    the CPU again (`Kernel.resume`), or parks the task first (`Kernel.block`).
    """

    async def perform(self, task: Task) -> Next[Task]:
        """Do the call's work for `task`; return its next transition."""
        raise NotImplementedError


Program = Generator[SysCall | None, Any, Any]
"""A task's program: yields system calls (or None, to give the CPU up), gets their results back, returns anything."""


def program_name(program: Program) -> str:
    """The name of the generator function that made `program`: the task's name."""
    name = getattr(program, "__name__", None)
    return name if isinstance(name, str) else type(program).__name__


@attrs.frozen
class Yield(SysCall):
    """Give the CPU up and go back to the ready queue (what a bare ``yield`` does)."""

    async def perform(self, task: Task) -> Next[Task]:
        task.kernel.trace(task, "yield: back to the ready queue")
        return await task.kernel.resume(task, None)


@attrs.frozen
class GetId(SysCall):
    """The task's own id."""

    async def perform(self, task: Task) -> Next[Task]:
        task.kernel.trace(task, f"GetId() -> {task.tid}")
        return await task.kernel.resume(task, task.tid)


@attrs.frozen
class Sleep(SysCall):
    """Sleep `seconds` on the kernel's clock (at least one tick)."""

    seconds: float

    async def perform(self, task: Task) -> Next[Task]:
        kernel = task.kernel
        due = kernel.set_timer(task, self.seconds)
        kernel.trace(task, f"Sleep({self.seconds}): sleeps until t={due}ms")
        await kernel.block(task, _Timer(task.tid), State.SLEEPING)
        return await kernel.resume(task, None)


@attrs.frozen
class WaitKey(SysCall):
    """Wait until a task signals `key`; the result is the signalled value.

    A signal is not remembered (a `WaitMap` wake-up): one sent while nobody
    waits on the key is lost, and `Signal` returns 0.
    """

    key: Hashable

    async def perform(self, task: Task) -> Next[Task]:
        task.kernel.trace(task, f"WaitKey({self.key!r}): waits")
        value = await task.kernel.block(task, self.key, State.WAITING)
        return await task.kernel.resume(task, value)


@attrs.frozen
class Signal(SysCall):
    """Wake every task waiting on `key` with `value`; the result is how many woke."""

    key: Hashable
    value: object

    async def perform(self, task: Task) -> Next[Task]:
        woken = task.kernel.wake(self.key, self.value)
        task.kernel.trace(task, f"Signal({self.key!r}, {self.value!r}) -> woke {woken}")
        return await task.kernel.resume(task, woken)


@attrs.frozen
class Spawn(SysCall):
    """Start `program` as a new task of `priority`; the result is its id."""

    program: Program
    priority: int

    async def perform(self, task: Task) -> Next[Task]:
        tid = task.kernel.spawn(self.program, self.priority)
        task.kernel.trace(task, f"Spawn({program_name(self.program)}, prio {self.priority}) -> task {tid}")
        return await task.kernel.resume(task, tid)


@attrs.frozen
class Kill(SysCall):
    """End task `tid` (its agent is interrupted; its ``on_stop`` runs); the result is whether it was alive."""

    tid: int

    async def perform(self, task: Task) -> Next[Task]:
        if self.tid == task.tid:  # suicide: the task has the CPU, it just ends
            task.kernel.trace(task, f"Kill({self.tid}): kills itself")
            task.kernel.finish(task, State.KILLED, task.tid)
            return Next.interrupt()
        killed = task.kernel.kill(self.tid, by=task.tid)
        task.kernel.trace(task, f"Kill({self.tid}) -> {killed}")
        return await task.kernel.resume(task, killed)


@attrs.frozen
class WaitTask(SysCall):
    """Wait until task `tid` ends; the result is its `Process` row (None for an unknown id)."""

    tid: int

    async def perform(self, task: Task) -> Next[Task]:
        kernel = task.kernel
        target = kernel.table.get(self.tid)
        if target is None or not target.alive:  # nothing to wait for: check, then park, with no checkpoint between
            kernel.trace(task, f"WaitTask({self.tid}) -> {'no such task' if target is None else 'already ended'}")
            return await kernel.resume(task, target)
        kernel.trace(task, f"WaitTask({self.tid}): waits")
        ended = await kernel.block(task, _Exited(self.tid), State.WAITING)
        return await kernel.resume(task, ended)


# -- tasks and the kernel ---------------------------------------------------------


@final
class Task(Agent[object]):
    """A process: an agent that runs one program, a step at a time, when the kernel gives it the CPU."""

    def __init__(self, kernel: Kernel, tid: int, program: Program) -> None:
        self.kernel = kernel
        self.tid = tid
        self.program = program

    def begin(self) -> Next[Task]:
        return Next.do_async(self.boot)

    async def boot(self) -> Next[Task]:
        return await self.kernel.resume(self, None)  # the first step: into the ready queue

    async def step(self, value: object) -> Next[Task]:
        """Run the program up to its next system call (the task has the CPU meanwhile)."""
        try:
            call = self.program.send(value)
        except StopIteration as returned:
            self.kernel.finish(self, State.DONE, returned.value)
            return Next.done(returned.value)
        if call is None:
            call = Yield()
        if not isinstance(call, SysCall):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"a program yields system calls, got {call!r}")
        return Next.perform(call)

    def crashed(self, error: Exception) -> Next[Task]:
        """The program raised (the fallback of `step`): the task ends, the kernel goes on."""
        self.kernel.finish(self, State.CRASHED, error)
        return Next.done()

    async def on_stop(self, reason: hybrid.StopReason) -> None:
        self.kernel.exited(self, reason)


class Kernel(Agent[list[Process]]):
    """The kernel: a process table, a ready queue by priority, timers and one CPU.

    Its one state boots the tasks in a nursery and runs the scheduler until
    every task has ended; its output is the process table.

    The scheduler's invariant: it picks the next task only when no task runs
    or is on its way to park (``_busy == 0``). A task woken by a `Signal`, a
    timer or the end of another task counts as busy until it is back in the
    ready queue, so the queue is complete, and the order deterministic, when
    the scheduler looks at it.
    """

    def __init__(self, boot: Sequence[Spawn], *, tick: float = TICK, out: Callable[[str], None] = print) -> None:
        self.boot = list(boot)
        self.tick = tick
        self.out = out
        self.now = 0
        """The kernel's clock, in ticks."""
        self.table: dict[int, Process] = {}
        self.log: list[str] = []
        self._timers: list[tuple[int, int]] = []
        # Sleeping tasks, a heap of (due tick, tid); entries of killed tasks stay until popped.
        self._ready: list[tuple[int, int, int]] = []
        # The ready queue: a heap of (-priority, tick it became ready, tid);
        # entries of killed tasks stay until popped.
        self._waits: hybrid.WaitMap[Hashable, Any] = hybrid.WaitMap()
        # Every wake-up of the kernel: the CPU grants, timers, WaitKey keys, task ends, _SETTLED.
        self._busy = 0
        # Tasks running or on their way to park; written by the kernel and the system calls.
        self._nursery: trio.Nursery | None = None

    def begin(self) -> Next[Self]:
        return Next.do_async(self.run_tasks)

    async def run_tasks(self) -> Next[Self]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for call in self.boot:
                self.spawn(call.program, call.priority)
            names = ", ".join(f"{p.name} (task {p.tid}, prio {p.priority})" for p in self.table.values())
            self.trace(None, f"boot: {names}")
            await self.schedule()
        self.trace(None, "every task has ended: halt")
        return Next.done(list(self.table.values()))

    # -- the scheduler ------------------------------------------------------

    async def schedule(self) -> None:
        """Give the CPU to the best ready task, one step at a time, until every task has ended."""
        while True:
            await self.settle()
            while self._timers and self._timers[0][0] <= self.now:
                _, tid = heapq.heappop(self._timers)
                if self.table[tid].state is State.SLEEPING:
                    self.wake(_Timer(tid), None)
            await self.settle()
            process = self._pop_ready()
            if process is not None:
                process.state = State.RUNNING
                process.cpu += 1
                self._busy += 1
                granted = self._waits.wake(_Cpu(process.tid), None)
                assert granted == 1, f"task {process.tid} is not parked"
                await self.settle()
                self.now += 1
                continue
            due = self._next_timer()
            if due is not None:
                self.trace(None, f"idle: every task waits; the next timer is due at t={due}ms")
                await trio.sleep((due - self.now) * self.tick)
                self.now = due
                continue
            stuck = [p for p in self.table.values() if p.alive]
            if not stuck:
                return
            self.trace(None, f"deadlock: {', '.join(p.name for p in stuck)} wait for ever; killing them")
            for process in stuck:
                self.kill(process.tid, by=0)
                await self.settle()

    async def settle(self) -> None:
        """Wait until no task runs or is on its way to park."""
        while self._busy:
            await self._waits.wait(_SETTLED)

    def _pop_ready(self) -> Process | None:
        while self._ready:
            _, _, tid = heapq.heappop(self._ready)
            process = self.table[tid]
            if process.state is State.READY:  # else killed while it waited
                return process
        return None

    def _next_timer(self) -> int | None:
        while self._timers and self.table[self._timers[0][1]].state is not State.SLEEPING:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    # -- what system calls use ------------------------------------------------

    async def resume(self, task: Task, value: object) -> Next[Task]:
        """Put `task` in the ready queue; once it has the CPU, continue its program with `value`."""
        process = self.table[task.tid]
        process.state = State.READY
        heapq.heappush(self._ready, (-process.priority, self.now, task.tid))
        await self._park(_Cpu(task.tid))
        return Next.do_async(task.step, value).fallback(task.crashed)

    async def block(self, task: Task, key: Hashable, state: State) -> Any:
        """Give the CPU up and park `task` on `key`; return the value it is woken with."""
        self.table[task.tid].state = state
        return await self._park(key)

    async def _park(self, key: Hashable) -> Any:
        self._release()
        return await self._waits.wait(key)  # no checkpoint since _release: no wake-up can come first

    def _release(self) -> None:
        """One busy task less (it parked or ended); the last one lets the scheduler go on."""
        self._busy -= 1
        if not self._busy:
            self._waits.wake(_SETTLED, None)

    def set_timer(self, task: Task, seconds: float) -> int:
        """Wake `task` (on its `_Timer` key) `seconds` from now, at least a tick; return the due tick."""
        due = self.now + max(1, round(seconds / self.tick))
        heapq.heappush(self._timers, (due, task.tid))
        return due

    def wake(self, key: Hashable, value: object) -> int:
        """Wake every task parked on `key` with `value`; they are busy until back in the ready queue."""
        woken = self._waits.wake(key, value)
        self._busy += woken
        return woken

    def spawn(self, program: Program, priority: int) -> int:
        """Start `program` as a task (busy until it parks in the ready queue); return its id."""
        assert self._nursery is not None, "the kernel is not running"
        tid = len(self.table) + 1
        process = Process(tid, program_name(program), priority, State.READY, started=self.now)
        self.table[tid] = process
        self._busy += 1
        process.address = hybrid.spawn(self._nursery, Task(self, tid, program), name=f"task-{tid}")
        return tid

    def kill(self, tid: int, *, by: int) -> bool:
        """Kill task `tid` (not the running one); False if there is no such live task."""
        process = self.table.get(tid)
        if process is None or not process.alive:
            return False
        assert process.state is not State.RUNNING, "the running task kills itself with Next.interrupt()"
        assert process.address is not None
        self.finish(process, State.KILLED, by)
        self._busy += 1  # until its on_stop has run
        # The task is parked in a system call (a state that never finishes by
        # itself): the first interrupt asks it to end after its step, the
        # second cancels the step, so the agent ends now, as interrupted.
        process.address.interrupt()
        process.address.interrupt()
        return True

    def finish(self, task: Task | Process, state: State, result: object) -> None:
        """Record how a task ends (its `on_stop` then reports it)."""
        process = self.table[task.tid]
        process.state = state
        process.result = result

    def exited(self, task: Task, reason: hybrid.StopReason) -> None:
        """A task's `on_stop`: close its program, wake the tasks waiting for its end, give the CPU back."""
        process = self.table[task.tid]
        process.ended = self.now
        task.program.close()  # the program's finally blocks run
        if reason.kind is hybrid.StopKind.CANCELLED:  # the kernel itself is being torn down
            self.finish(process, State.KILLED, 0)
            return
        woken = self.wake(_Exited(task.tid), process)
        how = {
            State.DONE: f"exits, returning {process.result!r}",
            State.KILLED: f"is killed by {f'task {process.result}' if process.result else 'the kernel'}",
            State.CRASHED: f"crashes: {process.result!r}",
        }[process.state]
        waiters = f"; woke {woken} waiting task{'s' * (woken != 1)}" if woken else ""
        self.trace(task, f"{how} (on_stop ran{waiters})")
        self._release()  # it was running, or counted busy by kill()

    def trace(self, task: Task | None, text: str) -> None:
        """Log one line, stamped with the kernel's clock."""
        if task is None:
            line = f"[t={self.now:2}ms] kernel {text}"
        else:
            process = self.table[task.tid]
            who = f"task {task.tid} {process.name} (prio {process.priority})"
            line = f"[t={self.now:2}ms] {who:<27} {text}"
            if process.state is State.RUNNING:  # the tasks it ran ahead of, best first
                waiting = [self.table[tid] for _, _, tid in sorted(self._ready)]
                queue = " ".join(f"{p.name}({p.priority})" for p in waiting if p.state is State.READY)
                line = f"{line:<72} | ready: {queue or '-'}"
        self.log.append(line)
        self.out(line)


# -- the demo's programs --------------------------------------------------------


def consumer() -> Program:
    """Eats the items signalled on "item" until it gets None; returns what it ate."""
    eaten: list[str] = []
    while (item := (yield WaitKey("item"))) is not None:
        eaten.append(item)
    return eaten


def producer(items: Sequence[str]) -> Program:
    """Signals each item on "item" after a nap; spawns an urgent task on the way."""
    for n, item in enumerate(items):
        yield Sleep(0.004)
        yield Signal("item", item)
        if n == 0:
            yield Spawn(alarm(), priority=9)  # spawned later, it jumps the queue
    yield Signal("item", None)
    return len(items)


def cruncher(rounds: int) -> Program:
    """CPU bound: gives the CPU up between rounds, so it runs whenever nothing more urgent is ready."""
    for _ in range(rounds):
        yield None  # a bare yield: gives the CPU up
    return rounds


def alarm() -> Program:
    """A high-priority task: runs before anything else that is ready."""
    me = yield GetId()
    return f"task {me} rang"


def heartbeat() -> Program:
    """Beats for ever; someone has to kill it."""
    beats = 0
    while True:
        yield Sleep(0.003)
        beats += 1


def mourner(tid: int) -> Program:
    """Waits for task `tid` to end and reports how it ended."""
    ended = yield WaitTask(tid)
    return f"task {tid} was {ended.state.value}"


def reaper() -> Program:
    """Starts a heartbeat and someone who waits for its end, then kills the heartbeat."""
    victim = yield Spawn(heartbeat(), priority=6)
    yield Spawn(mourner(victim), priority=2)
    yield Sleep(0.010)
    return (yield Kill(victim))


def print_table(table: Sequence[Process], out: Callable[[str], None] = print) -> None:
    """Print the process table, as ``ps`` would."""
    out("process table:")
    out(f"  {'tid':>3}  {'name':<10} {'prio':>4}  {'state':<7} {'cpu':>3}  {'ran':<8}  result")
    for p in table:
        ran = f"{p.started}-{p.ended}ms" if p.ended is not None else f"{p.started}ms-"
        result = repr(p.result)
        if p.state is State.KILLED:
            result = f"by task {p.result}" if p.result else "by the kernel"
        out(f"  {p.tid:>3}  {p.name:<10} {p.priority:>4}  {p.state.value:<7} {p.cpu:>3}  {ran:<8}  {result}")


async def main() -> list[Process]:
    """Boot the kernel with four tasks (they start three more), run it until every task has ended."""
    kernel = Kernel(
        [
            Spawn(consumer(), priority=5),
            Spawn(producer(["apple", "bread", "cheese"]), priority=3),
            Spawn(cruncher(4), priority=2),
            Spawn(reaper(), priority=4),
        ]
    )
    table = await kernel.run()
    print_table(table)
    return table


if __name__ == "__main__":
    trio.run(main)
