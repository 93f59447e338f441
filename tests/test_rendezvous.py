"""hybrid.rendezvous: stable highest-random-weight placement; minimal movement when nodes come and go."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import assume, given, settings
from typing_extensions import assert_type

import hybrid

SETTINGS = settings(max_examples=80, deadline=None)

node_names = st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=12, unique=True)
keys = st.lists(st.text(max_size=20) | st.binary(max_size=20), min_size=1, max_size=40)


def owners(key_list: list[Any], nodes: list[str]) -> dict[Any, str]:
    return {key: hybrid.rendezvous(key, nodes) for key in key_list}


def test_the_result_is_pinned_across_processes_and_python_runs() -> None:
    """No hash(), no seed: these placements are the same everywhere, forever (a change here breaks deployments)."""
    assert hybrid.rendezvous("user:42", ["a", "b", "c"]) == "c"
    assert hybrid.rendezvous(b"k", [b"x", b"y"]) == b"y"
    assert hybrid.rendezvous_ranked("user:42", ["a", "b", "c"]) == ["c", "a", "b"]


def test_the_weight_is_blake2b_of_the_key_and_the_node_identity() -> None:
    """The documented weight: BLAKE2b (8 bytes) over the key's length (8 bytes, big-endian), the key, the identity."""

    def weight(key: bytes, identity: bytes) -> int:
        data = len(key).to_bytes(8, "big") + key + identity
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")

    nodes = [f"node-{n}" for n in range(7)]
    for key in ("alpha", "beta", "γάμμα", ""):
        expected = max(nodes, key=lambda node: weight(key.encode(), node.encode()))
        assert hybrid.rendezvous(key, nodes) == expected


def test_a_str_key_and_its_utf8_bytes_place_alike() -> None:
    """A str key is hashed as its UTF-8 bytes; a str node as str(node) in UTF-8, a bytes node as itself."""
    nodes = ["n1", "n2", "n3", "n4"]
    for key in ("k1", "ключ", "🔑"):
        assert hybrid.rendezvous(key, nodes) == hybrid.rendezvous(key.encode(), nodes)
        placed = hybrid.rendezvous(key, [node.encode() for node in nodes])
        assert placed == hybrid.rendezvous(key, nodes).encode()


def test_nodes_are_any_objects_named_by_str() -> None:
    """The node returned is the object given (not its identity), so addresses or records can be placed on."""

    @attrs.frozen
    class Node:
        host: str
        port: int

        def __str__(self) -> str:
            return f"{self.host}:{self.port}"

    nodes = [Node("a", 1), Node("b", 2), Node("c", 3)]
    owner = hybrid.rendezvous("key", nodes)
    assert_type(owner, Node)
    assert owner in nodes
    assert str(owner) == hybrid.rendezvous("key", [str(node) for node in nodes])


def test_a_single_node_owns_everything() -> None:
    """With one node, every key goes there."""
    assert hybrid.rendezvous("anything", ["only"]) == "only"


def test_no_nodes_is_a_value_error() -> None:
    """An empty iterable has no owner."""
    with pytest.raises(ValueError, match="at least one node"):
        hybrid.rendezvous("k", [])
    with pytest.raises(ValueError, match="at least one node"):
        hybrid.rendezvous_ranked("k", iter([]))


def test_two_nodes_with_one_identity_are_a_value_error_naming_it() -> None:
    """Two nodes that hash alike would make the owner depend on their order: refused."""
    with pytest.raises(ValueError, match="'db-1'"):
        hybrid.rendezvous("k", ["db-1", "db-2", "db-1"])
    with pytest.raises(ValueError, match="'7'"):
        hybrid.rendezvous("k", [7, "7"])
    with pytest.raises(ValueError, match="'x'"):
        hybrid.rendezvous("k", ["x", b"x"])


@pytest.mark.parametrize("key", [42, None, bytearray(b"k"), ["k"]])
def test_a_key_that_is_neither_str_nor_bytes_is_a_type_error(key: Any) -> None:
    """Only str and bytes are keys: anything else has no stable byte form."""
    with pytest.raises(TypeError, match="str or bytes"):
        hybrid.rendezvous(key, ["a", "b"])


def test_the_nodes_are_iterated_once() -> None:
    """A generator of nodes works."""
    assert hybrid.rendezvous("user:42", (name for name in ["a", "b", "c"])) == "c"


@SETTINGS
@given(nodes=node_names, key_list=keys, data=st.data())
def test_the_result_does_not_depend_on_the_order_of_the_nodes(
    nodes: list[str], key_list: list[Any], data: st.DataObject
) -> None:
    """Any permutation of the nodes gives every key the same owner (and the same ranking)."""
    shuffled = data.draw(st.permutations(nodes))
    assert owners(key_list, nodes) == owners(key_list, shuffled)
    for key in key_list:
        assert hybrid.rendezvous_ranked(key, nodes) == hybrid.rendezvous_ranked(key, shuffled)


@SETTINGS
@given(nodes=node_names, key_list=keys, data=st.data())
def test_removing_a_node_moves_only_the_keys_it_owned(
    nodes: list[str], key_list: list[Any], data: st.DataObject
) -> None:
    """Keys owned by the other nodes stay; the removed node's keys go to their next-ranked node."""
    gone = data.draw(st.sampled_from(nodes))
    left = [node for node in nodes if node != gone]
    before, after = owners(key_list, nodes), owners(key_list, left)
    for key in key_list:
        if before[key] != gone:
            assert after[key] == before[key]
        else:
            assert after[key] == hybrid.rendezvous_ranked(key, nodes)[1]


@SETTINGS
@given(nodes=node_names, key_list=keys, new=st.text(min_size=1, max_size=12))
def test_adding_a_node_moves_keys_only_to_the_new_node(nodes: list[str], key_list: list[Any], new: str) -> None:
    """A key either keeps its owner or moves to the newcomer, never between old nodes."""
    assume(new not in nodes)
    before, after = owners(key_list, nodes), owners(key_list, [*nodes, new])
    for key in key_list:
        assert after[key] in (before[key], new)


@SETTINGS
@given(nodes=node_names, key=st.text(max_size=20))
def test_the_ranking_starts_with_the_owner_and_holds_every_node_once(nodes: list[str], key: str) -> None:
    """hybrid.rendezvous_ranked(key, nodes)[0] is the owner; the ranking is a permutation of the nodes."""
    ranked = hybrid.rendezvous_ranked(key, nodes)
    assert ranked[0] == hybrid.rendezvous(key, nodes)
    assert sorted(ranked) == sorted(nodes)


@SETTINGS
@given(nodes=node_names, key=st.text(max_size=20), data=st.data())
def test_removing_a_node_keeps_the_relative_order_of_the_others(
    nodes: list[str], key: str, data: st.DataObject
) -> None:
    """The replicas of a key move as little as they can: the ranking without a node is the ranking minus it."""
    gone = data.draw(st.sampled_from(nodes))
    left = [node for node in nodes if node != gone]
    assert hybrid.rendezvous_ranked(key, left) == [
        node for node in hybrid.rendezvous_ranked(key, nodes) if node != gone
    ]


def test_keys_spread_evenly_over_the_nodes() -> None:
    """A loose uniformity check on fixed inputs (deterministic: no flakiness): each of 8 nodes gets 12.5% ± 2.5%."""
    nodes = [f"10.0.0.{n}:7000" for n in range(8)]
    counts = Counter(hybrid.rendezvous(f"session-{n}", nodes) for n in range(16_000))
    assert set(counts) == set(nodes)
    for node in nodes:
        assert 1_600 <= counts[node] <= 2_400, counts


def test_removing_a_node_spreads_its_keys_over_the_others() -> None:
    """The keys of a removed node do not all land on one neighbour (as on a hash ring without virtual nodes)."""
    nodes = [f"n{n}" for n in range(5)]
    key_list = [f"k{n}" for n in range(5_000)]
    moved = Counter(hybrid.rendezvous(key, nodes[1:]) for key in key_list if hybrid.rendezvous(key, nodes) == nodes[0])
    assert set(moved) == set(nodes[1:])
    total = sum(moved.values())
    for node in nodes[1:]:
        assert 0.15 * total <= moved[node] <= 0.35 * total, moved
