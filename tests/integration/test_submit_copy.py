"""``emailrelay-submit --copy``: the envelope goes into every sub-directory, then the original envelope
goes; the content stays in the spool directory (upstream's layout, as ``--pop-by-name`` reads it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.relay import program


def test_copy_puts_the_message_in_each_mailbox(tmp_path: Path) -> None:
    for name in ("alice", "bob", "postmaster", ".hidden"):
        (tmp_path / name).mkdir()
    done = subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(tmp_path), "--from", "a@example.com", "--copy",
         "--verbose", "x@example.net"],
        input=b"Subject: copy\n\nbody\n", capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    printed = Path(done.stdout.decode().strip())  # the content file, as upstream prints it
    assert printed.parent == tmp_path and printed.name.endswith(".content")
    assert [p for p in tmp_path.iterdir() if p.is_file()] == [printed]  # the original envelope is gone
    for name in ("alice", "bob", "postmaster", ".hidden"):  # every sub-directory, as E-MailRelay 2.6b
        assert [p.name for p in (tmp_path / name).iterdir()] == [
            printed.name.replace(".content", ".envelope")
        ]
