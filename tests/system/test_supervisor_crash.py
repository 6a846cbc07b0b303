"""kill -9 of single roles: the spool stays the truth and circus brings the role back.

Issue "Supervised multi-process relay":

- a forward worker killed while the next hop holds back its reply to the
  final dot leaves a ``.busy`` claim; the claim must return to the queue
  and the message must reach the next hop exactly once (the killed
  session never got a 250, so it does not count);
- with the ``bus`` or the ``notify`` role killed, forwarding goes on within
  one ``--poll`` period (the timer is the truth, the bus only a doorbell),
  and circus starts a new process for the role.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from emailrelay.spool.envelope import Envelope
from emailrelay.spool.store import SpoolStore
from tests.support.sink import states
from tests.support.sink_counter import (
    CountingSink,
    content,
    poll,
    print_log,
    role_pids,
    run_dir,
    send_mail,
    submit,
    supervised_relay,
    topics_seen,
    wait_for_bus,
)


def _index(pid: int) -> int:
    """The forward worker's ``--index`` (circus wid, from 1)."""
    cmd = psutil.Process(pid).cmdline()
    return int(cmd[cmd.index("--index") + 1])


def _holder(forward_pids: list[int], busy: Path) -> int | None:
    for pid in forward_pids:
        try:
            if any(f.path == str(busy) for f in psutil.Process(pid).open_files()):
                return pid
        except psutil.Error:
            pass
    return None


def _plant_orphaned_claim(spool: Path, mid: str) -> None:
    """A ``.busy`` envelope nobody holds a lock on, as a crashed forwarder leaves it."""
    spool.mkdir(parents=True, exist_ok=True)
    store = SpoolStore(spool)
    sid = store.store_message(Envelope("a@example.com", to_remote=("b@example.net",)), content(mid).encode())
    claim = store.claim(sid)
    assert claim is not None
    claim.abandon_claim()  # as a killed forwarder leaves it: no lock, the .busy marked as ours


@pytest.mark.parametrize(
    "victim_wid",
    [
        1,
        pytest.param(
            2,
        ),
    ],
)
def test_kill_9_of_a_forward_worker_mid_message(tmp_path: Path, victim_wid: int) -> None:
    spool = tmp_path / "relay-spool"
    _plant_orphaned_claim(spool, "orphan@test")
    with (
        CountingSink() as sink,
        supervised_relay(
            tmp_path, "--workers", "forward=2", "--forward-to", sink.address, "--poll", "1",
            roles={"bus": 1, "notify": 1, "forward": 2, "smtp": 1},
        ) as relay,
    ):  # fmt: skip
        forwarders = role_pids(relay.pid)["forward"]
        # the start-up recovery (worker 1's) returned the planted claim: it is past its start
        assert sink.wait_for(["orphan@test"], 20), states(relay.spool)
        sink.final_delay = 60.0  # from now on the next hop sits on the final dot
        dots = sink.dots
        victim = next(p for p in forwarders if _index(p) == victim_wid)
        other = next(p for p in forwarders if p != victim)
        os.kill(other, signal.SIGSTOP)  # so that the victim is the one that claims the message
        try:
            send_mail(relay.port, "slow@test")
            assert poll(lambda: sink.dots > dots, 20), "the message never reached the final dot"
        finally:
            os.kill(other, signal.SIGCONT)
        busy = [p for p in relay.spool.iterdir() if p.name.endswith(".envelope.busy")]
        assert len(busy) == 1
        assert _holder(forwarders, busy[0]) == victim
        sink.final_delay = 0.0
        os.kill(victim, signal.SIGKILL)
        assert poll(lambda: len(sink.abandoned) == 1, 10)  # the killed session never saw a 250
        assert poll(lambda: victim not in role_pids(relay.pid).get("forward", []), 10)
        delivered = poll(lambda: sink.count("slow@test") >= 1, 8)
        if not delivered:
            print_log(relay)
            print(sorted(p.name for p in relay.spool.iterdir()))
        assert delivered, f"claim never recovered: {states(relay.spool)}"
        assert poll(lambda: not states(relay.spool), 10), states(relay.spool)
        time.sleep(1.5)  # a poll period more: no second delivery
        assert sink.count("slow@test") == 1
        assert sink.count("orphan@test") == 1
        assert len(role_pids(relay.pid)["forward"]) == 2


def test_kill_9_of_the_bus_role(tmp_path: Path) -> None:
    poll_period = 2.0
    with (
        CountingSink() as sink,
        supervised_relay(
            tmp_path, "--forward-to", sink.address, "--poll", str(int(poll_period)),
            roles={"bus": 1, "notify": 1, "forward": 1, "smtp": 1},
        ) as relay,
    ):  # fmt: skip
        send_mail(relay.port, "before@test")
        assert sink.wait_for(["before@test"], 15)
        (bus,) = role_pids(relay.pid)["bus"]
        os.kill(bus, signal.SIGKILL)
        assert poll(lambda: bus not in role_pids(relay.pid).get("bus", []), 5)
        send_mail(relay.port, "busless@test")
        acked = time.monotonic()
        assert sink.wait_for(["busless@test"], poll_period + 10)
        took = sink.arrival("busless@test") - acked  # type: ignore[operator]
        print(f"forwarded {took:.2f}s after the bus was killed (--poll {poll_period:g})")
        assert took < poll_period + 1.5
        assert poll(lambda: len(role_pids(relay.pid).get("bus", [])) == 1, 15), "circus did not restart bus"
        assert role_pids(relay.pid)["bus"] != [bus]
        wait_for_bus(run_dir(relay.spool))
        # the other roles reconnect to the new bus: their events are seen again
        topics = topics_seen(relay.port, relay.spool, "after-bus@test")
        assert {"smtp.accepted", "spool.ready", "forward.done"} <= topics
        assert poll(lambda: not states(relay.spool), 15), states(relay.spool)


def test_kill_9_of_the_notify_role(tmp_path: Path) -> None:
    poll_period = 2.0
    with (
        CountingSink() as sink,
        supervised_relay(
            tmp_path, "--forward-to", sink.address, "--poll", str(int(poll_period)),
            roles={"bus": 1, "notify": 1, "forward": 1, "smtp": 1},
        ) as relay,
    ):  # fmt: skip
        submit(relay.spool, "before@test")
        assert sink.wait_for(["before@test"], 15)
        (notify,) = role_pids(relay.pid)["notify"]
        os.kill(notify, signal.SIGKILL)
        assert poll(lambda: notify not in role_pids(relay.pid).get("notify", []), 5)
        submit(relay.spool, "unnotified@test")  # only notify (or the timer) rings for submitted mail
        committed = time.monotonic()
        assert sink.wait_for(["unnotified@test"], poll_period + 10)
        took = sink.arrival("unnotified@test") - committed  # type: ignore[operator]
        print(f"forwarded {took:.2f}s after notify was killed (--poll {poll_period:g})")
        assert took < poll_period + 1.5
        assert poll(lambda: len(role_pids(relay.pid).get("notify", [])) == 1, 15), "notify not restarted"
        assert role_pids(relay.pid)["notify"] != [notify]
        submit(relay.spool, "after@test")
        assert sink.wait_for(["after@test"], poll_period + 10)
        assert all(n == 1 for n in sink.ids().values())
