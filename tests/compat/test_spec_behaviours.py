"""SPEC.md §1-3 facts that no other test proves, with the real programs.

- §3 states: a ``.envelope.new`` is never forwarded, and the relay removes it
  (and its content) on start once it is old enough to be a crash leftover.
- §2 log lines: ``smtp|pop|admin server on <address>``; the ``--log-time`` /
  ``--log-format=time`` timestamp ``%Y%m%d.%H%M%S.mmm``; ``--log-format=address``;
  ``--verbose`` tracing ``tx>>: "..."`` / ``rx<<: "..."`` and
  ``tx>>: [N line(s) of content]``; syslog facility LOG_MAIL with ident
  ``emailrelay`` (received on a private ``/dev/log`` in a mount namespace),
  and nothing with ``--no-syslog``.
- §1 programs: ``emailrelay-submit --content-date --content-message-id``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import tempfile
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import free_port, program, running_relay, shell_status, wait_for_port, wait_until
from tests.support.sink import run_client, states

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STAMP = r"[0-9]{8}\.[0-9]{6}\.[0-9]{3}"


def copy_fixture(spool: Path, mid: str, suffix: str = ".envelope", as_suffix: str | None = None) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURES / f"{mid}.content", spool / f"{mid}.content")
    shutil.copyfile(FIXTURES / f"{mid}{suffix}", spool / f"{mid}{as_suffix or suffix}")


# ---- §3 states -------------------------------------------------------------------------------------


def test_new_envelope_is_never_forwarded_and_is_cleaned_after_a_crash(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    old_id, fresh_id, ready_id = (
        "emailrelay.4242.1700000006.6", "emailrelay.4242.1700000005.5", "emailrelay.4242.1700000002.2"
    )  # fmt: skip
    for mid in (old_id, fresh_id):  # stores that crashed (or are still writing) before their commit
        copy_fixture(spool, mid, as_suffix=".envelope.new")
    copy_fixture(spool, ready_id)
    leftovers = sorted(f"{mid}.{s}" for mid in (old_id, fresh_id) for s in ("content", "envelope.new"))
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address)
        assert r.returncode == 0, r.stderr
        assert [m.message_id for m in hop.messages] == ["<fx-2@compat.test>"]
    assert sorted(os.listdir(spool)) == leftovers  # .new is never forwarded
    old = time.time() - 3 * 3600
    for name in os.listdir(spool):
        if name.startswith(old_id):
            os.utime(spool / name, (old, old))
    # on start the relay removes the old one (a crash leftover), not the fresh one (maybe still being written)
    with running_relay(tmp_path, spool=spool) as relay:
        assert wait_until(lambda: not (spool / f"{old_id}.content").exists(), 15), os.listdir(spool)
        assert f"info: removed incomplete message [{old_id}] left by a crash" in relay.log()
        assert sorted(os.listdir(spool)) == [f"{fresh_id}.content", f"{fresh_id}.envelope.new"]
    # and a forwarding run cleans them up too
    for name in os.listdir(spool):
        os.utime(spool / name, (old, old))
    r = run_client(spool, "127.0.0.1:9")  # nothing to send: never connects
    assert r.returncode == 0, r.stderr
    assert (
        f"emailrelay: info: removed incomplete message [{fresh_id}] left by a crash: {fresh_id}.envelope.new "
        f"and {fresh_id}.content (" in r.stderr
    )
    assert os.listdir(spool) == []


# ---- §2 log lines ----------------------------------------------------------------------------------


def test_server_on_lines_for_smtp_pop_and_admin(tmp_path: Path) -> None:
    secrets = tmp_path / "pop.auth"
    secrets.write_text("server plain alice secret\n")
    pop_port, admin_port = free_port(), free_port()
    with running_relay(
        tmp_path, "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets), "--admin", str(admin_port)
    ) as relay:
        wanted = [
            f"smtp server on 127.0.0.1:{relay.port}",
            f"pop server on 127.0.0.1:{pop_port}",
            f"admin server on 127.0.0.1:{admin_port}",
        ]
        assert wait_until(lambda: all(w in relay.log() for w in wanted), 20), relay.log()
        lines = relay.log().splitlines()
    for w in wanted:
        (line,) = [x for x in lines if x.endswith(w)]
        assert re.fullmatch(rf"emailrelay: {STAMP}: info: {re.escape(w)}", line), line


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ([], r"emailrelay: (info|warning|error): "),
        (["--log-time"], rf"emailrelay: {STAMP}: (info|warning|error): "),
        (["--log-format", "time"], rf"emailrelay: {STAMP}: (info|warning|error): "),
        (["--log-format=time"], rf"emailrelay: {STAMP}: (info|warning|error): "),
    ],
    ids=["plain", "log-time", "log-format-time", "log-format-equals-time"],
)
def test_log_line_prefixes(tmp_path: Path, options: list[str], pattern: str) -> None:
    spool = tmp_path / "spool"
    copy_fixture(spool, "emailrelay.4242.1700000002.2")
    with FakeSmtp() as hop:
        before = time.time()
        r = run_client(spool, hop.address, "--no-syslog", *options)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(re.match(pattern, line) for line in lines), r.stderr
    if options:  # the stamp is local time with milliseconds, of now
        stamp = re.match(rf"emailrelay: ({STAMP}): ", lines[0]).group(1)  # type: ignore[union-attr]
        seconds = time.mktime(time.strptime(stamp[:15], "%Y%m%d.%H%M%S"))
        assert before - 2 <= seconds <= time.time() + 1, stamp
    else:
        assert not any(re.match(rf"emailrelay: {STAMP}", line) for line in lines)


def test_log_format_address_prefixes_the_client_address(tmp_path: Path) -> None:
    with running_relay(tmp_path, "--log-format", "address") as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
            s.recv(1000)
            s.sendall(b"QUIT\r\n")
            s.recv(1000)
            client_port = s.getsockname()[1]
        assert wait_until(lambda: '; rx<<: "QUIT"' in relay.log(), 10), relay.log()
        text = relay.log()
    # the address field is the client's IP address (the port is the separate "port" field)
    assert re.search(rf"^emailrelay: {STAMP}: info: 127\.0\.0\.1; smtp connection from 127\.0\.0\.1:{client_port}$",
                     text, re.M), text  # fmt: skip
    assert re.search(rf'^emailrelay: {STAMP}: info: 127\.0\.0\.1; rx<<: "QUIT"$', text, re.M), text


def test_verbose_tracing_and_content_line_count(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    mid = "emailrelay.4242.1700000001.1"
    copy_fixture(spool, mid)
    lines_of_content = (FIXTURES / f"{mid}.content").read_bytes().count(b"\r\n")
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address, "--verbose", "--no-syslog")
    assert r.returncode == 0, r.stderr
    log = r.stderr.splitlines()
    assert any(
        re.fullmatch(r'emailrelay: info: tx>>: "MAIL FROM:<old3@example.com>( BODY=7BIT)?"', x) for x in log
    )
    assert 'emailrelay: info: tx>>: "RCPT TO:<remote3@example.net>"' in log
    assert 'emailrelay: info: rx<<: "220 fake.test ESMTP ready"' in log
    assert 'emailrelay: info: rx<<: "250 2.0.0 queued"' in log
    assert f"emailrelay: info: tx>>: [{lines_of_content} line(s) of content]" in log
    assert not any("a line that starts with a dot" in line for line in log)  # content is not traced


def _namespace_script(root: Path) -> str:
    """Shell run in a private mount namespace: a tmpfs /dev holding the usual nodes and our /dev/log."""
    return f"""
set -e
mkdir -p {root}/realdev
mount --rbind /dev {root}/realdev
mount -t tmpfs tmpfs /dev
for n in null zero random urandom full tty; do touch /dev/$n; mount --bind {root}/realdev/$n /dev/$n; done
mkdir /dev/shm /dev/pts
mount --rbind {root}/realdev/shm /dev/shm
mount --rbind {root}/realdev/pts /dev/pts
ln -s /proc/self/fd /dev/fd
touch /dev/log
mount --bind {root}/log.sock /dev/log
exec "$@"
"""


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare as root")
@pytest.mark.parametrize("mode", ["server", "no-syslog", "as-client"])
def test_syslog_facility_mail_and_ident_emailrelay(tmp_path: Path, mode: str) -> None:
    """A server logs to syslog (LOG_MAIL, ident ``emailrelay``); ``--no-syslog`` and ``--as-client`` do not."""
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here: {probe.stderr!r}")
    spool = tmp_path / "spool"
    copy_fixture(spool, "emailrelay.4242.1700000003.3")
    log_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log_sock.bind(str(tmp_path / "log.sock"))
    namespace = ["unshare", "-m", "--propagation", "private", "sh", "-c", _namespace_script(tmp_path), "sh"]
    stderr = tmp_path / "stderr.log"
    try:
        with FakeSmtp() as hop:
            if mode == "as-client":
                argv = [program(), "--as-client", hop.address, "--spool-dir", str(spool), "--user", "root"]
                r = subprocess.run(namespace + argv, capture_output=True, text=True, timeout=60)
                assert r.returncode == 0, r.stderr
                stderr.write_text(r.stderr)
                assert len(hop.messages) == 1
            else:
                port = free_port()
                argv = [program(), "--no-daemon", "--log", "--port", str(port), "--interface", "127.0.0.1",
                        "--spool-dir", str(spool), "--user", "root"]  # fmt: skip
                argv += ["--no-syslog"] if mode == "no-syslog" else []
                with open(stderr, "wb") as err:
                    proc = subprocess.Popen(
                        namespace + argv, stdout=err, stderr=err, stdin=subprocess.DEVNULL
                    )
                try:
                    wait_for_port(port, proc=proc, timeout=20)
                    with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
                        smtp.sendmail("a@example.com", ["b@example.net"], b"Subject: syslog\r\n\r\nx\r\n")
                    assert wait_until(lambda: states(spool).get("envelope", 0) == 2, 10)
                finally:
                    proc.terminate()
                    assert shell_status(proc.wait(20)) == 128 + signal.SIGTERM
        log_sock.settimeout(0.5)
        datagrams = []
        while True:
            try:
                datagrams.append(log_sock.recv(65536).decode())
            except TimeoutError:
                break
    finally:
        log_sock.close()
    assert not os.path.exists("/dev/log") or os.path.realpath("/dev/log") != str(tmp_path / "log.sock")
    lines = stderr.read_text().splitlines()
    assert lines, "nothing logged on stderr"
    if mode != "server":
        assert datagrams == [], datagrams
        return
    assert datagrams, lines
    for d in datagrams:
        m = re.fullmatch(
            r"<([0-9]+)>[A-Z][a-z]{2} [ 0-9][0-9] [0-9:]{8} emailrelay\[([0-9]+)\]: (.*)", d, re.S
        )
        assert m, d
        assert int(m.group(1)) >> 3 == 2, d  # facility LOG_MAIL (2)
    # the whole log line after the ident, the program name repeated (as E-MailRelay 2.6b)
    texts = {re.sub(r"^<[0-9]+>.*?emailrelay\[[0-9]+\]: ", "", d) for d in datagrams}
    assert all(t.startswith("emailrelay: ") for t in texts), texts
    assert f"<{2 * 8 + 6}>" in "".join(d[:4] for d in datagrams)  # LOG_MAIL | LOG_INFO
    assert any(t.endswith(f"smtp server on 127.0.0.1:{port}") for t in texts), texts
    assert any("smtp connection from 127.0.0.1:" in t for t in texts), texts
    assert set(lines) & texts, (lines, texts)


def test_close_stderr_stops_logging_to_stderr_after_start_up(tmp_path: Path) -> None:
    with running_relay(tmp_path, "--close-stderr") as relay:
        wait_for_port(relay.port, proc=relay.proc, timeout=20)
        time.sleep(0.5)  # start-up finished
        before = relay.log()
        assert "server on" not in before  # closed once the pid file is written, before (as upstream)
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=15) as smtp:
            smtp.sendmail("a@example.com", ["b@example.net"], b"Subject: quiet\r\n\r\nx\r\n")
        assert wait_until(lambda: states(relay.spool).get("envelope", 0) == 1, 10)
        time.sleep(0.3)
        after = relay.log()
        assert relay.proc.poll() is None
    assert after == before, after[len(before) :]
    assert "smtp connection from" not in after


def _daemon_spool(parent: Path) -> Path:
    spool = parent / "spool"
    spool.mkdir()
    spool.chmod(0o775)
    os.chown(spool, 0, pwd.getpwnam("daemon").pw_gid)
    return spool


def _store_one_as_daemon(parent: Path, spool: Path) -> dict[str, os.stat_result]:
    """Run a supervised relay with ``--user daemon`` and ``--pid-file``, store one message over SMTP;
    return the stat of every spool file and of the pid file (taken while the relay runs)."""
    port, pid_file = free_port(), parent / "emailrelay.pid"
    args = [program(), "--no-daemon", "--log", "--no-syslog", "--port", str(port), "--interface", "127.0.0.1",
            "--spool-dir", str(spool), "--pid-file", str(pid_file), "--user", "daemon"]  # fmt: skip
    with open(parent / "relay.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc, timeout=20)
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
            smtp.sendmail("a@example.com", ["b@example.net"], b"Subject: owned\r\n\r\nx\r\n")
        assert wait_until(lambda: states(spool).get("envelope", 0) == 1, 10)
        assert wait_until(pid_file.exists, 10)
        return {p.name: p.stat() for p in [*spool.iterdir(), pid_file] if p.is_file()}
    finally:
        proc.terminate()
        assert shell_status(proc.wait(20)) == 128 + signal.SIGTERM, (parent / "relay.log").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to --user daemon")
def test_ownership_root_owner_user_group_mode_0660_supervised(tmp_path: Path) -> None:
    """SPEC §3 Ownership, default (supervised) mode: root owns, --user's group, mode 0660; the pid file
    the same owner and group, with upstream's mode 0644 (tests/differential/test_identity.py)."""
    daemon_gid = pwd.getpwnam("daemon").pw_gid
    parent = Path(tempfile.mkdtemp(prefix="emailrelay-compat-own-"))  # /tmp: daemon may traverse it
    try:
        parent.chmod(0o755)
        spool = _daemon_spool(parent)
        stats = _store_one_as_daemon(parent, spool)
        assert len(stats) == 3 and "emailrelay.pid" in stats
        for name, st in stats.items():
            mode = 0o644 if name == "emailrelay.pid" else 0o660
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, daemon_gid, mode), name
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to --user daemon")
@pytest.mark.parametrize("where", ["parent", "spool"])
def test_spool_the_user_cannot_reach_is_a_startup_error(tmp_path: Path, where: str) -> None:
    """The forwarders scan the spool with --user's ids: a spool under a root-only directory, or one
    the user cannot read, stops the relay at start with a one-line error that says which (exit 1)."""
    spool = _daemon_spool(tmp_path)
    if where == "parent":
        tmp_path.chmod(0o700)
        expected = f"its parent directory {tmp_path} is not searchable by that user"
    else:
        spool.chmod(0o700)
        expected = "it is not readable and searchable by that user"
    result = subprocess.run(
        [program(), "--no-daemon", "--log", "--no-syslog", "--port", str(free_port()), "--interface", "127.0.0.1",
         "--spool-dir", str(spool), "--user", "daemon"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert re.search(
        rf"^emailrelay: error: spool directory {re.escape(str(spool))} is not readable by user 'daemon' "
        rf"\({re.escape(expected)}\)",
        result.stderr,
        re.M,
    ), result.stderr


# ---- §1 programs -------------------------------------------------------------------------------------


def test_submit_content_date_and_message_id(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    submit = program("emailrelay-submit")
    r = subprocess.run(
        [submit, "--spool-dir", str(spool), "--from", "a@example.com", "--content-date", "--content-message-id",
         "--verbose", "b@example.net"],
        input=b"Subject: dated\r\n\r\nbody\r\n", capture_output=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    content = Path(r.stdout.decode().strip()).read_bytes()  # --verbose prints the content file's path
    head, body = content.split(b"\r\n\r\n", 1)
    assert body == b"body\r\n"
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
    assert headers["Subject"] == "dated"
    assert abs(parsedate_to_datetime(headers["Date"]).timestamp() - time.time()) < 120
    assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", headers["Message-ID"]), headers
    # headers already there are kept, not doubled
    r2 = subprocess.run(
        [submit, "-s", str(spool), "-f", "a@example.com", "-d", "-I", "-v", "b@example.net"],
        input=b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <kept@x>\r\n\r\nbody\r\n",
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert r2.returncode == 0, r2.stderr
    content2 = Path(r2.stdout.decode().strip()).read_bytes()
    assert content2.count(b"Date: ") == 1 and content2.count(b"Message-ID: ") == 1
    assert (
        b"Message-ID: <kept@x>\r\n" in content2 and b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n" in content2
    )
    assert states(spool) == {"envelope": 2, "content": 2}


def test_passwd_output_works_in_a_secrets_file(tmp_path: Path) -> None:
    """The installed ``emailrelay-passwd`` prints md5 forms (base64 state, ``--dotted``) the relay accepts."""
    lines = []
    for user, form in (("alice", []), ("bob", ["--dotted"])):
        r = subprocess.run(
            [program("emailrelay-passwd"), *form], input=b"pa ss=word\n", capture_output=True, timeout=30
        )
        assert r.returncode == 0, r.stderr
        hashed = r.stdout.decode()
        assert hashed.endswith("\n") and hashed.count("\n") == 1
        hashed = hashed.strip()
        pattern = r"[0-9]+(\.[0-9]+){7}" if form else r"[A-Za-z0-9+/]{43}="
        assert re.fullmatch(pattern, hashed), hashed
        lines.append(f"server md5 {user} {hashed}\n")
    secrets = tmp_path / "secrets"
    secrets.write_text("".join(lines))
    with running_relay(tmp_path, "--server-auth", str(secrets)) as relay:
        for user, password, ok in (
            ("alice", "pa ss=word", True),
            ("bob", "pa ss=word", True),
            ("bob", "wrong", False),
        ):
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=15) as smtp:
                smtp.ehlo("client.example")
                assert "CRAM-MD5" in smtp.esmtp_features.get("auth", "").upper()
                smtp.user, smtp.password = user, password
                if ok:
                    code, _ = smtp.auth("CRAM-MD5", smtp.auth_cram_md5)
                    assert code == 235
                else:
                    with pytest.raises(smtplib.SMTPAuthenticationError):
                        smtp.auth("CRAM-MD5", smtp.auth_cram_md5)
    bad = subprocess.run([program("emailrelay-passwd")], input=b"", capture_output=True, timeout=30)
    assert bad.returncode == 1 and bad.stderr == b"emailrelay-passwd: invalid password\n"
