"""A node in a process of its own, for the remote tests that kill, stop or race processes.

``python -m tests.remote.node_process URL NODE NAME [NAME...]`` joins the cluster
"default" as NODE, publishes a `Counter` under each NAME (a NAME ``entities:KIND`` hosts
counter entities of KIND instead), prints ``ready`` and serves until its stdin closes
(or it is killed).
"""

from __future__ import annotations

import sys

import trio

import hybrid
from hybrid.remote import connect
from tests.remote.agents import Counter


def counter_of(key: str) -> Counter:
    """The entity of `key`: a counter."""
    return Counter()


async def serve(url: str, node: str, names: list[str]) -> None:
    async with (
        connect(url, node=node, reconnect_wait=0.05, connect_timeout=5.0, lease=1) as the_node,
        trio.open_nursery() as nursery,
    ):
        for name in names:
            if name.startswith("entities:"):
                await the_node.host_entities(name.removeprefix("entities:"), counter_of)
                continue
            address = await nursery.start(hybrid.AgentRunner(Counter()).run)
            await the_node.publish(name, address)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(serve, sys.argv[1], sys.argv[2], sys.argv[3:])
