"""Reference guide, "Logging options" and "Configuration", as a user types them.

Every test runs the real ``emailrelay`` program and looks at what it wrote:
standard error, ``--log-file`` files and the system log. The system log is
observed without touching the machine's /dev/log: the relay runs in a private
mount namespace (``unshare -m``) whose /dev/log points at a datagram socket
owned by the test. Configuration tests write the guide's example files (with
ports and directories replaced by free ones) and pass them as the last
argument, then send mail with smtplib to prove each line took effect.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import free_port, program, shell_status, spool_files, wait_for_port, wait_until
from tests.support.sink import envelope_text, simple_content, write_raw

pytestmark = pytest.mark.timeout(60)

BODY = b"Subject: compat\r\n\r\nhello\r\n"
MAIL_FROM = re.compile(r'info: rx<<: "mail from:<a@example\.com>', re.IGNORECASE)  # the verbose protocol line
TIME_PREFIX = re.compile(r"^emailrelay: \d{8}\.\d{6}\.\d{3}: info: ", re.MULTILINE)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    spool: Path
    out: Path  # standard output and standard error

    def text(self) -> str:
        return self.out.read_text(errors="replace")


@contextlib.contextmanager
def server(tmp_path: Path, *options: str, name: str = "relay", foreground: bool = True) -> Iterator[Server]:
    """``emailrelay [--no-daemon] --single-process --port P --interface 127.0.0.1 --spool-dir S --user root <options>``."""
    port = free_port()
    spool = tmp_path / f"{name}-spool"
    spool.mkdir()
    out = tmp_path / f"{name}.out"
    args = [program(), *(["--no-daemon"] if foreground else []), "--single-process", "--port", str(port),
            "--interface", "127.0.0.1", "--spool-dir", str(spool), "--user", "root", *options]  # fmt: skip
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path
        )
    s = Server(proc, port, spool, out)
    try:
        wait_for_port(port, proc=proc if foreground else None)  # type: ignore[arg-type]
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def send_one(port: int, sender: str = "a@example.com", recipient: str = "b@example.net") -> int:
    """One message over SMTP; returns the client's source port."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        client_port = int(c.sock.getsockname()[1])  # type: ignore[union-attr]
        c.sendmail(sender, [recipient], BODY)
    return client_port


def run_emailrelay(
    *args: str, prefix: list[str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), program(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def forward_once(
    spool: Path, *options: str, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A short-lived run that logs a little and exits: ``-x -t --forward --forward-to <next hop>`` with
    one message in the spool (with an empty one, as E-MailRelay 2.6b, it would only say ``no messages
    to send``); its info line is ``smtp connection to 127.0.0.1:<port>``."""
    spool.mkdir(exist_ok=True)
    write_raw(spool, envelope_text("a@example.com", ["b@example.net"]), simple_content("once@test"))
    with FakeSmtp() as hop:
        return run_emailrelay(
            "-x", "-t", "--forward", "--forward-to", hop.address, "--spool-dir", str(spool),
            "--user", "root", *options, prefix=prefix,
        )  # fmt: skip


# ------------------------------------------------------------------ the system log, observed privately

_UNSHARE_SCRIPT = (
    'mkdir -p "$D/olddev" && mount --rbind /dev "$D/olddev" && mount -t tmpfs none /dev && '
    'for e in "$D"/olddev/*; do ln -s "$e" "/dev/${e##*/}"; done && ln -s "$D/log" /dev/log && exec "$@"'
)


@functools.cache
def can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=10
    )
    return done.returncode == 0


@dataclass
class Syslog:
    prefix: list[str]  # put in front of the emailrelay command line
    records: list[str]

    def wait(self, pattern: str, timeout: float = 5.0) -> bool:
        return wait_until(lambda: any(re.search(pattern, r) for r in self.records), timeout)


@contextlib.contextmanager
def syslog() -> Iterator[Syslog]:
    if not can_unshare():
        pytest.skip("needs unshare -m (a private mount namespace) to observe the system log")
    d = Path(tempfile.mkdtemp(prefix="er-syslog-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(d / "log"))
    sock.settimeout(0.1)
    records: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                records.append(sock.recv(65536).decode(errors="replace"))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    script = f"D={shlex.quote(str(d))}; {_UNSHARE_SCRIPT}"
    try:
        yield Syslog(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"], records)
    finally:
        time.sleep(0.2)
        stop.set()
        thread.join(5)
        sock.close()
        subprocess.run(
            ["umount", "-l", str(d / "olddev")], capture_output=True
        )  # only if it leaked (it never does)
        shutil.rmtree(d, ignore_errors=True)


# ====================================================================== Logging options


def test_log_and_verbose_levels(tmp_path: Path) -> None:
    """No ``--log``: warnings only; ``-l``: summary lines; ``-l -v``: the protocol lines too."""
    outputs = {}
    for name, options in {"quiet": (), "log": ("-l",), "verbose": ("-l", "-v")}.items():
        with server(tmp_path, "-n", *options, name=name) as s:
            send_one(s.port)
            assert wait_until(lambda s=s: len(spool_files(s.spool, ".envelope")) == 1)  # type: ignore[misc]
        outputs[name] = s.text()
    assert "info:" not in outputs["quiet"]
    assert "emailrelay: info: smtp server on" in outputs["log"] and "rx<<" not in outputs["log"]
    assert MAIL_FROM.search(outputs["verbose"]), outputs["verbose"]
    # the plain format: no time stamp, no address unless asked for
    assert not TIME_PREFIX.search(outputs["verbose"]) and "127.0.0.1; " not in outputs["verbose"]


def test_log_goes_to_the_system_log_with_facility_mail() -> None:
    """``-l``: standard error and the system log (LOG_MAIL: priority 22 for info)."""
    with syslog() as log, tempfile.TemporaryDirectory() as d:
        done = forward_once(Path(d), "-l", prefix=log.prefix)
        assert done.returncode == 0, done.stderr
        assert "info: smtp connection to 127.0.0.1:" in done.stderr
        assert log.wait(r"^<22>.*emailrelay\[\d+\]: emailrelay: info: smtp connection to 127\.0\.0\.1:"), (
            log.records
        )


def test_no_syslog_short_form() -> None:
    """``-l -n``: standard error only; nothing reaches the system log."""
    with syslog() as log, tempfile.TemporaryDirectory() as d:
        done = forward_once(Path(d), "-l", "-n", prefix=log.prefix)
        assert done.returncode == 0 and "info: smtp connection to" in done.stderr, done.stderr
    assert log.records == []


@pytest.mark.parametrize(("option", "priority"), [("-k", 22), ("--syslog=local0", 134)])
def test_syslog_overrides_no_syslog_with_facility(option: str, priority: int) -> None:
    """``-l -n -k`` / ``--syslog[=<facility>]``: the system log even with ``--no-syslog``, with that facility."""
    with syslog() as log, tempfile.TemporaryDirectory() as d:
        done = forward_once(Path(d), "-l", "-n", option, prefix=log.prefix)
        assert done.returncode == 0, done.stderr
        assert log.wait(rf"^<{priority}>.*emailrelay\[\d+\]: emailrelay: info: smtp connection to"), (
            log.records
        )


def test_syslog_bad_facility_is_a_usage_error(tmp_path: Path) -> None:
    done = forward_once(tmp_path / "spool", "-l", "--syslog=bogus")
    assert done.returncode == 1
    assert done.stderr == (
        "emailrelay: usage error: invalid --syslog facility: use 'mail', 'user', 'daemon', or 'local0' to 'local7'\n"
    ), done.stderr


def test_as_client_implies_log_and_no_syslog_and_syslog_overrides(tmp_path: Path) -> None:
    """``--as-client``: info lines on standard error (``--log``) but not the system log, unless ``--syslog``."""
    spool = tmp_path / "spool"
    spool.mkdir()
    with syslog() as log, FakeSmtp() as hop:
        write_raw(spool, envelope_text("a@example.com", ["b@example.net"]), simple_content("one@test"))
        done = run_emailrelay(
            "--as-client", hop.address, "--spool-dir", str(spool), "-u", "root", prefix=log.prefix
        )
        assert done.returncode == 0 and "info: smtp connection to" in done.stderr, done.stderr
        time.sleep(0.3)
        assert log.records == []
        write_raw(spool, envelope_text("a@example.com", ["b@example.net"]), simple_content("two@test"))
        done = run_emailrelay(
            "--as-client", hop.address, "--spool-dir", str(spool), "-u", "root", "--syslog",
            prefix=log.prefix,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert log.wait(r"^<22>.*emailrelay\[\d+\]: emailrelay: info: smtp connection to"), log.records


def test_log_time_short_form_and_log_format_time(tmp_path: Path) -> None:
    """``-L`` and ``--log-format=time``: ``emailrelay: YYYYMMDD.HHMMSS.mmm: info: ...`` (local time)."""
    for option in ("-L", "--log-format=time"):
        before = time.strftime("%Y%m%d")
        done = forward_once(tmp_path / "spool", "-l", "-n", option)
        assert done.returncode == 0, done.stderr
        stamps = TIME_PREFIX.findall(done.stderr)
        assert stamps and all(line.startswith("emailrelay: ") for line in done.stderr.splitlines()), (
            done.stderr
        )
        assert re.search(rf"^emailrelay: ({before}|{time.strftime('%Y%m%d')})\.", done.stderr, re.MULTILINE)


@pytest.mark.parametrize("options", [("-l", "-g", "--log-address"), ("-l", "-v", "--log-format=address")])
def test_log_address_and_debug(tmp_path: Path, options: tuple[str, ...]) -> None:
    """``--log-address`` = ``--log-format=address``: a connection's lines start with the client's address.

    ``-g`` (debug, as a build without debug messages) logs at least what ``-l -v`` logs; like
    upstream, it needs ``--log`` (or an ``--as-*``).
    """
    with server(tmp_path, "-n", *options) as s:
        send_one(s.port)
        assert wait_until(lambda: 'rx<<: "quit"' in s.text().lower(), 10)
    text = s.text()
    assert re.search(
        r'^emailrelay: info: 127\.0\.0\.1; rx<<: "mail from:<a@example\.com>', text, re.M | re.I
    ), text
    assert "info: smtp server on 127.0.0.1:" in text  # not a connection's line: no address


def test_log_format_unit_port_msgid(tmp_path: Path) -> None:
    """``--log-format=unit,port,msgid``: ``<level>: [<unit>: ][<port>: ][(<msgid>) ]<text>``.

    The configuration's name (``in``) on every line; the client's port (alone, as E-MailRelay
    2.6b writes it without ``address``) on its
    session's lines; the message id, as E-MailRelay 2.6b writes it (``(<pid>.<time>.<seq>) ``),
    only on the lines that forward it (none on the SMTP session's, its filter's included).
    """
    script = tmp_path / "filter.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    with FakeSmtp() as hop:
        options = ("-l", "-v", "-n", "--log-format=unit,port,msgid", "--in-spool-dir", str(tmp_path / "relay-spool"),
                   "--filter", str(script), "--forward-on-disconnect", "--forward-to", hop.address)  # fmt: skip
        with server(tmp_path, *options) as s:  # "in" names the (only) configuration: its unit name
            client_port = send_one(s.port)
            assert hop.wait_for_messages(1)
            assert wait_until(lambda: "2.0.0 queued" in s.text(), 10)
    text = s.text()
    m = re.search(r"new content file \[(emailrelay\.\d+\.\d+\.\d+)\.content\]", text)
    assert m, text
    mid = re.escape(m[1])
    shown = re.escape(f"({m[1].removeprefix('emailrelay.')})")
    peer = f"{client_port}:"
    for pattern in [
        r"in: \[in\] smtp server on 127\.0\.0\.1:\d+$",  # not a connection's line: the unit (and upstream's tag)
        rf'in: {peer} rx<<: "ehlo ',
        rf'in: {peer} rx<<: "mail from:<a@example\.com>"$',  # no message yet
        rf"in: {peer} new content file \[{mid}\.content\]$",
        rf'in: {peer} rx<<: "\."$',
        rf"in: {peer} filter \[filter\.sh\]: \[{mid}\]: running ",  # the session's filter task
        r'in: tx>>: "250 message processed"$',  # the transaction's end: no port (upstream's)
        rf'in: {peer} rx<<: "quit"$',
        rf"in: {shown} forwarding \[{mid}\]$",  # the forwarder: no client port
        rf'in: {shown} tx>>: "MAIL FROM:<a@example\.com>"$',
        rf'in: {shown} rx<<: "250 2\.0\.0 queued"$',
    ]:
        assert re.search(rf"^emailrelay: info: {pattern}", text, re.M | re.I), (pattern, text)


def test_log_format_unit_names_each_configuration_in_supervised_roles(tmp_path: Path) -> None:
    """``--log-format=unit,network`` (the user guide's advanced set-up): the smtp role of each
    configuration (``in``, ``out``) names it; ``network`` adds nothing, as E-MailRelay 2.6b."""
    ports = {name: free_port() for name in ("in", "out")}
    args = [program(), "--no-daemon", "--user", "root", "-l", "-n", "--log-format=unit,network"]
    for name, port in ports.items():
        (tmp_path / name).mkdir()
        args += [f"--{name}-spool-dir", str(tmp_path / name), f"--{name}-port", str(port),
                 f"--{name}-interface", "127.0.0.1"]  # fmt: skip
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path
        )
    try:
        for port in ports.values():
            wait_for_port(port, proc=proc)  # type: ignore[arg-type]
        client_ports = {name: send_one(port) for name, port in ports.items()}
        assert wait_until(lambda: out.read_text().count("smtp connection closed") >= 4, 20), out.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = out.read_text()
    for name, port in ports.items():
        assert re.search(
            rf"^emailrelay: info: {name}: \[{name}\] smtp server on 127\.0\.0\.1:{port}$", text, re.M
        ), text
        who = f"127.0.0.1:{client_ports[name]}"
        assert f"emailrelay: info: {name}: smtp connection from {who}\n" in text, text


def test_log_file_with_daily_name_and_close_stderr(tmp_path: Path) -> None:
    """``-N <file>`` with ``%d`` (YYYYMMDD), unaffected by ``-e``; without a log file ``-e`` silences stderr."""
    pattern = tmp_path / "logs-%d.txt"
    with server(tmp_path, "-l", "-n", "-e", "-N", str(pattern), name="file") as s:
        send_one(s.port)
        logfile = tmp_path / f"logs-{time.strftime('%Y%m%d')}.txt"
        assert wait_until(
            lambda: "smtp connection closed" in (logfile.read_text() if logfile.exists() else ""), 10
        )
    assert "smtp server on 127.0.0.1:" in logfile.read_text()
    assert s.text() == ""  # standard error was not used at all
    with server(tmp_path, "-l", "-n", "-e", name="stderr") as s:
        send_one(s.port)
        assert wait_until(lambda: len(spool_files(s.spool, ".envelope")) == 1)
    # only the warning: the stream is closed once the pid file is written, before the "server on"
    # lines, as E-MailRelay 2.6b does
    closing = "emailrelay: warning: logging will stop because --close-stderr closes the standard error stream"
    assert s.text() == closing + " soon after startup\n"


@pytest.mark.parametrize("mode", ["--as-server", "--as-proxy"])
def test_as_server_and_as_proxy_imply_log_and_close_stderr(tmp_path: Path, mode: str) -> None:
    """``--as-server`` / ``--as-proxy``: background daemons that log (``--log``) then close standard error."""
    pid_file = tmp_path / "relay.pid"
    options = [mode] if mode == "--as-server" else [f"{mode}=127.0.0.1:{free_port()}"]
    with server(tmp_path, *options, "-n", "-i", str(pid_file), foreground=False) as s:
        try:
            assert s.proc.wait(20) == 0  # the parent returns at once; the daemon serves
            assert wait_until(pid_file.exists, 10)
            send_one(s.port)
            assert wait_until(lambda: len(spool_files(s.spool, ".envelope")) >= 1 or mode == "--as-proxy", 10)
            time.sleep(0.3)
        finally:
            with contextlib.suppress(OSError, ValueError):  # the daemon we started, by its pid
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            wait_until(lambda: not pid_file.exists(), 10)
    # --log is implied (the warning is only given when there is a log), and --close-stderr: nothing
    # more is written, not even the "server on" lines (as E-MailRelay 2.6b)
    closing = f"emailrelay: warning: logging will stop because {mode} closes the standard error stream"
    assert s.text() == closing + " soon after startup\n"


# ====================================================================== Configuration


def _relative_to_app(target: Path) -> str:
    """``@app/..`` path reaching ``target`` from the directory of the emailrelay program."""
    app = Path(program()).resolve().parent
    return "@app/" + os.path.relpath(target, app)


def test_guide_example_config_file(tmp_path: Path) -> None:
    """The guide's first example (its spool-dir and port replaced): log on, ``#verbose # commented out`` off."""
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    conf = tmp_path / "emailrelay.conf"
    conf.write_text(f"# emailrelay.conf\nlog\n#verbose # commented out\nspool-dir {spool}\nport {port}\n")
    args = [program(), "--no-daemon", "--single-process", "--interface", "127.0.0.1", "--user", "root",
            "--no-syslog", str(conf)]  # fmt: skip
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)  # type: ignore[arg-type]
        send_one(port)
        assert wait_until(lambda: len(spool_files(spool, ".envelope")) == 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert shell_status(proc.wait(20)) == 128 + signal.SIGTERM
    text = out.read_text()
    assert f"info: smtp server on 127.0.0.1:{port}" in text  # "log"
    assert "rx<<" not in text  # "#verbose" is a comment
    done = run_emailrelay(str(conf), "--port", "1")  # the configuration file must be the last argument
    assert done.returncode == 1 and "usage error: too many non-option arguments" in done.stderr, done.stderr


def test_app_substitution_in_file_names(tmp_path: Path) -> None:
    """``@app`` in a file-name option is the directory holding the emailrelay program."""
    log_file = tmp_path / "app.log"
    conf = tmp_path / "emailrelay.conf"
    conf.write_text(f"log\nno-syslog\nlog-file {_relative_to_app(log_file)}\n")
    done = forward_once(tmp_path / "spool", str(conf))
    assert done.returncode == 0, done.stderr
    assert "info: smtp connection to 127.0.0.1:" in log_file.read_text()


def _guide_multi_config(tmp_path: Path, in_port: int, out_port: int, hop: str, in_filter: str) -> Path:
    """The guide's second example, with directories, ports and the smarthost replaced."""
    conf = tmp_path / "emailrelay.conf"
    conf.write_text(
        "# emailrelay.conf\nlog\nuser root\n# in...\n"
        f"in-spool-dir {tmp_path / 'in'}\nin-port {in_port}\nin-remote-clients\n{in_filter}\nin-domain example.com\n"
        f"# out...\nout-spool-dir {tmp_path / 'out'}\nout-port {out_port}\nout-forward-on-disconnect\n"
        f"out-forward-to {hop}\n"
    )
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    return conf


def local_account() -> str:
    """A system account in account:'s default uid range 1000-32767 (skip the test if there is none)."""
    names = sorted(p.pw_name for p in pwd.getpwall() if 1000 <= p.pw_uid <= 32767)
    if not names:
        pytest.skip("no system account with a uid in 1000-32767 for the account: verifier")
    return names[0]


def test_guide_example_two_instances(tmp_path: Path) -> None:
    """The guide's ``in-``/``out-`` example: ``in`` stores, ``out`` forwards on disconnect to the smarthost.

    The guide's ``in-filter account:`` line names a program called ``account:`` (``account:`` is an
    address verifier), as E-MailRelay 2.6b takes it: the relay warns that it does not exist and
    serves; with ``in-address-verifier account:`` instead, the example runs as described.
    """
    in_port, out_port = free_port(), free_port()

    def start(conf: Path, out: Path) -> subprocess.Popen[bytes]:
        args = [program(), "--no-daemon", "--single-process", "--no-syslog", "--in-interface", "127.0.0.1",
                "--out-interface", "127.0.0.1", str(conf)]  # fmt: skip
        with open(out, "wb") as f:
            proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_port(in_port, proc=proc)  # type: ignore[arg-type]
        wait_for_port(out_port, proc=proc)  # type: ignore[arg-type]
        return proc

    with FakeSmtp() as hop:
        conf = _guide_multi_config(tmp_path, in_port, out_port, hop.address, "in-filter account:")
        out = tmp_path / "as-typed.txt"
        proc = start(conf, out)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        assert "warning: filter program does not exist: " in out.read_text(), out.read_text()
        assert out.read_text().count("warning: filter program does not exist: ") == 1
        conf = _guide_multi_config(tmp_path, in_port, out_port, hop.address, "in-address-verifier account:")
        out = tmp_path / "out.txt"
        proc = start(conf, out)
        try:
            send_one(in_port, "to-in@example.com", f"{local_account()}@example.com")
            send_one(out_port, "to-out@example.com")
            assert hop.wait_for_messages(1, timeout=20), out.read_text()
            assert wait_until(lambda: spool_files(tmp_path / "out", ".envelope") == [], 10)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    assert [m.mail_from for m in hop.messages] == ["to-out@example.com"]
    (kept,) = spool_files(tmp_path / "in", ".envelope")
    assert "to-in@example.com" in kept.read_text()


def test_prefixed_process_options_only_for_the_first_instance(tmp_path: Path) -> None:
    """``--out-verbose`` is ignored (``in`` comes first); ``--in-verbose`` and unprefixed options apply to ``in``."""
    conf = tmp_path / "emailrelay.conf"
    in_spool, out_spool = tmp_path / "in", tmp_path / "out"
    in_spool.mkdir()
    out_spool.mkdir()
    conf.write_text(f"in-spool-dir {in_spool}\nout-spool-dir {out_spool}\nout-port {free_port()}\n")
    results = {}
    for option in ("--out-verbose", "--in-verbose"):
        port = free_port()
        args = [program(), "--no-daemon", "--single-process", "--log", "--no-syslog", "--user", "root",
                "--interface", "127.0.0.1", "--out-interface", "127.0.0.1", "--port", str(port), option, str(conf)]  # fmt: skip
        out = tmp_path / f"{option}.txt"
        with open(out, "wb") as f:
            proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_port(port, proc=proc)  # type: ignore[arg-type]  # unprefixed --port: the first instance's
            send_one(port)
            assert wait_until(lambda out=out: "smtp connection closed" in out.read_text(), 10)  # type: ignore[misc]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        results[option] = out.read_text()
    assert "ignoring" not in results["--out-verbose"]  # silently, as E-MailRelay 2.6b
    assert "rx<<" not in results["--out-verbose"]
    assert MAIL_FROM.search(results["--in-verbose"]), results["--in-verbose"]
    assert len(spool_files(in_spool, ".envelope")) == 2 and spool_files(out_spool, ".envelope") == []
