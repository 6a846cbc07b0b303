"""The command line's process life against E-MailRelay 2.6b: how a stop signal ends the relay, the
log file's mode, config-file errors, a symlink as ``--pid-file``.

What it checks (a differential probe, 7 Dec 2026, and its fixes):

- SIGINT, SIGQUIT and SIGTERM end the relay as E-MailRelay 2.6b's: with ``--pid-file`` (removed)
  exit status 128 + N; without one the process dies by the signal itself (returncode ``-N``; a
  shell's ``$?`` is 128 + N either way), supervised and ``--single-process``, every role stopped;
  the admin ``terminate`` command still ends it with status 0;
- a new ``--log-file`` is ``0660`` whatever the umask, root's when started as root with the default
  ``--user daemon``;
- an unknown name in the config file is upstream's ``invalid option: "--name"`` with the ``try``
  line, an unreadable config file its ``error reading configuration file: <path>``;
- a ``--pid-file`` that is an operator's symlink is followed (dangling or not) and removed at the
  stop, its target left; one pointing into a missing directory is upstream's start-up error.

Each behaviour is checked on ours alone (so a user's clone tests it) and, where the oracle is set
(``EMAILRELAY_ORACLE_BIN``), the same expectation on E-MailRelay 2.6b.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from emailrelay.services import daemon
from tests.support.oracle import daemon_base, needs_oracle, program, run, spool_dir
from tests.support.relay import free_port, pid_alive, stop_process, wait_for_port, wait_until

pytestmark = [pytest.mark.timeout(180)]

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="started as root, as an operator does")

STOP_SIGNALS = [signal.SIGINT, signal.SIGQUIT, signal.SIGTERM]
OURS_MODES = {"supervised": (), "single-process": ("--single-process",)}


@dataclass
class Started:
    """One relay started by :func:`relay`."""

    proc: subprocess.Popen[bytes]
    home: Path
    port: int
    log_path: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"


@contextmanager
def relay(
    side: str, home: Path, *args: str, pid_file: bool = True, umask: int | None = None
) -> Iterator[Started]:
    """``side``'s relay in ``home`` (``--no-daemon --log``, on a free port of 127.0.0.1), with or
    without ``--pid-file <home>/pid``, serving (its greeting read) when this yields; stopped at the
    end if still running."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    port = free_port()
    argv = [
        program(side), "--no-daemon", "--log", "--no-syslog", "--port", str(port),
        "--interface", "127.0.0.1", "--spool-dir", str(spool_dir(home / "spool")),
        *(["--pid-file", str(home / "pid")] if pid_file else []), *args,
    ]  # fmt: skip
    log_path = home / "stderr"
    preexec: Callable[[], object] | None = None if umask is None else (lambda: os.umask(umask))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home, preexec_fn=preexec
        )
    try:
        wait_for_port(port, proc=proc, timeout=20)
        _greeting(port)  # the smtp role is up (supervised: the roles are spawned)
        yield Started(proc, home, port, log_path)
    finally:
        stop_process(proc)


def _greeting(port: int) -> bytes:
    """The greeting; ConnectionError when the relay went away (it binds before it may fail to start)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        greeting = sock.recv(1000)
    if not greeting:
        raise ConnectionError("closed without a greeting")
    return greeting


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (its roles), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def expected_status(signum: int, pid_file: bool) -> int:
    """E-MailRelay 2.6b's: with a pid file it exits 128 + N, without one it dies by the signal."""
    return 128 + signum if pid_file else -signum


def stopped_by(side: str, home: Path, signum: int, pid_file: bool, *args: str) -> tuple[int, list[int], bool]:
    """(returncode, processes under the relay still alive, pid file left) after ``signum``."""
    with relay(side, home, *args, pid_file=pid_file) as r:
        under = _descendants(r.proc.pid)
        r.proc.send_signal(signum)
        code = r.proc.wait(30)
    wait_until(lambda: not any(pid_alive(p) for p in under), 5)
    return code, [p for p in under if pid_alive(p)], (home / "pid").exists()


# ---- stop signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "pid_file", "code", "status"),
    [
        (None, True, 0, 0),  # no stop signal: the run's own status
        (None, False, 1, 1),
        (0, True, 0, 0),  # the admin terminate: 0
        (0, False, 0, 0),
        (signal.SIGINT, True, 0, 130),
        (signal.SIGQUIT, True, 0, 131),
        (signal.SIGTERM, False, 0, -signal.SIGTERM),  # dies by it
        (signal.SIGTERM, True, 1, 1),  # a failure's own status wins (a crash loop)
    ],
)
def test_exit_status_after_a_stop(
    monkeypatch: pytest.MonkeyPatch, cause: int | None, pid_file: bool, code: int, status: int
) -> None:
    monkeypatch.setattr(daemon, "_stop_cause", None)
    monkeypatch.setattr(daemon, "_has_pid_file", pid_file)
    if cause is not None:
        daemon.note_stop(cause)
        daemon.note_stop(signal.SIGTERM)  # the first cause wins
    assert daemon.exit_status(code) == status


@root_only
@pytest.mark.parametrize("pid_file", [True, False], ids=["pid-file", "no-pid-file"])
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
@pytest.mark.parametrize("mode", OURS_MODES)
def test_stop_signal_status(tmp_path: Path, mode: str, signum: int, pid_file: bool) -> None:
    """Ours: a clean stop, every role gone, the pid file removed, then upstream's status."""
    code, alive, left = stopped_by(
        "ours", daemon_base(tmp_path) / "ours", signum, pid_file, *OURS_MODES[mode]
    )
    assert (code, alive, left) == (expected_status(signum, pid_file), [], False)


@needs_oracle
@root_only
@pytest.mark.parametrize("pid_file", [True, False], ids=["pid-file", "no-pid-file"])
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_stop_signal_status_of_upstream(tmp_path: Path, signum: int, pid_file: bool) -> None:
    """The oracle's side of :func:`test_stop_signal_status`: the same table."""
    code, alive, left = stopped_by("upstream", daemon_base(tmp_path) / "upstream", signum, pid_file)
    assert (code, alive, left) == (expected_status(signum, pid_file), [], False)


def terminated(side: str, home: Path, pid_file: bool, *args: str) -> tuple[int, list[int]]:
    """(returncode, processes under the relay still alive) after the admin ``terminate`` command."""
    admin = free_port()
    with relay(side, home, "--admin", str(admin), "--admin-terminate", *args, pid_file=pid_file) as r:
        under = _descendants(r.proc.pid)
        wait_for_port(admin, proc=r.proc, timeout=20)
        with socket.create_connection(("127.0.0.1", admin), timeout=15) as sock:
            sock.sendall(b"terminate\r\n")
            assert sock.recv(1000) == b""  # no reply: the connection closes
        code = r.proc.wait(30)
    wait_until(lambda: not any(pid_alive(p) for p in under), 5)
    return code, [p for p in under if pid_alive(p)]


@root_only
@pytest.mark.parametrize("pid_file", [True, False], ids=["pid-file", "no-pid-file"])
@pytest.mark.parametrize("mode", OURS_MODES)
def test_admin_terminate_exits_0(tmp_path: Path, mode: str, pid_file: bool) -> None:
    """The admin ``terminate`` is a stop asked for: status 0, as upstream's, not a signal's status."""
    assert terminated("ours", daemon_base(tmp_path) / "ours", pid_file, *OURS_MODES[mode]) == (0, [])


@needs_oracle
@root_only
@pytest.mark.parametrize("pid_file", [True, False], ids=["pid-file", "no-pid-file"])
def test_admin_terminate_exits_0_upstream(tmp_path: Path, pid_file: bool) -> None:
    assert terminated("upstream", daemon_base(tmp_path) / "upstream", pid_file) == (0, [])


# ---- the log file ----------------------------------------------------------------------------------


def log_file_identity(side: str, home: Path, umask: int, *args: str) -> tuple[int, int, int]:
    """(mode, uid, gid) of the ``--log-file`` the relay made, started with ``umask``."""
    log_file = home / "relay.log"
    with relay(side, home, "--log-file", str(log_file), *args, umask=umask):
        assert wait_until(log_file.exists, 10)
        st = log_file.stat()
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


@root_only
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000], ids=["022", "077", "000"])
@pytest.mark.parametrize("mode", OURS_MODES)
def test_new_log_file_is_0660(tmp_path: Path, mode: str, umask: int) -> None:
    """As root with the default ``--user daemon``: ``root:root 0660`` whatever the umask."""
    home = daemon_base(tmp_path) / "ours"
    assert log_file_identity("ours", home, umask, *OURS_MODES[mode]) == (0o660, 0, 0)


@needs_oracle
@root_only
@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["022", "077"])
def test_new_log_file_is_0660_upstream(tmp_path: Path, umask: int) -> None:
    assert log_file_identity("upstream", daemon_base(tmp_path) / "upstream", umask) == (0o660, 0, 0)


@root_only
def test_existing_log_file_keeps_its_mode(tmp_path: Path) -> None:
    home = daemon_base(tmp_path) / "ours"
    home.mkdir()
    (home / "relay.log").touch(0o600)
    (home / "relay.log").chmod(0o600)
    assert log_file_identity("ours", home, 0o022)[0] == 0o600


# ---- config-file errors ----------------------------------------------------------------------------

INVALID = 'emailrelay: error: invalid option: "--{}"\n            try "emailrelay --help --verbose" for more information\n'

CONFIG_CASES = {
    "unknown": ("log\nbogus-option 1\n", INVALID.format("bogus-option")),
    "unknown-and-no-value": (
        "bogus 1\nport\n",
        'emailrelay: error: invalid option: "--bogus"\nemailrelay: error: no value supplied for "--port"\n'
        '            try "emailrelay --help --verbose" for more information\n',
    ),
    "missing": (None, "emailrelay: error: error reading configuration file: BASE/relay.conf\n"),
}


def config_error(side: str, home: Path, text: str | None, *args: str) -> tuple[int, str]:
    """(exit status, stderr with ``home`` as BASE) of a relay given a config file ``text`` (None: none)."""
    home.mkdir(parents=True, exist_ok=True)
    if text is not None:
        (home / "relay.conf").write_text(text)
    done = run(side, "emailrelay", "--no-daemon", *args, str(home / "relay.conf"), cwd=home)
    return done.returncode, done.stderr.decode().replace(str(home), "BASE")


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_file_errors_in_upstreams_words(tmp_path: Path, case: str) -> None:
    text, stderr = CONFIG_CASES[case]
    assert config_error("ours", tmp_path / "ours", text) == (1, stderr)
    assert config_error("ours", tmp_path / "ours-v", text, "--version") == (1, stderr)


@needs_oracle
@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_file_errors_as_upstream(tmp_path: Path, case: str) -> None:
    text, _ = CONFIG_CASES[case]
    assert config_error("ours", tmp_path / "ours", text) == config_error("upstream", tmp_path / "up", text)


# ---- a symlink as --pid-file -----------------------------------------------------------------------


def pid_file_link(side: str, home: Path, target: str) -> tuple[str, str, bool, bool]:
    """Start with ``--pid-file`` an operator's dangling symlink to ``target`` (relative to ``home``):
    (what the target holds while serving, "" if nothing, the start-up error if it failed; the link
    after the stop; the target there after the stop)."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    (home / "pid").symlink_to(home / target)
    try:
        with relay(side, home) as r:
            assert wait_until(lambda: (home / target).exists(), 10)
            during = (home / target).read_text().strip().replace(str(r.proc.pid), "PID")
    except (RuntimeError, ConnectionError):  # it exited before listening, or before its greeting
        during = (home / "stderr").read_text().replace(str(home), "BASE").strip()
    return during, "link" if (home / "pid").is_symlink() else "gone", (home / target).exists()


@root_only
def test_operators_symlink_as_pid_file_is_followed(tmp_path: Path) -> None:
    home = daemon_base(tmp_path) / "ours"
    assert pid_file_link("ours", home, "target") == ("PID", "gone", True)


@root_only
def test_operators_symlink_into_a_missing_directory(tmp_path: Path) -> None:
    home = daemon_base(tmp_path) / "ours"
    error = "emailrelay: error: invalid pid file: cannot create file: BASE/pid: no such file or directory"
    assert pid_file_link("ours", home, "nowhere/pid") == (error, "link", False)


@needs_oracle
@root_only
@pytest.mark.parametrize("target", ["target", "nowhere/pid"])
def test_symlink_as_pid_file_as_upstream(tmp_path: Path, target: str) -> None:
    base = daemon_base(tmp_path)
    assert pid_file_link("ours", base / "ours", target) == pid_file_link("upstream", base / "up", target)


@root_only
def test_planted_symlink_as_pid_file_is_replaced(tmp_path: Path) -> None:
    """Ours on purpose (docs/decisions.md): a link that ``--user`` could have planted is not followed
    by root (upstream follows it): the pid file takes its place and the target is never made."""
    home = daemon_base(tmp_path) / "ours"
    home.mkdir()
    home.chmod(0o755)
    (home / "pid").symlink_to(home / "target")
    daemon = pwd.getpwnam("daemon")
    os.chown(home / "pid", daemon.pw_uid, daemon.pw_gid, follow_symlinks=False)
    with relay("ours", home) as r:
        assert wait_until(lambda: (home / "pid").is_file() and not (home / "pid").is_symlink(), 10)
        assert (home / "pid").read_text().strip() == str(r.proc.pid)
        time.sleep(0.2)
    assert not (home / "target").exists() and not (home / "pid").exists()
