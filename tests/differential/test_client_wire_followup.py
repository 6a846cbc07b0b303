"""The forwarding client on the wire against E-MailRelay 2.6b: a follow-up of the client tour of 8 Dec 2026.

What it checks, with tests/support/diff_forwarding.py's helpers (hand-written spools, ``--as-client``
as root, a scripted next hop on loopback, tests/support/fake_smtp.py), on both programs where the
oracle is set (``EMAILRELAY_ORACLE_BIN``: log, exit code, spool, dialogue and the octets the next
hop read alike) and on ours alone otherwise:

- authentication tries every mechanism both sides can do, strongest first (CRAM-MD5, PLAIN,
  LOGIN), until one succeeds, logging ``<failure>: trying [<next>]`` before each new ``AUTH``;
  a 4xx refusal too.  The failure names the mechanism and secret last used to answer, none before
  the secret was first sent (``authentication failed : [<reply>]`` for a CRAM-MD5 or LOGIN refused
  at once), so a failure may name an earlier mechanism than the reply it quotes, as upstream's
  words do;
- a message the next hop cannot take for two reasons fails for its content first: a UTF-8
  BINARYMIME message to a server with neither CHUNKING nor SMTPUTF8 is ``cannot send binarymime
  message to a non-chunking server``, a UTF-8 8-bit message with ``eightbitstrict`` to a server
  with neither 8BITMIME nor SMTPUTF8 is ``cannot send 8-bit message to 7-bit server``; a UTF-8
  8-bit message that fails for want of SMTPUTF8 is not first warned about as 8-bit;
- a ``421`` to the RSET that follows refused recipients is that RSET's reply: the message fails
  with ``one or more recipients rejected`` and ``X-MailRelay-ReasonCode: 421``;
- the content as the next hop reads it (dot-stuffing, a line of only ".", no final CRLF, bare CR
  or LF, an empty file, LF-only line ends), octet for octet.

Kept different (docs/decisions.md, "Forwarding"): a content line over 998 octets fails the message
before MAIL (upstream sends it); after a ``421`` to that RSET the next hop closes and upstream sends
the next message on the closed connection, failing it (``peer disconnected``), where ours connects
again and sends it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.diff_forwarding import NO_PIPELINING, B, C, D, Run, as_client, both, reason_lines, same
from tests.support.diff_guide import readable_file
from tests.support.fake_smtp import FakeSmtp, Reply, Session
from tests.support.oracle import daemon_base, needs_oracle

pytestmark = pytest.mark.timeout(120)

Prep = Callable[[Path], None]


class _Hops(list[FakeSmtp]):
    """A next-hop factory for :func:`both` that keeps each side's hop (ours first)."""

    def __init__(self, cls: type[FakeSmtp] = FakeSmtp, **kw: Any) -> None:
        super().__init__()
        self.cls, self.kw = cls, {"extensions": NO_PIPELINING, **kw}

    def __call__(self) -> FakeSmtp:
        self.append(self.cls(**self.kw))
        return self[-1]


def _ours(
    tmp_path: Path, hops: _Hops, messages: list[list[str]], *args: str, prep: Prep | None = None
) -> Run:
    """Our side alone, as :func:`both` runs it."""
    with hops() as hop:
        return as_client(
            "ours", daemon_base(tmp_path), hop, messages, *args, stamp=int(time.time()), prep=prep
        )


def _bads(run: Run) -> list[list[bytes]]:
    return [reason_lines(v) for k, v in sorted(run.spool.items()) if k.endswith(".envelope.bad")]


def _edit(old: bytes, new: bytes) -> Prep:
    def prep(spool: Path) -> None:
        for path in spool.glob("*.envelope"):
            path.write_bytes(path.read_bytes().replace(old, new))

    return prep


def _chain(*preps: Prep) -> Prep:
    def prep(spool: Path) -> None:
        for each in preps:
            each(spool)

    return prep


UTF8 = _edit(b"Utf8MailboxNames: 0", b"Utf8MailboxNames: 1")
EIGHT_BIT = _edit(b"Content: 7bit", b"Content: 8bit")
BINARYMIME = _edit(b"Content: 7bit", b"Content: binarymime")

# ---- authentication: one mechanism after the other -------------------------------------------------

CHALLENGE = {"LOGIN": "334 UGFzc3dvcmQ6", "CRAM-MD5": "334 PDEyMzQ1LjY3ODlAZmFrZS50ZXN0Pg=="}
SECRET = "plaintext secret for [me] from line 1"


def _auth(at_once: tuple[str, ...] = (), answered: tuple[str, ...] = (), code: str = "535 5.7.8") -> Any:
    """An AUTH answer: mechanisms in ``at_once`` refused at their AUTH command, those in
    ``answered`` once the secret came (PLAIN's comes with the command), the others accepted."""

    def answer(session: Session, lines: list[str]) -> Reply:
        mechanism = lines[0].split()[0]
        if mechanism in at_once:
            return f"{code} at once {mechanism.lower()}"
        if mechanism in CHALLENGE and len(lines) == 1:
            return CHALLENGE[mechanism]
        if mechanism in answered:
            return f"{code} no {mechanism.lower()}"
        return "235 2.7.0 ok"

    return answer


def _using(mechanism: str) -> str:
    return f"using mechanism [{mechanism}] and {SECRET}"


AUTH_CASES: dict[str, tuple[str, Any, list[str], list[str], str | None]] = {
    # name: (offered, answer, AUTH commands sent, "trying" lines, the reason or None when sent)
    "plain-refused-login-accepted": (
        "AUTH LOGIN PLAIN",
        _auth(answered=("PLAIN",)),
        ["PLAIN", "LOGIN"],
        [f"authentication failed {_using('plain')}: [5.7.8 no plain]: trying [login]"],
        None,
    ),
    "cram-md5-refused-after-the-challenge": (
        "AUTH CRAM-MD5 LOGIN",
        _auth(answered=("CRAM-MD5",)),
        ["CRAM-MD5", "LOGIN"],
        [f"authentication failed {_using('cram-md5')}: [5.7.8 no cram-md5]: trying [login]"],
        None,
    ),
    "cram-md5-refused-at-once": (
        "AUTH CRAM-MD5 LOGIN PLAIN",
        _auth(at_once=("CRAM-MD5",)),
        ["CRAM-MD5", "PLAIN"],
        ["authentication failed : [5.7.8 at once cram-md5]: trying [plain]"],
        None,
    ),
    "all-refused-at-once": (
        "AUTH CRAM-MD5 LOGIN PLAIN",
        _auth(at_once=("CRAM-MD5", "LOGIN", "PLAIN")),
        ["CRAM-MD5", "PLAIN", "LOGIN"],
        [
            "authentication failed : [5.7.8 at once cram-md5]: trying [plain]",
            f"authentication failed {_using('plain')}: [5.7.8 at once plain]: trying [login]",
        ],
        f"authentication failed {_using('plain')}: [5.7.8 at once login]",
    ),
    "temporary-refusals": (
        "AUTH PLAIN LOGIN",
        _auth(answered=("PLAIN", "LOGIN"), code="454 4.7.0"),
        ["PLAIN", "LOGIN"],
        [f"authentication failed {_using('plain')}: [4.7.0 no plain]: trying [login]"],
        f"authentication failed {_using('login')}: [4.7.0 no login]",
    ),
    "only-one-refused-at-once": (
        "AUTH LOGIN",
        _auth(at_once=("LOGIN",)),
        ["LOGIN"],
        [],
        "authentication failed : [5.7.8 at once login]",
    ),
}


def _auth_run(tmp_path: Path, name: str, runner: Callable[..., Any]) -> Any:
    offered, answer, *_ = AUTH_CASES[name]
    secrets = readable_file(daemon_base(tmp_path) / "client.auth", "client plain me secret\n")
    hops = _Hops(extensions=(*NO_PIPELINING, offered), auth=answer)
    return runner(tmp_path, hops, [[B], [C]], "--client-auth", str(secrets))


def _check_auth(run: Run, name: str) -> None:
    _, _, mechanisms, trying, reason = AUTH_CASES[name]
    assert [exchange[0].split()[0] for exchange in run.auth] == mechanisms
    assert [line for line in run.log if ": trying [" in line] == [
        f"emailrelay: info: smtp error: {t}" for t in trying
    ]
    if reason is None:  # authenticated: both messages go, as the account's
        assert run.rc == 0 and run.spool == {} and len(run.messages) == 2
        assert [c for c in run.commands if c.startswith("MAIL")] == [
            "MAIL FROM:<a@example.com> BODY=7BIT AUTH=me"
        ] * 2
        assert any(
            f"successful authentication with remote server {_using(mechanisms[-1].lower())}" in line
            for line in run.log
        )
    else:  # the message in hand fails with the last failure, the next is left
        assert run.rc == 1 and _bads(run) == [
            [b"X-MailRelay-Reason: smtp error: " + reason.encode(), b"X-MailRelay-ReasonCode:"]
        ]
        assert run.log[-1] == f"emailrelay: error: smtp error: {reason}"


@needs_oracle
@pytest.mark.parametrize("name", list(AUTH_CASES))
def test_authentication_falls_back_as_upstream(tmp_path: Path, name: str) -> None:
    _check_auth(same(_auth_run(tmp_path, name, both)), name)


@pytest.mark.parametrize("name", list(AUTH_CASES))
def test_authentication_falls_back(tmp_path: Path, name: str) -> None:
    """Ours used to fail the message at the first refusal, where upstream tries the next mechanism."""
    _check_auth(_auth_run(tmp_path, name, _ours), name)


# ---- which reason a message that cannot go gets ------------------------------------------------------

POLICY_CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...], Prep, str]] = {
    # name: (offered, args, envelope, the warning's reason)
    "utf8-binarymime": (("8BITMIME",), (), _chain(UTF8, BINARYMIME), "cannot send binarymime message to a non-chunking server"),
    "utf8-binarymime-chunking": (("CHUNKING", "BINARYMIME"), (), _chain(UTF8, BINARYMIME), "cannot send utf8 message to non-smtputf8 server"),
    "utf8-8bit-strict": (("SIZE 1000",), ("-c", "eightbitstrict"), _chain(UTF8, EIGHT_BIT), "cannot send 8-bit message to 7-bit server"),
    "utf8-8bit-strict-8bitmime": (("8BITMIME",), ("-c", "eightbitstrict"), _chain(UTF8, EIGHT_BIT), "cannot send utf8 message to non-smtputf8 server"),
    "utf8-8bit": (("SIZE 1000",), (), _chain(UTF8, EIGHT_BIT), "cannot send utf8 message to non-smtputf8 server"),
}  # fmt: skip


def _policy_run(tmp_path: Path, name: str, runner: Callable[..., Any]) -> Any:
    offered, args, prep, _ = POLICY_CASES[name]
    return runner(tmp_path, _Hops(extensions=offered), [[B]], *args, prep=prep)


def _check_policy(run: Run, name: str) -> None:
    reason = POLICY_CASES[name][3]
    assert run.rc == 0 and run.messages == [] and run.commands == ["EHLO 127.0.0.1"]
    assert _bads(run) == [[b"X-MailRelay-Reason: " + reason.encode(), b"X-MailRelay-ReasonCode:"]]
    assert f"emailrelay: warning: smtp client protocol: failed: {reason}" in run.log
    # a message that fails for want of SMTPUTF8 is not warned about as 8-bit first, as upstream
    assert not any("8BITMIME extension" in line for line in run.log), run.log


@needs_oracle
@pytest.mark.parametrize("name", list(POLICY_CASES))
def test_the_content_is_looked_at_first_as_upstream(tmp_path: Path, name: str) -> None:
    _check_policy(same(_policy_run(tmp_path, name, both)), name)


@pytest.mark.parametrize("name", list(POLICY_CASES))
def test_the_content_is_looked_at_first(tmp_path: Path, name: str) -> None:
    """Ours looked at SMTPUTF8 first (``cannot send utf8 message ...`` for all of them)."""
    _check_policy(_policy_run(tmp_path, name, _ours), name)


# ---- a 421 to the RSET after refused recipients ----------------------------------------------------------


class _ClosingAfter421(FakeSmtp):
    """A next hop that closes the connection after each ``421`` it sends, as a real one does."""

    async def _send(self, writer: asyncio.StreamWriter, stage: str, value: Reply) -> bool:
        sent = await super()._send(writer, stage, value)
        return sent and not (isinstance(value, str) and value.startswith("421"))


def _rset_421(tmp_path: Path, runner: Callable[..., Any]) -> Any:
    hops = _Hops(_ClosingAfter421, rcpt_replies={C: "550 5.1.1 no"}, replies={"rset": "421 4.3.2 closing"})
    return runner(tmp_path, hops, [[C], [D]])


RESET = b"peer disconnected: connection reset by peer"
RECIPIENTS_REJECTED_421 = [
    b"X-MailRelay-Reason: one or more recipients rejected",
    b"X-MailRelay-ReasonCode: 421",
]


@needs_oracle
def test_421_to_the_rset_after_refused_recipients_as_upstream(tmp_path: Path) -> None:
    """The first message's ``.bad`` as upstream's; then upstream fails the next on the closed
    connection (``peer disconnected``) where ours connects again and sends it."""
    runs = _rset_421(tmp_path, both)
    ours, upstream = runs["ours"], runs["upstream"]
    assert _bads(ours) == [RECIPIENTS_REJECTED_421]
    # (upstream's own race: the closed connection is an end of file or a reset, so its reason may
    # have ": connection reset by peer" after it; seen once in CI)
    first, second = _bads(upstream)
    assert first == RECIPIENTS_REJECTED_421
    assert second[0] in (b"X-MailRelay-Reason: peer disconnected", b"X-MailRelay-Reason: " + RESET), second
    assert second[1:] == [b"X-MailRelay-ReasonCode:"]
    assert upstream.log[-1].startswith("emailrelay: error: peer disconnected"), upstream.log
    assert (ours.rc, len(ours.messages), upstream.rc, len(upstream.messages)) == (0, 1, 1, 0)


def test_421_to_the_rset_after_refused_recipients(tmp_path: Path) -> None:
    """Ours ended the session with ``smtp error: unexpected response: 4.3.2 closing`` as the
    message's reason and left the next message for the next run."""
    run = _rset_421(tmp_path, _ours)
    assert _bads(run) == [RECIPIENTS_REJECTED_421]
    assert run.rc == 0 and len(run.messages) == 1
    assert not any("unexpected response" in line for line in run.log)


# ---- the content on the wire --------------------------------------------------------------------------------

CONTENTS = [
    b"Subject: dots\r\n\r\nline\r\n.\r\n.start\r\n..two\r\nend\r\n",
    b"Subject: no end\r\n\r\nlast line",
    b"Subject: dot at the end\r\n\r\nx\r\n.",
    b"Subject: bare\r\n\r\na\rb\nc\r\n\n\r\rd\r\n",
    b"",
    b"Subject: lf\n\nbody\n.\n",
]
ON_THE_WIRE = [
    b"Subject: dots\r\n\r\nline\r\n..\r\n..start\r\n...two\r\nend\r\n",
    b"Subject: no end\r\n\r\nlast line\r\n",
    b"Subject: dot at the end\r\n\r\nx\r\n..\r\n",
    b"Subject: bare\r\n\r\na\r\nb\r\nc\r\n\r\n\r\n\r\nd\r\n",
    b"",
    b"Subject: lf\r\n\r\nbody\r\n..\r\n",
]


def _contents(contents: list[bytes]) -> Prep:
    def prep(spool: Path) -> None:
        for path, content in zip(sorted(spool.glob("*.content")), contents, strict=True):
            path.write_bytes(content)

    return prep


def _wire(hop: FakeSmtp) -> list[bytes]:
    return [message.raw for message in sorted(hop.messages, key=lambda m: m.rcpts)]


@needs_oracle
def test_content_on_the_wire_as_upstream(tmp_path: Path) -> None:
    hops = _Hops()
    same(
        both(tmp_path, hops, [[f"r{i}@example.net"] for i in range(len(CONTENTS))], prep=_contents(CONTENTS))
    )
    assert _wire(hops[0]) == _wire(hops[1]) == ON_THE_WIRE


def test_content_on_the_wire(tmp_path: Path) -> None:
    hops = _Hops()
    run = _ours(
        tmp_path, hops, [[f"r{i}@example.net"] for i in range(len(CONTENTS))], prep=_contents(CONTENTS)
    )
    assert run.rc == 0 and run.spool == {}
    assert _wire(hops[0]) == ON_THE_WIRE


@needs_oracle
def test_a_line_over_998_octets_differs_on_purpose(tmp_path: Path) -> None:
    """Upstream sends a 1500-octet line as it is; ours fails the message before connecting."""
    content = b"Subject: long\r\n\r\n" + b"x" * 1500 + b"\r\n"
    runs = both(tmp_path, _Hops(), [[B]], prep=_contents([content]))
    ours, upstream = runs["ours"], runs["upstream"]
    assert upstream.rc == 0 and upstream.spool == {} and upstream.messages == [content]
    assert ours.rc == 0 and ours.messages == [] and ours.commands == []
    assert _bads(ours) == [
        [b"X-MailRelay-Reason: line too long for SMTP: over 998 octets", b"X-MailRelay-ReasonCode:"]
    ]
