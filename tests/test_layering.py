"""The package's rooms import one way: no module imports one above it (an ast check, as trio checks its _core)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import cast

import hybrid

PACKAGE = Path(hybrid.__file__).parent

# Lowest first. A module may import, at run time, modules of its own layer or below.
LAYERS: list[set[str]] = [
    {"_exceptions", "_stop", "_request", "_validate", "_retry"},  # leaves
    {"_next", "_handlers", "_thread", "_instrument", "_registry", "_checkpointer"},
    {"_breaker", "_waitmap", "_rendezvous", "_lease"},  # coordination on trio alone
    {"_mailbox"},
    {"_runtime"},
    {"_address", "_context", "_timers", "_streams", "_monitors", "_snapshot", "_quorum", "_foreign"},  # handles, quorum
    {"_agent"},
    {"_supervisor", "_pipeline", "_pool", "_topic"},  # built as a third party would build them
    {"__init__"},
    {"__main__"},  # python -m hybrid: service mode's command line
]
# Built on public names only: what they take from a private module must be exported by
# `hybrid`, except from these shared helpers (argument checks, the retry loop).
PUBLIC_ONLY = {"_supervisor", "_pipeline", "_pool", "_topic"}
SHARED_HELPERS = {"_validate", "_retry"}


def layer_of(module: str) -> int:
    for level, members in enumerate(LAYERS):
        if module in members:
            return level
    raise AssertionError(f"hybrid/{module}.py is in no layer: add it to LAYERS (and to the package map)")


def runtime_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(private module, names) for each `from .x import ...` / `from hybrid.x import ...` run at import time."""
    found: list[tuple[str, list[str]]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)  # annotations only: not a dependency at run time
                continue
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = [alias.name for alias in node.names]
                if node.level == 1 and module:
                    found.append((module.split(".")[0], names))
                elif node.level == 1:  # from . import _validate
                    found.extend((name, []) for name in names)
                elif node.level == 2:  # from .. (the testing kit)
                    found.append((module.split(".")[0] or "__init__", names))
            for child in ("body", "orelse", "finalbody", "handlers"):
                inner: object = getattr(node, child, None)
                if isinstance(inner, list) and not isinstance(node, ast.If | ast.ImportFrom):
                    items = cast("list[object]", inner)
                    visit([item for item in items if isinstance(item, ast.stmt)])

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def test_no_module_imports_a_module_above_it() -> None:
    """Each private module imports only modules of its own layer or below (TYPE_CHECKING imports aside)."""
    wrong: list[str] = []
    for path in sorted(PACKAGE.glob("_*.py")):
        level = layer_of(path.stem)
        for module, _ in runtime_imports(path):
            if layer_of(module) > level:
                wrong.append(f"{path.stem} imports {module}")
    assert wrong == []


def test_every_module_is_on_the_package_map() -> None:
    """The package docstring names every private module, so the map stays current."""
    doc = hybrid.__doc__ or ""
    modules = [path.name for path in sorted(PACKAGE.glob("_*.py")) if path.name != "__init__.py"]
    missing = [name for name in modules if name not in doc]
    assert missing == []


def test_supervisor_and_pipeline_use_public_names_only() -> None:
    """What the supervisor and the pipeline take from private modules is exported by hybrid (shared helpers aside)."""
    wrong: list[str] = []
    for stem in sorted(PUBLIC_ONLY):
        for module, names in runtime_imports(PACKAGE / f"{stem}.py"):
            if module in SHARED_HELPERS:
                continue
            wrong += [f"{stem} uses {module}.{name}" for name in names if name not in hybrid.__all__]
    assert wrong == []


def test_the_testing_kit_imports_only_public_names() -> None:
    """hybrid.testing is written against `hybrid` as a user would: no private module imports."""
    for path in sorted((PACKAGE / "testing").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "from .." not in text, path.name
        assert "import hybrid._" not in text, path.name
        assert "from hybrid._" not in text, path.name


def test_the_layering_check_sees_a_downward_import() -> None:
    """The check itself works: an import of the runtime from a leaf would be reported."""
    assert layer_of("_runtime") > layer_of("_validate")
    imports = runtime_imports(PACKAGE / "_agent.py")
    assert ("_runtime", ["ENDED", "STARTING", "Runtime", "current_runtime"]) in imports
