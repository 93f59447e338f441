"""examples/trading_swarm.py: the story it prints, and each behaviour it shows.

Most tests run the desk under simulated time (``autojump_clock``): the run is
causally ordered (each bar is settled before the next), so it tells the same
story under trio's real clock, which two tests check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

import hybrid
from examples.trading_swarm import (
    SLOW,
    BreakerChange,
    CorruptPrint,
    Decision,
    Failure,
    OrderStatus,
    QuorumOutcome,
    Script,
    Summary,
    main,
)

ROOT = Path(__file__).parent.parent

OUTPUT = [
    "trading swarm: 4 symbols, 40 bars, seed 17",
    "scripted faults:",
    "  a corrupt CRUX print at bar 17",
    "  the news strategy down for questions 3-5; the ML model silent from question 12 on",
    "  the exchange down for bars 23-28, then trading halted for 0.2 s after bar 28",
    "",
    "timeline: each signal needs 3 of the 5 strategies (trend-10, momentum-3, calm-8, ml-model, news) "
    "to confirm it within 100 ms",
    "  bar  9  BOLT  sell @  97.12  confirmed (3 of 5 said yes): order 1 filled",
    "  bar  9  DYNA  buy  @  97.90  vetoed (3 or more of 5 said no or failed)",
    "  bar 13  BOLT  buy  @ 100.19  vetoed (3 or more of 5 said no or failed)",
    "  bar 14  CRUX  sell @ 105.92  vetoed (3 or more of 5 said no or failed)",
    "  bar 16  CRUX  buy  @ 106.64  confirmed (3 of 5 said yes): order 2 filled",
    "  bar 17  CRUX  no report: its analyser failed (CRUX: price -1.00 at bar 17) and restarts",
    "  bar 18  BOLT  sell @  98.76  confirmed (3 of 5 said yes): order 3 filled",
    "  bar 21  BOLT  buy  @ 100.23  confirmed (3 of 5 said yes): order 4 filled",
    "  bar 23  DYNA  sell @ 105.95  confirmed (3 of 5 said yes): order 5 failed at the exchange",
    "  bar 24  BOLT  sell @  97.97  confirmed (3 of 5 said yes): order 6 failed at the exchange",
    "  bar 25  ACME  buy  @  87.34  confirmed (3 of 5 said yes): order 7 failed at the exchange; "
    "breaker closed -> open",
    "  bar 28  ACME  sell @  86.34  confirmed (3 of 5 said yes): order 8 rejected by the breaker",
    "  bar 28  CRUX  sell @ 108.66  confirmed (3 of 5 said yes): order 9 rejected by the breaker",
    "  bar 29  BOLT  buy  @  99.03  confirmed (3 of 5 said yes): order 10 filled; breaker open -> half-open -> closed",
    "  bar 34  CRUX  buy  @ 108.31  vetoed (3 or more of 5 said no or failed)",
    "  bar 36  CRUX  sell @ 105.08  no quorum in time (2 yes, 2 no, silent: ml-model)",
    "  bar 37  BOLT  sell @  98.13  confirmed (3 of 5 said yes): order 11 filled",
    "",
    "analysers: a consistent-hash pool, so every tick of a symbol reaches the same analyser",
    "  desk/analysers/Analyser-1: 40 ticks (BOLT 40)",
    "  desk/analysers/Analyser-2: 41 ticks (CRUX 41)",
    "  desk/analysers/Analyser-3: 80 ticks (ACME 40, DYNA 40)",
    "  signals: 16 (7 buy, 9 sell)",
    "",
    "quorum: 11 confirmed, 4 vetoed, 1 no quorum in time",
    "",
    "orders: 11 sent: 6 filled, 3 failed at the exchange, 2 rejected by the breaker",
    "  the exchange saw 9; the breaker refused 2 at once",
    "  breaker 'exchange': closed -> open at order 7, open -> half-open at order 10, half-open -> closed at order 10",
    "  breaker statistics: 9 calls, 6 succeeded, 3 failed, 2 rejected, opened 1 time(s), now closed",
    "",
    "supervision: 1 restart(s)",
    "  desk/analysers/Analyser-2 restarted: its run failed with CorruptPrint('CRUX: price -1.00 at bar 17')",
    "  shutdown, greatest group first: feed (4) -> risk (3) -> analysis (2) -> execution (1) -> desk",
    "",
    "hybrid.snapshot() counters, by agent class (an interrupt counts as a message handled)",
    "  class             handled  failures  restarts",
    "  Analyser              324         1         1",
    "  Desk                    8         0         0",
    "  Executor              173         0         0",
    "  Feed                    1         0         0",
    "  Pool[Analyser]        325         0         0",
    "  RiskManager            41         0         0",
    "  Strategy               80         0         0",
]


@pytest.fixture(scope="module")
def summary() -> Summary:
    """The default script's run, once for this module, under simulated time."""
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def decisions(summary: Summary) -> list[Decision]:
    return [entry for entry in summary.timeline if isinstance(entry, Decision)]


# -- the story -------------------------------------------------------------------


async def test_the_desk_prints_its_story_under_the_real_clock(capsys: pytest.CaptureFixture[str]) -> None:
    start = trio.current_time()
    summary = await main()
    elapsed = trio.current_time() - start
    assert capsys.readouterr().out.splitlines() == OUTPUT
    assert list(summary.lines) == OUTPUT
    # The scripted pauses add up to 0.5 s (bars, the halt, the deadline, the hung
    # strategy's shutdown timeout); the swarm's own work adds little (about 0.05 s
    # on a quiet machine). The bound is generous: a loaded CI machine must pass.
    assert 0.5 <= elapsed < 5


def test_the_story_is_the_same_under_simulated_time(summary: Summary) -> None:
    assert list(summary.lines) == OUTPUT


def test_the_example_runs_as_a_script_in_a_fresh_interpreter() -> None:
    done = subprocess.run(
        [sys.executable, "examples/trading_swarm.py"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.splitlines()
    assert "quorum: 11 confirmed, 4 vetoed, 1 no quorum in time" in lines
    assert "orders: 11 sent: 6 filled, 3 failed at the exchange, 2 rejected by the breaker" in lines
    assert "  desk/analysers/Analyser-2: 41 ticks (CRUX 41)" in lines
    assert "  shutdown, greatest group first: feed (4) -> risk (3) -> analysis (2) -> execution (1) -> desk" in lines
    assert lines == OUTPUT
    assert done.stderr == ""  # the crash report and the breaker's warnings are silenced: the summary tells them


# -- each behaviour --------------------------------------------------------------


def test_every_tick_of_a_symbol_reaches_one_analyser_of_the_pool(summary: Summary) -> None:
    for symbol in Script().symbols:
        owners = {analyser: by_symbol[symbol] for analyser, by_symbol in summary.ticks.items() if symbol in by_symbol}
        assert len(owners) == 1, f"{symbol} was handled by {sorted(owners)}"
        [count] = owners.values()
        assert count == (41 if symbol == "CRUX" else 40)  # one tick a bar, and CRUX's corrupt print
    assert sorted(summary.ticks) == [f"desk/analysers/Analyser-{n}" for n in (1, 2, 3)]


def test_a_corrupt_print_fails_its_analyser_and_the_pool_restarts_it_with_clean_charts(summary: Summary) -> None:
    [(restarted, reason)] = summary.restarts
    crux_owner = next(analyser for analyser, by_symbol in summary.ticks.items() if "CRUX" in by_symbol)
    assert restarted == crux_owner  # the restarted analyser kept its name, and its symbols
    assert reason.kind is hybrid.StopKind.FAILED
    assert isinstance(reason.error, CorruptPrint)
    [failure] = [entry for entry in summary.timeline if isinstance(entry, Failure)]
    assert (failure.bar, failure.symbol) == (17, "CRUX")
    # Clean charts: CRUX gives no signal before its new chart has SLOW prices again.
    crux_after = [d.signal.bar for d in decisions(summary) if d.signal.symbol == "CRUX" and d.signal.bar > 17]
    assert crux_after
    assert min(crux_after) >= 17 + SLOW
    analysers = summary.counters["Analyser"]
    assert (analysers.failures, analysers.restarts) == (1, 1)


def test_the_quorum_confirms_vetoes_at_once_or_gives_up_at_its_deadline(summary: Summary) -> None:
    assert summary.quorum == {QuorumOutcome.REACHED: 11, QuorumOutcome.VETOED: 4, QuorumOutcome.DEADLINE: 1}
    for decision in decisions(summary):
        assert (decision.execution is not None) == (decision.outcome is QuorumOutcome.REACHED)
    [timed_out] = [d for d in decisions(summary) if d.outcome is QuorumOutcome.DEADLINE]
    # The ML model hangs from the 12th question: the 4 others split 2-2, so only the deadline ends it.
    assert timed_out.detail == "2 yes, 2 no, silent: ml-model"
    assert decisions(summary).index(timed_out) + 1 >= Script().model_hangs_at


def test_the_breaker_opens_after_three_failures_refuses_orders_then_a_probe_closes_it(summary: Summary) -> None:
    statuses = [d.execution.status for d in decisions(summary) if d.execution is not None]
    filled, failed, rejected = OrderStatus.FILLED, OrderStatus.FAILED, OrderStatus.REJECTED
    assert statuses == [filled] * 4 + [failed] * 3 + [rejected] * 2 + [filled] * 2
    closed, open_, half_open = hybrid.BreakerState.CLOSED, hybrid.BreakerState.OPEN, hybrid.BreakerState.HALF_OPEN
    assert summary.breaker_changes == (
        BreakerChange(7, closed, open_),
        BreakerChange(10, open_, half_open),
        BreakerChange(10, half_open, closed),
    )
    breaker = summary.breaker
    assert (breaker.times_opened, breaker.failures, breaker.rejected, breaker.state) == (1, 3, 2, closed)
    assert summary.exchange_orders == breaker.calls == 11 - 2  # refused orders never reached the exchange


async def test_without_an_outage_every_confirmed_order_fills_and_the_breaker_stays_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    summary = await main(attrs.evolve(Script(), outage=range(0)))
    assert summary.orders == {OrderStatus.FILLED: 11}
    assert summary.breaker_changes == ()
    assert summary.breaker.times_opened == 0


def test_the_desk_stops_its_groups_greatest_first(summary: Summary) -> None:
    assert summary.shutdown == ("feed (4)", "risk (3)", "analysis (2)", "execution (1)", "desk")
