"""Helpers for testing agents: simulated time, recordings, waiting for idleness.

- `run`: run an async function under `trio.testing.MockClock` with autojump, so
  that a one-hour backoff takes milliseconds (pytest-trio users have the
  ``autojump_clock`` fixture for the same).
- `Recorder`: record every transition, message and ending of agents, with the
  (simulated) time, for assertions.
- `wait_idle`: wait until every task is blocked and the given agents have
  empty mailboxes.
"""

from ._kit import Record as Record
from ._kit import Recorder as Recorder
from ._kit import run as run
from ._kit import wait_idle as wait_idle

__all__ = ["Record", "Recorder", "run", "wait_idle"]

Record.__module__ = Recorder.__module__ = run.__module__ = wait_idle.__module__ = "hybrid.testing"
