"""Retry policies: attempts, exponential backoff with jitter, non-retryable errors."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ._errors import DefinitionError, NonRetryableError

__all__ = ["Retry"]


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how fast to try again after a failure.

    The delay before attempt ``n + 1`` is ``backoff * multiplier ** (n - 1)``,
    capped at ``max_backoff``, then spread by ``jitter`` (a fraction: 0.2 means
    the delay is drawn uniformly from 80 % to 120 % of its nominal value).

    Args:
        attempts: total number of attempts, the first included (1 means no
            retry; None: no limit, until an attempt succeeds or raises a
            non-retryable error).
        backoff: delay before the second attempt, in seconds.
        multiplier: growth factor of the delay between attempts.
        max_backoff: upper bound of any delay, in seconds.
        jitter: relative spread of each delay, between 0 and 1.
        non_retryable: exception types that end the retries at once.
            :class:`~flowkit.NonRetryableError` and its subclasses always do.

    Raises:
        DefinitionError: if a value is out of range.
    """

    attempts: int | None = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.2
    non_retryable: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.attempts is not None and (
            isinstance(self.attempts, bool)
            or not isinstance(self.attempts, int)
            or self.attempts < 1
        ):
            raise DefinitionError(
                f"Retry.attempts must be an integer >= 1, or None for no limit; "
                f"got {self.attempts!r}"
            )
        if self.backoff < 0 or self.max_backoff < 0:
            raise DefinitionError("Retry.backoff and Retry.max_backoff must be >= 0")
        if self.multiplier < 1:
            raise DefinitionError(f"Retry.multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise DefinitionError(f"Retry.jitter must be between 0 and 1, got {self.jitter}")
        for exc_type in self.non_retryable:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise DefinitionError(
                    f"Retry.non_retryable must hold exception types, got {exc_type!r}"
                )

    @classmethod
    def never(cls) -> Retry:
        """A policy with a single attempt."""
        return cls(attempts=1)

    def delay(self, attempt: int) -> float:
        """The delay in seconds before the attempt following ``attempt`` (1-based)."""
        nominal = min(self.backoff, self.max_backoff)
        if attempt > 1 and 0 < nominal < self.max_backoff and self.multiplier > 1:
            # Compare in log space first: a large attempt number saturates at
            # max_backoff instead of overflowing a float.
            steps = math.log(self.max_backoff / self.backoff, self.multiplier)
            nominal = (
                self.max_backoff
                if attempt - 1 >= steps
                else min(self.backoff * self.multiplier ** (attempt - 1), self.max_backoff)
            )
        if self.jitter and nominal:
            nominal *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return nominal

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried at all under this policy."""
        return not isinstance(exc, (NonRetryableError, *self.non_retryable))

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based), which raised ``exc``, gets another."""
        return (self.attempts is None or attempt < self.attempts) and self.is_retryable(exc)
