"""Run the demo from the repository root: ``python -m examples.agent_framework``.

``python examples/agent_framework`` works too: Python then runs this file as a
script, outside its package, with this folder (not the repository root) on
``sys.path``; it puts the root there and runs the package's ``__main__``
properly, as ``-m`` would.
"""

import logging
import runpy
import sys
from pathlib import Path

import trio

if __package__:
    from .demo import main

    if __name__ == "__main__":
        # The trace shows the crash; the supervisor's crash report (an ERROR with its
        # traceback, on stderr) would only repeat it.
        logging.getLogger("hybrid.supervisor").setLevel(logging.CRITICAL)
        trio.run(main)
else:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    runpy.run_module("examples.agent_framework", run_name="__main__", alter_sys=True)
