"""W10's processes (``bench/remote.py`` starts them), and the messages and agent they share.

``python -m bench._remote_peer ROLE URL [--profile PATH]``, ROLE one of:

- ``hybrid``: a server. Joins the cluster `CLUSTER` as node `SERVER_NODE` and
  publishes an `Echo` agent as `ECHO`.
- ``plain``: the baseline server, asyncio and nats-py alone. One subscription,
  on the subject of the name `PLAIN_ECHO`, whose callback does what `Echo` does
  and answers hybrid's wire format by hand (`envelope`, `reply`), so that a
  plain or a hybrid client can talk to a plain or a hybrid server. It enters
  `PLAIN_ECHO` in the cluster's name registry as served by `SERVER_NODE` (a live
  node), so that a hybrid client binds the name once, as it does a published
  one: start it after the hybrid server, which creates the registry.
- ``hybrid-client`` and ``plain-client``: a client taking orders. Each line on
  stdin is a JSON object ``{"part": ..., "name": ..., "n": ...}``: one sample
  (`PARTS`) against the agent published as ``name``, in a fresh event loop
  (``trio.run`` or ``asyncio.run``) with a fresh connection (a fresh node for
  hybrid), after ``gc.collect()`` and `WARMUP_REQUESTS` untimed requests. The
  answer is one JSON line: the sample, or ``{"error": ...}`` if it failed. A
  sample also has the CPU time each process used for it, per operation: the
  client's own (``time.process_time_ns()``) and the server's (a `Cpu` request
  before and after).

Every role prints ``ready`` on stdout once it can serve, and ends when its
stdin closes. With ``--profile``, a server runs under cProfile and a hybrid
client profiles its timed operations only; the statistics (pstats) go to PATH
at the end.

The plain roles never import trio-asyncio: importing it patches asyncio for the
whole process (``asyncio.run`` would then run on a trio-asyncio loop, and every
``asyncio.get_running_loop()`` would ask trio first), which is why no plain
side runs in a process that uses ``hybrid.remote``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import secrets
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from time import perf_counter, perf_counter_ns, process_time_ns
from typing import TYPE_CHECKING, Any, Final

if __package__ in (None, ""):  # run as a script: python bench/_remote_peer.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import attrs
import msgspec
import trio
from typing_extensions import Self

import hybrid
from bench._harness import Sample, check, percentile
from hybrid.codec import message

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

CLUSTER: Final = "bench"
"""The cluster of every W10 node."""

SERVER_NODE: Final = "server"
"""The hybrid server's node name."""

ECHO: Final = "echo"
"""The name the hybrid server publishes its `Echo` under."""

PLAIN_ECHO: Final = "plain-echo"
"""The name the plain server answers to (hybrid's wire format, by hand)."""

PARTS: Final = ("latency", "pipelined", "one_way")
"""The kinds of sample a client takes: see ``bench/remote.py``."""

WARMUP_REQUESTS: Final = 50
"""Untimed requests at the start of every sample (a hybrid client binds the name at its first)."""

IN_FLIGHT: Final = 32
"""Concurrent callers of a pipelined sample."""

TIMEOUT: Final = 10.0
"""Seconds a plain client waits for one answer (nats-py's request needs a timeout)."""


def agent_subject(name: str) -> str:
    """The NATS subject of the agent published as `name` in `CLUSTER` (see ``hybrid/remote/_names.py``)."""
    return f"hybrid.{CLUSTER}.agent.{name}"


# -- the messages and the agent -------------------------------------------------------------------


@message(name="bench.Ping")
@attrs.frozen
class Ping(hybrid.Request[int]):
    """A request: the answer is ``n + 1``."""

    n: int


@message(name="bench.Note")
@attrs.frozen
class Note:
    """A one-way event: the receiver counts it."""

    n: int


@message(name="bench.Count")
@attrs.frozen
class Count(hybrid.Request[int]):
    """A request: how many `Note` events the receiver has counted."""


@message(name="bench.Cpu")
@attrs.frozen
class Cpu(hybrid.Request[int]):
    """A request: the CPU time the receiving process has used so far, in ns (``time.process_time_ns()``)."""


@attrs.define(eq=False)
class Echo(hybrid.Agent[None]):
    """Answers `Ping` with ``n + 1``, counts `Note` events, answers `Count` with the count and `Cpu`."""

    notes: int = 0

    def begin(self) -> hybrid.Next[Self]:
        return hybrid.Next.events()

    @hybrid.on_request
    async def ping(self, request: Ping) -> int:
        return request.n + 1

    @hybrid.on_event
    async def note(self, event: Note) -> None:
        self.notes += 1

    @hybrid.on_request
    async def count(self, request: Count) -> int:
        return self.notes

    @hybrid.on_request
    async def cpu(self, request: Cpu) -> int:
        return process_time_ns()


# -- hybrid's wire format, by hand (the plain sides) ------------------------------------------------

_PACK: Final = msgspec.msgpack.Encoder()
_UNPACK: Final = msgspec.msgpack.Decoder()

EVENT: Final = 0
REQUEST: Final = 1
"""The envelope kinds of hybrid's wire format (``hybrid/remote/_wire.py``) the bench uses."""

PING_NAME: Final = "bench.Ping"
NOTE_NAME: Final = "bench.Note"
COUNT_NAME: Final = "bench.Count"
CPU_NAME: Final = "bench.Cpu"


def envelope(kind: int, name: str, fields: dict[str, Any]) -> bytes:
    """A message as a hybrid node puts it on an agent's subject: ``[kind, type name, version, body]``.

    The body is what `hybrid.codec.MessageCodec` makes of an attrs message: a map
    of its fields. (A node may add fields after the body; a receiver takes the
    missing ones as empty.)
    """
    return _PACK.encode((kind, name, 1, _PACK.encode(fields)))


def reply(answer: int) -> bytes:
    """A successful answer as a hybrid node sends it: ``[False, body]``."""
    return _PACK.encode((False, _PACK.encode(answer)))


def answer_of(payload: bytes) -> int:
    """The int answer in a reply made by `reply` or by a hybrid node; an error for a failed one."""
    failed, body = _UNPACK.decode(payload)
    if failed:
        raise RuntimeError(f"the server answered with an error: {_UNPACK.decode(body)!r}")
    answer = _UNPACK.decode(body)
    if not isinstance(answer, int):
        raise TypeError(f"expected an int answer, got {answer!r}")
    return answer


def _check_plain() -> None:
    if "trio_asyncio" in sys.modules:
        raise RuntimeError("a plain side must not run in a process that imported trio_asyncio (see the docstring)")


# -- the servers -----------------------------------------------------------------------------------


async def serve_plain(url: str) -> None:
    """The baseline server: nats-py on asyncio, a callback answering hybrid's wire format."""
    import nats  # noqa: PLC0415 - the remote extra

    _check_plain()
    nc = await nats.connect(url)  # pyright: ignore[reportUnknownMemberType] - nats-py leaves **options untyped
    notes = 0

    async def on_message(msg: Msg) -> None:
        nonlocal notes
        fields = _UNPACK.decode(msg.data)  # [kind, name, version, body, ...]
        if fields[0] == EVENT:
            notes += 1
        elif fields[1] == PING_NAME:
            await msg.respond(reply(_UNPACK.decode(fields[3])["n"] + 1))
        elif fields[1] == CPU_NAME:
            await msg.respond(reply(process_time_ns()))
        else:
            await msg.respond(reply(notes))

    # nats-py drops what a subscription has not handled past 512k messages (its default): W10 stays far below.
    await nc.subscribe(agent_subject(PLAIN_ECHO), cb=on_message)  # pyright: ignore[reportUnknownMemberType]
    registry = await nc.jetstream().key_value(  # pyright: ignore[reportUnknownMemberType]
        f"hybrid_{CLUSTER}_names"
    )
    await registry.put(f"agent.{PLAIN_ECHO}", SERVER_NODE.encode())
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()


async def serve_hybrid(url: str) -> None:
    """The hybrid server: a node publishing an `Echo` agent as `ECHO`."""
    from hybrid.remote import connect  # noqa: PLC0415 - the remote extra

    async with connect(url, node=SERVER_NODE, cluster=CLUSTER) as node, trio.open_nursery() as nursery:
        address: hybrid.Address[Echo] = await nursery.start(hybrid.AgentRunner(Echo()).run)
        await node.publish(ECHO, address)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


# -- samples ----------------------------------------------------------------------------------------


def _latency_sample(latencies_ns: Sequence[int], total: int) -> Sample:
    n = len(latencies_ns)
    check("W10 sum of the answers", total, n * (n + 1) // 2)
    us = [ns / 1e3 for ns in latencies_ns]
    return {
        "seconds": sum(us) / 1e6,
        "p50_us": percentile(us, 0.5),
        "p99_us": percentile(us, 0.99),
        "mean_us": statistics.fmean(us),
        "answered": n,
    }


def _pipelined_sample(seconds: float, n: int, total: int) -> Sample:
    check("W10 sum of the pipelined answers", total, n * (n + 1) // 2)
    return {"seconds": seconds, "per_s": n / seconds, "answered": n}


def _one_way_sample(t0: float, sent: float, end: float, n: int, counted: int) -> Sample:
    check("W10 events counted by the receiver", counted, n)
    return {"seconds": end - t0, "per_s": n / (end - t0), "sent_per_s": n / (sent - t0), "handled": counted}


def _with_cpu(sample: Sample, n: int, client_ns: int, server_ns: int) -> Sample:
    """`sample` with the CPU time each process used for it, per operation (`n` of them), in µs."""
    return {**sample, "client_cpu_us": client_ns / n / 1e3, "server_cpu_us": server_ns / n / 1e3}


def _shares(n: int) -> list[range]:
    """The requests ``0..n-1`` dealt to `IN_FLIGHT` callers."""
    return [range(k, n, IN_FLIGHT) for k in range(IN_FLIGHT)]


# -- the plain client (asyncio + nats-py) ---------------------------------------------------------


async def _plain_request(nc: Client, subject: str, name: str, fields: dict[str, Any]) -> int:
    msg = await nc.request(subject, envelope(REQUEST, name, fields), timeout=TIMEOUT)
    return answer_of(msg.data)


async def _plain_latency(nc: Client, subject: str, n: int) -> Sample:
    latencies: list[int] = []
    total = 0
    for i in range(n):
        t0 = perf_counter_ns()
        total += await _plain_request(nc, subject, PING_NAME, {"n": i})
        latencies.append(perf_counter_ns() - t0)
    return _latency_sample(latencies, total)


async def _plain_pipelined(nc: Client, subject: str, n: int) -> Sample:
    async def caller(share: range) -> int:
        subtotal = 0
        for i in share:
            subtotal += await _plain_request(nc, subject, PING_NAME, {"n": i})
        return subtotal

    t0 = perf_counter()
    totals = await asyncio.gather(*(caller(share) for share in _shares(n)))
    return _pipelined_sample(perf_counter() - t0, n, sum(totals))


async def _plain_one_way(nc: Client, subject: str, n: int) -> Sample:
    base = await _plain_request(nc, subject, COUNT_NAME, {})
    t0 = perf_counter()
    for i in range(n):
        await nc.publish(subject, envelope(EVENT, NOTE_NAME, {"n": i}))
    sent = perf_counter()
    count = await _plain_request(nc, subject, COUNT_NAME, {})
    return _one_way_sample(t0, sent, perf_counter(), n, count - base)


_PLAIN: Final[dict[str, Callable[[Client, str, int], Awaitable[Sample]]]] = {
    "latency": _plain_latency,
    "pipelined": _plain_pipelined,
    "one_way": _plain_one_way,
}


def plain_sample(url: str, part: str, name: str, n: int) -> Sample:
    """One sample of `part` by a plain nats-py client sending to `name`, in a fresh ``asyncio.run``."""
    import nats  # noqa: PLC0415 - the remote extra

    _check_plain()

    async def main() -> Sample:
        nc = await nats.connect(url)  # pyright: ignore[reportUnknownMemberType] - nats-py leaves **options untyped
        try:
            subject = agent_subject(name)
            for i in range(WARMUP_REQUESTS):
                await _plain_request(nc, subject, PING_NAME, {"n": i})
            server = await _plain_request(nc, subject, CPU_NAME, {})
            client = process_time_ns()
            sample = await _PLAIN[part](nc, subject, n)
            client = process_time_ns() - client
            server = await _plain_request(nc, subject, CPU_NAME, {}) - server
            return _with_cpu(sample, n, client, server)
        finally:
            await nc.close()

    return asyncio.run(main())


# -- the hybrid client (trio + hybrid.remote) -----------------------------------------------------


async def _hybrid_latency(echo: hybrid.Address[Echo], n: int) -> Sample:
    latencies: list[int] = []
    total = 0
    for i in range(n):
        t0 = perf_counter_ns()
        total += await echo.request(Ping(i))
        latencies.append(perf_counter_ns() - t0)
    return _latency_sample(latencies, total)


async def _hybrid_pipelined(echo: hybrid.Address[Echo], n: int) -> Sample:
    totals: list[int] = []

    async def caller(share: range) -> None:
        subtotal = 0
        for i in share:
            subtotal += await echo.request(Ping(i))
        totals.append(subtotal)

    t0 = perf_counter()
    async with trio.open_nursery() as nursery:
        for share in _shares(n):
            nursery.start_soon(caller, share)
    return _pipelined_sample(perf_counter() - t0, n, sum(totals))


async def _hybrid_one_way(echo: hybrid.Address[Echo], n: int) -> Sample:
    base = await echo.request(Count())
    t0 = perf_counter()
    for i in range(n):
        echo.send(Note(i))
    sent = perf_counter()
    count = await echo.request(Count())
    return _one_way_sample(t0, sent, perf_counter(), n, count - base)


_HYBRID: Final[dict[str, Callable[[hybrid.Address[Echo], int], Awaitable[Sample]]]] = {
    "latency": _hybrid_latency,
    "pipelined": _hybrid_pipelined,
    "one_way": _hybrid_one_way,
}


def hybrid_sample(url: str, part: str, name: str, n: int, profiler: cProfile.Profile | None = None) -> Sample:
    """One sample of `part` by a fresh hybrid node sending to `name`, in a fresh ``trio.run``.

    With `profiler`, only the timed operations run under it (not the
    connection, the node's start or the warm-up).
    """
    from hybrid.remote import connect  # noqa: PLC0415 - the remote extra

    async def main() -> Sample:
        async with connect(url, node=f"client-{secrets.token_hex(4)}", cluster=CLUSTER) as node:
            echo = node.lookup(name, Echo)
            for i in range(WARMUP_REQUESTS):
                await echo.request(Ping(i))
            server = await echo.request(Cpu())
            client = process_time_ns()
            if profiler is not None:
                profiler.enable()
            try:
                sample = await _HYBRID[part](echo, n)
            finally:
                if profiler is not None:
                    profiler.disable()
            client = process_time_ns() - client
            server = await echo.request(Cpu()) - server
            return _with_cpu(sample, n, client, server)

    return trio.run(main)


def serve_orders(sample: Callable[[str, str, int], Sample]) -> None:
    """A client's loop: one sample per order on stdin, one JSON line per sample on stdout (see the docstring)."""
    print("ready", flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        gc.collect()
        try:
            answer = sample(order["part"], order["name"], order["n"])
        except Exception as error:  # reported to the bench, which fails the run with it
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the role the command line names (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench._remote_peer", description="a process of W10")
    parser.add_argument("role", choices=["plain", "hybrid", "plain-client", "hybrid-client"])
    parser.add_argument("url")
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile statistics to this file")
    args = parser.parse_args(argv)
    url: str = args.url
    profile: Path | None = args.profile
    profiler = None if profile is None else cProfile.Profile()
    try:
        if args.role == "plain-client":
            serve_orders(lambda part, name, n: plain_sample(url, part, name, n))
        elif args.role == "hybrid-client":
            serve_orders(lambda part, name, n: hybrid_sample(url, part, name, n, profiler))
        else:
            if profiler is not None:
                profiler.enable()
            if args.role == "plain":
                asyncio.run(serve_plain(url))
            else:
                trio.run(serve_hybrid, url)
    finally:
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
