"""``flowkit dlq list``, ``replay`` and ``prune``: the dead letters of a bus."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._errors import FlowkitError
from ..choreography import Choreography
from .common import (
    CommandFailed,
    UsageError,
    chosen_store,
    describe,
    entered,
    load_object,
    one_line,
    point_bus,
    prune_in_batches,
    readable_store,
    require_broker,
    text_lines,
    writable_store,
)
from .signing import warn_unsigned

if TYPE_CHECKING:
    import argparse

    from ..stores import DeadLetter, StateStore

__all__ = ["letter_json", "list_letters", "prune_letters", "reason_of", "replay_letters"]

_TYPE_PREFIX = re.compile(r"([A-Za-z_][\w.]*): ")
_TRACEBACK = re.compile(r"^\s*(\+ )?(Exception Group )?Traceback \(most recent call last\):$")
_SUB_EXCEPTION = re.compile(r"^\s*\+[-+]* (\d+|\.\.\.) -+$")


async def list_letters(args: argparse.Namespace) -> int:
    """``flowkit dlq list``: print the dead letters, oldest first. Reads only."""
    bus = load_object(args.app, Choreography)
    store = readable_store(chosen_store(bus.store, args), args.app, "dead letters")
    async with entered(store, store):
        letters = await store.list_dead_letters(
            consumer=args.consumer, topic=args.topic, limit=args.limit
        )
    if args.json:
        print(json.dumps([letter_json(x, verbose=args.verbose) for x in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    for letter in letters:
        reason = reason_of(letter)
        failed_at = letter.failed_at.astimezone(UTC)
        print(
            f"{letter.id}  {failed_at:%Y-%m-%d %H:%M:%S}Z  {letter.consumer}  {letter.topic}  "
            f"attempts={letter.attempts}  {letter.error_type}{': ' + reason if reason else ''}"
        )
        if args.verbose:
            print(f"    message id: {letter.message_id or '-'}")
            for line in text_lines(letter.error):
                print(f"    {line}")
    return 0


async def replay_letters(args: argparse.Namespace) -> int:
    """``flowkit dlq replay``: publish dead letters again, each to its own handler.

    A dead letter is removed only once the transport accepted its message. On the
    first failure the command stops and says how many were replayed before it.
    """
    bus = load_object(args.app, Choreography)
    point_bus(bus, args)
    if args.all == bool(args.ids):
        raise UsageError("give dead letter ids, or --all (with --consumer / --topic), not both")
    if args.ids and (args.consumer or args.topic):
        raise UsageError("--consumer and --topic select dead letters for --all; not with ids")
    require_broker(
        bus,
        args.app,
        "a replayed message would reach no worker and its dead letter would be lost",
    )
    warn_unsigned(
        bus, args.app, "a signed dead letter replayed by it keeps its old signature and is refused"
    )
    check = readable_store(bus.store, args.app, "dead letters")
    if check is not bus.store:
        async with entered(check, check):
            pass  # the database exists and holds flowkit data: the bus may open it
    replayed = 0
    async with bus.run(services=[]):
        if args.all:
            letters = await bus.dead_letters(
                consumer=args.consumer, topic=args.topic, limit=args.limit
            )
            ids = [letter.id for letter in letters]
        else:
            ids = list(dict.fromkeys(args.ids))
        for letter_id in ids:
            try:
                await bus.replay(letter_id)
            except FlowkitError as exc:
                raise CommandFailed(
                    f"dead letter {letter_id}: {describe(exc)} "
                    f"({replayed} of {len(ids)} replayed before it)"
                ) from exc
            replayed += 1
    print(f"replayed {replayed} dead letter(s)")
    return 0


async def prune_letters(args: argparse.Namespace) -> int:
    """``flowkit dlq prune``: remove the dead letters that failed before a cutoff.

    They go in batches (see :func:`.common.prune_in_batches`); with
    ``--dry-run`` they are only counted, through a read-only view of the store.
    """
    bus = load_object(args.app, Choreography)
    store = chosen_store(bus.store, args)
    cutoff = datetime.now(UTC) - args.older_than
    when = f"failed before {cutoff:%Y-%m-%d %H:%M:%S}Z"
    if args.dry_run:
        reader = readable_store(store, args.app, "dead letters")
        async with entered(reader, reader):
            count = await _count_letters_before(reader, cutoff, args.consumer, args.topic)
        print(f"would prune {count:,} dead letter(s) {when}")
        return 0
    async with writable_store(store, args.app, "dead letters") as opened:
        total = await prune_in_batches(
            lambda limit: opened.prune_dead_letters(
                cutoff, consumer=args.consumer, topic=args.topic, limit=limit
            ),
            "dead letters",
        )
    print(f"pruned {total:,} dead letter(s) {when}")
    return 0


async def _count_letters_before(
    store: StateStore, cutoff: datetime, consumer: str | None, topic: str | None
) -> int:
    """How many matching letters failed before ``cutoff`` (they are listed first)."""
    limit = 1_000
    while True:
        letters = await store.list_dead_letters(consumer=consumer, topic=topic, limit=limit)
        old = sum(1 for letter in letters if letter.failed_at < cutoff)
        if len(letters) < limit or old < len(letters):
            return old
        limit *= 4


def reason_of(letter: DeadLetter) -> str:
    """Why the handler gave up, once and on one line: the exception's message
    without its type (``error_type`` names it) and without the traceback."""
    lines = _exception_lines(text_lines(letter.error))
    reason = one_line(lines)
    short = letter.error_type.rpartition(".")[2]
    while (match := _TYPE_PREFIX.match(reason)) and match.group(1).rpartition(".")[2] == short:
        reason = reason[match.end() :]
    return reason


def _exception_lines(lines: list[str]) -> list[str]:
    """The exception's own text at the end of a formatted traceback; ``lines``
    themselves when they are no traceback.

    Of chained exceptions, the last one counts. For an exception group with one
    sub-exception, the sub-exception's text follows the group's: ``unhandled
    errors in a TaskGroup (1 sub-exception): ConnectionError: refused``.
    """
    starts = [i for i, line in enumerate(lines) if _TRACEBACK.match(line)]
    if starts:
        lines = lines[starts[-1] :]
    if any(_SUB_EXCEPTION.match(line) for line in lines):
        return _group_lines(lines)
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    if not frames:
        return lines[1:] if starts else lines
    rest = lines[frames[-1] + 1 :]
    while rest and rest[0].startswith(" "):
        rest.pop(0)  # the frame's source line and its ^^^^ markers
    return rest


def _group_lines(lines: list[str]) -> list[str]:
    """The text of a formatted exception group (see :func:`_exception_lines`).

    The group's own lines come before its first ``+-+---- 1 ----`` line and are
    framed by ``|`` in the column of that ``+``; its sub-exceptions follow,
    framed two columns further right and parted by ``+---- 2 ----`` lines there.
    """
    first = next(i for i, line in enumerate(lines) if _SUB_EXCEPTION.match(line))
    bar = lines[first].index("+")
    inner = bar + 2
    own = [
        line[bar + 2 :] if line[bar : bar + 1] == "|" else line.strip() for line in lines[:first]
    ]
    blocks: list[list[str]] = [[]]
    for line in lines[first + 1 :]:
        if line[inner : inner + 2] == "+-" and not line[inner:].startswith("+-+"):
            if _SUB_EXCEPTION.match(line):
                blocks.append([])  # the next sub-exception; without a number: the end
        else:
            blocks[-1].append(line[inner:])
    text = _exception_lines(own)
    if len(blocks) == 1 and text:
        block = blocks[0]
        if not any(_SUB_EXCEPTION.match(line) for line in block):
            block = [line[2:] if line.startswith("|") else line for line in block]
        leaf = one_line(_exception_lines(block))
        if match := _TYPE_PREFIX.match(leaf):
            repeated = match.group(0)
            while leaf[match.end() :].startswith(repeated):
                leaf = leaf[: match.end()] + leaf[match.end() + len(repeated) :]
        text = [*text[:-1], f"{text[-1]}: {leaf}"]
    return text


def letter_json(letter: DeadLetter, *, verbose: bool = False) -> dict[str, Any]:
    """A dead letter as JSON data.

    The body is the JSON value itself when it is JSON (``"body_encoding":
    "json"``), else its text (``"text"``, for UTF-8) or base64 (``"base64"``).
    The full error (a traceback) is included with ``verbose`` only.
    """
    encoding, body = _body(letter.body)
    data: dict[str, Any] = {
        "id": letter.id,
        "consumer": letter.consumer,
        "topic": letter.topic,
        "message_id": letter.message_id,
        "attempts": letter.attempts,
        "failed_at": letter.failed_at.astimezone(UTC).isoformat(),
        "error_type": letter.error_type,
        "reason": reason_of(letter),
        "headers": dict(letter.headers),
        "body_encoding": encoding,
        "body": body,
    }
    if verbose:
        data["error"] = "\n".join(text_lines(letter.error))
    return data


def _body(body: bytes) -> tuple[str, Any]:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return "base64", base64.b64encode(body).decode("ascii")
    try:
        return "json", json.loads(text, parse_constant=_reject)
    except ValueError:
        return "text", text


def _reject(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")
