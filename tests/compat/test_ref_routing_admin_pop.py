"""Reference guide 2.6, "Routing", "Delivery", "Delivery status notifications", "Administration
interface", "Connection blocking", "POP server", "Run-time environment" and "Files and directories".

Everything runs the real ``emailrelay`` as a subprocess with the guide's options (ports and paths
adapted), fed by real clients (smtplib, poplib, a raw admin socket the way telnet/netcat talk, the
``emailrelay-submit`` program) and forwarding to a real next hop (:class:`FakeSmtp`).  Identity
checks read ``/proc`` of the relay's own processes (found from the pid the test started).
"""

from __future__ import annotations

import contextlib
import json
import os
import poplib
import pwd
import signal
import smtplib
import socket
import stat
import subprocess
from pathlib import Path

import psutil
import pytest

from emailrelay.config import default_domain
from emailrelay.spool import envelope as envmod
from tests.support.dns_server import DnsServer
from tests.support.fake_smtp import FakeSmtp
from tests.support.fixtures import UPSTREAM
from tests.support.relay import Relay, free_port, program, reachable_dir, spool_files, start_relay, wait_until
from tests.support.sink import printed_envelope
from tests.support.sink_counter import PROMPT, AdminClient, role_pids

pytestmark = pytest.mark.timeout(60)

FIXTURE = UPSTREAM / "admin-session.txt"


def send(port: int, sender: str, rcpts: list[str], subject: str = "guide", host: str = "127.0.0.1") -> None:
    with smtplib.SMTP(host, port, timeout=20) as c:
        c.sendmail(
            sender, rcpts, f"Subject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\nbody\r\n".encode()
        )


def submit(spool: Path, rcpt: str = "rcpt@example.net", subject: str = "guide") -> Path:
    spool.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "sender@example.com", "--verbose", rcpt],
        input=f"Subject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\nbody\r\n".encode(),
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    return printed_envelope(out.stdout)


def set_field(envelope_path: Path, name: str, value: str) -> None:
    env = envmod.parse(envelope_path.read_bytes())
    envelope_path.write_bytes(envmod.Envelope(**{**env.__dict__, name: value}).to_bytes())


def as_client(spool: Path, hop: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program(), "--as-client", hop, *args, "--spool-dir", str(spool), "--log", "--verbose", "--no-syslog",
         "--user", "root", "--connection-timeout", "3", "--response-timeout", "10"],
        capture_output=True, text=True, timeout=45, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def subjects(hop: FakeSmtp) -> list[str]:
    out = []
    for m in hop.messages:
        for line in m.data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out.append(line[9:].decode())
    return sorted(out)


# ------------------------------------------------------------------ Routing


def test_forward_to_address_set_by_a_filter_with_a_dummy_forward_to(tmp_path: Path) -> None:
    """A ``--filter`` fills ``ForwardToAddress`` (an IP:port, or a name:port looked up with A/AAAA);
    every message has one, so the dummy ``--forward-to 127.0.0.1:9`` is never used."""
    with FakeSmtp() as one, FakeSmtp() as two:
        filt = script(
            tmp_path / "route.sh",
            "#!/bin/sh\n"
            f'if grep -q "^X-MailRelay-To-Remote: .*@one.example" "$2"; then a=127.0.0.1:{one.port}; '
            f"else a=localhost:{two.port}; fi\n"
            'sed -i "s/^X-MailRelay-ForwardToAddress: .*/X-MailRelay-ForwardToAddress: $a\\r/" "$2"\nexit 0\n',
        )
        relay = start_relay(
            tmp_path, "--forward-to", "127.0.0.1:9", "--poll=1", f"--filter={filt}", "--single-process"
        )
        try:
            send(relay.port, "a@example.com", ["x@one.example"], "to-one")
            send(relay.port, "a@example.com", ["y@two.example"], "to-two")
            assert one.wait_for_messages(1, 20) and two.wait_for_messages(1, 20), relay.log()
            # the next hop records a message before its 250: wait for the relay to have taken that too
            assert wait_until(lambda: not [p for p in relay.spool.iterdir() if ".envelope" in p.name], 10)
        finally:
            relay.stop()
        assert subjects(one) == ["to-one"] and subjects(two) == ["to-two"]
        assert spool_files(relay.spool, ".envelope") == [] and spool_files(relay.spool, ".bad") == []


def test_forward_to_runs_the_client_filter_early(tmp_path: Path) -> None:
    """``--filter=split:`` stores the domain in ``ForwardTo``; the ``--client-filter`` then runs before
    connecting and turns it into a ``ForwardToAddress`` (the guide's two-stage routing, with a script in
    the place of ``mx:``)."""
    with FakeSmtp() as one, FakeSmtp() as two:
        seen = tmp_path / "forward-to-seen"
        cfilt = script(
            tmp_path / "mx.sh",
            "#!/bin/sh\n"
            'd=$(sed -n "s/^X-MailRelay-ForwardTo: \\(.*\\)\\r$/\\1/p" "$2")\n'
            f'echo "$d" >> {seen}\n'
            f'case "$d" in one.example) a=127.0.0.1:{one.port};; two.example) a=127.0.0.1:{two.port};; *) exit 1;; esac\n'
            'sed -i "s/^X-MailRelay-ForwardToAddress: .*/X-MailRelay-ForwardToAddress: $a\\r/" "$2"\nexit 0\n',
        )
        relay = start_relay(
            tmp_path,
            "--forward-to",
            "127.0.0.1:9",
            "--poll=1",
            "--filter=split:",
            f"--client-filter={cfilt}",
            "--single-process",
        )
        try:
            send(relay.port, "a@example.com", ["x@one.example", "y@two.example", "z@one.example"], "split")
            assert one.wait_for_messages(1, 20) and two.wait_for_messages(1, 20), relay.log()
        finally:
            relay.stop()
        assert sorted(r for m in one.messages for r in m.rcpts) == ["x@one.example", "z@one.example"]
        assert [r for m in two.messages for r in m.rcpts] == ["y@two.example"]
        assert sorted(seen.read_text().split()) == ["one.example", "two.example"]


def test_unavailable_routed_address_stays_in_the_spool_and_is_retried(tmp_path: Path) -> None:
    """A connection failure to a ``ForwardToAddress`` does not fail the message: it stays (not
    ``.bad``) and a later run delivers it."""
    spool = tmp_path / "spool"
    port = free_port()
    set_field(submit(spool), "forward_to_address", f"127.0.0.1:{port}")
    first = as_client(spool, "127.0.0.1:9")
    assert len(spool_files(spool, ".envelope")) == 1 and spool_files(spool, ".bad") == [], first.stdout
    with FakeSmtp(port=port) as hop:
        second = as_client(spool, "127.0.0.1:9")
        assert second.returncode == 0, second.stdout + second.stderr
        assert hop.wait_for_messages(1, 10)
    assert spool_files(spool, ".envelope") == []


# ------------------------------------------------------------------ Delivery


def local_account() -> pwd.struct_passwd:
    for entry in pwd.getpwall():
        if 1000 <= entry.pw_uid <= 32767:
            return entry
    pytest.skip("no system account in the account: verifier's default range 1000-32767")


def test_guide_account_verifier_and_deliver_filter_then_pop_by_name(tmp_path: Path) -> None:
    """``--address-verifier=account: --filter=deliver:``: a local recipient's message goes to its
    mailbox (and not to the forwarding spool; a recipient that is no account is refused); the mailbox
    is then served with ``--pop --pop-by-name`` to the account name."""
    user = local_account().pw_name
    secrets = tmp_path / "pop.auth"
    secrets.write_text(f"server plain {user} pw\n")
    pop_port = free_port()
    relay = start_relay(
        tmp_path, "--address-verifier=account:", "--filter=deliver:", "--pop", f"--pop-port={pop_port}",
        f"--pop-auth={secrets}", "--pop-by-name", "--single-process",
    )  # fmt: skip
    try:
        domain = default_domain()
        send(relay.port, "a@example.com", [f"{user}@{domain}"], "first")
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as c:  # not a local account: refused
            c.ehlo()
            c.mail("a@example.com")
            assert c.rcpt("nobody-here@remote.example")[0] == 550
            assert c.rcpt(f"{user}@{domain}")[0] == 250
            assert c.data(b"Subject: second\r\n\r\nbody\r\n")[0] == 250
        mailbox = relay.spool / user
        assert wait_until(
            lambda: len(spool_files(mailbox, ".envelope")) == 2 if mailbox.is_dir() else False, 15
        )
        assert spool_files(relay.spool, ".envelope") == []  # all recipients local: nothing left to forward
        pop = poplib.POP3("127.0.0.1", pop_port, timeout=15)
        try:
            pop.user(user)
            pop.pass_("pw")
            count, _ = pop.stat()
            assert count == 2
            bodies = [b"\r\n".join(pop.retr(i)[1]) for i in (1, 2)]
            assert sorted(b.split(b"Subject: ")[1].split(b"\r\n")[0] for b in bodies) == [b"first", b"second"]
        finally:
            pop.quit()
    finally:
        relay.stop()


def test_deliver_into_an_existing_maildir_and_delivery_dir(tmp_path: Path) -> None:
    """A mailbox with ``new``, ``tmp`` and ``cur`` is a maildir: only the content goes into ``new``;
    ``--delivery-dir`` moves the mailboxes out of the spool directory.  (The POP section's spelling
    ``delivery:`` is a program path, as in E-MailRelay 2.6b: test_guide_part2_network.py.)"""
    user = local_account().pw_name
    boxes = tmp_path / "boxes"
    for sub in ("new", "tmp", "cur"):
        (boxes / user / sub).mkdir(parents=True)
    os.chmod(boxes, 0o777)
    relay = start_relay(
        tmp_path,
        "--address-verifier=account:",
        "--filter=deliver:",
        f"--delivery-dir={boxes}",
        "--single-process",
    )
    try:
        send(relay.port, "a@example.com", [f"{user}@{default_domain()}"], "maildir")
        assert wait_until(lambda: any((boxes / user / "new").iterdir()), 15), relay.log()
    finally:
        relay.stop()
    (delivered,) = list((boxes / user / "new").iterdir())
    assert b"Subject: maildir" in delivered.read_bytes()
    assert not list((boxes / user).glob("*.envelope"))
    assert spool_files(relay.spool, ".envelope") == []  # all recipients local: the original is gone


def test_no_delivery_status_notification_is_generated(tmp_path: Path) -> None:
    """A permanently refused message becomes ``.bad`` in the spool; the relay writes no DSN message."""
    spool = tmp_path / "spool"
    submit(spool)
    with FakeSmtp(replies={"rcpt": "550 5.1.1 no such user"}) as hop:
        run = as_client(spool, hop.address)
        assert hop.messages == []
    assert len(spool_files(spool, ".envelope.bad")) == 1, run.stdout + run.stderr
    assert [p for p in spool.iterdir() if p.name.endswith(".envelope")] == []
    assert len(spool_files(spool, ".content")) == 1  # no new (DSN) message beside the failed one


# ------------------------------------------------------------------ Administration interface


def fixture() -> dict[str, bytes]:
    import ast

    out = {}
    for line in FIXTURE.read_text().splitlines()[1:]:
        command, _, reply = line.partition(" => ")
        out[command] = ast.literal_eval(reply)
    return out


def test_guide_admin_command_line_with_telnet_style_session(tmp_path: Path) -> None:
    """``emailrelay --as-server --port=125 --forward-to=localhost:25 --admin=10026`` then
    ``help`` and ``quit`` (ports adapted), plus ``forward``, ``flush``, ``status``, ``pid``, ``info``."""
    upstream = fixture()
    with FakeSmtp(replies={"greeting": "421 not yet"}) as hop:
        admin_port, port = free_port(), free_port()
        relay = start_relay(
            tmp_path, "--as-server", f"--port={port}", f"--forward-to=localhost:{hop.port}", f"--admin={admin_port}",
            port=port,
        )  # fmt: skip
        try:
            with AdminClient(admin_port) as admin:
                names = admin.cmd("help")
                assert names.startswith(b"commands: ") and names.endswith(b"\r\n" + PROMPT)
                ours = names[len(b"commands: ") : -len(b"\r\n" + PROMPT)].decode().split(", ")
                theirs = upstream["help"][len(b"commands: ") : -len(b"\r\n" + PROMPT)].decode().split(", ")
                assert set(theirs) <= set(ours)
                assert admin.cmd("info") == upstream["info"]
                assert admin.cmd("bogus") == upstream["bogus"]
                assert admin.cmd("pid") == f"{relay.pid}\r\n".encode() + PROMPT
                status = admin.cmd("status").decode()
                assert f"LISTEN: 127.0.0.1:{admin_port}" in status
                submit(relay.spool, subject="queued")
                hop.replies["greeting"] = "220 fake.test ready"
                assert admin.cmd("forward") == b"OK\r\n" + PROMPT
                assert hop.wait_for_messages(1, 20), relay.log()
                hop.clear_messages()
                submit(relay.spool, subject="flushed")
                # waits for the messages to be sent
                assert admin.cmd("flush", timeout=30) == b"OK\r\n" + PROMPT
                assert subjects(hop) == ["flushed"]
                admin.sock.sendall(b"quit\r\n")
                assert admin.read_all(10) == upstream["quit"]
        finally:
            relay.stop()


def test_admin_smtp_disable_list_and_unfail_all(tmp_path: Path) -> None:
    """``smtp disable`` gives new SMTP connections ``421``; ``list`` shows the spool; ``unfail-all``
    removes ``.bad``; ``notify`` pushes events on the admin connection."""
    admin_port = free_port()
    relay = start_relay(tmp_path, f"--admin={admin_port}")  # supervised: notify events come over the bus
    try:
        bad = submit(relay.spool, subject="bad")
        bad.rename(bad.with_name(bad.name + ".bad"))
        good = submit(relay.spool, subject="good")
        with AdminClient(admin_port) as admin, AdminClient(admin_port) as watcher:
            listed = admin.cmd("list").decode().split("\r\n")[:-1]
            assert [x.strip() for x in listed] == [good.name.removesuffix(".envelope")]
            assert admin.cmd("unfail-all") == PROMPT
            assert bad.exists()
            watcher.sock.sendall(b"notify\r\n")  # upstream: no reply, its network events follow
            pushed = b""
            for attempt in range(6):  # the subscription may still be joining the bus just after start-up
                send(relay.port, "a@example.com", ["b@example.net"], f"notified{attempt}")
                # (a late stop of an earlier connection may come first)
                with contextlib.suppress(TimeoutError):
                    pushed += watcher.read_until(b"\r\nEVENT: network: in: start  ", 3)
                    pushed += watcher.read_until(b"\r\nEVENT: network: in: stop  ", 3)
                    break
            assert pushed.endswith(b"\r\nEVENT: network: in: start  \r\nEVENT: network: in: stop  "), pushed
            assert admin.cmd("smtp disable") == b"OK\r\n" + PROMPT
            greeting = b""

            def refused() -> bool:
                nonlocal greeting
                with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
                    greeting = s.recv(200)
                return greeting.startswith(b"421")

            assert wait_until(refused, 10), greeting
            assert b"service not available" in greeting
            assert admin.cmd("smtp enable") == b"OK\r\n" + PROMPT
    finally:
        relay.stop()


def test_admin_dnsbl_and_terminate(tmp_path: Path) -> None:
    """``dnsbl show`` (ours) describes the configuration (an error without ``--dnsbl``), ``dnsbl``
    alone is upstream's usage; ``terminate`` needs ``--admin-terminate`` and then stops the relay
    with exit 0."""
    admin_port = free_port()
    relay = start_relay(tmp_path, f"--admin={admin_port}", "--single-process", name="plain")
    try:
        with AdminClient(admin_port) as admin:
            assert admin.cmd("dnsbl show").startswith(b"error: ")
            assert admin.cmd("dnsbl") == b"usage: dnsbl {start|stop <timeout>}\r\n" + PROMPT
            assert admin.cmd("terminate") == b"error: unrecognised command\r\n" + PROMPT
    finally:
        relay.stop()
    admin_port = free_port()
    relay = start_relay(
        tmp_path,
        f"--admin={admin_port}",
        "--admin-terminate",
        "-r",
        "--dnsbl",
        "spam.example.com,1,500,127.0.0.1:53",
    )
    try:
        with AdminClient(admin_port) as admin:
            line = admin.cmd("dnsbl show").decode()
            assert "spam.example.com" in line and "threshold 1" in line and "500ms" in line
            admin.sock.sendall(b"terminate\r\n")
        assert relay.proc.wait(20) == 0
    finally:
        relay.stop()


# ------------------------------------------------------------------ Connection blocking


@pytest.mark.parametrize(
    "form",
    [
        "spam.example.com,block.example.com,1,500,{dns}",
        "spam.example.com,block.example.com",
        "{dns},500,1,spam.example.com,block.example.com",
        "spam.example.com,block.example.com,0",
        "spam.example.com,block.example.com,1,-5000",
    ],
    ids=["full", "plain-list", "reversed", "threshold-0", "negative-timeout"],
)
def test_guide_dnsbl_command_lines(tmp_path: Path, form: str) -> None:
    """``emailrelay -r --dnsbl ...`` in each printed form (1.1.1.1:53 replaced by a local DNS server):
    it starts, the admin ``dnsbl show`` command reads the form back, and loopback clients are never looked up."""
    dns = DnsServer({}).start()
    try:
        value = form.format(dns=dns.address)
        admin_port = free_port()
        relay = start_relay(
            tmp_path, "--log", "-v", "-r", "--dnsbl", value, f"--admin={admin_port}", "--single-process"
        )
        try:
            with AdminClient(admin_port) as admin:
                line = admin.cmd("dnsbl show").decode()
            assert "spam.example.com,block.example.com" in line, line
            assert ("threshold 0" in line) == form.endswith(",0")
            assert ("block on timeout" in line) == ("-5000" in form)
            if "{dns}" in form:
                assert dns.address in line and "500ms" in line
            send(relay.port, "a@example.com", ["b@example.net"])
            assert len(spool_files(relay.spool, ".envelope")) == 1
            assert dns.queries == []
        finally:
            relay.stop()
    finally:
        dns.stop()


# ------------------------------------------------------------------ POP server


@pytest.mark.parametrize("form", ["copy:", "copy:nodelete", "copy:pop", "copy:hardlink"])
def test_pop_by_name_with_the_copy_filter(tmp_path: Path, form: str) -> None:
    """``--pop --pop-auth --pop-by-name --filter=copy:...``: alice and bob each get the message in their
    sub-directory and can delete it; ``nodelete`` keeps the original for forwarding, ``pop`` copies only
    the envelope (content served from the main spool and kept while another envelope needs it),
    ``hardlink`` links the content."""
    secrets = tmp_path / "pop.auth"
    secrets.write_text("server plain alice apw\nserver plain bob bpw\n")
    spool = tmp_path / "spool"
    for name in ("alice", "bob"):
        (spool / name).mkdir(parents=True)
    pop_port = free_port()
    relay = start_relay(
        tmp_path, "--pop", f"--pop-port={pop_port}", f"--pop-auth={secrets}", "--pop-by-name", f"--filter={form}",
        "--single-process", spool=spool,
    )  # fmt: skip
    try:
        send(relay.port, "a@example.com", ["someone@example.net"], "copied")
        assert wait_until(lambda: len(spool_files(spool / "bob", ".envelope")) == 1, 15), relay.log()
        main_envelopes = spool_files(spool, ".envelope")
        assert len(main_envelopes) == (1 if form == "copy:nodelete" else 0)
        alice_content = spool_files(spool / "alice", ".content")
        if form == "copy:pop":
            assert alice_content == [] and len(spool_files(spool, ".content")) == 1
        else:
            assert len(alice_content) == 1
        if form == "copy:hardlink":
            assert alice_content[0].stat().st_nlink >= 2
        for user, password in (("alice", "apw"), ("bob", "bpw")):
            pop = poplib.POP3("127.0.0.1", pop_port, timeout=15)
            pop.user(user)
            pop.pass_(password)
            assert pop.stat()[0] == 1
            assert b"Subject: copied" in b"\r\n".join(pop.retr(1)[1])
            pop.dele(1)
            pop.quit()
            assert wait_until(lambda u=user: spool_files(spool / u, ".envelope") == [], 5)  # type: ignore[misc]
            if form == "copy:pop":  # the shared content goes with the last envelope that needs it
                assert len(spool_files(spool, ".content")) == (1 if user == "alice" else 0)
    finally:
        relay.stop()


def test_pop_no_delete_keeps_the_message_for_forwarding(tmp_path: Path) -> None:
    """``--pop --pop-auth --pop-no-delete``: DELE appears to succeed, the spooled message stays."""
    secrets = tmp_path / "pop.auth"
    secrets.write_text("server plain alice apw\n")
    pop_port = free_port()
    relay = start_relay(
        tmp_path,
        "--pop",
        f"--pop-port={pop_port}",
        f"--pop-auth={secrets}",
        "--pop-no-delete",
        "--single-process",
    )
    try:
        submit(relay.spool)
        pop = poplib.POP3("127.0.0.1", pop_port, timeout=15)
        pop.user("alice")
        pop.pass_("apw")
        assert pop.stat()[0] == 1
        assert pop.dele(1).startswith(b"+OK")
        pop.quit()
        assert len(spool_files(relay.spool, ".envelope")) == 1
        assert len(spool_files(relay.spool, ".content")) == 1
    finally:
        relay.stop()


# ------------------------------------------------------------------ Run-time environment


def start_as(tmp_path: Path, spool: Path, *extra: str) -> Relay:
    """Like ``start_relay`` but without ``--user root``: the guide's default ``--user`` (daemon)."""
    port = free_port()
    log_path = tmp_path / "relay.log"
    args = [program(), "--no-daemon", "--log", "--verbose", "--no-syslog", "--port", str(port), "--interface",
            "127.0.0.1", "--spool-dir", str(spool), *extra]  # fmt: skip
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    relay = Relay(proc, port, spool, log_path, args)
    try:
        from tests.support.relay import wait_for_port

        wait_for_port(port, proc=proc)
    except BaseException:
        relay.stop()
        raise
    return relay


SYSTEM_PYTHON = "/usr/bin/python3"  # reachable by the daemon user (the venv's may live under /root)
FILTER_PROBE = """#!{python}
import json, os
fds = {{}}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{{fd}}")
    except OSError:
        pass  # the descriptor of the listing itself
umask = os.umask(0)
info = {{"uid": os.geteuid(), "env": sorted(os.environ), "fds": fds, "umask": umask}}
open("{out}", "w").write(json.dumps(info))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON), reason="needs root and /usr/bin/python3"
)
def test_started_as_root_runs_as_daemon_files_are_0660_and_filters_are_unprivileged(tmp_path: Path) -> None:
    """Started as root with the default ``--user`` (daemon): the serving process has effective ids of
    daemon; spool files are ``-rw-rw----`` owned by root with group daemon (the
    installed spool directory is ``root.daemon`` ``-rwxrwsr-x``); the filter runs as daemon with only
    ``PATH`` and ``IFS``, ``stdin``/``stderr`` on ``/dev/null`` and ``stdout`` on a socket (the guide
    says a pipe; E-MailRelay 2.6b gives a socketpair, and so do we)."""
    daemon = pwd.getpwnam("daemon")
    with reachable_dir("h4-runtime-", 0o777) as shared:
        spool = shared / "spool"
        spool.mkdir()
        os.chown(spool, 0, daemon.pw_gid)
        spool.chmod(0o2775)
        probe = shared / "probe"
        filt = script(shared / "filter.sh", FILTER_PROBE.format(out=probe, python=SYSTEM_PYTHON))
        relay = start_as(tmp_path, spool, f"--filter={filt}", "--single-process")
        try:
            send(relay.port, "a@example.com", ["b@example.net"])
            assert wait_until(lambda: len(spool_files(spool, ".envelope")) == 1, 15), relay.log()
            proc = psutil.Process(relay.pid)
            assert proc.uids().effective == daemon.pw_uid and proc.gids().effective == daemon.pw_gid
            assert proc.uids().real == 0  # SPEC.md section 1: root comes back for what needs it
        finally:
            relay.stop()
        for path in spool_files(spool):
            st = path.stat()
            assert stat.S_IMODE(st.st_mode) == 0o660, path
            assert (st.st_uid, st.st_gid) == (0, daemon.pw_gid), path
        info = json.loads(probe.read_text())
        assert info["uid"] == daemon.pw_uid
        assert set(info["env"]) - {"LC_CTYPE"} <= {"PATH", "IFS"}, info["env"]
        fds = info["fds"]
        assert fds["0"] == fds["2"] == "/dev/null" and fds["1"].startswith("socket:"), fds


@pytest.mark.parametrize("mode", ["--single-process", "--no-daemon"], ids=["single-process", "supervised"])
def test_filter_has_no_descriptors_but_stdin_stdout_stderr(tmp_path: Path, mode: str) -> None:
    """ "no open file descriptors other than stdin and stderr open onto /dev/null, and stdout open onto a pipe"."""
    with reachable_dir("h4-runtime-", 0o777) as shared:
        probe = shared / "probe"
        filt = script(shared / "filter.sh", FILTER_PROBE.format(out=probe, python=SYSTEM_PYTHON))
        relay = start_relay(tmp_path, f"--filter={filt}", mode)
        try:
            send(relay.port, "a@example.com", ["b@example.net"])
            assert wait_until(probe.exists, 15)
        finally:
            relay.stop()
        fds = {
            fd: link
            for fd, link in json.loads(probe.read_text())["fds"].items()
            if not link.startswith("/proc/")
        }
        assert fds.keys() == {"0", "1", "2"}, fds


@pytest.mark.parametrize("mode", ["--single-process", "--no-daemon"], ids=["single-process", "supervised"])
def test_umask_is_077_while_running(tmp_path: Path, mode: str) -> None:
    """ "The program runs for most of the time with a umask of 077": filters, the single-process relay,
    the supervisor and its roles (their unix sockets get their modes at bind time). Spool files get
    0660 whatever the umask."""
    with reachable_dir("h4-runtime-", 0o777) as shared:
        probe = shared / "probe"
        filt = script(shared / "filter.sh", FILTER_PROBE.format(out=probe, python=SYSTEM_PYTHON))
        old = os.umask(0o022)  # what a login shell usually hands over
        try:
            relay = start_relay(tmp_path, f"--filter={filt}", mode)
        finally:
            os.umask(old)
        try:
            # the port opens before the process is done starting (supervised: before the supervisor
            # runs), so the umask is read once the start is over, bounded by a generous wait
            def umask() -> list[str]:
                return [
                    x
                    for x in Path(f"/proc/{relay.pid}/status").read_text().splitlines()
                    if x.startswith("Umask")
                ]

            wait_until(lambda: umask() == ["Umask:\t0077"], 20)
            assert umask() == ["Umask:\t0077"]
            for pids in role_pids(relay.pid).values():
                for pid in pids:
                    assert "Umask:\t0077" in Path(f"/proc/{pid}/status").read_text().splitlines()
            send(relay.port, "a@example.com", ["b@example.net"])
            assert wait_until(probe.exists, 15)
            assert json.loads(probe.read_text())["umask"] == 0o077
            assert {p.stat().st_mode & 0o777 for p in relay.spool.glob("emailrelay.*")} == {0o660}
        finally:
            relay.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_user_root_disables_the_switching(tmp_path: Path) -> None:
    """``--user=root``: the relay and its filters keep effective user root."""
    with reachable_dir("h4-runtime-", 0o777) as shared:
        probe = shared / "probe"
        filt = script(shared / "filter.sh", FILTER_PROBE.format(out=probe, python=SYSTEM_PYTHON))
        relay = start_relay(
            tmp_path, f"--filter={filt}", "--single-process"
        )  # start_relay passes --user root
        try:
            send(relay.port, "a@example.com", ["b@example.net"])
            assert wait_until(probe.exists, 15)
            assert psutil.Process(relay.pid).uids().effective == 0
        finally:
            relay.stop()
        assert json.loads(probe.read_text())["uid"] == 0


def test_submit_into_the_installed_spool_layout_gives_group_daemon_files(tmp_path: Path) -> None:
    """``emailrelay-submit`` into a ``root.daemon`` ``-rwxrwsr-x`` spool: files ``-rw-rw----`` with group
    daemon, readable by the relay's unprivileged group."""
    daemon = pwd.getpwnam("daemon")
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, 0, daemon.pw_gid)
    spool.chmod(0o2775)
    submit(spool)
    files = spool_files(spool)
    assert len(files) == 2
    for path in files:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == daemon.pw_gid


def test_exit_codes_0_1_and_2(tmp_path: Path) -> None:
    """Exit code 0 on success (SIGTERM), 1 on error, 2 when the listening socket cannot be bound."""
    relay = start_relay(tmp_path, name="first")
    try:
        second = subprocess.run(
            [program(), "--no-daemon", "--port", str(relay.port), "--interface", "127.0.0.1", "--spool-dir",
             str(relay.spool), "--user", "root"], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        bad = subprocess.run(
            [program(), "--no-daemon", "--spool-dir", str(tmp_path / "missing"), "--port", "0"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert bad.returncode == 1
    finally:
        assert relay.stop() == 128 + signal.SIGTERM


# ------------------------------------------------------------------ Files and directories


def test_default_spool_directory_and_run_time_spool_dir(tmp_path: Path) -> None:
    """No ``configure`` paths: the built-in default spool directory is upstream's FHS one, and
    ``--spool-dir`` chooses another at run time (the guide's advice after ``make DESTDIR=...``)."""
    out = subprocess.run([program(), "--help", "--verbose"], capture_output=True, text=True, timeout=30)
    assert "(default: /var/spool/emailrelay)" in out.stdout
    relay = start_relay(tmp_path, "--single-process", spool=tmp_path / "elsewhere")
    try:
        send(relay.port, "a@example.com", ["b@example.net"])
        assert len(spool_files(tmp_path / "elsewhere", ".envelope")) == 1
    finally:
        relay.stop()
