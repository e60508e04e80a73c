"""The dashboard's ASGI application: its routes, login, CSRF checks and the
store (and transport) it keeps open while it runs."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import anyio

from .._cli.workflows import cancel_note
from .._errors import FlowkitError, MissingDependency, NotFound, WorkflowNotFound
from .._signing import Signing

try:
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency(exc.name or "starlette", "ui", "The dashboard") from exc

from ._auth import COOKIE, CSRF_FIELD, CSRF_HEADER, Guard
from ._dead_letters import grouped_letters
from ._workflows import CANCELLABLE, STATUSES, count_workflows, list_page, workflow_page

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.requests import Request

    from .._cli.graph import Targets
    from ..choreography import Choreography
    from ..orchestration import Orchestrator, Outcome
    from ..stores import StateStore
    from ..transports import Transport

__all__ = ["create_app"]

logger = logging.getLogger("flowkit.ui")

_HERE = Path(__file__).parent
_FLOWS = 5
_TRACE_LIMIT = 2000


class _State:
    """What the routes share: the store, the bus that replays, the guard."""

    def __init__(
        self,
        store: StateStore,
        transport: Transport | None,
        targets: Targets | None,
        guard: Guard,
        signing: Signing | None = None,
    ) -> None:
        self.store = store
        self.transport = transport
        self.signing = signing
        self.targets = targets
        self.guard = guard
        self.bus: Choreography | None = None
        self.retry_wait = 30.0
        self.env = Environment(
            loader=FileSystemLoader(_HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["took"] = _took

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Response:
        page = self.env.get_template(template).render(
            request=request,
            csrf=self.guard.csrf,
            login=self.guard.required,
            has_graph=self.targets is not None,
            **context,
        )
        return HTMLResponse(page, status_code=status_code)


def create_app(
    store: StateStore,
    *,
    transport: Transport | None = None,
    module: str | None = None,
    token: str | None = None,
    retry_wait: float = 30.0,
    signing: Signing | None = None,
) -> Starlette:
    """The dashboard as an ASGI application, to serve with any ASGI server.

    The application opens ``store`` (and ``transport``) when it starts and
    closes them when it stops (its lifespan).

    Args:
        store: the store the services use (a shared one: SQLite or PostgreSQL).
        transport: the broker dead letters are replayed through; without it,
            replay is refused with a message saying so.
        module: ``module:attribute`` or a module name, as ``flowkit graph``
            takes it: its buses and orchestrators draw the graph, and its
            orchestrator classes retry workflows forward or backward.
        token: the token the login page asks for (at least 8 characters); None
            needs no login, for a dashboard bound to this machine only.
        retry_wait: the longest, in seconds, a retry button runs the workflow
            before answering; a workflow still running then is stopped here,
            for the orchestrator's own processes to take over once its lease
            runs out.
        signing: the keys of a deployment that signs its messages
            (:class:`~flowkit.Signing`): dead letters are replayed, and the
            remote steps of retried workflows sent, signed with them. Without
            it, a replay of a signed dead letter keeps its old signature and
            is refused by its consumer.

    Returns:
        The Starlette application.

    Raises:
        ValueError: for a token shorter than 8 characters, a ``retry_wait``
            that is not positive, or a module that cannot be loaded (the
            message says why).
        TypeError: if ``signing`` is not a :class:`~flowkit.Signing`.
    """
    if not retry_wait > 0:
        raise ValueError(f"retry_wait must be > 0 seconds, not {retry_wait!r}")
    if signing is not None and not isinstance(signing, Signing):
        raise TypeError(f"signing must be a flowkit.Signing or None, not {type(signing).__name__}")
    targets = _targets(module) if module is not None else None
    state = _State(store, transport, targets, Guard(token), signing)
    state.retry_wait = float(retry_wait)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(store)
            if transport is not None:
                from ..choreography import Choreography

                bus = Choreography(transport, store=store, signing=signing)
                await stack.enter_async_context(bus.run(services=[]))
                state.bus = bus
            yield
            state.bus = None

    def page(
        handler: Callable[[_State, Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not state.guard.check_session(request.cookies.get(COOKIE)):
                if request.method == "GET":
                    target = quote(request.url.path + _query(request), safe="")
                    return RedirectResponse(f"/login?next={target}", status_code=303)
                return JSONResponse({"ok": False, "message": "log in first"}, status_code=401)
            if request.method == "POST":
                form = await _form(request)
                given = request.headers.get(CSRF_HEADER) or next(
                    iter(form.get(CSRF_FIELD, [])), None
                )
                if not state.guard.check_csrf(given):
                    return JSONResponse(
                        {"ok": False, "message": "missing or wrong CSRF token: reload the page"},
                        status_code=403,
                    )
            return await handler(state, request)

        return endpoint

    async def login(request: Request) -> Response:
        return await _login(state, request)

    routes = [
        Route("/", _home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/workflows", page(_workflows)),
        Route("/workflows/{id:path}/action", page(_workflow_action), methods=["POST"]),
        Route("/workflows/{id:path}", page(_workflow)),
        Route("/flows", page(_flows)),
        Route("/dead-letters", page(_dead_letters)),
        Route("/dead-letters/replay", page(_replay), methods=["POST"]),
        Route("/dead-letters/delete", page(_delete), methods=["POST"]),
        Route("/graph", page(_graph)),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _targets(module: str) -> Targets:
    from .._cli.common import UsageError
    from .._cli.graph import load_targets

    try:
        return load_targets([module])
    except UsageError as exc:
        raise ValueError(str(exc)) from None


# -- helpers ---------------------------------------------------------------------------


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


async def _form(request: Request) -> dict[str, list[str]]:
    """The request's urlencoded form (no multipart: nothing here uploads files)."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        return {}
    body = await request.body()
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def _when(at: Any) -> str:
    return "-" if at is None else f"{at:%Y-%m-%d %H:%M:%S}Z"


def _took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _reply(ok: bool, message: str, status_code: int = 200) -> JSONResponse:
    return JSONResponse({"ok": ok, "message": message}, status_code=status_code)


# -- login -----------------------------------------------------------------------------


async def _home(request: Request) -> Response:
    return RedirectResponse("/workflows", status_code=303)


async def _login(state: _State, request: Request) -> Response:
    next_page = request.query_params.get("next", "/workflows")
    if not next_page.startswith("/") or next_page.startswith("//"):
        next_page = "/workflows"
    if request.method == "GET":
        return state.render(request, "login.html", next_page=next_page, wrong=False)
    form = await _form(request)
    if state.guard.check_token((form.get("token") or [""])[0]):
        response = RedirectResponse(next_page, status_code=303)
        response.set_cookie(COOKIE, state.guard.session(), httponly=True, samesite="strict")
        return response
    logger.warning("dashboard: a login with a wrong token was refused")
    return state.render(request, "login.html", 401, next_page=next_page, wrong=True)


# -- workflows -------------------------------------------------------------------------


async def _workflows(state: _State, request: Request) -> Response:
    status = request.query_params.get("status") or None
    name = request.query_params.get("name") or None
    after = request.query_params.get("after") or None
    if status is not None and status not in STATUSES:
        return state.render(
            request, "error.html", 400, message=f"unknown status {status!r}: use one of {STATUSES}"
        )
    counts = await count_workflows(state.store)
    try:
        rows, next_cursor = await list_page(state.store, status=status, name=name, after=after)
    except FlowkitError as exc:
        return state.render(request, "error.html", 400, message=str(exc))
    names = counts.names or sorted(o.name for o in _orchestrators(state))
    return state.render(
        request,
        "workflows.html",
        counts=counts,
        statuses=STATUSES,
        names=names,
        rows=rows,
        status=status,
        name=name,
        after=after,
        next_cursor=next_cursor,
    )


async def _workflow(state: _State, request: Request) -> Response:
    workflow_id = request.path_params["id"]
    try:
        shown = await workflow_page(state.store, workflow_id)
    except WorkflowNotFound:
        return state.render(request, "error.html", 404, message=f"no workflow {workflow_id!r}")
    retry_class = _orchestrator_class(state, shown.row.name)
    return state.render(
        request, "workflow.html", w=shown, can_retry=retry_class is not None, statuses=STATUSES
    )


async def _workflow_action(state: _State, request: Request) -> Response:
    workflow_id = request.path_params["id"]
    action = ((await _form(request)).get("action") or [""])[0]
    try:
        record = await state.store.load_workflow(workflow_id)
    except WorkflowNotFound:
        return _reply(False, f"no workflow {workflow_id!r}", 404)
    if action == "cancel":
        if record.status not in CANCELLABLE:
            return _reply(False, f"{workflow_id} is {record.status}: nothing to cancel", 409)
        await state.store.request_cancel(workflow_id)
        return _reply(True, cancel_note(workflow_id, record.status, record.owner, record.name))
    if action not in ("retry_forward", "retry_compensation"):
        return _reply(False, f"unknown action {action!r}", 400)
    cls = _orchestrator_class(state, record.name)
    if cls is None:
        return _reply(
            False,
            f"retrying needs the class of orchestrator {record.name!r}: start the dashboard "
            "with --module naming the module that declares it",
            409,
        )
    try:
        signed: dict[str, Any] = {} if state.signing is None else {"signing": state.signing}
        orchestrator = cls(state.store, transport=state.transport, recover=False, **signed)
    except FlowkitError as exc:
        return _reply(False, f"{exc} (start the dashboard with --transport)", 409)
    outcome: Outcome | None = None
    try:
        async with orchestrator:
            run: Callable[[str], Awaitable[Outcome]] = getattr(orchestrator, action)
            with anyio.move_on_after(state.retry_wait):
                outcome = await run(workflow_id)
    except FlowkitError as exc:
        return _reply(False, f"{type(exc).__name__}: {exc}", 409)
    if outcome is None:
        return _reply(
            True,
            f"{workflow_id} was still running after {state.retry_wait:g}s: it is left "
            "RUNNING, for the orchestrator's own processes to take over once its lease "
            "runs out",
        )
    return _reply(True, f"{workflow_id} is {outcome.status.value}")


def _orchestrators(state: _State) -> list[type[Orchestrator[Any]]]:
    return [] if state.targets is None else state.targets.orchestrators


def _orchestrator_class(state: _State, name: str) -> type[Orchestrator[Any]] | None:
    return next((cls for cls in _orchestrators(state) if cls.name == name), None)


# -- flows -----------------------------------------------------------------------------


async def _flows(state: _State, request: Request) -> Response:
    from ..observability._trace_view import load_flows, trace_json, trace_mermaid, trace_text
    from ..stores._trace import trace_of

    query = request.query_params.get("q", "").strip()
    flows: list[dict[str, Any]] = []
    problem = None
    if query:
        try:
            found = await load_flows(trace_of(state.store), query, limit=_TRACE_LIMIT, flows=_FLOWS)
        except FlowkitError as exc:
            problem = str(exc)
        else:
            flows = [
                {"json": trace_json(f), "text": trace_text(f), "mermaid": trace_mermaid(f)}
                for f in found
            ]
    return state.render(
        request, "flows.html", query=query, flows=flows, problem=problem, most=_FLOWS
    )


# -- dead letters ----------------------------------------------------------------------


async def _dead_letters(state: _State, request: Request) -> Response:
    groups, more = await grouped_letters(state.store)
    return state.render(
        request,
        "dead_letters.html",
        groups=groups,
        more=more,
        can_replay=state.transport is not None,
    )


async def _replay(state: _State, request: Request) -> Response:
    ids = (await _form(request)).get("id", [])
    bus = state.bus
    if bus is None:
        return _reply(
            False,
            "replaying needs the broker: start the dashboard with --transport URL",
            409,
        )
    replayed = 0
    for letter_id in dict.fromkeys(ids):
        try:
            await bus.replay(letter_id)
        except FlowkitError as exc:
            return _reply(
                False,
                f"dead letter {letter_id}: {type(exc).__name__}: {exc} "
                f"({replayed} of {len(ids)} replayed before it)",
                409 if isinstance(exc, NotFound) else 502,
            )
        replayed += 1
    return _reply(True, f"replayed {replayed} dead letter(s)")


async def _delete(state: _State, request: Request) -> Response:
    ids = (await _form(request)).get("id", [])
    deleted = 0
    for letter_id in dict.fromkeys(ids):
        try:
            await state.store.delete_dead_letter(letter_id)
        except NotFound:
            return _reply(False, f"no dead letter {letter_id} ({deleted} deleted before it)", 404)
        deleted += 1
    return _reply(True, f"deleted {deleted} dead letter(s)")


# -- graph -----------------------------------------------------------------------------


async def _graph(state: _State, request: Request) -> Response:
    if state.targets is None:
        return state.render(
            request,
            "error.html",
            404,
            message="no graph: start the dashboard with --module MODULE:bus to draw one",
        )
    from ..observability import flow_graph

    graph = flow_graph(*state.targets.buses, orchestrators=state.targets.orchestrators)
    return state.render(request, "graph.html", graph=graph)
