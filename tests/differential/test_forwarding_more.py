"""More of the client side against E-MailRelay 2.6b (issue 17): pipelining, MAIL parameters, the
client filter's place in the dialogue, ``--immediate``, a missing content file, ``--as-proxy``.

What it checks, on both programs run the same way (tests/support/diff_forwarding.py's
helpers: hand-written spools, ``--as-client`` as root, a scripted next hop on loopback):

- pipelining is upstream's, opt-in: by default MAIL and each RCPT wait for their reply, even
  when the next hop offers PIPELINING; with ``--client-smtp-config=pipelining`` MAIL and the
  RCPTs go in one write, DATA after their replies.  What the next hop reads in each read
  (``FakeSmtp.batches``) is compared, with the log, the spool and the messages;
- MAIL's parameters: ``BODY=`` and ``SMTPUTF8`` as upstream's, and no ``SIZE=`` (upstream never
  sends it); HELO after a refused EHLO;
- the client filter runs once the session is up (after the EHLO reply), as upstream's: the
  whole log and dialogue, for a filter that accepts and one that rejects;
- ``--immediate``: a next hop that answers DATA with something other than 354 is a session
  error (the message fails, the client gets ``452 forwarding failed``, no ``forwarding:``
  error line); the client filter runs after the onward connection's EHLO; the forwarding part
  of the log is compared message by message;
- a message whose content file is gone: upstream sends an empty message and deletes the
  envelope; ours fails it to ``.bad`` (docs/decisions.md, "Forwarding": no half-written or
  missing message is forwarded) and goes on with the next;
- ``--as-proxy``, ``--as-server``, ``--close-stderr``: upstream's start-up warning
  ``logging will stop because ... closes the standard error stream soon after startup``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.diff_forwarding import NO_PIPELINING, B, C, D, Run, both, reason_lines, same
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, session_then_quit, start
from tests.support.relay import wait_until

pytestmark = [needs_oracle, pytest.mark.timeout(180)]

OFFERS_ALL = ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 1000000")


def _hops(**kw: Any) -> tuple[list[FakeSmtp], Callable[[], FakeSmtp]]:
    """A next-hop factory for :func:`~tests.support.diff_forwarding.both` that keeps each side's hop (ours first)."""
    made: list[FakeSmtp] = []

    def make() -> FakeSmtp:
        made.append(FakeSmtp(**kw))
        return made[-1]

    return made, make


def _envelope_edit(old: bytes, new: bytes) -> Callable[[Path], None]:
    def prep(spool: Path) -> None:
        for path in spool.glob("*.envelope"):
            path.write_bytes(path.read_bytes().replace(old, new))

    return prep


# ---- pipelining ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["default", "pipelining"])
def test_pipelining_is_opt_in(tmp_path: Path, mode: str) -> None:
    hops, make = _hops(extensions=("PIPELINING", "8BITMIME"))
    args = ("--client-smtp-config=pipelining",) if mode == "pipelining" else ()
    run = same(both(tmp_path, make, [[B, C], [D]], *args))
    assert run.rc == 0 and run.spool == {} and len(run.messages) == 2
    ours, upstream = ([b for _, b in hop.batches] for hop in hops)
    # upstream closes right after its QUIT without reading the 221: when a reply is still unread
    # its close is a reset, which can discard the QUIT before the next hop reads it
    assert ours[-1] == ["QUIT"], ours
    assert _without_final_quit(ours) == _without_final_quit(upstream), (ours, upstream)
    if mode == "default":
        assert all(len(batch) == 1 for batch in ours), ours
    else:
        assert ["MAIL FROM:<a@example.com> BODY=7BIT", f"RCPT TO:<{B}>", f"RCPT TO:<{C}>"] in ours
        assert ["MAIL FROM:<a@example.com> BODY=7BIT", f"RCPT TO:<{D}>"] in ours
        assert ["DATA"] in ours


def _without_final_quit(batches: list[list[str]]) -> list[list[str]]:
    return batches[:-1] if batches and batches[-1] == ["QUIT"] else batches


def test_pipelining_needs_the_next_hop_to_offer_it(tmp_path: Path) -> None:
    hops, make = _hops(extensions=NO_PIPELINING)
    run = same(both(tmp_path, make, [[B, C]], "--client-smtp-config=pipelining"))
    assert run.rc == 0 and len(run.messages) == 1
    for hop in hops:
        assert all(len(batch) == 1 for _, batch in hop.batches), hop.batches
        assert not hop.protocol_errors


# ---- MAIL parameters, HELO ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prep", "mail"),
    [
        (None, "MAIL FROM:<a@example.com> BODY=7BIT"),
        (_envelope_edit(b"Content: 7bit", b"Content: 8bit"), "MAIL FROM:<a@example.com> BODY=8BITMIME"),
        (
            _envelope_edit(b"Utf8MailboxNames: 0", b"Utf8MailboxNames: 1"),
            "MAIL FROM:<a@example.com> BODY=7BIT SMTPUTF8",
        ),
    ],
    ids=["7bit", "8bit", "smtputf8"],
)
def test_mail_parameters_and_no_size(tmp_path: Path, prep: Callable[[Path], None] | None, mail: str) -> None:
    _, make = _hops(extensions=OFFERS_ALL)
    run = same(both(tmp_path, make, [[B]], prep=prep))
    assert run.rc == 0 and run.spool == {}
    assert run.commands[1] == mail  # SIZE offered, never sent
    assert not any("SIZE=" in command for command in run.commands)


def test_helo_after_a_refused_ehlo(tmp_path: Path) -> None:
    _, make = _hops(helo_only=True)
    run = same(both(tmp_path, make, [[B], [C]]))
    assert run.rc == 0 and run.spool == {} and len(run.messages) == 2
    assert run.commands[:3] == ["EHLO 127.0.0.1", "HELO 127.0.0.1", "MAIL FROM:<a@example.com>"]


def _binarymime(size: int = 0) -> Callable[[Path], None]:
    """Every message BINARYMIME; with ``size``, its content that many octets (bare LFs, a NUL)."""

    def prep(spool: Path) -> None:
        _envelope_edit(b"Content: 7bit", b"Content: binarymime")(spool)
        if size:
            body = (b"x" * 69 + b"\n" + b"\x00") * (size // 71)
            for path in spool.glob("*.content"):
                path.write_bytes(b"Subject: big\r\n\r\n" + body)

    return prep


@pytest.mark.parametrize(
    ("offered", "args", "prep", "outcome"),
    [
        (("CHUNKING", "BINARYMIME", "8BITMIME"), (), _binarymime(), "bdat"),
        (("CHUNKING", "BINARYMIME", "8BITMIME"), (), _binarymime(2_300_000), "bdat"),
        (("PIPELINING", "CHUNKING", "BINARYMIME"), ("--client-smtp-config=pipelining",), _binarymime(), "bdat"),
        (("PIPELINING", "CHUNKING", "8BITMIME"), ("--client-smtp-config=pipelining",), None, "data"),
        (("CHUNKING", "8BITMIME"), (), _binarymime(), "failed"),
        (("8BITMIME",), (), _binarymime(), "failed"),
        (("PIPELINING",), (), _envelope_edit(b"Content: 7bit", b"Content: 8bit"), "data"),
        (("PIPELINING",), ("-c", "eightbitstrict"), _envelope_edit(b"Content: 7bit", b"Content: 8bit"), "failed"),
        (("8BITMIME",), (), _envelope_edit(b"Utf8MailboxNames: 0", b"Utf8MailboxNames: 1"), "failed"),
    ],
    ids=[
        "binarymime-bdat", "binarymime-chunks", "binarymime-pipelined", "7bit-with-chunking-by-data",
        "binarymime-no-binarymime", "binarymime-no-chunking", "8bit-no-8bitmime", "8bit-strict", "utf8-no-smtputf8",
    ],
)  # fmt: skip
def test_body_types_and_extensions(
    tmp_path: Path,
    offered: tuple[str, ...],
    args: tuple[str, ...],
    prep: Callable[[Path], None] | None,
    outcome: str,
) -> None:
    """BDAT only for BINARYMIME content (``BDAT <n> [LAST]`` chunks of a million octets, traced
    ``"BDAT <n> LAST" [<n> bytes]``), which fails without CHUNKING and BINARYMIME; 8-bit content
    to a next hop without 8BITMIME is sent with a warning (fails with ``eightbitstrict``); a
    message that needs SMTPUTF8 fails without it: the same dialogue, log, spool and messages."""
    _, make = _hops(extensions=offered)
    runs = both(tmp_path, make, [[B], [C]], *args, prep=prep)
    for each in runs.values():  # (a chunk's reply may come before or after the next chunk is sent)
        each.log = [line for line in each.log if "octets received" not in line]
    run = same(runs)
    assert run.rc == 0 and len(run.messages) == (0 if outcome == "failed" else 2)
    assert any(c.startswith("BDAT") for c in run.commands) == (outcome == "bdat")
    if outcome == "failed":
        assert sum(name.endswith(".envelope.bad") for name in run.spool) == 2
        assert any(
            line.startswith("emailrelay: warning: smtp client protocol: failed: cannot send")
            for line in run.log
        )


@pytest.mark.parametrize(
    "replies",
    [
        {"ehlo": "500 5.5.1 no", "helo": "250 ok"},
        {"ehlo": "501 5.5.1 no", "helo": "250 ok"},
        {"ehlo": "504 5.5.1 no", "helo": "250 ok"},
        {"ehlo": "550 5.5.1 no", "helo": "250 ok"},
        {"rset": "500 no"},
        {"mail": "250 ok\n"},  # (an empty line after it)
        {"mail": "abc"},
        {"mail": "999 x"},
        {"mail": "250-a\n251 b"},
    ],
    ids=[
        "ehlo-500",
        "ehlo-501",
        "ehlo-504",
        "ehlo-550",
        "rset-refused",
        "empty-line",
        "garbage",
        "code-999",
        "code-change",
    ],
)
def test_refusals_and_malformed_replies(tmp_path: Path, replies: dict[str, str]) -> None:
    """HELO follows only an EHLO refused with 500, 501 or 502 (other refusals end the session); a
    refused RSET after refused recipients does not end it; a malformed reply is upstream's
    ``smtp error: invalid response``."""
    _, make = _hops(extensions=NO_PIPELINING, replies=replies, rcpt_replies={C: "550 5.1.1 no"})
    run = same(both(tmp_path, make, [[B], [C], [B]]))
    if "rset" in replies:
        assert run.rc == 0 and len(run.messages) == 2
        (bad,) = (v for k, v in run.spool.items() if k.endswith(".bad"))
        assert reason_lines(bad) == [
            b"X-MailRelay-Reason: one or more recipients rejected",
            b"X-MailRelay-ReasonCode: 500",
        ]
    elif "mail" in replies:
        assert run.rc == 1 and run.log[-1] == "emailrelay: error: smtp error: invalid response"


def test_a_multi_line_reply_that_ends_the_session_is_one_reason(tmp_path: Path) -> None:
    """A refused DATA with a two-line reply: the envelope's reason holds its lines joined by ``\\n``,
    as upstream writes it (ours escaped that ``\\n`` again: ``\\\\n``). Upstream's log line holds a
    real line break where ours writes ``\\x0a`` (no control character reaches our log)."""
    _, make = _hops(extensions=NO_PIPELINING, replies={"data": "554-5.5.1 no\n554 5.5.1 data"})
    runs = both(tmp_path, make, [[B], [C]])
    ours, upstream = runs["ours"], runs["upstream"]
    assert ours.rc == upstream.rc == 1 and ours.spool == upstream.spool
    (bad,) = (v for k, v in ours.spool.items() if k.endswith(".bad"))
    assert (
        reason_lines(bad)[0] == b"X-MailRelay-Reason: smtp error: unexpected response: 5.5.1 no\\n5.5.1 data"
    )
    assert "\n".join(upstream.log) == "\n".join(ours.log).replace("\\x0a", "\n")


# ---- the client filter's place ---------------------------------------------------------------------


def _filter(text: str) -> Path:
    """A client filter script in a directory both sides can read (the log names its path)."""
    script = daemon_base() / "filter.sh"
    script.write_text(text)
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("exit_code", [0, 1])
def test_client_filter_runs_once_the_session_is_up(tmp_path: Path, exit_code: int) -> None:
    """Not compared: after a run whose messages the filter all rejected, upstream logs the reply
    to its QUIT and a second ``tx>>: "QUIT"``; ours logs the one QUIT it sends."""
    script = _filter(f"#!/bin/sh\necho '<<no thanks>>'\nexit {exit_code}\n")
    _, make = _hops(extensions=NO_PIPELINING)
    runs = both(tmp_path, make, [[B], [C]], "--client-filter", str(script))
    end = "emailrelay: info: forwarding: no more messages to send"
    for run in runs.values():
        run.log = run.log[: run.log.index(end) + 2]
    run = same(runs)
    assert run.log[-2:] == [end, 'emailrelay: info: tx>>: "QUIT"']
    first = run.log.index("emailrelay: info: forwarding [emailrelay.ID]")
    assert run.log[first + 1 : first + 4] == [
        "emailrelay: info: smtp connection to 127.0.0.1:PORT",
        'emailrelay: info: rx<<: "220 fake.test ESMTP ready"',
        'emailrelay: info: tx>>: "EHLO 127.0.0.1"',
    ]
    running = next(i for i, line in enumerate(run.log) if ": running " in line)
    assert running > run.log.index('emailrelay: info: rx<<: "250 8BITMIME"')
    if exit_code:
        assert run.commands == ["EHLO 127.0.0.1"] and len(run.spool) == 4  # two .bad, two .content
        assert not any("] failed: no thanks" in line for line in run.log)
    else:
        assert len(run.messages) == 2


# ---- --immediate ----------------------------------------------------------------------------------

SESSION = [
    "EHLO c.example",
    *(
        line
        for n in ("one", "two")
        for line in (
            "MAIL FROM:<a@b.example>",
            "RCPT TO:<x@y.example>",
            "DATA",
            f"Subject: {n}\r\n\r\nhi\r\n.",
        )
    ),
]


def _forwarding_parts(log: list[str]) -> list[list[str]]:
    """Each message's forwarding, from ``forwarding [X]`` to the reply the client gets."""
    parts: list[list[str]] = []
    current: list[str] | None = None
    for line in log:
        if line.startswith("emailrelay: info: forwarding [emailrelay"):
            current = []
            parts.append(current)
        if current is not None:
            current.append(line)
            if line.startswith('emailrelay: info: tx>>: "') and line[25:26].isdigit():
                current = None  # the reply to the client's end of data
    return parts


def _immediate(side: str, base: Path, replies: dict[str, str], extra: tuple[str, ...]) -> dict[str, Any]:
    with (
        FakeSmtp(extensions=NO_PIPELINING, replies=replies) as hop,
        start(side, base, "--immediate", "--forward-to", hop.address, *extra, name=side) as daemon,
    ):
        got, _ = session_then_quit(daemon.port, SESSION)
        assert wait_until(lambda: "smtp protocol done" in daemon.log(), 20), daemon.log()
        log = normalise_log(daemon.log(), daemon, ports=[hop.port])
        spool = sorted(p.name.split(".", 4)[-1] for p in daemon.spool.glob("emailrelay.*"))
    return {
        "replies": [got[i + 1] for i, line in enumerate(SESSION) if line.endswith("\r\n.")],
        "parts": _forwarding_parts(log),
        "errors": [line for line in log if ": error: " in line],
        "commands": hop.commands,
        "spool": spool,
    }


@pytest.mark.parametrize("case", ["data-refused", "filter-ok", "filter-rejects"])
def test_immediate_dialogue_as_upstream(tmp_path: Path, case: str) -> None:
    base = daemon_base(tmp_path)
    replies = {"data": "451 4.3.0 no data now"} if case == "data-refused" else {}
    extra: tuple[str, ...] = ()
    if case.startswith("filter"):
        script = base / "filter.sh"  # (one path for both: the log names it)
        script.write_text(f"#!/bin/sh\necho '<<no thanks>>'\nexit {int(case == 'filter-rejects')}\n")
        script.chmod(0o755)
        extra = ("--client-filter", str(script))
    seen = {side: _immediate(side, base, replies, extra) for side in SIDES}
    ours, upstream = seen["ours"], seen["upstream"]
    for key in ("replies", "parts", "errors", "commands", "spool"):
        assert ours[key] == upstream[key], (key, ours[key], upstream[key])
    assert ours["errors"] == [] and len(ours["parts"]) == 2
    expected = {"data-refused": "452 forwarding failed", "filter-ok": "250 message processed"}
    assert ours["replies"] == [expected.get(case, "452 no thanks")] * 2
    if case == "data-refused":
        assert ours["spool"] == ["content", "content", "envelope.bad", "envelope.bad"]
        assert (
            "emailrelay: warning: smtp client error: smtp error: unexpected response: 4.3.0 no data now"
            in (ours["parts"][0])
        )
    else:  # connected, EHLO answered, then the filter
        part = ours["parts"][0]
        running = next(i for i, line in enumerate(part) if ": running " in line)
        assert part.index('emailrelay: info: tx>>: "EHLO 127.0.0.1"') < running


# ---- a missing content file -------------------------------------------------------------------------


def test_missing_content_is_failed_not_sent_empty(tmp_path: Path) -> None:
    """Upstream sends an empty message in place of the missing content and deletes the envelope;
    ours fails the message (docs/decisions.md, "Forwarding"); the next message goes on both."""

    def lose_first(spool: Path) -> None:
        (first,) = spool.glob("*.1.content")
        first.unlink()

    _, make = _hops(extensions=NO_PIPELINING)
    runs: dict[str, Run] = both(tmp_path, make, [[B], [C]], prep=lose_first)
    ours, upstream = runs["ours"], runs["upstream"]
    assert ours.rc == upstream.rc == 0
    assert upstream.spool == {} and [m for m in upstream.messages] == [b"", ours.messages[0]]
    assert "emailrelay: info: tx>>: [0 line(s) of content]" in upstream.log
    (bad,) = ours.spool.values()
    assert reason_lines(bad) == [
        b"X-MailRelay-Reason: cannot read content file: No such file or directory",
        b"X-MailRelay-ReasonCode:",
    ]
    assert list(ours.spool) == [n for n in ours.spool if n.endswith(".1.envelope.bad")]
    assert len(ours.messages) == 1 and b"Subject: test 2" in ours.messages[0]
    assert ours.commands == upstream.commands[:1] + upstream.commands[5:]  # EHLO, then the second one


# ---- the --close-stderr warning -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--as-proxy", "127.0.0.1:9"), "--as-proxy"),
        (("--as-server",), "--as-server"),
        (("--as-server", "--close-stderr"), "--close-stderr"),
        (("--close-stderr",), "--close-stderr"),
        (("--as-server", "--log-file", "LOG"), None),
    ],
    ids=["as-proxy", "as-server", "close-stderr-named", "close-stderr", "log-file"],
)
def test_stderr_closing_warning(tmp_path: Path, args: tuple[str, ...], named: str | None) -> None:
    base = daemon_base(tmp_path)
    first: dict[str, list[str]] = {}
    for side in SIDES:
        argv = [str(base / f"{side}.log") if a == "LOG" else a for a in args]
        with start(side, base, *argv, user="root") as daemon:
            time.sleep(0.5)  # (anything more goes nowhere once the stream is closed)
            first[side] = [
                line for line in normalise_log(daemon.log(), daemon) if "logging will stop" in line
            ]
    assert first["ours"] == first["upstream"]
    expected = (
        [
            f"emailrelay: warning: logging will stop because {named} closes the standard error stream soon after startup"
        ]
        if named
        else []
    )
    assert first["ours"] == expected


def test_immediate_start_up_lines(tmp_path: Path) -> None:
    """``--immediate``: upstream's warning comes first, before the ``server on`` lines."""
    base = daemon_base(tmp_path)
    lines: dict[str, list[str]] = {}
    for side in SIDES:
        with start(side, base, "--immediate", "--forward-to", "127.0.0.1:9", name=side) as daemon:
            assert wait_until(lambda d=daemon: "forwarding to" in d.log(), 10), daemon.log()
            keep = ("server on", "using --immediate", "forwarding to")
            lines[side] = [x for x in normalise_log(daemon.log(), daemon) if any(k in x for k in keep)]
    assert lines["ours"] == lines["upstream"]
    assert lines["ours"][0].startswith("emailrelay: warning: using --immediate can result in client timeout")


def test_pipelined_refused_mail_does_not_fail_the_next_message(tmp_path: Path) -> None:
    """``pipelining``: the next hop refuses the first MAIL and so answers its pipelined RCPTs with
    503. Ours reads those replies as the RCPTs' and sends the next message; E-MailRelay 2.6b takes
    a 503 as the next message's reply and fails that message too, one the next hop never refused:
    ours on purpose (docs/decisions.md, "Forwarding")."""

    def first_mail_refused() -> Callable[[Any, str], str]:
        seen: list[str] = []

        def reply(session: Any, address: str) -> str:
            seen.append(address)
            return "452 4.3.1 busy" if len(seen) == 1 else "250 2.1.0 sender ok"

        return reply

    def fresh() -> FakeSmtp:  # (each side's hop refuses its own first MAIL)
        return FakeSmtp(extensions=("PIPELINING", "8BITMIME"), replies={"mail": first_mail_refused()})

    runs = both(tmp_path, fresh, [[B, C], [D]], "--client-smtp-config=pipelining")
    ours, upstream = runs["ours"], runs["upstream"]
    assert ours.commands[: len(upstream.commands)] == upstream.commands  # the same, up to the 503s
    first_bad = [b"X-MailRelay-Reason: 4.3.1 busy", b"X-MailRelay-ReasonCode: 452"]
    assert ours.rc == 0 and len(ours.messages) == 1 and b"Subject: test 2" in ours.messages[0]
    assert [reason_lines(v) for k, v in ours.spool.items() if k.endswith(".bad")] == [first_bad]
    # upstream: the second message fails on a 503 meant for the first one's RCPT (as its MAIL
    # reply, or as a session error: it depends on when the 503s arrive)
    assert upstream.messages == []
    bads = [reason_lines(v) for k, v in upstream.spool.items() if k.endswith(".bad")]
    assert len(bads) == 2 and bads[0] == first_bad and b"need MAIL first" in bads[1][0], bads


# ---- a next hop that stops reading the content ------------------------------------------------------


class _StallingHop:
    """A next hop that answers up to ``354`` and then reads nothing more (a small receive buffer),
    so the client's writes block; it closes the connection when the test ends."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.commands: list[tuple[int, str]] = []
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self.done.is_set():
                conn, _ = self.listener.accept()
                threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.sendall(b"220 stall.test\r\n")
            for raw in conn.makefile("rb"):
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.commands.append((0, line))
                verb = line.split(" ")[0].split(":")[0].upper()
                if verb == "DATA":
                    conn.sendall(b"354 go\r\n")
                    self.done.wait(60)
                    return
                conn.sendall(b"250-stall.test\r\n250 8BITMIME\r\n" if verb == "EHLO" else b"250 ok\r\n")

    def __enter__(self) -> _StallingHop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.listener.close()


def test_a_next_hop_that_stops_reading_fails_the_message_after_the_response_timeout(tmp_path: Path) -> None:
    """Upstream's "flow-control timeout": a write that cannot go on for ``--response-timeout``
    seconds fails the message (ours waited for ever: the message stayed ``.busy``)."""

    def big(spool: Path) -> None:
        for content in spool.glob("*.1.content"):
            content.write_bytes(b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 120_000)

    started = time.monotonic()
    runs = both(tmp_path, _StallingHop, [[B], [C]], "--response-timeout", "2", prep=big)
    assert time.monotonic() - started < 60
    for side in SIDES:
        run = runs[side]
        assert run.rc == 1, side
        bad = {name: data for name, data in run.spool.items() if name.endswith(".bad")}
        assert [name.split(".")[3] for name in bad] == ["1"], side
        assert reason_lines(next(iter(bad.values()))) == [
            b"X-MailRelay-Reason: smtp error: flow-control timeout after 2s",
            b"X-MailRelay-ReasonCode:",
        ], side
        assert "emailrelay: error: smtp error: flow-control timeout after 2s" in run.log, side
        assert any(name.endswith(".2.envelope") for name in run.spool), side  # not tried: the run ended


# ---- the greeting's timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting_after", "args"),
    [
        (3, ("--response-timeout", "2", "--prompt-timeout", "5")),  # slow: within --prompt-timeout
        (30, ("--response-timeout", "2", "--prompt-timeout", "1")),  # none: EHLO after --prompt-timeout
    ],
)
def test_the_greeting_waits_for_the_prompt_timeout(
    tmp_path: Path, greeting_after: int, args: tuple[str, ...]
) -> None:
    """Upstream waits ``--prompt-timeout`` for the greeting whatever ``--response-timeout`` is (ours
    failed the message after ``--response-timeout``), then warns and sends EHLO all the same."""
    _, make = _hops(extensions=NO_PIPELINING, delays={"greeting": greeting_after})
    ours = same(both(tmp_path, make, [[B]], *args))
    if greeting_after == 3:
        assert ours.rc == 0 and ours.spool == {} and len(ours.messages) == 1
    else:
        assert "emailrelay: warning: timeout: no greeting from remote server after 1s: continuing" in ours.log
