"""Run the demo from the repository root: ``python -m examples.cluster``."""

import trio

from examples.cluster.demo import main

raise SystemExit(trio.run(main))
