"""``emailrelay`` as a process (SPEC.md §1): exit codes, error lines, pid file, detaching, signals, help."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emailrelay import rundir
from emailrelay.cli.main import OPTION_HINT
from tests.support.relay import REPO, free_port, pid_alive, program, shell_status, stop_process, wait_until
from tests.support.smtpd import (
    LOG_LINE_RE,
    Relays,
    Wire,
    committed,
    short_run_dir,
    spool_entries,
    wait_spool_empty,
)

pytestmark = pytest.mark.timeout(120)

ERROR_RE = re.compile(r"^emailrelay: error: ", re.MULTILINE)
SCRIPT_ERROR_RE = re.compile(r"^emailrelay: [0-9.]*: error: ", re.MULTILINE)  # what init scripts grep for


def run(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program(), *args],
        capture_output=True,
        text=True,
        errors="surrogateescape",  # octets that are not UTF-8 (an argument's) are written as they came
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = short_run_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def kill_if_alive(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- errors and exit codes


@pytest.mark.parametrize("daemon", [False, True], ids=["no-daemon", "daemon"])
def test_port_in_use_is_exit_2_with_error_line(spool: Path, run_dir: Path, daemon: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--log", "--log-time", "--no-syslog", "--port", str(port), "--interface", "127.0.0.1"]
        args += ["--spool-dir", str(spool), "--run-dir", str(run_dir), "--user", "root"]
        if not daemon:
            args.append("--no-daemon")
        result = run(*args)
    assert result.returncode == 2, result.stderr
    assert SCRIPT_ERROR_RE.search(result.stderr), result.stderr
    assert "error: socket bind error: address already in use" in result.stderr  # (E-MailRelay 2.6b's words)
    assert all(LOG_LINE_RE.match(line) for line in result.stderr.splitlines()), result.stderr
    assert spool_entries(spool) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option"],
        ["--port"],
        ["--port", "notanumber"],
        ["--port", "99999"],
        ["-Q"],
        ["a.cfg", "b.cfg"],
    ],
    ids=["unknown", "missing-value", "bad-number", "bad-port", "bad-short", "two-configs"],
)
def test_bad_command_line_is_exit_1(args: list[str]) -> None:
    """Exit 1 and one error line (``-Q``, ``--admin-terminate`` without ``--admin``, is upstream's
    ``usage error:``)."""
    result = run(*args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert re.search(r"^emailrelay: (usage )?error: ", result.stderr, re.MULTILINE), result.stderr
    lines = result.stderr.strip("\n").splitlines()  # one error, and upstream's hint after an option's
    assert len(lines) == 1 or lines[1:] == [OPTION_HINT], result.stderr
    assert "Traceback" not in result.stderr


def test_missing_spool_directory_is_exit_1(tmp_path: Path) -> None:
    result = run(
        "--no-daemon", "--no-syslog", "--port", str(free_port()), "--spool-dir", str(tmp_path / "nope")
    )
    assert result.returncode == 1
    assert ERROR_RE.search(result.stderr) and str(tmp_path / "nope") in result.stderr
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("close_stderr", [False, True], ids=["log-file", "log-file-close-stderr"])
def test_startup_error_goes_to_stderr_and_to_the_log_file(tmp_path: Path, close_stderr: bool) -> None:
    """With ``--log-file`` (and even ``--close-stderr``) the error that stops the start is on stderr as
    upstream prints it, and in the log file with its timestamp (SPEC.md §2, tests/differential)."""
    log = tmp_path / "relay.log"
    args = ["--no-daemon", "--log-time", "--log-file", str(log), "--spool-dir", str(tmp_path / "nope")]
    result = run(*args, *(["--close-stderr"] if close_stderr else []))
    assert result.returncode == 1
    message = f"invalid spool directory: {tmp_path / 'nope'}: no such file or directory"
    assert result.stderr == f"emailrelay: error: {message}\n"
    assert re.fullmatch(rf"emailrelay: [0-9.]+: error: {re.escape(message)}\n", log.read_text())


def test_bad_option_is_reported_in_upstreams_words() -> None:
    result = run("--bogus")
    assert (result.returncode, result.stderr) == (
        1,
        'emailrelay: error: invalid option: "--bogus"\n'
        '            try "emailrelay --help --verbose" for more information\n',
    )


def test_config_file_with_unknown_option_is_an_invalid_option(tmp_path: Path) -> None:
    """Upstream's words, as on the command line (it names neither the file nor the line)."""
    cfg = tmp_path / "emailrelay.conf"
    cfg.write_text("# a comment\n\nno-daemon\nport 2525\nbogus-option 1\n")
    result = run(str(cfg))
    assert result.returncode == 1
    assert result.stderr.startswith('emailrelay: error: invalid option: "--bogus-option"\n'), result.stderr


def test_unreadable_config_file(tmp_path: Path) -> None:
    result = run(str(tmp_path / "missing.conf"))
    assert result.returncode == 1
    assert ERROR_RE.search(result.stderr) and "missing.conf" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--help"], "usage: "), (["--help", "--verbose"], "usage: "), (["--version"], "E-MailRelay")],
)
def test_help_and_version(args: list[str], needle: str) -> None:
    result = run(*args)
    assert result.returncode == 0
    assert needle in result.stdout and result.stderr == ""


def test_help_verbose_lists_more_than_help() -> None:
    short, full = run("--help").stdout, run("--help", "--verbose").stdout
    assert "--spool-dir" in short and "--port" in short
    assert len(full.splitlines()) > len(short.splitlines())
    assert "--idle-timeout" in full or len(re.findall(r"--[a-z]", full)) > len(re.findall(r"--[a-z]", short))


def test_no_option_is_refused_as_not_implemented() -> None:
    """Issue 12: no "not implemented" error is left anywhere in the program's code."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "emailrelay").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"not\s+implemented|NotImplementedError\(", line, re.I)
        and "hash state restoration" not in line  # emailrelay-passwd --hash=sha1: upstream's own words
        and '"command not implemented"' not in line  # SMTP's 502 reply text for EXPN/HELP: upstream's words
    ]
    assert offenders == [], offenders


def test_deep_spool_directory_is_served_or_refused_cleanly(tmp_path: Path) -> None:
    spool = tmp_path / ("d" * 60) / "spool"
    spool.mkdir(parents=True)
    port = free_port()
    log = tmp_path / "deep.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [program(), "--no-daemon", "--log", "--no-syslog", "--port", str(port), "--interface", "127.0.0.1",
             "--spool-dir", str(spool), "--user", "root"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        served = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None and not served:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as s:
                s.settimeout(5)
                served = s.recv(100).startswith(b"220 ")
            time.sleep(0.1)
        if not served:
            rc = proc.wait(20)
            text = log.read_text()
            assert rc != 0 and SCRIPT_ERROR_RE.search(text), (rc, text[-2000:])
    finally:
        stop_process(proc)


# ---------------------------------------------------------------- running


def test_config_file_as_last_argument(tmp_path: Path, spool: Path, run_dir: Path) -> None:
    port = free_port()
    cfg = tmp_path / "relay.conf"
    cfg.write_text(
        "# emailrelay configuration\n"
        "no-daemon\n"
        f"port {port}   # trailing comment\n"
        "interface 127.0.0.1\n"
        f"spool-dir {spool}\n"
        f"run-dir {run_dir}\n"
        "\n"
        "log\n"
        "log-time\n"
        "no-syslog\n"
        "user root\n"
    )
    log_path = tmp_path / "cfg.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [program(), str(cfg)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        assert wait_until(lambda: _accepts(port) or proc.poll() is not None, 30)
        assert proc.poll() is None, log_path.read_text()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("cfg@example.com", ["r@example.net"], b"Subject: cfg\r\n\r\nvia config file\r\n")
        ((_, env, _, _),) = committed(spool)
        assert env.from_address == "cfg@example.com"
        proc.send_signal(signal.SIGTERM)
        assert shell_status(proc.wait(20)) == 128 + signal.SIGTERM
        text = log_path.read_text()
        assert f"smtp server on 127.0.0.1:{port}" in text
        assert all(LOG_LINE_RE.match(line) for line in text.splitlines()), text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_a_log_file_that_cannot_be_opened_is_a_start_up_error(tmp_path: Path, spool: Path) -> None:
    """As upstream: exit 1 and ``cannot open log file: <path>`` (ours ran and logged nothing)."""
    missing = tmp_path / "no-such-directory" / "relay.log"
    for mode in (["--no-daemon", "--port", str(free_port())], ["--as-client", "127.0.0.1:9"]):
        done = run(*mode, "--log", "--log-file", str(missing), "--spool-dir", str(spool), "--user", "root")
        assert done.returncode == 1, done
        assert done.stderr == f"emailrelay: error: cannot open log file: {missing}\n"


def test_an_interface_name_that_is_not_utf8_is_refused_not_a_crash(spool: Path) -> None:
    done = run(
        "--no-daemon",
        "--port",
        str(free_port()),
        "--interface",
        "1\udcff",
        "--spool-dir",
        str(spool),
        "--user",
        "root",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    # the name's octets as given (the 0xff, not a "\udcff" text)
    assert done.stderr == "emailrelay: error: invalid interface name or address: 1\udcff\n", done.stderr


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


def test_daemon_pid_file_and_sigterm(tmp_path: Path, spool: Path, run_dir: Path) -> None:
    """The command returns with the pid file written (``emailrelay ... && cat <pid file>``, as
    upstream's), and a relative ``--pid-file`` and ``--log-file`` are where the command was run (ours
    used to put them in /, where the daemon had moved, and return before the pid file was there)."""
    port = free_port()
    pid_file = tmp_path / "run" / "emailrelay.pid"
    log_path = tmp_path / "daemon.log"
    args = [program(), "--log", "--no-syslog", "--port", str(port), "--interface", "127.0.0.1",
            "--spool-dir", str(spool), "--run-dir", str(run_dir), "--user", "root",
            "--pid-file", "run/emailrelay.pid", "--log-file", "relay.log"]  # fmt: skip
    daemon_pid = None
    with open(log_path, "wb") as out:
        started = time.monotonic()
        parent = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        assert parent.wait(30) == 0, log_path.read_text()
        assert time.monotonic() - started < 30
        assert pid_file.exists(), log_path.read_text()
        assert "smtp server on 127.0.0.1:" in (tmp_path / "relay.log").read_text()
        # scripts connect as soon as the pid file is there: the connection must be served, not refused
        with Wire(port) as w:
            assert w.reply()[0] == 220
            assert w.command(b"QUIT")[0] == 221
        text = pid_file.read_text()
        assert re.fullmatch(r"[0-9]+\n?", text), text
        daemon_pid = int(text)
        assert daemon_pid != parent.pid and pid_alive(daemon_pid)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("d@example.com", ["r@example.net"], b"Subject: daemon\r\n\r\nx\r\n")
        assert len(committed(spool)) == 1
        os.kill(daemon_pid, signal.SIGTERM)
        assert wait_until(lambda: not pid_alive(daemon_pid), 20), "daemon did not stop on SIGTERM"
        assert wait_until(lambda: not pid_file.exists(), 5), "pid file not removed"
        assert not _accepts(port)
    finally:
        if daemon_pid is not None:
            kill_if_alive(daemon_pid)
        elif pid_file.exists():
            with contextlib.suppress(ValueError):
                kill_if_alive(int(pid_file.read_text()))


@pytest.mark.parametrize("mode", ["--single-process", "--no-daemon"])
def test_sigterm_as_soon_as_the_pid_file_appears_is_a_clean_stop(
    tmp_path: Path, spool: Path, mode: str
) -> None:
    """A SIGTERM right after the pid file is written, before the loop or the supervisor has taken
    over the signal handlers, still stops the relay cleanly: exit 143 and the pid file removed."""
    for attempt in range(3):
        pid_file = tmp_path / f"relay{attempt}.pid"
        args = [program(), "--no-daemon", "--log", "--no-syslog", "--port", str(free_port()), "--interface",
                "127.0.0.1", "--spool-dir", str(spool), "--user", "root", "--pid-file", str(pid_file), mode]  # fmt: skip
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        try:
            assert wait_until(pid_file.exists, 30, interval=0.001)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            assert shell_status(proc.returncode) == 128 + signal.SIGTERM, err.decode()
            assert not pid_file.exists()
            assert not rundir.default(spool).exists()  # supervised: no socket or directory left in /run
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_single_process_stop_adds_no_log_line(tmp_path: Path, spool: Path) -> None:
    """As E-MailRelay 2.6b: a stop logs nothing of its own (ours said ``info: stopping``)."""
    port = free_port()
    args = [program(), "--no-daemon", "--log", "--verbose", "--no-syslog", "--port", str(port), "--interface",
            "127.0.0.1", "--spool-dir", str(spool), "--user", "root", "--single-process"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _greeted(port), 30, interval=0.05)  # the loop runs: its handlers are set
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        lines = err.decode().splitlines()
        assert any("smtp server on 127.0.0.1:" in line for line in lines), lines
        assert not [line for line in lines if line.endswith(": stopping")], lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _greeted(port: int) -> bool:
    with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.quit()
        return True
    return False


def test_sigterm_with_open_session_exits_143(tmp_path: Path) -> None:
    relays = Relays(tmp_path)
    try:
        relay = relays.start()
        idle = Wire(relay.port)
        idle.greet()
        mid_data = Wire(relay.port)
        mid_data.greet()
        mid_data.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        assert mid_data.replies(3) == [250, 250, 354]
        mid_data.send(b"Subject: unfinished\r\n\r\n" + b"line\r\n" * 50)
        assert wait_until(lambda: any(n.endswith(".content") for n in spool_entries(relay.spool)), 20)
        started = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        rc = relay.proc.wait(10)
        elapsed = time.monotonic() - started
        assert shell_status(rc) == 128 + signal.SIGTERM and elapsed < 10, (rc, elapsed)
        idle.close()
        mid_data.close()
        # the unfinished message was never committed, and its content file is gone
        assert committed(relay.spool) == []
        assert wait_spool_empty(relay.spool, 5), spool_entries(relay.spool)
        assert not _accepts(relay.port)
    finally:
        relays.close()


def test_every_log_line_has_the_emailrelay_form_when_stopping_with_an_open_session(tmp_path: Path) -> None:
    relays = Relays(tmp_path)
    try:
        relay = relays.start()
        with Wire(relay.port) as idle:
            idle.greet()
            relay.proc.send_signal(signal.SIGTERM)
            assert shell_status(relay.proc.wait(15)) == 128 + signal.SIGTERM
        bad = [line for line in relay.log().splitlines() if not LOG_LINE_RE.match(line)]
        assert bad == []
    finally:
        relays.close()
