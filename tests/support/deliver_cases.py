"""``deliver:`` and ``copy:`` scenarios, for one relay (ours or upstream's) started as root.

What it is for: tests/differential/test_deliver_followup.py (both programs, compared) and
tests/integration/test_deliver_followup.py (ours alone) run the same scenarios: a message
through a relay started as an operator starts it (root, default ``--user daemon``) with a
``--filter`` (:func:`serve_one`), or a hand-written spool forwarded by ``--as-client`` with a
``--client-filter`` (:func:`forward_one`); what they give back is what a user sees: the reply,
the delivery and filter log lines, and every file under the delivery directory with its mode,
owner, group, link count and bytes (:func:`tree`), names and dates normalised.

Guarantees: everything lives under the given base directory (from
:func:`tests.support.oracle.daemon_base`); :func:`immutable` undoes its ``chattr +i`` before it
returns, and skips the test where ``chattr`` cannot set the flag.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fake_smtp import FakeSmtp
from tests.support.filter_recorder import side_neutral
from tests.support.oracle import normalise_log, run, smtp_dialogue, spool_dir, start

#: An address verifier: the local part names the mailbox (``r...`` stays remote), as the guide's.
VERIFIER = """#!/bin/sh
local=${1%%@*}
case "$local" in
  r*) echo; echo "$1"; exit 1 ;;
  *) echo "Local $local"; echo "$local"; exit 0 ;;
esac
"""

_LINES = re.compile(
    r"delivery: |filter|exception|smtp client error|cannot delete|failing envelope|rejected by"
)
_ID = re.compile(r"emailrelay\.\d+\.\d+\.\d+")
_ID_BYTES = re.compile(_ID.pattern.encode())
_MAILDIR_NAME = re.compile(r"/(new|tmp)/\d+\.\d+\.\d+\.[^/:]+\.\d+\b")
_DATE = re.compile(rb"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}")


def verifier(base: Path) -> Path:
    path = base / "verifier.sh"
    path.write_text(VERIFIER)
    path.chmod(0o755)
    return path


def tree(directory: Path, base: Path) -> list[tuple[str, str, str, str, int, bytes]] | None:
    """Every entry under ``directory`` but dot-files: (name, mode, owner, group, links, bytes), names,
    ids, dates and ``base`` normalised; None when there is no such directory."""
    if not directory.is_dir():
        return None
    out = []
    for path in sorted(directory.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue
        st = path.lstat()
        name = _MAILDIR_NAME.sub(r"/\1/MAILDIR-NAME", _ID.sub("ID", str(path.relative_to(directory))))
        data = b""
        if stat.S_ISREG(st.st_mode):
            data = _DATE.sub(b"DATE", _ID_BYTES.sub(b"ID", path.read_bytes())).replace(bytes(base), b"BASE")
        owner, group = pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name
        out.append((name, oct(st.st_mode), owner, group, st.st_nlink, data))
    return out


def lines_of(text: str, base: Path, ports: tuple[int, ...] = ()) -> list[str]:
    """The delivery, filter and failure lines of a log, normalised (BASE, SIDE, ID)."""
    lines = normalise_log(text, None, drop=(r"supervisor: ", r"tx>>|rx<<"), ports=ports)
    return [
        _MAILDIR_NAME.sub(r"/\1/MAILDIR-NAME", side_neutral(x.replace(str(base), "BASE")))
        for x in lines
        if _LINES.search(x)
    ]


@dataclass
class Outcome:
    reply: str  # the reply to the message (serve_one), or the number of messages forwarded
    lines: list[str]
    spool: list[tuple[str, str, str, str, int, bytes]] | None
    boxes: list[tuple[str, str, str, str, int, bytes]] | None


def serve_one(
    side: str, base: Path, *args: str, rcpts: tuple[str, ...] = ("box@y.example",), wait: float = 0.5
) -> Outcome:
    """Start ``side`` in ``base`` with ``args`` (``BOXES`` in one stands for ``<base>/boxes``), send
    one message to ``rcpts``; the delivery directory is ``<base>/boxes`` (made by the caller)."""
    boxes = base / "boxes"
    argv = [a.replace("BOXES", str(boxes)) for a in args]
    with start(side, base, "--address-verifier", str(verifier(base)), *argv) as relay:
        commands = ["EHLO c.example", "MAIL FROM:<a@b.example>", *(f"RCPT TO:<{r}>" for r in rcpts)]
        replies = smtp_dialogue(relay.port, [*commands, "DATA", "Subject: s\r\n\r\nhello\r\n.", "QUIT"])
        time.sleep(wait)
        return Outcome(replies[-2], lines_of(relay.log(), base), tree(relay.spool, base), tree(boxes, base))


ENVELOPE = (
    "X-MailRelay-Format: #2821.8\r\nX-MailRelay-Content: unknown\r\nX-MailRelay-From: a@b.example\r\n"
    "X-MailRelay-ToCount: {count}\r\n{recipients}X-MailRelay-Authentication: \r\n"
    "X-MailRelay-Client: 127.0.0.1\r\nX-MailRelay-ClientCertificate: \r\nX-MailRelay-MailFromAuthIn: \r\n"
    "X-MailRelay-MailFromAuthOut: \r\nX-MailRelay-ForwardTo: \r\nX-MailRelay-ForwardToAddress: \r\n"
    "X-MailRelay-ClientAccountSelector: \r\nX-MailRelay-Utf8MailboxNames: 0\r\nX-MailRelay-End: 1\r\n"
)


def stored_spool(base: Path, to_local: tuple[str, ...], to_remote: tuple[str, ...]) -> Path:
    """``<base>/spool`` as a packaged relay leaves it (root, group daemon, 0775; files 0660) with
    one message for those recipients."""
    spool = spool_dir(base / "spool")
    recipients = "".join(f"X-MailRelay-To-Local: {r}\r\n" for r in to_local)
    recipients += "".join(f"X-MailRelay-To-Remote: {r}\r\n" for r in to_remote)
    mid = "emailrelay.1234.1700000000.1"
    envelope = ENVELOPE.format(count=len(to_local) + len(to_remote), recipients=recipients)
    for name, data in (
        (f"{mid}.content", b"Subject: s\r\n\r\nhello\r\n"),
        (f"{mid}.envelope", envelope.encode()),
    ):
        path = spool / name
        path.write_bytes(data)
        with contextlib.suppress(KeyError):
            os.chown(path, 0, grp.getgrnam("daemon").gr_gid)
        path.chmod(0o660)
    return spool


def forward_one(
    side: str, base: Path, spec: str, *args: str, to_local: tuple[str, ...] = ("box",)
) -> Outcome:
    """``--as-client`` with ``--client-filter spec`` over a spool holding one message for
    ``to_local`` and ``r@x.example`` (a next hop on loopback); the delivery directory is
    ``<base>/boxes``.  The outcome's ``reply`` is the number of messages the next hop got."""
    spool = stored_spool(base, to_local, ("r@x.example",))
    argv = [a.replace("BOXES", str(base / "boxes")) for a in args]
    with FakeSmtp() as hop:
        done = run(side, "emailrelay", "--as-client", f"127.0.0.1:{hop.port}", "--spool-dir", str(spool), "--log",
                   "--no-syslog", "--verbose", "--client-filter", spec, *argv, timeout=60)  # fmt: skip
        sent = len(hop.messages)
    text = (done.stdout + done.stderr).decode(errors="replace")
    return Outcome(
        str(sent), lines_of(text, base, (hop.port,)), tree(spool, base), tree(base / "boxes", base)
    )


def root_only(path: Path) -> Path:
    """A directory only root may enter or write (root:root 0700)."""
    path.mkdir()
    os.chown(path, 0, 0)
    path.chmod(0o700)
    return path


def subdirectories(spool: Path, *names: str) -> None:
    """Mailboxes under ``spool`` as an operator makes them (root, group daemon, 0775)."""
    for name in names:
        (spool / name).mkdir(parents=True)
        with contextlib.suppress(KeyError):
            os.chown(spool / name, 0, grp.getgrnam("daemon").gr_gid)
        (spool / name).chmod(0o775)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i`` on ``paths`` meanwhile (nothing can be made in them, not even by root)."""
    if not paths:
        yield
        return
    try:
        subprocess.run(["chattr", "+i", *map(str, paths)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=False, capture_output=True)


def reprs_in(lines: list[str]) -> list[str]:
    """Lines that show a Python representation (an exception's repr or ``[Errno n]``): none wanted."""
    return [x for x in lines if re.search(r"\[Errno \d+\]|\w+Error\(", x)]
