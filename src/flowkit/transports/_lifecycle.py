"""Opening and closing: a transport entered several times, a subscription closed by ``async with``.

A transport opens on its first ``async with`` and closes when the last one
exits, or at once with ``aclose()`` (several buses may share one transport).
:class:`Reentrant` keeps that count for every transport and
:class:`AsyncioReentrant` adds what a broker transport needs on top: its
first entry connects, which waits, so concurrent entries connect once; and it
runs on asyncio only, which it says clearly when entered under another event
loop. A transport uses them as a mixin and gives two methods:

* ``async def _connect(self) -> C``: open, and return what the opening holds
  (a broker's connection, its groups and tasks; the in-memory transport's
  groups). If it raises, the transport stays closed;
* ``async def _disconnect(self, connection: C) -> None``: close what one
  opening holds: its subscriptions, its tasks, its client. Called once per
  opening, by the last exit or by ``aclose()``.

``C`` has a ``closed`` attribute, which ``_disconnect`` sets. While the
transport is open, its methods find the opening with ``self._open()``, which
raises :class:`~flowkit.TransportClosed` otherwise. :func:`subscriptions_of`
lists what ``_disconnect`` has to close.

:class:`ClosesOnExit` is the ``async with`` of a subscription: it closes it.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, Self, TypeVar

from .._errors import TransportClosed, TransportError

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable
    from types import TracebackType

    from ._base import Subscription

__all__ = ["AsyncioReentrant", "ClosesOnExit", "Reentrant", "require_asyncio", "subscriptions_of"]


class _Opening(Protocol):
    @property
    def closed(self) -> bool: ...


class _Group(Protocol):
    @property
    def subscriptions(self) -> Collection[Subscription]: ...


C = TypeVar("C", bound=_Opening)


def require_asyncio(why: str) -> None:
    """Fail clearly when called outside asyncio.

    Args:
        why: the start of the message: which transport runs on asyncio only,
            and which client library does not run elsewhere.

    Raises:
        TransportError: if no asyncio event loop is running (trio, for one).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise TransportError(
            f"{why}. Run the bus with anyio's asyncio backend, or use another transport"
        ) from None


def subscriptions_of(groups: Iterable[_Group]) -> list[Subscription]:
    """Every subscription of ``groups``, listed now: closing one takes it out of
    its group (and may take its group out of ``groups``)."""
    return [subscription for group in list(groups) for subscription in list(group.subscriptions)]


class Reentrant(ABC, Generic[C]):
    """The open state of a transport entered several times: opened by the first
    ``async with``, closed by the last exit or by :meth:`aclose`.

    Entering it calls ``_connect()`` when it is closed; it never waits for
    another entry, so ``_connect()`` must open without waiting (use
    :class:`AsyncioReentrant` for one that waits).
    """

    __slots__ = ("_connection", "_entered")

    def __init__(self) -> None:
        # What the current opening holds; None while the transport is closed.
        self._connection: C | None = None
        self._entered = 0

    @abstractmethod
    async def _connect(self) -> C:
        """Open: what the new opening holds (the transport gives it)."""

    @abstractmethod
    async def _disconnect(self, connection: C) -> None:
        """Close what ``connection`` holds (the transport gives it)."""

    def _open(self) -> C:
        """What the current opening holds.

        Raises:
            TransportClosed: if the transport is not open.
        """
        connection = self._connection
        if connection is None or connection.closed:
            raise TransportClosed("the transport is not open")
        return connection

    @property
    def _status(self) -> str:
        """``"open"`` or ``"closed"``, for ``__repr__``."""
        return "open" if self._connection is not None else "closed"

    async def aclose(self) -> None:
        """Close the transport and every subscription on it, at once (however many
        ``async with`` are still inside).

        Blocked receivers and waiting publishers raise
        :class:`~flowkit.TransportClosed`. What the subscriptions held goes back
        to the broker, as each transport describes (the in-memory transport,
        which keeps nothing once closed, drops it). Closing a closed transport
        is a no-op.
        """
        connection = self._connection
        self._connection = None
        self._entered = 0
        if connection is None or connection.closed:
            return
        await self._disconnect(connection)

    async def __aenter__(self) -> Self:
        if self._connection is None:
            self._connection = await self._connect()
        self._entered += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered > 1:
            self._entered -= 1
        else:
            await self.aclose()


class AsyncioReentrant(Reentrant[C]):
    """A broker transport's open state: :class:`Reentrant`, on asyncio only, whose
    first entry connects while later ones wait for it.

    A subclass names itself in ``_ASYNCIO_ONLY``, the start of the error raised
    when it is entered outside asyncio.
    """

    __slots__ = ("_lock",)

    _ASYNCIO_ONLY: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> Self:
        """Open the transport (connect) if it is closed, or count one more entry.

        Raises:
            TransportError: outside asyncio, or if the broker cannot be reached.
        """
        require_asyncio(self._ASYNCIO_ONLY)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._connection is None:
                self._connection = await self._connect()
            self._entered += 1
        return self


class ClosesOnExit(ABC):
    """A subscription's ``async with``: leaving it closes the subscription (``aclose()``)."""

    __slots__ = ()

    @abstractmethod
    async def aclose(self) -> None:
        """Detach the consumer (the subscription gives it)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
