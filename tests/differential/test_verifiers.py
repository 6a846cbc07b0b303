"""Address verifiers against E-MailRelay 2.6b: what a verifier is given, and what follows from its answer.

What it checks (issue 17, item 10): our relay and the oracle
(``EMAILRELAY_ORACLE_BIN``; skipped without it), started the same way (as
root, default ``--user daemon``), ask the same recording verifier (a
program, then a ``net:`` line server) about one recipient per case (the
local part picks the answer), with ``RCPT TO`` and ``VRFY``; compared per
case: both replies, the log lines about verification and rejected
recipients, and what the verifier was given — the program's argv (the
mechanism field is ``none`` for a client that did not authenticate, the
keyword for a trusted one, the mechanism and name after AUTH), identity,
working directory and environment, and the ``net:`` request lines.

Deliberate differences, asserted on our side: after a verifier's 100 we
close the connection, upstream leaves it open without a reply
(docs/decisions.md, "verifier exit 100").  Left out: a 550 with an empty
text ends in a space in our RCPT reply (the SMTP server's reply texts).
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pytest

from tests.support.diff_guide import readable_file
from tests.support.filter_recorder import Case, recorder, side_neutral
from tests.support.line_server import line_server
from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, smtp_dialogue, start

pytestmark = [needs_oracle, pytest.mark.timeout(240)]

_VERIFIER_LINE = re.compile(r"verif|rejecting recipient|abort|error: ")


def ask(port: int, name: str, auth: bool = False) -> tuple[str, str]:
    """RCPT TO and VRFY for ``<name>@Y.example`` in one session: the two replies."""
    lines = ["EHLO c.example"]
    if auth:
        lines.append("AUTH PLAIN " + base64.b64encode(b"\0me\0secret").decode())
    lines += ["MAIL FROM:<a@b.example>", f"RCPT TO:<{name}@Y.example>", f"VRFY {name}@y.example"]
    try:
        replies = smtp_dialogue(port, lines, timeout=5)
    except OSError:  # the connection was aborted (or left hanging) by the verifier's 100
        return "aborted", ""
    return replies[-2], replies[-1]


def verify_cases(
    side: str, base: Path, names: list[str], *args: str, auth: bool = False
) -> dict[str, object]:
    out: dict[str, object] = {}
    with start(side, base, *args) as relay:
        for name in names:
            before = len(relay.log())
            replies = ask(relay.port, name, auth=auth)
            time.sleep(0.2)
            lines = normalise_log(relay.log()[before:], relay, drop=(r"supervisor: ", r"tx>>|rx<<"))
            out[name] = (
                replies,
                [side_neutral(x.replace(str(base), "BASE")) for x in lines if _VERIFIER_LINE.search(x)],
            )
    return out


def without_abort(got: dict[str, dict[str, object]], case: str) -> None:
    """Our side of the exit-100 difference; then the case's replies are left out of the comparison."""
    ours, upstream = got["ours"][case], got["upstream"][case]
    assert isinstance(ours, tuple) and isinstance(upstream, tuple)
    assert ours[0] == ("", "")  # ours: closed at once, no reply
    assert upstream[0] == ("aborted", "")  # upstream: no reply, the connection left open (timed out)
    assert ours[1] == upstream[1]


VERIFIER_CASES: dict[str, Case] = {
    "v0": ("Full Name\nmbox\n", 0, ""),
    "v0nobox": ("x\n\n", 0, ""),
    "v1": ("\n\n", 1, ""),
    "v1rw": ("\nnew@addr.example\n", 1, ""),
    "v2": ("bad one\ndiag two\n", 2, ""),
    "v2e": ("", 2, ""),
    "v3": ("temp fail\ndiag3\n", 3, ""),
    "v4": ("four\n", 4, ""),
    "v99": ("x99\n", 99, ""),
    "v100": ("", 100, ""),
    "v101": ("x101\n", 101, ""),
    "v255": ("x255\n", 255, ""),
    "vkilled": ("", 0, "kill -9 $$"),
    "vslow": ("", 1, "sleep 3"),
}


def test_program_verifier_exit_codes_and_arguments() -> None:
    got: dict[str, dict[str, object]] = {}
    records: dict[str, str] = {}
    for side in SIDES:
        base = daemon_base()
        script = recorder(base, VERIFIER_CASES)
        got[side] = verify_cases(
            side, base, list(VERIFIER_CASES), "--address-verifier", str(script), "--filter-timeout", "1",
            "--domain", "dom.example",
        )  # fmt: skip
        text = (script.parent / "rec" / "v2.txt").read_text()
        records[side] = side_neutral(
            re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text.replace(str(base), "BASE"))
        )
    without_abort(got, "v100")
    for side in SIDES:
        del got[side]["v100"]
    for case in got["upstream"]:
        assert got["ours"][case] == got["upstream"][case], case
    # VRFY's arguments: recipient, empty from, ip:port, --domain, "none" (not authenticated), empty id
    assert records["ours"] == records["upstream"]
    assert (
        "argv: [BASE/f/filter.sh] [v2@y.example] [] [127.0.0.1:PORT] [dom.example] [none] []"
        in records["ours"]
    )
    assert got["upstream"]["v0"][0] == ("250 recipient <v0@Y.example>  OK", "250 Full Name")  # type: ignore[index]


def test_program_verifier_arguments_when_authenticated_or_trusted() -> None:
    """After AUTH: the mechanism and the name; a trusted address (``server none``): ``none`` and the keyword."""
    records: dict[str, list[str]] = {}
    for side in SIDES:
        base = daemon_base()
        script = recorder(
            base, {"auth": ("\nauth@Y.example\n", 1, ""), "trust": ("\ntrust@Y.example\n", 1, "")}
        )
        secrets = readable_file(base / "secrets", "server plain me secret\nserver none 127.0.0.1 trusted\n")
        args = ("--address-verifier", str(script), "--server-auth", str(secrets), "--domain", "dom.example")
        verify_cases(side, base, ["auth"], *args, auth=True)
        with start(side, base, *args, name=f"{side}-2") as relay:
            ask(relay.port, "trust")
        records[side] = [
            re.sub(
                r"127\.0\.0\.1:\d+",
                "127.0.0.1:PORT",
                (script.parent / "rec" / f"{c}.txt").read_text().splitlines()[0],
            ).replace(str(base), "BASE")
            for c in ("auth", "trust")
        ]
    assert records["ours"] == records["upstream"]
    assert records["ours"][0].endswith("[dom.example] [plain] [me]")
    assert records["ours"][1].endswith("[dom.example] [none] [trusted]")


NET_ANSWERS = {
    "n0": "0|mbox|Full Name\n",
    "n0e": "0|\n",
    "n1": "1|\n",
    "n1x": "1\n",
    "n1rw": "1|new@addr.example\n",
    "n2": "2|bad one|diag two\n",
    "n2e": "2\n",
    "n3": "3|temp fail|diag3\n",
    "n4": "4|four\n",
    "n100": "100\n",
    "njunk": "junk text\n",
    "nempty": "\n",
    "nslow": "SLEEP 3",
    "nafter": "1|ok@x.example\n",
    "nclose": "CLOSE",
    # found by a probe (ours: 250 local, "Full|extra", 450, 250 remote)
    "n0nofull": "0|box\n",
    "n0four": "0|box|Full|extra\n",
    "n3bare": "3\n",
    "nspace": " 1|x@y.example\n",
}


def test_net_verifier_answers_and_request_lines() -> None:
    got: dict[str, dict[str, object]] = {}
    seen: dict[str, list[str]] = {}
    with line_server(lambda line: NET_ANSWERS.get(line.split("@")[0], "1|\n")) as (port, requests):
        for side in SIDES:
            got[side] = verify_cases(
                side, daemon_base(), list(NET_ANSWERS), "--address-verifier", f"net:127.0.0.1:{port}",
                "--filter-timeout", "1", "--domain", "dom.example",
            )  # fmt: skip
            seen[side] = sorted(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", r) for r in requests)
            requests.clear()
    without_abort(got, "n100")
    for side in SIDES:
        del got[side]["n100"]
        # a 550 without a text: upstream's RCPT reply has no space after the code, ours has one
        for case, value in got[side].items():
            (rcpt, vrfy), lines = value  # type: ignore[misc]
            got[side][case] = ((rcpt.rstrip(), vrfy), lines)
    for case in got["upstream"]:
        assert got["ours"][case] == got["upstream"][case], case
    # the request line: rcpt|from|ip:port|domain|mechanism|id, "none" when not authenticated
    assert seen["ours"] == seen["upstream"]
    assert "n2@Y.example|a@b.example|127.0.0.1:PORT|dom.example|none|\n" in seen["ours"]


@pytest.mark.parametrize("kind", ["missing", "directory", "not-executable"])
def test_a_verifier_that_cannot_run(tmp_path: Path, kind: str) -> None:
    """Upstream's ``550 error``, ``address verifier: exec error`` and ``rejecting recipient ...: error:
    exec error`` (ours said ``550 mailbox unavailable`` and ``exit code 127``)."""
    base = daemon_base(tmp_path)
    program = base / "verifier"
    if kind == "directory":
        program.mkdir()
    elif kind == "not-executable":
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o644)
    got = {
        side: verify_cases(side, daemon_base(), ["u1"], "--address-verifier", str(program)) for side in SIDES
    }
    assert got["ours"] == got["upstream"]
    (rcpt, _vrfy), lines = got["ours"]["u1"]  # type: ignore[misc]
    assert rcpt.startswith("550 error") and "emailrelay: warning: address verifier: exec error" in lines
