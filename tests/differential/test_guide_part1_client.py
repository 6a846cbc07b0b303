"""Reference guide "SMTP client options", ``--client-smtp-config`` keywords, against E-MailRelay 2.6b.

What it is for (issue 17): docs/compatibility.md's rows for ``pipelining``,
``smtputf8strict``, ``eightbitstrict`` and ``binarymimestrict``. The same
hand-made spool (tests/differential/test_forwarding.py's files, the envelope
marked 8bit, binarymime or with UTF-8 mailbox names) is forwarded by each
side with ``--as-client`` to a scripted next hop that lacks the extension,
with and without the keyword; the exit code, log, spool files and what the
next hop received are compared. Skipped without ``EMAILRELAY_ORACLE_BIN``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.differential.test_forwarding import B, _both, _same
from tests.support.fake_smtp import FakeSmtp, auth_script
from tests.support.oracle import daemon_base, needs_oracle

pytestmark = [needs_oracle, pytest.mark.timeout(120)]


def _mark(old: bytes, new: bytes) -> Callable[[Path], None]:
    """A ``prep`` that rewrites one field of every envelope of the spool."""

    def prep(spool: Path) -> None:
        for path in spool.glob("*.envelope"):
            path.write_bytes(path.read_bytes().replace(old, new))

    return prep


EIGHT_BIT = _mark(b"Content: 7bit", b"Content: 8bit")
BINARY = _mark(b"Content: 7bit", b"Content: binarymime")
UTF8 = _mark(b"Utf8MailboxNames: 0", b"Utf8MailboxNames: 1")

CASES = {
    "pipelining": (("-c", "pipelining"), ("PIPELINING", "8BITMIME"), None, True),
    "smtputf8strict": (("-c", "smtputf8strict"), ("8BITMIME",), UTF8, False),
    "smtputf8-not-strict": ((), ("8BITMIME",), UTF8, False),
    "eightbitstrict": (("--client-smtp-config", "eightbitstrict"), (), EIGHT_BIT, False),
    "eightbit-not-strict": ((), (), EIGHT_BIT, True),
    "binarymimestrict": (("-c", "binarymimestrict"), ("8BITMIME",), BINARY, False),
    "binarymime-not-strict": ((), ("8BITMIME",), BINARY, False),
}


@pytest.mark.parametrize(("args", "extensions", "prep", "sent"), list(CASES.values()), ids=list(CASES))
def test_client_smtp_config_keywords(
    tmp_path: Path,
    args: tuple[str, ...],
    extensions: tuple[str, ...],
    prep: Callable[[Path], None] | None,
    sent: bool,
) -> None:
    """The same exit code, log lines, spool files and next-hop dialogue on both sides; a strict
    keyword fails the message (``.bad``) where the next hop lacks the extension; so does an SMTPUTF8 or
    BINARYMIME message without the keyword, on both sides; an 8BITMIME one is then sent."""
    run = _same(_both(tmp_path, lambda: FakeSmtp(extensions=extensions), [[B]], *args, prep=prep))
    assert run.commands and run.commands[0].startswith("EHLO ")
    assert len(run.messages) == (1 if sent else 0)
    assert any(name.endswith(".envelope.bad") for name in run.spool) == (not sent), run.spool


@pytest.mark.parametrize("where", ["command-line", "config-file"])
def test_client_auth_plain_value(tmp_path: Path, where: str) -> None:
    """``--client-auth plain:<base64-user-id>:<base64-password>`` on the command line, and
    ``client-auth plain:...`` in a configuration file: the same AUTH dialogue, log and spool."""
    value = "plain:bWU=:c2VjcmV0"  # "me", "secret"
    conf = daemon_base(tmp_path) / "client.conf"
    conf.write_text(f"client-auth {value}\n")
    conf.chmod(0o644)
    args = ("--client-auth", value) if where == "command-line" else (str(conf),)
    hop = lambda: FakeSmtp(extensions=("8BITMIME", "AUTH PLAIN LOGIN"), auth=auth_script("235 2.7.0 ok"))  # noqa: E731
    run = _same(_both(tmp_path, hop, [[B]], *args))
    assert run.rc == 0 and run.spool == {} and len(run.messages) == 1
    assert run.auth and run.auth[0][0].startswith("PLAIN ")
