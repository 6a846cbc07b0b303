"""The crash-loop rule of emailrelay/cli/lifecycle.py, on a clock the test moves."""

from __future__ import annotations

from dataclasses import dataclass, field

from emailrelay.cli.lifecycle import CRASH_LOOP_EXITS, START_SECONDS, Lifecycle, describe_exit


@dataclass
class Process:
    wid: int


@dataclass
class Watcher:
    """The things the hooks read of a circus watcher."""

    name: str
    stopping: bool = False
    processes: dict[int, Process] = field(default_factory=dict)

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


class Slot:
    """One process slot of a watcher: spawn, live, die (circus calls after_spawn with the process
    in ``watcher.processes``, and after_reap once it has taken it out)."""

    def __init__(self, lifecycle: Lifecycle, clock: Clock, watcher: Watcher, wid: int = 1) -> None:
        self.lifecycle, self.clock, self.watcher, self.wid = lifecycle, clock, watcher, wid
        self.pid = 0

    def spawn(self, pid: int) -> None:
        self.pid = pid
        self.watcher.processes[pid] = Process(self.wid)
        self.lifecycle.after_spawn(self.watcher, pid)

    def die(self, after: float, code: int = -9) -> None:
        self.clock.now += after
        del self.watcher.processes[self.pid]
        self.lifecycle.after_reap(self.watcher, self.pid, code)


def test_five_failed_starts_in_a_row_are_a_crash_loop() -> None:
    lifecycle, clock, stopped = _lifecycle()
    bus = Slot(lifecycle, clock, Watcher("bus"))
    for pid in range(1, CRASH_LOOP_EXITS):
        bus.spawn(pid)
        bus.die(after=1.0, code=1)
    assert not stopped and lifecycle.crash_loop is None
    bus.spawn(99)
    bus.die(after=START_SECONDS - 0.1)
    assert stopped == ["stop"] and lifecycle.crash_loop == "bus"


def test_processes_killed_after_they_started_are_no_crash_loop_however_often() -> None:
    lifecycle, clock, stopped = _lifecycle()
    smtp = Slot(lifecycle, clock, Watcher("smtp"))
    for pid in range(1, 10 * CRASH_LOOP_EXITS):
        smtp.spawn(pid)
        smtp.die(after=START_SECONDS + 0.1)  # eg. the chaos test: a kill every few seconds
    assert not stopped


def test_a_process_that_started_clears_its_slots_count() -> None:
    lifecycle, clock, stopped = _lifecycle()
    notify = Slot(lifecycle, clock, Watcher("notify"))
    for round_ in range(3):
        for pid in range(CRASH_LOOP_EXITS - 1):
            notify.spawn(100 * round_ + pid)
            notify.die(after=0.5)
        notify.spawn(100 * round_ + 99)
        notify.die(after=60.0)
    assert not stopped


def test_the_count_is_per_process_and_planned_exits_do_not_count() -> None:
    lifecycle, clock, stopped = _lifecycle()
    forward = Watcher("forward")
    one, two = Slot(lifecycle, clock, forward, 1), Slot(lifecycle, clock, forward, 2)
    for pid in range(1, CRASH_LOOP_EXITS):  # the two workers fail in turn: 4 failed starts each
        one.spawn(2 * pid)
        two.spawn(2 * pid + 1)
        one.die(after=0.5)
        two.die(after=0.5)
    lifecycle.stopping(500)
    one.spawn(500)
    one.die(after=0.5, code=0)  # asked for: a restart or fewer workers
    one.spawn(501)
    forward.stopping = True  # the watcher is being stopped
    one.die(after=0.5, code=0)
    forward.stopping = False
    assert not stopped
    two.spawn(502)
    two.die(after=0.5)
    assert stopped == ["stop"] and lifecycle.crash_loop == "forward"


def test_restarts_follow_unplanned_exits_only() -> None:
    lifecycle, _, _ = _lifecycle()
    smtp = Watcher("smtp", processes={1: Process(1)})
    lifecycle.after_spawn(smtp, 1)
    lifecycle.after_reap(smtp, 1, -9)
    assert lifecycle.respawns["smtp"] == 1
    lifecycle.after_spawn(smtp, 2)
    lifecycle.after_spawn(smtp, 3)  # a spawn nobody's exit caused (eg. more workers)
    assert lifecycle.respawns["smtp"] == 0


def test_exit_statuses_in_words() -> None:
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(3) == "exited with status 3"
