"""The crash-loop rule of emailrelay/cli/lifecycle.py, on a clock the test moves."""

from __future__ import annotations

from dataclasses import dataclass

from emailrelay.cli.lifecycle import CRASH_LOOP_EXITS, CRASH_LOOP_SECONDS, Lifecycle, describe_exit


@dataclass
class Watcher:
    """The three things the hooks read of a circus watcher."""

    name: str
    numprocesses: int = 1
    stopping: bool = False

    def is_stopping(self) -> bool:
        return self.stopping

    def is_stopped(self) -> bool:
        return False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lifecycle() -> tuple[Lifecycle, Clock, list[str]]:
    clock, stopped = Clock(), []
    lifecycle = Lifecycle(on_crash_loop=lambda: stopped.append("stop"), clock=clock)
    return lifecycle, clock, stopped


def test_five_exits_in_ten_seconds_is_a_crash_loop() -> None:
    lifecycle, clock, stopped = _lifecycle()
    bus = Watcher("bus")
    for pid in range(CRASH_LOOP_EXITS - 1):
        lifecycle.after_reap(bus, pid, -9)
        clock.now += 2.0
    assert not stopped and lifecycle.crash_loop is None
    lifecycle.after_reap(bus, 99, 1)
    assert stopped == ["stop"] and lifecycle.crash_loop == "bus"


def test_exits_spread_over_more_than_the_window_are_not_a_loop() -> None:
    lifecycle, clock, stopped = _lifecycle()
    for pid in range(3 * CRASH_LOOP_EXITS):
        lifecycle.after_reap(Watcher("smtp"), pid, -9)
        clock.now += CRASH_LOOP_SECONDS / (CRASH_LOOP_EXITS - 1) + 0.1
    assert not stopped


def test_the_limit_is_per_process_and_planned_exits_do_not_count() -> None:
    lifecycle, _, stopped = _lifecycle()
    forward = Watcher("forward", numprocesses=2)
    for pid in range(2 * CRASH_LOOP_EXITS - 1):
        lifecycle.after_reap(forward, pid, -9)
    lifecycle.stopping(500)
    lifecycle.after_reap(forward, 500, 0)  # asked for: a restart or fewer workers
    lifecycle.after_reap(Watcher("smtp", stopping=True), 501, 0)  # the watcher is being stopped
    assert not stopped
    lifecycle.after_reap(forward, 502, -9)
    assert stopped == ["stop"]


def test_restarts_follow_unplanned_exits_only() -> None:
    lifecycle, _, _ = _lifecycle()
    smtp = Watcher("smtp")
    lifecycle.after_reap(smtp, 1, -9)
    assert lifecycle.respawns["smtp"] == 1
    lifecycle.after_spawn(smtp, 2)
    lifecycle.after_spawn(smtp, 3)  # a spawn nobody's exit caused (eg. more workers)
    assert lifecycle.respawns["smtp"] == 0


def test_exit_statuses_in_words() -> None:
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(3) == "exited with status 3"
