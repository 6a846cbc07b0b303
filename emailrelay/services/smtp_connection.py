"""An outgoing SMTP connection: asyncio glue around the sans-IO SMTP client.

What it is for: the forwarder (and ``--immediate``) open one of these per
next hop and drive it message after message; it moves bytes between the
socket and :class:`~emailrelay.protocol.smtp_client.SmtpClient` and hands
the client's events out one at a time, with the reference guide's timeouts.

Guarantees: TCP_NODELAY is set (no Nagle/delayed-ACK stall after the final
dot — upstream's 42 ms); every wait has a timeout (``--connection-timeout``
to connect, ``--response-timeout`` per reply and per blocked write of the
content, upstream's "flow-control timeout"); a timeout, reset or
protocol garbage surfaces as :class:`ConnectionTrouble`, never as a hang;
outgoing content respects the transport's write buffer (bounded memory), and
stops when the connection is reset (``peer disconnected: <the system's
words>``, as upstream's).
Failures are worded and logged as E-MailRelay 2.6b words and logs them
(``connect failure: cannot connect to <the resolved address>``, ``smtp
error: unexpected response[: <text>]`` after the warning ``client protocol:
unexpected response [...]``, ``tls: tls error: SSL_connect(): [<openssl
error>]`` then ``peer disconnected: ssl connect``, the authentication
errors), and the EHLO name is ``--domain`` when it has a dot, else the
connection's local address.  Authentication tries every mechanism both
sides can do, strongest first, until one succeeds (``<failure>: trying
[<next>]``), as upstream's.  A TLS handshake that fails (STARTTLS or
``--client-tls-connection``, both by ``loop.start_tls``) sends the next hop
OpenSSL's alert first, as upstream's (:class:`~emailrelay.auth.tls.Alerts`).
Traced lines are cut as upstream cuts log lines (by the log,
:func:`emailrelay.log.cut`), and the first reply line over 1000 octets in a
process gets upstream's warning ``very long line detected``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

from .. import log as logmod
from ..auth import tls
from ..errors import UsageError
from ..protocol import smtp_client as sc
from ..transport_address import split_next_hop
from .listeners import format_address
from .security import ClientSecurity
from .socks import SocksProxy, open_via_socks, parse_forward_to

_long_line_warned = False  # upstream warns of a long reply line once per process


def _warn_long_line(log: Any, client: sc.SmtpClient) -> None:
    """Upstream's warning of a reply line over 1000 octets: the first in the process, traced or not."""
    global _long_line_warned
    if client.long_line is not None and not _long_line_warned:
        _long_line_warned = True
        log.warning(f"very long line detected: {client.long_line} > {sc.LONG_REPLY_LINE}")


def error_text(reply: sc.Reply) -> str:
    """E-MailRelay 2.6b's error text of a reply: none for a 2xx, else its lines (``error`` when empty)."""
    if reply.is_positive():
        return ""
    return "\n".join(reply.lines) or "error"


class ConnectionTrouble(Exception):
    """Could not connect (``connect``: DNS or TCP, the message was never offered), or the session
    failed (``session``: an unexpected reply, a timeout, a dropped connection, TLS, authentication)."""

    def __init__(self, reason: str, reply: sc.Reply | None = None, kind: str = "session") -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.kind = kind

    @property
    def connect_failure(self) -> bool:
        return self.kind == "connect"


def reply_text(reply: sc.Reply) -> str:
    """A reply's text as E-MailRelay 2.6b quotes it: the lines without the code, joined by ``\\n``."""
    return "\\n".join(reply.lines)


def _tls_error(exc: BaseException) -> str:
    """``SSL_connect(): [error:0A000086:SSL routines::certificate verify failed]``: OpenSSL's words,
    without Python's verification detail."""
    text = tls.openssl_error(exc)
    detail = getattr(exc, "verify_message", None)
    if detail and text.endswith(f": {detail}"):
        text = text[: -len(detail) - 2]
    return f"SSL_connect(): [{text}]"


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, owner: SmtpConnection) -> None:
        self.owner = owner
        self._drain_waiter: asyncio.Future[None] | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self.owner
        owner.transport = cast(asyncio.Transport, transport)
        owner.protocol = self
        peer = transport.get_extra_info("peername")
        owner.peer = format_address(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else owner.hop
        local = transport.get_extra_info("sockname")
        if not owner.helo_fixed:  # no dotted --domain: the local address, bare, as upstream sends it
            owner.client.set_helo_name(str(local[0]) if isinstance(local, tuple) else "localhost")
        if not owner.tls_up():  # implicit TLS: the handshake is done, and upstream says so first
            owner.tls_refused = True  # (a wrong peer name: as a failed handshake, see open())
            return
        owner.log.info(f"smtp connection to {owner.peer}")
        if owner.on_network is not None:
            owner._local = format_address(str(local[0]), int(local[1])) if isinstance(local, tuple) else ""
            owner.on_network("out", "start", owner._local, owner.peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.owner._feed(data)

    def eof_received(self) -> bool:
        self.owner._feed(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(exc)
        self._wake_drain()
        if self.owner.on_network is not None:
            self.owner.on_network("out", "stop", self.owner._local, self.owner.peer)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        w, self._drain_waiter = self._drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    async def drain(self) -> None:
        if self.paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter


class _HeldUntilTls(asyncio.Protocol):
    """The protocol of a ``--client-tls-connection`` socket until its handshake is done: keeps what
    arrives meanwhile (the standard loop delivers the first data as the handshake ends), for
    the session's protocol."""

    def __init__(self) -> None:
        self._events: list[tuple[str, Any]] = []

    def data_received(self, data: bytes) -> None:
        self._events.append(("data_received", data))

    def eof_received(self) -> bool:
        self._events.append(("eof_received", None))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._events.append(("connection_lost", exc))

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        for name, arg in self._events:
            getattr(protocol, name)(*(() if name == "eof_received" else (arg,)))
        self._events = []


class SmtpConnection:
    """One client session to one next hop."""

    def __init__(
        self,
        hop: str,
        config: sc.ClientConfig,
        *,
        response_timeout: float,
        trace: bool,
        selector: str = "",
        prompt_timeout: float | None = None,
    ) -> None:
        self.hop = hop
        self.client = sc.SmtpClient(config, trace=trace)
        self.response_timeout = response_timeout
        self.prompt_timeout = prompt_timeout  # --prompt-timeout: then go ahead without a greeting
        self.trace = trace
        self.log = logmod.get().session()  # msgid: set by the forwarder per message
        self.transport: asyncio.Transport | None = None
        self.protocol: _ClientProtocol | None = None
        self._events: collections.deque[sc.Event] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost_reason: str | None = None
        self.capabilities: sc.Capabilities | None = None
        self.messages = 0
        self.selector = selector
        self.encrypted = False
        self.tls_refused = False
        self._implicit = False  # --client-tls-connection: the protocol waits for the handshake
        self._leaving = False  # QUIT sent, or closed by us: the peer's end of file is expected
        self.authenticated_as: str | None = None
        # (direction, "start"|"stop", local, peer): the admin's status and notify (E-MailRelay's "OUT")
        self.on_network: Callable[[str, str, str, str], None] | None = None
        self._local = ""
        self.peer = hop  # the address connected to, once connected
        self.helo_fixed = bool(config.helo_name)
        self.replies = 0  # events received: none since a point means nothing came back
        self.eightbit_warned = False  # the forwarder's 8BITMIME warning: once per connection, as upstream

    @property
    def usable(self) -> bool:
        return (
            self.transport is not None
            and not self.transport.is_closing()
            and self._lost_reason is None
            and self.client.state == sc.State.READY
        )

    async def open(
        self,
        connection_timeout: float,
        local_address: str | None = None,
        security: ClientSecurity | None = None,
    ) -> sc.Capabilities:
        loop = asyncio.get_running_loop()
        implicit = security.tls_context if security is not None and security.tls_implicit else None
        self._implicit = implicit is not None
        host_for_tls: str | None = None
        coro: Coroutine[Any, Any, tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]
        if self.hop.startswith("/"):
            coro = loop.create_unix_connection(self._new_protocol, self.hop)
        else:
            try:
                target, proxy = parse_forward_to(self.hop)
                host, port = split_next_hop(target)
            except (ValueError, UsageError) as exc:
                # (a connection failure: the message stays where it is, as upstream leaves it)
                raise ConnectionTrouble(
                    f"invalid next hop address [{self.hop}]: {exc}", kind="connect"
                ) from None
            host_for_tls = host
            if proxy is not None:
                coro = self._via_socks(proxy, host, port, connection_timeout, local_address)
            elif local_address:
                coro = self._bound_connect(host, port, local_address)
            else:
                coro = loop.create_connection(self._new_protocol, host, port)
        if implicit is not None:
            coro = self._tls_at_connect(coro, implicit, host_for_tls or "localhost")
        try:
            transport, _ = await asyncio.wait_for(coro, connection_timeout)
        except TimeoutError:
            raise ConnectionTrouble(
                f"connect failure: cannot connect to {self.hop}: timed out out after {connection_timeout:g}s",
                kind="connect",
            ) from None  # ("out out": upstream's words)
        except ssl.SSLError as exc:  # implicit TLS: connected, but the handshake failed
            self.log.warning(f"tls: tls error: {_tls_error(exc)}")
            raise ConnectionTrouble("peer disconnected: ssl connect") from None
        except socket.gaierror as exc:
            name = self.hop.rsplit(":", 1)[0] if not self.hop.startswith("/") else self.hop
            text = (exc.strerror or str(exc)).lower()
            raise ConnectionTrouble(f'dns error: no such host: "{name}" ({text})', kind="connect") from None
        except OSError as exc:
            # as E-MailRelay 2.6b: a unix domain connect fails at once, with the reason; a TCP one
            # fails later, without it
            why = f": {exc.strerror.lower()}" if self.hop.startswith("/") and exc.strerror else ""
            raise ConnectionTrouble(
                f"connect failure: cannot connect to {await self._resolved()}{why}", kind="connect"
            ) from None
        if self.tls_refused:
            raise ConnectionTrouble("peer disconnected: ssl connect")
        transport = cast(asyncio.Transport, transport)
        # (default write-buffer limits: changing them before start_tls() stalls uvloop's TLS handshake)
        caps = await self._session_ready()
        if security is not None:
            caps = await self._secure(caps, security, host_for_tls)
        self.capabilities = caps
        return caps

    async def _resolved(self) -> str:
        """The address a TCP next hop's name resolves to first (upstream names it when a connect
        fails: ``localhost:25`` is ``127.0.0.1:25``); the hop as written when there is none."""
        if self.hop.startswith("/"):
            return self.hop
        try:
            target, proxy = parse_forward_to(self.hop)
            host, port = split_next_hop(target)
            if proxy is not None:
                return self.hop
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            address = infos[0][4]
            return format_address(str(address[0]), int(address[1]))
        except (OSError, ValueError, UsageError, IndexError):
            return self.hop

    async def _await_greeting(self, timeout: float) -> None:
        """Wait ``timeout`` seconds for the greeting (or anything); then send EHLO without it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._events and self._lost_reason is None and self.client.state == sc.State.GREETING:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.log.warning(f"timeout: no greeting from remote server after {timeout:g}s: continuing")
                self.client.skip_greeting()
                self._collect()
                return
            self._waiter = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._waiter, remaining)

    async def _bound_connect(
        self, host: str, port: int, local_address: str
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """``--client-interface``: a socket of the interface's family, bound to it, connected to the
        next hop's first address of that family.  As E-MailRelay 2.6b: a next hop address of the
        other family is ``invalid address family``, a name without an address of that family a
        ``dns error: no such ipv<N> host``, an address that cannot be bound ``socket bind error``."""
        loop = asyncio.get_running_loop()
        try:
            local = ipaddress.ip_address(local_address.partition("%")[0])
        except ValueError:  # not an address: asyncio says what is wrong with it
            return await loop.create_connection(self._new_protocol, host, port, local_addr=(local_address, 0))
        family = socket.AF_INET6 if local.version == 6 else socket.AF_INET
        try:
            literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and literal.version != local.version:
            raise ConnectionTrouble("invalid address family", kind="connect")
        try:
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
            bind_to = socket.getaddrinfo(
                local_address, 0, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
            )
        except socket.gaierror as exc:
            text = (exc.strerror or str(exc)).lower()
            raise ConnectionTrouble(
                f'dns error: no such ipv{local.version} host: "{host}" ({text})', kind="connect"
            ) from None
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                sock.bind(bind_to[0][4])
            except OSError as exc:
                raise ConnectionTrouble(
                    f"socket bind error: {(exc.strerror or str(exc)).lower()}", kind="connect"
                ) from None
            await loop.sock_connect(sock, infos[0][4])
        except BaseException:
            sock.close()
            raise
        return await loop.create_connection(self._new_protocol, sock=sock)

    async def _via_socks(
        self,
        proxy: SocksProxy,
        host: str,
        port: int,
        timeout: float,
        local_address: str | None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """``--forward-to host:port@proxy:port``: connect through a SOCKS 4a (or ``socks5://``) proxy."""
        sock = await open_via_socks(
            proxy.host,
            proxy.port,
            host,
            port,
            version=proxy.version,
            timeout=timeout,
            local_address=local_address,
        )
        return await asyncio.get_running_loop().create_connection(self._new_protocol, sock=sock)

    def _new_protocol(self) -> asyncio.Protocol:
        """The connected socket's protocol: the session's, or with ``--client-tls-connection`` one that
        holds what arrives until :meth:`_tls_at_connect` has made the session's."""
        return _HeldUntilTls() if self._implicit else _ClientProtocol(self)

    async def _tls_at_connect(
        self,
        connecting: Coroutine[Any, Any, tuple[asyncio.BaseTransport, asyncio.BaseProtocol]],
        context: ssl.SSLContext,
        host: str,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """``--client-tls-connection``: the handshake on the connected socket, by ``start_tls`` rather
        than the loop's ``ssl=``, so that a failed one sends the next hop its alert (:class:`tls.Alerts`);
        the session's protocol is then made as the loop would make it, and given what came meanwhile."""
        transport, held = await connecting
        assert isinstance(held, _HeldUntilTls)
        with tls.Alerts(transport) as alerts:
            try:
                tls_transport = await asyncio.get_running_loop().start_tls(
                    transport, held, context, server_hostname=host
                )
            except BaseException as exc:
                alerts.send(exc)
                transport.abort()
                raise
        if tls_transport is None:  # (closed meanwhile)
            raise ConnectionResetError("connection closed during the tls handshake")
        protocol = _ClientProtocol(self)
        tls_transport.set_protocol(protocol)
        protocol.connection_made(tls_transport)
        held.hand_over(protocol)
        return tls_transport, protocol

    async def _session_ready(self) -> sc.Capabilities:
        if self.prompt_timeout is not None and self.prompt_timeout > 0:  # as upstream: the greeting
            await self._await_greeting(self.prompt_timeout)  # has --prompt-timeout, not --response-timeout
        while True:
            event = await self.next_event()
            if isinstance(event, sc.SessionReady):
                return event.capabilities
            if isinstance(event, sc.SessionFailed):
                self.close()
                raise self.trouble(event)

    async def _secure(
        self, caps: sc.Capabilities, security: ClientSecurity, host: str | None
    ) -> sc.Capabilities:
        """STARTTLS when wanted and offered (or required), then AUTH with the client account."""
        if security.tls_context is not None and not self.encrypted:
            if caps.starttls:
                caps = await self._starttls(security.tls_context, host)
            elif security.tls_required:
                self.close()
                raise ConnectionTrouble("smtp error: tls is mandated but the server cannot do starttls")
        if (self.selector or security.secrets is not None) and (
            security.secrets is None or security.secrets.client_account(self.selector) is None
        ):  # a message's ClientAccountSelector with no client line, or --client-auth without a
            self.close()  # default one for a message without a selector: upstream's session error
            raise ConnectionTrouble(f"no client authentication account: selector [{self.selector}]")
        if security.secrets is not None:
            await self._authenticate(caps, security)
        return caps

    async def _starttls(self, context: ssl.SSLContext, host: str | None) -> sc.Capabilities:
        self.client.starttls()
        self._collect()
        event = await self.next_event()
        if not isinstance(event, sc.StartTlsReady):
            self.close()
            if isinstance(event, sc.SessionFailed):
                raise self.trouble(event)
            raise ConnectionTrouble("smtp error: unexpected response")
        assert self.transport is not None and self.protocol is not None
        with tls.Alerts(self.transport) as alerts:  # (a failed handshake's alert reaches the next hop)
            try:
                new_transport = await asyncio.get_running_loop().start_tls(
                    self.transport, self.protocol, context, server_hostname=host, ssl_handshake_timeout=30.0
                )
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                alerts.send(exc)
                self.abort()
                self.log.warning(f"tls: tls error: {_tls_error(exc)}")
                raise ConnectionTrouble("peer disconnected: ssl connect") from None
        self.transport = cast(asyncio.Transport, new_transport)
        if not self.tls_up():
            raise ConnectionTrouble("peer disconnected: ssl connect")
        self.client.tls_established()
        self._collect()
        return await self._session_ready()

    def tls_up(self) -> bool:
        """Log the TLS session once there is one (upstream's words); with ``--client-tls-verify-name``
        first the name check, as E-MailRelay 2.6b: a wrong name aborts the connection (``False``)."""
        if self.transport is None or self.encrypted:
            return True
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            checked = tls.check_peer_name(ssl_object)
            if checked is not None:
                subject, required, ok = checked
                self.log.info(
                    f"tls: certificate-subject=[{subject}] required-peer-name=[{required}] ok={int(ok)}"
                )
                if not ok:
                    self.log.warning(f"tls: tls error: {tls.VERIFY_FAILED}")
                    self.abort()
                    return False
            self.encrypted = True
            cipher = ssl_object.cipher()
            self.log.info(
                f"tls protocol established with {self.peer} protocol {ssl_object.version()} "
                f"cipher {cipher[0] if cipher else ''}"
            )
        return True

    async def _authenticate(self, caps: sc.Capabilities, security: ClientSecurity) -> None:
        # here, not at the top: only with --client-auth, which services/preload.py then preloads
        from ..auth.secrets import TokenError, fetch_oauth_token
        from ..protocol.sasl import SaslClient, choose_client_mechanism

        assert security.secrets is not None
        account = security.secrets.client_account(self.selector)
        if account is None or account.is_empty:
            return  # no account for this selector, or "client plain:b = =": no authentication
        if not caps.auth:
            self.close()
            raise ConnectionTrouble("smtp error: authentication is not supported by the remote smtp server")
        # E-MailRelay 2.6b's client follows the m:/x: lists of --client-auth-config also over TLS
        # (after STARTTLS or with --client-tls-connection) and never the a:/d: ones the guide describes
        mechanism = choose_client_mechanism(caps.auth_mechanisms, account, security.auth_config)
        if mechanism is None:
            self.close()
            raise ConnectionTrouble(
                "smtp error: cannot do authentication: check for a compatible client secret"
            )
        if account.needs_token:
            try:
                account = await asyncio.get_running_loop().run_in_executor(None, fetch_oauth_token, account)
            except TokenError as exc:  # ours (upstream has no oauth:cmd): nothing was offered, as a
                self.close()  # connection failure the message is left for the next try
                raise ConnectionTrouble(str(exc), kind="connect") from None
        # E-MailRelay 2.6b tries each mechanism both sides can do, strongest first, until one
        # succeeds; its reason names the mechanism and secret last used to answer (none before the
        # secret was first sent: "authentication failed : [<reply>]"), so the text may name an
        # earlier mechanism than the one whose reply it quotes, as upstream's does
        tried: list[str] = []
        how = ""
        while True:
            tried.append(mechanism)
            sasl = SaslClient(mechanism, account)
            initial = sasl.initial_response()
            self.client.start_auth(mechanism, initial, show=mechanism.upper() == "LOGIN")
            self._collect()
            this = _how(mechanism, account)
            if initial is not None and mechanism.upper() != "LOGIN":  # (LOGIN's is the user name)
                how = this
            refused = await self._auth_exchange(sasl, this)
            if refused is None:
                self.authenticated_as = account.user
                over = "over tls " if self.encrypted else ""
                self.log.verbose(f"successful authentication with remote server {over}{this}")
                return
            reply, how = refused[0], refused[1] or how
            failure = f"smtp error: authentication failed {how}: [{reply_text(reply)}]"
            offered = [m for m in caps.auth_mechanisms if m.upper() not in tried]
            mechanism = choose_client_mechanism(offered, account, security.auth_config)
            if mechanism is None:
                self.close()
                raise ConnectionTrouble(failure)
            self.log.verbose(f"{failure}: trying [{mechanism.lower()}]")

    async def _auth_exchange(self, sasl: Any, how: str) -> tuple[sc.Reply, str] | None:
        """One AUTH exchange after its command: ``None`` when it succeeded, else the refusal and
        ``how`` once a challenge was answered (the secret sent), empty before."""
        used = ""
        while True:
            event = await self.next_event()
            if isinstance(event, sc.AuthChallenge):
                self.client.auth_response(sasl.respond(event.payload))
                self._collect()
                used = how
            elif isinstance(event, sc.AuthDone):
                return None if event.success else (event.reply, used)
            elif isinstance(event, sc.SessionFailed):
                self.close()
                raise self.trouble(event)

    # ---- byte plumbing ---------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self.client.receive_data(data)
        self._collect()

    def _collect(self) -> None:
        client = self.client
        while True:
            event = client.next_event()
            if event is sc.NEED_DATA:
                break
            self._events.append(event)  # type: ignore[arg-type]
        self._flush()
        if self._events:
            self._wake()

    def _lost(self, exc: Exception | None) -> None:
        if self._lost_reason is None:
            if self.encrypted and not self._leaving:
                # as E-MailRelay 2.6b: its SSL_read() fails; a bare end of file is "unexpected eof" (a
                # peer's close_notify comes as eof_received() first: trouble(), without the warning)
                eof = ssl.SSLEOFError()
                self.log.warning(f"tls: tls error: SSL_read(): [{tls.openssl_error(exc or eof)}]")
                self._lost_reason = "peer disconnected: ssl read"
            else:  # upstream's words add the system's when a read or write failed
                why = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else ""
                self._lost_reason = f"peer disconnected: {why}" if why else "peer disconnected"
        self._wake()

    def trouble(self, event: sc.SessionFailed) -> ConnectionTrouble:
        """The session failed: E-MailRelay 2.6b's words for it (and its warning for a reply that
        makes no sense at that point)."""
        if event.reply is not None:
            self.log.warning(f"client protocol: unexpected response [{reply_text(event.reply)}]")
            text = error_text(event.reply)  # (a line break: the envelope writes it as \n)
            return ConnectionTrouble(
                f"smtp error: unexpected response{': ' if text else ''}{text}", event.reply
            )
        if event.reason == "connection closed by the server":  # over TLS: after the peer's close_notify
            return ConnectionTrouble("peer disconnected: ssl read" if self.encrypted else "peer disconnected")
        return ConnectionTrouble(f"smtp error: {event.reason}")

    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def _flush(self) -> None:
        data = self.client.data_to_send()
        _warn_long_line(self.log, self.client)
        if self.trace:
            for direction, text in self.client.drain_trace():
                text = logmod.traced(text)  # as upstream: "\\\\", "\\t", "\\0" (other control bytes: the log)
                self.log.verbose(  # (a long one cut as upstream cuts it: log.cut)
                    f'{direction}{">>" if direction == "tx" else "<<"}: "{text}"'
                    if not text.startswith(("[", '"'))  # (a BDAT's trace is quoted already)
                    else f"{direction}>>: {text}"
                )
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def next_event(self) -> sc.Event:
        while not self._events:
            if self._lost_reason is not None:
                raise ConnectionTrouble(self._lost_reason)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, self.response_timeout)
            except TimeoutError:
                self.abort()
                raise ConnectionTrouble(
                    f"smtp error: response timeout after {self.response_timeout:g}s"
                ) from None
        event = self._events.popleft()
        if not isinstance(event, sc.SessionFailed) or event.reply is not None:
            self.replies += 1  # the next hop answered something
        return event

    async def send_content(self, chunk: bytes, *, last: bool = False) -> None:
        """A chunk of the content; ``last``: the whole (rest of the) content, ended in the same
        write (DATA's final dot or the last BDAT): one system call for a small message."""
        self._check_lost()
        self.client.send_content(chunk)
        if last:
            self.client.end_content()
        self._collect()
        if self.protocol is not None and self.protocol.paused:
            try:  # a next hop that stops reading: upstream's --response-timeout, as for a reply
                await asyncio.wait_for(self.protocol.drain(), self.response_timeout)
            except TimeoutError:
                self.abort()
                raise ConnectionTrouble(
                    f"smtp error: flow-control timeout after {self.response_timeout:g}s"
                ) from None

    def _check_lost(self) -> None:
        """The connection broke (a reset) and nothing the next hop said is still to be read: no more
        content goes, and none is traced (upstream traces the content once it is written)."""
        if self._lost_reason is not None and not self._events:
            raise ConnectionTrouble(self._lost_reason)

    def end_content(self) -> None:
        self._check_lost()
        self.client.end_content()
        self._collect()

    def send_envelope(self, *args: Any, **kwargs: Any) -> None:
        self.client.send_envelope(*args, **kwargs)
        self._collect()

    async def quit(self) -> None:
        self._leaving = True
        if self.usable:
            try:
                self.client.quit()
                self._collect()
                while True:
                    event = await asyncio.wait_for(self.next_event(), 2.0)
                    if isinstance(event, sc.Closed | sc.SessionFailed):
                        break
            except (ConnectionTrouble, TimeoutError):
                pass
        self.close()

    def close(self) -> None:
        self._leaving = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._leaving = True
        if self.transport is not None:
            self.transport.abort()


def _how(mechanism: str, account: Any) -> str:
    """``using mechanism [plain] and plaintext secret for [me] from line 1``, as upstream logs it."""
    return f"using mechanism [{mechanism.lower()}] and {_secret_text(account)}"


def _secret_text(account: Any) -> str:
    """``plaintext secret for [me] from line 1``: which secret was used, as upstream logs it."""
    kind = {"plain": "plaintext", "md5": "md5"}.get(account.kind, account.kind)
    line = f" from line {account.line}" if getattr(account, "line", 0) else ""
    return f"{kind} secret for [{account.user}]{line}"
