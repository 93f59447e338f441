"""The outer modules (diagrams, slowsteps, metrics, tracing, service, codec, durable, remote) use public names only.

The core never imports them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import hybrid
from tests.test_layering import PACKAGE

OUTER = ["diagrams", "slowsteps", "metrics", "tracing", "service", "codec", "durable", "remote"]
ALLOWED_PRIVATE = {"_validate"}  # the argument checks every entry point shares
SEAMS = {"remote": {"_foreign"}}  # the core's seam to agents of other processes, for hybrid.remote only


def outer_files() -> list[Path]:
    files: list[Path] = []
    for name in OUTER:
        if (PACKAGE / name).is_dir():
            files += sorted((PACKAGE / name).rglob("*.py"))
        elif (PACKAGE / f"{name}.py").exists():
            files.append(PACKAGE / f"{name}.py")
    return files


def hybrid_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import of hybrid in `path`, relative imports resolved."""
    found: list[tuple[str, list[str]]] = []
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "hybrid" or module.startswith("hybrid."):
                found.append((module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("hybrid")]
    return found


def test_outer_modules_use_public_names_only() -> None:
    wrong: list[str] = []
    assert len(outer_files()) >= 3
    for path in outer_files():
        allowed = ALLOWED_PRIVATE | SEAMS.get(path.relative_to(PACKAGE).parts[0], set())
        for module, names in hybrid_imports(path):
            if module == "hybrid":
                private = [name for name in names if name.startswith("_") and name not in allowed]
                wrong += [f"{path.name} imports hybrid.{name}" for name in private]
                wrong += [
                    f"{path.name} imports hybrid.{n} (not exported)"
                    for n in names
                    if n not in private and not n.startswith("_") and n not in hybrid.__all__ and n not in OUTER
                ]
            else:
                first = module.split(".")[1]
                if first.startswith("_") and first not in allowed:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert wrong == []


def test_only_the_remote_package_uses_the_foreign_seam() -> None:
    """hybrid._foreign is imported by hybrid.remote, and by no other outer module."""
    users = {
        path.relative_to(PACKAGE).parts[0]
        for path in outer_files()
        for module, names in hybrid_imports(path)
        if module == "hybrid._foreign" or (module == "hybrid" and "_foreign" in names)
    }
    assert users == {"remote"}


def test_importing_hybrid_imports_no_outer_module_nor_their_libraries() -> None:
    code = (
        "import sys, hybrid, hybrid.testing\n"
        "outer = [m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'h11', 'opentelemetry', 'msgspec', 'psycopg', 'nats', 'trio_asyncio', 'greenlet')"
        " or m in "
        f"{[f'hybrid.{name}' for name in OUTER]!r}]\n"
        "print(outer)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
