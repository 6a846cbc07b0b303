"""Scaling the forward role from the admin interface keeps every message rung.

Every forward worker is rung for every ``spool.ready`` (the claim decides who
forwards), so after the admin ``workers forward N`` no message waits for the
``--poll`` timer instead of being forwarded at once.  (An earlier design rang
each worker for a share of the ids only, and scaling down orphaned a share.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil

from tests.support.relay import free_port, program
from tests.support.sink import printed_envelope
from tests.support.sink_counter import (
    PROMPT,
    AdminClient,
    CountingSink,
    content,
    poll,
    role_pids,
    supervised_relay,
)


def _option(pid: int, name: str) -> int:
    cmd = psutil.Process(pid).cmdline()
    return int(cmd[cmd.index(name) + 1])


def _submit(spool: Path, mid: str) -> str:
    """``emailrelay-submit --verbose``: returns the spool id it printed."""
    result = subprocess.run(
        [program("emailrelay-submit"), "--verbose", "--spool-dir", str(spool), "--from", "a@example.com",
         "b@example.net"],
        input=content(mid).encode(), capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    return printed_envelope(result.stdout).name.removesuffix(".envelope")


def test_every_share_is_still_rung_after_scaling_down(tmp_path: Path) -> None:
    admin_port = free_port()
    with (
        CountingSink() as sink,
        supervised_relay(
            tmp_path, "--workers", "forward=2", "--forward-to", sink.address, "--poll", "60",
            "--admin", str(admin_port),
            roles={"bus": 1, "notify": 1, "forward": 2, "smtp": 1, "admin": 1},
        ) as relay,
    ):  # fmt: skip
        with AdminClient(admin_port) as admin:
            assert admin.cmd("workers forward 1", timeout=30) == b"OK\r\n" + PROMPT
        assert poll(lambda: len(role_pids(relay.pid).get("forward", [])) == 1, 20)
        # submit one at a time: each must be forwarded at once, not at the 60 s poll
        for i in range(10):
            mid = f"scale{i}@test"
            _submit(relay.spool, mid)
            assert sink.wait_for([mid], 5), f"{mid} not forwarded within 5 s after scaling down"


def test_workers_forward_n_means_n_connections_at_once(tmp_path: Path) -> None:
    """``--workers forward=2`` is two forward processes that forward one message at a time each:
    two connections to the next hop at once, not two in each process (four)."""
    with (
        CountingSink(final_delay=0.2) as sink,
        supervised_relay(
            tmp_path, "--workers", "forward=2", "--forward-to", sink.address, "--poll", "60",
            roles={"bus": 1, "notify": 1, "forward": 2, "smtp": 1},
        ) as relay,
    ):  # fmt: skip
        mids = [f"parallel{i}@test" for i in range(16)]
        for mid in mids:
            _submit(relay.spool, mid)
        assert sink.wait_for(mids, 60), sorted(set(mids) - set(sink.ids()))
        assert sink.peak_open == 2, f"{sink.peak_open} connections at once"
