"""The conformance checks of a store's flow trace (the ``trace_`` store checks).

A store keeps a trace when it has ``trace_ops()`` (see
:mod:`flowkit.stores._trace`); a store without one passes these checks, as
it has nothing to prove. Flows, message types, workflow ids and keys are
random, so a shared database can be reused; the checks that prune or cap the
trace remove the oldest entries of the whole store, as those operations do.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from .._errors import StoreError
from ..stores._trace import TRACE_COLUMNS, trace_of
from ._store_suite import _check, _expect, _expect_raises, _is_utc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..stores._base import StateStore
    from ..stores._trace import TraceRow, TraceStore
    from ._store_suite import _Factory

__all__: list[str] = []


def _traced(store: StateStore) -> TraceStore | None:
    return trace_of(store) if callable(getattr(store, "trace_ops", None)) else None


def _trace_check(
    func: Callable[[TraceStore], Awaitable[None]],
) -> Callable[[_Factory], Awaitable[None]]:
    """Register a check of the trace of an open store (a store without one passes)."""

    async def check(factory: _Factory) -> None:
        async with factory() as store:
            trace = _traced(store)
            if trace is not None:
                await func(trace)

    check.__name__ = check.__qualname__ = func.__name__
    check.__doc__ = func.__doc__
    return _check(check)


def _id(kind: str) -> str:
    return f"flowkit-check-{kind}-{uuid.uuid4().hex[:12]}"


def _row(
    flow: str,
    *,
    at: float | None = None,
    kind: str = "publish",
    outcome: str = "published",
    message_type: str | None = "CheckEvent",
    message_id: str | None = None,
    workflow_id: str | None = None,
    key: str | None = None,
    attempt: int | None = None,
    duration: float | None = None,
    error: str | None = None,
    detail: str | None = None,
) -> TraceRow:
    return (
        time.time() if at is None else at,
        flow,
        kind,
        outcome,
        message_id or uuid.uuid4().hex,
        None,
        message_type,
        "check-service" if kind == "handle" else None,
        "check-handler" if kind == "handle" else None,
        "check-workflow" if workflow_id else None,
        workflow_id,
        None,
        attempt,
        duration,
        "CheckError" if error else None,
        error,
        key,
        detail,
    )


@_trace_check
async def _check_trace_entries_round_trip(trace: TraceStore) -> None:
    flow, other = _id("flow"), _id("flow")
    now = time.time()
    rows = [
        _row(flow, at=now - 2, message_id="m-1", key="k-1"),
        _row(
            flow,
            at=now - 1,
            kind="handle",
            outcome="retried",
            message_id="m-1",
            attempt=2,
            duration=0.25,
            error="it failed: \u00e9",
        ),
        _row(flow, at=now, kind="workflow", outcome="started", workflow_id="w-1", detail="d"),
    ]
    await trace.add([*rows, _row(other)])
    entries = await trace.read(flow)
    _expect(len(entries) == 3, f"read() gave {len(entries)} entries of 3 added")
    _expect(
        [e.seq for e in entries] == sorted(e.seq for e in entries),
        "read() is not in the order entries were stored",
    )
    for entry, row in zip(entries, rows, strict=True):
        _expect(_is_utc(entry.at), f"entry time {entry.at!r} is not timezone-aware UTC")
        _expect(
            abs(entry.at.timestamp() - row[0]) < 0.001,
            f"entry time {entry.at} is not the time added ({row[0]})",
        )
        for name, value in zip(TRACE_COLUMNS[1:], row[1:], strict=True):
            got = getattr(entry, name)
            _expect(got == value, f"entry {name} came back as {got!r}, not {value!r}")
    _expect(await trace.count(flow) == 3, "count() is not the number of entries added")
    _expect(await trace.read(_id("none")) == [], "read() of an unknown flow is not empty")
    _expect(await trace.count(_id("none")) == 0, "count() of an unknown flow is not 0")


@_trace_check
async def _check_trace_keeps_any_text(trace: TraceStore) -> None:
    # A hand-made id or an error message may hold what a database text refuses
    # (PostgreSQL text holds no NUL): the entry is kept, with a stand-in for it.
    flow = _id("flow")
    await trace.add([_row(flow, message_id="m\x00x", error="a\x00b \U0001f600", key="k\x00")])
    (entry,) = await trace.read(flow)
    _expect(
        (entry.message_id or "").startswith("m") and (entry.error or "").endswith("\U0001f600"),
        f"an entry with a NUL character came back as {entry!r}",
    )


@_trace_check
async def _check_trace_read_pages(trace: TraceStore) -> None:
    flow = _id("flow")
    await trace.add([_row(flow, message_id=f"m-{i}") for i in range(25)])
    pages: list[str | None] = []
    after: int | None = None
    for _ in range(5):
        page = await trace.read(flow, limit=10, after=after)
        if not page:
            break
        pages.extend(e.message_id for e in page)
        after = page[-1].seq
    _expect(
        pages == [f"m-{i}" for i in range(25)],
        f"reading by pages of 10 gave {pages}, not the 25 entries in order",
    )
    await _expect_raises(StoreError, lambda: trace.read(flow, limit=0), "read(limit=0)")


@_trace_check
async def _check_trace_find_by_id_workflow_and_key(trace: TraceStore) -> None:
    key, workflow_id = _id("key"), _id("workflow")
    older, newer, saga = _id("flow"), _id("flow"), _id("flow")
    await trace.add([_row(older, key=key)])
    await trace.add([_row(newer, key=key), _row(newer, key=key)])
    await trace.add([_row(saga, kind="workflow", outcome="started", workflow_id=workflow_id)])
    found = await trace.find(older)
    _expect(found == [older], f"find(a correlation id) gave {found}, not [{older!r}]")
    found = await trace.find(key)
    _expect(
        found == [newer, older],
        f"find(a business key) gave {found}, not its flows most recent first",
    )
    found = await trace.find(workflow_id)
    _expect(found == [saga], f"find(a workflow id) gave {found}, not [{saga!r}]")
    found = await trace.find(key, limit=1)
    _expect(found == [newer], f"find(limit=1) gave {found}")
    found = await trace.find(_id("none"))
    _expect(found == [], f"find(an unknown value) gave {found}")


@_trace_check
async def _check_trace_stalled_flows(trace: TraceStore) -> None:
    first, done = _id("Start"), _id("Done")
    now = time.time()
    on_time, missing, late, recent, old, twice = (_id("flow") for _ in range(6))
    await trace.add(
        [
            _row(on_time, at=now - 100, message_type=first),
            _row(on_time, at=now - 95, message_type=done),
            _row(missing, at=now - 90, message_type=first, message_id="m-missing", key="k"),
            _row(late, at=now - 80, message_type=first, message_id="m-late"),
            _row(late, at=now - 60, kind="handle", outcome="handled", message_type=done),
            _row(recent, at=now - 5, message_type=first),
            _row(old, at=now - 1000, message_type=first),
            _row(twice, at=now - 70, message_type=first),
            _row(twice, at=now - 65, kind="handle", outcome="handled", message_type=done),
            _row(twice, at=now - 50, message_type=first),
            # a handling of the first event is not a publish of it
            _row(_id("flow"), at=now - 85, kind="handle", outcome="handled", message_type=first),
        ]
    )
    since = datetime.fromtimestamp(now - 500, UTC)
    until = datetime.fromtimestamp(now - 10, UTC)
    found = await trace.stalled(first, [done], within=10.0, since=since, until=until)
    flows = [e.correlation_id for e in found]
    _expect(
        flows == [missing, late],
        f"stalled() found {flows}, not the flow without {done} and the late one, oldest first",
    )
    _expect(
        [e.message_id for e in found] == ["m-missing", "m-late"]
        and all(e.kind == "publish" and e.message_type == first for e in found),
        "stalled() did not return the first event's publish entry of each flow",
    )
    _expect(found[0].key == "k", "stalled() lost the entry's business key")
    found = await trace.stalled(first, [done], within=10.0, since=since, until=until, limit=1)
    _expect([e.correlation_id for e in found] == [missing], "stalled(limit=1) is not the oldest")
    found = await trace.stalled(first, [done], within=30.0, since=since, until=until)
    _expect(
        [e.correlation_id for e in found] == [missing],
        "stalled() with a longer wait still counts the late flow",
    )


@_trace_check
async def _check_trace_report_once(trace: TraceStore) -> None:
    flow, name = _id("flow"), _id("expectation")

    def report_row(expectation: str) -> TraceRow:
        return _row(flow, kind="stalled", outcome="reported", detail=expectation)

    wins: list[bool] = []

    async def report() -> None:
        wins.append(await trace.report(name, flow, report_row(name)))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(report)
    _expect(sorted(wins) == [False] * 4 + [True], f"5 concurrent reports gave {wins}")
    _expect(
        not await trace.report(name, flow, report_row(name)),
        "a flow was reported twice for one expectation",
    )
    other = _id("expectation")
    _expect(
        await trace.report(other, flow, report_row(other)),
        "a report for another expectation was refused",
    )
    stalled = [e for e in await trace.read(flow) if e.kind == "stalled"]
    _expect(
        sorted(e.detail or "" for e in stalled) == sorted([name, other]),
        "the reports are not in the flow's entries",
    )


@_trace_check
async def _check_trace_prune_only_older(trace: TraceStore) -> None:
    flow = _id("flow")
    now = time.time()
    old = [_row(flow, at=now - 1000 - i, message_id=f"old-{i}") for i in range(3)]
    new = [_row(flow, at=now, message_id="new")]
    await trace.add([*old, *new])
    cutoff = datetime.now(UTC) - timedelta(seconds=500)
    first = await trace.prune(cutoff, limit=2)
    _expect(first <= 2, f"prune(limit=2) removed {first} entries")
    for _ in range(1000):
        if await trace.prune(cutoff, limit=1000) < 1000:
            break
    left = [e.message_id for e in await trace.read(flow)]
    _expect(left == ["new"], f"after pruning the old entries, the flow has {left}")
    await _expect_raises(
        StoreError, lambda: trace.prune(datetime.now(), limit=10), "prune(a naive time)"
    )


@_trace_check
async def _check_trace_cap_removes_the_oldest(trace: TraceStore) -> None:
    flow = _id("flow")
    await trace.add([_row(flow, message_id=f"m-{i:02d}") for i in range(30)])
    removed = await trace.cap(10, limit=5)
    _expect(0 < removed <= 5, f"cap(10, limit=5) removed {removed} entries")
    for _ in range(1000):
        if await trace.cap(10, limit=1000) == 0:
            break
    left = [e.message_id for e in await trace.read(flow)]
    _expect(
        1 <= len(left) <= 10 and left == [f"m-{i:02d}" for i in range(30 - len(left), 30)],
        f"after cap(10) the flow kept {left}, not its newest entries",
    )


@_check
async def _check_trace_closed_store_raises(factory: _Factory) -> None:
    store = factory()
    async with store:
        trace = _traced(store)
    if trace is None:
        return
    await _expect_raises(StoreError, lambda: trace.add([_row(_id("flow"))]), "add() when closed")
