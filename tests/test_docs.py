"""The documentation's code runs: every complete program in docs/ is executed.

A fenced ``python`` block in ``docs/**/*.md`` that calls ``trio.run(`` (or
``hybrid.testing.run(``) is a complete
program: it is executed in a fresh namespace (``__name__ == "__main__"``) and must
finish without error, quickly. When such a block is followed directly by a ``text``
block, that block is the program's expected output and must match what it printed.
Blocks without ``trio.run(`` are fragments and are not executed.

Every ``--8<--`` include in the docs must name a file that exists.
"""

from __future__ import annotations

import logging
import re
import textwrap
import time
from pathlib import Path

import attrs
import pytest

import hybrid

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# A block runs in well under a second; the margin is for a loaded test machine.
TIME_LIMIT = 2.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\n`]*)$")
_INCLUDE = re.compile(r"""^[ \t]*-{2}8<-{2}[ \t]+(["'])(?P<target>[^"']+)\1[ \t]*$""")


@attrs.frozen
class Block:
    path: Path
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(DOCS).as_posix()}:{self.line}"


@attrs.frozen
class Program:
    block: Block
    expected_output: str | None


def _markdown_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _closes(line: str, indent: str, fence: str) -> bool:
    """Whether `line` closes a block opened by `fence` at `indent`."""
    bare = line.strip()
    return line.startswith(indent) and bare.startswith(fence) and bare.strip(fence[0]) == ""


def _blocks(path: Path) -> list[Block | str]:
    """The fenced blocks of `path`, with the non-blank prose lines between them."""
    lines = path.read_text(encoding="utf-8").splitlines()
    items: list[Block | str] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                items.append(lines[i])
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        language = match["info"].strip().split(" ", 1)[0].lower() if match["info"].strip() else ""
        start = i + 1
        i = start
        while i < len(lines) and not _closes(lines[i], indent, fence):
            i += 1
        body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[start:i]]
        items.append(Block(path, start, language, textwrap.dedent("\n".join(body)) + "\n"))
        i += 1
    return items


def _programs() -> list[Program]:
    programs: list[Program] = []
    for path in _markdown_files():
        items = _blocks(path)
        for index, item in enumerate(items):
            if not isinstance(item, Block) or item.language not in ("python", "py"):
                continue
            if "trio.run(" not in item.code and "hybrid.testing.run(" not in item.code:
                continue
            following = items[index + 1] if index + 1 < len(items) else None
            expected = following.code if isinstance(following, Block) and following.language == "text" else None
            programs.append(Program(item, expected))
    return programs


def _includes() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in _markdown_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = _INCLUDE.match(line)
            if match is not None:
                found.append((f"{path.relative_to(DOCS).as_posix()}:{number}", match["target"]))
    return found


PROGRAMS = _programs()
INCLUDES = _includes()


def test_the_docs_contain_runnable_programs() -> None:
    """The collection below is not silently empty (a broken parser would skip everything)."""
    assert len(PROGRAMS) >= 20


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.block.id for p in PROGRAMS])
def test_a_complete_program_in_the_docs_runs_and_prints_what_the_docs_show(
    program: Program, capsys: pytest.CaptureFixture[str]
) -> None:
    """A python block that calls trio.run runs without error, fast, and prints its shown output."""
    block = program.block
    code = compile(block.code, f"{block.path}:{block.line}", "exec")
    namespace = {"__name__": "__main__", "__file__": str(block.path)}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    started = time.perf_counter()
    try:
        exec(code, namespace)
    finally:
        # A program may configure logging (the logging guide does): leave it as it was.
        root.handlers[:] = handlers
        root.setLevel(level)
    elapsed = time.perf_counter() - started
    printed = capsys.readouterr().out
    assert elapsed < TIME_LIMIT, f"{block.id} took {elapsed:.2f}s; doc programs must be fast"
    if program.expected_output is not None:
        expected = [line.rstrip() for line in program.expected_output.strip("\n").splitlines()]
        assert [line.rstrip() for line in printed.strip("\n").splitlines()] == expected


@pytest.mark.parametrize(("where", "target"), INCLUDES, ids=[where for where, _ in INCLUDES])
def test_every_snippet_include_in_the_docs_names_a_file_that_exists(where: str, target: str) -> None:
    """A --8<-- include points at an existing file (relative to the repository root)."""
    path = target
    if not (ROOT / path).is_file() and ":" in path:
        path = path.split(":", 1)[0]  # "file.py:section" or "file.py:3:10"
    assert (ROOT / path).is_file(), f"{where}: --8<-- {target!r} does not exist"


def test_the_include_parser_finds_the_examples_page_includes() -> None:
    """The examples page is built from includes; the include test would be vacuous without them."""
    assert any(where.startswith("examples.md:") for where, _ in INCLUDES)


def test_every_public_name_has_a_reference_entry() -> None:
    """Each name in hybrid.__all__ is documented by a `::: hybrid.NAME` block under docs/reference/."""
    documented: set[str] = set()
    for path in sorted((DOCS / "reference").glob("*.md")):
        documented.update(re.findall(r"^::: hybrid\.(\w+)\s*$", path.read_text(encoding="utf-8"), re.MULTILINE))
    assert sorted(set(hybrid.__all__) - documented) == []
    assert sorted(documented - set(hybrid.__all__)) == []


def test_every_example_program_is_shown_on_the_examples_page() -> None:
    """Each examples/*.py file is included in docs/examples.md, so the docs show all the examples."""
    included = {target for where, target in INCLUDES if where.startswith("examples.md:")}
    examples = {f"examples/{path.name}" for path in (ROOT / "examples").glob("*.py")}
    assert sorted(examples - included) == []
