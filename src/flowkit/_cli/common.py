"""What the command groups share: the target object, refusals, stores opened for
reading or pruning, and messages that fit on one line."""

from __future__ import annotations

import importlib
import os
import re
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import MissingDependency, StoreError
from ..stores import MemoryStore, SQLiteStore
from ..stores import from_url as store_from_url
from ..transports import from_url as transport_from_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
    from contextlib import AbstractAsyncContextManager
    from types import ModuleType

    from ..choreography import Choreography
    from ..stores import StateStore

__all__ = [
    "PRUNE_BATCH",
    "STORE_ENV",
    "TRANSPORT_ENV",
    "CommandFailed",
    "UsageError",
    "chosen_store",
    "describe",
    "entered",
    "import_module",
    "load_object",
    "one_line",
    "point_bus",
    "prune_in_batches",
    "readable_store",
    "require_broker",
    "text_lines",
    "writable_store",
]

T = TypeVar("T")

TRANSPORT_ENV = "FLOWKIT_TRANSPORT"
STORE_ENV = "FLOWKIT_STORE"

#: The most records one prune call removes; a prune calls again until less go.
PRUNE_BATCH = 10_000

BROKERS = "Redis, RabbitMQ, NATS, Kafka"
"""The broker transports named when a command needs one."""

_PYDANTIC_URL = re.compile(r"^\s*For further information visit https://errors\.pydantic\.dev/")


class UsageError(Exception):
    """A command line, or the object it names, that cannot be carried out (exit status 2).

    The message says why, on one line.
    """


class CommandFailed(Exception):
    """The command ran and failed (exit status 1); the message says what happened."""


# -- messages --------------------------------------------------------------------------


def text_lines(text: str) -> list[str]:
    """The lines of ``text`` without pydantic's documentation links, trailing
    spaces, or blank lines at either end."""
    lines = [line.rstrip() for line in text.splitlines() if not _PYDANTIC_URL.match(line)]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def one_line(text: str | Iterable[str]) -> str:
    """Text on one line: its non-blank lines, stripped, joined by ``"; "``.

    Args:
        text: a message, or its lines.
    """
    lines = text_lines(text) if isinstance(text, str) else list(text)
    return "; ".join(stripped for line in lines if (stripped := line.strip()))


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line (just ``Type`` for an exception without a message)."""
    message = one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# -- the target object -----------------------------------------------------------------


def load_object(path: str, expected: type[T]) -> T:
    """Import ``module:attribute`` and check that it is an ``expected``.

    Args:
        path: ``module:attribute``; the attribute may be dotted (``app:services.bus``).
        expected: the class the object must be an instance of.

    Returns:
        The object.

    Raises:
        UsageError: naming the module that is missing or that raised while being
            imported (with the exception's type and message), the attribute that
            is missing, or the type the object has instead.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"expected module:attribute, got {path!r}")
    module = import_module(module_name)
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(obj, expected):
        return obj
    wanted = expected.__name__
    if isinstance(obj, type) and issubclass(obj, expected):
        raise UsageError(
            f"{path} is the class {obj.__name__}; give an instance of it "
            f"(such as `x = {obj.__name__}(store=...)`)"
        )
    raise UsageError(f"{path} is of type {type(obj).__name__}, expected a {wanted}")


def import_module(module_name: str) -> ModuleType:
    """Import the module a command line names.

    Raises:
        UsageError: naming the module that is missing or that raised while being
            imported (with the exception's type and message).
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_prefix(exc.name, module_name):
            raise UsageError(
                f"cannot import {module_name!r}: no module named {exc.name!r} "
                "(run flowkit from the directory your modules are imported from)"
            ) from None
        raise UsageError(f"importing {module_name!r} raised {describe(exc)}") from None
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} raised {describe(exc)}") from None


def _is_prefix(name: str, module_name: str) -> bool:
    """Whether ``name`` is ``module_name`` or one of its parent packages."""
    return module_name == name or module_name.startswith(name + ".")


# -- refusals --------------------------------------------------------------------------


def require_broker(bus: Choreography, target: str, consequence: str) -> None:
    """Refuse a bus whose transport does not carry messages to other processes.

    Args:
        bus: the target bus.
        target: how the command line named it (``module:attribute``).
        consequence: what would go wrong on a process-local transport.

    Raises:
        UsageError: if ``bus.transport.capabilities.crosses_processes`` is False.
    """
    transport = bus.transport
    if not transport.capabilities.crosses_processes:
        raise UsageError(
            f"{target} runs on {type(transport).__name__}, which only reaches this process: "
            f"{consequence}; run it with a broker transport ({BROKERS})"
        )


# -- stores ----------------------------------------------------------------------------


def _url(args: Any, option: str, env: str) -> str | None:
    return getattr(args, option, None) or os.environ.get(env) or None


def point_bus(bus: Choreography, args: Any) -> None:
    """Put the bus on the transport and store the command line names, if any
    (``--transport``/``--store``, or ``FLOWKIT_TRANSPORT``/``FLOWKIT_STORE``).

    Raises:
        UsageError: for a URL flowkit cannot open, or a missing client library.
    """
    transport, store = _url(args, "transport", TRANSPORT_ENV), _url(args, "store", STORE_ENV)
    try:
        if transport is not None:
            bus.use(transport=transport_from_url(transport))
        if store is not None:
            bus.use(store=store_from_url(store))
    except (ValueError, MissingDependency) as exc:
        raise UsageError(one_line(str(exc))) from None


def chosen_store(own: StateStore | None, args: Any) -> StateStore | None:
    """The store the command line names (``--store`` or ``FLOWKIT_STORE``), else ``own``.

    Raises:
        UsageError: for a URL flowkit cannot open.
    """
    url = _url(args, "store", STORE_ENV)
    if url is None:
        return own
    try:
        return store_from_url(url)
    except ValueError as exc:
        raise UsageError(one_line(str(exc))) from None


def readable_store(store: StateStore | None, target: str, kept: str) -> StateStore:
    """The store to read the target's records from, opening nothing.

    A :class:`~flowkit.stores.SQLiteStore` is read through a read-only store on
    the same file, which must exist: reading never creates a database. Other
    shared stores are used as they are (reading them writes nothing).

    Args:
        store: the target's own store.
        target: how the command line named the target.
        kept: what the target keeps there, for messages (``"dead letters"``).

    Returns:
        A store, not yet opened.

    Raises:
        UsageError: if the target has no store, keeps its records in the memory
            of another process, or names a database file that does not exist.
    """
    if store is None:
        raise UsageError(
            f"{target} has no store: its {kept} stay in the memory of the process that "
            "runs it; give it a shared store (such as SQLiteStore) to reach them from here"
        )
    if isinstance(store, MemoryStore) or (
        isinstance(store, SQLiteStore) and store.path == ":memory:"
    ):
        raise UsageError(
            f"{target} keeps its {kept} in memory ({type(store).__name__}), out of reach of this "
            "process; give it a shared store (such as SQLiteStore) to reach them from here"
        )
    if isinstance(store, SQLiteStore):
        if not os.path.isfile(store.path):
            raise UsageError(
                f"no flowkit data at {store.path}: no such file "
                f"(is the database path of {target} right?)"
            )
        return SQLiteStore(store.path, read_only=True)
    return store


@asynccontextmanager
async def entered(resource: AbstractAsyncContextManager[T], store: StateStore) -> AsyncIterator[T]:
    """Enter ``resource``: ``store`` itself, or something that opens it.

    A read-only SQLite store (from :func:`readable_store`) that cannot be opened
    means that the target names no usable database: the file holds no flowkit
    data or a newer schema, or is no database at all. That is a
    :class:`UsageError`, not a failure of flowkit.

    Raises:
        UsageError: if opening a read-only SQLite store failed.
    """
    async with AsyncExitStack() as stack:
        try:
            value = await stack.enter_async_context(resource)
        except StoreError as exc:
            if isinstance(store, SQLiteStore) and store.read_only:
                raise UsageError(one_line(str(exc))) from exc
            raise
        yield value


@asynccontextmanager
async def writable_store(
    store: StateStore | None, target: str, kept: str
) -> AsyncIterator[StateStore]:
    """Open the target's store to write to it (to prune it), creating nothing.

    The store is first checked as :func:`readable_store` and :func:`entered`
    check it: an SQLite file must exist and hold flowkit data, so a mistyped
    path creates no database and a database of something else is left alone.

    Args:
        store: the target's own store (or the one the command line names).
        target: how the command line named the target.
        kept: what the target keeps there, for messages (``"dead letters"``).

    Yields:
        The store, open.

    Raises:
        UsageError: for the reasons :func:`readable_store` and :func:`entered` give.
    """
    reader = readable_store(store, target, kept)
    if reader is not store:
        async with entered(reader, reader):
            pass  # the database exists and holds flowkit data: it may be opened to write
    writer = store or reader
    async with writer:
        yield writer


async def prune_in_batches(prune: Callable[[int], Awaitable[int]], kept: str) -> int:
    """Call ``prune(limit)`` until it removes less than ``limit`` records.

    When it takes more than one batch, a line per batch on standard error says
    how many records went so far.

    Args:
        prune: removes at most its argument's number of records; returns how many.
        kept: what is pruned, for the progress lines (``"dead letters"``).

    Returns:
        How many records were removed in all.
    """
    total = 0
    while True:
        removed = await prune(PRUNE_BATCH)
        total += removed
        if removed < PRUNE_BATCH:
            return total
        print(f"pruned {total:,} {kept} so far", file=sys.stderr, flush=True)
