"""Signals to the supervisor: SIGTERM stops, SIGHUP restarts the roles, kill -9 leaves no orphans.

Issue "Supervised multi-process relay": SIGTERM to the arbiter stops every
role within 10 s with exit status 0 and removes the pid file; a ``kill -9``
of the arbiter takes every role with it (PR_SET_PDEATHSIG) within 5 s;
SIGHUP restarts the roles (new pids) while the relay keeps accepting mail.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import psutil

from emailrelay import rundir
from tests.support.relay import Relay, free_port, start_relay
from tests.support.sink_counter import (
    CountingSink,
    poll,
    print_log,
    role_of,
    role_pids,
    run_dir,
    send_mail,
    supervised_relay,
    topics_seen,
    wait_for_bus,
    wait_for_roles,
)

ROLES = {"bus": 1, "notify": 1, "forward": 2, "smtp": 2, "admin": 1}


def _args(sink: CountingSink, pid_file: Path) -> list[str]:
    return [
        "--workers", "smtp=2,forward=2", "--forward-to", sink.address, "--poll", "1",
        "--admin", str(free_port()), "--pid-file", str(pid_file),
    ]  # fmt: skip


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and role_of(p) is not None:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def test_sigterm_stops_every_role_with_status_0_and_removes_the_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "relay.pid"
    with CountingSink() as sink:
        relay = start_relay(tmp_path, *_args(sink, pid_file))
        try:
            pids = wait_for_roles(relay.pid, ROLES)
            assert poll(pid_file.exists, 10)
            assert pid_file.read_text().strip() == str(relay.pid)
            everyone = [p for plist in pids.values() for p in plist]
            started = time.monotonic()
            relay.proc.send_signal(signal.SIGTERM)
            status = relay.proc.wait(15)
            took = time.monotonic() - started
            print(f"SIGTERM to exit: {took:.2f}s")
            assert status == 128 + signal.SIGTERM, relay.log()
            assert took < 10.0
            assert poll(lambda: not _alive(everyone), 2), _alive(everyone)
            assert not pid_file.exists()
        finally:
            leftovers = _alive([p for plist in role_pids(relay.pid).values() for p in plist])
            relay.stop()
            for pid in leftovers:
                psutil.Process(pid).kill()


def _named(pids: dict[str, list[int]]) -> bool:
    """Every role has run its start-up (``become_role``: PDEATHSIG, then the process name)."""
    for role, plist in pids.items():
        for pid in plist:
            try:
                if psutil.Process(pid).name() != f"emailrelay-{role}"[:15]:
                    return False
            except psutil.Error:
                return False
    return True


def test_kill_9_of_the_arbiter_leaves_no_role_behind(tmp_path: Path) -> None:
    pid_file = tmp_path / "relay.pid"
    with CountingSink() as sink:
        relay = start_relay(tmp_path, *_args(sink, pid_file))
        everyone: list[int] = []
        try:
            pids = wait_for_roles(relay.pid, ROLES)
            everyone = [p for plist in pids.values() for p in plist]
            assert poll(lambda: _named(pids), 20)
            relay.kill9()
            started = time.monotonic()
            gone = poll(lambda: not _alive(everyone), 5)
            print(f"roles gone {time.monotonic() - started:.2f}s after kill -9 of the arbiter")
            assert gone, f"orphaned roles: {_alive(everyone)}"
        finally:
            for pid in _alive(everyone):
                psutil.Process(pid).kill()
            _remove_run_dir(relay)


def test_kill_9_of_the_arbiter_while_a_role_starts_leaves_no_orphan(tmp_path: Path) -> None:
    """Regression: a role used to arm PR_SET_PDEATHSIG only after ~0.4 s of imports, without
    checking that its parent was still alive, so this orphaned every starting role."""
    with CountingSink() as sink:
        relay = start_relay(tmp_path, *_args(sink, tmp_path / "relay.pid"), wait=False)
        everyone: list[int] = []
        try:
            # the first role process that has exec'd python -m emailrelay.cli.role, still importing
            assert poll(lambda: role_pids(relay.pid), 20, 0.005)
            everyone = [p for plist in role_pids(relay.pid).values() for p in plist]
            relay.kill9()
            gone = poll(lambda: not _alive(everyone), 3)
            assert gone, f"orphaned roles: {_alive(everyone)}"
        finally:
            for pid in _alive(everyone):
                psutil.Process(pid).kill()
            _remove_run_dir(relay)


def _remove_run_dir(relay: Relay) -> None:
    """What the killed arbiter could not remove (its sockets in /run/emailrelay/<hash>): a relay started
    again on that spool would reuse the directory, these tests' spools are never used again."""
    shutil.rmtree(rundir.default(relay.spool), ignore_errors=True)


def test_sighup_restarts_the_roles_and_the_relay_keeps_accepting(tmp_path: Path) -> None:
    with (
        CountingSink() as sink,
        supervised_relay(tmp_path, *_args(sink, tmp_path / "relay.pid"), roles=ROLES) as relay,
    ):
        before = role_pids(relay.pid)
        stop = threading.Event()
        sent: list[str] = []
        errors: list[str] = []

        def client() -> None:
            i = 0
            while not stop.is_set():
                mid = f"hup{i}@test"
                i += 1
                try:
                    send_mail(relay.port, mid)
                    sent.append(mid)
                except Exception as exc:  # any failure is what this test looks for
                    errors.append(f"{mid}: {exc!r}")
                time.sleep(0.05)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        try:
            time.sleep(0.5)
            relay.proc.send_signal(signal.SIGHUP)
            old = {p for plist in before.values() for p in plist}

            def all_new() -> bool:
                now = role_pids(relay.pid)
                return all(
                    len(now.get(role, [])) == n and not (set(now[role]) & old) for role, n in ROLES.items()
                )

            renewed = poll(all_new, 30, 0.2)
            after = role_pids(relay.pid)
            time.sleep(1.0)
        finally:
            stop.set()
            thread.join(30)
        print(f"before {before}\nafter  {after}\nsent {len(sent)} errors {len(errors)}")
        if not renewed:
            print_log(relay)
        assert renewed, f"roles not all restarted: before {before}, after {after}"
        assert relay.proc.poll() is None
        assert errors == []
        assert len(sent) >= 5
        assert sink.wait_for(sent, 20), set(sent) - set(sink.ids())
        # the new bus carries every role's events
        wait_for_bus(run_dir(relay.spool))
        assert {"smtp.accepted", "spool.ready", "forward.done"} <= topics_seen(
            relay.port, relay.spool, "hup-ev"
        )
