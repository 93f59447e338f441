"""Agent.message_priority: higher priorities first, FIFO within one, bounded like any mailbox."""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable

import attrs
import outcome
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from typing_extensions import Self

import hybrid
from hybrid import Agent
from hybrid._mailbox import INTERRUPT_MARK, PriorityQueue


@attrs.frozen
class Job:
    n: int
    priority: int = 0


@attrs.frozen
class Seen(hybrid.Request[list[object]]):
    priority: int = 0


@attrs.frozen
class Block:
    """Holds the agent in its handler until the gate opens (so messages pile up)."""


def by_field(message: object) -> int:
    priority = getattr(message, "priority", 0)
    assert isinstance(priority, int)
    return priority


class Prioritised(Agent):
    @staticmethod
    def message_priority(message: object) -> int:
        return by_field(message)

    def __init__(self, gate: trio.Event | None = None) -> None:
        self.gate = gate
        self.seen: list[object] = []

    @hybrid.on_event
    async def job(self, event: Job) -> None:
        self.seen.append(event.n)

    @hybrid.on_event
    async def block(self, event: Block) -> None:
        assert self.gate is not None
        await self.gate.wait()

    @hybrid.on_request
    async def report(self, request: Seen) -> list[object]:
        self.seen.append("seen")
        return list(self.seen)

    async def on_interrupt(self) -> None:
        self.seen.append("interrupt")


async def test_higher_priorities_are_handled_first_and_in_arrival_order_within_one() -> None:
    gate = trio.Event()
    agent = Prioritised(gate)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Block())
        await trio.testing.wait_all_tasks_blocked()
        for n, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1), (6, 9), (7, 0)]:
            address.send(Job(n, priority))
        gate.set()
        assert await address.request(Seen()) == [6, 2, 4, 1, 3, 7, "seen"]  # Seen has priority 0 too
        address.interrupt()


async def test_a_request_takes_its_priority_from_the_request_object() -> None:
    gate = trio.Event()
    agent = Prioritised(gate)
    answers: list[list[object]] = []
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Block())
        await trio.testing.wait_all_tasks_blocked()
        address.send(Job(1, 0))

        async def ask() -> None:
            answers.append(await address.request(Seen(priority=3)))

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        address.send(Job(2, 1))
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert answers == [["seen"]]
    assert agent.seen == ["seen", 2, 1, "interrupt"]


async def test_the_interrupt_mark_has_priority_zero() -> None:
    gate = trio.Event()
    agent = Prioritised(gate)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Block())
        await trio.testing.wait_all_tasks_blocked()
        address.send(Job(1, -1))
        address.send(Job(2, 0))
        address.interrupt()
        address.send(Job(3, 0))  # behind the mark: dropped, the agent finishes (handles what was queued)
        address.send(Job(4, 1))  # overtakes the mark
        gate.set()
    # Finishing handles the messages still queued: the lower priority after the mark.
    assert agent.seen[:4] == [4, 2, "interrupt", 3]
    assert agent.seen[4:] == [1]


async def test_the_bound_counts_every_priority() -> None:
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Prioritised(gate), mailbox_capacity=2)
        address.send(Block())
        await trio.testing.wait_all_tasks_blocked()
        address.send(Job(1, 0))
        address.send(Job(2, 7))
        with pytest.raises(hybrid.MailboxFull):
            address.send(Job(3, 100))
        assert address.statistics().mailbox_depth == 2
        gate.set()
        address.interrupt()


class Raising(Agent):
    @staticmethod
    def message_priority(message: object) -> int:
        if isinstance(message, Job) and message.n < 0:
            raise ValueError("no priority for negative jobs")
        return "high" if isinstance(message, Job) and message.n == 0 else 1  # type: ignore[return-value]

    @hybrid.on_event
    async def job(self, event: Job) -> None:
        pass


async def test_a_priority_function_that_raises_or_returns_no_int_fails_the_send_in_the_sender() -> None:
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Raising())
        address.send(Job(1))  # the first message makes the queue
        with pytest.raises(ValueError, match="no priority for negative jobs"):
            address.send(Job(-1))
        with pytest.raises(TypeError, match="message_priority must return an int, got 'high'"):
            address.send(Job(0))
        await trio.testing.wait_all_tasks_blocked()
        assert address.statistics().messages_handled == 1
        address.interrupt()


def test_message_priority_must_be_a_staticmethod() -> None:
    with pytest.raises(TypeError, match=r"Bad.message_priority must be a @staticmethod"):

        class Bad(Agent):  # pyright: ignore[reportUnusedClass]
            def message_priority(self, message: object) -> int:  # type: ignore[override]
                return 0


class SlowRestarts(hybrid.Supervisor):
    """Restarts its one child from `factory` a second after it ends: messages sent meanwhile wait for it."""

    restart_backoff = hybrid.Backoff(initial=1.0)

    def __init__(self, factory: Callable[[], Agent]) -> None:
        self.factory = factory

    def begin(self) -> hybrid.Next[Self]:
        self.ctx.spawn(self.factory)
        return hybrid.Next.events()


async def test_a_restarted_child_keeps_its_priority_mailbox(autojump_clock: trio.testing.MockClock) -> None:
    """Messages sent while the child waits for its restart are handed to the new instance by priority."""
    made: list[Prioritised] = []

    def factory() -> Prioritised:
        made.append(Prioritised())
        return made[-1]

    class Boom(Exception):
        pass

    async with trio.open_nursery() as nursery:
        parent = hybrid.spawn(nursery, SlowRestarts(factory))
        await trio.testing.wait_all_tasks_blocked()
        address = made[0].ctx.address
        made[0].ctx.do_next(hybrid.Next.fail(Boom()))
        await trio.sleep(0.5)  # ended, its restart not due yet
        assert len(made) == 1
        address.send(Job(1, 0))
        address.send(Job(2, 3))
        address.send(Job(3, 0))
        await trio.sleep(1)
        assert len(made) == 2
        assert made[1].seen == [2, 1, 3]
        parent.interrupt()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=1, max_size=40),
    st.integers(1, 12),
)
def test_a_priority_mailbox_never_reorders_within_a_priority_nor_exceeds_its_bound(
    plan: list[tuple[int, bool]], capacity: int
) -> None:
    """Random sends (some while the reader is held) against a model: order per priority and the bound hold."""

    async def main() -> None:
        gate = trio.Event()
        agent = Prioritised(gate)
        accepted: list[Job] = []
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent, mailbox_capacity=capacity + 1)
            address.send(Block())
            await trio.testing.wait_all_tasks_blocked()
            for n, (priority, pause) in enumerate(plan):
                try:
                    address.send(Job(n, priority))
                except hybrid.MailboxFull:
                    assert address.statistics().mailbox_depth == capacity + 1
                else:
                    accepted.append(Job(n, priority))
                assert address.statistics().mailbox_depth <= capacity + 1
                if pause and not gate.is_set():
                    gate.set()
                    await trio.testing.wait_all_tasks_blocked()
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            address.interrupt()
        handled = [n for n in agent.seen if isinstance(n, int)]
        assert sorted(handled) == [job.n for job in accepted]
        for level in {job.priority for job in accepted}:
            in_level = [job.n for job in accepted if job.priority == level]
            assert [n for n in handled if n in in_level] == in_level

    trio.run(main)


async def test_requests_abandoned_by_their_callers_are_swept_out_of_a_priority_mailbox_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    agent = Prioritised(gate)
    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, agent)
        address.send(Block())
        await trio.testing.wait_all_tasks_blocked()
        for n in range(10):
            address.send(Job(n, n % 3))

        async def give_up(priority: int) -> None:
            with trio.move_on_after(1):
                await address.request(Seen(priority=priority))

        async with trio.open_nursery() as callers:
            for i in range(120):
                callers.start_soon(give_up, i % 4)
        # The sweep ran: the abandoned requests left the queue, the jobs stayed.
        assert address.statistics().mailbox_depth == 10
        assert address.statistics().messages_dropped >= 64
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
    assert agent.seen == [2, 5, 8, 1, 4, 7, 0, 3, 6, 9, "interrupt"]


def keeps(remainder: int, message: object) -> bool:
    return not (isinstance(message, Job) and message.n % 4 == remainder)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(-2, 2)),
            st.tuples(st.just("mark"), st.just(0)),
            st.tuples(st.just("pop"), st.just(0)),
            st.tuples(st.just("unmark"), st.just(0)),
            st.tuples(st.just("retain"), st.integers(0, 3)),
        ),
        max_size=60,
    )
)
def test_the_priority_queue_matches_a_sorted_model_under_every_operation_the_mailbox_uses(
    operations: list[tuple[str, int]],
) -> None:
    """Appends, the reader's pops, the interrupt mark's removal and the sweep, against a stable sort."""
    queue = PriorityQueue(by_field)
    model: list[tuple[int, int, object]] = []  # (-priority, arrival, message): sorted is taking order
    for arrival, (operation, value) in enumerate(operations):
        if operation == "append":
            job = Job(arrival, value)
            queue.append(job)
            model.append((-value, arrival, job))
        elif operation == "mark":
            queue.append(INTERRUPT_MARK)
            model.append((0, arrival, INTERRUPT_MARK))
        elif operation == "pop" and model:
            model.sort(key=lambda entry: entry[:2])
            assert queue.popleft() is model.pop(0)[2]
        elif operation == "unmark" and INTERRUPT_MARK in queue:
            queue.remove(INTERRUPT_MARK)
            model.remove(next(entry for entry in sorted(model, key=lambda e: e[:2]) if entry[2] is INTERRUPT_MARK))
        elif operation == "retain":
            queue.retain(functools.partial(keeps, value))
            model = [entry for entry in model if keeps(value, entry[2])]
        model.sort(key=lambda entry: entry[:2])
        assert list(queue) == [entry[2] for entry in model]
        assert len(queue) == len(model)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 5


@attrs.frozen
class Pulse:
    n: int


@attrs.frozen
class Ask(hybrid.Request[int]):
    n: int


class Timed(Agent):
    """Ticks and forwarded answers take priorities too; the function fails for pulse 13."""

    def __init__(self, gate: trio.Event, server: hybrid.Address[Prioritised] | None = None) -> None:
        self.gate = gate
        self.server = server
        self.seen: list[object] = []

    @staticmethod
    def message_priority(message: object) -> int:
        if isinstance(message, Pulse):
            if message.n == 13:
                raise RuntimeError("unlucky")
            return Level.HIGH  # an int subclass is an int
        if isinstance(message, Seen):
            return Level.LOW
        return 0

    @hybrid.on_event
    async def pulse(self, event: Pulse) -> None:
        self.seen.append(f"pulse {event.n}")

    @hybrid.on_event
    async def block(self, event: Block) -> None:
        await self.gate.wait()

    @hybrid.on_event
    async def job(self, event: Job) -> None:
        self.seen.append(event.n)

    @hybrid.on_response
    async def answered(self, request: Seen, response: outcome.Outcome[list[object]]) -> None:
        self.seen.append("answer")


async def test_ticks_and_forwarded_answers_are_queued_by_priority_and_a_failing_function_falls_back_to_zero(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        server = hybrid.spawn(nursery, Prioritised())
        timed = Timed(gate, server)
        address = hybrid.spawn(nursery, timed)
        address.send(Block())
        await trio.testing.wait_all_tasks_blocked()
        address.send(Job(1, 0))
        server.request(Seen()).forward_to(timed.ctx)  # its answer: priority LOW (1)
        await trio.testing.wait_all_tasks_blocked()
        timed.ctx.send_after(1, Pulse(7))  # a tick: priority HIGH
        timed.ctx.send_after(2, Pulse(13))  # a tick whose priority fails: 0, logged
        await trio.sleep(3)
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        address.interrupt()
        server.interrupt()
    assert timed.seen == ["pulse 7", "answer", 1, "pulse 13"]
    assert "message_priority failed for Pulse(n=13); queued with priority 0" in caplog.text


asked: list[object] = []


class Fickle(Agent):
    """Its priority function refuses a message the second time it sees it (when a restart re-queues it)."""

    @staticmethod
    def message_priority(message: object) -> int:
        if message in asked:
            raise ValueError(f"asked twice about {message!r}")
        asked.append(message)
        return 0

    @hybrid.on_event
    async def job(self, event: Job) -> None:
        pass

    @hybrid.on_request
    async def report(self, request: Seen) -> list[object]:
        return []


async def test_a_message_the_priority_function_refuses_at_a_restart_is_dropped_and_its_sender_told(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The mailbox re-queues its messages for the next instance: a refusal then drops the message, never
    the supervisor; a request's caller gets the error."""
    made: list[Fickle] = []

    def factory() -> Fickle:
        made.append(Fickle())
        return made[-1]

    async with trio.open_nursery() as nursery:
        parent = hybrid.spawn(nursery, SlowRestarts(factory))
        await trio.testing.wait_all_tasks_blocked()
        address = made[0].ctx.address
        made[0].ctx.do_next(hybrid.Next.fail(RuntimeError("crash")))
        await trio.sleep(0.5)
        address.send(Job(1, 2))  # queued while the child waits for its restart
        with pytest.raises(ValueError, match="asked twice about Seen"):
            await address.request(Seen())
        assert len(made) == 2
        assert address.statistics().messages_dropped == 2
        assert "the next agent's message_priority refused Job(n=1, priority=2); dropped" in caplog.text
        parent.interrupt()
