"""The notify role's doorbells (services/doorbells.py): what another process announced is not rung
again, and nothing else is lost.  Pure: the clock is a counter the test moves."""

from __future__ import annotations

from emailrelay.services.doorbells import Doorbells

WINDOW = 0.125  # (halves add up exactly in binary)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Bells:
    def __init__(self) -> None:
        self.clock = Clock()
        self.rung: list[str] = []
        self.bells = Doorbells(self.rung.append, window=WINDOW, memory=10.0, clock=self.clock)

    def later(self, seconds: float = WINDOW) -> list[str]:
        """Let ``seconds`` pass, ring what is due (as the role's loop does), and say what rang."""
        self.clock.now += seconds
        self.bells.ring_due()
        return self.rung


def test_an_event_nobody_announced_rings_after_the_window() -> None:
    b = Bells()
    b.bells.found("a")
    assert b.bells.next_due() == b.clock.now + WINDOW
    assert b.later(WINDOW / 2) == []  # held for the window
    assert b.later(WINDOW / 2) == ["a"]
    assert b.bells.next_due() is None


def test_an_announcement_within_the_window_answers_for_the_event() -> None:
    b = Bells()
    b.bells.found("a")
    b.bells.announced("a")
    assert b.bells.next_due() is None
    assert b.later() == []


def test_an_announcement_before_the_event_answers_for_it() -> None:
    b = Bells()
    b.bells.announced("a")
    b.bells.found("a")
    assert b.later() == []


def test_one_announcement_answers_for_one_event_only() -> None:
    """The commit was announced; the same id released from .busy later must ring again."""
    b = Bells()
    b.bells.announced("a")
    b.bells.found("a")  # the commit
    b.bells.found("a")  # released back
    assert b.later() == ["a"]
    b.bells.found("a")  # released once more, later
    assert b.later() == ["a", "a"]


def test_two_events_in_one_window_need_two_announcements() -> None:
    """The commit and a quick release in one window: the commit's announcement answers for the
    commit only, and the release still rings."""
    b = Bells()
    b.bells.found("a")  # the commit
    b.bells.found("a")  # released back at once
    b.bells.announced("a")  # the smtp role's, for the commit
    assert b.later() == ["a"]
    b.bells.found("b")
    b.bells.found("b")
    b.bells.announced("b")
    b.bells.announced("b")  # both announced (by whoever released it, too)
    assert b.later() == ["a"]


def test_an_announcement_after_our_ring_is_not_kept_for_the_next_event() -> None:
    b = Bells()
    b.bells.found("a")
    assert b.later() == ["a"]
    b.bells.announced("a")  # late: for the event we already rang
    b.bells.found("a")  # a new event (released)
    assert b.later() == ["a", "a"]


def test_two_events_in_one_window_ring_once_each_in_order() -> None:
    b = Bells()
    b.bells.found("a")
    b.later(WINDOW / 2)
    b.bells.found("a")
    b.bells.found("b")
    assert b.later(WINDOW / 2) == ["a"]  # b's window is not over yet
    assert b.later(WINDOW / 2) == ["a", "b"]


def test_an_old_announcement_is_forgotten() -> None:
    b = Bells()
    b.bells.announced("a")
    b.clock.now += 11
    b.bells.found("a")
    assert b.later() == ["a"]


def test_memory_is_bounded_by_time() -> None:
    b = Bells()
    for i in range(1000):
        b.bells.announced(f"gone{i}")  # announced, and their events never seen here
    b.clock.now += 11
    b.bells.announced("new")
    assert b.bells.remembered == 1
    for i in range(1000):
        b.bells.found(f"ours{i}")
    assert len(b.later()) == 1000
    b.clock.now += 11
    b.bells.found("last")
    b.later()
    assert b.bells.remembered <= 2  # "last" rung, and "new" (forgotten at the next announcement)
