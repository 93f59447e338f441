"""SIGKILL at random points: no checkpoint lost or torn, every key resumed once per crash, no state run twice more.

The program under test is ``tests/durable/_crash_worker.py``: `KEYS` durable
agents (do_async steps, a do_sync state, actor mode, a final state) on one
store, each state appending ``key instance pid`` to a side file (fsynced)
before it returns its transition. A round starts the program, kills it
(SIGKILL) `CRASHES` times at seeded random points, either from inside (right
after a state's line is on disk, before the checkpoint of the transition it
returns) or from here (after a seeded number of its lines, plus a few
milliseconds: anywhere, a commit included), then runs it once more to the
end. After each crash, the database is opened and read: every checkpoint
decodes, and each names the state the key was in when it died or the one
after. At the end, every key's output is that of a run that never crashed,
each state ran at most once more per crash (and only the one a crash cut
off), and the event log holds one "resumed" per crash that found the key
unfinished. The side file is the only witness that counts across processes.

Both backends: SQLite (a file) and the Postgres server of the session
(``journal_url``). No timing is asserted.
"""

from __future__ import annotations

import collections
import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import hybrid.durable
from hybrid import Next
from hybrid.durable import Status
from hybrid.durable._records import Checkpoint, StepKind
from tests.durable._crash_worker import BUMPS, Crasher, Drainer, instances, key_names

ROOT = Path(__file__).resolve().parents[2]

KEYS = 6
"""Agents per run: 6 x 9 state instances = 54 lines of the side file for a run without a crash."""

CRASHES = 3
"""Kills per round, before the run that goes to the end."""

WORKER_DEADLINE = 60.0
"""A worker still running after this many seconds is stuck: fail instead of hanging (not a timing check)."""

ORDER = {name: index for index, name in enumerate(instances())}
"""Each state instance of a key -> its position in a run."""

Line = tuple[str, str, int]
"""One line of the side file: (key, state instance, pid of the process that ran it)."""


def worker_command(url: str, side_file: Path, die_after: int | None = None) -> list[str]:
    command = [sys.executable, "-m", "tests.durable._crash_worker", url, str(side_file), str(KEYS)]
    return command if die_after is None else [*command, "--die-after", str(die_after)]


def read_lines(side_file: Path, *, writing: bool = False) -> list[Line]:
    """The side file's whole lines, in the order they were written (`writing`: a line may be half there yet)."""
    if not side_file.exists():
        return []
    lines: list[Line] = []
    for text in side_file.read_text().splitlines(keepends=True):
        if writing and not text.endswith("\n"):
            break
        assert text.endswith("\n"), f"a torn line in the side file: {text!r}"
        key, instance, pid = text.split()
        lines.append((key, instance, int(pid)))
    return lines


@attrs.frozen
class Reference:
    """A run that never crashed: every key's output, and the state instances it ran."""

    outputs: dict[str, str]
    ran: frozenset[tuple[str, str]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The worker run once to the end without a kill, on SQLite."""
    folder = tmp_path_factory.mktemp("reference")
    side_file = folder / "side"
    command = worker_command(f"sqlite:///{folder / 'store.db'}", side_file)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=WORKER_DEADLINE, check=False)
    assert done.returncode == 0, done.stderr
    lines = read_lines(side_file)
    pairs = [(key, instance) for key, instance, _ in lines]
    assert sorted(pairs) == sorted((key, name) for key in key_names(KEYS) for name in instances())
    return Reference(json.loads(done.stdout), frozenset(pairs))


@attrs.define
class Round:
    """What a round of crashes saw, from this side."""

    url: str
    side_file: Path
    pids: list[int] = attrs.Factory(list[int])
    """Every worker process, in the order they ran."""
    killed: set[int] = attrs.Factory(set[int])
    resumed: collections.Counter[str] = attrs.Factory(collections.Counter[str])
    """Per key: the crashes after which it was unfinished (each must log one "resumed")."""

    def ran(self) -> set[tuple[str, str]]:
        return {(key, instance) for key, instance, _ in read_lines(self.side_file)}


async def run_worker(
    crash: Round, folder: Path, *, die_after: int | None = None, kill_after: int | None = None, delay: float = 0.0
) -> tuple[int, str, str]:
    """Run the worker once; kill it after `kill_after` of its own lines (and `delay` s); return (rc, out, err)."""
    out_path, err_path = folder / f"out-{len(crash.pids)}", folder / f"err-{len(crash.pids)}"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = await trio.lowlevel.open_process(
            worker_command(crash.url, crash.side_file, die_after), stdout=out, stderr=err, cwd=ROOT
        )
    crash.pids.append(process.pid)
    try:
        with trio.fail_after(WORKER_DEADLINE):
            if kill_after is not None:
                while process.poll() is None:
                    lines = read_lines(crash.side_file, writing=True)
                    if sum(1 for *_, pid in lines if pid == process.pid) >= kill_after:
                        await trio.sleep(delay)
                        process.send_signal(signal.SIGKILL)
                        break
                    await trio.sleep(0.002)
            returncode = await process.wait()
    finally:
        if process.returncode is None:  # stuck (the deadline) or this test failed: it must not outlive the test
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    return returncode, out_path.read_text(), err_path.read_text()


def named_instance(checkpoint: Checkpoint, agent: Any, nxt: Next[Any] | None) -> str:
    """The state instance a key resumes with from `checkpoint`."""
    assert isinstance(agent, Crasher)
    assert agent.key == checkpoint.key
    if checkpoint.kind is StepKind.BEGIN:
        return "step0"
    if checkpoint.kind is StepKind.EVENTS:  # actor mode: the next Bump, or finish once all are counted
        return f"bump{agent.bumps + 1}" if agent.bumps < BUMPS else "finish"
    assert nxt is not None
    if checkpoint.state == "step":
        return f"step{nxt.args[0]}"
    return checkpoint.state


async def inspect_after_crash(crash: Round, pid: int) -> None:
    """Read the store the killed process `pid` left: every checkpoint decodes and none was lost."""
    lines = read_lines(crash.side_file)
    last: dict[str, int] = {}  # per key, the furthest state instance any process logged
    for key, instance, _ in lines:
        last[key] = max(last.get(key, -1), ORDER[instance])
    async with hybrid.durable.open_store(crash.url, agents=[Crasher]) as store:
        journal, codec = store._journal, store._codec
        if crash.url.startswith("sqlite"):
            check = await journal._call(lambda c: c.execute("PRAGMA integrity_check", ()) and c.fetchone())
            assert check == ("ok",)
        for checkpoint in await journal.unfinished():
            agent, nxt = codec.decode_step(checkpoint)  # a torn checkpoint raises CheckpointError here
            named = ORDER[named_instance(checkpoint, agent, nxt)]
            logged = last.get(checkpoint.key, -1)
            # The state that was cut off runs again (named == logged), or the next one starts
            # (named == logged + 1); anything earlier is a lost checkpoint, anything later a skipped state.
            assert logged <= named <= logged + 1, (checkpoint, logged, named, pid)
            crash.resumed[checkpoint.key] += 1


def check_executions(crash: Round, reference: Reference) -> None:
    """Each state ran; within a process once; across a crash, only the one the crash cut off ran again."""
    lines = read_lines(crash.side_file)
    assert {(key, instance) for key, instance, _ in lines} == reference.ran
    by_pid: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
    for key, instance, pid in lines:
        by_pid[pid].append((key, instance))
    assert set(by_pid) <= set(crash.pids)
    for pid, ran in by_pid.items():
        assert len(ran) == len(set(ran)), f"process {pid} ran a state twice"
    count = collections.Counter((key, instance) for key, instance, _ in lines)
    assert max(count.values()) <= 1 + len(crash.killed)
    for position, pid in enumerate(crash.pids):
        if pid not in crash.killed:
            continue
        later = {pair for other in crash.pids[position + 1 :] for pair in by_pid.get(other, [])}
        for key in key_names(KEYS):
            mine = [instance for k, instance in by_pid.get(pid, []) if k == key]
            again = [instance for instance in mine if (key, instance) in later]
            assert len(again) <= 1, f"{key}: {again} ran again after process {pid} was killed"
            if again:
                assert again == [mine[-1]], f"{key}: {again} ran again, but {mine[-1]} was the state cut off"


async def check_event_log(crash: Round) -> None:
    """Per key: spawned once, one "resumed" per crash that found it unfinished, done once."""
    async with hybrid.durable.open_store(crash.url, agents=[Crasher]) as store:
        for key in key_names(KEYS):
            kinds = collections.Counter(event.kind for event in await store.events(key))
            assert kinds["spawned"] == 1, key
            assert kinds["resumed"] == crash.resumed[key], (key, kinds)
            assert kinds["done"] == 1, key
            outcome = await store.outcome(key)
            assert outcome is not None
            assert outcome.status is Status.DONE


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sigkill_at_random_transitions_loses_nothing_and_reruns_only_the_state_cut_off(
    journal_url: str, seed: int, reference: Reference, tmp_path: Path
) -> None:
    """Killed 3 times at seeded random points then resumed, every key ends as in a run that never crashed."""
    rng = random.Random(seed)
    crash = Round(journal_url, tmp_path / "side")
    total = len(reference.ran)
    for attempt in range(CRASHES):
        remaining = total - len(crash.ran())
        when = rng.randint(1, max(1, remaining * 2 // 3))
        from_inside = attempt == 0 or rng.random() < 0.5  # the first kill always lands: inside a state
        if from_inside:
            returncode, _, err = await run_worker(crash, tmp_path, die_after=when)
        else:
            returncode, _, err = await run_worker(crash, tmp_path, kill_after=when, delay=rng.uniform(0, 0.004))
        if returncode == 0:  # it finished before the kill from here landed: nothing left to crash
            break
        assert returncode == -signal.SIGKILL, err
        crash.killed.add(crash.pids[-1])
        await inspect_after_crash(crash, crash.pids[-1])

    returncode, out, err = await run_worker(crash, tmp_path)
    assert returncode == 0, err
    assert json.loads(out) == reference.outputs
    assert crash.killed
    check_executions(crash, reference)
    await check_event_log(crash)


async def test_a_crash_while_draining_after_done_resumes_to_the_output_not_to_an_idle_actor(
    journal_url: str, tmp_path: Path
) -> None:
    """Killed while it drains after Next.done, a key is finished or resumes its last state, never actor mode."""
    command = worker_command(journal_url, tmp_path / "side")
    done = await trio.run_process([*command, "--scenario", "drain"], cwd=ROOT, capture_stderr=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    async with hybrid.durable.open_store(journal_url, agents=[Drainer]) as store:
        if await store.outcome("d") is None:
            checkpoint = await store._journal.checkpoint("d")
            assert checkpoint is not None
            assert (checkpoint.kind, checkpoint.state) == (StepKind.ASYNC, "work")
        with trio.fail_after(WORKER_DEADLINE):  # a key resumed into actor mode would wait here for nothing
            assert await store.run(Drainer(), key="d") == "worked"
