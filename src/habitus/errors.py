"""Every error Habitus raises on purpose, and how each interface reports it.

The hierarchy::

    HabitatError                      root: catch this to catch everything we raise
    ├── InvalidRequestError           the caller's mistake; fix the call and retry
    │   ├── UnknownKindError          event kind not in the registry
    │   ├── InvalidMetaError          meta does not match its kind's schema
    │   ├── InvalidEventError         a malformed field (actor, thread, time, ...)
    │   ├── UnknownCauseError         a cause that is not in the ledger
    │   ├── ContentTooLargeError      content or meta over the documented limit
    │   ├── EventNotFoundError        no event with that id or seq
    │   ├── UnknownAgentError         no agent with that id
    │   ├── AgentExistsError          spawning an id that is taken
    │   ├── AgentRetiredError         the agent was retired; it takes no more messages
    │   ├── UnknownBehaviourError     the app declares no behaviour of that name
    │   ├── MemoryNotFoundError       no memory or fact with that id (or it was forgotten)
    │   └── UnknownToolError          no tool registered under that name
    ├── MessagingError                a message could not be sent or answered
    │   ├── MailboxFullError          the recipient's mailbox is at capacity (backpressure)
    │   └── RequestTimeoutError       no reply came in time
    ├── PolicyDeniedError             policy refused it (a policy.denied event records it)
    │   ├── ScopeDeniedError          a memory scope the principal may not read or write
    │   ├── BudgetExceededError       it would go over a budget (a budget.exceeded event records it)
    │   └── ApprovalRejectedError     a human rejected the approval it waited for
    ├── HabitatUnavailableError       the habitat cannot do this right now
    │   ├── ApprovalPendingError      the approval it waits for was not decided in time
    │   ├── NoAppRunningError         a request nothing in this process can answer (no app runs)
    │   ├── EmbedderError             the embedding model or endpoint failed or is missing
    │   ├── ModelUnavailableError     a model provider failed or is unreachable, after retries
    │   │   └── ModelTimeoutError     a model provider did not answer in time
    │   ├── HabitatNotFoundError      no habitat at that path
    │   ├── HabitatExistsError        init over an existing habitat
    │   ├── HabitatLockedError        another process holds the writer lock
    │   ├── ReadOnlyHabitatError      a write on a habitat opened read-only
    │   └── HabitatClosedError        the habitat was closed
    └── LedgerFailureError            a runtime failure, not the caller's fault
        ├── StorageError              the store failed (disk full, I/O error)
        └── IntegrityError            stored data contradicts itself

:data:`ERROR_TABLE` is the one place that maps each class to its CLI exit code
(and, once the server exists, its HTTP status). Interfaces call
:func:`error_code` instead of keeping tables of their own.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "ERROR_TABLE",
    "AgentExistsError",
    "AgentRetiredError",
    "ApprovalPendingError",
    "ApprovalRejectedError",
    "BudgetExceededError",
    "ContentTooLargeError",
    "EmbedderError",
    "ErrorCode",
    "EventNotFoundError",
    "HabitatClosedError",
    "HabitatError",
    "HabitatExistsError",
    "HabitatLockedError",
    "HabitatNotFoundError",
    "HabitatUnavailableError",
    "IntegrityError",
    "InvalidEventError",
    "InvalidMetaError",
    "InvalidRequestError",
    "LedgerFailureError",
    "MailboxFullError",
    "MemoryNotFoundError",
    "MessagingError",
    "ModelTimeoutError",
    "ModelUnavailableError",
    "NoAppRunningError",
    "PolicyDeniedError",
    "ReadOnlyHabitatError",
    "RequestTimeoutError",
    "ScopeDeniedError",
    "StorageError",
    "UnknownAgentError",
    "UnknownBehaviourError",
    "UnknownCauseError",
    "UnknownKindError",
    "UnknownToolError",
    "error_code",
]


class HabitatError(Exception):
    """Root of every error Habitus raises on purpose."""


class InvalidRequestError(HabitatError):
    """The request was malformed or refers to something that does not exist."""


class UnknownKindError(InvalidRequestError):
    """The event kind is not in the kinds registry."""


class InvalidMetaError(InvalidRequestError):
    """The event's meta does not match the schema of its kind."""


class InvalidEventError(InvalidRequestError):
    """A field of the event is malformed (actor, thread, world time, content type)."""


class UnknownCauseError(InvalidRequestError):
    """A cause names an event that is not in the ledger."""


class ContentTooLargeError(InvalidRequestError):
    """Content or meta is larger than the configured limit."""


class EventNotFoundError(InvalidRequestError):
    """No event has the given id or sequence number."""


class UnknownAgentError(InvalidRequestError):
    """No agent has the given id."""


class AgentExistsError(InvalidRequestError):
    """An agent with that id already exists."""


class AgentRetiredError(InvalidRequestError):
    """The agent was retired and takes no more messages."""


class UnknownBehaviourError(InvalidRequestError):
    """The running app declares no behaviour with that name."""


class MemoryNotFoundError(InvalidRequestError):
    """No memory or fact has that id in the scopes searched (or it was forgotten)."""


class UnknownToolError(InvalidRequestError):
    """No tool of that name is registered."""


class MessagingError(HabitatError):
    """A message could not be sent, delivered or answered."""


class MailboxFullError(MessagingError):
    """The recipient's mailbox is full: slow down and retry (backpressure, never a silent drop)."""


class RequestTimeoutError(MessagingError):
    """A request got no reply within its timeout."""


class PolicyDeniedError(HabitatError):
    """Policy refused the action; a ``policy.denied`` event records who, what and why.

    Attributes:
        principal: Who was refused (when known).
        action: What it tried, e.g. ``message:send``.
        resource: On what, e.g. ``agent:scout``.
    """

    def __init__(
        self, message: str, *, principal: str | None = None, action: str | None = None, resource: str | None = None
    ) -> None:
        super().__init__(message)
        self.principal = principal
        self.action = action
        self.resource = resource


class ScopeDeniedError(PolicyDeniedError):
    """A principal tried to read or write a memory scope it was not granted."""


class BudgetExceededError(PolicyDeniedError):
    """The work would go over a budget of tokens, tool calls or messages; nothing of it was done."""


class ApprovalRejectedError(PolicyDeniedError):
    """A human rejected the approval the action waited for."""


class HabitatUnavailableError(HabitatError):
    """The habitat exists but cannot serve this request in its current state."""


class NoAppRunningError(HabitatUnavailableError):
    """A request was made where no app runs to answer it; nothing was sent."""


class ApprovalPendingError(HabitatUnavailableError):
    """No human decided the approval in time; the request stays in the queue."""


class EmbedderError(HabitatUnavailableError):
    """The embedding model could not be loaded, or its endpoint failed; nothing was stored."""


class ModelUnavailableError(HabitatUnavailableError):
    """A model provider could not be reached or failed, after its retries; nothing the call would have done was done."""


class ModelTimeoutError(ModelUnavailableError):
    """A model provider did not answer in time, after its retries."""


class HabitatNotFoundError(HabitatUnavailableError):
    """There is no habitat at the given path."""


class HabitatExistsError(HabitatUnavailableError):
    """A habitat already exists where a new one was to be created."""


class HabitatLockedError(HabitatUnavailableError):
    """Another process has the habitat open for writing."""


class ReadOnlyHabitatError(HabitatUnavailableError):
    """The habitat was opened read-only and the request writes."""


class HabitatClosedError(HabitatUnavailableError):
    """The habitat has been closed."""


class LedgerFailureError(HabitatError):
    """Something failed at run time that the caller could not have prevented."""


class StorageError(LedgerFailureError):
    """The storage backend failed; nothing from the failed request was kept."""


class IntegrityError(LedgerFailureError):
    """Stored data contradicts itself (for example a broken hash chain on open)."""


class ErrorCode(NamedTuple):
    """How one error class is reported by each interface."""

    exit_code: int
    http_status: int


ERROR_TABLE: dict[type[HabitatError], ErrorCode] = {
    HabitatError: ErrorCode(1, 500),
    InvalidRequestError: ErrorCode(2, 400),
    UnknownKindError: ErrorCode(2, 422),
    InvalidMetaError: ErrorCode(2, 422),
    InvalidEventError: ErrorCode(2, 422),
    UnknownCauseError: ErrorCode(2, 422),
    ContentTooLargeError: ErrorCode(2, 413),
    EventNotFoundError: ErrorCode(3, 404),
    UnknownAgentError: ErrorCode(3, 404),
    AgentExistsError: ErrorCode(4, 409),
    AgentRetiredError: ErrorCode(4, 410),
    UnknownBehaviourError: ErrorCode(2, 422),
    MemoryNotFoundError: ErrorCode(3, 404),
    UnknownToolError: ErrorCode(3, 404),
    MessagingError: ErrorCode(7, 503),
    MailboxFullError: ErrorCode(7, 429),
    RequestTimeoutError: ErrorCode(7, 504),
    PolicyDeniedError: ErrorCode(8, 403),
    ScopeDeniedError: ErrorCode(8, 403),
    BudgetExceededError: ErrorCode(8, 429),
    ApprovalRejectedError: ErrorCode(8, 403),
    ApprovalPendingError: ErrorCode(4, 409),
    NoAppRunningError: ErrorCode(4, 409),
    HabitatUnavailableError: ErrorCode(4, 503),
    EmbedderError: ErrorCode(4, 503),
    ModelUnavailableError: ErrorCode(4, 502),
    ModelTimeoutError: ErrorCode(4, 504),
    HabitatNotFoundError: ErrorCode(3, 404),
    HabitatExistsError: ErrorCode(4, 409),
    HabitatLockedError: ErrorCode(4, 423),
    ReadOnlyHabitatError: ErrorCode(4, 405),
    HabitatClosedError: ErrorCode(4, 503),
    LedgerFailureError: ErrorCode(5, 500),
    StorageError: ErrorCode(5, 500),
    IntegrityError: ErrorCode(6, 500),
}
"""Exit code and HTTP status for each error class; subclasses inherit by MRO."""


def error_code(error: HabitatError) -> ErrorCode:
    """Return the table entry of the most specific class of ``error``."""
    for cls in type(error).__mro__:
        code = ERROR_TABLE.get(cls)
        if code is not None:
            return code
    return ERROR_TABLE[HabitatError]
