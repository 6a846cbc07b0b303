"""SMTP AUTH names are octets, as E-MailRelay 2.6b reads them: a follow-up of the POP probe (8 Dec 2026).

What it checks, side by side with the oracle (``needs_oracle``) and on ours alone so that a clone
without the oracle tests it too: with the secrets ``server plain +FF pw`` (the id is the octet
0xff), AUTH PLAIN, LOGIN and CRAM-MD5 as the name ``\\xff`` get 235, and as ``\\xc3\\xbf`` ("ÿ" in
UTF-8) 535 (ours read the id as latin-1 "ÿ" and let both in).  What follows from the name, as
upstream: the ``successful authentication ... for [\\xff]`` and ``failed authentication ...
missing secret for [\\xc3\\xbf]`` log lines with the octets as they came (ours wrote ``\\xff`` in
UTF-8), the envelope's ``X-MailRelay-Authentication: +FF`` (ours ``+C3+BF``) and the address
verifier's sixth argument, the octet 0xff (ours "ÿ" in UTF-8).  UTF-8 and ASCII names (``é``,
``al+ce=x``, ``a b``) behave as before: the same on both sides, xtext ``+C3+A9``, ``al+2Bce+3Dx``,
``a+20b``.  The MAIL FROM AUTH= sent to a next hop does not come from this name (the envelope's
``MailFromAuthOut`` stays empty on both sides) and is not compared here.

Nothing is kept different; the CRAM challenges (random on both sides) are left out of the
comparison.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import socket
from pathlib import Path

import pytest

from emailrelay.protocol.addresses import xtext_encode
from tests.support.oracle import SIDES, daemon_base, needs_oracle, read_reply, start
from tests.support.relay import wait_until

pytestmark = pytest.mark.timeout(120)

SECRETS = "server plain +FF pw\nserver plain +C3+A9 pw\nserver plain al+2Bce+3Dx pw\nserver plain a+20b pw\n"
YY = "ÿ".encode()  # not the id +FF
NAMES = [b"\xff", YY, "é".encode(), b"al+ce=x", b"a b"]
MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5"]
MESSAGE = ["MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA", "Subject: x\r\n\r\nhi\r\n."]
# the verifier: appends its sixth argument (the AUTH name) as a line, accepts as local
VERIFIER = '#!/bin/sh\nprintf "%s\\n" "$6" >> {out}\necho Full Name\necho mbox\nexit 0\n'
AUTH_LOG = re.compile(rb"(?:successful|failed) authentication of remote client .*")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _auth(sock: socket.socket, reader: object, name: bytes, mechanism: str) -> list[str]:
    """AUTH ``mechanism`` as ``name`` with the password "pw": the replies, challenges left out."""

    def send(line: str) -> str:
        sock.sendall(line.encode() + b"\r\n")
        return read_reply(reader)

    if mechanism == "PLAIN":
        return [send("AUTH PLAIN " + _b64(b"\0" + name + b"\0pw"))]
    if mechanism == "LOGIN":
        return [send("AUTH LOGIN"), send(_b64(name)), send(_b64(b"pw"))]
    challenge = base64.b64decode(send("AUTH " + mechanism)[4:])
    digest = hmac.new(b"pw", challenge, hashlib.md5).hexdigest().encode()
    return ["334 <challenge>", send(_b64(name + b" " + digest))]


def _session(port: int, name: bytes, mechanism: str) -> list[str]:
    """EHLO, AUTH as ``name`` and a message (``MESSAGE``) on a connection of its own: the replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        reader = sock.makefile("rb")
        replies = [read_reply(reader)]
        sock.sendall(b"EHLO client\r\n")
        replies.append(read_reply(reader))
        replies += _auth(sock, reader, name, mechanism)
        for line in MESSAGE:
            sock.sendall(line.encode() + b"\r\n")
            replies.append(read_reply(reader))
        sock.sendall(b"QUIT\r\n")
        read_reply(reader)
    return replies[2:]  # (not the greeting and EHLO: they name the version)


def _run(side: str, base: Path) -> tuple[list[list[str]], list[bytes], list[bytes], list[bytes]]:
    """Every name with every mechanism on ``side``: the replies, the AUTH log lines, the envelopes'
    ``X-MailRelay-Authentication`` values and the verifier's sixth arguments (all as octets)."""
    secrets = base / f"{side}.auth"
    secrets.write_text(SECRETS)
    secrets.chmod(0o644)
    out = base / f"{side}-verifier"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # (the verifier runs as daemon)
    verifier = base / f"{side}-verifier.sh"
    verifier.write_text(VERIFIER.format(out=out / "names"))
    verifier.chmod(0o755)
    sessions = [(name, mechanism) for name in NAMES for mechanism in MECHANISMS]
    with start(side, base, "--server-auth", str(secrets), "--address-verifier", str(verifier)) as d:
        replies = [_session(d.port, name, mechanism) for name, mechanism in sessions]
        wait_until(lambda: d.log().count("smtp connection closed") > len(sessions), 10)
        log = AUTH_LOG.findall(d.log_path.read_bytes())
        envelopes = sorted(d.spool.glob("*.envelope"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    stored = [
        line.split(b": ", 1)[1]
        for path in envelopes
        for line in path.read_bytes().splitlines()
        if line.startswith(b"X-MailRelay-Authentication:")
    ]
    return replies, log, stored, (out / "names").read_bytes().splitlines()


def _expect_octets(
    replies: list[list[str]], log: list[bytes], stored: list[bytes], names: list[bytes]
) -> None:
    """What E-MailRelay 2.6b does with these names (checked on either side)."""
    per_name = len(MECHANISMS)
    yy = slice(per_name, 2 * per_name)  # the sessions as "ÿ" in UTF-8: refused
    assert all(r[-len(MESSAGE)] == "530 authentication required" for r in replies[yy])
    assert [r[-len(MESSAGE) - 1] for r in replies[yy]] == ["535 authentication failed"] * per_name
    others = replies[: yy.start] + replies[yy.stop :]
    assert all(r[-1] == "250 message processed" for r in others)
    assert (
        stored
        == [b"+FF"] * per_name + [b"+C3+A9"] * per_name + [b"al+2Bce+3Dx"] * per_name + [b"a+20b"] * per_name
    )
    assert (
        names
        == [b"\xff"] * per_name + ["é".encode()] * per_name + [b"al+ce=x"] * per_name + [b"a b"] * per_name
    )
    assert (
        b"successful authentication of remote client using mechanism [cram-md5] and plaintext secret for [\xff] from line 1"
        in log
    )
    assert (
        b"failed authentication of remote client using mechanism [login] and missing secret for [\xc3\xbf]"
        in log
    )
    assert (
        b"successful authentication of remote client using mechanism [plain] and plaintext secret for [\xc3\xa9] from line 2"
        in log
    )
    assert (
        b"successful authentication of remote client using mechanism [plain] and plaintext secret for [a b] from line 4"
        in log
    )


# ------------------------------------------------------------------ side by side


@needs_oracle
def test_auth_names_are_octets_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_run(side, base) for side in SIDES)
    assert ours[0] == upstream[0]  # replies
    assert ours[1] == upstream[1]  # log lines
    assert ours[2] == upstream[2]  # X-MailRelay-Authentication
    assert ours[3] == upstream[3]  # the verifier's sixth argument
    _expect_octets(*upstream)


# ------------------------------------------------------------------ ours alone


def test_auth_names_are_octets(tmp_path: Path) -> None:
    _expect_octets(*_run("ours", daemon_base(tmp_path)))


def test_xtext_of_octets_that_are_not_utf8() -> None:
    assert xtext_encode(b"\xffa\xc3\xa9".decode("utf-8", "surrogateescape")) == "+FFa+C3+A9"
    assert xtext_encode("é") == "+C3+A9"
    assert xtext_encode("al+ce=x") == "al+2Bce+3Dx"
