"""``emailrelay-submit``: put a message straight into a spool directory.

What it is for: SPEC.md §1 and the reference guide's "Submission" section —
a message on stdin (or ``--input-file``, or ``--content`` base64 lines),
envelope addresses on the command line (or parsed out of the headers with
``--bcc-split`` / no recipients), written through the same
:class:`~emailrelay.spool.store.SpoolStore` as the SMTP service, so the
result is committed with the same durability protocol.

Guarantees: exit 0 and (with ``--verbose``) the path of each new message's
content file on stdout, as upstream prints it (:func:`shown_path`), only
once the message is committed; exit 1 with a one-line
``emailrelay-submit: error: ...`` on bad input (no recipient, CR/LF or NUL
in an address, unreadable input, unwritable spool) and nothing left behind.
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
from email.parser import BytesHeaderParser
from pathlib import Path

from .. import __version__
from ..spool.envelope import Envelope
from ..spool.names import State
from ..spool.store import SpoolStore

PROGRAM = "emailrelay-submit"
_BAD_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


class SubmitError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROGRAM, description="Submits a mail message into a spool directory.")
    p.add_argument("-s", "--spool-dir", default="/var/spool/emailrelay", help="spool directory")
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
        "-i", "--content-message-id", action="store_true", help="add a Message-ID header if missing"
    )
    p.add_argument("-F", "--content-from", action="store_true", help="add a From header if missing")
    p.add_argument("-t", "--content-to", action="store_true", help="add a To header if missing")
    p.add_argument(
        "-c",
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
        "-I", "--input-file", metavar="FILE", help="read the message from FILE instead of standard input"
    )
    p.add_argument(
        "-b", "--bcc-split", action="store_true", help="one message per Bcc recipient, Bcc header removed"
    )
    p.add_argument(
        "-C",
        "--copy",
        action="store_true",
        help="copy the new envelope into each spool sub-directory (the content stays), then delete the original",
    )
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


def _check_address(address: str) -> str:
    if _BAD_ADDRESS.search(address) or not address.isprintable():
        raise SubmitError(f"invalid address: {address!r}")
    return address


def _header_addresses(content: bytes, names: tuple[str, ...]) -> list[str]:
    headers = BytesHeaderParser().parsebytes(content)
    values = [v for name in names for v in headers.get_all(name, [])]
    return [addr for _, addr in email.utils.getaddresses([str(v) for v in values]) if addr]


def _add_headers(content: bytes, args: argparse.Namespace, sender: str, recipients: list[str]) -> bytes:
    headers = BytesHeaderParser().parsebytes(content)
    extra: list[str] = []
    if args.content_date and headers.get("Date") is None:
        extra.append(f"Date: {email.utils.formatdate(localtime=True)}")
    if args.content_message_id and headers.get("Message-ID") is None:
        extra.append(f"Message-ID: {email.utils.make_msgid(domain=socket.getfqdn() or 'localhost')}")
    if args.content_from and headers.get("From") is None and sender:
        extra.append(f"From: <{sender}>")
    if args.content_to and headers.get("To") is None and recipients:
        extra.append("To: " + ", ".join(f"<{r}>" for r in recipients))
    if not extra:
        return content
    return "".join(h + "\r\n" for h in extra).encode() + content


def _remove_bcc(content: bytes) -> bytes:
    head, sep, body = content.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


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
        except OSError as exc:
            raise SubmitError(f"cannot read {args.input_file}: {exc.strerror}") from None
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
    """Store the message(s); the content paths to print with ``--verbose``."""
    content = read_content(args)
    recipients = [_check_address(r) for r in [*args.to, *args.recipients]]
    if not recipients:
        recipients = [_check_address(a) for a in _header_addresses(content, ("To", "Cc", "Bcc"))]
    if not recipients:
        raise SubmitError("no recipients")
    sender = args.from_
    if sender is None:
        found = _header_addresses(content, ("From",))
        sender = found[0] if found else ""
    sender = _check_address(sender) if sender else ""
    content = _add_headers(content, args, sender, recipients)
    eightbit = any(b > 127 for b in content)
    store = SpoolStore(args.spool_dir, group=_file_group(args.spool_dir))
    if not store.directory.is_dir():
        raise SubmitError(f"invalid spool directory: {args.spool_dir}")
    groups = [[r] for r in recipients] if args.bcc_split else [recipients]
    if args.bcc_split:
        content = _remove_bcc(content)
    paths: list[str] = []
    for group in groups:
        env = Envelope(
            from_address=sender,
            to_remote=tuple(group),
            content_type="unknown",
            authentication=args.auth,
            client="127.0.0.1",
            utf8_mailbox_names=eightbit and any(not a.isascii() for a in [sender, *group]),
        )
        try:
            mid = store.store_message(env, content)
        except OSError as exc:
            raise SubmitError(
                f"cannot write to spool directory {args.spool_dir}: {exc.strerror or exc}"
            ) from None
        if args.copy and (boxes := store.mailboxes()):  # upstream's layout: the content stays here
            store.copy_to_directories(
                mid, State.READY, store.directory, boxes, envelope_only=True, delete_original=True
            )
        paths.append(shown_path(args.spool_dir, store.content_path(mid).name))
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
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 1
    if args.verbose:
        for path in paths:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
