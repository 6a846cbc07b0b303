"""The SMTP storage service: asyncio glue between sockets, the SMTP protocol and the spool.

What it is for: one ``SmtpSession`` per connection feeds bytes into the
sans-IO :class:`~emailrelay.protocol.smtp_server.SmtpServer`, answers its
decisions (verifier, storage, filter), streams DATA to the spool in bounded
chunks and sends the replies.  Used by the ``smtp`` role and by the
single-process modes.

What it expects: the configuration's frozen :class:`~emailrelay.config.Config`
(read as it is: no copy of its fields); bound listening sockets; a
:class:`SpoolStore`; the loaded :class:`ServerSecurity` (replaced on SIGHUP);
a policy object for verifiers and filters (the default accepts everything).

What it guarantees:
- the ``250`` after DATA is sent only after :meth:`NewMessage.commit`
  returned, i.e. content, envelope and directory entry are fsynced; any
  failure before that deletes both files and answers ``452``/``451``.
  With ``--immediate`` (and no filter) the ``250`` follows the next
  hop's instead: the message is forwarded before it is committed, and
  committed (fsynced first) only if it was not forwarded;
- memory per connection is bounded: content goes to disk as it arrives,
  reading pauses while a decision is pending or while the peer does not read
  its replies;
- non-local clients are refused unless ``--remote-clients``; idle sessions
  are closed after ``--idle-timeout``;
- a failed TLS handshake (STARTTLS or ``--server-tls-connection``) sends the
  client OpenSSL's alert before the close (:class:`~emailrelay.auth.tls.Alerts`);
- a verifier's or filter's octets that are not UTF-8 (``caf\\xe9``) reach the
  reply and the log as they came, and a verifier's the envelope too (an address
  of them is not made an A-label, nor counted as a UTF-8 mailbox name), as
  E-MailRelay 2.6b's do;
- international addresses as E-MailRelay 2.6b's: stored with the domain in
  A-labels; an address verifier is asked about that form at RCPT (as typed at
  VRFY), its rewritten address is stored as it came, and a rejected recipient
  that is not ASCII is named in the reply (``550 recipient <u@caf\u00e9.example> no``);
- an AUTH name is its octets, as E-MailRelay 2.6b's: it matches a secret whose id has the same
  octets (``+FF`` is the octet 0xff, not "\u00ff" in UTF-8), and one that is not UTF-8 is logged,
  given to a verifier and stored (xtext, ``+FF``) as it came.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol, cast

from .. import log as logmod
from ..auth import tls
from ..auth.pam import PamSecrets
from ..auth.secrets import TrustRule
from ..config import Config
from ..policy.dnsbl import DnsblChecker
from ..policy.exe import printable
from ..policy.verdicts import FilterOutcome, FilterResult, RecipientKind, RecipientVerdict
from ..protocol import smtp_server as sp
from ..protocol.addresses import to_alabels, xtext_encode
from ..protocol.sasl import Challenge, CheckPassword, Failure, SaslServer, Success, name_octets, server_offer
from ..spool.envelope import Envelope
from ..spool.names import MessageId, State
from ..spool.store import NewMessage, SpoolStore, SpoolStoreError
from .connection_slots import ConnectionSlots
from .line_session import LineSession, let_accepted_connections_in
from .listeners import format_address, is_local_address, not_local_reason
from .security import ServerSecurity

_BODY_TO_CONTENT = {"7BIT": "7bit", "8BITMIME": "8bit", "BINARYMIME": "binarymime"}
# the Received: date's names, written here: email.utils would bring the email package into the smtp role
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _offered(security: ServerSecurity, encrypted: bool) -> tuple[str, ...]:
    """The AUTH mechanisms an SMTP session offers, encrypted or not (``sasl.server_offer``)."""
    if security.secrets is None:
        return ()
    return tuple(server_offer(security.secrets.mechanisms_for_server(), security.auth_config, encrypted))


def received_date(when: float | None = None) -> str:
    """The ``Received:`` line's date as E-MailRelay 2.6b writes it: RFC 5322, local time, the day
    of the month without a leading zero (``Mon, 7 Dec 2026 04:42:51 +0000``)."""
    t = time.localtime(None if when is None else round(when, 6))
    hours, minutes = divmod(abs(t.tm_gmtoff) // 60, 60)
    sign = "-" if t.tm_gmtoff < 0 else "+"
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    )


@dataclass(frozen=True)
class Peer:
    host: str
    port: int

    @property
    def display(self) -> str:
        return format_address(self.host, self.port) if self.port else self.host


class ServerPolicy(Protocol):
    """What the session asks of the policy layer (filters and verifiers)."""

    @property
    def accepts_everything(self) -> bool: ...

    async def verify(
        self, recipient: str, mail_from: str | None, peer: Peer, auth_mechanism: str, auth_id: str
    ) -> RecipientVerdict: ...

    async def filter(
        self, message_id: MessageId, content_path: str, envelope_path: str, *, log_address: str | None = None
    ) -> FilterResult: ...


class AcceptAllPolicy:
    """No --address-verifier, no --filter: every recipient is remote, every message goes on."""

    accepts_everything = True

    async def verify(
        self, recipient: str, mail_from: str | None, peer: Peer, auth_mechanism: str, auth_id: str
    ) -> RecipientVerdict:
        return RecipientVerdict.remote(recipient)

    async def filter(
        self, message_id: MessageId, content_path: str, envelope_path: str, *, log_address: str | None = None
    ) -> FilterResult:
        return FilterResult.accept()


def server_config(config: Config) -> sp.ServerConfig:
    """The sans-IO protocol's knobs for a configuration (the one place they are made)."""
    kw = config.server_smtp_config
    return sp.ServerConfig(
        domain=config.domain,
        anonymous="server" in config.anonymous,
        max_size=config.size,
        pipelining="nopipelining" not in kw,
        chunking="chunking" in kw,
        smtputf8="smtputf8" in kw,  # (smtputf8strict alone does not offer it: E-MailRelay 2.6b)
        smtputf8_strict="smtputf8strict" in kw,
        strict_parsing="nostrictparsing" not in kw,
        vrfy="vrfy" not in config.anonymous,
    )


@dataclass
class ServiceHooks:
    """Callbacks into the rest of the process (forwarding triggers, bus events)."""

    on_commit: Callable[[MessageId], None] | None = None
    on_disconnect: Callable[[], None] | None = None
    # --immediate: forward a committed message now over the session's onward connection and
    # return the client's (code, text); immediate_end(session) when the client has gone
    immediate: Callable[[MessageId | NewMessage, object], Awaitable[tuple[int, str]]] | None = None
    # ... given the message before it is committed (and before its files are fsynced): it is
    # committed, durably, only if it is not forwarded (spool.store.UncommittedClaim)
    immediate_first: bool = False
    immediate_end: Callable[[object], None] | None = None
    on_reject: Callable[[str], None] | None = None
    on_rescan: Callable[[], None] | None = None  # a filter exited 103
    # (direction, "start"|"stop", local, peer): a client session began or ended (admin status/notify)
    on_network: Callable[[str, str, str, str], None] | None = None


@dataclass
class _Transaction:
    mail_from: str = ""
    body: str | None = None
    smtputf8: bool = False
    auth_in: str = ""
    to_remote: list[str] = field(default_factory=list)
    to_local: list[str] = field(default_factory=list)
    message: NewMessage | None = None
    write_error: OSError | None = None
    received: bytes | None = None  # the Received line, made once (counted against --size)


class SmtpService:
    """Owns the listening servers and the live sessions of one SMTP service."""

    def __init__(
        self,
        config: Config,
        store: SpoolStore,
        *,
        security: ServerSecurity | None = None,
        dnsbl: DnsblChecker | None = None,
        policy: ServerPolicy | None = None,
        hooks: ServiceHooks | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.config = config
        self.server_config = server_config(config)
        self.security = security  # loaded secrets and TLS context: replaced on SIGHUP
        self.dnsbl = dnsbl
        self.store = store
        self.policy: ServerPolicy = policy or AcceptAllPolicy()
        self.hooks = hooks or ServiceHooks()
        self.executor = executor or ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool")
        self.log = logmod.get()
        self.sessions: set[SmtpSession] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.enabled = True  # admin "smtp disable"
        self.dnsbl_off_until = 0.0  # admin "dnsbl stop [N]": no DNSBL checks before this (monotonic)
        self.slots: ConnectionSlots | None = None  # set by the smtp role: a relay-wide --max-connections
        self.stats = {"started": 0, "finished": 0}

    async def start(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(lambda: SmtpSession(self), sock=sock, backlog=1024)
            self.servers.append(server)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, let sessions in flight finish for up to ``grace`` seconds, then cut them."""
        for server in self.servers:
            server.close()
        await let_accepted_connections_in()  # a connection accepted just before is a session in flight
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.abort()
        for server in self.servers:
            await server.wait_closed()


# a TLS record of type handshake, TLS 1.x, holding a ClientHello (smtp_server refuses it whole)
_TLS_HANDSHAKE = re.compile("\x16\x03[\x00-\x04]..\x01", re.DOTALL)


class SmtpSession(LineSession):
    """One SMTP connection."""

    log: logmod.SessionLog  # knows the peer's port and the message in hand (--log-format)

    def __init__(self, service: SmtpService) -> None:
        # E-MailRelay 2.6b's --log-format=msgid leaves a server session's lines alone: JSON only
        super().__init__(service.log.session(msgid_in_text=False), service.config.idle_timeout)
        self.service = service
        self.proto = sp.SmtpServer(service.server_config)
        self.peer = Peer("", 0)
        self.encrypted = False
        self.cipher = ""  # the TLS cipher's name, once encrypted (the Received line names it)
        self.client_certificate = ""
        self.trusted_keyword: str | None = None
        self._trust_rule: TrustRule | None = None  # the "server none" line that matched the client
        self._sasl: SaslServer | None = None
        self._slot: int | None = None
        self._disabled = False  # connected while the admin's "smtp disable" held
        self._auth_failures = 0
        self.helo = ""
        self.extended = False
        self.auth_mechanism = ""
        self.auth_id = ""
        self.tx = _Transaction()
        self._content_logged = False
        self._quit = False  # QUIT seen: a close is "smtp protocol done", else "peer disconnected"
        self._staged: list[bytes] = []  # replies already logged, not yet written (see _stage)
        self._close_logged = False
        self._bdat = False  # the transaction's content comes by BDAT (traced per command, as upstream)
        self._close_reason: str | None = ""  # set by a TLS failure; None: no close line (upstream's)

    # ---- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        svc = self.service
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple):
            self.peer = Peer(str(peername[0]), int(peername[1]))
        else:  # a unix-domain peer: local by definition, shown by the listening path
            sockname = transport.get_extra_info("sockname")
            self.peer = Peer(str(sockname or peername or "/"), 0)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.log.port = self.peer.port
        if not svc.config.remote_clients and not is_local_address(self.peer.host):
            # as E-MailRelay 2.6b: not a byte to the client, and these two warnings
            self.log.warning(
                f"configured to reject non-local smtp connection: {not_local_reason(self.peer.host)}",
                self.peer.host,
            )
            self.log.warning(f"connection rejected from {self.peer.display}", self.peer.host)
            self._closing = True
            transport.close()
            return
        self.log.info(f"smtp connection from {self.peer.display}", self.peer.host)
        limit = svc.config.max_connections
        if svc.slots is not None:  # supervised: the limit is shared by every smtp process
            self._slot = svc.slots.acquire()
            over = self._slot is None
        else:
            over = bool(limit and len(svc.sessions) >= limit)
        if over:  # (--max-connections is ours: a session over the limit ends at once)
            self._send_now(b"421 service not available\r\n")
            transport.close()
            return
        # the admin's "smtp disable", as E-MailRelay 2.6b: the greeting is 421 and the session goes
        # on, but its MAIL commands get 421 (even after "smtp enable"); other sessions are unaffected
        self._disabled = not svc.enabled
        svc.sessions.add(self)
        svc.stats["started"] += 1
        self._network("start")
        # (default write-buffer limits: changing them before start_tls() stalls uvloop's TLS handshake)
        checker = svc.dnsbl if time.monotonic() >= svc.dnsbl_off_until else None
        if checker is not None and sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # early talkers must not reach the protocol before the verdict
            transport.pause_reading()
            self._reading_paused = True
            self._task = asyncio.get_running_loop().create_task(self._dnsbl_gate(checker))
            self._arm_idle_timer()
            return
        self._start_session()

    def _network(self, event: str) -> None:
        """E-MailRelay's "IN" connections, for the admin ``status`` and ``notify``."""
        hook = self.service.hooks.on_network
        if hook is not None and self.transport is not None:
            local = self.transport.get_extra_info("sockname")
            where = format_address(str(local[0]), int(local[1])) if isinstance(local, tuple) else str(local)
            hook("in", event, where, self.peer.display)

    async def _dnsbl_gate(self, checker: DnsblChecker) -> None:
        logmod.set_port(self.peer.port)  # for the lines of this task (--log-format=port)
        try:
            result = await checker.check(self.peer.host)
        finally:
            self._task = None
        if self.transport is None or self.transport.is_closing():
            return
        if result.blocked:
            self._closing = True
            if not result.timed_out:  # (a time-out block: closed without a byte, as E-MailRelay 2.6b)
                self._send_now(b"554 access denied\r\n")
            self.transport.close()
            return
        self.transport.resume_reading()
        self._reading_paused = False
        self._start_session()

    def _start_session(self) -> None:
        """TLS first with --server-tls-connection, then the greeting."""
        security = self.service.security
        if security is not None and security.tls_implicit and security.tls_context is not None:
            # --server-tls-connection: the handshake first (ours, so a failure is logged), then the greeting
            # (the task runs before the loop next polls the socket, so no raw byte reaches us first)
            self._task = asyncio.get_running_loop().create_task(self._implicit_tls(security.tls_context))
            self._arm_idle_timer()
            return
        self._greet()

    def _greet(self) -> None:
        self.proto = sp.SmtpServer(self._session_config())
        self.proto.greeting()
        self._flush()
        self._arm_idle_timer()

    async def _implicit_tls(self, context: ssl.SSLContext) -> None:
        result = await self._server_tls(context)
        self._task = None
        if isinstance(result, BaseException):
            # upstream's lines: the session never started, so no "connection closed" line
            self.log.warning(f"tls: tls error: SSL_accept(): [{tls.openssl_error(result)}]", self.peer.host)
            self.log.warning("new connection error: peer disconnected: ssl accept", self.peer.host)
            self.log.warning(f"connection rejected from {self.peer.display}", self.peer.host)
            self._close_reason = None
            self.abort()
            return
        if result is None:
            return
        self._tls_up(result)
        self._greet()
        early = self._take_tls_early()
        for data in early:
            self.proto.receive_data(data)
        if early:
            self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        svc = self.service
        if self not in svc.sessions:
            return
        svc.sessions.discard(self)
        svc.stats["finished"] += 1
        self._network("stop")
        if self._slot is not None:
            ConnectionSlots.release(self._slot)
            self._slot = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._discard_message()
        self._log_closed(exc)
        if svc.hooks.on_disconnect is not None:
            svc.hooks.on_disconnect()
        if svc.hooks.immediate_end is not None:
            svc.hooks.immediate_end(self)  # --immediate: the onward connection closes with this one

    # ---- authentication and TLS ---------------------------------------------------
    def _session_config(self) -> sp.ServerConfig:
        """The protocol configuration for this client: mechanisms, AUTH and TLS requirements."""
        base = self.service.server_config
        if self._disabled:
            base = replace(base, disabled=True)
        security = self.service.security
        if security is None:
            return base
        secrets = security.secrets
        if secrets is not None and self.trusted_keyword is None:
            self._trust_rule = secrets.trust_rule(self.peer.host)
            if self._trust_rule is not None:
                self.trusted_keyword = self._trust_rule.keyword
                self.auth_mechanism, self.auth_id = "none", self.trusted_keyword
        return replace(
            base,
            auth_mechanisms=_offered(security, self.encrypted),
            auth_mechanisms_tls=() if self.encrypted else _offered(security, True),
            auth_required=secrets is not None and self.trusted_keyword is None,
            starttls=security.tls_context is not None and not security.tls_implicit and not self.encrypted,
            tls_required=security.tls_required and not self.encrypted,
        )

    def _tls_up(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        self.encrypted = True
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            self.cipher = cipher[0] if cipher else ""
            self.log.info(  # upstream's words
                f"tls protocol established with {self.peer.display} protocol {ssl_object.version()} "
                f"cipher {cipher[0] if cipher else ''}",
                self.peer.host,
            )
            self.client_certificate = tls.peer_certificate_pem(ssl_object)

    def _on_starttls(self, ev: sp.StartTls) -> Awaitable[None] | None:
        self._trace_rx(ev.line)
        security = self.service.security
        if security is None or security.tls_context is None:
            self.proto.reject(454, "tls not available")
            return None
        self.proto.accept()
        self._flush()
        return self._start_tls(security.tls_context)

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        result = await self._server_tls(context)
        if isinstance(result, BaseException):
            self.log.warning(f"tls: tls error: SSL_accept(): [{tls.openssl_error(result)}]", self.peer.host)
            self._close_reason = "peer disconnected: ssl accept"
            self._closing = True
            self.abort()
            return
        if result is None:
            return
        self._tls_up(result)
        self._forget_authentication()  # RFC 3207 4.2: everything learnt before TLS is forgotten
        self.proto.tls_established(self._session_config())
        for data in self._take_tls_early():
            self.proto.receive_data(data)  # pumped when this task finishes

    def _on_auth(self, ev: sp.AuthStart) -> Awaitable[None] | None:
        self._trace_rx(ev.line)
        security = self.service.security
        if security is None or security.secrets is None:
            self.proto.auth_failed()
            return None
        secrets = security.secrets
        self._sasl = SaslServer(  # a name is its octets, as upstream: "+FF" is 0xff, not "ÿ"
            ev.mechanism,
            lambda mechanism, user: secrets.server_lookup(mechanism, name_octets(user)),
            challenge_domain=self.service.server_config.domain,
            clock=time.time,
            external_check=isinstance(secrets, PamSecrets),
        )
        return self._auth_step(self._sasl.start(ev.initial_response))

    def _on_auth_response(self, ev: sp.AuthResponse) -> Awaitable[None] | None:
        self.log.verbose(f"rx<<: {ev.line}", self.peer.host)  # upstream logs the placeholder bare
        if self._sasl is None:
            self.proto.auth_failed()
            return None
        return self._auth_step(self._sasl.step(ev.data))

    def _auth_step(self, step: object) -> Awaitable[None] | None:
        if isinstance(step, Challenge):
            self.proto.challenge(step.text_b64)
            return None
        security = self.service.security
        assert security is not None
        if isinstance(step, CheckPassword):
            if isinstance(security.secrets, PamSecrets) and self._sasl is not None:
                return self._check_password(security.secrets, step)
            step = Failure("authentication settings changed", step.user)  # reloaded (SIGHUP) in between
        if isinstance(step, Success):
            self._sasl = None
            security.guard.success(self.peer.host)
            self.auth_mechanism, self.auth_id = step.mechanism.lower(), step.identity
            self.log.verbose(  # (upstream's: with --verbose only)
                f"successful authentication of remote client using {step.describe()}", self.peer.host
            )
            self.proto.auth_succeeded()
            return None
        self._sasl = None
        self._auth_failures += 1
        assert isinstance(step, Failure)
        decision = security.guard.failure(self.peer.host, time.monotonic(), self._auth_failures)
        if step.reason == "invalid base64":  # upstream's words for either
            self.log.warning("invalid base64 encoding of authentication response", self.peer.host)
        else:
            self.log.warning(
                f"failed authentication of remote client using {step.describe()}", self.peer.host
            )
        return self._auth_failed_later(decision.delay, decision.disconnect)

    async def _check_password(self, pam: PamSecrets, step: CheckPassword) -> None:
        """``--server-auth=pam:``: PAM blocks, so it runs in the executor."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self.service.executor, pam.check_password, step.user, step.password, self.peer.host
        )
        if self._sasl is None:
            return
        pending = self._auth_step(self._sasl.checked(result.ok, result.reason))
        if pending is not None:
            await pending

    async def _auth_failed_later(self, delay: float, disconnect: bool) -> None:
        if delay > 0:
            await asyncio.sleep(delay)  # brute-force protection
        self.proto.auth_failed()
        if disconnect:
            self.log.warning("too many authentication failures: disconnecting", self.peer.host)
            self._flush()
            self._closing = True
            if self.transport is not None:
                self.transport.close()

    # ---- plumbing ---------------------------------------------------------------
    def _log_address(self) -> str | None:
        return self.peer.host

    def _trace_rx(self, line: str) -> None:
        """As upstream: an empty command line too (``rx<<: ""``)."""
        if self.log.verbose_on:
            self.log.verbose(f'rx<<: "{traced_rx(line, self.proto.latin1)}"', self.peer.host)

    def _idle_check(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._task is None and time.monotonic() - self._last_activity >= self._idle_timeout:
            # as upstream: no reply, the reason in the close line
            self._close_reason = f"idle timeout: no activity after {self._idle_timeout:g}s"
            self._closing = True
            self.transport.close()
            return
        if self._task is not None:
            self._last_activity = time.monotonic()
        self._arm_idle_timer()

    def _stage(self, addressed: bool = True) -> None:
        """Log the replies the last event made, as upstream logs each reply when it makes it (so
        pipelined commands trace as rx, tx, rx, tx), and keep them for one write at the end."""
        data = self.proto.data_to_send()
        if data:
            if self.log.verbose_on:
                self._trace_tx(data, addressed)
            self._staged.append(data)

    def _flush(self) -> None:
        self._stage()
        if self._staged:
            data = b"".join(self._staged)
            self._staged.clear()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)

    def _pump(self) -> None:
        """Take events from the protocol until it needs data or a slow decision."""
        if self._task is not None or self.transport is None:
            return
        proto = self.proto
        while True:
            event = proto.next_event()
            if event is sp.NEED_DATA or event is sp.PAUSED:
                break
            if isinstance(event, sp.ConnectionClosed):
                self._on_closed(event)
                break
            pending = self._handle(event)
            self._stage()
            if pending is None and (self.transport is None or self.transport.is_closing()):
                break  # aborted (a TLS handshake where a command belongs): nothing more is read
            if pending is not None:
                self._task = asyncio.get_running_loop().create_task(self._finish(pending))
                break
        self._flush()
        if self.log.msgid and self.tx.message is None and self._task is None:
            self.log.msgid = ""  # the transaction is over
        self._update_reading()

    async def _finish(self, pending: Awaitable[None]) -> None:
        logmod.set_port(self.peer.port)  # for the policy's lines in this task (--log-format=port)
        try:
            await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a policy or storage bug must not kill the process
            self.log.error(f"smtp session error: {exc!r}", self.peer.host)
            self._discard_message()
            if self.transport is not None:
                self.transport.write(b"451 local error\r\n")
                self.transport.close()
            return
        finally:
            self._task = None
        # E-MailRelay 2.6b logs the reply a slow decision made (the end of a message's, a verifier's)
        # from its completion, outside the connection's log context: without --log-format=address's address
        self._stage(addressed=False)
        self._pump()

    # ---- events -------------------------------------------------------------------
    def _handle(self, event: Any) -> Awaitable[None] | None:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return None
        return handler(self, event)

    def _forget_authentication(self) -> None:
        """After STARTTLS, and after EHLO as upstream: the AUTH identity is gone (not a trust)."""
        self._sasl = None
        self.auth_mechanism, self.auth_id = (
            ("none", self.trusted_keyword) if self.trusted_keyword else ("", "")
        )

    def _on_hello(self, ev: sp.Hello) -> None:
        self._trace_rx(ev.line)
        if ev.extended:
            self._forget_authentication()
        self._discard_message()
        self.tx = _Transaction()
        self.helo = ev.name
        self.extended = ev.extended
        self.proto.accept()

    def _log_trust(self) -> None:
        """Upstream's line for a trusted client not authenticated, at each MAIL and VRFY it lets in."""
        rule = self._trust_rule
        if rule is not None and self.auth_mechanism == "none":
            self.log.verbose(
                f"trusting [{self.peer.host}]: matched [{rule.range_text}] from line {rule.line}",
                self.peer.host,
            )

    def _on_mail(self, ev: sp.MailFrom) -> None:
        self._trace_rx(ev.line)
        self._log_trust()
        self._discard_message()
        self._bdat = False
        self.tx = _Transaction(
            mail_from=to_alabels(ev.address), body=ev.body, smtputf8=ev.smtputf8, auth_in=ev.auth or ""
        )
        self.proto.accept()
        if not ev.address:  # upstream's warning, after its reply
            self._flush()
            self.log.warning("empty MAIL-FROM return path", self.peer.host)

    def _on_rcpt(self, ev: sp.RcptTo) -> Awaitable[None] | None:
        self._trace_rx(ev.line)
        if self.service.policy.accepts_everything:
            self.tx.to_remote.append(to_alabels(ev.address))
            self.proto.accept()
            return None
        return self._verify_rcpt(ev)

    async def _verify_rcpt(self, ev: sp.RcptTo) -> None:
        # E-MailRelay 2.6b asks about the address with its domain in A-labels (VRFY: as typed), and
        # stores the verifier's (rewritten) address as it came, not made an A-label
        asked = to_alabels(ev.address)
        verdict = await self.service.policy.verify(
            asked, self.tx.mail_from, self.peer, self.auth_mechanism, self.auth_id
        )
        if verdict.kind is RecipientKind.REMOTE:
            self.tx.to_remote.append(verdict.address)
            self.proto.accept()
        elif verdict.kind is RecipientKind.LOCAL:
            self.tx.to_local.append(verdict.mailbox)
            self.proto.accept(f"recipient <{ev.address}>  OK")  # two spaces: E-MailRelay 2.6b's text
        elif verdict.kind is RecipientKind.TEMPORARY:
            self._reject_rcpt(ev.address, asked, 450, verdict)
        elif verdict.kind is RecipientKind.ABORT:
            # upstream's lines (a net: verifier's is a warning); we close the connection, upstream
            # leaves it open without a reply (docs/decisions.md, "verifier exit 100")
            if verdict.detail == "net":
                self.log.warning("error: smtp protocol done: address verifier abort", self.peer.host)
            else:
                self.log.info("exception: smtp protocol done: address verifier abort", self.peer.host)
            self._closing = True
            if self.transport is not None:
                self.transport.abort()
        else:
            self._reject_rcpt(ev.address, asked, 550, verdict)

    def _reject_rcpt(self, typed: str, asked: str, code: int, verdict: RecipientVerdict) -> None:
        """Upstream's warning ``rejecting recipient "<asked>": <reason>[: <detail>]`` (the address
        the verifier was asked about) and reply: the verifier's text, possibly empty, after
        ``recipient <typed>`` when the address as typed is not ASCII, as E-MailRelay 2.6b's
        (``550 recipient <u@caf\u00e9.example> no``, ``550 recipient <\u00fc@example.com>``)."""
        detail = f": {verdict.detail}" if verdict.detail else ""
        # from the verifier's completion: without the address, as upstream (see _finish)
        self.log.warning(f'rejecting recipient "{asked}": {verdict.reason}{detail}')
        text = printable(verdict.reason)  # escaped once more, as upstream
        if not typed.isascii():
            text = f"recipient <{typed}>" + (f" {text}" if text else "")
        self.proto.reject(code, text)

    def _on_data_start(self, ev: Any) -> None:
        if ev.line:
            self._trace_rx(ev.line)
        msg: NewMessage | None = None
        self._count_received()
        try:
            msg = self.service.store.create()
            if self.tx.received is not None:
                msg.write(self.tx.received)
        except OSError as exc:
            self._storage_failed(exc)
            if msg is not None:
                msg.abandon()  # a full disk must not keep a half-written content file
            self._discard_message()
            if isinstance(ev, sp.DataStart):
                self.proto.reject(452 if exc.errno == errno.ENOSPC else 451, _storage_text(exc))
            return
        self.log.msgid = str(msg.id)  # until the transaction's reply is sent (_pump)
        self.log.verbose(f"new content file [{msg.content_path.name}]", self.peer.host)
        self.tx.message = msg
        self._content_logged = False
        if isinstance(ev, sp.DataStart):
            self.proto.accept()

    def _on_chunk(self, ev: sp.DataChunk) -> None:
        tx = self.tx
        if tx.message is None and tx.write_error is None:
            self._on_data_start(_BdatStart())  # BDAT: the first chunk opens the content file
        if not self._content_logged:
            self._content_logged = True
            if not self._bdat:
                self.log.verbose("rx<<: [message content not logged]", self.peer.host)
        if tx.message is None or tx.write_error is not None:
            return
        try:
            tx.message.write(ev.data)
        except OSError as exc:
            tx.write_error = exc
            self._storage_failed(exc)

    def _on_bdat(self, ev: sp.Bdat) -> None:
        self._bdat = True
        self._trace_rx(ev.line)
        if self.tx.message is None:  # (before the first chunk is counted)
            self._count_received()

    def _on_data_end(self, ev: sp.DataEnd) -> Awaitable[None]:
        if not self._bdat:  # (a BDAT LAST was traced as it came)
            self._trace_rx(ev.line)
        return self._store_then_rescan(ev)

    async def _store_then_rescan(self, ev: sp.DataEnd) -> None:
        """A filter's 103 asks for a rescan: done once the message is committed (or refused), not before."""
        self._rescan_requested = False
        try:
            await self._store(ev)
        finally:
            if self._rescan_requested and self.service.hooks.on_rescan is not None:
                self._rescan_requested = False
                self.service.hooks.on_rescan()

    async def _store(self, ev: sp.DataEnd) -> None:
        tx = self.tx
        if tx.message is None and tx.write_error is None:
            self._on_data_start(_BdatStart())  # "BDAT 0 LAST" with no chunk before it
        msg = tx.message
        if msg is not None:
            logmod.set_msgid(str(msg.id), in_text=False)  # for the filters' lines: this task's context only
        if msg is None or tx.write_error is not None:
            exc = tx.write_error or SpoolStoreError(errno.EIO, "no content file")
            self._discard_message()
            self.proto.reject(452 if exc.errno == errno.ENOSPC else 451, _storage_text(exc))
            return
        loop = asyncio.get_running_loop()
        envelope = self._envelope()
        hooks = self.service.hooks
        forward_first = hooks.immediate is not None and hooks.immediate_first
        filtered = not self.service.policy.accepts_everything
        if not filtered and not forward_first:  # nothing runs between the envelope and the commit
            await self._store_and_commit(msg, envelope)
            return
        if not await self._in_executor(partial(msg.write_envelope, envelope, durable=not forward_first)):
            return
        self.log.verbose(f"new envelope file [{msg.envelope_path.name}]", self.peer.host)
        result = await self.service.policy.filter(
            msg.id, str(msg.content_path), str(msg.envelope_path), log_address=self.peer.host
        )
        self._rescan_requested = result.rescan
        exists = not filtered or await loop.run_in_executor(self.service.executor, msg.exists)
        if result.outcome is FilterOutcome.ABANDON and not exists:  # the filter took care of it
            self.tx.message = None
            self.proto.accept()
            return
        if not result.ok and result.outcome is not FilterOutcome.ABANDON:
            self._filter_rejected(msg, result)
            return
        if not exists:  # a filter deleted the envelope but said ok: upstream's commit fails
            self.tx.message = None
            ready = self.service.store.envelope_path(msg.id, State.READY)
            self.log.warning(f"filter exception: message store error: cannot rename envelope file to {ready}")
            self.proto.reject(452, "rejected")
            return
        if forward_first:
            assert hooks.immediate is not None
            self.tx.message = None
            self._immediate_reply(*await hooks.immediate(msg, self))
            return
        if not await self._in_executor(msg.commit):
            return
        await self._committed(msg)

    async def _store_and_commit(self, msg: NewMessage, envelope: Envelope) -> None:
        """Without a filter: envelope and commit in one trip to the spool thread (one wake-up of
        a thread, not two, for each message: issue 20's per-message cost)."""
        if not await self._in_executor(partial(msg.write_envelope_and_commit, envelope)):
            return
        self.log.verbose(f"new envelope file [{msg.envelope_path.name}]", self.peer.host)
        await self._committed(msg)

    async def _in_executor(self, step: Callable[[], None]) -> bool:
        """A storing step in the spool thread; False (and the client told 452 or 451) if it failed."""
        try:
            await asyncio.get_running_loop().run_in_executor(self.service.executor, step)
        except OSError as exc:
            self._storage_failed(exc)
            self._discard_message()
            self.proto.reject(452 if exc.errno == errno.ENOSPC else 451, _storage_text(exc))
            return False
        return True

    async def _committed(self, msg: NewMessage) -> None:
        self.tx.message = None
        hooks = self.service.hooks
        if hooks.immediate is not None:
            self._immediate_reply(*await hooks.immediate(msg.id, self))
            return
        self.proto.accept()
        if hooks.on_commit is not None:
            hooks.on_commit(msg.id)

    def _immediate_reply(self, code: int, text: str) -> None:
        """``--immediate``: the client's reply is the forwarding's."""
        if code >= 400:
            self.proto.reject(code, text)
        else:
            self.proto.accept(text)

    def _filter_rejected(self, msg: NewMessage, result: FilterResult) -> None:
        """Upstream's rejection: the message is deleted, the log gets the filter's reason, the
        client ``<code or 452> <response>``."""
        self.tx.message = None
        msg.abandon()  # a message rejected by a server-side filter is deleted, as upstream does
        response = result.reason  # the filter's own words, empty ones too (a net: answer "<tab>why")
        self.log.info(f"rejected by filter: [{result.detail}]")
        if self.service.hooks.on_reject is not None:
            self.service.hooks.on_reject(response)
        self.proto.reject(result.code or 452, printable(response))  # escaped once more, as upstream

    def _on_aborted(self, ev: sp.DataAborted) -> None:
        if ev.code:  # the message failed at its end (upstream's lines)
            if not self._bdat:
                if not self._content_logged:
                    self.log.verbose("rx<<: [message content not logged]", self.peer.host)
                self._trace_rx(".")
            if ev.code == 552:
                self.log.warning("message content too big", self.peer.host)
        self._discard_message()

    def _on_rset(self, ev: sp.Rset) -> None:
        self._trace_rx(ev.line)
        self._discard_message()
        self.tx = _Transaction()
        if self.service.hooks.immediate_end is not None:
            self.service.hooks.immediate_end(self)  # --immediate: as upstream, a new onward connection

    def _on_vrfy(self, ev: sp.Vrfy) -> Awaitable[None] | None:
        self._trace_rx(ev.line)
        self._log_trust()
        if self.service.policy.accepts_everything:
            words = ev.line.split(None, 1)
            self.proto.reply(
                252, f"cannot verify but will accept: {words[1] if len(words) > 1 else ev.address}"
            )
            return None
        return self._vrfy(ev.address)

    async def _vrfy(self, address: str) -> None:
        verdict = await self.service.policy.verify(
            address, None, self.peer, self.auth_mechanism, self.auth_id
        )
        # E-MailRelay 2.6b's replies
        if verdict.kind is RecipientKind.LOCAL:
            self.proto.reply(250, printable(verdict.full_name))
        elif verdict.kind is RecipientKind.REMOTE:
            self.proto.reply(252, f"cannot verify but will accept: {address}")
        elif verdict.kind is RecipientKind.TEMPORARY:
            self.proto.reply(450, printable(verdict.reason))
        else:
            self.proto.reply(550, printable(verdict.reason))

    def _on_info(self, ev: Any) -> None:
        self._trace_rx(getattr(ev, "line", ""))

    def _on_protocol_error(self, ev: sp.ProtocolError) -> None:
        """The refused command's trace and upstream's log line about it, if it writes one."""
        if _TLS_HANDSHAKE.match(ev.line):  # a TLS client where plain text belongs: upstream's
            self.log.warning(  # warning, and the connection ends without a reply
                "received unexpected tls handshake packet from remote client: try enabling implicit tls (smtps)",
                self.peer.host,
            )
            self._close_reason = "peer disconnected"
            self._closing = True
            self.proto.data_to_send()  # (its 500: never sent, never traced)
            self.abort()
            return
        if ev.line == _HIDDEN:  # an AUTH response ("*" included), logged bare as upstream
            self.log.verbose(f"rx<<: {ev.line}", self.peer.host)
        else:
            self._trace_rx(ev.line)
        words = ev.line.split(" ")
        verb = words[0].upper()
        auth = verb == "AUTH"
        if auth and ev.code == 502:
            self.log.warning("client protocol error: AUTH requested but not advertised", self.peer.host)
        elif auth and ev.code == 504 and not self.proto.auth_offered:  # mechanisms come with TLS
            self.log.warning("rejecting authentication attempt without encryption", self.peer.host)
        elif auth and ev.code == 504:
            mechanism = words[1] if len(words) > 1 else ""
            self.log.warning(f"request for unsupported server AUTH mechanism: {mechanism}", self.peer.host)
        elif auth and ev.code == 501:
            self.log.warning("invalid base64 encoding of AUTH parameter", self.peer.host)
        elif auth and ev.code == 503 and self.proto.authenticated and not self.proto.in_transaction:
            self.log.warning("too many AUTH requests", self.peer.host)
        elif ev.code == 553 and ev.text.endswith("missing angle brackets in mailbox name"):  # upstream's hint
            self.log.warning(
                "invalid smtp command syntax from remote client: "
                "use --server-smtp-config=nostrictparsing to allow",
                self.peer.host,
            )
        elif ev.code == 530 and ev.text.startswith("authentication required") and verb == "MAIL":
            self.log.info(  # upstream's line, at each MAIL refused (not at VRFY)
                f"server authentication enabled but not a trusted address: {self.peer.host}", self.peer.host
            )

    def _on_quit(self, ev: sp.Quit) -> None:
        self._quit = True
        self._trace_rx(ev.line)

    def _on_closed(self, ev: sp.ConnectionClosed) -> None:
        if self._closing:
            return
        self._closing = True
        self._flush()
        self._log_closed(None)  # now, as upstream, not when a TLS shutdown has finished
        if self.transport is not None:
            self.transport.close()

    def _log_closed(self, exc: Exception | None) -> None:
        """The session's "smtp connection closed: <reason>: <peer>" line, once."""
        if self._close_logged:
            return
        self._close_logged = True
        if self._close_reason:
            reason = self._close_reason
        elif self.proto.too_many_errors:
            reason = "smtp protocol done: too many protocol errors from the client"
        elif self._closing and (self._quit or not self.proto.peer_ended):
            reason = "smtp protocol done"
        else:
            reason = self._peer_gone(exc)
        if self._close_reason is not None:
            self.log.info(f"smtp connection closed: {reason}: {self.peer.display}", self.peer.host)

    # ---- helpers -------------------------------------------------------------------
    def _count_received(self) -> None:
        """Make the transaction's Received line once (not with --anonymous=content); E-MailRelay 2.6b
        counts it against --size."""
        if "content" not in self.service.config.anonymous and self.tx.received is None:
            self.tx.received = self._received_line()
            self.proto.count_added(len(self.tx.received))

    def _received_line(self) -> bytes:
        # E-MailRelay 2.6b's: "ESMTP" after HELO too
        with_ = "ESMTP" + ("S" if self.encrypted else "") + ("A" if self.proto.authenticated else "")
        if self.cipher:  # E-MailRelay 2.6b's "tls <cipher>", OpenSSL's dashes as underscores
            with_ += " tls " + self.cipher.replace("-", "_")
        helo = self.helo or "unknown"
        date = received_date()
        line = f"Received: from {helo} ([{self.peer.host}]) by {self.service.server_config.domain} with {with_} ; {date}\r\n"
        return line.encode("utf-8", "replace")

    def _envelope(self) -> Envelope:
        tx = self.tx
        return Envelope(
            from_address=tx.mail_from,
            to_remote=tuple(tx.to_remote),
            to_local=tuple(tx.to_local),
            content_type=_BODY_TO_CONTENT.get(tx.body or "", "unknown"),
            authentication=xtext_encode(self.auth_id) if self.auth_id else "",
            client=self.peer.host,
            client_certificate=self.client_certificate,
            mail_from_auth_in=tx.auth_in,
            # upstream's rule: whether the sender or a remote recipient is still non-ASCII once its
            # domain is in A-labels (a verifier's "new@b\xfccher.example", stored as it came, is
            # not), with or without SMTPUTF8, and UTF-8 (a verifier's "caf\xe9@..." is not); a
            # local mailbox does not count
            utf8_mailbox_names=any(
                _utf8(a) and not to_alabels(a).isascii() for a in (tx.mail_from, *tx.to_remote)
            ),
        )

    def _discard_message(self) -> None:
        msg = self.tx.message
        if msg is not None:
            self.tx.message = None
            msg.abandon()

    def _storage_failed(self, exc: OSError) -> None:
        self.log.error(f"cannot store message: {exc}", self.peer.host)


_HIDDEN = "[authentication response not logged]"


def _utf8(text: str) -> bool:
    """Whether ``text`` is all characters: no octet that was not UTF-8 (a ``surrogateescape``
    stand-in, from a verifier's or filter's output)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def traced_rx(line: str, latin1: bool = False) -> str:
    """A command line as E-MailRelay 2.6b traces it (``rx<<:``), escaped as
    :func:`~emailrelay.log.traced` escapes, octets that are not UTF-8 as they came (``latin1``: the
    text was decoded as latin-1; valid UTF-8 around them untouched), a CR or LF in the line as
    ``\r`` or ``\n``; but whole: upstream's trace stops at a tab, ours writes the tab as ``\t``
    and the rest (docs/decisions.md)."""
    if latin1 and not line.isascii() and max(line) <= "\xff":
        line = line.encode("latin-1").decode("utf-8", "surrogateescape")
    elif line.isprintable() and "\\" not in line:  # the common case, checked in C
        return line
    return logmod.traced(line)


class _BdatStart:
    line = ""


def _storage_text(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "insufficient system storage"
    return "local error: cannot store message"


_HANDLERS: dict[type, Callable[[SmtpSession, Any], Awaitable[None] | None]] = {
    sp.Hello: SmtpSession._on_hello,
    sp.MailFrom: SmtpSession._on_mail,
    sp.RcptTo: SmtpSession._on_rcpt,
    sp.DataStart: SmtpSession._on_data_start,
    sp.DataChunk: SmtpSession._on_chunk,
    sp.Bdat: SmtpSession._on_bdat,
    sp.DataEnd: SmtpSession._on_data_end,
    sp.DataAborted: SmtpSession._on_aborted,
    sp.Rset: SmtpSession._on_rset,
    sp.Vrfy: SmtpSession._on_vrfy,
    sp.Noop: SmtpSession._on_info,
    sp.Help: SmtpSession._on_info,
    sp.VrfyHidden: SmtpSession._on_info,  # (E-MailRelay 2.6b logs the command with the vrfy scope too)
    sp.Quit: SmtpSession._on_quit,
    sp.ProtocolError: SmtpSession._on_protocol_error,
    sp.AuthStart: SmtpSession._on_auth,
    sp.AuthResponse: SmtpSession._on_auth_response,
    sp.StartTls: SmtpSession._on_starttls,
}
