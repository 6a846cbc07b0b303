"""``emailrelay queue``: look at and act on the spool, like Postfix's mailq and postsuper.

What it is for: an operator's tool on any spool directory (``--spool-dir``,
default ``/var/spool/emailrelay``), ours or one written by upstream
E-MailRelay::

    emailrelay queue list [--json] [--state S]   id, age, size, sender, state, reason, recipients
    emailrelay queue show ID [--json] [--body]   envelope fields, why it waits, headers (or all of it)
    emailrelay queue retry ID... | --all-failed  .bad -> ready (a ready one: forget its back-off)
    emailrelay queue delete ID... | --all-failed | --all | --state S    never a .busy one (exit 1)
    emailrelay queue hold ID...                  ready -> .envelope.held (forwarders skip it)
    emailrelay queue release ID...               .envelope.held -> ready

What it expects: the relay may be running.  Every change goes through
:class:`~emailrelay.spool.store.SpoolStore` (atomic renames; claimed
``.busy`` messages are never touched), so a message a forwarder holds is
reported as busy, and a message that changed state under us is reported
as gone rather than half-handled.  ``ID`` is a message id or the name (or
path) of one of its files.

Like Postfix's mailq, ``list`` says why a message waits: for a ``.bad``
one the envelope's ``X-MailRelay-Reason``; for a deferred one (a ready
message a forwarder gave back) the next hop's reply or the connection
error, the attempts and the time of the next try, from the store's
deferral record (:class:`~emailrelay.spool.store.Deferral`); and every
recipient.  ``--state`` takes the envelope states and ``failed`` (= bad)
and ``deferred``.

Guarantees: exit 0 when every named message was handled, 1 when one was
not (missing, busy, wrong state) or the spool cannot be read, 2 on a usage
error.  Long operations (``--all-failed``) show progress on stderr when it
is a terminal, or always with ``--progress``.  Output of ``list`` is sorted
oldest first; ``--json`` prints machine-readable objects.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from ..config import OPTION_DEFAULTS
from ..spool.envelope import Envelope, EnvelopeError
from ..spool.envelope import parse as parse_envelope
from ..spool.names import MessageId, State, is_valid_id
from ..spool.store import SpoolStore, SpoolStoreError

DEFAULT_SPOOL = OPTION_DEFAULTS["spool-dir"]
PROG = "emailrelay queue"

#: Lines the failed-mail helpers append after ``X-MailRelay-End`` (docs/operator-guide.md).
RETRY_KEY = "X-MailRelay-Retry"  # "X-MailRelay-Retry: N": emailrelay-resubmit's N-th resubmission
BOUNCED_KEY = "X-MailRelay-Bounced"  # "X-MailRelay-Bounced: <dsn id>": emailrelay-bounce --keep
_RETRY_RE = re.compile(rb"^X-MailRelay-Retry:\s*([0-9]+)\s*$", re.MULTILINE)
_REASON_RE = re.compile(rb"^X-MailRelay-Reason:", re.MULTILINE)
_BOUNCED_RE = re.compile(rb"^X-MailRelay-Bounced:", re.MULTILINE)
#: ``--state`` words beyond the envelope states: failed is bad; deferred is a ready message with a
#: recorded deferral or a back-off still running.
FAILED, DEFERRED = "failed", "deferred"
STATE_CHOICES = (*(s.label for s in State), FAILED, DEFERRED)
_FILE_SUFFIXES = (
    ".envelope.busy",
    ".envelope.bad",
    ".envelope.new",
    ".envelope.held",
    ".envelope",
    ".content",
)


# ---- shared with failed_mail.py ---------------------------------------------------------


def open_store(spool_dir: str | os.PathLike[str]) -> SpoolStore:
    """A store on an existing spool; as root, new files get the spool directory's group (as the relay's do)."""
    directory = Path(spool_dir)
    if not directory.is_dir():
        raise SpoolStoreError(2, f"invalid spool directory: {directory}")
    group = None
    if os.geteuid() == 0:
        gid = directory.stat().st_gid
        group = gid if gid != 0 else None
    return SpoolStore(directory, group=group)


def retry_count(raw: bytes) -> int:
    """How often a message was resubmitted: our ``X-MailRelay-Retry`` lines, or upstream's reason lines.

    Upstream E-MailRelay appends a ``Reason`` line at every failure and never
    removes one, so its envelopes carry ``failures - 1`` resubmissions that way;
    our relay keeps one reason and we count in ``X-MailRelay-Retry: N`` instead.
    """
    ours = max((int(m) for m in _RETRY_RE.findall(raw.replace(b"\r\n", b"\n"))), default=0)
    upstream = len(_REASON_RE.findall(raw.replace(b"\r\n", b"\n"))) - 1
    return max(ours, upstream, 0)


def was_bounced(raw: bytes) -> bool:
    return _BOUNCED_RE.search(raw.replace(b"\r\n", b"\n")) is not None


def parse_id(text: str) -> MessageId | None:
    """A message id from an id, a file name or a path; None if it is none of these."""
    name = text.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _FILE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return MessageId.parse(name) if is_valid_id(name) else None


class Progress:
    """``<what>: n/total`` on stderr: redrawn in place on a terminal, a line a second otherwise."""

    def __init__(self, what: str, total: int, *, enabled: bool | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = True if enabled else self.tty
        self.what = what
        self.total = total
        self.done = 0
        self._last = 0.0
        self._shown = -1

    def step(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= (0.1 if self.tty else 1.0):
            self._last = now
            self._show()

    def _show(self, final: bool = False) -> None:
        self._shown = self.done
        text = f"{self.what}: {self.done}/{self.total}"
        if self.tty:
            self.stream.write(f"\r{text}" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.total and (self.tty or self._shown != self.done):
            self._show(final=True)


# ---- inspecting --------------------------------------------------------------------------


@dataclass
class QueueEntry:
    id: str
    state: str
    created: int  # unix time, from the id
    age: int  # seconds since created
    size: int | None  # content bytes
    sender: str | None  # None when the envelope cannot be read
    recipients: int | None
    reason: str | None  # bad: the envelope's reason; deferred: the last attempt's reply or error
    reason_code: str | None
    retries: int
    not_before: float | None  # ready messages in back-off: when they are due
    error: str | None = None  # why the envelope could not be read
    to: list[str] | None = None  # every recipient (remote, then local); None when unreadable
    deferred: bool = False  # a forwarder gave it back (it has a deferral record)
    attempts: int = 0  # deferrals recorded
    last_try: float | None = None  # unix time of the last deferral

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def inspect(store: SpoolStore, mid: MessageId, state: State, now: float, mtime: float) -> QueueEntry | None:
    """One message's summary; None when it vanished meanwhile (forwarded, deleted)."""
    raw = None
    for _ in range(3):  # the state may change under us: look it up again
        try:
            raw = store.envelope_bytes(mid, state)
            break
        except SpoolStoreError:
            found = store.find(str(mid))
            if found is None:
                return None
            state = found[1]
    env: Envelope | None = None
    error = None
    if raw is None:
        error = "envelope is changing"
    else:
        try:
            env = parse_envelope(raw)
        except EnvelopeError as exc:
            error = str(exc)
    deferral = store.deferral(mid) if state in (State.READY, State.BUSY, State.HELD) else None
    reason, code = (None, None) if env is None else (env.reason, env.reason_code)
    if deferral is not None:
        reason, code = deferral.reason, None if deferral.code is None else str(deferral.code)
    return QueueEntry(
        id=str(mid),
        state=state.label,
        created=int(store.created(mid)),
        age=max(0, int(now - store.created(mid))),
        size=store.content_size(mid),
        sender=None if env is None else env.from_address,
        recipients=None if env is None else env.recipient_count,
        reason=reason,
        reason_code=code,
        retries=retry_count(raw or b""),
        not_before=mtime if state is State.READY and mtime > now else None,
        error=error,
        to=None if env is None else [*env.to_remote, *env.to_local],
        deferred=deferral is not None,
        attempts=0 if deferral is None else deferral.attempts,
        last_try=None if deferral is None else deferral.at,
    )


def selected(entry: QueueEntry, states: set[str] | None) -> bool:
    """Whether ``--state`` picks the entry (None: every entry)."""
    if not states:
        return True
    if entry.state in states or (entry.state == "bad" and FAILED in states):
        return True
    return DEFERRED in states and entry.state == "ready" and (entry.deferred or entry.not_before is not None)


def entries(store: SpoolStore, states: set[str] | None = None) -> list[QueueEntry]:
    now = time.time()
    # the envelope states worth reading for ``states``: failed ones are bad, deferred ones ready
    labels = None if not states else {{FAILED: "bad", DEFERRED: "ready"}.get(s, s) for s in states}
    out = []
    for e in sorted(store.scan(), key=lambda e: e.id):
        if labels is not None and e.state.label not in labels:
            continue
        entry = inspect(store, e.id, e.state, now, e.mtime)
        if entry is not None and selected(entry, states):
            out.append(entry)
    return out


def format_age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return str(n)
    value = float(n)
    for unit in ("K", "M", "G", "T"):
        value /= 1024
        if value < 1024 or unit == "T":
            break
    return f"{value:.1f}{unit}"


def _list(store: SpoolStore, args: argparse.Namespace, out: TextIO) -> int:
    states = set(args.state) if args.state else None
    items = entries(store, states)
    if args.json:
        json.dump([i.as_json() for i in items], out, indent=None if args.compact else 2)
        out.write("\n")
        return 0
    if not items:
        out.write("spool is empty\n" if not states else "no messages\n")
        return 0
    out.write(f"{'ID':<34} {'STATE':<5} {'AGE':>7} {'SIZE':>7} {'RCPT':>4}  {'FROM':<28} REASON\n")
    now = time.time()
    for i in items:
        sender = "?" if i.sender is None else (i.sender or "<>")
        rcpts = "?" if i.recipients is None else str(i.recipients)
        reason = f"(unreadable: {i.error})" if i.error else ""
        if i.deferred or i.not_before is not None:
            reason = (
                f"(retry in {format_age(i.not_before - now)})" if i.not_before is not None else "(due now)"
            )
        elif i.reason is not None:
            reason = f"{i.reason_code or ''} {i.reason}".strip()
        out.write(
            f"{i.id:<34} {i.state:<5} {format_age(i.age):>7} {format_size(i.size):>7} {rcpts:>4}  "
            f"{sender:<28} {reason}".rstrip()
            + "\n"
        )
        if i.deferred:  # mailq's second line: why it waits
            tries = f"{i.attempts} attempt{'s' if i.attempts != 1 else ''}"
            last = f", last {format_age(now - i.last_try)} ago" if i.last_try is not None else ""
            why = f"{i.reason_code or ''} {i.reason}".strip()
            out.write(f"    ({why}; {tries}{last})\n")
        for rcpt in i.to or ():
            out.write(f"    {rcpt}\n")
    total = sum(i.size or 0 for i in items)
    counts: dict[str, int] = {}
    for i in items:
        counts[i.state] = counts.get(i.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.write(f"-- {total} bytes in {len(items)} message{'s' if len(items) != 1 else ''} ({summary})\n")
    return 0


_SHOW_FIELDS = (
    ("content-type", "content_type"),
    ("authentication", "authentication"),
    ("client", "client"),
    ("mail-from-auth-in", "mail_from_auth_in"),
    ("mail-from-auth-out", "mail_from_auth_out"),
    ("forward-to", "forward_to"),
    ("forward-to-address", "forward_to_address"),
    ("client-account-selector", "client_account_selector"),
)


def header_lines(head: bytes, limit: int) -> list[str]:
    """The first ``limit`` header lines (continuations included) of a content's start."""
    lines = []
    for raw in head.split(b"\n"):
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        if not line:
            break
        lines.append(line)
        if len(lines) >= limit:
            break
    return lines


def _show(store: SpoolStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    mid = parse_id(args.id)
    found = store.find(str(mid)) if mid is not None else None
    if mid is None or found is None:
        err.write(f"{PROG}: error: no such message: {args.id}\n")
        return 1
    now = time.time()
    state = found[1]
    try:
        raw = store.envelope_bytes(mid, state)
    except SpoolStoreError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 1
    try:
        env: Envelope | None = parse_envelope(raw)
        error = None
    except EnvelopeError as exc:
        env, error = None, str(exc)
    headers = header_lines(store.content_head(mid), args.lines)
    deferral = store.deferral(mid) if state is not State.BAD else None
    mtime = _mtime(store, mid, state)
    info: dict[str, Any] = {
        "id": str(mid),
        "state": state.label,
        "envelope": str(store.envelope_path(mid, state)),
        "content": str(store.content_path(mid)),
        "size": store.content_size(mid),
        "created": _when(int(store.created(mid))),
        "age": format_age(now - store.created(mid)),
        "retries": retry_count(raw),
    }
    if env is not None:
        info.update(
            {
                "from": env.from_address,
                "to-remote": list(env.to_remote),
                "to-local": list(env.to_local),
                **{label: getattr(env, attr) for label, attr in _SHOW_FIELDS},
                "utf8-mailbox-names": env.utf8_mailbox_names,
                "client-certificate": bool(env.client_certificate),
                "reason": env.reason,
                "reason-code": env.reason_code,
                "extra": list(env.extra_tail),
            }
        )
    else:
        info["error"] = error
    if deferral is not None:
        info.update(
            {
                "deferred-reason": deferral.reason,
                "deferred-code": deferral.code,
                "attempts": deferral.attempts,
                "last-try": _when(deferral.at),
            }
        )
    if state is State.READY and mtime is not None and (deferral is not None or mtime > now):
        info["next-try"] = _when(mtime) if mtime > now else "now"
    info["headers"] = headers
    if args.json:
        if args.body:
            info["body"] = b"".join(store.content_chunks(mid)).decode("utf-8", "replace")
        json.dump(info, out, indent=2)
        out.write("\n")
        return 0
    for key, value in info.items():
        if key == "headers":
            continue
        if isinstance(value, list):
            if key in ("to-remote", "to-local"):
                for item in value:
                    out.write(f"{key + ':':<26}{item}\n")
            else:
                for item in value:
                    out.write(f"{'extra:':<26}{item}\n")
        elif value is not None and value != "":
            out.write(f"{key + ':':<26}{value}\n")
    if args.body:  # the whole message, as stored (CRLF shown as newlines)
        out.write("message:\n")
        tail = b""
        for chunk in store.content_chunks(mid):
            text, tail = _split_complete(tail + chunk)
            out.write(text.replace(b"\r\n", b"\n").decode("utf-8", "replace"))
        out.write(tail.replace(b"\r\n", b"\n").decode("utf-8", "replace"))
        return 0
    out.write("headers:\n")
    for line in headers:
        out.write(f"  {line}\n")
    return 0


def _split_complete(data: bytes) -> tuple[bytes, bytes]:
    """(everything up to the last LF, the rest): no CRLF or UTF-8 sequence is cut between chunks."""
    cut = data.rfind(b"\n") + 1
    return data[:cut], data[cut:]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t))


def _mtime(store: SpoolStore, mid: MessageId, state: State) -> float | None:
    try:
        return store.envelope_path(mid, state).stat().st_mtime
    except OSError:
        return None


# ---- acting ------------------------------------------------------------------------------


def _targets(
    store: SpoolStore, args: argparse.Namespace, err: TextIO
) -> tuple[list[tuple[MessageId, State]], int]:
    """(id, state) pairs to act on, and the number of arguments that named no message."""
    all_failed, everything = getattr(args, "all_failed", False), getattr(args, "all", False)
    states = getattr(args, "select_state", None)
    if all_failed or everything or states:
        if args.ids or sum(map(bool, (all_failed, everything, states))) > 1:
            err.write(f"{PROG}: error: give message ids or one of --all-failed, --all, --state, not both\n")
            return [], 1
        if everything:  # not what is being stored or forwarded: those cannot be deleted
            return sorted((e.id, e.state) for e in store.scan() if e.state not in (State.NEW, State.BUSY)), 0
        by_label = {s.label: s for s in State}
        chosen = entries(store, set(states) if states else {FAILED})
        return [(MessageId.parse(e.id), by_label[e.state]) for e in chosen], 0
    if not args.ids:
        err.write(f"{PROG}: error: no message id given\n")
        return [], 1
    found, missing = [], 0
    for text in args.ids:
        mid = parse_id(text)
        hit = store.find(str(mid)) if mid is not None else None
        if hit is None:
            err.write(f"{PROG}: error: no such message: {text}\n")
            missing += 1
        else:
            found.append(hit)
    return found, missing


def _act(store: SpoolStore, args: argparse.Namespace, out: TextIO, err: TextIO, verb: str, one: Any) -> int:
    targets, failures = _targets(store, args, err)
    progress = Progress(verb, len(targets), enabled=args.progress or None, stream=err)
    done = 0
    for mid, state in targets:
        problem = one(mid, state)
        progress.step()
        if problem:
            err.write(f"{PROG}: error: {mid}: {problem}\n")
            failures += 1
        else:
            done += 1
            if args.verbose:
                out.write(f"{verb}: {mid}\n")
    progress.finish()
    past = {"retry": "retried", "delete": "deleted", "hold": "held", "release": "released"}[verb]
    out.write(f"{past} {done} message{'s' if done != 1 else ''}\n")
    return 1 if failures else 0


def _retry_one(store: SpoolStore) -> Any:
    def one(mid: MessageId, state: State) -> str | None:
        if state is State.BAD:
            return None if store.unfail(mid) else "gone or changed state"
        if state is State.READY:
            return None if store.make_due(mid) else "gone or changed state"
        if state is State.HELD:
            return "held: use 'release'"
        return f"cannot retry a {state.label} message"

    return one


def _delete_one(store: SpoolStore) -> Any:
    def one(mid: MessageId, state: State) -> str | None:
        if state in (State.BUSY, State.NEW):
            return f"{state.label}: being {'forwarded' if state is State.BUSY else 'stored'}, not deleted"
        try:
            return None if store.delete(mid, state) else "gone or changed state"
        except SpoolStoreError as exc:
            return str(exc)

    return one


def _hold_one(store: SpoolStore) -> Any:
    def one(mid: MessageId, state: State) -> str | None:
        if state is State.HELD:
            return None
        if state is not State.READY:
            return f"cannot hold a {state.label} message"
        return None if store.hold(mid) else "gone or changed state"

    return one


def _release_one(store: SpoolStore) -> Any:
    def one(mid: MessageId, state: State) -> str | None:
        if state is not State.HELD:
            return f"not held ({state.label})"
        return None if store.release_held(mid) else "gone or changed state"

    return one


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--spool-dir", "-s", default=DEFAULT_SPOOL, help=f"spool directory (default {DEFAULT_SPOOL})"
    )
    p = argparse.ArgumentParser(prog=PROG, description="List and manage the messages in a spool directory.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    ls = sub.add_parser("list", parents=[common], help="list the messages, oldest first")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.add_argument("--compact", action="store_true", help="with --json: one line")
    ls.add_argument(
        "--state",
        action="append",
        choices=STATE_CHOICES,
        help="only this state (failed is bad; deferred: ready, waiting for a retry)",
    )
    show = sub.add_parser("show", parents=[common], help="show one message's envelope and headers")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.add_argument("--lines", type=int, default=20, help="header lines to show (default 20)")
    show.add_argument("--body", action="store_true", help="show the whole message, not only its headers")
    for name, text, failed in (
        ("retry", "retry failed messages now (.bad -> ready; ready: forget back-off)", True),
        ("delete", "delete messages (never one being forwarded)", True),
        ("hold", "keep ready messages from being forwarded", False),
        ("release", "make held messages ready again", False),
    ):
        sp = sub.add_parser(name, parents=[common], help=text)
        sp.add_argument("ids", nargs="*", metavar="ID")
        if failed:
            sp.add_argument("--all-failed", action="store_true", help="every .bad message")
        if name == "delete":
            sp.add_argument("--all", action="store_true", help="every message not being stored or forwarded")
            sp.add_argument(
                "--state",
                dest="select_state",
                action="append",
                choices=(FAILED, DEFERRED, "held"),
                help="every message in this state (failed: .bad; deferred: waiting for a retry)",
            )
        sp.add_argument("--progress", action="store_true", help="show progress on stderr even when not a tty")
        sp.add_argument("--verbose", "-v", action="store_true", help="name each message handled")
    return p


def main(argv: Iterable[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        store = open_store(args.spool_dir)
        if args.command == "list":
            return _list(store, args, out)
        if args.command == "show":
            return _show(store, args, out, err)
        one = {"retry": _retry_one, "delete": _delete_one, "hold": _hold_one, "release": _release_one}
        return _act(store, args, out, err, args.command, one[args.command](store))
    except BrokenPipeError:  # pragma: no cover - `| head`
        return 0
    except OSError as exc:  # SpoolStoreError included
        err.write(f"{PROG}: error: {exc.strerror or exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
