"""A key-value server and a client that asks it questions two ways.

- ``await server.request(Get(...))`` waits for the answer in place;
- ``server.request(Get(...)).forward_to(self.ctx)`` sends now, and the answer
  arrives later at the client's ``@on_response`` handler, in order with its
  other messages. A failed request arrives as ``outcome.Error``.

    python examples/server_client.py
"""

from __future__ import annotations

from typing import Any

import attrs
import outcome
import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next


@attrs.frozen
class Put:
    key: str
    value: int


@attrs.frozen
class Get(hybrid.Request[int]):
    key: str


@attrs.frozen
class Keys(hybrid.Request[list[str]]):
    pass


class Store(Agent):
    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    @hybrid.on_event
    async def put(self, event: Put) -> None:
        self.data[event.key] = event.value

    @hybrid.on_request
    async def get(self, request: Get) -> int:
        return self.data[request.key]  # a KeyError goes back to the caller

    @hybrid.on_request
    async def keys(self, request: Keys) -> list[str]:
        return sorted(self.data)


class Summer(Agent[dict[str, Any]]):
    """Asks for several keys without waiting, and sums the answers as they come."""

    def __init__(self, store: hybrid.Address[Store], keys: list[str]) -> None:
        self.store = store
        self.keys = keys
        self.total = 0
        self.missing: list[str] = []
        self.answers = 0

    def begin(self) -> Next[Self]:
        for key in self.keys:
            self.store.request(Get(key)).forward_to(self.ctx)
        return Next.events()

    @hybrid.on_response
    async def got(self, request: Get, response: outcome.Outcome[int]) -> None:
        try:
            self.total += response.unwrap()
        except KeyError:
            self.missing.append(request.key)
        self.answers += 1
        if self.answers == len(self.keys):
            self.ctx.do_next(Next.done({"total": self.total, "missing": self.missing}))


async def main() -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        store = hybrid.spawn(nursery, Store())
        for key, value in [("a", 1), ("b", 20), ("c", 300)]:
            store.send(Put(key, value))
        print("keys:", await store.request(Keys()))
        print("b =", await store.request(Get("b")))
        try:
            await store.request(Get("nope"))
        except KeyError as error:
            print("missing key raised in the caller:", error)
        summary = await hybrid.spawn(nursery, Summer(store, ["a", "b", "c", "zzz"])).join()
        print("summer:", summary)
        store.interrupt()
        await store.join()
    return summary


if __name__ == "__main__":
    trio.run(main)
