"""``flowkit trace`` and ``flowkit stalled``: flows as the store's trace recorded them.

``flowkit trace ID --store URL`` prints the causal tree of the flows that ID
names (a correlation id, a workflow id or a business key): who published
what, who handled it, what that caused, and where it stopped and why;
``--mermaid`` draws it as a sequence diagram, ``--json`` is for machines.
``flowkit stalled MODULE:bus`` lists the flows that did not meet the bus's
expectations (``bus.expect(...)``). Both read the store only.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._errors import StoreError
from ..choreography import Choreography
from ..observability._trace_expect import find_stalled
from ..observability._trace_view import load_flows, trace_json, trace_mermaid, trace_text
from ..stores._trace import trace_of
from .common import (
    STORE_ENV,
    CommandFailed,
    UsageError,
    chosen_store,
    describe,
    entered,
    load_object,
    readable_store,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from datetime import timedelta

    from ..stores import StateStore

__all__ = ["add_commands", "list_stalled", "show_trace"]

#: How far back ``flowkit stalled`` looks by default.
DEFAULT_SINCE = "1d"


def add_commands(
    commands: argparse._SubParsersAction[Any],
    *,
    duration: Callable[[str], timedelta],
    count: Callable[[str], int],
) -> None:
    """Add ``trace`` and ``stalled`` to the command line.

    Args:
        commands: the ``flowkit`` command's subparsers.
        duration: parses ``90s``, ``15m``, ``12h``, ``7d``.
        count: parses a positive whole number.
    """
    trace = commands.add_parser(
        "trace",
        help="print what happened to one flow, across every service",
        description="Print the causal tree of the flow ID names (a correlation id, a "
        "workflow id or a business key) as the store's trace recorded it: who published "
        "what, who handled it (attempts, outcome, duration), what that caused, and where "
        "it stopped and why. Reads the store only.",
    )
    trace.add_argument("id", help="a correlation id, a workflow id or a business key")
    _store_option(trace)
    shape = trace.add_mutually_exclusive_group()
    shape.add_argument("--mermaid", action="store_true", help="print a Mermaid sequence diagram")
    shape.add_argument("--json", action="store_true", help="print JSON")
    trace.add_argument(
        "--limit",
        type=count,
        default=2000,
        help="read at most this many entries per flow (2000); a note says when there are more",
    )
    trace.add_argument(
        "--after",
        type=count,
        metavar="SEQ",
        help="the next page: the entries of the first flow stored after this one",
    )
    trace.add_argument(
        "--flows",
        type=count,
        default=5,
        help="print at most this many flows, when ID names several (5)",
    )
    trace.set_defaults(run=show_trace)

    stalled = commands.add_parser(
        "stalled",
        help="list the flows that did not meet a bus's expectations",
        description="List the flows in which an expectation's first event was published "
        "and none of the events it leads to followed in time (bus.expect(...)), from the "
        "store's trace. Reads the store only.",
    )
    stalled.add_argument("app", help="the Choreography, as module:attribute")
    _store_option(stalled)
    stalled.add_argument(
        "--since",
        type=duration,
        default=duration(DEFAULT_SINCE),
        metavar="DURATION",
        help=f"look at the flows started this long ago at most (default {DEFAULT_SINCE})",
    )
    stalled.add_argument(
        "--limit", type=count, default=100, help="at most this many per expectation (100)"
    )
    stalled.add_argument("--json", action="store_true", help="print JSON")
    stalled.set_defaults(run=list_stalled)


def _store_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--store",
        metavar="URL",
        help=f"the store holding the trace (sqlite:///path, postgresql://...; default: "
        f"${STORE_ENV})",
    )


def _trace_store(store: StateStore | None, target: str) -> StateStore:
    """The store to read the trace from, opening nothing.

    Raises:
        UsageError: if there is no store, or it is in another process's memory.
    """
    if store is None:
        raise UsageError(f"give the store holding the trace: --store URL (or set {STORE_ENV})")
    return readable_store(store, target, "flow trace")


async def show_trace(args: argparse.Namespace) -> int:
    """``flowkit trace``: print the flows ``args.id`` names. Reads only.

    Exit status 1 when nothing in the trace has that id.
    """
    store = _trace_store(chosen_store(None, args), "the store")
    async with entered(store, store):
        try:
            trace = trace_of(store)
        except StoreError as exc:
            raise UsageError(str(exc)) from None
        flows = await load_flows(
            trace, args.id, limit=args.limit, after=args.after, flows=args.flows
        )
    if not flows:
        raise CommandFailed(
            f"no flow in the trace has the correlation id, workflow id or business key "
            f"{args.id!r} (tracing records with a store; entries older than its retention "
            "are pruned)"
        )
    if args.json:
        print(json.dumps([trace_json(flow) for flow in flows], indent=2))
        return 0
    render = trace_mermaid if args.mermaid else trace_text
    print("\n\n".join(render(flow) for flow in flows))
    if len(flows) >= args.flows:
        print(f"\n(at most {args.flows} flows shown; --flows N for more)")
    return 0


async def list_stalled(args: argparse.Namespace) -> int:
    """``flowkit stalled``: the flows that missed the bus's expectations. Reads only."""
    bus = load_object(args.app, Choreography)
    expectations = bus.expectations
    if not expectations:
        raise UsageError(
            f"{args.app} declares no expectations; declare them with "
            "bus.expect(FirstEvent, leads_to=[...], within=...)"
        )
    store = _trace_store(chosen_store(bus.store, args), args.app)
    since = datetime.now(UTC) - args.since
    found: list[tuple[str, list[Any]]] = []
    async with entered(store, store):
        try:
            trace = trace_of(store)
        except StoreError as exc:
            raise UsageError(str(exc)) from None
        for expectation in expectations:
            try:
                flows = await find_stalled(trace, expectation, since=since, limit=args.limit)
            except StoreError as exc:
                raise CommandFailed(f"expectation {expectation.name!r}: {describe(exc)}") from exc
            found.append((expectation.name, flows))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "expectation": flow.expectation,
                        "correlation_id": flow.correlation_id,
                        "message_type": flow.message_type,
                        "message_id": flow.message_id,
                        "published_at": flow.published_at.isoformat(),
                        "expected": list(flow.expected),
                        "within": flow.within.total_seconds(),
                        "key": flow.key,
                    }
                    for _, flows in found
                    for flow in flows
                ],
                indent=2,
            )
        )
        return 0
    for expectation, (name, flows) in zip(expectations, found, strict=True):
        expected = " or ".join(expectation.expected_types)
        print(
            f"{name}: {len(flows)} stalled flow(s) ({expected} expected within "
            f"{expectation.within.total_seconds():g}s of {expectation.first_type})"
        )
        for flow in flows:
            key = f"  key {flow.key}" if flow.key and flow.key != flow.correlation_id else ""
            print(
                f"  {flow.correlation_id}  {flow.message_type} published "
                f"{flow.published_at:%Y-%m-%d %H:%M:%S}Z  message {flow.message_id}{key}"
            )
        if len(flows) >= args.limit:
            print(f"  (at most {args.limit} shown; --limit N for more)")
    return 0
