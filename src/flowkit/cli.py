"""The ``flowkit`` command: run services, look at dead letters and workflows.

Each command takes the application object it works on as ``module:attribute``,
the way ASGI servers take an app: a :class:`~flowkit.Choreography` for
``worker`` and ``dlq``, an :class:`~flowkit.Orchestrator` instance for
``workflows``. The object brings its own transport and store.

::

    flowkit worker myshop.services:bus --services logistics,seller
    flowkit dlq list myshop.services:bus --consumer logistics:assign_partner
    flowkit dlq replay myshop.services:bus --all --consumer logistics:assign_partner
    flowkit workflows list myshop.orders:orders --status FAILED
    flowkit workflows show myshop.orders:orders o-1
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._errors import FlowkitError
from .choreography import Choreography
from .orchestration import Orchestrator, WorkflowInfo

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

    from .stores import DeadLetter

__all__ = ["main", "main_exit"]

T = TypeVar("T")


class UsageError(Exception):
    """A command line that cannot be carried out; its message says why."""


def load_object(path: str, expected: type[T]) -> T:
    """Import ``module:attribute`` and check it is an ``expected``.

    Raises:
        UsageError: naming what could not be found or what it was instead.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"expected module:attribute, got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(obj, expected):
        raise UsageError(f"{path} is a {type(obj).__name__}, expected a {expected.__name__}")
    return obj


# -- worker ------------------------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> int:
    bus = load_object(args.app, Choreography)
    services = _split(args.services) if args.services else None
    try:
        running = bus.run(services=services)
    except FlowkitError as exc:
        raise UsageError(str(exc)) from exc
    names = ", ".join(sorted(services if services is not None else bus.services)) or "none"
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with running:
            print(f"flowkit worker running: services {names}", flush=True)
            async for signum in signals:
                print(f"received {signal.Signals(signum).name}; stopping", flush=True)
                break
    print("flowkit worker stopped", flush=True)
    return 0


# -- dead letters ------------------------------------------------------------------------


async def _dlq_list(args: argparse.Namespace) -> int:
    bus = load_object(args.app, Choreography)
    async with bus.run(services=[]):
        letters = await bus.dead_letters(consumer=args.consumer, topic=args.topic, limit=args.limit)
    if args.json:
        print(json.dumps([_letter_json(letter) for letter in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    for letter in letters:
        reason = letter.error.strip().splitlines()[-1] if letter.error.strip() else ""
        print(
            f"{letter.id}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  {letter.consumer}  "
            f"{letter.topic}  attempts={letter.attempts}  {letter.error_type}: {reason}"
        )
    return 0


async def _dlq_replay(args: argparse.Namespace) -> int:
    bus = load_object(args.app, Choreography)
    if args.all == bool(args.ids):
        raise UsageError("give dead letter ids, or --all (with --consumer / --topic), not both")
    async with bus.run(services=[]):
        if args.all:
            count = await bus.replay_all(consumer=args.consumer, topic=args.topic, limit=args.limit)
        else:
            for letter_id in args.ids:
                await bus.replay(letter_id)
            count = len(args.ids)
    print(f"replayed {count} dead letter(s)")
    return 0


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    data = asdict(letter)
    data["failed_at"] = letter.failed_at.isoformat()
    data["headers"] = dict(letter.headers)
    try:
        data["body"] = letter.body.decode()
    except UnicodeDecodeError:
        data["body"] = None
        data["body_hex"] = letter.body.hex()
    return data


# -- workflows ---------------------------------------------------------------------------


async def _workflows_list(args: argparse.Namespace) -> int:
    orchestrator = load_object(args.app, Orchestrator)
    async with orchestrator:
        infos = await orchestrator.list(status=args.status or None, limit=args.limit)
    if args.json:
        print(json.dumps([_info_json(info, history=False) for info in infos], indent=2))
        return 0
    if not infos:
        print("no workflows")
        return 0
    for info in infos:
        when = f"{info.updated_at:%Y-%m-%d %H:%M:%S}" if info.updated_at else "-"
        line = f"{info.id}  {info.status.value}  {when}"
        if info.reason:
            line += f"  {info.reason}"
        print(line)
    return 0


async def _workflows_show(args: argparse.Namespace) -> int:
    orchestrator = load_object(args.app, Orchestrator)
    async with orchestrator:
        info = await orchestrator.get(args.id)
    if args.json:
        print(json.dumps(_info_json(info, history=True), indent=2))
        return 0
    print(f"{info.name} {info.id}: {info.status.value}")
    if info.reason:
        print(f"reason: {info.reason}")
    if info.remaining:
        print(f"remaining: {', '.join(info.remaining)}")
    for name, step in info.steps.items():
        extra = f", compensation {step.compensation}" if step.compensation else ""
        print(f"  step {name}: {step.status} after {step.attempts} attempt(s){extra}")
    for t in info.history:
        parts = [f"{t.at:%H:%M:%S.%f}"[:-3], t.event]
        parts += [p for p in (t.step, f"attempt {t.attempt}" if t.attempt else None, t.error) if p]
        print("    " + "  ".join(parts))
    return 0


def _info_json(info: WorkflowInfo, *, history: bool) -> dict[str, Any]:
    data = {
        "id": info.id,
        "name": info.name,
        "status": info.status.value,
        "reason": info.reason,
        "remaining": list(info.remaining),
        "compensated": list(info.compensated),
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "steps": {name: _plain(step) for name, step in info.steps.items()},
    }
    if history:
        data["history"] = [_plain(t) for t in info.history]
    return _plain(data)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    """JSON-ready data from records, enums, datetimes and pydantic models."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items() if not k.startswith("_")}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


# -- command line ------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowkit", description="Run flowkit services; inspect dead letters and workflows."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run a bus's services until SIGINT or SIGTERM")
    worker.add_argument("app", help="the Choreography, as module:attribute")
    worker.add_argument("--services", help="comma-separated services to run (default: all)")
    worker.set_defaults(run=_worker)

    dlq = commands.add_parser("dlq", help="list or replay dead letters").add_subparsers(
        dest="dlq_command", required=True
    )
    dlq_list = dlq.add_parser("list", help="list dead letters, oldest first")
    dlq_replay = dlq.add_parser("replay", help="deliver dead letters again to their handler")
    for sub in (dlq_list, dlq_replay):
        sub.add_argument("app", help="the Choreography, as module:attribute")
        sub.add_argument("--consumer", help="only this handler's (service:name)")
        sub.add_argument("--topic", help="only this message type's")
        sub.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    dlq_list.add_argument("--json", action="store_true", help="print JSON")
    dlq_list.set_defaults(run=_dlq_list)
    dlq_replay.add_argument("ids", nargs="*", help="dead letter ids")
    dlq_replay.add_argument("--all", action="store_true", help="every matching dead letter")
    dlq_replay.set_defaults(run=_dlq_replay)

    workflows = commands.add_parser("workflows", help="list or show workflows").add_subparsers(
        dest="workflows_command", required=True
    )
    wf_list = workflows.add_parser("list", help="list workflows, oldest first")
    wf_list.add_argument("app", help="the Orchestrator instance, as module:attribute")
    wf_list.add_argument("--status", action="append", help="only this status (repeatable)")
    wf_list.add_argument("--limit", type=int, default=None, help="at most this many")
    wf_list.add_argument("--json", action="store_true", help="print JSON")
    wf_list.set_defaults(run=_workflows_list)
    wf_show = workflows.add_parser("show", help="one workflow's steps and history")
    wf_show.add_argument("app", help="the Orchestrator instance, as module:attribute")
    wf_show.add_argument("id", help="the workflow id")
    wf_show.add_argument("--json", action="store_true", help="print JSON")
    wf_show.set_defaults(run=_workflows_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flowkit`` command.

    Returns:
        The exit status: 0 on success, 1 when flowkit failed, 2 for a bad command line.
    """
    args = _parser().parse_args(argv)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # find the application's modules, as `python -m` does
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.run
    try:
        return anyio.run(run, args)
    except (UsageError, FlowkitError, BaseExceptionGroup) as raised:
        exc = _leaf(raised)
        if isinstance(exc, UsageError):
            print(f"flowkit: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, FlowkitError):
            print(f"flowkit: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        raise


def _leaf(exc: BaseException) -> BaseException:
    """The error inside task-group wrappers, when there is exactly one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main_exit() -> None:
    """The console script: :func:`main`, exiting with its status."""
    sys.exit(main())
