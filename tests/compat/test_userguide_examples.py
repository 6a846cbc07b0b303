"""Every example command of the E-MailRelay 2.6 user guide, run as a user would type it.

What it proves: each command line (and secrets-file / configuration-file
example) printed in ``userguide-2.6.md`` works with our ``emailrelay``:
the same options in the same order, with only outside-world host names
and fixed ports replaced by local test servers on free ports, ``/tmp`` and
``/etc/...`` replaced by files in a fresh directory under ``/tmp``, and ``--pid-file`` /
``--port`` / ``--spool-dir`` added where a daemon has to be found and
stopped by its pid or must not use a system path.  ``GUIDE`` maps each
guide line (verbatim) to the command template the test runs, and
``test_every_guide_line_is_quoted_verbatim`` checks the left column
against the guide itself.  Real clients talk to the relay: swaks,
smtplib, mpop, poplib; next hops are ``FakeSmtp`` servers, another
``emailrelay`` (TLS + AUTH smarthost), a SOCKS proxy and a fake spamd.
The table is docs/compat-parts/40-userguide-2.6.md.
"""

from __future__ import annotations

import contextlib
import grp
import os
import poplib
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import make_certs
from tests.support.fake_smtp import FakeSmtp
from tests.support.fake_spamd import GTUBE, fake_spamd
from tests.support.guides import USERGUIDE, guide_text
from tests.support.pam import pam_confdir
from tests.support.relay import (
    REPO,
    free_port,
    pid_alive,
    program,
    shell_status,
    stop_pid,
    stop_process,
    wait_for_port,
    wait_until,
)
from tests.support.socks_server import socks_server

pytestmark = pytest.mark.timeout(120)

SCRIPTS = Path(__file__).resolve().parent / "guide_scripts"
SWAKS = shutil.which("swaks")
MPOP = shutil.which("mpop")

# guide line (verbatim, as printed in userguide-2.6.md)  ->  the command the test runs.
# Placeholders: {port} {pop_port} {spool} {pid_file} {hop} {auth} {filter} {spamd} {socks} ...
GUIDE: dict[str, tuple[str, str]] = {
    "as_server": (
        "emailrelay --as-server --port 10025 --spool-dir /tmp",
        "emailrelay --as-server --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "foreground": (
        "emailrelay --log --no-daemon --port 10025 --spool-dir /tmp",
        "emailrelay --log --no-daemon --port {port} --spool-dir {spool}",
    ),
    "as_client": (
        "emailrelay --as-client smtp.example.com:25 --spool-dir /tmp",
        "emailrelay --as-client {hop} --spool-dir {spool}",
    ),
    "poll": (
        "emailrelay --as-server --poll 60 --forward-to smtp.example.com:25",
        "emailrelay --as-server --poll 60 --forward-to {hop} --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "forward_on_disconnect": (
        "emailrelay --as-server --forward-on-disconnect --forward-to smtp.example.com:25",
        "emailrelay --as-server --forward-on-disconnect --forward-to {hop}"
        " --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "filter": (
        "emailrelay --as-server --filter /tmp/set-from.js",
        "emailrelay --as-server --filter {filter} --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "account": (
        "emailrelay --as-server -v -r --domain=example.com --address-verifier=account:",
        "emailrelay --as-server -v -r --domain=example.com --address-verifier=account:"
        " --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "account_pop": (
        "emailrelay ... --pop --pop-port 10110 --pop-auth /etc/emailrelay.auth",
        "emailrelay --as-server -v -r --domain=example.com --address-verifier=account:"
        " --pop --pop-port {pop_port} --pop-auth {auth} --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "pop_secret": ("server plain <userid> <password>", "server plain {userid} {password}"),
    "help": ("emailrelay --help --verbose", "emailrelay --help --verbose"),
    "open_account": (
        "emailrelay --as-server --remote-clients --address-verifier=account: --domain=mydomain.com",
        "emailrelay --as-server --remote-clients --address-verifier=account: --domain=mydomain.com"
        " --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "server_secrets": (
        "server plain user1 password1\n        server plain user2 password2",
        "server plain user1 password1\nserver plain user2 password2\n",
    ),
    "server_auth": (
        "emailrelay --as-server --remote-clients --server-auth=/etc/emailrelay.auth",
        "emailrelay --as-server --remote-clients --server-auth={auth} --port {port} --spool-dir {spool}"
        " --pid-file {pid_file}",
    ),
    "pop": (
        "emailrelay --as-server --pop --pop-auth=/etc/pop.auth",
        "emailrelay --as-server --pop --pop-auth={auth} --pop-port {pop_port} --port {port} --spool-dir {spool}"
        " --pid-file {pid_file}",
    ),
    "pop_secrets": ("server plain user1 password1", "server plain user1 password1\n"),
    "trigger": (
        "#!/bin/sh\n        exec /usr/sbin/emailrelay --as-client=smtp.example.com:smtp",
        "#!/bin/sh\nexec {emailrelay} --as-client={hop} --spool-dir {spool}\n",
    ),
    "rate_limit": (
        "`--client-filter exit:102`",
        "emailrelay --as-server --client-filter exit:102 --poll 60 --forward-to {hop}"
        " --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "spam_edit": (
        "emailrelay --as-server --filter=spam-edit:127.0.0.1:783",
        "emailrelay --as-server --filter=spam-edit:{spamd} --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "spam": (
        "emailrelay --as-server --filter=spam:127.0.0.1:783",
        "emailrelay --as-server --filter=spam:{spamd} --port {port} --spool-dir {spool} --pid-file {pid_file}",
    ),
    "gmail_secret": (
        "client plain myname@gmail.com myapppassword",
        "client plain myname@gmail.com myapppassword\n",
    ),
    "gmail_cfg": (
        "forward-to smtp.gmail.com:587\n        client-tls\n        client-auth C:/ProgramData/E-MailRelay/emailrelay.auth",
        "forward-to {hop}\nclient-tls\nclient-auth {auth}\n",
    ),
    "gmail_start": (
        "start ... emailrelay --as-proxy=smtp.gmail.com:587 --client-tls"
        " --client-auth=C:/ProgramData/E-MailRelay/emailrelay.auth ...",
        "emailrelay --as-proxy={hop} --client-tls --client-auth={auth} --port {port} --spool-dir {spool}"
        " --pid-file {pid_file}",
    ),
    "socks": (
        "emailrelay --port 587 --as-proxy=smtp.example.com:25@localhost:9050 --domain=anon.net --anonymous"
        " --connection-timeout=300",
        "emailrelay --port {port} --as-proxy={hop}@localhost:{socks} --domain=anon.net --anonymous"
        " --connection-timeout=300 --spool-dir {spool} --pid-file {pid_file}",
    ),
    "dnsbl": (
        "emailrelay -r --dnsbl=zen.spamhaus.org,bl.mailspike.net ...",
        "emailrelay -r --dnsbl=zen.spamhaus.org,bl.mailspike.net --port {port} --spool-dir {spool}"
        " --pid-file {pid_file}",
    ),
    "log_address": (
        "`--log-format=address`",
        "emailrelay --log --no-daemon --log-format=address --port {port} --spool-dir {spool}",
    ),
}

ADVANCED_GUIDE = """\
        emailrelay
        --log --verbose --log-time --log-format=unit,network
        --close-stderr --syslog
        --pid-file @app/emailrelay.pid
        --user root

        --in-spool-dir @app/in
        --in-port 25
        --in-domain example.com
        --in-address-verifier account:
        --in-dnsbl dnsbl.example.com
        --in-filter spam-edit:127.0.0.1:783
        --in-filter deliver:
        --in-server-smtp-config +chunking,+smtputf8
        --in-size 100000000
        --in-pop
        --in-pop-port 110
        --in-pop-auth pam:
        --in-pop-by-name

        --out-spool-dir @app/out
        --out-port 587
        --out-forward-on-disconnect
        --out-forward-to-some
        --out-poll 60
        --out-address-verifier account:check
        --out-delivery-dir @app/in
        --out-filter deliver:
        --out-filter split:
        --out-client-filter mx:
        --out-forward-to 127.0.0.1:588
        --out-domain example.com

        --other-spool-dir @app/other
        --other-port 588
        --other-interface 127.0.0.1
        --other-client-tls
        --other-client-auth plain:YWxpY2VAZ21haWwuY29t:UGFzc3cwcmQ
        --other-forward-to smtp.gmail.com:587
        --other-poll 3600
"""


# ---------------------------------------------------------------- helpers


def command(key: str, **subs: object) -> list[str]:
    """The argv for GUIDE[key] with the placeholders filled in; ``emailrelay`` is the venv's program."""
    argv = shlex.split(GUIDE[key][1].format(**{k: str(v) for k, v in subs.items()}))
    assert argv[0] == "emailrelay"
    return [program(), *argv[1:]]


def read_pid(pid_file: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().strip())
    return None


@contextlib.contextmanager
def daemon(
    argv: list[str], pid_file: Path, *ports: int, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[int]:
    """Run a daemonizing command line: the parent exits 0, the daemon writes its pid file and listens."""
    output = cwd / f"{pid_file.stem}.output"  # not a pipe: a daemon without --close-stderr keeps it open
    with open(output, "wb") as out:
        returncode = subprocess.call(
            argv, stdout=out, stderr=out, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )  # fmt: skip
    pid: int | None = None
    try:
        assert returncode == 0, f"{argv}: exit {returncode}: {output.read_text()}"
        assert wait_until(lambda: read_pid(pid_file) is not None, 30), (
            f"no pid file {pid_file}: {output.read_text()}"
        )
        pid = read_pid(pid_file)
        assert pid is not None and pid_alive(pid)
        for port in ports:
            wait_for_port(port, timeout=30)
        yield pid
    finally:
        if pid is None:
            pid = read_pid(pid_file)
        if pid is not None:
            stop_pid(pid)
    assert wait_until(lambda: not pid_file.exists(), 10), "pid file left behind"


def swaks(
    port: int, *args: str, to: str = "rcpt@example.net", sender: str = "sender@example.com"
) -> subprocess.CompletedProcess[str]:
    assert SWAKS, "swaks is not installed"
    argv = [SWAKS, "--server", "127.0.0.1", "--port", str(port), "--from", sender, "--to", to,
            "--helo", "client.test", "--timeout", "30", *args]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def envelopes(spool: Path, suffix: str = ".envelope") -> list[Path]:
    return sorted(p for p in spool.rglob(f"emailrelay.*{suffix}") if p.is_file())


def contents(spool: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(spool.rglob("emailrelay.*.content"))]


def spool_empty(spool: Path) -> bool:
    return not any(p.name.startswith("emailrelay.") for p in spool.iterdir())


def store_messages(spool: Path, *bodies: str) -> None:
    """Spool messages with the real ``emailrelay-submit``; its files get group ``daemon``, as an upstream
    install's set-group-id ``emailrelay-submit`` gives them, so the relay's ``daemon`` user can read them."""
    gid = grp.getgrnam("daemon").gr_gid
    for body in bodies:
        r = subprocess.run(
            [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "sender@example.com",
             "rcpt@example.net"],
            input=f"Subject: s\r\n\r\n{body}\r\n".encode(), capture_output=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    for path in spool.glob("emailrelay.*"):
        os.chown(path, -1, gid)
    assert len(envelopes(spool)) == len(bodies)


def local_account() -> str | None:
    """A system account in account:'s default uid range 1000-32767 whose name is a plain local-part."""
    for entry in sorted(pwd.getpwall(), key=lambda e: e.pw_uid):
        if 1000 <= entry.pw_uid <= 32767 and re.fullmatch(r"[a-z][a-z0-9._-]*", entry.pw_name):
            return entry.pw_name
    return None


@pytest.fixture
def work() -> Iterator[Path]:
    """A directory like ``/tmp``: under a world-searchable parent, so that the relay's ``--user`` account
    (``daemon`` by default, when started as root) can reach the spool, filters and files in it."""
    path = Path(tempfile.mkdtemp(prefix="ug-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def spool(work: Path) -> Path:
    path = work / "spool"
    path.mkdir()
    path.chmod(0o1777)  # like the guide's /tmp
    return path


# ---------------------------------------------------------------- the guide itself


def test_every_guide_line_is_quoted_verbatim() -> None:
    guide = guide_text(USERGUIDE)
    for key, (line, _) in GUIDE.items():
        assert line.strip("`") in guide, key
    assert ADVANCED_GUIDE in guide


# ---------------------------------------------------------------- Basic operation


@pytest.mark.skipif(SWAKS is None, reason="swaks not installed")
def test_as_server_stores_then_as_client_forwards(work: Path, spool: Path) -> None:
    port, pid_file = free_port(), work / "emailrelay.pid"
    with (
        FakeSmtp() as hop,
        daemon(command("as_server", port=port, spool=spool, pid_file=pid_file), pid_file, port, cwd=work),
    ):
        r = swaks(port, "--header", "Subject: store me", "--body", "stored body")
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(envelopes(spool)) == 1
        assert b"stored body" in contents(spool)[0]
        assert hop.messages == []  # storage only: nothing is forwarded by --as-server alone
        client = subprocess.run(
            command("as_client", hop=hop.address, spool=spool), capture_output=True, text=True, timeout=60
        )
        assert client.returncode == 0, client.stderr
        assert len(hop.messages) == 1
        assert b"stored body" in hop.messages[0].data
        assert wait_until(lambda: spool_empty(spool), 10), list(spool.iterdir())


def test_foreground_with_log(work: Path, spool: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        command("foreground", port=port, spool=spool), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, cwd=work,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=30, proc=proc)  # type: ignore[arg-type]
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("me@example.com", ["you@example.net"], b"Subject: fg\r\n\r\nforeground\r\n")
        assert len(envelopes(spool)) == 1
        assert proc.poll() is None  # --no-daemon: still our child, in the foreground
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert shell_status(proc.returncode) == 128 + signal.SIGTERM
        assert re.search(rf"^emailrelay: info: .*{port}", err.decode(), re.MULTILINE), err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.skipif(SWAKS is None, reason="swaks not installed")
@pytest.mark.parametrize("key", ["poll", "forward_on_disconnect"])
def test_server_that_forwards(work: Path, spool: Path, key: str) -> None:
    port, pid_file = free_port(), work / "emailrelay.pid"
    with (
        FakeSmtp() as hop,
        daemon(
            command(key, hop=hop.address, port=port, spool=spool, pid_file=pid_file), pid_file, port, cwd=work
        ),
    ):
        r = swaks(port, "--header", f"Subject: {key}", "--body", f"body of {key}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert hop.wait_for_messages(1, 30), "not forwarded"
        assert f"body of {key}".encode() in hop.messages[0].data
        assert hop.messages[0].rcpts == ["rcpt@example.net"]
        assert wait_until(lambda: spool_empty(spool), 10)


@pytest.mark.skipif(SWAKS is None or shutil.which("node") is None, reason="swaks or node not installed")
def test_filter_set_from(work: Path, spool: Path) -> None:
    script = work / "set-from.js"
    shutil.copy(SCRIPTS / "ug_set-from.js", script)
    script.chmod(0o755)
    port, pid_file = free_port(), work / "emailrelay.pid"
    argv = command("filter", filter=script, port=port, spool=spool, pid_file=pid_file)
    with daemon(argv, pid_file, port, cwd=work):
        r = swaks(port, "--header", "From: Someone <someone@example.org>", "--body", "filtered")
        assert r.returncode == 0, r.stdout + r.stderr
    (content,) = contents(spool)
    headers = content.split(b"\r\n\r\n", 1)[0]
    assert b"From: noreply@example.com" in headers.split(b"\r\n")
    assert b"someone@example.org" not in headers


@pytest.mark.skipif(SWAKS is None, reason="swaks not installed")
@pytest.mark.parametrize("key", ["account", "open_account"])
def test_account_verifier_examples(work: Path, spool: Path, key: str) -> None:
    user = local_account()
    if user is None:
        pytest.skip("no system account in uid range 1000-32767")
    domain = "example.com" if key == "account" else "mydomain.com"
    port, pid_file = free_port(), work / "emailrelay.pid"
    with daemon(command(key, port=port, spool=spool, pid_file=pid_file), pid_file, port, cwd=work):
        ok = swaks(port, "--body", "for a local account", to=f"{user}@{domain}")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        for bad in (f"no-such-user-xyz@{domain}", f"{user}@other-domain.example"):
            refused = swaks(port, "--body", "for nobody", to=bad)
            assert refused.returncode != 0, bad
            assert re.search(r"<\*\*\s+5\d\d", refused.stdout), refused.stdout
    (env,) = envelopes(spool)
    assert f"X-MailRelay-To-Local: {user}\r\n".encode() in env.read_bytes()  # a local mailbox


@pytest.mark.skipif(SWAKS is None or MPOP is None, reason="swaks or mpop not installed")
def test_pop_access_with_pop_auth_secrets(work: Path, spool: Path) -> None:
    user = local_account()
    if user is None:
        pytest.skip("no system account in uid range 1000-32767")
    auth = work / "emailrelay.auth"
    auth.write_text(GUIDE["pop_secret"][1].format(userid="me", password="s3cret") + "\n")
    port, pop_port, pid_file = free_port(), free_port(), work / "emailrelay.pid"
    argv = command("account_pop", pop_port=pop_port, auth=auth, port=port, spool=spool, pid_file=pid_file)
    with daemon(argv, pid_file, port, pop_port, cwd=work):
        r = swaks(port, "--header", "Subject: for pop", "--body", "pop me", to=f"{user}@example.com")
        assert r.returncode == 0, r.stdout + r.stderr
        home = work / "home"
        home.mkdir()
        mbox = work / "mbox"
        mpop = subprocess.run(
            [str(MPOP), "--file=/dev/null", "--host=127.0.0.1", f"--port={pop_port}", "--user=me",
             "--passwordeval=echo s3cret", "--auth=user", "--tls=off", f"--uidls-file={work / 'uidls'}",
             f"--delivery=mbox,{mbox}"],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME=str(home), LC_ALL="C"),
        )  # fmt: skip
        assert mpop.returncode == 0, mpop.stdout + mpop.stderr
        assert "pop me" in mbox.read_text()
        assert wait_until(lambda: not envelopes(spool), 10)  # retrieved and deleted
        wrong = subprocess.run(
            [str(MPOP), "--file=/dev/null", "--host=127.0.0.1", f"--port={pop_port}", "--user=me",
             "--passwordeval=echo wrong", "--auth=user", "--tls=off", f"--uidls-file={work / 'uidls2'}",
             f"--delivery=mbox,{mbox}"],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME=str(home), LC_ALL="C"),
        )  # fmt: skip
        assert wrong.returncode != 0


def test_help_verbose() -> None:
    full = subprocess.run(command("help"), capture_output=True, text=True, timeout=60)
    short = subprocess.run([program(), "--help"], capture_output=True, text=True, timeout=60)
    assert full.returncode == 0 and short.returncode == 0
    for option in ("--as-server", "--as-client", "--poll", "--forward-to", "--filter", "--pop-auth", "--dnsbl",
                   "--address-verifier", "--remote-clients", "--client-filter", "--log-format"):  # fmt: skip
        assert option in full.stdout, option
    assert len(full.stdout.splitlines()) > len(short.stdout.splitlines())


# ---------------------------------------------------------------- Open mail servers


@pytest.mark.skipif(SWAKS is None, reason="swaks not installed")
def test_server_auth_secrets(work: Path, spool: Path) -> None:
    auth = work / "emailrelay.auth"
    auth.write_text(GUIDE["server_secrets"][1])
    port, pid_file = free_port(), work / "emailrelay.pid"
    with daemon(command("server_auth", auth=auth, port=port, spool=spool, pid_file=pid_file), pid_file, port,
                cwd=work):  # fmt: skip
        for user, password in (("user1", "password1"), ("user2", "password2")):
            r = swaks(
                port, "--auth", "PLAIN", "--auth-user", user, "--auth-password", password, "--body", user
            )
            assert r.returncode == 0, r.stdout + r.stderr
        bad = swaks(port, "--auth", "PLAIN", "--auth-user", "user1", "--auth-password", "password2")
        assert bad.returncode != 0 and re.search(r"<\*\*\s+535", bad.stdout), bad.stdout
        anonymous = swaks(port, "--body", "no auth")
        assert anonymous.returncode != 0 and re.search(r"<\*\*\s+530", anonymous.stdout), anonymous.stdout
    assert len(envelopes(spool)) == 2
    authenticated = sorted(line for env in envelopes(spool) for line in env.read_text().splitlines()
                           if line.startswith("X-MailRelay-Authentication:"))  # fmt: skip
    assert authenticated == ["X-MailRelay-Authentication: user1", "X-MailRelay-Authentication: user2"]


# ---------------------------------------------------------------- Running as a POP server


def test_pop_server_example(work: Path, spool: Path) -> None:
    auth = work / "pop.auth"
    auth.write_text(GUIDE["pop_secrets"][1])
    port, pop_port, pid_file = free_port(), free_port(), work / "emailrelay.pid"
    argv = command("pop", auth=auth, pop_port=pop_port, port=port, spool=spool, pid_file=pid_file)
    with daemon(argv, pid_file, port, pop_port, cwd=work):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(
                "a@example.com", ["b@example.net"], b"Subject: popped\r\n\r\nline one\r\n.dot line\r\n"
            )
        pop = poplib.POP3("127.0.0.1", pop_port, timeout=30)
        try:
            with pytest.raises(poplib.error_proto):
                pop.user("user1")
                pop.pass_("wrong")
        finally:
            with contextlib.suppress(Exception):
                pop.quit()
        pop = poplib.POP3("127.0.0.1", pop_port, timeout=30)
        pop.user("user1")
        pop.pass_("password1")
        count, _ = pop.stat()
        assert count == 1
        _, lines, _ = pop.retr(1)
        assert b"Subject: popped" in lines and b".dot line" in lines
        pop.dele(1)
        pop.quit()
        assert wait_until(lambda: not envelopes(spool), 10)


# ---------------------------------------------------------------- Triggering delivery


def test_trigger_script_forwards(work: Path, spool: Path) -> None:
    with FakeSmtp() as hop:
        script = work / "emailrelay-ip-up"
        script.write_text(GUIDE["trigger"][1].format(emailrelay=program(), hop=hop.address, spool=spool))
        script.chmod(0o755)  # "make it executable using chmod +x"
        store_messages(spool, "offline body")
        r = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert len(hop.messages) == 1 and b"offline body" in hop.messages[0].data
        assert spool_empty(spool)
    # the guide's port is the service name "smtp": accepted (nothing is left to send, so nothing connects)
    script.write_text(GUIDE["trigger"][1].format(emailrelay=program(), hop="127.0.0.1:smtp", spool=spool))
    named = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    # as E-MailRelay 2.6b says with an empty spool (the option was accepted: no usage error)
    assert named.returncode == 0 and named.stderr == "emailrelay: no messages to send\n", named.stderr


# ---------------------------------------------------------------- Rate limiting


def test_client_filter_exit_102_one_message_per_poll(work: Path, spool: Path) -> None:
    store_messages(spool, *(f"rate limited {i}" for i in range(3)))
    port, pid_file = free_port(), work / "emailrelay.pid"
    with FakeSmtp() as hop:
        argv = command("rate_limit", hop=hop.address, port=port, spool=spool, pid_file=pid_file)
        with daemon(argv, pid_file, port, cwd=work):
            assert hop.wait_for_messages(1, 30)
            # for 3 s, well inside the 60 s polling period, nothing more may go
            assert not hop.wait_for(lambda: len(hop.messages) > 1, 3), [m.data[-40:] for m in hop.messages]
            assert len(envelopes(spool)) == 2


# ---------------------------------------------------------------- SpamAssassin


@pytest.mark.skipif(SWAKS is None, reason="swaks not installed")
def test_spam_edit_filter(work: Path, spool: Path) -> None:
    port, pid_file = free_port(), work / "emailrelay.pid"
    with fake_spamd() as spamd:
        argv = command("spam_edit", spamd=spamd.address, port=port, spool=spool, pid_file=pid_file)
        with daemon(argv, pid_file, port, cwd=work):
            r = swaks(port, "--header", "Subject: spammy", "--body", GTUBE.decode())
            assert r.returncode == 0, r.stdout + r.stderr  # spam-edit: marks, does not reject
            assert spamd.requests and spamd.requests[0][0] == "PROCESS"
    (content,) = contents(spool)
    # stored as spamd sent it: the fake's LF line ends (as E-MailRelay 2.6b stores it)
    assert content.startswith(b"X-Spam-Flag: YES\n") and b"\r\n" not in content


@pytest.mark.skipif(SWAKS is None, reason="swaks not installed")
def test_spam_filter_rejects(work: Path, spool: Path) -> None:
    port, pid_file = free_port(), work / "emailrelay.pid"
    with fake_spamd() as spamd:
        argv = command("spam", spamd=spamd.address, port=port, spool=spool, pid_file=pid_file)
        with daemon(argv, pid_file, port, cwd=work):
            spam = swaks(port, "--header", "Subject: spammy", "--body", GTUBE.decode())
            # a filter's rejection without a code of its own: E-MailRelay 2.6b's 452
            assert spam.returncode != 0 and re.search(r"<\*\*\s+452 ", spam.stdout), spam.stdout
            ham = swaks(port, "--header", "Subject: ham", "--body", "perfectly ordinary")
            assert ham.returncode == 0, ham.stdout
    assert len(envelopes(spool)) == 1
    assert b"perfectly ordinary" in contents(spool)[0]


# ---------------------------------------------------------------- Google mail


@contextlib.contextmanager
def tls_smarthost(work: Path) -> Iterator[tuple[str, Path]]:
    """An emailrelay smarthost like smtp.gmail.com:587: STARTTLS and AUTH required; yields (address, spool)."""
    certs = make_certs(work / "certs")
    secrets = work / "smarthost.auth"
    secrets.write_text("server plain myname@gmail.com myapppassword\n")
    hspool = work / "smarthost-spool"
    hspool.mkdir()
    hport = free_port()
    log = open(work / "smarthost.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [program(), "--no-daemon", "--log", "--no-syslog", "--port", str(hport), "--interface", "127.0.0.1",
         "--spool-dir", str(hspool), "--server-tls", "--server-tls-certificate", str(certs.server_pem),
         "--server-tls-required", "--server-auth", str(secrets), "--user", "root", "--single-process"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(hport, timeout=30, proc=proc)  # type: ignore[arg-type]
        yield f"127.0.0.1:{hport}", hspool
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def smarthost() -> Iterator[tuple[str, Path]]:
    """One TLS + AUTH smarthost for the Google mail examples (each looks for its own message)."""
    path = Path(tempfile.mkdtemp(prefix="ug-smarthost-", dir="/tmp"))
    try:
        with tls_smarthost(path) as address_and_spool:
            yield address_and_spool
    finally:
        shutil.rmtree(path, ignore_errors=True)


def smarthost_got(hspool: Path, needle: bytes) -> bool:
    """The smarthost stored a message holding ``needle`` from a client that authenticated as the guide's user."""
    for env in envelopes(hspool):
        content = env.with_name(env.name.replace(".envelope", ".content"))
        if (
            content.exists()
            and needle in content.read_bytes()
            and "X-MailRelay-Authentication: myname@gmail.com" in env.read_text()
        ):
            return True
    return False


def test_gmail_client_secrets_and_config_file(work: Path, spool: Path, smarthost: tuple[str, Path]) -> None:
    auth = work / "emailrelay.auth"
    auth.write_text(GUIDE["gmail_secret"][1])
    port, pid_file = free_port(), work / "emailrelay.pid"
    hop, hspool = smarthost
    cfg = work / "emailrelay.cfg"
    cfg.write_text(GUIDE["gmail_cfg"][1].format(hop=hop, auth=auth))
    argv = [program(), "--as-server", "--poll", "60", "--port", str(port), "--spool-dir", str(spool),
            "--pid-file", str(pid_file), str(cfg)]  # fmt: skip
    with daemon(argv, pid_file, port, cwd=work):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(
                "me@example.com", ["friend@example.net"], b"Subject: via gmail\r\n\r\ncfg route\r\n"
            )
        assert wait_until(lambda: smarthost_got(hspool, b"cfg route"), 30), list(hspool.iterdir())
        assert wait_until(lambda: spool_empty(spool), 10)


def test_gmail_as_proxy_command_line(work: Path, spool: Path, smarthost: tuple[str, Path]) -> None:
    auth = work / "emailrelay.auth"
    auth.write_text(GUIDE["gmail_secret"][1])
    port, pid_file = free_port(), work / "emailrelay.pid"
    hop, hspool = smarthost
    argv = command("gmail_start", hop=hop, auth=auth, port=port, spool=spool, pid_file=pid_file)
    with daemon(argv, pid_file, port, cwd=work):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("me@example.com", ["friend@example.net"], b"Subject: proxy\r\n\r\nproxied\r\n")
        assert wait_until(lambda: smarthost_got(hspool, b"proxied"), 30), list(hspool.iterdir())


# ---------------------------------------------------------------- Connection tunnelling


def test_socks_tunnel_anonymous_proxy(work: Path, spool: Path) -> None:
    port, pid_file = free_port(), work / "emailrelay.pid"
    with FakeSmtp() as hop, socks_server() as proxy:
        argv = command("socks", port=port, hop=hop.address, socks=proxy.port, spool=spool, pid_file=pid_file)
        with daemon(argv, pid_file, port, cwd=work):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                code, _ = smtp.ehlo("client.test")
                assert code == 250
                smtp.sendmail(
                    "me@example.com", ["you@example.net"], b"Subject: tor\r\n\r\nthrough the tunnel\r\n"
                )
            assert hop.wait_for_messages(1, 30)
        assert [r[1:] for r in proxy.requests] == [("127.0.0.1", hop.port)]
        assert hop.commands_named("EHLO") == ["EHLO anon.net"]
        data = hop.messages[0].data
        assert b"through the tunnel" in data
        assert not data.startswith(b"Received:")  # --anonymous: no Received line


# ---------------------------------------------------------------- Blocklists and dynamic firewalls


def test_dnsbl_example_serves_local_clients(work: Path, spool: Path) -> None:
    port, pid_file = free_port(), work / "emailrelay.pid"
    with daemon(command("dnsbl", port=port, spool=spool, pid_file=pid_file), pid_file, port, cwd=work):
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("me@example.com", ["you@example.net"], b"Subject: dnsbl\r\n\r\nlocal\r\n")
        assert time.monotonic() - started < 10  # loopback peers are not looked up
    assert len(envelopes(spool)) == 1


def test_log_format_address_for_fail2ban(work: Path, spool: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        command("log_address", port=port, spool=spool), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, cwd=work,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=30, proc=proc)  # type: ignore[arg-type]
        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            sock.settimeout(10)
            sock.recv(512)
            sock.sendall(b"EHLO x\r\nMAIL FROM:<not an address\r\nQUIT\r\n")
            with contextlib.suppress(OSError):
                while sock.recv(4096):
                    pass
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    session = [line for line in err.decode().splitlines() if "smtp connection" in line]
    assert len(session) >= 2, err.decode()  # connected, closed
    # what fail2ban's failregex keys on: the remote address as a field at the start of every session line
    assert all(re.match(r"^emailrelay: \w+: 127\.0\.0\.1; ", line) for line in session), session


def test_as_server_log_file_gets_session_lines(work: Path, spool: Path) -> None:
    port, pid_file, log = free_port(), work / "emailrelay.pid", work / "emailrelay.log"
    argv = [program(), "--as-server", "--log-format=address", f"--log-file={log}", "--port", str(port),
            "--spool-dir", str(spool), "--pid-file", str(pid_file)]  # fmt: skip
    with daemon(argv, pid_file, port, cwd=work), smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("a@example.com", ["b@example.net"], b"Subject: logged\r\n\r\nx\r\n")
    text = log.read_text()
    # the session is logged by the smtp role, which runs as the --user account (daemon)
    assert re.search(r"^emailrelay: info: 127\.0\.0\.1; smtp connection from 127\.0\.0\.1:", text, re.M), text


# ---------------------------------------------------------------- Bcc handling


def test_bcc_header_is_forwarded_unchanged(work: Path, spool: Path) -> None:
    port, pid_file = free_port(), work / "emailrelay.pid"
    original = (b"From: me@example.com\r\nTo: you@example.net\r\nBcc: hidden@example.org\r\n"
                b"Subject: bcc\r\n\r\nsecret recipients\r\n")  # fmt: skip
    with FakeSmtp() as hop:
        argv = command("forward_on_disconnect", hop=hop.address, port=port, spool=spool, pid_file=pid_file)
        with daemon(argv, pid_file, port, cwd=work):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.sendmail("me@example.com", ["you@example.net", "hidden@example.org"], original)
            assert hop.wait_for_messages(1, 30)
    data = hop.messages[0].data
    assert data.startswith(b"Received: ")
    received_end = re.match(rb"Received: .*?\r\n(?![ \t])", data, re.DOTALL)
    assert received_end is not None
    assert data[received_end.end() :] == original


@pytest.mark.skipif(SWAKS is None, reason="swaks not installed")
def test_bcc_rejecting_filter_script(work: Path, spool: Path) -> None:
    """ "An E-MailRelay --filter script can be used to reject messages with incorrect Bcc: headers"."""
    script = work / "bcc-check.sh"
    shutil.copy(REPO / "config" / "filters" / "bcc-check.sh", script)  # the shipped example
    script.chmod(0o755)
    port, pid_file = free_port(), work / "emailrelay.pid"
    argv = command("filter", filter=script, port=port, spool=spool, pid_file=pid_file)
    with daemon(argv, pid_file, port, cwd=work):
        leaky = swaks(port, "--header", "Bcc: hidden@example.org", "--body", "leaky")
        assert leaky.returncode != 0 and re.search(r"<\*\*\s+452 .*Bcc header", leaky.stdout), leaky.stdout
        clean = swaks(port, "--body", "clean")
        assert clean.returncode == 0, clean.stdout
    (content,) = contents(spool)
    assert b"clean" in content


# ---------------------------------------------------------------- Advanced set-up


def advanced_argv(
    app: Path, *, ports: dict[int, int], hop: str, spamd: str, pop_auth: str, join_filters: bool = False
) -> list[str]:
    """ADVANCED_GUIDE as one command line: fixed ports -> free ports, the gmail smarthost and spamd -> local."""
    words = ADVANCED_GUIDE.split()
    out: list[str] = []
    for i, word in enumerate(words):
        prev = words[i - 1] if i else ""
        if prev.endswith("-port") and int(word) in ports:
            word = str(ports[int(word)])
        elif prev == "--out-forward-to":
            word = f"127.0.0.1:{ports[588]}"
        elif prev == "--other-forward-to":
            word = hop
        elif word == "spam-edit:127.0.0.1:783":
            word = f"spam-edit:{spamd}"
        elif prev == "--in-pop-auth":
            word = pop_auth
        out.append(word)
    assert out[0] == "emailrelay"
    if join_filters:  # the workaround for the repeated-filter bug: one comma-separated chain per option
        out = _join_repeated(out, ("--in-filter", "--out-filter"))
    return [str(app / "emailrelay"), *out[1:]]


def _join_repeated(words: list[str], options: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    seen: dict[str, int] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word in options and i + 1 < len(words):
            if word in seen:
                out[seen[word]] += "," + words[i + 1]
            else:
                out.append(word)
                out.append(words[i + 1])
                seen[word] = len(out) - 1
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def test_advanced_setup_as_typed_with_pam(work: Path) -> None:
    """As typed it is refused, as E-MailRelay 2.6b refuses it (``--in-dnsbl`` without
    ``--in-remote-clients``: a usage error); with ``--in-remote-clients`` added, ``pam:`` included, it
    starts, and POP by name authenticates through PAM (a tmp PAM configuration through
    ``EMAILRELAY_PAM_CONFDIR``, our testing aid; the guide's ``pam_unix.so`` needs real accounts)."""
    app = work / "app"
    app.mkdir()
    for sub in ("in", "out", "other", "in/alice"):
        (app / sub).mkdir()
    shutil.copy(program(), app / "emailrelay")
    confdir = pam_confdir(work)
    ports = {p: free_port() for p in (25, 110, 587, 588)}
    argv = advanced_argv(app, ports=ports, hop="127.0.0.1:1", spamd="127.0.0.1:1", pop_auth="pam:")
    env = {"EMAILRELAY_PAM_CONFDIR": str(confdir)}
    typed = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=work, stdin=subprocess.DEVNULL
    )
    assert (typed.returncode, typed.stderr) == (
        1,
        "emailrelay: usage error: --dnsbl requires --remote-clients or -r\n",
    )
    argv.append("--in-remote-clients")
    with daemon(argv, app / "emailrelay.pid", *ports.values(), cwd=work, env=env):
        pop = poplib.POP3("127.0.0.1", ports[110], timeout=30)
        pop.user("alice")
        assert pop.pass_("s3cret").startswith(b"+OK")
        assert pop.stat()[0] == 0  # @app/in/alice, empty
        pop.quit()
        pop = poplib.POP3("127.0.0.1", ports[110], timeout=30)
        pop.user("alice")
        with pytest.raises(poplib.error_proto):
            pop.pass_("wrong")
        pop.close()


@pytest.mark.skipif(SWAKS is None, reason="swaks not installed")
def test_advanced_setup_three_in_one(work: Path) -> None:
    user = local_account()
    if user is None:
        pytest.skip("no system account in uid range 1000-32767")
    app = work / "app"
    app.mkdir()
    shutil.copy(program(), app / "emailrelay")  # so that @app is this directory, as for an installed program
    for sub in ("in", "out", "other"):
        (app / sub).mkdir()
    pop_auth = work / "pop.auth"
    pop_auth.write_text(f"server plain {user} pop-password\n")
    ports = {p: free_port() for p in (25, 110, 587, 588)}
    with FakeSmtp() as hop, fake_spamd() as spamd:
        argv = advanced_argv(
            app, ports=ports, hop=hop.address, spamd=spamd.address, pop_auth=str(pop_auth), join_filters=True
        )
        argv.append("--in-remote-clients")  # --in-dnsbl needs it (upstream's usage error; the previous test)
        pid_file = app / "emailrelay.pid"
        with daemon(argv, pid_file, *ports.values(), cwd=work):
            # in: internet-facing, account: verifier, spam-edit, deliver: into the user's mailbox
            ok = swaks(ports[25], "--header", "Subject: inbound", "--body", "to a local mailbox",
                       to=f"{user}@example.com")  # fmt: skip
            assert ok.returncode == 0, ok.stdout + ok.stderr
            refused = swaks(ports[25], "--body", "x", to="no-such-user-xyz@example.com")
            assert refused.returncode != 0
            assert spamd.requests, "spam-edit: did not consult spamd"
            # POP by name: the user sees their own mailbox
            pop = poplib.POP3("127.0.0.1", ports[110], timeout=30)
            pop.user(user)
            pop.pass_("pop-password")
            assert pop.stat()[0] == 1
            text = b"\r\n".join(pop.retr(1)[1])
            pop.quit()
            assert b"to a local mailbox" in text and b"X-Spam" in text
            # out: a local recipient is short-circuited into the in mailbox (--out-delivery-dir @app/in)
            out = swaks(ports[587], "--header", "Subject: outbound", "--body", "local via out",
                        to=f"{user}@example.com")  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
            assert wait_until(lambda: any(b"local via out" in c for c in contents(app / "in" / user)), 20)
            # other: store-and-forward to the smarthost with the plain: client account
            assert hop.messages == []
    assert not pid_file.exists()
