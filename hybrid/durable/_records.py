"""What the store keeps, as plain records shared by the codec, the backends and the store.

Nothing here touches a database or a codec: these are the values that pass
between the trio side (`Store`), the writer thread (`Journal`) and the SQL
backends (SQLite, Postgres), which keep the same schema and semantics.

Per key the store keeps one *checkpoint row* (the latest transition, or the
ending once the key finished) and an append-only *event log*.

Fencing (like Orleans' ETags): every claim of a key (a first start, or a resume)
takes the next *epoch*; every write names the epoch it was made under and the
*seq* of its transition, and the backend applies it only while the row still has
that epoch and an older seq. A stale incarnation's write is refused (`hybrid.durable.Fenced`),
never applied over a newer one.
"""

from __future__ import annotations

import enum

import attrs


class StepKind(enum.StrEnum):
    """What a checkpoint says the agent does next, when resumed from it."""

    BEGIN = "begin"  # spawned, no state entered yet: resume calls begin() again
    ASYNC = "async"  # Next.do_async(state, *args)
    SYNC = "sync"  # Next.do_sync(state, *args)
    EVENTS = "events"  # actor mode (the mailbox is not durable)


class Status(enum.StrEnum):
    """Where a key stands."""

    RUNNING = "running"  # unfinished: resumed by store.resume() / store.run()
    DONE = "done"  # Next.done(output): output recorded
    FAILED = "failed"  # ended with an error: its type and text recorded
    STOPPED = "stopped"  # Next.stop(), an interrupt, or cancelled on purpose: not resumed


@attrs.frozen
class Checkpoint:
    """The latest transition of a running key: enough to rebuild the agent and go on.

    Attributes:
        key: the key the agent runs under.
        epoch: the incarnation that holds the key now (fencing); >= 1.
        seq: the transition number within the key, counted across incarnations
            (0 = the spawn record, written before the first state).
        agent_class: the registry name of the agent's class.
        version: that class's checkpoint version when the row was written.
        kind: what the agent does next (`StepKind`).
        state: the state method's name (`""` for BEGIN and EVENTS).
        payload: the codec's bytes: the agent's fields and the state's arguments.
    """

    key: str
    epoch: int
    seq: int
    agent_class: str
    version: int
    kind: StepKind
    state: str
    payload: bytes


@attrs.frozen
class Ending:
    """How a finished key ended.

    Attributes:
        status: DONE, FAILED or STOPPED (never RUNNING).
        output: the codec's bytes for Next.done's value (DONE only, else None).
        error: ``"TypeName: text"`` of the failure (FAILED only, else None).
    """

    status: Status
    output: bytes | None
    error: str | None


@attrs.frozen
class Claim:
    """What claiming a key found; the claim took `epoch`, fencing off older incarnations.

    Exactly one of these holds: `ending` is set (the key finished: nothing claimed,
    `epoch` is the last one), `checkpoint` is set (the key is unfinished: resume from
    it), or both are None (a new key: the spawn record was written under `epoch`).
    """

    epoch: int
    checkpoint: Checkpoint | None
    ending: Ending | None


@attrs.frozen
class Event:
    """One entry of a key's event log (append-only, oldest first).

    Attributes:
        key: the key.
        epoch: the incarnation that wrote it.
        seq: the transition number (as in `Checkpoint`).
        time: when it was committed, seconds since the epoch (UTC).
        kind: "spawned", "resumed", a `StepKind` value ("async", "sync", "events"),
            an ending `Status` value ("done", "failed", "stopped"), or "error": a
            supervised run failed and the key stays unfinished (its restart goes on).
        state: the state's name for "async"/"sync", else "".
        detail: the error text for "failed" and "error", else "".
    """

    key: str
    epoch: int
    seq: int
    time: float
    kind: str
    state: str
    detail: str
