"""W9 durable transitions: ``python -m bench.durable`` from the repo root (also ``python -m bench --only W9``).

What a durable transition adds to a transition, measured in one run against
the same workload without a store, the sides alternating within each round
(each sample in a fresh ``trio.run`` or ``asyncio.run``, ``gc.collect()``
before each, the first round discarded, medians and ranges reported):

- **SQLite, 200 agents**: `AGENTS` agents at once, each in its own task,
  ``await store.run(Loop(k), key=...)``: `Loop` takes `K_MANY` do_async
  self-transitions with two small int fields, on a SQLite file in a temp
  directory (a new file per sample; the store's settings: WAL,
  ``synchronous=FULL``, so each commit is fsynced), sync durability (the
  default: each checkpoint committed before the state it names starts).
  Against the same agents run with ``await Loop(k).run()`` and no store.
  Reported: microseconds added per transition, amortized ((durable time -
  time without a store) / transitions, each agent's claim and ending
  included), and transitions per second both ways.
- **SQLite, 1 agent**: one agent alone, `K_ONE` transitions, the same.
- **async durability**: the same two with ``durability="async"``
  (write-behind: at most one checkpoint in flight per agent).
- **SQLite :memory:**: the same two on ``sqlite:///:memory:``: no file, no
  fsync; what is left is the store's own work (encoding each checkpoint, the
  round trip to the journal's writer thread, the statements).
- **Postgres**: the same four on a Postgres server, when one is reachable:
  ``HYBRID_BENCH_POSTGRES`` (a libpq URL; the store's tables are created in
  it, and the keys the bench finished are pruned after each sample), else a
  temporary cluster started with ``tests/durable/postgres.py`` (as the tests
  do: fsync and synchronous_commit on). Skipped with a note otherwise.
- **LangGraph**: a 3-step run, START -> first -> second -> third -> END,
  compiled with its in-memory checkpointer (``InMemorySaver``), each run with
  its own ``thread_id``, against hybrid's 3-step durable agent on a SQLite
  file (sync durability), in steps per second: sequential (`SEQUENTIAL_RUNS`
  runs one after the other) and concurrent (`AGENTS` runs at once:
  ``asyncio.gather`` for LangGraph, a nursery for hybrid). hybrid on an
  in-memory SQLite store (``sqlite:///:memory:``, no fsync: the like of
  ``InMemorySaver``) is reported beside it. Skipped with a note when
  LangGraph is not installed (the ``bench`` extra).

Targets (from the durable-agents issue): added cost per transition <= 35 us
with 200 agents and <= 200 us for one agent alone on SQLite with full fsync;
hybrid durable >= 10x LangGraph's steps per second. A commit cannot return
before its fsync, and the agent waits for the journal's writer thread, so one
agent alone pays at least one fsync and one round trip through a thread per
transition. The table prints both floors, measured on the same machine: the
bare fsync'd SQLite commit of the same disk, and a trio task's round trip
through a thread (`thread_round_trip_us`); the 1-agent bound holds only where
their sum is below it.

Options:
    --size F       scale the transitions and runs (default 1.0; 0.01 for a smoke run)
    --repeat N     measured rounds (default 5), after --warmup rounds (default 1)
    --dir PATH     where the SQLite files go (default: HYBRID_BENCH_DIR, else the temp directory)
    --postgres URL a Postgres server to use (default: HYBRID_BENCH_POSTGRES, else start one)
    --no-postgres  skip Postgres
    --output PATH  also write the results as JSON
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, Self

if __package__ in (None, ""):  # run as a script: python bench/durable.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import attrs
import trio

import hybrid
import hybrid.durable
from bench import agent_peers
from bench._harness import Sample, alternate, check, grid, number, parse_rounds, rounds_parser, scaled
from bench.workloads import ThreeStates, _metric, _target
from hybrid import Agent, Next

AGENTS = 200
"""Agents at once (and LangGraph runs at once): fixed, not scaled by --size."""

K_MANY = 50
"""Transitions of each of the `AGENTS` agents, at --size 1 (10,000 in all)."""

K_ONE = 200
"""Transitions of the agent alone, at --size 1."""

SEQUENTIAL_RUNS = 200
"""3-step runs one after the other, at --size 1 (each side)."""

TARGET_ADDED_MANY_US = 35.0
TARGET_ADDED_ONE_US = 200.0
TARGET_LANGGRAPH_RATIO = 10.0

POSTGRES_ENV = "HYBRID_BENCH_POSTGRES"
DIR_ENV = "HYBRID_BENCH_DIR"


# -- the agents ---------------------------------------------------------------------------------


@attrs.define
class Loop(Agent[int]):
    """`k` do_async self-transitions; its two int fields are what each checkpoint saves."""

    k: int
    count: int = 0

    def begin(self) -> Next[Self]:
        return Next.do_async(self.tick, 0)

    async def tick(self, i: int) -> Next[Self]:
        self.count = i + 1
        if self.count >= self.k:
            return Next.done(self.count)
        return Next.do_async(self.tick, self.count)


@attrs.define
class DurableThreeStates(ThreeStates):
    """W7's machine (`bench.workloads.ThreeStates`) as an attrs class, which a store can save: the same states."""


# -- where the stores live --------------------------------------------------------------------


@attrs.define
class Places:
    """The SQLite directory and the Postgres URL of one bench run; hands out a fresh store per sample."""

    directory: Path
    postgres: str | None
    samples: int = 0

    def sqlite(self) -> str:
        self.samples += 1
        return f"sqlite:///{self.directory / f'w9-{self.samples}.db'}"

    def prefix(self) -> str:
        """Keys of this sample: unique within the run (a Postgres database outlives samples)."""
        self.samples += 1
        return f"w9-{os.getpid()}-{self.samples}-"


def _remove_sqlite(url: str) -> None:
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + suffix)


async def _cleanup(store: hybrid.durable.Store, url: str) -> None:
    """After the clock stopped: a Postgres database keeps no finished key of the bench."""
    if url.startswith("postgres"):
        await store.prune(finished_before=time.time() + 3600)


def _statistics(store: hybrid.durable.Store) -> tuple[int, int]:
    stats = store._journal._statistics()
    return stats.transactions, stats.largest_batch


# -- the sides ------------------------------------------------------------------------------------


def durable_loops(url: str, agents: int, k: int, durability: str, prefix: str = "") -> Sample:
    """`agents` Loop agents at once, each ``await store.run(Loop(k), key=...)`` in its own task."""

    async def main() -> Sample:
        outputs: list[int] = []
        async with hybrid.durable.open_store(url, durability=durability) as store:

            async def one(key: str) -> None:
                outputs.append(await store.run(Loop(k), key=key))

            start = perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(agents):
                    nursery.start_soon(one, f"{prefix}a{i}")
            seconds = perf_counter() - start
            commits, largest = _statistics(store)
            await _cleanup(store, url)
        return {"seconds": seconds, "total": sum(outputs), "commits": commits, "largest_batch": largest}

    sample = trio.run(main)
    _remove_sqlite(url)
    check("W9 durable transitions", sample["total"], agents * k)
    sample["transitions"] = agents * k
    return sample


def plain_loops(agents: int, k: int) -> Sample:
    """The same agents without a store: ``await Loop(k).run()``, each in its own task."""

    async def main() -> Sample:
        outputs: list[int] = []

        async def one() -> None:
            outputs.append(await Loop(k).run())

        start = perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(agents):
                nursery.start_soon(one)
        return {"seconds": perf_counter() - start, "total": sum(outputs)}

    sample = trio.run(main)
    check("W9 transitions without a store", sample["total"], agents * k)
    sample["transitions"] = agents * k
    return sample


def hybrid_three(url: str, runs: int, concurrent: bool, prefix: str = "") -> Sample:
    """`runs` durable 3-step runs, one after the other or all at once (a task each)."""

    async def main() -> Sample:
        outputs: list[int] = []
        async with hybrid.durable.open_store(url) as store:

            async def one(key: str) -> None:
                outputs.append(await store.run(DurableThreeStates(), key=key))

            start = perf_counter()
            if concurrent:
                async with trio.open_nursery() as nursery:
                    for i in range(runs):
                        nursery.start_soon(one, f"{prefix}r{i}")
            else:
                for i in range(runs):
                    await one(f"{prefix}r{i}")
            seconds = perf_counter() - start
            await _cleanup(store, url)
        return {"seconds": seconds, "total": sum(outputs)}

    sample = trio.run(main)
    _remove_sqlite(url)
    check("W9 hybrid 3-step outputs", sample["total"], 6 * runs)
    sample["steps_per_s"] = 3 * runs / sample["seconds"]
    return sample


def langgraph_three(runs: int, concurrent: bool) -> Sample:
    """`runs` runs of LangGraph's 3-step graph with ``InMemorySaver``, a thread_id each."""
    from langgraph.checkpoint.memory import InMemorySaver  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - an optional peer
    from langgraph.graph import END, START, StateGraph  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

    builder: Any = StateGraph(agent_peers.ThreeState)  # Any: its typing is LangGraph's business, not this bench's
    builder.add_node("first", agent_peers._lg_first)
    builder.add_node("second", agent_peers._lg_second)
    builder.add_node("third", agent_peers._lg_third)
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", "third")
    builder.add_edge("third", END)
    graph: Any = builder.compile(checkpointer=InMemorySaver())

    async def one(i: int) -> int:
        config: Any = {"configurable": {"thread_id": f"t{i}"}}
        result: int = (await graph.ainvoke({"x": 0}, config))["x"]
        return result

    async def main() -> Sample:
        start = perf_counter()
        if concurrent:
            outputs = await asyncio.gather(*(one(i) for i in range(runs)))
        else:
            outputs = [await one(i) for i in range(runs)]
        return {"seconds": perf_counter() - start, "total": sum(outputs)}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a peer's own warnings are not ours
        sample = asyncio.run(main())
    check("W9 LangGraph 3-step outputs", sample["total"], 6 * runs)
    sample["steps_per_s"] = 3 * runs / sample["seconds"]
    return sample


def bare_commit_us(directory: Path, commits: int = 200) -> float:
    """One row inserted and committed per transaction, WAL and synchronous=FULL: this disk's floor (us)."""
    path = directory / "bare.db"
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        start = perf_counter()
        for i in range(commits):
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO t VALUES (?, ?)", (i, b"x" * 40))
            connection.execute("COMMIT")
        return (perf_counter() - start) / commits * 1e6
    finally:
        connection.close()
        _remove_sqlite(f"sqlite:///{path}")


def thread_round_trip_us(trips: int = 2000) -> float:
    """A trio task hands a thread a token and parks until the thread wakes it: this machine's floor (us).

    What a durable write adds on top of its commit when no other agent writes
    beside it: the journal's writer thread is woken with a ``threading.Condition``
    and wakes the trio side with ``TrioToken.run_sync_soon``, as here.
    """

    async def main() -> float:
        token = trio.lowlevel.current_trio_token()
        ready = threading.Condition()
        box: list[trio.lowlevel.Task | None] = []

        def wake(task: trio.lowlevel.Task) -> None:
            trio.lowlevel.reschedule(task)

        def serve() -> None:
            while True:
                with ready:
                    while not box:
                        ready.wait()
                    task = box.pop()
                if task is None:
                    return
                token.run_sync_soon(wake, task)

        def never(_: object) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED

        thread = threading.Thread(target=serve, name="bench round trip", daemon=True)
        thread.start()
        try:
            start = perf_counter()
            for _ in range(trips):
                with ready:
                    box.append(trio.lowlevel.current_task())
                    ready.notify()
                await trio.lowlevel.wait_task_rescheduled(never)
            return (perf_counter() - start) / trips * 1e6
        finally:
            with ready:
                box.append(None)
                ready.notify()
            thread.join()

    return trio.run(main)


# -- Postgres, LangGraph: there or not --------------------------------------------------------


@contextlib.contextmanager
def postgres_server(url: str | None, enabled: bool = True) -> Generator[tuple[str | None, str]]:
    """(URL, where it comes from), or (None, why Postgres is skipped), for the time of the block."""
    if not enabled:
        yield None, "skipped (--no-postgres)"
        return
    if importlib.util.find_spec("psycopg") is None:
        yield None, "skipped: psycopg is not installed (pip install -e '.[durable-postgres]')"
        return
    if url:
        yield url, f"the server at {POSTGRES_ENV} / --postgres"
        return
    try:
        from tests.durable.postgres import find_bindir, missing_reason, running_postgres  # noqa: PLC0415
    except ImportError as error:  # bench/ without the repository's tests/
        yield None, f"skipped: set {POSTGRES_ENV} (cannot start a server: {error})"
        return
    reason = missing_reason()
    bindir = find_bindir()
    if reason is not None or bindir is None:
        yield None, f"skipped: set {POSTGRES_ENV}, or install a server ({reason or 'none found'})"
        return
    with running_postgres(bindir) as server:
        yield server.new_schema_url(), f"a temporary cluster started from {bindir} (tests/durable/postgres.py)"


def postgres_settings(url: str) -> dict[str, str]:
    """The server's version and the settings that decide what a commit costs."""
    import psycopg  # noqa: PLC0415 - an extra

    with psycopg.connect(url) as connection:
        names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method")
        return {name: str(connection.execute(f"SHOW {name}").fetchone()[0]) for name in names}  # type: ignore[index]


def langgraph_note() -> str | None:
    """None if LangGraph imports, else why its rows are skipped."""
    if importlib.util.find_spec("langgraph") is None:
        return "skipped: langgraph is not installed (pip install -e '.[bench]')"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            __import__("langgraph.checkpoint.memory")
    except Exception as error:
        return f"skipped: langgraph does not import: {error!r}"
    return None


def filesystem(path: Path) -> str:
    """The file system type of `path` (Linux: from /proc/mounts), or "?"."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mounted = len(parts) > 2 and (resolved == parts[1] or resolved.startswith(parts[1].rstrip("/") + "/"))
            if mounted and len(parts[1]) > len(best):  # the longest mount point holding the path
                best, kind = parts[1], parts[2]
    return kind


# -- the workload ---------------------------------------------------------------------------------


CASES = (
    # name, title, backend, durability, many agents?
    ("sqlite_200", "SQLite sync, 200 agents", "sqlite", "sync", True),
    ("sqlite_1", "SQLite sync, 1 agent", "sqlite", "sync", False),
    ("sqlite_async_200", "SQLite async, 200 agents", "sqlite", "async", True),
    ("sqlite_async_1", "SQLite async, 1 agent", "sqlite", "async", False),
    ("memory_200", "SQLite :memory: sync, 200 agents", "memory", "sync", True),
    ("memory_1", "SQLite :memory: sync, 1 agent", "memory", "sync", False),
    ("postgres_200", "Postgres sync, 200 agents", "postgres", "sync", True),
    ("postgres_1", "Postgres sync, 1 agent", "postgres", "sync", False),
    ("postgres_async_200", "Postgres async, 200 agents", "postgres", "async", True),
    ("postgres_async_1", "Postgres async, 1 agent", "postgres", "async", False),
)
"""The transition cases: each has its own side; the two sides without a store serve them all."""

THREE_STEP = (
    # name, title, concurrent?
    ("sequential", "sequential", False),
    ("concurrent", "concurrent", True),
)


def measure(
    size: float,
    rounds: int,
    warmup: int,
    *,
    directory: Path | None = None,
    postgres: str | None = None,
    use_postgres: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every side of W9 alternately; return its entry of the results (see `bench.run`)."""
    k_many = scaled(K_MANY, size, minimum=2)
    k_one = scaled(K_ONE, size, minimum=5)
    runs = scaled(SEQUENTIAL_RUNS, size, minimum=2)
    lg_note = langgraph_note()
    base = directory or Path(os.environ.get(DIR_ENV) or tempfile.gettempdir())
    with (
        tempfile.TemporaryDirectory(prefix="hybrid-w9-", dir=base) as folder,
        postgres_server(postgres, use_postgres) as (pg_url, pg_note),
    ):
        places = Places(Path(folder), pg_url)
        sides: dict[str, Callable[[], Sample]] = {
            "plain_200": lambda: plain_loops(AGENTS, k_many),
            "plain_1": lambda: plain_loops(1, k_one),
        }
        for name, _, backend, durability, many in CASES:
            if backend == "postgres" and pg_url is None:
                continue
            sides[name] = _loop_side(places, backend, durability, AGENTS if many else 1, k_many if many else k_one)
        for name, _, concurrent in THREE_STEP:
            count = AGENTS if concurrent else runs
            sides[f"hybrid_{name}"] = _three_side(places, "sqlite", count, concurrent)
            sides[f"memory_{name}"] = _three_side(places, "memory", count, concurrent)
            if lg_note is None:
                sides[f"langgraph_{name}"] = _langgraph_side(count, concurrent)
        if progress:
            print(f" ({len(sides)} sides)", end="", flush=True, file=sys.stderr)
        samples = alternate(sides, rounds, warmup)
        floor_us = statistics.median(bare_commit_us(Path(folder)) for _ in range(3))
        trip_us = statistics.median(thread_round_trip_us() for _ in range(3))
        settings = postgres_settings(pg_url) if pg_url is not None else None
        fs = filesystem(Path(folder))
    return _entry(samples, size=size, k_many=k_many, k_one=k_one, runs=runs, environment={
        "sqlite_dir": str(base),
        "sqlite_filesystem": fs,
        "sqlite_version": sqlite3.sqlite_version,
        "sqlite_bare_commit_us": floor_us,
        "thread_round_trip_us": trip_us,
        "postgres": pg_note,
        "postgres_settings": settings,
        "langgraph": lg_note or f"langgraph {agent_peers.version('langgraph')}",
    })  # fmt: skip


def _loop_side(places: Places, backend: str, durability: str, agents: int, k: int) -> Callable[[], Sample]:
    if backend == "sqlite":
        return lambda: durable_loops(places.sqlite(), agents, k, durability)
    if backend == "memory":
        return lambda: durable_loops("sqlite:///:memory:", agents, k, durability)
    assert places.postgres is not None
    url = places.postgres
    return lambda: durable_loops(url, agents, k, durability, places.prefix())


def _three_side(places: Places, backend: str, runs: int, concurrent: bool) -> Callable[[], Sample]:
    if backend == "memory":
        return lambda: hybrid_three("sqlite:///:memory:", runs, concurrent)
    return lambda: hybrid_three(places.sqlite(), runs, concurrent)


def _langgraph_side(runs: int, concurrent: bool) -> Callable[[], Sample]:
    return lambda: langgraph_three(runs, concurrent)


def _per_transition(samples: list[Sample]) -> list[float]:
    return [s["seconds"] / s["transitions"] * 1e6 for s in samples]


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": list(values)}


def _entry(
    samples: dict[str, list[Sample]], *, size: float, k_many: int, k_one: int, runs: int, environment: dict[str, Any]
) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for name, title, _, _, many in CASES:
        if name not in samples:
            continue
        durable = _per_transition(samples[name])
        plain = _per_transition(samples["plain_200" if many else "plain_1"])
        added = [d - p for d, p in zip(durable, plain, strict=True)]  # paired: the same round
        writes = [s["transitions"] + 2 * (AGENTS if many else 1) for s in samples[name]]
        case: dict[str, Any] = {
            "title": title,
            "agents": AGENTS if many else 1,
            "transitions": samples[name][0]["transitions"],
            "durable_us": _spread(durable),
            "plain_us": _spread(plain),
            "added_us": _spread(added),
            "durable_per_s": 1e6 / statistics.median(durable),
            "plain_per_s": 1e6 / statistics.median(plain),
            "commits": statistics.median(s["commits"] for s in samples[name]),
            "writes_per_commit": statistics.median(
                w / s["commits"] for w, s in zip(writes, samples[name], strict=True)
            ),
            "largest_batch": max(s["largest_batch"] for s in samples[name]),
        }
        cases[name] = case
        metric = _metric(
            "us/trans",
            case["durable_us"]["median"],
            case["plain_us"]["median"],
            "durable cost / cost without a store, per transition",
            higher_is_better=False,
        )
        if name in ("sqlite_200", "sqlite_1"):
            bound = TARGET_ADDED_MANY_US if many else TARGET_ADDED_ONE_US
            metric["target"] = _target("added", case["added_us"]["median"], op="<=", bound=bound, goal=None, unit="us")
        metrics[name] = metric
    three: dict[str, Any] = {}
    for name, title, concurrent in THREE_STEP:
        row: dict[str, Any] = {"title": title, "runs": AGENTS if concurrent else runs}
        for side in ("hybrid", "memory", "langgraph"):
            key = f"{side}_{name}"
            if key in samples:
                row[f"{side}_steps_per_s"] = _spread([s["steps_per_s"] for s in samples[key]])
        if "langgraph_steps_per_s" in row:
            lg = row["langgraph_steps_per_s"]["median"]
            row["hybrid_vs_langgraph"] = row["hybrid_steps_per_s"]["median"] / lg
            row["memory_vs_langgraph"] = row["memory_steps_per_s"]["median"] / lg
            metric = _metric(
                "steps/s",
                row["hybrid_steps_per_s"]["median"],
                lg,
                "hybrid durable throughput / LangGraph InMemorySaver throughput",
                higher_is_better=True,
            )
            metric["target"] = _target(
                "ratio", metric["ratio"], op=">=", bound=TARGET_LANGGRAPH_RATIO, goal=None, unit="x"
            )
            metrics[f"langgraph_{name}"] = metric
        three[name] = row
    first = "sqlite_200"
    return {
        "title": "durable transitions: a store's added cost per transition, and LangGraph's checkpointer",
        "short": "durable",
        "params": {"agents": AGENTS, "k_many": k_many, "k_one": k_one, "sequential_runs": runs, "size": size},
        # The main table's columns: "hybrid" is the durable side, "trio" the same work without a store.
        "hybrid": {"us_per_transition": cases[first]["durable_us"]["median"]},
        "trio": {"us_per_transition": cases[first]["plain_us"]["median"]},
        "cases": cases,
        "three_step": three,
        "environment": environment,
        "metrics": metrics,
    }


def run_w9(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    """W9 for ``python -m bench``: the SQLite directory and Postgres from the environment."""
    return measure(size, rounds, warmup, postgres=os.environ.get(POSTGRES_ENV))


# -- the report -----------------------------------------------------------------------------------


def _range(spread: dict[str, Any]) -> str:
    return f"{number(spread['median'])} [{number(spread['min'])}-{number(spread['max'])}]"


def table_lines(entry: dict[str, Any]) -> list[str]:
    """The W9 report: transitions with and without a store, then the 3-step runs against LangGraph."""
    env = entry["environment"]
    metrics = entry["metrics"]
    header = (
        "case", "transitions", "durable us/trans", "no store us/trans", "added us/trans [range]",
        "durable trans/s", "no store trans/s", "writes/commit", "target", "met",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = []
    for name, case in entry["cases"].items():
        target = metrics[name]["target"]
        rows.append(
            (
                case["title"],
                f"{case['agents']} x {case['transitions'] // case['agents']}",
                number(case["durable_us"]["median"]),
                number(case["plain_us"]["median"]),
                _range(case["added_us"]),
                number(case["durable_per_s"]),
                number(case["plain_per_s"]),
                f"{case['writes_per_commit']:.1f}",
                "-" if target is None else f"<= {number(target['bound'])} us",
                "-" if target is None else ("yes" if target["met"] else "NO"),
            )
        )
    lines = [
        f"W9 durable transitions: SQLite file in {env['sqlite_dir']} ({env['sqlite_filesystem']}), WAL, "
        f"synchronous=FULL, SQLite {env['sqlite_version']}; a bare fsync'd SQLite commit here: "
        f"{env['sqlite_bare_commit_us']:.0f} us; a trio task's round trip through a thread here: "
        f"{env.get('thread_round_trip_us', float('nan')):.0f} us (one agent alone pays both per transition)",
        "  durable: each agent `await store.run(Loop(k), key=...)` in its own task (do_async self-transitions, two "
        "int fields); no store: `await Loop(k).run()`; added = durable - no store per transition, amortized (each "
        "agent's claim and ending included), paired by round: median [min-max]",
        "  sync: each checkpoint committed before its state starts; async: write-behind, one checkpoint in flight "
        "per agent; writes/commit: checkpoints, claims and endings per transaction (group commit)",
        *grid(header, rows),
    ]
    if not any(name.startswith("postgres") for name in entry["cases"]):
        lines.append(f"  Postgres: {env['postgres']}")
    else:
        settings: dict[str, str] = env["postgres_settings"] or {}
        lines.append(
            f"  Postgres {settings.get('server_version', '?')} ({env['postgres']}): fsync={settings.get('fsync')}, "
            f"synchronous_commit={settings.get('synchronous_commit')}, "
            f"wal_sync_method={settings.get('wal_sync_method')}"
        )
    three = entry["three_step"]
    lines.append("")
    if not any("langgraph_steps_per_s" in row for row in three.values()):
        lines.append(f"W9 3-step runs against LangGraph: {env['langgraph']}")
        return lines
    header3 = (
        "3-step runs", "hybrid SQLite file steps/s", "hybrid :memory: steps/s", "LangGraph steps/s",
        "file/LangGraph", "memory/LangGraph", "target", "met",
    )  # fmt: skip
    rows3: list[tuple[str, ...]] = []
    for name, row in three.items():
        target = metrics[f"langgraph_{name}"]["target"]
        rows3.append(
            (
                f"{row['title']} ({row['runs']} runs{' at once' if name == 'concurrent' else ''})",
                _range(row["hybrid_steps_per_s"]),
                _range(row["memory_steps_per_s"]),
                _range(row["langgraph_steps_per_s"]),
                f"{row['hybrid_vs_langgraph']:.2f}x",
                f"{row['memory_vs_langgraph']:.2f}x",
                f">= {target['bound']:.0f}x",
                "yes" if target["met"] else "NO",
            )
        )
    lines += [
        f"W9 3-step runs (START->first->second->third->END), steps/s: hybrid durable (sync) on a SQLite file and on "
        f"sqlite:///:memory:, against {env['langgraph']} compiled with InMemorySaver, a thread_id per run",
        "  sequential: one run after the other; concurrent: all at once (a nursery of store.run / asyncio.gather of "
        "ainvoke); the target is on the file store",
        *grid(header3, rows3),
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = rounds_parser(
        "python -m bench.durable", "W9: what durable transitions cost", "scale the transitions and runs (default 1.0)"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help=f"where the SQLite files go (default ${DIR_ENV} or temp)"
    )
    parser.add_argument("--postgres", default=os.environ.get(POSTGRES_ENV), help=f"a Postgres URL (${POSTGRES_ENV})")
    parser.add_argument("--no-postgres", action="store_true", help="skip Postgres")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    args = parse_rounds(parser, argv)
    t0 = perf_counter()
    print("  W9 ...", end="", flush=True, file=sys.stderr)
    entry = measure(
        args.size, args.repeat, args.warmup, directory=args.dir, postgres=args.postgres,
        use_postgres=not args.no_postgres, progress=True,
    )  # fmt: skip
    entry["wall_seconds"] = perf_counter() - t0
    print(f" {entry['wall_seconds']:.1f}s", file=sys.stderr)
    print("\n".join(table_lines(entry)))
    if args.output is not None:
        args.output.write_text(json.dumps(entry, indent=2, allow_nan=True) + "\n")
        print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
