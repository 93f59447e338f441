"""The options of `serve` that the HTTP side reads (no third-party import here)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TypeAlias

import attrs

__all__ = ["DiagramSource", "HttpLimits"]

DiagramSource: TypeAlias = Callable[[], Mapping[str, str]]
"""Gives the state diagrams that ``/tree`` carries under ``"diagrams"``.

Called without arguments on the trio thread for each ``/tree`` request (the
live page asks once a second); returns a mapping from an agent class, as
``AgentInfo.agent_class`` names it, to the source of its diagram (Mermaid
text). Classes it leaves out have no diagram. The bound method ``as_dict`` of
a registered `hybrid.diagrams.StateDiagrams` instrument is one.
"""


def _positive_seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"HttpLimits.{attribute.name} must be a positive number of seconds, got {value!r}")


def _positive_count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"HttpLimits.{attribute.name} must be an int >= 1, got {value!r}")


@attrs.frozen
class HttpLimits:
    """The bounds that keep service mode's HTTP endpoints from hurting the agents.

    The server runs in the agents' trio run, so each bound is there to make
    sure that no client, slow or hostile, can hold memory or time the agents
    need. The defaults suit an endpoint scraped by Prometheus and probed by
    Kubernetes; lower the timeouts in tests.

    Attributes:
        max_connections: connections served at once. Beyond it a new
            connection is closed as soon as it is accepted (the client sees the
            connection closed or reset; one WARNING is logged each time the
            limit is reached), rather than queued: memory stays bounded and
            the listener never stops accepting, so the server recovers as
            soon as connections end (idle ones end after `idle_timeout`).
        idle_timeout: seconds a connection, new or kept alive after a
            response, may wait before the first byte of its next request;
            then it is closed.
        request_timeout: seconds from a request's first byte until its head
            is complete (a client trickling bytes is answered 408 and closed
            then), and the bound on sending a response to a client that does
            not read it.
        max_header_bytes: the largest request head (request line and
            headers) accepted; a larger one is answered 431 and the
            connection closed. Memory per connection stays under this plus one
            64 KiB read.

    Raises:
        ValueError: a bound that is not positive.
    """

    max_connections: int = attrs.field(default=1000, validator=_positive_count)
    idle_timeout: float = attrs.field(default=5.0, validator=_positive_seconds)
    request_timeout: float = attrs.field(default=10.0, validator=_positive_seconds)
    max_header_bytes: int = attrs.field(default=16 * 1024, validator=_positive_count)
