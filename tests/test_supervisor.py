"""Supervisors: ordered shutdown, restart policies and strategies, intensity, backoff, monitors."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Restart, StopKind, StopReason, Strategy, Supervisor
from tests.messages import Echo, Ping


class Group(enum.IntEnum):
    STORAGE = 1
    WORKERS = 2
    HTTP = 3


class Log:
    """(time, text) records, with the start of the test as time zero."""

    def __init__(self) -> None:
        self.start = trio.current_time()
        self.records: list[tuple[float, str]] = []

    def __call__(self, text: str) -> None:
        self.records.append((round(trio.current_time() - self.start, 6), text))

    def texts(self) -> list[str]:
        return [text for _, text in self.records]


class Member(Agent):
    """An actor child that takes `stop_delay` seconds to stop once interrupted."""

    def __init__(self, name: str, log: Log, stop_delay: float = 0.0) -> None:
        self.name = name
        self.log = log
        self.stop_delay = stop_delay

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.log(f"{self.name} ping {event.n}")

    async def on_interrupt(self) -> None:
        self.log(f"{self.name} interrupted")
        await trio.sleep(self.stop_delay)

    async def on_stop(self, reason: StopReason) -> None:
        self.log(f"{self.name} stopped {reason}")


class HangsInOnStop(Member):
    """Ends its on_interrupt at once, then hangs in on_stop: only cancelling its run ends it."""

    async def on_stop(self, reason: StopReason) -> None:
        self.log(f"{self.name} on_stop")
        await trio.sleep(3600)  # outside the agent's step: a second interrupt cannot cut it
        self.log(f"{self.name} stopped {reason}")  # pragma: no cover - cancelled before


@attrs.frozen
class SpawnInto:
    group: int
    name: str


@attrs.frozen
class Status(hybrid.Request[str]):
    pass


class App(Supervisor):
    def __init__(self, log: Log) -> None:
        self.log = log

    def begin(self) -> Next[Self]:
        self.ctx.spawn(Member("db", self.log, 1), group=Group.STORAGE)
        self.ctx.spawn(Member("w0", self.log, 2), group=Group.WORKERS)
        self.ctx.spawn(Member("w1", self.log, 3), group=Group.WORKERS)
        self.ctx.spawn(Member("http", self.log, 1), group=Group.HTTP)
        return Next.events()

    @hybrid.on_event
    async def spawn_into(self, event: SpawnInto) -> None:
        self.ctx.spawn(Member(event.name, self.log, 0.5), group=event.group)

    @hybrid.on_request
    async def status(self, request: Status) -> str:
        return f"{len(self.ctx.children())} running"

    async def on_stop(self, reason: StopReason) -> None:
        self.log(f"app stopped {reason}")  # no super() needed: the children have stopped already


async def test_shutdown_stops_groups_greatest_first_one_whole_group_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, App(log))
        await trio.sleep(10)
        log("interrupt")
        app.interrupt()
        await app.join()
    # Members of one group are interrupted together, in whatever order trio runs them.
    assert sorted(log.records) == sorted(
        [
            (10, "interrupt"),
            (10, "http interrupted"),
            (11, "http stopped interrupted"),
            (11, "w0 interrupted"),
            (11, "w1 interrupted"),
            (13, "w0 stopped interrupted"),
            (14, "w1 stopped interrupted"),
            (14, "db interrupted"),
            (15, "db stopped interrupted"),
            (15, "app stopped interrupted"),
        ]
    )


async def test_the_supervisor_handles_its_messages_while_stopping_and_closes_after_the_last_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, App(log))
        await trio.sleep(1)
        assert await app.request(Status()) == "4 running"
        app.interrupt()
        await trio.sleep(2)  # http stopped; workers stopping
        assert await app.request(Status()) == "3 running"
        await trio.sleep(2.5)  # t = 5.5: w1 stopped at 5, db stops at 6
        assert await app.request(Status()) == "1 running"
        await app.join()
        with pytest.raises(hybrid.AgentStopped):
            await app.request(Status())


async def test_children_spawned_into_a_group_already_stopping_are_interrupted_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, App(log))
        app.interrupt()
        await trio.sleep(1.5)  # the workers group is stopping
        app.send(SpawnInto(Group.HTTP, "late-http"))
        app.send(SpawnInto(Group.WORKERS, "late-worker"))
        app.send(SpawnInto(Group.STORAGE, "late-db"))
        await app.join()
    texts = log.texts()
    late = [(t, text) for t, text in log.records if text.startswith("late")]
    assert sorted(late[:2]) == [(1.5, "late-http interrupted"), (1.5, "late-worker interrupted")]
    # late-db waits for the storage group's turn, after every worker ended (t = 4).
    assert (4, "late-db interrupted") in late
    assert texts.index("late-db interrupted") > texts.index("w1 stopped interrupted")
    assert texts[-1] == "app stopped interrupted"


async def test_a_child_past_its_shutdown_timeout_is_interrupted_again_and_ends_interrupted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    class Stubborn(Supervisor):
        shutdown_timeout = 2

        def begin(self) -> Next[Self]:
            self.ctx.spawn(Member("slow", log, 3600))
            self.ctx.spawn(Member("quick", log, 0), shutdown_timeout=math.inf)
            return Next.events()

    async with trio.open_nursery() as nursery:
        sup = hybrid.spawn(nursery, Stubborn())
        sup.interrupt()
        await sup.join()
    assert (2, "slow stopped interrupted") in log.records
    assert (0, "quick stopped interrupted") in log.records


async def test_a_child_that_a_second_interrupt_cannot_end_is_cancelled_at_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    ended: list[StopReason] = []

    class Stubborn(Supervisor):
        shutdown_timeout = 2

        def begin(self) -> Next[Self]:
            self.ctx.spawn(HangsInOnStop("stuck", log))
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            ended.append(reason)

    async with trio.open_nursery() as nursery:
        sup = hybrid.spawn(nursery, Stubborn())
        sup.interrupt()
        await sup.join()
    assert ended == [StopReason.CANCELLED]
    assert trio.current_time() - log.start == pytest.approx(4)


async def test_a_group_sharing_a_timeout_is_interrupted_again_then_cancelled_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One waiter for the group: each member ends in its own time, up to twice the timeout."""
    log = Log()
    ended: dict[str, StopReason] = {}

    class Stubborn(Supervisor):
        shutdown_timeout = 2

        def begin(self) -> Next[Self]:
            for name, member in [
                ("quick", Member("quick", log, 0)),
                ("slow", Member("slow", log, 1)),
                ("deaf", Member("deaf", log, 3600)),
                ("stuck", HangsInOnStop("stuck", log)),
            ]:
                self.ctx.spawn(member, name=name)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            ended[address.name.rpartition("/")[2]] = reason

    async with trio.open_nursery() as nursery:
        sup = hybrid.spawn(nursery, Stubborn())
        sup.interrupt()
        await sup.join()
    assert ended == {
        "quick": StopReason.INTERRUPTED,
        "slow": StopReason.INTERRUPTED,
        "deaf": StopReason.INTERRUPTED,  # its on_interrupt cut short by the second interrupt
        "stuck": StopReason.CANCELLED,  # killed past the second timeout
    }
    assert (0, "quick stopped interrupted") in log.records
    assert (1, "slow stopped interrupted") in log.records
    assert (2, "deaf stopped interrupted") in log.records
    assert (0, "stuck on_stop") in log.records
    assert trio.current_time() - log.start == pytest.approx(4)


async def test_a_group_with_several_timeouts_gives_each_member_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    ended: dict[str, float] = {}

    class Stubborn(Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(HangsInOnStop("short", log), name="short", shutdown_timeout=1)
            self.ctx.spawn(HangsInOnStop("long", log), name="long", shutdown_timeout=3)
            self.ctx.spawn(Member("deaf", log, 3600), name="deaf", shutdown_timeout=2)
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            ended[address.name.rpartition("/")[2]] = round(trio.current_time() - log.start, 6)

    async with trio.open_nursery() as nursery:
        sup = hybrid.spawn(nursery, Stubborn())
        sup.interrupt()
        await sup.join()
    # Each one cancelled past twice its own timeout; the deaf one ends at its second interrupt.
    assert ended == {"short": 2, "deaf": 2, "long": 6}


class Life(Agent[str]):
    """Lives `lifetime` seconds, then ends with `ending` ('done', 'fail', 'stop')."""

    def __init__(self, name: str, log: Log, lifetime: float | None, ending: str = "fail") -> None:
        self.name = name
        self.log = log
        self.lifetime = lifetime
        self.ending = ending

    def begin(self) -> Next[Self]:
        self.log(f"start {self.name}")
        if self.lifetime is None:
            return Next.events()
        return Next.do_async(self.live)

    async def live(self) -> Next[Self]:
        assert self.lifetime is not None
        await trio.sleep(self.lifetime)
        if self.ending == "fail":
            raise ValueError(f"{self.name} crashed")
        return Next.done(self.name) if self.ending == "done" else Next.stop()

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.log(f"{self.name} ping {event.n}")

    async def on_stop(self, reason: StopReason) -> None:
        self.log(f"stop {self.name} {reason.kind.value}")


def numbered(name: str, log: Log, lifetimes: list[float | None], ending: str = "fail") -> Callable[[], Life]:
    """A factory: instance k (from 1) lives lifetimes[k-1] (the last one repeats)."""
    count = 0

    def make() -> Life:
        nonlocal count
        count += 1
        return Life(f"{name}#{count}", log, lifetimes[min(count, len(lifetimes)) - 1], ending)

    return make


class Tree(Supervisor):
    def __init__(self, specs: list[tuple[Callable[[], Life], Restart]], log: Log) -> None:
        self.specs = specs
        self.log = log
        self.ended: list[tuple[str, StopKind]] = []

    def begin(self) -> Next[Self]:
        for factory, restart in self.specs:
            self.ctx.spawn(factory, restart=restart)
        return Next.events()

    async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
        self.ended.append((type(reason.error).__name__ if reason.error else "-", reason.kind))


async def run_tree(tree: Tree, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, tree)
        await trio.sleep(seconds)
        address.interrupt()


@pytest.mark.parametrize(
    ("restart", "ending", "starts"),
    [
        (Restart.PERMANENT, "done", ["start a#1", "start a#2"]),
        (Restart.PERMANENT, "fail", ["start a#1", "start a#2"]),
        (Restart.TRANSIENT, "fail", ["start a#1", "start a#2"]),
        (Restart.TRANSIENT, "done", ["start a#1"]),
        (Restart.TRANSIENT, "stop", ["start a#1"]),
        (Restart.TEMPORARY, "fail", ["start a#1"]),
    ],
)
async def test_restart_policies_decide_whether_a_child_that_ended_is_restarted(
    autojump_clock: trio.testing.MockClock, restart: Restart, ending: str, starts: list[str]
) -> None:
    log = Log()
    tree = Tree([(numbered("a", log, [1, None], ending), restart)], log)
    await run_tree(tree, 5)
    assert [text for text in log.texts() if text.startswith("start")] == starts


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.ONE_FOR_ONE, ["stop b#1 failed", "start b#2"]),
        (
            Strategy.ONE_FOR_ALL,
            ["stop b#1 failed", "stop c#1 interrupted", "stop a#1 interrupted", "start a#2", "start b#2", "start c#2"],
        ),
        (Strategy.REST_FOR_ONE, ["stop b#1 failed", "stop c#1 interrupted", "start b#2", "start c#2"]),
    ],
)
async def test_strategies_choose_which_children_restart_with_the_one_that_failed(
    autojump_clock: trio.testing.MockClock, strategy: Strategy, expected: list[str]
) -> None:
    log = Log()

    class Strategic(Tree):
        pass

    Strategic.strategy = strategy
    specs = [
        (numbered("a", log, [None]), Restart.PERMANENT),
        (numbered("b", log, [1, None]), Restart.PERMANENT),
        (numbered("c", log, [None]), Restart.PERMANENT),
    ]
    await run_tree(Strategic(specs, log), 5)
    at_one = [text for t, text in log.records if t == 1]
    stops = [text for text in expected if text.startswith("stop")]
    # Stops are sequential (latest started first); restarted children begin
    # in whatever order trio runs their tasks.
    assert at_one[: len(stops)] == stops
    assert sorted(at_one[len(stops) :]) == sorted(text for text in expected if text.startswith("start"))


async def test_a_temporary_child_is_stopped_but_not_restarted_by_one_for_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    class All(Tree):
        strategy = Strategy.ONE_FOR_ALL

    specs = [(numbered("t", log, [None]), Restart.TEMPORARY), (numbered("p", log, [1, None]), Restart.PERMANENT)]
    await run_tree(All(specs, log), 3)
    assert [text for t, text in log.records if t == 1] == ["stop p#1 failed", "stop t#1 interrupted", "start p#2"]


async def test_restart_intensity_fails_the_supervisor_with_every_child_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    class Strict(Tree):
        max_restarts = 3
        restart_period = 5

    tree = Strict([(numbered("a", log, [1]), Restart.PERMANENT)], log)
    with pytest.raises(hybrid.RestartIntensityExceeded, match="more than 3 restarts in 5s") as caught:
        await tree.run()
    assert trio.current_time() - log.start == pytest.approx(4)
    assert [str(e) for e in caught.value.errors] == [f"a#{n} crashed" for n in range(1, 5)]
    cause = caught.value.__cause__
    assert isinstance(cause, ExceptionGroup)
    assert len(cause.exceptions) == 4  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]


async def test_restarts_spread_wider_than_the_window_never_exceed_the_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    class Window(Tree):
        max_restarts = 2
        restart_period = 3

    await run_tree(Window([(numbered("a", log, [2]), Restart.PERMANENT)], log), 21)
    starts = [t for t, text in log.records if text.startswith("start")]
    assert starts == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]


async def test_children_failing_at_once_are_all_reported(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()

    class Strict(Tree):
        max_restarts = 2

    tree = Strict([(numbered(name, log, [1]), Restart.PERMANENT) for name in "xyz"], log)
    with pytest.raises(hybrid.RestartIntensityExceeded) as caught:
        await tree.run()
    assert sorted(str(e) for e in caught.value.errors) == ["x#1 crashed", "y#1 crashed", "z#1 crashed"]


async def test_restart_backoff_delays_each_restart_exponentially(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()

    class Patient(Tree):
        max_restarts = 10
        restart_period = 100
        restart_backoff = hybrid.Backoff(initial=1, factor=2, max_delay=4)

    await run_tree(Patient([(numbered("a", log, [0]), Restart.PERMANENT)], log), 16)
    starts = [t for t, text in log.records if text.startswith("start")]
    assert starts == [0, 1, 3, 7, 11, 15]


async def test_a_restarted_child_keeps_its_address_and_messages_sent_meanwhile_reach_the_new_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    class Keeps(Supervisor):
        restart_backoff = hybrid.Backoff(initial=5)

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(numbered("a", log, [1, None]))
            return Next.events()

        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            return 0

    async with trio.open_nursery() as nursery:
        sup = Keeps()
        address = hybrid.spawn(nursery, sup)
        await address.request(Echo())
        child = sup.child
        await trio.sleep(2)  # a#1 crashed at 1; a#2 starts at 6
        child.send(Ping(1))
        await trio.sleep(5)
        child.send(Ping(2))
        await trio.sleep(1)
        assert child.is_alive
        address.interrupt()
    assert (6, "start a#2") in log.records
    assert (6, "a#2 ping 1") in log.records
    assert (7, "a#2 ping 2") in log.records


async def test_the_address_of_a_child_that_is_not_restarted_reports_it_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    tree = Tree([(numbered("a", log, [1]), Restart.TEMPORARY)], log)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, tree)
        await trio.sleep(0.5)
        [child] = tree.ctx.children()
        await trio.sleep(1)
        with pytest.raises(hybrid.AgentStopped):
            child.send(Ping())
        assert tree.ctx.children() == []
        assert tree.ended == [("ValueError", StopKind.FAILED)]
        address.interrupt()


async def test_on_child_ended_sees_every_ending_with_its_reason(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    tree = Tree(
        [
            (numbered("f", log, [1]), Restart.TEMPORARY),
            (numbered("d", log, [2], "done"), Restart.TRANSIENT),
            (numbered("s", log, [None]), Restart.PERMANENT),
        ],
        log,
    )
    await run_tree(tree, 3)
    assert tree.ended == [
        ("ValueError", StopKind.FAILED),
        ("-", StopKind.DONE),
        ("-", StopKind.INTERRUPTED),
    ]


async def test_spawn_checks_its_arguments() -> None:
    class Checks(Supervisor):
        def begin(self) -> Next[Self]:
            log = Log()
            with pytest.raises(ValueError, match="an agent instance runs once; pass a factory"):
                self.ctx.spawn(Life("x", log, None), restart=Restart.PERMANENT)
            with pytest.raises(TypeError, match="needs an agent instance or a factory"):
                self.ctx.spawn(42)  # type: ignore[call-overload]
            with pytest.raises(TypeError, match="returned 'nope', not an agent"):
                self.ctx.spawn(lambda: "nope")  # type: ignore[type-var]
            with pytest.raises(TypeError, match="group must be an int"):
                self.ctx.spawn(Life("x", log, None), group="first")  # type: ignore[call-overload]
            with pytest.raises(ValueError, match="shutdown_timeout must be a number of seconds >= 0, or math.inf"):
                self.ctx.spawn(Life("x", log, None), shutdown_timeout=-1)
            return Next.done()

    await Checks().run()


async def test_a_factory_that_keeps_failing_counts_as_failed_restarts_until_the_intensity_is_exceeded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As in OTP, a restart whose start fails is retried and counted; the supervisor gives up by its intensity."""
    log = Log()
    made = 0

    def flaky() -> Life:
        nonlocal made
        made += 1
        if made > 1:
            raise OSError("cannot build")
        return Life("a", log, 1)

    class Sup(Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(flaky)
            return Next.events()

    with pytest.raises(hybrid.RestartIntensityExceeded) as caught:
        await Sup().run()
    # The child's failure, then three failed builds: the fourth restart in the window is one too many.
    assert made == 4
    assert [type(error) for error in caught.value.errors] == [ValueError, OSError, OSError, OSError]


async def test_a_supervisor_that_finishes_on_its_own_stops_its_children_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    class Finite(App):
        def begin(self) -> Next[Self]:
            super().begin()
            return Next.do_async(self.work)

        async def work(self) -> Next[Self]:
            await trio.sleep(1)
            return Next.done()

    await Finite(log).run()
    order = [text for text in log.texts() if text.endswith("interrupted") and "stopped" not in text]
    assert order[0] == "http interrupted"
    assert sorted(order[1:3]) == ["w0 interrupted", "w1 interrupted"]
    assert order[3] == "db interrupted"
    assert log.records[-1] == (6, "app stopped done")


async def test_cancelling_a_supervisor_cancels_its_children_and_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    with trio.move_on_after(3) as scope:
        await App(log).run()
    assert scope.cancelled_caught
    stopped = sorted(text for text in log.texts() if "stopped" in text)
    assert stopped == [
        "app stopped cancelled",
        "db stopped cancelled",
        "http stopped cancelled",
        "w0 stopped cancelled",
        "w1 stopped cancelled",
    ]


class Mid(Supervisor):
    def __init__(self, name: str, log: Log) -> None:
        self.name = name
        self.log = log

    def begin(self) -> Next[Self]:
        self.ctx.spawn(Member(f"{self.name}.low", self.log, 1), group=1)
        self.ctx.spawn(Member(f"{self.name}.high", self.log, 1), group=2)
        return Next.events()

    async def on_interrupt(self) -> None:
        self.log(f"{self.name} interrupted")
        await super().on_interrupt()


async def test_nested_supervisors_shut_down_leaves_first_within_the_group_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    class Root(Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(Mid("m1", log), group=1)
            self.ctx.spawn(Mid("m2", log), group=2)
            return Next.events()

    async with trio.open_nursery() as nursery:
        root = hybrid.spawn(nursery, Root())
        await trio.sleep(1)
        root.interrupt()
    interrupted = [(t, text) for t, text in log.records if text.endswith("interrupted") and "stopped" not in text]
    assert interrupted == [
        (1, "m2 interrupted"),
        (1, "m2.high interrupted"),
        (2, "m2.low interrupted"),
        (3, "m1 interrupted"),
        (3, "m1.high interrupted"),
        (4, "m1.low interrupted"),
    ]


async def test_a_failure_escalates_exactly_as_far_as_the_policies_say(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    mids = 0

    class FragileMid(Supervisor):
        max_restarts = 0  # any child failure fails this supervisor

        def begin(self) -> Next[Self]:
            nonlocal mids
            mids += 1
            self.ctx.spawn(numbered(f"leaf{mids}", log, [1]))
            return Next.events()

    class Root(Supervisor):
        max_restarts = 2
        restart_period = 100

        def begin(self) -> Next[Self]:
            self.ctx.spawn(FragileMid)
            return Next.events()

    with pytest.raises(hybrid.RestartIntensityExceeded, match="Root") as caught:
        await Root().run()
    assert mids == 3  # restarted twice, then the third failure exceeds the root's intensity
    inner = caught.value.errors
    assert len(inner) == 3
    assert all(isinstance(error, hybrid.RestartIntensityExceeded) for error in inner)
    assert trio.current_time() - log.start == pytest.approx(3)


class Watcher(Agent[StopReason]):
    def __init__(self, target: hybrid.Address[Any]) -> None:
        self.target = target

    def begin(self) -> Next[Self]:
        self.ctx.monitor(self.target)
        return Next.events()

    @hybrid.on_event
    async def ended(self, event: hybrid.Ended) -> None:
        assert event.address is self.target
        self.ctx.do_next(Next.done(event.reason))


async def test_a_monitor_delivers_ended_when_the_watched_agent_ends(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    runner = hybrid.AgentRunner(Life("t", log, 2))  # its failure comes back as a reason
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        reason = await Watcher(runner.address).run()
    assert reason.failed
    assert str(reason.error) == "t crashed"
    assert trio.current_time() - log.start == pytest.approx(2)


async def test_monitoring_an_agent_that_has_ended_delivers_at_once_and_cancel_stops_it() -> None:
    log = Log()
    async with trio.open_nursery() as nursery:
        done = hybrid.spawn(nursery, Life("d", log, 0, "done"))
        await done.join()
        assert (await Watcher(done).run()).done

        idle = hybrid.spawn(nursery, Life("i", log, None))

        class Cancels(Agent[None]):
            def begin(self) -> Next[Self]:
                self.ctx.monitor(idle).cancel()
                return Next.do_async(self.later)

            async def later(self) -> Next[Self]:
                idle.interrupt()
                await idle.join()
                return Next.events()

            @hybrid.on_event
            async def ended(self, event: hybrid.Ended) -> None:
                raise AssertionError("a cancelled monitor delivered")  # pragma: no cover

        async with trio.open_nursery() as inner:
            cancels = hybrid.spawn(inner, Cancels())
            await trio.testing.wait_all_tasks_blocked()
            assert cancels.statistics().mailbox_depth == 0
            cancels.interrupt()

        class NoHandler(Agent[None]):
            def begin(self) -> Next[Self]:
                with pytest.raises(hybrid.UnhandledMessage, match="Ended"):
                    self.ctx.monitor(done)
                return Next.done()

        await NoHandler().run()


async def test_a_child_whose_restart_is_abandoned_reports_itself_gone(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()

    class Slow(Supervisor):
        restart_backoff = hybrid.Backoff(initial=10)

        def begin(self) -> Next[Self]:
            self.child = self.ctx.spawn(numbered("a", log, [1, None]))
            return Next.events()

    sup = Slow()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, sup)
        await trio.sleep(2)  # a#1 failed at 1; the restart waits until 11
        address.interrupt()
        await address.join()
    child = sup.child
    assert not child.is_alive
    with pytest.raises(hybrid.AgentStopped):
        child.send(Ping())
    with trio.fail_after(1), pytest.raises(ValueError, match="a#1 crashed"):
        await child.join()  # how the last run at this address ended
    assert "start a#2" not in log.texts()


async def test_an_error_in_on_child_ended_goes_to_on_error_and_the_child_still_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    errors: list[Exception] = []

    class Hooked(Tree):
        async def on_child_ended(self, address: hybrid.Address[Any], reason: StopReason) -> None:
            raise RuntimeError("hook broke")

        async def on_error(self, error: Exception) -> None:
            errors.append(error)

    await run_tree(Hooked([(numbered("a", log, [1, None]), Restart.PERMANENT)], log), 3)
    assert "start a#2" in log.texts()
    assert [str(e) for e in errors] == ["hook broke", "hook broke"]  # a#1 failed, a#2 interrupted


async def test_a_discarded_runner_never_runs_and_a_started_one_cannot_be_discarded() -> None:
    class Answers(Agent):
        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            return request.n  # pragma: no cover - never runs

    log = Log()
    runner = hybrid.AgentRunner(Answers())
    failures: list[str] = []

    async def ask() -> None:
        try:
            await runner.address.request(Echo())
        except hybrid.AgentStopped:
            failures.append("told")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()  # the request is queued
        runner.discard()
    assert failures == ["told"]
    with trio.fail_after(1):
        await runner.address.join()  # returns at once: the agent has ended
    assert runner.address.statistics().reason == StopReason.STOPPED
    started = hybrid.AgentRunner(Life("y", log, None))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(started.run)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(hybrid.LifecycleError, match="has started"):
            started.discard()
        started.address.interrupt()


async def test_an_unhandled_message_error_names_only_the_supervisors_public_handlers() -> None:
    """The supervisor's private machinery messages never appear in a user-facing error."""

    class Quiet(Supervisor):
        @hybrid.on_event
        async def ping(self, event: Ping) -> None:
            pass

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Quiet())
        with pytest.raises(hybrid.UnhandledMessage) as caught:
            address.send(Echo(1))
        assert "it handles: Ping)" in str(caught.value)
        assert "_" not in str(caught.value).split("it handles:")[1]
        address.interrupt()


async def test_a_default_child_name_skips_a_name_a_sibling_took_explicitly() -> None:
    """Default child names never collide with explicit ones: the next free number is taken."""

    class Named(Supervisor):
        def begin(self) -> Next[Self]:
            self.explicit = self.ctx.spawn(Echoer(), name="Echoer-1")
            self.default = self.ctx.spawn(Echoer())
            return Next.events()

    class Echoer(Agent):
        @hybrid.on_request
        async def echo(self, request: Echo) -> int:
            return request.n

    async with trio.open_nursery() as nursery:
        sup = Named()
        address = hybrid.spawn(nursery, sup, name="named")
        await trio.testing.wait_all_tasks_blocked()
        assert sup.explicit.name == "named/Echoer-1"
        assert sup.default.name == "named/Echoer-2"
        with pytest.raises(hybrid.NameInUse):
            hybrid.spawn(nursery, Echoer(), name="named/Echoer-2")
        address.interrupt()
