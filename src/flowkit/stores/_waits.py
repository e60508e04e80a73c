"""The store side of waiting workflows: when each one wakes, and the mailbox of
messages (events and signals) kept for the waits.

A workflow that waits is saved with the status :data:`WAITING`, no owner, and
three fields of its :class:`~flowkit.stores.WorkflowRecord`:

* ``wake_at``: when its timer runs out (None: it has no timer);
* ``wait_for``: the mailbox channel it waits on (``"event:SellerAccepted.order_id"``,
  ``"signal:Approval"``), None for a plain timer;
* ``wait_key``: the key within that channel (an order id, the workflow's id).

A waiting workflow holds no lease, so nothing is renewed for it and no process
keeps it in memory. It becomes **due** when its ``wake_at`` passes; the store
makes it due at once (``wake_at`` set to now) when a message arrives on its
channel and key, when one was already waiting there as it was saved, or when
a cancellation is requested. Any process running its orchestrator claims the
due workflows (:meth:`WaitStore.claim_due`) the way it claims free ones, and
continues them.

The **mailbox** keeps each message delivered to ``(name, channel, key)`` until a
wait consumes it, so a message that arrives before the workflow waits for it
is not lost. A message is consumed in two moves that survive a crash between
them: :meth:`WaitStore.take` marks it taken by a consumer (the workflow and
step), which gets the same message again if it asks again, and
:meth:`WaitStore.drop` removes it once the consumer's checkpoint recorded it.
Messages nobody consumed are pruned by age (:meth:`WaitStore.prune`).

A store may also tell the processes waking workflows that a delivery made
one due, wherever it was made: a method ``sleep(name, seconds)`` (see
:class:`WakeHint`) returns early when it may have. The waker awaits it
between two looks in the store, where it would otherwise sleep; a store
without it leaves a delivery by another process to be seen at the waker's next
look. :class:`~flowkit.stores.PostgresStore` has it (``LISTEN``/``NOTIFY``).

A store keeps waits when it has a method ``wait_ops()`` returning a
:class:`WaitStore`, as it has ``trace_ops()`` for the flow trace;
:func:`waits_of` asks for it. :class:`~flowkit.stores.MemoryStore`,
:class:`~flowkit.stores.SQLiteStore` and :class:`~flowkit.stores.PostgresStore`
keep them; the ``wait_`` checks of :data:`flowkit.testing.STORE_CHECKS` prove
a store does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from .._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from datetime import datetime

    from ._base import StateStore, WorkflowRecord

__all__ = [
    "WAITING",
    "Delivery",
    "Mail",
    "WaitStore",
    "WakeHint",
    "check_channel",
    "waits_of",
    "wake_hint_of",
]

#: The status of a workflow waiting for a timer, an event or a signal.
WAITING = "WAITING"


@dataclass(frozen=True, slots=True)
class Mail:
    """A message kept in the mailbox.

    Attributes:
        id: its message id, unique within its ``(name, channel, key)``.
        body: the message as JSON data.
        created_at: when it was delivered (UTC).
    """

    id: str
    body: Mapping[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    """What :meth:`WaitStore.deliver` did.

    Attributes:
        stored: False when a message with this id was delivered before (it is
            kept once).
        woken: the ids of the waiting workflows made due by it.
    """

    stored: bool
    woken: tuple[str, ...]


class WaitStore(Protocol):
    """The waits of one store: due workflows and the mailbox."""

    async def claim_due(
        self,
        name: str,
        owner: str,
        *,
        lease: float,
        limit: int = 100,
        exclude: Collection[str] = (),
    ) -> list[WorkflowRecord]:
        """Take the lease of waiting workflows of orchestrator ``name`` that are
        due (their ``wake_at`` passed), soonest first.

        A due workflow is claimed when nobody holds it or its lease ran out,
        unless its id is in ``exclude``; one ``owner`` itself holds is being
        taken up already (by another instance of its process, perhaps), and
        is left to it. Its version is
        incremented (fencing a previous holder); its status stays
        :data:`WAITING` until its new holder saves it. Several callers at once
        never claim one workflow twice.

        Returns:
            The claimed records, without history, owned by ``owner``.

        Raises:
            StoreError: if ``owner`` is empty, ``lease`` not positive or
                ``limit`` not a positive integer.
        """
        ...

    async def next_wake(self, name: str) -> float | None:
        """Seconds until the soonest ``wake_at`` of the waiting workflows of
        ``name`` that nobody holds, by the store's clock (zero or less when
        one is due now); None when none has a timer."""
        ...

    async def deliver(
        self, name: str, channel: str, key: str, message_id: str, body: Mapping[str, Any]
    ) -> Delivery:
        """Keep a message for the waits of ``name`` on ``channel`` and ``key``, and
        make the workflows waiting there due now.

        Delivering a message id again keeps it once (a redelivered event).

        Raises:
            StoreError: if ``body`` is not JSON data, or a name is empty.
        """
        ...

    async def take(self, name: str, channel: str, key: str, consumer: str) -> Mail | None:
        """The oldest message on ``channel`` and ``key`` that no other consumer
        took, marked taken by ``consumer``; a message ``consumer`` took before
        comes first. None when there is none.

        Two callers at once never take one message.
        """
        ...

    async def drop(self, name: str, consumer: str) -> int:
        """Remove the messages ``consumer`` took; return how many."""
        ...

    async def prune(self, older_than: datetime, *, limit: int = 10_000) -> int:
        """Remove the messages delivered before ``older_than`` (taken or not),
        oldest first, at most ``limit``; return how many.

        Raises:
            StoreError: if ``older_than`` is naive or ``limit`` not positive.
        """
        ...


class WakeHint(Protocol):
    """The optional method of a :class:`WaitStore` that hears of deliveries made
    by any process.

    A WaitStore without it is complete: the waker sleeps instead, and sees a
    delivery made by another process at its next look in the store.
    """

    async def sleep(self, name: str, seconds: float) -> None:
        """Return after ``seconds``, or sooner when a delivery (by any process)
        may have made a workflow of ``name`` due.

        A hint: the caller looks in the store either way, so returning early
        for nothing costs a look, and a delivery it was not told of is found at
        the next look. It never raises for a lost connection: it sleeps then.
        """
        ...


def wake_hint_of(waits: WaitStore) -> WakeHint | None:
    """The waits' :meth:`WakeHint.sleep`, or None when they have none."""
    sleep = getattr(waits, "sleep", None)
    if not callable(sleep):
        return None
    return cast("WakeHint", waits)


def waits_of(store: StateStore) -> WaitStore:
    """The waits a store keeps.

    Raises:
        StoreError: if the store has no ``wait_ops()`` (it cannot keep waiting
            workflows).
    """
    ops = getattr(store, "wait_ops", None)
    if not callable(ops):
        raise StoreError(
            f"{type(store).__name__} keeps no waiting workflows (it has no wait_ops()); "
            "use MemoryStore, SQLiteStore or PostgresStore"
        )
    waits: WaitStore = ops()
    return waits


def check_channel(name: str, channel: str, key: str) -> None:
    """Refuse an empty name, channel or key.

    Raises:
        StoreError: naming the empty one.
    """
    for what, value in (("name", name), ("channel", channel), ("key", key)):
        if not isinstance(value, str) or not value:
            raise StoreError(f"a mailbox {what} must be a non-empty string, got {value!r}")
