"""Profile hybrid's side of each workload: where does the time go?

Usage (from the repo root)::

    python -m bench.profiling                 # pyinstrument call trees, every workload
    python -m bench.profiling --only W1,W2    # a subset
    python -m bench.profiling --cprofile      # deterministic: top functions by own time
    python -m bench.profiling --html DIR      # pyinstrument HTML reports, one per workload

pyinstrument (``pip install pyinstrument``, in the ``bench`` extra) is a
sampling profiler: low overhead, so the proportions are close to the real
run. ``--cprofile`` uses the standard library instead: exact call counts, but
its per-call overhead inflates small functions, so read it for *what* is
called how often, and pyinstrument for *how much* it costs.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import pstats
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import workloads as w
from ._harness import prepare, scaled

PROFILED: dict[str, tuple[str, Callable[[float], Callable[[], Any]]]] = {
    "W1": (
        "tell: Address.send + the message loop",
        lambda s: _bind(w.hybrid_tell, w.make_ticks(scaled(w.W1_EVENTS, s))),
    ),
    "W2": ("ask: Address.request + RequestCall", lambda s: _bind(w.hybrid_ask, w.make_asks(scaled(w.W2_REQUESTS, s)))),
    "W3": ("spawn/stop", lambda s: _bind(w.hybrid_spawn_stop, scaled(w.W3_AGENTS, s))),
    "W4": (
        "fan-out/fan-in",
        lambda s: _bind(w.hybrid_fan, scaled(w.W4_AGENTS, s), w.make_ticks(scaled(w.W4_EVENTS, s))),
    ),
    "W5": ("sync states (worker threads)", lambda s: _bind(w.hybrid_sync_steps, scaled(w.W5_STEPS, s))),
    "W6": ("do_async self-transitions", lambda s: _bind(w.hybrid_transitions, scaled(w.W6_TRANSITIONS, s))),
    "W7": ("3-state machine, agent.run() each", lambda s: _bind(w.hybrid_machine, scaled(w.W7_RUNS, s))),
}


def _bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


def profile_cprofile(run: Callable[[], Any], top: int) -> str:
    profiler = cProfile.Profile()
    prepare()
    profiler.enable()
    run()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def profile_pyinstrument(run: Callable[[], Any], html: Path | None, key: str) -> str:
    from pyinstrument import Profiler  # noqa: PLC0415 - optional

    profiler = Profiler(interval=0.0002, async_mode="disabled")
    prepare()
    profiler.start()
    run()
    profiler.stop()
    if html is not None:
        html.mkdir(parents=True, exist_ok=True)
        (html / f"{key}.html").write_text(profiler.output_html())
    text: str = profiler.output_text(unicode=False, color=False, show_all=False)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profiling", description="Profile hybrid's side of each workload."
    )
    parser.add_argument("--size", type=float, default=1.0)
    parser.add_argument("--only", default=None, help="comma-separated workloads (W1..W7)")
    parser.add_argument("--cprofile", action="store_true", help="use cProfile (exact counts, inflated costs)")
    parser.add_argument("--top", type=int, default=25, help="rows of the cProfile listing")
    parser.add_argument("--html", type=Path, default=None, help="also write pyinstrument HTML reports here")
    args = parser.parse_args(argv)
    keys = list(PROFILED) if args.only is None else [k.strip().upper() for k in args.only.split(",")]
    use_cprofile = args.cprofile or importlib.util.find_spec("pyinstrument") is None
    if use_cprofile and not args.cprofile:
        print("pyinstrument is not installed; falling back to cProfile", file=sys.stderr)
    for key in keys:
        title, make = PROFILED[key]
        run = make(args.size)
        run()  # warm-up, not profiled
        print(f"=== {key}: {title} ===")
        print(profile_cprofile(run, args.top) if use_cprofile else profile_pyinstrument(run, args.html, key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
