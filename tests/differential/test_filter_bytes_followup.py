"""Filters' and verifiers' octets that are not UTF-8, and a ``net:`` filter's empty answer parts,
against E-MailRelay 2.6b (a follow-up of a differential probe, 8 Dec 2026).

What it checks, each side by side with the oracle (``needs_oracle``) and on ours alone against the
octets upstream was seen to give (those run on every clone), with a raw socket client and the log
file's octets (not decoded with replacement characters, which would make both sides look alike),
and in process the readers themselves (a program's output, a ``net:`` filter's answer line):

- a filter program's ``<<caf\\xe9>>`` (and reason ``<<r\\xe9ason>>``), a ``net:`` filter's
  ``caf\\xe9<tab>r\\xe9ason``, a verifier program's or ``net:`` verifier's ``caf\\xe9`` (2 and 3),
  and a full name ``Fran\\xe7ois`` (VRFY) reach the SMTP reply and the log lines (``tx>>`` too) as
  the very octets they came as (ours wrote U+FFFD); valid UTF-8 (``caf\\u00e9``) as before;
- a verifier's answer that ends up in the envelope, a rewritten address (``caf\\xe9@y.example``,
  ``u@caf\\xe9.example``) or a mailbox (``mb\\xe9``), is written as the same octets (ours wrote
  U+FFFD, or an A-label made of it), and does not make ``X-MailRelay-Utf8MailboxNames`` 1;
- a ``net:`` filter's answer is read as it came: no white space trimmed (`` `` rejects with
  ``452  ``, ``<tab>`` with ``452 ``; ours accepted both messages), the response before a tab
  kept empty (``<tab>why`` is ``452 ``, not ``452 rejected``), an empty reason after a tab kept
  empty in the log (``reason=[]``, ``rejected by filter: []``).

Kept different: nothing here.  (The SMTP reply's octets rely on the reply writer,
``emailrelay/protocol/smtp_server.py``, encoding a reply with ``surrogateescape``.)
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from emailrelay.policy.exe import parse_response, two_lines
from emailrelay.policy.net import NetFilter
from emailrelay.policy.spec import FilterContext, parse_filters
from emailrelay.policy.verdicts import FilterOutcome, FilterResult
from tests.support.filter_recorder import Case, filter_lines, recorder
from tests.support.line_server import threaded_server
from tests.support.oracle import (
    SIDES,
    Daemon,
    daemon_base,
    needs_oracle,
    normalise_log,
    normalise_spool,
    start,
)
from tests.support.policy import policy_config
from tests.support.relay import wait_until

pytestmark = pytest.mark.timeout(120)

#: per side: what the client got (each reply's octets, lines joined with LF), the log lines about
#: it (decoded with surrogateescape: an octet that is not UTF-8 stays itself) and the spool
Outcome = tuple[list[bytes], list[str], dict[str, bytes]]

_REPLY_SEEN = re.compile(r'tx>>: "(?:[45]\d\d |250 Fran)')  # a rejection's or VRFY's reply, traced


def _reply(reader: socket.SocketIO | object) -> bytes:
    lines: list[bytes] = []
    while True:
        raw = reader.readline()  # type: ignore[attr-defined]
        if not raw:
            break
        lines.append(raw.rstrip(b"\r\n"))
        if len(raw) < 4 or raw[3:4] != b"-":
            break
    return b"\n".join(lines)


def raw_session(port: int, lines: Sequence[bytes]) -> list[bytes]:
    """Send each line (CRLF added) and collect each reply's octets, the greeting left out; then QUIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        reader = sock.makefile("rb")
        _reply(reader)
        got = []
        for line in lines:
            sock.sendall(line + b"\r\n")
            got.append(_reply(reader))
        sock.sendall(b"QUIT\r\n")
        _reply(reader)
    return got


def log_text(relay: Daemon) -> str:
    """The relay's log as it is: octets that are not UTF-8 kept (as surrogate escapes)."""
    return relay.log_path.read_bytes().decode("utf-8", "surrogateescape")


def message(subject: str) -> list[bytes]:
    return [
        b"EHLO c.example",
        b"MAIL FROM:<a@b.example>",
        b"RCPT TO:<x@y.example>",
        b"DATA",
        f"Subject: {subject}\r\n\r\nhello\r\n.".encode(),
    ]


@contextlib.contextmanager
def byte_server(answers: dict[str, bytes]) -> Iterator[int]:
    """A ``net:`` server answering octets: for a filter's request (a content path) the answer named by
    the message's Subject, for a verifier's the one named by the recipient's local part; ``ok``
    or ``1|`` when none is."""

    def answer(line: bytes) -> bytes:
        text = line.decode("utf-8", "surrogateescape").rstrip("\n")
        if text.startswith("/"):
            m = re.search(r"^Subject: (.*?)\r?$", Path(text).read_text(), re.M)
            return answers.get(m.group(1) if m else "", b"ok\n")
        return answers.get(text.split("@")[0], b"1|\n")

    def session(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            for line in reader:
                conn.sendall(answer(line))

    with threaded_server(session) as port:
        yield port


# ---- in process: a program's output, a net: filter's answer -------------------------------------
def test_program_output_kept_as_octets() -> None:
    """What is not UTF-8 stays itself (a surrogate escape, written back as the octet); UTF-8 as before."""
    assert parse_response(b"<<caf\xe9>>\n<<r\xe9ason>>\n") == ("caf\udce9", None, "r\udce9ason")
    assert parse_response("<<452 caf\u00e9>>\n".encode()) == ("caf\u00e9", 452, "caf\u00e9")
    assert two_lines(b"Fran\xe7ois\r\nmb\xe9\n") == ("Fran\udce7ois", "mb\udce9")


REJECT = FilterOutcome.REJECT


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("caf\udce9\tr\udce9ason", FilterResult(REJECT, "caf\udce9", None, "r\udce9ason")),
        (" ", FilterResult(REJECT, " ", None, " ")),
        ("x ", FilterResult(REJECT, "x ", None, "x ")),
        ("\t", FilterResult(REJECT, "", None, "")),
        ("\twhy", FilterResult(REJECT, "", None, "why")),
        ("x\t", FilterResult(REJECT, "x", None, "")),
        ("452\t", FilterResult(REJECT, "", 452, "")),
        ("452 x\ty\tz", FilterResult(REJECT, "x", 452, "y\\tz")),
        ("ok\t", FilterResult.accept()),
        ("", FilterResult.accept()),
    ],
)
def test_net_filter_answer_read_as_it_came(answer: str, expected: FilterResult) -> None:
    spec = parse_filters(["net:127.0.0.1:1"])[0]
    ctx = FilterContext("emailrelay.1.2.3", "/x.content", "/x.envelope.new")
    assert NetFilter(spec, policy_config()).result_for(answer, ctx) == expected


# ---- filters ---------------------------------------------------------------------------------------
FILTER_CASES: dict[str, Case] = {
    "lat": ("", 1, r"printf '<<caf\351>>\n<<r\351ason>>\n'"),
    "latcode": ("", 1, r"printf '<<452 caf\351>>\n'"),
    "utf": ("<<caf\u00e9>>\n", 1, ""),
}
NET_FILTER_ANSWERS: dict[str, bytes] = {
    "nlat": b"caf\xe9\tr\xe9ason\n",
    "nlatcode": b"452 caf\xe9\n",
    "nutf": "caf\u00e9\n".encode(),
    "space": b" \n",
    "tab": b"\t\n",
    "tabwhy": b"\twhy\n",
    "tabok": b"\tok\n",
    "xtab": b"x\t\n",
    "codetab": b"452\t\n",
    "xspace": b"x \n",
}


def filter_outcomes(side: str, spec: str, cases: Sequence[str]) -> dict[str, tuple[bytes, list[str]]]:
    """case -> (the reply to the message's end, the filter's log lines and traced rejection)."""
    out: dict[str, tuple[bytes, list[str]]] = {}
    with start(side, daemon_base(), "--filter", spec) as relay:
        for case in cases:
            before = len(log_text(relay))
            reply = raw_session(relay.port, message(case))[-1]
            wait_until(lambda start=before: 'rx<<: "QUIT"' in log_text(relay)[start:], 5)
            text = log_text(relay)[before:]
            lines = filter_lines(text, relay) + [
                x for x in normalise_log(text, relay) if _REPLY_SEEN.search(x)
            ]
            out[case] = (
                reply,
                [re.sub(r"/\d+/ip\]", "/PORT/ip]", x) for x in lines if ": running " not in x],
            )
    return out


def program_filter_outcomes(side: str) -> dict[str, tuple[bytes, list[str]]]:
    script = recorder(daemon_base(), FILTER_CASES)
    return filter_outcomes(side, str(script), list(FILTER_CASES))


def net_filter_outcomes(side: str) -> dict[str, tuple[bytes, list[str]]]:
    with byte_server(NET_FILTER_ANSWERS) as port:
        return filter_outcomes(side, f"net:127.0.0.1:{port}", list(NET_FILTER_ANSWERS))


def _rejected(
    name: str, reply: bytes, response: str, reason: str | None = None, warning: str = ""
) -> tuple[bytes, list[str]]:
    """A rejected message's reply and lines, as upstream gives them (``reason`` None: the same as
    the response, not shown; ``warning``: a program's ``failed: exit code 1: [...]`` tail)."""
    tail = "" if reason is None else f" reason=[{reason}]"
    lines = [f"emailrelay: warning: filter [{name}] failed: exit code 1: {warning}"] if warning else []
    lines += [
        f"emailrelay: info: filter [{name}]: [emailrelay.ID]: failed response=[{response}]{tail}",
        f"emailrelay: info: rejected by filter: [{response if reason is None else reason}]",
        f'emailrelay: info: tx>>: "{reply.decode("utf-8", "surrogateescape")}"',
    ]
    return reply, lines


NET = "127.0.0.1/PORT/ip"
PROGRAM_FILTER_EXPECTED = {
    "lat": _rejected("filter.sh", b"452 caf\xe9", "caf\udce9", "r\udce9ason", "[caf\udce9]"),
    "latcode": _rejected("filter.sh", b"452 caf\xe9", "caf\udce9", None, "[caf\udce9](452)"),
    "utf": _rejected("filter.sh", "452 caf\u00e9".encode(), "caf\u00e9", None, "[caf\u00e9]"),
}
NET_FILTER_EXPECTED = {
    "nlat": _rejected(NET, b"452 caf\xe9", "caf\udce9", "r\udce9ason"),
    "nlatcode": _rejected(NET, b"452 caf\xe9", "caf\udce9", "452 caf\udce9"),
    "nutf": _rejected(NET, "452 caf\u00e9".encode(), "caf\u00e9"),
    "space": _rejected(NET, b"452  ", " "),
    "tab": _rejected(NET, b"452 ", ""),
    "tabwhy": _rejected(NET, b"452 ", "", "why"),
    "tabok": _rejected(NET, b"452 ", "", "ok"),
    "xtab": _rejected(NET, b"452 x", "x", ""),
    "codetab": _rejected(NET, b"452 ", ""),
    "xspace": _rejected(NET, b"452 x ", "x "),
}


def test_program_filter_octets_ours() -> None:
    assert program_filter_outcomes("ours") == PROGRAM_FILTER_EXPECTED


def test_net_filter_octets_and_empty_parts_ours() -> None:
    assert net_filter_outcomes("ours") == NET_FILTER_EXPECTED


@needs_oracle
def test_program_filter_octets_as_upstream() -> None:
    got = {side: program_filter_outcomes(side) for side in SIDES}
    assert got["upstream"] == PROGRAM_FILTER_EXPECTED
    assert got["ours"] == got["upstream"]


@needs_oracle
def test_net_filter_octets_and_empty_parts_as_upstream() -> None:
    got = {side: net_filter_outcomes(side) for side in SIDES}
    assert got["upstream"] == NET_FILTER_EXPECTED
    assert got["ours"] == got["upstream"]


# ---- verifiers -------------------------------------------------------------------------------------
VERIFIER_CASES: dict[str, Case] = {
    "rej": ("", 2, r"printf 'caf\351\nd\351tail\n'"),
    "tmp": ("", 3, r"printf 'caf\351\n'"),
    "loc": ("", 0, r"printf 'Fran\347ois\nmb\351\n'"),
    "rw": ("", 1, r"printf 'x\ncaf\351@y.example\n'"),
    "dom": ("", 1, r"printf 'x\nu@caf\351.example\n'"),
}
NET_VERIFIER_ANSWERS: dict[str, bytes] = {
    "rej": b"2|caf\xe9|d\xe9tail\n",
    "tmp": b"3|caf\xe9\n",
    "loc": b"0|mb\xe9|Fran\xe7ois\n",
    "rw": b"1|caf\xe9@y.example\n",
    "dom": b"1|u@caf\xe9.example\n",
}
VERIFIER_SESSION = [
    b"EHLO c.example",
    b"MAIL FROM:<a@b.example>",
    b"RCPT TO:<rej@y.example>",
    b"RCPT TO:<tmp@y.example>",
    b"VRFY loc@y.example",
    b"RCPT TO:<loc@y.example>",
    b"RCPT TO:<rw@y.example>",
    b"RCPT TO:<dom@y.example>",
    b"DATA",
    b"Subject: v\r\n\r\nhello\r\n.",
]
_VERIFIER_LINE = re.compile(r"address verifier: exit code|verification response|rejecting recipient")


def verifier_outcome(side: str, spec: str) -> Outcome:
    with start(side, daemon_base(), "--address-verifier", spec) as relay:
        replies = raw_session(relay.port, VERIFIER_SESSION)
        wait_until(lambda: 'rx<<: "QUIT"' in log_text(relay), 5)
        lines = [
            x
            for x in normalise_log(log_text(relay), relay)
            if _VERIFIER_LINE.search(x) or _REPLY_SEEN.search(x)
        ]
        spool = {k: v for k, v in normalise_spool(relay.spool).items() if k.endswith(".envelope")}
    return replies, lines, spool


def program_verifier_outcome(side: str) -> Outcome:
    return verifier_outcome(side, str(recorder(daemon_base(), VERIFIER_CASES)))


def net_verifier_outcome(side: str) -> Outcome:
    with byte_server(NET_VERIFIER_ANSWERS) as port:
        return verifier_outcome(side, f"net:127.0.0.1:{port}")


ENVELOPE = (
    b"X-MailRelay-Format: #2821.8\r\nX-MailRelay-Content: unknown\r\nX-MailRelay-From: a@b.example\r\n"
    b"X-MailRelay-ToCount: 3\r\nX-MailRelay-To-Local: mb\xe9\r\nX-MailRelay-To-Remote: caf\xe9@y.example\r\n"
    b"X-MailRelay-To-Remote: u@caf\xe9.example\r\nX-MailRelay-Authentication: \r\n"
    b"X-MailRelay-Client: 127.0.0.1\r\nX-MailRelay-ClientCertificate: \r\nX-MailRelay-MailFromAuthIn: \r\n"
    b"X-MailRelay-MailFromAuthOut: \r\nX-MailRelay-ForwardTo: \r\nX-MailRelay-ForwardToAddress: \r\n"
    b"X-MailRelay-ClientAccountSelector: \r\nX-MailRelay-Utf8MailboxNames: 0\r\nX-MailRelay-End: 1\r\n"
)
REPLIES = [
    b"250-vm says hello",  # (replaced: the host name)
    b"250 sender <a@b.example> OK",
    b"550 caf\xe9",
    b"450 caf\xe9",
    b"250 Fran\xe7ois",
    b"250 recipient <loc@y.example>  OK",
    b"250 recipient <rw@y.example> OK",
    b"250 recipient <dom@y.example> OK",
    b"354 start mail input -- end with <CRLF>.<CRLF>",
    b"250 message processed",
]


def _expected_lines(seen: Sequence[str]) -> list[str]:
    """The verifier's log lines for the session, ``seen`` its three lines per RCPT or VRFY."""
    rej, tmp, loc, rw, dom = seen
    return [
        rej,
        'emailrelay: warning: rejecting recipient "rej@y.example": caf\udce9: d\udce9tail',
        'emailrelay: info: tx>>: "550 caf\udce9"',
        tmp,
        'emailrelay: warning: rejecting recipient "tmp@y.example": caf\udce9'
        + (": exit code 3" if "exit" in tmp else ""),
        'emailrelay: info: tx>>: "450 caf\udce9"',
        loc,
        'emailrelay: info: tx>>: "250 Fran\udce7ois"',
        loc,
        rw,
        dom,
    ]


PROGRAM_VERIFIER_LINES = _expected_lines(
    [f"emailrelay: info: address verifier: exit code {x}" for x in (
        "2: [caf\udce9] [d\udce9tail]", "3: [caf\udce9] []", "0: [Fran\udce7ois] [mb\udce9]",
        "1: [x] [caf\udce9@y.example]", "1: [x] [u@caf\udce9.example]",
    )]
)  # fmt: skip
NET_VERIFIER_LINES = _expected_lines(
    [f"emailrelay: info: verification response: [{x.decode('utf-8', 'surrogateescape').rstrip()}]"
     for x in NET_VERIFIER_ANSWERS.values()]
)  # fmt: skip


def _no_host(outcome: Outcome) -> Outcome:
    replies, lines, spool = outcome
    return (
        [re.sub(rb"^250-\S+ says hello.*", b"250-vm says hello", r, flags=re.S) for r in replies],
        lines,
        spool,
    )


def test_program_verifier_octets_ours() -> None:
    assert _no_host(program_verifier_outcome("ours")) == (
        REPLIES,
        PROGRAM_VERIFIER_LINES,
        {"emailrelay.ID.envelope": ENVELOPE},
    )


def test_net_verifier_octets_ours() -> None:
    assert _no_host(net_verifier_outcome("ours")) == (
        REPLIES,
        NET_VERIFIER_LINES,
        {"emailrelay.ID.envelope": ENVELOPE},
    )


@needs_oracle
@pytest.mark.parametrize("outcome", [program_verifier_outcome, net_verifier_outcome], ids=["program", "net"])
def test_verifier_octets_as_upstream(outcome: object) -> None:
    got = {side: _no_host(outcome(side)) for side in SIDES}  # type: ignore[operator]
    assert got["upstream"][0] == REPLIES
    assert got["upstream"][2] == {"emailrelay.ID.envelope": ENVELOPE}
    assert got["ours"] == got["upstream"]
