from __future__ import annotations

import pytest

from flowkit import DefinitionError, NonRetryableError, Retry


def test_backoff_grows_exponentially_and_is_capped() -> None:
    retry = Retry(attempts=10, backoff=0.1, multiplier=2, max_backoff=1.0, jitter=0)
    assert [retry.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_spreads_delays_within_bounds() -> None:
    retry = Retry(backoff=1.0, jitter=0.5)
    delays = {retry.delay(1) for _ in range(200)}
    assert len(delays) > 100
    assert all(0.5 <= d <= 1.5 for d in delays)


def test_should_retry_counts_attempts_and_honours_non_retryable() -> None:
    retry = Retry(attempts=3, non_retryable=(KeyError,))
    assert retry.should_retry(RuntimeError(), 1)
    assert retry.should_retry(RuntimeError(), 2)
    assert not retry.should_retry(RuntimeError(), 3)
    assert not retry.should_retry(KeyError(), 1)
    assert not retry.should_retry(NonRetryableError(), 1)
    assert not Retry.never().should_retry(RuntimeError(), 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"backoff": -1},
        {"multiplier": 0.5},
        {"jitter": 2},
        {"non_retryable": (int,)},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(DefinitionError):
        Retry(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("attempt", [1025, 5000, 10**6, 10**18, 2**63])
def test_no_attempt_number_breaks_the_delay(attempt: int) -> None:
    retry = Retry(attempts=10**19, backoff=0.1, multiplier=2, max_backoff=30.0, jitter=0)
    assert retry.delay(attempt) == 30.0


def test_delay_stays_zero_without_backoff_and_flat_without_growth() -> None:
    assert Retry(backoff=0, jitter=0).delay(10**9) == 0
    assert Retry(backoff=0.5, multiplier=1, jitter=0).delay(10**9) == 0.5
    assert Retry(backoff=2.0, max_backoff=1.0, jitter=0).delay(1) == 1.0
