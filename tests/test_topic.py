"""Topics: fan-out to agents and tasks, ordering, overflow policies, backpressure, ending, statistics."""

from __future__ import annotations

import logging

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Overflow, Topic
from tests.messages import Echo


@attrs.frozen
class Tick:
    n: int


@attrs.frozen
class BigTick(Tick):
    pass


@attrs.frozen
class Tock:
    n: int


class Listener(Agent):
    """Records each tick; a slow one sleeps `delay` seconds in its handler first."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[int] = []

    @hybrid.on_event
    async def tick(self, event: Tick) -> None:
        if self.delay:
            await trio.sleep(self.delay)
        self.seen.append(event.n)


class Deaf(Agent):
    """Handles tocks only."""

    @hybrid.on_event
    async def tock(self, event: Tock) -> None:
        pass


async def drain(subscription: hybrid.Subscription[Tick]) -> list[int]:
    """What a subscription yields until its topic is closed."""
    return [tick.n async for tick in subscription]


async def collect(subscription: hybrid.Subscription[Tick], into: list[int]) -> None:
    """Append what a subscription yields to `into`, until its iteration ends or raises."""
    async for tick in subscription:
        into.append(tick.n)


async def finish(address: hybrid.Address[Listener]) -> None:
    """Let an agent handle what it has queued, then end it (the interrupt is queued behind)."""
    address.interrupt()
    await address.join()


# -- fan-out and ordering ----------------------------------------------------------


async def test_publish_fans_out_to_every_agent_and_task_each_in_publish_order() -> None:
    topic = Topic(Tick)
    results: dict[str, list[int]] = {}

    async def reader(name: str, subscription: hybrid.Subscription[Tick]) -> None:
        async with subscription:
            results[name] = await drain(subscription)

    async with trio.open_nursery() as nursery:
        first, second = Listener(), Listener()
        addresses = [hybrid.spawn(nursery, first), hybrid.spawn(nursery, second)]
        for address in addresses:
            topic.subscribe(address)
        nursery.start_soon(reader, "a", topic.subscription(buffer=100))
        nursery.start_soon(reader, "b", topic.subscription(buffer=100))
        assert [topic.publish(Tick(n)) for n in range(50)] == [4] * 50
        topic.close()
        for address in addresses:
            await finish(address)
    assert first.seen == second.seen == results["a"] == results["b"] == list(range(50))


async def test_a_subscriber_receives_only_what_is_published_while_it_is_subscribed() -> None:
    topic = Topic(Tick)
    assert topic.publish(Tick(0)) == 0
    async with topic.subscription():
        topic.publish(Tick(1))
    topic.publish(Tick(2))
    assert topic.statistics().published == 3
    assert topic.statistics().delivered == 1


async def test_a_subclass_of_the_message_type_is_published_as_is() -> None:
    topic = Topic(Tick)
    async with topic.subscription() as subscription:
        assert topic.publish(BigTick(1)) == 1
        assert await subscription.receive() == BigTick(1)


async def test_several_tasks_reading_one_subscription_each_get_different_messages() -> None:
    topic = Topic(Tick, buffer=100)
    got: list[list[int]] = [[], []]

    async def reader(index: int, subscription: hybrid.Subscription[Tick]) -> None:
        async for tick in subscription:
            got[index].append(tick.n)
            await trio.sleep(0)

    async with topic.subscription() as subscription, trio.open_nursery() as nursery:
        nursery.start_soon(reader, 0, subscription)
        nursery.start_soon(reader, 1, subscription)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(20):
            topic.publish(Tick(n))
            await trio.sleep(0)
        topic.close()
    assert sorted(got[0] + got[1]) == list(range(20))
    assert got[0] == sorted(got[0]) and got[1] == sorted(got[1])
    assert got[0] and got[1]


# -- bad input --------------------------------------------------------------------


async def test_publishing_a_message_of_another_type_is_a_type_error_naming_both() -> None:
    topic = Topic(Tick)
    with pytest.raises(
        TypeError, match=r"Topic\[Tick\] carries Tick messages, not Tock: Tock\(n=1\) was not published"
    ):
        topic.publish(Tock(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not Tock"):
        await topic.publish_wait(Tock(1))  # type: ignore[arg-type]
    assert topic.statistics().published == 0


async def test_subscribing_an_agent_without_a_handler_for_the_type_is_refused() -> None:
    topic = Topic(Tick)
    async with trio.open_nursery() as nursery:
        deaf = hybrid.spawn(nursery, Deaf())
        with pytest.raises(
            hybrid.UnhandledMessage, match=r"Deaf-\d+ \(Deaf\) has no @hybrid.on_event handler for Tick"
        ):
            topic.subscribe(deaf)
        assert topic.subscribers == ()
        deaf.interrupt()


async def test_subscribing_an_agent_twice_is_a_value_error_and_unsubscribing_a_stranger_returns_false() -> None:
    topic = Topic(Tick)
    async with trio.open_nursery() as nursery:
        listener = hybrid.spawn(nursery, Listener())
        topic.subscribe(listener)
        with pytest.raises(ValueError, match="is already subscribed to Topic"):
            topic.subscribe(listener)
        assert list(topic.subscribers) == [listener]
        assert topic.unsubscribe(listener) is True
        assert topic.unsubscribe(listener) is False
        assert list(topic.subscribers) == []
        assert topic.publish(Tick(1)) == 0
        await finish(listener)


async def test_subscribing_an_agent_that_has_ended_raises_agent_stopped() -> None:
    topic = Topic(Tick)
    async with trio.open_nursery() as nursery:
        listener = hybrid.spawn(nursery, Listener())
        await finish(listener)
    with pytest.raises(hybrid.AgentStopped, match="has ended; it was not subscribed"):
        topic.subscribe(listener)


async def test_bad_arguments_are_refused_with_clear_errors() -> None:
    with pytest.raises(TypeError, match="message_type must be a class, got 'Tick'"):
        Topic("Tick")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Echo is a hybrid.Request"):
        Topic(Echo)
    with pytest.raises(ValueError, match="buffer must be an int >= 1, got 0"):
        Topic(Tick, buffer=0)
    with pytest.raises(TypeError, match="buffer must be an int >= 1, got True"):
        Topic(Tick, buffer=True)
    with pytest.raises(TypeError, match="buffer must be an int >= 1, got 2.0"):
        Topic(Tick, buffer=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="overflow must be a hybrid.Overflow, got 'disconnect'"):
        Topic(Tick, overflow="disconnect")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str or None"):
        Topic(Tick, name=3)  # type: ignore[arg-type]
    topic = Topic(Tick)
    with pytest.raises(ValueError, match="buffer must be an int >= 1, got -1"):
        topic.subscription(buffer=-1)
    with pytest.raises(TypeError, match="overflow must be a hybrid.Overflow"):
        topic.subscription(overflow=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str or None"):
        topic.subscription(name=b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="subscribe takes an agent's hybrid.Address, got 'Listener'"):
        topic.subscribe("Listener")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unsubscribe takes an agent's hybrid.Address"):
        topic.unsubscribe(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no public constructor"):
        hybrid.Subscription()
    assert topic.subscribers == ()


async def test_the_topic_is_used_from_its_trio_thread_only() -> None:
    topic = Topic(Tick)
    with pytest.raises(RuntimeError, match=r"Topic.publish must be called from a trio task.*trio.from_thread"):
        await trio.to_thread.run_sync(topic.publish, Tick(1))
    assert await trio.to_thread.run_sync(trio.from_thread.run_sync, topic.publish, Tick(1)) == 0
    assert topic.statistics().published == 1


async def test_names_properties_and_reprs_say_what_they_are() -> None:
    topic = Topic(Tick)
    assert topic.name == "Topic[Tick]"
    assert topic.message_type is Tick
    assert Topic(Tick, name="ticks").name == "ticks"
    async with topic.subscription() as first, topic.subscription(name="chart", buffer=4) as second:
        assert first.name == "Topic[Tick]#1"
        assert second.name == "chart"
        assert topic.subscribers == (first, second)
        topic.publish(Tick(1))
        assert repr(second) == "<Subscription chart (open, 1/4 buffered)>"
        assert repr(topic) == "<Topic Topic[Tick]: 2 subscribers>"
    topic.close()
    assert repr(topic) == "<Topic Topic[Tick]: 0 subscribers, closed>"


# -- overflow: task subscriptions ---------------------------------------------------


async def test_drop_newest_keeps_a_full_subscription_buffer_and_counts_the_drops() -> None:
    topic = Topic(Tick, buffer=2, overflow=Overflow.DROP_NEWEST)
    async with topic.subscription() as subscription:
        assert [topic.publish(Tick(n)) for n in range(5)] == [1, 1, 0, 0, 0]
        assert [subscription.receive_nowait().n for _ in range(2)] == [0, 1]
        with pytest.raises(trio.WouldBlock):
            subscription.receive_nowait()
        assert topic.publish(Tick(5)) == 1
        assert (await subscription.receive()).n == 5
        stats = subscription.statistics()
        assert (stats.delivered, stats.dropped, stats.buffered, stats.capacity) == (3, 3, 0, 2)
        assert stats.overflow is Overflow.DROP_NEWEST
        assert stats.address is None


async def test_drop_oldest_makes_room_so_a_slow_subscription_sees_the_latest_messages() -> None:
    topic = Topic(Tick, buffer=2, overflow=Overflow.DROP_OLDEST)
    async with topic.subscription() as subscription:
        assert [topic.publish(Tick(n)) for n in range(5)] == [1] * 5
        assert [(await subscription.receive()).n for _ in range(2)] == [3, 4]
        stats = subscription.statistics()
        assert (stats.delivered, stats.dropped, stats.buffered) == (5, 3, 0)


async def test_disconnect_yields_what_was_buffered_then_raises_subscriber_too_slow() -> None:
    topic = Topic(Tick, buffer=2)  # DISCONNECT is the default
    got: list[int] = []
    async with topic.subscription(name="slow") as subscription:
        assert [topic.publish(Tick(n)) for n in range(4)] == [1, 1, 0, 0]
        assert topic.subscribers == ()
        with pytest.raises(
            hybrid.SubscriberTooSlow, match="slow fell behind Topic.Tick. and was disconnected"
        ) as caught:
            await collect(subscription, got)
        assert (caught.value.subscriber, caught.value.buffer) == ("slow", 2)
        assert isinstance(caught.value, hybrid.HybridError)
        assert isinstance(caught.value, trio.BrokenResourceError)
        with pytest.raises(hybrid.SubscriberTooSlow):
            subscription.receive_nowait()
        assert repr(subscription) == "<Subscription slow (disconnected, 0/2 buffered)>"
    assert got == [0, 1]
    stats = topic.statistics()
    assert (stats.published, stats.delivered, stats.dropped, stats.disconnected) == (4, 2, 1, 1)


async def test_a_subscription_can_override_the_topic_policy_and_buffer() -> None:
    topic = Topic(Tick, buffer=1, overflow=Overflow.DISCONNECT)
    async with (
        topic.subscription(buffer=3, overflow=Overflow.DROP_OLDEST) as latest,
        topic.subscription() as strict,
    ):
        assert [topic.publish(Tick(n)) for n in range(5)] == [2, 1, 1, 1, 1]
        assert [latest.receive_nowait().n for _ in range(3)] == [2, 3, 4]
        assert [strict.receive_nowait().n] == [0]
        with pytest.raises(hybrid.SubscriberTooSlow):
            strict.receive_nowait()


# -- overflow: agents ---------------------------------------------------------------


async def test_drop_newest_on_a_bounded_agent_skips_messages_while_its_mailbox_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic(Tick, overflow=Overflow.DROP_NEWEST)
    async with trio.open_nursery() as nursery:
        slow = Listener(delay=1)
        address = hybrid.spawn(nursery, slow, mailbox_capacity=2)
        topic.subscribe(address)
        topic.publish(Tick(0))
        await trio.sleep(0.5)  # it handles 0 until t=1; its mailbox is empty
        assert [topic.publish(Tick(n)) for n in range(1, 5)] == [1, 1, 0, 0]
        assert topic.subscribers == (address,)
        (stats,) = topic.statistics().subscribers
        assert stats == hybrid.SubscriberStatistics(
            name=address.name,
            address=address,
            overflow=Overflow.DROP_NEWEST,
            delivered=3,
            dropped=2,
            buffered=2,
            capacity=2,
        )
        await finish(address)
    assert slow.seen == [0, 1, 2]


async def test_disconnect_unsubscribes_a_bounded_agent_whose_mailbox_is_full(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    topic = Topic(Tick)
    async with trio.open_nursery() as nursery:
        slow, fast = Listener(delay=1), Listener()
        slow_address = hybrid.spawn(nursery, slow, mailbox_capacity=2)
        fast_address = hybrid.spawn(nursery, fast)
        topic.subscribe(slow_address)
        topic.subscribe(fast_address)
        topic.publish(Tick(0))
        await trio.sleep(0.5)
        with caplog.at_level(logging.WARNING, logger="hybrid.topic"):
            assert [topic.publish(Tick(n)) for n in range(1, 5)] == [2, 2, 1, 1]
        assert topic.subscribers == (fast_address,)
        await finish(slow_address)
        await finish(fast_address)
    assert slow.seen == [0, 1, 2]
    assert fast.seen == [0, 1, 2, 3, 4]
    assert [record.getMessage() for record in caplog.records] == [
        f"Topic[Tick]: {slow_address.name} had no room and was disconnected (Overflow.DISCONNECT) after 3 messages"
    ]
    stats = topic.statistics()
    assert (stats.delivered, stats.dropped, stats.disconnected, stats.ended) == (8, 1, 1, 0)


async def test_drop_oldest_is_refused_for_a_bounded_agent_and_accepted_for_an_unbounded_one() -> None:
    topic = Topic(Tick, overflow=Overflow.DROP_OLDEST)
    async with trio.open_nursery() as nursery:
        bounded = hybrid.spawn(nursery, Listener(), mailbox_capacity=2)
        with pytest.raises(ValueError, match="DROP_OLDEST applies to task subscriptions only"):
            topic.subscribe(bounded)
        topic.subscribe(bounded, overflow=Overflow.DROP_NEWEST)
        unbounded = hybrid.spawn(nursery, Listener())
        topic.subscribe(unbounded)  # an unbounded mailbox never overflows
        with pytest.raises(ValueError, match="DROP_OLDEST"):
            Topic(Tick).subscribe(bounded, overflow=Overflow.DROP_OLDEST)
        assert [s.overflow for s in topic.statistics().subscribers] == [Overflow.DROP_NEWEST, Overflow.DROP_OLDEST]
        assert [s.capacity for s in topic.statistics().subscribers] == [2, None]
        await finish(bounded)
        await finish(unbounded)


async def test_an_agent_that_has_ended_is_removed_at_the_next_publish() -> None:
    topic = Topic(Tick)
    async with trio.open_nursery() as nursery:
        gone, staying = Listener(), Listener()
        gone_address = hybrid.spawn(nursery, gone)
        staying_address = hybrid.spawn(nursery, staying)
        topic.subscribe(gone_address)
        topic.subscribe(staying_address)
        topic.publish(Tick(0))
        await finish(gone_address)
        assert list(topic.subscribers) == [gone_address, staying_address]  # noticed at the next publish
        assert await topic.publish_wait(Tick(1)) == 1
        assert list(topic.subscribers) == [staying_address]
        assert topic.publish(Tick(2)) == 1
        await finish(staying_address)
    assert gone.seen == [0]
    assert staying.seen == [0, 1, 2]
    stats = topic.statistics()
    assert (stats.published, stats.delivered, stats.dropped, stats.ended) == (3, 4, 0, 1)


# -- publish_wait: backpressure -------------------------------------------------------


async def test_publish_wait_paces_the_publisher_to_a_slow_bounded_agent(autojump_clock: trio.testing.MockClock) -> None:
    topic = Topic(Tick, overflow=Overflow.DROP_NEWEST)
    async with trio.open_nursery() as nursery:
        slow = Listener(delay=1)
        address = hybrid.spawn(nursery, slow, mailbox_capacity=1)
        topic.subscribe(address)
        start = trio.current_time()
        for n in range(5):
            assert await topic.publish_wait(Tick(n)) == 1
        # 0 is taken at once, 1 waits in the mailbox; 2, 3, 4 each wait one handler's time for room.
        assert trio.current_time() - start == pytest.approx(3)
        await finish(address)
    assert slow.seen == [0, 1, 2, 3, 4]
    stats = topic.statistics()
    assert (stats.published, stats.delivered, stats.dropped, stats.publishers_waiting) == (5, 5, 0, 0)


async def test_publish_wait_waits_for_a_task_subscription_and_hands_over_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic(Tick, buffer=1, overflow=Overflow.DROP_NEWEST)
    got: list[tuple[int, float]] = []

    async def reader(subscription: hybrid.Subscription[Tick]) -> None:
        async with subscription:
            async for tick in subscription:
                got.append((tick.n, trio.current_time()))
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, topic.subscription())
        for n in range(4):
            assert await topic.publish_wait(Tick(n)) == 1
        assert trio.current_time() == pytest.approx(2)  # 3 got in when the reader took 2
        await trio.sleep(10)
        topic.close()
    assert [n for n, _ in got] == [0, 1, 2, 3]
    assert [when for _, when in got] == pytest.approx([0, 1, 2, 3])
    assert topic.statistics().dropped == 0


async def test_publish_wait_delivers_at_once_to_subscribers_with_room_while_it_waits_for_a_slow_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic(Tick, buffer=1)
    async with topic.subscription() as fast, topic.subscription() as slow, trio.open_nursery() as nursery:
        topic.publish(Tick(0))
        assert fast.receive_nowait() == Tick(0)
        nursery.start_soon(topic.publish_wait, Tick(1))
        await trio.testing.wait_all_tasks_blocked()
        assert fast.receive_nowait() == Tick(1)  # delivered while the publisher waits for `slow`
        assert topic.statistics().publishers_waiting == 1
        assert slow.receive_nowait() == Tick(0)  # makes room: 1 goes in at once
        assert slow.statistics().buffered == 1
        await trio.testing.wait_all_tasks_blocked()
        assert topic.statistics().publishers_waiting == 0
        assert slow.receive_nowait() == Tick(1)


async def test_a_cancelled_publish_wait_has_delivered_only_to_the_subscribers_it_reached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic(Tick, buffer=1, overflow=Overflow.DROP_NEWEST)
    async with trio.open_nursery() as nursery:
        slow = Listener(delay=10)
        address = hybrid.spawn(nursery, slow, mailbox_capacity=1)
        async with topic.subscription() as roomy, topic.subscription() as full:
            topic.subscribe(address)
            topic.publish(Tick(0))
            await trio.sleep(1)  # the agent handles 0 until t=10
            assert roomy.receive_nowait() == Tick(0)
            topic.publish(Tick(1))  # fills the agent's mailbox (the others: roomy gets it, full is full)
            assert roomy.receive_nowait() == Tick(1)
            with trio.move_on_after(1) as scope:
                await topic.publish_wait(Tick(2))
            assert scope.cancelled_caught
            assert roomy.receive_nowait() == Tick(2)
            assert full.statistics().buffered == 1
            assert full.receive_nowait() == Tick(0)
            with pytest.raises(trio.WouldBlock):
                full.receive_nowait()  # 2 never reached it, nor will it
            stats = topic.statistics()
            assert (stats.published, stats.dropped, stats.publishers_waiting) == (3, 1, 0)
            assert len(stats.subscribers) == 3
            await finish(address)
    assert slow.seen == [0, 1]


async def test_a_publish_wait_cancelled_while_waiting_for_an_agent_delivers_nothing_to_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic(Tick)
    async with trio.open_nursery() as nursery:
        slow = Listener(delay=10)
        address = hybrid.spawn(nursery, slow, mailbox_capacity=1)
        topic.subscribe(address)
        topic.publish(Tick(0))
        await trio.sleep(1)
        topic.publish(Tick(1))
        with trio.move_on_after(1):
            await topic.publish_wait(Tick(2))
        assert topic.statistics().publishers_waiting == 0
        assert address.statistics().senders_waiting == 0
        await finish(address)
    assert slow.seen == [0, 1]


async def test_unsubscribing_an_agent_ends_a_publish_wait_waiting_for_its_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic(Tick)
    result: list[int] = []

    async def publish(n: int) -> None:
        result.append(await topic.publish_wait(Tick(n)))

    async with trio.open_nursery() as nursery:
        slow = Listener(delay=10)
        address = hybrid.spawn(nursery, slow, mailbox_capacity=1)
        topic.subscribe(address)
        topic.publish(Tick(0))
        await trio.sleep(1)
        topic.publish(Tick(1))
        nursery.start_soon(publish, 2)
        await trio.sleep(1)
        assert topic.statistics().publishers_waiting == 1
        assert topic.unsubscribe(address)
        await trio.testing.wait_all_tasks_blocked()
        assert result == [0]
        assert trio.current_time() == pytest.approx(2)
        await finish(address)
    assert slow.seen == [0, 1]


async def test_a_publish_wait_skips_an_agent_that_ends_while_it_waits(autojump_clock: trio.testing.MockClock) -> None:
    topic = Topic(Tick)

    async def end_at_5(address: hybrid.Address[Listener]) -> None:
        await trio.sleep(4)
        address.interrupt()
        address.interrupt()  # the second one cancels the running handler

    async with trio.open_nursery() as nursery:
        slow = Listener(delay=10)
        address = hybrid.spawn(nursery, slow, mailbox_capacity=1)
        topic.subscribe(address)
        topic.publish(Tick(0))
        await trio.sleep(1)
        topic.publish(Tick(1))
        nursery.start_soon(end_at_5, address)
        assert await topic.publish_wait(Tick(2)) == 0
        assert trio.current_time() == pytest.approx(5)
    assert slow.seen == []
    stats = topic.statistics()
    assert (stats.delivered, stats.ended, stats.subscribers) == (2, 1, ())


async def test_publish_wait_with_every_subscriber_ready_is_still_a_checkpoint() -> None:
    topic = Topic(Tick)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await topic.publish_wait(Tick(0))
        assert topic.statistics().published == 0  # cancelled before it published anything
    async with topic.subscription() as subscription:
        with trio.CancelScope() as scope:
            await topic.publish_wait(Tick(1))
            scope.cancel()
            await topic.publish_wait(Tick(2))
        assert subscription.receive_nowait() == Tick(1)
        with pytest.raises(trio.WouldBlock):
            subscription.receive_nowait()


# -- receiving, closing, ending ---------------------------------------------------------


async def test_a_cancelled_receive_loses_no_message(autojump_clock: trio.testing.MockClock) -> None:
    topic = Topic(Tick)
    async with topic.subscription() as subscription:
        with trio.move_on_after(1) as scope:
            await subscription.receive()
        assert scope.cancelled_caught
        got: list[Tick] = []

        async def receive(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as inner:
                task_status.started(inner)
                got.append(await subscription.receive())

        async with trio.open_nursery() as nursery:
            inner = await nursery.start(receive)
            await trio.testing.wait_all_tasks_blocked()
            inner.cancel()
            topic.publish(Tick(1))
        assert got == []
        assert subscription.receive_nowait() == Tick(1)


async def test_closing_the_topic_ends_iterations_after_what_was_buffered_and_refuses_publishing() -> None:
    topic = Topic(Tick)
    async with trio.open_nursery() as nursery:
        listener = hybrid.spawn(nursery, Listener())
        topic.subscribe(listener)
        async with topic.subscription() as subscription:
            topic.publish(Tick(0))
            topic.publish(Tick(1))
            topic.close()
            topic.close()  # twice does nothing
            assert await drain(subscription) == [0, 1]
            with pytest.raises(trio.EndOfChannel):
                await subscription.receive()
        assert topic.subscribers == ()
        with pytest.raises(trio.ClosedResourceError, match=r"Topic\[Tick\] was closed; Tick\(n=2\) was not published"):
            topic.publish(Tick(2))
        with pytest.raises(trio.ClosedResourceError):
            await topic.publish_wait(Tick(2))
        with pytest.raises(trio.ClosedResourceError):
            topic.subscribe(listener)
        with pytest.raises(trio.ClosedResourceError):
            topic.subscription()
        assert topic.unsubscribe(listener) is False
        assert topic.statistics().closed
        await finish(listener)


async def test_closing_the_topic_wakes_a_publish_wait_and_waiting_receivers() -> None:
    topic = Topic(Tick, buffer=1)
    published: list[int] = []
    drained: list[list[int]] = []

    async def publish() -> None:
        published.append(await topic.publish_wait(Tick(2)))

    async def read(subscription: hybrid.Subscription[Tick]) -> None:
        drained.append(await drain(subscription))

    async with topic.subscription() as full, topic.subscription() as empty:
        topic.publish(Tick(1))
        assert empty.receive_nowait() == Tick(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, empty)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(publish)  # 2 goes to `empty` at once, then waits for `full`
            await trio.testing.wait_all_tasks_blocked()
            assert topic.statistics().publishers_waiting == 1
            topic.close()
        assert published == [1]
        assert drained == [[2]]
        assert full.receive_nowait() == Tick(1)
        with pytest.raises(trio.EndOfChannel):
            full.receive_nowait()


async def test_closing_a_subscription_unsubscribes_and_discards_its_buffer() -> None:
    topic = Topic(Tick)
    errors: list[BaseException] = []

    async def receive(subscription: hybrid.Subscription[Tick]) -> None:
        try:
            await subscription.receive()
        except trio.ClosedResourceError as error:
            errors.append(error)

    subscription = topic.subscription()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive, subscription)
        await trio.testing.wait_all_tasks_blocked()
        subscription.close()
    assert len(errors) == 1
    other = topic.subscription()
    topic.publish(Tick(1))
    async with other:
        pass
    assert topic.subscribers == ()
    assert other.statistics().buffered == 0
    other.close()  # twice does nothing
    with pytest.raises(trio.ClosedResourceError, match="was closed"):
        other.receive_nowait()
    with pytest.raises(trio.ClosedResourceError):
        async for _ in other:
            pass
    assert topic.statistics().dropped == 0


async def test_closing_a_disconnected_subscription_discards_what_it_had_buffered() -> None:
    topic = Topic(Tick, buffer=1)
    subscription = topic.subscription()
    topic.publish(Tick(0))
    topic.publish(Tick(1))
    subscription.close()
    with pytest.raises(trio.ClosedResourceError):
        subscription.receive_nowait()


async def test_a_closed_subscription_stops_a_publish_wait_waiting_for_it() -> None:
    topic = Topic(Tick, buffer=1)
    result: list[int] = []

    async def publish() -> None:
        result.append(await topic.publish_wait(Tick(1)))

    subscription = topic.subscription()
    topic.publish(Tick(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish)
        await trio.testing.wait_all_tasks_blocked()
        subscription.close()
    assert result == [0]


async def test_a_subscription_can_feed_an_agent_through_ctx_consume() -> None:
    topic = Topic(Tick)
    got: list[int] = []

    class Relay(Agent):
        def __init__(self, subscription: hybrid.Subscription[Tick]) -> None:
            self.subscription = subscription

        def begin(self) -> Next[Self]:
            self.ctx.consume(self.subscription)
            return Next.events()

        @hybrid.on_event
        async def tick(self, event: Tick) -> None:
            got.append(event.n)

        @hybrid.on_event
        async def ended(self, event: hybrid.StreamEnded) -> None:
            self.ctx.shutdown()

    async with trio.open_nursery() as nursery, topic.subscription() as subscription:
        address = hybrid.spawn(nursery, Relay(subscription))
        for n in range(3):
            await topic.publish_wait(Tick(n))
        topic.close()
        await address.join()
    assert got == [0, 1, 2]


# -- statistics and logs --------------------------------------------------------------------


async def test_statistics_count_every_delivery_and_drop_exactly() -> None:
    topic = Topic(Tick, buffer=2, overflow=Overflow.DROP_NEWEST, name="ticks")
    async with (
        trio.open_nursery() as nursery,
        topic.subscription(name="newest") as newest,
        topic.subscription(name="oldest", overflow=Overflow.DROP_OLDEST) as oldest,
        topic.subscription(name="strict", overflow=Overflow.DISCONNECT),
    ):
        listener = Listener()
        address = hybrid.spawn(nursery, listener)
        topic.subscribe(address)
        for n in range(4):
            topic.publish(Tick(n))
        await finish(address)
        topic.publish(Tick(4))
        stats = topic.statistics()
        assert stats == hybrid.TopicStatistics(
            name="ticks",
            published=5,
            # newest: 0 1; oldest: 0 1 2 3 4; strict: 0 1; the listener: 0 1 2 3
            delivered=13,
            # newest: 2 3 4; oldest: 0 1 2; strict: 2 (then it is gone)
            dropped=7,
            disconnected=1,
            ended=1,
            publishers_waiting=0,
            closed=False,
            subscribers=(
                hybrid.SubscriberStatistics("newest", None, Overflow.DROP_NEWEST, 2, 3, 2, 2),
                hybrid.SubscriberStatistics("oldest", None, Overflow.DROP_OLDEST, 5, 3, 2, 2),
            ),
        )
        assert [newest.receive_nowait().n for _ in range(2)] == [0, 1]
        assert [oldest.receive_nowait().n for _ in range(2)] == [3, 4]
    assert listener.seen == [0, 1, 2, 3]


async def test_drops_are_logged_at_warning_at_most_once_a_minute_per_subscriber_and_at_debug_between(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    topic = Topic(Tick, buffer=1, overflow=Overflow.DROP_NEWEST)
    caplog.set_level(logging.DEBUG, logger="hybrid.topic")
    async with topic.subscription(name="slow"):
        for n in range(4):
            topic.publish(Tick(n))
        await trio.sleep(60)
        topic.publish(Tick(4))
    levels = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in levels] == ["WARNING", "DEBUG", "DEBUG", "WARNING"]
    assert levels[0][1] == (
        "Topic[Tick]: slow has no room and drops messages (Overflow.DROP_NEWEST): 1 dropped so far "
        "(the next drops are logged at DEBUG for 60 s; Topic.statistics() counts them all)"
    )
    assert levels[2][1] == "Topic[Tick]: dropped a message for slow (Overflow.DROP_NEWEST): 3 dropped so far"
    assert "4 dropped so far" in levels[3][1]


async def test_publish_wait_skips_subscribers_that_left_while_it_waited_for_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic(Tick, buffer=1, overflow=Overflow.DROP_NEWEST)
    result: list[int] = []

    async def publish() -> None:
        result.append(await topic.publish_wait(Tick(1)))

    async with trio.open_nursery() as nursery:
        listener = Listener(delay=10)
        agent = hybrid.spawn(nursery, listener, mailbox_capacity=1)
        first, leaving, last = topic.subscription(), topic.subscription(), topic.subscription()
        topic.subscribe(agent)
        topic.publish(Tick(0))
        await trio.sleep(1)  # the agent handles 0 until t=10
        topic.publish(Tick(0))  # everyone is full now
        nursery.start_soon(publish)
        await trio.testing.wait_all_tasks_blocked()  # it waits for `first`
        leaving.close()
        assert topic.unsubscribe(agent)
        assert last.receive_nowait() == Tick(0)
        assert first.receive_nowait() == Tick(0)  # room: 1 goes in, and the publisher goes on
        await trio.testing.wait_all_tasks_blocked()
        assert result == [2]  # `first` and `last`; `leaving` and the agent had left
        assert [first.receive_nowait(), last.receive_nowait()] == [Tick(1), Tick(1)]
        await finish(agent)
    assert listener.seen == [0, 0]


async def test_two_publish_waits_for_an_agent_that_ends_count_it_as_ended_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topic = Topic(Tick)
    results: list[int] = []

    async def publish(n: int) -> None:
        results.append(await topic.publish_wait(Tick(n)))

    async with trio.open_nursery() as nursery:
        address = hybrid.spawn(nursery, Listener(delay=10), mailbox_capacity=1)
        topic.subscribe(address)
        topic.publish(Tick(0))
        await trio.sleep(1)
        topic.publish(Tick(1))
        nursery.start_soon(publish, 2)
        nursery.start_soon(publish, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert topic.statistics().publishers_waiting == 2
        address.interrupt()
        address.interrupt()
    assert results == [0, 0]
    assert topic.statistics().ended == 1


async def test_an_agent_that_no_longer_handles_the_type_is_unsubscribed_with_an_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = Topic(Tick)
    async with trio.open_nursery() as nursery:
        runner = hybrid.AgentRunner(Listener(), keep_address=True)
        address = await nursery.start(runner.run)
        topic.subscribe(address)
        address.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        successor = hybrid.AgentRunner(Deaf(), address=address)
        nursery.start_soon(successor.run)
        with caplog.at_level(logging.ERROR, logger="hybrid.topic"):
            assert topic.publish(Tick(1)) == 0
        assert topic.subscribers == ()
        assert topic.statistics().ended == 1
        address.interrupt()
    assert [record.levelname for record in caplog.records] == ["ERROR"]
    assert "no longer handles its messages and was unsubscribed" in caplog.records[0].getMessage()


class SlowToStop(Listener):
    """Its on_stop awaits: while it ends, its address refuses messages."""

    async def on_stop(self, reason: hybrid.StopReason) -> None:
        await trio.sleep(1)


async def test_a_supervised_subscriber_stays_subscribed_across_its_restart_and_misses_only_the_window(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[SlowToStop] = []

    def factory() -> SlowToStop:
        made.append(SlowToStop())
        return made[-1]

    class App(hybrid.Supervisor):
        def begin(self) -> hybrid.Next[App]:
            self.ctx.spawn(factory)
            return hybrid.Next.events()

    topic = hybrid.Topic(Tick)
    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, App())
        await trio.testing.wait_all_tasks_blocked()
        listener = made[0].ctx.address
        topic.subscribe(listener)
        topic.publish(Tick(0))
        await trio.testing.wait_all_tasks_blocked()
        made[0].ctx.do_next(hybrid.Next.fail(RuntimeError("crash")))
        await trio.sleep(0.5)  # in its on_stop: refusing
        assert topic.publish(Tick(1)) == 0
        await trio.sleep(1)  # restarted
        assert topic.publish(Tick(2)) == 1
        await trio.testing.wait_all_tasks_blocked()
        assert topic.subscribers == (listener,)
        assert (made[0].seen, made[1].seen) == ([0], [2])
        assert topic.statistics().dropped == 1
        assert topic.statistics().ended == 0
        assert "is being restarted and missed Tick(n=1)" in caplog.text
        app.interrupt()
