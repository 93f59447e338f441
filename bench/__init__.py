"""The benchmark suite of hybrid: each workload against plain trio and asyncio, and peers.

Run it from the repository root with ``python -m bench`` (``--help`` for the
options); see ``bench/README.md`` for what each workload measures.

- ``run.py``: the command line, the tables and the JSON file
- ``workloads.py``: W1-W8, each as a hybrid side and a plain-trio side
- ``asyncio_side.py``: W1-W8 hand-written on asyncio, measured with both sides
- ``peers.py``: tell and ask on asyncio, Pykka and Thespian
- ``agent_peers.py``: a 3-step run, a message and a request on LangGraph,
  pydantic-graph and autogen-core
- ``scaling.py``: 1k-100k idle agents, 1-1,000 callers, 1-16 pipeline workers
- ``_harness.py``: alternation, gc, statistics, result checks
- ``_memory.py``: the W3 memory measurement, run in fresh processes
- ``profile.py``: profile hybrid's side of each workload (pyinstrument)
"""
