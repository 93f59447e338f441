"""Pipelines: ordering, backpressure, split/filter, error policies, nesting, shutdown, fan-in."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Pipeline, Stage, Supervisor


class Delay(Agent[str]):
    """An agent stage: takes `item` seconds (as given by the item), outputs a label."""

    def __init__(self, item: int) -> None:
        self.item = item

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work)

    async def work(self) -> Next[Self]:
        await trio.sleep(self.item)
        return Next.done(f"d{self.item}")


async def test_agent_stage_outputs_feed_the_next_stage_in_input_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def shout(text: str) -> str:
        return text.upper()

    pipeline = Pipeline(Stage(Delay, concurrency=4), Stage(shout), source=[3, 1, 2, 0, 5])
    assert await pipeline.run() == ["D3", "D1", "D2", "D0", "D5"]


async def test_unordered_mode_emits_outputs_as_they_finish(autojump_clock: trio.testing.MockClock) -> None:
    pipeline = Pipeline(Stage(Delay, concurrency=5), source=[3, 1, 2, 0, 4], ordered=False)
    assert await pipeline.run() == ["d0", "d1", "d2", "d3", "d4"]


async def test_the_concurrency_limit_bounds_the_items_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    running = 0
    peak = 0

    async def work(item: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        return item

    start = trio.current_time()
    assert await Pipeline(Stage(work, concurrency=3), source=range(9)).run() == list(range(9))
    assert peak == 3
    assert trio.current_time() - start == pytest.approx(3)


async def test_split_emits_several_outputs_and_filter_drops_items() -> None:
    async def words(line: str) -> AsyncIterator[str]:
        for word in line.split():
            yield word

    pipeline = Pipeline(
        Stage(words, split=True),
        Stage(lambda word: len(word) > 2, filter=True),
        Stage(lambda word: word.split("-"), split=True),
        source=["the red-fox", "", "is a quick-one"],
    )
    assert await pipeline.run() == ["the", "red", "fox", "quick", "one"]
    stats = pipeline.statistics()
    assert [(s.items_in, s.items_out) for s in stats] == [(3, 5), (5, 3), (3, 5)]


async def test_a_slow_consumer_slows_the_source_and_buffers_stay_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for n in range(10_000):
            pulled += 1
            yield n

    async def fast(item: int) -> int:
        return item

    async with hybrid.open_pipeline(Stage(fast, concurrency=2), Stage(fast), source=source(), buffer=4) as run:
        await trio.sleep(5)  # nobody reads the results
        stats = run.statistics()
        assert all(s.buffer_depth <= 4 for s in stats)
        assert all(s.in_flight <= 2 for s in stats)
        # Everything the source produced is in a bounded place: three buffers
        # before and between the stages and the results buffer (4 each), the
        # items in flight (2 + 1), the one the sink is trying to hand over,
        # and the one the source feeder is trying to send: 21, not 10,000.
        assert pulled == 4 * 4 + 3 + 1 + 1
        first: list[int] = []
        async for item in run:
            first.append(item)
            if len(first) == 10:
                break
        assert first == list(range(10))


async def test_on_error_fail_fails_the_pipeline_with_the_items_error() -> None:
    def parse(text: str) -> int:
        return int(text)

    with pytest.raises(ValueError, match="invalid literal"):
        await Pipeline(Stage(parse), source=["1", "x", "3"]).run()


async def test_on_error_skip_drops_the_item_reports_it_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def parse(text: str) -> int:
        return int(text)

    pipeline = Pipeline(Stage(parse, on_error="skip"), source=["1", "x", "3"])
    assert await pipeline.run() == [1, 3]
    [skipped] = pipeline.skipped
    assert skipped.stage == "test_on_error_skip_drops_the_item_reports_it_and_goes_on.<locals>.parse"
    assert skipped.item == "x"
    assert isinstance(skipped.error, ValueError)
    assert pipeline.statistics()[0].skipped == 1
    assert any("skipped 'x'" in record.message for record in caplog.records)


async def test_retry_reruns_a_failing_item_with_backoff_before_the_error_policy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tries: dict[int, list[float]] = {}

    async def flaky(item: int) -> int:
        tries.setdefault(item, []).append(trio.current_time())
        if item == 1 and len(tries[item]) < 3:
            raise ConnectionError("try again")
        if item == 2:
            raise ConnectionError("never works")
        return item

    policy = hybrid.RetryPolicy(attempts=4, initial=1, factor=2)
    start = trio.current_time()
    pipeline = Pipeline(Stage(flaky, retry=policy, on_error="skip", concurrency=3), source=[0, 1, 2])
    assert await pipeline.run() == [0, 1]
    assert [round(t - start, 6) for t in tries[1]] == [0, 1, 3]
    assert [round(t - start, 6) for t in tries[2]] == [0, 1, 3, 7]
    assert pipeline.statistics()[0].failed == 2 + 4


async def test_an_agent_stage_that_ends_without_output_is_an_error_of_its_item() -> None:
    class Stops(Agent[int]):
        def __init__(self, item: int) -> None:
            self.item = item

        def begin(self) -> Next[Self]:
            return Next.stop() if self.item % 2 else Next.done(self.item)

    pipeline = Pipeline(Stage(Stops, on_error="skip"), source=range(4))
    assert await pipeline.run() == [0, 2]
    assert all(isinstance(s.error, hybrid.AgentStopped) for s in pipeline.skipped)


async def test_a_pipeline_is_an_agent_and_can_be_the_stage_of_another() -> None:
    def inner(line: str) -> Pipeline:
        return Pipeline(Stage(str.upper), Stage(lambda word: word + "!"), source=line.split())

    outer = Pipeline(Stage(inner, split=True), Stage(lambda word: f"<{word}>"), source=["a b", "c"])
    assert await outer.run() == ["<A!>", "<B!>", "<C!>"]


async def test_a_pipeline_runs_as_a_supervisor_child(autojump_clock: trio.testing.MockClock) -> None:
    results: list[Any] = []

    class Jobs(Supervisor):
        def begin(self) -> Next[Self]:
            self.ctx.spawn(Pipeline(Stage(Delay, concurrency=2), source=[2, 1]))
            return Next.events()

        async def on_child_ended(self, address: hybrid.Address[Any], reason: hybrid.StopReason) -> None:
            results.append(reason.kind)
            self.ctx.shutdown()

    await Jobs().run()
    assert results == [hybrid.StopKind.DONE]


async def test_interrupting_stops_the_input_and_lets_items_in_flight_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pipeline = Pipeline(Stage(Delay, concurrency=2), source=[5] * 100, buffer=3)
        address = hybrid.spawn(nursery, pipeline)
        await trio.sleep(6)  # two items done, two in flight, three buffered
        address.interrupt()
        assert await address.join() is None
    stats = pipeline.statistics()[0]
    assert stats.in_flight == 0
    assert stats.items_in == stats.items_out == len(pipeline.results)
    assert 4 <= len(pipeline.results) <= 2 + 2 + 3 + 1


async def test_a_second_interrupt_cancels_what_is_in_flight_and_reports_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pipeline = Pipeline(Stage(Delay, concurrency=2), source=[5] * 100)
        address = hybrid.spawn(nursery, pipeline)
        await trio.sleep(6)
        address.interrupt()
        address.interrupt()
        assert await address.join() is None
    stats = pipeline.statistics()[0]
    assert stats.items_out == 2
    assert stats.in_flight == 2  # cancelled in the middle, reported here


async def test_open_pipeline_streams_results_of_items_fed_one_by_one() -> None:
    async def double(item: int) -> int:
        await trio.sleep(0)
        return item * 2

    async with hybrid.open_pipeline(Stage(double, concurrency=3)) as run:
        async with trio.open_nursery() as nursery:

            async def feeder() -> None:
                for n in range(20):
                    await run.feed(n)
                run.close()

            nursery.start_soon(feeder)
            assert [item async for item in run] == [n * 2 for n in range(20)]
        with pytest.raises(hybrid.AgentStopped, match="takes no more input"):
            await run.feed(99)


async def test_open_pipeline_with_a_source_cannot_be_fed_and_leaving_early_stops_it() -> None:
    async def slow(item: str) -> str:
        await trio.sleep(3600)
        return item  # pragma: no cover

    async with hybrid.open_pipeline(Stage(str), Stage(slow), source=range(5)) as run:
        with pytest.raises(hybrid.LifecycleError, match="cannot be fed"):
            await run.feed(1)
        assert run.address.is_alive
        assert run.skipped == type(run.skipped)()
    assert not run.address.is_alive


async def test_a_failing_pipeline_raises_out_of_open_pipeline() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(ZeroDivisionError)):
        async with hybrid.open_pipeline(Stage(lambda n: 1 / n), source=[1, 0, 2]) as run:
            assert [item async for item in run] == [1.0]


async def test_open_merge_fans_in_several_pipelines(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        hybrid.open_pipeline(Stage(Delay), source=[1, 3]) as first,
        hybrid.open_pipeline(Stage(Delay), source=[2]) as second,
        hybrid.open_merge(first, second) as merged,
    ):
        assert [item async for item in merged] == ["d1", "d2", "d3"]


async def test_a_sync_stage_can_run_in_a_worker_thread_and_sources_can_be_async() -> None:
    main_thread = threading.get_ident()

    def where(item: int) -> bool:
        return threading.get_ident() != main_thread

    async def numbers() -> AsyncIterator[int]:
        for n in range(3):
            yield n

    assert await Pipeline(Stage(where, in_thread=True), source=numbers()).run() == [True, True, True]


def test_stages_and_pipelines_check_their_arguments() -> None:
    with pytest.raises(TypeError, match="a stage needs a callable"):
        Stage(42)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="concurrency must be an int >= 1"):
        Stage(str, concurrency=0)
    with pytest.raises(ValueError, match='on_error must be "fail" or "skip"'):
        Stage(str, on_error="ignore")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="either splits or filters"):
        Stage(str, split=True, filter=True)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="retry needs a hybrid.RetryPolicy"):
        Stage(str, retry=3)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline()  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="hybrid.Stage objects"):
        Pipeline(str)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="iterable or an async iterable"):
        Pipeline(Stage(str), source=42)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="buffer must be an int >= 1"):
        Pipeline(Stage(str), buffer=0)
    assert Stage(str).name == "str"


async def test_a_split_stage_that_returns_no_iterable_is_an_error_of_its_item() -> None:
    pipeline = Pipeline(Stage(lambda n: n, split=True, on_error="skip"), source=[1])
    assert await pipeline.run() == []
    assert "not an iterable" in str(pipeline.skipped[0].error)


async def test_a_second_stage_error_while_failing_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    gate = trio.Event()

    async def broken(item: int) -> int:
        if item == 1:
            await gate.wait()
        else:
            await trio.testing.wait_all_tasks_blocked()  # item 1 waits at the gate
            gate.set()  # item 1 is rescheduled before the pipeline's cancellation
        raise ValueError(f"item {item}")

    with pytest.raises(ValueError, match="item 2"):
        await Pipeline(Stage(broken, concurrency=2), source=[1, 2]).run()
    [logged] = [r for r in caplog.records if "another stage failed" in r.message]
    assert logged.exc_info is not None
    assert str(logged.exc_info[1]) == "item 1"
