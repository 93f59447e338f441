"""Pipelines under pressure: random timings, cancellation anywhere, busy stages, slow consumers, many workers.

The pipeline's buffers take and give items without a schedule point, and its
workers send outputs on in input order themselves; these tests check that the
guarantees hold whatever the interleaving: order, bounds, fairness, and that
no item is ever lost silently.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Pipeline, Stage, StageStatistics
from tests.fairness import gaps, sample_progress

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A deadlock fails the test instead of hanging it (seconds: simulated under MockClock, real otherwise).
GUARD = 10_000


def tasks_living() -> int:
    return trio.lowlevel.current_statistics().tasks_living


class Watch(trio.abc.Instrument):
    """Checks a pipeline's bounds after every task step (an instrument: no busy task to stop MockClock's autojump)."""

    def __init__(self, statistics: Callable[[], tuple[StageStatistics, ...]], concurrency: list[int]) -> None:
        self.statistics = statistics
        self.concurrency = concurrency
        self.violations: list[tuple[StageStatistics, ...]] = []
        self.peak = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        stats = self.statistics()
        for stage, concurrency in zip(stats, self.concurrency, strict=True):
            self.peak = max(self.peak, stage.in_flight)
            if stage.buffer_depth > stage.buffer_size or stage.in_flight > concurrency:
                self.violations.append(stats)  # pragma: no cover - the failure's evidence


def check_conservation(stats: tuple[StageStatistics, ...], results: int) -> None:
    """For stages of one output per item: every item a stage took is out, skipped or in flight; none vanish between."""
    for stage in stats:
        assert stage.items_in == stage.items_out + stage.skipped + stage.in_flight, stage
        assert 0 <= stage.buffer_depth <= stage.buffer_size, stage
    for before, after in itertools.pairwise(stats):
        assert before.items_out == after.items_in + after.buffer_depth, (before, after)
    assert stats[-1].items_out == results, stats[-1]


class Counted:
    """A sync source that counts the items pulled from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for item in range(self.n):
            self.pulled += 1
            yield item


class Sleep(Agent[int]):
    """An agent stage: sleeps `delay` seconds, outputs the item plus 1000."""

    def __init__(self, item: int, delay: float) -> None:
        self.item = item
        self.delay = delay

    def begin(self) -> Next[Self]:
        return Next.do_async(self.work)

    async def work(self) -> Next[Self]:
        await trio.sleep(self.delay)
        return Next.done(self.item + 1000)


# -- order under random timings ----------------------------------------------------------------


def delayed(delays: list[int], kind: str, offset: int, concurrency: int) -> Stage[int, int]:
    """A stage adding `offset`, whose item `n` takes ``delays[n % len(delays)]`` (0: no schedule point at all)."""

    def delay_of(item: int) -> int:
        return delays[item % len(delays)]

    async def plain(item: int) -> int:
        if delay_of(item):
            await trio.sleep(delay_of(item))
        return item + offset

    def make_agent(item: int) -> Agent[int]:
        return Sleep(item + offset - 1000, delay_of(item))

    async def split(item: int) -> list[int]:
        await trio.sleep(delay_of(item))
        return [item + offset]

    if kind == "agent":
        return Stage(make_agent, concurrency=concurrency)
    if kind == "split":
        return Stage(split, split=True, concurrency=concurrency)
    return Stage(plain, concurrency=concurrency)


@SETTINGS
@given(
    concurrency=st.sampled_from([1, 4, 16]),
    kinds=st.lists(st.sampled_from(["async", "agent", "split"]), min_size=1, max_size=3),
    delays=st.lists(st.integers(0, 5), min_size=1, max_size=17),
    buffer=st.integers(1, 20),
    items=st.integers(0, 80),
    ordered=st.booleans(),
)
def test_outputs_keep_input_order_under_random_delays_with_1_4_or_16_workers(
    concurrency: int, kinds: list[str], delays: list[int], buffer: int, items: int, ordered: bool
) -> None:
    """Ordered pipelines give outputs in input order whatever each item takes; unordered ones lose none."""

    async def main() -> tuple[list[int], tuple[StageStatistics, ...], Watch]:
        stages = [delayed(delays, kind, index + 1, concurrency) for index, kind in enumerate(kinds)]
        pipeline: Pipeline[int, int] = Pipeline(*stages, source=range(items), buffer=buffer, ordered=ordered)
        watch = Watch(pipeline.statistics, [concurrency] * len(stages))
        trio.lowlevel.add_instrument(watch)
        with trio.fail_after(GUARD):
            results = await pipeline.run()
        trio.lowlevel.remove_instrument(watch)
        assert results is not None
        return results, pipeline.statistics(), watch

    results, stats, watch = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    shift = sum(range(1, len(kinds) + 1))
    expected = [n + shift for n in range(items)]
    assert (results if ordered else sorted(results)) == expected
    check_conservation(stats, len(results))
    assert all(stage.in_flight == 0 for stage in stats)
    assert watch.violations == []
    assert watch.peak <= concurrency


async def test_sixteen_workers_per_stage_keep_order_and_never_exceed_sixteen_items_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """3 stages of 16 workers each, items of uneven durations: in order, at most 16 running per stage."""
    running = [0, 0, 0]
    peaks = [0, 0, 0]

    def stage(index: int) -> Stage[int, int]:
        async def work(item: int) -> int:
            running[index] += 1
            peaks[index] = max(peaks[index], running[index])
            await trio.sleep((item * 7 + index) % 5)
            running[index] -= 1
            return item + 1

        return Stage(work, concurrency=16)

    pipeline = Pipeline(stage(0), stage(1), stage(2), source=range(2000))
    with trio.fail_after(GUARD):
        assert await pipeline.run() == [n + 3 for n in range(2000)]
    # Up to 16 items in flight per stage; some wait for their turn, so fewer are running.
    assert all(8 <= peak <= 16 for peak in peaks), peaks
    check_conservation(pipeline.statistics(), 2000)


async def test_sixteen_workers_on_work_that_never_yields_still_give_every_output_in_order() -> None:
    """Workers beyond what plain async functions need cost a little, but change nothing in the outputs."""

    async def inc(item: int) -> int:
        return item + 1

    for ordered in (True, False):
        pipeline = Pipeline(*(Stage(inc, concurrency=16) for _ in range(3)), source=range(5000), ordered=ordered)
        with trio.fail_after(60):
            results = await pipeline.run()
        assert results is not None
        assert (results if ordered else sorted(results)) == [n + 3 for n in range(5000)]


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4, 16])
async def test_outputs_finished_before_a_failure_reach_the_results_in_order_and_later_ones_do_not(
    autojump_clock: trio.testing.MockClock, concurrency: int
) -> None:
    """Item 5 fails last: the outputs of items 0-4 are in the results, in order; those behind item 5 never are."""

    async def work(item: int) -> int:
        if item == 5:
            await trio.sleep(100)
            raise ValueError("item 5")
        await trio.sleep(1)
        return item * 10

    pipeline = Pipeline(Stage(work, concurrency=concurrency), Stage(work), source=range(12))
    with pytest.raises(ValueError, match="item 5"):
        await pipeline.run()
    # Item 5 fails in the first stage; everything ahead of it went through both.
    assert pipeline.results == [n * 100 for n in range(5)]


@pytest.mark.parametrize("concurrency", [1, 4, 16])
async def test_outputs_finished_before_a_failure_reach_the_consumer_of_open_pipeline(
    autojump_clock: trio.testing.MockClock, concurrency: int
) -> None:
    """Streaming: the consumer gets the outputs ahead of the failing item, in order, then the error."""
    received: list[int] = []

    async def work(item: int) -> int:
        await trio.sleep(1 if item != 6 else 50)
        if item == 6:
            raise ValueError("item 6")
        return item

    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="item 6")):
        async with hybrid.open_pipeline(Stage(work, concurrency=concurrency), source=range(40), buffer=8) as run:
            async for result in run:
                received.append(result)
    assert received == list(range(6))


async def test_outputs_sent_on_in_the_same_instant_as_a_failure_are_kept() -> None:
    """An item that completes in the scheduling turn another fails in still reaches the results (no schedule point)."""
    gate = trio.Event()

    async def work(item: int) -> int:
        await gate.wait()
        if item == 1:
            raise ValueError("item 1")
        return item

    async def open_gate() -> None:
        await trio.testing.wait_all_tasks_blocked()
        gate.set()  # both items wake in the same batch, in either order

    pipeline = Pipeline(Stage(work, concurrency=2), source=[0, 1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_gate)
        with pytest.raises(ValueError, match="item 1"):
            await pipeline.run()
    assert pipeline.results == [0]


async def test_a_failure_does_not_cut_short_the_sink_handing_on_what_the_last_stage_sent() -> None:
    """150 outputs sent on, then the next item fails: all 150 reach a consumer that keeps reading (shielded)."""

    async def burst(item: int) -> list[int]:
        if item == 1:
            raise ValueError("item 1")
        return list(range(150))

    received: list[int] = []
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="item 1")):
        async with hybrid.open_pipeline(Stage(burst, split=True), source=[0, 1], buffer=200) as run:
            with trio.CancelScope(shield=True):  # reads on while the failure ends the block
                received.extend([item async for item in run])
    assert received == list(range(150))


async def test_skipped_items_keep_their_place_without_stalling_the_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """on_error="skip" with 16 workers: the failed items are dropped, the others come in order."""

    async def work(item: int) -> int:
        await trio.sleep(item % 3)
        if item % 7 == 3:
            raise ValueError(item)
        return item

    pipeline = Pipeline(Stage(work, concurrency=16, on_error="skip"), source=range(200))
    assert await pipeline.run() == [n for n in range(200) if n % 7 != 3]
    assert {s.item for s in pipeline.skipped} == {n for n in range(200) if n % 7 == 3}
    assert len(pipeline.skipped) == len(range(3, 200, 7))


# -- cancellation anywhere ---------------------------------------------------------------------


class CancelAtStep(trio.abc.Instrument):
    """Cancels `scope` just before the `step`-th task step of the run (counting from when it is added)."""

    def __init__(self, scope: trio.CancelScope, step: int) -> None:
        self.scope = scope
        self.step = step
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if self.steps == self.step:
            self.scope.cancel()


def cancellable_pipeline(source: Counted, ordered: bool) -> Pipeline[int, int]:
    async def sometimes_yields(item: int) -> int:
        if item % 3 == 0:
            await trio.lowlevel.checkpoint()
        return item + 1

    def plain(item: int) -> int:
        return item * 2

    async def yields(item: int) -> int:
        await trio.sleep(0)
        return item - 1

    return Pipeline(
        Stage(sometimes_yields, concurrency=4),
        Stage(plain),
        Stage(yields, concurrency=3),
        source=source,
        buffer=3,
        ordered=ordered,
    )


@pytest.mark.parametrize("ordered", [True, False])
async def test_cancelling_a_pipeline_at_any_step_leaves_no_task_and_loses_no_item(ordered: bool) -> None:
    """Cancelled before each of its steps in turn: every item pulled is in the results, a buffer or in flight."""
    baseline = tasks_living()
    # How many steps a whole run takes.
    counter = CancelAtStep(trio.CancelScope(), step=-1)
    trio.lowlevel.add_instrument(counter)
    complete = cancellable_pipeline(Counted(60), ordered)
    await complete.run()
    trio.lowlevel.remove_instrument(counter)
    assert len(complete.results) == 60

    for step in range(1, counter.steps + 2):
        source = Counted(60)
        pipeline = cancellable_pipeline(source, ordered)
        with trio.fail_after(60), trio.CancelScope() as scope:
            instrument = CancelAtStep(scope, step)
            trio.lowlevel.add_instrument(instrument)
            try:
                await pipeline.run()
            finally:
                trio.lowlevel.remove_instrument(instrument)
        assert tasks_living() == baseline, step
        stats = pipeline.statistics()
        check_conservation(stats, len(pipeline.results))
        # Pulled from the source: taken by the first stage, in its buffer, or
        # the one the feeder held when it was cancelled.
        entered = stats[0].items_in + stats[0].buffer_depth
        assert entered <= source.pulled <= entered + 1, (step, source.pulled, stats[0])
        if ordered:  # a prefix of the outputs, in order
            assert pipeline.results == [(n + 1) * 2 - 1 for n in range(len(pipeline.results))], step
        else:  # outputs of distinct items
            assert len(set(pipeline.results)) == len(pipeline.results), step
            assert all(result % 2 == 1 and 0 < result < 2 * 61 for result in pipeline.results), step


async def feed_all(run: hybrid.PipelineRun[int, int], items: int, fed: list[int]) -> None:
    for n in range(items):
        await run.feed(n)
        fed.append(n)
    run.close()


async def test_cancelling_open_pipeline_at_any_step_reports_every_fed_item_it_did_not_take() -> None:
    """Fed items: each feed() that returned put its item in the pipeline, in a buffer, or in `skipped`."""
    baseline = tasks_living()
    for step in range(1, 400, 3):
        fed: list[int] = []
        opened: list[hybrid.PipelineRun[int, int]] = []
        with trio.fail_after(60), trio.CancelScope() as scope:
            instrument = CancelAtStep(scope, step)
            trio.lowlevel.add_instrument(instrument)
            try:
                async with (
                    hybrid.open_pipeline(Stage(functools.partial(add, 1), concurrency=4), buffer=2) as run,
                    trio.open_nursery() as nursery,
                ):
                    opened.append(run)
                    nursery.start_soon(feed_all, run, 100, fed)
                    async for _ in run:
                        pass
            finally:
                trio.lowlevel.remove_instrument(instrument)
        assert tasks_living() == baseline, step
        [run] = opened
        first = run.statistics()[0]
        reported = [s.item for s in run.skipped if s.stage == "<input>"]
        assert first.items_in + first.buffer_depth + len(reported) >= len(fed), (step, first, fed, reported)


async def add(n: int, item: int) -> int:
    await trio.sleep(0)
    return item + n


# -- fairness and backpressure -----------------------------------------------------------------


async def test_a_busy_pipeline_of_stages_that_never_yield_lets_another_task_run() -> None:
    """100,000 items through stages without a schedule point: a ticker still runs at least every 128 results."""

    async def inc(item: int) -> int:
        return item + 1

    def double(item: int) -> int:
        return item * 2

    total = 100_000
    pipeline = Pipeline(Stage(inc), Stage(double), Stage(inc), source=range(total), buffer=1000)
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_progress, pipeline.results, total, seen)
        await pipeline.run()
    # The ticker runs once per scheduling batch; the last stage's worker, at
    # most twice in between, at most 64 items each time.
    assert max(gaps(seen)) <= 2 * 64
    assert len(seen) >= total // 128


async def test_a_slow_consumer_keeps_every_buffer_within_its_bound_and_the_source_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer reading one result a second: buffers never exceed `buffer`, in flight never exceeds concurrency."""
    source = Counted(10_000)
    buffer = 5
    concurrencies = [16, 1, 4]

    async def fast(item: int) -> int:
        return item

    def plain(item: int) -> int:
        return item

    async def yields(item: int) -> int:
        await trio.sleep(0)
        return item

    received: list[int] = []
    with trio.fail_after(GUARD):
        async with hybrid.open_pipeline(
            Stage(fast, concurrency=16), Stage(plain), Stage(yields, concurrency=4), source=source, buffer=buffer
        ) as run:
            watch = Watch(run.statistics, concurrencies)
            trio.lowlevel.add_instrument(watch)
            async for item in run:
                received.append(item)
                await trio.sleep(1)
                if len(received) == 30:
                    break
            trio.lowlevel.remove_instrument(watch)
    assert received == list(range(30))
    assert watch.violations == []
    assert watch.peak == 16
    # What the source gave is in bounded places: the three stage buffers, the
    # last stage's outlet and the results buffer, the items in flight, the
    # ones the sink and the feeder hold.
    assert source.pulled - len(received) <= 5 * buffer + sum(concurrencies) + 2


# -- open_pipeline leaving early ---------------------------------------------------------------


async def test_leaving_open_pipeline_early_stops_every_task_of_an_endless_pipeline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An endless source, 16 busy workers: breaking out after 10 results ends the pipeline and its tasks."""
    baseline = tasks_living()

    async def work(item: int) -> int:
        await trio.sleep(item % 4)
        return item

    first: list[int] = []
    opened: list[hybrid.PipelineRun[int, int]] = []
    async with hybrid.open_pipeline(Stage(work, concurrency=16), Stage(work), source=itertools.count()) as run:
        opened.append(run)
        async for item in run:
            first.append(item)
            if len(first) == 10:
                break
    assert first == list(range(10))
    assert not opened[0].address.is_alive
    assert tasks_living() == baseline


async def test_an_error_in_the_body_of_open_pipeline_stops_the_pipeline_and_propagates() -> None:
    """The block's own error leaves it; the pipeline (stuck on a consumer that left) is stopped, not waited for."""
    baseline = tasks_living()

    async def work(item: int) -> int:
        return item

    opened: list[hybrid.PipelineRun[int, int]] = []
    with pytest.RaisesGroup(KeyError):
        async with hybrid.open_pipeline(Stage(work, concurrency=4), source=itertools.count(), buffer=2) as run:
            opened.append(run)
            async for item in run:
                if item == 3:
                    raise KeyError(item)
    assert not opened[0].address.is_alive
    assert tasks_living() == baseline


async def test_a_feeder_blocked_on_a_pipeline_whose_consumer_left_gets_agent_stopped() -> None:
    """Leaving the block while another task waits in feed(): that feed raises AgentStopped, nothing hangs."""
    refused: list[int] = []

    async def work(item: int) -> int:
        return item

    async with trio.open_nursery() as nursery, hybrid.open_pipeline(Stage(work), buffer=1) as run:

        async def feeder() -> None:
            for n in itertools.count():
                try:
                    await run.feed(n)
                except hybrid.AgentStopped:
                    refused.append(n)
                    return

        nursery.start_soon(feeder)
        async for item in run:
            if item == 5:
                break
    assert len(refused) == 1


# -- what the fast path must still handle ------------------------------------------------------


class AddOne:
    """A callable object with an async __call__: not an ``async def`` function, but awaited all the same."""

    async def __call__(self, item: int) -> int:
        await trio.lowlevel.checkpoint()
        return item + 1


def returns_awaitable(item: int) -> Awaitable[int]:
    return add(1, item)


def plus_one(item: int) -> int:
    return item + 1


@pytest.mark.parametrize(
    "fn",
    [functools.partial(add, 1), AddOne(), returns_awaitable, plus_one],
    ids=["partial", "callable-object", "sync-returning-awaitable", "sync"],
)
@pytest.mark.parametrize("concurrency", [1, 4])
async def test_every_kind_of_plain_function_stage_gives_the_same_outputs(
    fn: Callable[[int], Any], concurrency: int
) -> None:
    """partial of an async function, async callable object, sync function returning an awaitable, sync function."""
    pipeline: Pipeline[int, int] = Pipeline(Stage(fn, concurrency=concurrency), source=range(300))
    assert await pipeline.run() == [n + 1 for n in range(300)]


async def test_a_failing_fast_stage_retries_and_skips_as_any_stage(autojump_clock: trio.testing.MockClock) -> None:
    """An async def stage with a retry policy, and one with on_error="skip", keep their error semantics."""
    tries: dict[int, int] = {}

    async def flaky(item: int) -> int:
        tries[item] = tries.get(item, 0) + 1
        if item == 2 and tries[item] < 3:
            raise ConnectionError("again")
        return item

    async def odd_fails(item: int) -> int:
        if item % 2:
            raise ValueError(item)
        return item

    pipeline = Pipeline(
        Stage(flaky, retry=hybrid.RetryPolicy(attempts=3, initial=1)),
        Stage(odd_fails, on_error="skip", concurrency=4),
        source=range(6),
    )
    assert await pipeline.run() == [0, 2, 4]
    first, second = pipeline.statistics()
    assert (first.failed, first.items_out) == (2, 6)
    assert (second.failed, second.skipped, second.items_out) == (3, 3, 3)


# -- statistics --------------------------------------------------------------------------------


async def test_latency_counts_processing_time_only_not_waiting_for_input_room_or_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Fast stage blocked by a slow one behind a buffer of 1, ordered workers waiting their turn: latency is exact."""

    async def one_second(item: int) -> int:
        await trio.sleep(1)
        return item

    async def uneven(item: int) -> int:
        await trio.sleep(5 if item % 4 == 0 else 2)
        return item

    pipeline = Pipeline(Stage(one_second, concurrency=2), Stage(uneven, concurrency=4), source=range(40), buffer=1)
    assert await pipeline.run() == list(range(40))
    fast, slow = pipeline.statistics()
    assert fast.latency_max == pytest.approx(1)
    assert fast.latency_mean == pytest.approx(1)
    assert slow.latency_max == pytest.approx(5)
    assert slow.latency_mean == pytest.approx((10 * 5 + 30 * 2) / 40)


async def test_interrupting_stops_pulling_a_sync_source_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """After interrupt() nothing more is read from the source; what the pipeline had taken goes through."""
    source = Counted(1_000)

    async def work(item: int) -> int:
        await trio.sleep(1)
        return item

    async with trio.open_nursery() as nursery:
        pipeline = Pipeline(Stage(work, concurrency=4), source=source, buffer=8)
        address = hybrid.spawn(nursery, pipeline)
        await trio.sleep(3.5)
        address.interrupt()
        pulled = source.pulled
        assert await address.join() is None
    assert source.pulled == pulled
    stats = pipeline.statistics()[0]
    assert stats.in_flight == 0
    assert pipeline.results == list(range(len(pipeline.results)))
    # Taken and buffered items all went through; the one the feeder held did not.
    assert len(pipeline.results) in (pulled - 1, pulled)


def test_statistics_before_a_pipeline_runs_show_empty_buffers() -> None:
    """statistics() works on a pipeline that has not started: nothing taken, empty buffers of the given size."""
    pipeline = Pipeline(Stage(str), Stage(len), buffer=7)
    assert [(s.items_in, s.in_flight, s.buffer_depth, s.buffer_size) for s in pipeline.statistics()] == [
        (0, 0, 0, 7),
        (0, 0, 0, 7),
    ]
    assert not math.isnan(pipeline.statistics()[0].latency_mean)
