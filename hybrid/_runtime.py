"""The run of one agent: its run loop, its phases, its ending.

This module knows the mailbox below it and none of the handles above it
(`Address`, `Context`, timers, streams, monitors): they call in here, never
the reverse. The handles it must name (the address given to instruments and
monitors, the context) are stored as opaque objects by `_agent.py`.

Hot paths (the message loop, transitions) avoid per-message allocation beyond
the message itself: the loop handles the queued messages of a turn without a
scheduler round trip each (yielding at least every `FAIRNESS` messages or
transitions), and dispatch is one dict lookup by exact type.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, final

import outcome
import trio
from trio.lowlevel import Task, checkpoint, current_task, reschedule, wait_task_rescheduled

from . import _retry
from ._checkpointer import Checkpointer
from ._exceptions import AgentStopped, InvalidTransition, LifecycleError
from ._handlers import ROUTE
from ._instrument import Instruments, current_instruments
from ._mailbox import CLOSED, INTERRUPT_MARK, Mailbox, RequestCall, Response, Stamped, Tick, is_abandoned, received
from ._next import _INTERRUPT, ASYNC, DONE, EVENTS, FAIL, INTERRUPT, PERFORM, STOP, SYNC, Next, _make
from ._registry import current_names, per_run
from ._stop import CANCELLED_REASON, DONE_REASON, INTERRUPTED_REASON, STOPPED_REASON, StopKind, StopReason

if TYPE_CHECKING:
    from ._agent import Agent

logger = logging.getLogger("hybrid.agent")

FAIRNESS: Final = 64
"""The loop yields to other tasks at least every this many messages or transitions."""

current_runtime: ContextVar[Runtime | None] = ContextVar("hybrid_current_agent", default=None)
"""The runtime of the agent whose code runs in this task (or worker thread)."""

# Phases, in the order an agent goes through them (HOOK: on_interrupt runs);
# HIBERNATING: idle in actor mode without a task (see `Runtime.hibernate`). It is
# named "events" outside: the agent is in actor mode, only without a task.
STARTING, STATE, EVENTS_PHASE, HOOK, FINISHING, ENDED, HIBERNATING = range(7)
PHASE_NAMES: Final = ("starting", "state", "events", "hook", "finishing", "ended", "events")

_RESUMING: Final[Next[Any]] = _make(EVENTS)
"""The transition a woken hibernating agent resumes with: actor mode, not reported again."""


def _check_awaitable(step: object, state: Next[Any]) -> None:
    """A state given to do_async returned something that cannot be awaited: say what to write instead."""
    if not inspect.isawaitable(step):
        raise InvalidTransition(
            f"state {state!r} is not an 'async def' function: it ran on the trio thread and returned {step!r}; "
            "use Next.do_sync(...) to run a plain function in a worker thread, or make it async"
        ) from None


@final
class _Starter:
    """Calls ``task_status.started(address)`` once: after `begin()`, or at the end if begin() never returned."""

    __slots__ = ("status", "value")

    def __init__(self, status: trio.TaskStatus[Any], value: Any) -> None:
        self.status: trio.TaskStatus[Any] | None = status
        self.value = value

    def fire(self) -> None:
        status = self.status
        if status is not None:
            self.status = None
            status.started(self.value)

    def started(self, value: object = None) -> None:
        """As a ``task_status`` itself (a contained run's, given to `Runtime.main`)."""
        self.fire()


class Hooks(Protocol):
    """What the runtime calls on the agent's context for its lifecycle hooks."""

    async def call_on_interrupt(self) -> None: ...
    async def call_on_stop(self, reason: StopReason) -> None: ...


@final
class _StateName:
    """How a retried state is named in the log, formatted only if a line is emitted (its args' reprs may be long)."""

    __slots__ = ("name", "nxt")

    def __init__(self, name: str, nxt: Next[Any]) -> None:
        self.name = name
        self.nxt = nxt

    def __str__(self) -> str:
        return f"{self.name}: state {self.nxt!r}"


@final
class Runtime:
    """Everything the runtime keeps about one run of one agent.

    Unless said otherwise, a field is written only by the agent's own task,
    on the trio thread. Handles (address, context, timers) call the methods
    below from the trio thread; calls from worker threads are carried over by
    `_thread.py` first.
    """

    __slots__ = (
        "address",
        "agent",
        "checkpointer",
        "context",
        "ctx",
        "ended",
        "ending",
        "error",
        "escaped",
        "handled",
        "helpers",
        "hibernate_after",
        "host",
        "hosting",
        "interrupt_event",
        "interrupt_handled",
        "interrupts",
        "keep_address",
        "mailbox",
        "monitors",
        "next",
        "output",
        "phase",
        "probe",
        "reason",
        "scope",
        "state",
        "steps",
        "task",
        "transitions",
    )

    def __init__(self, agent: Agent[Any], mailbox: Mailbox, host: trio.Nursery | None) -> None:
        self.agent = agent
        """The agent instance; it runs once."""
        self.mailbox = mailbox
        """The address's mailbox, read only by this run's loop."""
        self.address: Any = None
        """The `Address` (set by `_agent.py` before the run starts; opaque here)."""
        self.ctx: Hooks = cast("Hooks", None)
        """The agent's `Context` (set by `_agent.py` with the address)."""
        self.host = host
        """The nursery helper tasks run in: the spawner's, or the runner's own."""
        self.phase = STARTING
        """Where the agent is; ``phase == ENDED`` is the one test of "has ended"."""
        self.next: Next[Any] | None = None
        """A transition scheduled by a handler or hook (``do_next``, ``shutdown``,
        ``stop``) and not yet taken; written by handlers, taken by the loop."""
        self.ending: StopReason | None = None
        """The ending chosen so far (done, interrupted, stopped, failed), while the
        agent finishes; `on_stop` sees it. Not the final reason."""
        self.reason: StopReason | None = None
        """The final reason: set once, together with ``phase = ENDED``, by `finish`."""
        self.output: Any = None
        """The value given to ``Next.done`` (None for any other ending)."""
        self.error: BaseException | None = None
        """The failure `join()` and `run()` re-raise (None unless failed)."""
        self.escaped: BaseException | None = None
        """A BaseException (cancellation, KeyboardInterrupt...) that left the agent's task."""
        self.interrupts = 0
        """How many times `interrupt()` was called (any thread, via the hop)."""
        self.interrupt_handled = False
        """`on_interrupt` has run (or started): it runs once per agent."""
        self.interrupt_event: trio.Event | None = None
        """Set at the first interrupt; made by the first ``ctx.wait_interrupted()``."""
        self.scope: trio.CancelScope | None = None
        """The scope around the agent's steps: a second interrupt cancels it."""
        self.helpers: set[trio.CancelScope | Hosting] | None = None
        """What runs beside the agent until it ends: the scopes of its helper tasks
        (timers, streams, ``start_soon``) and the hostings of the runs it started
        (``ctx.start_agent``); each is removed when it ends, and cancelled if the agent
        ends first."""
        self.keep_address = False
        """When this run ends, keep the mailbox open for a successor (restarts)."""
        self.state: Next[Any] | None = None
        """The current (or last) state transition."""
        self.transitions = 0
        """States entered so far."""
        self.handled = 0
        """Messages taken from the mailbox so far."""
        self.steps = 0
        """Messages and transitions since the last yield (fairness, across modes)."""
        self.task: Task | None = None
        """The agent's task, once it runs."""
        self.ended: trio.Event | None = None
        """Set when the agent ends; made by the first `join()` that waits."""
        self.monitors: list[Callable[[Runtime], None]] | None = None
        """Called once when the agent ends (made by the first monitor)."""
        self.probe: Instruments = current_instruments()
        """The run's instruments; ``probe.active is None`` while there are none."""
        self.hibernate_after: float | None = None if host is None else type(agent).hibernate_after
        """Idle seconds in actor mode after which the agent gives its task up (None: never).
        Only an agent hosted in a nursery (spawned) hibernates: a run() holds its caller's task."""
        self.hosting: Hosting | None = None
        """For a run started by ``ctx.start_agent``: its end callback, its kill switch (else None)."""
        self.checkpointer: Checkpointer | None = None
        """Told of each transition before it is taken (a durable agent); set before the run starts."""
        self.context: contextvars.Context | None = None
        """For an agent that may hibernate: the contextvars its next task starts with (those
        its last task had; set by `main`)."""
        mailbox.run = self

    @property
    def name(self) -> str:
        return self.mailbox.name

    # -- control from outside ----------------------------------------------

    def interrupt(self) -> None:
        """The first interrupt is a message; the next ones cancel the running step."""
        if self.phase == ENDED:
            if self.mailbox.limit != CLOSED:  # held for a successor: it is interrupted at its start
                self.mailbox.put_interrupt_mark()
            return
        self.interrupts += 1
        if self.interrupt_event is not None:
            self.interrupt_event.set()
        if self.interrupts == 1:
            # Past any bound. Not once the run is ending (on_stop, finishing): it takes
            # no more interrupts, and a mark left queued would reach a successor.
            if self.ending is None:
                self.mailbox.put_interrupt_mark()
        elif self.scope is not None:
            self.scope.cancel()

    def schedule(self, nxt: Next[Any]) -> None:
        """``ctx.do_next``: a transition from a handler or `on_interrupt`."""
        if type(nxt) is not Next:
            raise InvalidTransition(f"do_next needs a Next, got {nxt!r}")
        phase = self.phase
        if phase not in (EVENTS_PHASE, HOOK, HIBERNATING):
            if phase == STATE:
                raise LifecycleError(
                    "do_next is for message handlers and on_interrupt; a state returns its next transition"
                )
            if phase == STARTING:
                raise LifecycleError("do_next is for message handlers; begin() returns the first transition")
            raise LifecycleError(f"{self.name} is finishing; it takes no new transitions")
        if self.next is not None:
            raise LifecycleError(f"a transition is already scheduled: {self.next!r}")
        self.next = nxt
        self.mailbox.wake()

    def request_end(self, nxt: Next[Any]) -> None:
        """``ctx.shutdown()`` / ``ctx.stop()``: end when the current step returns."""
        if self.phase == ENDED:
            return
        current = self.next
        # Ending requests override a scheduled transition; stop overrides
        # shutdown; nothing overrides a failure (it is never lost).
        if current is None or current._kind not in (STOP, FAIL):
            self.next = nxt
        self.mailbox.wake()

    # -- helper tasks ----------------------------------------------------------

    def _check_helper(self, what: str) -> trio.Nursery:
        """The host nursery a helper starts in; refuse one the agent may not start now."""
        if self.phase == ENDED:
            raise LifecycleError(f"{self.name} has ended; it cannot start {what}")
        if not type(self.agent).helper_tasks:
            raise LifecycleError(
                f"{self.name} cannot start {what}: {type(self.agent).__qualname__} declares helper_tasks = False"
            )
        if self.host is None:
            raise LifecycleError(f"{self.name} has not started yet; {what} start with it")
        return self.host

    def _add_helper(self, helper: trio.CancelScope | Hosting) -> None:
        helpers = self.helpers
        if helpers is None:
            helpers = self.helpers = set()
        helpers.add(helper)

    def helper_ended(self, helper: trio.CancelScope | Hosting) -> None:
        helpers = self.helpers
        if helpers is not None:
            helpers.discard(helper)
            if not helpers and self.hosting is not None and self.hosting.drained is not None:
                self.hosting.drained.set()

    def start_helper(self, fn: Callable[[], Awaitable[object]], name: object) -> None:
        """Run `fn` beside the agent, in its host nursery, until it returns or the agent ends."""
        host = self._check_helper("helper tasks (timers, consume, start_soon)")
        scope = trio.CancelScope()
        self._add_helper(scope)

        async def helper() -> None:
            try:
                with scope:
                    await fn()
            except Exception as error:
                if self.hosting is None:
                    raise
                self.hosting.helper_failed(self, error)
            finally:
                self.helper_ended(scope)

        host.start_soon(helper, name=name)

    def cancel_helpers(self) -> None:
        if self.helpers:
            for helper in self.helpers:
                helper.cancel()

    async def start_contained(
        self, child: Runtime, on_end: Callable[[StopReason], Awaitable[object]], hibernate_after: float | None
    ) -> None:
        """``ctx.start_agent``: run `child` beside this agent, contained; return once its begin() has run."""
        host = self._check_helper("agents")
        if child.phase != STARTING or child.task is not None or child.hosting is not None:
            raise LifecycleError(f"{child.name}: an AgentRunner runs once")
        hosting = Hosting(on_end, self, child)
        child.hosting = hosting
        child.host = host
        child.hibernate_after = type(child.agent).hibernate_after if hibernate_after is None else hibernate_after
        self._add_helper(hosting)
        await host.start(child.run_contained, False, name=f"hybrid agent {child.name}")

    # -- monitors ----------------------------------------------------------------

    def add_monitor(self, notify: Callable[[Runtime], None]) -> None:
        """Call ``notify(self)`` when the agent has ended (at once if it has)."""
        if self.phase == ENDED:
            notify(self)
            return
        if self.monitors is None:
            self.monitors = []
        self.monitors.append(notify)

    def remove_monitor(self, notify: Callable[[Runtime], None]) -> None:
        monitors = self.monitors
        if monitors is not None and notify in monitors:
            monitors.remove(notify)

    # -- the ending --------------------------------------------------------------

    def choose_ending(self, reason: StopReason, output: Any = None) -> None:
        self.ending = reason
        self.output = output
        self.error = reason.error if reason.kind is StopKind.FAILED else None

    def finish(self, reason: StopReason) -> None:
        """End the agent: the one place where ``phase`` becomes ENDED.

        Its address is given up (name released, mailbox closed) unless it is
        kept for a successor; joiners, monitors and instruments are told.
        """
        self.reason = reason
        self.phase = ENDED
        mailbox = self.mailbox
        mailbox.parked = mailbox.reader = None
        names = current_names()
        ended = names.of(mailbox.agent_type.__qualname__)
        ended.handled += self.handled
        ended.transitions += self.transitions
        ended.failures += reason.kind is StopKind.FAILED
        if self.keep_address:
            mailbox.reopen()
        else:
            ended.dropped += mailbox.dropped
            names.release(mailbox.name)
        if self.ended is not None:
            self.ended.set()
        monitors = self.monitors
        if monitors:
            self.monitors = None
            for notify in monitors:
                notify(self)
        if not self.keep_address:
            mailbox.given_up()
        if self.probe.active is not None:
            self.probe.agent_stopped(self.address, reason)

    def discard(self, keep_address: bool = False) -> None:
        """Give up an agent that never ran, or the address kept for its successor.

        With `keep_address`, an agent that never ran ends without giving its
        address up: queued messages wait for a successor (an interrupt meant
        for this run is dropped); once the run has ended, nothing happens.
        """
        if self.phase == ENDED:
            if self.mailbox.limit == CLOSED or keep_address:
                return
            self.keep_address = False
            self.mailbox.discard()
            names = current_names()
            names.of(self.mailbox.agent_type.__qualname__).dropped += self.mailbox.dropped
            names.release(self.mailbox.name)
            self.mailbox.given_up()
            return
        if self.phase != STARTING or self.task is not None:
            raise LifecycleError(f"{self.name} has started; interrupt it instead")
        if keep_address:
            self.keep_address = True
            self.mailbox.remove_interrupt_mark()
        else:
            self.keep_address = False  # given up: no successor will take the address over
            self.mailbox.discard()
        self.choose_ending(STOPPED_REASON)
        self.finish(STOPPED_REASON)

    # -- the run ---------------------------------------------------------------

    async def main(
        self, spawned: bool = False, task_status: trio.TaskStatus[Any] | None = None, resumed: bool = False
    ) -> None:
        """Run the agent to its end, then `on_stop`; `finish` it whatever happens.

        The transition loop is written here, in the agent's outermost frame,
        so that an idle agent parks two frames deep (here and `_loop`).
        `resumed`: a hibernating agent woke up; this new task goes on in actor
        mode (and may hibernate again, returning without ending the agent).

        The agent's own failure is recorded (``self.error``) and raised only
        for a spawned agent (its task's error leaves the nursery, as a trio
        task's would). Cancellation and other BaseExceptions propagate
        unchanged, after the agent has ended (``on_stop`` runs shielded).
        """
        self.task = self.mailbox.reader = current_task()
        if self.hibernate_after is not None and not resumed:
            self.context = contextvars.copy_context()  # as spawned: what it resumes with, unless it sets more
        token = current_runtime.set(self)
        starter = None if task_status is None else _Starter(task_status, self.address)
        try:
            agent = self.agent
            probe = self.probe
            if probe.active is not None and not resumed:
                probe.agent_started(self.address)
            try:
                with trio.CancelScope() as scope:
                    self.scope = scope
                    if self.interrupts > 1:
                        scope.cancel()
                    nxt: Next[Any]
                    checkpointer = self.checkpointer
                    if resumed:
                        nxt = _RESUMING
                        # Woken into a cancelled nursery (or a killed run): end, as a parked
                        # task would, before handling anything.
                        await trio.lowlevel.checkpoint_if_cancelled()
                    else:
                        first = None if checkpointer is None else await checkpointer.start(agent)
                        if first is None:
                            nxt = agent.begin()
                            if type(nxt) is not Next:
                                raise InvalidTransition(f"{self.name}.begin() must return a Next, got {nxt!r}")
                        else:
                            nxt = first
                            if type(nxt) is not Next:
                                raise InvalidTransition(
                                    f"{self.name}: its checkpointer's start() must return a Next or None, got {nxt!r}"
                                )
                        if starter is not None:
                            starter.fire()
                        if self.interrupts and nxt._kind <= PERFORM:
                            nxt = _INTERRUPT  # interrupted before its first state: never enters it
                    steps = self.steps
                    # Whether the checkpoint last saved names a step that has not run (actor mode, or
                    # the next transition of an interrupted state): only then are the messages handled
                    # while finishing saved (`_drain`); saved under a state that ran, they would make
                    # it run again, on resume, under another idempotency key.
                    unrun = resumed
                    while True:
                        if probe.active is not None and nxt is not _RESUMING:
                            probe.state_entered(self.address, nxt)
                        kind = nxt._kind
                        if kind <= PERFORM:
                            self.transitions += 1
                            steps += 1
                            if steps >= FAIRNESS:
                                steps = 0
                                await checkpoint()
                            self.phase = STATE
                            self.state = nxt
                            if checkpointer is not None:
                                await checkpointer.transition(agent, nxt)
                                unrun = False
                            if nxt._mods is None:
                                # _perform_plain, inlined: a frame less per transition
                                if kind == ASYNC:
                                    step = nxt._fn(*nxt._args)
                                    try:
                                        nxt = await step
                                    except TypeError:
                                        _check_awaitable(step, nxt)
                                        raise
                                elif kind == SYNC:
                                    nxt = await trio.to_thread.run_sync(nxt._fn, *nxt._args)
                                else:
                                    nxt = await nxt._fn.perform(agent)
                            else:
                                nxt = await self._perform_modified(nxt)
                            if type(nxt) is not Next:
                                raise InvalidTransition(
                                    f"state {self.state!r} of {self.name} must return a Next, got {nxt!r}"
                                )
                            if self.next is not None or (self.interrupts and not self.interrupt_handled):
                                if checkpointer is not None and self.next is None and nxt._kind <= EVENTS:
                                    # Interrupted: the agent ends instead of taking `nxt`, but it is
                                    # where a resumed run goes on (the finished state does not run again).
                                    await checkpointer.transition(agent, nxt)
                                    unrun = True
                                nxt = self._after_step(nxt)
                        elif kind == EVENTS:
                            self.phase = EVENTS_PHASE
                            if checkpointer is not None and nxt is not _RESUMING:
                                await checkpointer.transition(agent, nxt)
                            unrun = True
                            self.steps = steps
                            scheduled = await self._loop(False)
                            if scheduled is None:  # hibernating: this task ends, the agent does not
                                break
                            nxt = scheduled
                            steps = self.steps
                        elif kind == DONE:
                            self.choose_ending(DONE_REASON, nxt._value)
                            self.steps = steps
                            await self._drain(unrun)
                            break
                        elif kind == STOP:
                            self.choose_ending(STOPPED_REASON)
                            break
                        elif kind == FAIL:
                            raise nxt._value
                        else:  # INTERRUPT
                            assert kind == INTERRUPT
                            self.mailbox.remove_interrupt_mark()
                            scheduled = None
                            if not self.interrupt_handled:  # the hook runs once per agent
                                self.interrupt_handled = True
                                self.phase = HOOK
                                await self.ctx.call_on_interrupt()
                                scheduled = self.take_next()
                            if scheduled is None:
                                self.choose_ending(INTERRUPTED_REASON)
                                self.steps = steps
                                await self._drain(unrun)
                                break
                            nxt = scheduled
                if scope.cancelled_caught:
                    await self._forced_interrupt()
            except Exception as error:
                self.choose_ending(StopReason(StopKind.FAILED, error))
            except BaseException as exc:
                await self._cut_short(exc, stop_hook_started=False)
                raise
            if self.phase == HIBERNATING:
                return
            # A spawned agent whose begin() failed never reports itself started:
            # its error goes to whoever waits in nursery.start(). One that ended
            # otherwise before it started (interrupted twice while its checkpointer's
            # start() awaited) reports itself started, ended.
            await self._end(None if spawned and self.error is not None else starter)
        finally:
            current_runtime.reset(token)
            if self.phase == HIBERNATING:
                # Keep the contextvars the agent set; when it set none, keep the
                # context it was spawned with, whose values its spawner shares.
                now = contextvars.copy_context()
                spawned_with = self.context
                kept = spawned_with if spawned_with is not None and _equal(now, spawned_with) else now
                assert self.host is not None
                self.context = _keeper_of(self.host).share(kept)
        if spawned and self.error is not None:
            raise self.error

    async def _end(self, starter: _Starter | None) -> None:
        """The ending chosen: close the mailbox, `on_stop`, cancel the helpers, `finish`."""
        self.mailbox.discard()
        reason = self.ending
        assert reason is not None
        # on_stop runs before helper tasks are cancelled, so that it can end
        # them (or a supervisor's children) gracefully; timers that fire
        # meanwhile find the mailbox closed and stop.
        try:
            await self.ctx.call_on_stop(reason)
        except Exception as error:
            if self.error is not None and error.__context__ is None:
                error.__context__ = self.error  # the failure it replaces stays visible
            reason = StopReason(StopKind.FAILED, error)
            self.choose_ending(reason)
        except BaseException as exc:
            await self._cut_short(exc, stop_hook_started=True)
            raise
        checkpointer = self.checkpointer
        if checkpointer is not None:
            try:
                await checkpointer.ended(self.agent, reason, self.output)
            except Exception as error:
                if reason.error is not None and error.__context__ is None:
                    error.__context__ = reason.error  # the failure it replaces stays visible
                reason = StopReason(StopKind.FAILED, error)
                self.choose_ending(reason)
            except BaseException as exc:
                self.checkpointer = None  # it was told: it raised (or was cancelled) while told
                await self._cut_short(exc, stop_hook_started=True)
                raise
        self.cancel_helpers()
        if starter is not None:
            starter.fire()
        self.finish(reason)

    async def _cut_short(self, exc: BaseException, *, stop_hook_started: bool) -> None:
        """Cancelled from outside, or a BaseException (KeyboardInterrupt...) from the agent's code: end with it."""
        self.escaped = exc
        if not isinstance(exc, trio.Cancelled):
            cut_short = StopReason(StopKind.FAILED, exc)
        elif self.hosting is not None and self.hosting.failure is not None:  # cancelled for its helper's failure
            cut_short = StopReason(StopKind.FAILED, self.hosting.failure)
        else:
            cut_short = CANCELLED_REASON
        self.choose_ending(cut_short)
        self.mailbox.discard()
        self.cancel_helpers()
        try:
            with trio.CancelScope(shield=True):
                if not stop_hook_started:
                    try:
                        await self.ctx.call_on_stop(cut_short)
                    except Exception:
                        logger.exception("%s.on_stop raised while the agent was being %s", self.name, cut_short)
                checkpointer = self.checkpointer
                if checkpointer is not None:
                    try:
                        await checkpointer.ended(self.agent, cut_short, None)
                    except Exception:
                        logger.exception("%s: its checkpointer raised as the agent was %s", self.name, cut_short)
        except BaseException as later:  # on_stop or the checkpointer raised one: it is what leaves, unwrapped
            self.escaped = later
            raise
        finally:
            if self.phase != ENDED:
                self.finish(cut_short)

    async def _forced_interrupt(self) -> None:
        """The scope was cancelled by a second interrupt: end as interrupted."""
        self.mailbox.discard()
        self.next = None
        if not self.interrupt_handled:
            self.interrupt_handled = True
            self.phase = HOOK
            await self.ctx.call_on_interrupt()
            ignored = self.take_next()
            if ignored is not None:
                logger.debug("%s: %r from on_interrupt ignored after a forced interrupt", self.name, ignored)
        self.choose_ending(INTERRUPTED_REASON)

    def take_next(self) -> Next[Any] | None:
        nxt = self.next
        self.next = None
        return nxt

    def _after_step(self, nxt: Next[Any]) -> Next[Any]:
        pending = self.next
        if pending is not None:  # ctx.shutdown() / ctx.stop() during the step
            self.next = None
            return nxt if nxt._kind == FAIL else pending
        # Interrupted during the step: end instead of taking the next transition
        # (on_interrupt runs), unless the step failed: a failure is never lost.
        return nxt if nxt._kind == FAIL else _INTERRUPT

    async def _drain(self, save: bool) -> None:
        """Finish: close the mailbox to senders, handle what is queued (told to the checkpointer if `save`)."""
        self.phase = FINISHING
        mailbox = self.mailbox
        mailbox.close()
        if mailbox.queue:
            mailbox.draining = True
            try:
                pending = await self._loop(True, save)
            finally:
                mailbox.draining = False
            if pending is not None:  # ctx.stop() while draining
                self.choose_ending(STOPPED_REASON)

    async def _loop(self, draining: bool, save: bool = True) -> Next[Any] | None:
        """Handle mailbox messages until a transition is scheduled (or, draining, the queue is empty).

        Each message handled is told to the checkpointer (`Checkpointer.handled`) if `save`.
        """
        mailbox = self.mailbox
        queue = mailbox.queue
        agent = self.agent
        table = mailbox.events
        probe = self.probe
        checkpointer = self.checkpointer if save else None
        count = self.steps
        while True:
            nxt = self.next
            if nxt is not None:
                self.next = None
                if draining and nxt._kind != STOP:
                    continue  # ctx.shutdown() while finishing: it is finishing already
                self.steps = count
                return nxt
            if queue:
                message: object = queue.popleft()
                waiters = mailbox.room_waiters
                if waiters:
                    reschedule(waiters.popleft())
                self.handled += 1
                # With no instrument registered, timing costs this one test.
                start = None if probe.active is None else self._received(message)
                message_type = type(message)
                handler = table.get(message_type)
                if handler is not None:
                    try:
                        await handler(agent, message)
                    except Exception as error:
                        if start is not None:
                            self._failed(message, error)
                        await agent.on_error(error)
                elif message_type is RequestCall:
                    # Annotated, not cast(): a call less per request.
                    call: RequestCall[Any] = message  # type: ignore[assignment]
                    if call._take():  # else its caller gave up before it was handled
                        answer: outcome.Outcome[Any]
                        try:
                            answer = outcome.Value(await call._handler(agent, call._request))
                        except Exception as error:
                            if start is not None:
                                self._failed(message, error)
                            answer = outcome.Error(error)
                        except BaseException:
                            call._fail_stopped()
                            raise
                        if checkpointer is not None:
                            # A durable agent answers once what the handler changed is saved
                            # (also while it finishes: an interrupted agent's key stays unfinished).
                            try:
                                await checkpointer.handled(agent)
                            except Exception as error:
                                call._complete(outcome.Error(error))
                                raise
                            except BaseException:
                                call._fail_stopped()
                                raise
                        if type(answer) is outcome.Value and getattr(call._handler, ROUTE, False):
                            try:
                                await call._route(mailbox, answer.value)
                            except BaseException:
                                call._fail_stopped()
                                raise
                        else:
                            call._complete(answer)
                    else:
                        start = None  # nothing was handled: nothing to report
                elif message_type is Tick:
                    tick = cast("Tick", message)
                    tick.source.queued = False  # the timer may queue its next tick
                    try:
                        await mailbox.event_handler(type(tick.event))(agent, tick.event)
                    except Exception as error:
                        if start is not None:
                            self._failed(message, error)
                        await agent.on_error(error)
                elif message_type is Response:
                    response = cast("Response", message)
                    try:
                        await response.handler(agent, response.request, response.result)
                    except Exception as error:
                        if start is not None:
                            self._failed(message, error)
                        await agent.on_error(error)
                elif message_type is Stamped:
                    event = cast("Stamped", message).event
                    try:
                        await mailbox.event_handler(type(event))(agent, event)
                    except Exception as error:
                        if start is not None:
                            self._failed(message, error)
                        await agent.on_error(error)
                else:
                    assert message is INTERRUPT_MARK, f"{message!r} has no handler in {self.name}"
                    mailbox.unmark()
                    if not draining and not self.interrupt_handled:
                        self.next = _INTERRUPT
                    start = None  # the "interrupt" transition reports it
                if start is not None:
                    self._report(message, start)
                if checkpointer is not None and message_type is not RequestCall:
                    # (A request's changes were saved before its answer went, above.)
                    await checkpointer.handled(agent)
                count += 1
                if count >= FAIRNESS:
                    count = 0
                    await checkpoint()
            elif draining:
                self.steps = count
                return None
            else:
                count = 0
                if self.hibernate_after is not None:
                    if await self._idle(self.hibernate_after):
                        self.steps = 0
                        self.hibernate()
                        return None
                else:
                    mailbox.parked = self.task
                    await wait_task_rescheduled(self._abort_park)
                queue = mailbox.queue  # made by the first message

    # -- hibernation -------------------------------------------------------------

    async def _idle(self, seconds: float) -> bool:
        """Wait up to `seconds` for a message or a transition; True if none came (time to hibernate)."""
        if seconds > 0:
            with trio.move_on_after(seconds):
                self.mailbox.parked = self.task
                await wait_task_rescheduled(self._abort_park)
                return False
        else:
            await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled task ends instead
        return True

    def hibernate(self) -> None:
        """Give the task up, idle in actor mode: the mailbox and the agent stay; a message wakes it.

        Called by the agent's own task, which then returns from `main` without
        ending the agent. The host nursery's `_Keeper` stands for it there
        meanwhile: it keeps the nursery open and ends the agent as cancelled
        if the nursery is cancelled, as the agent's task would have been.
        """
        self.phase = HIBERNATING
        self.task = self.scope = None
        mailbox = self.mailbox
        mailbox.reader = None
        mailbox.set_asleep(True)
        assert self.host is not None
        _keeper_of(self.host).add(self)
        # `main` saves the task's contextvars once it has reset its own
        # (the variables the agent set stay; the runtime's is set again).

    def wake_up(self) -> None:
        """A message or a transition came for the hibernating agent: resume it in a new task."""
        assert self.phase == HIBERNATING
        assert self.host is not None
        assert self.context is not None
        self.phase = EVENTS_PHASE
        self.mailbox.set_asleep(False)
        _keepers()[self.host].discard()
        # The new task starts with the contextvars the agent's task had (trio
        # copies the spawner's context: run the spawn inside the saved one). A
        # copy is entered, not the saved context itself, which sleepers share
        # (`_Keeper.share`): a wake-up from inside another one's spawn (a trio
        # instrument's task_spawned) must not find it entered already.
        context = self.context.copy()
        host = self.host
        name = f"hybrid agent {self.name}"
        if self.hosting is None:
            context.run(lambda: host.start_soon(self.main, True, None, True, name=name))
        else:
            context.run(lambda: host.start_soon(self.run_contained, True, name=name))

    async def end_hibernating(self, cancelled: trio.Cancelled) -> None:
        """The host nursery was cancelled while the agent hibernated: end it as its task would have."""
        self.phase = HOOK  # no longer hibernating: nothing wakes it into a second ending
        self.mailbox.set_asleep(False)
        token = current_runtime.set(self)
        try:
            await self._cut_short(cancelled, stop_hook_started=False)
        finally:
            current_runtime.reset(token)
            if self.hosting is not None:
                await self.hosting.ended(self)

    # -- contained runs (ctx.start_agent) ----------------------------------------

    async def run_contained(self, resumed: bool, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """The task of a run started by ``ctx.start_agent`` (each task of it, if it hibernates).

        Unlike a spawned agent's, its failure is not raised: the run ends and its
        `on_end` is told, once its helper tasks have ended too. Its own cancel
        scope is the kill switch (`Hosting.cancel`).
        """
        hosting = self.hosting
        assert hosting is not None
        starter = None if task_status is trio.TASK_STATUS_IGNORED else _Starter(task_status, self.address)
        try:
            with trio.CancelScope() as scope:
                hosting.scope = scope
                if hosting.killed:
                    scope.cancel()
                try:
                    await self.main(False, starter, resumed)
                finally:
                    hosting.scope = None
        finally:
            if self.phase == ENDED:
                if starter is not None:
                    starter.fire()
                await hosting.ended(self)

    def answer_inline(self, handler: Callable[..., Awaitable[Any]], request: object) -> outcome.Outcome[Any] | None:
        """Run an inline request handler now, in the caller's task; None if it must be queued instead.

        Called only while this run is idle (parked in `_loop`, or hibernating).
        Queued instead while an instrument watches messages: it sees every one.
        """
        if self.probe.messages or self.checkpointer is not None:
            return None
        self.handled += 1
        # The handler sees (and sets) the agent's contextvars, not its caller's: a parked
        # agent's are its task's; a hibernating agent's saved ones are shared with other
        # sleepers, so it runs in a copy, kept in their place if the handler set any.
        mailbox = self.mailbox
        saved = self.context if mailbox.asleep else None
        keeper: _Keeper | None = None
        if saved is not None:
            assert self.host is not None
            keeper = _keepers().get(self.host)
            if keeper is None or keeper.cancelled or self.host.cancel_scope.cancel_called:
                return None  # its nursery is being cancelled: queued, the message wakes it to end
            context = saved.copy()
            mailbox.set_asleep(False)  # a wake-up the handler causes waits until its contextvars are kept
        else:
            assert self.task is not None
            context = self.task.context
        try:
            answer: outcome.Outcome[Any] = context.run(self._run_inline, handler, request)
        finally:
            if saved is not None:
                assert keeper is not None
                if not _equal(context, saved):
                    self.context = keeper.share(context)
                mailbox.set_asleep(True)
                if mailbox.queue or self.next is not None:  # it sent its agent a message, or a transition
                    self.wake_up()
        if not isinstance(answer, outcome.Error) or isinstance(answer.error, Exception):
            return answer
        # A BaseException ends the agent as from a queued handler: raised in the agent's own
        # task (woken for it), its caller told the agent ended before answering.
        self.next = _make(FAIL, answer.error)
        mailbox.wake()
        return outcome.Error(AgentStopped(f"{self.name} ended before answering {request!r}"))

    def _run_inline(self, handler: Callable[..., Awaitable[Any]], request: object) -> outcome.Outcome[Any]:
        """The inline handler's outcome, in the agent's context (entered by `answer_inline`).

        A BaseException is an outcome too: `answer_inline` hands it to the agent's task.
        """
        token = current_runtime.set(self)
        try:
            step = cast("Coroutine[Any, Any, Any]", handler(self.agent, request))
            try:
                step.send(None)
            except StopIteration as returned:
                return outcome.Value(returned.value)
            except BaseException as error:  # an Exception is the answer; any other, the agent's end
                return outcome.Error(error)
            step.close()  # pragma: no cover - refused at class definition: awaits() reads every layer
            raise LifecycleError(f"inline request handler {handler!r} of {self.name} suspended")  # pragma: no cover
        finally:
            current_runtime.reset(token)

    def _abort_park(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self.mailbox.parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _received(self, message: object) -> float:
        """Tell the instruments a message is about to be handled; return the time its handling starts."""
        if message is not INTERRUPT_MARK and not is_abandoned(message):
            reported, kind, stamp = received(message)
            if stamp is None:  # queued before an instrument asked for stamps
                self.probe.message_received(self.address, reported, kind, None, None)
            else:
                queued_at, sender = stamp
                waited = time.perf_counter() - queued_at
                self.probe.message_received(self.address, reported, kind, waited, sender)
        return time.perf_counter()

    def _failed(self, message: object, error: Exception) -> None:
        """Tell the instruments that the handler of `message` raised `error`."""
        if self.probe.active is not None:  # the last instrument may have left meanwhile
            reported, kind, _ = received(message)
            self.probe.message_failed(self.address, reported, kind, error)

    def _report(self, message: object, start: float) -> None:
        """Tell the instruments a message was handled: the event, or the request (asked or answered)."""
        if self.probe.active is None:  # the last instrument left meanwhile
            return
        reported, _, _ = received(message)
        self.probe.message_handled(self.address, reported, time.perf_counter() - start)

    async def _perform_modified(self, nxt: Next[Any]) -> Next[Any]:
        mods = nxt._mods
        assert mods is not None

        async def attempt() -> Next[Any]:
            if mods.timeout is None:
                return await self._perform_plain(nxt)
            with trio.fail_after(mods.timeout):
                return await self._perform_plain(nxt)

        try:
            return await _retry.retrying(
                attempt, mods.retry, what=_StateName(self.name, nxt), logger=logger, wait=self._wait_to_retry
            )
        except Exception as error:
            if mods.fallback is None:
                raise
            chosen: Next[Any] = mods.fallback(error)
            if type(chosen) is not Next:
                raise InvalidTransition(f"the fallback of {nxt!r} must return a Next, got {chosen!r}") from error
            return chosen

    async def _wait_to_retry(self, delay: float) -> bool:
        """Sleep before a retry; False (no more tries) if the agent is or gets interrupted."""
        if self.interrupts:
            return False
        with trio.move_on_after(delay):
            await self.wait_interrupted()
        return not self.interrupts

    async def _perform_plain(self, nxt: Next[Any]) -> Next[Any]:
        kind = nxt._kind
        result: Next[Any]
        if kind == ASYNC:
            step = nxt._fn(*nxt._args)
            try:
                result = await step
            except TypeError:
                _check_awaitable(step, nxt)
                raise
        elif kind == SYNC:
            result = await trio.to_thread.run_sync(nxt._fn, *nxt._args)
            # A thread cannot be cancelled: it returns normally after polling
            # hybrid.interrupted(); a deadline that passed meanwhile still counts.
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            result = await nxt._fn.perform(self.agent)
        return result

    # -- results -------------------------------------------------------------

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.output

    async def wait_interrupted(self) -> None:
        if self.interrupts or self.interrupt_handled:
            await checkpoint()
            return
        if self.interrupt_event is None:
            self.interrupt_event = trio.Event()
        await self.interrupt_event.wait()

    def has_ended(self) -> bool:
        return self.phase == ENDED

    async def wait_ended(self) -> None:
        """Wait until this run has ended, whatever its outcome."""
        if self.phase != ENDED:
            if self.ended is None:
                self.ended = trio.Event()
            await self.ended.wait()

    async def join(self) -> Any:
        if self.phase != ENDED:
            if self.ended is None:
                self.ended = trio.Event()
            await self.ended.wait()
        else:
            await checkpoint()
        return self.result()

    @property
    def phase_name(self) -> str:
        return PHASE_NAMES[self.phase]


@final
class Hosting:
    """How a run started by ``ctx.start_agent`` lives in its parent's host nursery.

    The run is contained: its failure, or the first failure of one of its
    helper tasks, ends it and is given to `on_end`; nothing is raised into the
    nursery. It is registered among its parent's helpers until `ended`, so
    that the parent's end cancels it.
    """

    __slots__ = ("drained", "failure", "killed", "on_end", "parent", "run", "scope")

    def __init__(self, on_end: Callable[[StopReason], Awaitable[object]], parent: Runtime, run: Runtime) -> None:
        self.on_end: Callable[[StopReason], Awaitable[object]] | None = on_end
        """Told how the run ended, once (then None)."""
        self.parent = parent
        """The run that started it."""
        self.run = run
        """The contained run."""
        self.scope: trio.CancelScope | None = None
        """The cancel scope of the run's current task (None while it has none)."""
        self.killed = False
        """`cancel` was called: every task of the run starts cancelled."""
        self.failure: Exception | None = None
        """The first failure of one of its helper tasks: the run ends with it."""
        self.drained: trio.Event | None = None
        """Set when its last helper task has ended (made by the ended run's task, which waits)."""

    def cancel(self) -> None:
        """Cancel the run outright, as cancelling its task would (a hibernating run is woken to end)."""
        if self.run.phase == ENDED:
            return
        self.killed = True
        if self.scope is not None:
            self.scope.cancel()
        elif self.run.phase == HIBERNATING:
            self.run.wake_up()  # its new task starts cancelled and ends the run

    def helper_failed(self, rt: Runtime, error: Exception) -> None:
        """A helper task of the run raised: the run ends with the first such failure."""
        if rt.phase == ENDED or self.failure is not None:
            logger.error("%s: a helper task failed after %s", rt.name, rt.reason or self.failure, exc_info=error)
            return
        self.failure = error
        self.cancel()

    async def ended(self, rt: Runtime) -> None:
        """The run has ended: wait for its helper tasks to end, leave the parent's helpers, tell `on_end` (once)."""
        on_end = self.on_end
        if on_end is None:
            return
        self.on_end = None
        if rt.helpers:  # cancelled as the run ended: they end soon, also in a cancelled nursery
            self.drained = trio.Event()
            with trio.CancelScope(shield=True):
                await self.drained.wait()
        self.parent.helper_ended(self)
        reason = rt.reason
        assert reason is not None
        await on_end(reason)


def _equal(one: contextvars.Context, other: contextvars.Context) -> bool:
    """Whether two contexts hold the very same value objects (``is``, never a value's own ``==``).

    Equal values are not enough: two agents that each set ``cache.set({})`` hold two
    dicts, and sharing one context would hand one agent the other's dict (and ``==``
    may raise, as an array's does).
    """
    if one is other:
        return True
    if len(one) != len(other):
        return False
    missing = _MISSING
    return all(other.get(var, missing) is value for var, value in one.items())


_MISSING: Final = object()
"""No value: what `_equal` finds for a variable one context lacks."""


_SHARED_CONTEXTS: Final = 4
"""How many distinct contexts a `_Keeper` compares a sleeper's with: the children of
one spawner mostly have one or two."""


@final
class _Keeper:
    """Stands in a host nursery for its hibernating agents (one task per nursery, not one per agent).

    While it has sleepers it keeps the nursery open, as their tasks would;
    it returns once none is left (each woke up or ended). If the nursery is
    cancelled, it ends each sleeper as cancelled (its `on_stop` runs,
    shielded) and lets the cancellation go on.

    `sleepers` is every run that hibernated here, woken ones included until
    the list is compacted (a run that wakes up is not searched for: that
    would cost a scan per wake-up); `count` is how many still hibernate.
    """

    __slots__ = ("cancelled", "contexts", "count", "host", "sleepers", "task")

    def __init__(self, host: trio.Nursery) -> None:
        self.host = host
        self.sleepers: list[Runtime] = []
        self.count = 0
        self.task: Task | None = None  # parked while it has sleepers
        self.cancelled = False
        """Its task was cancelled (the nursery is): its sleepers answer no inline request any more (`answer_inline`)."""
        self.contexts: list[contextvars.Context] = []
        """Distinct contextvars its sleepers kept lately (at most `_SHARED_CONTEXTS`, newest last)."""

    def share(self, context: contextvars.Context) -> contextvars.Context:
        """`context`, or one a sleeper of this nursery keeps already holding the very same values (`_equal`).

        Sharing is safe: a context kept here is never entered itself; a wake-up
        starts its task in a copy of it (`Runtime.wake_up`). The last few kept
        stay referenced (their values too) until the keeper leaves.
        """
        contexts = self.contexts
        for shared in contexts:
            if _equal(shared, context):
                return shared
        if len(contexts) >= _SHARED_CONTEXTS:
            del contexts[0]
        contexts.append(context)
        return context

    def add(self, rt: Runtime) -> None:
        self.count += 1
        sleepers = self.sleepers
        if len(sleepers) >= 2 * self.count + 64:  # mostly woken: keep those that still sleep
            sleepers[:] = [each for each in sleepers if each.phase == HIBERNATING and each.host is self.host]
        sleepers.append(rt)

    def discard(self) -> None:
        self.count -= 1
        if not self.count and self.task is not None:
            task, self.task = self.task, None
            reschedule(task)

    async def keep(self) -> None:
        try:
            while self.count:
                self.task = current_task()
                await wait_task_rescheduled(self._abort)
        except trio.Cancelled as cancelled:
            ended: set[int] = set()
            errors: list[BaseException] = []
            for rt in self.sleepers:
                if rt.phase == HIBERNATING and id(rt) not in ended:  # a run appears once per hibernation
                    ended.add(id(rt))
                    self.count -= 1
                    try:
                        await rt.end_hibernating(cancelled)
                    except trio.Cancelled:  # an on_end that awaited: the cancellation goes on below
                        pass
                    except BaseException as error:  # an on_end that raised: after the others have ended
                        errors.append(error)
            if len(errors) == 1:
                raise errors[0] from errors[0].__cause__  # as raised, not as raised in the cancellation
            if errors:
                raise BaseExceptionGroup(f"{len(errors)} on_end callbacks raised as their runs ended", errors) from None
            raise
        finally:
            del _keepers()[self.host]

    def _abort(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self.task = None
        self.cancelled = True
        return trio.lowlevel.Abort.SUCCEEDED


_KEEPERS: trio.lowlevel.RunVar[dict[trio.Nursery, _Keeper]] = trio.lowlevel.RunVar("hybrid_keepers")


def _keepers() -> dict[trio.Nursery, _Keeper]:
    return per_run(_KEEPERS, dict)


def _keeper_of(host: trio.Nursery) -> _Keeper:
    """The keeper of `host`, started there when its first agent hibernates."""
    keepers = _keepers()
    keeper = keepers.get(host)
    if keeper is None:
        keeper = keepers[host] = _Keeper(host)
        host.start_soon(keeper.keep, name="hybrid keeper of hibernating agents")
    return keeper
