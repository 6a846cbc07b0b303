"""deploy/ and config/: the boot scripts, units, examples and readiness notification, run for real.

- the System-V script starts, reports, reloads and stops the relay under
  ``sh`` (dash here), pointed at a temporary spool and pid file through its
  ``EMAILRELAY_*`` environment variables;
- ``systemd-analyze verify`` checks the unit files (skipped where
  systemd-analyze is not installed);
- READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1 from
  :mod:`emailrelay.services.sd_notify` reach a unix datagram socket made by
  the test, as systemd's NOTIFY_SOCKET would be, from a real relay too;
- the relay takes a socket handed over as fd 3 (socket activation);
- the example config, secrets file, filters, cron jobs, logrotate and
  rsyslog snippets are valid for the programs that read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from emailrelay.auth.secrets import Secrets
from emailrelay.cli.parse import parse_command_line
from emailrelay.services import sd_notify
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.envelope import parse as parse_envelope
from emailrelay.spool.store import SpoolStore
from tests.support.fixtures import UPSTREAM
from tests.support.relay import BIN, REPO, free_port, program, shell_status, wait_for_port

INIT = REPO / "deploy" / "init.d" / "emailrelay"
SH = shutil.which("dash") or "/bin/sh"


def greeting(port: int, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        data = s.recv(512)
        s.sendall(b"QUIT\r\n")
        return data


# ---- init.d --------------------------------------------------------------------------


@pytest.fixture
def init_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "EMAILRELAY_BIN": program(),
        "EMAILRELAY_PIDFILE": str(tmp_path / "run" / "emailrelay.pid"),
        "EMAILRELAY_CONFIG": str(tmp_path / "emailrelay.conf"),
        "EMAILRELAY_DEFAULTS": str(tmp_path / "no-such-defaults"),
        "EMAILRELAY_TIMEOUT": "20",
        "EMAILRELAY_OPTS": f"--as-server --verbose --no-syslog --log-file {tmp_path / 'relay.log'} "
        f"--spool-dir {spool} --interface 127.0.0.1 --user root",
        "PORT": str(port),
    }
    (tmp_path / "emailrelay.conf").write_text(f"# given last by the init script\nport {port}\n")
    yield env
    pid_file = Path(env["EMAILRELAY_PIDFILE"])
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # only if a test failed half-way


def init(env: dict[str, str], action: str) -> subprocess.CompletedProcess[str]:
    """Run the script; its output goes through files, not pipes, which the detached relay may inherit."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run([SH, str(INIT), action], env=env, stdout=out, stderr=err, timeout=90)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())


def test_init_script_start_status_reload_stop(init_env: dict[str, str]) -> None:
    port = int(init_env["PORT"])
    assert init(init_env, "status").returncode == 3
    started = init(init_env, "start")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(Path(init_env["EMAILRELAY_PIDFILE"]).read_text())
    assert started.stdout == f"emailrelay: started (pid {pid})\n"
    assert greeting(port).startswith(b"220 ")  # the config file given last set the port
    status = init(init_env, "status")
    assert status.returncode == 0 and status.stdout == f"emailrelay: running (pid {pid})\n"
    again = init(init_env, "start")
    assert again.returncode == 0 and "already running" in again.stdout
    reload = init(init_env, "reload")
    assert reload.returncode == 0 and "reloading" in reload.stdout
    time.sleep(1.0)
    assert greeting(port, timeout=20).startswith(b"220 ")  # the same relay, still serving
    assert init(init_env, "status").stdout == f"emailrelay: running (pid {pid})\n"
    stopped = init(init_env, "stop")
    assert stopped.returncode == 0 and stopped.stdout == "emailrelay: stopped\n"
    assert _exited(pid)
    assert not Path(init_env["EMAILRELAY_PIDFILE"]).exists()
    assert init(init_env, "status").returncode == 3
    assert init(init_env, "stop").returncode == 0
    assert init(init_env, "reload").returncode == 7


def _exited(pid: int) -> bool:
    """The process is gone, or has exited and waits for its parent (init) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(") ", 1)[-1].startswith("Z")


def test_init_script_restart_and_failures(init_env: dict[str, str], tmp_path: Path) -> None:
    port = int(init_env["PORT"])
    assert init(init_env, "start").returncode == 0
    first = int(Path(init_env["EMAILRELAY_PIDFILE"]).read_text())
    restarted = init(init_env, "restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    second = int(Path(init_env["EMAILRELAY_PIDFILE"]).read_text())
    assert second != first and greeting(port).startswith(b"220 ")
    # a second relay on the same port cannot bind: exit 2 from the relay, 1 from the script
    other = {**init_env, "EMAILRELAY_PIDFILE": str(tmp_path / "other.pid")}
    failed = init(other, "start")
    assert failed.returncode == 1 and "failed to start (exit 2)" in failed.stdout
    assert re.search(
        r"^emailrelay: error: socket bind error: address already in use$",
        (tmp_path / "relay.log").read_text(),
        re.MULTILINE,
    )
    assert init(init_env, "stop").returncode == 0
    # a pid file left by a dead relay
    Path(init_env["EMAILRELAY_PIDFILE"]).write_text(f"{second}\n")
    dead = init(init_env, "status")
    assert dead.returncode == 1 and "pid file" in dead.stdout
    assert init(init_env, "bogus").returncode == 2
    missing = init({**init_env, "EMAILRELAY_BIN": str(tmp_path / "nope")}, "start")
    assert missing.returncode == 5


def test_init_script_stop_counts_an_exited_unreaped_relay_as_stopped(init_env: dict[str, str]) -> None:
    """A relay that exited on SIGTERM but that its parent has not reaped yet (a zombie: a slow init
    reaps orphans when it gets to it) still answers ``kill -0``; ``stop`` must not wait it out and
    then fail.  Seen in CI: a restart under load failed with "still running after 20 seconds".
    Here the stand-in is a child of this test, which does not reap it until the end."""
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "emailrelay-stand-in"])
    try:
        Path(init_env["EMAILRELAY_PIDFILE"]).parent.mkdir(parents=True, exist_ok=True)
        Path(init_env["EMAILRELAY_PIDFILE"]).write_text(f"{fake.pid}\n")
        assert init(init_env, "status").stdout.strip() == f"emailrelay: running (pid {fake.pid})"
        started = time.monotonic()
        stopped = init({**init_env, "EMAILRELAY_TIMEOUT": "5"}, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "stopped" in stopped.stdout
        assert time.monotonic() - started < 4.0
        assert _exited(fake.pid) and Path(f"/proc/{fake.pid}").exists()  # exited, not reaped
    finally:
        fake.kill()
        fake.wait(10)


def test_init_script_is_posix_and_has_lsb_headers() -> None:
    text = INIT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert os.access(INIT, os.X_OK)
    block = text.split("### BEGIN INIT INFO\n", 1)[1].split("### END INIT INFO", 1)[0]
    for key in (
        "Provides",
        "Required-Start",
        "Required-Stop",
        "Default-Start",
        "Default-Stop",
        "Short-Description",
    ):
        assert re.search(rf"^# {key}:\s+\S", block, re.MULTILINE), key
    assert subprocess.run([SH, "-n", str(INIT)]).returncode == 0
    if shutil.which("checkbashisms"):
        assert subprocess.run(["checkbashisms", str(INIT)]).returncode == 0


# ---- systemd ----------------------------------------------------------------------------


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    names = ("emailrelay.service", "emailrelay.socket", "emailrelay-activated.service")
    for name in names:
        text = (REPO / "deploy" / name).read_text()
        # verify insists that ExecStart's program exists: use the one we have
        (tmp_path / name).write_text(text.replace("/usr/local/bin/emailrelay", program()))
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / n) for n in names)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "emailrelay" in line]
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr
    service = (REPO / "deploy" / "emailrelay.service").read_text()
    assert "Type=notify" in service and "--no-daemon" in service
    assert "--interface smtp=fd#3" in (REPO / "deploy" / "emailrelay-activated.service").read_text()
    # systemd's own rating of the hardening (10 is none at all; the unit without it rated 8.9)
    done = subprocess.run(
        [analyze, "security", "--offline=true", str(tmp_path / "emailrelay.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    exposure = re.search(r"Overall exposure level for emailrelay.service: ([0-9.]+)", done.stdout)
    if exposure is not None:  # --offline needs systemd 250
        assert float(exposure.group(1)) <= 6.0, done.stdout


HARDENING = ("CapabilityBoundingSet", "NoNewPrivileges", "ProtectHome", "PrivateDevices",
             "RestrictAddressFamilies", "SystemCallArchitectures", "WatchdogSec")  # fmt: skip


def test_both_services_have_the_same_hardening() -> None:
    def settings(name: str) -> dict[str, str]:
        text = (REPO / "deploy" / name).read_text()
        return {k: v for k, v in re.findall(r"^([A-Za-z]+)=(.*)$", text, re.MULTILINE) if k in HARDENING}

    plain, activated = settings("emailrelay.service"), settings("emailrelay-activated.service")
    assert plain == activated and set(plain) == set(HARDENING)
    assert plain["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


def _notify_socket(tmp_path: Path, abstract: bool) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"emailrelay-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    sock.settimeout(10)
    return sock, address


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_reaches_the_notify_socket(tmp_path: Path, abstract: bool) -> None:
    sock, address = _notify_socket(tmp_path, abstract)
    code = (
        "import os, sys\n"
        "from emailrelay.services import sd_notify\n"
        "ok = sd_notify.ready('listening')\n"
        "later = sd_notify.status('still here') and sd_notify.stopping()\n"
        "print(ok, later, os.environ.get('NOTIFY_SOCKET'), os.getpid())\n"
    )
    with sock:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "NOTIFY_SOCKET": address},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        ok, later, left, pid = done.stdout.split()
        # sent; later notifications still arrive; and the roles do not inherit the socket
        assert ok == "True" and later == "True" and left == "None"
        messages = [sock.recv(4096).decode() for _ in range(3)]
    assert messages[0].split("\n") == ["READY=1", f"MAINPID={pid}", "STATUS=listening"]
    assert messages[1:] == ["STATUS=still here", "STOPPING=1"]


@pytest.fixture
def fresh_sd_notify() -> Iterator[None]:
    sd_notify._reset_for_tests()
    yield
    sd_notify._reset_for_tests()


def test_sd_notify_without_systemd_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_sd_notify: None
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.ready() is False
    assert sd_notify.relay_started([tmp_path]) is False and sd_notify._heartbeat is None
    sd_notify._reset_for_tests()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sd_notify.notify("READY=1") is False  # never raises
    assert "NOTIFY_SOCKET" not in os.environ


def _messages(sock: socket.socket, until: Callable[[list[str]], bool], timeout: float = 20.0) -> list[str]:
    """Notifications received until ``until(received)`` holds (or the timeout: the caller's asserts say)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not until(got) and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def test_heartbeat_pings_the_watchdog_and_refreshes_the_queue_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_sd_notify: None
) -> None:
    sock, address = _notify_socket(tmp_path, abstract=False)
    spool = tmp_path / "spool"
    spool.mkdir()
    store = SpoolStore(spool, fsync=False)
    store.store_message(Envelope(from_address="a@example.com", to_remote=("b@example.net",)), b"x\r\n")
    failed = store.store_message(
        Envelope(from_address="a@example.com", to_remote=("c@example.net",)), b"x\r\n"
    )
    claim = store.claim(failed)
    assert claim is not None
    claim.fail("550 no", 550)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with sock:
        assert sd_notify.watchdog_period() == pytest.approx(0.1)
        assert "WATCHDOG_USEC" not in os.environ  # not for the roles
        beat = sd_notify.Heartbeat(lambda: sd_notify.queue_status([spool]), status_period=0.3).start()
        try:
            got = _messages(sock, lambda m: m.count("WATCHDOG=1") >= 3 and any("STATUS=" in x for x in m))
        finally:
            beat.stop()
            beat._thread.join(10)
    assert got.count("WATCHDOG=1") >= 3
    assert "STATUS=queue: 2 messages (1 failed, 1 ready)" in got


def test_the_watchdog_is_withheld_while_the_event_loop_is_wedged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_sd_notify: None
) -> None:
    sock, address = _notify_socket(tmp_path, abstract=False)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    loop = asyncio.new_event_loop()
    wedge = threading.Event()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    sd_notify.watch_loop(loop)
    with sock:
        beat = sd_notify.Heartbeat(None).start()
        try:
            assert "WATCHDOG=1" in _messages(sock, lambda m: "WATCHDOG=1" in m, timeout=10)
            loop.call_soon_threadsafe(wedge.wait, 30)  # the loop is stuck in a callback
            time.sleep(0.3)
            while True:  # drain what was sent before the wedge
                sock.settimeout(0.01)
                try:
                    sock.recv(4096)
                except TimeoutError:
                    break
            assert _messages(sock, lambda m: False, timeout=6.5) == []  # > the 5 s the check waits
        finally:
            wedge.set()
            beat.stop()
            beat._thread.join(10)
            loop.call_soon_threadsafe(loop.stop)
            runner.join(10)
            loop.close()
            sd_notify.watch_loop(None)


@pytest.mark.parametrize("supervised", [False, True], ids=["single-process", "supervised"])
def test_relay_tells_systemd_ready_status_watchdog_reload_and_stop(tmp_path: Path, supervised: bool) -> None:
    """A real relay under a NOTIFY_SOCKET made here, as systemd would run it (Type=notify, WatchdogSec)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    SpoolStore(spool, fsync=False).store_message(
        Envelope(from_address="a@example.com", to_remote=("b@example.net",)), b"Subject: x\r\n\r\nx\r\n"
    )
    notify, address = _notify_socket(tmp_path, abstract=False)
    port = free_port()
    log = tmp_path / "relay.log"
    mode = [] if supervised else ["--single-process"]
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    with notify, open(log, "wb") as out:
        proc = subprocess.Popen(
            [program(), "--as-server", "--no-daemon", "--no-syslog", "--log-file", str(log), "--port", str(port),
             "--interface", "127.0.0.1", "--spool-dir", str(spool), "--user", "root", *mode],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
        try:
            got = _messages(notify, lambda m: any(x.startswith("READY=1") for x in m), timeout=30)
            ready = next((x for x in got if x.startswith("READY=1")), "")
            assert ready.split("\n") == [
                "READY=1",
                f"MAINPID={proc.pid}",
                "STATUS=queue: 1 message (1 ready)",
            ]
            got = _messages(notify, lambda m: m.count("WATCHDOG=1") >= 2)
            assert got.count("WATCHDOG=1") >= 2  # every 0.2 s
            proc.send_signal(signal.SIGHUP)  # supervised: circus restarts the roles
            got = _messages(notify, lambda m: any(x.startswith("READY=1") for x in m), timeout=60)
            reloading = next(x for x in got if x.startswith("RELOADING=1")).split("\n")
            assert reloading[1].startswith("MONOTONIC_USEC=") and int(reloading[1].split("=")[1]) > 0
            assert got.index(next(x for x in got if x.startswith("RELOADING=1"))) < got.index(
                next(x for x in got if x.startswith("READY=1"))
            )
            assert greeting(port, timeout=30).startswith(b"220 ")  # serving again
            proc.send_signal(signal.SIGTERM)
            got = _messages(notify, lambda m: any(x.startswith("STOPPING=1") for x in m), timeout=30)
            assert any(x.startswith("STOPPING=1") for x in got), got
            assert shell_status(proc.wait(30)) == 128 + signal.SIGTERM, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _relay_wired_for_sd_notify() -> bool:
    return "sd_notify" in (REPO / "emailrelay" / "cli" / "main.py").read_text()


def test_socket_activation_fd3_and_readiness(tmp_path: Path) -> None:
    """As systemd does it: a listening socket as fd 3, LISTEN_FDS=1, and NOTIFY_SOCKET."""
    spool = tmp_path / "spool"
    spool.mkdir()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    notify, address = _notify_socket(tmp_path, abstract=False)
    fd = listener.fileno()

    def as_fd3() -> None:
        os.dup2(fd, 3)
        os.set_inheritable(3, True)

    log = tmp_path / "relay.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [program(), "--as-server", "--no-daemon", "--no-syslog", "--log-file", str(log), "--interface",
             "smtp=fd#3", "--spool-dir", str(spool), "--user", "root"],
            env={**os.environ, "NOTIFY_SOCKET": address, "LISTEN_FDS": "1"},
            preexec_fn=as_fd3, pass_fds=tuple({fd, 3}), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    listener.close()
    try:
        assert greeting(port, timeout=30).startswith(b"220 ")
        if _relay_wired_for_sd_notify():
            assert notify.recv(4096).startswith(b"READY=1")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        notify.close()
    assert shell_status(proc.returncode) == 128 + signal.SIGTERM, log.read_text()


# ---- docker -----------------------------------------------------------------------------
ENTRYPOINT = REPO / "deploy" / "docker-entrypoint.sh"
HEALTHCHECK = REPO / "deploy" / "docker-healthcheck.py"

# a stand-in for the image's emailrelay: it records each run's arguments, one per line
FAKE_EMAILRELAY = """#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_ARGS.$$"
"""


def test_dockerfile_runs_as_a_user_with_a_cheap_healthcheck() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n.*docker-healthcheck\.py", text, re.MULTILINE)
    assert "COPY deploy/docker-healthcheck.py /usr/local/bin/docker-healthcheck.py" in text
    # metrics on the container's loopback unless asked otherwise; no open relay by default
    assert "EMAILRELAY_METRICS=127.0.0.1:9190" in text
    assert not re.search(r"^ .*EMAILRELAY_METRICS=0\.0\.0\.0", text, re.MULTILINE)
    assert "EMAILRELAY_OPEN_RELAY=no" in text
    assert re.findall(r"^EXPOSE\s+(.*)$", text, re.MULTILINE) == ["2525"]
    assert "-p 25:" not in text and "-p 9190" not in text  # the usage comment publishes neither
    assert subprocess.run([SH, "-n", str(ENTRYPOINT)]).returncode == 0
    # one process: the relay, with its own metrics role (no "&" background server)
    code = [line for line in ENTRYPOINT.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not any(line.rstrip().endswith("&") for line in code)


def entrypoint(tmp_path: Path, *args: str, **env: str) -> tuple[int, list[list[str]], str]:
    """Run the entrypoint with a fake emailrelay on PATH: (exit code, each run's arguments, stderr)."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir(exist_ok=True)
    fake = fake_bin / "emailrelay"
    fake.write_text(FAKE_EMAILRELAY)
    fake.chmod(0o755)
    record = tmp_path / f"args-{len(list(tmp_path.glob('args-*')))}"
    record.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMAILRELAY_")}
    done = subprocess.run(
        [SH, str(ENTRYPOINT), *args],
        env={**base, "PATH": f"{fake_bin}:/usr/bin:/bin", "FAKE_ARGS": str(record / "run"), **env},
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    runs = [f.read_text().splitlines() for f in sorted(record.iterdir())]
    return done.returncode, runs, done.stderr


def test_docker_entrypoint_is_not_an_open_relay(tmp_path: Path) -> None:
    code, runs, err = entrypoint(tmp_path)
    assert code == 0 and err == ""
    assert runs == [[
        "--metrics", "127.0.0.1:9190", "--no-daemon", "--log", "--no-syslog",
        "--port", "2525", "--spool-dir", "/var/spool/emailrelay",
    ]]  # fmt: skip
    # the forms that serve remote clients: they must authenticate, or an open relay is asked for
    code, runs, err = entrypoint(tmp_path, "--server-auth", "/etc/emailrelay.auth", "--verbose")
    assert code == 0 and err == ""
    assert runs[0][-4:] == ["--remote-clients", "--server-auth", "/etc/emailrelay.auth", "--verbose"]
    code, runs, err = entrypoint(tmp_path, "--server-auth=pam:", "--remote-clients")
    assert code == 0 and runs[0].count("--remote-clients") == 1 and "--server-auth=pam:" in runs[0]
    code, runs, err = entrypoint(tmp_path, EMAILRELAY_SERVER_AUTH="/run/secrets/auth")
    assert code == 0 and runs[0][-3:] == ["--remote-clients", "--server-auth", "/run/secrets/auth"]
    code, runs, err = entrypoint(tmp_path, EMAILRELAY_OPEN_RELAY="yes")
    assert code == 0 and runs[0][-1] == "--remote-clients"
    assert "warning: EMAILRELAY_OPEN_RELAY=yes: anybody who reaches port 2525" in err
    # refused before anything runs
    code, runs, err = entrypoint(tmp_path, "--remote-clients")
    assert code == 1 and runs == []
    assert "error: --remote-clients without --server-auth makes an open relay" in err
    code, runs, err = entrypoint(tmp_path, "-r", EMAILRELAY_OPEN_RELAY="no")
    assert code == 1 and runs == []
    code, runs, err = entrypoint(tmp_path, EMAILRELAY_OPEN_RELAY="maybe")
    assert code == 1 and runs == [] and "EMAILRELAY_OPEN_RELAY must be yes or no" in err


def test_docker_entrypoint_settings(tmp_path: Path) -> None:
    code, runs, _ = entrypoint(
        tmp_path, "--verbose", EMAILRELAY_METRICS="", EMAILRELAY_PORT="25", EMAILRELAY_SPOOL="/spool",
        EMAILRELAY_FORWARD_TO="smarthost.example.com:587",
    )  # fmt: skip
    assert code == 0
    assert runs == [[
        "--forward-to", "smarthost.example.com:587", "--poll", "60", "--forward-on-disconnect",
        "--no-daemon", "--log", "--no-syslog", "--port", "25", "--spool-dir", "/spool", "--verbose",
    ]]  # fmt: skip
    code, runs, _ = entrypoint(tmp_path, EMAILRELAY_METRICS="0.0.0.0:9190")
    assert code == 0 and runs[0][:2] == ["--metrics", "0.0.0.0:9190"]
    # what the entrypoint builds is a command line the relay accepts
    code, runs, _ = entrypoint(
        tmp_path, "--server-auth", "/etc/emailrelay.auth", EMAILRELAY_FORWARD_TO="x:25"
    )
    parsed = parse_command_line(runs[0], app_dir=str(REPO))
    assert parsed.values["remote-clients"] and parsed.values["metrics"] == "127.0.0.1:9190"
    assert parsed.values["server-auth"] == "/etc/emailrelay.auth" and not parsed.warnings


def healthcheck(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMAILRELAY_")}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def test_docker_entrypoint_serves_smtp_and_healthz(tmp_path: Path) -> None:
    """The container's entrypoint, run here: the supervised relay with its metrics role, and the
    image's health check against it."""
    spool = tmp_path / "spool"
    spool.mkdir()
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "EMAILRELAY_SPOOL": str(spool),
        "EMAILRELAY_PORT": str(port),
        "EMAILRELAY_METRICS": f"127.0.0.1:{metrics}",
    }
    proc = subprocess.Popen(
        [SH, str(ENTRYPOINT), "--user", "root", "--interface", "127.0.0.1"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(port, proc=proc, timeout=30)
        wait_for_port(metrics, timeout=30)
        assert greeting(port).startswith(b"220 ")
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=10) as r:
                    status, body = r.status, json.loads(r.read())
            except urllib.error.HTTPError as exc:
                status, body = exc.code, json.loads(exc.read())
            cheap = "smtp role running" in body["checks"]["listener"]["detail"]  # no SMTP session
            if (status == 200 and cheap) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == 200 and cheap, body
        assert body["checks"]["listener"]["ok"] is True
        assert healthcheck(EMAILRELAY_METRICS=f"127.0.0.1:{metrics}").returncode == 0
        assert healthcheck(EMAILRELAY_METRICS=f"0.0.0.0:{metrics}").returncode == 0
        assert healthcheck(EMAILRELAY_METRICS="", EMAILRELAY_PORT=str(port)).returncode == 0
        unhealthy = healthcheck(EMAILRELAY_METRICS=f"127.0.0.1:{free_port()}")
        assert unhealthy.returncode == 1 and "/healthz" in unhealthy.stderr
        # one process tree: the relay is the entrypoint's process (exec), its roles are its children
        assert proc.pid == int(Path(f"/proc/{proc.pid}/stat").read_text().split()[0])
        assert "emailrelay" in Path(f"/proc/{proc.pid}/cmdline").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group this test started: the relay and its roles
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# ---- config/ ----------------------------------------------------------------------------


def test_example_config_parses_with_every_example_setting(tmp_path: Path) -> None:
    conf = REPO / "config" / "emailrelay.conf"
    parsed = parse_command_line(["--as-server", str(conf)], app_dir=str(REPO))
    assert parsed.values["spool-dir"] == "/var/spool/emailrelay"
    # "#name value" lines (no space after "#") are ready-made settings: all must be valid
    lines = conf.read_text().splitlines()
    examples = [line[1:] for line in lines if re.match(r"^#[a-z]", line)]
    assert len(examples) > 20
    enabled = tmp_path / "all.conf"
    enabled.write_text("\n".join(line[1:] if re.match(r"^#[a-z]", line) else line for line in lines) + "\n")
    # as the units run it (--as-server): "verbose" alone needs it or "log" (upstream's rule)
    everything = parse_command_line(["--as-server", str(enabled)], app_dir=str(REPO))
    for example in examples:
        name = example.split()[0]
        assert name in everything.values, name


def test_example_secrets_file_loads() -> None:
    secrets = Secrets.load(REPO / "config" / "emailrelay.auth")
    assert len(secrets.clients) == 2 and len(secrets.server) == 3 and len(secrets.trust) == 3


FAKE_SPAMASSASSIN = """#!/bin/sh
# a stand-in for spamassassin: refuses carriage returns, marks messages that mention VIAGRA
input=$(cat)
case "$input" in *"$(printf '\\r')"*) echo "CR in input" >&2; exit 9 ;; esac
spam=no
case "$input" in *VIAGRA*) spam=yes ;; esac
if test "$1 $2" = "--local --exit-code"; then
    printf '%s\\n' "$input"
    test $spam = yes && exit 1
    exit 0
fi
echo "X-Spam-Flag: $spam"
printf '%s\\n' "$input"
"""


@pytest.fixture
def fake_path(tmp_path: Path) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "spamassassin").write_text(FAKE_SPAMASSASSIN)
    (bindir / "spamassassin").chmod(0o755)
    return f"{bindir}:/usr/bin:/bin"


def run_filter(name: str, content: Path, envelope: Path, path: str) -> int:
    return subprocess.run(
        [str(REPO / "config" / "filters" / name), str(content), str(envelope)], env={"PATH": path}, timeout=60
    ).returncode


def test_spamassassin_filter_marks_and_keeps_crlf(tmp_path: Path, fake_path: str) -> None:
    content = tmp_path / "emailrelay.1.1700000000.1.content"
    envelope = tmp_path / "emailrelay.1.1700000000.1.envelope.new"
    content.write_bytes(b"Subject: offer\r\n\r\nbuy VIAGRA now\r\n")
    envelope.write_bytes((UPSTREAM / "submitted.envelope").read_bytes())
    assert run_filter("spamassassin.sh", content, envelope, fake_path) == 0
    assert content.read_bytes() == b"X-Spam-Flag: yes\r\nSubject: offer\r\n\r\nbuy VIAGRA now\r\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [content.name, envelope.name]


def test_spamassassin_discard_filter(tmp_path: Path, fake_path: str) -> None:
    content = tmp_path / "emailrelay.1.1700000000.1.content"
    envelope = tmp_path / "emailrelay.1.1700000000.1.envelope.new"
    envelope.write_bytes((UPSTREAM / "submitted.envelope").read_bytes())
    content.write_bytes(b"Subject: hello\r\n\r\nminutes attached\r\n")
    assert run_filter("spamassassin-discard.sh", content, envelope, fake_path) == 0
    assert content.exists() and envelope.exists()
    content.write_bytes(b"Subject: offer\r\n\r\nbuy VIAGRA now\r\n")
    assert run_filter("spamassassin-discard.sh", content, envelope, fake_path) == 100
    assert not content.exists() and not envelope.exists()


def test_route_by_domain_filter_sets_forward_to(tmp_path: Path) -> None:
    envelope = tmp_path / "e.envelope.new"
    original = (UPSTREAM / "submitted.envelope").read_bytes()
    envelope.write_bytes(original.replace(b"rcpt@example.net", b"Someone@Example.ORG"))
    assert run_filter("route-by-domain.sh", tmp_path / "c", envelope, "/usr/bin:/bin") == 0
    env = parse_envelope(envelope.read_bytes())
    assert env.forward_to == "mx.example.org:25" and env.to_remote == ("Someone@Example.ORG",)
    envelope.write_bytes(original)
    assert run_filter("route-by-domain.sh", tmp_path / "c", envelope, "/usr/bin:/bin") == 0
    assert envelope.read_bytes() == original


def test_cron_examples_run(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy(UPSTREAM / "failed.envelope.bad", spool / "emailrelay.1.1700000000.1.envelope.bad")
    jobs = [
        line.lstrip("#").split(None, 6)[6]
        for line in (REPO / "config" / "cron.d" / "emailrelay").read_text().splitlines()
        if re.match(r"^#?[0-9*/]+\s+[0-9*/]+\s+\S+\s+\S+\s+\S+\s+root\s+emailrelay-", line)
    ]
    assert {shlex.split(j)[0] for j in jobs} == {
        "emailrelay-resubmit",
        "emailrelay-notify",
        "emailrelay-bounce",
    }
    for job in jobs:
        words = [w.replace("/var/spool/emailrelay", str(spool)) for w in shlex.split(job)]
        tool = words[0].removeprefix("emailrelay-")
        done = subprocess.run(
            [program(), tool, *words[1:], "--dry-run"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (job, done.stderr)


def test_logrotate_and_rsyslog_snippets(tmp_path: Path) -> None:
    ran = 0
    if shutil.which("logrotate"):
        done = subprocess.run(
            [
                "logrotate",
                "-d",
                "-s",
                str(tmp_path / "state"),
                str(REPO / "deploy" / "logrotate.d" / "emailrelay"),
            ],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0 and "error" not in done.stderr.lower(), done.stderr
        ran += 1
    rsyslogd = shutil.which("rsyslogd") or (
        "/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None
    )
    if rsyslogd:
        main = tmp_path / "rsyslog.conf"
        main.write_text(f"$IncludeConfig {REPO / 'deploy' / 'rsyslog.d' / 'emailrelay.conf'}\n")
        done = subprocess.run([rsyslogd, "-N1", "-f", str(main)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        ran += 1
    if not ran:
        pytest.skip("neither logrotate nor rsyslogd is installed")
