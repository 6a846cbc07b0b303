"""``emailrelay-submit``: put a message straight into a spool directory.

What it is for: SPEC.md §1 and the reference guide's "Submission" section —
a message on stdin (or ``--input-file``, or ``--content`` base64 lines),
envelope addresses on the command line (or parsed out of the headers with
``--bcc-split`` / no recipients), written through the same
:class:`~emailrelay.spool.store.SpoolStore` as the SMTP service, so the
result is committed with the same durability protocol.

The command line is read as E-MailRelay 2.6b reads it (:func:`parse_args`): its
option names and letters, exact names, a repeated option with another value
refused; what is wrong with it is 2.6b's ``emailrelay-submit: error: <text>``
lines, every one, and exit 1 (2.6b's 0 would tell a script the message went)
with nothing read or written. ``--help`` has 2.6b's layout (our texts).

Guarantees: exit 0 and (with ``--verbose``) the path of each new message's
content file on stdout, as upstream prints it (:func:`shown_path`), only
once the message is committed; a message without any recipient is written
with none (``ToCount: 0``), as E-MailRelay 2.6b writes it. Exit 1 with a
one-line ``emailrelay-submit: <text>`` in upstream's words (no ``error:``)
on bad input (a missing spool directory, an empty address, one with a
control character or one that is not UTF-8, bad ``--content`` base64, a
From/Sender or To/Cc/Bcc field that upstream cannot parse when the address
comes from it, ``--content-to`` with no recipient at all, unreadable input,
unwritable spool) and nothing left behind; the spool directory is named as
upstream names it (``a//b/`` is ``a/b``), an empty one refused. The content
is stored as upstream stores it (:func:`read_content`): ``--content`` lines
and the input together, every line ending in CRLF, a lone CR kept, and the
empty line that ends the headers always there.
"""

from __future__ import annotations

import argparse
import grp
import os
import re
import socket
import sys
import textwrap
import time
from pathlib import Path

from .. import COPYRIGHT, PRODUCT_VERSION, WARRANTY, __version__
from ..config import OPTION_DEFAULTS
from ..protocol.sasl import b64decode_strict
from ..spool.delivery import copy_to_directories
from ..spool.envelope import Envelope
from ..spool.names import State
from ..spool.store import SpoolStore
from .upstream_getopt import Option, tokenize

PROGRAM = "emailrelay-submit"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


class SubmitError(Exception):
    pass


_OPTIONS = (  # in upstream's order, which its help keeps
    Option("from", "f", "value", "envelope-from-address", "the envelope sender (default: the From header's, else anonymous)", True),
    Option("help", "h", "flag", "", "prints this help and exits (with -v every option)", True),
    Option("input-file", "x", "value", "file", "reads the message from the file instead of standard input", True),
    Option("spool-dir", "s", "value", "dir", "the spool directory", True),
    Option("verbose", "v", "flag", "", "prints the new content file's path", True),
    Option("bcc-split", "b", "flag", "", "one message per Bcc recipient when there are several (recipients from the headers)"),
    Option("content-date", "d", "flag", "", "adds a Date header when there is none"),
    Option("content-from", "F", "flag", "", "adds a From header with the envelope sender, in place of the originator fields"),
    Option("content-message-id", "I", "optional", "domain-part", "adds a Message-ID header when there is none (this host's name unless a domain is given)"),
    Option("content-to", "t", "flag", "", "adds a To header with the envelope recipients, in place of the recipient fields"),
    Option("copy", "c", "flag", "", "copies the new envelope into every sub-directory of the spool directory"),
    Option("filename", "n", "flag", "", "prints the new content file's name"),
    Option("to", "", "values", "envelope-to-address", "an envelope recipient (repeatable)"),
    Option("version", "V", "flag", "", "prints the version and exits"),
    Option("auth", "a", "value", "name", "taken and not written, as upstream (Authentication stays empty)"),
    Option("body", "B", "flag", "", "the input is body text only, after the --content lines"),
    Option("content", "C", "values", "base64", "a base64-encoded line of content (repeatable)"),
    Option("from-auth-in", "i", "value", "name", "the envelope's from-auth-in value"),
    Option("from-auth-out", "o", "value", "name", "the envelope's from-auth-out value"),
    Option("no-stdin", "N", "flag", "", "does not read standard input"),
)  # fmt: skip


def _dest(option: Option) -> str:
    """The option's attribute in :func:`parse_args`'s namespace (``from_`` for ``--from``)."""
    return "from_" if option.name == "from" else option.name.replace("-", "_")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The options and recipients as E-MailRelay 2.6b reads them, and its errors (none: good).

    Read by :func:`~emailrelay.cli.upstream_getopt.tokenize` (as ``emailrelay-passwd`` reads its
    own): options end at the first argument that is not one (``-`` alone is a recipient) or after
    ``--``; names are exact (no abbreviations); ``--name=value``, or ``--name value`` unless the
    value starts with ``-``; a letter that takes a value is alone, its value the next argument
    (``-fa@b`` is three letters); a flag takes ``=yes``/``=no`` and their kin; ``-I`` and a bare
    ``--content-message-id`` (``kind="optional"``) never take the next argument, and without a
    domain stand for this host's name."""
    given = tokenize(argv, _OPTIONS)
    defaults = {"spool-dir": OPTION_DEFAULTS["spool-dir"], "auth": ""}
    args = argparse.Namespace()
    for o in _OPTIONS:
        value: object
        if o.kind == "flag":
            value = given.on(o.name)
        elif o.kind == "values":
            value = given.lists.get(o.name, [])
        elif o.name in given.values:
            value = given.values[o.name] or ""  # a bare -I: this host's name
        else:
            value = defaults.get(o.name)
        setattr(args, _dest(o), value)
    args.content = args.content or None
    args.recipients = given.rest
    return args, given.problems


def _usage(full: bool) -> list[str]:
    """The synopsis, as upstream lays it out: the flag letters, then every option's long form."""
    shown = [o for o in _OPTIONS if full or o.basic]
    letters = "".join(o.short for o in shown if o.kind == "flag" and o.short)
    words = [f"[-{letters}]"]
    for o in shown:
        words.append(f"[--{o.name}=<{o.arg}>]" if o.arg else f"[--{o.name}]")
    words.append("[<envelope-to-address> ...]")
    first = "usage: " if full else "abbreviated usage: "
    return textwrap.wrap(
        " ".join(words),
        80,
        initial_indent=f"{first}{PROGRAM} ",
        subsequent_indent="  ",
        break_on_hyphens=False,
    )


def help_text(full: bool) -> str:
    """``--help`` (with ``--verbose`` every option), in upstream's layout with our texts."""
    lines = [*_usage(full), ""]
    for o in _OPTIONS:
        if not (full or o.basic):
            continue
        lines += textwrap.wrap(o.text, 80, initial_indent=f"{o.help_left():<29} ", subsequent_indent=" " * 30)
    lines += ["", "End a message typed at a terminal with ^D.", ""]
    if not full:
        lines += ['For more options use "--help -v".', ""]
    lines += [*WARRANTY, "", COPYRIGHT]
    return "\n".join(lines) + "\n"


def _input_lines(data: bytes) -> list[bytes]:
    """``data``'s lines as E-MailRelay 2.6b reads them: split at LF, one CR before it (or at the
    very end) removed; any other CR is kept, as it is part of the line."""
    if not data:
        return []
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _head_and_body(lines: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The lines before the first empty one, and those after it (none: all are header lines)."""
    if b"" in lines:
        i = lines.index(b"")
        return lines[:i], lines[i + 1 :]
    return lines, []


def _is_utf8(text: str) -> bool:
    """Whether ``text`` (command-line bytes decoded with surrogateescape) was valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_address(address: str, role: str = "recipient") -> str:
    """An address as E-MailRelay 2.6b takes it: anything but empty, with a control character or not
    UTF-8 (spaces, angle brackets and non-ASCII letters pass); its message shows the address with
    control characters escaped and other bytes as given."""
    if not address or _CONTROL.search(address) or not _is_utf8(address):
        shown = _CONTROL.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), address)
        raise SubmitError(f"invalid {role} address: [{shown}]")
    return address


class _Unparsable(Exception):
    """Not an address (list); ``position`` for upstream's "parsing error at position" cases."""

    def __init__(self, position: int | None = None) -> None:
        super().__init__(position)
        self.position = position


_ATEXT = "!#$%&'*+-/=?^_`{|}~"
_SPECIALS = frozenset("<>@,;:")


def _tokens(value: str) -> list[tuple[str, str, int]]:
    """RFC 5322/6532 tokens of a header value: (kind, text, end offset), the kind ``atom`` (dots
    included, as upstream reads them: ``a..b`` and ``a.`` are atoms, ``.a`` is an error at the dot),
    ``quoted`` (its text unquoted) or the special character itself; comments and spaces dropped."""
    out: list[tuple[str, str, int]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t":
            i += 1
        elif c == "(":  # a comment, nested; unclosed at the end is let pass, as upstream
            depth, i = 1, i + 1
            while i < n and depth:
                depth += {"(": 1, ")": -1}.get(value[i], 0)
                i += 2 if value[i] == "\\" else 1
        elif c == '"':
            text, i = [], i + 1
            while i < n and value[i] != '"':
                if value[i] == "\\":
                    i += 1
                if i < n:
                    text.append(value[i])
                i += 1
            if i >= n:
                raise _Unparsable
            i += 1
            out.append(("quoted", "".join(text), i))
        elif c in _SPECIALS or c in "[]":
            i += 1
            out.append((c, c, i))
        elif c in "\\.":
            raise _Unparsable(i + 1)
        elif c.isascii() and not (c.isalnum() or c in _ATEXT):
            raise _Unparsable  # a control character or ")"
        else:
            start = i
            while i < n and (not value[i].isascii() or value[i].isalnum() or value[i] in _ATEXT + "."):
                i += 1
            out.append(("atom", value[start:i], i))
    return out


class _Mailboxes:
    """A recursive-descent parser of an address list (or one mailbox) as E-MailRelay 2.6b accepts
    it: dots anywhere in a local part, a trailing dot or comma, groups, comments; no domain literals
    or source routes."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.tokens = _tokens(value)
        self.i = 0

    def _kind(self) -> str:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else ""

    def _take(self, kind: str) -> str:
        if self._kind() != kind:
            raise _Unparsable
        self.i += 1
        return self.tokens[self.i - 1][1]

    def _phrase(self) -> list[str]:
        words: list[str] = []
        while self._kind() in ("atom", "quoted"):
            words.append(self._take(self._kind()))
        return words

    def _addr_spec(self, local_words: list[str]) -> str:
        if not local_words or any(not a.endswith(".") for a in local_words[:-1]):
            raise _Unparsable  # no local part, or two words with nothing but space between
        self._take("@")
        if self._kind() == "[":  # a domain literal: upstream's other message
            raise _Unparsable(self.tokens[self.i][2])
        return "".join(local_words) + "@" + self._take("atom")

    def mailbox(self) -> tuple[str, str]:
        if self._kind() == "[":  # a domain literal first: upstream's other message
            raise _Unparsable(self.tokens[self.i][2])
        words = self._phrase()
        if self._kind() == "@":
            return "", self._addr_spec(words)
        self._take("<")
        address = self._addr_spec(self._phrase())
        self._take(">")
        return " ".join(words), address

    def _element(self) -> list[tuple[str, str]]:
        start = self.i
        words = self._phrase()
        if words and self._kind() == ":":
            self.i += 1
            members: list[tuple[str, str]] = []
            while self._kind() != ";":
                if members:
                    self._take(",")
                members.append(self.mailbox())
            self.i += 1
            return members
        self.i = start
        return [self.mailbox()]

    def address_list(self) -> list[tuple[str, str]]:
        found = self._element()
        while self.i < len(self.tokens):
            self._take(",")
            if self.i == len(self.tokens) and self.tokens[-1][2] == len(self.value):
                break  # a comma that ends the value
            found += self._element()
        return found

    def single(self) -> tuple[str, str]:
        found = self.mailbox()
        if self.i != len(self.tokens):
            raise _Unparsable
        return found


def _header_fields(content: bytes) -> list[tuple[int, bytes, bytes]]:
    """(line number, lower-case name, value unfolded) of each header field."""
    fields: list[tuple[int, bytes, bytes]] = []
    for number, line in enumerate(content.split(b"\r\n"), 1):
        if not line:
            break
        if line[:1] in (b" ", b"\t") and fields:
            start, name, value = fields[-1]
            fields[-1] = (start, name, value + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((number, name.strip().lower(), value))
    return fields


def _header_pairs(content: bytes, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(display name, address) of each address in the named headers (names first, then fields in
    order), parsed as E-MailRelay 2.6b parses them; ``Sender`` is one mailbox. Upstream's messages
    for a value that is not UTF-8 or not an address list."""
    found: list[tuple[str, str]] = []
    fields = _header_fields(content)
    for wanted in names:
        for number, name, raw in fields:
            if name != wanted.lower().encode():
                continue
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SubmitError(
                    f"rfc-5322/6532 parsing error: parsing error at position {exc.start}: line {number}"
                ) from None
            what = "address" if wanted == "Sender" else "address-list"
            try:
                parser = _Mailboxes(value)
                found += [parser.single()] if wanted == "Sender" else parser.address_list()
            except _Unparsable as exc:
                reason = (
                    f"invalid {what}" if exc.position is None else f"parsing error at position {exc.position}"
                )
                raise SubmitError(f"rfc-5322/6532 parsing error: {reason}: line {number}") from None
    return found


def _header_addresses(content: bytes, names: tuple[str, ...]) -> list[str]:
    return [addr for _, addr in _header_pairs(content, names)]


Field = list[bytes]  # a header line and its continuation lines, without line ends


def _split_head(content: bytes) -> tuple[list[Field], bytes]:
    """The header fields of canonical content, and what follows the empty line that ends them."""
    if content.startswith(b"\r\n"):
        return [], content[2:]
    head, _, rest = content.partition(b"\r\n\r\n")
    fields: list[Field] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields, rest


def _join_head(fields: list[Field], rest: bytes) -> bytes:
    return b"".join(line + b"\r\n" for f in fields for line in f) + b"\r\n" + rest


def _field_name(f: Field) -> bytes:
    return f[0].split(b":", 1)[0].strip().lower()


_ORIGINATORS = (b"from", b"sender", b"reply-to")
_RECIPIENT_FIELDS = (b"to", b"cc", b"bcc")


def _message_id(domain: str) -> str:
    """E-MailRelay 2.6b's form: ``<seconds.microseconds.pid@domain>``."""
    now = time.time()
    return f"<{int(now)}.{int(now * 1_000_000) % 1_000_000:06d}.{os.getpid()}@{domain or socket.getfqdn()}>"


def _add_headers(content: bytes, args: argparse.Namespace, sender: str, recipients: list[str]) -> bytes:
    """``-t``, ``-F``, ``-I``, ``-d`` as E-MailRelay 2.6b: the new fields go first, in that order;
    ``-t`` and ``-F`` remove the recipient or originator fields they replace (only those: upstream
    also loses every field after the first one removed, a bug; docs/decisions.md)."""
    fields, rest = _split_head(content)
    names = {_field_name(f) for f in fields}
    top: list[str] = []
    if args.content_to:
        fields = [f for f in fields if _field_name(f) not in _RECIPIENT_FIELDS]
        top.append("To: " + ",".join(recipients))
    if args.content_from:
        fields = [f for f in fields if _field_name(f) not in _ORIGINATORS]
        top.append("From: " + (sender or "anonymous:;"))
    if args.content_message_id is not None and b"message-id" not in names:
        top.append("Message-ID: " + _message_id(args.content_message_id))
    if args.content_date and b"date" not in names:
        top.append("Date: " + time.strftime("%d %b %Y %H:%M:%S %z"))
    if not top:
        return content
    return _join_head([[h.encode()] for h in top] + fields, rest)


def _bcc_copies(
    content: bytes, others: list[str], bcc: list[tuple[str, str]]
) -> list[tuple[list[str], bytes]]:
    """``--bcc-split`` as E-MailRelay 2.6b: a message without the Bcc fields for the To and Cc
    recipients (even none), then one per Bcc recipient whose every Bcc field becomes
    ``bcc: <that recipient>`` (a display name quoted)."""
    fields, rest = _split_head(content)
    copies = [(others, _join_head([f for f in fields if _field_name(f) != b"bcc"], rest))]
    for name, addr in bcc:
        line = (f'bcc: "{name}" <{addr}>' if name else f"bcc: {addr}").encode()
        copies.append(([addr], _join_head([[line] if _field_name(f) == b"bcc" else f for f in fields], rest)))
    return copies


_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _decode_content_line(value: str) -> bytes:
    """A ``--content`` value, decoded as strictly as upstream decodes base64 (the SASL decoder's
    rules: the padding may be left out but not cut short, the bits left over must be zero); one
    base64 character or ``=`` alone is an empty line, as upstream takes it."""
    if len(value) == 1 and value in _BASE64_CHARS:  # not one whole octet: upstream's empty line
        return b""
    decoded = b64decode_strict(value)
    if decoded is None:
        raise SubmitError("base64 encoding error")
    return decoded


def read_content(args: argparse.Namespace) -> bytes:
    """The message as E-MailRelay 2.6b puts it together: the ``--content`` lines are headers up to
    the first empty one and body lines after it; the input's header lines join the ``--content``
    header lines, then come the empty line, the ``--content`` body lines and the input's body
    (with ``--body`` the whole input is body, after the ``--content`` body lines). Every line
    ends in CRLF; a ``--content`` line is kept as decoded."""
    given = [_decode_content_line(c) for c in args.content or []]
    if args.input_file:
        try:
            data = Path(args.input_file).read_bytes()
        except OSError:
            raise SubmitError(f"cannot open input file [{args.input_file}]") from None
    elif not args.no_stdin and sys.stdin is not None:  # a closed stdin is no input, as upstream
        try:
            data = sys.stdin.buffer.read()
        except OSError as exc:  # upstream goes on with what it read: a cut message (ours refuses)
            raise SubmitError(f"cannot read standard input: {(exc.strerror or str(exc)).lower()}") from None
    else:
        data = b""
    head, body = _head_and_body(given)
    lines = _input_lines(data)
    if args.body:
        message = [*head, b"", *body, *lines]
    else:
        input_head, input_body = _head_and_body(lines)
        message = [*head, *input_head, b"", *body, *input_body]
    return b"".join(line + b"\r\n" for line in message)


def shown_path(spool_dir: str, name: str) -> str:
    """``name`` in ``spool_dir`` as E-MailRelay 2.6b prints it: the directory as given, without empty
    and ``.`` components (``..`` is kept, nothing is resolved), ``.`` when nothing else is left."""
    parts = [p for p in spool_dir.split("/") if p not in ("", ".")]
    if spool_dir.startswith("/"):
        return "/" + "/".join([*parts, name])
    return "/".join([*(parts or ["."]), name])


def submit(args: argparse.Namespace) -> list[str]:
    """Store the message(s); what to print for each: its content file's path as upstream shows it
    (``--verbose``), else its name (``--filename``)."""
    store = SpoolStore(args.spool_dir, group=_file_group(args.spool_dir))
    if not args.spool_dir or not store.directory.is_dir():  # first, as upstream checks it
        reason = "not a directory" if store.directory.exists() else "no such file or directory"
        shown = re.sub("/+", "/", args.spool_dir)  # as upstream names it: "a//b/" is "a/b"
        shown = shown[:-1] if len(shown) > 1 and shown.endswith("/") else shown
        raise SubmitError(f"invalid spool directory: {shown + ': ' if shown else ''}{reason}")
    content = read_content(args)
    sender = args.from_
    if sender:  # first, as upstream checks it
        sender = _check_address(sender, "sender")
    to = [r for r in args.to if r]  # an empty --to is no recipient, as upstream
    recipients = [_check_address(r) for r in [*to, *args.recipients]]
    from_headers = not recipients
    if sender is None:  # the first From address; Sender is parsed too, for its errors, as upstream
        found = _header_addresses(content, ("From",))
        _header_pairs(content, ("Sender",))
        sender = _check_address(found[0], "sender") if found else ""
    if from_headers:  # and none there either: a message without recipients, as upstream writes it
        recipients = [_check_address(a) for a in _header_addresses(content, ("To", "Cc", "Bcc"))]
        if not recipients and args.content_to:
            raise SubmitError("content-to option used but no envelope-to addresses have been defined")
    bcc = _header_pairs(content, ("Bcc",)) if args.bcc_split and from_headers else []
    others = [_check_address(a) for a in _header_addresses(content, ("To", "Cc"))] if bcc else []
    content = _add_headers(content, args, sender, recipients)
    if len(bcc) > 1:  # split only when there are several Bcc recipients, as upstream
        messages = _bcc_copies(content, others, [(n, _check_address(a)) for n, a in bcc])
    else:
        messages = [(recipients, content)]
    paths: list[str] = []
    for group, text in messages:
        env = Envelope(
            from_address=sender or "anonymous",  # E-MailRelay 2.6b's envelope sender when none is known
            to_remote=tuple(group),
            content_type="unknown",
            authentication="",  # upstream takes --auth and writes nothing (docs/decisions.md)
            client="127.0.0.1",
            mail_from_auth_in=_auth_xtext(args.from_auth_in),
            mail_from_auth_out=_auth_xtext(args.from_auth_out),
            utf8_mailbox_names=any(
                not a.isascii() for a in [sender, *group]
            ),  # (as upstream: the content aside)
        )
        try:
            mid = store.store_message(env, text)
        except OSError as exc:
            raise SubmitError(
                f"cannot write to spool directory {args.spool_dir}: {exc.strerror or exc}"
            ) from None
        if args.copy and (boxes := store.mailboxes(every=True)):  # upstream's layout: the content stays
            copy_to_directories(
                store, mid, State.READY, store.directory, boxes, envelope_only=True, delete_original=True
            )
        name = store.content_path(mid).name
        paths.append(shown_path(args.spool_dir, name) if args.verbose else name)
    return paths


def _auth_xtext(value: str | None) -> str:
    """A ``--from-auth-in``/``--from-auth-out`` value as the envelope holds it, as upstream writes
    it: xtext of its bytes (RFC 3461, uppercase hex), ``<>`` when given empty, nothing when not given."""
    if value is None:
        return ""
    if not value:
        return "<>"
    data = value.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b not in b"+=" else f"+{b:02X}" for b in data)


def _file_group(spool_dir: str) -> int | None:
    """Run as root, give the files a group the relay's ``--user`` is in, as upstream's set-group-id
    ``daemon`` installation of this program does: the spool directory's group, else ``daemon``'s.
    Otherwise filters and forwarders running as ``--user`` could not read what root submitted."""
    if os.geteuid() != 0:
        return None
    try:
        gid = os.stat(spool_dir).st_gid
    except OSError:
        return None
    if gid != 0:
        return gid
    try:
        return grp.getgrnam("daemon").gr_gid
    except KeyError:
        return None


def main(argv: list[str] | None = None) -> int:
    args, errors = parse_args(sys.argv[1:] if argv is None else argv)
    if errors:  # upstream's lines; nothing read or written (exit 1: upstream's 0 would lose the mail)
        _error_lines([f"error: {e}" for e in errors])
        return 1
    if args.help:
        sys.stdout.write(help_text(args.verbose))
        return 0
    if args.version:
        print(f"{PRODUCT_VERSION} (emailrelay-python {__version__})")
        return 0
    try:
        paths = submit(args)
    except SubmitError as exc:
        _error_lines([str(exc)])
        return 1
    if args.verbose or args.filename:  # the path, or with --filename alone the file's name
        for path in paths:
            print(path)
    return 0


def _error_lines(texts: list[str]) -> None:
    """``emailrelay-submit: <text>`` lines on stderr, an argument's bytes shown as given, as upstream."""
    sys.stderr.flush()
    sys.stderr.buffer.write("".join(f"{PROGRAM}: {t}\n" for t in texts).encode("utf-8", "surrogateescape"))
    sys.stderr.buffer.flush()


if __name__ == "__main__":
    sys.exit(main())
