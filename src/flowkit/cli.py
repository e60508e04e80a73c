"""The ``flowkit`` command: run services, look at dead letters and workflows.

Each command takes the application object it works on as ``module:attribute``,
the way ASGI servers take an app: a :class:`~flowkit.Choreography` for
``worker`` and ``dlq``, an :class:`~flowkit.Orchestrator` instance for
``workflows``. The object brings its own transport and store.

::

    flowkit worker myshop.services:bus --services logistics,seller --grace 30
    flowkit dlq list myshop.services:bus --consumer logistics:assign_partner
    flowkit dlq replay myshop.services:bus --all --consumer logistics:assign_partner
    flowkit dlq prune myshop.services:bus --older-than 7d
    flowkit workflows list myshop.orders:orders --status failed
    flowkit workflows show myshop.orders:orders o-1
    flowkit workflows cancel myshop.orders:orders o-1 --wait 60
    flowkit workflows signal myshop.orders:orders o-1 RefundApproved '{"by": "ada"}'
    flowkit workflows prune myshop.orders:orders --older-than 30d
    flowkit graph myshop.services:bus --format dot
    flowkit lint myshop.services:bus --external OrderPlaced
    flowkit asyncapi myshop.services:bus --title "My shop" --version 1.2.0
    flowkit trace o-2 --store sqlite:///flowkit.db --mermaid
    flowkit stalled myshop.services:bus --since 12h
    flowkit ui --store sqlite:///flowkit.db --transport redis://localhost --module myshop.services
    flowkit signing new-key --id 2026-12

Exit status: 0 on success, 1 when flowkit failed, 2 for a command line (or a
target object) that cannot be carried out; a worker stopped at once by a second
signal exits with 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import anyio

from ._cli.common import CommandFailed, UsageError, one_line
from ._cli.dlq import list_letters, prune_letters, replay_letters
from ._cli.graph import add_commands as add_graph_commands
from ._cli.signing import add_commands as add_signing_commands
from ._cli.trace import add_commands as add_trace_commands
from ._cli.ui import add_commands as add_ui_commands
from ._cli.worker import run_worker
from ._cli.workflows import (
    STATUSES,
    cancel_workflow,
    list_workflows,
    prune_workflows,
    show_workflow,
    signal_workflow,
)
from ._errors import FlowkitError
from .observability._logs import logging_set_up, parse_level

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

__all__ = ["main", "main_exit"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UsageError`: one line, status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    """A duration such as ``90s``, ``15m``, ``12h`` or ``7d``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 15m, 12h or 7d, got {text!r}"
        )
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"expected a duration of at least 1s, got {text!r}")
    longest = datetime.now(UTC) - datetime.min.replace(tzinfo=UTC)
    if seconds >= longest.total_seconds():
        raise argparse.ArgumentTypeError(f"a duration too long: {text!r}")
    return timedelta(seconds=seconds)


def _prune_options(command: argparse.ArgumentParser, what: str) -> None:
    """The --older-than and --dry-run options of the prune commands."""
    command.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="DURATION",
        help=f"prune {what} longer ago than this: 90s, 15m, 12h, 7d",
    )
    command.add_argument(
        "--dry-run", action="store_true", help="count what would be pruned, remove nothing"
    )


def _urls(command: argparse.ArgumentParser, *, transport: bool) -> None:
    """The --transport and --store options, which override the target's own."""
    if transport:
        command.add_argument(
            "--transport",
            metavar="URL",
            help="the broker to use instead of the bus's own (redis://...; default: "
            "$FLOWKIT_TRANSPORT)",
        )
    command.add_argument(
        "--store",
        metavar="URL",
        help="the store to use instead of the target's own (sqlite:///path; default: "
        "$FLOWKIT_STORE)",
    )


def _log_level(text: str) -> str:
    try:
        parse_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _log_options(parser: argparse.ArgumentParser) -> None:
    """The --log-level and --log-format options of the top-level command."""
    parser.add_argument(
        "--log-level",
        type=_log_level,
        metavar="LEVEL",
        help="debug, info, warning, error or critical (default: $FLOWKIT_LOG_LEVEL, else info "
        "for worker and warning for the other commands); debug logs each handling and step",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text: a readable line per record, in colour on a terminal unless NO_COLOR is "
        "set; json: one JSON object per line (default: $FLOWKIT_LOG_FORMAT, else text)",
    )


def _logging_of(args: argparse.Namespace) -> tuple[str, Literal["text", "json"]]:
    """The log level and format: the options, else the environment, else the defaults.

    Raises:
        UsageError: if FLOWKIT_LOG_LEVEL or FLOWKIT_LOG_FORMAT holds an unknown value.
    """
    level: str = (
        args.log_level
        or os.environ.get("FLOWKIT_LOG_LEVEL")
        or ("info" if args.command == "worker" else "warning")
    )
    try:
        parse_level(level)
    except ValueError as exc:
        raise UsageError(f"FLOWKIT_LOG_LEVEL: {exc}") from None
    fmt: str = args.log_format or os.environ.get("FLOWKIT_LOG_FORMAT") or "text"
    if fmt == "json":
        return level, "json"
    if fmt == "text":
        return level, "text"
    raise UsageError(f"FLOWKIT_LOG_FORMAT: unknown log format {fmt!r}; use text or json")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flowkit", description="Run flowkit services; inspect dead letters and workflows."
    )
    _log_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="run a bus's services until SIGINT or SIGTERM",
        description="Run a bus's services until SIGINT or SIGTERM (a second one stops at "
        "once). The bus needs a transport that crosses processes (a broker).",
    )
    worker.add_argument("app", help="the Choreography, as module:attribute")
    worker.add_argument("--services", help="comma-separated services to run (default: all)")
    _urls(worker, transport=True)
    worker.add_argument(
        "--grace",
        type=_seconds,
        metavar="SECONDS",
        help="how long running handlers get to finish once stopping (default: the bus's "
        "stop_grace)",
    )
    worker.set_defaults(run=run_worker)

    dlq = commands.add_parser("dlq", help="list, replay or prune dead letters").add_subparsers(
        dest="dlq_command", required=True, metavar="COMMAND"
    )
    dlq_list = dlq.add_parser(
        "list",
        help="list dead letters, oldest first",
        description="List dead letters, oldest first. Reads the bus's store only.",
    )
    dlq_replay = dlq.add_parser(
        "replay",
        help="deliver dead letters again to their handler",
        description="Publish dead letters again, each to the handler that gave up on it, "
        "and remove each once its publish was accepted. Needs a broker transport.",
    )
    for sub in (dlq_list, dlq_replay):
        sub.add_argument("app", help="the Choreography, as module:attribute")
        sub.add_argument("--consumer", help="only this handler's (service:name)")
        sub.add_argument("--topic", help="only this message type's")
        sub.add_argument("--limit", type=_positive_int, default=100, help="at most this many (100)")
    _urls(dlq_list, transport=False)
    _urls(dlq_replay, transport=True)
    dlq_list.add_argument("--json", action="store_true", help="print JSON")
    dlq_list.add_argument(
        "-v", "--verbose", action="store_true", help="with each dead letter's full error"
    )
    dlq_list.set_defaults(run=list_letters)
    dlq_replay.add_argument("ids", nargs="*", help="dead letter ids")
    dlq_replay.add_argument("--all", action="store_true", help="every matching dead letter")
    dlq_replay.set_defaults(run=replay_letters)
    dlq_prune = dlq.add_parser(
        "prune",
        help="remove old dead letters",
        description="Remove the dead letters that failed longer ago than --older-than, "
        "in batches. Opens the bus's store (never creating one), not its transport.",
    )
    dlq_prune.add_argument("app", help="the Choreography, as module:attribute")
    dlq_prune.add_argument("--consumer", help="only this handler's (service:name)")
    dlq_prune.add_argument("--topic", help="only this message type's")
    _prune_options(dlq_prune, "dead letters that failed")
    _urls(dlq_prune, transport=False)
    dlq_prune.set_defaults(run=prune_letters)

    workflows = commands.add_parser(
        "workflows", help="list, show, cancel, signal or prune workflows"
    ).add_subparsers(dest="workflows_command", required=True, metavar="COMMAND")
    wf_list = workflows.add_parser(
        "list",
        help="list workflows, oldest first",
        description="List an orchestrator's workflows, oldest first. Reads its store only.",
    )
    wf_list.add_argument("app", help="the Orchestrator instance, as module:attribute")
    wf_list.add_argument(
        "--status",
        action="append",
        help=f"only this status, any case (repeatable or comma-separated): {STATUSES}",
    )
    wf_list.add_argument("--limit", type=_positive_int, default=None, help="at most this many")
    wf_list.add_argument(
        "--after",
        metavar="CURSOR",
        help="the next page: the cursor that the previous page printed",
    )
    _urls(wf_list, transport=False)
    wf_list.add_argument("--json", action="store_true", help="print JSON")
    wf_list.set_defaults(run=list_workflows)
    wf_show = workflows.add_parser(
        "show",
        help="one workflow's steps and history",
        description="Show one workflow's steps and history. Reads the store only.",
    )
    wf_show.add_argument("app", help="the Orchestrator instance, as module:attribute")
    wf_show.add_argument("id", help="the workflow id")
    _urls(wf_show, transport=False)
    wf_show.add_argument("--json", action="store_true", help="print JSON")
    wf_show.set_defaults(run=show_workflow)
    wf_cancel = workflows.add_parser(
        "cancel",
        help="cancel a running or waiting workflow, wherever it runs",
        description="Ask the process that runs a workflow to cancel it and compensate what "
        "it did (or the next process to take it over, if none does; a waiting workflow is "
        "woken by the next process running its orchestrator). Opens its store, not its "
        "transport.",
    )
    wf_cancel.add_argument("app", help="the Orchestrator instance, as module:attribute")
    wf_cancel.add_argument("id", help="the workflow id")
    wf_cancel.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="wait this long for the workflow to end; exit 0 if it ends COMPENSATED",
    )
    _urls(wf_cancel, transport=False)
    wf_cancel.set_defaults(run=cancel_workflow)
    wf_signal = workflows.add_parser(
        "signal",
        help="send a signal to a workflow",
        description="Send a signal to a workflow, the message one of its WaitForSignal steps "
        "takes: a workflow waiting for it is woken by the next process running its "
        "orchestrator; one that has not reached its wait yet gets it when it does. Opens its "
        "store, not its transport.",
    )
    wf_signal.add_argument("app", help="the Orchestrator instance, as module:attribute")
    wf_signal.add_argument("id", help="the workflow id")
    wf_signal.add_argument(
        "type", help="the signal's type, as a WaitForSignal of the orchestrator names it"
    )
    wf_signal.add_argument(
        "fields",
        nargs="?",
        metavar="JSON",
        help="the signal's fields, as a JSON object (default: {})",
    )
    wf_signal.add_argument(
        "--signal-id",
        metavar="ID",
        help="the signal's id: a signal sent again with the same id is kept once "
        "(default: a new id)",
    )
    _urls(wf_signal, transport=False)
    wf_signal.set_defaults(run=signal_workflow)
    wf_prune = workflows.add_parser(
        "prune",
        help="remove old finished workflows",
        description="Remove an orchestrator's workflows last updated longer ago than "
        "--older-than, in batches. Opens its store (never creating one), not its transport.",
    )
    wf_prune.add_argument("app", help="the Orchestrator instance, as module:attribute")
    wf_prune.add_argument(
        "--status",
        action="append",
        help="only this status, any case (repeatable or comma-separated; default: COMPLETED, "
        "COMPENSATED, FAILED; RUNNING, WAITING and COMPENSATING only when named)",
    )
    _prune_options(wf_prune, "workflows last updated")
    _urls(wf_prune, transport=False)
    wf_prune.set_defaults(run=prune_workflows)
    add_graph_commands(commands)
    add_trace_commands(commands, duration=_duration, count=_positive_int)
    add_ui_commands(commands)
    add_signing_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flowkit`` command.

    Errors are printed on one line to standard error, without a traceback.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when flowkit failed, 2 for a command line
        (or a target object) that cannot be carried out, 130 when interrupted,
        141 when the reader of the output went away (a closed pipe).
    """
    try:
        args = _parser().parse_args(argv)
        level, log_format = _logging_of(args)
    except UsageError as exc:
        return _usage(exc)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # find the application's modules, as `python -m` does
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.run
    try:
        with logging_set_up(level, log_format):
            return anyio.run(run, args)
    except KeyboardInterrupt:
        print("flowkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of the output went away (`flowkit workflows list | head`):
        # stop quietly, and keep Python from failing again on flushing stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UsageError, CommandFailed, FlowkitError, BaseExceptionGroup) as raised:
        error = _leaf(raised)
        if isinstance(error, UsageError):
            return _usage(error)
        if isinstance(error, CommandFailed):
            print(f"flowkit: {one_line(str(error))}", file=sys.stderr)
            return 1
        if isinstance(error, FlowkitError):
            print(f"flowkit: {type(error).__name__}: {one_line(str(error))}", file=sys.stderr)
            return 1
        raise


def _usage(exc: UsageError) -> int:
    print(f"flowkit: error: {one_line(str(exc))}", file=sys.stderr)
    return 2


def _leaf(exc: BaseException) -> BaseException:
    """The error inside task-group wrappers, when there is exactly one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main_exit() -> None:
    """The console script: :func:`main`, exiting with its status."""
    sys.exit(main())
