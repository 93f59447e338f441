"""Peers: the same tell and ask workloads on other actor/queue libraries.

Each peer runs in the same process and the same rounds as hybrid, alternately
(hybrid, asyncio, pykka, thespian, hybrid, ...), on the same message objects:

- tell: `n` events to one receiver that counts them; timed until the last is
  handled (the receiver sets an event, as W1 does);
- ask: `n` sequential request/response round trips.

Reported per message (microseconds), with how far hybrid is ahead
(``peer cost / hybrid cost``: above 1, hybrid is faster).

A peer that is not importable is skipped with a note; install the ``bench``
extra to measure them all. Pykka runs on threads (``ThreadingActor``),
Thespian on its ``simpleSystemBase`` (every actor runs in the caller's
thread, synchronously), asyncio with ``asyncio.Queue`` and a future per
request (the idiomatic asyncio request/reply).
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import warnings
from collections.abc import Callable
from time import perf_counter
from typing import Any

import trio
import trio.testing

import hybrid

from . import asyncio_side
from ._harness import Sample, alternate, check, median, ratio, scaled
from .workloads import Ask, Counter, Tick, make_asks, make_ticks

TELL_MESSAGES = 20_000
ASK_REQUESTS = 5_000

PEERS = ("asyncio", "pykka", "thespian")


# -- hybrid, at the peers' sizes ---------------------------------------------------------


def hybrid_tell(messages: list[Tick]) -> Sample:
    async def main() -> Sample:
        done = trio.Event()
        agent = Counter(len(messages), done)
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, agent)
            await trio.testing.wait_all_tasks_blocked()
            start = perf_counter()
            for message in messages:
                address.send(message)
            await done.wait()
            seconds = perf_counter() - start
            address.interrupt()
        return {"seconds": seconds, "handled": agent.count}

    return trio.run(main)


def hybrid_ask(requests: list[Ask]) -> Sample:
    async def main() -> Sample:
        total = 0
        async with trio.open_nursery() as nursery:
            address = hybrid.spawn(nursery, Counter(0))
            await trio.testing.wait_all_tasks_blocked()
            start = perf_counter()
            for req in requests:
                total += await address.request(req)
            seconds = perf_counter() - start
            address.interrupt()
        return {"seconds": seconds, "total": total}

    return trio.run(main)


# -- asyncio -----------------------------------------------------------------------------


# The tell side is the asyncio W1 (`asyncio_side.asyncio_tell`). This ask is timed as a
# whole, as the other peers' are, where W2's records each request's latency.
def asyncio_ask(requests: list[Ask]) -> Sample:
    async def main() -> Sample:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Ask, asyncio.Future[int]]] = asyncio.Queue()

        async def server() -> None:
            while True:
                req, future = await queue.get()
                future.set_result(req.value + 1)

        task = asyncio.create_task(server())
        await asyncio.sleep(0)
        total = 0
        start = perf_counter()
        for req in requests:
            future = loop.create_future()
            queue.put_nowait((req, future))
            total += await future
        seconds = perf_counter() - start
        task.cancel()
        return {"seconds": seconds, "total": total}

    return asyncio.run(main())


# -- pykka ---------------------------------------------------------------------------------


def _pykka_actor_class() -> Any:
    import pykka  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - an optional peer

    class PykkaCounter(pykka.ThreadingActor):  # type: ignore[misc, unused-ignore]
        def __init__(self, target: int, done: threading.Event | None) -> None:
            super().__init__()
            self.count = 0
            self.target = target
            self.done = done

        def on_receive(self, message: Any) -> Any:
            if type(message) is Tick:
                self.count += 1
                if self.count == self.target and self.done is not None:
                    self.done.set()
                return None
            return message.value + 1

    return PykkaCounter


def pykka_tell(messages: list[Tick]) -> Sample:
    done = threading.Event()
    ref = _pykka_actor_class().start(len(messages), done)
    try:
        tell = ref.tell
        start = perf_counter()
        for message in messages:
            tell(message)
        finished = done.wait(timeout=120)
        seconds = perf_counter() - start
        count = ref.proxy().count.get() if finished else -1
    finally:
        ref.stop()
    return {"seconds": seconds, "handled": count}


def pykka_ask(requests: list[Ask]) -> Sample:
    ref = _pykka_actor_class().start(0, None)
    try:
        ask = ref.ask
        total = 0
        start = perf_counter()
        for req in requests:
            total += ask(req, timeout=60)
        seconds = perf_counter() - start
    finally:
        ref.stop()
    return {"seconds": seconds, "total": total}


# -- thespian ------------------------------------------------------------------------------


def _thespian_system() -> Any:
    from thespian.actors import Actor, ActorSystem  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: PLC0415 - an optional peer

    class ThespianCounter(Actor):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def receiveMessage(self, message: Any, sender: Any) -> None:  # Thespian's API
            if type(message) is Tick:
                self.count += 1
            elif type(message) is Ask:
                self.send(sender, message.value + 1)
            elif message == "count":
                self.send(sender, self.count)

    system = ActorSystem("simpleSystemBase", logDefs=False, transientUnique=True)
    return system, system.createActor(ThespianCounter)


def thespian_tell(messages: list[Tick]) -> Sample:
    system, actor = _thespian_system()
    try:
        tell = system.tell
        start = perf_counter()
        for message in messages:
            tell(actor, message)
        count = system.ask(actor, "count", 60)  # also the "all handled" signal
        seconds = perf_counter() - start
    finally:
        system.shutdown()
    return {"seconds": seconds, "handled": count}


def thespian_ask(requests: list[Ask]) -> Sample:
    system, actor = _thespian_system()
    try:
        ask = system.ask
        total = 0
        start = perf_counter()
        for req in requests:
            total += ask(actor, req, 60)
        seconds = perf_counter() - start
    finally:
        system.shutdown()
    return {"seconds": seconds, "total": total}


# -- running them --------------------------------------------------------------------------

TELL: dict[str, Callable[[list[Tick]], Sample]] = {
    "hybrid": hybrid_tell,
    "asyncio": asyncio_side.asyncio_tell,
    "pykka": pykka_tell,
    "thespian": thespian_tell,
}
ASK: dict[str, Callable[[list[Ask]], Sample]] = {
    "hybrid": hybrid_ask,
    "asyncio": asyncio_ask,
    "pykka": pykka_ask,
    "thespian": thespian_ask,
}


def available() -> dict[str, str | None]:
    """Peer name -> None if importable, else why it is skipped."""
    notes: dict[str, str | None] = {}
    for peer in PEERS:
        if peer == "asyncio":
            notes[peer] = None
            continue
        try:
            found = importlib.util.find_spec(peer) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            notes[peer] = (
                f"{peer} is not installed (pip install -e '.[bench]' from the repository, or pip install {peer})"
            )
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a peer's own deprecation warnings are not ours
                __import__("thespian.actors" if peer == "thespian" else peer)
        except Exception as error:
            notes[peer] = f"{peer} is installed but does not import: {error!r}"
        else:
            notes[peer] = None
    return notes


def run_peers(size: float, rounds: int, warmup: int, only: list[str] | None = None) -> dict[str, Any]:
    """Measure hybrid and every importable peer; the ``peers`` entry of the results."""
    tell_n = scaled(TELL_MESSAGES, size)
    ask_n = scaled(ASK_REQUESTS, size)
    messages = make_ticks(tell_n)
    requests = make_asks(ask_n)
    expected_total = sum(r.value + 1 for r in requests)
    notes = available()
    running = ["hybrid"] + [p for p in PEERS if notes[p] is None and (only is None or p in only)]

    def tell_side(name: str) -> Callable[[], Sample]:
        def run() -> Sample:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                sample = TELL[name](messages)
            check(f"{name} tell handled", sample["handled"], tell_n)
            sample["us_per_msg"] = sample["seconds"] / tell_n * 1e6
            return sample

        return run

    def ask_side(name: str) -> Callable[[], Sample]:
        def run() -> Sample:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                sample = ASK[name](requests)
            check(f"{name} ask answers", sample["total"], expected_total)
            sample["us_per_msg"] = sample["seconds"] / ask_n * 1e6
            return sample

        return run

    tell = alternate({name: tell_side(name) for name in running}, rounds, warmup)
    ask = alternate({name: ask_side(name) for name in running}, rounds, warmup)
    hybrid_tell_us = median(tell["hybrid"], "us_per_msg")
    hybrid_ask_us = median(ask["hybrid"], "us_per_msg")
    results: dict[str, Any] = {
        "params": {"tell_messages": tell_n, "ask_requests": ask_n},
        "hybrid": {"tell_us": hybrid_tell_us, "ask_us": hybrid_ask_us},
        "ratio_def": "peer cost per message / hybrid cost per message (above 1: hybrid is ahead)",
    }
    for peer in PEERS:
        if peer in running:
            tell_us = median(tell[peer], "us_per_msg")
            ask_us = median(ask[peer], "us_per_msg")
            results[peer] = {
                "measured": True,
                "tell_us": tell_us,
                "ask_us": ask_us,
                "tell_ahead": ratio(tell_us, hybrid_tell_us),
                "ask_ahead": ratio(ask_us, hybrid_ask_us),
            }
        else:
            results[peer] = {"measured": False, "note": notes[peer] or "not selected"}
    return results
