"""Process identity against E-MailRelay 2.6b (issue 17 item 2, SPEC.md §1 "Identity").

Both relays are started as root with the default ``--user daemon`` (the production start):
the process named in the pid file keeps real uid/gid 0 and runs with the effective (and
file-system) ids of ``daemon``; with ``--user root`` nothing is switched.  The ids are read
the moment the pid file appears (a tight poll, then /proc/PID/status at once, before any
SMTP exchange): ours writes its pid file after the switch to ``--user``, supervised (the
supervisor's pid), ``--single-process`` and ``--as-proxy``; upstream writes it between its
group and its user switch, so its ids are taken once it serves (a snapshot can catch it
half-way on a loaded machine).  The pid
file itself is compared too (owner, group, mode).  How fast the pid file appears is
measured by bench/startup.py, not asserted here (no timed assertions in tests).
"""

from __future__ import annotations

import pwd
import stat
from pathlib import Path

import pytest

from tests.support.oracle import Daemon, daemon_base, needs_oracle, smtp_dialogue, start
from tests.support.relay import free_port, process_ids, wait_for_port, wait_until

pytestmark = needs_oracle

#: What is started, by name: (side, extra options); every "ours" one is compared with "upstream".
VARIANTS = {
    "upstream": ("upstream", ()),
    "ours": ("ours", ()),
    "ours --single-process": ("ours", ("--single-process",)),
}


def _seen_when_pid_file_appears(relay: Daemon) -> dict[str, object]:
    """The ids of the process named in the pid file, read as soon as the file appears (polled every
    half millisecond), then the file's owner, group and mode."""

    def appeared() -> bool:
        assert relay.proc.poll() is None, f"{relay.side} exited with {relay.proc.returncode}: {relay.log()}"
        try:
            return relay.pid_file.read_text().endswith("\n")
        except FileNotFoundError:
            return False

    assert wait_until(appeared, 30, interval=0.0005), relay.log()
    uids, gids = process_ids(int(relay.pid_file.read_text()))
    st = relay.pid_file.stat()
    return {"Uid": uids, "Gid": gids, "pid file": (st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode)))}


@pytest.mark.parametrize("mode", [(), ("--as-proxy",)], ids=["server", "as-proxy"])
@pytest.mark.parametrize("user", [None, "root"], ids=["default-user", "user-root"])
def test_pid_file_process_identity_is_upstreams(
    tmp_path: Path, user: str | None, mode: tuple[str, ...]
) -> None:
    base = daemon_base(tmp_path)
    extra = (*mode, f"127.0.0.1:{free_port()}") if mode else ()  # --as-proxy's server: nothing listens
    seen = {}
    for name, (side, options) in VARIANTS.items():
        with start(
            side,
            base,
            "--interface",
            "127.0.0.1",
            *extra,
            *options,
            user=user,
            wait=False,
            name=name.replace(" ", ""),
        ) as relay:
            seen[name] = _seen_when_pid_file_appears(relay)
            wait_for_port(relay.port, proc=relay.proc, timeout=20)
            assert smtp_dialogue(relay.port, ["QUIT"])[0].startswith("220 ")  # and it serves
            later = dict(zip(("Uid", "Gid"), process_ids(int(relay.pid_file.read_text())), strict=True))
            if side == "upstream":
                # upstream writes its pid file between its group and its user switch: on a loaded
                # machine the snapshot can catch it half-way (Gid switched, Uid not yet), so its
                # settled ids are the reference; ours must already have them when its file appears
                seen[name].update(later)
            assert later == {k: seen[name][k] for k in later}, (name, seen[name], later)
    for name in VARIANTS:
        assert seen[name] == seen["upstream"], (name, seen)
    daemon = pwd.getpwnam("daemon")
    if user is None:
        assert seen["ours"]["Uid"] == [0, daemon.pw_uid, 0, daemon.pw_uid], seen
        assert seen["ours"]["Gid"] == [0, daemon.pw_gid, 0, daemon.pw_gid], seen
    else:
        assert seen["ours"]["Uid"] == [0, 0, 0, 0], seen
