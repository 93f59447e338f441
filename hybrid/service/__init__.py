"""Service mode: run an agent tree as a program, with signals, health, metrics and a live view.

``hybrid run MODULE:FACTORY`` (also ``python -m hybrid run ...``) runs the
agent ``FACTORY()`` returns until it ends: the first SIGINT or SIGTERM
interrupts it (an ordered, graceful shutdown), a second cancels everything,
SIGUSR1 logs the tree of agents; ``--http [HOST:]PORT`` serves ``/metrics``,
``/health/live``, ``/health/ready``, ``/tree`` and a live page at ``/``.
The guide "Running in production" describes the command line.

This package is for embedding the same behaviour in your own program:

- `serve`: run a root agent as ``hybrid run`` does and return its exit status;
- `ExitStatus`: the exit statuses; `Serving`: what a started `serve` hands back;
- `HttpLimits`: the bounds on HTTP clients; `DiagramSource`: where ``/tree``
  takes state diagrams from;
- `JsonFormatter`: the ``--log-format json`` formatter, one JSON object per line.

The HTTP endpoints need the ``service`` extra (``pip install
'trio-hybrid[service]'``: h11 and prometheus-client); the rest needs nothing
beyond hybrid. Built on hybrid's public names only; the core never imports it.
Its modules, one concern each: ``_serve.py`` (the run, signals, exit
statuses, ``--check``), ``_cli.py`` (the command line), ``_logging.py`` (log
formats), ``_options.py`` (`HttpLimits`, `DiagramSource`), ``_http.py`` (the
HTTP/1.1 server on h11), ``_endpoints.py`` (the routes), ``_page.py`` (the
live page).
"""

from ._logging import JsonFormatter as JsonFormatter
from ._options import DiagramSource as DiagramSource
from ._options import HttpLimits as HttpLimits
from ._serve import ExitStatus as ExitStatus
from ._serve import Serving as Serving
from ._serve import serve as serve

__all__ = ["DiagramSource", "ExitStatus", "HttpLimits", "JsonFormatter", "Serving", "serve"]

for _name in ("ExitStatus", "HttpLimits", "JsonFormatter", "Serving", "serve"):
    globals()[_name].__module__ = __name__  # tracebacks and docs say hybrid.service.X
del _name
