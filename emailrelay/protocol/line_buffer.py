"""The input buffer and the outbox shared by the sans-IO SMTP and POP3 servers.

What it is for: both servers append received bytes to one buffer that they
parse from a moving start position, and queue replies in an outbox that the
I/O layer drains with ``data_to_send``. Pure code, no I/O.

Guarantees: ``_append`` keeps every unparsed byte in order and drops the
parsed prefix at most once per call (no quadratic copying while a client
pipelines); ``data_to_send`` returns each queued byte exactly once.
"""

from __future__ import annotations


class LineBuffer:
    """Base of SmtpServer and Pop3Server: see the module docstring."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0  # start of the unparsed part of _buf
        self._out: list[bytes] = []

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
