"""The notify role's SpoolWatcher, on a real directory with real inotify (and polling).

Proves: a ring for every way an ``.envelope`` appears (commit rename, direct
creation, unfail of ``.bad``, release of ``.busy``) and for nothing else
(content files, ``.new``, ``.busy``, ``.bad``), with both observers; the
inotify reader's parsing of a buffer of events (once per id, overflow);
:func:`prepare` (called as root before the role becomes ``--user``) says when
the watcher will poll, and the inotify it set up is the one the watcher
reads (an envelope committed between the two rings).
"""

from __future__ import annotations

import os
import select
import struct
import time
from pathlib import Path

import pytest

from emailrelay.services.notify import (
    IN_CREATE,
    IN_ISDIR,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    SpoolWatcher,
    parse_events,
    prepare,
)

MID = "emailrelay.4242.1700000000.{}"


def _make(path: Path) -> None:
    path.write_bytes(b"x\r\n")


def _collect(watcher: SpoolWatcher, rung: list[str], seconds: float, enough: int) -> None:
    """Read the watcher as the notify role does (its descriptor readable, then ready_ids) for up to
    ``seconds``, or until ``enough`` ids were rung."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and len(set(rung)) < enough:
        readable, _, _ = select.select([watcher.fileno()], [], [], left)
        if readable:
            rung.extend(watcher.ready_ids())


def _watch(directory: Path, polling: bool) -> list[str]:
    rung: list[str] = []
    watcher = SpoolWatcher(str(directory), polling=polling, poll_interval=0.1)
    kind = watcher.start()
    assert kind == ("poll" if polling else "inotify")
    try:
        time.sleep(0.3)
        base = [directory / MID.format(n) for n in range(1, 5)]
        for b in base:
            _make(Path(f"{b}.content"))  # never a ring
        _make(Path(f"{base[0]}.envelope.new"))
        os.rename(f"{base[0]}.envelope.new", f"{base[0]}.envelope")  # commit
        _make(Path(f"{base[1]}.envelope"))  # written directly
        _make(Path(f"{base[2]}.envelope.bad"))
        os.rename(f"{base[2]}.envelope.bad", f"{base[2]}.envelope")  # unfail
        _make(Path(f"{base[3]}.envelope.busy"))
        os.rename(f"{base[3]}.envelope.busy", f"{base[3]}.envelope")  # release
        _make(directory / (MID.format(9) + ".envelope.new"))  # stays .new: no ring
        _collect(watcher, rung, 5.0, 4)
        _collect(watcher, rung, 0.3, 99)  # room for a wrong extra ring
    finally:
        watcher.stop()
    return rung


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "poll"])
def test_rings_for_every_new_envelope_and_nothing_else(tmp_path: Path, polling: bool) -> None:
    rung = _watch(tmp_path, polling)
    assert sorted(set(rung)) == [MID.format(n) for n in range(1, 5)], rung


def test_prepare_sets_inotify_up_for_the_watcher_and_says_when_it_will_poll(tmp_path: Path) -> None:
    assert prepare(str(tmp_path / "missing"), False) is True  # no inotify on it: the watcher polls
    assert prepare(str(tmp_path), True) is True  # --notify=poll
    assert prepare(str(tmp_path), False) is False
    early = MID.format(7)
    _make(tmp_path / f"{early}.envelope")  # after prepare, before start: only the prepared inotify saw it
    rung: list[str] = []
    watcher = SpoolWatcher(str(tmp_path))
    assert watcher.start() == "inotify"
    try:
        _collect(watcher, rung, 5.0, 1)
    finally:
        watcher.stop()
    assert rung == [early]


def _event(mask: int, name: bytes = b"") -> bytes:
    padded = name + b"\0" * (16 - len(name) % 16) if name else b""
    return struct.pack("iIII", 1, mask, 0, len(padded)) + padded


def test_inotify_events_parsed_as_bytes_once_per_id() -> None:
    ready = MID.format(1).encode()
    buf = b"".join([
        _event(IN_CREATE, ready + b".content"),
        _event(IN_CREATE, ready + b".envelope.new"),
        _event(IN_MOVED_TO, ready + b".envelope"),
        _event(IN_MOVED_TO, ready + b".envelope"),  # twice in one read: one ring
        _event(IN_MOVED_TO, ready + b".envelope.busy"),
        _event(IN_CREATE | IN_ISDIR, MID.format(2).encode() + b".envelope"),  # a directory: no ring
    ])  # fmt: skip
    assert parse_events(buf) == ([MID.format(1)], False)
    assert parse_events(_event(IN_Q_OVERFLOW) + buf)[1] is True
