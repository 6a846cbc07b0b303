"""Address verifiers and international addresses against E-MailRelay 2.6b (a follow-up, 8 Dec 2026).

What it checks, side by side with the oracle (``needs_oracle``) and, with upstream's observed
values written out, on ours alone (so a clone without the oracle tests it too):

- at RCPT a program verifier (argv) and a ``net:`` verifier (request line) are asked about the
  recipient with its domain in A-labels (``u@xn--caf-dma.example``), with or without SMTPUTF8;
  at VRFY about the address as typed (``vu@caf\u00e9.example``); the sender (MAIL FROM's domain)
  is in A-labels in both; a non-ASCII local part (``\u00fc@example.com``) is given as typed;
- a verifier's rewritten address is stored as it came (``new@b\u00fccher.example``, not made an
  A-label), and does not set ``Utf8MailboxNames`` when its A-label form is ASCII; a local
  mailbox (``mb\u00f6x``) never sets it; a rewritten ``\u00fc@x.example`` does;
- a rejected recipient (550 and 450) that is not ASCII as typed is named in the reply
  (``550 recipient <x2@caf\u00e9.example> no``, ``550 recipient <...>`` when the text is empty);
  an ASCII one (``x2@xn--caf-dma.example``) is not; the warning names the address the verifier
  was asked about (``rejecting recipient "x2@xn--caf-dma.example": no: exit code 2``);
- ``account:`` with ``--domain=xn--caf-dma.example`` takes ``daemon@caf\u00e9.example`` as local;
- without a verifier the empty labels of an international domain are left out of the stored
  address (``u@b\u00fccher.example.`` is stored ``u@xn--bcher-kva.example``).

Kept different (docs/decisions.md, "account: and international domains"): with
``--domain=caf\u00e9.example`` upstream's ``account:`` rejects every RCPT (it compares the
A-label form it is given with the domain as written); ours matches either form, so that domain
gets its mail. Upstream drops the connection (``error encoding idn domain name``) at a second
non-ASCII label in some domains; ours encodes each label (docs/decisions.md, "A-labels"): left out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from tests.support.filter_recorder import Case, recorder, side_neutral, spool_summary
from tests.support.line_server import line_server
from tests.support.oracle import SIDES, Daemon, daemon_base, needs_oracle, normalise_log, smtp_dialogue, start
from tests.support.relay import wait_until

pytestmark = pytest.mark.timeout(120)

CAFE = "caf\u00e9.example"
#: case (the recipient's local part) -> (verifier output, exit code, shell command first)
CASES: dict[str, Case] = {
    "u": ("uname\nmbox\n", 0, ""),
    "r1": ("\nnew@b\u00fccher.example\n", 1, ""),
    "x2": ("no\n", 2, ""),
    "x2e": ("", 2, ""),
    "x3": ("temp\n", 3, ""),
    "\u00fc": ("\n\n", 1, ""),
    "vu": ("uname\nmbox\n", 0, ""),
    "loc": ("name\nmb\u00f6x\n", 0, ""),
    "w": ("\n\u00fc@x.example\n", 1, ""),
}
#: one session, three messages: (MAIL FROM, recipients, VRFY addresses)
MESSAGES: list[tuple[str, list[str], list[str]]] = [
    (
        "a@b\u00e9.example",
        [
            f"u@{CAFE}",
            f"r1@{CAFE}",
            f"x2@{CAFE}",
            f"x2e@{CAFE}",
            f"x3@{CAFE}",
            "\u00fc@example.com",
            "x2@xn--caf-dma.example",
        ],
        [f"vu@{CAFE}"],
    ),
    ("a@b.example", ["loc@y.example"], []),
    ("a@b.example", ["w@y.example"], []),
]
_VERIFIER_LINE = re.compile(r"verif|rejecting recipient")


@dataclass
class Run:
    replies: list[tuple[str, str]]
    log: list[str]
    spool: list[str]
    asked: list[str]  # argv records or net: request lines, side-neutral


def _session(relay: Daemon, smtputf8: bool, messages: Sequence[tuple[str, list[str], list[str]]]) -> Run:
    lines = ["EHLO c.example"]
    for sender, recipients, vrfy in messages:
        lines.append(f"MAIL FROM:<{sender}>" + (" SMTPUTF8" if smtputf8 else ""))
        lines += [f"RCPT TO:<{r}>" for r in recipients] + [f"VRFY {v}" for v in vrfy]
        lines += ["DATA", "Subject: s\r\n\r\nbody\r\n."]
    lines.append("QUIT")
    replies = list(zip(["<greeting>", *lines], smtp_dialogue(relay.port, lines, timeout=8), strict=True))
    assert wait_until(lambda: "smtp connection closed" in relay.log(), 5)
    log = [
        side_neutral(x)
        for x in normalise_log(relay.log(), relay, drop=(r"supervisor: ", r"tx>>|rx<<"))
        if _VERIFIER_LINE.search(x)
    ]
    return Run(
        [(c, r) for c, r in replies if not c.startswith(("<", "EHLO"))], log, spool_summary(relay.spool), []
    )


def _program_run(side: str, smtputf8: bool) -> Run:
    base = daemon_base()
    script = recorder(base, CASES)
    with start(side, base, "--address-verifier", str(script)) as relay:
        run = _session(relay, smtputf8, MESSAGES)
    for record in sorted((script.parent / "rec").glob("*.txt")):
        argv = record.read_text().splitlines()[0]
        run.asked.append(re.sub(r"127\.0\.0\.1:\d+", "PEER", argv.replace(str(base), "BASE")))
    return run


def _net_answer(line: str) -> str:
    case = line.split("@")[0]
    return {"x2": "2|no\n", "r1": "1|new@b\u00fccher.example\n", "x3": "3|\n"}.get(case, "1|\n")


def _net_run(side: str) -> Run:
    base = daemon_base()
    recipients = [f"u@{CAFE}", f"r1@{CAFE}", f"x2@{CAFE}", f"x3@{CAFE}", "\u00fc@example.com"]
    with (
        line_server(_net_answer) as (port, requests),
        start(side, base, "--address-verifier", f"net:127.0.0.1:{port}") as relay,
    ):
        run = _session(relay, False, [("a@b\u00e9.example", recipients, [f"u@{CAFE}"])])
    run.asked = [re.sub(r"127\.0\.0\.1:\d+", "PEER", x) for x in requests]
    return run


def _account_run(side: str, domain: str) -> Run:
    recipients = [f"daemon@{CAFE}", "daemon@xn--caf-dma.example", f"\u00fc@{CAFE}"]
    with start(side, daemon_base(), "--address-verifier", "account:0-65535", "--domain", domain) as relay:
        return _session(relay, False, [("a@b.example", recipients, [f"daemon@{CAFE}"])])


def _plain_run(side: str) -> Run:
    with start(side, daemon_base()) as relay:
        return _session(relay, False, [("a@b.example", ["u@b\u00fccher.example.", "v@b\u00fc..example"], [])])


def _reply(run: Run, command: str) -> str:
    return next(r for c, r in run.replies if c == command)


def _envelopes(run: Run) -> str:
    return "\n".join(x for x in run.spool if ".envelope" in x)


# ---- ours alone, upstream's observed behaviour written out ------------------------------------


@pytest.mark.parametrize("smtputf8", [False, True])
def test_program_verifier_is_asked_about_a_labels(smtputf8: bool) -> None:
    run = _program_run("ours", smtputf8)
    assert "argv: [BASE/f/filter.sh] [u@xn--caf-dma.example] [a@xn--b-bga.example] [PEER] [" in "\n".join(
        run.asked
    )
    assert any(
        x.startswith("argv: [BASE/f/filter.sh] [\u00fc@example.com] [a@xn--b-bga.example]") for x in run.asked
    )
    # VRFY: as typed, no sender
    assert any(x.startswith(f"argv: [BASE/f/filter.sh] [vu@{CAFE}] [] [PEER]") for x in run.asked)
    assert _reply(run, f"VRFY vu@{CAFE}") == "250 uname"
    assert _reply(run, f"RCPT TO:<u@{CAFE}>") == f"250 recipient <u@{CAFE}>  OK"
    assert _reply(run, f"RCPT TO:<x2@{CAFE}>") == f"550 recipient <x2@{CAFE}> no"
    assert _reply(run, f"RCPT TO:<x2e@{CAFE}>") == f"550 recipient <x2e@{CAFE}> mailbox unavailable"
    assert _reply(run, f"RCPT TO:<x3@{CAFE}>") == f"450 recipient <x3@{CAFE}> temp"
    assert (
        _reply(run, "RCPT TO:<\u00fc@example.com>")
        == "550 recipient <\u00fc@example.com> mailbox unavailable"
    )
    assert _reply(run, "RCPT TO:<x2@xn--caf-dma.example>") == "550 no"
    assert 'emailrelay: warning: rejecting recipient "x2@xn--caf-dma.example": no: exit code 2' in run.log
    envelopes = _envelopes(run)
    # the rewritten address as it came; Utf8MailboxNames: its A-label form is ASCII, a mailbox does not count
    assert "X-MailRelay-To-Remote: new@b\\xc3\\xbccher.example\\r\\n" in envelopes
    assert "X-MailRelay-From: a@xn--b-bga.example\\r\\n" in envelopes
    assert "X-MailRelay-To-Local: mb\\xc3\\xb6x\\r\\n" in envelopes
    assert "X-MailRelay-To-Remote: \\xc3\\xbc@x.example\\r\\n" in envelopes
    flags = re.findall(r"Utf8MailboxNames: (\d)", envelopes)
    assert sorted(flags) == ["0", "0", "1"]  # the first two messages, then the rewritten ü@x.example


def test_net_verifier_is_asked_about_a_labels() -> None:
    run = _net_run("ours")
    assert run.asked[0].startswith("u@xn--caf-dma.example|a@xn--b-bga.example|PEER|")
    assert run.asked[-1].startswith(f"u@{CAFE}||PEER|")  # VRFY: as typed
    assert _reply(run, f"RCPT TO:<x2@{CAFE}>") == f"550 recipient <x2@{CAFE}> no"
    assert _reply(run, f"RCPT TO:<x3@{CAFE}>") == f"450 recipient <x3@{CAFE}>"  # no text: no space
    assert "X-MailRelay-To-Remote: new@b\\xc3\\xbccher.example\\r\\n" in _envelopes(run)
    assert "X-MailRelay-To-Remote: u@xn--caf-dma.example\\r\\n" in _envelopes(run)


@pytest.mark.parametrize("domain", [CAFE, "xn--caf-dma.example"])
def test_account_matches_either_form_of_the_domain(domain: str) -> None:
    run = _account_run("ours", domain)
    assert _reply(run, f"RCPT TO:<daemon@{CAFE}>") == f"250 recipient <daemon@{CAFE}>  OK"
    assert (
        _reply(run, "RCPT TO:<daemon@xn--caf-dma.example>")
        == "250 recipient <daemon@xn--caf-dma.example>  OK"
    )
    assert _reply(run, f"RCPT TO:<\u00fc@{CAFE}>") == f"550 recipient <\u00fc@{CAFE}> rejected"
    assert _reply(run, f"VRFY daemon@{CAFE}") == "250 "
    assert "X-MailRelay-To-Local: daemon\\r\\nX-MailRelay-To-Local: daemon\\r\\n" in _envelopes(run)


def test_empty_labels_of_an_international_domain_are_left_out() -> None:
    envelopes = _envelopes(_plain_run("ours"))
    assert (
        "To-Remote: u@xn--bcher-kva.example\\r\\nX-MailRelay-To-Remote: v@xn--b-eha.example\\r\\n"
        in envelopes
    )


# ---- side by side with the oracle ------------------------------------------------------------


@needs_oracle
@pytest.mark.parametrize("smtputf8", [False, True])
def test_program_verifier_as_upstream(smtputf8: bool) -> None:
    ours, upstream = (_program_run(side, smtputf8) for side in SIDES)
    assert ours == upstream


@needs_oracle
def test_net_verifier_as_upstream() -> None:
    ours, upstream = (_net_run(side) for side in SIDES)
    assert ours == upstream


def _without_vrfy(run: Run) -> Run:
    return Run([(c, r) for c, r in run.replies if not c.startswith("VRFY")], run.log, run.spool, run.asked)


@needs_oracle
def test_account_as_upstream_with_an_a_label_domain() -> None:
    ours, upstream = (_account_run(side, "xn--caf-dma.example") for side in SIDES)
    assert _without_vrfy(ours) == _without_vrfy(upstream)
    # kept different: upstream's VRFY (given the address as typed) does not match the A-label --domain
    assert _reply(upstream, f"VRFY daemon@{CAFE}") == "550 rejected"
    assert _reply(ours, f"VRFY daemon@{CAFE}") == "250 "


@needs_oracle
def test_account_with_a_utf8_domain_kept_different() -> None:
    ours, upstream = (_account_run(side, CAFE) for side in SIDES)
    # upstream compares the A-label form it is given at RCPT with the domain as written: no match
    assert _reply(upstream, f"RCPT TO:<daemon@{CAFE}>") == f"550 recipient <daemon@{CAFE}> rejected"
    assert _reply(ours, f"RCPT TO:<daemon@{CAFE}>") == f"250 recipient <daemon@{CAFE}>  OK"
    # the rest as upstream
    assert _reply(ours, f"RCPT TO:<\u00fc@{CAFE}>") == _reply(upstream, f"RCPT TO:<\u00fc@{CAFE}>")
    assert _reply(ours, f"VRFY daemon@{CAFE}") == _reply(upstream, f"VRFY daemon@{CAFE}") == "250 "


@needs_oracle
def test_empty_labels_as_upstream() -> None:
    ours, upstream = (_plain_run(side) for side in SIDES)
    assert ours == upstream
