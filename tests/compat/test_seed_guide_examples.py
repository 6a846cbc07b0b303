"""The seed user guide (000_f2e06d030cad569a.txt), run as a user would type it.

What it proves: every example command line of the older user guide the
project was founded on works with this relay, typed the way the guide
prints it (through ``/bin/sh``, with ``$HOME`` set), with real clients
(smtplib, poplib, swaks, spamassassin, raw sockets for the telnet
dialogue) against a local next hop.  Only outside hosts (``smarthost:smtp``,
``<myisp>:smtp`` become ``127.0.0.1:<port>`` of a :class:`FakeSmtp`),
system paths (``/etc/...``, ``/usr/local/...``, ``/var/spool/emailrelay``
become files under the test's directory) and fixed ports are substituted;
options a test needs to run at all (``--port``, ``--interface 127.0.0.1``,
``--pid-file``, ``--user root``, ``--spool-dir`` where the guide relies on
the default) are appended after the guide's own options, in the same order.
The rows of ``docs/compat-parts/50-seed-guide.md`` cite these tests.
"""

from __future__ import annotations

import contextlib
import grp
import os
import poplib
import re
import shlex
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_smtp import FakeSmtp
from tests.support.guides import SEED, guide_text
from tests.support.relay import BIN, REPO, free_port, pid_alive, program, start_relay, stop_pid, wait_until
from tests.support.sink import printed_envelope

pytestmark = pytest.mark.timeout(120)

SCRIPTS = Path(__file__).resolve().parent / "guide_scripts"
INIT = REPO / "deploy" / "init.d" / "emailrelay"
SH = shutil.which("dash") or "/bin/sh"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

# (line of the seed guide, the example exactly as printed there, without the leading tab)
EXAMPLES: list[tuple[int, str]] = [
    (69, "emailrelay --as-proxy smarthost:smtp --filter $HOME/bin/addsig --spool-dir $HOME/tmp"),
    (79, "emailrelay --as-server --port 10025 --spool-dir $HOME/tmp"),
    (83, "emailrelay --as-client smarthost:smtp --spool-dir $HOME/tmp"),
    (87, "emailrelay --pop --no-smtp --log --close-stderr"),
    (98, "emailrelay --help --verbose"),
    (129, "$ ls -d /*/init.d"),
    (130, "$ runlevel | awk '{print $2}'"),
    (136, "$ cp /usr/local/libexec/emailrelay /etc/init.d"),
    (141, "$ cd /etc/init.d/rc5.d"),
    (142, "$ ls *sendmail*"),
    (148, "$ ln -s ../emailrelay S10emailrelay"),
    (149, "$ ln -s ../emailrelay K10emailrelay"),
    (155, "$ rm *sendmail"),
    (177, "emailrelay --as-client <myisp>:smtp"),
    (184, "#!/bin/sh"),
    (185, "exec /usr/local/sbin/emailrelay --as-client <myisp>:smtp"),
    (199, "if test -f /var/spool/emailrelay/*.envelope.bad"),
    (200, "then"),
    (201, "\techo Failed mail >&2"),
    (202, "fi"),
    (232, "mail.info: /var/log/mail.log"),
    (344, "emailrelay --as-server --pop --pop-auth /etc/emailrelay.auth"),
    (350, "APOP server user1 password1"),
    (351, "APOP server user2 password2"),
    (457, 'emailrelay --as-server --filter "c:/winnt/system32/cscript.exe //nologo c:/program\\ files/emailrelay/emailrelay-runperl.js"'),
    (470, "emailrelay --as-server --filter /usr/local/bin/myfilter.sh"),
    (471, "emailrelay --as-client smarthost:smtp"),
    (475, "emailrelay --as-server"),
    (476, "emailrelay --as-client smarthost:smtp --client-filter /usr/local/bin/myfilter.sh"),
    (482, "emailrelay --log --close-stderr --no-smtp --poll 30 --forward-to smarthost:smtp ..."),
]  # fmt: skip


def guide(line: int) -> str:
    return dict(EXAMPLES)[line]


# ---- helpers ------------------------------------------------------------------------------


@pytest.fixture
def home() -> Iterator[Path]:
    """``$HOME``, with the guide's ``$HOME/tmp`` spool directory in it, set up as an installed spool is.

    It is a short directory under /tmp that the relay's unprivileged ``--user`` (``daemon``) can
    reach, so the guide's commands run without ``--user root``; the spool belongs to root and
    group ``daemon``, mode 0770, as ``make install`` leaves /var/spool/emailrelay.
    """
    path = Path(tempfile.mkdtemp(prefix="sg", dir="/tmp"))
    path.chmod(0o755)
    spool = path / "tmp"
    spool.mkdir()
    os.chown(spool, 0, grp.getgrnam("daemon").gr_gid)
    spool.chmod(0o770)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_dir(home: Path) -> Path:
    """A short directory for pid files (the supervisor's ipc paths live beside the pid file)."""
    path = home / "run"
    path.mkdir()
    return path


def user_env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "PATH": f"{BIN}:/usr/bin:/bin", **extra}


def typed(line: int, extra: list[str] | tuple[str, ...] = (), **subst: str) -> str:
    """The guide's command with outside hosts/paths substituted and test-only options appended."""
    text = guide(line)
    for old, new in subst.items():
        assert old in text, (line, old)
        text = text.replace(old, new)
    return text + ("" if not extra else " " + shlex.join(extra))


def shell(command: str, env: dict[str, str], log: Path, timeout: float = 60) -> int:
    """Run a command line through /bin/sh; output goes to a file (a daemon may keep it open)."""
    with open(log, "ab") as out:
        return subprocess.run(
            [SH, "-c", command], env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, timeout=timeout
        ).returncode


@contextlib.contextmanager
def daemon(command: str, env: dict[str, str], pid_file: Path, log: Path) -> Iterator[int]:
    """Start a detaching relay from a command line, yield the pid from its pid file, stop it by that pid."""
    rc = shell(command, env, log)
    assert rc == 0, log.read_text()
    assert wait_until(pid_file.exists, 30), log.read_text()
    pid = int(pid_file.read_text())
    try:
        yield pid
    finally:
        stop_pid(pid)


def files(spool: Path) -> list[Path]:
    """What is in a spool directory, without the relay's own dot-directories."""
    return sorted(p for p in spool.iterdir() if not p.name.startswith("."))


def committed(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.envelope"))


def message(subject: str, to: str = "me@myhost.myisp.net", body: str = "Test message.") -> bytes:
    return f"To: {to}\r\nFrom: me@myhost.myisp.net\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()


def send(port: int, subject: str, to: str = "me@myhost.myisp.net", body: str = "Test message.") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.sendmail("me@myhost.myisp.net", [to], message(subject, to, body))


def fd2_target(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/2")


# ---- the table itself ---------------------------------------------------------------------


def test_examples_are_quoted_verbatim_from_the_seed_guide() -> None:
    lines = guide_text(SEED).splitlines()
    for number, text in EXAMPLES:
        assert lines[number - 1] == "\t" + text, (number, lines[number - 1])


# ---- Running E-MailRelay ------------------------------------------------------------------


def test_seed_proxy_with_addsig_filter(home: Path, run_dir: Path) -> None:
    """Line 69: a proxy that passes messages through "addsig" and on to the smarthost."""
    (home / "bin").mkdir()
    shutil.copy(SCRIPTS / "seed_addsig.sh", home / "bin" / "addsig")
    port, pid_file = free_port(), run_dir / "proxy.pid"
    with FakeSmtp() as hop:
        command = typed(
            69, ["--port", str(port), "--interface", "127.0.0.1", "--pid-file", str(pid_file)],
            **{"smarthost:smtp": hop.address},
        )  # fmt: skip
        assert command.startswith(
            f"emailrelay --as-proxy {hop.address} --filter $HOME/bin/addsig --spool-dir $HOME/tmp "
        )
        with daemon(command, user_env(home), pid_file, home / "proxy.log"):
            swaks = subprocess.run(
                ["swaks", "--server", f"127.0.0.1:{port}", "--from", "me@myhost.myisp.net",
                 "--to", "friend@elsewhere.example", "--header", "Subject: proxied", "--body", "hello"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert swaks.returncode == 0, swaks.stdout + swaks.stderr
            # 2.6's --as-proxy forwards when the client disconnects (--forward-on-disconnect); a
            # disconnect's doorbell rung while the forward role is still subscribing is lost, and
            # then the supervised forwarders' 60 s safety rescan sends it (docs/decisions.md)
            assert hop.wait_for_messages(1, timeout=70), (home / "proxy.log").read_text()
            (msg,) = hop.messages
            assert msg.rcpts == ["friend@elsewhere.example"]  # not routed: all goes to the smarthost
            assert b"\r\n\r\nhello\r\n" in msg.data  # swaks' body, then the signature addsig appended
            assert msg.data.endswith(b"\r\n-- \r\nsent through the seed guide proxy\r\n")
            assert wait_until(lambda: not list((home / "tmp").glob("*.envelope*")), 10)


def test_seed_proxy_answers_after_the_next_hop_with_immediate(tmp_path: Path) -> None:
    """ "A normal proxy only responds with OK ... once the message has been successfully transferred": --immediate."""
    with FakeSmtp(delays={"final": 1.0}) as hop:
        relay = start_relay(tmp_path, "--single-process", "--as-proxy", hop.address, "--immediate")
        try:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as c:
                c.ehlo("client.example")
                c.mail("me@myhost.myisp.net")
                c.rcpt("you@example.net")
                started = time.monotonic()
                code, _ = c.data(message("immediate"))
                took = time.monotonic() - started
                assert code == 250 and len(hop.messages) == 1  # the next hop had it before our OK
                assert took >= 0.9
        finally:
            relay.stop()


def test_seed_store_and_forward_server_then_client(home: Path, run_dir: Path) -> None:
    """Lines 79 and 83: a storage daemon on its own port, then ``--as-client`` forwards the spool."""
    port, pid_file = free_port(), run_dir / "server.pid"
    server = typed(79, ["--interface", "127.0.0.1", "--pid-file", str(pid_file)], **{"10025": str(port)})
    assert (
        server
        == f"emailrelay --as-server --port {port} --spool-dir $HOME/tmp --interface 127.0.0.1 "
        + shlex.join(["--pid-file", str(pid_file)])
    )
    log = home / "server.log"
    with daemon(server, user_env(home), pid_file, log) as pid:
        for n in (1, 2):
            send(port, f"stored {n}")
        assert len(committed(home / "tmp")) == 2
        # --as-server implies --close-stderr: closed before the "server on" lines, as E-MailRelay 2.6b
        assert "server on" not in log.read_text()
        assert fd2_target(pid) == "/dev/null"
    with FakeSmtp() as hop:
        client_log = home / "client.log"
        rc = shell(typed(83, **{"smarthost:smtp": hop.address}), user_env(home), client_log)
        assert rc == 0, client_log.read_text()
        assert sorted(m.data.split(b"Subject: ", 1)[1].split(b"\r\n")[0] for m in hop.messages) == [
            b"stored 1",
            b"stored 2",
        ]
    assert not list((home / "tmp").glob("*.envelope*"))
    assert not list((home / "tmp").glob("*.content"))


def test_seed_pop_without_smtp_and_close_stderr(home: Path, run_dir: Path) -> None:
    """Line 87: a POP server with no SMTP listener, logging, stderr closed after start-up. As typed,
    without ``--pop-auth``, it is refused as E-MailRelay 2.6b refuses it; with one it runs."""
    spool, pop_port, pid_file = home / "tmp", free_port(), run_dir / "pop.pid"
    extra = ["--spool-dir", str(spool), "--pop-port", str(pop_port), "--interface", "127.0.0.1",
             "--pid-file", str(pid_file)]  # fmt: skip
    log = home / "pop.log"
    assert shell(typed(87, extra), user_env(home), log) == 1
    assert log.read_text() == "emailrelay: usage error: the --pop option requires --pop-auth\n"
    log.unlink()
    secrets = home / "pop.auth"
    secrets.write_text("server plain user1 password1\n")
    with daemon(typed(87, [*extra, "--pop-auth", str(secrets)]), user_env(home), pid_file, log) as pid:
        c = poplib.POP3("127.0.0.1", pop_port, timeout=20)
        try:
            assert c.getwelcome().startswith(b"+OK")
            c.user("user1")
            assert c.pass_("password1").startswith(b"+OK")
        finally:
            with contextlib.suppress(Exception):
                c.quit()
        # stderr is closed before the "server on" lines (as E-MailRelay 2.6b); the log also goes to
        # the system log, so there is no "logging will stop" warning: nothing at all
        assert log.read_text() == ""
        assert fd2_target(pid) == "/dev/null"


def test_seed_help_verbose_lists_every_option_the_seed_guide_uses() -> None:
    """Line 98."""
    done = subprocess.run(
        shlex.split(guide(98)), executable=program(), capture_output=True, text=True, timeout=30
    )
    short = subprocess.run([program(), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and short.returncode == 0
    assert len(done.stdout.splitlines()) > len(short.stdout.splitlines())
    for option in ("--as-proxy", "--as-server", "--as-client", "--filter", "--port", "--spool-dir", "--pop",
                   "--no-smtp", "--log", "--close-stderr", "--remote-clients", "--server-auth", "--pop-auth",
                   "--pop-by-name", "--client-filter", "--poll", "--admin", "--forward-to", "--no-syslog",
                   "--verbose", "--help"):  # fmt: skip
        assert re.search(rf"^\s+(-\S, )?{option}[=\s]", done.stdout, re.MULTILINE), option


# ---- Starting the daemon at boot-time -----------------------------------------------------


def test_seed_init_d_links_start_and_stop(tmp_path: Path, run_dir: Path) -> None:
    """Lines 129-155, done in a scratch root: copy the script, link S10/K10 in rc5.d, remove sendmail's."""
    root = tmp_path / "root"
    (root / "usr" / "local" / "libexec").mkdir(parents=True)
    (root / "etc" / "init.d" / "rc5.d").mkdir(parents=True)
    shutil.copy(INIT, root / "usr" / "local" / "libexec" / "emailrelay")  # where "make install" put it
    for name in ("S10sendmail", "K10sendmail"):
        (root / "etc" / "init.d" / "rc5.d" / name).symlink_to("../sendmail")
    spool, port, pid_file = tmp_path / "spool", free_port(), run_dir / "emailrelay.pid"
    spool.mkdir()
    env = user_env(
        tmp_path,
        EMAILRELAY_BIN=program(),
        EMAILRELAY_PIDFILE=str(pid_file),
        EMAILRELAY_CONFIG=str(tmp_path / "no-config"),
        EMAILRELAY_DEFAULTS=str(tmp_path / "no-defaults"),
        EMAILRELAY_OPTS=f"--as-server --port {port} --interface 127.0.0.1 --spool-dir {spool} --user root",
    )
    r = str(root)
    steps = [
        typed(129, **{"/*/init.d": f"{r}/*/init.d"}),
        typed(136, **{"/usr/local/libexec/emailrelay": f"{r}/usr/local/libexec/emailrelay", "/etc/init.d": f"{r}/etc/init.d"}),
        typed(141, **{"/etc/init.d/rc5.d": f"{r}/etc/init.d/rc5.d"}),
        typed(142),
        typed(148),
        typed(149),
        typed(155),
    ]  # fmt: skip
    script = "set -e\n" + "\n".join(s.removeprefix("$ ") for s in steps) + "\nls\n"
    listing = tmp_path / "steps.out"
    assert shell(script, env, listing) == 0, listing.read_text()
    out = listing.read_text().split()
    assert (
        out[0] == f"{r}/etc/init.d" and "K10sendmail" in out and "S10sendmail" in out
    )  # ls -d, ls *sendmail*
    rc5 = root / "etc" / "init.d" / "rc5.d"
    assert sorted(p.name for p in rc5.iterdir()) == ["K10emailrelay", "S10emailrelay"]
    assert os.readlink(rc5 / "S10emailrelay") == "../emailrelay"
    # entering run-level 5: init runs the S links with "start", leaving it the K links with "stop"
    log = tmp_path / "rc.log"
    assert shell(f"cd {shlex.quote(str(rc5))} && ./S10emailrelay start", env, log) == 0, log.read_text()
    pid = int(pid_file.read_text())
    assert f"emailrelay: started (pid {pid})" in log.read_text()
    send(port, "after boot")
    assert len(committed(spool)) == 1
    assert shell(f"cd {shlex.quote(str(rc5))} && ./K10emailrelay stop", env, log) == 0, log.read_text()
    assert "emailrelay: stopped" in log.read_text()
    assert wait_until(lambda: not pid_alive(pid), 10) and not pid_file.exists()


def test_seed_runlevel_command() -> None:
    """Line 130: the guide's way of finding the default run level works on a System-V style host."""
    if shutil.which("runlevel") is None:
        pytest.skip("no runlevel command")
    done = subprocess.run(
        [SH, "-c", guide(130).removeprefix("$ ")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    assert re.fullmatch(r"(\S*)\n?", done.stdout)  # one word (empty or "unknown" where there is no init)


# ---- Triggering onward delivery -----------------------------------------------------------


def test_seed_ip_up_local_two_line_script(home: Path) -> None:
    """Lines 184-185: pppd runs ip-up.local with its six arguments; the script forwards the spool."""
    spool = home / "tmp"
    for n in (1, 2, 3):
        done = subprocess.run(
            [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "me@myhost.myisp.net", "isp@example.net"],
            input=message(f"dial-up {n}"), capture_output=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    with FakeSmtp() as isp:
        script = home / "etc" / "ppp" / "ip-up.local"
        script.parent.mkdir(parents=True)
        body = [guide(184), typed(185, ["--spool-dir", str(spool)], **{"<myisp>:smtp": isp.address, "/usr/local/sbin/emailrelay": program()})]  # fmt: skip
        script.write_text("\n".join(body) + "\n")
        script.chmod(0o755)  # "remember to make it executable"
        ppp = subprocess.run(
            [str(script), "ppp0", "/dev/ttyS0", "38400", "10.0.0.1", "10.0.0.2", ""],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ppp.returncode == 0, ppp.stderr
        assert len(isp.messages) == 3 and all(m.rcpts == ["isp@example.net"] for m in isp.messages)
    assert not files(spool)


# ---- Notification of failed e-mails -------------------------------------------------------


def _failed_message(home: Path, subject: str = "will fail") -> Path:
    """Spool a message and run line 177 against a next hop that refuses it: it becomes .bad."""
    spool = home / "tmp"
    done = subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "me@myhost.myisp.net", "nobody@example.net"],
        input=message(subject, "nobody@example.net"), capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # refused after the data: the reply is the reason (a refused RCPT would be upstream's "one or more
    # recipients rejected")
    with FakeSmtp(replies={"final": "550 5.1.1 no such user"}) as isp:
        log = home / "client.log"
        rc = shell(
            typed(177, ["--spool-dir", str(spool)], **{"<myisp>:smtp": isp.address}), user_env(home), log
        )
        assert rc == 0  # --as-client: a refused message is not an error of the run (upstream exits 0 too)
    (bad,) = spool.glob("*.envelope.bad")
    return bad


def test_seed_profile_check_for_failed_mail(home: Path) -> None:
    """Lines 177 and 199-202: a refused message ends up as *.envelope.bad, and the .profile check sees it."""
    spool = home / "tmp"
    check = "\n".join(guide(n) for n in (199, 200, 201, 202)).replace("/var/spool/emailrelay", str(spool))
    quiet = subprocess.run([SH, "-c", check], capture_output=True, text=True, timeout=30)
    assert quiet.returncode == 0 and quiet.stderr == ""
    bad = _failed_message(home)
    text = bad.read_text()
    assert "X-MailRelay-Reason: " in text and "no such user" in text and "X-MailRelay-ReasonCode: 550" in text
    warned = subprocess.run([SH, "-c", check], capture_output=True, text=True, timeout=30)
    assert warned.stderr == "Failed mail\n"


def test_seed_resubmit_sh_and_notify_sh(home: Path) -> None:
    """emailrelay-resubmit.sh retries a bounded number of times; emailrelay-notify.sh bounces to the sender."""
    spool = home / "tmp"
    bad = _failed_message(home)
    mid = bad.name.removesuffix(".envelope.bad")
    resubmit = [SH, str(REPO / "deploy" / "emailrelay-resubmit.sh"), str(spool), "--limit", "2"]
    env = user_env(home)
    for _ in range(2):
        assert subprocess.run(resubmit, env=env, capture_output=True, timeout=60).returncode == 0
        assert (spool / f"{mid}.envelope").exists() and not bad.exists()
        (spool / f"{mid}.envelope").rename(bad)  # fails again
    assert subprocess.run(resubmit, env=env, capture_output=True, timeout=60).returncode == 0
    assert bad.exists()  # retried too many times already: left failed
    notify = subprocess.run(
        [SH, str(REPO / "deploy" / "emailrelay-notify.sh"), str(spool)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert notify.returncode == 0, notify.stderr
    (bounce,) = [p for p in committed(spool) if not p.name.startswith(mid)]
    with FakeSmtp() as isp:
        log = home / "deliver.log"
        assert shell(typed(177, ["--spool-dir", str(spool)], **{"<myisp>:smtp": isp.address}), env, log) == 0
        (dsn,) = isp.messages
    assert dsn.mail_from == "" and dsn.rcpts == ["me@myhost.myisp.net"]  # back into the sender's in-tray
    assert b"report-type=delivery-status" in dsn.data and b"no such user" in dsn.data
    assert bad.exists() and not bounce.exists()
    again = subprocess.run(
        [SH, str(REPO / "deploy" / "emailrelay-notify.sh"), str(spool)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert again.returncode == 0 and not committed(spool)  # bounced only once


# ---- Logging ------------------------------------------------------------------------------


def test_seed_syslog_facility_is_mail(tmp_path: Path, home: Path, run_dir: Path) -> None:
    """Line 232: --log goes to syslog as LOG_MAIL: info lines are mail.info, errors pass mail.warning.

    The relay runs in a private mount namespace whose /dev/log is this test's datagram socket.
    """
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a private /dev/log")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("mount namespaces are not available")
    sock_path = tmp_path / "log.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock_path))
    receiver.settimeout(0.5)
    (tmp_path / "up").mkdir()
    (tmp_path / "work").mkdir()
    private_dev_log = (
        "mount --make-rprivate / && "
        f"mount -t overlay overlay -o lowerdir=/dev,upperdir={tmp_path / 'up'},workdir={tmp_path / 'work'} /dev && "
        f"ln -sf {sock_path} /dev/log && "
    )
    spool, port, pid_file = home / "tmp", free_port(), run_dir / "syslog.pid"
    server = typed(475, ["--port", str(port), "--interface", "127.0.0.1", "--spool-dir", str(spool),
                         "--pid-file", str(pid_file)])  # fmt: skip
    broken = typed(475, ["--port", str(free_port()), "--interface", "127.0.0.1", "--spool-dir", str(spool),
                         "--server-auth", str(tmp_path / "no-such-secrets")])  # fmt: skip
    env = user_env(home)
    grams: list[str] = []

    def drain() -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                grams.append(receiver.recv(65536).decode("utf-8", "replace"))

    try:
        with daemon(
            f"unshare -m sh -c {shlex.quote(private_dev_log + 'exec ' + server)}",
            env,
            pid_file,
            tmp_path / "a.log",
        ):
            assert wait_until(lambda: drain() or any("smtp server on" in g for g in grams), 20), grams
        rc = shell(
            f"unshare -m sh -c {shlex.quote(private_dev_log + 'exec ' + broken)}", env, tmp_path / "b.log"
        )
        assert rc == 1
        assert wait_until(lambda: drain() or any("no-such-secrets" in g for g in grams), 10), (
            grams,
            (tmp_path / "b.log").read_text(),
        )
    finally:
        receiver.close()
    info = [g for g in grams if f"smtp server on 127.0.0.1:{port}" in g]
    assert info and all(re.match(r"<22>.*\bemailrelay\[[0-9]+\]: ", g) for g in info), (
        info
    )  # 2*8+6: mail.info
    errors = [g for g in grams if "no-such-secrets" in g]
    assert errors and all(g.startswith("<19>") for g in errors), (
        errors
    )  # 2*8+3: mail.err, kept by mail.warning


# ---- Troubleshooting ----------------------------------------------------------------------


def _reply(f: object) -> list[bytes]:
    lines = []
    while True:
        line = f.readline()  # type: ignore[attr-defined]
        assert line, "connection closed"
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def test_seed_telnet_dialogue(tmp_path: Path) -> None:
    """The ">>"/"<<" dialogue, typed line by line on a raw socket, as telnet would send it."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("NONE server *.*.*.* x\nserver plain me secret\n")
    relay = start_relay(tmp_path, "--single-process", "--server-auth", str(secrets))
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=20) as s:
            f = s.makefile("rb")
            assert _reply(f)[0].startswith(b"220 ")

            def typed_line(text: str) -> list[bytes]:
                s.sendall(text.encode() + b"\r\n")
                return _reply(f)

            ehlo = typed_line("EHLO myhost.myisp.net")
            assert ehlo[0].startswith(b"250-") and ehlo[-1].startswith(b"250 ")
            auth = [line for line in ehlo if line[4:].startswith(b"AUTH ")]
            assert len(auth) == 1 and b"PLAIN" in auth[0]  # mechanisms listed on the same line
            assert typed_line("MAIL FROM:<me@myhost.myisp.net>")[0].startswith(b"250")
            assert typed_line("RCPT TO:<me@myhost.myisp.net>")[0].startswith(b"250")
            assert typed_line("DATA")[0].startswith(b"354")
            for text in ("To: me@myhost.myisp.net", "From: me@myhost.myisp.net", "Subject: test", "",
                         "Test message."):  # fmt: skip
                s.sendall(text.encode() + b"\r\n")
            assert typed_line(".")[0].startswith(b"250")
            assert typed_line("QUIT")[0].startswith(b"221")
            assert f.read() == b""  # "Connection closed by foreign host."
        (envelope,) = committed(relay.spool)
        content = envelope.with_name(envelope.name.replace(".envelope", ".content")).read_bytes()
        assert content.endswith(
            b"To: me@myhost.myisp.net\r\nFrom: me@myhost.myisp.net\r\nSubject: test\r\n\r\nTest message.\r\n"
        )
    finally:
        relay.stop()


def test_seed_log_no_syslog_logs_onto_stderr(home: Path, run_dir: Path) -> None:
    """ "To get the server to log onto stderr, replace --as-server with --log --no-syslog"; clients log to stderr."""
    port, pid_file = free_port(), run_dir / "stderr.pid"
    command = typed(79, ["--interface", "127.0.0.1", "--pid-file", str(pid_file)], **{"10025": str(port)})
    command = command.replace("--as-server", "--log --no-syslog")
    log = home / "stderr.log"
    with daemon(command, user_env(home), pid_file, log) as pid:
        assert os.path.samefile(fd2_target(pid), log)  # stderr kept open: later lines reach the log
        send(port, "logged")
    assert f"emailrelay: info: smtp server on 127.0.0.1:{port}" in log.read_text()
    with FakeSmtp(replies={"final": "452 4.3.1 try later"}) as hop:
        done = subprocess.run(
            [SH, "-c", typed(83, **{"smarthost:smtp": hop.address})], env=user_env(home),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0  # the refusal fails the message, as upstream: not an error of the run
    assert re.search(
        r"^emailrelay: info: failing envelope \[.*\.envelope\.busy\]", done.stderr, re.MULTILINE
    ), done.stderr


# ---- Preventing open mail relay -----------------------------------------------------------


def test_seed_none_line_exempts_clients_and_the_verifier_limits_them_to_local_users(tmp_path: Path) -> None:
    """--server-auth with "NONE server *.*.*.* x", and a verifier that rejects remote addresses unless authenticated."""
    secrets = tmp_path / "emailrelay.auth"
    secrets.write_text("NONE server *.*.*.* x\nserver plain alice secret\n")
    relay = start_relay(
        tmp_path,
        "--single-process",
        "--server-auth",
        str(secrets),
        "--address-verifier",
        str(SCRIPTS / "seed_verifier.sh"),
    )
    try:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as c:
            c.ehlo("client.example")
            assert c.mail("someone@outside.example")[0] == 250  # exempt from authentication
            assert c.rcpt("bob@local.example")[0] == 250
            assert c.rcpt("victim@remote.example")[0] == 550
            assert c.data(message("local only", "bob@local.example"))[0] == 250
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as c:
            c.ehlo("client.example")
            c.login("alice", "secret")
            c.sendmail(
                "alice@local.example",
                ["friend@remote.example"],
                message("authenticated", "friend@remote.example"),
            )
    finally:
        relay.stop()
    texts = [e.read_text() for e in committed(relay.spool)]
    assert len(texts) == 2
    local = next(t for t in texts if "X-MailRelay-To-Local: bob" in t)
    assert "remote.example" not in local and "X-MailRelay-Authentication: x" in local
    assert any("X-MailRelay-To-Remote: friend@remote.example" in t for t in texts)


# ---- Running as a POP server --------------------------------------------------------------


def test_seed_pop_server_with_apop_secrets(home: Path, run_dir: Path) -> None:
    """Lines 344 and 350-351: --as-server --pop --pop-auth FILE, with the seed's "APOP server" lines."""
    etc = home / "etc"
    etc.mkdir()
    (etc / "emailrelay.auth").write_text(guide(350) + "\n" + guide(351) + "\n")
    spool, port, pop_port, pid_file = home / "tmp", free_port(), free_port(), run_dir / "pop.pid"
    command = typed(344, ["--port", str(port), "--pop-port", str(pop_port), "--spool-dir", str(spool),
                          "--interface", "127.0.0.1", "--pid-file", str(pid_file)],
                    **{"/etc/emailrelay.auth": str(etc / "emailrelay.auth")})  # fmt: skip
    with daemon(command, user_env(home), pid_file, home / "pop.log"):
        send(port, "for pop")
        c = poplib.POP3("127.0.0.1", pop_port, timeout=20)
        try:
            c.apop("user1", "password1")  # APOP, as the mechanism name says
            count, _ = c.stat()
            assert count == 1
            assert b"Subject: for pop" in b"\r\n".join(c.retr(1)[1])
        finally:
            c.quit()
        c = poplib.POP3("127.0.0.1", pop_port, timeout=20)
        try:
            c.user("user2")
            c.pass_("password2")  # and USER/PASS
            assert c.stat()[0] == 1
        finally:
            c.quit()
        c = poplib.POP3("127.0.0.1", pop_port, timeout=20)
        try:
            with pytest.raises(poplib.error_proto):
                c.apop("user1", "password2")
        finally:
            with contextlib.suppress(Exception):
                c.quit()


def test_seed_pop_by_name_with_a_filter_and_with_submit_links(tmp_path: Path) -> None:
    """--pop-by-name fed by a --filter that moves messages by "To:", and by emailrelay-submit --verbose plus links."""
    secrets = tmp_path / "emailrelay.auth"
    secrets.write_text("APOP server user1 password1\nAPOP server user2 password2\n")
    pop_port = free_port()
    relay = start_relay(tmp_path, "--single-process", "--pop", "--pop-by-name", "--pop-auth", str(secrets), "--pop-port", str(pop_port),
                        "--filter", str(SCRIPTS / "seed_pop_by_name_filter.sh"))  # fmt: skip
    try:
        send(relay.port, "one for user1", to="user1@local.example")
        send(relay.port, "one for user2", to="user2@local.example")
        assert not list(relay.spool.glob("*.envelope*"))  # all moved by the filter
        # a submitted message, then linked (content first) and copied into user1's sub-directory
        done = subprocess.run(
            [program("emailrelay-submit"), "--verbose", "--spool-dir", str(relay.spool), "--from", "a@local.example",
             "user1@local.example"],
            input=message("submitted", "user1@local.example"), capture_output=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        envelope = printed_envelope(done.stdout)
        assert envelope.parent == relay.spool and envelope.name.endswith(".envelope")
        content = envelope.with_name(envelope.name.replace(".envelope", ".content"))
        os.link(content, relay.spool / "user1" / content.name)
        shutil.copy(envelope, relay.spool / "user1" / envelope.name)

        def subjects(user: str) -> list[bytes]:
            c = poplib.POP3("127.0.0.1", pop_port, timeout=20)
            try:
                c.apop(user, user.replace("user", "password"))
                n, _ = c.stat()
                return sorted(
                    next(h for h in c.top(i, 0)[1] if h.startswith(b"Subject: ")) for i in range(1, n + 1)
                )
            finally:
                c.quit()

        assert subjects("user1") == [b"Subject: one for user1", b"Subject: submitted"]
        assert subjects("user2") == [b"Subject: one for user2"]
    finally:
        relay.stop()


# ---- Usage patterns -----------------------------------------------------------------------


def test_seed_routing_filter_moves_messages_into_another_spool(home: Path) -> None:
    """A --filter that moves the files into another relay's spool (exit 100), which then forwards them."""
    second = home / "second"
    second.mkdir()
    (home / "route-to").write_text(str(second))
    relay = start_relay(
        home, "--single-process", "--filter", str(SCRIPTS / "seed_route_filter.sh"), spool=home / "tmp"
    )
    try:
        send(relay.port, "routed")
        assert not files(home / "tmp")
    finally:
        relay.stop()
    with FakeSmtp() as hop:
        rc = shell(
            typed(83, **{"smarthost:smtp": hop.address, "$HOME/tmp": "$HOME/second"}),
            user_env(home),
            home / "c.log",
        )
        assert rc == 0
        (msg,) = hop.messages
        assert b"Subject: routed" in msg.data


def test_seed_filter_exit_103_expires_the_poll_timer(tmp_path: Path) -> None:
    """A filter exiting 103 gets the spool forwarded at once; a message accepted with exit 0 waits.

    Without --poll here: our --poll already forwards each message as it is committed
    (docs/decisions.md, "Forwarding"), so only without it does 103 make a visible difference;
    and --single-process, whose forwarder has no start-up and 60 s safety rescans of its own.
    """
    with FakeSmtp() as hop:
        relay = start_relay(tmp_path, "--single-process", "--forward-to", hop.address,
                            "--filter", str(SCRIPTS / "seed_poll_now.sh"))  # fmt: skip
        try:
            send(relay.port, "later")
            assert not hop.wait_for_messages(1, timeout=2)  # exit 0: stored, nothing triggers forwarding
            assert len(committed(relay.spool)) == 1
            started = time.monotonic()
            send(relay.port, "now")  # the client gets its OK at once, before forwarding
            assert time.monotonic() - started < 10
            assert hop.wait_for_messages(2, timeout=20), relay.log()  # the rescan takes both
            assert wait_until(lambda: not list(relay.spool.glob("*.envelope*")), 10)
        finally:
            relay.stop()


# ---- SpamAssassin -------------------------------------------------------------------------


needs_spamassassin = pytest.mark.skipif(
    shutil.which("spamassassin") is None, reason="spamassassin not installed"
)


@needs_spamassassin
def test_seed_spamassassin_marking_filter_on_the_server(home: Path, run_dir: Path) -> None:
    """Lines 419-423 as /usr/local/bin/myfilter.sh, run by line 470, forwarded by line 471."""
    bindir = home / "usr" / "local" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy(SCRIPTS / "seed_spamassassin_mark.sh", bindir / "myfilter.sh")
    port, pid_file, spool = free_port(), run_dir / "sa.pid", home / "tmp"
    server = typed(470, ["--port", str(port), "--interface", "127.0.0.1", "--spool-dir", str(spool),
                         "--pid-file", str(pid_file)],
                   **{"/usr/local/bin/myfilter.sh": str(bindir / "myfilter.sh")})  # fmt: skip
    with daemon(server, user_env(home), pid_file, home / "sa.log"):
        send(port, "offer", body=GTUBE)
    (envelope,) = committed(spool)
    content = envelope.with_name(envelope.name.replace(".envelope", ".content")).read_bytes()
    assert re.search(rb"^X-Spam-Flag: YES\r$", content, re.MULTILINE)
    assert b"\n" not in content.replace(b"\r\n", b"")  # carriage returns restored
    with FakeSmtp() as hop:
        assert (
            shell(
                typed(471, ["--spool-dir", str(spool)], **{"smarthost:smtp": hop.address}),
                user_env(home),
                home / "c.log",
            )
            == 0
        )
        (msg,) = hop.messages
    assert b"X-Spam-Flag: YES\r\n" in msg.data


@needs_spamassassin
def test_seed_spamassassin_exit_code_filter_deletes_spam(tmp_path: Path) -> None:
    """Lines 433-443: spam is deleted by the filter (exit 100) and the client still gets 250; ham is kept."""
    relay = start_relay(
        tmp_path,
        "--single-process",
        "--filter",
        str(SCRIPTS / "seed_spamassassin_delete.sh"),
        spool=tmp_path / "s",
    )
    try:
        send(relay.port, "offer", body=GTUBE)
        assert not files(relay.spool)
        send(relay.port, "minutes", body="The minutes of the meeting are attached.")
        (envelope,) = committed(relay.spool)
        assert (
            b"Subject: minutes"
            in envelope.with_name(envelope.name.replace(".envelope", ".content")).read_bytes()
        )
    finally:
        relay.stop()


@needs_spamassassin
def test_seed_spamassassin_moved_to_the_client_filter(home: Path, run_dir: Path) -> None:
    """Lines 475-476: a plain --as-server, and the spam check as --client-filter of --as-client."""
    bindir = home / "usr" / "local" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy(SCRIPTS / "seed_spamassassin_mark.sh", bindir / "myfilter.sh")
    port, pid_file, spool = free_port(), run_dir / "plain.pid", home / "tmp"
    server = typed(475, ["--port", str(port), "--interface", "127.0.0.1", "--spool-dir", str(spool),
                         "--pid-file", str(pid_file)])  # fmt: skip
    with daemon(server, user_env(home), pid_file, home / "plain.log"):
        send(port, "offer", body=GTUBE)
    (envelope,) = committed(spool)
    assert b"X-Spam" not in envelope.with_name(envelope.name.replace(".envelope", ".content")).read_bytes()
    with FakeSmtp() as hop:
        client = typed(476, ["--spool-dir", str(spool)],
                       **{"smarthost:smtp": hop.address, "/usr/local/bin/myfilter.sh": str(bindir / "myfilter.sh")})  # fmt: skip
        assert shell(client, user_env(home), home / "c.log") == 0, (home / "c.log").read_text()
        (msg,) = hop.messages
    assert b"X-Spam-Flag: YES\r\n" in msg.data


def test_seed_client_filter_edits_a_message_from_emailrelay_submit(home: Path) -> None:
    """ "messages can be introduced directly into the spool using emailrelay-submit", then a --client-filter edits them."""
    bindir = home / "usr" / "local" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy(SCRIPTS / "seed_addsig.sh", bindir / "myfilter.sh")
    spool = home / "tmp"
    done = subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "me@myhost.myisp.net", "you@example.net"],
        input=message("submitted"), capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with FakeSmtp() as hop:
        client = typed(476, ["--spool-dir", str(spool)],
                       **{"smarthost:smtp": hop.address, "/usr/local/bin/myfilter.sh": str(bindir / "myfilter.sh")})  # fmt: skip
        assert shell(client, user_env(home), home / "c.log") == 0, (home / "c.log").read_text()
        (msg,) = hop.messages
    assert msg.data.endswith(b"-- \r\nsent through the seed guide proxy\r\n")


def test_seed_windows_cscript_filter_fails_cleanly(tmp_path: Path) -> None:
    """Line 457 is for Windows; on Linux the relay starts and each message is refused with E-MailRelay 2.6b's
    ``452 rejected`` (the filter cannot be executed)."""
    words = shlex.split(guide(457))
    relay = start_relay(tmp_path, "--single-process", *words[1:])
    try:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as c:
            c.ehlo("client.example")
            c.mail("me@myhost.myisp.net")
            c.rcpt("you@example.net")
            code, text = c.data(message("windows"))
        assert (code, text) == (452, b"rejected")
        assert not committed(relay.spool)
    finally:
        relay.stop()


def test_seed_long_lived_polling_forwarders_in_parallel(home: Path, run_dir: Path) -> None:
    """Line 482: forwarding processes that poll the spool themselves, two of them side by side."""
    spool = home / "tmp"
    for n in range(6):
        done = subprocess.run(
            [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "me@myhost.myisp.net", "you@example.net"],
            input=message(f"polled {n}"), capture_output=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0
    with FakeSmtp() as hop:
        pids = []
        with contextlib.ExitStack() as stack:
            for name in ("a", "b"):
                pid_file = run_dir / name / "forward.pid"
                pid_file.parent.mkdir()
                command = typed(482, **{"smarthost:smtp": hop.address, "...": shlex.join(
                    ["--spool-dir", str(spool), "--pid-file", str(pid_file)])})  # fmt: skip
                pids.append(
                    stack.enter_context(daemon(command, user_env(home), pid_file, home / f"{name}.log"))
                )
            assert hop.wait_for_messages(6, timeout=30), (home / "a.log").read_text()
            assert wait_until(lambda: not list(spool.glob("*.envelope*")), 10)
            for pid in pids:
                assert fd2_target(pid) == "/dev/null"  # --close-stderr
        subjects = sorted(m.data.split(b"Subject: ", 1)[1].split(b"\r\n")[0] for m in hop.messages)
    assert subjects == [f"polled {n}".encode() for n in range(6)]  # each exactly once
    assert "smtp server on" not in (home / "a.log").read_text()  # --no-smtp


# ---- option names of the seed's time that 2.6 no longer has ---------------------------------


def test_seed_verifier_option_name(tmp_path: Path) -> None:
    """ "you must have an address verifier script ("--verifier")": the old name still selects the verifier."""
    relay = start_relay(tmp_path, "--verifier", str(SCRIPTS / "seed_verifier.sh"))
    try:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as c:
            c.ehlo("client.example")
            c.mail("someone@outside.example")
            assert c.rcpt("victim@remote.example")[0] == 550
    finally:
        relay.stop()


def test_seed_scanner_option_name(tmp_path: Path) -> None:
    """ "check out the ... --scanner switch": the old network scanner option runs a net: filter on each
    message; here the scanner answers with an error, so the client gets it and nothing is stored."""
    import socketserver
    import threading

    seen: list[str] = []

    class Scanner(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                seen.append(line.decode().strip())
                self.wfile.write(b"virus found\tEICAR\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Scanner) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        relay = start_relay(
            tmp_path, "--single-process", "--scanner", f"127.0.0.1:{server.server_address[1]}"
        )
        try:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as c:
                c.ehlo("client.example")
                c.mail("me@myhost.myisp.net")
                c.rcpt("you@example.net")
                code, text = c.data(message("scanned"))
        finally:
            relay.stop()
            server.shutdown()
    assert code == 452 and b"virus found" in text, (code, text)  # upstream: 452 unless the text has a code
    assert len(seen) == 1 and seen[0].endswith(".content")
    assert not committed(relay.spool)
