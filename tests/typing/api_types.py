"""Static typing of the public API: checked by mypy --strict and pyright (strict).

Lines marked ``# type: ignore[...]`` MUST be rejected by the type checkers:
both run with unused-ignore reporting on, so an accepted line fails the check.
tests/test_typing.py also strips these comments and asserts mypy reports
exactly these lines.
"""

from __future__ import annotations

import attrs
import outcome
import trio
from typing_extensions import Self, assert_type

import hybrid
from hybrid import Agent, Next


class Download(Agent[int]):
    def __init__(self, url: str) -> None:
        self.url = url

    def begin(self) -> Next[Self]:
        return Next.do_async(self.fetch, self.url)

    async def fetch(self, url: str) -> Next[Self]:
        return Next.do_sync(self.count, url)

    def count(self, text: str) -> Next[Self]:
        return Next.done(len(text))


class WrongArguments(Agent[int]):
    def begin(self) -> Next[Self]:
        return Next.do_async(self.fetch, 42)  # type: ignore[arg-type]

    def again(self) -> Next[Self]:
        return Next.do_async(self.fetch, "a", "b")  # type: ignore[arg-type]

    def sync_wrong(self) -> Next[Self]:
        return Next.do_sync(self.count, "text")  # type: ignore[arg-type]

    async def fetch(self, url: str) -> Next[Self]:
        return Next.done(0)

    def count(self, size: int) -> Next[Self]:
        return Next.done(size)


@attrs.frozen
class GetCount(hybrid.Request[int]):
    pass


class Counter(Agent):
    @hybrid.on_request
    async def count(self, request: GetCount) -> int:
        return 0

    @hybrid.on_response
    async def got(self, request: GetCount, response: outcome.Outcome[int]) -> None:
        assert_type(response.unwrap(), int)


async def typed_results(nursery: trio.Nursery) -> None:
    address = hybrid.spawn(nursery, Download("u"))
    assert_type(address, hybrid.Address[Download])
    counter = hybrid.spawn(nursery, Counter())
    assert_type(await Download("u").run(), int)
    assert_type(await address.join(), int)
    assert_type(await counter.request(GetCount()), int)
    assert_type(await counter.join(), None)
    not_a_str: str = await counter.request(GetCount())  # type: ignore[arg-type]
    also_not: str = await address.join()  # type: ignore[assignment]
    nor_this: str = await Download("u").run()  # type: ignore[assignment]
    del not_a_str, also_not, nor_this


class Knows(Agent):
    def begin(self) -> Next[Self]:
        assert_type(self.ctx.address, hybrid.Address[Self])
        return Next.events()


class Parent(hybrid.Supervisor):
    def begin(self) -> Next[Self]:
        assert_type(self.ctx, hybrid.SupervisorContext[Self])
        child = self.ctx.spawn(Download("u"))
        assert_type(child, hybrid.Address[Download])
        return Next.events()
