"""A job runner (the seed job runner, knittingCrab, rebuilt on hybrid): priorities, leases, retries, timeouts, breakers.

Each job is a durable agent whose states are the job's life, so the store's
event log is the job's history:

    queued -> leased -> running -> (done)                     Next.done(report): the key's ending
                           |-> retried -> queued ...          an attempt failed: try again after a backoff
                           |-> waiting -> queued ...          the kind's breaker is open: no attempt made
                           '-> (failed)                       out of attempts, or not worth retrying: Next.fail

- `queued`: the job asks the `Dispatcher` for a worker. The dispatcher's
  mailbox is a priority mailbox and its `take` handler waits for an idle
  worker, so the requests wait in the mailbox, higher priority first, FIFO
  within one: the mailbox is the queue.
- `leased`: the worker takes the job's lease (a TTL and a fencing token) in
  the store's lease table, which every runner process on the database shares:
  no process runs a job whose lease is alive. The runner holds it for the
  worker in one `hold()` block, renewed every third of its TTL (the
  heartbeat), until the job gives its worker back. A runner that dies stops
  renewing it, and the job is taken again once the lease has expired.
- `running`: one attempt, through the circuit breaker of the job's kind. An
  async kind runs its steps under a one-child `Watchdog` supervisor: at the
  soft timeout the supervisor interrupts the attempt (it finishes the step in
  progress and cleans up), and past the child's `shutdown_timeout` (the
  grace) it interrupts it again, which cancels the step: the hard timeout. A
  sync kind (CPU work in a thread) runs with `.timeout(soft)` and polls
  `hybrid.interrupted()` between chunks: it stops at its next check. Either
  way the job keeps the progress made, and its next attempt goes on from it.
- `retried`: waits the core's backoff (`hybrid.RetryPolicy`: 0.1 s, doubled
  each time, at most 30 s) and queues again; past `attempts` tries, the job
  fails.
- `waiting`: the kind's breaker refused the attempt (`hybrid.CircuitOpen`):
  the job waits the breaker's `retry_after` and queues again, instead of
  hammering a service that is down. A refused attempt does not count.

Side effects go to a ledger (a SQLite file that stands for the world outside)
under `ctx.idempotency_key`: a state that runs again after a crash makes no
second effect. The same goes for the verdict each job sends its submitter.

    python examples/job_runner.py

runs a batch of 12 jobs on 3 workers in a child process (runner 1), and kills
it with SIGKILL right after job j-7 made its side effect, while j-3 and j-8 are
mid-attempt: their leases are left held. A second runner process, started
beforehand and waiting (a standby), then takes over on the same store: it
resumes every unfinished job and runs it to the end. The demo then prints,
from the ledger and the store's event log: one line per job (how it ended, on
which attempt, the delays of its retries, its timeouts, whether it waited for
its breaker or for a dead worker's lease, and the error of a failed job); the
totals; what the kill cost; and the event log of j-7 ("runner N" is the
key's epoch: each process that claims a key takes the next one). Each job's
payload scripts what its attempts run into, so the output is the same from
one run to the next. Needs the durable extra: pip install 'trio-hybrid[durable]'.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import trio
from typing_extensions import Self

import hybrid
import hybrid.durable
from hybrid import Agent, Next

# -- what the jobs are -------------------------------------------------------------------


@attrs.frozen
class Kind:
    """A kind of job: how its attempts run, and what they call.

    Attributes:
        sync: CPU work in a worker thread (`Next.do_sync` with `.timeout()`), else async steps under a `Watchdog`.
        steps: the work of one job, in steps (async) or chunks (sync).
        step: seconds per step or chunk.
        service: what an attempt of this kind calls (for the messages).
    """

    sync: bool
    steps: int
    step: float
    service: str


KINDS: Final[dict[str, Kind]] = {
    "email": Kind(sync=False, steps=1, step=0.02, service="the mail server"),
    "invoice": Kind(sync=False, steps=2, step=0.02, service="the payment gateway"),
    "sms": Kind(sync=False, steps=1, step=0.02, service="the sms gateway"),
    "webhook": Kind(sync=False, steps=1, step=0.02, service="the partner's endpoint"),
    "video": Kind(sync=False, steps=4, step=0.05, service="the encoder"),
    "report": Kind(sync=True, steps=25, step=0.02, service="the report builder"),
}


@attrs.frozen
class Settings:
    """How a runner runs its jobs.

    Attributes:
        workers: jobs run at once, at most.
        lease_ttl: seconds a job's lease outlives a runner that stopped renewing it (renewed every third of it).
        soft_timeout: seconds an attempt may run before it is asked to stop.
        grace: seconds between the soft timeout and the hard one (the `Watchdog`'s `shutdown_timeout`).
        retry: the backoff between attempts and their number (the core's `hybrid.RetryPolicy`).
        breaker_failures: failures in a row of one kind that open its breaker.
        breaker_reset: seconds a breaker stays open before it lets one probe through.
        min_wait: the shortest wait of a job refused by a breaker (a half-open breaker says 0 while its probe runs).
        kinds: the kinds of job, by name.
    """

    workers: int = 3
    lease_ttl: float = 1.0
    soft_timeout: float = 0.3
    grace: float = 0.2
    retry: hybrid.RetryPolicy = attrs.field(
        factory=lambda: hybrid.RetryPolicy(
            attempts=4, initial=0.1, factor=2, max_delay=30, retry_on=(Unavailable, TimedOut, hybrid.LeaseLost)
        )
    )
    breaker_failures: int = 2
    breaker_reset: float = 0.5
    min_wait: float = 0.05
    kinds: dict[str, Kind] = attrs.field(factory=lambda: dict(KINDS), hash=False)


@attrs.frozen
class JobSpec:
    """A job as submitted: its id, kind and priority (higher first), and its payload.

    In this demo the payload scripts what the job's attempts run into (see `trouble`):
    ``"ok"``, ``"unavailable N"`` (its first N attempts find the service down),
    ``"unavailable always"``, ``"declined"`` (a permanent error), ``"stuck N"``
    (its first N attempts hang in a step).
    """

    id: str
    kind: str
    priority: int
    payload: str = "ok"


JOBS: Final[tuple[JobSpec, ...]] = (
    JobSpec("j-1", "email", 9),
    JobSpec("j-2", "invoice", 4, "unavailable 2"),
    JobSpec("j-3", "report", 8),  # 25 chunks: longer than the soft timeout
    JobSpec("j-4", "sms", 5, "unavailable 1"),
    JobSpec("j-5", "sms", 5, "unavailable 1"),
    JobSpec("j-6", "email", 9),
    JobSpec("j-7", "email", 8),  # the demo kills runner 1 right after j-7's side effect
    JobSpec("j-8", "video", 8, "stuck 1"),
    JobSpec("j-9", "webhook", 3, "unavailable always"),
    JobSpec("j-10", "email", 1),
    JobSpec("j-11", "invoice", 6, "declined"),
    JobSpec("j-12", "email", 9),
)
"""The demo's batch. Three workers take the three emails of priority 9 first, then j-3, j-7 and j-8."""

Trouble = Literal["none", "unavailable", "declined", "stuck"]


def trouble(payload: str, attempt: int) -> Trouble:
    """What attempt number `attempt` (1-based) of a job with this payload runs into."""
    what, _, times = payload.partition(" ")
    if what in ("unavailable", "stuck") and (times == "always" or attempt <= int(times)):
        return "unavailable" if what == "unavailable" else "stuck"
    return "declined" if what == "declined" else "none"


class AttemptFailed(Exception):
    """An attempt of a job failed."""


class Unavailable(AttemptFailed):
    """The service a job calls is down: retried, and counted by the kind's breaker."""


class Rejected(AttemptFailed):
    """The job itself is wrong (a declined card): never retried."""


class TimedOut(AttemptFailed):
    """The attempt ran past its soft timeout (and maybe its hard one): retried."""


@attrs.frozen
class JobReport:
    """How a job ended: the durable agent's output, and the verdict sent to its submitter.

    Attributes:
        job: the job's id.
        kind: its kind.
        priority: its priority.
        status: ``"done"`` or ``"failed"``.
        attempts: attempts made (those refused by a breaker do not count).
        delays: the backoff before each retry, in seconds.
        soft_timeouts: attempts stopped at the soft timeout.
        hard_timeouts: attempts cancelled at the hard timeout.
        breaker_waits: times the kind's open breaker sent the job back to wait.
        breaker_openings: times one of its failed attempts opened the kind's breaker.
        lease_waits: times it waited for the lease of another (dead) worker to expire.
        error: the last error, for a failed job (``"Type: message"``), else ``""``.
    """

    job: str
    kind: str
    priority: int
    status: str
    attempts: int
    delays: tuple[float, ...]
    soft_timeouts: int
    hard_timeouts: int
    breaker_waits: int
    breaker_openings: int
    lease_waits: int
    error: str

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobReport:
        fields: dict[str, Any] = json.loads(text)
        fields["delays"] = tuple(fields["delays"])
        return cls(**fields)


class JobFailed(Exception):
    """A job failed for good: the failure of its durable agent, recorded by the store."""

    def __init__(self, report: JobReport) -> None:
        super().__init__(f"{report.job} failed on attempt {report.attempts}: {report.error}")
        self.report = report


# -- the world outside: the ledger ---------------------------------------------------------


Table = Literal["effect", "verdict"]


@attrs.frozen
class Entry:
    """One row of the ledger: a side effect or a verdict, its idempotency key, and how often it was asked again."""

    table: Table
    key: str
    job: str
    value: str
    repeats: int


@attrs.frozen
class Ledger:
    """The world outside the runner, a SQLite file: the jobs' side effects, and the verdicts sent to the submitter.

    Both are keyed by idempotency key, as a payments API or a mail service
    with idempotency keys is: a request made again under a key already
    applied changes nothing, and is only counted as a repeat.
    """

    path: str

    @contextlib.contextmanager
    def _db(self) -> Generator[sqlite3.Connection]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS ledger (tbl TEXT, key TEXT, job TEXT NOT NULL, value TEXT NOT NULL, "
                "repeats INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tbl, key))"
            )
            yield db

    def _apply(self, table: Table, key: str, job: str, value: str) -> bool:
        with self._db() as db:
            if db.execute("INSERT OR IGNORE INTO ledger VALUES (?, ?, ?, ?, 0)", (table, key, job, value)).rowcount:
                return True
            db.execute("UPDATE ledger SET repeats = repeats + 1 WHERE tbl = ? AND key = ?", (table, key))
            return False

    async def effect(self, key: str, job: str, what: str) -> bool:
        """Make `job`'s side effect under `key`; False if it was made already (a repeat)."""
        return await trio.to_thread.run_sync(self._apply, "effect", key, job, what)

    async def verdict(self, key: str, report: JobReport) -> bool:
        """Tell the submitter how the job ended, under `key`; False if it was told already."""
        return await trio.to_thread.run_sync(self._apply, "verdict", key, report.job, report.to_json())

    def entries(self, table: Table) -> list[Entry]:
        """Every side effect, or every verdict, by key."""
        with self._db() as db:
            rows = db.execute(
                "SELECT key, job, value, repeats FROM ledger WHERE tbl = ? ORDER BY key", (table,)
            ).fetchall()
        return [Entry(table, key, job, value, repeats) for key, job, value, repeats in rows]

    def reports(self) -> list[JobReport]:
        """The verdicts, as reports, by job number."""
        reports = [JobReport.from_json(entry.value) for entry in self.entries("verdict")]
        return sorted(reports, key=lambda report: job_number(report.job))


def job_number(job: str) -> int:
    """The number of a job id (``"j-12"`` -> 12), for sorting."""
    return int(job.rpartition("-")[2])


# -- one attempt ---------------------------------------------------------------------------

Cut = Literal["soft", "hard"]


class Attempt(Agent[None]):
    """One attempt of a job: the work from `progress` on. Not durable: the job's `running` state runs it.

    It never fails: an error of its work is kept in `error` (with `.fallback`),
    so that the job, not a supervisor, decides what it means.
    """

    def __init__(self, kind: Kind, trouble: Trouble, progress: int) -> None:
        self.kind = kind
        self.trouble = trouble
        self.progress = progress
        """Steps done so far, this attempt and the earlier ones: the next attempt goes on from here."""
        self.error: Exception | None = None
        """The error the work raised, if it did."""
        self.cut: Cut | None = None
        """How a timeout stopped the attempt, if one did."""

    def failed(self, error: Exception) -> Next[Self]:
        self.error = error
        return Next.done()

    def check_trouble(self) -> None:
        """Raise what the first step of this attempt runs into, as its payload scripts it."""
        if self.trouble == "unavailable":
            raise Unavailable(f"{self.kind.service} is down")
        if self.trouble == "declined":
            raise Rejected("the card was declined")


class Steps(Attempt):
    """An async attempt, one state per step: an interrupt lands between two steps, a second one cancels a step."""

    def __init__(self, kind: Kind, trouble: Trouble, progress: int) -> None:
        super().__init__(kind, trouble, progress)
        self.in_step = False
        """A step is running (so an interrupt that ends the agent now has cancelled it)."""

    def begin(self) -> Next[Self]:
        return self._step_after(self.progress, first=True)

    def _step_after(self, done: int, *, first: bool = False) -> Next[Self]:
        if done >= self.kind.steps:
            return Next.done()
        return Next.do_async(self.step, done, first).fallback(self.failed)

    async def step(self, n: int, first: bool) -> Next[Self]:
        self.in_step = True
        if first:
            self.check_trouble()
            if self.trouble == "stuck":
                await trio.sleep_forever()  # a call that never answers: only cancelling it helps
        await trio.sleep(self.kind.step)
        self.in_step = False
        self.progress = n + 1
        return self._step_after(n + 1)

    async def on_interrupt(self) -> None:
        # Soft: the step in progress has finished, and the agent ends instead of taking
        # the next one (here it would close files, drop temporary output...).
        # Hard: the second interrupt cancelled the step.
        self.cut = "hard" if self.in_step else "soft"


class Watchdog(hybrid.Supervisor[None]):
    """A one-child supervisor around an async attempt: stopping it is the soft timeout, turning hard after `grace`.

    When a supervisor stops, it interrupts its child and waits; past the
    child's ``shutdown_timeout`` it interrupts it again, which cancels the
    step in progress. That is exactly a soft timeout followed by a hard one.
    """

    def __init__(self, attempt: Steps, grace: float) -> None:
        self.attempt = attempt
        self.grace = grace

    def begin(self) -> Next[Self]:
        self.ctx.spawn(self.attempt, shutdown_timeout=self.grace, name="attempt")
        return Next.events()

    async def on_child_ended(self, address: hybrid.Address[Any], reason: hybrid.StopReason) -> None:
        self.ctx.stop()  # its only child ended: so does it


class Crunch(Attempt):
    """A sync attempt: CPU work in a worker thread, with `.timeout()`; it polls `hybrid.interrupted()` as it goes."""

    def __init__(self, kind: Kind, trouble: Trouble, progress: int, soft_timeout: float) -> None:
        super().__init__(kind, trouble, progress)
        self.soft_timeout = soft_timeout

    def begin(self) -> Next[Self]:
        return Next.do_sync(self.crunch, self.progress).timeout(self.soft_timeout).fallback(self.failed)

    def crunch(self, start: int) -> Next[Self]:
        self.check_trouble()
        for chunk in range(start, self.kind.steps):
            if hybrid.interrupted():  # past the deadline: stop at this check, with the chunks done kept
                self.cut = "soft"
                break
            time.sleep(self.kind.step)  # a chunk of CPU work
            self.progress = chunk + 1
        return Next.done()  # past the deadline, the state fails with trio.TooSlowError all the same


# -- the dispatcher: a priority mailbox in front of the workers -----------------------------


@attrs.frozen
class Take(hybrid.Request[str]):
    """A job asks for a worker; the answer is the worker's name."""

    job: str
    priority: int


class Dispatcher(Agent):
    """Hands the idle workers to the waiting jobs, higher priority first, FIFO within one.

    The `take` handler waits for an idle worker, so while every worker is
    busy the requests wait in the mailbox, which orders them by priority:
    the mailbox is the queue. It starts in a state that waits until the
    runner's backlog is loaded (a state keeps the mailbox unread), so that the
    first jobs to run are the most urgent ones, not the first to be read.
    """

    def __init__(self, idle: trio.MemoryReceiveChannel[str], backlog_loaded: trio.Event) -> None:
        self.idle = idle
        self.backlog_loaded = backlog_loaded
        self.granted: list[str] = []
        """The jobs given a worker, in order."""

    @staticmethod
    def message_priority(message: object) -> int:
        return message.priority if isinstance(message, Take) else 0

    def begin(self) -> Next[Self]:
        return Next.do_async(self.load_backlog)

    async def load_backlog(self) -> Next[Self]:
        await self.backlog_loaded.wait()
        return Next.events()

    @hybrid.on_request
    async def take(self, request: Take) -> str:
        worker = await self.idle.receive()
        self.granted.append(request.job)
        return worker


# -- what the jobs of one runner process share ----------------------------------------------


def lease_name(job: str) -> str:
    """The name of a job's lease."""
    return f"job/{job}"


@attrs.define(eq=False)
class HeldLease:
    """A job's lease, held for it by its runner from `leased` until the job gives its worker back."""

    released: trio.Event = attrs.Factory(trio.Event)
    """Set when the job gives its worker back: the lease is released then."""
    attempt: trio.CancelScope = attrs.Factory(trio.CancelScope)
    """The scope of the job's attempt: cancelled if the lease is lost."""
    lost: hybrid.LeaseLost | None = None
    """Why the lease was lost, if it was."""


class Runner:
    """What the jobs of one runner process share: settings, leases, breakers, the dispatcher, the workers.

    None of it is durable: each process makes its own, and the jobs find it
    with `current_runner()` (their attrs fields, which are durable, cannot
    hold it).
    """

    def __init__(
        self,
        name: str,
        settings: Settings,
        leases: hybrid.LeaseTable,
        ledger: Ledger,
        *,
        jobs: int,
        durable: bool,
        kill_at: str | None = None,
    ) -> None:
        self.name = name
        """This runner: the workers' leases are held as "{name}/{worker}"."""
        self.settings = settings
        self.leases = leases
        self.ledger = ledger
        self.durable = durable
        """The jobs run on a store (else in memory, on trio's clock)."""
        self.kill_at = kill_at
        """A job whose side effect kills this process (SIGKILL) right after it is made: the demo's crash."""
        self.breakers = {
            kind: hybrid.CircuitBreaker(
                failures=settings.breaker_failures, reset_after=settings.breaker_reset, counts=Unavailable, name=kind
            )
            for kind in settings.kinds
        }
        """One circuit breaker per kind of job (they live in this process only)."""
        self._idle_send, idle = trio.open_memory_channel[str](settings.workers)
        for n in range(1, settings.workers + 1):
            self._idle_send.send_nowait(f"w{n}")
        self._jobs = jobs
        self.backlog_loaded = trio.Event()
        """Set once every job of the batch has entered a state or ended: the dispatcher starts then."""
        self.dispatcher = Dispatcher(idle, self.backlog_loaded)
        self.address: hybrid.Address[Dispatcher] | None = None
        """The dispatcher's address: set by `run_batch` before any job starts."""
        self.workers: dict[str, str] = {}
        """The worker each job holds now, by job id."""
        self.held: dict[str, HeldLease] = {}
        """The lease each job holds now, by job id."""
        self.keepers: trio.Nursery | None = None
        """Where the leases are held and renewed: set by `run_batch` before any job starts."""
        self.states: dict[str, str] = {}
        """The state each job is in now, as this process saw it ("ended" once it ended)."""
        self.history: list[tuple[float, str, str]] = []
        """(trio time, job id, state) of every state a job entered in this process."""
        self._moved = trio.Event()
        """Set (and replaced) each time a job enters a state."""
        self.results: dict[str, JobReport | hybrid.durable.RecordedFailure] = {}
        """How each job ended (a job that failed in an earlier process: the store's record)."""

    def holder(self, worker: str) -> str:
        return f"{self.name}/{worker}"

    def entered(self, job: str, state: str) -> None:
        self.states[job] = state
        self.history.append((trio.current_time(), job, state))
        if len(self.states) == self._jobs:
            self.backlog_loaded.set()
        self._moved.set()
        self._moved = trio.Event()

    async def take_worker(self, job: Job) -> str:
        assert self.address is not None, "the dispatcher runs before the jobs"
        worker = await self.address.request(Take(job.id, job.priority))
        self.workers[job.id] = worker
        return worker

    def free_worker(self, job: str) -> None:
        """Give the job's worker back, and release its lease."""
        worker = self.workers.pop(job, None)
        if worker is not None:
            self._idle_send.send_nowait(worker)
        held = self.held.pop(job, None)
        if held is not None:
            held.released.set()

    async def take_lease(self, job: str, worker: str) -> HeldLease:
        """Hold the job's lease for `worker` (waiting while another holder has it) until `free_worker`."""
        assert self.keepers is not None, "the keepers' nursery is open before the jobs start"
        held = HeldLease()
        await self.keepers.start(self._keep_lease, job, worker, held)
        self.held[job] = held
        return held

    async def _keep_lease(
        self, job: str, worker: str, held: HeldLease, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # One hold() block for the job's whole stay on the worker, across its leased and
        # running states: renewed every third of its TTL (the heartbeat), released at the end.
        try:
            async with self.leases.hold(lease_name(job), self.holder(worker), ttl=self.settings.lease_ttl):
                task_status.started()
                await held.released.wait()
        except hybrid.LeaseLost as lost:
            held.lost = lost
            held.attempt.cancel()

    async def made_effect(self, job: str) -> None:
        """The demo's crash, staged: after `kill_at`'s side effect, once every job holding a worker is running."""
        if job != self.kill_at:
            return
        while any(self.states.get(other) != "running" for other in self.workers):
            await self._moved.wait()
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no last write, the leases left held

    async def run_job(self, spec: JobSpec, store: hybrid.durable.Store | None) -> None:
        """Run one job to its end: start it, resume it from its checkpoint, or read how it ended."""
        job = Job(spec.id, spec.kind, spec.priority, spec.payload)
        try:
            self.results[spec.id] = await (job.run() if store is None else store.run(job, key=spec.id))
        except JobFailed as failed:
            self.results[spec.id] = failed.report
        except hybrid.durable.RecordedFailure as failed:  # it failed in an earlier run of the runner
            self.results[spec.id] = failed
        finally:
            # The worker goes back only now, once the job's ending is saved: the next job
            # starts when this one is on record.
            self.free_worker(spec.id)
            self.entered(spec.id, "ended")


_runner: contextvars.ContextVar[Runner] = contextvars.ContextVar("job_runner")


def current_runner() -> Runner:
    """The runner of the batch this job runs in (set by `run_batch`)."""
    return _runner.get()


# -- a job: a durable state machine --------------------------------------------------------


@hybrid.durable.durable(name="job_runner.Job")
@attrs.define
class Job(Agent[JobReport]):
    """One job. Its attrs fields are saved at every transition; its states are its history in the event log."""

    id: str
    kind: str
    priority: int
    payload: str
    attempts: int = 0
    progress: int = 0
    delays: list[float] = attrs.Factory(list[float])
    soft_timeouts: int = 0
    hard_timeouts: int = 0
    breaker_waits: int = 0
    breaker_openings: int = 0
    lease_waits: int = 0

    def begin(self) -> Next[Self]:
        return Next.do_async(self.queued)

    async def queued(self) -> Next[Self]:
        runner = self._enter("queued")
        worker = await runner.take_worker(self)
        return Next.do_async(self.leased, worker)

    async def leased(self, worker: str) -> Next[Self]:
        runner = self._enter("leased")
        if runner.workers.get(self.id) != worker:  # resumed by another runner: its worker is gone
            worker = await self._reclaim(runner)
        await self._take_lease(runner, worker)
        return Next.do_async(self.running, worker)

    async def running(self, worker: str) -> Next[Self]:
        runner = self._enter("running")
        if runner.workers.get(self.id) != worker:  # resumed by another runner: its worker and lease are gone
            worker = await self._reclaim(runner)
            await self._take_lease(runner, worker)
        held = runner.held[self.id]
        try:
            with held.attempt:  # cancelled if the lease is lost
                await self._attempt(runner)
            if held.lost is not None:
                raise held.lost
        except hybrid.CircuitOpen as refused:  # not an attempt: wait for the breaker, without a worker
            self.breaker_waits += 1
            runner.free_worker(self.id)
            return Next.do_async(self.waiting, max(refused.retry_after, runner.settings.min_wait))
        except (AttemptFailed, hybrid.LeaseLost) as error:
            policy = runner.settings.retry
            if policy.retries(error) and self.attempts < policy.attempts:
                delay = policy.delay(self.attempts)
                self.delays.append(delay)
                runner.free_worker(self.id)
                return Next.do_async(self.retried, delay)
            report = self._report("failed", error)
            await runner.ledger.verdict(self._key(runner), report)
            return Next.fail(JobFailed(report))
        report = self._report("done")
        await runner.ledger.verdict(self._key(runner), report)
        return Next.done(report)

    async def retried(self, delay: float) -> Next[Self]:
        self._enter("retried")
        await trio.sleep(delay)
        return Next.do_async(self.queued)

    async def waiting(self, delay: float) -> Next[Self]:
        self._enter("waiting")
        await trio.sleep(delay)
        return Next.do_async(self.queued)

    # -- helpers of the states ----------------------------------------------------------

    def _key(self, runner: Runner) -> str:
        """The idempotency key of this state's effects: the store's, or, for a run in memory, a key per attempt."""
        return self.ctx.idempotency_key if runner.durable else f"{self.id}@{self.attempts}"

    def _enter(self, state: str) -> Runner:
        runner = current_runner()
        runner.entered(self.id, state)
        return runner

    async def _reclaim(self, runner: Runner) -> str:
        """A worker of this runner, for a job resumed in `leased` or `running` after its runner died.

        The lease of its dead worker may still be alive: wait for it to
        expire before taking a worker, so that no worker idles meanwhile.
        """
        if await runner.leases.current(lease_name(self.id)) is not None:
            self.lease_waits += 1
            await runner.leases.wait_free(lease_name(self.id))
        return await runner.take_worker(self)

    async def _take_lease(self, runner: Runner, worker: str) -> None:
        """Take the job's lease for `worker`, waiting while another worker (alive, or dead but unexpired) has it."""
        if await runner.leases.current(lease_name(self.id)) is not None:
            self.lease_waits += 1
        await runner.take_lease(self.id, worker)

    async def _attempt(self, runner: Runner) -> None:
        """One attempt, through the breaker of the job's kind; its side effect if it succeeds.

        Raises:
            hybrid.CircuitOpen: the breaker refused it (it does not count).
            AttemptFailed: the attempt failed or timed out.
        """
        breaker = runner.breakers[self.kind]
        opened: int | None = None
        try:
            async with breaker:
                self.attempts += 1
                try:
                    await self._work(runner)
                finally:  # read just before the breaker counts this outcome (no checkpoint in between)
                    opened = breaker.statistics().times_opened
        finally:
            if opened is not None:
                self.breaker_openings += breaker.statistics().times_opened - opened
        # Made once, whatever happens next: the key is the same each time this state runs again.
        await runner.ledger.effect(self._key(runner), self.id, f"{self.kind} {self.id} sent")
        await runner.made_effect(self.id)

    async def _work(self, runner: Runner) -> None:
        settings = runner.settings
        kind = settings.kinds[self.kind]
        attempt: Attempt
        if kind.sync:
            attempt = Crunch(kind, trouble(self.payload, self.attempts), self.progress, settings.soft_timeout)
            await attempt.run()
        else:
            attempt = Steps(kind, trouble(self.payload, self.attempts), self.progress)
            async with trio.open_nursery() as nursery:
                watchdog = hybrid.spawn(nursery, Watchdog(attempt, settings.grace))
                with trio.move_on_after(settings.soft_timeout) as soft:
                    await watchdog.join()
                if soft.cancelled_caught:
                    watchdog.interrupt()  # soft: finish the step; past the grace, the step is cancelled
                    await watchdog.join()
        self.progress = attempt.progress
        if attempt.cut == "hard":
            self.hard_timeouts += 1
            raise TimedOut(f"cancelled {settings.grace:g} s after its soft timeout")
        if attempt.cut == "soft" or isinstance(attempt.error, trio.TooSlowError):
            self.soft_timeouts += 1
            raise TimedOut(f"stopped at its soft timeout ({attempt.progress} of {kind.steps} steps done)")
        if attempt.error is not None:
            raise attempt.error

    def _report(self, status: str, error: BaseException | None = None) -> JobReport:
        return JobReport(
            job=self.id,
            kind=self.kind,
            priority=self.priority,
            status=status,
            attempts=self.attempts,
            delays=tuple(self.delays),
            soft_timeouts=self.soft_timeouts,
            hard_timeouts=self.hard_timeouts,
            breaker_waits=self.breaker_waits,
            breaker_openings=self.breaker_openings,
            lease_waits=self.lease_waits,
            error="" if error is None else f"{type(error).__name__}: {error}",
        )


# -- a batch, and a runner process ---------------------------------------------------------


async def run_batch(
    specs: Sequence[JobSpec],
    *,
    ledger: Ledger,
    store: hybrid.durable.Store | None = None,
    leases: hybrid.LeaseTable | None = None,
    settings: Settings | None = None,
    name: str = "runner",
    kill_at: str | None = None,
) -> Runner:
    """Run every job of `specs` to its end; return the runner (its `results`, `history`, breakers...).

    With a `store`, the jobs are durable (a job that already ended gives its
    recorded ending, an unfinished one resumes from its checkpoint) and their
    leases are the store's; without one, they run in memory with
    `hybrid.Leases` (or `leases`), on trio's clock.
    """
    if leases is None:
        leases = hybrid.Leases() if store is None else store.leases(poll_interval=0.1)
    settings = settings or Settings()
    runner = Runner(name, settings, leases, ledger, jobs=len(specs), durable=store is not None, kill_at=kill_at)
    token = _runner.set(runner)
    try:
        async with trio.open_nursery() as nursery:
            runner.keepers = nursery
            runner.address = hybrid.spawn(nursery, runner.dispatcher, name=f"{name}/dispatcher")
            async with trio.open_nursery() as jobs:
                for spec in specs:
                    jobs.start_soon(runner.run_job, spec, store)
            runner.address.interrupt()
    finally:
        _runner.reset(token)
    return runner


async def run_runner(store_path: str, ledger_path: str, name: str, kill_at: str | None) -> None:
    """A runner process: submit the batch (idempotent: a job known to the store is resumed, or its ending read)."""
    async with hybrid.durable.open_store(store_path, agents=[Job]) as store:
        await run_batch(JOBS, ledger=Ledger(ledger_path), store=store, name=name, kill_at=kill_at)


# -- the report ----------------------------------------------------------------------------


def describe(report: JobReport) -> list[str]:
    """A job's line: how it ended, and what it went through (and its error on a second line, if it failed)."""
    parts = [f"{report.status} on attempt {report.attempts}"]
    if report.soft_timeouts:
        parts.append(f"{report.soft_timeouts} soft timeout")
    if report.hard_timeouts:
        parts.append(f"{report.hard_timeouts} hard timeout")
    if report.delays:
        parts.append("retried after " + ", ".join(f"{delay:g} s" for delay in report.delays))
    if report.breaker_waits:
        parts.append("waited for its breaker")
    if report.lease_waits:
        parts.append("waited for a dead worker's lease")
    line = f"  {report.job:<5} {report.kind:<8} p{report.priority}  " + "; ".join(parts)
    return [line, f"{'':<21}{report.error}"] if report.error else [line]


def summarize(log: Sequence[hybrid.durable.Event], ledger: Ledger, *, story: str) -> list[str]:
    """The summary of a batch, from the store's event log and the ledger; ends with `story`'s event log."""
    reports = ledger.reports()
    effects = ledger.entries("effect")
    verdicts = ledger.entries("verdict")
    lines = ["jobs:", *(line for report in reports for line in describe(report))]
    statuses = Counter(report.status for report in reports)
    openings: Counter[str] = Counter()
    for report in reports:
        openings[report.kind] += report.breaker_openings
    lines.append(
        f"totals: {statuses['done']} done, {statuses['failed']} failed; "
        f"{sum(len(report.delays) for report in reports)} retries; "
        f"timeouts: {sum(r.soft_timeouts for r in reports)} soft, {sum(r.hard_timeouts for r in reports)} hard; "
        "breakers opened: " + ", ".join(f"{kind} {n}" for kind, n in sorted(openings.items()) if n)
    )
    # What each resumed job was doing when runner 1 died: its last checkpoint before the "resumed" event.
    was: dict[str, str] = {}
    last: dict[str, str] = {}
    for event in log:
        if event.kind == "resumed" and event.key not in was:
            was[event.key] = last[event.key]
        elif event.kind in ("async", "sync", "spawned"):
            last[event.key] = event.state or "queued"
    states = Counter(was.values())
    lines.append(
        f"the kill: runner 2 resumed {len(was)} unfinished jobs "
        f"({', '.join(f'{n} {state}' for state, n in sorted(states.items()))})"
    )
    waited = [report.job for report in reports if report.lease_waits]
    if waited:
        lines.append(f"  {', '.join(waited)} waited for the leases of runner 1's dead workers to expire")
    for entry in (entry for entry in effects if entry.repeats):
        lines.append(f"  {entry.job}'s side effect was asked again, under the same key ({entry.key}): not made twice")
    # Under two keys, a side effect or a verdict would have been made twice: none may be.
    twice = sorted({job for table in (effects, verdicts) for job, n in Counter(e.job for e in table).items() if n > 1})
    lines.append(
        f"the ledger: {len(effects)} side effects for {statuses['done']} jobs done, {len(verdicts)} verdicts "
        f"for {len(reports)} jobs; made twice: {', '.join(twice) or 'none'}"
    )
    lines.append(f"what happened to job {story}, from the event log:")
    for event in log:
        if event.key == story:
            what = event.state if event.kind in ("async", "sync") else event.kind
            note = "   (runner 1 was killed in this state)" if event.kind == "resumed" else ""
            lines.append(f"  runner {event.epoch}  #{event.seq}  {what}{note}")
    return lines


async def read_log(store_path: str) -> list[hybrid.durable.Event]:
    async with hybrid.durable.open_store(store_path) as store:
        return await store.events()


KILL_AT: Final = "j-7"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A job runner on hybrid: the demo, or one runner process of it.")
    parser.add_argument("--runner", nargs=2, metavar=("STORE", "LEDGER"), help="be a runner process (the demo's child)")
    parser.add_argument("--name", default="runner", help="the runner's name (its workers' lease holders)")
    parser.add_argument("--kill-at", metavar="JOB", help="SIGKILL this process right after JOB's side effect")
    parser.add_argument("--standby", action="store_true", help="start only once a line arrives on stdin")
    args = parser.parse_args(argv)
    if args.runner is not None:
        logging.getLogger("hybrid.breaker").setLevel(logging.ERROR)  # the summary counts the openings
        if args.standby and sys.stdin.readline() != "go\n":
            return  # imported and ready, but the demo ended without needing it
        trio.run(run_runner, args.runner[0], args.runner[1], args.name, args.kill_at)
        return
    with tempfile.TemporaryDirectory() as folder:
        store_path = str(Path(folder, "jobs.db"))
        ledger_path = str(Path(folder, "ledger.db"))
        command = [sys.executable, __file__, "--runner", store_path, ledger_path]
        # Runner 2 starts now but waits: when runner 1 dies, it takes over at once, while the
        # leases of runner 1's workers are still alive.
        with subprocess.Popen([*command, "--name", "runner-2", "--standby"], stdin=subprocess.PIPE) as second:  # noqa: S603
            first = subprocess.run([*command, "--name", "runner-1", "--kill-at", KILL_AT], check=False)  # noqa: S603
            print(
                f"runner 1: {len(JOBS)} jobs, {Settings().workers} workers; killed by signal {-first.returncode} "
                f"right after {KILL_AT} made its side effect"
            )
            second.communicate(b"go\n")
        if second.returncode:
            raise SystemExit(f"runner 2 failed with status {second.returncode}")
        print("runner 2: took over on the same store, resumed the unfinished jobs, ran them to the end")
        log = trio.run(read_log, store_path)
        for line in summarize(log, Ledger(ledger_path), story=KILL_AT):
            print(line)


if __name__ == "__main__":
    main()
