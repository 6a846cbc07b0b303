"""Where a long log line is cut, against E-MailRelay 2.6b (a follow-up of the logging probe).

What it checks: upstream builds a line with the source context of the code that logs it
(``GSmtp::ServerSend: ``, seen only with ``--debug``) in a buffer of 1040 octets; a line that
fills it is its first 1040 octets and `` ...``, and the context is then left out.  So the visible
cut depends on the line's kind, whatever the time, address, unit or msgid prefix: an SMTP
trace (``rx<<:``, a client's ``tx>>:``) keeps 1017 octets, an SMTP server's ``tx>>:`` 1021,
``rejected by filter`` and a filter's ``response=[..]`` line 999, a filter's ``failed: exit
code`` warning 1000 (``emailrelay.log.upstream_context``).  Ours cut every line at 1017.  The
ours-only tests (the rule through ``emailrelay.log``, and our relay with a filter whose response
is long) run everywhere; the side-by-side ones skip without ``EMAILRELAY_ORACLE_BIN``.

Kept different (docs/decisions.md, "Logging"): a UTF-8 character the cut would split is left out;
the contexts of lines not measured (a POP server's ``tx>>:``, a client filter's lines, any other
line) count as an SMTP trace's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emailrelay import log as logmod
from tests.support.oracle import SIDES, daemon_base, needs_oracle, smtp_dialogue, start
from tests.support.relay import wait_until

pytestmark = pytest.mark.timeout(60)

MARK = "F"


# ---- the rule, through emailrelay.log ------------------------------------------------------


def _lengths(tmp_path: Path, *lines: tuple[int, str], smtp_server: bool = False) -> list[int]:
    """The lengths of the lines a log (no time, a ``--log-file``) writes for ``(level, text)``;
    ``smtp_server``: through an SMTP server session's log."""
    path = tmp_path / "log"
    log = logmod.Log(logmod.LogConfig(verbose=True, syslog=False, log_file=str(path)))
    for level, text in lines:
        log.emit(level, text, None, msgid_in_text=not smtp_server)
    return [len(line) for line in path.read_bytes().splitlines()]


def test_rejected_by_filter_keeps_999_octets(tmp_path: Path) -> None:
    """``emailrelay: info: rejected by filter: [`` is 39 octets: a line of 998 is whole, one of 999
    gets `` ...`` (its unseen context, 41 octets, fills the 1040)."""
    texts = [(logmod.INFO, f"rejected by filter: [{MARK * n}]") for n in (958, 959, 3000)]
    assert _lengths(tmp_path, *texts) == [998, 1003, 1003]


def test_filter_lines_keep_their_own_lengths(tmp_path: Path) -> None:
    warning = (logmod.WARNING, f"filter [f.sh] failed: exit code 1: [{MARK * 3000}]")
    response = (logmod.VERBOSE, f"filter [f.sh]: [emailrelay.1.2.3]: failed response=[{MARK * 3000}]")
    assert _lengths(tmp_path, warning, response) == [1004, 1003]


@pytest.mark.parametrize(("smtp_server", "kept"), [(True, 1021), (False, 1017)], ids=["server", "client"])
def test_a_tx_trace_is_cut_by_who_sends(tmp_path: Path, smtp_server: bool, kept: int) -> None:
    """An SMTP server's reply trace keeps 1021 octets, a client's command trace 1017; ``rx<<:``
    1017 on both."""
    head = 'tx>>: "452 '  # (with "emailrelay: info: ": 29 octets)
    texts = [(logmod.VERBOSE, f'{head}{MARK * n}"') for n in (kept - 31, kept - 30)]
    texts.append((logmod.VERBOSE, f'rx<<: "{MARK * 3000}"'))
    assert _lengths(tmp_path, *texts, smtp_server=smtp_server) == [kept - 1, kept + 4, 1021]


def test_the_cut_counts_the_time_and_address(tmp_path: Path) -> None:
    """The whole line counts: with a time and an address the text keeps fewer octets."""
    path = tmp_path / "log"
    config = logmod.LogConfig(syslog=False, log_file=str(path), with_time=True, with_address=True)
    logmod.Log(config).info(f"rejected by filter: [{MARK * 3000}]", "127.0.0.1")
    (line,) = path.read_bytes().splitlines()
    assert len(line) == 1003 and line.endswith(MARK.encode() * 5 + b" ...")
    assert line.count(MARK.encode()) == 999 - len(
        b"emailrelay: 20261207.235646.075: info: 127.0.0.1; rejected by filter: ["
    )


# ---- a relay whose filter answers with a long response ----------------------------------------


def _filter_lines(side: str, base: Path, n: int, *args: str) -> list[str]:
    """``side``'s log lines (``--log-time``) naming a filter's ``n``-octet response, in order:
    the filter's warning, its response line, ``rejected by filter`` and the 452 reply's trace."""
    script = base / f"filter-{side}.sh"
    script.write_text(f"#!/bin/sh\necho '<<{MARK * n}>>'\nexit 1\n")
    script.chmod(0o755)
    with start(side, base, "--filter", str(script), *args) as relay:
        commands = ["EHLO h", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA", "Subject: x\r\n\r\nhi\r\n.", "QUIT"]
        smtp_dialogue(relay.port, commands)
        assert wait_until(lambda: 'tx>>: "452 ' in relay.log(), 10), relay.log()
        return [line for line in relay.log().splitlines() if MARK * 20 in line]


def test_our_relay_cuts_filter_lines_by_kind(tmp_path: Path) -> None:
    """E-MailRelay 2.6b's lengths with ``--log-time`` (ours wrote 1021 for each)."""
    lines = _filter_lines("ours", daemon_base(tmp_path), 990)
    assert [len(line) for line in lines] == [1004, 1003, 1003, 1025]
    assert all(line.endswith(MARK + " ...") for line in lines)


@needs_oracle
@pytest.mark.parametrize("n", [959, 990, 991])
def test_filter_lines_are_cut_as_upstream(tmp_path: Path, n: int) -> None:
    """959 and 991: the lengths where ``rejected by filter`` and the reply's trace just fill the
    buffer (the whole line and `` ...``)."""
    base = daemon_base(tmp_path)
    got = {side: _filter_lines(side, base, n, "--log-address") for side in SIDES}
    assert [[len(line) for line in got[side]] for side in SIDES] == [
        [len(line) for line in got["upstream"]]
    ] * 2
    assert [[line[-12:] for line in got[side]] for side in SIDES] == [
        [line[-12:] for line in got["upstream"]]
    ] * 2
