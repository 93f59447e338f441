"""Static typing of pipelines: stages, chains, runs, merges, checked by mypy --strict and pyright.

Lines marked ``# type: ignore[...]`` MUST be rejected by the type checkers:
both run with unused-ignore reporting on, so an accepted line fails the check.
tests/test_typing.py also strips these comments and asserts mypy reports
exactly these lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio
from typing_extensions import Self, assert_type

import hybrid
from hybrid import Agent, Next, Pipeline, PipelineRun, Stage


@attrs.frozen
class Page:
    url: str
    text: str


class Fetch(Agent[Page]):
    """An agent class taking the item: the common stage."""

    def __init__(self, url: str) -> None:
        self.url = url

    def begin(self) -> Next[Self]:
        return Next.done(Page(self.url, "a b"))


class Links(Agent[list[str]]):
    def __init__(self, page: Page) -> None:
        self.page = page

    def begin(self) -> Next[Self]:
        return Next.done([self.page.url])


async def words(page: Page) -> list[str]:
    return page.text.split()


def count(words: list[str]) -> int:
    return len(words)


def links(page: Page) -> list[str]:
    return [page.url]


async def tokens(page: Page) -> AsyncIterator[str]:
    for token in page.text.split():
        yield token


async def related(url: str) -> list[Page]:
    return [Page(url, "")]


def is_long(word: str) -> bool:
    return len(word) > 3


def crawl(url: str) -> Pipeline[str, Page]:
    return Pipeline(Stage(Fetch), source=[url])


def stages() -> None:
    assert_type(Stage(Fetch), Stage[str, Page])
    assert_type(Stage(words), Stage[Page, list[str]])
    assert_type(Stage(count), Stage[list[str], int])
    assert_type(Stage(str), Stage[object, str])
    assert_type(Stage(links, split=True), Stage[Page, str])
    assert_type(Stage(tokens, split=True), Stage[Page, str])
    assert_type(Stage(related, split=True), Stage[str, Page])
    assert_type(Stage(Links, split=True), Stage[Page, str])
    assert_type(Stage(is_long, filter=True), Stage[str, str])
    assert_type(Stage(crawl), Stage[str, list[Page] | None])
    assert_type(Stage(crawl, split=True), Stage[str, Page])
    options = Stage(Fetch, concurrency=8, retry=hybrid.RetryPolicy(attempts=3), on_error="skip", name="fetch")
    assert_type(options, Stage[str, Page])
    assert_type(Stage(count, in_thread=True), Stage[list[str], int])
    # Contravariant input, covariant output.
    narrower: Stage[str, object] = Stage(str)
    del narrower
    # What a stage cannot be.
    Stage(count, split=True)  # type: ignore[call-overload]
    Stage(is_long, split=True, filter=True)  # type: ignore[call-overload]


async def pipelines(urls: list[str], nursery: trio.Nursery) -> None:
    pipeline = Pipeline(Stage(Fetch), Stage(tokens, split=True), Stage(is_long, filter=True), source=urls)
    assert_type(pipeline, Pipeline[str, str])
    assert_type(await pipeline.run(), list[str] | None)
    assert_type(pipeline.results, list[str])
    address = hybrid.spawn(nursery, pipeline)
    assert_type(await address.join(), list[str] | None)
    assert_type(Pipeline(Stage(Fetch), Stage(str)), Pipeline[str, str])
    six = Pipeline(Stage(Fetch), Stage(words), Stage(count), Stage(str), Stage(is_long, filter=True), Stage(len))
    assert_type(six, Pipeline[str, int])
    # Past six stages the chain is not checked (count takes no str), and the output is Any.
    seven = Pipeline(Stage(Fetch), Stage(str), Stage(str), Stage(str), Stage(str), Stage(str), Stage(count))
    assert_type(seven, Pipeline[str, Any])
    # Lambda stages are accepted, whatever their output.
    Pipeline(Stage(Fetch), Stage(lambda page: page.url), Stage(is_long, filter=True))
    Pipeline(Stage(lambda url: Fetch(url.strip())), Stage(words))
    # A pipeline stage outputs the list of its results.
    assert_type(Pipeline(Stage(crawl, split=True), source=urls), Pipeline[str, Page])
    # What a pipeline cannot be.
    Pipeline(Stage(Fetch), Stage(count))  # type: ignore[misc]
    Pipeline(Stage(count), source=urls)  # type: ignore[misc]
    wrong: list[int] | None = await pipeline.run()  # type: ignore[assignment]
    del wrong


async def runs(urls: list[str]) -> None:
    async with hybrid.open_pipeline(Stage(Fetch, concurrency=4), Stage(words)) as run:
        assert_type(run, PipelineRun[str, list[str]])
        await run.feed("https://example.org")
        await run.feed(42)  # type: ignore[arg-type]
        async for result in run:
            assert_type(result, list[str])
            text: str = result  # type: ignore[assignment]
            del text
    async with (
        hybrid.open_pipeline(Stage(Fetch), source=urls) as first,
        hybrid.open_pipeline(Stage(related, split=True), source=urls) as second,
        hybrid.open_merge(first, second) as merged,
    ):
        assert_type(merged, AsyncIterator[Page])
    async with hybrid.open_pipeline(Stage(Fetch), Stage(is_long)):  # type: ignore[misc]
        pass
