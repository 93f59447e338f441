"""W10 remote agents: ``python -m bench.remote`` from the repo root.

What a remote `hybrid.Address` costs against plain nats-py, between processes
on loopback. The bench starts its own ``nats-server -js`` on a free port (the
binary the remote tests use: ``tests/remote/nats.py``) and four processes
(``bench/_remote_peer.py``), which live for the whole run:

- the **hybrid server**: a node (``hybrid.remote.connect``) publishing an
  ``Echo`` agent, an ordinary agent (not inline) that answers ``Ping(n)`` with
  ``n + 1``, counts ``Note`` events and answers ``Count()`` with the count
  (and ``Cpu()`` with its process's CPU time);
- the **plain server**: asyncio and nats-py only, one subscription whose
  callback does what ``Echo`` does, answering hybrid's wire format by hand;
- the **hybrid client**: a fresh node per sample, ``node.lookup(name, Echo)``,
  ``await echo.request(Ping(n))``, ``echo.send(Note(n))``;
- the **plain client**: asyncio and nats-py only, a fresh connection per
  sample, ``await nc.request(...)``, ``await nc.publish(...)``, the messages
  encoded by hand in hybrid's wire format.

The plain processes never import trio-asyncio, which patches asyncio for its
whole process (``asyncio.run`` would run on a trio-asyncio loop); this process
does not either, and only sends orders to the clients and collects their samples.

Each client sends to each server, the four pairs carrying the same messages, so
that hybrid's cost splits between its two ends:

- ``plain``: plain client -> plain server, the baseline;
- ``hybrid``: hybrid client -> hybrid agent, what the ratios are about;
- ``hybrid_to_plain``: hybrid client -> plain server (hybrid's client side alone);
- ``plain_to_hybrid``: plain client -> hybrid agent (hybrid's server side alone).

Three parts, every pair measured in each:

- **latency**: `REQUESTS` requests one after the other; p50 and p99 in µs.
  Target: hybrid's p50 <= `TARGET_LATENCY` x plain's.
- **pipelined**: `PIPELINED` requests from ``IN_FLIGHT`` (32) concurrent callers
  (``asyncio.gather`` or a trio nursery), each making its share in a row; req/s.
- **one-way**: `NOTES` events sent in a loop, then one ``Count()`` request on
  the same subject, timed from the first send until its answer, which comes
  after every event was counted (one subscription, handled in order): msgs/s
  handled. Also reported: the send loop's own rate. Delivery is at most once:
  a lost event fails the sample.

Each part also reports the CPU time the client and the server process used
per request or event (the client's ``time.process_time_ns()``, the server's
asked before and after with a request): on a loaded machine, where latencies
are mostly waiting for a core, it says what each end costs.

Fairness, as the other workloads (``bench/_harness.py``): the pairs alternate
within each round, the first round is discarded; each sample is a fresh event
loop in its client process (``asyncio.run`` or ``trio.run``, after
``gc.collect()``) with a fresh connection (and, for hybrid, a fresh node), made
before the clock starts, followed by ``WARMUP_REQUESTS`` (50) untimed requests
(a hybrid client binds the name at its first). Every sample checks its answers
and counts. The servers are the same processes for the whole run.

The figures move with the machine's load far more than the in-process
workloads do: three processes work for every sample (client, nats-server,
server), and a round trip is a dozen wake-ups across them; on 2 cores, one more
busy process is enough to double a latency. The load average is printed before and after; compare ratios from
one run, not absolute figures across runs.

Options:
    --size F       scale the request and event counts (default 1.0)
    --repeat N     measured rounds (default 5), after --warmup rounds (default 1)
    --output PATH  also write the results as JSON
    --profile DIR  run the hybrid client's timed operations and the hybrid server under cProfile;
                   write DIR/client.prof and DIR/server.prof and print their top functions
                   (--top N of them; the figures of that run are inflated: it shows where, not how much)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import pstats
import queue
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, Final, final

if __package__ in (None, ""):  # run as a script: python bench/remote.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench._harness import BenchError, Sample, alternate, grid, number, parse_rounds, rounds_parser, scaled
from bench._remote_peer import ECHO, IN_FLIGHT, PARTS, PLAIN_ECHO, WARMUP_REQUESTS
from bench.workloads import _metric

REPO_ROOT: Final = Path(__file__).resolve().parent.parent

REQUESTS = 1_000
"""Sequential requests per latency sample, at --size 1."""

PIPELINED = 4_000
"""Requests per pipelined sample, at --size 1."""

NOTES = 20_000
"""Events per one-way sample, at --size 1."""

TARGET_LATENCY = 1.5
"""hybrid's p50 request latency is at most this many times plain nats-py's."""

START_TIMEOUT = 30.0
"""Seconds a process may take to print ``ready``."""

SAMPLE_TIMEOUT = 120.0
"""Seconds a client may take to answer with a sample."""

PAIRS: Final[dict[str, tuple[str, str, str]]] = {
    "plain": ("plain", PLAIN_ECHO, "plain nats-py -> plain nats-py"),
    "hybrid": ("hybrid", ECHO, "hybrid -> hybrid agent"),
    "hybrid_to_plain": ("hybrid", PLAIN_ECHO, "hybrid -> plain nats-py"),
    "plain_to_hybrid": ("plain", ECHO, "plain nats-py -> hybrid agent"),
}
"""Each pair: (the client, the name it sends to, its description)."""

FIGURES: Final = {
    "latency_p50": ("latency", "p50_us"),
    "latency_p99": ("latency", "p99_us"),
    "pipelined": ("pipelined", "per_s"),
    "one_way": ("one_way", "per_s"),
    "one_way_sent": ("one_way", "sent_per_s"),
    **{f"{part}_{end}_cpu": (part, f"{end}_cpu_us") for part in PARTS for end in ("client", "server")},
}
"""Each reported figure: (part, the key of its samples)."""


class Unavailable(RuntimeError):
    """W10 cannot run here: no nats-server 2.11 or newer, the remote extra is missing, or a process did not start."""


# -- the processes -------------------------------------------------------------------------------


@final
class Process:
    """One process of ``bench/_remote_peer.py``: started in its role, ready, stopped by closing its stdin.

    A thread of this process reads its stdout, line by line, so that waiting for
    a line can time out. Its stderr is this process's: its failures show at once.
    """

    def __init__(self, role: str, url: str, profile: Path | None = None) -> None:
        self.role = role
        """Its role: ``hybrid``, ``plain``, ``hybrid-client`` or ``plain-client``."""
        args = [sys.executable, "-m", "bench._remote_peer", role, url]
        if profile is not None:
            args += ["--profile", str(profile)]
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        self._lines: queue.Queue[str] = queue.Queue()
        """Its stdout's lines, then ``""`` at its end (written by `_reader`'s thread)."""
        self._reader = threading.Thread(target=self._read_all, name=f"W10 {role} stdout", daemon=True)
        self._reader.start()
        try:
            line = self._read_line(START_TIMEOUT)
            if line.strip() != "ready":
                raise Unavailable(f"the {role} process did not start: it said {line!r}")
        except BaseException:
            self.stop()
            raise

    def _read_all(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for line in stdout:
            self._lines.put(line)
        self._lines.put("")

    def _read_line(self, timeout: float) -> str:
        """Its next line on stdout (``""`` if it ended); `BenchError` after `timeout` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"the {self.role} process said nothing for {timeout} s") from None

    def sample(self, part: str, name: str, n: int) -> Sample:
        """Have the client take one sample of `part` against `name`; raise `BenchError` if it failed."""
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(json.dumps({"part": part, "name": name, "n": n}) + "\n")
        stdin.flush()
        line = self._read_line(SAMPLE_TIMEOUT)
        if not line:
            raise BenchError(f"the {self.role} process ended (status {self._process.wait()})")
        try:
            answer: Sample = json.loads(line)
        except ValueError:
            raise BenchError(f"the {self.role} process answered {line!r}, not a sample") from None
        if "error" in answer:
            raise BenchError(f"W10 {self.role} {part} to {name!r}: {answer['error']}")
        return answer

    def stop(self) -> None:
        """Close its stdin (it leaves cleanly) and wait for it; kill it if it takes more than 10 s."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(10)
        if self._process.stdout is not None:
            self._process.stdout.close()


@contextlib.contextmanager
def _running(role: str, url: str, profile: Path | None = None) -> Generator[Process]:
    process = Process(role, url, profile)
    try:
        yield process
    finally:
        process.stop()


def nats_version() -> str:
    """The version of the nats-server the bench starts (``?`` if none is found)."""
    try:
        from tests.remote.nats import find_binary, server_version  # noqa: PLC0415 - the repository's tests
    except ImportError:
        return "?"
    binary = find_binary()
    return "?" if binary is None else ".".join(map(str, server_version(binary)))


@contextlib.contextmanager
def cluster(profile: Path | None = None) -> Generator[dict[str, Process]]:
    """A fresh ``nats-server -js``, both servers and both clients for the block; yields the clients by kind.

    With `profile` (a directory), the hybrid server and the hybrid client write
    ``server.prof`` and ``client.prof`` there when they end.

    Raises:
        Unavailable: no nats-server 2.11 or newer here, the remote extra is
            missing, or a process did not start.
    """
    try:
        from tests.remote.nats import discard, find_binary, missing_reason, new_server  # noqa: PLC0415
    except ImportError as error:  # bench/ without the repository's tests/
        raise Unavailable(f"W10 starts its nats-server with tests/remote/nats.py: {error}") from error
    for extra in ("nats", "trio_asyncio", "msgspec"):
        if importlib.util.find_spec(extra) is None:
            raise Unavailable(f"{extra} is not installed: pip install -e '.[remote]'")
    reason = missing_reason()
    binary = find_binary()
    if reason is not None or binary is None:
        raise Unavailable(reason or "no nats-server found")
    server = new_server(binary)
    try:
        with (
            _running("hybrid", server.url, None if profile is None else profile / "server.prof"),
            _running("plain", server.url),  # after the hybrid server: it needs the name registry
            _running("plain-client", server.url) as plain,
            _running("hybrid-client", server.url, None if profile is None else profile / "client.prof") as hybrid,
        ):
            yield {"plain": plain, "hybrid": hybrid}
    finally:
        discard(server)


# -- the workload --------------------------------------------------------------------------------


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": list(values)}


def _side(clients: dict[str, Process], part: str, pair: str, n: int) -> Callable[[], Sample]:
    client, name, _ = PAIRS[pair]
    return lambda: clients[client].sample(part, name, n)


def measure(
    clients: dict[str, Process], size: float, rounds: int, warmup: int, *, progress: bool = False
) -> dict[str, Any]:
    """Every pair of every part, alternately, by the `clients` of `cluster`; W10's entry of the results."""
    counts = {
        "latency": scaled(REQUESTS, size),
        "pipelined": scaled(PIPELINED, size, minimum=IN_FLIGHT),
        "one_way": scaled(NOTES, size),
    }
    load_before = os.getloadavg()
    samples: dict[str, dict[str, list[Sample]]] = {}
    for part in PARTS:
        if progress:
            print(f" {part}", end="", flush=True, file=sys.stderr)
        samples[part] = alternate({pair: _side(clients, part, pair, counts[part]) for pair in PAIRS}, rounds, warmup)
    params = {
        "requests": counts["latency"],
        "warmup_requests": WARMUP_REQUESTS,
        "pipelined": counts["pipelined"],
        "in_flight": IN_FLIGHT,
        "notes": counts["one_way"],
        "size": size,
        "nats_server": nats_version(),
        "cpus": os.cpu_count(),
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }
    return _entry(samples, params)


def _entry(samples: dict[str, dict[str, list[Sample]]], params: dict[str, Any]) -> dict[str, Any]:
    spreads = {
        figure: {pair: _spread([s[key] for s in samples[part][pair]]) for pair in PAIRS}
        for figure, (part, key) in FIGURES.items()
    }

    def med(figure: str, pair: str) -> float:
        return float(spreads[figure][pair]["median"])

    latency = "latency hybrid / plain nats-py, sequential requests between two processes"
    metrics = {
        "latency_p50": _metric(
            "us", med("latency_p50", "hybrid"), med("latency_p50", "plain"), latency,
            higher_is_better=False, target=("<=", TARGET_LATENCY, None),
        ),
        "latency_p99": _metric(
            "us", med("latency_p99", "hybrid"), med("latency_p99", "plain"), latency, higher_is_better=False
        ),
        "pipelined": _metric(
            "req/s", med("pipelined", "hybrid"), med("pipelined", "plain"),
            f"throughput hybrid / plain nats-py, {params['in_flight']} requests in flight", higher_is_better=True,
        ),
        "one_way": _metric(
            "msgs/s", med("one_way", "hybrid"), med("one_way", "plain"),
            "throughput hybrid / plain nats-py, one-way events handled by the receiver", higher_is_better=True,
        ),
    }  # fmt: skip
    return {
        "title": "remote agents: request latency and one-way throughput over NATS, between processes",
        "short": "remote",
        "params": params,
        # The suite's columns: "hybrid" is hybrid at both ends, "trio" plain nats-py at both ends.
        "hybrid": {"p50_us": med("latency_p50", "hybrid"), "one_way_per_s": med("one_way", "hybrid")},
        "trio": {"p50_us": med("latency_p50", "plain"), "one_way_per_s": med("one_way", "plain")},
        "spreads": spreads,
        "metrics": metrics,
    }


def run_w10(size: float, rounds: int, warmup: int) -> dict[str, Any]:
    """W10 for ``python -m bench``: starts its processes, measures, stops them.

    Raises:
        Unavailable: W10 cannot run here (see `cluster`).
    """
    with cluster() as clients:
        return measure(clients, size, rounds, warmup)


# -- the report ----------------------------------------------------------------------------------


def _range(spread: dict[str, Any]) -> str:
    return f"{number(spread['median'])} [{number(spread['min'])}-{number(spread['max'])}]"


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


CPU_HEADER: Final = ("client CPU us", "server CPU us")


def table_lines(entry: dict[str, Any]) -> list[str]:
    """The W10 report: one table per part, a row per pair, medians [min-max] over the rounds."""
    p = entry["params"]
    s = entry["spreads"]
    m = entry["metrics"]

    def vs_plain(figure: str, pair: str) -> str:
        return _x(s[figure][pair]["median"] / s[figure]["plain"]["median"])

    def cpu(part: str, pair: str) -> tuple[str, str]:
        return number(s[f"{part}_client_cpu"][pair]["median"]), number(s[f"{part}_server_cpu"][pair]["median"])

    lines = [
        f"W10 remote agents: clients and servers in processes of their own, nats-server {p['nats_server']} on "
        f"loopback, {p['cpus']} CPUs, load average {p['load_before'][0]:.2f} before, {p['load_after'][0]:.2f} after",
        "",
        f"W10 sequential requests: {p['requests']:,} per sample after {p['warmup_requests']} untimed; "
        "us per request, median [min-max] over the rounds; added = us more than plain -> plain; "
        "CPU = us of CPU time per request in the client and in the server process (medians)",
    ]
    rows: list[tuple[str, ...]] = []
    for pair, (_, _, label) in PAIRS.items():
        added = s["latency_p50"][pair]["median"] - s["latency_p50"]["plain"]["median"]
        rows.append((label, _range(s["latency_p50"][pair]), _range(s["latency_p99"][pair]),
                     vs_plain("latency_p50", pair), vs_plain("latency_p99", pair), f"{added:+.0f}",
                     *cpu("latency", pair)))  # fmt: skip
    lines += grid(("client -> server", "p50 us", "p99 us", "p50 vs plain", "p99 vs plain", "added us",
                   *CPU_HEADER), rows)  # fmt: skip

    lines += [
        "",
        f"W10 pipelined requests: {p['pipelined']:,} per sample from {p['in_flight']} concurrent callers; "
        "requests/s, median [min-max]; CPU us per request",
    ]
    rows = [
        (label, _range(s["pipelined"][pair]), vs_plain("pipelined", pair), *cpu("pipelined", pair))
        for pair, (_, _, label) in PAIRS.items()
    ]
    lines += grid(("client -> server", "req/s", "vs plain", *CPU_HEADER), rows)

    lines += [
        "",
        f"W10 one-way events: {p['notes']:,} sent in a loop, then one request, answered once the last is counted; "
        "msgs/s handled by the receiver, and the send loop's own rate; median [min-max]; CPU us per event",
    ]
    rows = [
        (label, _range(s["one_way"][pair]), vs_plain("one_way", pair), _range(s["one_way_sent"][pair]),
         *cpu("one_way", pair))
        for pair, (_, _, label) in PAIRS.items()
    ]  # fmt: skip
    lines += grid(("client -> server", "handled msgs/s", "vs plain", "send loop msgs/s", *CPU_HEADER), rows)

    target = m["latency_p50"]["target"]
    lines += [
        "",
        f"target: hybrid p50 latency <= {target['bound']:.2f}x plain nats-py: {m['latency_p50']['ratio']:.2f}x, "
        + ("met" if target["met"] else "NOT met"),
        "(the processes share the cores: the figures move with the machine's load; compare ratios within a run)",
    ]
    return lines


def profile_lines(path: Path, title: str, top: int) -> list[str]:
    """The `top` functions of the pstats file `path` by their own time."""
    profile = pstats.Stats(str(path)).get_stats_profile()
    ranked = sorted(profile.func_profiles.items(), key=lambda item: item[1].tottime, reverse=True)
    total = profile.total_tt or math.nan
    rows = [
        (f"{f.tottime * 1e3:.0f}", f"{f.tottime / total:.1%}", f"{f.cumtime * 1e3:.0f}", f.ncalls,
         f"{Path(f.file_name).name}:{f.line_number}({name})" if f.line_number else name)
        for name, f in ranked[:top]
    ]  # fmt: skip
    return [title, *grid(("own ms", "share", "cumulative ms", "calls", "function"), rows)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.remote``: see the module's docstring."""
    parser = rounds_parser(
        "python -m bench.remote", "W10: remote agents against plain nats-py", "scale the request and event counts"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--profile", type=Path, default=None, help="profile the hybrid client and server into DIR")
    parser.add_argument("--top", type=int, default=25, help="functions listed per profile (default 25)")
    args = parse_rounds(parser, argv)
    profile: Path | None = args.profile
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    t0 = perf_counter()
    print("  W10 ...", end="", flush=True, file=sys.stderr)
    try:
        with cluster(profile) as clients:
            entry = measure(clients, args.size, args.repeat, args.warmup, progress=True)
    except Unavailable as error:
        print(f"\nW10 cannot run here: {error}", file=sys.stderr)
        return 2
    entry["wall_seconds"] = perf_counter() - t0
    entry["params"]["profiled"] = profile is not None
    print(f" {entry['wall_seconds']:.1f}s", file=sys.stderr)
    print("\n".join(table_lines(entry)))
    if profile is not None:
        print("\n(PROFILED run: cProfile inflates the figures above; the profiles show where the time goes)")
        for name, title in (("client", "hybrid client, timed operations only"), ("server", "hybrid server, all")):
            print("", *profile_lines(profile / f"{name}.prof", f"{title}, by own time", args.top), sep="\n")
    if args.output is not None:
        args.output.write_text(json.dumps(entry, indent=2, allow_nan=True) + "\n")
        print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
