"""The one exception hierarchy of flowkit.

Every error flowkit raises derives from :class:`FlowkitError`. Errors of the
driver libraries (redis, aio-pika, nats, asyncpg, sqlite3) are translated into
these at the adapter boundary and chained with ``from exc``.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "AlreadyHandled",
    "BusNotStarted",
    "ConcurrencyConflict",
    "DeadlineExceeded",
    "DecodeError",
    "DefinitionError",
    "FlowkitError",
    "HandlerTimeout",
    "InvalidWorkflowState",
    "MessageTooLarge",
    "MissingDependency",
    "NonRetryableError",
    "NotFound",
    "OrchestratorNotStarted",
    "RemoteError",
    "RequestTimeout",
    "ResultNotAvailable",
    "SignatureError",
    "StepTimeout",
    "StoreError",
    "TransportClosed",
    "TransportError",
    "WaitTimeout",
    "WorkflowCancelled",
    "WorkflowNotFound",
]


class FlowkitError(Exception):
    """Base class of every error raised by flowkit."""


class DefinitionError(FlowkitError, TypeError):
    """A handler, step or workflow was declared wrongly.

    Raised at decoration or class-creation time, never at the first message.
    """


class MissingDependency(FlowkitError, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the {package!r} package, which is not installed. "
            f"Install it with: pip install 'flowkit[{extra}]'"
        )


DecodeErrorKind = Literal["json", "envelope", "unknown_type", "validation"]


class DecodeError(FlowkitError, ValueError):
    """A message could not be decoded.

    Attributes:
        kind: which stage failed: ``"json"`` (the body is not JSON),
            ``"envelope"`` (JSON, but not a flowkit envelope), ``"unknown_type"``
            (no model is registered for the envelope's type) or ``"validation"``
            (the payload does not validate against its model).
        detail: a human-readable explanation (pydantic's errors for validation).
        type_name: the message type named by the envelope, when it could be read.
    """

    def __init__(self, kind: DecodeErrorKind, detail: str, *, type_name: str | None = None):
        self.kind: DecodeErrorKind = kind
        self.detail = detail
        self.type_name = type_name
        what = {
            "json": "body is not valid JSON",
            "envelope": "body is not a flowkit envelope",
            "unknown_type": "unknown message type",
            "validation": "payload failed validation",
        }[kind]
        subject = f"message {type_name!r}" if type_name else "message"
        super().__init__(f"cannot decode {subject}: {what}: {detail}")


class HandlerTimeout(FlowkitError, TimeoutError):
    """A handler ran longer than its ``timeout``."""


class NonRetryableError(FlowkitError):
    """Raise (or subclass) this from a handler or step to skip the remaining retries."""


class TransportError(FlowkitError):
    """The transport failed (connection lost, broker refused, ...)."""


class TransportClosed(TransportError):
    """The transport or subscription is closed, or was never opened."""


class StoreError(FlowkitError):
    """The state store failed."""


class ConcurrencyConflict(StoreError):
    """A record was changed by someone else since it was read (optimistic concurrency)."""


class NotFound(StoreError, KeyError):
    """A record asked for by id does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class WorkflowNotFound(NotFound):
    """No workflow has the given id."""


class AlreadyHandled(FlowkitError):
    """The message was already handled by this consumer: raised by
    :meth:`Context.record_handled <flowkit.Context.record_handled>`.

    Let it escape the handler: the transaction it was raised in rolls back,
    and the bus counts the message as handled (it is acked, never retried
    nor dead-lettered).
    """


class SignatureError(FlowkitError):
    """A message failed its signature check on a bus that signs (see
    :class:`~flowkit.Signing`): it carries no signature, names a key the bus
    does not know, or its signature does not match its body, headers and topic.

    A consumer dead-letters such a message with this error and carries on;
    replaying a dead letter whose signature does not verify raises it.
    """


class BusNotStarted(FlowkitError):
    """The bus was used before ``async with bus`` (or ``bus.run(...)``) started it."""


class RequestTimeout(FlowkitError, TimeoutError):
    """No reply to a request arrived within its timeout.

    Attributes:
        taken: whether a service took the request (started handling it) before
            the caller gave up. False means no running service received it in
            time; True means it was taken, may have acted, and did not answer in
            time.
    """

    def __init__(self, message: str, *, taken: bool = False) -> None:
        self.taken = taken
        super().__init__(message)


class MessageTooLarge(FlowkitError, ValueError):
    """A message's encoded body is larger than the bus's ``max_message_size``.

    Raised on publish; a received body over the limit is dead-lettered with it.

    Attributes:
        type_name: the message type.
        size: the body's size in bytes.
        limit: the limit it exceeded, in bytes.
    """

    def __init__(self, type_name: str | None, size: int, limit: int) -> None:
        self.type_name = type_name
        self.size = size
        self.limit = limit
        subject = f"message {type_name!r}" if type_name else "a message"
        super().__init__(
            f"{subject} is {size:,} bytes, over the limit of {limit:,} bytes (max_message_size)"
        )


class RemoteError(FlowkitError):
    """The service answering a request raised an error.

    Attributes:
        error_type: the qualified name of the exception raised remotely.
        message: its message.
        service: the service that answered.
        retryable: whether the remote side considered the error retryable.
    """

    def __init__(self, error_type: str, message: str, *, service: str, retryable: bool = True):
        self.error_type = error_type
        self.message = message
        self.service = service
        self.retryable = retryable
        super().__init__(f"service {service!r} failed: {error_type}: {message}")


# -- orchestration -------------------------------------------------------------


class StepTimeout(FlowkitError, TimeoutError):
    """A step or compensation ran longer than its ``timeout``.

    The step may have acted before it was stopped, so a timed-out step is
    compensated when the workflow turns back.
    """


class DeadlineExceeded(FlowkitError, TimeoutError):
    """A workflow was still running when its ``deadline`` passed.

    Recorded as the workflow's error; the workflow is then compensated.
    """


class WaitTimeout(FlowkitError, TimeoutError):
    """A workflow's wait for an event or a signal ran past its ``timeout``.

    Recorded as the wait step's error; the workflow then follows the wait's
    ``on_timeout`` policy (compensate by default).
    """


class WorkflowCancelled(FlowkitError):
    """A workflow was cancelled with ``cancel()``.

    Recorded as the workflow's error; the workflow is then compensated.
    """


class InvalidWorkflowState(FlowkitError):
    """The operation does not apply to the workflow in its current status.

    For example ``cancel()`` on a completed workflow or on one past its pivot,
    ``retry_compensation()`` on a workflow that is not ``FAILED``, or a workflow
    id already used by another orchestrator.
    """


class OrchestratorNotStarted(FlowkitError):
    """The orchestrator was used outside ``async with orchestrator:``."""


class ResultNotAvailable(FlowkitError, LookupError):
    """A step's result was asked for, but the step has not succeeded (or does not exist)."""
