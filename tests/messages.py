"""Message types shared by the tests."""

from __future__ import annotations

import attrs

import hybrid


@attrs.frozen
class Ping:
    n: int = 0


@attrs.frozen
class Echo(hybrid.Request[int]):
    n: int = 0


@attrs.frozen
class Boom(hybrid.Request[int]):
    pass
