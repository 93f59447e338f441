"""Test-session options.

``--hibernate`` runs the suite with every spawned agent hibernating as soon as it
is idle (``Agent.hibernate_after = 0``): the semantics tests must pass unchanged in
both modes (`.ci/run` runs the actor, supervisor and lifecycle tests this way too).
"""

from __future__ import annotations

import pytest

import hybrid


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hibernate",
        action="store_true",
        help="every spawned agent hibernates as soon as it is idle (Agent.hibernate_after = 0)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--hibernate"):
        hybrid.Agent.hibernate_after = 0
