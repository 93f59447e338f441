"""examples/cluster: three worker processes share a job queue; one is killed; every job is done once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_cluster_demo_does_every_job_once_after_a_worker_is_killed(nats_binary: Path) -> None:
    """Run as a user would (``python -m examples.cluster``): exit 0, every job done once, the victim's jobs redone."""
    scripts = str(nats_binary.parent)
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "examples.cluster"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every job done exactly once" in result.stdout
    assert "duplicate=True" in result.stdout
    done = re.search(r"jobs done: (\d+) of (\d+)", result.stdout)
    assert done is not None
    assert done.group(1) == done.group(2)
    assert re.search(r"killed worker-2 after \d+ jobs", result.stdout)
