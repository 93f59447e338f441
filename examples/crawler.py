"""A small crawler and indexer: a fetch -> parse -> store pipeline.

It crawls a built-in synthetic web (no network): each page has some words and
links to other pages. New links found on a page are fed back into the
pipeline, so the crawl runs until every reachable page is indexed. A progress
line on stderr shows each stage's counters while it runs, and their final
values at the end (every page in and out of every stage, none left in flight).

    python examples/crawler.py [--pages N] [--seconds-per-fetch S]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict, deque

import attrs
import trio
import trio.lowlevel
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Stage

WORDS: list[str] = ["trio", "nursery", "agent", "actor", "state", "supervisor", "pipeline", "message"]
Web = dict[str, tuple[list[str], list[str]]]


def synthetic_web(pages: int, seed: int = 7) -> Web:
    """url -> (words, links): every page is reachable from /0."""
    rng = random.Random(seed)
    web: Web = {}
    for n in range(pages):
        words = rng.sample(WORDS, 3)
        links = {f"/{(n + 1) % pages}"} | {f"/{rng.randrange(pages)}" for _ in range(2)}
        web[f"/{n}"] = (words, sorted(links))
    return web


@attrs.frozen
class Html:
    url: str
    body: str


@attrs.frozen
class Page:
    url: str
    words: list[str]
    links: list[str]


class Fetch(Agent[Html]):
    """An agent per URL: in a real crawler, the HTTP client with its retries lives here."""

    def __init__(self, url: str, web: Web, latency: float) -> None:
        self.url = url
        self.web = web
        self.latency = latency

    def begin(self) -> Next[Self]:
        return Next.do_async(self.get).timeout(5)

    async def get(self) -> Next[Self]:
        await trio.sleep(self.latency)
        words, links = self.web[self.url]
        body = " ".join(words) + " " + " ".join(f"<a:{link}>" for link in links)
        return Next.done(Html(self.url, body))


def parse(html: Html) -> Page:
    words = [token for token in html.body.split() if not token.startswith("<")]
    links = [token[3:-1] for token in html.body.split() if token.startswith("<a:")]
    return Page(html.url, words, links)


class Index:
    def __init__(self) -> None:
        self.postings: defaultdict[str, set[str]] = defaultdict(set)

    async def store(self, page: Page) -> Page:
        await trio.lowlevel.checkpoint()  # a database write
        for word in page.words:
            self.postings[word].add(page.url)
        return page


def progress_line(run: hybrid.PipelineRun) -> str:
    """One line of stage counters: items out/in, in flight, queued."""
    return "  ".join(
        f"{s.name}: {s.items_out}/{s.items_in} (in flight {s.in_flight}, queued {s.buffer_depth})"
        for s in run.statistics()
    )


async def show_progress(run: hybrid.PipelineRun, every: float) -> None:
    """Redraw the progress line on stderr every `every` seconds, in place."""
    while True:
        await trio.sleep(every)
        print(f"\r{progress_line(run)}", end="", file=sys.stderr, flush=True)


async def main(pages: int = 60, latency: float = 0.01, progress: float = 0.25) -> dict[str, set[str]]:
    web = synthetic_web(pages)
    index = Index()
    seen = {"/0"}
    to_feed: deque[str] = deque(["/0"])
    more = trio.Event()
    outstanding = 1

    async with (
        hybrid.open_pipeline(
            Stage(lambda url: Fetch(url, web, latency), concurrency=8, name="Fetch"),
            Stage(parse),
            Stage(index.store, concurrency=2, name="store"),
            buffer=8,
            ordered=False,
        ) as run,
        trio.open_nursery() as nursery,
    ):

        async def feeder() -> None:
            nonlocal more
            while True:
                while to_feed:
                    await run.feed(to_feed.popleft())
                await more.wait()
                more = trio.Event()

        nursery.start_soon(feeder)
        if progress:
            nursery.start_soon(show_progress, run, progress)
        async for page in run:  # never blocks on feeding: the feeder does that
            outstanding -= 1
            for link in page.links:
                if link not in seen:
                    seen.add(link)
                    to_feed.append(link)
                    outstanding += 1
            more.set()
            if outstanding == 0:
                run.close()
                nursery.cancel_scope.cancel()
    if progress:
        # The final counters, over the last redrawn line: every page in, every page out.
        print(f"\r{progress_line(run)}", file=sys.stderr, flush=True)
    print(f"indexed {len(seen)} pages; top words:")
    for word, urls in sorted(index.postings.items(), key=lambda kv: -len(kv[1]))[:5]:
        print(f"  {word:12} {len(urls)} pages")
    return dict(index.postings)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--seconds-per-fetch", type=float, default=0.02)
    arguments = parser.parse_args()
    trio.run(main, arguments.pages, arguments.seconds_per_fetch)
