"""The reference-guide regrades' differential helpers: one relay per side, one session, compared.

What it is for: the guide tests of tests/differential/ (test_guide_part1.py, test_guide_part2.py,
test_guide_part2_network.py, test_more_ilog.py, test_more_ifwd.py) start one relay per side with
an option as a user types it, run one SMTP session and compare what a user sees
(:func:`session`, :func:`both`: the replies, the normalised log, the spool, the exit status on
SIGTERM), or collect side -> result themselves and compare it with :func:`assert_same`.  Also
the greeting's and log's version made side-neutral (:data:`VERSION`, :func:`greeting_as_ours`),
a guide message (:data:`MESSAGE`) and a file ``daemon`` can read (:func:`readable_file`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from pprint import pformat

from tests.support.diff_smtp_server import DROP
from tests.support.oracle import (
    SIDES,
    Daemon,
    daemon_base,
    normalise_log,
    normalise_spool,
    smtp_dialogue,
    start,
)
from tests.support.relay import wait_until

DIALOGUE = (
    "EHLO c.example", "MAIL FROM:a@b.c", "RSET", "MAIL FROM:<a@b.c>", "RCPT TO:<x@y.z>", "DATA",
    "Subject: hi\r\n\r\nbody\r\n.", "VRFY x@y.z", "QUIT",
)  # fmt: skip
# decisions.md, "Greeting": our version is V2.6 (the lines only one side writes on purpose, the
# supervisor's and the content file's creation, are tests/support/diff_smtp_server.py's DROP)
VERSION = re.compile(r" V2\.6b? -- ")
_PORT_ONLY = re.compile(r"^(emailrelay: \w+: )\d+: ")


@dataclass
class Seen:
    """What one side did: the replies, the normalised log, the spool files, the exit status."""

    replies: list[str]
    log: list[str]
    spool: dict[str, bytes]
    rc: int | None


def listening(port: int) -> bool:
    """Whether something listens on ``port`` (read from /proc, so no probe session is logged)."""
    needle = f":{port:04X} "
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            if needle in f"{fields[1]} " and fields[3] == "0A":
                return True
    return False


def exit_status(rc: int | None) -> int | None:
    """The status a shell sees: a death by signal N is 128 + N."""
    return 128 - rc if rc is not None and rc < 0 else rc


def _normalised(d: Daemon) -> list[str]:
    text = d.log().replace(str(d.base), "BASE")  # (after the stop: no pid file to read the pid from)
    lines = [VERSION.sub(" VERSION -- ", x) for x in normalise_log(text, ports=[d.port], drop=DROP)]
    return [_PORT_ONLY.sub(r"\1N: ", x) for x in lines]


def session(base: Path, side: str, args: Sequence[str], dialogue: Sequence[str] = DIALOGUE) -> Seen:
    """Start ``side`` with ``args``, run ``dialogue`` once (unless it exits first), stop it."""
    d = start(side, base, *args, wait=False, name=side)
    try:
        assert wait_until(lambda: listening(d.port) or d.proc.poll() is not None, 20)
        replies: list[str] = []
        if d.proc.poll() is None:
            replies = [VERSION.sub(" VERSION -- ", r) for r in smtp_dialogue(d.port, dialogue)]
            wait_until(lambda: "smtp connection closed" in d.log(), 10)
    finally:
        rc = exit_status(d.stop())
    return Seen(replies, _normalised(d), normalise_spool(d.spool), rc)


def both(tmp_path: Path, args: Sequence[str], dialogue: Sequence[str] = DIALOGUE) -> dict[str, Seen]:
    """:func:`session` for each side, in one fresh base directory."""
    base = daemon_base(tmp_path)
    return {side: session(base, side, args, dialogue) for side in SIDES}


def greeting_as_ours(reply: str) -> str:
    """Our greeting names version 2.6, upstream's 2.6b (docs/decisions.md, "--version")."""
    return reply.replace("E-MailRelay V2.6b --", "E-MailRelay V2.6 --")


def assert_same(got: dict[str, object]) -> None:
    """Both sides alike, both shown in full when not."""
    assert got["ours"] == got["upstream"], (
        "\nours:\n" + pformat(got["ours"]) + "\nupstream:\n" + pformat(got["upstream"])
    )


def readable_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, mode 0644 (readable by ``daemon``)."""
    path.write_text(text)
    path.chmod(0o644)
    return path


MESSAGE = ["MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>", "DATA", "Subject: s\r\n\r\nbody\r\n."]
