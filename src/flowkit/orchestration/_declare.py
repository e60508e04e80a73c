"""Declaring a saga: steps, parallel groups, remote steps, and their validation."""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union, get_args, get_origin

from pydantic import TypeAdapter
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

from .._errors import DefinitionError
from .._events import Command, Message, reply_type_of
from .._retry import Retry
from ._context import StepContext
from ._waits import Sleep, WaitForEvent, WaitForSignal, WaitSpec, wait_spec

__all__ = ["Parallel", "Remote", "Step"]

InputT = TypeVar("InputT")
ResultT = TypeVar("ResultT")
ReplyT = TypeVar("ReplyT", bound=Message)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _check_retry(value: object, what: str) -> Retry | None:
    if value is not None and not isinstance(value, Retry):
        raise DefinitionError(f"{what} must be a Retry, got {value!r}")
    return value


def _check_timeout(value: object, what: str, *, required: bool = False) -> float | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise DefinitionError(f"{what} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _check_name(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME.match(value):
        raise DefinitionError(
            f"{what} must be a name of letters, digits, '_', '.' or '-' "
            f"(starting with a letter or '_'), got {value!r}"
        )
    return value


class Step(Generic[InputT, ResultT]):
    """A local step: an async function called with the step's context and the
    workflow's input, whose result is recorded.

    ::

        async def reserve_stock(ctx: StepContext, order: OrderPlaced) -> Reservation: ...
        async def release_stock(ctx: StepContext, order: OrderPlaced) -> None: ...

        Step(reserve_stock, compensate=release_stock, retry=Retry(attempts=3), timeout=5)

    Args:
        action: ``async def action(ctx: StepContext, input: T) -> R``, fully
            annotated. ``R`` is a pydantic model or any type pydantic can turn
            into JSON; the result is recorded as JSON and read back as ``R``.
        compensate: what undoes the step: an async function with the same
            parameters (``ctx.result(action)`` gives the step's result), or a
            :class:`Remote` command. It must be idempotent: it runs for every
            step that may have acted, possibly more than once after a crash.
        retry: the step's retry policy (the orchestrator's ``step_retry``,
            one attempt by default, when omitted).
        timeout: seconds one attempt may take; a step that times out may have
            acted, so it is compensated when the workflow turns back.
        name: the step's name (the function's name by default); unique in the
            workflow, part of the idempotency key.
        pivot: the point of no return. Once this step has succeeded, the
            workflow only goes forward: later steps are retried until they
            succeed and are never compensated.
        compensation_retry: the compensation's retry policy (the orchestrator's
            ``compensation_retry`` when omitted).

    Raises:
        DefinitionError: if an argument has the wrong type. The functions
            themselves are checked when the orchestrator class is created.
    """

    __slots__ = (
        "action",
        "compensate",
        "compensation_retry",
        "name",
        "pivot",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        action: Callable[[StepContext, InputT], Awaitable[ResultT]],
        *,
        compensate: Callable[[StepContext, InputT], Awaitable[object]] | Remote[Any] | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        name: str | None = None,
        pivot: bool = False,
        compensation_retry: Retry | None = None,
    ) -> None:
        if not callable(action):
            raise DefinitionError(f"Step() takes an async function, got {action!r}")
        self.action = action
        self.compensate = compensate
        self.retry = _check_retry(retry, "Step(retry=...)")
        self.timeout = _check_timeout(timeout, "Step(timeout=...)")
        self.name = _check_name(name, "Step(name=...)")
        self.pivot = bool(pivot)
        self.compensation_retry = _check_retry(compensation_retry, "Step(compensation_retry=...)")

    def __repr__(self) -> str:
        return f"Step({getattr(self.action, '__qualname__', self.action)!r})"


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


class Remote(Generic[ReplyT]):
    """A remote step: a command sent to another service, whose typed reply is
    the step's result.

    The command goes over the orchestrator's bus (request/reply) with the
    step's idempotency key as ``flowkit-idempotency-key`` and the workflow id
    as correlation id::

        Remote(ReserveStock, lambda ctx, order: ReserveStock(order_id=order.order_id),
               compensate=Remote(ReleaseStock, lambda ctx, order: ReleaseStock(...)),
               timeout=5)

    A reply that does not come within ``timeout`` means the other service may
    have acted: the step counts as timed out and is compensated if the workflow
    turns back. A :class:`~flowkit.RemoteError` (the other service failed) is a
    failure like a local step's exception, retried unless it is marked not
    retryable.

    Args:
        command: the command class; it names its reply model
            (``class ReserveStock(Command[StockReserved])``).
        build: ``(ctx, input) -> command``, a plain function building the command.
            When omitted, the command is validated from the input's fields.
        compensate: what undoes the step: an async function
            ``(ctx, input) -> Any`` or another ``Remote``.
        timeout: seconds to wait for the reply.
        retry: the step's retry policy. On a ``Remote`` given as a
            compensation, the compensation's retry policy.
        name: the step's name (the command's class name in snake case by default).
        pivot: the point of no return (see :class:`Step`).
        compensation_retry: the compensation's retry policy.

    Raises:
        DefinitionError: if ``command`` is not a command class naming its reply
            type, or another argument has the wrong type.
    """

    __slots__ = (
        "build",
        "command",
        "compensate",
        "compensation_retry",
        "name",
        "pivot",
        "reply_type",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        command: type[Command[ReplyT]],
        build: Callable[[StepContext, Any], Command[ReplyT]] | None = None,
        *,
        compensate: Callable[[StepContext, Any], Awaitable[object]] | Remote[Any] | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
        name: str | None = None,
        pivot: bool = False,
        compensation_retry: Retry | None = None,
    ) -> None:
        if not (isinstance(command, type) and issubclass(command, Command)):
            raise DefinitionError(f"Remote() takes a Command class, got {command!r}")
        self.command = command
        self.reply_type = reply_type_of(command)
        if build is not None:
            if not callable(build):
                raise DefinitionError(f"Remote(build=...) must be a function, got {build!r}")
            if _is_async(build):
                raise DefinitionError(
                    f"Remote(build=...) must be a plain function returning the command, "
                    f"not an async one: {build!r}"
                )
            _positional_arity(build, "Remote(build=...)")
        self.build = build
        self.compensate = compensate
        self.timeout = _check_timeout(timeout, "Remote(timeout=...)", required=True)
        self.retry = _check_retry(retry, "Remote(retry=...)")
        self.name = _check_name(name, "Remote(name=...)")
        self.pivot = bool(pivot)
        self.compensation_retry = _check_retry(compensation_retry, "Remote(compensation_retry=...)")

    def __repr__(self) -> str:
        return f"Remote({self.command.__qualname__})"


class Parallel:
    """Steps that run at the same time.

    If one of them fails (after its retries), the others are cancelled; when
    the workflow turns back, the members that acted (succeeded, or were
    interrupted while running) are compensated together, at the same time.

    Args:
        *steps: two or more :class:`Step` or :class:`Remote` declarations
            (groups do not nest; a pivot cannot be in a group).

    Raises:
        DefinitionError: if a member is not a step, or there are fewer than two.
    """

    __slots__ = ("steps",)

    def __init__(self, *steps: Step[Any, Any] | Remote[Any]) -> None:
        if len(steps) < 2:
            raise DefinitionError("Parallel() takes two or more steps")
        for member in steps:
            if isinstance(member, Parallel):
                raise DefinitionError("Parallel groups do not nest")
            if isinstance(member, Sleep | WaitForEvent | WaitForSignal):
                raise DefinitionError(
                    f"{member!r} cannot be part of a Parallel group: a wait is a step of "
                    "its own in the steps list"
                )
            if not isinstance(member, Step | Remote):
                raise DefinitionError(f"Parallel() takes Step or Remote, got {member!r}")
            if member.pivot:
                raise DefinitionError("a pivot step cannot be part of a Parallel group")
        self.steps: tuple[Step[Any, Any] | Remote[Any], ...] = steps

    def __repr__(self) -> str:
        return f"Parallel{self.steps!r}"


# -- compiled form ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Action:
    """Something the engine calls: a local async function or a remote command."""

    fn: Callable[[StepContext, Any], Awaitable[Any]] | None
    command: type[Command[Any]] | None
    build: Callable[[StepContext, Any], Command[Any]] | None
    timeout: float | None
    dump: Callable[[Any], Any] | None
    load: Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True, eq=False)
class StepSpec:
    """One step as the engine runs it."""

    name: str
    stage: int
    action: Action
    compensation: Action | None
    retry: Retry
    compensation_retry: Retry
    pivot: bool
    declared: Step[Any, Any] | Remote[Any] | Sleep | WaitForEvent[Any] | WaitForSignal[Any]
    wait: WaitSpec | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """An orchestrator's compiled definition."""

    owner: str
    input_type: Any
    input_adapter: TypeAdapter[Any]
    input_dump: Callable[[Any], Any]
    stages: tuple[tuple[StepSpec, ...], ...]
    specs: tuple[StepSpec, ...]
    by_name: Mapping[str, StepSpec]
    refs: Mapping[int, str | None]
    pivot: str | None
    has_remote: bool
    waits: tuple[StepSpec, ...] = ()

    @property
    def signal_waits(self) -> dict[type[Message], list[StepSpec]]:
        """The signal waits, by signal class."""
        found: dict[type[Message], list[StepSpec]] = {}
        for spec in self.waits:
            wait = spec.wait
            if wait is not None and wait.kind == "signal" and wait.message_type is not None:
                found.setdefault(wait.message_type, []).append(spec)
        return found

    @property
    def event_waits(self) -> dict[str, StepSpec]:
        """One event wait per mailbox channel (the waits of one channel share it)."""
        return {
            spec.wait.channel: spec
            for spec in self.waits
            if spec.wait is not None and spec.wait.kind == "event" and spec.wait.channel
        }

    def name_of(self, ref: object) -> str:
        """The step name a reference (name, function or declaration) stands for."""
        if isinstance(ref, str):
            if ref not in self.by_name:
                raise KeyError(f"{self.owner} has no step named {ref!r}")
            return ref
        try:
            name = self.refs[id(ref)]
        except KeyError:
            raise KeyError(f"{ref!r} is not a step of {self.owner}") from None
        if name is None:
            raise KeyError(f"{ref!r} is used by several steps of {self.owner}; name the step")
        return name


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


def _positional_arity(fn: Callable[..., Any], what: str) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise DefinitionError(f"cannot read the signature of {what} {fn!r}: {exc}") from exc
    return _two_positional(sig, fn, what)


def _two_positional(
    sig: inspect.Signature, fn: Callable[..., Any], what: str
) -> list[inspect.Parameter]:
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    kw_required = [
        p
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if len(positional) < 2 or len(required) > 2 or kw_required:
        raise DefinitionError(
            f"{what} {_qualname(fn)} must take two positional parameters "
            f"(ctx: StepContext, input), got {sig}"
        )
    return positional[:2]


def _qualname(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def _is_ctx_annotation(ann: Any) -> bool:
    return ann is Any or (isinstance(ann, type) and issubclass(ann, StepContext))


def _accepts(annotation: Any, input_type: Any) -> bool:
    """Whether a parameter annotated ``annotation`` accepts the workflow's input."""
    if annotation is Any or annotation is object or annotation == input_type:
        return True
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return any(_accepts(arg, input_type) for arg in get_args(annotation))
    if isinstance(annotation, type) and isinstance(input_type, type):
        return issubclass(input_type, annotation)
    # generic aliases (dict[str, Any], ...): compare their origins
    return get_origin(annotation) is not None and get_origin(annotation) == get_origin(input_type)


class _Unresolved:
    """An annotation naming something not importable at run time."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _globals_of(fn: object) -> dict[str, Any]:
    for candidate in (fn, getattr(fn, "func", None), getattr(fn, "__call__", None)):  # noqa: B004
        if callable(candidate):
            namespace = getattr(inspect.unwrap(candidate), "__globals__", None)
            if isinstance(namespace, dict):
                return namespace
    return {}


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    """An annotation's value; string annotations are resolved like ``typing`` does."""
    if not isinstance(annotation, str):
        return annotation
    holder = types.SimpleNamespace(__annotations__={"value": annotation})
    try:
        return typing.get_type_hints(holder, globalns=namespace)["value"]
    except (NameError, AttributeError, SyntaxError, TypeError):
        return _Unresolved(annotation)


def _check_function(
    fn: object, *, what: str, input_type: Any
) -> tuple[Callable[[StepContext, Any], Awaitable[Any]], Any]:
    """Check a step or compensation function; return it and its return annotation.

    The parameters' annotations may name types imported only for type checkers
    (``if TYPE_CHECKING:``): the context's is then recognised by its name and
    the input's is not compared. The result type must be importable at run
    time: results are validated against it when they are read back.
    """
    if not callable(fn):
        raise DefinitionError(f"{what} must be an async function, got {fn!r}")
    if not _is_async(fn):
        raise DefinitionError(f"{what} {_qualname(fn)} must be an async function (async def)")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise DefinitionError(f"cannot read the signature of {what} {fn!r}: {exc}") from exc
    ctx_param, input_param = _two_positional(sig, fn, what)
    missing = [p.name for p in (ctx_param, input_param) if p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    if missing:
        raise DefinitionError(
            f"{what} {_qualname(fn)} needs type annotations (missing: {', '.join(missing)}): "
            "async def step(ctx: StepContext, input: InputType) -> ResultType"
        )
    namespace = _globals_of(fn)
    ctx_annotation = _resolve(ctx_param.annotation, namespace)
    if isinstance(ctx_annotation, _Unresolved):
        valid_ctx = ctx_annotation.text.rsplit(".", 1)[-1] == StepContext.__name__
    else:
        valid_ctx = _is_ctx_annotation(ctx_annotation)
    if not valid_ctx:
        raise DefinitionError(
            f"the first parameter of {what} {_qualname(fn)} must be annotated StepContext, "
            f"got {ctx_param.annotation!r}"
        )
    input_annotation = _resolve(input_param.annotation, namespace)
    if not isinstance(input_annotation, _Unresolved) and not _accepts(input_annotation, input_type):
        raise DefinitionError(
            f"{what} {_qualname(fn)} takes {input_annotation!r}, but the workflow's "
            f"input is {input_type!r}"
        )
    result = _resolve(sig.return_annotation, namespace)
    if isinstance(result, _Unresolved):
        raise DefinitionError(
            f"cannot resolve the result type {result.text!r} of {what} {_qualname(fn)}: "
            "results are read back as that type, so it must be importable at run time "
            "(not only under 'if TYPE_CHECKING:')"
        )
    return fn, result


def _codec(annotation: Any, what: str) -> tuple[Callable[[Any], Any] | None, Callable[[Any], Any]]:
    """JSON dump and typed load functions for a result annotation."""
    if annotation is None or annotation is type(None):
        return None, _none
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        raise DefinitionError(
            f"the result type {annotation!r} of {what} cannot be recorded as JSON: {exc}"
        ) from exc
    return json_dumper(adapter, annotation), adapter.validate_python


def json_dumper(adapter: TypeAdapter[Any], annotation: Any) -> Callable[[Any], Any]:
    """A function turning a value of ``annotation`` into JSON data.

    A value whose type does not match the annotation raises instead of being
    recorded as something that cannot be read back.
    """
    serializer = adapter.serializer
    if isinstance(annotation, type):
        exact = annotation

        def dump_exact(value: Any) -> Any:
            if type(value) is exact:
                return serializer.to_python(value, mode="json")
            return serializer.to_python(value, mode="json", warnings="error")

        return dump_exact

    def dump(value: Any) -> Any:
        return serializer.to_python(value, mode="json", warnings="error")

    return dump


def _none(value: Any) -> None:
    return None


def _remote_action(remote: Remote[Any], what: str) -> Action:
    dump, load = _codec(remote.reply_type, what)
    return Action(
        fn=None,
        command=remote.command,
        build=remote.build,
        timeout=remote.timeout,
        dump=dump,
        load=load,
    )


def _compensation(
    declared: Step[Any, Any] | Remote[Any], step_name: str, input_type: Any
) -> tuple[Action | None, Retry | None]:
    comp = declared.compensate
    if comp is None:
        return None, None
    what = f"the compensation of step {step_name!r}"
    if isinstance(comp, Remote):
        if comp.compensate is not None or comp.pivot or comp.name is not None:
            raise DefinitionError(f"{what} is a Remote: it takes no compensate=, pivot= or name=")
        if comp.retry is not None and declared.compensation_retry is not None:
            raise DefinitionError(
                f"{what}: give its retry policy once, as compensation_retry= of the step "
                "or retry= of the compensating Remote"
            )
        return _remote_action(comp, what), comp.retry
    if isinstance(comp, Step | Parallel):
        raise DefinitionError(f"{what} must be an async function or a Remote, got {comp!r}")
    fn, _ = _check_function(comp, what=what, input_type=input_type)
    timeout = declared.timeout if isinstance(declared, Step) else None
    return Action(fn=fn, command=None, build=None, timeout=timeout, dump=None, load=None), None


def compile_plan(
    owner: str,
    input_type: Any,
    steps: object,
    *,
    step_retry: Retry,
    compensation_retry: Retry,
) -> Plan:
    """Check an orchestrator's declaration and compile it.

    Raises:
        DefinitionError: if anything in the declaration is wrong.
    """
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence) or not steps:
        raise DefinitionError(
            f"{owner}.steps must be a non-empty list of Step, Remote or Parallel, got {steps!r}"
        )
    try:
        input_adapter: TypeAdapter[Any] = TypeAdapter(input_type)
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        raise DefinitionError(
            f"the input type {input_type!r} of {owner} cannot be recorded as JSON: {exc}"
        ) from exc

    stages: list[tuple[StepSpec, ...]] = []
    by_name: dict[str, StepSpec] = {}
    refs: dict[int, str | None] = {}
    pivot: str | None = None
    has_remote = False
    waits: list[StepSpec] = []

    def add_ref(obj: object, name: str) -> None:
        # the objects stay alive: the specs hold the declarations, which hold the functions
        key = id(obj)
        refs[key] = name if refs.get(key, name) == name else None

    for index, entry in enumerate(steps):
        if isinstance(entry, Sleep | WaitForEvent | WaitForSignal):
            spec = _compile_wait(entry, owner, input_type, len(stages), step_retry)
            if spec.name in by_name:
                raise DefinitionError(
                    f"{owner} declares two steps named {spec.name!r}; give one a name=..."
                )
            by_name[spec.name] = spec
            add_ref(entry, spec.name)
            waits.append(spec)
            stages.append((spec,))
            continue
        if isinstance(entry, Parallel):
            members: tuple[Step[Any, Any] | Remote[Any], ...] = entry.steps
        elif isinstance(entry, Step | Remote):
            members = (entry,)
        else:
            raise DefinitionError(
                f"{owner}.steps[{index}] must be a Step, Remote, Parallel, Sleep, "
                f"WaitForEvent or WaitForSignal, got {entry!r}"
            )
        compiled: list[StepSpec] = []
        for declared in members:
            if isinstance(declared, Step):
                default = getattr(declared.action, "__name__", None)
                name = declared.name or default
                if not name or name == "<lambda>":
                    raise DefinitionError(
                        f"{owner}.steps[{index}]: give the step a name: Step(..., name='...')"
                    )
                _check_name(name, f"the step name of {_qualname(declared.action)}")
                fn, ret = _check_function(
                    declared.action, what=f"step {name!r}", input_type=input_type
                )
                dump, load = _codec(ret, f"step {name!r}")
                action = Action(
                    fn=fn, command=None, build=None, timeout=declared.timeout, dump=dump, load=load
                )
                add_ref(declared.action, name)
            else:
                name = declared.name or _snake(declared.command.__name__)
                action = _remote_action(declared, f"step {name!r}")
                has_remote = True
            if name in by_name:
                raise DefinitionError(
                    f"{owner} declares two steps named {name!r}; give one a name=..."
                )
            compensation, comp_retry = _compensation(declared, name, input_type)
            if compensation is not None and compensation.command is not None:
                has_remote = True
            if pivot is not None and compensation is not None:
                raise DefinitionError(
                    f"step {name!r} of {owner} comes after the pivot {pivot!r} and is never "
                    "compensated: remove its compensate="
                )
            spec = StepSpec(
                name=name,
                stage=len(stages),
                action=action,
                compensation=compensation,
                retry=declared.retry or step_retry,
                compensation_retry=declared.compensation_retry or comp_retry or compensation_retry,
                pivot=declared.pivot,
                declared=declared,
            )
            by_name[name] = spec
            add_ref(declared, name)
            compiled.append(spec)
            if declared.pivot:
                if pivot is not None:
                    raise DefinitionError(
                        f"{owner} has two pivot steps ({pivot!r} and {name!r}); a saga has "
                        "one point of no return"
                    )
                pivot = name
        stages.append(tuple(compiled))

    specs = tuple(spec for stage in stages for spec in stage)
    return Plan(
        owner=owner,
        input_type=input_type,
        input_adapter=input_adapter,
        input_dump=json_dumper(input_adapter, input_type),
        stages=tuple(stages),
        specs=specs,
        by_name=by_name,
        refs=refs,
        pivot=pivot,
        has_remote=has_remote,
        waits=tuple(waits),
    )


def _compile_wait(
    wait: Sleep | WaitForEvent[Any] | WaitForSignal[Any],
    owner: str,
    input_type: Any,
    stage: int,
    step_retry: Retry,
) -> StepSpec:
    default, spec = wait_spec(wait, input_type, owner)
    name = _check_name(wait.name or default, f"the step name of {wait!r}")
    assert name is not None
    dump: Callable[[Any], Any] | None = None
    load: Callable[[Any], Any] = _none
    if spec.message_type is not None:
        dump, load = _codec(spec.message_type, f"step {name!r}")
    return StepSpec(
        name=name,
        stage=stage,
        action=Action(fn=None, command=None, build=None, timeout=None, dump=dump, load=load),
        compensation=None,
        retry=step_retry,
        compensation_retry=step_retry,
        pivot=False,
        declared=wait,
        wait=spec,
    )
