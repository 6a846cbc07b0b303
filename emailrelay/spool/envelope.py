"""Envelope files: read and write the ``#2821.8`` format (SPEC.md §3).

What it is for: turning an :class:`Envelope` into the exact bytes upstream
E-MailRelay 2.6 writes, and reading envelopes back — ours, upstream's, older
``#2821.3`` … ``#2821.7`` ones, CRLF or LF-only, and ones a filter edited.

Guarantees:
- :meth:`Envelope.to_bytes` is byte-identical to upstream for the same data
  (fields in upstream's order, ``Key: value`` with the space even when the
  value is empty, CRLF line ends, local recipients before remote ones).
- :func:`parse` never trusts the file: a value holding CR, NUL or another
  control character, a missing required field, an unknown format or a
  ``ToCount`` that does not match the recipient lines is an
  :class:`EnvelopeError`.  So a field a filter wrote can never carry a raw
  line break into an SMTP command.  As E-MailRelay 2.6b reads them, blanks
  (space, tab) around a value are not part of it, and nothing after
  ``X-MailRelay-End`` makes a file unusable: a failure reason's control
  characters are escaped (``\\r``, ``\\x01``), other lines kept as they are.
- Octets that are not UTF-8 (an envelope written by hand or by another
  program) are read as surrogate escapes and written back as the same
  octets, as E-MailRelay 2.6b keeps them: a rewrite changes only what it
  rewrites, and the forwarding client sends them to the next hop as stored.
- :func:`upstream_read_error` words an envelope :func:`parse` refused as
  E-MailRelay 2.6b's reader does (the first field out of the order
  :meth:`Envelope.to_bytes` writes, ``no end line`` and the like): the
  forwarder fails a message whose envelope a client filter spoiled with them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace

FORMAT = "#2821.8"
READABLE_FORMATS = frozenset(f"#2821.{n}" for n in range(3, 9))
_KEY_PREFIX = "X-MailRelay-"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed, as in header values

CONTENT_TYPES = ("7bit", "8bit", "binarymime", "unknown")
#: Format #2821.8's fields after the recipient lines and before ``End``, in the order
#: :meth:`Envelope.to_bytes` writes them and E-MailRelay 2.6b's reader expects them.
_FIELDS_AFTER_TO = (
    "Authentication",
    "Client",
    "ClientCertificate",
    "MailFromAuthIn",
    "MailFromAuthOut",
    "ForwardTo",
    "ForwardToAddress",
    "ClientAccountSelector",
    "Utf8MailboxNames",
)


class EnvelopeError(ValueError):
    """The envelope file cannot be used; the message says why."""


@dataclass(frozen=True)
class Envelope:
    from_address: str
    to_remote: tuple[str, ...] = ()
    to_local: tuple[str, ...] = ()
    content_type: str = "unknown"  # 7bit | 8bit | binarymime | unknown (no BODY=)
    authentication: str = ""  # xtext of the AUTH identity
    client: str = ""  # client IP address, no port
    client_certificate: str = ""  # PEM, may hold newlines; folded on output
    mail_from_auth_in: str = ""
    mail_from_auth_out: str = ""
    forward_to: str = ""
    forward_to_address: str = ""
    client_account_selector: str = ""
    utf8_mailbox_names: bool = False
    reason: str | None = None  # set on .bad envelopes
    reason_code: str | None = None
    extra_tail: tuple[str, ...] = field(default=(), compare=False)  # unknown lines after End, kept

    @property
    def recipient_count(self) -> int:
        return len(self.to_local) + len(self.to_remote)

    def with_failure(self, reason: str, code: int | None) -> Envelope:
        return replace(self, reason=escape_reason(reason), reason_code="" if code is None else str(code))

    def without_failure(self) -> Envelope:
        return replace(self, reason=None, reason_code=None)

    def to_bytes(self) -> bytes:
        lines = [
            ("Format", FORMAT),
            ("Content", self.content_type),
            ("From", self.from_address),
            ("ToCount", str(self.recipient_count)),
            *(("To-Local", r) for r in self.to_local),
            *(("To-Remote", r) for r in self.to_remote),
            *((key, self._after_to(key)) for key in _FIELDS_AFTER_TO),
            ("End", "1"),
        ]
        if self.reason is not None:
            lines.append(("Reason", self.reason))
            lines.append(("ReasonCode", self.reason_code or ""))
        out = []
        for key, value in lines:
            if key != "ClientCertificate":
                _check_value(key, value)
            if key == "ReasonCode" and not value:  # E-MailRelay 2.6b writes no space after an empty code
                out.append(f"{_KEY_PREFIX}{key}:\r\n")
                continue
            out.append(f"{_KEY_PREFIX}{key}: {value}\r\n")
        out.extend(f"{t}\r\n" for t in self.extra_tail)
        return "".join(out).encode("utf-8", "surrogateescape")

    def _after_to(self, key: str) -> str:
        """The written value of one of :data:`_FIELDS_AFTER_TO`."""
        if key == "ClientCertificate":
            return _fold(self.client_certificate)
        if key == "Utf8MailboxNames":
            return "1" if self.utf8_mailbox_names else "0"
        return str(getattr(self, _SINGLE[key]))


def escape_reason(text: str) -> str:
    """A reason on one line as E-MailRelay 2.6b writes it: a backslash doubled, a line break as
    ``\\n`` (a multi-line reply's lines), ``\\r`` and ``\\t``, and every other control or
    non-ASCII byte as ``\\xHH`` (``5.7.1 a\\\\b``, ``\\xc3\\xa9``)."""
    out: list[str] = []
    for byte in text.encode("utf-8", "surrogateescape"):
        if byte == 0x5C:
            out.append("\\\\")
        elif byte in _ESCAPES:
            out.append(_ESCAPES[byte])
        elif byte < 0x20 or byte >= 0x7F:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out).strip()


_ESCAPES = {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def _printable(text: str) -> str:
    """Reasons come from remote servers and filters: keep them on one safe line."""
    return _CONTROL.sub(" ", text.replace("\r\n", " ")).strip()


def _check_value(key: str, value: str) -> None:
    if _CONTROL.search(value):
        raise EnvelopeError(f"envelope field {key} holds a control character")


def _fold(pem: str) -> str:
    # upstream folds multi-line values with a leading space on continuation lines
    parts = [p for p in pem.replace("\r\n", "\n").split("\n") if p]
    for p in parts:
        _check_value("ClientCertificate", p)
    return "\r\n ".join(parts)


_SINGLE = {
    "Format": "format",
    "Content": "content_type",
    "From": "from_address",
    "ToCount": "to_count",
    "Authentication": "authentication",
    "Client": "client",
    "MailFromAuthIn": "mail_from_auth_in",
    "MailFromAuthOut": "mail_from_auth_out",
    "ForwardTo": "forward_to",
    "ForwardToAddress": "forward_to_address",
    "ClientAccountSelector": "client_account_selector",
    "Utf8MailboxNames": "utf8_mailbox_names",
    "End": "end",
    "Reason": "reason",
    "ReasonCode": "reason_code",
}


_BLANKS = " \t"
_REASON_KEYS = {key: _SINGLE[key] for key in ("Reason", "ReasonCode")}


def _read_after_end(line: str, values: dict[str, str], tail: list[str]) -> None:
    """A line after ``X-MailRelay-End``: a failure reason (its control characters escaped, so the
    envelope can still be forwarded and rewritten) or anything else, kept as it is."""
    key, sep, value = (
        line[len(_KEY_PREFIX) :].partition(":") if line.startswith(_KEY_PREFIX) else ("", "", "")
    )
    if sep and key in _REASON_KEYS:
        values[_REASON_KEYS[key]] = _CONTROL.sub(_escape_control, value.strip(_BLANKS))
    elif line:
        tail.append(line)


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(ord(char), f"\\x{ord(char):02x}")


def parse(data: bytes) -> Envelope:
    """Parse envelope bytes (any readable format, CRLF or LF line ends)."""
    text = data.decode("utf-8", "surrogateescape")  # octets that are not UTF-8 kept as they are
    raw_lines = text.split("\n")
    if raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    values: dict[str, str] = {}
    to_local: list[str] = []
    to_remote: list[str] = []
    cert_lines: list[str] = []
    tail: list[str] = []
    last_key = ""
    for number, raw in enumerate(raw_lines, 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if "end" in values:  # E-MailRelay 2.6b stops reading at End: nothing after it makes the file unusable
            _read_after_end(line, values, tail)
            continue
        if _CONTROL.search(line):
            raise EnvelopeError(f"line {number}: control character in envelope")
        if line.startswith((" ", "\t")):  # folded continuation
            if last_key != "ClientCertificate":
                raise EnvelopeError(f"line {number}: unexpected continuation line")
            if line.strip():  # a blank continuation line adds nothing (PEM has none; _fold drops them)
                cert_lines.append(line.strip())
            continue
        if not line.startswith(_KEY_PREFIX) or ":" not in line:
            raise EnvelopeError(f"line {number}: not an envelope field: {line[:40]!r}")
        key, _, value = line[len(_KEY_PREFIX) :].partition(":")
        value = value.strip(_BLANKS)  # as E-MailRelay 2.6b: "X-MailRelay-From: \ta@b\t" is a@b
        last_key = key
        if key == "To-Local":
            to_local.append(value)
        elif key == "To-Remote":
            to_remote.append(value)
        elif key == "ClientCertificate":
            if value:
                cert_lines.append(value)
        elif key in _SINGLE:
            values[_SINGLE[key]] = value
        # unknown keys from newer or older writers are ignored
    fmt = values.get("format")
    if fmt not in READABLE_FORMATS:
        raise EnvelopeError(f"unsupported envelope format {fmt!r}")
    for required in ("from_address", "to_count", "end"):
        if required not in values:
            raise EnvelopeError(f"envelope has no {required} field")
    try:
        count = int(values["to_count"])
    except ValueError:
        raise EnvelopeError("bad ToCount field") from None
    if count != len(to_local) + len(to_remote):
        raise EnvelopeError("ToCount does not match the recipient lines")
    content_type = values.get("content_type", "unknown").lower()
    if content_type not in CONTENT_TYPES:
        content_type = "unknown"
    return Envelope(
        from_address=values["from_address"],
        to_remote=tuple(to_remote),
        to_local=tuple(to_local),
        content_type=content_type,
        authentication=values.get("authentication", ""),
        client=values.get("client", ""),
        client_certificate="\n".join(cert_lines),
        mail_from_auth_in=values.get("mail_from_auth_in", ""),
        mail_from_auth_out=values.get("mail_from_auth_out", ""),
        forward_to=values.get("forward_to", ""),
        forward_to_address=values.get("forward_to_address", ""),
        client_account_selector=values.get("client_account_selector", ""),
        utf8_mailbox_names=values.get("utf8_mailbox_names", "0") == "1",
        reason=values.get("reason"),
        reason_code=values.get("reason_code"),
        extra_tail=tuple(tail),
    )


_CANNOT_READ = "cannot read envelope file: "


class _Unexpected(Exception):
    """The first thing E-MailRelay 2.6b's envelope reader would have stopped at."""


def upstream_read_error(data: bytes | None, exc: EnvelopeError) -> str:
    """What E-MailRelay 2.6b says of an envelope :func:`parse` refused with ``exc`` (``data``: its
    bytes; None when they could not be read, then the words are ``cannot read envelope file:`` and
    ``exc``). Its reader takes the fields of the current format in their written order, so it says
    ``cannot read envelope file:`` and the first one out of place (``expected
    "X-MailRelay-<field>:"``, ``unknown format id: <id>``, ``bad 'to' line``, ``no end line``), or,
    without that prefix, that the ToCount is no number. An older format, or a fault its reader
    would not see (a control character): the prefix and our parser's words."""
    if data is None:
        return f"{_CANNOT_READ}{exc}"
    lines = iter(line.removesuffix("\r") for line in data.decode("utf-8", "surrogateescape").split("\n"))

    def field(key: str) -> str:
        prefix = f"{_KEY_PREFIX}{key}:"
        line = next(lines, "")
        if not line.startswith(prefix):
            raise _Unexpected(f'expected "{prefix}"')
        return line[len(prefix) :].strip(_BLANKS)

    try:
        fmt = field("Format")
        if fmt != FORMAT:
            raise _Unexpected(str(exc) if fmt in READABLE_FORMATS else f"unknown format id: {fmt}")
        field("Content")
        field("From")
        count = field("ToCount")
        if not (count.isascii() and count.isdigit()):
            return f"string conversion error: invalid format: expected unsigned integer: {count}"
        for _ in range(int(count)):
            if not next(lines, "").startswith((f"{_KEY_PREFIX}To-Local:", f"{_KEY_PREFIX}To-Remote:")):
                raise _Unexpected("bad 'to' line")
        for key in _FIELDS_AFTER_TO:
            field(key)
            if key == "ClientCertificate":  # and its folded lines
                lines = itertools.dropwhile(lambda line: line.startswith((" ", "\t")), lines)
        if not next(lines, "").startswith(f"{_KEY_PREFIX}End:"):
            raise _Unexpected("no end line")
    except _Unexpected as unexpected:
        return f"{_CANNOT_READ}{unexpected}"
    return f"{_CANNOT_READ}{exc}"
