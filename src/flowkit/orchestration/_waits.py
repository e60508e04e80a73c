"""Declaring the waits of a saga: durable timers, waiting for an event, waiting for
a signal, and what a wait that runs out does.

A wait is a step of its own in the ``steps`` list. While a workflow waits it is
stored as ``WAITING`` and held by no process (see :mod:`flowkit.stores._waits`);
the engine's side of a wait is in ``_waiting.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel

from .._errors import DefinitionError
from .._events import Event, Message

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._context import StepContext

__all__ = ["OnTimeout", "Sleep", "WaitForEvent", "WaitForSignal", "WaitSpec", "wait_spec"]

M = TypeVar("M", bound=Message)
E = TypeVar("E", bound=Event)

OnTimeout = Literal["compensate", "fail", "continue"]
"""What a wait for an event or a signal does when its ``timeout`` runs out.

``compensate`` (the default): the wait fails with :class:`~flowkit.WaitTimeout`
and the workflow turns back, compensating the steps that acted, in reverse (past
the pivot, it fails instead). ``fail``: the workflow ends ``FAILED`` with the
reason, nothing compensated (:meth:`Orchestrator.retry_forward` waits again).
``continue``: the workflow goes on to its next step; the wait has no result
(``ctx.results.get(name)`` is None, its status ``expired``), so later steps can
take another branch.
"""

_POLICIES: tuple[str, ...] = get_args(OnTimeout)


def _seconds(value: object, what: str, *, required: bool) -> float | None:
    if value is None and not required:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e10:
        raise DefinitionError(
            f"{what} must be a positive number of seconds or a timedelta, got {value!r}"
        )
    return float(value)


def _policy(value: object, what: str) -> OnTimeout:
    if value not in _POLICIES:
        raise DefinitionError(
            f"{what}(on_timeout=...) must be one of {', '.join(map(repr, _POLICIES))}, "
            f"got {value!r}"
        )
    policy: OnTimeout = value  # type: ignore[assignment]
    return policy


def _message_class(value: object, base: type[Message], what: str) -> None:
    if not (isinstance(value, type) and issubclass(value, base)):
        raise DefinitionError(f"{what}() takes a {base.__name__} class, got {value!r}")


class Sleep:
    """A durable timer: the workflow waits for a duration, or until a time.

    ::

        Sleep(timedelta(days=1), name="cooling_off")
        Sleep(until=lambda ctx, order: order.ship_after, name="ship_day")

    The time it is due is computed once, when the workflow reaches it, and
    stored: a restart neither loses the wait nor restarts its clock. While it
    waits, the workflow holds no task, no lease and no connection. Its result
    is None. A workflow's ``deadline`` still applies while it sleeps.

    Args:
        duration: how long to wait (seconds or a ``timedelta``).
        until: instead of ``duration``, ``(ctx, input) -> datetime``: a plain
            function giving the (timezone-aware) time to wait until; a time
            already past goes on at once.
        name: the step's name (``sleep`` by default; name the second one).

    Raises:
        DefinitionError: unless exactly one of ``duration`` and ``until`` is given.
    """

    __slots__ = ("duration", "name", "until")

    def __init__(
        self,
        duration: float | timedelta | None = None,
        *,
        until: Callable[[StepContext, Any], datetime] | None = None,
        name: str | None = None,
    ) -> None:
        if (duration is None) == (until is None):
            raise DefinitionError(
                "Sleep() takes a duration or until=..., exactly one: Sleep(60) or "
                "Sleep(until=lambda ctx, input: ...)"
            )
        if until is not None and not callable(until):
            raise DefinitionError(f"Sleep(until=...) must be a function, got {until!r}")
        self.duration = _seconds(duration, "Sleep(duration)", required=False)
        self.until = until
        self.name = name

    def __repr__(self) -> str:
        return f"Sleep({self.duration if self.until is None else 'until=...'})"


class WaitForEvent(Generic[E]):
    """Wait for an event from the bus that matches the workflow; its payload becomes
    the step's typed result.

    ::

        WaitForEvent(SellerAccepted, match="order_id", timeout=timedelta(days=1))

    waits for a ``SellerAccepted`` whose ``order_id`` equals the workflow
    input's ``order_id``. The orchestrator subscribes to the event (its
    processes share one consumer group, named after the orchestrator) and keeps
    each one in the store's mailbox under its key, so an event published
    before the workflow reaches the wait (even before it starts) is not lost:
    the wait takes it when it gets there. One event is taken by one wait.

    Args:
        event: the :class:`~flowkit.Event` class to wait for.
        match: the event's field holding the key (its ``correlate_by`` by default).
        key: ``(ctx, input) -> key``: a plain function giving the key this
            workflow waits for (by default the input's field named ``match``).
            Keys are compared as text.
        timeout: how long to wait (seconds or a ``timedelta``; None: no limit).
        on_timeout: what happens when it runs out (see :data:`OnTimeout`).
        name: the step's name (``wait_for_<event in snake case>`` by default).

    Raises:
        DefinitionError: if ``event`` is not an event class, ``match`` names
            none of its fields, or another argument is wrong. Whether the
            input has the ``match`` field is checked with the orchestrator.
    """

    __slots__ = ("event", "key", "match", "name", "on_timeout", "timeout")

    def __init__(
        self,
        event: type[E],
        *,
        match: str | None = None,
        key: Callable[[StepContext, Any], object] | None = None,
        timeout: float | timedelta | None = None,
        on_timeout: OnTimeout = "compensate",
        name: str | None = None,
    ) -> None:
        _message_class(event, Event, "WaitForEvent")
        field = match if match is not None else event.__flowkit_correlate_by__
        if field is None:
            raise DefinitionError(
                f"WaitForEvent({event.__name__}): name the event's field to match, "
                f"as WaitForEvent({event.__name__}, match='order_id'), or declare "
                f"class {event.__name__}(Event, correlate_by='order_id')"
            )
        if field not in event.model_fields:
            raise DefinitionError(
                f"WaitForEvent({event.__name__}, match={field!r}): {event.__name__} has no "
                f"field {field!r}; its fields are {sorted(event.model_fields)}"
            )
        if key is not None and not callable(key):
            raise DefinitionError(f"WaitForEvent(key=...) must be a function, got {key!r}")
        self.event = event
        self.match = field
        self.key = key
        self.timeout = _seconds(timeout, "WaitForEvent(timeout=...)", required=False)
        self.on_timeout = _policy(on_timeout, "WaitForEvent")
        self.name = name

    def __repr__(self) -> str:
        return f"WaitForEvent({self.event.__qualname__}, match={self.match!r})"


class WaitForSignal(Generic[M]):
    """Wait for a signal: a typed message sent to this one workflow with
    :meth:`Orchestrator.signal` (or ``flowkit workflows signal``), from any
    process, such as a person's approval.

    ::

        WaitForSignal(RefundApproved, timeout=timedelta(hours=4), on_timeout="fail")

    A signal sent before the workflow reaches the wait is kept for it (see
    :meth:`Orchestrator.signal` for the signals that are refused).

    Args:
        signal: the message class (any :class:`~flowkit.Event` or other
            message model) the wait takes; its value becomes the step's result.
        timeout: how long to wait (seconds or a ``timedelta``; None: no limit).
        on_timeout: what happens when it runs out (see :data:`OnTimeout`).
        name: the step's name (``wait_for_<signal in snake case>`` by default).

    Raises:
        DefinitionError: if ``signal`` is not a message class or another
            argument is wrong.
    """

    __slots__ = ("name", "on_timeout", "signal", "timeout")

    def __init__(
        self,
        signal: type[M],
        *,
        timeout: float | timedelta | None = None,
        on_timeout: OnTimeout = "compensate",
        name: str | None = None,
    ) -> None:
        _message_class(signal, Message, "WaitForSignal")
        self.signal = signal
        self.timeout = _seconds(timeout, "WaitForSignal(timeout=...)", required=False)
        self.on_timeout = _policy(on_timeout, "WaitForSignal")
        self.name = name

    def __repr__(self) -> str:
        return f"WaitForSignal({self.signal.__qualname__})"


Wait = Sleep | WaitForEvent[Any] | WaitForSignal[Any]


@dataclass(frozen=True, slots=True, eq=False)
class WaitSpec:
    """One wait as the engine runs it.

    Attributes:
        kind: ``timer``, ``event`` or ``signal``.
        message_type: the event or signal class (None for a timer).
        channel: the mailbox channel (None for a timer): ``event:<type>.<field>``
            or ``signal:<type>``.
        match: the event's key field (events only).
        key: the workflow's key function (events only).
        duration: the timer's duration or the wait's timeout, in seconds.
        until: the timer's ``until`` function.
        on_timeout: the policy of an event or signal wait.
        what: how listings name what it waits for (``event SellerAccepted``).
    """

    kind: Literal["timer", "event", "signal"]
    message_type: type[Message] | None
    channel: str | None
    match: str | None
    key: Callable[[StepContext, Any], object] | None
    duration: float | None
    until: Callable[[StepContext, Any], datetime] | None
    on_timeout: OnTimeout
    what: str


def _snake(name: str) -> str:
    import re

    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _input_key(match: str, input_type: Any, owner: str, event: type[Message]) -> Any:
    """The default key function of an event wait: the input's field named ``match``."""
    fields = getattr(input_type, "model_fields", None)
    if not (isinstance(input_type, type) and issubclass(input_type, BaseModel)) or (
        fields is None or match not in fields
    ):
        raise DefinitionError(
            f"{owner}: WaitForEvent({event.__name__}, match={match!r}) needs the key this "
            f"workflow waits for, and its input {getattr(input_type, '__name__', input_type)!r} "
            f"has no field {match!r}: pass key=lambda ctx, input: ..."
        )

    def key(ctx: StepContext, value: Any) -> object:
        return getattr(value, match)

    return key


def wait_spec(wait: Wait, input_type: Any, owner: str) -> tuple[str, WaitSpec]:
    """The default step name and the compiled form of a wait.

    Raises:
        DefinitionError: if the wait does not fit the workflow's input.
    """
    if isinstance(wait, Sleep):
        what = "timer" if wait.until is None else "timer (until a time)"
        return wait.name or "sleep", WaitSpec(
            kind="timer",
            message_type=None,
            channel=None,
            match=None,
            key=None,
            duration=wait.duration,
            until=wait.until,
            on_timeout="continue",
            what=what,
        )
    if isinstance(wait, WaitForEvent):
        event = wait.event
        type_name = event.__flowkit_type__
        key = wait.key or _input_key(wait.match, input_type, owner, event)
        return wait.name or f"wait_for_{_snake(event.__name__)}", WaitSpec(
            kind="event",
            message_type=event,
            channel=f"event:{type_name}.{wait.match}",
            match=wait.match,
            key=key,
            duration=wait.timeout,
            until=None,
            on_timeout=wait.on_timeout,
            what=f"event {type_name}",
        )
    signal = wait.signal
    type_name = signal.__flowkit_type__
    return wait.name or f"wait_for_{_snake(signal.__name__)}", WaitSpec(
        kind="signal",
        message_type=signal,
        channel=f"signal:{type_name}",
        match=None,
        key=None,
        duration=wait.timeout,
        until=None,
        on_timeout=wait.on_timeout,
        what=f"signal {type_name}",
    )
