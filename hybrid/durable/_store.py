"""`Store`: durable runs of agents by key, on a `Journal` (the database) and a `Codec` (the bytes).

A durable run is an ordinary agent run with a `hybrid.Checkpointer`, the
`KeyCheckpointer` below. What it writes, and when:

- **Claim**, before the run: the key takes its next epoch, which fences off
  any older incarnation still writing. A new key's *spawn record* (the
  agent's fields, ``StepKind.BEGIN``) commits now, before ``begin()`` runs,
  so a crash before the first state still resumes (from ``begin()``).
  `Store.run`, `Store.spawn` and `Store.resume` claim before they start the
  agent (their errors are raised at the call); the checkpointer of a
  supervised child (`Store.checkpointer`) claims as each run starts.
- **Transition**: each ``do_async``/``do_sync`` (and the entry into actor
  mode) is saved before the state it names starts (`Durability.SYNC`), or
  queued for the next group commit, at most one in flight per agent
  (`Durability.ASYNC`).
- **Message** (actor mode): after each handled message the fields are
  encoded again and saved if they changed.
- **Ending**: DONE (with the output), STOPPED, or FAILED (``"Type: text"``)
  replaces the key's checkpoint. An interrupted or cancelled run, a
  BaseException (KeyboardInterrupt), a failure of the database (`StoreError`)
  or of fencing (`Fenced`), and any failure of a supervised child leave the
  key unfinished: resumed next time, from its last checkpoint.

The store keeps which keys run now in this process (`Store.live_keys`): one
live run per key (`KeyInUse`).
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import AsyncGenerator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio

from hybrid import Address, Agent, AgentRunner, LifecycleError, Next, StopKind, StopReason, _validate, spawn

from ._codec import Codec
from ._errors import CheckpointError, DurableError, Fenced, KeyInUse, StoreError
from ._journal import Journal, Pending, open_journal
from ._leases import DEFAULT_POLL_INTERVAL, DurableLeases
from ._records import Checkpoint, Claim, Ending, Event, Status, StepKind

logger = logging.getLogger("hybrid.durable")


class Durability(enum.StrEnum):
    """When a transition's checkpoint commits, relative to the state it names.

    - ``SYNC`` (the default, pinned): the checkpoint commits before the state
      starts. A crash loses nothing that ran; a state runs again after a
      crash only if it had started and not yet returned.
    - ``ASYNC`` (write-behind): the state starts at once and its checkpoint
      commits with the next group commit. A crash may lose the last
      transitions of an agent (it resumes from an earlier one and runs them
      again: ``ctx.idempotency_key`` then repeats too). An agent has at most
      one checkpoint in flight: its next write (or its ending) first waits
      for the previous commit, so memory stays bounded, and the error of a
      refused or failed write (`Fenced`, `StoreError`) fails the agent
      there, at its next transition or its ending.
    """

    SYNC = "sync"
    ASYNC = "async"


class RestartFrom(enum.StrEnum):
    """Where each run of a supervised durable child (`Store.checkpointer`) starts when its key is unfinished."""

    CHECKPOINT = "checkpoint"
    """From its last checkpoint: the factory's new instance takes the saved fields; the saved state runs again."""
    SCRATCH = "scratch"
    """From ``begin()`` of the factory's new instance: a new spawn record replaces the checkpoint."""


class RecordedFailure(DurableError):
    """The key failed in an earlier run; its error was recorded as ``"Type: text"`` (`error`).

    Raised by `Store.run` (and the failure of an agent spawned under the key)
    instead of running a failed key again.

    Attributes:
        key: the key.
        error: the recorded ``"Type: text"`` of the original failure.
    """

    def __init__(self, key: str, error: str) -> None:
        super().__init__(f"key {key!r} failed earlier: {error}")
        self.key = key
        self.error = error


@final
class Store:
    """Durable agents by key: each transition checkpointed, resumed after a crash.

    Made by `open_store`, which owns the database connection; use it in the
    trio run that opened it. One live run per key in a store (`KeyInUse`);
    a run of the key in another store or process fences off this one
    (`Fenced`). Once `open_store`'s block has ended, every method raises
    `StoreError`, and an agent still running fails at its next transition.
    The same database also holds leases shared across processes: `leases`.

    Example:
        ```python
        async with hybrid.durable.open_store("orders.db") as store:
            print(await store.run(Checkout("o-17"), key="o-17"))
        ```
    """

    __slots__ = ("_closed", "_codec", "_durability", "_journal", "_lease_freed", "_live")

    _journal: Journal
    """The database: every read and write goes through its writer thread."""
    _codec: Codec
    """The agent classes this store knows, and their encoders."""
    _durability: Durability
    """The default of every run of this store."""
    _live: dict[str, KeyCheckpointer]
    """Keys with a live run in this process (claimed, not ended): written by the checkpointers."""
    _closed: bool
    """Set once, when `open_store` exits: nothing more is read or written."""
    _lease_freed: dict[str, trio.Event]
    """Names whose lease a task of this store waits for (`DurableLeases.wait_free`): set and removed
    by a release through this store, removed by the last waiter to stop waiting."""

    def __init__(self) -> None:
        raise TypeError("Store has no public constructor: use hybrid.durable.open_store(url)")

    @classmethod
    def _make(cls, journal: Journal, codec: Codec, durability: Durability) -> Store:
        store = object.__new__(cls)
        store._journal = journal
        store._codec = codec
        store._durability = durability
        store._live = {}
        store._closed = False
        store._lease_freed = {}
        return store

    @property
    def durability(self) -> Durability:
        """When checkpoints commit for a run that does not say (see `Durability`)."""
        return self._durability

    def register(self, cls: type[Agent[Any]]) -> str:
        """Make `cls` known, so that its unfinished keys can be resumed; return its checkpoint name.

        `run` and `spawn` register the class of the agent they get; register
        the others (or pass ``agents=`` to `open_store`) before `resume`.

        Raises:
            CheckpointError: `cls` is not an attrs agent class, has a field
                whose annotation cannot be checkpointed, or its name is taken
                by another class.
        """
        return self._codec.register(cls)

    def live_keys(self) -> list[str]:
        """The keys that have a live run in this store now, sorted."""
        return sorted(self._live)

    async def run(self, agent: Agent[Any], *, key: str, durability: Durability | str | None = None) -> Any:
        """Run `agent` under `key` in the current task and return its output.

        If `key` has an unfinished checkpoint, the run resumes from it with a
        new instance decoded from the checkpoint, and `agent` is discarded
        (its class must match). A key that finished ends at once with its
        recorded ending, without running ``begin()`` or any state: its
        output (DONE), `RecordedFailure` (FAILED) or None (STOPPED). The
        agent's failure is raised here, as `Agent.run` does.

        Raises:
            KeyInUse: `key` has a live run in this store.
            CheckpointError: `agent` cannot be checkpointed, the key's
                checkpoint cannot be decoded or is of another class, or a
                transition of the run cannot be saved.
            StoreError: the database failed (the key stays unfinished).
            Fenced: a run of the key elsewhere took it over.
            RecordedFailure: the key failed in an earlier run.
        """
        checkpointer, instance = await self._claim(agent, key, durability)
        try:
            runner = AgentRunner(instance, checkpointer=checkpointer)
        except BaseException:  # pragma: no cover - checked before the claim: a fresh instance is accepted
            checkpointer._release()  # noqa: SLF001 - the store's own checkpointer
            raise
        reason = await runner.run()
        if reason.error is not None:
            raise reason.error
        return runner.output

    async def spawn(
        self,
        nursery: trio.Nursery,
        agent: Agent[Any],
        *,
        key: str,
        durability: Durability | str | None = None,
        mailbox_capacity: int | float | None = None,
    ) -> Address[Any]:
        """Start `agent` under `key` as a task in `nursery` (as `hybrid.spawn` does); return its address.

        Claims the key first (awaiting the database), so a refused key is
        raised here. If `key` has an unfinished checkpoint the run resumes
        from it and `agent` is discarded; a finished key's agent ends at once
        with its recorded ending (`join()` returns the output, or raises
        `RecordedFailure`, which also leaves `nursery` as a failed agent's
        error does).

        If `hybrid.spawn` itself refuses the agent after the claim (a closed
        nursery, a bad `mailbox_capacity`), its error is raised and the key
        stays as claimed: unfinished, resumed by a later run or `resume`.

        Raises:
            KeyInUse: `key` has a live run in this store.
            CheckpointError: `agent` cannot be checkpointed, or the key's
                checkpoint cannot be decoded or is of another class.
            StoreError: the database failed.
        """
        if not isinstance(nursery, trio.Nursery):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"Store.spawn needs a trio nursery to run the agent in, got {nursery!r}")
        checkpointer, instance = await self._claim(agent, key, durability)
        try:
            address: Address[Any] = spawn(
                nursery, instance, mailbox_capacity=mailbox_capacity, checkpointer=checkpointer
            )
        except BaseException:
            checkpointer._release()  # noqa: SLF001 - the store's own checkpointer
            raise
        return address

    async def resume(self, nursery: trio.Nursery, *, durability: Durability | str | None = None) -> list[Address[Any]]:
        """Spawn every unfinished key of the store that has no live run here; return their addresses.

        Call it once after a process restart. Every checkpoint is decoded
        before any key is claimed, so a checkpoint that cannot be decoded (a
        class not registered, a class that changed shape) raises here, and
        no agent starts and no key is claimed. A key that another process
        finished after it was listed is skipped. The keys are claimed one by
        one, then all spawned; if a claim fails, the keys claimed so far are
        released, unstarted (still unfinished), and so are the keys not yet
        spawned if a spawn fails (a closed nursery).

        Raises:
            CheckpointError: a checkpoint cannot be decoded (naming its key).
            StoreError: the database failed.
        """
        if not isinstance(nursery, trio.Nursery):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"Store.resume needs a trio nursery to run the agents in, got {nursery!r}")
        self._check_open()
        mode = self._mode(durability)
        listed = [c for c in await self._journal.unfinished() if c.key not in self._live]
        for checkpoint in listed:
            self._codec.decode_step(checkpoint)  # raises, naming the key, before anything is claimed
        ready: list[tuple[KeyCheckpointer, Agent[Any]]] = []
        try:
            for checkpoint in listed:
                if checkpoint.key in self._live:  # started meanwhile, by another task of this store
                    continue
                checkpointer = KeyCheckpointer._make(self, checkpoint.key, mode, None)
                instance = await checkpointer._claim_listed(checkpoint)  # noqa: SLF001
                if instance is not None:
                    ready.append((checkpointer, instance))
        except BaseException:
            for checkpointer, _ in ready:
                checkpointer._release()  # noqa: SLF001
            raise
        addresses: list[Address[Any]] = []
        for index, (checkpointer, instance) in enumerate(ready):
            try:
                addresses.append(spawn(nursery, instance, checkpointer=checkpointer))
            except BaseException:  # re-raised: the keys not started here are released, as a failed claim's
                for unstarted, _ in ready[index:]:
                    unstarted._release()  # noqa: SLF001
                raise
        return addresses

    def checkpointer(
        self,
        key: str,
        *,
        restart_from: RestartFrom | str = RestartFrom.CHECKPOINT,
        durability: Durability | str | None = None,
    ) -> KeyCheckpointer:
        """A checkpointer for a supervised durable child: ``ctx.spawn(factory, checkpointer=...)``.

        The supervisor gives it to every run of the child. Each run claims
        the key when it starts (``KeyInUse`` then fails that run): if the key
        has an unfinished checkpoint, the factory's new instance takes the
        checkpoint's fields and goes on from its state
        (``restart_from="checkpoint"``, the default), or starts again with
        ``begin()`` (``"scratch"``). Any failure of a run leaves the key
        unfinished, so that the restart goes on from it. A finished key's
        child ends at once with its recorded ending: give such children
        ``restart=Restart.TRANSIENT``, or a permanent one is restarted (and
        ends at once) until the restart intensity gives up.

        Example:
            ```python
            self.ctx.spawn(
                functools.partial(Checkout, "o-17"),
                restart=hybrid.Restart.TRANSIENT,
                checkpointer=store.checkpointer("o-17"),
            )
            ```

        Raises:
            StoreError: the store is closed.
            TypeError: `key` is not a non-empty str.
            ValueError: `key` holds a NUL or a lone surrogate (no database stores them), or is
                longer than 1,024 bytes of UTF-8 (Postgres indexes no longer one).
            ValueError: an unknown `restart_from` or `durability`.
        """
        self._check_open()
        _check_key(key)
        return KeyCheckpointer._make(self, key, self._mode(durability), RestartFrom(restart_from))

    async def events(
        self, key: str | None = None, *, since: float | None = None, limit: int | None = None
    ) -> list[Event]:
        """The event log, oldest first: every key's (or `key`'s) claims, transitions and ending.

        Args:
            key: one key's events; None for every key.
            since: only events committed at or after this time (seconds since the epoch).
            limit: at most this many (the oldest ones).
        """
        self._check_open()
        if key is not None:
            _check_key(key, new=False)
        return await self._journal.events(key, since=since, limit=limit)

    async def outcome(self, key: str) -> Ending | None:
        """How `key` ended (its status, encoded output or error text), or None if it has not (or is unknown)."""
        self._check_open()
        _check_key(key, new=False)
        return await self._journal.ending(key)

    async def prune(
        self, *, keep_events: int | None = None, older_than: float | None = None, finished_before: float | None = None
    ) -> int:
        """Retention: delete old history; return how many rows went.

        The latest checkpoint of an unfinished key is never deleted. A
        finished key that is deleted can be started anew.

        Args:
            keep_events: keep only the newest this many events of each key.
            older_than: delete events committed before this time.
            finished_before: delete keys (record and events) that ended before this time.
        """
        self._check_open()
        journal = self._journal
        return await journal.prune(keep_events=keep_events, older_than=older_than, finished_before=finished_before)

    def leases(self, *, poll_interval: float = DEFAULT_POLL_INTERVAL) -> DurableLeases:
        """The store's lease table: leases with a TTL and a fencing token, shared by every process on the database.

        The same interface as the in-process `hybrid.Leases` (see
        `DurableLeases` for what holds across processes and which clock the
        leases expire on). Every call returns a table over the same leases.

        Args:
            poll_interval: seconds between two looks at a held lease for a
                task waiting for it (`wait_free`, ``hold(wait=True)``); a
                release through this store wakes such tasks at once anyway.

        Raises:
            StoreError: the store is closed.
            TypeError: `poll_interval` is not a number.
            ValueError: `poll_interval` is not finite and > 0.

        Example:
            ```python
            leases = store.leases()
            async with leases.hold("report/2024-06", "worker-3", ttl=30) as lease:
                await write_report(fencing_token=lease.token)
            ```
        """
        self._check_open()
        return DurableLeases._make(self, poll_interval)

    # -- claiming ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed: open_store's block has ended")

    def _open_journal(self) -> Journal:
        """The journal, if the store is open (else `StoreError`)."""
        self._check_open()
        return self._journal

    def _mode(self, durability: Durability | str | None) -> Durability:
        return self._durability if durability is None else Durability(durability)

    async def _claim(
        self, agent: Agent[Any], key: str, durability: Durability | str | None
    ) -> tuple[KeyCheckpointer, Agent[Any]]:
        """Claim `key` for a run of `agent` (a new key), or of its checkpoint (an unfinished one)."""
        self._check_open()
        _check_key(key)
        if not isinstance(agent, Agent):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"a durable run needs an Agent instance, got {agent!r}")
        if _started(agent):  # refused before the claim writes a spawn record of it
            raise LifecycleError(
                f"{type(agent).__qualname__} instance was already started; an agent runs once: create a new instance"
            )
        checkpointer = KeyCheckpointer._make(self, key, self._mode(durability), None)
        return checkpointer, await checkpointer._claim_for(agent)  # noqa: SLF001


@final
class KeyCheckpointer:
    """The `hybrid.Checkpointer` of one key: what `Store` gives each durable run.

    Made by the store only: `Store.run`, `Store.spawn` and `Store.resume`
    make one per run, claimed before the run starts; `Store.checkpointer`
    makes one for a supervised child, reused by every run of the child, each
    claiming the key in `start`. Its fields are written by the agent's own
    task (and by the store's, for a claim before the run), never by two
    runs at once (`KeyInUse`).
    """

    __slots__ = (
        "_claimed",
        "_class_name",
        "_durability",
        "_epoch",
        "_fenced",
        "_finished",
        "_first",
        "_key",
        "_last",
        "_owner",
        "_pending",
        "_restart_from",
        "_resume",
        "_seq",
        "_state_seq",
        "_step",
        "_store",
        "_version",
    )

    # Fixed at creation:
    _store: Store
    _key: str
    _durability: Durability
    _restart_from: RestartFrom | None
    """None for store.run/spawn/resume (a failure finishes the key); else a supervised child's policy."""
    # Set by each claim:
    _class_name: str
    """The registry name of the running agent's class."""
    _version: int
    """That class's checkpoint version."""
    _epoch: int
    """The epoch this run claimed (0: not claimed yet)."""
    _claimed: bool
    """Claimed before the run (store.run/spawn/resume): `start` returns `_first` instead of claiming."""
    _first: Next[Any] | None
    """What `start` returns after a claim before the run: None for begin(), else the transition to take."""
    _finished: bool
    """The key had finished when claimed: the run ends at once with its recorded ending, which stays."""
    # Written as the run goes:
    _seq: int
    """The seq of the last checkpoint written (or resumed from) by this run."""
    _state_seq: int
    """The seq of the checkpoint that names the running state (the idempotency key's)."""
    _resume: Next[Any] | None
    """The transition `start` resumed with, already saved: `transition` does not save it again."""
    _step: Next[Any]
    """The transition the key's checkpoint names (``Next.events()`` until one is saved): `handled`
    saves the agent's fields with it, so a message handled while the agent finishes after an
    interrupted state keeps that state's next transition as the place to resume from."""
    _last: bytes
    """The payload last written or resumed from: an unchanged actor-mode checkpoint is not written again."""
    _pending: Pending | None
    """The write-behind checkpoint in flight (async durability): at most one."""
    _fenced: bool
    """A newer incarnation took the key: nothing more is written, no ending recorded, and no
    later run of a supervised child claims it again (each stops at once)."""
    _owner: Agent[Any] | None
    """The agent of the run that holds the key in the store's live set (None while a resume decodes it).

    A run given this checkpointer while another run holds the key is refused at its start, and its
    `ended` changes nothing. The key is held while the store's live set maps it to this checkpointer.
    """

    def __init__(self) -> None:
        raise TypeError("KeyCheckpointer has no public constructor: use Store.checkpointer(key)")

    @classmethod
    def _make(cls, store: Store, key: str, durability: Durability, restart_from: RestartFrom | None) -> KeyCheckpointer:
        checkpointer = object.__new__(cls)
        checkpointer._store = store
        checkpointer._key = key
        checkpointer._durability = durability
        checkpointer._restart_from = restart_from
        checkpointer._class_name = ""
        checkpointer._version = 0
        checkpointer._epoch = 0
        checkpointer._claimed = False
        checkpointer._first = None
        checkpointer._finished = False
        checkpointer._seq = checkpointer._state_seq = 0
        checkpointer._resume = None
        checkpointer._step = _EVENTS
        checkpointer._last = b""
        checkpointer._pending = None
        checkpointer._fenced = False
        checkpointer._owner = None
        return checkpointer

    @property
    def key(self) -> str:
        """The key this checkpointer saves under."""
        return self._key

    @property
    def durability(self) -> Durability:
        """When this key's checkpoints commit (see `Durability`)."""
        return self._durability

    @property
    def idempotency_key(self) -> str:
        """``"{key}#{seq}"`` of the checkpoint that named the running state: the same across resumes."""
        return f"{self._key}#{self._state_seq}"

    # -- the store's side ------------------------------------------------------------

    def _hold(self, agent: Agent[Any] | None) -> None:
        """Enter the store's live set for a run of `agent` (None: not known yet), or raise `KeyInUse`."""
        live = self._store._live  # noqa: SLF001 - the store's live set, kept by its checkpointers
        if self._key in live:
            raise KeyInUse(f"key {self._key!r} has a live run in this store")
        live[self._key] = self
        self._owner = agent

    def _release(self) -> None:
        """Leave the store's live set: once for each `_hold` that succeeded."""
        live = self._store._live  # noqa: SLF001
        assert live.get(self._key) is self, f"key {self._key!r} released by a run that does not hold it"
        del live[self._key]
        self._owner = None

    def _reset(self) -> None:
        """Forget the previous run: a supervised child's checkpointer serves each of its runs.

        Not `_fenced`: once a newer run of the key took it over, no later run of this child
        claims it again (see `_claim_at_start`).
        """
        self._epoch = self._seq = self._state_seq = 0
        self._first = self._resume = None
        self._step = _EVENTS
        self._finished = False
        self._pending = None  # its write was queued before this run's claim, so it is settled by then

    async def _claim_for(self, agent: Agent[Any]) -> Agent[Any]:
        """Hold and claim the key before a run of `agent` (`Store.run`/`spawn`); return the instance to run.

        The key is released if the claim fails.
        """
        self._hold(agent)
        try:
            claim, payload = await self._claim_with(agent)
            self._claimed = True
            if claim.ending is not None:
                self._finished = True
                self._first = _ending_next(self._store, self._key, type(agent), claim.ending)
                return agent
            checkpoint = claim.checkpoint
            if checkpoint is None:  # a new key: its spawn record is written
                self._last = payload
                return agent
            decoded, self._first = self._adopt(checkpoint, type(agent), "run it with its own class")
            self._resume = self._first
            self._owner = decoded
            return decoded
        except BaseException:
            self._release()
            raise

    async def _claim_listed(self, listed: Checkpoint) -> Agent[Any] | None:
        """Hold and claim a key `Store.resume` listed as unfinished; the instance to run, or None to skip it.

        The key is released if the claim fails or the key is skipped.
        """
        self._hold(None)
        try:
            self._class_name, self._version = listed.agent_class, listed.version
            claim = await self._journal_claim(StepKind.BEGIN, "", b"")
            if claim.ending is not None:  # another process finished it since it was listed
                self._release()
                return None
            checkpoint = claim.checkpoint
            if checkpoint is None:
                # It finished and was pruned since it was listed: the claim made it anew, with no
                # fields to run from. End it as stopped (never run), as it would have been.
                await self._finish(Ending(Status.STOPPED, None, None))
                self._release()
                return None
            decoded, self._first = self._adopt(checkpoint, None, "")
            self._owner = decoded
            self._claimed = True
            self._resume = self._first
            return decoded
        except BaseException:
            self._release()
            raise

    async def _claim_with(self, agent: Agent[Any]) -> tuple[Claim, bytes]:
        """Claim the key, with `agent`'s spawn record for a new key; return the claim and that record."""
        codec = self._store._codec  # noqa: SLF001
        self._class_name = codec.register(type(agent))
        self._version = codec.version(type(agent))
        _, _, payload = codec.encode_step(self._key, agent, None)
        return await self._journal_claim(StepKind.BEGIN, "", payload), payload

    async def _journal_claim(self, kind: StepKind, state: str, payload: bytes) -> Claim:
        store = self._store
        store._check_open()  # noqa: SLF001
        claim = await store._journal.claim(  # noqa: SLF001
            self._key, agent_class=self._class_name, version=self._version, kind=kind, state=state, payload=payload
        )
        self._epoch = claim.epoch
        return claim

    def _adopt(
        self, checkpoint: Checkpoint, cls: type[Agent[Any]] | None, advice: str
    ) -> tuple[Agent[Any], Next[Any] | None]:
        """Decode the key's checkpoint (of class `cls` if given) and go on from it; return the agent and its step."""
        codec = self._store._codec  # noqa: SLF001
        decoded, nxt = codec.decode_step(checkpoint)
        if cls is not None and type(decoded) is not cls:
            raise CheckpointError(
                f"key {self._key!r} is an unfinished {type(decoded).__qualname__}, not a {cls.__qualname__}: {advice}"
            )
        self._class_name = checkpoint.agent_class
        self._version = codec.version(type(decoded))
        self._seq = self._state_seq = checkpoint.seq
        self._last = checkpoint.payload
        return decoded, nxt

    async def _claim_at_start(self, agent: Agent[Any]) -> Next[Any] | None:
        """A supervised child's run claims the key now, into the factory's instance `agent`."""
        self._store._check_open()  # noqa: SLF001
        self._hold(agent)  # first: a refused run must not touch the fields of the run that holds the key
        if self._fenced:
            # A newer run of the key (another process's) fenced an earlier run of this child off.
            # Claiming the key again would fence that one off in turn, and the two would take it
            # from each other at each restart: this run stops at once instead, writing nothing.
            logger.warning(
                "key %r: a newer run took it over; %s stops instead of claiming it back"
                " (the key goes on there; store.resume takes it up once that run is gone)",
                self._key,
                type(agent).__qualname__,
            )
            return Next.stop()
        self._reset()  # `ended`, which the run calls whatever happens now, releases the key
        claim, payload = await self._claim_with(agent)
        if claim.ending is not None:
            self._finished = True
            return _ending_next(self._store, self._key, type(agent), claim.ending)
        checkpoint = claim.checkpoint
        self._last = payload
        if checkpoint is None:
            return None
        self._seq = self._state_seq = checkpoint.seq
        if self._restart_from is RestartFrom.SCRATCH:
            # Start over: a new spawn record under this epoch replaces the checkpoint.
            await self._write(StepKind.BEGIN, "", payload)
            self._state_seq = self._seq
            return None
        decoded, nxt = self._adopt(checkpoint, type(agent), "the factory must make its class")
        codec = self._store._codec  # noqa: SLF001
        codec.copy_fields(decoded, agent)
        self._resume = None if nxt is None else codec.rebind(nxt, agent)
        return self._resume

    # -- hybrid.Checkpointer -----------------------------------------------------------

    async def start(self, agent: Any) -> Next[Any] | None:
        """The run's first transition: from the claim made before the run, or (supervised) from a claim now."""
        if self._claimed:
            self._claimed = False
            first, self._first = self._first, None
            return first
        return await self._claim_at_start(agent)

    async def transition(self, agent: Any, nxt: Next[Any]) -> None:
        """Save `nxt` (and the agent's fields) before it is taken."""
        if nxt is self._resume:
            self._resume = None  # saved already: it is what the run resumed from
            self._step = nxt
            return
        kind, state, payload = self._store._codec.encode_step(self._key, agent, nxt)  # noqa: SLF001
        await self._write(kind, state, payload)
        self._state_seq = self._seq
        self._step = nxt

    async def handled(self, agent: Any) -> None:
        """Save the agent's fields after a message, if they changed, with the transition last saved.

        In actor mode that is ``Next.events()``. While the agent finishes, the runtime calls
        this only if that transition has not run: it may be the next transition of an
        interrupted state (saved when the interrupt ended it), where the agent resumes with
        what the messages changed. A run that only replays a finished key's ending saves
        nothing.
        """
        if self._finished:
            return
        codec = self._store._codec  # noqa: SLF001
        kind, state, payload = codec.encode_step(self._key, agent, self._step)
        if payload != self._last:
            await self._write(kind, state, payload)

    async def ended(self, agent: Agent[Any], reason: StopReason, output: Any) -> None:
        """Record the ending (done, failed, stopped), or leave the key unfinished; release the key.

        Left unfinished: an interrupted or cancelled run, a BaseException, a
        failure of the database or of fencing, any failure of a supervised
        child. Not recorded either: the ending of a key that had finished
        (it stays), or of a run fenced off.

        Raises:
            CheckpointError: the output cannot be saved (the key is recorded
                FAILED with this error, unless the child is supervised).
            Fenced: a newer run took the key over; this ending is not recorded.
            StoreError: the ending (or the last write-behind) could not be saved.
        """
        if agent is not self._owner:
            return  # a run refused at its start (KeyInUse) while another run holds this checkpointer
        try:
            kind = reason.kind
            if self._finished or self._fenced or kind is StopKind.CANCELLED:
                return  # it had finished already, a newer run owns the key, or the process is going away
            await self._flush()
            if kind is StopKind.DONE:
                try:
                    data = self._store._codec.encode_output(self._key, type(agent), output)  # noqa: SLF001
                except CheckpointError as error:
                    if self._restart_from is None:
                        await self._finish(Ending(Status.FAILED, None, _error_text(error)))
                    raise
                await self._finish(Ending(Status.DONE, data, None))
            elif kind is StopKind.STOPPED:
                await self._finish(Ending(Status.STOPPED, None, None))
            elif kind is StopKind.FAILED:
                failure = reason.error
                if _is_recorded(failure):
                    if self._restart_from is None:
                        await self._finish(Ending(Status.FAILED, None, _error_text(failure)))
                    else:  # a supervised run: the key stays unfinished, the log tells the failure
                        journal = self._store._open_journal()  # noqa: SLF001 - StoreError once closed
                        await journal.note(self._key, self._epoch, self._seq, "error", _error_text(failure))
            # INTERRUPTED: a graceful shutdown does not end durable work; resumed next time.
        finally:
            self._release()

    # -- writing -------------------------------------------------------------------

    async def _write(self, kind: StepKind, state: str, payload: bytes) -> None:
        """Save one checkpoint (sync), or queue it behind the previous one (async).

        No write follows a `Fenced` one: the run fails with it (and a stale
        write would be refused by the database anyway).
        """
        self._store._check_open()  # noqa: SLF001
        checkpoint = Checkpoint(
            key=self._key,
            epoch=self._epoch,
            seq=self._seq + 1,
            agent_class=self._class_name,
            version=self._version,
            kind=kind,
            state=state,
            payload=payload,
        )
        journal = self._store._journal  # noqa: SLF001
        try:
            if self._durability is Durability.SYNC:
                await journal.save(checkpoint)
            else:
                await self._flush()
                self._pending = journal.save_behind(checkpoint)
        except Fenced as fenced:
            raise self._fence(fenced, "this one stops") from fenced
        self._seq = checkpoint.seq
        self._last = payload

    async def _flush(self) -> None:
        """Wait for the write-behind checkpoint in flight (its error is this run's)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                await pending.wait()
            except Fenced as fenced:
                raise self._fence(fenced, "this one stops") from fenced

    async def _finish(self, ending: Ending) -> None:
        """Record the key's ending, fenced as a checkpoint is."""
        store = self._store
        store._check_open()  # noqa: SLF001
        try:
            await store._journal.finish(self._key, self._epoch, self._seq + 1, ending)  # noqa: SLF001
        except Fenced as fenced:
            raise self._fence(fenced, "this ending is not recorded") from fenced

    def _fence(self, cause: Fenced, what: str) -> Fenced:
        """Note that a newer run owns the key; the error this run fails with."""
        self._fenced = True
        return Fenced(f"key {self._key!r}: a newer run took it over; {what} ({cause})")


def _started(agent: Agent[Any]) -> bool:
    """Whether `agent` has run (its ``ctx`` exists once it did)."""
    try:
        agent.ctx  # noqa: B018 - the property raises LifecycleError until the agent runs
    except LifecycleError:
        return False
    return True


def _is_recorded(error: BaseException | None) -> bool:
    """Whether a failure finishes the key: an Exception of the agent, not of the store or a BaseException."""
    return isinstance(error, Exception) and not isinstance(error, (StoreError, Fenced))


def _error_text(error: BaseException | None) -> str:
    """``"Type: message"``, as text both databases store: a NUL or a lone surrogate is escaped.

    An error's message is the agent's (it may quote binary data); refused by the
    database, it would fail the whole batch its ending is written in.
    """
    try:
        message = str(error)
    except Exception as failure:  # the error's own __str__: its ending is recorded all the same
        message = f"<str() failed: {type(failure).__name__}>"
    return _validate.escaped(f"{type(error).__name__}: {message}").replace("\x00", "\\x00")


def _ending_next(store: Store, key: str, cls: type[Agent[Any]], ending: Ending) -> Next[Any]:
    """The transition a run of a finished key ends with at once: its recorded ending."""
    if ending.status is Status.DONE:
        codec = store._codec  # noqa: SLF001
        return Next.done(None if ending.output is None else codec.decode_output(key, cls, ending.output))
    if ending.status is Status.FAILED:
        return Next.fail(RecordedFailure(key, ending.error or "unknown error"))
    return Next.stop()


def _check_key(key: object, *, new: bool = True) -> None:
    """A key both databases store as it is: checked here, so that a bad one fails its caller alone.

    (Refused in the writer thread instead, it would fail its whole batch: other agents' writes.)
    A key that may be claimed (`new`) is also at most `_validate.INDEXED_MAX_BYTES` long,
    which Postgres can index; a read of a longer one (claimed before the bound) is allowed.
    """
    if not isinstance(key, str) or not key:
        raise TypeError(f"a durable key is a non-empty str, got {key!r}")
    if new:
        _validate.indexable("a durable key", key)
    else:
        _validate.storable("a durable key", key)


_EVENTS: Final[Next[Any]] = Next.events()


@asynccontextmanager
async def open_store(
    url: str | os.PathLike[str],
    *,
    agents: Iterable[type[Agent[Any]]] = (),
    durability: Durability | str = Durability.SYNC,
) -> AsyncGenerator[Store]:
    """Open (and create on first use) a store of durable agents.

    Leaving the block commits what is queued and closes the database; an
    agent of the store still running then fails at its next transition
    with `StoreError` (its key stays unfinished).

    Args:
        url: a path or ``sqlite:///path`` (SQLite, the embedded default:
            one file, WAL, full fsync; ``?busy_timeout=MS`` sets how long a
            write waits for a lock), or ``postgresql://...`` (Postgres,
            through psycopg: ``pip install 'trio-hybrid[durable-postgres]'``).
            The journal retries nothing whose outcome is unknown (see
            ``hybrid.durable._journal``): a failed write fails its agent.
        agents: the agent classes whose unfinished keys `Store.resume` may
            bring back (those run with `Store.run`/`Store.spawn` are known
            anyway).
        durability: when checkpoints commit, for every run that does not say
            (see `Durability`).

    Raises:
        StoreError: the database cannot be opened, or its schema is newer
            than this version of hybrid.
        CheckpointError: a class of `agents` cannot be checkpointed.
        ValueError: an unknown URL scheme, or an unknown durability.

    Example:
        ```python
        async with hybrid.durable.open_store("orders.db") as store:
            print(await store.run(Checkout("o-17"), key="o-17"))
        ```
    """
    mode = Durability(durability)
    codec = Codec()
    for cls in agents:
        codec.register(cls)
    async with open_journal(os.fspath(url)) as journal:
        store = Store._make(journal, codec, mode)
        try:
            yield store
        finally:
            store._closed = True  # noqa: SLF001 - its own flag, set by the function that made it
