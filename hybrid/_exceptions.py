"""The exceptions hybrid raises.

Every error is a [`HybridError`][hybrid.HybridError]. Where a builtin (or trio)
exception means the same thing, the hybrid error subclasses it too, so
``except TypeError`` still catches a message that no agent handles::

    HybridError(Exception)
     ├── AgentStopped                  the agent has ended (or is finishing) and takes no
     │                                 new messages; a request it will never answer
     ├── MailboxFull(trio.WouldBlock)  a bounded mailbox has no room for `send`
     ├── UnhandledMessage(TypeError)   the agent has no handler for this message type
     ├── HandlerDefinitionError(TypeError)
     │                                 a handler declaration is invalid (raised when the
     │                                 agent class is defined)
     ├── InvalidTransition(TypeError)  something that is not a `Next` was returned where a
     │                                 transition was expected, or a modifier was used on
     │                                 a transition it does not apply to
     ├── NameInUse(ValueError)         an agent name given to `spawn` is taken by a live agent
     ├── LifecycleError(RuntimeError)  an operation the agent's lifecycle forbids now: an
     │                                 agent started twice, `ctx` used before the start,
     │                                 a transition scheduled while the agent finishes
     ├── QuorumError                   `quorum` can no longer get the results it needs
     ├── CircuitOpen                   a `CircuitBreaker` refuses the call while open
     ├── LeaseLost                     a lease expired or was taken over while held
     ├── SubscriberTooSlow(trio.BrokenResourceError)
     │                                 a topic's subscription fell behind and was cut off
     │                                 (defined with the topic, in `_topic.py`)
     └── RestartIntensityExceeded      a supervisor restarted its children too often
                                       (defined with the supervisor, in `_supervisor.py`)

`trio.Cancelled` is never caught, wrapped or translated by hybrid.
"""

from __future__ import annotations

import trio


class HybridError(Exception):
    """The root of every error that hybrid raises.

    Example:
        ```python
        try:
            address.send(Ping())
        except hybrid.HybridError as error:
            log.warning("could not reach the agent: %s", error)
        ```
    """


class AgentStopped(HybridError):
    """The agent has ended, or is finishing and takes no new messages.

    Raised by `send`, `send_wait`, `request` and `forward_to` on an agent whose
    mailbox is closed, and by an awaited `request` (or delivered to an
    `on_response` handler as `outcome.Error`) when the agent ends before it
    answered.
    """


class MailboxFull(HybridError, trio.WouldBlock):
    """A bounded mailbox has no room for a message given to `Address.send`.

    `send` never blocks; use `await address.send_wait(event)` to wait for room.
    """


class UnhandledMessage(HybridError, TypeError):
    """The agent has no handler for the type of this message.

    Raised in the sender, at `send`/`request`/`forward_to` time, so a message
    that nobody would handle is never queued.
    """


class HandlerDefinitionError(HybridError, TypeError):
    """A message handler is declared wrongly.

    Raised when the agent class is defined: a handler that is not
    ``async def``, a missing or unresolvable annotation, or two handlers for one
    message type in one class.
    """


class InvalidTransition(HybridError, TypeError):
    """A transition was expected and something else was given.

    Raised when `begin()`, a state or a fallback returns something that is not
    a [`Next`][hybrid.Next], when a transition is built with bad arguments, or
    when a state modifier is applied to a transition that is not a state.
    """


class NameInUse(HybridError, ValueError):
    """An agent name given to `spawn` (or `AgentRunner`, `ctx.spawn`) is taken.

    Names are unique among the agents alive in one trio run; a name is free
    again once its agent has ended (and no supervisor keeps its address for a
    restart).
    """


class LifecycleError(HybridError, RuntimeError):
    """The agent's lifecycle forbids this operation now.

    Examples: running one agent instance twice, using `self.ctx` before the
    agent started, or scheduling a transition while the agent is finishing.
    """


class QuorumError(HybridError):
    """[`hybrid.quorum`][hybrid.quorum] can no longer get the results it needs.

    Raised as soon as too many members failed for `need` results to be
    reached; the members still running are cancelled first.

    Attributes:
        need: how many results were needed.
        results: the results that did arrive, in completion order.
        errors: every member's exception, in the order they failed.
    """

    def __init__(self, message: str, *, need: int, results: list[object], errors: list[Exception]) -> None:
        super().__init__(message)
        self.need = need
        self.results = results
        self.errors = errors


class CircuitOpen(HybridError):
    """A [`CircuitBreaker`][hybrid.CircuitBreaker] refuses the call: it is open.

    Also raised in the half-open state to callers beyond the probe limit.

    Attributes:
        retry_after: seconds (on trio's clock) until the breaker lets a probe
            through; 0 when it is half-open and its probes are busy.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LeaseLost(HybridError):
    """A lease ended while its holder still relied on it.

    Raised by `renew` on a lease that expired or was taken over (its fencing
    token is stale), and by the body of ``async with leases.hold(...)`` when the
    lease could not be kept.
    """
