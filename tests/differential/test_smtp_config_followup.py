"""``--server-smtp-config``, ``--client-smtp-config`` and ``--server-auth-config m:`` against
E-MailRelay 2.6b, a follow-up of the SMTP server tour (8 Dec 2026).

What it checks, side by side with the oracle (``needs_oracle``) and on ours alone with the
oracle's answers written down, so that a clone without the oracle tests it too:

- an smtp-config item is read as upstream reads it: per feature the first ``x``, ``+x`` or
  ``with-x`` turns it on, else the first ``-x``, ``nox`` or ``without-x`` turns it off; names are
  case-sensitive (``CHUNKING`` is unknown), items are not trimmed, and every item left over (an
  unknown name, a repeat, an "off" beaten by an "on", an empty item) is warned as typed
  (``unknown smtp-config item [-chunking]``): the EHLO keywords offered, the start-up warnings and
  what ``strictparsing`` then does to ``MAIL FROM:a@b``;
- the client's items are ``pipelining``, ``smtputf8strict``, ``eightbitstrict`` and
  ``binarymimestrict`` only: ``nochunking`` is warned and BINARYMIME content still goes by BDAT
  to a next hop offering CHUNKING;
- the server offers the AUTH mechanisms ``m:`` allows in its own fixed order, not the list's
  (``m:login,plain`` offers ``AUTH PLAIN LOGIN``).  The client's pick within ``m:`` is
  tests/differential/test_client_wire_followup.py's;
- ``--server-auth-config`` filters the POP server's SASL list too (CAPA's ``SASL`` line), and
  without PLAIN there is no USER/PASS (``-ERR no SASL PLAIN mechanism to do USER/PASS
  authentication``), as upstream's (ours left POP out of it before this follow-up).

Kept different, and left out: upstream repeats a ``--client-smtp-config`` warning as
each forwarding connection starts, ours warns once at start-up (both in emailrelay/services/,
outside this follow-up's files).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import SIDES, Daemon, daemon_base, needs_oracle, smtp_dialogue, start
from tests.support.relay import free_port, spool_files, wait_until

pytestmark = pytest.mark.timeout(120)

WARNING = "unknown smtp-config item"
NO_ANGLES = "MAIL FROM:a@b"  # refused while strictparsing is on
REFUSED = "553 mailbox name not allowed: missing angle brackets in mailbox name"
ACCEPTED = "250 sender <a@b> OK"
DEFAULT = ["VRFY", "PIPELINING", "8BITMIME"]
CHUNKING = ["VRFY", "CHUNKING", "BINARYMIME", "PIPELINING", "8BITMIME"]

# --server-smtp-config -> (EHLO keywords, warned items, MAIL FROM:a@b accepted): E-MailRelay 2.6b's
SERVER_CASES: dict[str, tuple[list[str], list[str], bool]] = {
    "-pipelining": (["VRFY", "8BITMIME"], [], False),
    "without-pipelining": (["VRFY", "8BITMIME"], [], False),
    "nopipelining,pipelining": (DEFAULT, ["nopipelining"], False),
    "chunking,-chunking": (CHUNKING, ["-chunking"], False),
    "chunking,chunking": (CHUNKING, ["chunking"], False),
    "with-chunking,+chunking,chunking": (CHUNKING, ["with-chunking", "+chunking"], False),
    "nochunking,without-chunking,-chunking": (DEFAULT, ["nochunking", "without-chunking"], False),
    "CHUNKING,+Chunking,+bogus": (DEFAULT, ["CHUNKING", "+Chunking", "+bogus"], False),
    "nosmtputf8,nosmtputf8strict,noalabels,-8bitmime": (DEFAULT, ["-8bitmime"], False),
    "smtputf8,+smtputf8strict,alabels": (["VRFY", "PIPELINING", "SMTPUTF8", "8BITMIME"], [], False),
    "strictparsing": (DEFAULT, [], False),
    "-strictparsing": (DEFAULT, [], True),
    "+nostrictparsing": (DEFAULT, ["+nostrictparsing"], False),
    "strictparsing,nostrictparsing": (DEFAULT, ["nostrictparsing"], False),
    "chunking,, x": (CHUNKING, ["", " x"], False),
}
# --client-smtp-config -> warned items (E-MailRelay 2.6b's)
CLIENT_CASES: dict[str, list[str]] = {
    "pipelining,smtputf8strict,eightbitstrict,binarymimestrict,chunking,nochunking,smtputf8,+bogus": [
        "chunking",
        "nochunking",
        "smtputf8",
        "+bogus",
    ],
    "nopipelining,-smtputf8strict,without-eightbitstrict,nobinarymimestrict,-msgid,Pipelining": [
        "-msgid",
        "Pipelining",
    ],
}
# --server-auth-config (secrets with a plain secret) -> EHLO's AUTH line (E-MailRelay 2.6b's)
AUTH_CASES: dict[str, str] = {
    "m:login,plain": "AUTH PLAIN LOGIN",
    "m:cram-md5,plain,cram-sha256": "AUTH CRAM-SHA256 CRAM-MD5 PLAIN",
    "m:login,cram-sha1,xoauth2,plain;x:plain": "AUTH CRAM-SHA1 LOGIN",
}

POP_CASES: dict[str, tuple[str, str]] = {  # config: (CAPA's SASL line, the reply to USER)
    "m:cram-md5": ("SASL CRAM-MD5", "-ERR no SASL PLAIN mechanism to do USER/PASS authentication"),
    "m:cram-md5,login,plain,cram-sha256": ("SASL CRAM-SHA256 CRAM-MD5 PLAIN LOGIN", "+OK user: alice"),
    "m:plain": ("SASL PLAIN", "+OK user: alice"),
}


def _warned(daemon: Daemon) -> list[str]:
    """The items of the start-up ``unknown smtp-config item [x]`` warnings, in order."""
    prefix = f"warning: {WARNING} ["
    return [line.partition(prefix)[2][:-1] for line in daemon.log().splitlines() if prefix in line]


def _ehlo(replies: Sequence[str]) -> list[str]:
    """The keywords of an EHLO reply (its first line, the greeting, left out)."""
    return [line[4:] for line in replies[1].splitlines()[1:]]


def _server_run(side: str, base: Path, config: str) -> tuple[list[str], list[str], bool]:
    with start(side, base, f"--server-smtp-config={config}") as daemon:
        replies = smtp_dialogue(daemon.port, ["EHLO h", NO_ANGLES, "QUIT"])
        assert replies[2] in (ACCEPTED, REFUSED)
        return _ehlo(replies), _warned(daemon), replies[2] == ACCEPTED


def _client_warnings(side: str, base: Path, config: str) -> list[str]:
    with start(side, base, "--forward-to=127.0.0.1:9", f"--client-smtp-config={config}") as daemon:
        smtp_dialogue(daemon.port, ["QUIT"])  # (the warnings come before the server listens)
        return _warned(daemon)


def _auth_line(side: str, base: Path, config: str) -> str:
    base.mkdir(parents=True, exist_ok=True)
    secrets = base / "secrets"
    secrets.write_text("server plain alice secret\n")
    secrets.chmod(0o644)
    with start(side, base, f"--server-auth={secrets}", f"--server-auth-config={config}") as daemon:
        keywords = _ehlo(smtp_dialogue(daemon.port, ["EHLO h", "QUIT"]))
    return next(k for k in keywords if k.startswith("AUTH "))


def _pop_sasl(side: str, base: Path, config: str) -> tuple[str, str]:
    """The POP server's CAPA ``SASL`` line and its reply to ``USER alice`` with ``config``."""
    base.mkdir(parents=True, exist_ok=True)
    secrets = base / "secrets"
    secrets.write_text("server plain alice secret\n")
    secrets.chmod(0o644)
    pop_port = free_port()
    args = [f"--server-auth={secrets}", f"--server-auth-config={config}", "--pop", "--pop-port", str(pop_port),
            f"--pop-auth={secrets}"]  # fmt: skip
    with start(side, base, *args), socket.create_connection(("127.0.0.1", pop_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"CAPA\r\n")
        capa = []
        while (line := reader.readline().decode().rstrip("\r\n")) not in (".", ""):
            capa.append(line)
        sock.sendall(b"USER alice\r\n")
        user = reader.readline().decode().rstrip("\r\n")
    return next((x for x in capa if x.startswith("SASL")), ""), user


def _binarymime_by_bdat(side: str, base: Path) -> tuple[list[str], list[str]]:
    """A BINARYMIME message through ``side`` with ``--client-smtp-config=nochunking`` to a next hop
    offering CHUNKING: (the BDAT commands the hop got, the warned items)."""
    with FakeSmtp(extensions=("PIPELINING", "8BITMIME", "CHUNKING", "BINARYMIME")) as hop:
        args = [
            f"--forward-to={hop.address}", "--forward-on-disconnect",
            "--client-smtp-config=nochunking", "--server-smtp-config=chunking",
        ]  # fmt: skip
        with start(side, base, *args) as daemon:
            content = b"Subject: b\r\n\r\nbinary\x00\r\n"
            replies = smtp_dialogue(
                daemon.port,
                ["EHLO h", "MAIL FROM:<a@b.example> BODY=BINARYMIME", "RCPT TO:<x@y.example>",
                 f"BDAT {len(content)} LAST\r\n" + content.decode("latin-1").removesuffix("\r\n"), "QUIT"],
            )  # fmt: skip
            assert replies[4].startswith("250"), replies
            settled = wait_until(lambda: hop.messages or spool_files(daemon.spool, ".bad"), 10)
            assert settled, daemon.log()
            return hop.commands_named("BDAT"), _warned(daemon)


# ----------------------------------------------------------------------------- side by side


@needs_oracle
@pytest.mark.parametrize("config", SERVER_CASES)
def test_server_smtp_config_as_upstream(tmp_path: Path, config: str) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_server_run(side, base / side, config) for side in SIDES)
    assert ours == upstream == SERVER_CASES[config]


@needs_oracle
@pytest.mark.parametrize("config", CLIENT_CASES)
def test_client_smtp_config_warnings_as_upstream(tmp_path: Path, config: str) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_client_warnings(side, base / side, config) for side in SIDES)
    assert ours == upstream == CLIENT_CASES[config]


@needs_oracle
def test_client_nochunking_is_unknown_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_binarymime_by_bdat(side, base / side) for side in SIDES)
    assert [len(bdat) > 0 for bdat, _ in (ours, upstream)] == [True, True]
    # (upstream warns again as each forwarding connection starts: ours only at start-up)
    assert set(ours[1]) == set(upstream[1]) == {"nochunking"}


@needs_oracle
@pytest.mark.parametrize("config", AUTH_CASES)
def test_server_auth_order_as_upstream(tmp_path: Path, config: str) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_auth_line(side, base / side, config) for side in SIDES)
    assert ours == upstream == AUTH_CASES[config]


@needs_oracle
@pytest.mark.parametrize("config", POP_CASES)
def test_pop_sasl_list_as_upstream(tmp_path: Path, config: str) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_pop_sasl(side, base / side, config) for side in SIDES)
    assert ours == upstream == POP_CASES[config]


# ------------------------------------------------------------------------------- ours alone


@pytest.mark.parametrize("config", SERVER_CASES)
def test_server_smtp_config(tmp_path: Path, config: str) -> None:
    assert _server_run("ours", daemon_base(tmp_path), config) == SERVER_CASES[config]


@pytest.mark.parametrize("config", CLIENT_CASES)
def test_client_smtp_config_warnings(tmp_path: Path, config: str) -> None:
    assert _client_warnings("ours", daemon_base(tmp_path), config) == CLIENT_CASES[config]


def test_client_nochunking_is_unknown(tmp_path: Path) -> None:
    bdat, warned = _binarymime_by_bdat("ours", daemon_base(tmp_path))
    assert bdat and warned == ["nochunking"]


@pytest.mark.parametrize("config", AUTH_CASES)
def test_server_auth_order(tmp_path: Path, config: str) -> None:
    assert _auth_line("ours", daemon_base(tmp_path), config) == AUTH_CASES[config]


@pytest.mark.parametrize("config", POP_CASES)
def test_pop_sasl_list(tmp_path: Path, config: str) -> None:
    assert _pop_sasl("ours", daemon_base(tmp_path), config) == POP_CASES[config]
