"""A broker client's errors as flowkit's, at the transport's boundary.

Every error of a client library that leaves a broker transport becomes a
:class:`~flowkit.TransportError` chained to it (``from exc``), and every URL
its message shows is redacted, so a password never reaches a log, a repr or
an error. Each broker package makes its ``translate`` with :func:`translator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import TransportError
from .._redact import redact_url

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["cannot_connect", "translator"]


def translator(broker: str) -> Callable[[BaseException, str], TransportError]:
    """The ``translate`` function of one broker's transport.

    Args:
        broker: the broker's name, first in every message (``"Redis"``).
    """

    def translate(exc: BaseException, doing: str) -> TransportError:
        """A :class:`~flowkit.TransportError` for an error of the client, its URLs redacted.

        The error is chained to ``exc`` already (its ``__cause__``), for the
        errors handed to a waiting caller rather than raised where ``exc`` was
        caught.

        Args:
            exc: the error raised by the client (or by the socket under it).
            doing: what the transport was doing, for the message ("publish to ...").

        Returns:
            The error to raise.
        """
        detail = redact_url(str(exc)) or type(exc).__name__
        error = TransportError(f"{broker} {doing} failed: {type(exc).__name__}: {detail}")
        error.__cause__ = exc
        return error

    return translate


def cannot_connect(broker: str, where: str, exc: BaseException) -> TransportError:
    """The error of a transport that could not open its first connection (to
    raise ``from exc``).

    Args:
        broker: the broker's name (``"Redis"``).
        where: the broker's URL, redacted.
        exc: what connecting raised.
    """
    return TransportError(
        f"could not connect to {broker} at {where}: {type(exc).__name__}: {redact_url(str(exc))}"
    )
