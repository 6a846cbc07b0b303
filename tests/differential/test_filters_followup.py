"""Filters and verifiers, the differences a differential probe found (7 Dec 2026), against E-MailRelay 2.6b.

What it checks, ours against upstream (``EMAILRELAY_ORACLE_BIN``; those tests skip without it) and
ours alone against the texts upstream was seen to give (those run on every clone):

- ``spam:``/``spam-edit:`` when spamd fails (not listening, closing, answering garbage, a
  non-zero status, no ``Content-length``): ``452 rejected``, the warning ``spamd interaction
  failed: <reason>`` in upstream's words; as a client filter the message is failed (``.bad``);
- specifications upstream takes: ``mx:x:y`` (with its warning), ``msgid:x``, ``account:foo``,
  ``--address-verifier exit:<n>`` (no verification), ``EXIT:2`` (a program), and the ones it
  refuses (``exit:abc``, ``account:5-1``);
- start-up warnings: ``verifier program does not exist``, ``invalid program`` (a directory);
- reply texts: a filter's up to its 1 KiB output window, a verifier's first 1 024 bytes;
- a program path with spaces around it is taken as given (and so does not exist);
- control characters in a verifier's text, NUL included: escaped (``\\0``), the reply once more.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.differential.test_verifiers import verify_cases
from tests.support.diff_filters import message, serve_cases
from tests.support.fake_smtp import FakeSmtp
from tests.support.fake_spamd import closed_port
from tests.support.filter_recorder import Case, recorder, side_neutral
from tests.support.line_server import threaded_server
from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, run, smtp_dialogue, start

pytestmark = pytest.mark.timeout(300)

# ---- a spamd that fails as the message's Subject says ------------------------------------------
_ANSWERS = {
    "close": b"",
    "garbage": b"HELLO THERE\r\n\r\n",
    "badcode": b"SPAMD/1.1 76 Bad header line\r\n\r\n",
    "nolength": b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 1 / 5\r\n\r\nabc\n",
    "short": b"SPAMD/1.1 0 EX_OK\r\nContent-length: 100\r\nSpam: False ; 1 / 5\r\n\r\nabc\n",
    "badlength": b"SPAMD/1.1 0 EX_OK\r\nContent-length: x\r\n\r\n",
    "nul": b"HEL\0LO\r\n\r\n",
}


def _serve_spamd(conn: socket.socket) -> None:
    """Read the whole request, answer as its Subject says, close."""
    with conn:
        conn.settimeout(10)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            subject = re.search(rb"Subject: (\w+)", data)
            conn.sendall(_ANSWERS.get(subject.group(1).decode() if subject else "", b""))
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)


def _length(data: bytes) -> int:
    m = re.search(rb"Content-length: (\d+)", data)
    return int(m.group(1)) if m else 0


@contextlib.contextmanager
def failing_spamd() -> Iterator[int]:
    """A listening port whose spamd answers badly (see _ANSWERS)."""
    with threaded_server(_serve_spamd) as port:
        yield port


def _spam_lines(lines: list[str], port: int) -> list[str]:
    return [x.replace(str(port), "PORT") for x in lines if re.search(r"spam|filter", x)]


def spam_failures(side: str, kind: str) -> dict[str, tuple[str, list[str]]]:
    """Case -> (the DATA reply, the log lines about spamd and the filter)."""
    out: dict[str, tuple[str, list[str]]] = {}
    with failing_spamd() as port:
        base = daemon_base()
        got, _, relay = serve_cases(side, base, list(_ANSWERS), "--filter", f"{kind}:127.0.0.1:{port}")
        for case, (reply, _lines) in got.items():
            out[case] = (reply, [])
        lines = normalise_log(relay.log(), None, ports=(relay.port,), drop=(r"supervisor: ", r"tx>>|rx<<"))
        _split_by_message(out, [side_neutral(x.replace(str(base), "BASE")) for x in lines], port)
    refused = closed_port()
    got, _, relay = serve_cases(side, daemon_base(), ["refused"], "--filter", f"{kind}:127.0.0.1:{refused}")
    lines = normalise_log(relay.log(), None, ports=(relay.port,), drop=(r"supervisor: ", r"tx>>|rx<<"))
    out["refused"] = (got["refused"][0], _spam_lines([side_neutral(x) for x in lines], refused))
    return out


def _split_by_message(out: dict[str, tuple[str, list[str]]], lines: list[str], port: int) -> None:
    """Each message's spam lines (from its ``spam connection`` line on), in the order sent."""
    chunks: list[list[str]] = []
    for line in _spam_lines(lines, port):
        if "spam connection to" in line:
            chunks.append([])
        if chunks:
            chunks[-1].append(line)
    for case, chunk in zip(out, chunks, strict=False):
        out[case] = (out[case][0], chunk)


SPAM_HEAD = [
    "emailrelay: info: spam connection to [127.0.0.1/PORT/ip]",
    "emailrelay: info: spam request for [BASE/SIDE/spool/emailrelay.ID.content]",
    "emailrelay: info: spam request done",
]


def _spam_failed(reason: str, head: list[str] = SPAM_HEAD) -> tuple[str, list[str]]:
    return (
        "452 rejected",
        [
            *head,
            f"emailrelay: warning: spamd interaction failed: {reason}",
            f"emailrelay: info: filter [127.0.0.1/PORT/ip]: [emailrelay.ID]: failed response=[rejected] reason=[{reason}]",
            f"emailrelay: info: rejected by filter: [{reason}]",
        ],
    )


OK_LINE = "emailrelay: info: spam response line: [SPAMD/1.1 0 EX_OK]"
SPAM_EXPECTED = {
    "close": _spam_failed("peer disconnected"),
    "garbage": _spam_failed("spam client error: invalid response: HELLO THERE"),
    "badcode": _spam_failed("spam client error: invalid response: SPAMD/1.1 76 Bad header line"),
    "nolength": _spam_failed(
        "spam client error: invalid response headers",
        [
            *SPAM_HEAD,
            OK_LINE,
            "emailrelay: info: spam response line: [Spam: False ; 1 / 5]",
            "emailrelay: info: spam response line: []",
        ],
    ),
    "short": _spam_failed(
        "peer disconnected",
        [
            *SPAM_HEAD,
            OK_LINE,
            "emailrelay: info: spam response line: [Content-length: 100]",
            "emailrelay: info: spam response line: [Spam: False ; 1 / 5]",
            "emailrelay: info: spam response line: []",
        ],
    ),
    "badlength": _spam_failed(
        "string conversion error: invalid format: expected unsigned integer: x",
        [*SPAM_HEAD, OK_LINE, "emailrelay: info: spam response line: [Content-length: x]"],
    ),
    "nul": _spam_failed("spam client error: invalid response: HEL\\0LO"),
    "refused": _spam_failed(
        "connect failure: cannot connect to 127.0.0.1:N",
        ["emailrelay: info: spam connection to [127.0.0.1/PORT/ip]"],
    ),
}


@pytest.mark.parametrize("kind", ["spam", "spam-edit"])
def test_spamd_failures_ours(kind: str) -> None:
    """spamd failing: ``452 rejected`` and upstream's warning and reasons (ours was ``452 filter
    error`` with Python's errno texts)."""
    assert spam_failures("ours", kind) == SPAM_EXPECTED


@needs_oracle
@pytest.mark.parametrize("kind", ["spam", "spam-edit"])
def test_spamd_failures_as_upstream(kind: str) -> None:
    got = {side: spam_failures(side, kind) for side in SIDES}
    assert got["ours"] == got["upstream"]


def spam_client_filter(side: str, spec: str) -> tuple[int, list[str], list[str], list[str]]:
    """``--as-client`` with a client filter ``spam:`` whose spamd is down: (exit code, spool files,
    the failed envelope's reason lines, the log's spam and filter lines)."""
    spool = daemon_base() / side / "spool"
    spool.mkdir(parents=True, mode=0o777)
    spool.chmod(0o777)
    r = run(side, "emailrelay-submit", "--spool-dir", str(spool), "--from", "a@b.example", "x@y.example",
            input=b"Subject: m\r\n\r\nhello\r\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    for path in spool.iterdir():
        path.chmod(0o666)
    with FakeSmtp() as hop:
        r = run(side, "emailrelay", "--as-client", f"127.0.0.1:{hop.port}", "--spool-dir", str(spool), "--log",
                "--no-syslog", "--verbose", "--client-filter", spec, timeout=60)  # fmt: skip
    names = sorted(re.sub(r"emailrelay\.\d+\.\d+\.\d+", "ID", p.name) for p in spool.iterdir() if p.is_file())
    reasons = [x for bad in spool.glob("*.bad") for x in bad.read_text().splitlines() if "Reason" in x]
    text = (r.stdout + r.stderr).decode(errors="replace")
    lines = [side_neutral(x) for x in normalise_log(text) if re.search(r"spam|filter|failing", x)]
    return r.returncode, names, reasons, lines


def test_spam_client_filter_down_ours() -> None:
    """A client filter ``spam:`` whose spamd is down fails the message (``.bad``), as upstream's
    (and as a ``net:`` client filter does); ours left it for later."""
    port = closed_port()
    code, names, reasons, lines = spam_client_filter("ours", f"spam:127.0.0.1:{port}")
    assert (code, names) == (0, ["ID.content", "ID.envelope.bad"])
    assert reasons == [f"X-MailRelay-Reason: connect failure: cannot connect to 127.0.0.1:{port}",
                       "X-MailRelay-ReasonCode: 550"]  # fmt: skip
    assert any(re.fullmatch(r"emailrelay: warning: spamd interaction failed: connect failure: cannot connect to "
                            rf"127\.0\.0\.1:({port}|N)", x) for x in lines)  # fmt: skip


@needs_oracle
@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_spam_client_filter_down_as_upstream(where: str) -> None:
    spec = f"spam:127.0.0.1:{closed_port()}" if where == "tcp" else "spam:/nonexistent/spamd.socket"
    got = {side: spam_client_filter(side, spec) for side in SIDES}
    assert got["ours"] == got["upstream"]


# ---- specifications, start-up warnings ---------------------------------------------------------
_RELEVANT = re.compile(r"warning|filter \[|verifier|rejecting|usage error|error:")


def relay_session(side: str, *args: str) -> tuple[list[str], list[str]]:
    """Start ``side`` with ``args`` (``BASE`` stands for a fresh directory holding ``dir/``, a
    directory, and ``v.sh``, a verifier saying ``<<v says>>``, exit 1), send one message: (the
    replies from RCPT on, the log's warnings and filter and verifier lines)."""
    base = daemon_base()
    (base / "dir").mkdir(mode=0o755)
    script = base / "v.sh"
    script.write_text('#!/bin/sh\necho "<<v says>>"\nexit 1\n')
    script.chmod(0o755)
    args = tuple(a.replace("BASE", str(base)) for a in args)
    with start(side, base, *args, "--domain", "dom.example") as relay:
        replies = smtp_dialogue(relay.port, ["EHLO c.example", "MAIL FROM:<a@b.example>", "RCPT TO:<x@y.example>",
                                             "DATA", message("m"), "QUIT"])  # fmt: skip
        time.sleep(0.3)
    lines = normalise_log(
        relay.log(), None, ports=(relay.port,), drop=(r"supervisor: ", r"tx>>|rx<<", r"executing \[")
    )
    return replies[3:6], [side_neutral(x.replace(str(base), "BASE")) for x in lines if _RELEVANT.search(x)]


_STORED = [
    "250 recipient <x@y.example> OK",
    "354 start mail input -- end with <CRLF>.<CRLF>",
    "250 message processed",
]
_FILTERED = [*_STORED[:2], "452 rejected"]
_NO_RCPT = ["550 error", "554 no valid recipients", "500 command unrecognized"]

SESSION_CASES: dict[str, tuple[tuple[str, ...], tuple[list[str], list[str]]]] = {
    "mx-unusable-parameter": (
        ("--filter", "mx:x:y"),
        (
            _STORED,
            [
                "emailrelay: warning: invalid mx filter configuration: ignoring [x:y]",
                "emailrelay: info: filter [mx:]: [emailrelay.ID]: ok response=[]",
            ],
        ),
    ),
    "msgid-parameter": (
        ("--filter", "msgid:x"),
        (
            _STORED,
            ["emailrelay: info: filter [msgid:]: [emailrelay.ID]: ok response=[]"],
        ),
    ),
    "account-unknown-word": (
        ("--address-verifier", "account:foo"),
        (
            ["550 rejected", *_NO_RCPT[1:]],
            [
                'emailrelay: warning: rejecting recipient "x@y.example": rejected: [y.example] does not match [dom.example]'
            ],
        ),
    ),
    "verifier-exit": (
        ("--address-verifier", "exit:3"),
        (_STORED, []),
    ),
    "verifier-EXIT-is-a-program": (
        ("--address-verifier", "EXIT:2"),
        (
            _NO_RCPT,
            [
                "emailrelay: warning: verifier program does not exist: BASE/SIDE/EXIT:2",
                "emailrelay: warning: address verifier: exec error",
                'emailrelay: warning: rejecting recipient "x@y.example": error: exec error',
            ],
        ),
    ),
    "programs-missing-or-directories": (
        (
            "--filter",
            "/nonexistent/f,BASE/dir",
            "--client-filter",
            "BASE/dir",
            "--address-verifier",
            "/nonexistent/v",
            "--forward-to",
            "127.0.0.1:9",
        ),
        (
            _NO_RCPT,
            [
                "emailrelay: warning: filter program does not exist: /nonexistent/f",
                "emailrelay: warning: invalid program: BASE/dir",
                "emailrelay: warning: invalid program: BASE/dir",
                "emailrelay: warning: verifier program does not exist: /nonexistent/v",
                "emailrelay: warning: address verifier: exec error",
                'emailrelay: warning: rejecting recipient "x@y.example": error: exec error',
            ],
        ),
    ),
    "filter-path-with-spaces": (
        ("--filter", "exit:0, BASE/v.sh"),
        (
            _FILTERED,
            [
                "emailrelay: warning: filter program does not exist: BASE/SIDE/ BASE/v.sh",
                "emailrelay: info: filter [v.sh]: [emailrelay.ID]: running BASE/SIDE/ BASE/v.sh",
                "emailrelay: warning: filter [v.sh] failed: exit code 127: [rejected]",
                "emailrelay: info: filter [exit:0,v.sh]: [emailrelay.ID]: failed response=[rejected] "
                "reason=[filter exec error: no such file or directory]",
                "emailrelay: info: rejected by filter: [filter exec error: no such file or directory]",
            ],
        ),
    ),
    "verifier-path-with-spaces": (
        ("--address-verifier", " BASE/v.sh "),
        (
            _NO_RCPT,
            [
                "emailrelay: warning: verifier program does not exist: BASE/SIDE/ BASE/v.sh ",
                "emailrelay: warning: address verifier: exec error",
                'emailrelay: warning: rejecting recipient "x@y.example": error: exec error',
            ],
        ),
    ),
}


@pytest.mark.parametrize("case", list(SESSION_CASES))
def test_specifications_ours(case: str) -> None:
    args, expected = SESSION_CASES[case]
    assert relay_session("ours", *args) == expected


@needs_oracle
@pytest.mark.parametrize("case", list(SESSION_CASES))
def test_specifications_as_upstream(case: str) -> None:
    args, _ = SESSION_CASES[case]
    got = {side: relay_session(side, *args) for side in SIDES}
    assert got["ours"] == got["upstream"]


REFUSED = {
    "verifier-exit-word": (("--address-verifier", "exit:abc"),
                           "emailrelay: usage error: invalid verifier specification: not a numeric exit code: abc"),
    "account-range-upside-down": (("--address-verifier", "account:5-1"),
                                  "emailrelay: usage error: invalid verifier specification: not a valid numeric range"),
}  # fmt: skip


def refused(side: str, *args: str) -> tuple[int, str]:
    base = daemon_base()
    r = run(
        side,
        "emailrelay",
        "--no-daemon",
        "--log",
        "--no-syslog",
        "--port",
        "9",
        "--spool-dir",
        str(base),
        *args,
    )
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace").splitlines()[0]


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_specifications_ours(case: str) -> None:
    args, line = REFUSED[case]
    assert refused("ours", *args) == (1, line)


@needs_oracle
@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_specifications_as_upstream(case: str) -> None:
    args, _ = REFUSED[case]
    assert refused("ours", *args) == refused("upstream", *args)


# ---- reply texts: lengths and control characters ------------------------------------------------
FILTER_CASES: dict[str, Case] = {
    "f1020": ("<<" + "z" * 1016 + "abcd>>\n", 1, ""),  # the marker line ends within the 1 KiB window
    "f1021": ("<<" + "z" * 1017 + "abcd>>\n", 1, ""),  # ... and does not: "rejected"
    "c550": ("<<550 " + "z" * 1010 + ">>\n", 1, ""),
}
VERIFIER_CASES: dict[str, Case] = {
    "v1025": ("y" * 1021 + "abcd\n", 2, ""),  # the reply: the first 1 024 characters
    "remote1100": ("x" * 1100 + "\nnew@x.example\n", 1, ""),  # line 2 beyond the window: a 550
    "remote1000": ("x" * 1000 + "\nnew@x.example\n", 1, ""),
    "nul": ("", 2, "printf 'a\\000b\\tc\\n  det  \\n'"),
    "fullname": ("", 0, "printf 'F\\tull\\000x\\nbox\\n'"),
}


def reply_texts(side: str) -> dict[str, object]:
    """Each filter case's DATA reply; each verifier case's RCPT and VRFY replies (lengths and ends
    for the long ones) and log lines."""
    base = daemon_base()
    script = recorder(base, {**FILTER_CASES, **VERIFIER_CASES})
    got, _, _ = serve_cases(side, base, FILTER_CASES, "--filter", str(script))
    out: dict[str, object] = {case: (len(reply), reply[:8], reply[-8:]) for case, (reply, _) in got.items()}
    verified = verify_cases(side, base, list(VERIFIER_CASES), "--address-verifier", str(script))
    for case, value in verified.items():
        assert isinstance(value, tuple)
        replies, lines = value
        short = case in ("nul", "fullname")
        out[case] = (
            [r if short else (len(r), r[:8], r[-8:]) for r in replies],
            [x for x in lines if short and "executing" not in x],
        )
    return out


REPLY_EXPECTED = {
    "f1020": (1024, "452 zzzz", "zzzzabcd"),
    "f1021": (12, "452 reje", "rejected"),
    "c550": (1014, "550 zzzz", "zzzzzzzz"),
    "v1025": ([(1028, "550 yyyy", "yyyyyabc")] * 2, []),
    "remote1100": ([(1028, "550 xxxx", "xxxxxxxx")] * 2, []),
    "remote1000": ([(39, "250 reci", "mple> OK"), (55, "252 cann", "@y.example"[-8:])], []),
    "nul": (
        ["550 a\\\\0b\\\\tc", "550 a\\\\0b\\\\tc"],
        [
            "emailrelay: info: address verifier: exit code 2: [a\\0b\\tc] [  det]",
            'emailrelay: warning: rejecting recipient "nul@Y.example": a\\0b\\tc:   det',
            "emailrelay: info: address verifier: exit code 2: [a\\0b\\tc] [  det]",
        ],
    ),
    "fullname": (
        ["250 recipient <fullname@Y.example>  OK", "250 F\\\\tull\\\\0x"],
        [
            "emailrelay: info: address verifier: exit code 0: [F\\tull\\0x] [box]",
            "emailrelay: info: address verifier: exit code 0: [F\\tull\\0x] [box]",
        ],
    ),
}


def test_reply_texts_ours() -> None:
    """A filter's reply up to its 1 KiB output window, a verifier's first 1 024 bytes (ours cut both
    at 400 characters); a verifier's control characters escaped, NUL as ``\\0``, and once more in
    the reply (ours turned them into spaces)."""
    assert reply_texts("ours") == REPLY_EXPECTED


@needs_oracle
def test_reply_texts_as_upstream() -> None:
    got = {side: reply_texts(side) for side in SIDES}
    assert got["ours"] == got["upstream"]


def test_spec_parsing_unit(tmp_path: Path) -> None:
    """The parser alone: spaces kept in program paths, ``exit:<n>`` a verifier, ``mx:`` warnings."""
    from emailrelay.policy.spec import (
        mx_params,
        parse_filters,
        parse_verifier,
        startup_warnings,
        warnings_for,
    )

    specs = parse_filters("exit:0, /x/y ", base_dir=str(tmp_path))
    assert [(s.kind, s.value) for s in specs] == [("exit", "0"), ("exe", f"{tmp_path}/ /x/y ")]
    assert parse_verifier("exit:7") is not None and parse_verifier("exit:7").kind == "exit"  # type: ignore[union-attr]
    assert warnings_for(parse_filters("mx:nst=5;bogus;1.2.3.4")) == [
        "invalid mx filter configuration: ignoring [bogus]"
    ]
    assert mx_params(("nst=5", "::1", "1.2.3.4:53", "::1.53")) == (
        ("nst=5", "::1", "1.2.3.4:53", "::1.53"),
        None,
    )
    assert mx_params(("NST=5",))[1] == "NST=5" and mx_params(("[::1]:53",))[1] == "[::1]:53"
    (tmp_path / "d").mkdir()
    assert startup_warnings(parse_filters(str(tmp_path / "d")), [], parse_verifier("/nonexistent/v")) == [
        f"invalid program: {tmp_path / 'd'}",
        "verifier program does not exist: /nonexistent/v",
    ]
