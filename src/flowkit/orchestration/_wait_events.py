"""The events an orchestrator's waits take: subscribed on a bus of its own, each one
kept in the store's mailbox under its key.

Every process running the orchestrator (with a transport, and ``recover`` on)
subscribes in one consumer group per waited event, named after the
orchestrator (service ``<orchestrator name>``, handler
``wait.<event type>.<field>``), so each event is kept once, whichever process
receives it. An event whose key field is None matches no wait and is dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._errors import DefinitionError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from .._events import Message
    from ..choreography import Choreography
    from ..choreography._context import Context
    from ._declare import Plan

__all__ = ["subscribe"]

logger = logging.getLogger("flowkit.orchestration")


def subscribe(
    bus: Choreography,
    plan: Plan,
    service: str,
    deliver: Callable[[str, str, str, Mapping[str, Any]], Awaitable[object]],
) -> None:
    """Declare on ``bus`` one handler per waited event channel of ``plan``, which
    passes each event to ``deliver(channel, key, message_id, body)``.

    Raises:
        DefinitionError: if the orchestrator's name cannot name a service.
    """
    for channel, spec in plan.event_waits.items():
        wait = spec.wait
        assert wait is not None and wait.message_type is not None and wait.match is not None
        field = wait.match

        async def keep(
            event: Message, ctx: Context, channel: str = channel, field: str = field
        ) -> None:
            value = getattr(event, field)
            if value is None:
                ctx.logger.debug("an event with no %s matches no wait; dropped", field)
                return
            body = event.model_dump(mode="json")
            # message_key: an unsigned event (a signing bus's migration mode)
            # cannot take the place of a signed one with the same id.
            await deliver(channel, str(value), ctx.message_key, body)

        try:
            bus.on(
                wait.message_type,
                service=service,
                name=f"wait.{wait.message_type.__flowkit_type__}.{field}",
                concurrency=8,
            )(keep)
        except DefinitionError as exc:
            raise DefinitionError(
                f"{plan.owner} waits for events, which it receives as service {service!r}: {exc}"
            ) from exc
