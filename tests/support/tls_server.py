"""The next hop for the forwarding-side TLS tests: :class:`TlsSmtpServer`, a small
STARTTLS-capable SMTP server (asyncio streams, TLS through ``loop.start_tls``) that can
demand STARTTLS before AUTH and MAIL, demand AUTH (PLAIN, LOGIN, XOAUTH2) before MAIL, run
implicit TLS, and records what it saw; and the helpers that drive ``emailrelay --as-client``
against it (``submit``, ``as_client``, ``queued``, ``assert_not_delivered``).

Used by tests/integration/test_tls_client.py, test_auth_client.py,
tests/security/test_starttls_injection.py, tests/compat/test_options_auth_tls_process.py
and tests/differential/test_forwarding.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import subprocess
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from emailrelay.spool import envelope as envmod
from tests.support.relay import program, spool_files, wait_until
from tests.support.sink import printed_envelope

BODY = b"Subject: tls test\r\nMessage-ID: <tls-test@example.com>\r\n\r\nhello over tls\r\n"


# ------------------------------------------------------------------ the next hop


@dataclass
class Delivery:
    mail_from: str
    rcpts: list[str]
    data: bytes
    user: str | None  # who authenticated on that connection
    mechanism: str | None
    tls: bool
    mail_params: str


@dataclass
class AuthAttempt:
    mechanism: str
    user: str
    secret: str  # password or bearer token, as received
    ok: bool
    tls: bool


@dataclass
class TlsSmtpServer:
    """A scriptable STARTTLS/implicit-TLS SMTP server on its own event-loop thread.

    ``starttls_reply`` is written in one ``write`` in answer to STARTTLS:
    a malicious server can append a second reply to it (the injection test).
    ``accounts`` maps user -> password for PLAIN/LOGIN, ``tokens`` user ->
    bearer token for XOAUTH2 (or a callable giving it, for tokens made
    later).  Plaintext pipelined after STARTTLS is recorded in
    ``protocol_errors`` and discarded.
    """

    certificate: Path | None = None
    starttls: bool = True
    implicit: bool = False
    require_tls: bool = True
    require_auth: bool = True
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    accounts: dict[str, str] = field(default_factory=lambda: {"alice": "alice-secret"})
    tokens: dict[str, str | Callable[[], str]] = field(default_factory=dict)
    starttls_reply: bytes = b"220 2.0.0 ready to start TLS\r\n"
    client_ca: Path | None = None  # demand a client certificate signed by this CA

    deliveries: list[Delivery] = field(default_factory=list)
    auths: list[AuthAttempt] = field(default_factory=list)
    commands: list[tuple[int, bool, str]] = field(default_factory=list)  # (connection, tls, line)
    tls_errors: list[str] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._context: ssl.SSLContext | None = None
        if self.certificate is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(self.certificate)
            if self.client_ca is not None:
                self._context.verify_mode = ssl.CERT_REQUIRED
                self._context.load_verify_locations(self.client_ca)

    # -- life cycle

    def __enter__(self) -> TlsSmtpServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _start(self) -> asyncio.AbstractServer:
        self._loop.set_exception_handler(self._loop_error)
        ssl_arg = self._context if self.implicit else None
        return await asyncio.start_server(self._session, "127.0.0.1", 0, ssl=ssl_arg)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        self.tls_errors.append(str(context.get("exception") or context.get("message")))

    def wait_for_deliveries(self, n: int, timeout: float = 20.0) -> bool:
        return wait_until(lambda: len(self.deliveries) >= n, timeout)

    def verbs(self, connection: int | None = None) -> list[str]:
        return [line.split(" ", 1)[0].upper() for c, _, line in self.commands if connection in (None, c)]

    # -- one session

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        s = _State(tls=writer.get_extra_info("ssl_object") is not None)
        try:
            await self._converse(conn, s, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError) as exc:
            self.tls_errors.append(f"connection {conn}: {exc!r}")
        finally:
            writer.close()

    async def _converse(
        self, conn: int, s: _State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async def send(text: str) -> None:
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        async def line() -> str | None:
            raw = await reader.readline()
            return raw.decode("utf-8", "replace").rstrip("\r\n") if raw else None

        await send("220 tls.test ESMTP ready")
        while (text := await line()) is not None:
            self.commands.append((conn, s.tls, text))
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                s.reset()
                ext = ["8BITMIME"]
                if self.starttls and not s.tls and not self.implicit:
                    ext.append("STARTTLS")
                if self.mechanisms and (s.tls or not self.require_tls):
                    ext.append("AUTH " + " ".join(self.mechanisms))
                lines = ["tls.test hello", *ext]
                await send(
                    "\r\n".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}" for i, t in enumerate(lines))
                )
            elif verb == "STARTTLS":
                if s.tls or not self.starttls or self._context is None:
                    await send("502 5.5.1 no STARTTLS here")
                    continue
                writer.write(self.starttls_reply)
                await writer.drain()
                pending = bytes(reader._buffer)  # StreamReader's buffer: read but not yet consumed
                if pending:
                    self.protocol_errors.append(f"plaintext pipelined after STARTTLS: {pending!r}")
                    reader._buffer.clear()
                await writer.start_tls(self._context)
                s.tls, s.user, s.mechanism = True, None, None
                s.reset()
            elif verb == "AUTH":
                await self._auth(arg, s, send, line)
            elif verb == "MAIL":
                if self.require_tls and not s.tls:
                    await send("530 5.7.0 must issue STARTTLS first")
                elif self.require_auth and s.user is None:
                    await send("530 5.7.0 authentication required")
                else:
                    address, _, params = arg.partition(":")[2].partition(" ")
                    s.mail_from, s.params = address.strip("<>"), params
                    await send("250 2.1.0 sender ok")
            elif verb == "RCPT":
                if s.mail_from is None:
                    await send("503 5.5.1 need MAIL first")
                else:
                    s.rcpts.append(arg.partition(":")[2].strip().strip("<>"))
                    await send("250 2.1.5 recipient ok")
            elif verb == "DATA":
                if not s.rcpts:
                    await send("503 5.5.1 need RCPT first")
                    continue
                await send("354 go ahead")
                data = bytearray()
                while (raw := await reader.readline()) != b".\r\n":
                    if not raw:
                        return
                    data += raw[1:] if raw.startswith(b".") else raw
                assert s.mail_from is not None
                self.deliveries.append(
                    Delivery(s.mail_from, s.rcpts, bytes(data), s.user, s.mechanism, s.tls, s.params)
                )
                s.reset()
                await send("250 2.0.0 queued")
            elif verb in ("RSET", "NOOP"):
                if verb == "RSET":
                    s.reset()
                await send("250 2.0.0 ok")
            elif verb == "QUIT":
                await send("221 2.0.0 bye")
                return
            else:
                await send("500 5.5.2 unknown command")

    async def _auth(
        self,
        arg: str,
        s: _State,
        send_: Callable[[str], Awaitable[None]],
        line: Callable[[], Awaitable[str | None]],
    ) -> None:
        words = arg.split()
        mechanism = words[0].upper() if words else ""
        initial = words[1] if len(words) > 1 else None
        if self.require_tls and not s.tls:
            await send_("530 5.7.0 must issue STARTTLS first")
            return
        if s.user is not None or mechanism not in self.mechanisms:
            await send_("504 5.5.4 mechanism not available")
            return

        async def ask(challenge: str) -> str:
            await send_(f"334 {challenge}".rstrip())
            return (await line()) or ""

        def b64(text: str) -> str:
            try:
                return base64.b64decode(text).decode("utf-8", "replace")
            except ValueError:
                return "\x00invalid base64"

        user = secret = ""
        ok = False
        if mechanism == "PLAIN":
            parts = b64(initial if initial is not None else await ask("")).split("\0")
            if len(parts) == 3:
                _, user, secret = parts
                ok = self.accounts.get(user) == secret
        elif mechanism == "LOGIN":
            user = b64(initial) if initial is not None else b64(await ask("VXNlcm5hbWU6"))
            secret = b64(await ask("UGFzc3dvcmQ6"))
            ok = self.accounts.get(user) == secret
        elif mechanism == "XOAUTH2":
            fields = b64(initial if initial is not None else await ask("")).split("\x01")
            values = dict(f.split("=", 1) for f in fields if "=" in f)
            user = values.get("user", "")
            secret = values.get("auth", "").removeprefix("Bearer ")
            expected = self.tokens.get(user)
            ok = bool(user) and (expected() if callable(expected) else expected) == secret
            if not ok:
                error = base64.b64encode(b'{"status":"401","schemes":"bearer"}').decode()
                await ask(error)  # RFC 7628: the client answers the error with an empty line
        self.auths.append(AuthAttempt(mechanism, user, secret, ok, s.tls))
        if ok:
            s.user, s.mechanism = user, mechanism
            await send_("235 2.7.0 authenticated")
        else:
            await send_("535 5.7.8 authentication failed")


@dataclass
class _State:
    tls: bool
    user: str | None = None
    mechanism: str | None = None
    mail_from: str | None = None
    params: str = ""
    rcpts: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.mail_from, self.params, self.rcpts = None, "", []


# ------------------------------------------------------------------ helpers


def submit(
    spool: Path, body: bytes = BODY, sender: str = "sender@example.com", to: str = "rcpt@example.net"
) -> str:
    """Put one message into ``spool`` with emailrelay-submit; its envelope path."""
    spool.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", sender, "--verbose", to],
        input=body, capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    return str(printed_envelope(out.stdout))


def set_envelope_field(envelope_path: Path, name: str, value: str) -> None:
    """Edit one envelope field the way a filter would."""
    env = envmod.parse(envelope_path.read_bytes())
    envelope_path.write_bytes(envmod.Envelope(**{**env.__dict__, name: value}).to_bytes())


@dataclass
class ClientRun:
    rc: int
    log: str


def as_client(spool: Path, port: int, *args: str, timeout: float = 40.0) -> ClientRun:
    """``emailrelay --as-client 127.0.0.1:port`` over ``spool``: exit code and log."""
    cmd = [
        program(), "--as-client", f"127.0.0.1:{port}", "--spool-dir", str(spool), "--log", "--verbose",
        "--no-syslog", "--user", "root", "--connection-timeout", "5", "--response-timeout", "10", *args,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return ClientRun(done.returncode, (done.stdout + done.stderr).decode(errors="replace"))


def queued(spool: Path) -> list[Path]:
    return spool_files(spool, ".envelope")


def assert_not_delivered(spool: Path, server: TlsSmtpServer, run: ClientRun, *, kept: bool = False) -> None:
    """Forwarding failed: nothing arrived, and the run ended with exit 1.  The message was failed
    (``.bad`` without a code, as E-MailRelay 2.6b fails it after a TLS or authentication
    problem), or with ``kept`` (back-off, or nothing was offered) it waits."""
    assert run.rc != 0, run.log
    assert server.deliveries == []
    assert spool_files(spool, ".busy") == []
    if kept:
        assert len(queued(spool)) == 1, run.log
        assert spool_files(spool, ".bad") == []
    else:
        bad = spool_files(spool, ".bad")
        assert len(bad) == 1 and queued(spool) == [], run.log
        assert bad[0].read_bytes().endswith(b"X-MailRelay-ReasonCode:\r\n")
        assert "warning: smtp client error: " in run.log
