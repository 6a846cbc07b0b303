"""The input buffer, the outbox and the event queue shared by the sans-IO SMTP and POP3 servers.

What it is for: both servers append received bytes to one buffer that they
parse from a moving start position, queue replies in an outbox that the
I/O layer drains with ``data_to_send``, and queue events for
``next_event``; an event that needs the service's decision (a password
check, the end of data...) stays *pending* until the service resolves it.
Pure code, no I/O.

Guarantees: ``_append`` keeps every unparsed byte in order and drops the
parsed prefix at most once per call (no quadratic copying while a client
pipelines); ``data_to_send`` returns each queued byte exactly once; at most
one decision is pending, and resolving one that is not pending (or of the
wrong kind) is a :class:`LocalProtocolError`, never a silent no-op.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class LocalProtocolError(Exception):
    """The service used the state machine wrongly (never caused by peer input)."""


class LineBuffer:
    """Base of SmtpServer and Pop3Server: see the module docstring."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0  # start of the unparsed part of _buf
        self._out: list[bytes] = []
        self._events: deque[Any] = deque()
        self._pending: Any = None  # the event waiting for the service's decision

    def _queued_event(self, decisions: tuple[type, ...]) -> Any:
        """The next queued event, or None; one of ``decisions`` becomes the pending decision."""
        if not self._events:
            return None
        ev = self._events.popleft()
        if isinstance(ev, decisions):
            self._pending = ev
        return ev

    def _pending_decision(self, *allowed: type) -> Any:
        """The pending decision (still pending); LocalProtocolError when there is none, or of
        another kind than ``allowed`` (any kind when none is given)."""
        ev = self._pending
        if ev is None:
            raise LocalProtocolError("no decision is pending")
        if allowed and not isinstance(ev, allowed):
            raise LocalProtocolError(f"{type(ev).__name__} cannot be resolved this way")
        return ev

    def _append(self, data: bytes) -> None:
        if type(data) is not bytes:
            data = bytes(data)
        if self._pos:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        elif self._buf:
            self._buf += data
        else:
            self._buf = data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out
