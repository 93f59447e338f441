"""examples/pyos.py: the demo's log to the line, and each rule of its kernel on small programs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio._core._run
import trio.testing

from examples import pyos
from examples.pyos import GetId, Kernel, Kill, Process, Program, Signal, Sleep, Spawn, State, WaitKey, WaitTask

ROOT = Path(__file__).parent.parent

DEMO = """\
[t= 0ms] kernel boot: consumer (task 1, prio 5), producer (task 2, prio 3), cruncher (task 3, prio 2), reaper (task 4, prio 4)
[t= 0ms] task 1 consumer (prio 5)    WaitKey('item'): waits              | ready: reaper(4) producer(3) cruncher(2)
[t= 1ms] task 4 reaper (prio 4)      Spawn(heartbeat, prio 6) -> task 5  | ready: producer(3) cruncher(2)
[t= 2ms] task 5 heartbeat (prio 6)   Sleep(0.003): sleeps until t=5ms    | ready: reaper(4) producer(3) cruncher(2)
[t= 3ms] task 4 reaper (prio 4)      Spawn(mourner, prio 2) -> task 6    | ready: producer(3) cruncher(2)
[t= 4ms] task 4 reaper (prio 4)      Sleep(0.01): sleeps until t=14ms    | ready: producer(3) cruncher(2) mourner(2)
[t= 5ms] task 5 heartbeat (prio 6)   Sleep(0.003): sleeps until t=8ms    | ready: producer(3) cruncher(2) mourner(2)
[t= 6ms] task 2 producer (prio 3)    Sleep(0.004): sleeps until t=10ms   | ready: cruncher(2) mourner(2)
[t= 7ms] task 3 cruncher (prio 2)    yield: back to the ready queue      | ready: mourner(2)
[t= 8ms] task 5 heartbeat (prio 6)   Sleep(0.003): sleeps until t=11ms   | ready: mourner(2) cruncher(2)
[t= 9ms] task 6 mourner (prio 2)     WaitTask(5): waits                  | ready: cruncher(2)
[t=10ms] task 2 producer (prio 3)    Signal('item', 'apple') -> woke 1   | ready: cruncher(2)
[t=11ms] task 5 heartbeat (prio 6)   Sleep(0.003): sleeps until t=14ms   | ready: consumer(5) producer(3) cruncher(2)
[t=12ms] task 1 consumer (prio 5)    WaitKey('item'): waits              | ready: producer(3) cruncher(2)
[t=13ms] task 2 producer (prio 3)    Spawn(alarm, prio 9) -> task 7      | ready: cruncher(2)
[t=14ms] task 7 alarm (prio 9)       GetId() -> 7                        | ready: heartbeat(6) reaper(4) producer(3) cruncher(2)
[t=15ms] task 7 alarm (prio 9)       exits, returning 'task 7 rang' (on_stop ran)
[t=16ms] task 5 heartbeat (prio 6)   Sleep(0.003): sleeps until t=19ms   | ready: reaper(4) producer(3) cruncher(2)
[t=17ms] task 4 reaper (prio 4)      Kill(5) -> True                     | ready: producer(3) cruncher(2)
[t=17ms] task 5 heartbeat (prio 6)   is killed by task 4 (on_stop ran; woke 1 waiting task)
[t=18ms] task 4 reaper (prio 4)      exits, returning True (on_stop ran)
[t=19ms] task 2 producer (prio 3)    Sleep(0.004): sleeps until t=23ms   | ready: cruncher(2) mourner(2)
[t=20ms] task 3 cruncher (prio 2)    yield: back to the ready queue      | ready: mourner(2)
[t=21ms] task 6 mourner (prio 2)     exits, returning 'task 5 was killed' (on_stop ran)
[t=22ms] task 3 cruncher (prio 2)    yield: back to the ready queue      | ready: -
[t=23ms] task 2 producer (prio 3)    Signal('item', 'bread') -> woke 1   | ready: cruncher(2)
[t=24ms] task 1 consumer (prio 5)    WaitKey('item'): waits              | ready: producer(3) cruncher(2)
[t=25ms] task 2 producer (prio 3)    Sleep(0.004): sleeps until t=29ms   | ready: cruncher(2)
[t=26ms] task 3 cruncher (prio 2)    yield: back to the ready queue      | ready: -
[t=27ms] task 3 cruncher (prio 2)    exits, returning 4 (on_stop ran)
[t=28ms] kernel idle: every task waits; the next timer is due at t=29ms
[t=29ms] task 2 producer (prio 3)    Signal('item', 'cheese') -> woke 1  | ready: -
[t=30ms] task 1 consumer (prio 5)    WaitKey('item'): waits              | ready: producer(3)
[t=31ms] task 2 producer (prio 3)    Signal('item', None) -> woke 1      | ready: -
[t=32ms] task 1 consumer (prio 5)    exits, returning ['apple', 'bread', 'cheese'] (on_stop ran)
[t=33ms] task 2 producer (prio 3)    exits, returning 3 (on_stop ran)
[t=34ms] kernel every task has ended: halt
process table:
  tid  name       prio  state   cpu  ran       result
    1  consumer      5  done      5  0-32ms    ['apple', 'bread', 'cheese']
    2  producer      3  done      9  0-33ms    3
    3  cruncher      2  done      5  0-27ms    4
    4  reaper        4  done      5  0-18ms    True
    5  heartbeat     6  killed    5  1-17ms    by task 4
    6  mourner       2  done      2  3-21ms    'task 5 was killed'
    7  alarm         9  done      2  13-15ms   'task 7 rang'
""".splitlines()  # noqa: E501 - the demo's output, as it prints


async def boot(*programs: Spawn) -> tuple[Kernel, dict[int, Process]]:
    """Run a kernel with `programs` until every task has ended; its log goes to `kernel.log` only."""
    kernel = Kernel(programs, out=lambda line: None)
    table = await kernel.run()
    return kernel, {process.tid: process for process in table}


def steps(log: list[str], tag: str) -> int:
    return sum(tag in line for line in log)


async def test_the_demo_prints_the_documented_log_and_process_table(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's output, line for line: what the docs show."""
    table = await pyos.main()
    assert capsys.readouterr().out.splitlines() == DEMO
    by_name = {process.name: process for process in table}
    assert by_name["consumer"].result == ["apple", "bread", "cheese"]
    assert by_name["heartbeat"].state is State.KILLED
    assert by_name["heartbeat"].result == by_name["reaper"].tid
    assert by_name["mourner"].result == "task 5 was killed"
    assert all(process.address is not None and not process.address.is_alive for process in table)


def test_the_demo_log_does_not_depend_on_the_order_trio_runs_woken_tasks_in(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Trio runs each batch of woken tasks in an order of its own (shuffled by seed here): the log stays the same."""
    shuffle = trio._core._run._r
    saved = shuffle.getstate()
    try:
        for seed in range(8):
            shuffle.seed(seed)
            trio.run(pyos.main, clock=trio.testing.MockClock(autojump_threshold=0))
            assert capsys.readouterr().out.splitlines() == DEMO, f"seed {seed}"
    finally:
        shuffle.setstate(saved)


def test_the_demo_runs_as_a_script_in_a_fresh_interpreter_on_the_real_clock() -> None:
    """``python examples/pyos.py``: the same log, on trio's real clock."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pyos.py")], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == DEMO
    assert done.stderr == ""


def worker(tag: str, ran: list[str], rounds: int = 2) -> Program:
    for _ in range(rounds):
        ran.append(tag)
        yield None
    return tag


async def test_the_ready_task_of_the_highest_priority_runs_first_whatever_the_boot_order() -> None:
    """A higher priority always goes first; within one priority, the task ready the longest goes first."""
    ran: list[str] = []
    await boot(
        Spawn(worker("low", ran), priority=1),
        Spawn(worker("high", ran), priority=5),
        Spawn(worker("mid-a", ran), priority=3),
        Spawn(worker("mid-b", ran), priority=3),
    )
    assert ran == ["high", "high", "mid-a", "mid-b", "mid-a", "mid-b", "low", "low"]


async def test_a_task_spawned_with_a_higher_priority_jumps_the_ready_queue() -> None:
    """Spawn returns the new task's id; the new task runs before every task that was already ready."""
    ran: list[str] = []

    def parent() -> Program:
        ran.append("parent")
        child = yield Spawn(worker("child", ran, rounds=1), priority=9)
        ran.append(f"parent, after spawning task {child}")

    kernel, table = await boot(Spawn(parent(), priority=5), Spawn(worker("other", ran, rounds=1), priority=3))
    assert ran == ["parent", "child", "parent, after spawning task 3", "other"]
    assert table[3].name == "worker"
    assert table[3].started == 0
    assert "| ready: parent(5) worker(3)" in kernel.log[2]  # the child's first step, ahead of both


async def test_signal_wakes_every_waiter_with_its_value_and_a_signal_nobody_waits_for_is_lost() -> None:
    """Signal returns how many it woke; with no waiter it returns 0 and the value is gone (a WaitMap wake-up)."""
    got: list[object] = []
    woke: list[int] = []

    def waiter() -> Program:
        got.append((yield WaitKey("k")))

    def signaller() -> Program:
        woke.append((yield Signal("k", 42)))
        woke.append((yield Signal("k", 43)))  # the waiters are not waiting any more

    await boot(Spawn(waiter(), priority=5), Spawn(waiter(), priority=5), Spawn(signaller(), priority=1))
    assert got == [42, 42]
    assert woke == [2, 0]


async def test_sleep_parks_a_task_until_its_tick_and_the_idle_kernel_sleeps_on_trios_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Sleepers end in due order; while every task sleeps, the kernel waits on trio's clock (1 ms a tick)."""
    start = trio.current_time()

    def sleeper(seconds: float) -> Program:
        yield Sleep(seconds)
        return seconds

    kernel, table = await boot(Spawn(sleeper(0.020), priority=1), Spawn(sleeper(0.010), priority=1))
    # Task 1 sleeps at tick 0 until 20, task 2 at tick 1 until 11; each step costs a tick.
    assert (table[1].ended, table[2].ended) == (20, 11)
    assert kernel.now == 21
    assert trio.current_time() - start == pytest.approx(0.017)  # idle from 2 to 11 and from 12 to 20
    assert [line for line in kernel.log if "idle" in line] == [
        "[t= 2ms] kernel idle: every task waits; the next timer is due at t=11ms",
        "[t=12ms] kernel idle: every task waits; the next timer is due at t=20ms",
    ]


def never() -> Program:
    yield WaitKey("never")


def slumber() -> Program:
    yield Sleep(10.0)


@pytest.mark.parametrize(
    ("victim", "priority", "cpu"),
    [(never, 5, 1), (slumber, 5, 1), (never, 0, 0)],
    ids=["waiting", "sleeping", "ready-never-ran"],
)
async def test_kill_ends_the_task_runs_its_on_stop_and_finally_and_wakes_its_waiters(
    autojump_clock: trio.testing.MockClock, victim: Callable[[], Program], priority: int, cpu: int
) -> None:
    """Whatever the victim waits for (a key, a timer, the CPU), it ends now and its waiters wake with its row.

    Its program is closed: its ``finally`` runs if it had started.
    """
    cleaned: list[str] = []
    answers: list[object] = []

    def target() -> Program:
        try:
            yield from victim()
        finally:
            cleaned.append("finally ran")

    def watcher(tid: int) -> Program:
        ended = yield WaitTask(tid)
        return ended.state

    def killer(tid: int) -> Program:
        answers.append((yield Kill(tid)))
        answers.append((yield Kill(tid)))  # already dead
        answers.append((yield Kill(99)))  # no such task

    start = trio.current_time()
    kernel, table = await boot(
        Spawn(target(), priority=priority), Spawn(watcher(1), priority=2), Spawn(killer(1), priority=1)
    )
    assert answers == [True, False, False]
    assert (table[1].state, table[1].result, table[1].cpu) == (State.KILLED, 3, cpu)
    assert cleaned == (["finally ran"] if cpu else [])
    assert table[2].result is State.KILLED
    assert sum("is killed by task 3 (on_stop ran; woke 1 waiting task)" in line for line in kernel.log) == 1
    assert trio.current_time() - start < 0.1  # a killed sleeper's timer does not keep the kernel waiting


async def test_a_task_that_kills_itself_ends_at_once() -> None:
    def suicidal() -> Program:
        me = yield GetId()
        yield Kill(me)
        raise AssertionError("a killed task runs no further")

    kernel, table = await boot(Spawn(suicidal(), priority=1))
    assert (table[1].state, table[1].result) == (State.KILLED, 1)
    assert kernel.log[-2].endswith("is killed by task 1 (on_stop ran)")


async def test_waittask_returns_at_once_for_a_task_that_has_ended_or_never_was() -> None:
    seen: list[object] = []

    def quick() -> Program:
        yield None
        return "quick"

    def late() -> Program:
        ended = yield WaitTask(1)
        seen.append(ended.result)
        seen.append((yield WaitTask(42)))

    await boot(Spawn(quick(), priority=5), Spawn(late(), priority=1))
    assert seen == ["quick", None]


async def test_a_program_that_raises_or_yields_a_non_call_crashes_alone_and_the_kernel_goes_on() -> None:
    ran: list[str] = []

    def divide() -> Program:
        yield None
        return 1 // 0

    def confused() -> Program:
        yield "not a system call"  # type: ignore[misc]

    _, table = await boot(
        Spawn(divide(), priority=5), Spawn(confused(), priority=5), Spawn(worker("healthy", ran), priority=1)
    )
    assert table[1].state is State.CRASHED
    assert isinstance(table[1].result, ZeroDivisionError)
    assert table[2].state is State.CRASHED
    assert isinstance(table[2].result, TypeError)
    assert (table[3].state, ran) == (State.DONE, ["healthy", "healthy"])


async def test_the_kernel_kills_the_tasks_of_a_deadlock() -> None:
    """Nothing ready, no timer, tasks waiting: nobody can wake them, so the kernel kills them and halts."""
    kernel, table = await boot(Spawn(never(), priority=1), Spawn(never(), priority=2))
    assert [(process.state, process.result) for process in table.values()] == [(State.KILLED, 0)] * 2
    assert "[t= 2ms] kernel deadlock: never, never wait for ever; killing them" in kernel.log
