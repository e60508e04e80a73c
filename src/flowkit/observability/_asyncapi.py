"""An AsyncAPI 3.0 document of the flows a bus and its orchestrators declare."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic.json_schema import models_json_schema

from .._events import Command, Message, reply_type_of
from ..choreography._headers import (
    ACCEPTED,
    ATTEMPT,
    DEADLINE,
    FAILED,
    IDEMPOTENCY_KEY,
    IN_REPLY_TO,
    REPLAY_OF,
    REPLY_KIND,
    REPLY_TO,
    REQUEST_ID,
)
from ..choreography._replies import RemoteFailure
from ._graph import flow_graph

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from pydantic.json_schema import JsonSchemaMode

    from ..choreography import Choreography
    from ..orchestration import Orchestrator
    from ._graph import FlowGraph

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document"]

ASYNCAPI_VERSION = "3.0.0"
"""The version of the AsyncAPI specification :func:`asyncapi_document` follows."""

_SCHEMAS = "#/components/schemas/"
_MESSAGES = "#/components/messages/"
_ENVELOPE = "flowkit.Envelope"
_REPLY_CHANNEL = "flowkit.reply"
_ACCEPTED = "flowkit.Accepted"
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def asyncapi_document(
    *buses: Choreography,
    orchestrators: Iterable[type[Orchestrator[Any]] | Orchestrator[Any]] = (),
    title: str = "flowkit",
    version: str = "0.1.0",
    description: str | None = None,
    services: Collection[str] | None = None,
) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the messages the buses and orchestrators
    handle and send.

    * a **channel** per topic (an event or command type; its address is the
      type name), and one for the replies, whose address each caller names
      in the ``flowkit-reply-to`` header;
    * **operations**: ``receive`` for every handler and every event an
      orchestrator waits for (:class:`~flowkit.orchestration.WaitForEvent`,
      received in the consumer group ``<orchestrator>:wait.<event>.<field>``),
      ``send`` for every event a handler declares in ``emits=`` and every
      command an orchestrator sends; each is tagged with its service (or
      orchestrator), and a command's carries its reply;
    * **messages** whose payload is flowkit's JSON envelope (ids,
      correlation and causation, time, envelope headers) holding the
      model's JSON schema (pydantic's, in serialization mode, under
      ``components.schemas``), the correlation id located in the envelope,
      and the transport headers flowkit sets.

    Args:
        *buses: the buses whose handlers to describe.
        orchestrators: orchestrator classes (or instances) whose remote
            commands and waited events to describe.
        title: the document's ``info.title``.
        version: the document's ``info.version`` (the version of your API).
        description: the document's ``info.description``.
        services: describe only the operations of these services (and
            orchestrators, by name), with the channels and messages they use;
            all by default.

    Returns:
        The document, as JSON data (``json.dumps`` it).

    Raises:
        TypeError: as :func:`flow_graph` raises it.
        ValueError: if ``services`` names a service or orchestrator that
            has none of the operations, or ``title``/``version`` is empty.
        DefinitionError: if two different classes use one message type name.
    """
    if not title or not version:
        raise ValueError("asyncapi_document(): title and version must be non-empty")
    graph = flow_graph(*buses, orchestrators=orchestrators)
    operations = _operations(graph)
    if services is not None:
        wanted = set(services)
        known = {op.owner for op in operations}
        unknown = wanted - known
        if unknown:
            raise ValueError(
                f"no operations of {', '.join(sorted(unknown))}; "
                f"known services and orchestrators: {', '.join(sorted(known)) or 'none'}"
            )
        operations = [op for op in operations if op.owner in wanted]
    return _Document(graph, operations).build(title, version, description)


class _Operation:
    """One operation before it is written out."""

    __slots__ = ("action", "consumer", "key", "message", "owner", "title")

    def __init__(
        self,
        key: str,
        action: str,
        owner: str,
        message: type[Message],
        title: str,
        consumer: str | None = None,
    ) -> None:
        self.key = key
        self.action = action
        self.owner = owner
        self.message = message
        self.title = title
        self.consumer = consumer


def _operations(graph: FlowGraph) -> list[_Operation]:
    operations: list[_Operation] = []
    for handler in graph.handlers:
        cls = graph.messages[handler.message]
        operations.append(
            _Operation(
                f"{handler.service}.{handler.name}",
                "receive",
                handler.service,
                cls,
                f"{handler.consumer} handles {handler.message}",
                consumer=handler.consumer,
            )
        )
    emitted = sorted({(h.service, e) for h in graph.handlers for e in h.emits or ()})
    for service, event in emitted:
        operations.append(
            _Operation(
                f"{service}.publish.{event}",
                "send",
                service,
                graph.messages[event],
                f"{service} publishes {event}",
            )
        )
    for orchestrator in graph.orchestrators:
        for event, wait_handler in orchestrator.receives:
            consumer = f"{orchestrator.name}:{wait_handler}"
            operations.append(
                _Operation(
                    f"{orchestrator.name}.{wait_handler}",
                    "receive",
                    orchestrator.name,
                    graph.messages[event],
                    f"orchestrator {orchestrator.name} waits for {event} ({consumer})",
                    consumer=consumer,
                )
            )
        for command in orchestrator.sends:
            operations.append(
                _Operation(
                    f"{orchestrator.name}.request.{command}",
                    "send",
                    orchestrator.name,
                    graph.messages[command],
                    f"orchestrator {orchestrator.name} sends {command}",
                )
            )
    return operations


class _Document:
    """Builds the document: unique keys, messages, schemas."""

    def __init__(self, graph: FlowGraph, operations: list[_Operation]) -> None:
        self.graph = graph
        self.operations = operations
        self.keys: dict[tuple[str, str, bool], str] = {}
        self.taken: set[tuple[str, str]] = set()

    def key(self, section: str, name: str, *, own: bool = False) -> str:
        """A key of ``section`` (channels, messages, operations) for ``name``
        (one of flowkit's ``own`` if so, else a user's): the name in the
        characters AsyncAPI allows, unique within the section."""
        found = self.keys.get((section, name, own))
        if found is not None:
            return found
        base = _KEY_UNSAFE.sub("_", name) or "_"
        candidate, n = base, 1
        while (section, candidate) in self.taken:
            n += 1
            candidate = f"{base}_{n}"
        self.taken.add((section, candidate))
        self.keys[(section, name, own)] = candidate
        return candidate

    def build(self, title: str, version: str, description: str | None) -> dict[str, Any]:
        self.key("messages", _ACCEPTED, own=True)  # flowkit's names first: a user's gets _2
        self.key("channels", _REPLY_CHANNEL, own=True)
        topics = sorted({op.message.__flowkit_type__: op.message for op in self.operations}.items())
        replies: dict[str, type[Message]] = {}
        for _, cls in topics:
            if _is_command(cls):
                reply = reply_type_of(cls)
                replies[reply.__flowkit_type__] = reply
        if replies:
            replies[RemoteFailure.__flowkit_type__] = RemoteFailure
        models = [cls for _, cls in topics] + [replies[name] for name in sorted(replies)]
        schemas, refs = _schemas(models)

        messages: dict[str, Any] = {}
        for _, cls in topics:
            headers = _command_headers() if _is_command(cls) else _event_headers()
            messages[self.key("messages", cls.__flowkit_type__)] = _message(cls, headers, refs[cls])
        for name in sorted(replies):
            cls = replies[name]
            headers = _failure_headers() if cls is RemoteFailure else _reply_headers()
            messages[self.key("messages", name)] = _message(cls, headers, refs[cls])
        if replies:
            messages[self.key("messages", _ACCEPTED, own=True)] = _accepted_message()

        channels: dict[str, Any] = {}
        for name, cls in topics:
            key = self.key("messages", name)
            channels[self.key("channels", name)] = {
                "address": name,
                "title": name,
                "description": f"The topic of command {name}, answered by its one handler."
                if _is_command(cls)
                else f"The topic of event {name}: every handler reads it in its own "
                "consumer group (service:handler).",
                "messages": {key: {"$ref": _MESSAGES + key}},
            }
        if replies:
            reply_keys = [self.key("messages", n) for n in sorted(replies)]
            reply_keys.append(self.key("messages", _ACCEPTED, own=True))
            channels[self.key("channels", _REPLY_CHANNEL, own=True)] = {
                "address": None,
                "title": "replies",
                "description": "The reply topic of one caller (a bus), named by the "
                f"{REPLY_TO} header of its requests.",
                "messages": {k: {"$ref": _MESSAGES + k} for k in reply_keys},
            }

        operations: dict[str, Any] = {}
        for op in sorted(self.operations, key=lambda o: (o.owner, o.key)):
            operations[self.key("operations", op.key)] = self._operation(op)

        info: dict[str, Any] = {"title": title, "version": version}
        if description:
            info["description"] = description
        owners = sorted({op.owner for op in self.operations})
        if owners:
            info["tags"] = [{"name": owner} for owner in owners]
        return {
            "asyncapi": ASYNCAPI_VERSION,
            "info": info,
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": {"schemas": schemas, "messages": messages},
        }

    def _operation(self, op: _Operation) -> dict[str, Any]:
        name = op.message.__flowkit_type__
        channel = self.key("channels", name)
        message = self.key("messages", name)
        out: dict[str, Any] = {
            "action": op.action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
            "title": op.title,
            "tags": [{"name": op.owner}],
        }
        if op.consumer is not None:
            out["x-flowkit-consumer-group"] = op.consumer
        if _is_command(op.message):
            reply = reply_type_of(op.message)
            reply_channel = self.key("channels", _REPLY_CHANNEL, own=True)
            reply_messages = [
                self.key("messages", reply.__flowkit_type__),
                self.key("messages", RemoteFailure.__flowkit_type__),
                self.key("messages", _ACCEPTED, own=True),
            ]
            out["reply"] = {
                "address": {
                    "location": f"$message.header#/{REPLY_TO}",
                    "description": "The caller's reply topic.",
                },
                "channel": {"$ref": f"#/channels/{reply_channel}"},
                "messages": [
                    {"$ref": f"#/channels/{reply_channel}/messages/{key}"} for key in reply_messages
                ],
            }
        return out


def _is_command(cls: type[Message]) -> bool:
    return issubclass(cls, Command)


def _schemas(models: list[type[Message]]) -> tuple[dict[str, Any], dict[type[Message], str]]:
    """The JSON schemas of the models and of the envelope, by name; and the
    reference to each model's schema."""
    mode: JsonSchemaMode = "serialization"
    refs, top = models_json_schema([(m, mode) for m in models], ref_template=_SCHEMAS + "{model}")
    schemas: dict[str, Any] = dict(sorted(top.get("$defs", {}).items()))
    schemas[_ENVELOPE] = _envelope_schema()
    return schemas, {model: str(refs[(model, mode)]["$ref"]) for model in models}


def _message(cls: type[Message], headers: dict[str, Any], ref: str) -> dict[str, Any]:
    name = cls.__flowkit_type__
    out: dict[str, Any] = {
        "name": name,
        "title": cls.__name__,
        "contentType": "application/json",
        "headers": headers,
        "payload": {
            "allOf": [
                {"$ref": _SCHEMAS + _ENVELOPE},
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": name},
                        "version": {"const": cls.__flowkit_version__},
                        "payload": {"$ref": ref},
                    },
                },
            ]
        },
        "correlationId": {
            "description": "Shared by every message of one flow.",
            "location": "$message.payload#/correlation_id",
        },
    }
    doc = (cls.__doc__ or "").strip()
    if doc and cls.__doc__ is not _inherited_doc(cls):
        out["summary"] = doc.splitlines()[0]
    return out


def _inherited_doc(cls: type) -> str | None:
    for base in cls.__mro__[1:]:
        if base.__doc__:
            return base.__doc__
    return None


def _accepted_message() -> dict[str, Any]:
    return {
        "name": _ACCEPTED,
        "title": "Accepted",
        "summary": "The answering service took the request (an attempt is starting).",
        "contentType": "application/json",
        "headers": _headers(
            {
                IN_REPLY_TO: _string("The message id of the request."),
                REPLY_KIND: {"const": ACCEPTED},
                ATTEMPT: {
                    "type": "string",
                    "pattern": "^[1-9][0-9]*$",
                    "description": "Which attempt is starting.",
                },
            },
            required=[IN_REPLY_TO, REPLY_KIND, ATTEMPT],
        ),
        "payload": {"type": "object", "maxProperties": 0},
    }


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _headers(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": {"type": "string"},
    }
    if required:
        schema["required"] = required
    return schema


def _event_headers() -> dict[str, Any]:
    return _headers(
        {REPLAY_OF: _string("On a replayed dead letter: its id (sent to one consumer group).")},
        required=[],
    )


def _command_headers() -> dict[str, Any]:
    return _headers(
        {
            REPLY_TO: _string("The caller's reply topic."),
            REQUEST_ID: _string("The message id of the request, named by its reply."),
            DEADLINE: {
                "type": "string",
                "pattern": r"^[0-9]+(\.[0-9]+)?$",
                "description": "When the caller gives up, in Unix seconds: the request "
                "is not started, nor retried, after it.",
            },
        },
        required=[REPLY_TO, REQUEST_ID, DEADLINE],
    )


def _reply_headers() -> dict[str, Any]:
    return _headers(
        {IN_REPLY_TO: _string("The message id of the request it answers.")},
        required=[IN_REPLY_TO],
    )


def _failure_headers() -> dict[str, Any]:
    return _headers(
        {
            IN_REPLY_TO: _string("The message id of the request it answers."),
            REPLY_KIND: {"const": FAILED},
        },
        required=[IN_REPLY_TO, REPLY_KIND],
    )


def _envelope_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Envelope",
        "description": "How flowkit carries every message: the model's fields under "
        "'payload', with the ids that tie a flow together.",
        "required": ["id", "type", "version", "correlation_id", "occurred_at", "payload"],
        "properties": {
            "id": _string("The message id: unique and time-ordered (UUIDv7)."),
            "type": _string("The message's type name (the topic)."),
            "version": {
                "type": "integer",
                "minimum": 1,
                "description": "The message's schema version.",
            },
            "correlation_id": _string("Shared by every message of one flow."),
            "causation_id": {
                "type": ["string", "null"],
                "description": "The id of the message whose handler sent this one.",
            },
            "occurred_at": {
                "type": "string",
                "format": "date-time",
                "description": "When the message was made (UTC).",
            },
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "properties": {
                    IDEMPOTENCY_KEY: _string(
                        "Stable across redeliveries; an orchestrator's remote step sets it."
                    )
                },
                "description": "String metadata set by the sender.",
            },
            "payload": {"type": "object", "description": "The message's fields."},
        },
    }
