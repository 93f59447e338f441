"""Names and the NATS subjects, streams and buckets built from them.

A name (of an agent, a node, a queue, a shard kind, a queue group) becomes one token of
a NATS subject, part of a JetStream stream or consumer name (a file name on the server)
and part of a KV key. The rule that is safe in all of them is the intersection:
1 to 64 ASCII letters, digits, ``-`` and ``_``. NATS itself would let most bad names
through on publish (the server then drops the message without a word), so they are
refused here, before any I/O, with a ``ValueError`` naming the bad character.

A cluster name follows the same rule without ``_``: it is joined to other names with
``_`` in stream names (``HYBRID_<cluster>_Q_<queue>``), and a ``_`` inside it would let
two clusters' names collide.

The layout of one cluster (every name checked):

| use                                  | subject, stream, bucket or key                   |
| ------------------------------------ | ------------------------------------------------ |
| send/request to a published agent    | ``hybrid.<cluster>.agent.<name>``                |
| an agent ended (monitors, ``join``)  | ``hybrid.<cluster>.ended.<name>``                |
| node control (spawn, ping, ...)      | ``hybrid.<cluster>.node.<node>.ctl``             |
| sharded entities of a kind on a node | ``hybrid.<cluster>.node.<node>.shard.<kind>``    |
| work queue                           | subject ``hybrid.<cluster>.jobs.<queue>``,       |
|                                      | stream ``HYBRID_<cluster>_Q_<queue>``            |
| name registry (KV)                   | bucket ``hybrid_<cluster>_names``, key           |
|                                      | ``agent.<name>``                                 |
| nodes hosting entities of a kind     | key ``shard.<kind>.<node>`` in the names bucket  |
| node membership leases (KV)          | bucket ``hybrid_<cluster>_nodes``, key           |
|                                      | ``node.<node>``                                  |

Subjects given to the transport directly are checked too: a subject to publish to
(`check_subject`) is dot-separated non-empty tokens without whitespace or wildcards; a
subscription's subject (`check_pattern`) may also use ``*`` as a whole token and ``>``
as the whole last token.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "NAME_MAX",
    "agent_subject",
    "check_cluster",
    "check_name",
    "check_pattern",
    "check_subject",
    "ended_subject",
    "jobs_stream",
    "jobs_subject",
    "name_key",
    "names_bucket",
    "node_control_subject",
    "node_key",
    "nodes_bucket",
    "shard_key",
    "shard_subject",
]

NAME_MAX: Final = 64
"""The longest name, in characters."""

_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLUSTER: Final = re.compile(r"[A-Za-z0-9-]{1,64}")
_RULE: Final = f"use 1 to {NAME_MAX} ASCII letters, digits, '-' or '_'"
_CLUSTER_RULE: Final = f"use 1 to {NAME_MAX} ASCII letters, digits or '-'"

# One subject token: anything but the separator, the wildcards, whitespace and
# control characters (the protocol line would break, or the server would drop it).
_SUBJECT_PART: Final = r"[^.*>\s\x00-\x1f\x7f]+"
_NOT_IN_TOKEN: Final = re.compile(r"[*>\s\x00-\x1f\x7f]")
_SUBJECT: Final = re.compile(rf"{_SUBJECT_PART}(?:\.{_SUBJECT_PART})*")
_PATTERN: Final = re.compile(rf"(?:{_SUBJECT_PART}|\*)(?:\.(?:{_SUBJECT_PART}|\*))*(?:\.>)?|>")


def _describe(char: str) -> str:
    """How an error message names a character a name or subject may not hold."""
    if char == ".":
        return "'.' (a dot: it separates subject tokens)"
    if char in "*>":
        return f"{char!r} (a subject wildcard)"
    if char.isspace():
        return f"{char!r} (whitespace)"
    if not char.isprintable():
        return f"{char!r} (a control character)"
    if not char.isascii():
        return f"{char!r} (not ASCII)"
    return repr(char)


def _shown(text: str) -> str:
    """`text` as an error message shows it: its repr, cut short when long."""
    return repr(text) if len(text) <= 80 else f"{text[:80]!r}... ({len(text)} characters)"


def _check(name: object, what: str, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {name!r}")
    # A str subclass (a ``(str, Enum)`` member) as its plain value: formatted into a subject
    # or a key, it would be its own str() ("Names.LEDGER" on Python 3.11), not its value.
    name = str.__str__(name)
    if pattern.fullmatch(name):
        return name
    bad = next(((i, c) for i, c in enumerate(name) if not pattern.fullmatch(c)), None)
    if not name:
        problem = "it is empty"
    elif bad is not None:
        problem = f"{_describe(bad[1])} at index {bad[0]} is not allowed"
    else:
        problem = f"it is {len(name)} characters long, more than {NAME_MAX}"
    raise ValueError(f"invalid {what} {_shown(name)}: {problem}; {rule}")


def check_name(name: object, what: str = "name") -> str:
    """`name` if it is a valid name (1 to 64 of ``[A-Za-z0-9_-]``), else an error.

    Args:
        name: the name to check.
        what: what the name is, for the error message ("agent name", "node name").

    Returns:
        `name`, unchanged.

    Raises:
        TypeError: `name` is not a str.
        ValueError: `name` is empty, too long, or holds another character (the
            message names the first one and its index).
    """
    return _check(name, what, _NAME, _RULE)


def check_cluster(name: object) -> str:
    """`name` if it is a valid cluster name (1 to 64 of ``[A-Za-z0-9-]``), else an error.

    Raises:
        TypeError: `name` is not a str.
        ValueError: `name` is empty, too long, or holds another character
            (``_`` included: see the module's docstring).
    """
    return _check(name, "cluster name", _CLUSTER, _CLUSTER_RULE)


def _subject_problem(subject: str, *, wildcards: bool) -> str:
    """Why `subject` is not a valid subject (a pattern, when `wildcards`)."""
    if not subject:
        return "it is empty"
    tokens = subject.split(".")
    for index, part in enumerate(tokens):
        if not part:
            return f"token {index} is empty (a leading, trailing or doubled '.')"
        if wildcards and (part == "*" or (part == ">" and index == len(tokens) - 1)):
            continue
        found = _NOT_IN_TOKEN.search(part)
        if found is None:
            continue
        char = found.group()
        if wildcards and char in "*>":
            return f"{_describe(char)} in token {index} must be a whole token ('>' only the last one)"
        return f"{_describe(char)} in token {index} is not allowed"
    raise AssertionError(f"no problem found in the subject {subject!r}")  # pragma: no cover - unreachable


def check_subject(subject: object) -> str:
    """`subject` if messages can be sent to it: non-empty tokens, no wildcards or whitespace.

    Raises:
        TypeError: `subject` is not a str.
        ValueError: an empty subject or token, a wildcard, whitespace or a
            control character (the message names it).
    """
    if not isinstance(subject, str):
        raise TypeError(f"a subject must be a str, got {subject!r}")
    if _SUBJECT.fullmatch(subject):
        return subject
    raise ValueError(f"invalid subject {_shown(subject)}: {_subject_problem(subject, wildcards=False)}")


def check_pattern(subject: object) -> str:
    """`subject` if it can be subscribed to: `check_subject`'s rule, with ``*`` and a last ``>`` tokens.

    Raises:
        TypeError: `subject` is not a str.
        ValueError: an empty subject or token, a wildcard inside a token or
            ``>`` before the last token, whitespace or a control character.
    """
    if not isinstance(subject, str):
        raise TypeError(f"a subject must be a str, got {subject!r}")
    if _PATTERN.fullmatch(subject):
        return subject
    raise ValueError(f"invalid subject {_shown(subject)}: {_subject_problem(subject, wildcards=True)}")


def agent_subject(cluster: str, name: str) -> str:
    """The subject of the agent published as `name`: ``hybrid.<cluster>.agent.<name>``."""
    return f"hybrid.{check_cluster(cluster)}.agent.{check_name(name, 'agent name')}"


def ended_subject(cluster: str, name: str) -> str:
    """Where the end of the agent published as `name` is announced: ``hybrid.<cluster>.ended.<name>``."""
    return f"hybrid.{check_cluster(cluster)}.ended.{check_name(name, 'agent name')}"


def node_control_subject(cluster: str, node: str) -> str:
    """The control subject of a node (spawn, ping, ...): ``hybrid.<cluster>.node.<node>.ctl``."""
    return f"hybrid.{check_cluster(cluster)}.node.{check_name(node, 'node name')}.ctl"


def shard_subject(cluster: str, node: str, kind: str) -> str:
    """Where a node takes the entities of `kind` it hosts: ``hybrid.<cluster>.node.<node>.shard.<kind>``."""
    node = check_name(node, "node name")
    return f"hybrid.{check_cluster(cluster)}.node.{node}.shard.{check_name(kind, 'entity kind')}"


def jobs_subject(cluster: str, queue: str) -> str:
    """The subject jobs of the work queue `queue` are published to: ``hybrid.<cluster>.jobs.<queue>``."""
    return f"hybrid.{check_cluster(cluster)}.jobs.{check_name(queue, 'queue name')}"


def jobs_stream(cluster: str, queue: str) -> str:
    """The JetStream stream of the work queue `queue`: ``HYBRID_<cluster>_Q_<queue>``."""
    return f"HYBRID_{check_cluster(cluster)}_Q_{check_name(queue, 'queue name')}"


def names_bucket(cluster: str) -> str:
    """The KV bucket of the cluster's name registry: ``hybrid_<cluster>_names``."""
    return f"hybrid_{check_cluster(cluster)}_names"


def nodes_bucket(cluster: str) -> str:
    """The KV bucket of the cluster's node leases: ``hybrid_<cluster>_nodes``."""
    return f"hybrid_{check_cluster(cluster)}_nodes"


def name_key(name: str) -> str:
    """The registry key of the agent published as `name`: ``agent.<name>``."""
    return f"agent.{check_name(name, 'agent name')}"


def shard_key(kind: str, node: str) -> str:
    """The registry key saying that `node` hosts entities of `kind`: ``shard.<kind>.<node>``."""
    return f"shard.{check_name(kind, 'entity kind')}.{check_name(node, 'node name')}"


def node_key(node: str) -> str:
    """The membership key of the node `node`: ``node.<node>``."""
    return f"node.{check_name(node, 'node name')}"
