"""The conformance checks of a store's waits (the ``wait_`` store checks).

A store keeps waiting workflows when it has ``wait_ops()`` (see
:mod:`flowkit.stores._waits`); a store without one passes these checks, as it
has nothing to prove (an orchestrator that waits refuses it). Names, channels,
keys and ids are random, so a shared database can be reused; the prune check
removes the oldest messages of the whole store, as pruning does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from .._errors import StoreError
from ..stores._base import WorkflowRecord
from ..stores._waits import WAITING, waits_of
from ._store_suite import _check, _expect, _expect_raises, _is_utc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..stores._base import StateStore
    from ..stores._waits import WaitStore
    from ._store_suite import _Factory

__all__: list[str] = []

_LEASE = 30.0


def _wait_check(
    func: Callable[[StateStore, WaitStore], Awaitable[None]],
) -> Callable[[_Factory], Awaitable[None]]:
    """Register a check of the waits of an open store (a store without them passes)."""

    async def check(factory: _Factory) -> None:
        async with factory() as store:
            if callable(getattr(store, "wait_ops", None)):
                await func(store, waits_of(store))

    check.__name__ = check.__qualname__ = func.__name__
    check.__doc__ = func.__doc__
    return _check(check)


def _id(kind: str) -> str:
    return f"flowkit-check-{kind}-{uuid.uuid4().hex[:12]}"


def _now() -> datetime:
    return datetime.now(UTC)


async def _running(store: StateStore, name: str) -> WorkflowRecord:
    record = WorkflowRecord(id=_id("workflow"), name=name, status="RUNNING", state={"n": 1})
    stored, _ = await store.create_workflow(record)
    return stored


def _waiting(
    record: WorkflowRecord,
    *,
    wake_at: datetime | None = None,
    wait_for: str | None = None,
    wait_key: str | None = None,
) -> WorkflowRecord:
    return WorkflowRecord(
        id=record.id,
        name=record.name,
        status=WAITING,
        state={"n": 2},
        version=record.version,
        wake_at=wake_at,
        wait_for=wait_for,
        wait_key=wait_key,
    )


async def _parked(
    store: StateStore,
    name: str,
    *,
    wake_at: datetime | None = None,
    wait_for: str | None = None,
    wait_key: str | None = None,
) -> WorkflowRecord:
    """A new workflow of ``name`` saved WAITING, with no owner."""
    record = await _running(store, name)
    return await store.save_workflow(
        _waiting(record, wake_at=wake_at, wait_for=wait_for, wait_key=wait_key)
    )


def _close(a: datetime | None, b: datetime, within: float = 2.0) -> bool:
    return a is not None and abs((a - b).total_seconds()) <= within


@_wait_check
async def _check_wait_fields_round_trip(store: StateStore, waits: WaitStore) -> None:
    name = _id("name")
    at = (_now() + timedelta(hours=1)).replace(microsecond=0)
    saved = await _parked(store, name, wake_at=at, wait_for="signal:Approval", wait_key="k-1")
    _expect(saved.status == WAITING and saved.owner is None, f"saved {saved}")
    loaded = await store.load_workflow(saved.id)
    _expect(_is_utc(loaded.wake_at), f"wake_at is not a UTC datetime: {loaded.wake_at!r}")
    _expect(loaded.wake_at == at, f"wake_at came back as {loaded.wake_at}, not {at}")
    _expect(
        (loaded.wait_for, loaded.wait_key) == ("signal:Approval", "k-1"),
        f"the wait came back as {(loaded.wait_for, loaded.wait_key)}",
    )
    listed = await store.list_workflows(status=[WAITING], name=name)
    _expect(
        [(r.id, r.wake_at, r.wait_for) for r in listed] == [(saved.id, at, "signal:Approval")],
        f"a listing of WAITING gave {listed}",
    )
    resumed = await store.save_workflow(
        WorkflowRecord(
            id=saved.id,
            name=name,
            status="RUNNING",
            state={"n": 3},
            version=saved.version,
            wake_at=at,
            wait_for="x",
            wait_key="y",
        )
    )
    again = await store.load_workflow(resumed.id)
    _expect(
        (again.wake_at, again.wait_for, again.wait_key) == (None, None, None),
        f"a RUNNING checkpoint kept the wait: {(again.wake_at, again.wait_for, again.wait_key)}",
    )


@_wait_check
async def _check_wait_due_claimed_soonest_first(store: StateStore, waits: WaitStore) -> None:
    name, owner, other = _id("name"), _id("owner"), _id("owner")
    now = _now()
    later = await _parked(store, name, wake_at=now - timedelta(seconds=1))
    sooner = await _parked(store, name, wake_at=now - timedelta(seconds=5))
    future = await _parked(store, name, wake_at=now + timedelta(hours=1))
    untimed = await _parked(store, name, wait_for="signal:A", wait_key="k")
    await _parked(store, _id("name"), wake_at=now - timedelta(seconds=9))  # another orchestrator
    claimed = await waits.claim_due(name, owner, lease=_LEASE)
    _expect(
        [r.id for r in claimed] == [sooner.id, later.id],
        f"claim_due took {[r.id for r in claimed]}, not the two due ones soonest first "
        f"(not {future.id} nor {untimed.id})",
    )
    for record, before in zip(claimed, (sooner, later), strict=True):
        _expect(record.owner == owner, f"a due claim has owner {record.owner!r}")
        _expect(record.status == WAITING, f"claiming changed the status to {record.status}")
        _expect(record.version == before.version + 1, "claiming did not increment the version")
    again = await waits.claim_due(name, other, lease=_LEASE)
    _expect(again == [], f"a held due workflow was claimed again by another owner: {again}")
    mine = await waits.claim_due(name, owner, lease=_LEASE)
    _expect(
        mine == [],
        f"the holder claimed again due workflows it holds: {[r.id for r in mine]}",
    )
    recovered = await store.claim_workflows(name, other, lease=_LEASE)
    _expect(recovered == [], "claim_workflows (recovery) took a WAITING workflow")


@_wait_check
async def _check_wait_due_after_lease_runs_out(store: StateStore, waits: WaitStore) -> None:
    name, owner, other = _id("name"), _id("owner"), _id("owner")
    due = await _parked(store, name, wake_at=_now() - timedelta(seconds=1))
    first = await waits.claim_due(name, owner, lease=0.05)
    _expect([r.id for r in first] == [due.id], "the due workflow was not claimed")
    await anyio.sleep(0.3)
    second = await waits.claim_due(name, other, lease=_LEASE)
    _expect(
        [r.id for r in second] == [due.id] and second[0].version == first[0].version + 1,
        f"a due workflow whose holder's lease ran out was not taken over: {second}",
    )


@_wait_check
async def _check_wait_concurrent_due_claims_never_share(
    store: StateStore, waits: WaitStore
) -> None:
    name = _id("name")
    past = _now() - timedelta(seconds=1)
    ids = {(await _parked(store, name, wake_at=past)).id for _ in range(12)}
    got: list[str] = []

    async def claim(owner: str) -> None:
        got.extend(r.id for r in await waits.claim_due(name, owner, lease=_LEASE, limit=5))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(claim, _id("owner"))
    _expect(len(got) == len(set(got)), f"concurrent claim_due took one workflow twice: {got}")
    _expect(set(got) <= ids, "claim_due took a workflow of another name")


@_wait_check
async def _check_wait_next_wake(store: StateStore, waits: WaitStore) -> None:
    name = _id("name")
    _expect(await waits.next_wake(name) is None, "next_wake of a name with no waits is not None")
    await _parked(store, name, wait_for="signal:A", wait_key="k")
    _expect(await waits.next_wake(name) is None, "a wait without a timer gave a next_wake")
    await _parked(store, name, wake_at=_now() + timedelta(seconds=60))
    wake = await waits.next_wake(name)
    _expect(wake is not None and 50 < wake <= 61, f"next_wake of a timer 60 s away is {wake}")
    due = await _parked(store, name, wake_at=_now() - timedelta(seconds=2))
    wake = await waits.next_wake(name)
    _expect(wake is not None and wake <= 0, f"next_wake with one due is {wake}, not <= 0")
    await waits.claim_due(name, _id("owner"), lease=_LEASE)
    wake = await waits.next_wake(name)
    _expect(
        wake is not None and wake > 50,
        f"next_wake counted a held workflow ({due.id}): {wake}",
    )


@_wait_check
async def _check_wait_delivery_wakes_the_waiting(store: StateStore, waits: WaitStore) -> None:
    name, channel = _id("name"), "event:SellerAccepted.order_id"
    far = _now() + timedelta(days=1)
    waiting = await _parked(store, name, wake_at=far, wait_for=channel, wait_key="o-1")
    other_key = await _parked(store, name, wake_at=far, wait_for=channel, wait_key="o-2")
    other_channel = await _parked(store, name, wait_for="signal:X", wait_key="o-1")
    delivery = await waits.deliver(name, channel, "o-1", _id("message"), {"order_id": "o-1"})
    _expect(delivery.stored, "a new message was not stored")
    _expect(
        delivery.woken == (waiting.id,),
        f"the delivery woke {delivery.woken}, not only {waiting.id} "
        f"(not {other_key.id} nor {other_channel.id})",
    )
    loaded = await store.load_workflow(waiting.id)
    _expect(_close(loaded.wake_at, _now()), f"the woken workflow's wake_at is {loaded.wake_at}")
    claimed = await waits.claim_due(name, _id("owner"), lease=_LEASE)
    _expect([r.id for r in claimed] == [waiting.id], f"claim_due after delivery: {claimed}")
    mail = await waits.take(name, channel, "o-1", f"{waiting.id}:wait")
    _expect(
        mail is not None and dict(mail.body) == {"order_id": "o-1"} and _is_utc(mail.created_at),
        f"take returned {mail}",
    )


@_wait_check
async def _check_wait_early_message_makes_the_wait_due(store: StateStore, waits: WaitStore) -> None:
    name, channel, key = _id("name"), "signal:Approval", _id("key")
    await waits.deliver(name, channel, key, _id("message"), {"ok": True})
    record = await _running(store, name)
    saved = await store.save_workflow(
        _waiting(record, wake_at=_now() + timedelta(days=1), wait_for=channel, wait_key=key)
    )
    _expect(
        _close(saved.wake_at, _now()),
        f"a wait saved with a message already kept for it is not due now: {saved.wake_at}",
    )
    claimed = await waits.claim_due(name, _id("owner"), lease=_LEASE)
    _expect([r.id for r in claimed] == [saved.id], "the early message's wait was not claimed")


@_wait_check
async def _check_wait_delivered_once_taken_once(store: StateStore, waits: WaitStore) -> None:
    name, channel, key = _id("name"), "event:E.k", _id("key")
    first, second = _id("message"), _id("message")
    _expect((await waits.deliver(name, channel, key, first, {"n": 1})).stored, "not stored")
    again = await waits.deliver(name, channel, key, first, {"n": 1})
    _expect(not again.stored, "a message delivered twice was stored twice")
    await waits.deliver(name, channel, key, second, {"n": 2})
    a = await waits.take(name, channel, key, "wf-a:step")
    _expect(a is not None and a.id == first, f"the oldest message was not taken first: {a}")
    a_again = await waits.take(name, channel, key, "wf-a:step")
    _expect(
        a_again is not None and a_again.id == first,
        f"a consumer asking again did not get the message it took: {a_again}",
    )
    b = await waits.take(name, channel, key, "wf-b:step")
    _expect(b is not None and b.id == second, f"another consumer got {b}, not the next message")
    c = await waits.take(name, channel, key, "wf-c:step")
    _expect(c is None, f"a third consumer got a message already taken: {c}")
    _expect(await waits.drop(name, "wf-a:step") == 1, "drop did not remove the taken message")
    dropped = await waits.take(name, channel, key, "wf-a:step")
    _expect(dropped is None, "a dropped message came back")
    _expect(await waits.take(name, "event:E.k", _id("key"), "x") is None, "an empty key gave mail")


@_wait_check
async def _check_wait_concurrent_takes_never_share(store: StateStore, waits: WaitStore) -> None:
    name, channel, key = _id("name"), "signal:S", _id("key")
    for n in range(6):
        await waits.deliver(name, channel, key, _id("message"), {"n": n})
    got: list[str] = []

    async def take(consumer: str) -> None:
        mail = await waits.take(name, channel, key, consumer)
        if mail is not None:
            got.append(mail.id)

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(take, f"consumer-{n}")
    _expect(len(got) == 6 and len(set(got)) == 6, f"10 takers of 6 messages got {got}")


@_wait_check
async def _check_wait_cancel_request_makes_due(store: StateStore, waits: WaitStore) -> None:
    name = _id("name")
    waiting = await _parked(store, name, wake_at=_now() + timedelta(days=1))
    asked = await store.request_cancel(waiting.id)
    _expect(asked.cancel_requested, "request_cancel of a WAITING workflow set no flag")
    claimed = await waits.claim_due(name, _id("owner"), lease=_LEASE)
    _expect([r.id for r in claimed] == [waiting.id], "a cancel request did not make the wait due")
    _expect(claimed[0].cancel_requested, "the claimed record lost its cancel request")
    parked = await store.save_workflow(_waiting(claimed[0], wake_at=_now() + timedelta(days=1)))
    _expect(
        parked.cancel_requested and _close(parked.wake_at, _now()),
        f"a wait saved with a pending cancel is not due now: {parked}",
    )


@_wait_check
async def _check_wait_claim_one_and_renew(store: StateStore, waits: WaitStore) -> None:
    name, owner, other = _id("name"), _id("owner"), _id("owner")
    waiting = await _parked(store, name, wake_at=_now() + timedelta(days=1))
    claimed = await store.claim_workflow(waiting.id, owner, lease=_LEASE)
    _expect(
        claimed is not None and claimed.owner == owner and claimed.status == WAITING,
        f"claim_workflow of a WAITING workflow gave {claimed}",
    )
    _expect(
        await store.claim_workflow(waiting.id, other, lease=_LEASE) is None,
        "claim_workflow took a WAITING workflow another owner holds",
    )
    renewed = await store.renew_leases(owner, [waiting.id], lease=_LEASE)
    _expect(renewed == {waiting.id: False}, f"renewing a held WAITING workflow gave {renewed}")


@_wait_check
async def _check_wait_prune(store: StateStore, waits: WaitStore) -> None:
    name, channel = _id("name"), "signal:P"
    for n in range(5):
        await waits.deliver(name, channel, f"k{n}", _id("message"), {"n": n})
    await _expect_raises(
        StoreError,
        lambda: waits.prune(datetime(2030, 1, 1)),
        "prune with a naive datetime",
    )
    removed = await waits.prune(_now() + timedelta(seconds=1), limit=2)
    _expect(removed == 2, f"prune with limit=2 removed {removed}")
    await waits.prune(_now() + timedelta(seconds=1))
    _expect(
        await waits.take(name, channel, "k4", "c") is None,
        "a pruned message could still be taken",
    )


@_wait_check
async def _check_wait_bad_input_refused(store: StateStore, waits: WaitStore) -> None:
    name = _id("name")
    await _expect_raises(
        StoreError,
        lambda: waits.deliver(name, "", "k", _id("message"), {}),
        "deliver on an empty channel",
    )
    await _expect_raises(
        StoreError,
        lambda: waits.deliver(name, "signal:S", "k", _id("message"), {"x": object()}),
        "deliver of a body that is not JSON",
    )
    await _expect_raises(
        StoreError,
        lambda: waits.claim_due(name, "", lease=_LEASE),
        "claim_due without an owner",
    )
    record = await _running(store, name)
    await _expect_raises(
        StoreError,
        lambda: store.save_workflow(_waiting(record, wake_at=datetime(2030, 1, 1))),
        "saving a naive wake_at",
    )
