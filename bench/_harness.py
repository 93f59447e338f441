"""Measurement plumbing shared by every workload: alternation, gc, statistics.

Fairness rules, applied the same way to every side of every comparison:

- sides are measured alternately in one process (hybrid, trio, hybrid, trio...),
  each sample in its own fresh event loop (``trio.run``/``asyncio.run``), with
  set-up (spawning the receiver, building the messages) outside the timed span;
- ``gc.collect()`` runs before every sample, and the collector stays enabled
  for both sides (a framework that allocates more pays for it, as it would in
  production);
- the first `warmup` rounds are run and discarded (imports, caches, the
  allocator's arenas, the thread pool of ``trio.to_thread``);
- every sample checks that the work was done (counts and results), and raises
  `BenchError` otherwise: a fast wrong answer is not a result.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import trio

import hybrid

Sample = dict[str, Any]
"""The metrics of one timed run of one side, e.g. ``{"seconds": 0.21, "handled": 200000}``."""


class BenchError(AssertionError):
    """A workload did not do the work it claims to have timed."""


def check(what: str, got: object, expected: object) -> None:
    """Raise `BenchError` unless ``got == expected`` (not an assert: ``python -O`` keeps it)."""
    if got != expected:
        raise BenchError(f"{what}: got {got!r}, expected {expected!r}")


def scaled(n: int, size: float, minimum: int = 1) -> int:
    """`n` scaled by the --size factor, at least `minimum`."""
    return max(minimum, round(n * size))


def prepare() -> None:
    """Bring the collector to the same state before every sample."""
    gc.collect()


def alternate(
    sides: dict[str, Callable[[], Sample]],
    rounds: int,
    warmup: int = 1,
) -> dict[str, list[Sample]]:
    """Run each side once per round, in the given order, discarding `warmup` rounds.

    Returns, for each side, the samples of the measured rounds.
    """
    kept: dict[str, list[Sample]] = {name: [] for name in sides}
    for index in range(warmup + rounds):
        for name, run in sides.items():
            prepare()
            sample = run()
            if index >= warmup:
                kept[name].append(sample)
    return kept


def median(samples: Sequence[Sample], key: str) -> float:
    """The median of metric `key` over `samples`."""
    return float(statistics.median(float(s[key]) for s in samples))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank, as latency reports use)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0."""
    return numerator / denominator if denominator else math.nan


def summary(samples: Sequence[Sample], keys: Sequence[str]) -> dict[str, Any]:
    """Medians of `keys` and the raw samples, as stored in the JSON file."""
    result: dict[str, Any] = {key: median(samples, key) for key in keys}
    result["samples"] = [{key: s[key] for key in keys} for s in samples]
    return result


def number(value: float | None) -> str:
    """A figure for the tables: 1.23M, 45.6k, 789, 1.23 (n/a for None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.1f}k"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"


def grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart, a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def rounds_parser(prog: str, description: str, size_help: str) -> argparse.ArgumentParser:
    """The command line a workload module run alone takes: --size, --repeat, --warmup (add its own after)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--size", type=float, default=1.0, help=size_help)
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds (default 1)")
    return parser


def parse_rounds(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check a `rounds_parser` command line; say on stderr what runs and how."""
    args = parser.parse_args(argv)
    if not args.size > 0 or args.repeat < 1 or args.warmup < 0:
        parser.error("--size must be > 0, --repeat >= 1, --warmup >= 0")
    print(
        f"hybrid {hybrid.__version__} / trio {trio.__version__} / Python {sys.version.split()[0]}: "
        f"size {args.size}, {args.repeat} rounds after {args.warmup} warm-up",
        file=sys.stderr,
    )
    return args
