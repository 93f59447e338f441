"""The command line: ``hybrid run MODULE:FACTORY [options]`` (also ``python -m hybrid run ...``).

The app spec follows uvicorn's convention: ``MODULE:ATTRIBUTE``, the module
imported from the current directory (``--app-dir``) or ``sys.path``, the
attribute a dotted path inside it. Every way the start can go wrong ends the
process with status 3 and one line on stderr, ``hybrid: error: ...``, without
a traceback; usage errors keep argparse's status 2.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import platform
import reprlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

import attrs
import trio
from typing_extensions import TypeIs

import hybrid
import hybrid.diagrams

from ._logging import configure_logging
from ._serve import ExitStatus, StartupError, check, run_service

__all__ = ["main"]

DEFAULT_HOST = "127.0.0.1"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXTRA_HINT = "pip install 'trio-hybrid[service]'"

DESCRIPTION = """\
Run the agent that FACTORY() returns (usually a hybrid.Supervisor) until it ends.

MODULE:FACTORY names a function of no arguments that returns an agent (it may
be async), or an Agent class, as uvicorn names an app: "myapp.main:make_app".

signals:
  SIGINT, SIGTERM   the first interrupts the root agent (ordered, graceful
                    shutdown); a second cancels everything
  SIGUSR1           logs the tree of agents (INFO, logger hybrid.service)

exit status:
  0    the root agent ended done or interrupted
  1    the root agent failed (its error is logged with its traceback)
  2    bad command line
  3    startup failed (bad app spec, factory error, port in use, ...)
  130  cut short by a second signal
"""

HTTP_HELP = """\
serve /metrics, /health/live, /health/ready, /tree and a live page at /
on [HOST:]PORT (HOST defaults to 127.0.0.1; PORT 0 picks a free port;
an IPv6 HOST goes in brackets: [::1]:8000); needs the service extra"""


@attrs.frozen
class Options:
    """The parsed ``hybrid run`` command line."""

    app: str
    http: tuple[str, int] | None
    log_level: str
    log_format: Literal["text", "json"]
    check: bool
    slow_step: float | None
    app_dir: str
    diagrams: bool = True


def parse_http(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); argparse reports the error (status 2)."""
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: an IPv6 host goes in brackets, as in [::1]:8000")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not [HOST:]PORT (the port must be a number)") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be between 0 and 65535")
    return host or DEFAULT_HOST, number


def parse_seconds(text: str) -> float:
    """A positive, finite number of seconds; argparse reports the error (status 2)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def make_parser() -> argparse.ArgumentParser:
    """The ``hybrid`` argument parser, with its ``run`` command."""
    version = f"hybrid {hybrid.__version__} (trio-hybrid; Python {platform.python_version()}, trio {trio.__version__})"
    parser = argparse.ArgumentParser(prog="hybrid", description="hybrid's command line: service mode.")
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run an agent tree as a service",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("app", metavar="MODULE:FACTORY", help="the factory of the root agent, e.g. myapp.main:make_app")
    run.add_argument("--http", metavar="[HOST:]PORT", type=parse_http, help=HTTP_HELP)
    run.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LEVELS,
        metavar="LEVEL",
        help="the root logger's level: DEBUG, INFO (the default), WARNING, ERROR or CRITICAL",
    )
    run.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="text (the default): 'time LEVEL logger: message'; json: one JSON object per line",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="build the tree (start every agent), print it, stop it and exit: 0 if it built, 3 if not",
    )
    run.add_argument(
        "--slow-step",
        metavar="SECONDS",
        type=parse_seconds,
        help="log (WARNING, logger hybrid.slowsteps) each step that holds the trio thread SECONDS or more",
    )
    run.add_argument(
        "--no-diagrams",
        dest="diagrams",
        action="store_false",
        help="with --http: do not record the agents' transitions for the state diagrams in /tree "
        "(recording costs a call per transition)",
    )
    run.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="look for MODULE in DIR first (put first on sys.path); default: the current directory",
    )
    return parser


def parse(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line; argparse exits with status 2 (or 0 for --help, --version) itself."""
    arguments = make_parser().parse_args(argv)
    return Options(
        app=arguments.app,
        http=arguments.http,
        log_level=arguments.log_level,
        log_format=arguments.log_format,
        check=arguments.check,
        slow_step=arguments.slow_step,
        app_dir=arguments.app_dir,
        diagrams=arguments.diagrams,
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``hybrid`` command: parse `argv` (default ``sys.argv[1:]``), run, exit with the `ExitStatus`."""
    options = parse(argv)
    undo = configure_logging(options.log_level, options.log_format)
    try:
        status = run(options)
    finally:
        undo()
    sys.exit(status)


def run(options: Options) -> ExitStatus:
    """Load the app, run it (or ``--check`` it) under `trio.run`, and return the exit status."""
    try:
        if options.http is not None:
            require_http_extras()
        factory = load(options.app, options.app_dir)
        return trio.run(run_async, options, factory)
    except StartupError as error:
        print(f"hybrid: error: {error}", file=sys.stderr, flush=True)
        return ExitStatus.STARTUP_FAILED


async def run_async(options: Options, factory: Callable[[], object]) -> ExitStatus:
    root = await build(factory, options.app)
    if options.check:
        return await check(root)
    diagrams = None
    if options.http is not None and options.diagrams:
        recorder = hybrid.diagrams.StateDiagrams()
        hybrid.add_instrument(recorder)
        diagrams = recorder.as_dict
    return await run_service(root, http=options.http, slow_step=options.slow_step, diagrams=diagrams)


def require_http_extras() -> None:
    """Fail early, before anything is imported or built, when --http cannot work."""
    try:
        for module in ("h11", "prometheus_client"):
            importlib.import_module(module)
    except ImportError as error:
        raise StartupError(f"--http needs h11 and prometheus-client ({error}): {EXTRA_HINT}") from None


def load(spec: str, app_dir: str) -> Callable[[], object]:
    """Import ``MODULE:ATTRIBUTE`` and return the attribute, which must be callable.

    Raises:
        StartupError: a malformed spec, a module that cannot be imported or
            raises on import, a missing attribute, or one that is not callable.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise StartupError(f"{spec!r} is not MODULE:FACTORY (e.g. myapp.main:make_app)")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name + ".").startswith(error.name + "."):
            raise StartupError(f"cannot import {module_name!r}: no module named {error.name!r}") from None
        raise StartupError(raised(f"importing {module_name!r}", error)) from None
    except Exception as error:
        raise StartupError(raised(f"importing {module_name!r}", error)) from None
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise StartupError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(found):
        raise StartupError(
            f"{spec} is {describe(found)}, not a factory: give a function that returns an agent, or an Agent class"
        )
    factory: Callable[[], object] = found
    return factory


async def build(factory: Callable[[], object], spec: str) -> hybrid.Agent[Any]:
    """Call the factory (awaiting what an async one returns) and check that it made an agent.

    Raises:
        StartupError: the factory raised, or returned something that is not an agent.
    """
    try:
        root = factory()
        if inspect.isawaitable(root):
            root = await root
    except Exception as error:
        raise StartupError(raised(f"the factory {spec}", error)) from None
    if not is_agent(root):
        raise StartupError(f"the factory {spec} returned {describe(root)}, not a hybrid.Agent")
    return root


def is_agent(value: object) -> TypeIs[hybrid.Agent[Any]]:
    """An agent, of any output type (what isinstance alone cannot say to a type checker)."""
    return isinstance(value, hybrid.Agent)


def raised(what: str, error: Exception) -> str:
    """One line: what raised what, and where (the innermost frame)."""
    message = f"{what} raised {type(error).__name__}: {error}"
    if isinstance(error, SyntaxError):
        return message  # its text already says the file and line
    frame = traceback.extract_tb(error.__traceback__)[-1]  # a raised error has at least the frame that caught it
    return f"{message} ({frame.filename}, line {frame.lineno})"


def describe(value: object) -> str:
    """``42 (an int)``: a short repr and the type."""
    kind = type(value).__qualname__
    return f"{reprlib.repr(value)} ({'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind})"
