"""Reference guide options, part 1: "POP server options" and "Admin server options", through ``emailrelay``.

What it proves: ``--pop``, ``--pop-by-name``, ``--pop-no-delete``, ``--pop-port``, ``--admin`` and
``--admin-terminate`` (long and short forms) do what reference-2.6.md lines 228-266 say when the
``emailrelay`` program is run with them, checked with Python's poplib (STLS included) and a raw
admin socket, with messages submitted over real SMTP.  Relays add ``--single-process`` (ours) to
keep the module fast.  Rows: docs/compat-parts/10-options-basic-client-server-pop-admin.md.
"""

from __future__ import annotations

import contextlib
import poplib
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.certs import no_verify_context
from tests.support.fake_smtp import FakeSmtp
from tests.support.netns import in_private_network
from tests.support.relay import Relay, free_port, start_relay, wait_for_port, wait_until
from tests.support.sink import envelope_text, simple_content, write_raw
from tests.support.smtpd import spool_entries

pytestmark = pytest.mark.timeout(60)

FAST = "--single-process"
PROMPT = b"E-MailRelay> "


def concurrently(*jobs: Callable[[], object]) -> None:
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


@contextlib.contextmanager
def relay(tmp_path: Path, *extra: str, wait_ports: tuple[int, ...] = ()) -> Iterator[Relay]:
    tmp_path.mkdir(exist_ok=True)
    r = start_relay(tmp_path, FAST, *extra)
    try:
        for port in wait_ports:
            wait_for_port(port, proc=r.proc)
        yield r
    finally:
        r.stop()


def pop_secrets(directory: Path) -> Path:
    path = directory / "pop.auth"
    path.write_text("server plain alice alice-pw\nserver plain bob bob-pw\n")
    return path


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(
            "s@example.com", ["r@example.net"], f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode()
        )


def login(port: int, user: str, password: str) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", port, timeout=30)
    p.user(user)
    p.pass_(password)
    return p


def message_files(directory: Path) -> set[str]:
    return {n for n in spool_entries(directory) if n.startswith("emailrelay.")}


# ================================================================ POP server options


def test_pop_serves_spooled_messages_on_the_pop_port(tmp_path: Path) -> None:
    def variant(name: str, opts: Callable[[int, Path], list[str]]) -> None:
        base = tmp_path / name
        base.mkdir()
        pop_port = free_port()
        with relay(base, *opts(pop_port, pop_secrets(base)), wait_ports=(pop_port,)) as r:
            send(r.port, f"for {name}")
            p = login(pop_port, "alice", "alice-pw")
            assert "STLS" not in p.capa()  # no --server-tls: no STLS
            count, _ = p.stat()
            assert count == 1
            assert p.retr(1)[1][-1] == f"body of for {name}".encode()
            assert p.dele(1).startswith(b"+OK")
            p.quit()
            assert wait_until(lambda: message_files(r.spool) == set(), 10), message_files(r.spool)

    concurrently(
        lambda: variant("long", lambda port, s: ["--pop", "--pop-port", str(port), "--pop-auth", str(s)]),
        lambda: variant("short", lambda port, s: ["-B", "-E", str(port), "-F", str(s)]),
    )


def test_pop_default_port_is_110(tmp_path: Path) -> None:
    # in a private network namespace (only "lo"), so port 110 is free and nothing is exposed
    args = ["--no-daemon", FAST, "--log", "--no-syslog", "--port", "2525", "--interface", "127.0.0.1",
            "--spool-dir", str(tmp_path), "--user", "root", "--pop", "--pop-auth", str(pop_secrets(tmp_path))]  # fmt: skip
    log, seen = in_private_network(tmp_path, args, ["127.0.0.1/110"])
    assert "pop server on 127.0.0.1:110" in log, log
    assert seen["127.0.0.1/110"].startswith("+OK"), seen


def _certificate(directory: Path) -> Path:
    key, cert, pem = directory / "key.pem", directory / "cert.pem", directory / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=localhost", "-days", "2", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    pem.write_bytes(key.read_bytes() + cert.read_bytes())
    return pem


def test_pop_stls_with_server_tls(tmp_path: Path) -> None:
    pop_port = free_port()
    opts = ["--pop", "--pop-port", str(pop_port), "--pop-auth", str(pop_secrets(tmp_path)),
            "--server-tls", "--server-tls-certificate", str(_certificate(tmp_path))]  # fmt: skip
    with relay(tmp_path, *opts, wait_ports=(pop_port,)) as r:
        send(r.port, "secret")
        p = poplib.POP3("127.0.0.1", pop_port, timeout=30)
        assert "STLS" in p.capa()
        assert p.stls(no_verify_context()).startswith(b"+OK")
        assert isinstance(p.sock, ssl.SSLSocket) and p.sock.version() in ("TLSv1.2", "TLSv1.3")
        p.user("alice")
        p.pass_("alice-pw")
        assert p.retr(1)[1][-1] == b"body of secret"
        p.quit()


def test_pop_by_name(tmp_path: Path) -> None:
    pop_port = free_port()
    spool = tmp_path / "relay-spool"
    for user in ("alice", "bob"):
        (spool / user).mkdir(parents=True)
    # copy:pop puts the envelope into every user's sub-directory and leaves the content in the main one
    opts = [
        "--pop",
        "-J",
        "--pop-port",
        str(pop_port),
        "--pop-auth",
        str(pop_secrets(tmp_path)),
        "--filter",
        "copy:pop",
    ]
    with relay(tmp_path, *opts, wait_ports=(pop_port,)) as r:
        send(r.port, "shared")
        (content,) = message_files(spool)
        assert content.endswith(".content")
        assert [n.endswith(".envelope") for n in message_files(spool / "alice")] == [True]
        for user, content_left in (("alice", True), ("bob", False)):
            p = login(pop_port, user, f"{user}-pw")
            assert p.stat()[0] == 1 and p.retr(1)[1][-1] == b"body of shared"
            p.dele(1)
            p.quit()
            assert wait_until(lambda u=user: message_files(spool / u) == set(), 10)
            # the content goes with the last envelope that refers to it
            assert wait_until(lambda c=content_left: (content in message_files(spool)) is c, 10), user


def test_pop_no_delete(tmp_path: Path) -> None:
    def variant(flag: str) -> None:
        base = tmp_path / flag.strip("-")
        base.mkdir()
        pop_port = free_port()
        with relay(base, "--pop", flag, "--pop-port", str(pop_port), "--pop-auth", str(pop_secrets(base)),
                   wait_ports=(pop_port,)) as r:  # fmt: skip
            send(r.port, "keep me")
            before = message_files(r.spool)
            p = login(pop_port, "alice", "alice-pw")
            assert p.dele(1).startswith(b"+OK")  # appears to succeed
            assert p.quit().startswith(b"+OK")
            time.sleep(0.5)
            assert message_files(r.spool) == before and len(before) == 2
            p = login(pop_port, "alice", "alice-pw")
            assert p.stat()[0] == 1
            p.quit()

    concurrently(lambda: variant("--pop-no-delete"), lambda: variant("-G"))


# ================================================================ Admin server options


class Admin:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.sock.settimeout(20)

    def cmd(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        data = b""
        while not data.endswith(PROMPT):
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def test_admin_forward_triggers_forwarding(tmp_path: Path) -> None:
    def variant(flag: str) -> None:
        base = tmp_path / flag.strip("-")
        base.mkdir()
        admin_port = free_port()
        with FakeSmtp() as hop, relay(base, flag, str(admin_port), "--forward-to", hop.address,
                                      wait_ports=(admin_port,)) as r:  # fmt: skip
            write_raw(r.spool, envelope_text("s@example.com", ["r@example.net"]), simple_content("held@t"))
            admin = Admin(admin_port)
            try:
                time.sleep(1.0)
                assert hop.messages == []  # no --forward, --poll or disconnect: nothing triggers forwarding
                assert admin.cmd("forward") == b"OK\r\n" + PROMPT
                assert hop.wait_for_messages(1, 15)
                assert hop.messages[0].message_id == "<held@t>"
            finally:
                admin.close()

    concurrently(lambda: variant("--admin"), lambda: variant("-a"))


def test_admin_terminate(tmp_path: Path) -> None:
    def variant(name: str, opts: list[str], enabled: bool) -> None:
        base = tmp_path / name
        base.mkdir()
        admin_port = free_port()
        with relay(base, "-a", str(admin_port), *opts, wait_ports=(admin_port,)) as r:
            admin = Admin(admin_port)
            try:
                if enabled:
                    admin.sock.sendall(b"terminate\r\n")
                    assert r.proc.wait(20) == 0
                else:
                    assert admin.cmd("terminate").startswith(b"error: unrecognised command")
                    assert b"terminate" not in admin.cmd("help")
                    assert r.proc.poll() is None
            finally:
                admin.close()

    concurrently(
        lambda: variant("long", ["--admin-terminate"], True),
        lambda: variant("short", ["-Q"], True),
        lambda: variant("off", [], False),
    )
