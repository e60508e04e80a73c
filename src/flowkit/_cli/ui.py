"""``flowkit ui``: the web dashboard over a store (the ``flowkit[ui]`` extra)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._errors import MissingDependency
from ..stores import from_url as store_from_url
from ..transports import from_url as transport_from_url
from .common import STORE_ENV, TRANSPORT_ENV, UsageError, entered, one_line, readable_store
from .signing import KEYS_ENV, env_signing

if TYPE_CHECKING:
    import argparse

__all__ = ["TOKEN_ENV", "add_commands", "serve_dashboard"]

TOKEN_ENV = "FLOWKIT_UI_TOKEN"


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``ui`` to the ``flowkit`` command."""
    ui = commands.add_parser(
        "ui",
        help="serve a web dashboard: workflows, flows, dead letters, graph",
        description="Serve a local web dashboard over a store: workflows with their "
        "timelines and repair buttons, flows from the trace, dead letters to replay or "
        "delete, and the flow graph with --module. Bound to 127.0.0.1 unless --host "
        f"names another address, which needs --token. With ${KEYS_ENV} set, its replays "
        "and retries are signed with those keys (see flowkit.Signing.from_env).",
    )
    ui.add_argument(
        "--store", metavar="URL", help=f"the store to show (sqlite:///path; default: ${STORE_ENV})"
    )
    ui.add_argument(
        "--transport",
        metavar="URL",
        help=f"the broker to replay dead letters through (default: ${TRANSPORT_ENV})",
    )
    ui.add_argument(
        "--module",
        metavar="MODULE[:ATTR]",
        help="the code to draw the graph from and retry workflows with, as flowkit graph takes it",
    )
    ui.add_argument("--host", default="127.0.0.1", help="the address to bind (127.0.0.1)")
    ui.add_argument("--port", type=_port, default=8080, help="the port to listen on (8080)")
    ui.add_argument(
        "--token",
        help=f"the token the page asks for (default: ${TOKEN_ENV}); required for a --host "
        "other than this machine",
    )
    ui.set_defaults(run=serve_dashboard)


def _port(text: str) -> int:
    import argparse

    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {port}")
    return port


async def serve_dashboard(args: argparse.Namespace) -> int:
    """``flowkit ui``: serve the dashboard until interrupted."""
    from ..ui._auth import is_loopback

    token: str | None = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and token is None:
        raise UsageError(
            f"--host {args.host} exposes the dashboard beyond this machine: give --token TOKEN "
            f"(or set {TOKEN_ENV}), or leave --host out to bind 127.0.0.1"
        )
    store_url = args.store or os.environ.get(STORE_ENV)
    if not store_url:
        raise UsageError(f"give the store to show: --store URL (or set {STORE_ENV})")
    transport_url = args.transport or os.environ.get(TRANSPORT_ENV) or None
    signing = env_signing()
    try:
        store = store_from_url(store_url)
        transport = None if transport_url is None else transport_from_url(transport_url)
        import uvicorn

        from ..ui import create_app

        app = create_app(
            store, transport=transport, module=args.module, token=token, signing=signing
        )
    except ModuleNotFoundError as exc:
        raise UsageError(
            str(MissingDependency(exc.name or "uvicorn", "ui", "flowkit ui"))
        ) from None
    except (ValueError, MissingDependency) as exc:
        raise UsageError(one_line(str(exc))) from None
    check = readable_store(store, "--store", "records")
    if check is not store:
        async with entered(check, check):
            pass  # the database exists and holds flowkit data: the dashboard may open it
    config = uvicorn.Config(
        app, host=args.host, port=args.port, access_log=False, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    print(f"flowkit ui: serving on http://{_url_host(args.host)}:{args.port}/", flush=True)
    await server.serve()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
