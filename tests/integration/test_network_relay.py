"""Networking through the real relay: IPv6 on ::1, unix-domain sockets, ``fd#N`` socket activation.

Each scenario runs with ``--single-process`` and under the default circus
supervisor.  Forwarding tests use ``--poll 0``: its once-a-second safety-net
rescan covers a ``spool.ready`` lost while the supervised forward role is
still subscribing to the bus.  Sinks are aiosmtpd servers on ::1 or on a unix-domain socket;
unix socket paths live in a short directory under /tmp (sun_path is 108
bytes).  IPv6 tests are skipped when the machine has no ::1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller, UnixSocketController

from tests.support.relay import Relay, free_port, program, spool_files, wait_until

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
MODES = [pytest.param(["--single-process"], id="single"), pytest.param([], id="supervised")]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")


# ---- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ern-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def launch(tmp_path: Path, *args: str, pass_fds: tuple[int, ...] = ()) -> Relay:
    """``emailrelay --no-daemon ...`` without start_relay's fixed ``--interface 127.0.0.1``."""
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    log_path = tmp_path / "relay.log"
    argv = [
        program(), "--no-daemon", "--log", "--verbose", "--no-syslog", "--log-time",
        "--spool-dir", str(spool), "--user", "root", *args,
    ]  # fmt: skip
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=tmp_path, pass_fds=pass_fds,
        )  # fmt: skip
    return Relay(proc, 0, spool, log_path, argv)


@contextlib.contextmanager
def relay_running(tmp_path: Path, *args: str, pass_fds: tuple[int, ...] = ()) -> Iterator[Relay]:
    relay = launch(tmp_path, *args, pass_fds=pass_fds)
    try:
        yield relay
    finally:
        status = relay.stop()
        # a stop by SIGTERM exits 143 (128 + SIGTERM), as E-MailRelay 2.6b's does
        assert status == 128 + signal.SIGTERM, f"relay exit status {status}:\n{relay.log()[-3000:]}"


def wait_connectable(relay: Relay, family: int, address: Any, timeout: float = 15.0) -> None:
    """Until a connection to the relay gets a greeting (the roles are up), or the relay dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if relay.proc.poll() is not None:
            raise AssertionError(f"relay exited with {relay.proc.returncode}:\n{relay.log()[-3000:]}")
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(address)
            greeting = s.recv(4)
            if greeting[:3].isdigit():
                with contextlib.suppress(OSError):
                    s.sendall(b"QUIT\r\n")
                return
        time.sleep(0.05)
    raise AssertionError(f"relay not ready on {address} after {timeout}s:\n{relay.log()[-3000:]}")


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = "rcpt@example.net"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}@test.example>"
    msg.set_content(f"body of {subject}\n")
    return msg


def swaks(path: Path, subject: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWAKS, "--socket", str(path), "--from", "sender@example.com", "--to", "rcpt@example.net",
         "--header", f"Subject: {subject}", "--timeout", "20"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


# a unix-domain peer is local: it needs no --remote-clients (an earlier bug refused it)
REMOTE = [pytest.param([], id="default"), pytest.param(["--remote-clients"], id="r")]


def envelopes(relay: Relay) -> list[Path]:
    return spool_files(relay.spool, ".envelope")


@dataclass
class _Collect:
    received: list[tuple[Any, str, list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((session.peer, envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@contextlib.contextmanager
def tcp_sink(host: str) -> Iterator[tuple[_Collect, int]]:
    handler = _Collect()
    port = free_port(host)
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@contextlib.contextmanager
def unix_sink(path: Path) -> Iterator[_Collect]:
    handler = _Collect()
    controller = UnixSocketController(handler, unix_socket=str(path))
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


def subject_of(content: bytes) -> str:
    for line in content.splitlines():
        if line.lower().startswith(b"subject:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


# ---- IPv6 ------------------------------------------------------------------------------------------


@needs_ipv6
@pytest.mark.parametrize("mode", MODES)
def test_ipv6_listening_on_loopback(tmp_path: Path, mode: list[str]) -> None:
    port = free_port("::1")
    with relay_running(tmp_path, *mode, "--interface", "::1", "--port", str(port)) as relay:
        wait_connectable(relay, socket.AF_INET6, ("::1", port))
        with smtplib.SMTP("::1", port, timeout=20) as smtp:
            smtp.send_message(message("over-ipv6"))
        assert wait_until(lambda: len(envelopes(relay)) == 1, 10)
        envelope = envelopes(relay)[0].read_text()
        assert "X-MailRelay-Client: ::1" in envelope
        log = relay.log()
        assert f"smtp server on ::1.{port}" in log
        assert "smtp server on 0.0.0.0" not in log  # only the address asked for
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


@needs_ipv6
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["brackets", "upstream"])
def test_ipv6_forwarding_to_loopback(tmp_path: Path, mode: list[str], form: str) -> None:
    port = free_port("::1")
    with tcp_sink("::1") as (sink, sink_port):
        hop = f"[::1]:{sink_port}" if form == "brackets" else f"::1.{sink_port}"
        extra = ["--client-interface", "::1"] if form == "upstream" else []
        with relay_running(
            tmp_path, *mode, "--interface", "::1", "--port", str(port),
            "--forward-to", hop, "--poll", "0", *extra,
        ) as relay:  # fmt: skip
            wait_connectable(relay, socket.AF_INET6, ("::1", port))
            with smtplib.SMTP("::1", port, timeout=20) as smtp:
                smtp.send_message(message(f"fwd-v6-{form}"))
            assert wait_until(lambda: len(sink.received) == 1, 20), relay.log()[-3000:]
            assert wait_until(lambda: not envelopes(relay), 10)
    peer, mail_from, rcpts, content = sink.received[0]
    assert peer[0] == "::1"
    assert mail_from == "sender@example.com" and rcpts == ["rcpt@example.net"]
    assert subject_of(content) == f"fwd-v6-{form}"
    assert f"forwarding to {hop}" in relay.log()


# ---- unix-domain sockets ------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists(SWAKS), reason="swaks not installed")
@pytest.mark.parametrize("remote", REMOTE)
@pytest.mark.parametrize("mode", MODES)
def test_unix_domain_listening_socket(
    tmp_path: Path, short_dir: Path, mode: list[str], remote: list[str]
) -> None:
    path = short_dir / "smtp.s"
    with relay_running(tmp_path, *mode, *remote, "--interface", str(path), "--port", "0") as relay:
        wait_connectable(relay, socket.AF_UNIX, str(path))
        done = swaks(path, "over-unix")
        assert done.returncode == 0, done.stdout + done.stderr
        assert wait_until(lambda: len(envelopes(relay)) == 1, 10)
        assert f"smtp server on {path}" in relay.log()
        content = next(relay.spool.glob("*.content")).read_bytes()
        assert subject_of(content) == "over-unix"


@pytest.mark.parametrize("mode", MODES)
def test_forwarding_to_a_unix_domain_socket(tmp_path: Path, short_dir: Path, mode: list[str]) -> None:
    path = short_dir / "sink.s"
    port = free_port()
    with unix_sink(path) as sink, relay_running(
        tmp_path, *mode, "--interface", "127.0.0.1", "--port", str(port),
        "--forward-to", str(path), "--poll", "0",
    ) as relay:  # fmt: skip
        wait_connectable(relay, socket.AF_INET, ("127.0.0.1", port))
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
            smtp.send_message(message("fwd-unix"))
        assert wait_until(lambda: len(sink.received) == 1, 20), relay.log()[-3000:]
        assert wait_until(lambda: not envelopes(relay), 10)
    assert subject_of(sink.received[0][3]) == "fwd-unix"
    assert f"forwarding to {path}" in relay.log()


# ---- fd#N ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("prefix", ["smtp=", ""])
def test_socket_activation_fd(tmp_path: Path, mode: list[str], prefix: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        with relay_running(
            tmp_path, *mode, "--interface", f"{prefix}fd#{fd}", "--port", "0", pass_fds=(fd,)
        ) as relay:
            listener.close()  # the relay holds its own copy now; ours must not take connections
            wait_connectable(relay, socket.AF_INET, ("127.0.0.1", port))
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
                smtp.send_message(message(f"fd-{prefix or 'any'}"))
            assert wait_until(lambda: len(envelopes(relay)) == 1, 10)
            assert f"smtp server on 127.0.0.1:{port}" in relay.log()
    finally:
        listener.close()


@pytest.mark.skipif(not os.path.exists(SWAKS), reason="swaks not installed")
@pytest.mark.parametrize("remote", REMOTE)
@pytest.mark.parametrize("mode", MODES)
def test_socket_activation_with_a_unix_domain_fd(
    tmp_path: Path, short_dir: Path, mode: list[str], remote: list[str]
) -> None:
    path = short_dir / "activated.s"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(16)
        fd = listener.fileno()
        with relay_running(
            tmp_path, *mode, *remote, "--interface", f"smtp=fd#{fd}", "--port", "0", pass_fds=(fd,)
        ) as relay:
            listener.close()
            wait_connectable(relay, socket.AF_UNIX, str(path))
            done = swaks(path, "activated-unix")
            assert done.returncode == 0, done.stdout + done.stderr
            assert wait_until(lambda: len(envelopes(relay)) == 1, 10)
    finally:
        listener.close()


# ---- back-off when the next hop is down -------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_deferred_message_waits_for_its_back_off(tmp_path: Path, mode: list[str]) -> None:
    """With back-off (``--retry``): one attempt per message while the next hop is down (the back-off
    is many seconds).

    Under the supervisor the notify role sees the release of a deferred message
    (``.busy`` -> ``.envelope``) and rings the forward role, which must not claim it
    before its back-off time (a hot retry loop otherwise).  That ring only gets
    through once the notify role's bus connection is settled, so a message is sent
    every 2 s, up to three."""
    port = free_port()
    dead_hop = f"127.0.0.1:{free_port()}"  # nothing listens there: connection refused at once
    with relay_running(
        tmp_path,
        *mode,
        "--interface",
        "127.0.0.1",
        "--port",
        str(port),
        "--forward-to",
        dead_hop,
        "--poll",
        "0",
        "--retry",
        "60",
    ) as relay:
        wait_connectable(relay, socket.AF_INET, ("127.0.0.1", port))

        def attempts() -> int:
            return relay.log().count("deferred for")

        for sent in range(1, 4):
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
                smtp.send_message(message(f"to-a-dead-hop-{sent}"))
            assert wait_until(lambda n=sent: attempts() >= n, 15), relay.log()[-3000:]
            busy_loop = wait_until(lambda n=sent: attempts() > n + 3, 2.0)
            assert not busy_loop, f"{attempts()} attempts for {sent} message(s) in a few seconds"
        assert len(envelopes(relay)) == 3


@pytest.mark.parametrize("mode", MODES)
def test_without_back_off_a_dead_next_hop_is_tried_once_per_trigger(tmp_path: Path, mode: list[str]) -> None:
    """The default, as upstream: a connection failure leaves the messages as they are and ends the
    run; the releases' doorbells do not start another, only the next trigger does (here ``--poll
    0``'s rescan, once a second), and then one connection attempt covers all the messages."""
    port = free_port()
    dead_hop = f"127.0.0.1:{free_port()}"
    with relay_running(
        tmp_path, *mode, "--interface", "127.0.0.1", "--port", str(port), "--forward-to", dead_hop, "--poll", "0"
    ) as relay:  # fmt: skip
        wait_connectable(relay, socket.AF_INET, ("127.0.0.1", port))
        for sent in range(1, 4):
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
                smtp.send_message(message(f"to-a-dead-hop-{sent}"))
        assert wait_until(lambda: relay.log().count("smtp client error: connect failure") >= 1, 15)
        before = relay.log().count("smtp client error: connect failure")
        time.sleep(3.0)
        tries = relay.log().count("smtp client error: connect failure") - before
        assert tries <= 2 * 3 * 2, f"{tries} attempts in 3 s"  # at most one per rescan (and worker)
        # a claim may be in flight (.busy) at any moment: wait for all three to be back in place
        assert wait_until(lambda: len(envelopes(relay)) == 3, 5) and not list(relay.spool.glob("*.bad"))
