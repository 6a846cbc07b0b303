"""Outgoing message content: canonical line ends, dot-stuffing, BDAT framing.

What it is for: turning the bytes of a stored content file into what the SMTP
client puts on the wire, chunk by chunk, without ever holding the message:

- :class:`Canonicaliser` rewrites every bare LF and every bare CR (one that
  is not part of a CRLF) as CRLF and keeps line statistics.  This is the
  outbound SMTP-smuggling defence: whatever a stored message holds
  (``"\\n.\\n"``, ``"\\r.\\r"``, ``"\\r\\n.\\n"``, ``"\\n.\\r\\n"``, NULs ...)
  the output has no bare CR or LF at all, so strict and lenient receivers
  alike see the same lines, and exactly one message.
- :class:`DataEncoder` is the DATA phase: canonical line ends, dot-stuffing,
  and the terminating ``".\\r\\n"``.
- :class:`BdatEncoder` is the CHUNKING phase: ``BDAT <n>`` framing, raw for
  BINARYMIME, canonical line ends otherwise, no dot-stuffing.
- :class:`ContentScanner` / :func:`content_problems` pre-scan a content file
  so the forwarder can refuse a message *before* MAIL FROM (a line over 998
  octets cannot be sent and a half-sent message cannot be taken back).

What it expects: ``bytes`` chunks of any size, split anywhere (a CR at the
end of one chunk and an LF at the start of the next are one CRLF; a "." at
the start of a chunk after a line end is stuffed).  No I/O, no clocks.

What it guarantees: the output for a given content is the same however it
was chunked; all work is done with bulk ``bytes`` operations (count, find,
replace), never a Python loop over the octets; memory is bounded by the
chunk size.  The canonical content always ends with CRLF unless it is empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_LINE_LENGTH = 998  # RFC 5321 4.5.3.1.6, octets excluding the CRLF

__all__ = [
    "MAX_LINE_LENGTH",
    "BdatEncoder",
    "Canonicaliser",
    "ContentInfo",
    "ContentScanner",
    "DataEncoder",
    "content_problems",
    "needs_eightbit",
]


def needs_eightbit(data: bytes) -> bool:
    """True if any octet is 0x80 or above."""
    return not data.isascii()


def _as_bytes(chunk: bytes | bytearray | memoryview) -> bytes:
    return chunk if type(chunk) is bytes else bytes(chunk)


class Canonicaliser:
    """Streaming bare-CR / bare-LF to CRLF conversion with line statistics.

    ``feed`` returns canonical bytes (every CR is followed by LF and every LF
    preceded by CR); a trailing CR is held back until the next chunk shows
    whether it is half of a CRLF.  ``finish`` returns what is left: a held
    CR as CRLF, or a CRLF to terminate an unterminated last line.

    Attributes after feeding: ``size`` (canonical octets so far), ``lines``
    (CRLFs so far), ``long_line`` (a line over ``limit`` octets was seen),
    ``bare_line_ends`` (anything had to be rewritten), ``at_line_start``
    (the output so far is empty or ends with CRLF).
    """

    __slots__ = (
        "_held_cr",
        "_line_len",
        "at_line_start",
        "bare_line_ends",
        "limit",
        "lines",
        "long_line",
        "size",
    )

    def __init__(self, limit: int = MAX_LINE_LENGTH) -> None:
        self.limit = limit
        self._held_cr = False
        self._line_len = 0  # octets in the unterminated line at the end of the output
        self.at_line_start = True
        self.bare_line_ends = False
        self.long_line = False
        self.lines = 0
        self.size = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        data = _as_bytes(chunk)
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        if not data:
            return b""
        n_lf = data.count(b"\n")
        n_cr = data.count(b"\r")
        if n_cr != n_lf or (n_lf and data.count(b"\r\n") != n_lf):
            self.bare_line_ends = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
            n_lf = data.count(b"\n")
        self._account(data, n_lf)
        return data

    def finish(self) -> bytes:
        if self._held_cr:
            self._held_cr = False
            self.bare_line_ends = True
            tail = b"\r\n"
        elif self.size and not self.at_line_start:
            tail = b"\r\n"
        else:
            return b""
        self._account(tail, 1)
        return tail

    def _account(self, data: bytes, n_lf: int) -> None:
        self.size += len(data)
        self.lines += n_lf
        self.at_line_start = data.endswith(b"\n")
        if not self.long_line:
            self._check_lines(data)

    def _check_lines(self, data: bytes) -> None:
        # Jump through the data one window of limit+2 octets at a time: the
        # last CRLF in the window ends every line that starts before it, and
        # all of those are short; no CRLF in a full window means a long line.
        n = len(data)
        carry = self._line_len
        limit = self.limit
        if carry + n <= limit:
            j = data.rfind(b"\n")
            self._line_len = carry + n if j < 0 else n - j - 1
            return
        p = 0
        while True:
            end = p + limit + 2 - carry
            if end > n:
                j = data.rfind(b"\r\n", p)
                tail = carry + n - p if j < 0 else n - j - 2
                if tail > limit:
                    self.long_line = True
                self._line_len = tail
                return
            j = data.rfind(b"\r\n", p, end)
            if j < 0:
                self.long_line = True
                return
            p = j + 2
            carry = 0


class DataEncoder:
    """Encoder for the DATA phase: canonical CRLF, dot-stuffing, ``.CRLF``.

    ``feed`` may return ``b""`` (a held-back CR); ``finish`` returns the rest
    plus the terminator, and the content before it always ends with CRLF.
    ``long_line`` turns True once a line over 998 octets has gone through
    (callers should have refused such content beforehand, see
    :func:`content_problems`).
    """

    __slots__ = ("_canon", "_finished")

    def __init__(self) -> None:
        self._canon = Canonicaliser()
        self._finished = False

    @property
    def long_line(self) -> bool:
        return self._canon.long_line

    @property
    def bare_line_ends(self) -> bool:
        return self._canon.bare_line_ends

    @property
    def lines(self) -> int:
        """Lines of content so far (not counting the terminating ".")."""
        return self._canon.lines

    @property
    def size(self) -> int:
        """Canonical content octets so far (before stuffing, no terminator)."""
        return self._canon.size

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        if self._finished:
            raise ValueError("DataEncoder: feed() after finish()")
        canon = self._canon
        line_start = canon.at_line_start
        out = canon.feed(chunk)
        if out:
            out = out.replace(b"\n.", b"\n..")
            if line_start and out[:1] == b".":
                out = b"." + out
        return out

    def finish(self) -> bytes:
        if self._finished:
            raise ValueError("DataEncoder: finish() called twice")
        self._finished = True
        return self._canon.finish() + b".\r\n"


class BdatEncoder:
    """Framing for the CHUNKING phase: ``BDAT <n>[ LAST]\\r\\n`` + data.

    With ``binary=True`` (BODY=BINARYMIME) the content goes out untouched;
    otherwise line ends are canonicalised as for DATA (and a final CRLF is
    added), but never dot-stuffed.  ``feed`` returns ``b""`` when there is
    nothing to frame; ``feed(chunk, last=True)`` carries LAST itself, after
    which ``finish`` returns ``b""``; otherwise ``finish`` returns the last
    frame (``BDAT 0 LAST`` or one holding a held-back tail).  ``frames``
    counts the BDAT commands produced, ``last_size`` is the length of the
    most recent one.
    """

    __slots__ = ("_canon", "_finished", "binary", "frames", "last_size", "size")

    def __init__(self, binary: bool = False) -> None:
        self.binary = binary
        self._canon = None if binary else Canonicaliser()
        self._finished = False
        self.frames = 0
        self.last_size = 0
        self.size = 0

    @property
    def long_line(self) -> bool:
        return False if self._canon is None else self._canon.long_line

    @property
    def lines(self) -> int:
        return 0 if self._canon is None else self._canon.lines

    def feed(self, chunk: bytes | bytearray | memoryview, last: bool = False) -> bytes:
        if self._finished:
            raise ValueError("BdatEncoder: feed() after the LAST chunk")
        data = _as_bytes(chunk) if self._canon is None else self._canon.feed(chunk)
        if last:
            self._finished = True
            if self._canon is not None:
                data += self._canon.finish()
            return self._frame(data, b" LAST")
        if not data:
            return b""
        return self._frame(data, b"")

    def finish(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        tail = b"" if self._canon is None else self._canon.finish()
        return self._frame(tail, b" LAST")

    def _frame(self, data: bytes, suffix: bytes) -> bytes:
        n = len(data)
        self.frames += 1
        self.last_size = n
        self.size += n
        return b"BDAT %d%s\r\n" % (n, suffix) + data


@dataclass(frozen=True)
class ContentInfo:
    """What a pre-scan found; sizes are of the canonical (CRLF) form."""

    long_line: bool
    eightbit: bool
    bare_line_ends: bool
    size_after_canonicalisation: int
    lines: int = 0


class ContentScanner:
    """Incremental pre-scan of content; ``finish`` gives the :class:`ContentInfo`."""

    __slots__ = ("_canon", "_eightbit")

    def __init__(self, limit: int = MAX_LINE_LENGTH) -> None:
        self._canon = Canonicaliser(limit)
        self._eightbit = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        data = _as_bytes(chunk)
        if not self._eightbit and not data.isascii():
            self._eightbit = True
        self._canon.feed(data)

    def finish(self) -> ContentInfo:
        canon = self._canon
        canon.finish()
        return ContentInfo(
            long_line=canon.long_line,
            eightbit=self._eightbit,
            bare_line_ends=canon.bare_line_ends,
            size_after_canonicalisation=canon.size,
            lines=canon.lines,
        )


def content_problems(data_iter: Iterable[bytes]) -> ContentInfo:
    """Scan content chunk by chunk (e.g. a file read in blocks)."""
    scanner = ContentScanner()
    for chunk in data_iter:
        scanner.feed(chunk)
    return scanner.finish()
