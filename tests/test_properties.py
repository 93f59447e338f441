"""Property-based tests: ordering, and every message handled or its sender told."""

from __future__ import annotations

from typing import Any

import attrs
import hypothesis.strategies as st
import trio
from hypothesis import HealthCheck, given, settings
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next
from tests.messages import Echo, Ping

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@attrs.frozen
class Seq:
    sender: int
    index: int


class OrderRecorder(Agent):
    def __init__(self, yields: list[bool]) -> None:
        self.seen: list[Seq] = []
        self.yields = yields

    @hybrid.on_event
    async def record(self, event: Seq) -> None:
        self.seen.append(event)
        if self.yields[len(self.seen) % len(self.yields)]:
            await trio.lowlevel.checkpoint()


@SETTINGS
@given(
    senders=st.integers(1, 5),
    per_sender=st.integers(0, 60),
    capacity=st.none() | st.integers(1, 8),
    yields=st.lists(st.booleans(), min_size=1, max_size=8),
    sender_yields=st.lists(st.booleans(), min_size=1, max_size=8),
)
def test_each_senders_events_arrive_complete_and_in_order(
    senders: int, per_sender: int, capacity: int | None, yields: list[bool], sender_yields: list[bool]
) -> None:
    async def main() -> list[Seq]:
        agent = OrderRecorder(yields)
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent, mailbox_capacity=capacity)

            async def sender(sender_id: int) -> None:
                for index in range(per_sender):
                    await address.send_wait(Seq(sender_id, index))
                    if sender_yields[index % len(sender_yields)]:
                        await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as senders_nursery:
                for sender_id in range(senders):
                    senders_nursery.start_soon(sender, sender_id)
            address.interrupt()
        return agent.seen

    seen = trio.run(main)
    assert len(seen) == senders * per_sender
    for sender_id in range(senders):
        assert [s.index for s in seen if s.sender == sender_id] == list(range(per_sender))


STOP_MARK = -1
DONE_MARK = -2

operation = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 1000)),
    st.tuples(st.just("request"), st.integers(0, 1000)),
    st.tuples(st.just("checkpoint"), st.just(0)),
    st.tuples(st.just("interrupt"), st.just(0)),
    st.tuples(st.just("send"), st.just(STOP_MARK)),
    st.tuples(st.just("send"), st.just(DONE_MARK)),
)


class Target(Agent):
    def __init__(self) -> None:
        self.handled: list[int] = []

    @hybrid.on_event
    async def ping(self, event: Ping) -> None:
        self.handled.append(event.n)
        if event.n == STOP_MARK:
            self.ctx.stop()
        elif event.n == DONE_MARK:
            self.ctx.shutdown()

    @hybrid.on_request
    async def echo(self, request: Echo) -> int:
        await trio.lowlevel.checkpoint()
        return request.n


@SETTINGS
@given(
    script=st.lists(operation, max_size=40),
    capacity=st.none() | st.integers(1, 4),
)
def test_every_message_is_handled_or_its_sender_is_told(script: list[tuple[str, int]], capacity: int | None) -> None:
    accepted: list[int] = []
    scripted_interrupts = sum(kind == "interrupt" for kind, _ in script)
    interrupts = max(1, scripted_interrupts)  # the test interrupts once if the script does not
    refused: list[type[BaseException]] = []
    answers: dict[int, Any] = {}

    async def main() -> tuple[Target, hybrid.Address[Target]]:
        agent = Target()
        with trio.fail_after(30):  # nothing may hang
            async with trio.open_nursery() as nursery:
                address = hybrid.spawn(nursery, agent, mailbox_capacity=capacity)

                async def ask(key: int, n: int) -> None:
                    try:
                        answers[key] = await address.request(Echo(n))
                    except hybrid.AgentStopped:
                        answers[key] = "told"

                for key, (kind, n) in enumerate(script):
                    if kind == "send":
                        try:
                            address.send(Ping(n))
                        except (hybrid.AgentStopped, hybrid.MailboxFull) as error:
                            refused.append(type(error))
                        else:
                            accepted.append(n)
                    elif kind == "request":
                        nursery.start_soon(ask, key, n)
                    elif kind == "checkpoint":
                        await trio.sleep(0)
                    else:
                        address.interrupt()
                if scripted_interrupts == 0:
                    address.interrupt()
        return agent, address

    agent, address = trio.run(main)
    stats = address.statistics()
    assert stats.reason is not None
    # Events: handled in order, as a prefix of those accepted; all of them unless
    # the agent stopped or was interrupted twice (which cancels and discards).
    assert agent.handled == accepted[: len(agent.handled)]
    if not stats.reason.stopped and interrupts == 1:
        assert agent.handled == accepted
    else:
        assert stats.messages_dropped >= len(accepted) - len(agent.handled)
    # Requests: every caller got its answer or was told the agent stopped.
    requests = {key: n for key, (kind, n) in enumerate(script) if kind == "request"}
    assert set(answers) == set(requests)
    for key, n in requests.items():
        assert answers[key] in (n, "told")
    # A send was refused only for a reason the sender can act on.
    if capacity is None:
        assert all(kind is hybrid.AgentStopped for kind in refused)


class Machine(Agent[int]):
    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def begin(self) -> Next[Self]:
        return Next.do_async(self.step, 0)

    async def step(self, i: int) -> Next[Self]:
        if i == len(self.steps):
            return Next.done(i)
        kind = self.steps[i]
        if kind == "sync":
            return Next.do_sync(self.sync_step, i + 1)
        if kind == "yield":
            await trio.lowlevel.checkpoint()
        return Next.do_async(self.step, i + 1)

    def sync_step(self, i: int) -> Next[Self]:
        return Next.do_async(self.step, i)


@SETTINGS
@given(steps=st.lists(st.sampled_from(["async", "sync", "yield"]), max_size=30))
def test_any_sequence_of_states_runs_every_step_once_and_returns_its_output(steps: list[str]) -> None:
    assert trio.run(Machine(steps).run) == len(steps)
