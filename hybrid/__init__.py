"""hybrid: a trio-native hybrid state-machine agent framework.

Package map. The implementation modules are private; everything public is
re-exported here. Imports point one way, up this list (``tests/test_layering.py``
checks it; imports under ``TYPE_CHECKING`` are annotations only):

- leaves, importing nothing of hybrid but each other:
  ``_exceptions.py`` (the exception tree), ``_stop.py`` (`StopReason`, `StopKind`),
  ``_request.py`` (`Request`), ``_validate.py`` (the argument checks every entry
  point shares), ``_retry.py`` (`Backoff`, `RetryPolicy`, the one retry loop)
- ``_next.py`` (`Next`, `Performer`), ``_checkpointer.py`` (`Checkpointer`, the
  seam of durable agents), ``_handlers.py`` (`on_event`, `on_request`,
  `on_response`, dispatch tables), ``_thread.py`` (the one thread hop),
  ``_instrument.py`` (`Instrument` and its per-run registry), ``_registry.py``
  (agent names per run)
- coordination on trio alone, importing only the leaves: ``_breaker.py``
  (`CircuitBreaker`), ``_waitmap.py`` (`WaitMap`), ``_rendezvous.py``
  (`rendezvous`), ``_lease.py`` (`LeaseTable`, `Leases`, `Lease`)
- ``_mailbox.py``: `Mailbox` (queue, bound, closing, parked reader, waiting
  senders) and every envelope kind, `RequestCall` among them
- ``_runtime.py``: one agent's run loop, phases and ending; knows no handle
- handles, each with its own loop: ``_address.py`` (`Address`,
  `AgentStatistics`), ``_context.py`` (`Context`), ``_timers.py`` (`Timer`),
  ``_streams.py`` (`Stream`, `StreamEnded`), ``_monitors.py`` (`Monitor`, `Ended`),
  ``_snapshot.py`` (`snapshot`, `Snapshot`, `AgentInfo`: the tree of live agents),
  ``_quorum.py`` (`quorum`: it sends hybrid requests without a task each), and
  ``_foreign.py`` (the seam to agents of other processes: an `Address` whose
  messages go through a link; what ``hybrid.remote`` builds on)
- ``_agent.py``: `Agent`, `AgentRunner`, `spawn`, `start`, `open_agent`, `interrupted`
- built on public names only, as a third party would: ``_supervisor.py``
  (`Supervisor`, `SupervisorContext`, `Restart`, `Strategy`,
  `RestartIntensityExceeded`) and ``_pipeline.py`` (`Pipeline`, `Stage`,
  `open_pipeline`, `open_merge` and their records), ``_pool.py`` (`Pool`,
  `Routing`, `PoolMembers`: supervised workers behind one address) and
  ``_topic.py`` (`Topic`, `Subscription`, `Overflow`: publish to subscribers)
- ``testing/``: `hybrid.testing`, helpers for tests (simulated time, recordings),
  written against ``hybrid`` as a user would
- outer modules, built on public names only and imported by no core module:
  ``diagrams.py`` (`hybrid.diagrams`: Mermaid state diagrams of what ran),
  ``slowsteps.py`` (`hybrid.slowsteps`: the blocking-call finder), and, each with
  its extra, ``metrics.py`` (`hybrid.metrics`: Prometheus families and latency
  histograms), ``tracing.py`` (`hybrid.tracing`: OpenTelemetry spans),
  ``service/`` and ``__main__.py`` (`hybrid.service`: service mode,
  ``python -m hybrid run``), ``codec/`` (`hybrid.codec`: the msgspec codec of
  messages, values and exceptions that durable and remote agents share),
  ``durable/`` (`hybrid.durable`: durable agents, SQLite and Postgres) and
  ``remote/`` (`hybrid.remote`: the NATS transport that remote agents are built on)
"""

from ._address import Address as Address
from ._address import AgentStatistics as AgentStatistics
from ._agent import Agent as Agent
from ._agent import AgentRunner as AgentRunner
from ._agent import interrupted as interrupted
from ._agent import open_agent as open_agent
from ._agent import spawn as spawn
from ._agent import start as start
from ._breaker import BreakerState as BreakerState
from ._breaker import BreakerStatistics as BreakerStatistics
from ._breaker import CircuitBreaker as CircuitBreaker
from ._checkpointer import Checkpointer as Checkpointer
from ._context import Context as Context
from ._exceptions import AgentStopped as AgentStopped
from ._exceptions import CircuitOpen as CircuitOpen
from ._exceptions import HandlerDefinitionError as HandlerDefinitionError
from ._exceptions import HybridError as HybridError
from ._exceptions import InvalidTransition as InvalidTransition
from ._exceptions import LeaseLost as LeaseLost
from ._exceptions import LifecycleError as LifecycleError
from ._exceptions import MailboxFull as MailboxFull
from ._exceptions import NameInUse as NameInUse
from ._exceptions import QuorumError as QuorumError
from ._exceptions import UnhandledMessage as UnhandledMessage
from ._handlers import on_event as on_event
from ._handlers import on_request as on_request
from ._handlers import on_response as on_response
from ._instrument import Instrument as Instrument
from ._instrument import MessageKind as MessageKind
from ._instrument import add_instrument as add_instrument
from ._instrument import instruments as instruments
from ._instrument import remove_instrument as remove_instrument
from ._lease import Lease as Lease
from ._lease import Leases as Leases
from ._lease import LeaseTable as LeaseTable
from ._mailbox import RequestCall as RequestCall
from ._monitors import Ended as Ended
from ._monitors import Monitor as Monitor
from ._next import Modifiers as Modifiers
from ._next import Next as Next
from ._next import Performer as Performer
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineRun as PipelineRun
from ._pipeline import SkippedItem as SkippedItem
from ._pipeline import Stage as Stage
from ._pipeline import StageStatistics as StageStatistics
from ._pipeline import open_merge as open_merge
from ._pipeline import open_pipeline as open_pipeline
from ._pool import Pool as Pool
from ._pool import PoolMembers as PoolMembers
from ._pool import Routing as Routing
from ._quorum import quorum as quorum
from ._rendezvous import rendezvous as rendezvous
from ._rendezvous import rendezvous_ranked as rendezvous_ranked
from ._request import Request as Request
from ._retry import Backoff as Backoff
from ._retry import RetryPolicy as RetryPolicy
from ._snapshot import AgentInfo as AgentInfo
from ._snapshot import ClassCounters as ClassCounters
from ._snapshot import Snapshot as Snapshot
from ._snapshot import snapshot as snapshot
from ._stop import StopKind as StopKind
from ._stop import StopReason as StopReason
from ._streams import Stream as Stream
from ._streams import StreamEnded as StreamEnded
from ._supervisor import Restart as Restart
from ._supervisor import RestartIntensityExceeded as RestartIntensityExceeded
from ._supervisor import Strategy as Strategy
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorContext as SupervisorContext
from ._timers import Timer as Timer
from ._topic import Overflow as Overflow
from ._topic import SubscriberStatistics as SubscriberStatistics
from ._topic import SubscriberTooSlow as SubscriberTooSlow
from ._topic import Subscription as Subscription
from ._topic import Topic as Topic
from ._topic import TopicStatistics as TopicStatistics
from ._waitmap import WaitMap as WaitMap

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Agent",
    "AgentInfo",
    "AgentRunner",
    "AgentStatistics",
    "AgentStopped",
    "Backoff",
    "BreakerState",
    "BreakerStatistics",
    "Checkpointer",
    "CircuitBreaker",
    "CircuitOpen",
    "ClassCounters",
    "Context",
    "Ended",
    "HandlerDefinitionError",
    "HybridError",
    "Instrument",
    "InvalidTransition",
    "Lease",
    "LeaseLost",
    "LeaseTable",
    "Leases",
    "LifecycleError",
    "MailboxFull",
    "MessageKind",
    "Modifiers",
    "Monitor",
    "NameInUse",
    "Next",
    "Overflow",
    "Performer",
    "Pipeline",
    "PipelineRun",
    "Pool",
    "PoolMembers",
    "QuorumError",
    "Request",
    "RequestCall",
    "Restart",
    "RestartIntensityExceeded",
    "RetryPolicy",
    "Routing",
    "SkippedItem",
    "Snapshot",
    "Stage",
    "StageStatistics",
    "StopKind",
    "StopReason",
    "Strategy",
    "Stream",
    "StreamEnded",
    "SubscriberStatistics",
    "SubscriberTooSlow",
    "Subscription",
    "Supervisor",
    "SupervisorContext",
    "Timer",
    "Topic",
    "TopicStatistics",
    "UnhandledMessage",
    "WaitMap",
    "add_instrument",
    "instruments",
    "interrupted",
    "on_event",
    "on_request",
    "on_response",
    "open_agent",
    "open_merge",
    "open_pipeline",
    "quorum",
    "remove_instrument",
    "rendezvous",
    "rendezvous_ranked",
    "snapshot",
    "spawn",
    "start",
]


def _fix_module_names() -> None:
    # Tracebacks and docs say hybrid.Agent, not hybrid._agent.Agent.
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        if getattr(obj, "__module__", "").startswith("hybrid."):
            obj.__module__ = "hybrid"


_fix_module_names()
del _fix_module_names
