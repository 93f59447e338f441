"""`rendezvous`: which node owns a key (highest random weight hashing)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TypeVar

N = TypeVar("N")


def _key_bytes(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    raise TypeError(f"a rendezvous key must be str or bytes, got {type(key).__name__}: {key!r}")


def _weighed(key: str | bytes, nodes: Iterable[N]) -> list[tuple[int, bytes, N]]:
    """(weight, identity, node) for each node, in the order given, checked."""
    data = _key_bytes(key)
    # The key's length first, so that no (key, identity) pair hashes as another.
    prefix = hashlib.blake2b(len(data).to_bytes(8, "big") + data, digest_size=8)
    weighed: list[tuple[int, bytes, N]] = []
    seen: set[bytes] = set()
    for node in nodes:
        identity = node if isinstance(node, bytes) else str(node).encode("utf-8")
        if identity in seen:
            raise ValueError(f"two rendezvous nodes have the same identity {identity.decode('utf-8', 'replace')!r}")
        seen.add(identity)
        digest = prefix.copy()
        digest.update(identity)
        weighed.append((int.from_bytes(digest.digest(), "big"), identity, node))
    if not weighed:
        raise ValueError("rendezvous needs at least one node, got none")
    return weighed


def rendezvous(key: str | bytes, nodes: Iterable[N]) -> N:
    """The node that owns `key`: the one of highest weight for it (rendezvous hashing).

    Each node's weight for a key is a stable 64-bit hash (BLAKE2b, 8-byte
    digest) of the key (a str as UTF-8) and of the node's identity (the node
    itself if it is `bytes`, else ``str(node)`` as UTF-8). The result is
    therefore the same in every process and every Python run (no `hash()`,
    no seed), and it depends on the set of nodes, not on their order. Ties
    (as likely as a 64-bit collision) go to the greater identity.

    What makes it useful: when a node leaves, only the keys it owned move
    (each to its own next-best node); when a node joins, the only keys that
    move are those it now owns. Keys spread evenly over the nodes.

    Cost: one hash per node, so O(len(nodes)) per call; for a few hundred
    nodes that is microseconds.

    Args:
        key: what to place: a str or bytes.
        nodes: the candidates, iterated once: anything whose ``str()`` names
            it uniquely and stays the same (node names, host:port, ids), or
            bytes. For agents, place over their names (``address.name``), not
            their `hybrid.Address` objects, whose text changes with their phase.

    Returns:
        The node of highest weight for `key`.

    Raises:
        TypeError: `key` is neither str nor bytes.
        ValueError: `nodes` is empty, or two nodes have the same identity.

    Example:
        ```python
        shards = ["db-1", "db-2", "db-3"]
        home = hybrid.rendezvous(f"user:{user_id}", shards)
        ```
    """
    return max(_weighed(key, nodes), key=lambda item: (item[0], item[1]))[2]


def rendezvous_ranked(key: str | bytes, nodes: Iterable[N]) -> list[N]:
    """Every node, by decreasing weight for `key`: the owner first, then its fallbacks.

    The first element is [`rendezvous(key, nodes)`][hybrid.rendezvous]; take
    the first ``r`` for ``r`` replicas of a key. Removing a node keeps the
    others in the same relative order, so a key's replicas move as little as
    they can. Weights, ties and errors are those of `rendezvous`.

    Args:
        key: what to place: a str or bytes.
        nodes: the candidates, iterated once.

    Returns:
        All the nodes, highest weight first.

    Raises:
        TypeError: `key` is neither str nor bytes.
        ValueError: `nodes` is empty, or two nodes have the same identity.

    Example:
        ```python
        replicas = hybrid.rendezvous_ranked(f"doc:{doc_id}", storage_nodes)[:3]
        ```
    """
    weighed = _weighed(key, nodes)
    weighed.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [node for _, _, node in weighed]
