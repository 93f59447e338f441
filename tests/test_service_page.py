"""The live page at ``/``: a self-contained document, rendered by a real headless Chromium against the CLI."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
from pathlib import Path

import attrs
import pytest
import trio

from hybrid.service._page import PAGE
from tests.service_process import PATIENCE, get, open_service

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


@attrs.define
class Row:
    name: str
    level: int
    phase_class: str
    cells: dict[str, str] = attrs.field(factory=dict[str, str])


class Rows(html.parser.HTMLParser):
    """The agent rows of a dumped DOM: each ``<tr data-name>`` with its cells by class."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self.cell: str | None = None
        self.status = ""
        self.in_status = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and "data-name" in found:
            self.rows.append(Row(found["data-name"] or "", int(found["data-level"] or 0), found["class"] or ""))
        elif tag == "td" and self.rows:
            self.cell = (found["class"] or "").split()[-1]
            self.rows[-1].cells[self.cell] = ""
        elif found.get("id") == "status":
            self.in_status = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.cell = None
        elif tag == "p":
            self.in_status = False

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.rows[-1].cells[self.cell] += data
        elif self.in_status:
            self.status += data


@pytest.fixture
def chromium() -> str:
    """The Chromium binary; missing, the test fails in CI (.ci/run installs it) and is skipped elsewhere."""
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed: CI must test the live page (.ci/run installs the Debian package)")
        pytest.skip("chromium is not installed (apt-get install chromium): the live page is not rendered here")
    return CHROMIUM


async def test_the_live_page_shows_every_agent_of_a_three_level_tree_with_its_phase_and_state(
    chromium: str, tmp_path: Path
) -> None:
    """Headless Chromium loads / from `hybrid run --http`, runs its script, and the DOM holds the tree."""
    async with open_service("tests.service_apps:make_tree", "--http", "127.0.0.1:0") as svc:
        port = await svc.port()
        with trio.fail_after(PATIENCE):
            while True:  # until the whole tree has started
                tree = json.loads((await get(port, "/tree")).body)
                if tree["status"] == "ready" and len(tree["agents"][0]["children"][1]["children"]) == 3:
                    break
                await trio.sleep(0.05)
        with trio.fail_after(PATIENCE * 3):
            browser = await trio.run_process(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    f"--user-data-dir={tmp_path}",
                    "--virtual-time-budget=5000",
                    "--dump-dom",
                    f"http://127.0.0.1:{port}/",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert browser.returncode == 0, browser.stderr.decode(errors="replace")
    parser = Rows()
    parser.feed(browser.stdout.decode())
    rows = {row.name: row for row in parser.rows}
    workers = [f"App-1/workers/Worker-{n}" for n in (1, 2, 3)]
    assert list(rows) == ["App-1", "App-1/store", "App-1/workers", *workers, "App-1/front"]
    assert [rows[name].level for name in rows] == [0, 1, 1, 2, 2, 2, 1]
    for name in ("App-1", "App-1/store", "App-1/workers", "App-1/front"):
        assert (rows[name].cells["phase"], rows[name].cells["state"]) == ("events", "")
    for name in workers:
        row = rows[name]
        assert row.phase_class == "agent phase-state"
        assert (row.cells["phase"], row.cells["state"]) == ("state", "Next.do_async(Worker.serve_jobs)")
        assert row.cells["class"] == "Worker"
        assert row.cells["mailbox"] == "0 / 8"
        assert row.cells["restarts"] == "0"
        assert row.cells["name"].endswith(name.rsplit("/", 1)[1])  # shown under its parent by its own name
    assert rows["App-1/store"].cells["name"] == "\u2514 store"
    assert parser.status.startswith("ready \u00b7 7 agents \u00b7 updated ")


def test_the_page_is_one_self_contained_document() -> None:
    """No CDN, no build step: no external URL, no script or style file; tree data set as text, never as HTML."""
    assert PAGE.startswith("<!doctype html>")
    assert "http://" not in PAGE and "https://" not in PAGE
    assert "src=" not in PAGE and "<link" not in PAGE
    assert 'fetch("tree"' in PAGE
    assert "innerHTML" not in PAGE and "outerHTML" not in PAGE and "insertAdjacentHTML" not in PAGE
