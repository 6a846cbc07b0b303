"""Reference guide options, part 1: "Basic", "SMTP client" and "SMTP server" options, through ``emailrelay``.

What it proves: each option of reference-2.6.md lines 1-227 does what its paragraph says when the
``emailrelay`` program is run with it as a user types it (long form, and the short form where it is
cheap), checked with real clients (smtplib, raw sockets) against real next hops (FakeSmtp, a tiny
raw SMTP server, line servers, a fake spamd) on 127.0.0.1/::1.  The ``--as-*`` shorthands are shown
equivalent to the options they stand for by running both spellings.  Relays that only need a
server add ``--single-process`` (ours) to keep the module fast; the shorthands run supervised.
Rows: docs/compat-parts/10-options-basic-client-server-pop-admin.md.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import smtplib
import socket
import socketserver
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from emailrelay.spool import envelope as env_format
from tests.support.dns_server import dns_server
from tests.support.fake_smtp import FakeSmtp, Message, auth_script
from tests.support.fake_spamd import GTUBE, fake_spamd
from tests.support.netns import in_private_network
from tests.support.relay import Relay, free_port, program, start_relay, wait_for_port, wait_until
from tests.support.sink import envelope_text, simple_content, write_raw
from tests.support.smtpd import Wire, committed, short_run_dir, spool_entries

pytestmark = pytest.mark.timeout(60)

FAST = "--single-process"
EDIT = """{{ printf '%s\\r\\n' "{header}"; cat "$1"; }} > "$1.tmp" && cat "$1.tmp" > "$1" && rm "$1.tmp"\nexit 0\n"""


# ---------------------------------------------------------------- helpers


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = short_run_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@contextlib.contextmanager
def relay(tmp_path: Path, *extra: str, **kw: object) -> Iterator[Relay]:
    """``start_relay`` in single-process mode; stopped by pid afterwards."""
    r = start_relay(tmp_path, FAST, *extra, **kw)  # type: ignore[arg-type]
    try:
        yield r
    finally:
        r.stop()


@contextlib.contextmanager
def launched(
    tmp_path: Path, args: list[str], *, stderr_pipe: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """``emailrelay <args>`` exactly as given (no options added); stopped by pid afterwards."""
    out = open(tmp_path / "launched.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [program(), *args], stdin=subprocess.DEVNULL, stdout=out,
        stderr=subprocess.PIPE if stderr_pipe else subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
        out.close()


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def queue_one(spool: Path, rcpts: tuple[str, ...] = ("rcpt@example.net",), **kw: str) -> str:
    """One message written by hand in upstream's spool format; returns its Message-ID."""
    msgid = f"m{time.monotonic_ns()}@test.example"
    write_raw(spool, envelope_text("sender@example.com", list(rcpts), **kw), simple_content(msgid))  # type: ignore[arg-type]
    return f"<{msgid}>"


def names(spool: Path, suffix: str) -> list[str]:
    return sorted(n for n in spool_entries(spool) if n.endswith(suffix))


def send(
    port: int, body: bytes = b"Subject: hi\r\n\r\nhello\r\n", rcpts: tuple[str, ...] = ("r@example.net",)
) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("s@example.com", list(rcpts), body)


def stderr_closed_while_running(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> bool:
    """True when the process's standard error reaches EOF while the process is still running."""
    assert proc.stderr is not None
    got_eof = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        while proc.stderr.read(4096):
            pass
        got_eof.set()

    threading.Thread(target=drain, daemon=True).start()
    return got_eof.wait(timeout) and proc.poll() is None


class LineServer:
    """A TCP server on 127.0.0.1 answering each request line with ``answer(line)``; records the lines."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.lines: list[str] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while line := self.rfile.readline():
                    text = line.decode().rstrip("\r\n")
                    outer.lines.append(text)
                    self.wfile.write(answer(text).encode() + b"\n")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> LineServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class MiniSmtp:
    """A raw one-thread SMTP next hop: optional greeting; records peers and received data; accepts all."""

    def __init__(self, *, greeting: bool = True, host: str = "127.0.0.1") -> None:
        self.greeting = greeting
        self.peers: list[str] = []
        self.messages: list[bytes] = []
        self.first_command_at: float | None = None
        self.accepted_at: float | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.address = f"{host}:{self.port}" if family == socket.AF_INET else f"[{host}]:{self.port}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted_at = time.monotonic()
            self.peers.append(peer[0])
            with contextlib.suppress(OSError), conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        if self.greeting:
            conn.sendall(b"220 mini.test ESMTP\r\n")
        while line := f.readline():
            if self.first_command_at is None:
                self.first_command_at = time.monotonic()
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-mini.test\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go\r\n")
                data = b""
                while (chunk := f.readline()) and chunk != b".\r\n":
                    data += chunk
                self.messages.append(data)
                conn.sendall(b"250 ok\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 ok\r\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def as_client(spool: Path, hop: str, *extra: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program(), "--as-client", hop, "--spool-dir", str(spool), "--user", "root", *extra],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def concurrently(*jobs: Callable[[], object]) -> None:
    """Run independent variants of a test at the same time (they wait on sockets, not on CPU)."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def subdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "spool").mkdir()
    return path


def smtp_transaction(w: Wire, body: bytes, rcpt: bytes = b"r@example.net") -> tuple[int, list[str]]:
    w.command(b"MAIL FROM:<s@example.com>")
    w.command(b"RCPT TO:<" + rcpt + b">")
    w.command(b"DATA")
    return w.command(body + b".")


# ================================================================ Basic options


def test_as_client_is_log_no_syslog_no_daemon_dont_serve_forward_forward_to(tmp_path: Path) -> None:
    def variant(name: str) -> None:
        spool = subdir(tmp_path, name.strip("-")) / "spool"
        port = free_port()
        with FakeSmtp() as hop:
            mid = queue_one(spool)
            if name == "expanded":
                opts = [
                    "--log",
                    "--no-syslog",
                    "--no-daemon",
                    "--dont-serve",
                    "--forward",
                    "--forward-to",
                    hop.address,
                ]
            else:
                opts = [name, hop.address]
            r = subprocess.run(
                [program(), *opts, "--spool-dir", str(spool), "--user", "root"],  # (--port: a usage error)
                capture_output=True, text=True, timeout=40, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            # it forwarded in the foreground, and then terminated by itself with status 0
            assert r.returncode == 0, r.stderr
            assert [m.message_id for m in hop.messages] == [mid]
        assert spool_entries(spool) == []
        # --log: the log is on the standard error stream; --dont-serve: no listening port was opened
        assert "emailrelay: info: smtp connection to" in r.stderr, r.stderr
        assert "server on" not in r.stderr and r.stdout == ""
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), 1).close()

    concurrently(lambda: variant("-q"), lambda: variant("expanded"))


def test_as_proxy_is_log_close_stderr_forward_on_disconnect_forward_to(tmp_path: Path) -> None:
    def variant(name: str, supervised: bool) -> None:
        base = subdir(tmp_path, name.strip("-"))
        spool, port, run_dir = base / "spool", free_port(), short_run_dir()
        log_file = base / "proxy.log"
        with FakeSmtp() as hop:
            opts = (
                ["--log", "--close-stderr", "--forward-on-disconnect", "--forward-to", hop.address]
                if name == "expanded"
                else [name, hop.address]
            )
            args = [*opts, "--no-daemon", "--log-file", str(log_file), "--port", str(port), "--interface",
                    "127.0.0.1", "--spool-dir", str(spool), "--run-dir", str(run_dir), "--user", "root"]  # fmt: skip
            if not supervised:
                args.append(FAST)
            warm_up = queue_one(spool)  # forwarded by the start-up scan, before the test proper
            try:
                with launched(base, args, stderr_pipe=True) as proc:
                    wait_for_port(port, proc=proc, timeout=20)
                    assert stderr_closed_while_running(proc), "standard error was not closed"
                    assert hop.wait_for_messages(1, 20) and hop.messages[0].message_id == warm_up
                    if supervised:
                        time.sleep(1.5)  # past the forwarders' start-up rescans (docs/decisions.md)
                    hop.clear_messages()
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                        client.sendmail("s@example.com", ["r@example.net"], b"Subject: proxied\r\n\r\nx\r\n")
                        time.sleep(0.5)
                        assert hop.messages == [], "forwarded before the client disconnected"
                    assert hop.wait_for_messages(1, 20), "not forwarded on disconnect"
                    assert wait_until(lambda: spool_entries(spool) == [], 10), spool_entries(spool)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
        assert "emailrelay: info: smtp server on" in log_file.read_text()  # --log is on

    concurrently(
        lambda: variant("--as-proxy", True), lambda: variant("-y", False), lambda: variant("expanded", False)
    )


def test_as_server_is_log_close_stderr(tmp_path: Path) -> None:
    def variant(name: str, opts: list[str], closes: bool, supervised: bool) -> None:
        base = subdir(tmp_path, name)
        spool, port, run_dir = base / "spool", free_port(), short_run_dir()
        args = [*opts, "--no-daemon", "--no-syslog", "--port", str(port), "--interface", "127.0.0.1",
                "--spool-dir", str(spool), "--run-dir", str(run_dir), "--user", "root"]  # fmt: skip
        if not supervised:
            args.append(FAST)
        try:
            with launched(base, args, stderr_pipe=True) as proc:
                wait_for_port(port, proc=proc, timeout=20)
                send(port)
                assert len(committed(spool)) == 1
                if closes:
                    assert stderr_closed_while_running(proc), "standard error was not closed"
                else:
                    assert proc.stderr is not None
                    os.set_blocking(proc.stderr.fileno(), False)
                    time.sleep(1.0)
                    text = proc.stderr.read() or b""
                    assert b"emailrelay: info: smtp server on" in text, text
                    assert proc.poll() is None
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    concurrently(
        lambda: variant("as-server", ["--as-server"], True, True),
        lambda: variant("d", ["-d"], True, False),
        lambda: variant("expanded", ["--log", "--close-stderr"], True, False),
        lambda: variant("log-only", ["--log"], False, False),
    )


def test_help_and_version_short_forms() -> None:
    def run(*args: str) -> str:
        r = subprocess.run([program(), *args], capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0 and r.stderr == "", r
        return r.stdout

    with ThreadPoolExecutor(3) as pool:
        short, full, version = pool.map(lambda a: run(*a), [("-h",), ("-h", "-v"), ("-V",)])
    assert short.startswith("E-MailRelay V2.6") and short.splitlines()[2].startswith("usage: emailrelay ")
    assert "--spool-dir" in short
    assert len(full.splitlines()) > len(short.splitlines()) and "--idle-timeout" in full
    defaults = {"connection-timeout": "40", "idle-timeout": "60", "response-timeout": "60", "filter-timeout": "60",
                "prompt-timeout": "20", "pop-port": "110", "port": "25"}  # fmt: skip
    for name, value in defaults.items():
        (line,) = [x for x in full.splitlines() if f"--{name}=" in x]
        assert line.endswith(f"(default: {value})"), line
    assert version.startswith("E-MailRelay V2.6")


# ================================================================ SMTP client options


def test_client_smtp_config_pipelining(tmp_path: Path) -> None:
    def variant(name: str, opts: list[str], pipelined: bool) -> None:
        spool = subdir(tmp_path, name) / "spool"
        # PIPELINING is offered by a hand-written EHLO reply, so FakeSmtp reports every batch it sees
        hop = FakeSmtp(
            extensions=("8BITMIME",), replies={"ehlo": "250 fake.test\n250 PIPELINING\n250 8BITMIME"}
        )
        with hop:
            queue_one(spool, ("a@example.net", "b@example.net"))
            r = as_client(spool, hop.address, *opts)
            assert r.returncode == 0 and len(hop.messages) == 1, r.stderr
            if "pipelining,bogus" in opts:  # an unknown item only warns, as E-MailRelay 2.6b
                assert "warning: unknown smtp-config item [bogus]" in r.stderr, r.stderr
            batched = [e for e in hop.protocol_errors if "pipelined" in e and "MAIL FROM" in e]
        assert bool(batched) is pipelined, (name, hop.protocol_errors)

    concurrently(
        lambda: variant("default", [], False),  # opt-in, as E-MailRelay 2.6b (docs/decisions.md)
        lambda: variant("c", ["-c", "pipelining,bogus"], True),
        lambda: variant("nopipelining", ["--client-smtp-config", "nopipelining"], False),
    )


def test_client_smtp_config_strict_features(tmp_path: Path) -> None:
    # Message-ID -> (envelope Content, Utf8MailboxNames); the next hop offers none of the extensions.
    # As E-MailRelay 2.6b: what needs SMTPUTF8 or BINARYMIME fails anyway; 8-bit only when strict
    messages = {"utf8": ("7bit", "1"), "eightbit": ("8bit", "0"), "binary": ("binarymime", "0")}
    always = {"utf8", "binary"}
    fails = {"smtputf8strict": always, "eightbitstrict": always | {"eightbit"}, "binarymimestrict": always}

    def variant(keyword: str | None) -> None:
        spool = subdir(tmp_path, keyword or "lenient") / "spool"
        with FakeSmtp(extensions=("PIPELINING",)) as hop:  # no 8BITMIME, SMTPUTF8, CHUNKING or BINARYMIME
            for name, (content, utf8) in messages.items():
                text = envelope_text("sender@example.com", ["rcpt@example.net"], content=content)
                text = text.replace(b"Utf8MailboxNames: 0", b"Utf8MailboxNames: " + utf8.encode())
                write_raw(spool, text, simple_content(f"{name}@t", "caf\u00e9"))
            r = as_client(spool, hop.address, *(["--client-smtp-config", keyword] if keyword else []))
            sent = {m.message_id for m in hop.messages}
        failed = fails[keyword] if keyword else always
        assert sent == {f"<{n}@t>" for n in messages if n not in failed}, (keyword, r.stderr)
        bad = names(spool, ".envelope.bad")
        assert len(bad) == len(failed) and len(spool_entries(spool)) == 2 * len(failed), (keyword, r.stderr)
        for name in bad:
            assert env_format.parse((spool / name).read_bytes()).reason.startswith("cannot send ")

    concurrently(*(lambda k=k: variant(k) for k in [None, *fails]))


def test_forward_when_the_program_starts(tmp_path: Path) -> None:
    def variant(name: str, opts: list[str]) -> None:
        base = subdir(tmp_path, name)
        with FakeSmtp() as hop:
            mid = queue_one(base / "spool")
            with relay(base, *opts, "--forward-to", hop.address, spool=base / "spool"):
                if opts:
                    assert hop.wait_for_messages(1, 15)
                    assert [m.message_id for m in hop.messages] == [mid]
                else:
                    time.sleep(1.5)
                    assert hop.messages == []

    concurrently(lambda: variant("none", []), lambda: variant("f", ["-f"]))


def test_forward_on_disconnect_short_form(tmp_path: Path) -> None:
    with FakeSmtp() as hop, relay(tmp_path, "-1", "-o", hop.address) as r:
        with smtplib.SMTP("127.0.0.1", r.port, timeout=30) as client:
            client.sendmail("s@example.com", ["r@example.net"], b"Subject: one\r\n\r\nx\r\n")
            time.sleep(0.5)
            assert hop.messages == []
        assert hop.wait_for_messages(1, 15)
        assert hop.messages[0].rcpts == ["r@example.net"]


def test_poll_forwards_at_regular_intervals(tmp_path: Path, spool: Path) -> None:
    with FakeSmtp() as hop, relay(tmp_path, "--forward-to", hop.address, "-O", "1", spool=spool):
        time.sleep(0.3)
        first = queue_one(spool)  # written by hand: nobody rings a doorbell, only the poll finds it
        assert hop.wait_for_messages(1, 10)
        second = queue_one(spool)
        assert hop.wait_for_messages(2, 10)
        assert [m.message_id for m in hop.messages] == [first, second]


def test_client_filter_forms(tmp_path: Path) -> None:
    spam = fake_spamd()
    spamd = spam.__enter__()

    def variant(name: str, spec: Callable[[Path], str], expect: dict[str, str]) -> None:
        """``expect``: Message-ID -> "sent" or "failed"; Subjects are the ids."""
        base = subdir(tmp_path, name.strip(":-"))
        spool = base / "spool"
        for subject in expect:
            body = ("GTUBE " + GTUBE.decode()) if subject == "spam" else "plain"
            content = f"Subject: {subject}\r\nMessage-ID: <{subject}@t>\r\n\r\n{body}\r\n".encode()
            write_raw(spool, envelope_text("s@example.com", ["r@example.net"]), content)
        with FakeSmtp() as hop:
            r = as_client(spool, hop.address, "--client-filter", spec(base))
            sent = {m.message_id for m in hop.messages}
            data = [m.data for m in hop.messages]
        assert sent == {f"<{s}@t>" for s, outcome in expect.items() if outcome == "sent"}, (name, r.stderr)
        assert len(names(spool, ".envelope.bad")) == list(expect.values()).count("failed"), (name, r.stderr)
        if name == "program":  # the filter got the content file's path and edited the file
            assert data[0].startswith(b"X-Client-Filter: emailrelay.") and data[0].split(b"\r\n")[0].endswith(
                b".content"
            ), data[0][:200]
        if name == "spam-edit:":
            assert data[0].startswith(b"X-Spam-Flag: NO\r\n"), data[0][:200]

    def program_spec(base: Path) -> str:
        return str(script(base, "edit.sh", EDIT.format(header='X-Client-Filter: $(basename "$1")')))

    with LineServer(lambda path: "ok" if "Subject: ok" in Path(path).read_text() else "not wanted") as net:
        try:
            concurrently(
                lambda: variant("program", program_spec, {"ok": "sent"}),
                lambda: variant("exit:1", lambda _: "exit:1", {"ok": "failed"}),
                lambda: variant("net:", lambda _: f"net:{net.address}", {"ok": "sent", "no": "failed"}),
                lambda: variant(
                    "spam:", lambda _: f"spam:{spamd.address}", {"ham": "sent", "spam": "failed"}
                ),
                lambda: variant("spam-edit:", lambda _: f"spam-edit:{spamd.address}", {"ham": "sent"}),
            )
        finally:
            spam.__exit__(None, None, None)
    assert len(net.lines) == 2 and all(line.endswith(".content") for line in net.lines)
    assert sorted(cmd for cmd, _ in spamd.requests) == ["PROCESS"] * 3  # spam: asks PROCESS too, as upstream


def test_client_interface(tmp_path: Path) -> None:
    def variant(name: str, hop_host: str, interface: str, peer: str | None) -> None:
        spool = subdir(tmp_path, name) / "spool"
        hop = MiniSmtp(host=hop_host)
        try:
            queue_one(spool)
            r = as_client(spool, hop.address, "-6" if name == "short" else "--client-interface", interface,
                          "--connection-timeout", "5")  # fmt: skip
            if peer is None:  # no address of the wanted family: not forwarded, kept for a retry
                assert hop.messages == [] and len(names(spool, ".envelope")) == 1, r.stderr
            else:
                assert hop.peers == [peer] and len(hop.messages) == 1, r.stderr
        finally:
            hop.close()

    concurrently(
        lambda: variant("short", "127.0.0.1", "127.0.0.2", "127.0.0.2"),
        lambda: variant("any6", "::1", "::", "::1"),
        lambda: variant("any4", "::1", "0.0.0.0", None),
    )


def test_connection_timeout(spool: Path) -> None:
    with socket.socket() as full:  # a listener whose backlog is full: further SYNs go unanswered
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                s = socket.socket()
                s.settimeout(0.3)
                try:
                    s.connect(("127.0.0.1", port))
                    fillers.append(s)
                except OSError:
                    s.close()
                    break
            else:
                pytest.skip("cannot make a connection attempt hang here")
            queue_one(spool)
            started = time.monotonic()
            r = as_client(spool, f"127.0.0.1:{port}", "-U", "1")
            elapsed = time.monotonic() - started
        finally:
            for s in fillers:
                s.close()
    assert elapsed < 15, (elapsed, r.stderr)
    # upstream's words ("out out" too); a connection failure keeps the message, as upstream
    assert f"connect failure: cannot connect to 127.0.0.1:{port}: timed out out after 1s" in r.stderr, (
        r.stderr
    )
    assert len(names(spool, ".envelope")) == 1 and names(spool, ".bad") == []  # kept for a retry


def test_idle_timeout_closes_a_silent_smtp_client(tmp_path: Path) -> None:
    with relay(tmp_path, "--idle-timeout", "1") as r, Wire(r.port) as w:
        assert w.reply()[0] == 220
        started = time.monotonic()
        rest = w.read_to_close()
        elapsed = time.monotonic() - started
        # as E-MailRelay 2.6b: no reply, the reason in the log's close line
        assert wait_until(
            lambda: "smtp connection closed: idle timeout: no activity after 1s: " in r.log(), 5
        )
    assert 0.8 < elapsed < 6, elapsed
    assert rest == b"", rest


def test_response_timeout(spool: Path) -> None:
    with FakeSmtp(delays={"mail": 8.0}) as hop:
        queue_one(spool)
        started = time.monotonic()
        r = as_client(spool, hop.address, "-T", "1")
        elapsed = time.monotonic() - started
        assert hop.messages == []
    assert elapsed < 7, (elapsed, r.stderr)
    assert "smtp error: response timeout after 1s" in r.stderr, r.stderr
    # a failed session fails the message in hand, as E-MailRelay 2.6b (with --retry it would wait)
    assert names(spool, ".envelope") == [] and len(names(spool, ".bad")) == 1


def test_forward_to_all_requires_every_recipient(spool: Path) -> None:
    with FakeSmtp(rcpt_replies={"no@example.net": "550 5.1.1 no such user"}) as hop:
        queue_one(spool, ("yes@example.net", "no@example.net"))
        r = as_client(spool, hop.address, "--forward-to-all")
        assert hop.messages == [] and hop.commands_named("DATA") == [], r.stderr
    (bad,) = names(spool, ".envelope.bad")
    parsed = env_format.parse((spool / bad).read_bytes())
    assert (parsed.reason, parsed.reason_code) == ("one or more recipients rejected", "250")  # upstream's


def test_immediate_short_form(tmp_path: Path) -> None:
    def final(_: object, message: Message) -> str:
        return "550 5.7.1 refused by the next hop" if b"refuse me" in message.data else "250 2.0.0 taken"

    with (
        FakeSmtp(replies={"final": final}) as hop,
        relay(tmp_path, "-m", "-o", hop.address) as r,
        Wire(r.port) as w,
    ):
        w.greet()
        # the message was forwarded before it was accepted; a refusal is the next hop's reply
        assert smtp_transaction(w, b"Subject: take\r\n\r\ntake me\r\n") == (250, ["message processed"])
        assert len(hop.messages) == 1
        code, text = smtp_transaction(w, b"Subject: refuse\r\n\r\nrefuse me\r\n")
        assert code == 550 and "refused by the next hop" in text[0]
        w.command(b"QUIT")
        # the refused message is kept as .bad (E-MailRelay 2.6b), the forwarded one is gone
        assert wait_until(
            lambda: [p.rsplit(".", 2)[-1] for p in spool_entries(r.spool)] == ["content", "bad"], 10
        ), spool_entries(r.spool)


# ================================================================ SMTP server options


def test_server_short_forms_port_interface_spool_domain_size_config_anonymous(tmp_path: Path) -> None:
    spool = tmp_path / "s"
    spool.mkdir()
    port = free_port()
    # (-s is --delivery-dir, as E-MailRelay 2.6b: the spool directory has no short form that works)
    args = ["-t", "-l", "-n", "-p", str(port), "-I", "127.0.0.1", "--spool-dir", str(spool), "-u", "root", FAST,
            "-D", "short.example.org", "-M", "5000", "-Z", "chunking,smtputf8", "-A"]  # fmt: skip
    with launched(tmp_path, args) as proc:
        wait_for_port(port, proc=proc, timeout=20)
        with Wire(port) as w:
            code, greeting = w.reply()
            # -A alone hides nothing, as E-MailRelay 2.6b's (--anonymous hides all: test_anonymous_scopes)
            assert code == 220 and greeting[0].startswith("short.example.org -- E-MailRelay V"), greeting
            code, lines = w.command(b"EHLO client.example")
            assert lines[0] == "short.example.org says hello"  # -D
            keywords = {line.split()[0] for line in lines[1:]}
            assert {"CHUNKING", "SMTPUTF8", "SIZE", "VRFY"} <= keywords
            assert "SIZE 5000" in lines
        send(port, rcpts=("spooled@example.net",))
        ((_, env, _, content),) = committed(spool)  # --spool-dir
        assert env.to_remote == ("spooled@example.net",)
        assert b" by short.example.org with ESMTP " in content  # -A: not anonymous


def _verifier(tmp_path: Path) -> Path:
    """bad* is refused; alice is local (mailbox alice); anything else is remote and unchanged."""
    return script(
        tmp_path, "verify.sh",
        'case "$1" in\n'
        '  bad*) echo "no such mailbox here"; exit 2 ;;\n'
        '  alice@*) echo "Alice Example"; echo "alice"; exit 0 ;;\n'
        '  *) echo ""; echo "$1"; exit 1 ;;\n'
        "esac\n",
    )  # fmt: skip


def test_address_verifier_forms(tmp_path: Path) -> None:
    def program_form() -> None:
        base = subdir(tmp_path, "program")
        with relay(base, "--address-verifier", str(_verifier(base))) as r, Wire(r.port) as w:
            w.greet()
            assert w.command(b"MAIL FROM:<s@example.com>")[0] == 250
            code, text = w.command(b"RCPT TO:<bad@example.com>")
            assert code == 550 and "no such mailbox here" in text[0]
            assert w.command(b"RCPT TO:<alice@example.com>")[0] == 250
            assert w.command(b"RCPT TO:<carol@example.org>")[0] == 250
            assert w.command(b"DATA")[0] == 354
            assert w.command(b"Subject: v\r\n\r\nv\r\n.")[0] == 250
            assert w.command(b"VRFY alice@example.com") == (250, ["Alice Example"])  # upstream's reply
            ((_, env, _, _),) = committed(r.spool)
        assert env.to_local == ("alice",) and env.to_remote == ("carol@example.org",)

    def net_form() -> None:
        base = subdir(tmp_path, "net")
        with LineServer(lambda line: "2|not in the list" if line.startswith("bad") else "1|") as net:
            with relay(base, "--address-verifier", f"net:{net.address}") as r, Wire(r.port) as w:
                w.greet()
                assert w.command(b"MAIL FROM:<s@example.com>")[0] == 250
                code, text = w.command(b"RCPT TO:<bad@example.com>")
                assert code == 550 and "not in the list" in text[0]
                assert w.command(b"RCPT TO:<good@example.com>")[0] == 250
            assert [line.split("|")[0] for line in net.lines] == ["bad@example.com", "good@example.com"]

    def account_form() -> None:
        base = subdir(tmp_path, "account")
        # root has uid 0: with the range 0-0 it is the one local account
        with (
            relay(base, "--address-verifier", "account:0-0", "--domain", "mail.example.test") as r,
            Wire(r.port) as w,
        ):
            w.greet()
            assert w.command(b"MAIL FROM:<s@example.com>")[0] == 250
            assert w.command(b"RCPT TO:<root@mail.example.test>")[0] == 250
            assert w.command(b"RCPT TO:<nosuchaccount@mail.example.test>")[0] == 550
            assert w.command(b"DATA")[0] == 354
            assert w.command(b"Subject: a\r\n\r\na\r\n.")[0] == 250
            ((_, env, _, _),) = committed(r.spool)
        assert env.to_local == ("root",)

    concurrently(program_form, net_form, account_form)


def test_anonymous_scopes(tmp_path: Path) -> None:
    def variant(name: str, option: str, hidden: set[str]) -> None:
        base = subdir(tmp_path, name)
        with relay(base, option, "--address-verifier", str(_verifier(base))) as r:
            with Wire(r.port) as w:
                _, greeting = w.reply()
                lines = w.command(b"EHLO client.example")[1]
                vrfy = w.command(b"VRFY alice@example.com")
            send(r.port)
            ((_, _, _, content),) = committed(r.spool)
        assert ("E-MailRelay" not in greeting[0]) is ("server" in hidden), (name, greeting)
        assert ("VRFY" not in lines) is ("vrfy" in hidden), (name, lines)
        assert vrfy[0] == (252 if "vrfy" in hidden else 250), (name, vrfy)
        assert (not content.startswith(b"Received: ")) is ("content" in hidden), (name, content[:100])

    def client(scope: str | None) -> None:
        spool = subdir(tmp_path, f"client-{scope}") / "spool"
        text = envelope_text("s@example.com", ["r@example.net"])
        write_raw(
            spool, text.replace(b"MailFromAuthOut: \r\n", b"MailFromAuthOut: bob\r\n"), simple_content("a@t")
        )
        secrets = spool.parent / "client.auth"  # AUTH= goes only on an authenticated connection
        secrets.write_text("client plain alice pw\n")
        with FakeSmtp(extensions=("PIPELINING", "8BITMIME", "AUTH PLAIN"), auth=auth_script("235 ok")) as hop:
            anonymous = [f"--anonymous={scope}"] if scope else []
            r = as_client(spool, hop.address, "--client-auth", str(secrets), *anonymous)
            assert r.returncode == 0 and len(hop.messages) == 1, r.stderr
            params = hop.messages[0].mail_params
        assert ("AUTH=bob" in params) is (scope is None), params
        assert ("AUTH=<>" in params) is (scope == "client"), params  # as E-MailRelay 2.6b

    concurrently(
        lambda: variant("all", "--anonymous", {"vrfy", "server", "content"}),
        lambda: variant("list", "--anonymous=vrfy,content", {"vrfy", "content"}),
        lambda: variant("server", "--anonymous=server", {"server"}),
        lambda: client(None),
        lambda: client("client"),
    )


def test_delivery_dir(tmp_path: Path) -> None:
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    opts = (
        "--address-verifier",
        str(_verifier(tmp_path)),
        "--filter",
        "deliver:",
        "--delivery-dir",
        str(boxes),
    )
    with relay(tmp_path, *opts) as r:
        send(r.port, rcpts=("alice@example.com",))
        assert spool_entries(r.spool) == []  # only local recipients: delivered, not kept for forwarding
    delivered = sorted(p.name.rsplit(".", 1)[-1] for p in (boxes / "alice").iterdir())
    assert delivered == ["content", "envelope"]


def test_dnsbl_is_configured_and_local_clients_are_not_looked_up(tmp_path: Path) -> None:
    with dns_server({"1.0.0.127.block.test": {"A": ["127.0.0.2"]}}) as dns:
        with relay(tmp_path, "--remote-clients", "--dnsbl", f"block.test,1,500,127.0.0.1:{dns.port}") as r:
            send(r.port)
            assert len(committed(r.spool)) == 1
        assert dns.queries == []
    bad = subprocess.run([program(), "--dnsbl", "block.test,x,y,z,w", "--no-daemon", "--spool-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert bad.returncode == 1 and "dnsbl" in bad.stderr.lower(), bad.stderr


def test_domain(tmp_path: Path) -> None:
    def server_side() -> None:
        base = subdir(tmp_path, "server")
        with relay(base, "--domain", "relay.example.org") as r, Wire(r.port) as w:
            assert w.reply()[1][0].startswith("relay.example.org ")
            assert w.command(b"EHLO client.example")[1][0].startswith("relay.example.org ")
            w.close()
            send(r.port)
            ((_, _, _, content),) = committed(r.spool)
        assert b" by relay.example.org with ESMTP" in content.split(b"\r\n")[0], content[:200]

    def client_side() -> None:
        spool = subdir(tmp_path, "client") / "spool"
        with FakeSmtp() as hop:
            queue_one(spool)
            assert as_client(spool, hop.address, "--domain", "relay.example.org").returncode == 0
            assert hop.commands_named("EHLO") == ["EHLO relay.example.org"]
            queue_one(spool)
            # not a dotted FQDN: the client uses its local address, bare, as E-MailRelay 2.6b
            assert as_client(spool, hop.address, "-D", "shortname").returncode == 0
            assert hop.commands_named("EHLO")[-1] == "EHLO 127.0.0.1"

    def challenge() -> None:
        base = subdir(tmp_path, "auth")
        secrets = base / "secrets"
        secrets.write_text("server plain alice secret\n")
        with (
            relay(base, "--domain", "auth.example.org", "--server-auth", str(secrets)) as r,
            Wire(r.port) as w,
        ):
            w.greet()
            code, text = w.command(b"AUTH CRAM-MD5")
            assert code == 334
            decoded = base64.b64decode(text[0]).decode()
        assert decoded.startswith("<") and decoded.endswith("@auth.example.org>"), decoded

    def default() -> None:
        base = subdir(tmp_path, "default")
        with relay(base) as r, Wire(r.port) as w:
            domain = w.reply()[1][0].split()[0]
        assert domain in {socket.getfqdn(), socket.gethostname()}, domain

    concurrently(server_side, client_side, challenge, default)


def test_filter_forms(tmp_path: Path) -> None:
    spam = fake_spamd()
    spamd = spam.__enter__()

    def variant(name: str, spec: Callable[[Path], str], expect: dict[str, int], short: bool = False) -> None:
        """``expect``: Subject -> first digit of the reply to the end of data."""
        base = subdir(tmp_path, name.strip(":-"))
        with relay(base, "-z" if short else "--filter", spec(base)) as r, Wire(r.port) as w:
            w.greet()
            replies = {}
            for subject in expect:
                body = GTUBE if subject == "spam" else b"plain"
                replies[subject] = smtp_transaction(
                    w, f"Subject: {subject}\r\n\r\n".encode() + body + b"\r\n"
                )
            stored = committed(r.spool)
        assert {s: code // 100 for s, (code, _) in replies.items()} == expect, (name, replies)
        kept = [s for s, digit in expect.items() if digit == 2]  # exit:100 too: upstream commits what is left
        assert len(stored) == len(kept), (name, stored)
        if name == "program":
            assert stored[0][3].startswith(b"X-Filtered: yes\r\n"), stored[0][3][:200]
            assert replies["no"][1][0].endswith("go away")
        if name == "net:":
            assert replies["no"][1][0].endswith("not wanted here")
        if name == "spam-edit:":
            # stored as spamd (the fake: LF line ends) sent it, as upstream
            assert b"\nX-Spam-Flag: NO\n" in b"\n" + stored[0][3].split(b"\n\n")[0] + b"\n"

    def filter_program(
        base: Path,
    ) -> str:  # rejects "Subject: no" with exit 1, else edits the content and exits 0
        rejecting = 'grep -q "^Subject: no" "$1" && { echo "<<go away>>"; exit 1; }\n'
        return str(script(base, "filter.sh", rejecting + EDIT.format(header="X-Filtered: yes")))

    with LineServer(
        lambda path: "ok" if "Subject: ok" in Path(path).read_text() else "not wanted here"
    ) as net:
        try:
            concurrently(
                # a rejection without a code of its own is E-MailRelay 2.6b's 452
                lambda: variant("program", filter_program, {"ok": 2, "no": 4}, short=True),
                lambda: variant("exit:1", lambda _: "exit:1", {"no": 4}),
                lambda: variant("exit:100", lambda _: "exit:100", {"gone": 2}),
                lambda: variant("net:", lambda _: f"net:{net.address}", {"ok": 2, "no": 4}),
                lambda: variant("spam:", lambda _: f"spam:{spamd.address}", {"ham": 2, "spam": 4}),
                lambda: variant("spam-edit:", lambda _: f"spam-edit:{spamd.address}", {"ham": 2}),
            )
        finally:
            spam.__exit__(None, None, None)
    assert len(net.lines) == 2 and all(line.endswith(".content") for line in net.lines)


def test_filter_timeout(tmp_path: Path) -> None:
    slow = script(tmp_path, "slow.sh", "sleep 30\nexit 0\n")
    with relay(tmp_path, "--filter", str(slow), "-W", "1") as r, Wire(r.port) as w:
        w.greet()
        started = time.monotonic()
        code, text = smtp_transaction(w, b"Subject: t\r\n\r\nt\r\n")
        elapsed = time.monotonic() - started
        assert code // 100 == 4 and elapsed < 10, (code, text, elapsed)  # a temporary failure
        assert committed(r.spool) == []


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 2) as s:
            s.settimeout(5)
            return bool(s.recv(100))
    except OSError:
        return False


def test_interface_forms(tmp_path: Path) -> None:
    def variant(name: str, interfaces: list[str], v4: bool, v6: bool) -> None:
        base = subdir(tmp_path, name)
        port = free_port()
        args = ["--no-daemon", FAST, "--port", str(port), *interfaces, "--spool-dir", str(base / "spool"),
                "--user", "root"]  # fmt: skip
        with launched(base, args) as proc:
            wait_for_port(port, host="127.0.0.1" if v4 else "::1", proc=proc)
            assert (_accepts("127.0.0.1", port), _accepts("::1", port)) == (v4, v6), name

    def prefixes() -> None:
        base = subdir(tmp_path, "prefixes")
        smtp, pop, admin = free_port(), free_port(), free_port()
        secrets = base / "pop.auth"
        secrets.write_text("server plain me secret\n")
        args = ["--no-daemon", FAST, "--port", str(smtp), "--pop", "--pop-port", str(pop), "--pop-auth",
                str(secrets), "--admin", str(admin), "--interface", "smtp=127.0.0.1,pop=::1", "--interface",
                "admin=127.0.0.1", "--spool-dir", str(base / "spool"), "--user", "root"]  # fmt: skip
        with launched(base, args) as proc:
            wait_for_port(smtp, proc=proc)
            wait_for_port(pop, host="::1", proc=proc)
            wait_for_port(admin, proc=proc)
            assert _accepts("127.0.0.1", smtp) and not _accepts("::1", smtp)
            assert _accepts("::1", pop) and not _accepts("127.0.0.1", pop)
            with pytest.raises(OSError):
                socket.create_connection(("::1", admin), 2).close()

    concurrently(
        lambda: variant("comma-list", ["-I", "127.0.0.1,::1"], True, True),
        lambda: variant("name", ["--interface", "lo"], True, True),
        lambda: variant("name-ipv4", ["--interface", "lo-ipv4"], True, False),
        lambda: variant("name-ipv6", ["--interface", "lo-ipv6"], False, True),
        prefixes,
    )


def test_interface_default_is_the_any_address_for_ipv4_and_ipv6(tmp_path: Path) -> None:
    # in a private network namespace (only "lo"), so binding the "any" address exposes nothing
    args = ["--no-daemon", FAST, "--log", "--no-syslog", "--port", "2525", "--pop", "--pop-port", "2110",
            "--pop-auth", "/dev/null", "--admin", "2626", "--spool-dir", str(tmp_path), "--user", "root"]  # fmt: skip
    log, seen = in_private_network(
        tmp_path, args, ["127.0.0.1/2525", "::1/2525", "::1/2110", "127.0.0.1/2626"]
    )
    for kind, port in (("smtp", 2525), ("pop", 2110), ("admin", 2626)):
        assert f"{kind} server on 0.0.0.0:{port}" in log and f"{kind} server on ::.{port}" in log, log
    assert seen["127.0.0.1/2525"].startswith("220 ") and seen["::1/2525"].startswith("220 "), seen
    assert seen["::1/2110"].startswith("+OK"), seen
    assert seen["127.0.0.1/2626"].startswith("commands: "), seen


def test_interface_errors_link_local_and_unknown_names(tmp_path: Path) -> None:
    def run(interface: str) -> subprocess.CompletedProcess[str]:
        args = ["--no-daemon", FAST, "--port", str(free_port()), "--interface", interface,
                "--spool-dir", str(tmp_path), "--user", "root"]  # fmt: skip
        return subprocess.run([program(), *args], capture_output=True, text=True, timeout=30, check=False)

    with ThreadPoolExecutor(3) as pool:
        no_zone, zone, unknown = pool.map(run, ["fe80::1", "fe80::1%lo", "nosuchif0"])
    # a link-local address without a zone cannot be bound; with one it is understood (lo has no fe80::1 here)
    # (E-MailRelay 2.6b's words, which name neither the address nor the service)
    assert no_zone.returncode == 2 and "error: socket bind error: invalid argument" in no_zone.stderr
    assert zone.returncode == 2 and "error: socket bind error: cannot assign requested address" in zone.stderr
    assert unknown.returncode == 1 and "invalid interface name or address: nosuchif0" in unknown.stderr


def test_prompt_timeout_goes_ahead_without_a_greeting(spool: Path) -> None:
    hop = MiniSmtp(greeting=False)
    try:
        queue_one(spool)
        r = as_client(spool, hop.address, "-w", "1")
        assert r.returncode == 0 and len(hop.messages) == 1, r.stderr
        assert hop.first_command_at is not None and hop.accepted_at is not None
        waited = hop.first_command_at - hop.accepted_at
        assert 0.8 < waited < 10, waited
    finally:
        hop.close()


def test_server_smtp_config(tmp_path: Path) -> None:
    def ehlo_keywords(w: Wire) -> set[str]:
        return {line.split()[0] for line in w.greet()[1:]}

    def pipelining_chunking_nostrictparsing() -> None:
        base = subdir(tmp_path, "a")
        with (
            relay(base, "--server-smtp-config", "pipelining,chunking,nostrictparsing") as r,
            Wire(r.port) as w,
        ):
            assert {"PIPELINING", "CHUNKING", "BINARYMIME"} <= ehlo_keywords(w)
            assert w.command(b"MAIL FROM: <s@example.com>")[0] == 250  # a space after the colon is allowed
            assert w.command(b"RCPT TO: <r@example.net>")[0] == 250
            chunk = b"Subject: chunked\r\n\r\nvia BDAT\r\n"
            w.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
            assert w.reply()[0] == 250
            ((_, _, _, content),) = committed(r.spool)
        assert content.endswith(chunk)

    def smtputf8strict() -> None:
        base = subdir(tmp_path, "b")
        with relay(base, "-Z", "smtputf8strict") as r, Wire(r.port) as w:
            keywords = ehlo_keywords(w)
            assert "SMTPUTF8" not in keywords and "CHUNKING" not in keywords  # (not offered: upstream's)
            assert w.command(b"MAIL FROM:s@example.com")[0] == 553  # strict parsing by default: <> needed
            assert w.command("MAIL FROM:<jörg@example.com>".encode())[0] // 100 == 5  # needs SMTPUTF8
            assert w.command("MAIL FROM:<jörg@example.com> SMTPUTF8".encode())[0] == 250

    def smtputf8_noalabels_nopipelining() -> None:
        base = subdir(tmp_path, "c")
        with relay(base, "-Z", "smtputf8,noalabels,nopipelining") as r, Wire(r.port) as w:
            keywords = ehlo_keywords(w)
            assert "SMTPUTF8" in keywords and "PIPELINING" not in keywords
            assert w.command("MAIL FROM:<jörg@bücher.example>".encode())[0] == 250  # not strict
            assert w.command("RCPT TO:<r@bücher.example>".encode())[0] == 250
            assert w.command(b"DATA")[0] == 354
            assert w.command(b"Subject: u\r\n\r\nu\r\n.")[0] == 250
            ((_, env, _, _),) = committed(r.spool)
        # domains are stored as A-labels, noalabels or not (as E-MailRelay 2.6b)
        assert env.from_address == "jörg@xn--bcher-kva.example" and env.to_remote == (
            "r@xn--bcher-kva.example",
        )

    concurrently(pipelining_chunking_nostrictparsing, smtputf8strict, smtputf8_noalabels_nopipelining)


def test_size_limits_messages(tmp_path: Path) -> None:
    with relay(tmp_path, "--size", "2000") as r, Wire(r.port) as w:
        lines = w.greet()
        assert "SIZE 2000" in lines
        assert w.command(b"MAIL FROM:<s@example.com> SIZE=5000")[0] == 552
        assert w.command(b"MAIL FROM:<s@example.com>")[0] == 250
        w.command(b"RCPT TO:<r@example.net>")
        w.command(b"DATA")
        code, _ = w.command(b"Subject: big\r\n\r\n" + b"x" * 70 + (b"\r\n" + b"x" * 70) * 60 + b"\r\n.")
        assert code == 552
        assert committed(r.spool) == []
