"""mypy rejects misuse of the API: wrong state arguments, wrong result types, mismatched pipeline stages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

TYPING = Path(__file__).parent / "typing"
IGNORE = re.compile(r"\s*# type: ignore\[([a-z-]+)\]")


@pytest.mark.parametrize(
    ("name", "at_least"),
    [
        ("api_types.py", 6),  # do_async/do_sync arguments, request/join/run results
        ("pipeline_types.py", 8),  # split/filter, stage chains, source, run result, feed, iteration
    ],
)
def test_mypy_rejects_exactly_the_lines_marked_as_wrong(tmp_path: Path, name: str, at_least: int) -> None:
    source = (TYPING / name).read_text()
    expected = {
        number: match.group(1)
        for number, line in enumerate(source.splitlines(), start=1)
        if (match := IGNORE.search(line))
    }
    assert len(expected) >= at_least
    stripped = tmp_path / name
    stripped.write_text(IGNORE.sub("", source))
    stdout, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--show-error-codes", "--no-error-summary", str(stripped)]
    )
    assert status == 1, stdout
    # Messages name the public API (hybrid.Stage), never the private module defining it.
    assert "hybrid._" not in stdout, stdout
    reported: dict[int, set[str]] = {}
    for line in stdout.splitlines():
        found = re.match(rf"{re.escape(str(stripped))}:(\d+): error: .*\[([a-z-]+)\]$", line)
        if found:
            reported.setdefault(int(found.group(1)), set()).add(found.group(2))
    assert set(reported) == set(expected), stdout
    for number, code in expected.items():
        assert code in reported[number], (number, stdout)
