"""Filter scenarios' differential helpers: messages through a relay or spool per side, collected.

What it is for: tests/differential/ modules that compare filters with E-MailRelay 2.6b's
(test_filters.py, test_split.py, test_guide_part2.py): send one message per case through a relay
started with a ``--filter`` (:func:`serve_cases`), fill a spool the same way for both sides with
upstream's emailrelay-submit (:func:`submitted_spool`), and store one message for several
domains with a ``split:`` filter (:func:`split_run`, :data:`MIXED`).  What a filter was given is
recorded by tests/support/filter_recorder.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.filter_recorder import Case, filter_lines, spool_summary
from tests.support.oracle import Daemon, daemon_base, run, smtp_dialogue, start


def message(subject: str) -> str:
    """A message's content named by ``subject`` (a filter's case), ended for DATA."""
    return f"Subject: {subject}\r\n\r\nhello\r\n."


def serve_cases(
    side: str, base: Path, cases: dict[str, Case] | list[str], *args: str, wait: float = 0.25
) -> tuple[dict[str, tuple[str, list[str]]], list[str], Daemon]:
    """Start ``side`` with ``args``, send one message per case: case -> (final reply, filter log lines)."""
    out: dict[str, tuple[str, list[str]]] = {}
    with start(side, base, *args) as relay:
        for name in cases:
            before = len(relay.log())
            replies = smtp_dialogue(
                relay.port,
                [
                    "EHLO c.example",
                    "MAIL FROM:<a@b.example>",
                    "RCPT TO:<x@y.example>",
                    "DATA",
                    message(name),
                    "QUIT",
                ],
            )
            time.sleep(wait)
            out[name] = (replies[-2], filter_lines(relay.log()[before:], relay))
        spool = spool_summary(relay.spool)
    return out, spool, relay


def submitted_spool(side: str, base: Path, subjects: list[str], forward_to: str = "") -> Path:
    """A fresh ``<base>/<side>/spool`` (mode 0777) with one message per subject, submitted by upstream's
    emailrelay-submit (so both sides get the same files), each file mode 0666; a ``forward_to`` goes
    into each envelope's ForwardTo."""
    spool = base / side / "spool"
    spool.mkdir(parents=True)
    spool.chmod(0o777)
    for name in subjects:
        r = run("upstream", "emailrelay-submit", "--spool-dir", str(spool), "--from", "a@b.example", "x@y.example",
                input=f"Subject: {name}\r\n\r\nhello\r\n".encode())  # fmt: skip
        assert r.returncode == 0, r.stderr
    for p in spool.iterdir():
        p.chmod(0o666)
        if forward_to and p.name.endswith(".envelope"):
            p.write_bytes(p.read_bytes().replace(b"ForwardTo: \r\n", f"ForwardTo: {forward_to}\r\n".encode()))
    return spool


MIXED = ("x@Y.example", "z@w.example", "q@y.EXAMPLE", "nodomain", "r@W.example")


def split_run(side: str, spec: str, rcpts: tuple[str, ...]) -> tuple[str, list[str], list[int], list[str]]:
    """(final reply, spool files, link counts of the content files, filter log lines)."""
    base = daemon_base()
    with start(side, base, "--filter", spec) as relay:
        before = len(relay.log())
        replies = smtp_dialogue(
            relay.port,
            ["EHLO c.example", "MAIL FROM:<a@b.example>", *(f"RCPT TO:<{r}>" for r in rcpts), "DATA",
             "Subject: split\r\n\r\nhello\r\n.", "QUIT"],
        )  # fmt: skip
        time.sleep(0.3)
        links = sorted(p.stat().st_nlink for p in relay.spool.glob("*.content"))
        lines = filter_lines(relay.log()[before:], relay)
        return replies[-2], spool_summary(relay.spool), links, lines
