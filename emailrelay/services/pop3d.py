"""The POP service: asyncio glue between sockets, the POP3 protocol and the spool.

What it is for: the ``pop`` role (``--pop``).  One :class:`PopSession` per
connection feeds bytes into the sans-IO
:class:`~emailrelay.protocol.pop3_server.Pop3Server`, checks logins against
the ``--pop-auth`` secrets (USER/PASS, APOP, AUTH; with ``pam:`` USER/PASS
and AUTH PLAIN/LOGIN checked by PAM in the executor), locks and lists the
maildrop through the store, streams message content and deletes messages
at QUIT.

What it expects: bound listening sockets; a :class:`SpoolStore`; a
:class:`ServerSecurity` holding the ``--pop-auth`` secrets, the TLS context
and the brute-force guard (``services/security.py``).

What it guarantees:
- the maildrop is the main spool directory's committed ``.envelope``
  messages (never ``.new``, ``.busy``, ``.bad``), or with ``--pop-by-name``
  the authenticated user's own sub-directory — a real directory directly
  inside the spool, never a symlink, a path or a dot-name;
- one session per maildrop at a time, across processes (an ``flock``); a
  second one gets ``-ERR [IN-USE] maildrop already locked``;
- messages are deleted only after QUIT in the TRANSACTION state, and only
  while still ready: a message a forwarder claimed after login is left
  alone; a dropped connection or a timeout deletes nothing;
  ``--pop-no-delete`` makes DELE appear to work and deletes nothing;
- content is streamed in bounded chunks and only as fast as the client
  reads, so a 100 MB message costs a few hundred KB;
- failed logins are delayed (BruteForceGuard) and the session is closed
  after five of them; idle sessions are closed after ``--idle-timeout``;
- plaintext sent after STLS is discarded; a failed STLS handshake sends the client
  OpenSSL's alert before the close (:class:`~emailrelay.auth.tls.Alerts`); passwords are never logged.

Logging is E-MailRelay 2.6b's: failed logins in its words (``failed authentication of remote
client using mechanism [apop] and plaintext secret for [me] from line 1``, ``... and missing
secret for [me]``); a multi-line reply of more than seven lines is traced as its first four lines,
``[N lines]`` and its last two; a tab in a traced line is ``\\t`` and a backslash ``\\\\``; octets
that are not UTF-8 are traced (and echoed) as they came; an empty command line is traced as
``rx<<: ""``; a reply is traced before the next (pipelined) command; an idle session ends with
``pop connection closed: idle timeout: no activity after <N>s: <peer>``.
As upstream's POP server reads SASL base64: a response or initial response that is not valid
base64 is taken as an empty one (which never authenticates).  As upstream, a name (USER, APOP,
AUTH) is its octets: it matches a secret whose id has the same octets (``+FF`` is the octet 0xff,
not "ÿ" in UTF-8), and one that is not UTF-8 is logged and names its ``--pop-by-name`` directory
as it came.  PASS checks the rest of the line and then, as upstream reads it, its first word
(space, tab or CR end it): ``PASS secret x`` logs in as there, and a password with a space
(``my+20password`` in the secrets file) still logs in.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets as _random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, BinaryIO, TypeVar, cast

from .. import log as logmod
from ..auth import tls
from ..auth.pam import PamSecrets
from ..auth.secrets import ServerSecret
from ..config import Config
from ..protocol import pop3_server as pp
from ..protocol.sasl import (
    Challenge,
    CheckPassword,
    Failure,
    SaslServer,
    Success,
    b64decode_strict,
    name_octets,
)
from ..spool.maildrop import POP_DELETED, POP_KEPT, PopMaildrop, PopMessage, open_maildrop
from ..spool.store import SpoolStore, SpoolStoreError
from .line_session import TLS_HANDSHAKE_TIMEOUT, LineSession, let_accepted_connections_in
from .listeners import format_address, is_local_address
from .security import ServerSecurity, server_security

CHUNK_SIZE = 256 * 1024
WRITE_HIGH_WATER = 256 * 1024
TRACE_HEAD, TRACE_TAIL = 4, 2  # lines of a long multi-line reply traced before and after "[N lines]"

_T = TypeVar("_T")


class PopService:
    """Owns the listening servers and the live sessions of one POP service."""

    def __init__(
        self,
        config: Config,
        store: SpoolStore,
        security: ServerSecurity | None = None,
        *,
        executor: ThreadPoolExecutor | None = None,
        log: logmod.Log | None = None,
        chunk_size: int = CHUNK_SIZE,  # bytes read from a message file at a time
    ) -> None:
        self.config = config  # --pop-by-name, --pop-no-delete, --idle-timeout, --remote-clients, ...
        self.store = store
        self.security = security  # replace on SIGHUP to reload the secrets
        self.executor = executor or ThreadPoolExecutor(max_workers=4, thread_name_prefix="pop")
        self.log = log or logmod.get()
        self.chunk_size = chunk_size
        # the host part of the APOP timestamp and CRAM challenges
        self.domain = config.domain or socket.gethostname() or "localhost"
        self.sessions: set[PopSession] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.stats = {"started": 0, "finished": 0}

    async def start(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        sec = self.security
        context = sec.tls_context if sec is not None and sec.tls_implicit else None
        for sock in sockets:
            server = await loop.create_server(
                lambda: PopSession(self),
                sock=sock,
                backlog=1024,
                ssl=context,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if context is not None else None,
            )
            self.servers.append(server)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, let sessions finish for up to ``grace`` seconds, then cut them (nothing is deleted)."""
        for server in self.servers:
            server.close()
        await let_accepted_connections_in()  # a connection accepted just before is a session in flight
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.abort()
        deadline = time.monotonic() + 2.0
        while any(s.task_running for s in list(self.sessions)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for server in self.servers:
            await server.wait_closed()


def pop_security(config: Config) -> ServerSecurity:
    """``--pop-auth`` secrets; STLS with ``--server-tls`` or, as E-MailRelay 2.6b, with
    ``--server-tls-connection`` (which is implicit TLS for SMTP only); ``--server-tls-required``
    applies, and so does ``--server-auth-config``, as upstream's: it filters the SASL list (CAPA,
    AUTH) and, without PLAIN, USER/PASS."""
    sec = server_security(config, secrets_path=config.pop_auth or "")
    return replace(sec, tls_implicit=False)


def build_pop_service(
    config: Config,
    store: SpoolStore,
    *,
    executor: ThreadPoolExecutor | None = None,
    log: logmod.Log | None = None,
) -> PopService:
    """The POP service of a configuration (``--pop``, ``--pop-by-name``, ``--pop-no-delete``, ``--pop-auth``)."""
    service = PopService(config, store, pop_security(config), executor=executor, log=log)
    if config.pop_auth:
        service.log.info(
            logmod.tagged(config.name, f'pop server authentication secrets from "{config.pop_auth}"')
        )
    return service


class _Closed(Exception):
    """The connection went away while a task was working for it."""


def _traced_reply(reply: bytes) -> list[str]:
    """The ``tx>>:`` texts for one reply: a multi-line one of more than seven lines as its first
    four, ``[N lines]`` and its last two (E-MailRelay 2.6b's abbreviation)."""
    lines = [f'"{logmod.traced(x.decode("utf-8", "surrogateescape"))}"' for x in reply.split(b"\r\n") if x]
    hidden = len(lines) - TRACE_HEAD - TRACE_TAIL
    if hidden < 2:
        return lines
    return [*lines[:TRACE_HEAD], f"[{hidden} lines]", *lines[-TRACE_TAIL:]]


def _sasl_text(text: str) -> str:
    """A SASL (initial) response as upstream's POP server reads it: not valid base64 is empty."""
    if text.strip() == "*" or b64decode_strict(text) is not None:
        return text
    return ""


def _failed_words(mechanism: str, user: str, secret: ServerSecret | None) -> str:
    """Upstream's words for a failed login: the secret it checked, or that none was found."""
    if secret is None:
        return Failure("", user, mechanism).describe()
    return Success(user, mechanism, secret.line, secret.kind).describe()


class PopSession(LineSession):
    """One POP connection."""

    def __init__(self, service: PopService) -> None:
        super().__init__(service.log, service.config.idle_timeout)
        self.service = service
        self.proto = pp.Pop3Server(pp.PopConfig())
        self.peer = ""
        self.host = ""
        self.encrypted = False
        self.user = ""
        self.maildrop: PopMaildrop | None = None
        self.messages: list[PopMessage] = []
        self._sasl: SaslServer | None = None
        self._auth_failures = 0
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._lost = False
        self._lost_event = asyncio.Event()
        self._close_reason = ""

    @property
    def task_running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ---- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        svc = self.service
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple):
            host = str(peername[0])
            self.peer = format_address(host, int(peername[1]))
        else:
            host = str(peername or "")
            self.peer = host or "local"
        self.host = host
        self.log.info(f"pop connection from {self.peer}")
        if not svc.config.remote_clients and not is_local_address(host):
            self.log.warning(
                f"pop connection from {self.peer} rejected: not a local address "
                "(use --remote-clients to allow it)"
            )
            self._send_now(b"-ERR remote connections not allowed\r\n")
            transport.close()
            return
        limit = svc.config.max_connections
        if limit and len(svc.sessions) >= limit:
            self._send_now(b"-ERR [SYS/TEMP] too many connections\r\n")
            transport.close()
            return
        svc.sessions.add(self)
        svc.stats["started"] += 1
        # (default write-buffer limits: changing them before start_tls() stalls uvloop's TLS handshake)
        if transport.get_extra_info("ssl_object") is not None:
            self._tls_up(transport)
        self.proto = pp.Pop3Server(self._config())
        self.proto.greeting()
        self._flush()
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        svc = self.service
        self._lost = True
        self._lost_event.set()
        self._can_write.set()  # wake a streaming task so it sees the loss
        if self not in svc.sessions:
            return
        svc.sessions.discard(self)
        svc.stats["finished"] += 1
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if not self.task_running:
            self._release()
        # else: the task notices the loss after its current step and releases the maildrop
        reason = self._close_reason or ("pop protocol done" if self._closing else self._peer_gone(exc))
        self.log.info(f"pop connection closed: {reason}: {self.peer}")

    def pause_writing(self) -> None:
        self._can_write.clear()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._can_write.set()
        super().resume_writing()

    # ---- configuration -------------------------------------------------------------
    def _config(self) -> pp.PopConfig:
        sec = self.service.security
        stamp = f"<{_random.randbelow(2**31)}.{int(time.time())}@{self.service.domain}>"
        if sec is None:
            return pp.PopConfig(timestamp=stamp, secure=self.encrypted, user_pass=False)
        return pp.PopConfig(
            timestamp=stamp,
            user_pass="PLAIN" in sec.mechanisms(False),  # (upstream's rule: PASS needs a plain secret)
            mechanisms=sec.mechanisms(False),
            mechanisms_tls=sec.mechanisms(True),
            stls=sec.tls_context is not None and not sec.tls_implicit,
            tls_required=sec.tls_required,
            secure=self.encrypted,
            apop=not isinstance(sec.secrets, PamSecrets),  # PAM needs the password itself
        )

    def _tls_up(self, transport: asyncio.BaseTransport) -> None:
        self.encrypted = True
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.log.info(tls.established(self.peer, ssl_object))  # upstream's words, as for SMTP

    # ---- plumbing ---------------------------------------------------------------
    def _idle_check(self) -> None:
        if self.transport is None or self.transport.is_closing() or self._lost:
            return
        if time.monotonic() - self._last_activity >= self._idle_timeout:
            self._close_reason = f"idle timeout: no activity after {self._idle_timeout:g}s"  # (upstream's)
            self._closing = True
            self.transport.close()
            return
        self._arm_idle_timer()

    def _flush(self) -> None:
        replies = self.proto.replies_to_send()
        if not replies or self.transport is None or self.transport.is_closing():
            return
        if self.log.verbose_on:
            for reply in replies:
                for text in _traced_reply(reply):
                    self.log.verbose(f"tx>>: {text}", self._log_address())
        self.transport.write(b"".join(replies))

    def _trace_rx(self, line: str) -> None:
        """As upstream: an empty command line too (``rx<<: ""``)."""
        if self.log.verbose_on:
            self.log.verbose(f'rx<<: "{logmod.traced(line)}"', self._log_address())

    def _pump(self) -> None:
        """Take events from the protocol until it needs data or a slow decision."""
        if self._task is not None or self.transport is None or self._lost:
            return
        self._flush()  # a decision's reply is logged (and sent) before the next command is traced
        proto = self.proto
        while True:
            event = proto.next_event()
            if event is pp.NEED_DATA or event is pp.PAUSED:
                break
            if isinstance(event, pp.ConnectionClosed):
                self._on_closed()
                break
            pending = self._handle(event)
            if pending is not None:
                self._task = asyncio.get_running_loop().create_task(self._finish(pending))
                break
            self._flush()
        self._flush()
        self._update_reading()

    async def _finish(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except (_Closed, asyncio.CancelledError):
            pass
        except Exception as exc:  # a storage bug must not kill the process
            self.log.error(f"pop session error: {exc!r}")
            self._closing = True
            if self.transport is not None:
                self.transport.abort()
        finally:
            self._task = None
            self._last_activity = time.monotonic()
        if self._lost:
            self._release()
            return
        self._pump()

    def _release(self) -> None:
        """Drop the maildrop lock and descriptors (only when no task is using them)."""
        md, self.maildrop = self.maildrop, None
        if md is not None:
            md.close()

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run blocking spool work in the executor; the session's task always waits for it."""
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(self.service.executor, fn, *args))

    def _check_alive(self) -> None:
        if self._lost or self.transport is None or self.transport.is_closing():
            raise _Closed()

    # ---- events -------------------------------------------------------------------
    def _handle(self, event: pp.Event) -> Awaitable[None] | None:
        self._trace_rx(event.line)
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return None
        return handler(self, event)

    def _on_closed(self) -> None:
        if self._closing:
            return
        self._closing = not self.proto.peer_ended  # QUIT or our decision, not the peer's EOF
        self._flush()
        if self.transport is not None:
            self.transport.close()

    # -- authentication
    def _secrets(self) -> Any:
        sec = self.service.security
        return sec.secrets if sec is not None else None

    def _on_pass(self, ev: pp.Pass) -> Awaitable[None]:
        secrets = self._secrets()
        if isinstance(secrets, PamSecrets):
            return self._pam_login(secrets, ev.user, ev.password)
        secret = secrets.server_lookup("PLAIN", name_octets(ev.user)) if secrets is not None else None
        # the rest of the line (a password may hold a space), else upstream's first word
        if secret is None or not any(secret.matches_password(p) for p in (ev.password, ev.word)):
            return self._login_failed(f"using {_failed_words('PLAIN', ev.user, secret)}")  # upstream's words
        return self._login(Success(ev.user, "PLAIN", secret.line, secret.kind))

    async def _pam_login(self, pam: PamSecrets, user: str, password: bytes) -> None:
        """USER/PASS with ``--pop-auth=pam:``: PAM blocks, so it runs in the executor."""
        result = await self._run(pam.check_password, user, password, self.host)
        self._check_alive()
        if result.ok:
            await self._login(Success(user, "PLAIN", 0, "pam"))
        else:  # (the SASL server's words for a PAM failure)
            words = Failure(result.reason, user, "PLAIN", f"pam for [{user}]").describe()
            await self._login_failed(f"using {words}")

    def _on_apop(self, ev: pp.Apop) -> Awaitable[None]:
        secrets = self._secrets()
        user = ev.user
        secret = secrets.server_lookup("APOP", name_octets(user)) if secrets is not None and user else None
        if secret is None or secret.kind != "plain":  # (APOP needs the password itself)
            return self._login_failed(f"using {_failed_words('APOP', ev.user, None)}")
        expected = hashlib.md5(ev.timestamp.encode("utf-8") + secret.secret).hexdigest()
        if not hmac.compare_digest(expected.encode(), ev.digest.encode("utf-8", "replace")):
            return self._login_failed(f"using {_failed_words('APOP', ev.user, secret)}")
        return self._login(Success(user, "APOP", secret.line, secret.kind))

    def _on_auth(self, ev: pp.AuthStart) -> Awaitable[None] | None:
        secrets = self._secrets()
        if secrets is None:
            return self._login_failed(f"using mechanism [{ev.mechanism.lower()}]: no secrets")
        self._sasl = SaslServer(
            ev.mechanism,
            lambda mechanism, user: secrets.server_lookup(mechanism, name_octets(user)),
            challenge_domain=self.service.domain,
            clock=time.time,
            external_check=isinstance(secrets, PamSecrets),
        )
        return self._auth_step(self._sasl.start(None if ev.initial is None else _sasl_text(ev.initial)))

    def _on_auth_response(self, ev: pp.AuthResponse) -> Awaitable[None] | None:
        if self._sasl is None:
            return self._login_failed("after an unexpected authentication response")
        return self._auth_step(self._sasl.step(_sasl_text(ev.response)))

    def _auth_step(self, step: object) -> Awaitable[None] | None:
        assert self._sasl is not None
        mechanism = self._sasl.mechanism
        if isinstance(step, Challenge):
            self.proto.challenge(step.text_b64)
            return None
        if isinstance(step, CheckPassword):
            pam = self._secrets()
            if not isinstance(pam, PamSecrets):  # reloaded (SIGHUP) in between
                self._sasl = None
                return self._login_failed(
                    f"using mechanism [{mechanism.lower()}]: authentication settings changed"
                )
            return self._pam_auth(pam, self._sasl, step)
        self._sasl = None
        if isinstance(step, Success):
            return self._login(step, by_auth=True)
        assert isinstance(step, Failure)
        if step.reason == "authentication cancelled":  # (ours: upstream logs nothing)
            return self._login_failed(f"using mechanism [{mechanism.lower()}]: {step.reason}")
        return self._login_failed(f"using {step.describe()}")  # upstream's words

    async def _pam_auth(self, pam: PamSecrets, sasl: SaslServer, step: CheckPassword) -> None:
        """AUTH PLAIN/LOGIN with ``--pop-auth=pam:``: the PAM check, then the SASL outcome."""
        result = await self._run(pam.check_password, step.user, step.password, self.host)
        self._check_alive()
        pending = self._auth_step(sasl.checked(result.ok, result.reason))
        if pending is not None:
            await pending

    async def _login_failed(self, what: str) -> None:
        """A failed login, logged as ``failed authentication of remote client <what>``."""
        self._auth_failures += 1
        sec = self.service.security
        self.log.warning(f"failed authentication of remote client {what}")
        disconnect = self._auth_failures >= 5
        if sec is not None:
            decision = sec.guard.failure(self.host, time.monotonic(), self._auth_failures)
            disconnect = decision.disconnect
            if decision.delay > 0:  # brute-force protection; cut short if the peer goes
                try:
                    await asyncio.wait_for(self._lost_event.wait(), decision.delay)
                except TimeoutError:
                    pass
        self._check_alive()
        if disconnect:
            self.log.warning("too many authentication failures: disconnecting")
        self.proto.login_failed(close=disconnect)

    async def _login(self, success: Success, by_auth: bool = False) -> None:
        user = success.identity
        self.log.verbose(f"successful authentication of remote client using {success.describe()}")
        if by_auth:  # E-MailRelay 2.6b logs this after AUTH only (not USER/PASS, not APOP)
            self.log.info(f"pop authentication of {user} connected from {self.peer}")
        sec = self.service.security
        if sec is not None:
            sec.guard.success(self.host)
        by_name = self.service.config.pop_by_name
        try:
            opened = await self._run(self._open_maildrop, user if by_name else None)
        except SpoolStoreError as exc:
            self.log.warning(f"pop: cannot open the maildrop for [{user}]: {exc}")
            self._check_alive()
            self.proto.login_failed("[SYS/PERM] cannot open the maildrop")
            return
        if opened is None:
            self.log.info(f"pop: maildrop of [{user}] is in use by another session")
            self._check_alive()
            self.proto.login_failed("[IN-USE] maildrop already locked")
            return
        self.maildrop, self.messages = opened
        self.user = user
        self._check_alive()
        self.proto.login([(m.size, m.uid) for m in self.messages])

    def _open_maildrop(self, name: str | None) -> tuple[PopMaildrop, list[PopMessage]] | None:
        md = open_maildrop(self.service.store, name)
        if md.created:  # upstream's line
            self.log.info(f"created pop-by-name sub-directory [{name}]")
        try:
            if not md.lock():
                md.close()
                return None
            return md, md.messages()
        except BaseException:
            md.close()
            raise

    # -- STLS
    def _on_stls(self, ev: pp.Stls) -> Awaitable[None] | None:
        sec = self.service.security
        if sec is None or sec.tls_context is None:
            self.proto.reject("")  # (upstream's bare -ERR)
            return None
        self.proto.accept_stls()
        self._flush()
        if self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._tls_early = []
        return self._start_tls(sec.tls_context)

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        result = await self._server_tls(context)
        if isinstance(result, BaseException):
            self.log.warning(f"tls: tls error: SSL_accept(): [{tls.openssl_error(result)}]")  # upstream's
            self._close_reason = "peer disconnected: ssl accept"
            self._closing = True
            self.proto.close()
            self.abort()
            if not self._lost:  # the TLS layer may not report the loss to us
                self.connection_lost(None)
            return
        if result is None:
            raise _Closed()
        self._tls_up(result)
        self.proto.tls_established()
        for data in self._take_tls_early():
            self.proto.receive_data(data)

    # -- RETR / TOP
    def _on_retrieve(self, ev: pp.Retrieve) -> Awaitable[None]:
        return self._retrieve(ev)

    async def _retrieve(self, ev: pp.Retrieve) -> None:
        md = self.maildrop
        assert md is not None
        msg = self.messages[ev.number - 1]
        try:
            content = await self._run(md.open_content, msg.id)
        except OSError as exc:
            self._check_alive()
            self.log.warning(f"pop: cannot read [{msg.id}]: {exc.strerror or exc}")
            self.proto.reject("message no longer available")
            return
        try:
            self._check_alive()
            size = os.fstat(content.fileno()).st_size
            stuffer = self.proto.accept_retrieve(size)
            self._flush()
            await self._stream(content, stuffer)
            self._write(stuffer.finish())
            self.log.verbose(f"tx>>: [{stuffer.lines} line(s) of content]")
            self.log.verbose('tx>>: "."')
            self.proto.retrieve_done()
        finally:
            content.close()

    async def _stream(self, content: BinaryIO, stuffer: pp.ByteStuffer) -> None:
        chunk_size = self.service.chunk_size
        while not stuffer.done:
            try:
                chunk = await self._run(content.read, chunk_size)
            except OSError as exc:
                self.log.error(f"pop: read error: {exc}")
                self._closing = True
                self.abort()
                raise _Closed() from None
            if not chunk:
                return
            self._write(stuffer.feed(chunk))
            self._last_activity = time.monotonic()
            if self._writing_paused:
                await self._can_write.wait()

    def _write(self, data: bytes) -> None:
        self._check_alive()
        assert self.transport is not None
        if data:
            self.transport.write(data)

    # -- QUIT
    def _on_update(self, ev: pp.Update) -> Awaitable[None]:
        return self._update(ev)

    async def _update(self, ev: pp.Update) -> None:
        ok = True
        ids = [self.messages[n - 1].id for n in ev.deleted]
        if ids and self.service.config.pop_no_delete:
            self.log.info(f"pop: {len(ids)} message(s) not deleted (--pop-no-delete)")
        elif ids:
            md = self.maildrop
            assert md is not None
            results = await self._run(lambda: [(mid, md.delete(mid)) for mid in ids])
            for mid, result in results:
                if result == POP_KEPT:
                    ok = False
                    self.log.warning(f"pop: not deleting [{mid}]: it is no longer ready (being forwarded?)")
                elif result == POP_DELETED:
                    self.log.verbose(f"pop: deleted [{mid}]")
                else:
                    self.log.verbose(f"pop: [{mid}] already gone")
        self._release()
        self._check_alive()
        self.proto.update_done(ok)


_HANDLERS: dict[type, Callable[[PopSession, Any], Awaitable[None] | None]] = {
    pp.Pass: PopSession._on_pass,
    pp.Apop: PopSession._on_apop,
    pp.AuthStart: PopSession._on_auth,
    pp.AuthResponse: PopSession._on_auth_response,
    pp.Stls: PopSession._on_stls,
    pp.Retrieve: PopSession._on_retrieve,
    pp.Update: PopSession._on_update,
}
