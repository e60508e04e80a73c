"""What every broker transport does alike, on each broker's real server: the
conformance suite, its capabilities, errors that never show a password, and its use
as a context manager.

What is one broker's own (its layout on the server, its redelivery, servers of a
test's own that are restarted) is in ``test_transport_<broker>.py``.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import pytest

from flowkit import MissingDependency
from flowkit._errors import TransportClosed, TransportError
from flowkit.testing._transport_suite import TRANSPORT_CHECKS
from flowkit.transports import Capabilities, from_url

from ._transport_util import PASSWORD, logged, receive, shown, unique_name
from .brokers import each_broker, on_brokers
from .brokers import make as make
from .brokers import prefix as prefix
from .brokers import url as url

if TYPE_CHECKING:
    from collections.abc import Callable

    from flowkit.transports import Transport

    from .brokers import Broker

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("name", sorted(TRANSPORT_CHECKS))
@on_brokers()
async def test_conformance(name: str, make: Callable[..., Transport]) -> None:
    await TRANSPORT_CHECKS[name](make, delay_tolerance=0.5)


_CAPABILITIES = {
    "redis": Capabilities(
        crosses_processes=True,
        native_delay=False,
        ordered_by_key=False,
        max_message_size=512 * 1024 * 1024,
    ),
    "rabbitmq": Capabilities(
        crosses_processes=True,
        native_delay=False,
        ordered_by_key=False,
        max_message_size=128 * 1024 * 1024,
    ),
    # The server's max_payload (1 MB), less room for the headers.
    "nats": Capabilities(
        crosses_processes=True,
        native_delay=True,
        ordered_by_key=False,
        max_message_size=1024 * 1024 - 8 * 1024,
    ),
    "kafka": Capabilities(
        crosses_processes=True,
        native_delay=False,
        ordered_by_key=False,
        max_message_size=1_000_000,
    ),
}


@on_brokers()
async def test_capabilities(broker: Broker, make: Callable[..., Transport]) -> None:
    transport = make()
    assert transport.capabilities == _CAPABILITIES[broker.name]
    async with transport:
        assert transport.capabilities == _CAPABILITIES[broker.name]


# -- errors that never show the password --------------------------------------------


@on_brokers()
async def test_an_unreachable_server_fails_without_the_password(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    unreachable = broker.transport(
        f"{broker.scheme}://user:{PASSWORD}@127.0.0.1:1", connect_timeout=1
    )
    with pytest.raises(TransportError) as missing:
        await unreachable.__aenter__()
    assert "127.0.0.1:1" in str(missing.value)
    texts = [*shown(missing.value), repr(unreachable), *logged(caplog)]
    assert all(PASSWORD not in text for text in texts)


@pytest.mark.parametrize("broker", each_broker())
def test_a_url_of_another_scheme_is_refused_without_the_password(broker: Broker) -> None:
    with pytest.raises(ValueError) as bad_scheme:
        broker.transport(f"http://user:{PASSWORD}@host/")
    assert all(PASSWORD not in text for text in shown(bad_scheme.value))


@on_brokers(refused=True)
async def test_trio_is_refused_clearly(broker: Broker) -> None:
    transport = broker.transport(f"{broker.scheme}://user:{PASSWORD}@127.0.0.1:1")
    with pytest.raises(TransportError, match="asyncio only") as refused:
        async with transport:
            pass
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize("broker", each_broker())
def test_a_missing_client_names_the_extra(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the client were not installed, and the transport never imported.
    client = broker.clients[0]
    for name in [n for n in sys.modules if n == client or n.startswith(f"{client}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, client, None)
    package = f"flowkit.transports._{broker.name}"
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependency, match=rf"pip install 'flowkit\[{broker.name}\]'"):
        from_url(f"{broker.scheme}://localhost")


# -- use ----------------------------------------------------------------------------


@on_brokers("redis", "nats")
async def test_publish_to_nobody_leaves_nothing(
    broker: Broker, make: Callable[..., Transport], url: str, prefix: str
) -> None:
    topic = unique_name("topic")
    async with make() as transport:
        await transport.publish(topic, b"nobody listens")
        await transport.publish(topic, b"to a group never subscribed", group="nobody")
    assert await broker.names(url, prefix) == []


@on_brokers()
async def test_entered_several_times(broker: Broker, make: Callable[..., Transport]) -> None:
    transport = make()
    topic = unique_name("t")
    async with transport:
        async with transport:
            subscription = await transport.subscribe(topic, "g")
        await transport.publish(topic, b"still open")
        assert (await receive(subscription, broker.wait)).body == b"still open"
    with pytest.raises(TransportClosed):
        await transport.publish(topic, b"closed")
    with pytest.raises(TransportClosed):
        await subscription.receive()
    async with transport:
        assert await transport.backlog(topic, "g") == 1  # given back when it closed
