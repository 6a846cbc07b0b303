"""The asyncio plumbing shared by the SMTP and POP server sessions.

What it is for: both sessions drive a sans-IO protocol object (``proto``,
with ``receive_data``/``data_to_send``) from an ``asyncio.Protocol``; this
base holds what they do alike — feeding received bytes (or keeping them
aside while ``start_tls`` finishes), flow control (reading pauses while the
peer does not read or while a slow decision runs), writing with
``tx>>:`` tracing, ``rx<<:`` tracing and the idle timer.

Guarantees: reading is paused whenever writing is paused or a decision task
runs, and resumed only when neither holds; nothing is written to a closing
transport; traces never contain the line ends, and show a reply's octets as
they were sent (those that are not UTF-8 too); a client that went away is
named in E-MailRelay 2.6b's words (:meth:`LineSession._peer_gone`, for both
servers' closing lines). Subclasses provide
``_pump`` (take protocol events), ``_idle_check`` (what an idle timeout
does) and ``_log_address`` (the address shown in log lines, or None).
"""

from __future__ import annotations

import abc
import asyncio
import ssl
import time
from typing import Any, cast

from .. import log as logmod
from ..auth import tls

#: loop turns it takes a connection that a listening server accepted to reach ``connection_made``
#: (uvloop: one, a queued callback; the standard loop: two, the accepting task then a queued callback)
ACCEPTED_SETTLE_TURNS = 3


async def let_accepted_connections_in() -> None:
    """After closing a listening server: run the loop until the connections it had already accepted
    are made.  ``close()`` stops new accepts, but one accepted in the loop's last poll reaches
    ``connection_made`` through a callback still queued behind the closing task; a stop that
    counted its sessions at once would not wait for it, return, and exit with the session in
    progress (served a few commands during the event loop's teardown, then cut: a graceful
    restart that drops a client)."""
    for _ in range(ACCEPTED_SETTLE_TURNS):
        await asyncio.sleep(0)


#: seconds a client has to finish a TLS handshake (STARTTLS, STLS, or TLS at connect)
TLS_HANDSHAKE_TIMEOUT = 30.0
#: what a failed server-side handshake raises (a timeout, a protocol error, a vanished peer)
TLS_HANDSHAKE_ERRORS = (OSError, ssl.SSLError, TimeoutError, ConnectionError)


class LineSession(asyncio.Protocol, abc.ABC):
    """Base of SmtpSession and PopSession: see the module docstring."""

    proto: Any

    def __init__(self, log: logmod.Logger, idle_timeout: float) -> None:
        self.log = log
        self.transport: asyncio.Transport | None = None
        self._idle_timeout = idle_timeout
        self._task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._closing = False  # we are ending the session (QUIT, too many errors, timeout)
        self._last_activity = time.monotonic()
        self._idle_handle: asyncio.TimerHandle | None = None
        # decrypted bytes that arrive while start_tls() is finishing (TLS 1.3 clients send their
        # first command together with the handshake's end); plaintext never gets here: reading
        # is paused the moment STARTTLS/STLS is accepted
        self._tls_early: list[bytes] | None = None
        self.encrypted = False  # TLS is up (the subclass sets it)
        self._peer_eof = False  # the peer ended its side (over TLS: with its close_notify)

    # ---- subclass hooks ------------------------------------------------------------
    @abc.abstractmethod
    def _pump(self) -> None:
        """Take events from the protocol until it needs data or a slow decision."""

    @abc.abstractmethod
    def _idle_check(self) -> None:
        """The idle timer fired: end the session if it really was idle, else re-arm."""

    def _log_address(self) -> str | None:
        return None

    # ---- asyncio.Protocol ------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._last_activity = time.monotonic()
        if self._tls_early is not None:
            self._tls_early.append(bytes(data))
            return
        self.proto.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        self._peer_eof = not self.encrypted or self._close_notify_received()
        self.proto.receive_data(b"")
        self._pump()
        return False

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
        self._pump()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close_notify_received(self) -> bool:
        """At an end of file over TLS: whether the peer sent its close_notify.  The standard loop
        reports a bare end of file as an end of file too (uvloop: only as the connection's loss);
        after a close_notify a read ends cleanly, after a bare end of file it would wait for more."""
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        if ssl_object is None:
            return True
        try:
            return not ssl_object.read(1)
        except ssl.SSLZeroReturnError:
            return True
        except (ssl.SSLError, ValueError):
            return False

    def _peer_gone(self, exc: Exception | None) -> str:
        """The reason in the closing line when the client went away (``exc``: connection_lost's),
        in E-MailRelay 2.6b's words, and over TLS its warning first when the client left without a
        close_notify (its SSL_read() fails; a close_notify is an end of file, a reset is no warning)."""
        if self.encrypted:
            if not isinstance(exc, ConnectionResetError) and (exc is not None or not self._peer_eof):
                error = tls.openssl_error(exc or ssl.SSLEOFError())
                self.log.warning(f"tls: tls error: SSL_read(): [{error}]", self._log_address())
            return "peer disconnected: ssl read"
        # the system's words when a read failed ("connection reset by peer"), as upstream's
        why = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else ""
        return f"peer disconnected: {why}" if why else "peer disconnected"

    # ---- TLS upgrade --------------------------------------------------------------
    async def _server_tls(self, context: ssl.SSLContext) -> asyncio.Transport | BaseException | None:
        """The server side of a TLS upgrade of this session's connection, for all three cases:
        SMTP's ``STARTTLS``, POP's ``STLS`` and SMTP's TLS at connect (``--server-tls-connection``).

        Returns the TLS transport, now :attr:`transport` (reading afresh); or the handshake's error
        (nothing is logged or closed here: each caller logs its own lines and ends the session its
        way; OpenSSL's alert has been sent to the client, :class:`~emailrelay.auth.tls.Alerts`); or
        None when the connection went away.  Bytes decrypted before it returns are kept
        aside: the caller feeds them, with :meth:`_take_tls_early`, once its protocol knows that
        TLS is up."""
        assert self.transport is not None
        self._tls_early = []
        with tls.Alerts(self.transport) as alerts:  # a failed handshake's alert reaches the client
            try:
                new_transport = await asyncio.get_running_loop().start_tls(
                    self.transport,
                    self,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                )
            except TLS_HANDSHAKE_ERRORS as exc:
                alerts.send(exc)
                self._tls_early = None
                return exc
        if new_transport is None:
            self._tls_early = None
            return None
        self.transport = cast(asyncio.Transport, new_transport)
        self._reading_paused = False  # the TLS transport reads afresh
        return self.transport

    def _take_tls_early(self) -> list[bytes]:
        """What arrived during the handshake (see :meth:`_server_tls`); from now on bytes go to ``proto``."""
        early, self._tls_early = self._tls_early or [], None
        return early

    # ---- plumbing ---------------------------------------------------------------
    def _update_reading(self) -> None:
        want_pause = self._writing_paused or self._task is not None
        if self.transport is None or self.transport.is_closing():
            return
        if want_pause and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
        elif not want_pause and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False

    def _send_now(self, data: bytes) -> None:
        assert self.transport is not None
        if self.log.verbose_on:
            self._trace_tx(data)
        self.transport.write(data)

    def _flush(self) -> None:
        data = self.proto.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self._send_now(data)

    def _trace_tx(self, data: bytes, addressed: bool = True) -> None:
        """``addressed=False``: without the address, as upstream logs a reply made once a slow decision is done."""
        address = self._log_address() if addressed else None
        for line in data.split(b"\r\n"):
            if line:
                # (octets that are not UTF-8, a filter's or verifier's, logged as they were sent)
                self.log.verbose(f'tx>>: "{line.decode("utf-8", "surrogateescape")}"', address)

    def _trace_rx(self, line: str) -> None:
        if line:
            self.log.verbose(f'rx<<: "{line}"', self._log_address())

    def _arm_idle_timer(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._idle_timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        due = self._last_activity + self._idle_timeout
        self._idle_handle = loop.call_at(loop.time() + max(0.0, due - time.monotonic()), self._idle_check)
