"""Races of supervised children: their end against their restart, restarts against the shutdown.

Attacks the tracker's machinery where several things happen at once: a child that
is still ending when a restart (or the shutdown) reaches it, children queued behind
a slow start when they are killed or their supervisor is cancelled, hibernating
children, nested supervisors cut short by their parent's shutdown timeouts, and
BaseExceptions. Time is simulated (``autojump_clock``): a deadlock fails a
``trio.fail_after`` guard instead of hanging the test.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Restart, StopKind, StopReason, Strategy, Supervisor
from tests.messages import Echo, Ping

GUARD = 3_600  # simulated seconds


class Worker(Agent):
    """Idle in actor mode; ``Ping(n < 0)`` fails it; records its pings and how it stopped."""

    def __init__(self, stop_delay: float = 0) -> None:
        self.stop_delay = stop_delay
        self.pings: list[int] = []
        self.stopped: list[StopReason] = []

    def begin(self) -> Next[Self]:
        return Next.events()

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.pings.append(event.n)
        if event.n < 0:
            self.ctx.do_next(Next.fail(ValueError(f"ping {event.n}")))

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        self.pings.append(request.n)
        return request.n

    async def on_stop(self, reason: StopReason) -> None:
        self.stopped.append(reason)
        if self.stop_delay:
            await trio.sleep(self.stop_delay)


class Made:
    """A factory that keeps every instance it made, in order."""

    def __init__(self, stop_delay: float = 0) -> None:
        self.stop_delay = stop_delay
        self.made: list[Worker] = []

    def __call__(self) -> Worker:
        self.made.append(Worker(self.stop_delay))
        return self.made[-1]


class SlowStart:
    """A checkpointer whose `start` awaits `release` on the runs listed in `slow` (1-based).

    `shielded`: that wait ignores cancellation (a connection that must not be cut).
    """

    idempotency_key = "slow"

    def __init__(self, *slow: int, shielded: bool = False) -> None:
        self.slow = set(slow)
        self.shielded = shielded
        self.starts = 0
        self.release = trio.Event()

    async def start(self, agent: Any) -> Next[Any] | None:
        self.starts += 1
        if self.starts in self.slow:
            with trio.CancelScope(shield=self.shielded):
                await self.release.wait()
        return None

    async def transition(self, agent: Any, nxt: Next[Any]) -> None:
        pass

    async def handled(self, agent: Any) -> None:
        pass

    async def ended(self, agent: Any, reason: StopReason, output: Any) -> None:
        pass


def kinds(reasons: list[StopReason]) -> list[StopKind]:
    return [reason.kind for reason in reasons]


# -- a child still ending when a restart of another reaches it -------------------------------


@pytest.mark.parametrize("restart", [Restart.PERMANENT, Restart.TRANSIENT])
async def test_a_child_ending_slowly_when_a_one_for_all_restart_stops_it_starts_again_uninterrupted(
    autojump_clock: trio.testing.MockClock, restart: Restart
) -> None:
    """x fails and takes 1s in on_stop; meanwhile y fails and its one_for_all restart
    interrupts x, which is already ending. The interrupt is for the run that ends: the
    next instance of x must start as any restarted child does, not interrupted at once
    (which would end it, restart it a second time, or lose a transient child)."""
    xs = Made(stop_delay=1)
    ys = Made()

    class Sup(Supervisor):
        strategy = Strategy.ONE_FOR_ALL

        def begin(self) -> Next[Self]:
            self.x = self.ctx.spawn(xs, name="x", restart=restart)
            self.y = self.ctx.spawn(ys, name="y")
            return Next.events()

    sup = Sup()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            sup.x.send(Ping(-1))
            await trio.sleep(0.5)  # x is in its on_stop
            sup.y.send(Ping(-2))
            await trio.sleep(10)
            assert len(xs.made) == 2
            assert len(ys.made) == 2
            assert xs.made[1].stopped == []
            assert await sup.x.request(Echo(7)) == 7
            address.interrupt()
    assert kinds(xs.made[1].stopped) == [StopKind.INTERRUPTED]


async def test_a_child_whose_helper_holds_its_end_when_a_restart_stops_it_starts_again_uninterrupted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same race through the other window: x's run has ended but its on_end waits for a
    helper task that takes 1s to clean up, when y's one_for_all restart interrupts x."""
    made: list[Worker] = []

    class WithHelper(Worker):
        def begin(self) -> Next[Self]:
            self.ctx.start_soon(self.helper)
            return Next.events()

        async def helper(self) -> None:
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(1)

    def make_x() -> Worker:
        made.append(WithHelper())
        return made[-1]

    class Sup(Supervisor):
        strategy = Strategy.ONE_FOR_ALL

        def begin(self) -> Next[Self]:
            self.x = self.ctx.spawn(make_x, name="x", restart=Restart.TRANSIENT)
            self.y = self.ctx.spawn(Worker, name="y")
            return Next.events()

    sup = Sup()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            sup.x.send(Ping(-1))
            await trio.sleep(0.5)  # x has ended; its helper still cleans up
            assert kinds(made[0].stopped) == [StopKind.FAILED]
            sup.y.send(Ping(-2))
            await trio.sleep(10)
            assert len(made) == 2
            assert made[1].stopped == []
            assert await sup.x.request(Echo(7)) == 7
            address.interrupt()


# -- children queued behind a slow start ------------------------------------------------------


async def test_a_queued_child_killed_by_a_restart_keeps_its_address_through_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """one_for_all: f fails while s's (durable) start hangs and b waits behind it. The
    restart stops b (still queued) past its shutdown timeouts: it is killed without
    running, and restarted with the others after the backoff. A restarted child keeps its
    address: a message sent to b during the backoff waits for its next instance."""
    fs, ss, bs = Made(), Made(), Made()
    slow = SlowStart(1)  # s's first start hangs until released

    class Sup(Supervisor):
        strategy = Strategy.ONE_FOR_ALL
        shutdown_timeout = 1
        restart_backoff = hybrid.Backoff(initial=10, max_delay=10)

        def begin(self) -> Next[Self]:
            self.f = self.ctx.spawn(fs, name="f")
            self.s = self.ctx.spawn(ss, name="s", checkpointer=slow)
            return Next.events()

        @hybrid.on_event
        async def more(self, event: Ping) -> None:
            self.b = self.ctx.spawn(bs, name="b")

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            reported.append((address.name.rpartition("/")[2], reason.kind))

    reported: list[tuple[str, StopKind]] = []
    sup = Sup()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            assert slow.starts == 1  # s's start hangs: the starter is held
            address.send(Ping(0))  # b queued behind s
            await trio.sleep(1)
            assert len(bs.made) == 1
            sup.f.send(Ping(-1))
            await trio.sleep(5)  # b killed (2s), s interrupted twice (2s): in the backoff now
            assert len(fs.made) == 1
            assert ("b", StopKind.CANCELLED) in reported  # reported in the backoff, not at the end only
            assert sup.b.is_alive
            sup.b.send(Ping(5))  # waits for b's next instance
            slow.release.set()
            await trio.sleep(20)
            assert len(bs.made) == 2
            assert bs.made[1].pings == [5]
            address.interrupt()


async def test_a_cancelled_supervisor_gives_up_a_child_still_queued_behind_a_slow_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """s's start hangs and b waits behind it when the supervisor's nursery is cancelled.
    b never runs; its address must say it is gone (not keep messages for nobody)."""
    slow = SlowStart(1)

    class Sup(Supervisor):
        def begin(self) -> Next[Self]:
            self.s = self.ctx.spawn(Worker, name="s", checkpointer=slow)
            self.b = self.ctx.spawn(Worker, name="b")
            return Next.events()

    sup = Sup()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            assert slow.starts == 1
            nursery.cancel_scope.cancel()
    assert not sup.s.is_alive
    assert not sup.b.is_alive
    with pytest.raises(hybrid.AgentStopped):
        sup.b.send(Ping(1))


async def test_a_restart_and_the_shutdown_that_kill_the_same_queued_child_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """on_child_ended interrupts the supervisor when f fails (a critical child): the
    one_for_all restart of f and the ordered shutdown start in the same moment, and both
    wait for z, queued behind s's start (which cannot be cut short), with the same
    timeouts. Both give up on z at the same instant: z must be killed once, and the
    supervisor stop cleanly once s's start returns. (trio runs the two in either order:
    several rounds.)"""

    class Sup(Supervisor):
        strategy = Strategy.ONE_FOR_ALL
        shutdown_timeout = 1

        def __init__(self, slow: SlowStart) -> None:
            self.slow = slow
            self.reported: list[tuple[str, StopKind]] = []

        def begin(self) -> Next[Self]:
            self.f = self.ctx.spawn(Worker, name="f")
            self.s = self.ctx.spawn(Worker, name="s", checkpointer=self.slow)
            return Next.events()

        @hybrid.on_event
        async def more(self, event: Ping) -> None:
            self.z = self.ctx.spawn(Worker, name="z")

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            self.reported.append((address.name.rpartition("/")[2], reason.kind))
            if address == self.f:
                self.ctx.address.interrupt()

    for _ in range(10):
        slow = SlowStart(1, shielded=True)
        sup = Sup(slow)
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                address = hybrid.spawn(nursery, sup)
                try:
                    await trio.sleep(1)
                    address.send(Ping(0))  # z queued behind s
                    await trio.sleep(1)
                    sup.f.send(Ping(-1))
                    await trio.sleep(10)  # past every timeout
                finally:
                    slow.release.set()  # s's start must return for the nursery to close, whatever failed
                await address.join()
        assert sorted(sup.reported) == [("f", StopKind.FAILED), ("s", StopKind.INTERRUPTED), ("z", StopKind.CANCELLED)]
        assert not sup.z.is_alive


async def test_a_nested_supervisor_killed_with_a_queued_child_restarts_with_its_children(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """top (one_for_all, 1s timeouts) restarts mid when f fails; mid's shutdown cannot end
    (s's start hangs, b waits behind it), so top cancels mid. Its next instance spawns s
    and b again under the same names: the queued b of the cancelled mid must have given
    its name up, and the new mid must run with both children."""
    slow = SlowStart(1)
    mids: list[Mid] = []

    class Mid(Supervisor):
        shutdown_timeout = 30

        def begin(self) -> Next[Self]:
            self.s = self.ctx.spawn(Worker, name="s", checkpointer=slow)
            self.b = self.ctx.spawn(Worker, name="b")
            return Next.events()

    def make_mid() -> Mid:
        mids.append(Mid())
        return mids[-1]

    class Top(Supervisor):
        strategy = Strategy.ONE_FOR_ALL
        shutdown_timeout = 1

        def begin(self) -> Next[Self]:
            self.f = self.ctx.spawn(Worker, name="f")
            self.mid = self.ctx.spawn(make_mid, name="mid")
            return Next.events()

    top = Top()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, top)
            await trio.sleep(1)
            assert slow.starts == 1
            top.f.send(Ping(-1))
            await trio.sleep(10)
            assert len(mids) == 2
            assert address.is_alive
            assert top.mid.is_alive
            assert await mids[1].b.request(Echo(3)) == 3
            assert await mids[1].s.request(Echo(4)) == 4
            address.interrupt()
            await address.join()


# -- a restart racing the supervisor's own ending ---------------------------------------------


async def test_a_failed_restart_past_the_intensity_while_the_supervisor_drains_its_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """c fails; its restart waits a 1s backoff, then its factory raises, which exceeds the
    restart intensity. Meanwhile the supervisor was told to finish (ctx.shutdown()) and is
    still handling a slow message queued before: its mailbox is closed to new messages.
    The failure cannot be delivered as a message any more; it must not escape as an
    AgentStopped from the restart task: the supervisor ends (failed or done), its child
    given up, and nothing else leaves the nursery."""
    calls = 0

    def flaky() -> Worker:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("no more workers")
        return Worker()

    class Sup(Supervisor):
        max_restarts = 1
        restart_backoff = hybrid.Backoff(initial=1, max_delay=1)

        def begin(self) -> Next[Self]:
            self.c = self.ctx.spawn(flaky, name="c")
            return Next.events()

        @hybrid.on_event
        async def slow(self, event: Ping) -> None:
            if event.n == 0:
                self.ctx.shutdown()
            else:
                await trio.sleep(event.n)

    sup = Sup()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            sup.c.send(Ping(-1))  # fails: restart in 1s
            await trio.sleep(0.5)
            address.send(Ping(0))  # finish after draining...
            address.send(Ping(5))  # ...this slow one
            with contextlib.suppress(hybrid.RestartIntensityExceeded):  # or done, the failure logged
                await address.join()
    assert calls == 2
    assert not sup.c.is_alive


# -- one run at a time: no on_end of an old run after a newer one started ---------------------


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ONE, Strategy.ONE_FOR_ALL])
async def test_each_run_ends_with_its_helpers_before_the_next_one_begins(
    autojump_clock: trio.testing.MockClock, strategy: Strategy
) -> None:
    """A child whose helper takes 1s to clean up fails three times (each time its on_end,
    and so the restart, waits for that helper). Every run's begin comes after the previous
    run's on_stop and helper cleanup; each ending is reported once; a message sent while
    the helper cleans up (the run has ended, its on_end not told yet) reaches the next
    instance; the address reaches the last instance."""
    events: list[tuple[str, int]] = []
    made: list[Slowly] = []

    class Slowly(Worker):
        def begin(self) -> Next[Self]:
            events.append(("begin", len(made)))
            self.ctx.start_soon(self.helper, len(made))
            return Next.events()

        async def helper(self, n: int) -> None:
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(1)
                events.append(("cleaned", n))

    def make() -> Slowly:
        made.append(Slowly())
        return made[-1]

    class Sup(Supervisor):
        max_restarts = 10

        def __init__(self) -> None:
            self.reported: list[tuple[str, StopKind]] = []

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(make, name="child")
            self.other = self.ctx.spawn(Worker, name="other")
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            self.reported.append((address.name.rpartition("/")[2], reason.kind))

    Sup.strategy = strategy
    sup = Sup()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, sup)
            await trio.sleep(1)
            for i in range(3):
                sup.child.send(Ping(-1))
                await trio.sleep(0.5)  # ended; its helper still cleans up
                sup.child.send(Ping(100 + i))  # for the next instance
                await trio.sleep(5)
            assert await sup.child.request(Echo(9)) == 9
            address.interrupt()
            await address.join()
    assert len(made) == 4
    assert [child.pings for child in made] == [[-1], [100, -1], [101, -1], [102, 9]]
    for n in range(1, len(made)):
        assert events.index(("cleaned", n)) < events.index(("begin", n + 1))
    assert [kind for name, kind in sup.reported if name == "child"] == [StopKind.FAILED] * 3 + [StopKind.INTERRUPTED]
