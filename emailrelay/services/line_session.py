"""The asyncio plumbing shared by the SMTP and POP server sessions.

What it is for: both sessions drive a sans-IO protocol object (``proto``,
with ``receive_data``/``data_to_send``) from an ``asyncio.Protocol``; this
base holds what they do alike — feeding received bytes (or keeping them
aside while ``start_tls`` finishes), flow control (reading pauses while the
peer does not read or while a slow decision runs), writing with
``tx>>:`` tracing, ``rx<<:`` tracing and the idle timer.

Guarantees: reading is paused whenever writing is paused or a decision task
runs, and resumed only when neither holds; nothing is written to a closing
transport; traces never contain the line ends. Subclasses provide
``_pump`` (take protocol events), ``_idle_check`` (what an idle timeout
does) and ``_log_address`` (the address shown in log lines, or None).
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import Any

from .. import log as logmod


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

    def _trace_tx(self, data: bytes) -> None:
        for line in data.split(b"\r\n"):
            if line:
                self.log.verbose(f'tx>>: "{line.decode("utf-8", "replace")}"', self._log_address())

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
