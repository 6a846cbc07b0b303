"""Retry back-off (emailrelay/services/retry.py): delay by message age, give-up age."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emailrelay.config import DEFAULT_GIVE_UP, DEFAULT_RETRY
from emailrelay.services.retry import next_delay, should_give_up

# cumulative ends of the default schedule 60, 300, 900, 3600, 14400
_ENDS = (60, 360, 1260, 4860, 19260)


@pytest.mark.parametrize(
    ("age", "delay"),
    [
        (0, 60),
        (59.999, 60),
        (60, 300),
        (359, 300),
        (360, 900),
        (1259.5, 900),
        (1260, 3600),
        (4859, 3600),
        (4860, 14400),
        (19259, 14400),
        (19260, 14400),  # past the schedule: the last delay, for ever
        (10 * 24 * 3600, 14400),
    ],
)
def test_default_schedule_by_age(age: float, delay: int) -> None:
    assert DEFAULT_RETRY == (60, 300, 900, 3600, 14400)
    assert next_delay(age, DEFAULT_RETRY) == delay


def test_a_message_from_the_future_waits_the_first_delay() -> None:
    # the id's time is the writer's clock: a skewed clock gives a negative age
    assert next_delay(-3600, DEFAULT_RETRY) == 60


def test_empty_and_zero_schedules_retry_at_once() -> None:
    assert next_delay(0, ()) == 0
    assert next_delay(1e9, ()) == 0
    assert next_delay(5, (0,)) == 0
    assert next_delay(5, (0, 0, 0)) == 0


def test_single_delay_schedule() -> None:
    assert next_delay(0, (1,)) == 1
    assert next_delay(0.5, (1,)) == 1
    assert next_delay(1, (1,)) == 1
    assert next_delay(1000, (1,)) == 1


def test_unsorted_schedule_is_followed_in_order() -> None:
    schedule = (300, 60)
    assert next_delay(0, schedule) == 300
    assert next_delay(299, schedule) == 300
    assert next_delay(300, schedule) == 60
    assert next_delay(10_000, schedule) == 60


@given(
    schedule=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8).map(tuple),
    age=st.floats(min_value=-1e7, max_value=1e8, allow_nan=False),
)
def test_delay_is_always_a_schedule_entry(schedule: tuple[int, ...], age: float) -> None:
    assert next_delay(age, schedule) in schedule


@given(
    schedule=st.lists(st.integers(min_value=1, max_value=10**5), min_size=1, max_size=8)
    .map(sorted)
    .map(tuple),
    a=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    b=st.floats(min_value=0, max_value=1e7, allow_nan=False),
)
def test_sorted_schedule_never_shortens_with_age(schedule: tuple[int, ...], a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert next_delay(lo, schedule) <= next_delay(hi, schedule)


@given(age=st.floats(min_value=0, max_value=_ENDS[-1] * 2, allow_nan=False))
def test_retry_time_lands_in_a_later_slot(age: float) -> None:
    # after waiting the delay, the message is at least at the next boundary (no retry storms
    # inside one slot) and never more than one slot past it
    delay = next_delay(age, DEFAULT_RETRY)
    if age < _ENDS[-1]:
        boundary = next(e for e in _ENDS if age < e)
        assert age + delay >= boundary
        assert delay <= boundary  # the slot's own length bounds the wait


@pytest.mark.parametrize(
    ("age", "give_up", "expected"),
    [
        (0, DEFAULT_GIVE_UP, False),
        (DEFAULT_GIVE_UP - 1, DEFAULT_GIVE_UP, False),
        (DEFAULT_GIVE_UP, DEFAULT_GIVE_UP, True),
        (DEFAULT_GIVE_UP + 1, DEFAULT_GIVE_UP, True),
        (10, 10, True),
        (9.99, 10, False),
        (1e12, 0, False),  # 0: never give up
        (1e12, -1, False),
        (-5, 1, False),
    ],
)
def test_should_give_up(age: float, give_up: float, expected: bool) -> None:
    assert should_give_up(age, give_up) is expected


def test_default_give_up_is_five_days() -> None:
    assert DEFAULT_GIVE_UP == 5 * 24 * 3600
    assert not should_give_up(_ENDS[-1], DEFAULT_GIVE_UP)
