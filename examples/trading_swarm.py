"""A trading swarm: a price feed, sharded analysers, a risk quorum, an executor behind a circuit breaker.

One supervisor, the ``Desk``, owns every agent in ordered groups (the feed
starts last and stops first). The market and every fault are scripted and
seeded, so each run prints the same story:

- the **feed** publishes one price per symbol and bar on a `hybrid.Topic`, to
  which the analysers and the executor subscribe;
- the **analysers** are a consistent-hash `hybrid.Pool`: every tick of a symbol
  reaches the same analyser, which keeps that symbol's moving averages and
  signals when the fast one crosses the slow one. A corrupt print (a negative
  price) poisons one analyser's charts: asked for its report, it fails, and the
  pool restarts it, with clean charts, behind the same address;
- the **risk manager** closes each bar: it asks each symbol's analyser for its
  signal, then asks five independent **strategies** (different rules and
  parameters) to confirm it with ``hybrid.quorum(3, ...)`` under a 100 ms
  deadline. A strategy that says no raises, so three "no" (or failures) veto
  the signal at once, without waiting for the others. The news strategy is
  down for a few questions; the ML model stops answering altogether, and only
  the deadline keeps the desk from waiting for it;
- the **executor** sends approved orders to a simulated exchange through a
  `hybrid.CircuitBreaker`. The exchange fails every order during an outage:
  after three failures the breaker opens and refuses orders at once (rejected:
  the exchange never sees them); after the trading halt that ends the outage, a
  probe order fills and the breaker closes.

At the end the desk is interrupted (greatest group first) and a summary is
printed, with counters from an instrument (`hybrid.Instrument`), the breaker's
statistics and `hybrid.snapshot()`.

Every bar is settled before the next one starts: the feed waits for the risk
manager to close it, and the risk manager handles the symbols in a fixed order.
That is what makes the run repeatable, and a real desk would not wait; the
rest (routing, restarts, quorums, the breaker) works the same either way.

    python examples/trading_swarm.py
"""

from __future__ import annotations

import collections
import enum
import functools
import itertools
import logging
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next

NEED = 3
"""Confirmations a signal needs from the strategies (of five)."""
DEADLINE = 0.1
"""Seconds the risk manager gives the strategies to reach the quorum."""
FAST, SLOW, HISTORY = 3, 8, 12
"""The analysers' moving averages (in bars), and how many prices a signal carries."""


# -- the script: what happens, decided in advance --------------------------------------------


@attrs.frozen
class Script:
    """The market, and every fault of the run, decided in advance.

    Attributes:
        symbols: the symbols traded.
        bars: how many bars the feed plays (one price per symbol and bar).
        seed: the seed of the prices (a random walk per symbol) and of the news.
        bar_seconds: the pause between two bars: the market's pace.
        corrupt: (bar, symbol): a corrupt print (price -1) published after that bar's prices.
        news_down: the questions (numbered from 1) that the news strategy fails.
        model_hangs_at: the question from which the ML model never answers again.
        outage: the bars in which the exchange fails every order.
        halt: (bar, seconds): trading halts that long after that bar (the exchange recovers).
    """

    symbols: tuple[str, ...] = ("ACME", "BOLT", "CRUX", "DYNA")
    bars: int = 40
    seed: int = 17
    bar_seconds: float = 0.004
    corrupt: tuple[int, str] = (17, "CRUX")
    news_down: range = range(3, 6)
    model_hangs_at: int = 12
    outage: range = range(23, 29)
    halt: tuple[int, float] = (28, 0.2)

    def prices(self) -> list[tuple[float, ...]]:
        """Each bar's prices, in symbol order: a seeded random walk per symbol."""
        rng = random.Random(self.seed)
        now = [100.0 for _ in self.symbols]
        bars: list[tuple[float, ...]] = []
        for _ in range(self.bars):
            now = [round(price * (1 + rng.gauss(0, 0.012)), 2) for price in now]
            bars.append(tuple(now))
        return bars

    def pause_after(self, bar: int) -> float:
        """Seconds between `bar` and the next one."""
        halt_bar, halt_seconds = self.halt
        return halt_seconds if bar == halt_bar else self.bar_seconds


# -- messages --------------------------------------------------------------------------------


class Side(enum.Enum):
    """Which way a signal, and its order, goes."""

    BUY = "buy"
    SELL = "sell"


@attrs.frozen
class Tick:
    """A price on the feed: an event, published on the ``prices`` topic."""

    symbol: str
    bar: int
    price: float


@attrs.frozen
class Signal:
    """An analyser's call: at this bar, the fast average crossed the slow one."""

    symbol: str
    bar: int
    side: Side
    price: float
    history: tuple[float, ...]  # the last prices, oldest first, for the strategies to judge


@attrs.frozen
class SymbolReport:
    """What the analyser of a symbol has to say at the close of a bar."""

    symbol: str
    ticks: int
    signal: Signal | None


@attrs.frozen
class ReportBar(hybrid.Request[SymbolReport]):
    """Ask the analyser that owns `symbol` for its report (the pool routes it by symbol)."""

    symbol: str


@attrs.frozen
class Vote:
    """A strategy's opinion of a signal."""

    strategy: str
    agrees: bool


@attrs.frozen
class Question(hybrid.Request[Vote]):
    """Ask a strategy whether it confirms a signal; questions are numbered from 1."""

    number: int
    signal: Signal


@attrs.frozen
class CloseBar(hybrid.Request[None]):
    """The feed has published a bar: decide on its signals (answered once every order is settled)."""

    bar: int


class OrderStatus(enum.Enum):
    """How an order ended."""

    FILLED = "filled"
    FAILED = "failed at the exchange"
    REJECTED = "rejected by the breaker"  # the exchange never saw it


@attrs.frozen
class Execution:
    """What became of an order."""

    order: int
    status: OrderStatus
    price: float | None = None


@attrs.frozen
class PlaceOrder(hybrid.Request[Execution]):
    """Send an order to the exchange, at the last price; orders are numbered from 1."""

    number: int
    bar: int
    symbol: str
    side: Side


# -- errors of the simulated world -----------------------------------------------------------


class CorruptPrint(ValueError):
    """An analyser's charts went through an impossible price: they cannot be trusted."""


class SourceDown(ConnectionError):
    """A strategy's data source is unavailable."""


class Declined(Exception):
    """A strategy does not confirm the signal: raised, so that `hybrid.quorum` counts it against."""


class ExchangeDown(ConnectionError):
    """The exchange failed an order."""


# -- the desk's books: records shared by its agents, so that they outlive restarts ------------


class Group(enum.IntEnum):
    """The desk's groups: started in this order, stopped in reverse."""

    EXECUTION = 1
    ANALYSIS = 2
    RISK = 3
    FEED = 4


class QuorumOutcome(enum.Enum):
    """What the strategies' quorum made of a signal."""

    REACHED = "confirmed"
    VETOED = "vetoed"
    DEADLINE = "no quorum in time"


@attrs.frozen
class Decision:
    """A signal, what the quorum made of it, and its order if one was sent."""

    signal: Signal
    outcome: QuorumOutcome
    detail: str
    execution: Execution | None = None


@attrs.frozen
class Failure:
    """A symbol without a report at the close of a bar: its analyser failed."""

    bar: int
    symbol: str
    error: Exception


@attrs.frozen
class BreakerChange:
    """The circuit breaker changed state, seen around an order."""

    order: int
    before: hybrid.BreakerState
    after: hybrid.BreakerState


@attrs.define
class Books:
    """The desk's records, written by its agents and read by the summary.

    Attributes:
        timeline: the risk manager's decisions and the analysers' failures, in order.
        breaker_changes: the breaker's changes of state, noted by the executor.
        groups: the desk's children by name, with their group.
        market_closed: set by the feed once it has played the whole script.
    """

    timeline: list[Decision | Failure] = attrs.Factory(list[Decision | Failure])
    breaker_changes: list[BreakerChange] = attrs.Factory(list[BreakerChange])
    groups: dict[str, Group] = attrs.Factory(dict[str, Group])
    market_closed: trio.Event = attrs.Factory(trio.Event)


# -- the analysers ---------------------------------------------------------------------------


@attrs.define
class Chart:
    """One symbol's recent prices, and where its fast average stands against the slow one."""

    prices: collections.deque[float] = attrs.Factory(lambda: collections.deque(maxlen=HISTORY))
    ticks: int = 0
    fast_above: bool | None = None
    signal: Signal | None = None
    corrupt: Tick | None = None

    def add(self, tick: Tick) -> None:
        self.ticks += 1
        if tick.price <= 0:
            self.corrupt = tick  # the analyser fails when it reads the chart: see Analyser.report
            return
        self.prices.append(tick.price)
        if len(self.prices) < SLOW:
            return
        recent = list(self.prices)
        fast_above = statistics.fmean(recent[-FAST:]) > statistics.fmean(recent[-SLOW:])
        if self.fast_above is not None and fast_above != self.fast_above:
            side = Side.BUY if fast_above else Side.SELL
            self.signal = Signal(tick.symbol, tick.bar, side, tick.price, tuple(recent))
        self.fast_above = fast_above


class Analyser(Agent):
    """Keeps a chart per symbol, and reports each bar's crossover signal when asked.

    Its pool sends it every tick of the symbols it owns, so its charts are
    complete without any coordination between analysers.
    """

    def __init__(self) -> None:
        self.charts: dict[str, Chart] = {}

    @hybrid.on_event
    async def tick(self, tick: Tick) -> None:
        self.charts.setdefault(tick.symbol, Chart()).add(tick)

    @hybrid.on_request
    async def report(self, request: ReportBar) -> SymbolReport:
        chart = self.charts.setdefault(request.symbol, Chart())
        if chart.corrupt is not None:
            # Fail: the pool starts this analyser again, with clean charts, behind the
            # same address. The caller gets the error. (Failing here rather than in
            # `tick`: nothing is queued behind a request that its caller awaits, while
            # a failure in `tick` would drop the messages queued behind the bad print.)
            bad = chart.corrupt
            error = CorruptPrint(f"{bad.symbol}: price {bad.price:.2f} at bar {bad.bar}")
            self.ctx.do_next(Next.fail(error))
            raise error
        signal, chart.signal = chart.signal, None
        return SymbolReport(request.symbol, chart.ticks, signal)


def symbol_of(message: Tick | ReportBar) -> str:
    """The pool's routing key: every message about one symbol goes to one analyser."""
    return message.symbol


# -- the strategies --------------------------------------------------------------------------

Rule = Callable[[Signal], bool]


def trend(window: int) -> Rule:
    """Agrees when the price is on the signal's side of its `window`-bar average."""

    def rule(signal: Signal) -> bool:
        above = signal.price > statistics.fmean(signal.history[-window:])
        return above == (signal.side is Side.BUY)

    return rule


def momentum(lookback: int) -> Rule:
    """Agrees when the price moved the signal's way over the last `lookback` bars."""

    def rule(signal: Signal) -> bool:
        rose = signal.price > signal.history[-1 - lookback]
        return rose == (signal.side is Side.BUY)

    return rule


def calm(window: int, limit: float) -> Rule:
    """Agrees when the market is calm: the standard deviation of bar-to-bar moves is below `limit`."""

    def rule(signal: Signal) -> bool:
        moves = [now / before - 1 for before, now in itertools.pairwise(signal.history[-window:])]
        return statistics.pstdev(moves) < limit

    return rule


def regression(window: int) -> Rule:
    """Agrees when the least-squares slope of the last `window` prices points the signal's way."""

    def rule(signal: Signal) -> bool:
        recent = signal.history[-window:]
        slope = statistics.linear_regression(range(len(recent)), recent).slope
        return (slope > 0) == (signal.side is Side.BUY)

    return rule


def sentiment(seed: int) -> Rule:
    """Agrees when the (simulated, seeded) news about the symbol is on the signal's side."""

    def rule(signal: Signal) -> bool:
        bullish = random.Random(f"{seed}:{signal.symbol}:{signal.bar}").random() < 0.5
        return bullish == (signal.side is Side.BUY)

    return rule


@attrs.frozen
class Profile:
    """A strategy: its name, its rule, and the questions it cannot answer.

    Attributes:
        name: the strategy's name (its child name under the desk).
        rule: its opinion of a signal.
        down: the questions it fails (its data source is down).
        hangs_at: the question from which it never answers (its service hangs).
    """

    name: str
    rule: Rule
    down: range = range(0)
    hangs_at: int | None = None


def profiles(script: Script) -> list[Profile]:
    """The five strategies of the quorum, with the faults the script gives them."""
    return [
        Profile("trend-10", trend(10)),
        Profile("momentum-3", momentum(3)),
        Profile("calm-8", calm(8, 0.013)),
        Profile("ml-model", regression(HISTORY), hangs_at=script.model_hangs_at),
        Profile("news", sentiment(script.seed), down=script.news_down),
    ]


class Strategy(Agent):
    """Answers questions about signals with its rule, unless its own dependency fails."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    @hybrid.on_request
    async def opinion(self, question: Question) -> Vote:
        profile = self.profile
        if profile.hangs_at is not None and question.number >= profile.hangs_at:
            # The model server stopped answering, and so does this strategy: the
            # questions queued behind this one wait, and are given up by their callers.
            await trio.sleep_forever()
        if question.number in profile.down:
            raise SourceDown(f"{profile.name}: data source unavailable")
        return Vote(profile.name, profile.rule(question.signal))


# -- the risk manager ------------------------------------------------------------------------


class RiskManager(Agent):
    """Closes each bar: collects the signals, asks the strategies' quorum, sends what it confirms."""

    def __init__(
        self,
        symbols: Sequence[str],
        analysers: hybrid.Address[hybrid.Pool[Analyser]],
        strategies: Sequence[hybrid.Address[Strategy]],
        executor: hybrid.Address[Executor],
        books: Books,
    ) -> None:
        self.symbols = symbols
        self.analysers = analysers
        self.strategies = strategies
        self.executor = executor
        self.books = books
        self.questions = 0
        self.orders = 0

    @hybrid.on_request
    async def close_bar(self, request: CloseBar) -> None:
        for symbol in self.symbols:  # one symbol at a time, in a fixed order: a repeatable run
            try:
                report = await self.analysers.request(ReportBar(symbol))
            except CorruptPrint as error:
                self.books.timeline.append(Failure(request.bar, symbol, error))
                continue
            if report.signal is not None:
                await self.decide(report.signal)

    async def decide(self, signal: Signal) -> None:
        self.questions += 1
        question = Question(self.questions, signal)
        answered: dict[str, bool | None] = {}  # strategy -> its vote; None: it failed
        members = [self.confirm(strategy, question, answered) for strategy in self.strategies]
        try:
            with trio.fail_after(DEADLINE):
                await hybrid.quorum(NEED, members)
        except hybrid.QuorumError:
            # Raised as soon as too many said no (or failed) for NEED confirmations to come.
            outcome = QuorumOutcome.VETOED
            detail = f"{len(members) - NEED + 1} or more of {len(members)} said no or failed"
        except trio.TooSlowError:
            # Neither NEED confirmations nor too many refusals: some strategy never answered.
            outcome = QuorumOutcome.DEADLINE
            yes = sum(vote is True for vote in answered.values())
            silent = [strategy.name.rsplit("/", 1)[-1] for strategy in self.strategies if strategy.name not in answered]
            detail = f"{yes} yes, {len(answered) - yes} no, silent: {', '.join(silent)}"
        else:
            outcome, detail = QuorumOutcome.REACHED, f"{NEED} of {len(members)} said yes"
        execution = None
        if outcome is QuorumOutcome.REACHED:
            self.orders += 1
            execution = await self.executor.request(PlaceOrder(self.orders, signal.bar, signal.symbol, signal.side))
        self.books.timeline.append(Decision(signal, outcome, detail, execution))

    @staticmethod
    async def confirm(strategy: hybrid.Address[Strategy], question: Question, answered: dict[str, bool | None]) -> Vote:
        """One member of the quorum: a "yes" returns the vote; a "no" or a failure raises."""
        try:
            vote = await strategy.request(question)
        except Exception:
            answered[strategy.name] = None
            raise
        answered[strategy.name] = vote.agrees
        if not vote.agrees:
            raise Declined(vote.strategy)
        return vote


# -- the executor and its exchange ------------------------------------------------------------


class Exchange:
    """A simulated exchange: fills an order at the price given, except during its scripted outage."""

    def __init__(self, outage: range) -> None:
        self.outage = outage
        self.orders_seen = 0

    async def submit(self, order: PlaceOrder, price: float) -> float:
        self.orders_seen += 1
        await trio.sleep(0.001)  # the round trip
        if order.bar in self.outage:
            raise ExchangeDown(f"order {order.number}: the exchange is unavailable")
        return price


class Executor(Agent):
    """Prices each order at the last tick and sends it to the exchange through the circuit breaker."""

    def __init__(self, exchange: Exchange, breaker: hybrid.CircuitBreaker, books: Books) -> None:
        self.exchange = exchange
        self.breaker = breaker
        self.books = books
        self.last: dict[str, float] = {}
        self.breaker_state = breaker.state

    @hybrid.on_event
    async def tick(self, tick: Tick) -> None:
        if tick.price > 0:  # the exchange ignores corrupt prints
            self.last[tick.symbol] = tick.price

    @hybrid.on_request
    async def place(self, order: PlaceOrder) -> Execution:
        self.note_breaker(order)  # open -> half-open comes with time: seen as an order arrives
        try:
            price = await self.breaker.call(self.exchange.submit, order, self.last[order.symbol])
        except hybrid.CircuitOpen:
            execution = Execution(order.number, OrderStatus.REJECTED)
        except ExchangeDown:
            execution = Execution(order.number, OrderStatus.FAILED)
        else:
            execution = Execution(order.number, OrderStatus.FILLED, price)
        self.note_breaker(order)
        return execution

    def note_breaker(self, order: PlaceOrder) -> None:
        state = self.breaker.state
        if state is not self.breaker_state:
            self.books.breaker_changes.append(BreakerChange(order.number, self.breaker_state, state))
            self.breaker_state = state


# -- the feed --------------------------------------------------------------------------------


class Feed(Agent):
    """Plays the script: publishes each bar's prices and has the risk manager close it; then waits."""

    def __init__(
        self, script: Script, prices: hybrid.Topic[Tick], risk: hybrid.Address[RiskManager], books: Books
    ) -> None:
        self.script = script
        self.prices = prices
        self.risk = risk
        self.books = books
        self.bars = script.prices()

    def begin(self) -> Next[Self]:
        return Next.do_async(self.play, 0)

    async def play(self, bar: int) -> Next[Self]:
        script = self.script
        for symbol, price in zip(script.symbols, self.bars[bar], strict=True):
            self.prices.publish(Tick(symbol, bar, price))
        corrupt_bar, corrupt_symbol = script.corrupt
        if bar == corrupt_bar:
            self.prices.publish(Tick(corrupt_symbol, bar, -1.0))
        await self.risk.request(CloseBar(bar))  # returns once every order of the bar is settled
        if bar + 1 == script.bars:
            self.books.market_closed.set()
            return Next.events()  # nothing left to publish: wait for the interrupt
        await trio.sleep(script.pause_after(bar))
        return Next.do_async(self.play, bar + 1)


# -- the desk --------------------------------------------------------------------------------


class Desk(hybrid.Supervisor):
    """The supervisor of the whole swarm.

    The breaker and the exchange belong to the desk rather than to the
    executor: a restarted executor finds the breaker as the last one left it.
    """

    def __init__(self, script: Script, books: Books) -> None:
        self.script = script
        self.books = books
        self.exchange = Exchange(script.outage)
        self.breaker = hybrid.CircuitBreaker(failures=3, reset_after=0.15, counts=ExchangeDown, name="exchange")

    def begin(self) -> Next[Self]:
        script, books, spawn = self.script, self.books, self.ctx.spawn
        executor = spawn(
            functools.partial(Executor, self.exchange, self.breaker, books), group=Group.EXECUTION, name="executor"
        )
        analysers = spawn(
            hybrid.Pool(Analyser, size=3, routing=hybrid.Routing.CONSISTENT_HASH, key=symbol_of),
            group=Group.ANALYSIS,
            name="analysers",
        )
        strategies = [
            # A hung strategy never gets to its interrupt: 50 ms later, the desk interrupts
            # it again, which cancels the hung handler.
            spawn(functools.partial(Strategy, profile), group=Group.ANALYSIS, name=profile.name, shutdown_timeout=0.05)
            for profile in profiles(script)
        ]
        risk = spawn(
            functools.partial(RiskManager, script.symbols, analysers, strategies, executor, books),
            group=Group.RISK,
            name="risk",
        )
        prices = hybrid.Topic(Tick, name="prices")
        prices.subscribe(analysers)
        prices.subscribe(executor)
        feed = spawn(Feed(script, prices, risk, books), group=Group.FEED, name="feed")
        members: dict[Group, list[hybrid.Address[Any]]] = {
            Group.EXECUTION: [executor],
            Group.ANALYSIS: [analysers, *strategies],
            Group.RISK: [risk],
            Group.FEED: [feed],
        }
        books.groups.update((child.name, group) for group, children in members.items() for child in children)
        return Next.events()


# -- watching and summing up -----------------------------------------------------------------


class Tape(hybrid.Instrument):
    """An instrument: told of every message handled, restart and ending in the run."""

    def __init__(self) -> None:
        self.ticks: collections.Counter[tuple[str, str]] = collections.Counter()  # (analyser, symbol) -> ticks
        self.restarts: list[tuple[str, hybrid.StopReason]] = []
        self.stopped: list[str] = []  # the agents that ended, in order; failed runs left out

    def message_handled(self, address: hybrid.Address[Any], message: object, seconds: float) -> None:
        if isinstance(message, Tick) and issubclass(address.agent_type, Analyser):
            self.ticks[address.name, message.symbol] += 1

    def child_restarted(
        self, supervisor: hybrid.Address[Any], child: hybrid.Address[Any], reason: hybrid.StopReason
    ) -> None:
        self.restarts.append((child.name, reason))

    def agent_stopped(self, address: hybrid.Address[Any], reason: hybrid.StopReason) -> None:
        if reason.kind is not hybrid.StopKind.FAILED:
            self.stopped.append(address.name)


@attrs.frozen
class Summary:
    """What `main` returns: the figures it printed.

    Attributes:
        ticks: by analyser, then by symbol: the ticks it handled.
        timeline: the decisions and failures, in order.
        quorum: the number of signals of each quorum outcome.
        orders: the number of orders of each status.
        exchange_orders: the orders that reached the exchange.
        breaker: the circuit breaker's statistics at the end.
        breaker_changes: the breaker's changes of state.
        restarts: the children that were restarted, and how their run had ended.
        shutdown: the groups (then the desk) in the order they stopped.
        counters: by agent class, the totals of `hybrid.snapshot()` at the end of the run.
        lines: the lines printed.
    """

    ticks: dict[str, dict[str, int]]
    timeline: tuple[Decision | Failure, ...]
    quorum: dict[QuorumOutcome, int]
    orders: dict[OrderStatus, int]
    exchange_orders: int
    breaker: hybrid.BreakerStatistics
    breaker_changes: tuple[BreakerChange, ...]
    restarts: tuple[tuple[str, hybrid.StopReason], ...]
    shutdown: tuple[str, ...]
    counters: dict[str, hybrid.ClassCounters]
    lines: tuple[str, ...]


def shutdown_order(stopped: Sequence[str], groups: dict[str, Group]) -> tuple[str, ...]:
    """The groups in the order their agents stopped (a pool's members are in the pool's group)."""
    order: list[str] = []
    for name in stopped:
        child = "/".join(name.split("/")[:2])  # "desk/analysers/Analyser-1" -> "desk/analysers"
        group = groups.get(child)
        label = name if group is None else f"{group.name.lower()} ({group.value})"
        if not order or order[-1] != label:
            order.append(label)
    return tuple(order)


def timeline_line(entry: Decision | Failure, changes: Sequence[BreakerChange]) -> str:
    """One line of the timeline."""
    if isinstance(entry, Failure):
        return f"  bar {entry.bar:2d}  {entry.symbol}  no report: its analyser failed ({entry.error}) and restarts"
    signal = entry.signal
    line = f"  bar {signal.bar:2d}  {signal.symbol}  {signal.side.value:4} @ {signal.price:6.2f}  "
    line += f"{entry.outcome.value} ({entry.detail})"
    execution = entry.execution
    if execution is not None:
        line += f": order {execution.order} {execution.status.value}"
        states = [change.before.value for change in changes if change.order == execution.order]
        if states:
            last = next(change.after for change in reversed(changes) if change.order == execution.order)
            line += f"; breaker {' -> '.join([*states, last.value])}"
    return line


def summarise(
    script: Script, books: Books, tape: Tape, desk: Desk, counters: Sequence[hybrid.ClassCounters]
) -> Summary:
    """Sum the run up, as the `Summary` that `main` prints and returns."""
    timeline = tuple(books.timeline)
    decisions = [entry for entry in timeline if isinstance(entry, Decision)]
    quorum = collections.Counter(decision.outcome for decision in decisions)
    executions = [decision.execution for decision in decisions if decision.execution is not None]
    orders = collections.Counter(execution.status for execution in executions)
    buys = sum(decision.signal.side is Side.BUY for decision in decisions)
    ticks: dict[str, dict[str, int]] = {}
    for (analyser, symbol), count in sorted(tape.ticks.items()):
        ticks.setdefault(analyser, {})[symbol] = count
    breaker = desk.breaker.statistics()
    changes = tuple(books.breaker_changes)
    shutdown = shutdown_order(tape.stopped, books.groups)
    corrupt_bar, corrupt_symbol = script.corrupt
    halt_bar, halt_seconds = script.halt
    news, outage = script.news_down, script.outage
    strategies = [profile.name for profile in profiles(script)]
    lines = [
        f"trading swarm: {len(script.symbols)} symbols, {script.bars} bars, seed {script.seed}",
        "scripted faults:",
        f"  a corrupt {corrupt_symbol} print at bar {corrupt_bar}",
        f"  the news strategy down for questions {news.start}-{news.stop - 1}; "
        f"the ML model silent from question {script.model_hangs_at} on",
        f"  the exchange down for bars {outage.start}-{outage.stop - 1}, "
        f"then trading halted for {halt_seconds:g} s after bar {halt_bar}",
        "",
        f"timeline: each signal needs {NEED} of the {len(strategies)} strategies ({', '.join(strategies)}) "
        f"to confirm it within {DEADLINE * 1000:.0f} ms",
        *(timeline_line(entry, changes) for entry in timeline),
        "",
        "analysers: a consistent-hash pool, so every tick of a symbol reaches the same analyser",
        *(
            f"  {analyser}: {sum(by_symbol.values())} ticks ("
            + ", ".join(f"{symbol} {count}" for symbol, count in by_symbol.items())
            + ")"
            for analyser, by_symbol in ticks.items()
        ),
        f"  signals: {len(decisions)} ({buys} buy, {len(decisions) - buys} sell)",
        "",
        "quorum: " + ", ".join(f"{quorum[outcome]} {outcome.value}" for outcome in QuorumOutcome),
        "",
        f"orders: {len(executions)} sent: " + ", ".join(f"{orders[status]} {status.value}" for status in OrderStatus),
        f"  the exchange saw {desk.exchange.orders_seen}; the breaker refused {breaker.rejected} at once",
        f"  breaker '{desk.breaker.name}': "
        + ", ".join(f"{change.before.value} -> {change.after.value} at order {change.order}" for change in changes),
        f"  breaker statistics: {breaker.calls} calls, {breaker.successes} succeeded, {breaker.failures} failed, "
        f"{breaker.rejected} rejected, opened {breaker.times_opened} time(s), now {breaker.state.value}",
        "",
        f"supervision: {len(tape.restarts)} restart(s)",
        *(f"  {name} restarted: its run {reason.kind.value} with {reason.error!r}" for name, reason in tape.restarts),
        "  shutdown, greatest group first: " + " -> ".join(shutdown),
        "",
        "hybrid.snapshot() counters, by agent class (an interrupt counts as a message handled)",
        f"  {'class':16} {'handled':>8} {'failures':>9} {'restarts':>9}",
        *(f"  {c.agent_class:16} {c.messages_handled:8} {c.failures:9} {c.restarts:9}" for c in counters),
    ]
    return Summary(
        ticks=ticks,
        timeline=timeline,
        quorum=dict(quorum),
        orders=dict(orders),
        exchange_orders=desk.exchange.orders_seen,
        breaker=breaker,
        breaker_changes=changes,
        restarts=tuple(tape.restarts),
        shutdown=shutdown,
        counters={counter.agent_class: counter for counter in counters},
        lines=tuple(lines),
    )


async def main(script: Script | None = None) -> Summary:
    """Run the desk through the script, interrupt it, then print the summary and return it."""
    script = Script() if script is None else script
    books = Books()
    tape = Tape()
    hybrid.add_instrument(tape)
    try:
        async with trio.open_nursery() as nursery:
            desk = Desk(script, books)
            address = hybrid.spawn(nursery, desk, name="desk")
            await books.market_closed.wait()
            address.interrupt()  # the ordered shutdown: greatest group first
    finally:
        hybrid.remove_instrument(tape)
    summary = summarise(script, books, tape, desk, hybrid.snapshot().counters)
    for line in summary.lines:
        print(line)
    return summary


if __name__ == "__main__":
    # The summary tells of the analyser's failure and of the breaker; the supervisor's
    # crash report and the breaker's warnings (on stderr) would only repeat it.
    logging.getLogger("hybrid.supervisor").setLevel(logging.CRITICAL)
    logging.getLogger("hybrid.breaker").setLevel(logging.CRITICAL)
    trio.run(main)
