"""The routes of service mode's HTTP server: metrics, health, the tree as JSON, the live page."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

import hybrid

from ._http import Response
from ._options import DiagramSource
from ._page import PAGE

__all__ = ["Endpoints"]

logger = logging.getLogger("hybrid.service")

READY = "ready"
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
"""The page is self-contained: inline script and style, and fetches from its own origin only."""


class Endpoints:
    """The route table: path -> response, computed on the trio thread at each request.

    Args:
        status: the service's status now: ``"ready"``, or why not
            (``"starting"``, ``"stopping"``, ``"ended"``).
        registry: what ``/metrics`` exports.
        diagrams: the state diagrams ``/tree`` carries, if any.
    """

    def __init__(
        self, status: Callable[[], str], registry: CollectorRegistry, diagrams: DiagramSource | None = None
    ) -> None:
        self.status = status
        self.registry = registry
        self.diagrams = diagrams
        self.diagrams_failed = False
        self.routes: dict[str, Callable[[], Response]] = {
            "/": self.page,
            "/metrics": self.metrics,
            "/health/live": self.live,
            "/health/ready": self.ready,
            "/tree": self.tree,
        }

    def __call__(self, path: str) -> Response:
        route = self.routes.get(path)
        if route is None:
            return Response(404, f"not found: {path}; try /, /metrics, /health/live, /health/ready or /tree\n".encode())
        return route()

    def page(self) -> Response:
        return Response(200, PAGE.encode(), "text/html; charset=utf-8", headers=(("Content-Security-Policy", CSP),))

    def metrics(self) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    def live(self) -> Response:
        return Response(200, b"live\n")  # answered at all: the trio loop is running

    def ready(self) -> Response:
        status = self.status()
        return Response(200 if status == READY else 503, f"{status}\n".encode())

    def tree(self) -> Response:
        snapshot = hybrid.snapshot()
        body = {"status": self.status(), **snapshot.as_dict(), "diagrams": self.read_diagrams()}
        return Response(200, json.dumps(body, default=str).encode(), "application/json")

    def read_diagrams(self) -> dict[str, str]:
        if self.diagrams is None:
            return {}
        try:
            return dict(self.diagrams())
        except Exception:
            # The tree matters more than its pictures: serve it without them, and log
            # the failure once (the page asks every second).
            if not self.diagrams_failed:
                self.diagrams_failed = True
                logger.exception("the diagram source %r failed; /tree is served without diagrams", self.diagrams)
            return {}
