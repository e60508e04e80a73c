"""A service in its own process for the OpenTelemetry test on Redis.

``python -m tests.otel_worker URL`` runs a bus on the Redis transport at URL
with one handler: it gets a ``Ping``, answers with a ``Pong`` event through
``ctx.publish``, then the process prints the spans it recorded as one line of
JSON and exits. It prints ``ready`` once its consumer is subscribed.
"""

from __future__ import annotations

import json
import sys

import anyio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flowkit import Choreography, Context, Event
from flowkit.observability.otel import OpenTelemetry
from flowkit.transports import from_url


class Ping(Event, type_name="otel_test.Ping"):
    n: int


class Pong(Event, type_name="otel_test.Pong"):
    n: int


def span_rows(exporter: InMemorySpanExporter) -> list[dict[str, object]]:
    """The finished spans, as the test compares them."""
    rows: list[dict[str, object]] = []
    for span in exporter.get_finished_spans():
        assert span.context is not None
        rows.append(
            {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": f"{span.context.trace_id:032x}",
                "span_id": f"{span.context.span_id:016x}",
                "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "remote_parent": bool(span.parent and span.parent.is_remote),
                "service": (span.attributes or {}).get("flowkit.service"),
            }
        )
    return rows


async def main(url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bus = Choreography(from_url(url), observers=[OpenTelemetry(tracer_provider=provider)])
    done = anyio.Event()

    @bus.on(Ping, service="worker", emits=[Pong])
    async def answer(event: Ping, ctx: Context) -> None:
        await ctx.publish(Pong(n=event.n))
        done.set()

    with anyio.fail_after(30):
        async with bus:
            print("ready", flush=True)
            await done.wait()
            await bus.wait_idle()
    print(json.dumps(span_rows(exporter)), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
