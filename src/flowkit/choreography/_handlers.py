"""Handler declarations: what ``@bus.on`` and ``@bus.handles`` record and check."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import DefinitionError
from .._events import Command, Event, Message, reply_type_of
from .._retry import Retry

__all__ = ["HandlerFunc", "HandlerSpec", "make_spec"]

HandlerFunc = Callable[..., Awaitable[Any]]

_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One registered handler.

    Attributes:
        kind: ``"event"`` for ``@bus.on``, ``"command"`` for ``@bus.handles``.
        message_type: the message class it takes.
        func: the handler.
        service: the service it belongs to.
        name: its name inside the service (the function's qualified name by default).
        retry: its retry policy.
        emits: the event types it declares it publishes (None: undeclared).
        concurrency: how many messages it handles at once in one process.
        timeout: seconds allowed per attempt (None: no limit).
        reply_type: for a command handler, the reply model.
        takes_context: whether the function takes the context argument.
    """

    kind: Literal["event", "command"]
    message_type: type[Message]
    func: HandlerFunc
    service: str
    name: str
    retry: Retry
    emits: tuple[type[Event], ...] | None
    concurrency: int
    timeout: float | None
    reply_type: type[Message] | None
    takes_context: bool

    @property
    def topic(self) -> str:
        """The topic it consumes: the message's type name."""
        return self.message_type.__flowkit_type__

    @property
    def consumer(self) -> str:
        """Its consumer group: ``service:name``."""
        return f"{self.service}:{self.name}"


def make_spec(
    kind: Literal["event", "command"],
    message_type: Any,
    func: Any,
    *,
    service: Any,
    name: str | None,
    retry: Retry | None,
    emits: Sequence[Any] | None,
    concurrency: int,
    timeout: float | None,
) -> HandlerSpec:
    """Check a handler declaration and record it.

    Raises:
        DefinitionError: naming what is wrong with the declaration.
    """
    where = getattr(func, "__qualname__", repr(func))
    decorator = "@bus.on" if kind == "event" else "@bus.handles"
    base: type[Message] = Event if kind == "event" else Command
    if not (isinstance(message_type, type) and issubclass(message_type, base)):
        raise DefinitionError(
            f"{decorator}({message_type!r}) on {where}: expected a subclass of "
            f"flowkit.{base.__name__}"
        )
    reply_type = reply_type_of(message_type) if issubclass(message_type, Command) else None
    if not isinstance(service, str) or not _SERVICE_RE.match(service):
        raise DefinitionError(
            f"{decorator} on {where}: service must be a non-empty name of letters, digits, "
            f"'_', '.' or '-', got {service!r}"
        )
    if not inspect.iscoroutinefunction(func):
        raise DefinitionError(f"{decorator} on {where}: the handler must be an 'async def'")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise DefinitionError(f"{decorator} on {where}: concurrency must be >= 1")
    if timeout is not None and not timeout > 0:
        raise DefinitionError(f"{decorator} on {where}: timeout must be > 0 seconds")
    if emits is not None:
        for emitted in emits:
            if not (isinstance(emitted, type) and issubclass(emitted, Event)):
                raise DefinitionError(
                    f"{decorator} on {where}: emits must list Event subclasses, got {emitted!r}"
                )
    takes_context = _check_signature(func, where, decorator, message_type, reply_type)
    return HandlerSpec(
        kind=kind,
        message_type=message_type,
        func=func,
        service=service,
        name=name or func.__qualname__,
        retry=retry if retry is not None else Retry(),
        emits=tuple(emits) if emits is not None else None,
        concurrency=concurrency,
        timeout=timeout,
        reply_type=reply_type,
        takes_context=takes_context,
    )


def _check_signature(
    func: Any,
    where: str,
    decorator: str,
    message_type: type[Message],
    reply_type: type[Message] | None,
) -> bool:
    params = list(inspect.signature(func).parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(positional) not in (1, 2) or any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
    ):
        raise DefinitionError(
            f"{decorator} on {where}: expected 'async def {func.__name__}(message, ctx)' "
            f"or '(message)', got {len(positional)} required positional parameter(s)"
        )
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # forward references not resolvable yet: skip the type check
        hints = {}
    annotated = hints.get(positional[0].name)
    if annotated is not None and not (
        isinstance(annotated, type) and issubclass(message_type, annotated)
    ):
        raise DefinitionError(
            f"{decorator}({message_type.__name__}) on {where}: its first parameter is "
            f"annotated {annotated!r}, which does not accept {message_type.__name__}"
        )
    if reply_type is not None and "return" in hints:
        returned = hints["return"]
        if not (isinstance(returned, type) and issubclass(returned, reply_type)):
            raise DefinitionError(
                f"{decorator}({message_type.__name__}) on {where}: must return "
                f"{reply_type.__name__} (the command's reply type), annotated {returned!r}"
            )
    return len(positional) == 2
