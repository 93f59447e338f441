"""Running a root agent as a service: signals, exit statuses, the HTTP endpoints, ``--check``."""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

import hybrid

from ._options import DiagramSource, HttpLimits

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ._http import HttpServer

__all__ = ["ExitStatus", "Serving", "StartupError", "check", "run_service", "serve"]

logger = logging.getLogger("hybrid.service")

SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)  # Windows has no SIGUSR1


class ExitStatus(enum.IntEnum):
    """The exit statuses of service mode, as `serve` returns them and ``hybrid run`` exits with.

    An `enum.IntEnum`: each member is the `int` the process exits with.
    """

    OK = 0
    """The root agent ended done, interrupted (the first signal's graceful shutdown) or stopped."""
    FAILED = 1
    """The root agent failed; its error was logged with its traceback."""
    USAGE = 2
    """The command line was wrong (argparse's status; the CLI only)."""
    STARTUP_FAILED = 3
    """Nothing ran: the app could not be loaded or built, the HTTP port could not be bound, ..."""
    CUT_SHORT = 130
    """A second SIGINT or SIGTERM cancelled everything (128 + SIGINT, the shells' convention)."""


@attrs.frozen
class Serving:
    """What a started `serve` hands back through ``nursery.start``.

    Attributes:
        root: the root agent's address (its `begin()` has run).
        http: the address the HTTP endpoints listen on, with the bound port
            (the one the system chose when asked for port 0), or None without
            HTTP.
    """

    root: hybrid.Address[Any]
    http: tuple[str, int] | None


class StartupError(Exception):
    """Service mode could not start; the message is the one line the user sees."""


class _Stage(enum.IntEnum):
    """Where the service is; one field, however many ways there are to get there. It only moves forward."""

    STARTING = 0
    """The root agent's `begin()` has not run yet."""
    RUNNING = 1
    """The root runs; no signal came."""
    STOPPING = 2
    """A first signal came: the root was interrupted."""
    CANCELLING = 3
    """A second signal came: everything is being cancelled."""


@attrs.define(eq=False)
class _Service:
    """The state of one service run; written on the trio thread by `run_service` and its signal watcher."""

    root: hybrid.Agent[Any]
    address: hybrid.Address[Any]
    stage: _Stage = _Stage.STARTING

    def status(self) -> str:
        """``"ready"``, or why not: ``"starting"``, ``"stopping"`` or ``"ended"`` (what /health/ready says)."""
        if self.stage is _Stage.STARTING:
            return "starting"
        if not self.address.is_alive:
            return "ended"
        if (
            self.stage is not _Stage.RUNNING
            or self.root.ctx.interrupted
            or self.address.statistics().phase in ("finishing", "ended")
        ):
            return "stopping"
        return "ready"


async def serve(
    root: hybrid.Agent[Any],
    *,
    http: tuple[str, int] | None = None,
    registry: CollectorRegistry | None = None,
    diagrams: DiagramSource | None = None,
    limits: HttpLimits | None = None,
    slow_step: float | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Serving] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run `root` as ``hybrid run`` does, until it ends; return the exit status.

    Embeds service mode in your own program (``hybrid run`` is this plus
    the command line and logging set-up). While `handle_signals` is true, the
    first SIGINT or SIGTERM interrupts the root (its ordered, graceful
    shutdown), a second one cancels everything, and SIGUSR1 logs the tree of
    agents ([`hybrid.snapshot()`][hybrid.snapshot]) at INFO on the
    ``hybrid.service`` logger. With `http`, the endpoints ``/metrics``,
    ``/health/live``, ``/health/ready``, ``/tree`` and ``/`` are served, in
    this trio run, until the root has ended.

    Args:
        root: the agent to run (usually a `hybrid.Supervisor`), not started yet.
        http: ``(host, port)`` to serve HTTP on; port 0 lets the system
            choose (see `Serving.http`, and the ``serving http://...`` INFO
            line); host ``""`` means every interface. None (the default):
            no HTTP. Needs the ``service`` extra.
        registry: the prometheus-client registry ``/metrics`` exports; a
            `hybrid.metrics.HybridCollector` is registered in it while this
            runs. Default: prometheus-client's global ``REGISTRY`` (with the
            process and Python families, and any metrics of your own).
        diagrams: where ``/tree`` takes state diagrams from (see
            `DiagramSource`); none by default.
        limits: the bounds on HTTP clients; `HttpLimits()` by default.
        slow_step: log (WARNING, on ``hybrid.slowsteps``) every step that
            holds the trio thread this many seconds or more, naming the agent
            and what it was doing (`hybrid.slowsteps.watch`); None (the
            default) does not watch.
        handle_signals: handle SIGINT, SIGTERM and SIGUSR1 as described
            above (only possible in the main thread); false leaves signals
            alone: stop the service by interrupting `Serving.root`.
        task_status: for ``await nursery.start(...)``, which returns a
            `Serving` once the root's `begin()` has run.

    Returns:
        The `ExitStatus`: `OK` (0) when the root ended done, interrupted or
            stopped, `FAILED` (1) when it failed (its error is logged with its
            traceback once), `CUT_SHORT` (130) after a second signal,
            `STARTUP_FAILED` (3) when it could not start (the reason is logged
            on one line: port in use, missing extra, ...).

    Raises:
        TypeError: `root` is not an agent.
        ValueError: `slow_step` is not a positive number.

    Example:
        ```python
        import trio
        from hybrid.service import serve

        async def main() -> int:
            return await serve(App(), http=("127.0.0.1", 8000))

        raise SystemExit(trio.run(main))
        ```

        Started in a nursery, it says where it listens:

        ```python
        async with trio.open_nursery() as nursery:
            serving = await nursery.start(
                functools.partial(serve, App(), http=("127.0.0.1", 0), handle_signals=False)
            )
            print(serving.http)            # ('127.0.0.1', 43211)
            serving.root.interrupt()       # a graceful shutdown, as the first signal does
        ```
    """
    try:
        return await run_service(
            root,
            http=http,
            registry=registry,
            diagrams=diagrams,
            limits=limits,
            slow_step=slow_step,
            handle_signals=handle_signals,
            task_status=task_status,
        )
    except StartupError as error:
        logger.error("cannot start: %s", error)
        return ExitStatus.STARTUP_FAILED


async def run_service(
    root: hybrid.Agent[Any],
    *,
    http: tuple[str, int] | None = None,
    registry: CollectorRegistry | None = None,
    diagrams: DiagramSource | None = None,
    limits: HttpLimits | None = None,
    slow_step: float | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Serving] = trio.TASK_STATUS_IGNORED,
) -> ExitStatus:
    """`serve`, raising `StartupError` instead of logging it (the CLI prints it as ``hybrid: error: ...``)."""
    if not isinstance(root, hybrid.Agent):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"serve() runs a hybrid.Agent, got {root!r}")
    if slow_step is not None and not slow_step > 0:
        raise ValueError(f"slow_step must be a positive number of seconds, got {slow_step!r}")
    async with contextlib.AsyncExitStack() as stack:
        # Signals first: from here on a Ctrl-C is a graceful shutdown, never a KeyboardInterrupt.
        received = stack.enter_context(trio.open_signal_receiver(*SIGNALS)) if handle_signals else None
        if slow_step is not None:  # before the root exists, so that the watch knows every agent
            from hybrid import slowsteps  # noqa: PLC0415 - a debugging aid, imported when asked for

            stack.callback(slowsteps.watch(slow_step).close)
        runner = _runner(root)
        stack.callback(_discard_unless_run, runner)
        service = _Service(root, runner.address)
        server = None
        if http is not None:
            server = await _open_http(
                stack, http=http, service=service, registry=registry, diagrams=diagrams, limits=limits or HttpLimits()
            )
        return await _run(service, runner, server, received, task_status)


def _runner(root: hybrid.Agent[Any]) -> hybrid.AgentRunner[Any]:
    try:
        return hybrid.AgentRunner(root)
    except (hybrid.HybridError, ValueError) as error:
        raise StartupError(f"cannot run {type(root).__qualname__}: {error}") from None


def _discard_unless_run(runner: hybrid.AgentRunner[Any]) -> None:
    with contextlib.suppress(hybrid.LifecycleError):  # it ran (or runs no more): nothing to give up
        if runner.address.statistics().phase == "starting":
            runner.discard()


async def _open_http(
    stack: contextlib.AsyncExitStack,
    *,
    http: tuple[str, int],
    service: _Service,
    registry: CollectorRegistry | None,
    diagrams: DiagramSource | None,
    limits: HttpLimits,
) -> HttpServer:
    try:
        # The service extra: imported only when HTTP is asked for.
        import prometheus_client  # noqa: PLC0415

        from hybrid import metrics  # noqa: PLC0415

        from ._endpoints import Endpoints  # noqa: PLC0415
        from ._http import HttpServer  # noqa: PLC0415
    except ImportError as error:
        raise StartupError(
            f"the HTTP endpoints need h11 and prometheus-client ({error}): pip install 'trio-hybrid[service]'"
        ) from None
    registry = prometheus_client.REGISTRY if registry is None else registry
    if any(family.name == "hybrid_agents" for family in registry.collect()):
        raise StartupError(
            f"hybrid's metric families are registered already in {registry!r}; "
            "serve() registers them itself: pass a registry without them"
        )
    collector = metrics.register(registry)
    stack.callback(registry.unregister, collector)
    host, port = http
    shown = host or "0.0.0.0"  # noqa: S104 - what "" means, for the log line
    shown = f"[{shown}]" if ":" in shown else shown
    try:
        server = await HttpServer.open(host or None, port, Endpoints(service.status, registry, diagrams), limits)
    except OSError as error:
        raise StartupError(f"cannot listen on {shown}:{port}: {error.strerror or error}") from None
    stack.push_async_callback(server.aclose)
    logger.info("serving http://%s:%d", shown, server.port)
    return server


async def _run(
    service: _Service,
    runner: hybrid.AgentRunner[Any],
    server: HttpServer | None,
    received: AsyncIterator[int] | None,
    task_status: trio.TaskStatus[Serving],
) -> ExitStatus:
    address = runner.address
    reason: hybrid.StopReason | None = None
    async with trio.open_nursery() as nursery:
        if received is not None:
            nursery.start_soon(_watch_signals, received, service, nursery.cancel_scope)
        if server is not None:
            nursery.start_soon(_serve_http, server)

        async def run_root(task_status: trio.TaskStatus[hybrid.Address[Any]]) -> None:
            nonlocal reason
            try:
                reason = await runner.run(task_status=task_status)
            except Exception as error:  # the root's helper tasks failed (an ExceptionGroup)
                reason = hybrid.StopReason(hybrid.StopKind.FAILED, error)
            nursery.cancel_scope.cancel()  # the root has ended: so do the HTTP server and the signal watcher

        await nursery.start(run_root)
        service.stage = max(service.stage, _Stage.RUNNING)  # a signal may have come first
        logger.info("running %s (%s)", address.name, type(service.root).__qualname__)
        task_status.started(Serving(address, None if server is None else (_host(server), server.port)))
    if service.stage is _Stage.CANCELLING or reason is None:
        logger.warning("%s cut short: cancelled by a second signal", address.name)
        return ExitStatus.CUT_SHORT
    if reason.failed:
        logger.error("%s failed: %r", address.name, reason.error, exc_info=reason.error)
        return ExitStatus.FAILED
    logger.info("%s ended: %s", address.name, reason)
    return ExitStatus.OK


def _host(server: HttpServer) -> str:
    host: str = server.listeners[0].socket.getsockname()[0]
    return host


async def _serve_http(server: HttpServer) -> None:
    try:
        await server.serve()
    except Exception:  # the agents matter more than their dashboard: they go on without it
        logger.exception("the HTTP server failed; the agents go on without it")


async def _watch_signals(received: AsyncIterator[int], service: _Service, scope: trio.CancelScope) -> None:
    async for signum in received:
        name = signal.Signals(signum).name
        if name == "SIGUSR1":
            logger.info("%s: the agents now:\n%s", name, hybrid.snapshot())
        elif service.stage < _Stage.STOPPING:
            service.stage = _Stage.STOPPING
            logger.info(
                "%s received: interrupting %s (graceful shutdown; a second signal cancels everything)",
                name,
                service.address.name,
            )
            service.address.interrupt()
        else:
            service.stage = _Stage.CANCELLING
            logger.warning("%s received again: cancelling everything", name)
            scope.cancel()
            return


async def check(root: hybrid.Agent[Any], *, timeout: float = 10.0) -> ExitStatus:
    """Build the tree (``hybrid run --check``): start `root`, print the tree once it has started, then stop it.

    Waits until no agent of the run is still starting (every `begin()` has
    run, a supervisor's children included), at most `timeout` seconds,
    prints ``str(hybrid.snapshot())`` to stdout, interrupts the root and
    waits (again at most `timeout`, then cancels) for it to end.

    Raises:
        StartupError: the root failed while starting, an agent failed while
            the tree was built, or the tree was still starting after `timeout`.
    """
    runner = _runner(root)
    address = runner.address
    reason: hybrid.StopReason | None = None
    async with trio.open_nursery() as nursery:
        ended = trio.Event()

        async def run_root(task_status: trio.TaskStatus[hybrid.Address[Any]]) -> None:
            nonlocal reason
            try:
                reason = await runner.run(task_status=task_status)
            except Exception as error:  # the root's helper tasks failed
                reason = hybrid.StopReason(hybrid.StopKind.FAILED, error)
            finally:
                ended.set()

        await nursery.start(run_root)
        with trio.move_on_after(timeout) as settling:
            # Polled: no event says "every agent has started" (a supervisor starts its children in turn).
            while address.is_alive and any(info.phase == "starting" for info in hybrid.snapshot().walk()):  # noqa: ASYNC110
                await trio.sleep(0.01)
        tree = hybrid.snapshot()
        started = address.is_alive  # else it ended by itself while the tree was being built
        address.interrupt()
        with trio.move_on_after(timeout):
            await ended.wait()
        nursery.cancel_scope.cancel()
    if reason is not None and reason.failed:
        when = "while stopping" if started else "while starting"
        logger.error("%s failed %s: %r", address.name, when, reason.error, exc_info=reason.error)
        raise StartupError(f"{address.name} failed {when}: {reason.error!r}")
    if settling.cancelled_caught:
        starting = [info.name for info in tree.walk() if info.phase == "starting"]
        raise StartupError(f"the tree was still starting after {timeout:g}s: {', '.join(starting)}")
    failures = sum(counters.failures for counters in tree.counters)
    if failures:
        raise StartupError(f"{failures} agent(s) failed while the tree was built (see the log above)")
    print(tree, file=sys.stdout, flush=True)
    return ExitStatus.OK
