"""The supervised relay's process tree, and two relays side by side.

Issue "Supervised multi-process relay": with ``--workers smtp=2,forward=2``
and ``--admin`` the circus arbiter (the pid the test started, ``--no-daemon``)
has one child per role process, circus reports them all active on the
``ipc://`` control endpoint in the run directory, and each shows its role
in ``ps -o comm``.  Two relays with different spools (so run directories)
keep their mail, their buses and their supervisors apart.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil

from tests.support.relay import free_port
from tests.support.sink_counter import (
    CountingSink,
    circusctl,
    print_log,
    role_of,
    role_pids,
    run_dir,
    send_mail,
    supervised_relay,
)

ALL_ROLES = {"bus": 1, "notify": 1, "forward": 2, "smtp": 2, "admin": 1}


def _status(rdir: Path) -> dict[str, str]:
    result = circusctl(rdir, "status")
    assert result.returncode == 0, result.stderr
    pairs = (line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def test_process_tree_has_every_role_as_a_named_child(tmp_path: Path) -> None:
    with (
        CountingSink() as sink,
        supervised_relay(
            tmp_path,
            "--workers", "smtp=2,forward=2", "--forward-to", sink.address, "--poll", "1",
            "--admin", str(free_port()),
            roles=ALL_ROLES,
        ) as relay,
    ):  # fmt: skip
        pids = role_pids(relay.pid)
        assert {role: len(p) for role, p in pids.items()} == ALL_ROLES
        # every role process is a direct child of the arbiter
        for role, plist in pids.items():
            for pid in plist:
                assert psutil.Process(pid).ppid() == relay.pid, role
        # circus agrees, over the control endpoint in the run directory
        assert _status(run_dir(relay.spool)) == {role: "active" for role in ALL_ROLES}
        for role in ALL_ROLES:
            listed = circusctl(run_dir(relay.spool), "list", role)
            assert listed.returncode == 0, listed.stderr
            circus_pids = sorted(int(p) for p in listed.stdout.replace(",", " ").split())
            assert circus_pids == pids[role], (role, listed.stdout)
        # the process names show the roles (comm is at most 15 characters)
        for role, plist in pids.items():
            for pid in plist:
                comm = subprocess.run(
                    ["ps", "-o", "comm=", "-p", str(pid)], capture_output=True, text=True, check=False
                ).stdout.strip()
                assert comm == f"emailrelay-{role}"[:15], (pid, comm)
        # and the tree works end to end
        send_mail(relay.port, "tree-1@test")
        ok = sink.wait_for(["tree-1@test"], 15)
        if not ok:
            print_log(relay)
        assert ok


def test_two_relays_do_not_interfere(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (
        CountingSink() as sink_a,
        CountingSink() as sink_b,
        supervised_relay(
            a_dir, "--forward-to", sink_a.address, "--poll", "1", "--admin", str(free_port()),
            name="a", roles={"bus": 1, "notify": 1, "forward": 1, "smtp": 1, "admin": 1},
        ) as a,
        supervised_relay(
            b_dir, "--forward-to", sink_b.address, "--poll", "1", "--workers", "forward=2",
            name="b", roles={"bus": 1, "notify": 1, "forward": 2, "smtp": 1},
        ) as b,
    ):  # fmt: skip
        assert run_dir(a.spool) != run_dir(b.spool)
        mids_a = [f"a{i}@test" for i in range(3)]
        mids_b = [f"b{i}@test" for i in range(3)]
        for ma, mb in zip(mids_a, mids_b, strict=True):
            send_mail(a.port, ma)
            send_mail(b.port, mb)
        assert sink_a.wait_for(mids_a, 20), sink_a.ids()
        assert sink_b.wait_for(mids_b, 20), sink_b.ids()
        assert set(sink_a.ids()) == set(mids_a)  # nothing of b's went to a's next hop
        assert set(sink_b.ids()) == set(mids_b)
        assert all(n == 1 for n in (sink_a.ids() + sink_b.ids()).values())
        # each control endpoint shows its own supervisor's roles and processes
        assert set(_status(run_dir(a.spool))) == {"bus", "notify", "forward", "smtp", "admin"}
        assert set(_status(run_dir(b.spool))) == {"bus", "notify", "forward", "smtp"}
        for relay in (a, b):
            listed = circusctl(run_dir(relay.spool), "list", "forward")
            circus_pids = sorted(int(p) for p in listed.stdout.replace(",", " ").split())
            assert circus_pids == role_pids(relay.pid)["forward"]
            for pid in circus_pids:
                assert psutil.Process(pid).ppid() == relay.pid
                assert role_of(psutil.Process(pid)) == "forward"
