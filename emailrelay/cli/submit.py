"""``emailrelay-submit``: put a message straight into a spool directory.

What it is for: SPEC.md §1 and the reference guide's "Submission" section —
a message on stdin (or ``--input-file``, or ``--content`` base64 lines),
envelope addresses on the command line (or parsed out of the headers with
``--bcc-split`` / no recipients), written through the same
:class:`~emailrelay.spool.store.SpoolStore` as the SMTP service, so the
result is committed with the same durability protocol.

Guarantees: exit 0 and (with ``--verbose``) the path of each new message's
content file on stdout, as upstream prints it (:func:`shown_path`), only
once the message is committed; a message without any recipient is written
with none (``ToCount: 0``), as E-MailRelay 2.6b writes it. Exit 1 with a
one-line ``emailrelay-submit: <text>`` in upstream's words (no ``error:``)
on bad input (a missing spool directory, an empty address or one with a
control character, unreadable input, unwritable spool) and nothing left behind.
Content lines end in CRLF; a message with headers only gets the empty line
that ends the headers (as upstream writes it).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import grp
import os
import re
import socket
import sys
import time
from email.parser import BytesHeaderParser
from pathlib import Path

from .. import __version__
from ..config import OPTION_DEFAULTS
from ..spool.delivery import copy_to_directories
from ..spool.envelope import Envelope
from ..spool.names import State
from ..spool.store import SpoolStore

PROGRAM = "emailrelay-submit"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


class SubmitError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROGRAM, description="Submits a mail message into a spool directory.")
    p.add_argument("-s", "--spool-dir", default=OPTION_DEFAULTS["spool-dir"], help="spool directory")
    p.add_argument(
        "-f",
        "--from",
        dest="from_",
        metavar="ADDRESS",
        help="envelope sender (default: from the From header, else the user)",
    )
    p.add_argument(
        "--to", action="append", default=[], metavar="ADDRESS", help="envelope recipient (repeatable)"
    )
    p.add_argument("-a", "--auth", default="", help="authentication value for the envelope (xtext)")
    p.add_argument("-d", "--content-date", action="store_true", help="add a Date header if missing")
    p.add_argument(
        "-I",
        "--content-message-id",
        nargs="?",
        const="",
        default=None,
        metavar="DOMAIN",
        help="add a Message-ID header if missing (the domain part defaults to this host's name)",
    )
    p.add_argument(
        "-F", "--content-from", action="store_true", help="add a From header, replacing any originators"
    )
    p.add_argument(
        "-t", "--content-to", action="store_true", help="add a To header, replacing any recipient headers"
    )
    p.add_argument(
        "-C",
        "--content",
        action="append",
        default=None,
        metavar="BASE64",
        help="a base64-encoded content line (repeatable)",
    )
    p.add_argument("-N", "--no-stdin", action="store_true", help="do not read standard input")
    p.add_argument(
        "-B", "--body", action="store_true", help="the input file is the body only (after --content headers)"
    )
    p.add_argument(
        "-x", "--input-file", metavar="FILE", help="read the message from FILE instead of standard input"
    )
    p.add_argument(
        "-b",
        "--bcc-split",
        action="store_true",
        help="one message per Bcc recipient when there are several (recipients from the headers)",
    )
    p.add_argument(
        "-c",
        "--copy",
        action="store_true",
        help="copy the new envelope into every spool sub-directory (the content stays), then delete the original",
    )
    p.add_argument(
        "-i", "--from-auth-in", default="", metavar="NAME", help="the envelope's from-auth-in value"
    )
    p.add_argument(
        "-o", "--from-auth-out", default="", metavar="NAME", help="the envelope's from-auth-out value"
    )
    p.add_argument("-n", "--filename", action="store_true", help="print the new content file's name")
    p.add_argument("-v", "--verbose", action="store_true", help="print the new content file's path")
    p.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"E-MailRelay V2.6 submit (emailrelay-python {__version__})",
    )
    p.add_argument("recipients", nargs="*", help="envelope recipients")
    return p


def canonical_lines(data: bytes) -> bytes:
    """CRLF line ends everywhere, a final CRLF, and the empty line after headers-only input."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if text and not text.endswith(b"\n"):
        text += b"\n"
    if b"\n\n" not in text and not text.startswith(b"\n"):
        text += b"\n"
    return text.replace(b"\n", b"\r\n")


def _check_address(address: str, role: str = "recipient") -> str:
    """An address as E-MailRelay 2.6b takes it: anything but empty or with a control character
    (spaces, angle brackets and non-ASCII letters pass); its message shows the address escaped."""
    if not address or _CONTROL.search(address):
        shown = _CONTROL.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), address)
        raise SubmitError(f"invalid {role} address: [{shown}]")
    return address


def _header_pairs(content: bytes, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(display name, address) of each address in the named headers, header by header."""
    headers = BytesHeaderParser().parsebytes(content)
    values = [v for name in names for v in headers.get_all(name, [])]
    return [(name, addr) for name, addr in email.utils.getaddresses([str(v) for v in values]) if addr]


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


def read_content(args: argparse.Namespace) -> bytes:
    parts: list[bytes] = []
    if args.content is not None:
        try:
            lines = [base64.b64decode(c + "=" * (-len(c) % 4), validate=True) for c in args.content]
        except (binascii.Error, ValueError):
            raise SubmitError("--content: invalid base64") from None
        parts.append(b"".join(line + b"\r\n" for line in lines))
    if args.input_file:
        try:
            parts.append(Path(args.input_file).read_bytes())
        except OSError:
            raise SubmitError(f"cannot open input file [{args.input_file}]") from None
    elif not args.no_stdin and args.content is None:
        parts.append(sys.stdin.buffer.read())
    return canonical_lines(b"".join(parts))


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
    if not store.directory.is_dir():  # first, as upstream checks it
        reason = "not a directory" if store.directory.exists() else "no such file or directory"
        raise SubmitError(f"invalid spool directory: {args.spool_dir}: {reason}")
    content = read_content(args)
    recipients = [_check_address(r) for r in [*args.to, *args.recipients]]
    from_headers = not recipients
    if from_headers:  # and none there either: a message without recipients, as upstream writes it
        recipients = [_check_address(a) for a in _header_addresses(content, ("To", "Cc", "Bcc"))]
    sender = args.from_
    if sender is None:
        found = _header_addresses(content, ("From",))
        sender = found[0] if found else ""
    sender = _check_address(sender, "sender") if sender else ""
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
            authentication=args.auth,
            client="127.0.0.1",
            mail_from_auth_in=args.from_auth_in,
            mail_from_auth_out=args.from_auth_out,
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
    args = build_parser().parse_args(argv)
    try:
        paths = submit(args)
    except SubmitError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 1
    if args.verbose or args.filename:  # the path, or with --filename alone the file's name
        for path in paths:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
