"""examples/job_runner.py: each piece under simulated time, and the kill-and-recover demo end to end as processes."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

import hybrid
import hybrid.durable
from examples.job_runner import (
    JOBS,
    KINDS,
    Dispatcher,
    JobReport,
    JobSpec,
    Ledger,
    Runner,
    Settings,
    Take,
    read_log,
    run_batch,
)

EXAMPLE = Path(__file__).parent.parent / "examples" / "job_runner.py"

DEMO_OUTPUT = """\
runner 1: 12 jobs, 3 workers; killed by signal 9 right after j-7 made its side effect
runner 2: took over on the same store, resumed the unfinished jobs, ran them to the end
jobs:
  j-1   email    p9  done on attempt 1
  j-2   invoice  p4  done on attempt 3; retried after 0.1 s, 0.2 s; waited for its breaker
  j-3   report   p8  done on attempt 2; 1 soft timeout; retried after 0.1 s; waited for a dead worker's lease
  j-4   sms      p5  done on attempt 2; retried after 0.1 s; waited for its breaker
  j-5   sms      p5  done on attempt 2; retried after 0.1 s; waited for its breaker
  j-6   email    p9  done on attempt 1
  j-7   email    p8  done on attempt 1; waited for a dead worker's lease
  j-8   video    p8  done on attempt 2; 1 hard timeout; retried after 0.1 s; waited for a dead worker's lease
  j-9   webhook  p3  failed on attempt 4; retried after 0.1 s, 0.2 s, 0.4 s; waited for its breaker
                     Unavailable: the partner's endpoint is down
  j-10  email    p1  done on attempt 1
  j-11  invoice  p6  failed on attempt 1
                     Rejected: the card was declined
  j-12  email    p9  done on attempt 1
totals: 10 done, 2 failed; 9 retries; timeouts: 1 soft, 1 hard; breakers opened: invoice 1, sms 1, webhook 3
the kill: runner 2 resumed 9 unfinished jobs (6 queued, 3 running)
  j-3, j-7, j-8 waited for the leases of runner 1's dead workers to expire
  j-7's side effect was asked again, under the same key (j-7#3): not made twice
the ledger: 10 side effects for 10 jobs done, 12 verdicts for 12 jobs; made twice: none
what happened to job j-7, from the event log:
  runner 1  #0  spawned
  runner 1  #1  queued
  runner 1  #2  leased
  runner 1  #3  running
  runner 2  #3  resumed   (runner 1 was killed in this state)
  runner 2  #4  done
"""

NO_BREAKER = 1_000
"""Failures in a row that open a breaker, for the tests where it must stay out of the way."""


def report(runner: Runner, job: str) -> JobReport:
    result = runner.results[job]
    assert isinstance(result, JobReport), result
    return result


def entered(runner: Runner, job: str, state: str) -> list[float]:
    """The times (trio's clock) at which `job` entered `state`."""
    return [when for when, name, what in runner.history if name == job and what == state]


# -- retries ---------------------------------------------------------------------------------


def test_the_retry_schedule_doubles_from_a_tenth_of_a_second_up_to_thirty() -> None:
    """The core's RetryPolicy of the runner: 0.1 s, doubled at each retry, capped at 30 s."""
    policy = Settings().retry
    assert [policy.delay(n) for n in range(1, 13)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30, 30]
    )
    assert policy.attempts == 4


async def test_a_job_that_keeps_failing_is_retried_on_that_schedule_then_fails(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Each attempt starts its backoff after the last one; past the attempts allowed, the job fails."""
    settings = Settings(retry=attrs.evolve(Settings().retry, attempts=12), breaker_failures=NO_BREAKER, lease_ttl=100)
    spec = JobSpec("w-1", "webhook", 1, "unavailable always")
    runner = await run_batch([spec], ledger=Ledger(str(tmp_path / "ledger.db")), settings=settings)
    ended = report(runner, "w-1")
    schedule = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]
    assert ended.status == "failed"
    assert ended.attempts == 12
    assert ended.delays == pytest.approx(schedule)
    assert ended.error == "Unavailable: the partner's endpoint is down"
    starts = entered(runner, "w-1", "running")
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx(schedule)


async def test_a_rejected_job_is_not_retried(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """An error outside the policy's retry_on (a declined card) fails the job on its first attempt."""
    runner = await run_batch([JobSpec("i-1", "invoice", 1, "declined")], ledger=Ledger(str(tmp_path / "l.db")))
    ended = report(runner, "i-1")
    assert (ended.status, ended.attempts, ended.delays) == ("failed", 1, ())
    assert ended.error == "Rejected: the card was declined"


# -- timeouts --------------------------------------------------------------------------------


async def test_a_stuck_async_attempt_is_interrupted_at_the_soft_timeout_then_cancelled_at_the_hard_one(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The Watchdog's shutdown_timeout: interrupt at 0.3 s, cancel 0.2 s later; the retry then succeeds."""
    runner = await run_batch([JobSpec("v-1", "video", 1, "stuck 1")], ledger=Ledger(str(tmp_path / "l.db")))
    ended = report(runner, "v-1")
    assert (ended.status, ended.attempts, ended.hard_timeouts, ended.soft_timeouts) == ("done", 2, 1, 0)
    [first, second] = entered(runner, "v-1", "running")
    [retried] = entered(runner, "v-1", "retried")
    assert retried - first == pytest.approx(0.3 + 0.2)  # soft timeout + grace
    assert second - retried == pytest.approx(0.1)


async def test_a_slow_async_attempt_finishes_its_step_at_the_soft_timeout_and_the_next_goes_on_from_there(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Soft: the step in progress ends, no step is cancelled; the job keeps its progress across attempts."""
    kinds = {**KINDS, "video": attrs.evolve(KINDS["video"], steps=10, step=0.08)}  # 0.8 s of work
    runner = await run_batch(
        [JobSpec("v-2", "video", 1)], ledger=Ledger(str(tmp_path / "l.db")), settings=Settings(kinds=kinds)
    )
    ended = report(runner, "v-2")
    # Steps 0-3 (ends at 0.32 s), 4-7, then 8-9: three attempts, each going on from the last.
    assert (ended.status, ended.attempts, ended.soft_timeouts, ended.hard_timeouts) == ("done", 3, 2, 0)
    starts = entered(runner, "v-2", "running")
    retries = entered(runner, "v-2", "retried")
    assert [r - s for s, r in zip(starts, retries, strict=False)] == pytest.approx([0.32, 0.32])


async def test_a_sync_attempt_polls_interrupted_and_stops_at_its_soft_timeout_keeping_its_progress(
    tmp_path: Path,
) -> None:
    """`.timeout()` on a do_sync state: the thread sees hybrid.interrupted(), stops, and the next attempt goes on.

    Real time: a worker thread runs on the wall clock, which a MockClock would
    jump past while the thread works.
    """
    kinds = {**KINDS, "report": attrs.evolve(KINDS["report"], steps=8, step=0.01)}  # 80 ms of chunks
    settings = Settings(kinds=kinds, soft_timeout=0.05, retry=attrs.evolve(Settings().retry, attempts=8))
    runner = await run_batch([JobSpec("r-1", "report", 1)], ledger=Ledger(str(tmp_path / "l.db")), settings=settings)
    ended = report(runner, "r-1")
    # Started over each time, 80 ms of chunks could never fit in 50 ms: it goes on from its progress.
    assert ended.status == "done"
    assert ended.soft_timeouts >= 1
    assert ended.attempts == ended.soft_timeouts + 1
    assert ended.hard_timeouts == 0


# -- breakers --------------------------------------------------------------------------------


async def test_a_kind_that_keeps_failing_opens_its_breaker_and_its_jobs_wait_instead_of_calling(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Two sms failures in a row open the sms breaker; the sms retries wait for it; the email kind is unaffected."""
    specs = [JobSpec("s-1", "sms", 3, "unavailable 1"), JobSpec("s-2", "sms", 3, "unavailable 1")]
    specs.append(JobSpec("e-1", "email", 1))
    runner = await run_batch(specs, ledger=Ledger(str(tmp_path / "l.db")))
    sms, email = runner.breakers["sms"].statistics(), runner.breakers["email"].statistics()
    assert sms.times_opened == 1
    assert sms.state is hybrid.BreakerState.CLOSED  # closed again by a probe that succeeded
    s1, s2 = report(runner, "s-1"), report(runner, "s-2")
    assert (s1.status, s1.attempts, s2.status, s2.attempts) == ("done", 2, "done", 2)
    assert s1.breaker_waits >= 1
    assert s2.breaker_waits >= 1
    assert s1.breaker_openings + s2.breaker_openings == 1  # the failure that opened it is the one counted
    assert sms.calls == 4  # two failures, two successes: a refused attempt calls nothing
    assert sms.rejected == s1.breaker_waits + s2.breaker_waits
    assert (email.times_opened, email.rejected) == (0, 0)
    assert report(runner, "e-1").attempts == 1
    # The sms retries came back only when the breaker let a probe through (0.5 s after it opened).
    [opened] = {when for when, job, state in runner.history if job in ("s-1", "s-2") and state == "retried"}
    second_attempts = [entered(runner, job, "running")[-1] for job in ("s-1", "s-2")]
    assert min(second_attempts) >= opened + 0.5


# -- priorities ------------------------------------------------------------------------------


async def test_the_dispatcher_hands_out_workers_by_priority_then_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its priority mailbox is the queue; it reads it only once the backlog is loaded."""
    send, idle = trio.open_memory_channel[str](5)
    loaded = trio.Event()
    dispatcher = Dispatcher(idle, loaded)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, dispatcher)

        async def take(job: str, priority: int) -> None:
            await address.request(Take(job, priority))

        for job, priority in [("a", 1), ("b", 5), ("c", 1), ("d", 5), ("e", 3)]:
            nursery.start_soon(take, job, priority)
            await trio.testing.wait_all_tasks_blocked()  # queued in this order
        for n in range(5):
            send.send_nowait(f"w{n}")
        await trio.sleep(1)
        assert dispatcher.granted == []  # the backlog is not loaded yet
        loaded.set()
        await trio.testing.wait_all_tasks_blocked()
        assert dispatcher.granted == ["b", "d", "e", "a", "c"]
        address.interrupt()


async def test_with_one_worker_jobs_run_in_priority_order(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Submitted together, the jobs get the worker highest priority first, whatever the order they were read in."""
    specs = [JobSpec(f"e-{n}", "email", priority) for n, priority in enumerate([3, 9, 1, 7, 5], start=1)]
    runner = await run_batch(specs, ledger=Ledger(str(tmp_path / "l.db")), settings=Settings(workers=1))
    assert runner.dispatcher.granted == ["e-2", "e-4", "e-5", "e-1", "e-3"]
    finished = sorted(specs, key=lambda spec: entered(runner, spec.id, "running")[0])
    assert [spec.priority for spec in finished] == [9, 7, 5, 3, 1]


# -- leases ----------------------------------------------------------------------------------


async def test_a_job_whose_lease_a_dead_worker_holds_runs_once_the_lease_expires(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A lease left by a worker that stopped renewing it keeps the job waiting until its TTL runs out."""
    leases = hybrid.Leases()
    assert await leases.acquire("job/l-1", "dead-runner/w1", ttl=5) is not None  # never renewed
    runner = await run_batch([JobSpec("l-1", "email", 1)], ledger=Ledger(str(tmp_path / "l.db")), leases=leases)
    ended = report(runner, "l-1")
    assert (ended.status, ended.lease_waits) == ("done", 1)
    assert entered(runner, "l-1", "running") == [pytest.approx(5)]


async def test_a_job_longer_than_its_lease_ttl_keeps_its_lease_by_heartbeat(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Three seconds of work under a one-second lease: renewed all along, nobody else can take it."""
    kinds = {**KINDS, "video": attrs.evolve(KINDS["video"], steps=30, step=0.1)}
    settings = Settings(kinds=kinds, soft_timeout=10, lease_ttl=1)
    leases = hybrid.Leases()
    seen: list[hybrid.Lease | None] = []

    async def look() -> None:
        await trio.sleep(2.5)
        seen.append(await leases.current("job/h-1"))
        seen.append(await leases.acquire("job/h-1", "intruder", ttl=1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look)
        runner = await run_batch(
            [JobSpec("h-1", "video", 1)], ledger=Ledger(str(tmp_path / "l.db")), leases=leases, settings=settings
        )
    held, intruder = seen
    assert held is not None
    assert held.holder == "runner/w1"
    assert held.expires_at > 2.5
    assert intruder is None
    assert report(runner, "h-1").attempts == 1
    assert await leases.current("job/h-1") is None  # released at the end


# -- the durable runner, killed and resumed ----------------------------------------------------


def run_runner(store: Path, ledger: Path, name: str, *extra: str) -> int:
    command = [sys.executable, str(EXAMPLE), "--runner", str(store), str(ledger), "--name", name, *extra]
    return subprocess.run(command, timeout=60, check=False).returncode


async def test_a_runner_killed_mid_way_is_resumed_and_every_job_ends_once_with_its_side_effect_once(
    tmp_path: Path,
) -> None:
    """Two runner processes, the first SIGKILLed after j-7's side effect: one ending and one verdict per job."""
    store, ledger_path = tmp_path / "jobs.db", tmp_path / "ledger.db"
    assert run_runner(store, ledger_path, "runner-1", "--kill-at", "j-7") == -9
    ledger = Ledger(str(ledger_path))
    assert [entry.job for entry in ledger.entries("effect")] == ["j-1", "j-12", "j-6", "j-7"]  # by key
    assert run_runner(store, ledger_path, "runner-2") == 0
    log = await read_log(str(store))
    endings = [(event.key, event.kind) for event in log if event.kind in ("done", "failed", "stopped")]
    assert sorted(key for key, _ in endings) == sorted(spec.id for spec in JOBS)  # each job ends once
    verdicts = ledger.entries("verdict")
    assert Counter(entry.job for entry in verdicts) == Counter(spec.id for spec in JOBS)
    assert all(entry.repeats == 0 for entry in verdicts)
    statuses = {report.job: report.status for report in ledger.reports()}
    assert dict(endings) == statuses  # the store's ending and the verdict agree
    assert [job for job, status in statuses.items() if status == "failed"] == ["j-9", "j-11"]
    effects = ledger.entries("effect")
    assert sorted(entry.job for entry in effects) == sorted(job for job, s in statuses.items() if s == "done")
    assert {entry.job: entry.repeats for entry in effects if entry.repeats} == {"j-7": 1}  # made once, asked twice
    resumed = sorted((event.key for event in log if event.kind == "resumed"), key=lambda key: int(key[2:]))
    assert resumed == ["j-2", "j-3", "j-4", "j-5", "j-7", "j-8", "j-9", "j-10", "j-11"]
    j7 = [(event.epoch, event.kind, event.state) for event in log if event.key == "j-7"]
    assert j7 == [
        (1, "spawned", ""),
        (1, "async", "queued"),
        (1, "async", "leased"),
        (1, "async", "running"),
        (2, "resumed", ""),
        (2, "done", ""),
    ]
    async with hybrid.durable.open_store(store) as opened:  # a runner started again finds everything ended
        ending = await opened.outcome("j-9")
        assert ending is not None
        assert ending.status is hybrid.durable.Status.FAILED


def test_the_demo_prints_what_happened_from_the_ledger_and_the_event_log() -> None:
    """The whole demo, exactly: the staged crash and the standby runner make its output the same each run."""
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == DEMO_OUTPUT
    assert done.stderr == ""
