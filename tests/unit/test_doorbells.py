"""The notify role's doorbells (services/doorbells.py): what another process announced is not rung
again, and nothing else is lost.  A real event loop with a short window; the memory's clock is
a counter the test moves."""

from __future__ import annotations

import asyncio

from emailrelay.services.doorbells import Doorbells

WINDOW = 0.02


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _doorbells(rung: list[str], clock: Clock | None = None) -> Doorbells:
    return Doorbells(
        rung.append, asyncio.get_running_loop(), window=WINDOW, memory=10.0, clock=clock or Clock()
    )


async def _after_the_window() -> None:
    await asyncio.sleep(WINDOW * 5)


async def test_an_event_nobody_announced_rings_after_the_window() -> None:
    rung: list[str] = []
    bells = _doorbells(rung)
    bells.found("a")
    assert rung == []  # held for the window
    await _after_the_window()
    assert rung == ["a"]


async def test_an_announcement_within_the_window_answers_for_the_event() -> None:
    rung: list[str] = []
    bells = _doorbells(rung)
    bells.found("a")
    bells.announced("a")
    await _after_the_window()
    assert rung == []


async def test_an_announcement_before_the_event_answers_for_it() -> None:
    rung: list[str] = []
    bells = _doorbells(rung)
    bells.announced("a")
    bells.found("a")
    await _after_the_window()
    assert rung == []


async def test_one_announcement_answers_for_one_event_only() -> None:
    """The commit was announced; the same id released from .busy later must ring again."""
    rung: list[str] = []
    bells = _doorbells(rung)
    bells.announced("a")
    bells.found("a")  # the commit
    bells.found("a")  # released back
    await _after_the_window()
    assert rung == ["a"]
    bells.found("a")  # released once more, later
    await _after_the_window()
    assert rung == ["a", "a"]


async def test_an_announcement_after_our_ring_is_not_kept_for_the_next_event() -> None:
    rung: list[str] = []
    bells = _doorbells(rung)
    bells.found("a")
    await _after_the_window()
    bells.announced("a")  # late: for the event we already rang
    bells.found("a")  # a new event (released)
    await _after_the_window()
    assert rung == ["a", "a"]


async def test_two_events_in_one_window_ring_once() -> None:
    rung: list[str] = []
    bells = _doorbells(rung)
    bells.found("a")
    bells.found("a")
    bells.found("b")
    await _after_the_window()
    assert sorted(rung) == ["a", "b"]


async def test_an_old_announcement_is_forgotten() -> None:
    rung: list[str] = []
    clock = Clock()
    bells = _doorbells(rung, clock)
    bells.announced("a")
    clock.now += 11
    bells.found("a")
    await _after_the_window()
    assert rung == ["a"]


async def test_memory_is_bounded_by_time() -> None:
    rung: list[str] = []
    clock = Clock()
    bells = _doorbells(rung, clock)
    for i in range(1000):
        bells.announced(f"gone{i}")  # announced, and their events never seen here
    clock.now += 11
    bells.announced("new")
    assert bells.remembered == 1
    for i in range(1000):
        bells.found(f"ours{i}")
    await _after_the_window()
    assert len(rung) == 1000
    clock.now += 11
    bells.found("last")
    await _after_the_window()
    assert bells.remembered <= 2  # "last" rung, and "new" (forgotten at the next announcement)


async def test_close_drops_what_is_held() -> None:
    rung: list[str] = []
    bells = _doorbells(rung)
    bells.found("a")
    bells.close()
    await _after_the_window()
    assert rung == []
