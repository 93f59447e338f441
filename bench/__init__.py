"""The benchmark suite of hybrid: each workload against plain trio, and peers.

Run it from the repository root with ``python -m bench`` (``--help`` for the
options); see ``bench/README.md`` for what each workload measures.

- ``run.py``: the command line, the table and the JSON file
- ``workloads.py``: W1-W7, each as a hybrid side and a plain-trio side
- ``peers.py``: tell and ask on asyncio, Pykka and Thespian
- ``_harness.py``: alternation, gc, statistics, result checks
- ``_memory.py``: the W3 memory measurement, run in fresh processes
- ``profile.py``: profile hybrid's side of each workload (pyinstrument)
"""
