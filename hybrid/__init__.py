"""hybrid: a trio-native hybrid state-machine agent framework.

Package map (the implementation modules are private; everything public is
re-exported here):

- ``_agent.py``: `Agent`, `AgentRunner`, `spawn`, `interrupted`
- ``_next.py``: `Next`, `Performer`
- ``_retry.py``: `Backoff`, `RetryPolicy`
- ``_runtime.py``: the mailbox and the run loop of one agent
- ``_address.py``: `Address`, `RequestCall`, `AgentStatistics`
- ``_request.py``: `Request`
- ``_context.py``: `Context`, `Timer`, `Stream`, `StreamEnded`, `Monitor`, `Ended`
- ``_handlers.py``: `on_event`, `on_request`, `on_response` and dispatch
- ``_stop.py``: `StopReason`, `StopKind`
- ``_supervisor.py``: `Supervisor`, `SupervisorContext`, `Restart`, `Strategy`,
  `RestartIntensityExceeded` (built on the public agent API only)
- ``_pipeline.py``: `Pipeline`, `Stage`, `open_pipeline`, `open_merge` and their
  records (built on the public agent API only)
- ``_exceptions.py``: the exception tree
- ``testing/``: `hybrid.testing`, helpers for tests (simulated time, recordings)
"""

from ._address import Address as Address
from ._address import AgentStatistics as AgentStatistics
from ._agent import Agent as Agent
from ._agent import AgentRunner as AgentRunner
from ._agent import interrupted as interrupted
from ._agent import spawn as spawn
from ._context import Context as Context
from ._exceptions import AgentStopped as AgentStopped
from ._exceptions import HandlerDefinitionError as HandlerDefinitionError
from ._exceptions import HybridError as HybridError
from ._exceptions import InvalidTransition as InvalidTransition
from ._exceptions import LifecycleError as LifecycleError
from ._exceptions import MailboxFull as MailboxFull
from ._exceptions import UnhandledMessage as UnhandledMessage
from ._handlers import on_event as on_event
from ._handlers import on_request as on_request
from ._handlers import on_response as on_response
from ._instrument import Instrument as Instrument
from ._instrument import add_instrument as add_instrument
from ._instrument import instruments as instruments
from ._instrument import remove_instrument as remove_instrument
from ._mailbox import RequestCall as RequestCall
from ._monitors import Ended as Ended
from ._monitors import Monitor as Monitor
from ._next import Next as Next
from ._next import Performer as Performer
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineRun as PipelineRun
from ._pipeline import SkippedItem as SkippedItem
from ._pipeline import Stage as Stage
from ._pipeline import StageStatistics as StageStatistics
from ._pipeline import open_merge as open_merge
from ._pipeline import open_pipeline as open_pipeline
from ._request import Request as Request
from ._retry import Backoff as Backoff
from ._retry import RetryPolicy as RetryPolicy
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

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Agent",
    "AgentRunner",
    "AgentStatistics",
    "AgentStopped",
    "Backoff",
    "Context",
    "Ended",
    "HandlerDefinitionError",
    "HybridError",
    "Instrument",
    "InvalidTransition",
    "LifecycleError",
    "MailboxFull",
    "Monitor",
    "Next",
    "Performer",
    "Pipeline",
    "PipelineRun",
    "Request",
    "RequestCall",
    "Restart",
    "RestartIntensityExceeded",
    "RetryPolicy",
    "SkippedItem",
    "Stage",
    "StageStatistics",
    "StopKind",
    "StopReason",
    "Strategy",
    "Stream",
    "StreamEnded",
    "Supervisor",
    "SupervisorContext",
    "Timer",
    "UnhandledMessage",
    "add_instrument",
    "instruments",
    "interrupted",
    "on_event",
    "on_request",
    "on_response",
    "open_merge",
    "open_pipeline",
    "remove_instrument",
    "spawn",
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
