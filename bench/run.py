"""Run the benchmark suite: ``python -m bench`` (or ``python bench/run.py``) from the repo root.

Prints a table of hybrid / plain-trio ratios with the targets they are held to,
and writes every number (medians and raw samples) to a JSON file.

Options:
    --size F       scale every workload by F (default 1.0; 0.01 for a smoke run)
    --repeat N     measured rounds per workload (default 5), after --warmup rounds
    --warmup N     discarded rounds before measuring (default 1)
    --output PATH  the JSON file (default bench/results.json)
    --only W1,W2   run only these workloads (``peers`` is a workload name too)
    --no-peers     skip the peer libraries (asyncio, pykka, thespian)
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/run.py
    # Import the package from the repo root, not bench/'s modules as top-level ones.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import trio

import hybrid
from bench import peers as peers_module
from bench.workloads import WORKLOADS

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
ALL = [*WORKLOADS, "peers"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="hybrid vs plain trio (and peers) benchmarks")
    parser.add_argument("--size", type=float, default=1.0, help="scale every workload (0.01 for a smoke run)")
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds per workload (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded warm-up rounds (default 1)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--no-peers", action="store_true", help="skip asyncio, pykka and thespian")
    args = parser.parse_args(argv)
    if not args.size > 0:
        parser.error("--size must be > 0")
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    selected = (
        ALL
        if args.only is None
        else [w.strip().upper() if w.strip() != "peers" else "peers" for w in args.only.split(",")]
    )
    unknown = [w for w in selected if w not in ALL]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {ALL}")
    if args.no_peers:
        selected = [w for w in selected if w != "peers"]
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
            "order": "sides alternate within each round: hybrid, trio[, peers]",
        },
        "workloads": {},
        "peers": None,
        "targets": [],
    }
    for key in selected:
        if key == "peers":
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
    for key, entry in results["workloads"].items():
        for name, metric in entry["metrics"].items():
            if metric["target"] is not None:
                results["targets"].append({"workload": key, "metric": name, **metric["target"]})
    results["meta"]["wall_seconds"] = time.time() - started
    return results


# -- the table -------------------------------------------------------------------------------


def _num(value: float | None) -> str:
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


def _target_text(target: dict[str, Any] | None) -> tuple[str, str]:
    if target is None:
        return "-", "-"
    unit = target["unit"]
    bound = f"{target['op']} {_num(target['bound'])}{unit}"
    if target["goal"] is not None:
        bound += f" (goal {_num(target['goal'])}{unit})"
    met = "yes" if target["met"] else "NO"
    if target["goal_met"] is not None:
        met += f" (goal: {'yes' if target['goal_met'] else 'no'})"
    return bound, met


def table(results: dict[str, Any]) -> str:
    """The human-readable report: one row per metric, then the peers."""
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
                    _num(m["hybrid"]),
                    _num(m["trio"]),
                    f"{m['ratio']:.2f}x",
                    f"{m['ratio_def'].split(' / ')[0].split()[-1]} h/t, {better}",
                    bound,
                    met,
                )
            )
            first = False
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    peers = results.get("peers")
    if peers:
        p = peers["params"]
        lines.append("")
        lines.append(
            f"peers (per message, us; tell: {p['tell_messages']} events, ask: {p['ask_requests']} requests; "
            "'ahead' = peer cost / hybrid cost)"
        )
        pheader = ("library", "tell us/msg", "ask us/req", "hybrid ahead (tell)", "hybrid ahead (ask)")
        prow = [("hybrid", _num(peers["hybrid"]["tell_us"]), _num(peers["hybrid"]["ask_us"]), "1.00x", "1.00x")]
        notes: list[str] = []
        for peer in peers_module.PEERS:
            e = peers[peer]
            if e["measured"]:
                prow.append(
                    (peer, _num(e["tell_us"]), _num(e["ask_us"]), f"{e['tell_ahead']:.2f}x", f"{e['ask_ahead']:.2f}x")
                )
            else:
                notes.append(f"  {peer}: skipped: {e['note']}")
        pw = [max(len(r[i]) for r in [pheader, *prow]) for i in range(len(pheader))]
        lines.append("  ".join(c.ljust(w) for c, w in zip(pheader, pw, strict=True)).rstrip())
        lines.append("  ".join("-" * w for w in pw))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, pw, strict=True)).rstrip() for r in prow]
        lines += notes
    targets = results["targets"]
    if targets:
        met_count = sum(1 for t in targets if t["met"])
        lines.append("")
        lines.append(f"targets met: {met_count}/{len(targets)}")
    return "\n".join(lines)


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
