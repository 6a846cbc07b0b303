"""Process identity against E-MailRelay 2.6b (issue 17 item 2, SPEC.md §1 "Identity").

Both relays are started as root with the default ``--user daemon`` (the production start):
the process named in the pid file keeps real uid/gid 0 and runs with the effective (and
file-system) ids of ``daemon``; with ``--user root`` nothing is switched.  The ids are read
once the relay serves: ours writes its pid file a moment (about 0.2 s) before the supervisor
drops to ``--user``, upstream after (a known difference, docs/decisions.md).  How fast the
pid file appears is measured by bench/, not asserted here (no timed assertions in tests).
"""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from tests.support.oracle import SIDES, daemon_base, needs_oracle, smtp_dialogue, start
from tests.support.relay import process_ids

pytestmark = needs_oracle


@pytest.mark.parametrize("user", [None, "root"], ids=["default-user", "user-root"])
def test_pid_file_process_identity_is_upstreams(tmp_path: Path, user: str | None) -> None:
    base = daemon_base(tmp_path)
    seen = {}
    for side in SIDES:
        with start(side, base, "--interface", "127.0.0.1", user=user) as relay:
            pid = relay.pid_from_file()
            assert smtp_dialogue(relay.port, ["QUIT"])[0].startswith("220 ")  # serving
            seen[side] = dict(zip(("Uid", "Gid"), process_ids(pid), strict=True))
    assert seen["ours"] == seen["upstream"], seen
    daemon = pwd.getpwnam("daemon")
    if user is None:
        assert seen["ours"]["Uid"][:2] == [0, daemon.pw_uid], seen
        assert seen["ours"]["Gid"][:2] == [0, daemon.pw_gid], seen
    else:
        assert seen["ours"]["Uid"] == [0, 0, 0, 0], seen
