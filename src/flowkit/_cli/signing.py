"""``flowkit signing new-key``, and the signing keys the environment gives the
commands that build a bus of their own (``flowkit ui``)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._errors import DefinitionError
from .._signing import ENV_PREFIX, Signing, new_key
from .common import UsageError, one_line

if TYPE_CHECKING:
    import argparse

    from ..choreography import Choreography

__all__ = ["KEYS_ENV", "add_commands", "env_signing", "make_key", "warn_unsigned"]

#: The environment variable that holds the signing keys.
KEYS_ENV = f"{ENV_PREFIX}_KEYS"


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``signing new-key`` to the ``flowkit`` command."""
    signing = commands.add_parser(
        "signing", help="make signing keys for FLOWKIT_SIGNING_KEYS"
    ).add_subparsers(dest="signing_command", required=True, metavar="COMMAND")
    new = signing.add_parser(
        "new-key",
        help="print a new random signing key as id:base64",
        description=f"Print a new key of 32 random bytes as id:base64, an entry of {KEYS_ENV} "
        f"(entries are parted by commas). Keep it in a secret store, not in code.",
    )
    new.add_argument(
        "--id",
        dest="key_id",
        metavar="ID",
        help="the key's id: 1 to 32 letters, digits, '.', '_' or '-' (default: this "
        "month, such as 2026-12)",
    )
    new.set_defaults(run=make_key)


async def make_key(args: argparse.Namespace) -> int:
    """``flowkit signing new-key``: print ``id:base64`` of 32 random bytes."""
    key_id: str = args.key_id or datetime.now(UTC).strftime("%Y-%m")
    try:
        print(new_key(key_id))
    except DefinitionError as exc:
        raise UsageError(f"--id: {one_line(str(exc))}") from None
    return 0


def env_signing() -> Signing | None:
    """The signing of ``FLOWKIT_SIGNING_KEYS`` and its companions, None when unset.

    Raises:
        UsageError: if a variable is wrong (the message names it, never a key).
    """
    try:
        return Signing.from_env()
    except DefinitionError as exc:
        raise UsageError(one_line(str(exc))) from None


def warn_unsigned(bus: Choreography, target: str, consequence: str) -> None:
    """Say on standard error that ``FLOWKIT_SIGNING_KEYS`` is set while the
    target's bus signs nothing: the keys are its own to take, this command
    does not give them to it.

    Args:
        bus: the target bus.
        target: how the command line named it (``module:attribute``).
        consequence: what goes unsigned.
    """
    if bus.signing is None and os.environ.get(KEYS_ENV, "").strip():
        print(
            f"flowkit: warning: {KEYS_ENV} is set, but {target} signs nothing: {consequence}; "
            "build it with Choreography(..., signing=Signing.from_env()) to use those keys",
            file=sys.stderr,
            flush=True,
        )
