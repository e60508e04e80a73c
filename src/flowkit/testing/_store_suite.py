"""The conformance suite of the state store contract.

Every store, the in-memory one and the database ones alike, must pass it; a
third-party store proves itself the same way::

    from flowkit.testing import check_store

    @pytest.mark.anyio
    async def test_my_store() -> None:
        await check_store(lambda: MyStore(dsn))

or, one test per check::

    @pytest.mark.anyio
    @pytest.mark.parametrize("name", STORE_CHECKS)
    async def test_my_store(name: str) -> None:
        await STORE_CHECKS[name](lambda: MyStore(dsn))

Each check makes a fresh store with the factory and enters it with
``async with``. Consumers, topics, workflow ids, names and statuses are random
and every listing is filtered by them, so a persistent database can be reused
between checks and runs. Each check is bounded in time and uses only the
public store contract.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import ConcurrencyConflict, NotFound, StoreError, WorkflowNotFound
from ..stores._base import Claim, DeadLetter, StateStore, WorkflowRecord

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    _Factory = Callable[[], StateStore]

__all__ = ["STORE_CHECKS", "check_store"]

STORE_CHECKS: dict[str, Callable[[Callable[[], StateStore]], Awaitable[None]]] = {}
"""Every check by name. Each is called as ``await check(factory)`` and raises
:class:`AssertionError` naming itself when the store fails it."""

# How long one check may take.
_CHECK_TIMEOUT = 30.0


def _check(
    func: Callable[[_Factory], Awaitable[None]],
) -> Callable[[_Factory], Awaitable[None]]:
    """Register a check under its name, bounded in time, its failures named."""
    name = func.__name__.removeprefix("_check_")

    @functools.wraps(func)
    async def run(factory: Callable[[], StateStore]) -> None:
        try:
            with anyio.fail_after(_CHECK_TIMEOUT):
                await func(factory)
        except Exception as exc:
            failure: BaseException = exc
            while isinstance(failure, BaseExceptionGroup):
                failure = failure.exceptions[0]
            if isinstance(failure, AssertionError):
                outcome = f"failed: {failure}"
            elif isinstance(failure, TimeoutError):
                outcome = f"timed out after {_CHECK_TIMEOUT}s"
            else:
                outcome = f"raised {type(failure).__name__}: {failure}"
            raise AssertionError(f"store check {name!r} {outcome}") from exc

    STORE_CHECKS[name] = run
    return run


async def check_store(factory: Callable[[], StateStore]) -> None:
    """Run every check of the state store contract against a store.

    Args:
        factory: makes a new, unopened store; called once per check (and the
            store entered with ``async with``). Stores it makes may share their
            data (one database): the checks do not expect an empty store.

    Raises:
        AssertionError: if the store fails a check; the message names every
            check that failed and why, and the first failure is chained.
    """
    failures: list[AssertionError] = []
    for check in STORE_CHECKS.values():
        try:
            await check(factory)
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        lines = "\n".join(f"  - {failure}" for failure in failures)
        raise AssertionError(
            f"{len(failures)} of {len(STORE_CHECKS)} store checks failed:\n{lines}"
        ) from failures[0]


# -- helpers ----------------------------------------------------------------------


def _name(kind: str) -> str:
    return f"flowkit-check-{kind}-{uuid.uuid4().hex[:12]}"


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 160 else f"{text[:120]}...{text[-30:]}"


async def _expect_raises(
    error: type[BaseException], action: Callable[[], Awaitable[object]], what: str
) -> BaseException:
    try:
        result = await action()
    except error as exc:
        return exc
    except Exception as exc:
        raise AssertionError(
            f"{what} raised {type(exc).__name__}: {exc}, not {error.__name__}"
        ) from exc
    raise AssertionError(f"{what} returned {_short(result)} instead of raising {error.__name__}")


def _is_utc(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)


def _letter(
    consumer: str,
    topic: str,
    *,
    failed_at: datetime | None = None,
    body: bytes = b'{"id": "m"}',
    error: str = "boom",
    message_id: str | None = None,
) -> DeadLetter:
    return DeadLetter(
        id=_name("letter"),
        consumer=consumer,
        topic=topic,
        body=body,
        headers={"x-flowkit-attempt": "3", "traceparent": "00-abc-def-01"},
        error_type="ValueError",
        error=error,
        attempts=3,
        failed_at=failed_at or datetime.now(UTC),
        message_id=message_id,
    )


def _workflow(
    name: str, status: str = "RUNNING", state: dict[str, Any] | None = None
) -> WorkflowRecord:
    return WorkflowRecord(
        id=_name("workflow"),
        name=name,
        status=status,
        state={"input": {"n": 1}, "steps": []} if state is None else state,
    )


def _ids(items: list[DeadLetter] | list[WorkflowRecord]) -> list[str]:
    return [item.id for item in items]


def _scribble(value: object) -> None:
    """Mutate every dict and list reachable from ``value`` (immutable ones are skipped)."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _scribble(item)
        value["flowkit-check-scribbled"] = True
    elif isinstance(value, list):
        for item in value:
            _scribble(item)
        value.append("flowkit-check-scribbled")


_NESTED_STATE: dict[str, Any] = {
    "input": {"order_id": "o-1", "amount": 4200, "currency": "EUR"},
    "steps": [
        {"name": "reserve", "status": "DONE", "attempts": 1, "result": {"ok": True}},
        {"name": "charge", "status": "FAILED", "attempts": 3, "result": None},
    ],
    "history": [["started", 0], ["reserve.done", 1.5], []],
    "numbers": {"big": 2**53 + 1, "negative": -7, "float": 0.1, "exp": 1.5e-10, "zero": 0},
    "flags": [True, False, None],
    "text": 'héllo wörld ✓ 日本 🎉 "quoted" back\\slash\nnewline',
    "deep": {"a": {"b": {"c": {"d": [{"e": [1, [2, [3]]]}]}}}},
    "empty": {"dict": {}, "list": [], "string": ""},
    "ключ": "значение",
}


# -- instance ---------------------------------------------------------------------


@_check
async def _check_is_a_state_store(factory: _Factory) -> None:
    store = factory()
    _expect(
        isinstance(store, StateStore),
        f"{type(store).__name__} does not have every method of the StateStore protocol",
    )


# -- inbox --------------------------------------------------------------------------


# A lease no check outlives, and one that runs out at once.
_LONG_LEASE = 600.0
_SHORT_LEASE = 0.05


@_check
async def _check_inbox_claim_new_then_busy(factory: _Factory) -> None:
    consumer, message_id = _name("consumer"), _name("message")
    async with factory() as store:
        got = await store.inbox_claim(consumer, message_id, lease=_LONG_LEASE)
        _expect(got == Claim.CLAIMED, f"inbox_claim of a new pair answered {got!r}, not CLAIMED")
        for attempt in ("second", "third"):
            got = await store.inbox_claim(consumer, message_id, lease=_LONG_LEASE)
            _expect(
                got == Claim.BUSY,
                f"a {attempt} inbox_claim of a held pair answered {got!r}, not BUSY",
            )
        got = await store.inbox_claim(consumer, _name("message"), lease=_LONG_LEASE)
        _expect(
            got == Claim.CLAIMED,
            f"inbox_claim of another message of the same consumer answered {got!r}",
        )


@_check
async def _check_inbox_complete_then_done(factory: _Factory) -> None:
    consumer, message_id = _name("consumer"), _name("message")
    async with factory() as store:
        await store.inbox_claim(consumer, message_id, lease=_LONG_LEASE)
        await store.inbox_complete(consumer, message_id)
        got = await store.inbox_claim(consumer, message_id, lease=_LONG_LEASE)
        _expect(got == Claim.DONE, f"inbox_claim after inbox_complete answered {got!r}, not DONE")
        await store.inbox_complete(consumer, message_id)
        got = await store.inbox_claim(consumer, message_id, lease=_LONG_LEASE)
        _expect(got == Claim.DONE, f"after a second inbox_complete, inbox_claim answered {got!r}")


@_check
async def _check_inbox_complete_without_claim(factory: _Factory) -> None:
    consumer, message_id = _name("consumer"), _name("message")
    async with factory() as store:
        await store.inbox_complete(consumer, message_id)
        got = await store.inbox_claim(consumer, message_id, lease=_LONG_LEASE)
        _expect(
            got == Claim.DONE,
            f"inbox_claim of a pair completed without a claim answered {got!r}, not DONE",
        )


@_check
async def _check_inbox_release(factory: _Factory) -> None:
    consumer, message_id, done = _name("consumer"), _name("message"), _name("message")
    async with factory() as store:
        await store.inbox_claim(consumer, message_id, lease=_LONG_LEASE)
        await store.inbox_release(consumer, message_id)
        got = await store.inbox_claim(consumer, message_id, lease=_LONG_LEASE)
        _expect(got == Claim.CLAIMED, f"inbox_claim after inbox_release answered {got!r}")
        await store.inbox_claim(consumer, done, lease=_LONG_LEASE)
        await store.inbox_complete(consumer, done)
        await store.inbox_release(consumer, done)
        got = await store.inbox_claim(consumer, done, lease=_LONG_LEASE)
        _expect(
            got == Claim.DONE,
            f"releasing a completed pair made inbox_claim answer {got!r}, not DONE",
        )
        await store.inbox_release(consumer, _name("message"))  # unknown: a no-op


async def _claims_at_once(
    store: StateStore, consumer: str, message_id: str, claimers: int
) -> list[Claim]:
    """The answers of ``claimers`` concurrent claims of one pair, as they came."""
    answers: list[Claim] = []

    async def claim() -> None:
        answers.append(await store.inbox_claim(consumer, message_id, lease=_LONG_LEASE))

    async with anyio.create_task_group() as tg:
        for _ in range(claimers):
            tg.start_soon(claim)
    return answers


@_check
async def _check_inbox_expired_claim_taken_over(factory: _Factory) -> None:
    consumer, message_id = _name("consumer"), _name("message")
    async with factory() as store:
        got = await store.inbox_claim(consumer, message_id, lease=_SHORT_LEASE)
        _expect(got == Claim.CLAIMED, f"inbox_claim of a new pair answered {got!r}")
        await anyio.sleep(_SHORT_LEASE * 4)
        answers = await _claims_at_once(store, consumer, message_id, 5)
        _expect(
            sorted(answers) == sorted([Claim.CLAIMED] + [Claim.BUSY] * 4),
            f"5 claims of a pair whose lease ran out answered {answers}, not one CLAIMED "
            "and the rest BUSY",
        )


@_check
async def _check_inbox_concurrent_claims_one_wins(factory: _Factory) -> None:
    claimers = 50
    consumer, message_id = _name("consumer"), _name("message")
    async with factory() as store:
        answers = await _claims_at_once(store, consumer, message_id, claimers)
        claimed = answers.count(Claim.CLAIMED)
        _expect(
            claimed == 1 and answers.count(Claim.BUSY) == claimers - 1,
            f"{claimed} of {claimers} concurrent claims of one pair got CLAIMED, not exactly "
            f"one (and the rest BUSY): {sorted(set(answers))}",
        )


@_check
async def _check_inbox_isolated_per_consumer(factory: _Factory) -> None:
    first, second, message_id = _name("consumer"), _name("consumer"), _name("message")
    async with factory() as store:
        await store.inbox_claim(first, message_id, lease=_LONG_LEASE)
        got = await store.inbox_claim(second, message_id, lease=_LONG_LEASE)
        _expect(
            got == Claim.CLAIMED,
            f"a message claimed by one consumer answered {got!r} to another, not CLAIMED",
        )
        await store.inbox_complete(second, message_id)
        got = await store.inbox_claim(first, message_id, lease=_LONG_LEASE)
        _expect(got == Claim.BUSY, f"another consumer's completion made this one {got!r}")


@_check
async def _check_inbox_prune(factory: _Factory) -> None:
    consumer = _name("consumer")
    done, held = _name("message"), _name("message")
    async with factory() as store:
        await store.inbox_complete(consumer, done)
        await store.inbox_claim(consumer, held, lease=_LONG_LEASE)
        removed = await store.inbox_prune(datetime.now(UTC) - timedelta(hours=1))
        _expect(removed >= 0, f"inbox_prune returned {removed!r}")
        got = await store.inbox_claim(consumer, done, lease=_LONG_LEASE)
        _expect(got == Claim.DONE, f"a young completed entry was pruned: claim answered {got!r}")
        removed = await store.inbox_prune(datetime.now(UTC) + timedelta(seconds=1))
        _expect(removed >= 1, f"inbox_prune of everything old removed {removed} entries")
        got = await store.inbox_claim(consumer, done, lease=_LONG_LEASE)
        _expect(
            got == Claim.CLAIMED,
            f"a pruned completed entry still answers {got!r}, not CLAIMED",
        )
        got = await store.inbox_claim(consumer, held, lease=_LONG_LEASE)
        _expect(got == Claim.BUSY, f"inbox_prune dropped a claim still held: it answers {got!r}")
        _expect(
            await store.inbox_prune(datetime.now(UTC) + timedelta(seconds=1)) >= 0,
            "a second inbox_prune failed",
        )


# -- dead letters ---------------------------------------------------------------------


@_check
async def _check_dead_letter_round_trip(factory: _Factory) -> None:
    consumer, topic = _name("consumer"), _name("topic")
    with_id = _letter(consumer, topic, message_id=_name("message"), error="Traceback...\nboom")
    without_id = _letter(consumer, topic)
    async with factory() as store:
        await store.add_dead_letter(with_id)
        await store.add_dead_letter(without_id)
        for letter in (with_id, without_id):
            got = await store.get_dead_letter(letter.id)
            _expect(got == letter, f"get_dead_letter returned {_short(got)}, kept {_short(letter)}")
            _expect(type(got.body) is bytes, f"body came back as {type(got.body).__name__}")
            _expect(
                dict(got.headers) == dict(letter.headers),
                f"headers came back as {_short(got.headers)}",
            )


@_check
async def _check_dead_letter_bytes_kept_exactly(factory: _Factory) -> None:
    consumer, topic = _name("consumer"), _name("topic")
    bodies = [
        b"",
        b"\xff\xfe\x80\xc3\x28 not UTF-8 \xed\xa0\x80",
        b"\x00\x00 NUL bytes \x00",
        bytes(range(256)),
        b"\r\n trailing whitespace \t ",
        uuid.uuid4().bytes * 4096,
    ]
    async with factory() as store:
        letters = []
        for index, body in enumerate(bodies):
            letter = _letter(
                consumer, topic, body=body, failed_at=datetime(2024, 1, 1, 0, 0, index, tzinfo=UTC)
            )
            letters.append(letter)
            await store.add_dead_letter(letter)
        for letter in letters:
            got = await store.get_dead_letter(letter.id)
            _expect(
                got.body == letter.body,
                f"body {_short(letter.body)} came back as {_short(got.body)}",
            )
        listed = await store.list_dead_letters(consumer=consumer)
        _expect(
            [letter.body for letter in listed] == bodies,
            "list_dead_letters did not return the bodies exactly",
        )


@_check
async def _check_dead_letter_list_oldest_first(factory: _Factory) -> None:
    consumer, topic = _name("consumer"), _name("topic")
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    # Added out of order; one is in another time zone (same instant as base + 1 min).
    newest = _letter(consumer, topic, failed_at=base + timedelta(minutes=2))
    oldest = _letter(consumer, topic, failed_at=base)
    middle = _letter(consumer, topic, failed_at=(base + timedelta(minutes=1)).astimezone(plus_two))
    async with factory() as store:
        for letter in (newest, oldest, middle):
            await store.add_dead_letter(letter)
        listed = await store.list_dead_letters(consumer=consumer)
        _expect(
            _ids(listed) == [oldest.id, middle.id, newest.id],
            f"list_dead_letters is not oldest first: {[str(d.failed_at) for d in listed]}",
        )


@_check
async def _check_dead_letter_list_filters(factory: _Factory) -> None:
    first, second = _name("consumer"), _name("consumer")
    red, blue = _name("topic"), _name("topic")
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    first_red = _letter(first, red, failed_at=base)
    first_blue = _letter(first, blue, failed_at=base + timedelta(seconds=1))
    second_red = _letter(second, red, failed_at=base + timedelta(seconds=2))
    async with factory() as store:
        for letter in (first_red, first_blue, second_red):
            await store.add_dead_letter(letter)
        cases: list[tuple[str | None, str | None, list[str]]] = [
            (first, None, [first_red.id, first_blue.id]),
            (second, None, [second_red.id]),
            (None, red, [first_red.id, second_red.id]),
            (None, blue, [first_blue.id]),
            (first, red, [first_red.id]),
            (second, blue, []),
            (_name("consumer"), None, []),
        ]
        for consumer, topic, expected in cases:
            got = _ids(await store.list_dead_letters(consumer=consumer, topic=topic))
            _expect(
                got == expected,
                f"list_dead_letters(consumer={consumer!r}, topic={topic!r}) returned {got}, "
                f"not {expected}",
            )


@_check
async def _check_dead_letter_list_limit(factory: _Factory) -> None:
    consumer, topic = _name("consumer"), _name("topic")
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    letters = [_letter(consumer, topic, failed_at=base + timedelta(seconds=i)) for i in range(5)]
    async with factory() as store:
        for letter in reversed(letters):
            await store.add_dead_letter(letter)
        expected = _ids(letters)
        got = _ids(await store.list_dead_letters(consumer=consumer, limit=3))
        _expect(got == expected[:3], f"limit=3 returned {got}, not the 3 oldest {expected[:3]}")
        got = _ids(await store.list_dead_letters(consumer=consumer, limit=0))
        _expect(got == [], f"limit=0 returned {got}")
        got = _ids(await store.list_dead_letters(consumer=consumer))
        _expect(got == expected, f"the default limit returned {got}, not all 5")


@_check
async def _check_dead_letter_delete(factory: _Factory) -> None:
    consumer, topic = _name("consumer"), _name("topic")
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    gone = _letter(consumer, topic, failed_at=base)
    kept = _letter(consumer, topic, failed_at=base + timedelta(seconds=1))
    async with factory() as store:
        await store.add_dead_letter(gone)
        await store.add_dead_letter(kept)
        await store.delete_dead_letter(gone.id)
        await _expect_raises(
            NotFound, lambda: store.get_dead_letter(gone.id), "get_dead_letter after delete"
        )
        listed = _ids(await store.list_dead_letters(consumer=consumer))
        _expect(listed == [kept.id], f"after one delete, list_dead_letters returned {listed}")
        await _expect_raises(
            NotFound, lambda: store.delete_dead_letter(gone.id), "a second delete_dead_letter"
        )
        got = await store.get_dead_letter(kept.id)
        _expect(got == kept, "deleting one letter changed another")


@_check
async def _check_dead_letter_not_found(factory: _Factory) -> None:
    unknown = _name("letter")
    async with factory() as store:
        error = await _expect_raises(
            NotFound, lambda: store.get_dead_letter(unknown), "get_dead_letter of an unknown id"
        )
        _expect(isinstance(error, StoreError), "NotFound is not a StoreError")
        await _expect_raises(
            NotFound,
            lambda: store.delete_dead_letter(unknown),
            "delete_dead_letter of an unknown id",
        )


@_check
async def _check_dead_letter_added_twice_kept_once(factory: _Factory) -> None:
    consumer, topic = _name("consumer"), _name("topic")
    letter = _letter(consumer, topic, error="first")
    again = DeadLetter(
        id=letter.id,
        consumer=consumer,
        topic=topic,
        body=b"other",
        headers={},
        error_type="KeyError",
        error="second",
        attempts=9,
        failed_at=letter.failed_at + timedelta(seconds=5),
    )
    async with factory() as store:
        await store.add_dead_letter(letter)
        await store.add_dead_letter(again)
        got = await store.get_dead_letter(letter.id)
        _expect(got == letter, f"adding a letter with a kept id changed it to {_short(got)}")
        listed = _ids(await store.list_dead_letters(consumer=consumer))
        _expect(listed == [letter.id], f"a letter added twice is listed as {listed}")


@_check
async def _check_dead_letter_prune_only_older(factory: _Factory) -> None:
    consumer, other, topic, other_topic = (
        _name("consumer"),
        _name("consumer"),
        _name("topic"),
        _name("topic"),
    )
    base = datetime(2020, 6, 1, 12, tzinfo=UTC)
    old = [_letter(consumer, topic, failed_at=base - timedelta(hours=h)) for h in (3, 2)]
    young = [_letter(consumer, topic, failed_at=base + timedelta(hours=h)) for h in (0, 1)]
    elsewhere = _letter(other, topic, failed_at=base - timedelta(hours=5))
    other_old = _letter(consumer, other_topic, failed_at=base - timedelta(hours=4))
    async with factory() as store:
        for letter in [*young, *old, elsewhere, other_old]:
            await store.add_dead_letter(letter)
        await _expect_raises(
            StoreError,
            lambda: store.prune_dead_letters(base.replace(tzinfo=None), consumer=consumer),
            "prune_dead_letters of a naive datetime",
        )
        removed = await store.prune_dead_letters(base, consumer=consumer, topic=topic)
        _expect(removed == 2, f"prune_dead_letters of the two older letters returned {removed}")
        got = _ids(await store.list_dead_letters(consumer=consumer, topic=topic))
        _expect(got == _ids(young), f"after a prune the letters left are {got}")
        got = _ids(await store.list_dead_letters(topic=other_topic))
        _expect(got == [other_old.id], f"a prune of one topic removed another's: {got}")
        got = _ids(await store.list_dead_letters(consumer=other))
        _expect(got == [elsewhere.id], f"a prune of one consumer removed another's: {got}")
        removed = await store.prune_dead_letters(base, consumer=consumer, topic=topic)
        _expect(removed == 0, f"a second prune of nothing older returned {removed}")
        removed = await store.prune_dead_letters(base, consumer=consumer)
        _expect(removed == 1, f"a prune of one consumer's letters returned {removed}")
        got = _ids(await store.list_dead_letters(consumer=consumer))
        _expect(got == _ids(young), f"after a prune of one consumer the letters are {got}")
        removed = await store.prune_dead_letters(base + timedelta(hours=1), topic=topic)
        _expect(removed == 2, f"a prune of one topic's letters returned {removed}")
        got = _ids(await store.list_dead_letters(topic=topic))
        _expect(got == [young[1].id], f"a prune removed a letter failed at its cutoff: {got}")


@_check
async def _check_dead_letter_prune_limit(factory: _Factory) -> None:
    consumer, topic = _name("consumer"), _name("topic")
    base = datetime(2020, 6, 1, 12, tzinfo=UTC)
    letters = [_letter(consumer, topic, failed_at=base + timedelta(minutes=m)) for m in range(5)]
    async with factory() as store:
        for letter in reversed(letters):
            await store.add_dead_letter(letter)
        cutoff = base + timedelta(days=1)
        for limit in (0, -1):
            await _expect_raises(
                StoreError,
                functools.partial(store.prune_dead_letters, cutoff, consumer=consumer, limit=limit),
                f"prune_dead_letters(limit={limit})",
            )
        counts = [
            await store.prune_dead_letters(cutoff, consumer=consumer, limit=2) for _ in range(2)
        ]
        _expect(counts == [2, 2], f"two prunes of at most 2 letters returned {counts}")
        got = _ids(await store.list_dead_letters(consumer=consumer))
        _expect(got == [letters[4].id], f"prunes with a limit left {got}, not the youngest")
        removed = await store.prune_dead_letters(cutoff, consumer=consumer, limit=2)
        _expect(removed == 1, f"the last prune returned {removed}, not 1")


# -- workflows ----------------------------------------------------------------------


@_check
async def _check_workflow_create(factory: _Factory) -> None:
    record = _workflow(_name("name"), state={"input": {"order": "o-1"}, "steps": []})
    async with factory() as store:
        stored, created = await store.create_workflow(record)
        _expect(created, "create_workflow of a new id did not report created=True")
        _expect(stored.version == 1, f"a new record has version {stored.version}, not 1")
        _expect(
            (stored.id, stored.name, stored.status) == (record.id, record.name, record.status),
            f"create_workflow returned {_short(stored)} for {_short(record)}",
        )
        _expect(dict(stored.state) == dict(record.state), f"state came back as {stored.state}")
        _expect(
            stored.created_at is not None and stored.updated_at is not None,
            "create_workflow did not set created_at and updated_at",
        )
        loaded = await store.load_workflow(record.id)
        _expect(loaded == stored, f"load_workflow returned {_short(loaded)}, not {_short(stored)}")


@_check
async def _check_workflow_create_is_idempotent(factory: _Factory) -> None:
    record = _workflow(_name("name"), state={"first": True})
    other = WorkflowRecord(
        id=record.id, name=_name("name"), status="OTHER", state={"second": True}, version=7
    )
    async with factory() as store:
        first, created = await store.create_workflow(record)
        _expect(created, "the first create_workflow did not report created=True")
        second, created = await store.create_workflow(other)
        _expect(not created, "a second create_workflow of the same id reported created=True")
        _expect(
            second == first,
            f"a second create_workflow returned {_short(second)}, not the existing record",
        )
        loaded = await store.load_workflow(record.id)
        _expect(loaded == first, f"a second create_workflow changed the record: {_short(loaded)}")


@_check
async def _check_workflow_save_increments_version(factory: _Factory) -> None:
    async with factory() as store:
        record, _ = await store.create_workflow(_workflow(_name("name"), state={"step": 0}))
        previous = record
        for step in (1, 2):
            saved = await store.save_workflow(
                WorkflowRecord(
                    id=record.id,
                    name=record.name,
                    status=f"STEP{step}",
                    state={"step": step},
                    version=previous.version,
                )
            )
            _expect(
                saved.version == previous.version + 1,
                f"save at version {previous.version} returned version {saved.version}",
            )
            _expect(
                (saved.status, dict(saved.state)) == (f"STEP{step}", {"step": step}),
                f"save returned {_short(saved)}",
            )
            _expect(saved.created_at == record.created_at, "save changed created_at")
            _expect(
                saved.updated_at is not None
                and previous.updated_at is not None
                and saved.updated_at >= previous.updated_at,
                "save did not move updated_at forward",
            )
            loaded = await store.load_workflow(record.id)
            _expect(loaded == saved, f"load after save returned {_short(loaded)}, not {saved}")
            previous = saved
        _expect(previous.version == 3, f"two saves after create left version {previous.version}")


@_check
async def _check_workflow_stale_save_conflicts(factory: _Factory) -> None:
    async with factory() as store:
        record, _ = await store.create_workflow(_workflow(_name("name"), state={"v": 1}))
        fresh = await store.save_workflow(
            WorkflowRecord(record.id, record.name, "RUNNING", {"v": 2}, version=record.version)
        )
        stale = WorkflowRecord(record.id, record.name, "STALE", {"v": "stale"}, record.version)
        error = await _expect_raises(
            ConcurrencyConflict, lambda: store.save_workflow(stale), "a save at a stale version"
        )
        _expect(isinstance(error, StoreError), "ConcurrencyConflict is not a StoreError")
        ahead = WorkflowRecord(record.id, record.name, "AHEAD", {"v": "ahead"}, version=99)
        await _expect_raises(
            ConcurrencyConflict, lambda: store.save_workflow(ahead), "a save at a future version"
        )
        loaded = await store.load_workflow(record.id)
        _expect(loaded == fresh, f"a refused save changed the record: {_short(loaded)}")


@_check
async def _check_workflow_concurrent_saves_one_wins(factory: _Factory) -> None:
    writers = 20
    async with factory() as store:
        record, _ = await store.create_workflow(_workflow(_name("name")))
        won: list[int] = []
        lost: list[int] = []
        other: list[BaseException] = []

        async def save(index: int) -> None:
            try:
                await store.save_workflow(
                    WorkflowRecord(record.id, record.name, "RUNNING", {"writer": index}, 1)
                )
            except ConcurrencyConflict:
                lost.append(index)
            except Exception as exc:
                other.append(exc)
            else:
                won.append(index)

        async with anyio.create_task_group() as tg:
            for index in range(writers):
                tg.start_soon(save, index)
        _expect(not other, f"concurrent saves raised {other[:1]!r}")
        _expect(len(won) == 1, f"{len(won)} of {writers} concurrent saves won, not exactly one")
        _expect(len(lost) == writers - 1, f"{len(lost)} saves conflicted, not {writers - 1}")
        loaded = await store.load_workflow(record.id)
        _expect(loaded.version == 2, f"after the race the version is {loaded.version}, not 2")
        _expect(
            dict(loaded.state) == {"writer": won[0]},
            f"the stored state {loaded.state} is not the winner's ({won[0]})",
        )


@_check
async def _check_workflow_save_unknown(factory: _Factory) -> None:
    record = WorkflowRecord(_name("workflow"), _name("name"), "RUNNING", {}, version=1)
    async with factory() as store:
        await _expect_raises(
            WorkflowNotFound, lambda: store.save_workflow(record), "save_workflow of an unknown id"
        )
        await _expect_raises(
            WorkflowNotFound, lambda: store.load_workflow(record.id), "load after a refused save"
        )


@_check
async def _check_workflow_load_unknown(factory: _Factory) -> None:
    unknown = _name("workflow")
    async with factory() as store:
        error = await _expect_raises(
            WorkflowNotFound, lambda: store.load_workflow(unknown), "load_workflow of an unknown id"
        )
        _expect(isinstance(error, NotFound), "WorkflowNotFound is not a NotFound")
        _expect(isinstance(error, StoreError), "WorkflowNotFound is not a StoreError")


@_check
async def _check_workflow_list_by_status(factory: _Factory) -> None:
    name = _name("name")
    running, waiting, done = _name("RUNNING"), _name("WAITING"), _name("DONE")
    async with factory() as store:
        r1, _ = await store.create_workflow(_workflow(name, running))
        r2, _ = await store.create_workflow(_workflow(name, running))
        w1, _ = await store.create_workflow(_workflow(name, waiting))
        d1, _ = await store.create_workflow(_workflow(name, done))
        cases: list[tuple[list[str] | set[str] | tuple[str, ...], list[str]]] = [
            ([running], [r1.id, r2.id]),
            ([running, waiting], [r1.id, r2.id, w1.id]),
            ({waiting, done}, [w1.id, d1.id]),
            ((done,), [d1.id]),
            ([running, waiting, done], [r1.id, r2.id, w1.id, d1.id]),
            ([], []),
            ([_name("UNKNOWN")], []),
        ]
        for statuses, expected in cases:
            got = _ids(await store.list_workflows(status=statuses, name=name))
            _expect(got == expected, f"list_workflows(status={statuses}) returned {got}")
        await store.save_workflow(WorkflowRecord(r1.id, name, done, {}, r1.version))
        got = _ids(await store.list_workflows(status=[done], name=name))
        _expect(got == [r1.id, d1.id], f"after a status change, status={done!r} gave {got}")
        got = _ids(await store.list_workflows(status=[running], name=name))
        _expect(got == [r2.id], f"after a status change, status={running!r} gave {got}")


async def _created_apart(store: StateStore, record: WorkflowRecord) -> WorkflowRecord:
    """Create a record after a pause, so that its times differ from the last one's."""
    await anyio.sleep(0.01)
    stored, _ = await store.create_workflow(record)
    return stored


@_check
async def _check_workflow_prune_only_older_and_asked(factory: _Factory) -> None:
    name = _name("name")
    done, failed, running = _name("COMPLETED"), _name("FAILED"), _name("RUNNING")
    async with factory() as store:
        old_done = await _created_apart(store, _workflow(name, done))
        old_failed = await _created_apart(store, _workflow(name, failed))
        old_running = await _created_apart(store, _workflow(name, running))
        other_name = _name("name")
        other_running = await _created_apart(store, _workflow(other_name, running))
        young_done = await _created_apart(store, _workflow(name, done))
        cutoff = young_done.updated_at
        _expect(cutoff is not None, "a created record has no updated_at")
        assert cutoff is not None
        await _expect_raises(
            StoreError,
            lambda: store.prune_workflows(cutoff.replace(tzinfo=None), statuses=[done]),
            "prune_workflows of a naive datetime",
        )
        removed = await store.prune_workflows(cutoff, statuses=[done])
        _expect(removed == 1, f"prune_workflows of one older record returned {removed}")
        got = _ids(await store.list_workflows(name=name))
        expected = [old_failed.id, old_running.id, young_done.id]
        _expect(got == expected, f"after a prune of {done!r} the records are {got}")
        await _expect_raises(
            WorkflowNotFound,
            lambda: store.load_workflow(old_done.id),
            "load_workflow of a pruned record",
        )
        removed = await store.prune_workflows(cutoff, statuses=[])
        _expect(removed == 0, f"prune_workflows of no status returned {removed}")
        removed = await store.prune_workflows(cutoff, statuses=(done, failed))
        _expect(removed == 1, f"prune_workflows of two statuses returned {removed}")
        got = _ids(await store.list_workflows(name=name))
        _expect(got == [old_running.id, young_done.id], f"after a prune the records are {got}")
        removed = await store.prune_workflows(cutoff, statuses=running, name=_name("name"))
        _expect(removed == 0, f"prune_workflows of an unknown name returned {removed}")
        removed = await store.prune_workflows(cutoff, statuses=running, name=name)
        _expect(removed == 1, f"prune_workflows of a status named alone returned {removed}")
        got = _ids(await store.list_workflows(status=[running]))
        _expect(got == [other_running.id], f"a prune of one name removed another's: {got}")
        removed = await store.prune_workflows(cutoff, statuses=running)
        _expect(removed == 1, f"prune_workflows of every name returned {removed}")
        got = _ids(await store.list_workflows(name=name))
        _expect(got == [young_done.id], f"a prune removed a record updated at its cutoff: {got}")


@_check
async def _check_workflow_prune_limit(factory: _Factory) -> None:
    name, status = _name("name"), _name("COMPLETED")
    async with factory() as store:
        first = await _created_apart(store, _workflow(name, status))
        for _ in range(2):
            await _created_apart(store, _workflow(name, status))
        await anyio.sleep(0.01)
        saved = await store.save_workflow(
            WorkflowRecord(first.id, name, status, {"n": 2}, first.version)
        )
        _expect(saved.updated_at is not None, "a saved record has no updated_at")
        assert saved.updated_at is not None
        cutoff = saved.updated_at + timedelta(seconds=1)
        await _expect_raises(
            StoreError,
            lambda: store.prune_workflows(cutoff, statuses=[status], limit=0),
            "prune_workflows(limit=0)",
        )
        removed = await store.prune_workflows(cutoff, statuses=[status], limit=2)
        _expect(removed == 2, f"a prune of at most 2 records returned {removed}")
        got = _ids(await store.list_workflows(name=name))
        _expect(
            got == [first.id],
            f"a prune with a limit left {got}, not the most recently updated record",
        )
        removed = await store.prune_workflows(cutoff, statuses=[status], limit=2)
        _expect(removed == 1, f"the last prune returned {removed}, not 1")
        removed = await store.prune_workflows(cutoff, statuses=[status], limit=2)
        _expect(removed == 0, f"a prune of nothing left returned {removed}")


@_check
async def _check_workflow_list_by_name(factory: _Factory) -> None:
    first, second = _name("name"), _name("name")
    status = _name("RUNNING")
    async with factory() as store:
        a, _ = await store.create_workflow(_workflow(first, status))
        b, _ = await store.create_workflow(_workflow(second, status))
        c, _ = await store.create_workflow(_workflow(first, "COMPLETED"))
        got = _ids(await store.list_workflows(name=first))
        _expect(got == [a.id, c.id], f"list_workflows(name=...) returned {got}")
        got = _ids(await store.list_workflows(name=second))
        _expect(got == [b.id], f"list_workflows(name=...) returned {got}")
        got = _ids(await store.list_workflows(name=first, status=[status]))
        _expect(got == [a.id], f"list_workflows(name=..., status=...) returned {got}")
        got = _ids(await store.list_workflows(status=[status]))
        _expect(got == [a.id, b.id], f"list_workflows(status=...) without a name returned {got}")
        got = _ids(await store.list_workflows(name=_name("name")))
        _expect(got == [], f"list_workflows of an unknown name returned {got}")


@_check
async def _check_workflow_list_limit(factory: _Factory) -> None:
    name = _name("name")
    async with factory() as store:
        ids = []
        for _ in range(5):
            record, _ = await store.create_workflow(_workflow(name))
            ids.append(record.id)
        got = _ids(await store.list_workflows(name=name, limit=2))
        _expect(got == ids[:2], f"limit=2 returned {got}, not the 2 oldest {ids[:2]}")
        got = _ids(await store.list_workflows(name=name, limit=0))
        _expect(got == [], f"limit=0 returned {got}")
        got = _ids(await store.list_workflows(name=name, limit=None))
        _expect(got == ids, f"limit=None returned {got}, not all 5")


@_check
async def _check_workflow_list_oldest_first(factory: _Factory) -> None:
    name = _name("name")
    async with factory() as store:
        created = []
        for _ in range(3):
            record, _ = await store.create_workflow(_workflow(name))
            created.append(record)
            await anyio.sleep(0.002)
        first = created[0]
        # Saving the oldest makes it the most recently updated; the order must not change.
        await store.save_workflow(WorkflowRecord(first.id, name, "RUNNING", {"x": 1}, 1))
        listed = await store.list_workflows(name=name)
        _expect(
            _ids(listed) == _ids(created),
            f"list_workflows is not oldest (by created_at) first: {_ids(listed)}",
        )
        stamps = [record.created_at for record in listed]
        _expect(
            all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(stamps)),
            f"created_at is not ascending in list_workflows: {stamps}",
        )


@_check
async def _check_workflow_state_round_trips(factory: _Factory) -> None:
    async with factory() as store:
        record = _workflow(_name("name"), state=_NESTED_STATE)
        stored, _ = await store.create_workflow(record)
        _expect(stored.state == _NESTED_STATE, f"create_workflow returned {_short(stored.state)}")
        loaded = await store.load_workflow(record.id)
        _expect(loaded.state == _NESTED_STATE, f"load_workflow returned {_short(loaded.state)}")
        changed = {**_NESTED_STATE, "steps": [*_NESTED_STATE["steps"], {"name": "ship"}]}
        saved = await store.save_workflow(
            WorkflowRecord(record.id, record.name, "RUNNING", changed, stored.version)
        )
        _expect(saved.state == changed, f"save_workflow returned {_short(saved.state)}")
        loaded = await store.load_workflow(record.id)
        _expect(loaded.state == changed, f"load after save returned {_short(loaded.state)}")
        listed = await store.list_workflows(name=record.name)
        _expect(
            [r.state for r in listed] == [changed],
            f"list_workflows returned {_short([r.state for r in listed])}",
        )
        big = loaded.state["numbers"]["big"]
        _expect(type(big) is int and big == 2**53 + 1, f"a big integer came back as {big!r}")


@_check
async def _check_workflow_state_must_be_json(factory: _Factory) -> None:
    async with factory() as store:
        record, _ = await store.create_workflow(_workflow(_name("name"), state={"ok": True}))
        bad_states: list[dict[str, Any]] = [{"x": object()}, {"x": [1, {"y": object()}]}]
        for bad in bad_states:
            await _expect_raises(
                StoreError,
                functools.partial(store.create_workflow, _workflow(record.name, state=bad)),
                f"create_workflow with the state {bad!r}",
            )
            changed = WorkflowRecord(record.id, record.name, "RUNNING", bad, record.version)
            await _expect_raises(
                StoreError,
                functools.partial(store.save_workflow, changed),
                f"save_workflow with the state {bad!r}",
            )
        loaded = await store.load_workflow(record.id)
        _expect(loaded == record, f"a refused save changed the record: {_short(loaded)}")
        listed = await store.list_workflows(name=record.name)
        _expect(_ids(listed) == [record.id], "a refused create_workflow left a record behind")


@_check
async def _check_records_not_aliased(factory: _Factory) -> None:
    name = _name("name")
    state: dict[str, Any] = {"items": [1, 2], "nested": {"key": "value", "list": [{"a": 1}]}}
    original: dict[str, Any] = {"items": [1, 2], "nested": {"key": "value", "list": [{"a": 1}]}}
    consumer, topic = _name("consumer"), _name("topic")
    headers = {"h": "1"}
    letter = DeadLetter(
        id=_name("letter"),
        consumer=consumer,
        topic=topic,
        body=b"body",
        headers=headers,
        error_type="ValueError",
        error="boom",
        attempts=1,
        failed_at=datetime.now(UTC),
    )
    async with factory() as store:
        record = WorkflowRecord(_name("workflow"), name, "RUNNING", state)
        stored, _ = await store.create_workflow(record)
        _scribble(state)
        _expect(
            (await store.load_workflow(record.id)).state == original,
            "changing the caller's state after create_workflow changed the stored state",
        )
        _scribble(stored.state)
        _expect(
            (await store.load_workflow(record.id)).state == original,
            "changing the state returned by create_workflow changed the stored state",
        )
        _scribble((await store.load_workflow(record.id)).state)
        _expect(
            (await store.load_workflow(record.id)).state == original,
            "changing the state returned by load_workflow changed the stored state",
        )
        new_state: dict[str, Any] = {"items": [3]}
        saved = await store.save_workflow(WorkflowRecord(record.id, name, "RUNNING", new_state, 1))
        _scribble(new_state)
        _scribble(saved.state)
        _expect(
            (await store.load_workflow(record.id)).state == {"items": [3]},
            "changing a state after save_workflow (given or returned) changed the stored state",
        )
        for listed in await store.list_workflows(name=name):
            _scribble(listed.state)
        _expect(
            (await store.load_workflow(record.id)).state == {"items": [3]},
            "changing the state returned by list_workflows changed the stored state",
        )
        await store.add_dead_letter(letter)
        headers["h"] = "changed"
        got = await store.get_dead_letter(letter.id)
        _expect(
            dict(got.headers) == {"h": "1"},
            "changing the caller's headers after add_dead_letter changed the kept letter",
        )
        _scribble(got.headers)
        for listed_letter in await store.list_dead_letters(consumer=consumer):
            _scribble(listed_letter.headers)
        got = await store.get_dead_letter(letter.id)
        _expect(
            dict(got.headers) == {"h": "1"},
            "changing the headers of a returned letter changed the kept letter",
        )


@_check
async def _check_datetimes_are_utc(factory: _Factory) -> None:
    plus_five = timezone(timedelta(hours=5, minutes=30))
    failed_at = datetime(2024, 3, 10, 17, 45, 30, 123456, tzinfo=plus_five)
    consumer, topic = _name("consumer"), _name("topic")
    letter = _letter(consumer, topic, failed_at=failed_at)
    async with factory() as store:
        before = datetime.now(UTC)
        stored, _ = await store.create_workflow(_workflow(_name("name")))
        saved = await store.save_workflow(
            WorkflowRecord(stored.id, stored.name, "RUNNING", {}, stored.version)
        )
        loaded = await store.load_workflow(stored.id)
        listed = await store.list_workflows(name=stored.name)
        for what, record in [
            ("create_workflow", stored),
            ("save_workflow", saved),
            ("load_workflow", loaded),
            ("list_workflows", listed[0]),
        ]:
            for field in ("created_at", "updated_at"):
                value = getattr(record, field)
                _expect(_is_utc(value), f"{field} from {what} is not UTC: {value!r}")
                _expect(
                    abs(value - before) < timedelta(minutes=5),
                    f"{field} from {what} is {value}, far from now ({before}): local time?",
                )
        await store.add_dead_letter(letter)
        for what, got in [
            ("get_dead_letter", await store.get_dead_letter(letter.id)),
            ("list_dead_letters", (await store.list_dead_letters(consumer=consumer))[0]),
        ]:
            _expect(_is_utc(got.failed_at), f"failed_at from {what} is not UTC: {got.failed_at!r}")
            _expect(
                got.failed_at == failed_at,
                f"failed_at from {what} is {got.failed_at}, not the instant {failed_at}",
            )


# -- workflow history, ownership and listing pages --------------------------------------

_OWNER_LEASE = 30.0


def _owned(name: str, owner: str, status: str = "RUNNING") -> WorkflowRecord:
    return WorkflowRecord(
        id=_name("workflow"), name=name, status=status, state={"n": 1}, owner=owner
    )


def _saved(record: WorkflowRecord, status: str, *, owner: str | None = None) -> WorkflowRecord:
    """``record`` changed to ``status``, held by ``owner``, at the version it was read."""
    return WorkflowRecord(
        id=record.id,
        name=record.name,
        status=status,
        state=dict(record.state),
        version=record.version,
        owner=owner,
    )


@_check
async def _check_workflow_history_is_appended(factory: _Factory) -> None:
    first = [[1767225600000, "workflow_started"], [1767225600001, "step_started", "a", 1]]
    record = WorkflowRecord(
        id=_name("workflow"), name=_name("name"), status="RUNNING", state={}, history=first
    )
    async with factory() as store:
        stored, _ = await store.create_workflow(record)
        _expect(stored.history == (), "create_workflow returned a record with history")
        saved = await store.save_workflow(
            WorkflowRecord(record.id, record.name, "RUNNING", {"n": 2}, stored.version),
            history=[[1767225600002, "step_succeeded", "a", 1, None, "détail ✓"]],
        )
        _expect(saved.history == (), "save_workflow returned a record with history")
        saved = await store.save_workflow(
            WorkflowRecord(record.id, record.name, "RUNNING", {"n": 3}, saved.version)
        )
        loaded = await store.load_workflow(record.id)
        want = [*first, [1767225600002, "step_succeeded", "a", 1, None, "détail ✓"]]
        _expect(
            [list(e) for e in loaded.history] == want,
            f"the history after create and two saves is {_short(loaded.history)}, not {want}",
        )
        listed = await store.list_workflows(name=record.name)
        _expect([r.history for r in listed] == [()], "list_workflows returned records with history")
        await _expect_raises(
            ConcurrencyConflict,
            lambda: store.save_workflow(
                WorkflowRecord(record.id, record.name, "X", {}, version=1),
                history=[[1767225600003, "stale"]],
            ),
            "a stale save with history",
        )
        again = await store.load_workflow(record.id)
        _expect(len(again.history) == 3, "a refused save appended its history all the same")


@_check
async def _check_workflow_owner_holds_a_lease(factory: _Factory) -> None:
    name, owner, other = _name("name"), _name("owner"), _name("owner")
    async with factory() as store:
        before = datetime.now(UTC)
        stored, _ = await store.create_workflow(_owned(name, owner), lease=_OWNER_LEASE)
        _expect(stored.owner == owner, f"create_workflow recorded owner {stored.owner!r}")
        _expect(
            stored.lease_until is not None
            and _is_utc(stored.lease_until)
            and before + timedelta(seconds=20) < stored.lease_until
            and stored.lease_until < before + timedelta(seconds=90),
            f"a {_OWNER_LEASE}s lease runs out at {stored.lease_until}, created at {before}",
        )
        got = await store.claim_workflows(name, other, lease=_OWNER_LEASE)
        _expect(got == [], f"another owner claimed a workflow whose lease holds: {_ids(got)}")
        got_one = await store.claim_workflow(stored.id, other, lease=_OWNER_LEASE)
        _expect(got_one is None, "claim_workflow took a workflow whose lease holds")
        await _expect_raises(
            StoreError,
            lambda: store.create_workflow(_owned(name, owner)),
            "create_workflow of an owned record without lease=",
        )
        await _expect_raises(
            StoreError,
            lambda: store.save_workflow(_saved(stored, "RUNNING", owner=owner), lease=0),
            "save_workflow of an owned record with lease=0",
        )
        done = await store.save_workflow(_saved(stored, "COMPLETED"))
        _expect(
            (done.owner, done.lease_until) == (None, None),
            f"a save without an owner left owner={done.owner!r}, lease_until={done.lease_until}",
        )


@_check
async def _check_workflow_expired_lease_is_taken_over_and_fenced(factory: _Factory) -> None:
    name, owner, other = _name("name"), _name("owner"), _name("owner")
    async with factory() as store:
        stored, _ = await store.create_workflow(_owned(name, owner), lease=0.05)
        await anyio.sleep(0.3)
        got = await store.claim_workflows(name, other, lease=_OWNER_LEASE)
        _expect(_ids(got) == [stored.id], f"an expired lease was not claimed: {_ids(got)}")
        claimed = got[0]
        _expect(claimed.owner == other, f"the claimed record has owner {claimed.owner!r}")
        _expect(
            claimed.version == stored.version + 1,
            f"claiming left version {claimed.version} (was {stored.version}): a stale "
            "owner would not be fenced",
        )
        await _expect_raises(
            ConcurrencyConflict,
            lambda: store.save_workflow(_saved(stored, "RUNNING", owner=owner), lease=_OWNER_LEASE),
            "the checkpoint of the owner whose lease was taken over",
        )
        renewed = await store.renew_leases(owner, [stored.id], lease=_OWNER_LEASE)
        _expect(renewed == {}, f"the fenced owner renewed a lease it lost: {renewed}")
        saved = await store.save_workflow(
            _saved(claimed, "RUNNING", owner=other), lease=_OWNER_LEASE
        )
        _expect(saved.owner == other, "the new owner's checkpoint failed")


@_check
async def _check_workflow_claim_picks_free_unfinished_oldest_first(factory: _Factory) -> None:
    name, owner, me = _name("name"), _name("owner"), _name("owner")
    async with factory() as store:
        free = [await _created_apart(store, _workflow(name)) for _ in range(3)]
        compensating = await _created_apart(store, _workflow(name, "COMPENSATING"))
        for status in ("COMPLETED", "COMPENSATED", "FAILED"):
            await store.create_workflow(_workflow(name, status))
        await store.create_workflow(_owned(name, owner), lease=_OWNER_LEASE)
        await store.create_workflow(_workflow(_name("name")))  # another orchestrator's
        mine_running, _ = await store.create_workflow(_owned(name, me), lease=_OWNER_LEASE)
        mine_left, _ = await store.create_workflow(_owned(name, me), lease=_OWNER_LEASE)
        first = await store.claim_workflows(name, me, lease=_OWNER_LEASE, limit=2)
        _expect(
            _ids(first) == _ids(free[:2]),
            f"claim_workflows(limit=2) took {_ids(first)}, not the two oldest free",
        )
        running = [mine_running.id, *_ids(first)]  # what the caller runs
        rest = await store.claim_workflows(name, me, lease=_OWNER_LEASE, exclude=running)
        want = [free[2].id, compensating.id, mine_left.id]
        _expect(
            sorted(_ids(rest)) == sorted(want),
            f"claim_workflows took {_ids(rest)}; the free unfinished ones were {want} "
            "(its own, not excluded, included)",
        )
        _expect(all(r.owner == me for r in rest), "claimed records name another owner")
        running += _ids(rest)
        none = await store.claim_workflows(name, me, lease=_OWNER_LEASE, exclude=running)
        _expect(none == [], f"a second claim took workflows held or run: {_ids(none)}")
        await _expect_raises(
            StoreError,
            lambda: store.claim_workflows(name, me, lease=_OWNER_LEASE, limit=0),
            "claim_workflows(limit=0)",
        )


@_check
async def _check_workflow_claim_never_takes_an_excluded_id(factory: _Factory) -> None:
    name, me = _name("name"), _name("owner")
    async with factory() as store:
        lapsed, _ = await store.create_workflow(_owned(name, me), lease=0.05)
        await anyio.sleep(0.2)  # its lease lapsed, but the caller still runs it
        got = await store.claim_workflows(name, me, lease=_OWNER_LEASE, exclude=[lapsed.id])
        _expect(got == [], f"claim_workflows took an excluded id whose lease lapsed: {_ids(got)}")
        got = await store.claim_workflows(
            name, _name("owner"), lease=_OWNER_LEASE, exclude=[lapsed.id]
        )
        _expect(got == [], f"claim_workflows took an excluded id: {_ids(got)}")


@_check
async def _check_workflow_concurrent_claims_never_share(factory: _Factory) -> None:
    name = _name("name")
    claimed: dict[str, list[str]] = {}
    async with factory() as store:
        ids = {(await store.create_workflow(_workflow(name)))[0].id for _ in range(24)}

        async def claimer(owner: str) -> None:
            mine: list[str] = []  # what this owner runs
            while True:
                got = await store.claim_workflows(
                    name, owner, lease=_OWNER_LEASE, limit=3, exclude=mine
                )
                if not got:
                    return
                mine.extend(_ids(got))
                for record in got:
                    claimed.setdefault(record.id, []).append(owner)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(claimer, _name("owner"))
    twice = {wid: owners for wid, owners in claimed.items() if len(owners) > 1}
    _expect(not twice, f"workflows claimed by several owners at once: {twice}")
    _expect(set(claimed) == ids, f"{len(ids - set(claimed))} free workflow(s) were not claimed")


@_check
async def _check_workflow_renew_and_release(factory: _Factory) -> None:
    name, owner, other = _name("name"), _name("owner"), _name("owner")
    async with factory() as store:
        a, _ = await store.create_workflow(_owned(name, owner), lease=0.2)
        b, _ = await store.create_workflow(_owned(name, owner), lease=_OWNER_LEASE)
        unknown = _name("workflow")
        renewed = await store.renew_leases(owner, [a.id, b.id, unknown], lease=_OWNER_LEASE)
        _expect(
            renewed == {a.id: False, b.id: False},
            f"renew_leases answered {renewed}, not both held and no cancel requested",
        )
        await anyio.sleep(0.4)
        got = await store.claim_workflows(name, other, lease=_OWNER_LEASE)
        _expect(got == [], f"a renewed lease was claimed: {_ids(got)}")
        renewed = await store.renew_leases(other, [a.id], lease=_OWNER_LEASE)
        _expect(renewed == {}, f"renew_leases renewed another owner's lease: {renewed}")
        loaded = await store.load_workflow(a.id)
        _expect(loaded.version == a.version, f"renewing changed the version to {loaded.version}")
        await store.release_workflows(other, [a.id])  # not its own: no effect
        await store.release_workflows(owner, [a.id])
        released = await store.load_workflow(a.id)
        _expect(
            (released.owner, released.lease_until) == (None, None),
            f"release_workflows left owner={released.owner!r}",
        )
        _expect(released.version == a.version, "releasing changed the version")
        got = await store.claim_workflows(name, other, lease=_OWNER_LEASE)
        _expect(_ids(got) == [a.id], f"after release, claim_workflows took {_ids(got)}")
        renewed = await store.renew_leases(owner, [a.id, b.id], lease=_OWNER_LEASE)
        _expect(renewed == {b.id: False}, f"after losing one lease, renew answered {renewed}")


@_check
async def _check_workflow_claims_need_an_owner_and_take_one_id_as_one(factory: _Factory) -> None:
    """Claims and renewals refuse a missing owner; one string passed for ids is one id."""
    name, owner = _name("name"), _name("owner")
    async with factory() as store:
        a, _ = await store.create_workflow(_owned(name, owner), lease=_OWNER_LEASE)
        nobody: Any = None
        await _expect_raises(
            StoreError,
            lambda: store.claim_workflows(name, nobody, lease=_OWNER_LEASE),
            "claim_workflows with owner=None",
        )
        await _expect_raises(
            StoreError,
            lambda: store.claim_workflow(a.id, nobody, lease=_OWNER_LEASE),
            "claim_workflow with owner=None",
        )
        await _expect_raises(
            StoreError,
            lambda: store.renew_leases(nobody, [a.id], lease=_OWNER_LEASE),
            "renew_leases with owner=None",
        )
        renewed = await store.renew_leases(owner, a.id, lease=_OWNER_LEASE)
        _expect(renewed == {a.id: False}, f"renew_leases of one id as a string: {renewed}")
        await store.release_workflows(owner, a.id)
        released = await store.load_workflow(a.id)
        _expect(released.owner is None, "release_workflows of one id as a string kept its owner")


@_check
async def _check_workflow_lapsed_lease_is_renewed_if_unclaimed(factory: _Factory) -> None:
    name, owner = _name("name"), _name("owner")
    async with factory() as store:
        a, _ = await store.create_workflow(_owned(name, owner), lease=0.05)
        await anyio.sleep(0.2)
        renewed = await store.renew_leases(owner, [a.id], lease=_OWNER_LEASE)
        _expect(renewed == {a.id: False}, f"a lapsed, unclaimed lease was not renewed: {renewed}")
        got = await store.claim_workflows(name, _name("owner"), lease=_OWNER_LEASE)
        _expect(got == [], f"a renewed lease was claimed: {_ids(got)}")


@_check
async def _check_workflow_claim_one(factory: _Factory) -> None:
    name, owner, other = _name("name"), _name("owner"), _name("owner")
    async with factory() as store:
        held, _ = await store.create_workflow(_owned(name, owner), lease=0.1)
        done, _ = await store.create_workflow(_workflow(name, "COMPLETED"))
        got = await store.claim_workflow(done.id, other, lease=_OWNER_LEASE)
        _expect(got is None, "claim_workflow took a finished workflow")
        got = await store.claim_workflow(held.id, other, lease=_OWNER_LEASE)
        _expect(got is None, "claim_workflow took a workflow whose lease holds")
        await anyio.sleep(0.3)
        got = await store.claim_workflow(held.id, other, lease=_OWNER_LEASE)
        _expect(
            got is not None and got.owner == other and got.version == held.version + 1,
            f"claim_workflow of an expired lease returned {_short(got)}",
        )
        await _expect_raises(
            WorkflowNotFound,
            lambda: store.claim_workflow(_name("workflow"), other, lease=_OWNER_LEASE),
            "claim_workflow of an unknown id",
        )


@_check
async def _check_workflow_cancel_request(factory: _Factory) -> None:
    name, owner = _name("name"), _name("owner")
    async with factory() as store:
        running, _ = await store.create_workflow(_owned(name, owner), lease=_OWNER_LEASE)
        _expect(not running.cancel_requested, "a new workflow has a cancel request")
        asked = await store.request_cancel(running.id)
        _expect(asked.cancel_requested, "request_cancel did not set cancel_requested")
        _expect(asked.version == running.version, "request_cancel changed the version")
        renewed = await store.renew_leases(owner, [running.id], lease=_OWNER_LEASE)
        _expect(renewed == {running.id: True}, f"renew_leases answered {renewed}")
        saved = await store.save_workflow(
            _saved(running, "RUNNING", owner=owner), lease=_OWNER_LEASE
        )
        _expect(saved.cancel_requested, "a RUNNING checkpoint dropped the cancel request")
        turned = await store.save_workflow(
            _saved(saved, "COMPENSATING", owner=owner), lease=_OWNER_LEASE
        )
        _expect(not turned.cancel_requested, "a COMPENSATING checkpoint kept the cancel request")
        finished, _ = await store.create_workflow(_workflow(name, "COMPLETED"))
        left = await store.request_cancel(finished.id)
        _expect(not left.cancel_requested, "request_cancel flagged a COMPLETED workflow")
        await _expect_raises(
            WorkflowNotFound,
            lambda: store.request_cancel(_name("workflow")),
            "request_cancel of an unknown id",
        )


@_check
async def _check_workflow_list_pages_by_cursor(factory: _Factory) -> None:
    name = _name("name")
    async with factory() as store:
        made = [await _created_apart(store, _workflow(name)) for _ in range(5)]
        seen: list[str] = []
        after: str | None = None
        for _ in range(5):
            page = await store.list_workflows(name=name, limit=2, after=after)
            if not page:
                break
            seen.extend(_ids(page))
            after = page[-1].cursor
        _expect(seen == _ids(made), f"paging by cursor listed {seen}, not {_ids(made)}")
        for bad in ("", "nonsense", "2026-01-01T00:00:00/", "2026-01-01T00:00:00/naive"):
            await _expect_raises(
                StoreError,
                lambda bad=bad: store.list_workflows(name=name, after=bad),  # type: ignore[misc]
                f"list_workflows(after={bad!r})",
            )


@_check
async def _check_workflow_list_pages_of_several_statuses(factory: _Factory) -> None:
    name, other = _name("name"), _name("name")
    first, second, third = _name("RUNNING"), _name("FAILED"), _name("DONE")
    async with factory() as store:
        made = [
            await _created_apart(store, _workflow(name, status))
            for status in (first, second, third, second, first, first, third, second)
        ]
        await store.create_workflow(_workflow(other, first))  # another name: never listed
        statuses = [second, first]
        wanted = [r.id for r in made if r.status in statuses]
        for size in (1, 2, 3, 10):
            seen: list[str] = []
            after: str | None = None
            for _ in range(len(made) + 1):
                page = await store.list_workflows(
                    status=statuses, name=name, limit=size, after=after
                )
                _expect(len(page) <= size, f"a page of {size} held {len(page)} records")
                if not page:
                    break
                seen.extend(_ids(page))
                after = page[-1].cursor
            _expect(
                seen == wanted,
                f"paging status={statuses} by {size} listed {seen}, not {wanted} (oldest first)",
            )
        one = made[2]
        got = _ids(await store.list_workflows(status=[third, second], name=name, after=one.cursor))
        expected = [r.id for r in made[3:] if r.status in (third, second)]
        _expect(got == expected, f"listing after a cursor without a limit gave {got}")


@_check
async def _check_workflow_count_by_name_and_status(factory: _Factory) -> None:
    name, other = _name("name"), _name("name")
    running, done = _name("RUNNING"), _name("DONE")
    async with factory() as store:
        for record_name, status in ((name, running), (name, running), (name, done), (other, done)):
            await store.create_workflow(_workflow(record_name, status))

        async def counts() -> dict[tuple[str, str], int]:
            got = await store.count_workflows()
            _expect(isinstance(got, dict), f"count_workflows returned {_short(got)}, not a dict")
            return {key: count for key, count in got.items() if key[0] in (name, other)}

        got = await counts()
        expected = {(name, running): 2, (name, done): 1, (other, done): 1}
        _expect(got == expected, f"count_workflows gave {got}, not {expected}")
        listed = await store.list_workflows(name=name, status=running, limit=1)
        await store.save_workflow(WorkflowRecord(listed[0].id, name, done, {}, listed[0].version))
        got = await counts()
        expected = {(name, running): 1, (name, done): 2, (other, done): 1}
        _expect(got == expected, f"after a status change, count_workflows gave {got}")
        await anyio.sleep(0.01)
        removed = await store.prune_workflows(datetime.now(UTC), statuses=[done], name=name)
        _expect(removed == 2, f"prune_workflows removed {removed} record(s), not 2")
        got = await counts()
        expected = {(name, running): 1, (other, done): 1}
        _expect(got == expected, f"after a prune, count_workflows gave {got} (no zero counts)")


@_check
async def _check_workflow_prune_removes_history(factory: _Factory) -> None:
    name = _name("name")
    record = WorkflowRecord(
        id=_name("workflow"),
        name=name,
        status="COMPLETED",
        state={},
        history=[[1767225600000, "old"]],
    )
    async with factory() as store:
        await store.create_workflow(record)
        await anyio.sleep(0.01)
        removed = await store.prune_workflows(datetime.now(UTC), name=name)
        _expect(removed == 1, f"prune_workflows removed {removed} record(s), not 1")
        again = WorkflowRecord(
            id=record.id, name=name, status="RUNNING", state={}, history=[[1767225600001, "new"]]
        )
        await store.create_workflow(again)
        loaded = await store.load_workflow(record.id)
        _expect(
            [list(e) for e in loaded.history] == [[1767225600001, "new"]],
            f"a pruned workflow's history outlived it: {_short(loaded.history)}",
        )


# -- lifecycle ------------------------------------------------------------------------


@_check
async def _check_closed_store_raises(factory: _Factory) -> None:
    store = factory()
    async with store:
        await store.inbox_claim(_name("consumer"), _name("message"), lease=_LONG_LEASE)
    for what, action in [
        (
            "inbox_claim",
            lambda: store.inbox_claim(_name("consumer"), _name("message"), lease=_LONG_LEASE),
        ),
        ("inbox_complete", lambda: store.inbox_complete(_name("consumer"), _name("message"))),
        ("load_workflow", lambda: store.load_workflow(_name("workflow"))),
        ("list_dead_letters", lambda: store.list_dead_letters(consumer=_name("consumer"))),
    ]:
        error = await _expect_raises(StoreError, action, f"{what} on a closed store")
        _expect(
            not isinstance(error, NotFound),
            f"{what} on a closed store raised {type(error).__name__}, which hides the cause",
        )


@_check
async def _check_enter_is_counted(factory: _Factory) -> None:
    store = factory()
    consumer = _name("consumer")

    def claim() -> Awaitable[Claim]:
        return store.inbox_claim(consumer, _name("message"), lease=_LONG_LEASE)

    async with store:
        async with store:
            await claim()
        got = await claim()  # still open: one user left
        _expect(got == Claim.CLAIMED, f"inbox_claim of a new pair answered {got!r}")
    await _expect_raises(StoreError, claim, "inbox_claim after the last user exited")
    async with store:
        async with store:
            await store.aclose()
            await _expect_raises(
                StoreError, claim, "inbox_claim after aclose() while entered twice"
            )


# The checks of the flow trace and of the waits, for the stores that keep them, in
# modules of their own.
from . import _trace_suite as _trace_suite  # noqa: E402
from . import _wait_suite as _wait_suite  # noqa: E402
