"""A download that retries with exponential backoff, then falls back.

``FlakyServer`` fails a given number of times before it answers. The state
``fetch`` retries under a ``RetryPolicy``; when every try fails, the fallback
chooses the next transition (here: a cached copy) instead of failing the agent.

    python examples/retry_download.py
"""

from __future__ import annotations

import random

import trio
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next


class FlakyServer:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def get(self, url: str) -> str:
        self.calls += 1
        await trio.sleep(0.001)
        if self.calls <= self.failures:
            raise ConnectionError(f"{url}: connection reset (try {self.calls})")
        return f"<html>{url} body</html>"


class Download(Agent[str]):
    def __init__(self, server: FlakyServer, url: str, policy: hybrid.RetryPolicy) -> None:
        self.server = server
        self.url = url
        self.policy = policy

    def begin(self) -> Next[Self]:
        return Next.do_async(self.fetch, self.url).retry(self.policy).timeout(5).fallback(self.use_cache)

    async def fetch(self, url: str) -> Next[Self]:
        return Next.done(await self.server.get(url))

    def use_cache(self, error: Exception) -> Next[Self]:
        print(f"  giving up after {self.server.calls} tries ({error}); using the cached copy")
        return Next.done(f"<html>{self.url} (cached)</html>")


async def main() -> list[str]:
    policy = hybrid.RetryPolicy(attempts=4, initial=0.01, factor=2, max_delay=0.05, jitter=0.1, rng=random.Random(1))
    results: list[str] = []
    for failures in (2, 10):
        server = FlakyServer(failures)
        body = await Download(server, "https://example.org/", policy).run()
        print(f"server failing {failures} times -> {body} after {server.calls} calls")
        results.append(body)
    return results


if __name__ == "__main__":
    trio.run(main)
