"""Dead letters: keeping the messages a consumer gave up on, listing and replaying them."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import TYPE_CHECKING

import anyio

from .._errors import FlowkitError, SignatureError
from .._events import new_message_id
from .._signing import SIGNATURE, control_headers
from ._headers import REPLAY_OF

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._signing import Signing
    from ..stores._base import DeadLetter, StateStore
    from ..transports._base import Delivery, Transport

__all__ = ["FALLBACK_DEAD_LETTERS", "DeadLetterBox", "letter_id"]

logger = logging.getLogger("flowkit.bus")

# Without a store, dead letters are kept in memory, at most this many (oldest dropped).
FALLBACK_DEAD_LETTERS = 10_000


def letter_id(consumer: str, delivery: Delivery) -> str:
    """The id of the dead letter ``consumer`` keeps of ``delivery``.

    Derived from the message's broker id, its topic, headers and body, so two
    consumers of a group given one message (one took it over from the other,
    which was too slow to settle it) keep one dead letter, not two: the store
    keeps the first of one id. Two messages published apart have different
    broker ids, so never share a letter, however alike. Where the broker gives
    the message no id, a new one.
    """
    broker_id = delivery.broker_id
    if broker_id is None:
        return new_message_id()
    digest = hashlib.sha256()
    for part in (consumer, delivery.topic, broker_id):
        digest.update(part.encode())
        digest.update(b"\0")
    for name, value in sorted(delivery.headers.items()):
        digest.update(f"{name}\0{value}\0".encode())
    digest.update(delivery.body)
    return str(uuid.UUID(bytes=digest.digest()[:16]))


class DeadLetterBox:
    """Where a bus keeps its dead letters: its store, or a bounded in-memory one.

    Args:
        store: the bus's store; None keeps at most :data:`FALLBACK_DEAD_LETTERS`
            dead letters in memory, for the life of the bus object.
    """

    def __init__(self, store: StateStore | None) -> None:
        self._store = store
        self._fallback: StateStore | None = None
        self._opening: anyio.Event | None = None

    @property
    def durable(self) -> bool:
        """Whether dead letters go to the bus's own store (False: in memory)."""
        return self._store is not None

    async def store(self) -> StateStore:
        """The store holding the dead letters."""
        if self._store is not None:
            return self._store
        if self._fallback is None:
            from ..stores._memory import MemoryStore

            opening = self._opening = anyio.Event()
            fallback = self._fallback = MemoryStore(max_dead_letters=FALLBACK_DEAD_LETTERS)
            try:
                await fallback.__aenter__()  # in memory: open for the life of the bus
            finally:
                opening.set()
            return fallback
        if self._opening is not None:
            await self._opening.wait()
        return self._fallback

    async def keep(self, letter: DeadLetter) -> None:
        """Keep one dead letter.

        Raises:
            StoreError: if the store failed.
        """
        await (await self.store()).add_dead_letter(letter)

    async def list(
        self, *, consumer: str | None, topic: str | None, limit: int
    ) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally of one consumer or topic."""
        return await (await self.store()).list_dead_letters(
            consumer=consumer, topic=topic, limit=limit
        )

    async def replay(
        self, letter_id: str, transport: Transport, signing: Signing | None = None
    ) -> DeadLetter:
        """Publish a dead letter again to the consumer that gave up on it, then remove it.

        The dead letter is removed only once the transport accepted the publish,
        so a failed publish leaves it in place.

        With ``signing``, the replay is signed for the consumer's group only,
        after the dead letter's own signature is checked, so that a replay
        never vouches for what was not signed: a signed letter keeps its
        control headers, an unsigned one accepted in the migration mode loses
        them, and one whose signature fails is not replayed.

        Returns:
            The dead letter that was replayed.

        Raises:
            NotFound: if there is no dead letter with this id.
            SignatureError: if ``signing`` is given and the dead letter is
                unsigned while signatures are required, names an unknown key,
                or its signature does not match (the dead letter is kept).
            TransportError: if the publish failed (the dead letter is kept).
        """
        store = await self.store()
        letter = await store.get_dead_letter(letter_id)
        headers = {k: v for k, v in letter.headers.items() if k != REPLAY_OF}
        headers[REPLAY_OF] = letter.id
        if signing is not None:
            headers = _signed_replay(letter, headers, signing)
        await transport.publish(letter.topic, letter.body, headers, group=letter.consumer)
        try:
            await store.delete_dead_letter(letter.id)
        except FlowkitError:
            # Published but still listed: a second replay would deliver it again,
            # and the consumer's inbox drops that copy.
            logger.warning(
                "dead letter %s was replayed but could not be removed", letter.id, exc_info=True
            )
            raise
        return letter


def _signed_replay(
    letter: DeadLetter, headers: Mapping[str, str], signing: Signing
) -> dict[str, str]:
    """The headers of a dead letter's replay on a bus that signs (see
    :meth:`DeadLetterBox.replay`)."""
    try:
        trusted = signing.verify(letter.topic, letter.consumer, letter.body, letter.headers)
    except SignatureError as exc:
        raise SignatureError(
            f"dead letter {letter.id} is not replayed: {exc}. A replay is signed, so only "
            "a message whose own signature verifies is replayed; if its key was removed, "
            "add it back to Signing(keys=...), else delete the dead letter"
        ) from None
    out = {k: v for k, v in headers.items() if k != SIGNATURE}
    if not trusted:
        # Unsigned, accepted in the migration mode: its control headers were
        # never trusted, and are not vouched for now.
        out = {k: v for k, v in out.items() if k not in control_headers(out)}
        out[REPLAY_OF] = letter.id
    return signing.signed(letter.topic, letter.body, out, group=letter.consumer)
