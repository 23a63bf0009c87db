"""The one retry policy: delays, caps, jitter from the seed, the give-up rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upparat.core.backoff import Backoff, unit


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32))
def test_a_draw_is_in_the_unit_interval_and_depends_only_on_seed_and_number(
    seed: int, draw: int
) -> None:
    value = unit(seed, draw)
    assert 0.0 <= value < 1.0
    assert unit(seed, draw) == value


def test_draws_spread_over_the_interval() -> None:
    # A fleet of 10,000 devices (one seed each), first draw: no clumping in a tenth.
    values = [unit(seed, 0) for seed in range(10_000)]
    tenths = [0] * 10
    for value in values:
        tenths[int(value * 10)] += 1
    assert min(tenths) > 850, tenths
    assert max(tenths) < 1150, tenths


def test_without_jitter_the_delay_doubles_up_to_the_cap() -> None:
    policy = Backoff(base=1, cap=60)
    assert [policy.delay(n, seed=0, draw=n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(10_000, seed=0, draw=0) == 60  # no overflow


@given(st.integers(1, 100), st.integers(0, 2**64 - 1), st.integers(0, 1000))
def test_jitter_stays_within_its_fraction_and_the_cap(retry: int, seed: int, draw: int) -> None:
    policy = Backoff(base=2, cap=60, jitter=0.5)
    ceiling = min(60, 2 * 2 ** (retry - 1))
    assert ceiling / 2 <= policy.delay(retry, seed=seed, draw=draw) <= ceiling
    full = Backoff(base=1, cap=120, jitter=1.0)
    assert 0 <= full.delay(retry, seed=seed, draw=draw) <= 120


@given(st.integers(1, 100), st.integers(0, 2**64 - 1), st.integers(0, 1000))
def test_a_floor_holds_whatever_the_jitter_drew(retry: int, seed: int, draw: int) -> None:
    policy = Backoff(base=1, cap=120, jitter=1.0, floor=1.0)
    assert 1.0 <= policy.delay(retry, seed=seed, draw=draw) <= 120
    assert Backoff(base=0.5, cap=1, floor=0.8).delay(1, seed=seed, draw=draw) == 0.8


def test_the_give_up_rule_counts_retries_and_time() -> None:
    by_count = Backoff(base=1, cap=1, retries=3)
    assert [by_count.exhausted(retries=n, elapsed=0) for n in range(5)] == [
        False,
        False,
        False,
        True,
        True,
    ]
    by_time = Backoff(base=1, cap=60, give_up_after=100)
    assert not by_time.exhausted(retries=1000, elapsed=99.9)
    assert by_time.exhausted(retries=0, elapsed=100)
    assert not Backoff(base=1, cap=60).exhausted(retries=10**9, elapsed=1e12)


@pytest.mark.parametrize(
    "fields",
    [
        {"base": 2, "cap": 1},
        {"base": -1, "cap": 1},
        {"base": 1, "cap": 2, "factor": 0.5},
        {"base": 1, "cap": 2, "jitter": 1.5},
        {"base": 1, "cap": 2, "floor": 3},
    ],
)
def test_an_impossible_policy_is_a_bug(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="not a backoff"):
        Backoff(**fields)  # type: ignore[arg-type]
