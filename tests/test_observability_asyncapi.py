"""The AsyncAPI 3.0 document, validated against the official JSON schema.

The schema comes from the npm package ``@asyncapi/specs`` (major version 6),
fetched once with ``npm pack`` into ``~/.cache/flowkit/asyncapi-specs-6/``.
Without npm the tests that need it are skipped, unless
``FLOWKIT_REQUIRE_BROKERS=1`` (as in CI): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from examples.ecommerce.choreographed import build_bus
from examples.ecommerce.orchestrated import order_saga
from examples.ecommerce.world import World
from flowkit import Choreography, Command, Event, Message
from flowkit.cli import main
from flowkit.observability import ASYNCAPI_VERSION, asyncapi_document
from flowkit.stores import MemoryStore
from flowkit.transports import InMemoryTransport

from . import graph_app
from .brokers import REQUIRE_BROKERS

SPECS_PACKAGE = "@asyncapi/specs@6"
CACHE = Path.home() / ".cache" / "flowkit" / "asyncapi-specs-6"


def _fetch_schema() -> Path:
    """The AsyncAPI 3.0.0 JSON schema, from the cache or fetched with npm."""
    target = CACHE / f"{ASYNCAPI_VERSION}.json"
    if target.is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        message = (
            f"needs npm to fetch {SPECS_PACKAGE} (the official AsyncAPI JSON schema); "
            f"install npm (Debian: apt-get install npm) or put the package's "
            f"schemas/{ASYNCAPI_VERSION}.json at {target}"
        )
        if os.environ.get(REQUIRE_BROKERS, "").strip() == "1":
            pytest.fail(f"{message} ({REQUIRE_BROKERS}=1)", pytrace=False)
        pytest.skip(message)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        packed = subprocess.run(
            [npm, "pack", SPECS_PACKAGE, "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if packed.returncode != 0:
            pytest.fail(f"npm pack {SPECS_PACKAGE} failed: {packed.stderr.strip()[-2000:]}")
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as archive:
            member = archive.extractfile(f"package/schemas/{ASYNCAPI_VERSION}.json")
            assert member is not None
            data = member.read()
        json.loads(data)  # a whole JSON document, before it goes in the cache
        partial = Path(tmp) / "schema.json"
        partial.write_bytes(data)
        partial.replace(target)  # atomic: a concurrent run sees all of it or nothing
    return target


@pytest.fixture(scope="session")
def asyncapi_schema() -> dict[str, Any]:
    """The official AsyncAPI 3.0.0 JSON schema (bundled: its definitions inside)."""
    schema: dict[str, Any] = json.loads(_fetch_schema().read_text())
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return schema


@pytest.fixture(scope="session")
def registry(asyncapi_schema: dict[str, Any]) -> Registry[Any]:
    """The schema and every definition it embeds, by their ``$id``."""
    resource = Resource.from_contents(asyncapi_schema, default_specification=DRAFT7)
    registry: Registry[Any] = Registry().with_resource(asyncapi_schema["$id"], resource)
    return registry.crawl()


@pytest.fixture(scope="session")
def validator(asyncapi_schema: dict[str, Any], registry: Registry[Any]) -> Draft7Validator:
    return Draft7Validator(asyncapi_schema, registry=registry)


def ecommerce_document(**options: Any) -> dict[str, Any]:
    world = World()
    bus, _ = build_bus(world, MemoryStore())
    return asyncapi_document(bus, orchestrators=[order_saga(world)], **options)


def errors_of(validator: Draft7Validator, document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
        for e in validator.iter_errors(document)
    ]


# -- the schema itself ------------------------------------------------------------------

_NOT_SCHEMAS = {"examples", "default", "const", "enum"}


def _refs(node: Any, base: str) -> list[tuple[str, str]]:
    """Every ``$ref`` of a schema, with the base URI it is resolved against."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if isinstance(node.get("$id"), str):
            base = urljoin(base, node["$id"])
        if isinstance(node.get("$ref"), str):
            found.append((base, node["$ref"]))
        for key, value in node.items():
            if key not in _NOT_SCHEMAS:
                found.extend(_refs(value, base))
    elif isinstance(node, list):
        for item in node:
            found.extend(_refs(item, base))
    return found


def test_every_ref_of_the_official_schema_resolves(
    asyncapi_schema: dict[str, Any], registry: Registry[Any]
) -> None:
    refs = _refs(asyncapi_schema, asyncapi_schema["$id"])
    assert len(refs) > 300
    resolver = registry.resolver()
    for base, ref in refs:
        resolver.lookup(urljoin(base, ref))  # raises if it does not resolve


def test_the_validator_rejects_a_wrong_document(validator: Draft7Validator) -> None:
    document = ecommerce_document()
    assert errors_of(validator, document) == []
    (first,) = [k for k in document["operations"] if k.startswith("logistics.")][:1]
    document["operations"][first]["action"] = "publish"  # AsyncAPI 2's word
    assert errors_of(validator, document)
    document = ecommerce_document()
    del document["info"]["version"]
    assert errors_of(validator, document)


# -- the document -----------------------------------------------------------------------


def _pointer(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _document_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _document_refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in _document_refs(item)]
    return []


def test_the_ecommerce_document_is_valid_asyncapi_3(validator: Draft7Validator) -> None:
    document = ecommerce_document(title="Shop", version="2.1.0", description="The shop.")
    assert errors_of(validator, document) == []
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "Shop"
    assert document["info"]["version"] == "2.1.0"
    # every reference points into the document
    refs = _document_refs(document)
    assert len(refs) > 50
    for ref in refs:
        assert _pointer(document, ref) is not None


def test_channels_operations_and_messages_of_the_ecommerce_example() -> None:
    document = ecommerce_document()
    channels, operations = document["channels"], document["operations"]
    messages = document["components"]["messages"]
    assert sorted(channels) == sorted(
        [
            "AssignPartner",
            "CancelShipment",
            "ConfirmationSent",
            "OrderPlaced",
            "PartnerAssigned",
            "PrepareShipment",
            "ReleasePartner",
            "SendConfirmation",
            "ShipmentPrepared",
            "flowkit.reply",
        ]
    )
    assert channels["OrderPlaced"]["address"] == "OrderPlaced"
    assert channels["flowkit.reply"]["address"] is None  # each caller names its own

    receive = operations["logistics.assign-partner"]
    assert receive["action"] == "receive"
    assert receive["channel"] == {"$ref": "#/channels/OrderPlaced"}
    assert receive["tags"] == [{"name": "logistics"}]
    assert receive["x-flowkit-consumer-group"] == "logistics:assign-partner"
    send = operations["logistics.publish.PartnerAssigned"]
    assert send["action"] == "send"
    assert send["messages"] == [{"$ref": "#/channels/PartnerAssigned/messages/PartnerAssigned"}]

    answer = operations["seller.prepare"]
    assert answer["action"] == "receive"
    assert answer["reply"]["address"]["location"] == "$message.header#/flowkit-reply-to"
    assert [m["$ref"].rsplit("/", 1)[1] for m in answer["reply"]["messages"]] == [
        "Done",
        "flowkit.RemoteError",
        "flowkit.Accepted",
    ]
    request = operations["place-order.request.CancelShipment"]
    assert request["action"] == "send" and request["tags"] == [{"name": "place-order"}]
    assert "reply" in request
    owners = {op["tags"][0]["name"] for op in operations.values()}
    assert owners == {"logistics", "notification", "order-history", "place-order", "seller"}

    placed = messages["OrderPlaced"]
    assert placed["correlationId"]["location"] == "$message.payload#/correlation_id"
    assert placed["summary"] == "An order was placed by a user (published by the order service)."
    envelope, fields = placed["payload"]["allOf"]
    assert envelope == {"$ref": "#/components/schemas/flowkit.Envelope"}
    assert fields["properties"]["type"] == {"const": "OrderPlaced"}
    model = _pointer(document, fields["properties"]["payload"]["$ref"])
    from examples.ecommerce.events import OrderPlaced

    assert model == OrderPlaced.model_json_schema(mode="serialization")
    command_headers = messages["PrepareShipment"]["headers"]
    assert set(command_headers["required"]) == {
        "flowkit-reply-to",
        "flowkit-request-id",
        "flowkit-deadline",
    }


def test_the_document_of_one_service_holds_what_it_uses(validator: Draft7Validator) -> None:
    document = ecommerce_document(services=["notification"])
    assert errors_of(validator, document) == []
    assert sorted(document["operations"]) == [
        "notification.confirm-order",
        "notification.publish.ConfirmationSent",
        "notification.send-confirmation",
    ]
    assert sorted(document["channels"]) == [
        "ConfirmationSent",
        "OrderPlaced",
        "SendConfirmation",
        "flowkit.reply",
    ]
    schemas = document["components"]["schemas"]
    assert "PartnerAssigned" not in schemas and "SendConfirmation" in schemas
    with pytest.raises(ValueError, match="no operations of nobody; known services"):
        ecommerce_document(services=["nobody"])
    with pytest.raises(ValueError, match="non-empty"):
        ecommerce_document(version="")


class Weird(Event, type_name="orders/weird event#1"):
    """Names with characters AsyncAPI keys do not allow."""

    n: int


class FlowkitAccepted(Event, type_name="flowkit.Accepted"):
    n: int


class Answer(Message):
    ok: bool


class Ask(Command[Answer], type_name="ask me"):
    q: str


def test_keys_are_made_valid_and_unique(validator: Draft7Validator) -> None:
    bus = Choreography(InMemoryTransport())

    @bus.on(Weird, service="svc", name="a handler/with<odd>name", emits=[FlowkitAccepted])
    async def weird(event: Weird) -> None:
        pass

    @bus.handles(Ask, service="svc", name="ask")
    async def ask(command: Ask) -> Answer:
        return Answer(ok=True)

    document = asyncapi_document(bus)
    assert errors_of(validator, document) == []
    channels = document["channels"]
    assert channels["orders_weird_event_1"]["address"] == "orders/weird event#1"
    assert channels["ask_me"]["address"] == "ask me"
    messages = document["components"]["messages"]
    assert messages["flowkit.Accepted"]["title"] == "Accepted"  # flowkit's own notice
    assert messages["flowkit.Accepted_2"]["name"] == "flowkit.Accepted"  # the user's event
    assert "svc.a_handler_with_odd_name" in document["operations"]


def test_a_bus_without_commands_has_no_reply_channel(validator: Draft7Validator) -> None:
    from . import graph_app_clean

    document = asyncapi_document(graph_app_clean.bus)
    assert errors_of(validator, document) == []
    assert sorted(document["channels"]) == ["Ping", "Pong"]
    assert "flowkit.Accepted" not in document["components"]["messages"]


def test_an_orchestrator_receives_the_events_it_waits_for(validator: Draft7Validator) -> None:
    from . import graph_app_waits

    document = asyncapi_document(graph_app_waits.bus, orchestrators=[graph_app_waits.Fulfil])
    assert errors_of(validator, document) == []
    operations = document["operations"]
    accepted = operations["fulfil.wait.SellerAccepted.order_id"]
    assert accepted["action"] == "receive"
    assert accepted["channel"] == {"$ref": "#/channels/SellerAccepted"}
    assert accepted["tags"] == [{"name": "fulfil"}]
    assert accepted["x-flowkit-consumer-group"] == "fulfil:wait.SellerAccepted.order_id"
    assert "reply" not in accepted
    assert operations["fulfil.wait.Paid.ref"]["channel"] == {"$ref": "#/channels/Paid"}
    # a signal goes to one workflow through the store, not through a channel
    assert "Approved" not in document["channels"]
    assert sorted(document["channels"]) == ["OrderPlaced", "Paid", "SellerAccepted"]

    alone = asyncapi_document(
        graph_app_waits.bus, orchestrators=[graph_app_waits.Fulfil], services=["fulfil"]
    )
    assert errors_of(validator, alone) == []
    assert sorted(alone["operations"]) == [
        "fulfil.wait.Paid.ref",
        "fulfil.wait.SellerAccepted.order_id",
    ]
    assert sorted(alone["channels"]) == ["Paid", "SellerAccepted"]


def test_flowkit_asyncapi_prints_the_document(
    capsys: pytest.CaptureFixture[str], validator: Draft7Validator
) -> None:
    status = main(["asyncapi", "tests.graph_app:bus", "--title", "Test shop", "--version", "3.0.1"])
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    document = json.loads(out)
    assert errors_of(validator, document) == []
    assert document == asyncapi_document(
        graph_app.bus, orchestrators=[graph_app.Checkout], title="Test shop", version="3.0.1"
    )
    assert main(["asyncapi", "tests.graph_app:bus", "--service", "mail,stock"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["info"]["title"] == "tests.graph_app:bus"
    assert {op["tags"][0]["name"] for op in document["operations"].values()} == {"mail", "stock"}
