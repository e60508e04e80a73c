"""Secure defaults, proven: no path from data to code (pickle, eval, exec, dynamic
imports, shell commands) in the library's source; no password in a repr, an error, a
traceback or a log record of a transport or store that fails to connect; and TLS
settings handed to every client library.

(The broker tests check more of the password and TLS with servers of their own:
``test_transport_brokers.py``, ``test_transport_*.py``, ``test_store_postgres.py``.)
"""

from __future__ import annotations

import ast
import logging
import ssl
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest

import flowkit

if TYPE_CHECKING:
    from collections.abc import Iterator

SRC = Path(flowkit.__file__).parent

# -- no pickle, eval or exec path ------------------------------------------------------

FORBIDDEN_MODULES = frozenset(
    {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
)
"""Modules that turn bytes into arbitrary objects (or code)."""

FORBIDDEN_BUILTINS = frozenset({"eval", "exec", "compile", "__import__"})
"""Builtins that run, compile or import what a string names."""

UNSAFE_YAML = frozenset({"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load"})
"""``yaml`` loaders that build arbitrary objects (``safe_load`` is fine)."""

SHELL_CALLS = frozenset({"os.system", "os.popen", "os.execl", "os.execlp", "os.execv", "os.execvp"})
"""Calls that run a command line through a shell, or replace the process."""


@dataclass(frozen=True)
class Allowed:
    """One use of a forbidden construct that is allowed, and why."""

    module: str
    """The file, relative to ``src/flowkit``."""
    function: str
    """The function it is in."""
    construct: str
    """What it uses (as :func:`findings` names it)."""
    why: str


ALLOWED = (
    Allowed(
        "_cli/common.py",
        "import_module",
        "importlib.import_module",
        "the documented CLI target loading: `flowkit worker app:bus` (and every command "
        "that takes a module or module:attribute) imports the application module the "
        "person running the command names on their own command line; no message, URL "
        "or stored data reaches it",
    ),
    Allowed(
        "transports/_url.py",
        "broker_class",
        "importlib.import_module",
        "imports a broker transport lazily; the module name comes from the fixed table "
        "BROKERS in the same file (matched by class name), never from a URL or a message",
    ),
)


@dataclass(frozen=True)
class Finding:
    module: str
    function: str
    construct: str
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.line} in {self.function}(): {self.construct}"


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` for a chain of names and attributes, else ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


class _Scanner(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.function = "<module>"
        self.findings: list[Finding] = []
        # Local names bound to what a forbidden construct is reached through:
        # `from importlib import import_module as im` makes `im` mean importlib.import_module.
        self.aliases: dict[str, str] = {}

    def _found(self, construct: str, node: ast.AST) -> None:
        line = getattr(node, "lineno", 0)
        self.findings.append(Finding(self.module, self.function, construct, line))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root in FORBIDDEN_MODULES:
                self._found(f"import {alias.name}", node)
            self.aliases[alias.asname or root] = alias.name if alias.asname else root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0 and module.split(".")[0] in FORBIDDEN_MODULES:
            self._found(f"from {module} import ...", node)
        for alias in node.names:
            if node.level == 0:
                self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
            if module == "builtins" and alias.name in FORBIDDEN_BUILTINS:
                self._found(f"from builtins import {alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = f"{self.aliases[head]}.{rest}" if head in self.aliases and rest else name
        if head in self.aliases and not rest:
            full = self.aliases[head]
        if isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_BUILTINS:
            self._found(node.func.id, node)
        elif full in {f"builtins.{b}" for b in FORBIDDEN_BUILTINS}:
            self._found(full, node)
        if full == "importlib.import_module" or full.startswith("importlib.__import__"):
            self._found("importlib.import_module", node)
        if full.startswith("yaml.") and full.split(".")[-1] in UNSAFE_YAML:
            self._found(full, node)
        if full in SHELL_CALLS:
            self._found(full, node)
        if full.startswith(("subprocess.", "asyncio.create_subprocess_shell")):
            if full == "asyncio.create_subprocess_shell":
                self._found(full, node)
            for keyword in node.keywords:
                shell = keyword.value
                if keyword.arg == "shell" and not (
                    isinstance(shell, ast.Constant) and shell.value is False
                ):
                    self._found(f"{full}(shell=...)", node)
        self.generic_visit(node)


def findings(source: str, module: str) -> list[Finding]:
    """Every use of a forbidden construct in ``source``."""
    scanner = _Scanner(module)
    scanner.visit(ast.parse(source))
    return scanner.findings


def _modules() -> Iterator[tuple[str, str]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), path.read_text(encoding="utf-8")


def test_the_scan_catches_every_forbidden_construct() -> None:
    bad = """
import pickle
import marshal as m
from shelve import open as shelf
from importlib import import_module as im
import importlib, subprocess, yaml, os
import asyncio

def f(data):
    eval(data)
    exec(data)
    compile(data, "x", "exec")
    __import__(data)
    importlib.import_module(data)
    im(data)
    yaml.load(data)
    yaml.unsafe_load(data)
    subprocess.run(data, shell=True)
    subprocess.Popen(data, shell=flag)
    os.system(data)
    asyncio.create_subprocess_shell(data)
"""
    found = {f.construct for f in findings(bad, "bad.py")}
    assert found == {
        "import pickle",
        "import marshal",
        "from shelve import ...",
        "eval",
        "exec",
        "compile",
        "__import__",
        "importlib.import_module",
        "yaml.load",
        "yaml.unsafe_load",
        "subprocess.run(shell=...)",
        "subprocess.Popen(shell=...)",
        "os.system",
        "asyncio.create_subprocess_shell",
    }
    fine = """
import json, re, subprocess, yaml
def g(data):
    json.loads(data)
    re.compile(data)
    yaml.safe_load(data)
    subprocess.run(["ls"], shell=False)
    subprocess.run(["ls"])
"""
    assert findings(fine, "fine.py") == []


def test_no_pickle_eval_exec_or_dynamic_import_in_the_library() -> None:
    allowed = {(a.module, a.function, a.construct) for a in ALLOWED}
    scanned = 0
    used: set[tuple[str, str, str]] = set()
    unexpected: list[str] = []
    for module, source in _modules():
        scanned += 1
        for finding in findings(source, module):
            key = (finding.module, finding.function, finding.construct)
            if key in allowed:
                used.add(key)
            else:
                unexpected.append(str(finding))
    assert scanned > 100, f"only {scanned} modules under {SRC}"
    assert not unexpected, "forbidden constructs (or add to ALLOWED, saying why):\n" + "\n".join(
        unexpected
    )
    # Every exception is still needed: an entry left over would allow a later use unseen.
    assert used == allowed, f"ALLOWED entries no longer used: {allowed - used}"


# -- secrets never in logs, reprs, errors or tracebacks ----------------------------------

SECRET = "s3cret-pass"

# Each transport and store from a URL that carries the password, on a port where
# nothing listens, so that connecting fails. (Kafka takes SASL credentials from the
# URL's user info, or from kafka_options; a ``sasl_password`` query option is refused,
# see below.)
UNREACHABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "redis": (f"redis://:{SECRET}@127.0.0.1:1/0", {"connect_timeout": 1}),
    "rediss": (f"rediss://user:{SECRET}@127.0.0.1:1/0?ssl_cert_reqs=none", {"connect_timeout": 1}),
    "rabbitmq": (f"amqp://u:{SECRET}@127.0.0.1:1/", {"connect_timeout": 1}),
    "nats": (f"nats://u:{SECRET}@127.0.0.1:1", {"connect_timeout": 1}),
    "nats-token": (f"nats://{SECRET}@127.0.0.1:1", {"connect_timeout": 1}),
    "kafka": (f"kafka://u:{SECRET}@127.0.0.1:1", {"connect_timeout": 1}),
    "kafka-options": (
        "kafka://127.0.0.1:1",
        {
            "connect_timeout": 1,
            "kafka_options": {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "u",
                "sasl_plain_password": SECRET,
            },
        },
    ),
    "postgresql": (f"postgresql://u:{SECRET}@127.0.0.1:1/db?schema=s", {"timeout": 1}),
    "postgresql-query": (f"postgresql://u@127.0.0.1:1/db?password={SECRET}", {"timeout": 1}),
}


def _everything_shown(error: BaseException) -> list[str]:
    """What an error shows: its text and repr, and its whole traceback as formatted,
    with the errors it was raised from."""
    texts = ["".join(traceback.format_exception(error))]
    chain: BaseException | None = error
    while chain is not None:
        texts += [str(chain), repr(chain), *(str(arg) for arg in chain.args)]
        chain = chain.__cause__ or chain.__context__
    return texts


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [caplog.text] + [
        text
        for record in caplog.records
        for text in (formatter.format(record), str(record.__dict__))
    ]


def _open(name: str) -> Any:
    from flowkit.stores import from_url as store_from_url
    from flowkit.transports import from_url as transport_from_url

    url, options = UNREACHABLE[name]
    if name.startswith("postgres"):
        return store_from_url(url, **options)
    return transport_from_url(url, **options)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("name", sorted(UNREACHABLE))
@pytest.mark.anyio
async def test_a_password_shows_nowhere_when_connecting_fails(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flowkit import StoreError, TransportError

    caplog.set_level(logging.DEBUG)  # every logger, the client libraries' included
    opened = _open(name)
    with pytest.raises((TransportError, StoreError)) as failed:
        async with opened:
            pass
    assert "127.0.0.1:1" in str(failed.value)
    texts = [repr(opened), str(opened), *_everything_shown(failed.value), *_logged(caplog)]
    leaks = [text for text in texts if SECRET in text]
    assert not leaks, leaks[0]


@pytest.mark.parametrize(
    "url",
    [
        f"kafka://127.0.0.1:1?sasl_password={SECRET}",
        f"kafka://u:{SECRET}@127.0.0.1:1?partitions=many",
        f"redis://:{SECRET}@127.0.0.1:1/0?prefetch=lots",
        f"amqp://u:{SECRET}@127.0.0.1:1/?prefetch=lots",
        f"nats://u:{SECRET}@127.0.0.1:1?ack_wait=soon",
        f"nats://u:{SECRET}@127.0.0.1:1?password={SECRET}",
        f"http://u:{SECRET}@127.0.0.1:1/",
    ],
)
def test_a_url_refused_does_not_show_its_password(url: str) -> None:
    from flowkit.transports import from_url

    with pytest.raises(ValueError) as refused:
        from_url(url)
    leaks = [text for text in _everything_shown(refused.value) if SECRET in text]
    assert not leaks, leaks[0]


# -- TLS settings reach every client library ----------------------------------------------


class _Stop(OSError):
    """Raised by a stand-in client instead of connecting."""


@pytest.fixture
def cert(tmp_path: Path) -> Path:
    """A CA certificate file (self-signed), for clients to load."""
    from ._transport_util import certificate

    return certificate(tmp_path)[0]


def _has_ca(context: object, cert: Path) -> bool:
    """Whether ``context`` is an SSL context that trusts ``cert`` and checks the server."""
    if not isinstance(context, ssl.SSLContext):
        return False
    loaded = ssl.create_default_context(cafile=str(cert)).get_ca_certs()
    return context.verify_mode == ssl.CERT_REQUIRED and all(
        ca in context.get_ca_certs() for ca in loaded
    )


async def _fails_to_open(opened: Any) -> None:
    from flowkit import StoreError, TransportError

    with pytest.raises((TransportError, StoreError)) as failed:
        async with opened:
            pass
    assert isinstance(failed.value.__cause__, _Stop) or "_Stop" in str(failed.value)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_redis_tls_reaches_redis_py(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    from redis.asyncio import Redis
    from redis.asyncio.connection import SSLConnection

    from flowkit.transports import RedisTransport
    from flowkit.transports._redis import _client

    made: list[Redis] = []

    class StandIn:
        @classmethod
        def from_url(cls, url: str, **kwargs: Any) -> Any:
            made.append(Redis.from_url(url, **kwargs))  # built, never connected

            class Client:
                def set_response_callback(self, *args: Any) -> None: ...

                async def info(self, *args: Any) -> Any:
                    raise _Stop("not connecting")

                async def aclose(self) -> None: ...

            return Client()

    monkeypatch.setattr(_client, "Redis", StandIn)
    in_url = RedisTransport(f"rediss://:{SECRET}@cache:6380/0?ssl_ca_certs={cert}")
    given = RedisTransport(
        "rediss://cache:6380/0",
        redis_options={"ssl_ca_certs": str(cert), "ssl_certfile": str(cert)},
    )
    for transport in (in_url, given):
        await _fails_to_open(transport)
    for client in made:
        pool = client.connection_pool
        assert pool.connection_class is SSLConnection
        assert pool.connection_kwargs["ssl_ca_certs"] == str(cert)
        assert pool.connection_kwargs.get("ssl_cert_reqs", "required") == "required"
        await client.aclose()
    assert made[1].connection_pool.connection_kwargs["ssl_certfile"] == str(cert)
    assert len(made) == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_rabbitmq_tls_reaches_aiormq(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    import aiormq

    from flowkit.transports import RabbitMQTransport

    calls: list[tuple[str, dict[str, Any]]] = []

    async def connect(url: str, **kwargs: Any) -> Any:
        calls.append((str(url), kwargs))
        raise _Stop("not connecting")

    monkeypatch.setattr(aiormq, "connect", connect)
    context = ssl.create_default_context(cafile=str(cert))
    await _fails_to_open(RabbitMQTransport(f"amqps://u:{SECRET}@mq:5671/?cafile={cert}"))
    await _fails_to_open(RabbitMQTransport("amqps://u:p@mq:5671/", ssl_context=context))
    (url_only, url_kwargs), (with_context, context_kwargs) = calls
    # aiormq reads amqps:// and cafile= from the URL itself.
    assert url_only.startswith("amqps://") and f"cafile={cert}" in url_only
    assert "context" not in url_kwargs
    assert with_context.startswith("amqps://")
    assert context_kwargs["context"] is context


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_nats_tls_reaches_nats_py(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    from flowkit.transports import NATSTransport
    from flowkit.transports._nats import _client

    calls: list[dict[str, Any]] = []

    class StandIn:
        async def connect(self, **kwargs: Any) -> None:
            calls.append(kwargs)
            raise _Stop("not connecting")

        async def close(self) -> None: ...

    monkeypatch.setattr(_client, "Client", StandIn)
    context = ssl.create_default_context(cafile=str(cert))
    await _fails_to_open(NATSTransport(f"tls://u:{SECRET}@nats:4222"))
    await _fails_to_open(
        NATSTransport("tls://nats:4222", nats_options={"tls": context, "tls_hostname": "nats"})
    )
    plain, given = calls
    # nats-py makes a default TLS context for a tls:// server itself.
    assert plain["servers"] == [f"tls://u:{SECRET}@nats:4222"]
    assert given["servers"] == ["tls://nats:4222"]
    assert given["tls"] is context and given["tls_hostname"] == "nats"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_kafka_tls_reaches_aiokafka(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    from flowkit.transports import KafkaTransport
    from flowkit.transports._kafka import _transport

    calls: list[tuple[str, dict[str, Any]]] = []

    class StandIn:
        def __init__(self, **kwargs: Any) -> None:
            calls.append((type(self).__name__, kwargs))

        async def start(self) -> None:
            raise _Stop("not connecting")

        async def stop(self) -> None: ...

        async def close(self) -> None: ...

    class Producer(StandIn): ...

    class Admin(StandIn): ...

    monkeypatch.setattr(_transport, "AIOKafkaProducer", Producer)
    monkeypatch.setattr(_transport, "AIOKafkaAdminClient", Admin)
    urls = {
        "SSL": f"kafkas://b1:9093?ssl_cafile={cert}",
        "SASL_SSL": f"kafkas://u:{SECRET}@b1:9093?ssl_cafile={cert}&sasl_mechanism=SCRAM-SHA-512",
        "SSL ": f"kafka://b1:9093?security_protocol=SSL&ssl_cafile={cert}",
    }
    for protocol, url in urls.items():
        calls.clear()
        await _fails_to_open(KafkaTransport(url))
        assert {name for name, _ in calls} == {"Producer", "Admin"}
        for _, kwargs in calls:
            assert kwargs["security_protocol"] == protocol.strip()
            assert _has_ca(kwargs["ssl_context"], cert)
            if protocol == "SASL_SSL":
                assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
                assert kwargs["sasl_plain_password"] == SECRET
    # A context given outright replaces the one the URL would make.
    context = ssl.create_default_context(cafile=str(cert))
    calls.clear()
    await _fails_to_open(KafkaTransport("kafkas://b1:9093", kafka_options={"ssl_context": context}))
    assert all(kwargs["ssl_context"] is context for _, kwargs in calls)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_postgres_tls_reaches_asyncpg(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    from flowkit.stores import PostgresStore
    from flowkit.stores import from_url as store_from_url

    calls: list[tuple[str, dict[str, Any]]] = []

    async def create_pool(dsn: str, **kwargs: Any) -> Any:
        calls.append((dsn, kwargs))
        raise _Stop("not connecting")

    monkeypatch.setattr(asyncpg, "create_pool", create_pool)
    context = ssl.create_default_context(cafile=str(cert))
    await _fails_to_open(
        store_from_url(
            f"postgresql://u:{SECRET}@db/app?schema=s&sslmode=verify-full&sslrootcert={cert}"
        )
    )
    await _fails_to_open(PostgresStore("postgresql://u@db/app", ssl=context))
    (from_url, _), (given, kwargs) = calls
    # asyncpg reads sslmode and sslrootcert from the DSN's query itself.
    query = parse_qs(urlsplit(from_url).query)
    assert query == {"sslmode": ["verify-full"], "sslrootcert": [str(cert)]}
    assert kwargs["ssl"] is context and given == "postgresql://u@db/app"


def test_the_suite_wide_watch_catches_a_secret_in_flowkit_s_logs() -> None:
    """tests/conftest.py watches every test's flowkit log records for a secret."""
    from .conftest import _SecretWatch

    watch = _SecretWatch()
    for name, message in (
        ("flowkit.transport.redis", "cannot reach redis://:hunter2@cache:6379/0"),
        ("flowkit.stores", "cannot reach postgresql://app:***@db/app"),  # masked: fine
        ("flowkit.service.billing", "redis://:pw@cache"),  # a service's own logger: the user's
        ("flowkit.bus", "relay on kafka://broker:9092?sasl_password=hunter2"),
    ):
        watch.emit(logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None))
    assert [line.split(" ")[0] for line in watch.found] == [
        "flowkit.transport.redis",
        "flowkit.bus",
    ]
