"""The engine's side of a wait step: begin waiting, take the message that ends the
wait, follow the wait's policy when it runs out, and park the workflow in the
store until it is due.

A parked workflow is saved ``WAITING`` with no owner and leaves the process
(:class:`Parked`); whichever process runs its orchestrator takes it up again
when it is due (``_waker.py``), and the engine comes back here, where the wait
looks for its message or its time again.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from .._errors import NonRetryableError, StoreError, WaitTimeout
from ._model import WorkflowStatus
from ._state import error_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..stores._waits import Mail, WaitStore
    from ._declare import StepSpec
    from ._engine import Engine
    from ._state import Run, StepState
    from ._waits import WaitSpec

__all__ = ["SHORT_WAIT", "Parked", "Waiting"]

logger = logging.getLogger("flowkit.orchestration")

#: Seconds: a wait due sooner than this is slept in the process (its due time
#: checkpointed first) rather than parked in the store.
SHORT_WAIT = 0.25


class Parked(Exception):
    """The workflow was saved ``WAITING`` and left this process until it is due."""


def _text(seconds: float) -> str:
    return f"{seconds:g}s"


def _when(until: float | None) -> str:
    if until is None:
        return "with no time limit"
    return "until " + datetime.fromtimestamp(until, UTC).isoformat(timespec="milliseconds")


class Waiting:
    """Runs the wait steps of one engine.

    Args:
        engine: the engine whose runs wait.
        store: the store's waits (None: the store keeps none, and a wait
            raises when it is reached).
        due: called with a parked workflow's due time (UTC, or None), so the
            process's waker looks in time.
    """

    def __init__(
        self,
        engine: Engine,
        store: WaitStore | None,
        due: Callable[[datetime | None], None],
    ) -> None:
        self.engine = engine
        self.store = store
        self.due = due

    async def run(self, run: Run, spec: StepSpec) -> bool:
        """Wait at ``spec``: True when the workflow goes on, False when it turned
        back or failed.

        Raises:
            Parked: the workflow was parked in the store.
        """
        wait = spec.wait
        assert wait is not None
        state = run.steps[spec.name]
        if state.status != "waiting":
            failure = self._begin(run, spec, wait, state)
            if failure is not None:
                await self.engine.save(run)
                self.engine.tell_failed(run, state, failure)
                return False
        consumer = f"{run.id}:{spec.name}"
        while True:
            if wait.channel is not None:
                assert state.wait_key is not None
                mail = await self._store().take(
                    self.engine.name, wait.channel, state.wait_key, consumer
                )
                if mail is not None:
                    return await self._received(run, spec, wait, state, mail, consumer)
            until = state.wait_until
            left = math.inf if until is None else until - time.time()
            if left <= 0:
                return await self._ran_out(run, spec, wait, state)
            if left > SHORT_WAIT:
                await self._park(run)
            if len(run.history) > run.saved:
                await self.engine.save(run)  # the due time is checkpointed before sleeping
            await anyio.sleep(left)

    def _store(self) -> WaitStore:
        if self.store is None:
            raise StoreError(f"{self.engine.name}: its store keeps no waiting workflows")
        return self.store

    def _begin(
        self, run: Run, spec: StepSpec, wait: WaitSpec, state: StepState
    ) -> Exception | None:
        """Compute the wait's due time and key, once; the error if that failed
        (the workflow then turns back, or fails past its pivot)."""
        ctx = self.engine.context(run, spec.name, state.attempts)
        try:
            if wait.until is not None:
                target = wait.until(ctx, run.input)
                if not isinstance(target, datetime) or target.utcoffset() is None:
                    raise NonRetryableError(
                        f"the until function of step {spec.name!r} must return a "
                        f"timezone-aware datetime, not {type(target).__name__}"
                        + (" without a time zone" if isinstance(target, datetime) else "")
                    )
                until: float | None = target.timestamp()
            else:
                until = None if wait.duration is None else time.time() + wait.duration
            key = None
            if wait.kind == "signal":
                key = run.id
            elif wait.key is not None:
                value = wait.key(ctx, run.input)
                if value is None:
                    raise NonRetryableError(
                        f"the key of step {spec.name!r} is None: nothing can match it"
                    )
                key = str(value)
        except Exception as exc:
            error = error_of(spec.name, exc)
            state.attempt_failed(error, False, final=True)
            run.event("step_failed", spec.name, state.attempts, error)
            self.engine.give_up(run, spec)
            return exc
        state.wait_begin(until, key)
        run.event("waiting", spec.name, state.attempts, detail=f"for {wait.what} {_when(until)}")
        return None

    async def _received(
        self,
        run: Run,
        spec: StepSpec,
        wait: WaitSpec,
        state: StepState,
        mail: Mail,
        consumer: str,
    ) -> bool:
        action = spec.action
        try:
            assert action.load is not None and action.dump is not None
            result = action.load(mail.body)
            recorded = action.dump(result)
        except Exception as exc:
            count = getattr(exc, "error_count", lambda: 1)()
            failure = NonRetryableError(
                f"the {wait.what} taken by step {spec.name!r} does not match its class "
                f"({count} validation error(s)); it was dropped"
            )
            error = error_of(spec.name, failure)
            state.attempt_failed(error, False, final=True)
            run.event("step_failed", spec.name, state.attempts, error)
            self.engine.give_up(run, spec)
            await self.engine.save(run)
            await self._drop(consumer)
            self.engine.tell_failed(run, state, failure)
            return False
        state.succeed(recorded)
        run.results[spec.name] = result
        run.event("step_succeeded", spec.name, state.attempts, detail=f"took message {mail.id}")
        await self.engine.save(run)
        await self._drop(consumer)
        return True

    async def _drop(self, consumer: str) -> None:
        """Remove a message the checkpoint recorded (pruning removes it otherwise)."""
        try:
            await self._store().drop(self.engine.name, consumer)
        except StoreError as exc:
            logger.warning(
                "%s: could not remove a message taken by %s (pruning will): %s",
                self.engine.name,
                consumer,
                exc,
            )

    async def _ran_out(self, run: Run, spec: StepSpec, wait: WaitSpec, state: StepState) -> bool:
        name = spec.name
        if wait.kind == "timer":
            state.succeed(None)
            run.results[name] = None
            run.event("step_succeeded", name, state.attempts)
            return True
        waited = "" if wait.duration is None else f" {_text(wait.duration)}"
        if wait.on_timeout == "continue":
            state.expire()
            run.event("wait_timed_out", name, state.attempts, detail="went on without it")
            return True
        failure = WaitTimeout(f"step {name!r} waited{waited} for {wait.what}, which did not come")
        error = error_of(name, failure)
        state.attempt_failed(error, False, final=True)
        run.event("wait_timed_out", name, state.attempts, error)
        if wait.on_timeout == "fail":
            run.error = error
            run.fail(f"{failure} (on_timeout='fail')", run.todo_list(), "forward")
            logger.error("%s %s FAILED: %s", self.engine.name, run.id, failure)
        else:
            self.engine.give_up(run, spec)
        await self.engine.save(run)
        self.engine.tell_failed(run, state, failure)
        return False

    async def _park(self, run: Run) -> None:
        """Save the run ``WAITING``, held by nobody, and leave it to the waker.

        Raises:
            Parked: always, once it is saved.
        """
        self._store()
        run.status = WorkflowStatus.WAITING
        await self.engine.save(run)
        self.due(run.wake_at)
        raise Parked(run.id)
