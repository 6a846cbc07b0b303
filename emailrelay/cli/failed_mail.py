"""Failed-mail helpers: ``emailrelay-notify``, ``emailrelay-resubmit``, ``emailrelay-bounce``.

What it is for: the guides' answers to ``.envelope.bad`` files, for cron:

- ``emailrelay-notify [DIR]`` reports the ``.bad`` messages that are new
  since its last run (a state file remembers what was reported, for a week
  after a message stops failing, so a resubmitted message that fails again
  is not reported twice), on stdout
  (cron mails it) or, with ``--mail-to ADDR``, as a report message put into
  the spool for the relay to deliver.  Silent when nothing is new.
- ``emailrelay-resubmit [DIR]`` turns ``.bad`` back into ``.envelope`` at
  most ``--limit`` times (default 5) per message, like upstream's
  ``emailrelay-resubmit.sh``.  It counts in a line
  ``X-MailRelay-Retry: N`` appended after ``X-MailRelay-End`` (upstream
  stops reading an envelope at ``End`` — its own ``Reason`` lines live
  there — and its script counts ``MailRelay-Reason`` lines, which this line
  does not match); envelopes failed by upstream, which carry one ``Reason``
  line per failure, are counted by those lines.
- ``emailrelay-bounce [DIR] [--id ID ...]`` sends each failed message's sender an
  RFC 3464 delivery status notification (``multipart/report;
  report-type=delivery-status``: a text part, a ``message/delivery-status``
  part with ``Reporting-MTA``, ``Final-Recipient``, ``Action: failed``,
  ``Status`` from the reason code, ``Diagnostic-Code``, and the original
  headers as ``text/rfc822-headers``), submitted into the spool with the
  null sender ``<>``, then deletes the failed message (``--keep`` keeps it
  and marks it ``X-MailRelay-Bounced`` so it is bounced only once).  A
  message with the null sender is never bounced (no bounce loops).

Also ``emailrelay notify|resubmit|bounce ...``.  Every spool change goes
through :class:`~emailrelay.spool.store.SpoolStore`; the relay may be
running.  Exit 0 on success, 1 when something could not be done.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..spool.envelope import Envelope, EnvelopeError
from ..spool.envelope import parse as parse_envelope
from ..spool.names import MessageId, State
from ..spool.store import SpoolStore
from .queue import (
    BOUNCED_KEY,
    DEFAULT_SPOOL,
    RETRY_KEY,
    Progress,
    header_lines,
    open_store,
    parse_id,
    retry_count,
    was_bounced,
)

NOTIFY_STATE = "emailrelay-notify.state"  # <spool>/.emailrelay-notify.state unless --state-file
MAX_LINE = 900  # keep generated lines well inside SMTP's 998
_ENHANCED = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})\b")


@dataclass
class Failed:
    """A ``.bad`` message as the helpers see it."""

    id: MessageId
    raw: bytes
    envelope: Envelope | None
    failed_at: float  # the .bad file's mtime
    error: str | None = None


def failed_messages(store: SpoolStore, ids: Iterable[MessageId] | None = None) -> list[Failed]:
    """The ``.bad`` messages (all of them, or those named), oldest first; vanished ones are skipped."""
    if ids is None:
        wanted = sorted((e.id, e.mtime) for e in store.scan() if e.state is State.BAD)
    else:
        wanted = []
        for mid in ids:
            try:
                wanted.append((mid, store.envelope_path(mid, State.BAD).stat().st_mtime))
            except OSError:
                continue
    out = []
    for mid, mtime in wanted:
        try:
            raw = store.envelope_bytes(mid, State.BAD)
        except OSError:
            continue  # resubmitted or deleted meanwhile
        try:
            out.append(Failed(mid, raw, parse_envelope(raw), mtime))
        except EnvelopeError as exc:
            out.append(Failed(mid, raw, None, mtime, str(exc)))
    return out


def _crlf(lines: Iterable[str]) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8")


def _wrap(line: str, width: int = MAX_LINE, indent: str = "") -> list[str]:
    """Cut an over-long line into pieces (continuations start with ``indent``)."""
    out = [line[:width]]
    rest = line[width:]
    while rest:
        out.append(indent + rest[: width - len(indent)])
        rest = rest[width - len(indent) :]
    return out


def _hostname() -> str:
    return socket.gethostname() or "localhost"


def _message_id(host: str) -> str:
    return f"<{int(time.time())}.{os.getpid()}.{uuid.uuid4().hex[:12]}@{host}>"


def _content_type(data: bytes) -> str:
    return "7bit" if data.isascii() else "8bit"


def _spool_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("spool", nargs="?", help="spool directory (as upstream's scripts take it)")
    p.add_argument("--spool-dir", "-s", help=f"spool directory (default {DEFAULT_SPOOL})")


def _spool_of(args: argparse.Namespace) -> str:
    return args.spool_dir or args.spool or DEFAULT_SPOOL


def _recipients(env: Envelope) -> list[str]:
    return list(env.to_remote) or list(env.to_local)


# ---- emailrelay-notify -----------------------------------------------------------------


def notify_report(items: list[Failed], spool: str, host: str) -> list[str]:
    """The text of a failure report (lines without line ends)."""
    n = len(items)
    lines = [f"E-MailRelay on {host}: {n} new failed message{'s' if n != 1 else ''} in {spool}", ""]
    for item in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(item.failed_at))
        lines.append(str(item.id))
        lines.append(f"  failed:  {when}")
        if item.envelope is None:
            lines.append(f"  (envelope unreadable: {item.error})")
        else:
            env = item.envelope
            lines.append(f"  from:    {env.from_address or '<>'}")
            lines.append(f"  to:      {', '.join(_recipients(env))}")
            reason = f"{env.reason_code or ''} {env.reason or ''}".strip()
            lines.extend(_wrap(f"  reason:  {reason or '(none given)'}", indent="           "))
            retries = retry_count(item.raw)
            if retries:
                lines.append(f"  resubmitted {retries} time{'s' if retries != 1 else ''} already")
        lines.append("")
    lines.append('Retry with "emailrelay queue retry ID" or emailrelay-resubmit;')
    lines.append('return to sender with emailrelay-bounce; details with "emailrelay queue show ID".')
    return lines


def _report_message(lines: list[str], n: int, to: list[str], sender: str, host: str) -> bytes:
    body = _crlf(lines)
    header_from = sender or f"MAILER-DAEMON@{host}"
    headers = [
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"From: E-MailRelay <{header_from}>",
        f"To: {', '.join(to)}",
        f"Subject: E-MailRelay on {host}: {n} failed message{'s' if n != 1 else ''}",
        f"Message-ID: {_message_id(host)}",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        f"Content-Type: text/plain; charset={'us-ascii' if body.isascii() else 'utf-8'}",
        f"Content-Transfer-Encoding: {_content_type(body)}",
        "",
    ]
    return _crlf(headers) + body


def _read_state(store: SpoolStore, state_file: str | None) -> dict[str, float]:
    """Reported ids and when they were first reported ("<id> <unix-time>" lines, "#" comments)."""
    if state_file:
        path = Path(state_file)
        data = path.read_bytes() if path.exists() else None
    else:
        data = store.read_tool_file(NOTIFY_STATE)
    state: dict[str, float] = {}
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            state[fields[0]] = float(fields[1]) if len(fields) > 1 else 0.0
        except ValueError:
            state[fields[0]] = 0.0
    return state


def _write_state(store: SpoolStore, state_file: str | None, state: dict[str, float]) -> None:
    lines = ["# emailrelay-notify: failed messages already reported (id, time first reported)"]
    lines += [f"{mid} {int(t)}" for mid, t in sorted(state.items())]
    data = ("\n".join(lines) + "\n").encode()
    if not state_file:
        store.write_tool_file(NOTIFY_STATE, data)
        return
    path = Path(state_file)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
    )  # never a planted symlink
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def notify(argv: list[str], out: TextIO, err: TextIO) -> int:
    p = argparse.ArgumentParser(
        prog="emailrelay-notify", description="Report failed (.bad) messages that are new since the last run."
    )
    _spool_arg(p)
    p.add_argument(
        "--state-file", help="where reported ids are remembered (default: SPOOL/.emailrelay-notify.state)"
    )
    p.add_argument(
        "--mail-to", action="append", default=[], metavar="ADDR", help="mail the report to ADDR via the spool"
    )
    p.add_argument("--local", action="store_true", help="--mail-to names local (POP) mailboxes")
    p.add_argument("--from", dest="sender", default="", help="envelope sender of the report (default: <>)")
    p.add_argument("--all", action="store_true", help="report every .bad message, not only new ones")
    p.add_argument(
        "--forget-after",
        type=float,
        default=7.0,
        metavar="DAYS",
        help="remember a reported message this long after it stopped failing (default 7)",
    )
    p.add_argument("--dry-run", "-n", action="store_true", help="do not update the state file")
    args = p.parse_args(argv)
    spool = _spool_of(args)
    store = open_store(spool)
    items = failed_messages(store)
    now = time.time()
    current = {str(i.id) for i in items}
    state = _read_state(store, args.state_file)
    fresh = [i for i in items if args.all or str(i.id) not in state]
    if fresh:
        host = _hostname()
        lines = notify_report(fresh, str(store.directory), host)
        if args.mail_to:
            content = _report_message(lines, len(fresh), args.mail_to, args.sender, host)
            rcpts = tuple(args.mail_to)
            env = Envelope(
                from_address=args.sender,
                to_remote=() if args.local else rcpts,
                to_local=rcpts if args.local else (),
                content_type=_content_type(content),
                client="127.0.0.1",
            )
            store.store_message(env, content)
        else:
            out.write("\n".join(lines) + "\n")
            out.flush()
    keep = args.forget_after * 86400
    new_state = {mid: t for mid, t in state.items() if mid in current or now - t < keep}
    new_state.update({str(i.id): now for i in fresh if str(i.id) not in new_state})
    if not args.dry_run and new_state != state:
        _write_state(store, args.state_file, new_state)
    return 0


# ---- emailrelay-resubmit ----------------------------------------------------------------


def resubmit(argv: list[str], out: TextIO, err: TextIO) -> int:
    p = argparse.ArgumentParser(
        prog="emailrelay-resubmit", description="Retry failed (.bad) messages a limited number of times."
    )
    _spool_arg(p)
    p.add_argument("--limit", type=int, default=5, help="resubmit a message at most this often (default 5)")
    p.add_argument(
        "--min-age", type=float, default=0.0, metavar="SECONDS", help="only messages failed this long ago"
    )
    p.add_argument("--dry-run", "-n", action="store_true", help="only say what would be done")
    p.add_argument("--verbose", "-v", action="store_true", help="name each message")
    p.add_argument("--progress", action="store_true", help="show progress on stderr even when not a tty")
    args = p.parse_args(argv)
    store = open_store(_spool_of(args))
    now = time.time()
    items = failed_messages(store)
    progress = Progress("resubmit", len(items), enabled=args.progress or None, stream=err)
    problems = 0
    for item in items:
        progress.step()
        tries = retry_count(item.raw)
        if tries >= args.limit:
            if args.verbose:
                out.write(f"{item.id}: not resubmitted: tried {tries} times already\n")
            continue
        if now - item.failed_at < args.min_age:
            continue
        if args.dry_run:
            out.write(f"{item.id}: would resubmit (retry {tries + 1} of {args.limit})\n")
            continue
        if not store.append_envelope_line(
            item.id, State.BAD, f"{RETRY_KEY}: {tries + 1}"
        ) or not store.unfail(item.id):
            err.write(f"emailrelay-resubmit: {item.id}: gone or changed state meanwhile\n")
            problems += 1
            continue
        if args.verbose:
            out.write(f"{item.id}: resubmitted (retry {tries + 1} of {args.limit})\n")
    progress.finish()
    return 1 if problems else 0


# ---- emailrelay-bounce ---------------------------------------------------------------


def dsn_status(reason: str | None, code: str | None) -> str:
    """RFC 3463 status for a failure: the reason's enhanced code if it agrees, else from the SMTP code."""
    basic = code[:1] if code and code[:1] in ("4", "5") else ""
    m = _ENHANCED.match(reason or "")
    if m and (not basic or m.group(1) == basic):
        return m.group(0)
    return f"{basic or '5'}.0.0"


def _diagnostic(reason: str | None, code: str | None) -> str:
    text = (reason or "").strip()
    if code:
        return f"smtp; {code} {text}".rstrip()
    return f"X-MailRelay; {text or 'failed'}"


def _field(name: str, value: str) -> list[str]:
    return _wrap(f"{name}: {value}", width=MAX_LINE, indent=" ")


def build_dsn(
    failed: Envelope,
    mid: MessageId,
    original_head: bytes,
    *,
    reporting_mta: str,
    date: str | None = None,
    message_id: str | None = None,
    boundary: str | None = None,
) -> bytes:
    """An RFC 3464 delivery status notification for a failed message, as CRLF bytes."""
    boundary = boundary or f"=_emailrelay_{uuid.uuid4().hex}"
    date = date or email.utils.formatdate(localtime=True)
    message_id = message_id or _message_id(reporting_mta)
    rcpts = _recipients(failed)
    status = dsn_status(failed.reason, failed.reason_code)
    diagnostic = _diagnostic(failed.reason, failed.reason_code)
    # a foreign id (not of our form) carries no time: no Arrival-Date (optional, RFC 3464 2.2.5)
    arrival = "" if mid.is_foreign else email.utils.formatdate(mid.time, localtime=True)
    sender = failed.from_address
    text = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. Its headers are attached below.",
        "",
        "For further assistance, please send mail to postmaster.",
        "",
    ]
    for rcpt in rcpts:
        why = f"{failed.reason_code or ''} {failed.reason or 'delivery failed'}".strip()
        text.extend(_wrap(f"<{rcpt}>: {why}"))
    headers = header_lines(original_head, 10_000)
    lines = [
        f"Date: {date}",
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        f"Content-Type: text/plain; charset={'us-ascii' if all(t.isascii() for t in text) else 'utf-8'}",
        "",
        *text,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        *_field("Reporting-MTA", f"dns; {reporting_mta}"),
        *_field("X-MailRelay-Queue-ID", str(mid)),
        *_field("X-MailRelay-Sender", f"rfc822; {sender}"),
        *(_field("Arrival-Date", arrival) if arrival else []),
    ]
    for rcpt in rcpts:
        lines += [
            "",
            *_field("Final-Recipient", f"rfc822; {rcpt}"),
            "Action: failed",
            f"Status: {status}",
            *_field("Diagnostic-Code", diagnostic),
        ]
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
        *(piece for h in headers for piece in _wrap(h, indent=" ")),
        "",
        f"--{boundary}--",
    ]
    return _crlf(lines)


def bounce(argv: list[str], out: TextIO, err: TextIO) -> int:
    p = argparse.ArgumentParser(
        prog="emailrelay-bounce",
        description="Return failed (.bad) messages to their senders as RFC 3464 delivery status notifications.",
    )
    _spool_arg(p)
    p.add_argument(
        "--id", dest="ids", action="append", default=[], metavar="ID", help="only this message (repeatable)"
    )
    p.add_argument("--keep", action="store_true", help="keep the failed message (marked, bounced only once)")
    p.add_argument(
        "--reporting-mta", default=None, help="host name in the report (default: this host's name)"
    )
    p.add_argument(
        "--after-retries", type=int, default=0, metavar="N", help="only messages resubmitted N times already"
    )
    p.add_argument(
        "--min-age", type=float, default=0.0, metavar="SECONDS", help="only messages failed this long ago"
    )
    p.add_argument("--dry-run", "-n", action="store_true", help="only say what would be done")
    p.add_argument("--verbose", "-v", action="store_true", help="name each message")
    args = p.parse_args(argv)
    store = open_store(_spool_of(args))
    ids: list[MessageId] | None = None
    problems = 0
    if args.ids:
        ids = []
        for text in args.ids:
            mid = parse_id(text)
            found = store.find(str(mid)) if mid is not None else None
            if mid is None or found is None or found[1] is not State.BAD:
                err.write(f"emailrelay-bounce: error: no such failed message: {text}\n")
                problems += 1
            else:
                ids.append(mid)
    host = args.reporting_mta or _hostname()
    now = time.time()
    for item in failed_messages(store, ids):
        env = item.envelope
        if env is None:
            err.write(f"emailrelay-bounce: {item.id}: not bounced: envelope unreadable: {item.error}\n")
            problems += 1
            continue
        if not env.from_address:
            if args.verbose:
                out.write(f"{item.id}: not bounced: null sender\n")
            continue
        if (
            was_bounced(item.raw)
            or retry_count(item.raw) < args.after_retries
            or now - item.failed_at < args.min_age
        ):
            continue
        if args.dry_run:
            out.write(f"{item.id}: would bounce to <{env.from_address}>\n")
            continue
        dsn = build_dsn(env, item.id, store.content_head(item.id), reporting_mta=host)
        report = Envelope(
            from_address="",
            to_remote=(env.from_address,),
            content_type=_content_type(dsn),
            client="127.0.0.1",
            utf8_mailbox_names=not env.from_address.isascii(),
        )
        new_id = store.store_message(report, dsn)
        if args.keep:
            done = store.append_envelope_line(item.id, State.BAD, f"{BOUNCED_KEY}: {new_id}")
        else:
            done = store.delete(item.id, State.BAD)
        if not done:
            err.write(f"emailrelay-bounce: {item.id}: changed state while bouncing (report {new_id} sent)\n")
            problems += 1
        elif args.verbose:
            out.write(f"{item.id}: bounced to <{env.from_address}> as {new_id}\n")
    return 1 if problems else 0


# ---- entry points -------------------------------------------------------------------


def _run(tool: Callable[[list[str], TextIO, TextIO], int], argv: list[str] | None, name: str) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return tool(args, sys.stdout, sys.stderr)
    except BrokenPipeError:  # pragma: no cover
        return 0
    except OSError as exc:  # SpoolStoreError included
        print(f"{name}: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def notify_main(argv: list[str] | None = None) -> int:
    """``emailrelay-notify`` console script."""
    return _run(notify, argv, "emailrelay-notify")


def resubmit_main(argv: list[str] | None = None) -> int:
    """``emailrelay-resubmit`` console script."""
    return _run(resubmit, argv, "emailrelay-resubmit")


def bounce_main(argv: list[str] | None = None) -> int:
    """``emailrelay-bounce`` console script."""
    return _run(bounce, argv, "emailrelay-bounce")
