"""Root never follows what ``--user`` planted: the generic symlink test (issue 19).

Started as root with the default ``--user daemon``, every filter and verifier
runs as daemon, so daemon can change anything in a directory it may write:
the spool (installed ``root:daemon`` 2775, as upstream's), and here also the
pid file's and the log file's directories.  The relay is started, sent mail
and stopped; then, as daemon (``runuser``), every file and directory the
relay created in such a directory (message files aside) is replaced by a
symlink to a root-owned victim (a 0600 file with known content, a 0755
directory, or a name in a root-only directory that must not come to exist);
the relay is started again and sent mail.  The victims are unchanged, and the
relay still logs (a planted symlink is replaced, not followed).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import smtplib
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.relay import free_port, reachable_dir, start_relay, wait_until

SYSTEM_PYTHON = "/usr/bin/python3"  # runs as daemon: the venv's interpreter need not be reachable

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser") or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root, runuser and /usr/bin/python3",
)

VICTIM_TEXT = b"root's secret, not to be touched\n"

# run as daemon: replace each listed path by a symlink (a directory is renamed away first: daemon may
# rename a root-owned directory inside a directory it can write); prints what it replaced
PLANTER = """
import json, os, sys
victims = json.loads(sys.argv[1])
done = []
for path in json.loads(sys.argv[2]):
    is_dir = os.path.isdir(path) and not os.path.islink(path)
    try:
        if is_dir:
            os.rename(path, path + ".moved")
        else:
            os.unlink(path)
        os.symlink(victims["dir"] if is_dir else victims["file"], path)
        done.append(path)
    except OSError as exc:
        print("could not replace", path, exc, file=sys.stderr)
for path in json.loads(sys.argv[3]):  # names root will create: dangling links into a root-only directory
    try:
        os.symlink(victims["absent"], path)
        done.append(path)
    except OSError as exc:
        print("could not plant", path, exc, file=sys.stderr)
print(json.dumps(done))
"""


def is_message_file(path: Path, spool: Path) -> bool:
    return (
        path.parent == spool
        and path.name.startswith("emailrelay.")
        and (path.name.endswith(".content") or ".envelope" in path.name)
    )


def daemon_can_write(directory: Path) -> bool:
    probe = subprocess.run(["runuser", "-u", "daemon", "--", "test", "-w", str(directory)], check=False)
    return probe.returncode == 0


def created_entries(base: Path, before: set[Path], spool: Path) -> list[Path]:
    """What the relay created under ``base`` in directories daemon may write, deepest first."""
    found = []
    for root, dirs, files in os.walk(base):
        here = Path(root)
        for name in dirs + files:
            path = here / name
            if path in before or is_message_file(path, spool) or not daemon_can_write(here):
                continue
            found.append(path)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def snapshot(path: Path) -> tuple[int, int, int, bytes | list[str]]:
    st = path.lstat()
    body: bytes | list[str] = sorted(os.listdir(path)) if stat.S_ISDIR(st.st_mode) else path.read_bytes()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), body


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.sendmail("a@example.com", ["b@example.net"], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory daemon can reach (pytest's tmp_path is under a 0700 directory)."""
    with reachable_dir("er-symlinks-") as path:
        yield path


@pytest.mark.parametrize("mode", ["supervised", "single-process"])
def test_root_follows_no_symlink_planted_by_the_relay_user(tmp_path: Path, base: Path, mode: str) -> None:
    daemon = pwd.getpwnam("daemon")
    victims_dir = base / "victims"  # root's, 0755: daemon may name things in it, not change them
    victims_dir.mkdir(mode=0o755)
    victim_file = victims_dir / "secret"
    victim_file.write_bytes(VICTIM_TEXT)
    victim_file.chmod(0o600)
    victim_dir = victims_dir / "directory"
    victim_dir.mkdir(mode=0o755)
    (victim_dir / "inside").write_bytes(VICTIM_TEXT)
    private = victims_dir / "private"  # root-only: a name in it must never be created
    private.mkdir(mode=0o700)
    victims = {"file": str(victim_file), "dir": str(victim_dir), "absent": str(private / "created")}

    writable = []  # directories daemon can write, as an installation may have them
    for name in ("spool", "pid", "log"):
        d = base / name
        d.mkdir()
        os.chown(d, 0, daemon.pw_gid)
        d.chmod(0o2775)
        writable.append(d)
    spool, pid_dir, log_dir = writable
    closed_port = free_port()  # forwarding fails: messages stay, the forwarder keeps working
    extra = [
        "--pid-file", str(pid_dir / "emailrelay.pid"), "--log-file", str(log_dir / "relay.log"),
        "--forward-to", f"127.0.0.1:{closed_port}", "--forward-on-disconnect", "--max-connections", "5",
    ]  # fmt: skip
    if mode == "single-process":
        extra.append("--single-process")
    before = {p for p in base.rglob("*")}
    port = free_port()

    relay = start_relay(tmp_path, *extra, port=port, spool=spool, user=None, name="first")
    try:
        send(port, "first")
        assert wait_until(lambda: any(spool.glob("*.envelope*")), 15), relay.log()
    finally:
        relay.stop()
    planted_names = [str(pid_dir / "emailrelay.pid")]  # removed at the stop: root makes it again
    targets = [str(p) for p in created_entries(base, before, spool)]
    assert targets, "the relay created nothing in a directory daemon can write?"
    out = subprocess.run(
        ["runuser", "-u", "daemon", "--", SYSTEM_PYTHON, "-c", PLANTER, json.dumps(victims), json.dumps(targets),
         json.dumps([n for n in planted_names if n not in targets])],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    replaced = json.loads(out.stdout)
    assert replaced, out.stderr
    watched = [victim_file, victim_dir, victim_dir / "inside", victims_dir, private]
    expected = {p: snapshot(p) for p in watched}

    relay = start_relay(tmp_path, *extra, port=port, spool=spool, user=None, name="second")
    try:
        send(port, "second")
        assert wait_until(lambda: len(list(spool.glob("*.content"))) >= 2, 15), relay.log()
    finally:
        relay.stop()
    assert {p: snapshot(p) for p in watched} == expected, f"replaced: {replaced}\n{relay.log()}"
    assert not Path(victims["absent"]).exists()
    log_file = log_dir / "relay.log"  # the planted symlink was replaced: the relay still logs
    assert not log_file.is_symlink() and log_file.stat().st_uid == 0 and "info:" in log_file.read_text()
