"""Run the benchmark suite: ``python -m bench`` (or ``python bench/run.py``) from the repo root.

Prints a table of hybrid / plain-trio ratios with the targets they are held to,
and writes every number (medians and raw samples) to a JSON file.

Options:
    --size F       scale every workload by F (default 1.0; 0.01 for a smoke run)
    --repeat N     measured rounds per workload (default 5), after --warmup rounds
    --warmup N     discarded rounds before measuring (default 1)
    --output PATH  the JSON file (default bench/results.json)
    --only W1,W2   run only these workloads (W1-W9, W11); the other sections are named too: ``peers``,
                   ``asyncio`` (hand-written asyncio on the selected workloads, all if none),
                   ``agents`` (LangGraph, pydantic-graph, autogen-core) and ``scaling``
    --no-peers     skip the other libraries: the ``peers`` and ``agents`` sections

W9 (durable transitions) is ``bench/durable.py``, also run alone: ``python -m bench.durable``;
W11 (coordination: Pool, priority mailbox, quorum) is ``bench/coordination.py``, also run alone:
``python -m bench.coordination``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/run.py
    # Import the package from the repo root, not bench/'s modules as top-level ones.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import trio

import hybrid
from bench import agent_peers, asyncio_side, coordination, scaling
from bench import durable as durable_bench
from bench import peers as peers_module
from bench._harness import grid, number
from bench.workloads import WORKLOADS as CORE_WORKLOADS

# W9 lives in bench/durable.py (a disk, Postgres if reachable, LangGraph if installed), beside W1-W8;
# W11 in bench/coordination.py (Pool, the priority mailbox, quorum).
WORKLOADS = {**CORE_WORKLOADS, "W9": durable_bench.run_w9, "W11": coordination.run_w11}

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
SECTIONS = ["peers", "asyncio", "agents", "scaling"]
"""Named sections besides the workloads; each has its own entry in the results (None when not run)."""
PEER_SECTIONS = ("peers", "agents")
"""The sections --no-peers skips: those measuring other libraries."""
ALL = [*WORKLOADS, *SECTIONS]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="hybrid vs plain trio (and peers) benchmarks")
    parser.add_argument("--size", type=float, default=1.0, help="scale every workload (0.01 for a smoke run)")
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds per workload (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded warm-up rounds (default 1)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument(
        "--no-peers", action="store_true", help="skip the other libraries: the peers and agents sections"
    )
    args = parser.parse_args(argv)
    if not args.size > 0:
        parser.error("--size must be > 0")
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    selected = (
        ALL
        if args.only is None
        else [w.strip().lower() if w.strip().lower() in SECTIONS else w.strip().upper() for w in args.only.split(",")]
    )
    unknown = [w for w in selected if w not in ALL]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {ALL}")
    if args.no_peers:
        selected = [w for w in selected if w not in PEER_SECTIONS]
    args.selected = selected
    return args


def run(
    size: float = 1.0,
    repeat: int = 5,
    warmup: int = 1,
    selected: Sequence[str] = tuple(ALL),
    progress: bool = False,
) -> dict[str, Any]:
    """Run the selected workloads; return the results document (what the JSON file holds)."""
    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "hybrid": hybrid.__version__,
            "trio": trio.__version__,
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "size": size,
            "repeat": repeat,
            "warmup": warmup,
            "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="seconds"),
            "gc": "collected before every sample, enabled during it (both sides)",
            "order": "sides alternate within each round: hybrid, trio[, asyncio, peers]",
        },
        "workloads": {},
        "peers": None,
        "asyncio": None,
        "agents": None,
        "scaling": None,
        "targets": [],
    }
    for key in selected:
        if key in SECTIONS:
            continue
        t0 = time.perf_counter()
        if progress:
            print(f"  {key} ...", end="", flush=True, file=sys.stderr)
        entry = WORKLOADS[key](size, repeat, warmup)
        entry["wall_seconds"] = time.perf_counter() - t0
        results["workloads"][key] = entry
        if progress:
            print(f" {entry['wall_seconds']:.1f}s", file=sys.stderr)
    if "peers" in selected:
        t0 = time.perf_counter()
        if progress:
            print("  peers ...", end="", flush=True, file=sys.stderr)
        results["peers"] = peers_module.run_peers(size, repeat, warmup)
        results["peers"]["wall_seconds"] = time.perf_counter() - t0
        if progress:
            print(f" {results['peers']['wall_seconds']:.1f}s", file=sys.stderr)
    workloads = [key for key in selected if key in WORKLOADS]
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "asyncio": lambda: asyncio_side.run_asyncio(size, repeat, warmup, only=workloads or None, progress=progress),
        "agents": lambda: agent_peers.run_agent_peers(size, repeat, warmup, progress=progress),
        "scaling": lambda: scaling.run_scaling(size, repeat, warmup, progress=progress),
    }
    for name, section in sections.items():
        if name not in selected:
            continue
        t0 = time.perf_counter()
        if progress:
            print(f"  {name} ...", end="", flush=True, file=sys.stderr)
        results[name] = section()
        results[name]["wall_seconds"] = time.perf_counter() - t0
        if progress:
            print(f" {results[name]['wall_seconds']:.1f}s", file=sys.stderr)
    for key, entry in results["workloads"].items():
        for name, metric in entry["metrics"].items():
            if metric["target"] is not None:
                results["targets"].append({"workload": key, "metric": name, **metric["target"]})
    results["meta"]["wall_seconds"] = time.time() - started
    return results


# -- the table -------------------------------------------------------------------------------


def _target_text(target: dict[str, Any] | None) -> tuple[str, str]:
    if target is None:
        return "-", "-"
    unit = target["unit"]
    bound = f"{target['op']} {number(target['bound'])}{unit}"
    if target["goal"] is not None:
        bound += f" (goal {number(target['goal'])}{unit})"
    met = "yes" if target["met"] else "NO"
    if target["goal_met"] is not None:
        met += f" (goal: {'yes' if target['goal_met'] else 'no'})"
    return bound, met


def table(results: dict[str, Any]) -> str:
    """The human-readable report: one row per metric, then the peers, asyncio, the agents, scaling."""
    header = ("workload", "metric", "unit", "hybrid", "trio", "ratio", "ratio is", "target", "met")
    rows: list[tuple[str, ...]] = []
    for key, entry in results["workloads"].items():
        first = True
        for name, m in entry["metrics"].items():
            bound, met = _target_text(m["target"])
            better = "higher=better" if m["higher_is_better"] else "lower=better"
            rows.append(
                (
                    f"{key} {entry['short']}" if first else "",
                    name,
                    m["unit"],
                    number(m["hybrid"]),
                    number(m["trio"]),
                    f"{m['ratio']:.2f}x",
                    f"{m['ratio_def'].split(' / ')[0].split()[-1]} h/t, {better}",
                    bound,
                    met,
                )
            )
            first = False
    lines = grid(header, rows) if rows else []
    w9 = results["workloads"].get("W9")
    if w9 is not None:  # the cases behind W9's rows: "hybrid" is the durable side, "trio" the same without a store
        lines += ["", *durable_bench.table_lines(w9)]
    w11 = results["workloads"].get("W11")
    if w11 is not None:  # the sides behind W11's rows: "hybrid" is the primitive, "trio" what it is compared with
        lines += ["", *coordination.table_lines(w11)]
    peers = results.get("peers")
    if peers:
        p = peers["params"]
        if lines:
            lines.append("")
        lines.append(
            f"peers (per message, us; tell: {p['tell_messages']} events, ask: {p['ask_requests']} requests; "
            "'ahead' = peer cost / hybrid cost)"
        )
        pheader = ("library", "tell us/msg", "ask us/req", "hybrid ahead (tell)", "hybrid ahead (ask)")
        prow = [("hybrid", number(peers["hybrid"]["tell_us"]), number(peers["hybrid"]["ask_us"]), "1.00x", "1.00x")]
        notes: list[str] = []
        for peer in peers_module.PEERS:
            e = peers[peer]
            if e["measured"]:
                prow.append(
                    (
                        peer,
                        number(e["tell_us"]),
                        number(e["ask_us"]),
                        f"{e['tell_ahead']:.2f}x",
                        f"{e['ask_ahead']:.2f}x",
                    )
                )
            else:
                notes.append(f"  {peer}: skipped: {e['note']}")
        lines += grid(pheader, prow)
        lines += notes
    for name, render in (("asyncio", asyncio_table), ("agents", agents_table), ("scaling", scaling_tables)):
        if results.get(name):
            lines += [*([""] if lines else []), *render(results[name])]
    targets = results["targets"]
    if targets:
        met_count = sum(1 for t in targets if t["met"])
        lines.append("")
        lines.append(f"targets met: {met_count}/{len(targets)}")
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}x"


def asyncio_table(section: dict[str, Any]) -> list[str]:
    """hybrid / trio / hand-written asyncio on each workload, with the ratios to asyncio."""
    rows: list[tuple[str, ...]] = []
    for key, entry in section["workloads"].items():
        first = True
        for name, m in entry["metrics"].items():
            better = "higher=better" if m["higher_is_better"] else "lower=better"
            rows.append(
                (
                    f"{key} {entry['short']}" if first else "",
                    name,
                    m["unit"],
                    number(m["hybrid"]),
                    number(m["trio"]),
                    number(m["asyncio"]),
                    _x(m["hybrid_vs_asyncio"]),
                    _x(m["trio_vs_asyncio"]),
                    better,
                )
            )
            first = False
    header = ("workload", "metric", "unit", "hybrid", "trio", "asyncio", "hybrid/asyncio", "trio/asyncio", "ratio is")
    return [
        f"asyncio: the same work hand-written on asyncio ({section['event_loop']}, Python {section['python']}); "
        "hybrid, trio and asyncio alternate in every round",
        *grid(header, rows),
    ]


def agents_table(section: dict[str, Any]) -> list[str]:
    """µs per operation of hybrid and of the AI-agent frameworks, and how far hybrid is ahead."""
    p = section["params"]
    kinds = agent_peers.KINDS
    header = ("library", "version", *(f"{k} us" for k in kinds), *(f"hybrid ahead ({k})" for k in kinds))
    h = section["hybrid"]
    rows = [("hybrid", hybrid.__version__, *(number(h[f"{k}_us"]) for k in kinds), *("1.00x" for _ in kinds))]
    notes: list[str] = []
    for peer in agent_peers.PEERS:
        e = section[peer]
        if e["measured"]:
            rows.append(
                (
                    peer,
                    e["version"] or "?",
                    *(number(e[f"{k}_us"]) for k in kinds),
                    *(_x(e[f"{k}_ahead"]) for k in kinds),
                )
            )
        else:
            notes.append(f"  {peer}: skipped: {e['note']}")
    return [
        f"AI-agent frameworks (us per operation; {p['peer_ops']} operations per peer sample, {p['hybrid_ops']} "
        "per hybrid sample; 'ahead' = peer cost / hybrid cost)",
        "  run: a 3-step state machine; message: an event to a stateful agent (LangGraph, pydantic-graph: an "
        "awaited 1-node run); request: an answer awaited (see bench/README.md)",
        *grid(header, rows),
        *notes,
    ]


def scaling_tables(section: dict[str, Any]) -> list[str]:
    """One table per sweep: idle agents, concurrent callers, pipeline workers."""
    lines: list[str] = []
    agents = section.get("agents")
    if agents:
        sides = agents["sides"]
        header = (
            "agents",
            *(f"{side} us" for side in sides),
            *(f"{side} B tracemalloc" for side in sides),
            *(f"{side} B rss" for side in sides),
        )
        rows = [
            (
                f"{row['agents']:,}",
                *(number(row[side]["us_per_agent"]) for side in sides),
                *(number(row[side]["tracemalloc_bytes"]) for side in sides),
                *(number(row[side]["rss_bytes"]) for side in sides),
            )
            for row in agents["rows"]
        ]
        lines += [
            "scaling: idle agents, spawn+stop (us/agent) and memory per idle agent (bytes, a fresh process each)",
            *grid(header, rows),
        ]
    callers = section.get("callers")
    if callers:
        header = ("callers", "requests", "hybrid us", "inline us", "trio us", "hybrid/trio", "inline/trio")
        rows = [
            (
                f"{row['callers']:,}",
                f"{row['requests']:,}",
                number(row["hybrid"]),
                number(row["hybrid_inline"]),
                number(row["trio"]),
                _x(row["hybrid_vs_trio"]),
                _x(row["inline_vs_trio"]),
            )
            for row in callers["rows"]
        ]
        lines += [
            *([""] if lines else []),
            "scaling: concurrent callers, sequential requests each, to ONE agent (us per request, lower=better)",
            *grid(header, rows),
        ]
    pipeline = section.get("pipeline")
    if pipeline:
        header = ("workers/stage", "hybrid items/s", "ordered items/s", "trio items/s", "hybrid/trio", "ordered/trio")
        rows = [
            (
                str(row["workers"]),
                number(row["hybrid"]),
                number(row["hybrid_ordered"]),
                number(row["trio"]),
                _x(row["hybrid_vs_trio"]),
                _x(row["ordered_vs_trio"]),
            )
            for row in pipeline["rows"]
        ]
        lines += [
            *([""] if lines else []),
            f"scaling: pipeline workers per stage ({pipeline['params']['items']:,} items, 3 stages that yield, "
            f"buffers of {pipeline['params']['buffer']}; higher=better; hybrid unordered, and ordered)",
            *grid(header, rows),
        ]
    return lines


def write(results: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    tmp.replace(output)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"hybrid {hybrid.__version__} / trio {trio.__version__} / Python {sys.version.split()[0]}: "
        f"size {args.size}, {args.repeat} rounds after {args.warmup} warm-up",
        file=sys.stderr,
    )
    results = run(args.size, args.repeat, args.warmup, args.selected, progress=True)
    print(table(results))
    write(results, args.output)
    print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
