"""Chaos: kill -9 of random role processes while mail flows through the supervised relay (SPEC.md §7).

Promise: "no acknowledged message is ever lost" and "mail is forwarded at
least once: a crash between the next hop's 250 and our delete can cause one
duplicate" (ARCHITECTURE.md).  A supervised relay (``--forward-to SINK
--poll 1 --workers forward=2,smtp=2``) forwards to a counting sink while
sender threads push messages with unique Message-IDs at a steady rate and a
killer thread ``kill -9``-s a random role process (``smtp``, ``forward``,
``notify``, ``bus``) every few hundred milliseconds.  Victims are found only
as psutil children of the arbiter this test started, and killed by pid.
Before killing a forwarder the killer waits (bounded) until it holds a
``.busy`` claim, so forwarder kills really hit messages mid-flight; the
number of claims it held is recorded.

At the end every message that got a 250 must be at the sink (by
Message-ID): 0 lost.  Duplicates must be at most the claims held by killed
forwarders; each one should have first arrived shortly before a forwarder
kill (reported when not).  A run without kills must give exactly 0 duplicates.

The engine, :func:`run_chaos`, is shared with ``tests/soak/chaos.py``
(10,000 messages, 2-10 s between kills).  Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support.relay import start_relay
from tests.support.sink import states
from tests.support.sink_counter import CountingSink, content, poll, role_pids, wait_for_roles

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

ROLES = {"bus": 1, "notify": 1, "forward": 2, "smtp": 2}
WORKERS_PER_FORWARDER = 1  # each of the --workers forward=2 processes forwards one message at a time


@dataclass
class Kill:
    at: float  # time.monotonic()
    role: str
    pid: int
    wid: int
    claims: int  # .busy files the victim held open just before the kill (forwarders)


@dataclass
class ChaosResult:
    seed: int
    attempted: int = 0
    acked: set[str] = field(default_factory=set)
    send_errors: int = 0
    kills: list[Kill] = field(default_factory=list)
    at_sink: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    unattributed_duplicates: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stored_unacked: int = 0
    leftover: dict[str, int] = field(default_factory=dict)
    send_seconds: float = 0.0
    drain_seconds: float = 0.0
    log_path: Path | None = None  # the relay's log (its tail is printed when a run fails)
    relay_exit: int | None = None  # the relay's exit status when it had ended before the test stopped it

    def log_tail(self, lines: int = 120) -> str:
        """The relay log's warnings and errors (the roles' exits and restarts, a crash loop), then its
        last ``lines`` lines."""
        if self.log_path is None or not self.log_path.exists():
            return "(no relay log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        alarms = [line for line in text if ": warning: " in line or ": error: " in line][-lines:]
        return (
            f"---- {self.log_path}: warnings and errors (last {len(alarms)})\n" + "\n".join(alarms)
            + f"\n---- {self.log_path} (last {lines} lines)\n" + "\n".join(text[-lines:])
        )  # fmt: skip

    @property
    def forward_kills(self) -> list[Kill]:
        return [k for k in self.kills if k.role == "forward"]

    @property
    def claims_hit(self) -> int:
        return sum(k.claims for k in self.forward_kills)

    def summary(self) -> str:
        by_role = Counter(k.role for k in self.kills)
        mid_flight = sum(1 for k in self.forward_kills if k.claims)
        return (
            f"chaos: seed={self.seed} attempted={self.attempted} acked={len(self.acked)} "
            f"send-errors={self.send_errors} kills={len(self.kills)} {dict(sorted(by_role.items()))} "
            f"forward-kills-mid-flight={mid_flight} claims-hit={self.claims_hit} "
            f"at-sink={len(self.at_sink)} lost={len(self.lost)} duplicates={sum(self.duplicates.values())} "
            f"stored-but-unacked={self.stored_unacked} leftover={self.leftover} "
            f"send={self.send_seconds:.1f}s drain={self.drain_seconds:.1f}s"
            + ("" if self.relay_exit is None else f" RELAY-EXITED-EARLY={self.relay_exit}")
        ) + "".join(f"\n  unattributed duplicate {n}" for n in self.notes)


def _wid(pid: int) -> int:
    with contextlib.suppress(psutil.Error, ValueError, IndexError):
        cmd = psutil.Process(pid).cmdline()
        return int(cmd[cmd.index("--index") + 1])
    return 0


def _claims_held(pid: int) -> int:
    with contextlib.suppress(psutil.Error):
        return sum(1 for f in psutil.Process(pid).open_files() if f.path.endswith(".envelope.busy"))
    return 0


def run_chaos(
    tmp_path: Path,
    *,
    messages: int,
    rate: float,
    kill_interval: tuple[float, float] | None,
    seed: int,
    senders: int = 8,
    max_kills: int = 10_000,
    forward_wids: tuple[int, ...] = (1, 2),
    last_kill: str | None = None,
    drain_timeout: float = 60.0,
) -> ChaosResult:
    """Send ``messages`` at ``rate``/s through a supervised relay while killing roles; see the module doc.

    ``forward_wids`` limits which forward workers (circus wid) may be killed;
    ``last_kill`` ("forward-2", ...) forces the role of the final kill.
    """
    rng = random.Random(seed)
    result = ChaosResult(seed)
    lock = threading.Lock()
    stop_killing = threading.Event()
    next_index = iter(range(messages))
    with CountingSink() as sink:
        relay = start_relay(
            tmp_path, "--forward-to", sink.address, "--poll", "1", "--workers", "forward=2,smtp=2",
            name="chaos",
        )  # fmt: skip
        result.log_path = relay.log_path
        seen: set[int] = set()
        failed = False
        try:
            wait_for_roles(relay.pid, ROLES, timeout=30)
            began = time.monotonic()

            def sender(n: int) -> None:
                conn: smtplib.SMTP | None = None
                while True:
                    with lock:
                        i = next(next_index, None)
                    if i is None:
                        break
                    due = began + i / rate
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    mid = f"chaos-{seed}-{i}@test"
                    with lock:
                        result.attempted += 1
                    try:
                        if conn is None:
                            conn = smtplib.SMTP("127.0.0.1", relay.port, timeout=20)
                        conn.sendmail("a@example.com", ["b@example.net"], content(mid))
                        with lock:
                            result.acked.add(mid)
                        if i % 10 == n % 10:  # a new connection now and then: spread over smtp processes
                            conn.quit()
                            conn = None
                    except (smtplib.SMTPException, OSError):
                        with lock:
                            result.send_errors += 1
                        if conn is not None:
                            with contextlib.suppress(Exception):
                                conn.close()
                        conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.quit()

            def pick(target: str) -> tuple[str, int] | None:
                pids = role_pids(relay.pid)
                if target.startswith("forward-"):
                    wid = int(target.split("-")[1])
                    cands = [p for p in pids.get("forward", []) if _wid(p) == wid]
                    return ("forward", cands[0]) if cands else None
                cands = pids.get(target, [])
                return (target, rng.choice(cands)) if cands else None

            def kill(target: str) -> None:
                chosen = pick(target)
                if chosen is None:
                    return
                role, pid = chosen
                claims = 0
                if role == "forward":  # wait (bounded) for a claim, so the kill hits a message mid-flight
                    deadline = time.monotonic() + 2.0
                    while (claims := _claims_held(pid)) == 0 and time.monotonic() < deadline:
                        time.sleep(0.01)
                wid = _wid(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    result.kills.append(Kill(time.monotonic(), role, pid, wid, claims))

            def killer() -> None:
                assert kill_interval is not None
                targets = ["smtp", "notify", "bus", *(f"forward-{w}" for w in forward_wids)]
                order: list[str] = []
                while not stop_killing.is_set() and len(result.kills) < max_kills:
                    if stop_killing.wait(rng.uniform(*kill_interval)):
                        break
                    if not order:  # every target once per round, in a random order
                        order = rng.sample(targets, len(targets))
                    kill(order.pop())

            threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(senders)]
            kthread = threading.Thread(target=killer, daemon=True) if kill_interval else None
            for t in threads:
                t.start()
            if kthread is not None:
                kthread.start()
            for t in threads:
                t.join(messages / rate + 120)
            assert not any(t.is_alive() for t in threads), "a sender hung"
            stop_killing.set()
            if kthread is not None:
                kthread.join(10)
            if last_kill is not None:
                # the final kill hits the chosen forward worker while it holds a claim: the other
                # worker is paused (SIGSTOP, by pid) so that the chosen one takes the last message
                wait_for_roles(relay.pid, ROLES, timeout=30)
                target_wid = int(last_kill.split("-")[1])
                forwarders = role_pids(relay.pid)["forward"]
                others = [p for p in forwarders if _wid(p) != target_wid]
                for p in others:
                    os.kill(p, signal.SIGSTOP)
                try:
                    sink.final_delay = 3.0
                    extra = f"chaos-{seed}-last@test"
                    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as s:
                        s.sendmail("a@example.com", ["b@example.net"], content(extra))
                    result.acked.add(extra)
                    result.attempted += 1
                    target = next(p for p in forwarders if _wid(p) == target_wid)
                    poll(lambda: _claims_held(target) > 0, 10, 0.01)
                    kill(f"forward-{target_wid}")
                finally:
                    for p in others:
                        os.kill(p, signal.SIGCONT)
                    sink.final_delay = 0.0
            result.send_seconds = time.monotonic() - began
            drain_began = time.monotonic()
            wait_for_roles(relay.pid, ROLES, timeout=30)
            seen = {p for pids in role_pids(relay.pid).values() for p in pids}
            poll(lambda: result.acked <= set(sink.ids()), drain_timeout, 0.2)
            poll(lambda: not (states(relay.spool)["envelope"] + states(relay.spool)["busy"]), 10, 0.2)
            result.drain_seconds = time.monotonic() - drain_began
            time.sleep(1.5)  # a poll period more: late duplicates would show now
            result.at_sink = sink.ids()
            result.leftover = {k: v for k, v in states(relay.spool).items() if v}
            arrivals = {m.mid: m.at for m in reversed(list(sink.messages))}  # first arrival per id
            all_arrivals: dict[str, list[float]] = {}
            for m in list(sink.messages):
                all_arrivals.setdefault(m.mid, []).append(m.at)
        except BaseException:
            failed = True
            raise
        finally:
            exited = result.relay_exit = relay.proc.poll()
            if exited is None:
                seen |= {p for pids in role_pids(relay.pid).values() for p in pids}
            relay.stop(timeout=20)
            for pid in seen:  # a role that outlived its arbiter: ours, by pid
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
            if failed:
                state = "was running" if exited is None else f"had exited with {exited}"
                print(f"\nchaos: seed={seed}: the relay {state}")
                print(result.log_tail())
    result.lost = sorted(result.acked - set(result.at_sink))
    result.duplicates = {k: v - 1 for k, v in result.at_sink.items() if v > 1}
    result.stored_unacked = len(set(result.at_sink) - result.acked)
    forward_kill_times = [k.at for k in result.forward_kills]
    result.unattributed_duplicates = [
        mid for mid in result.duplicates
        if not any(0 <= t - arrivals[mid] <= 2.0 for t in forward_kill_times)
    ]  # fmt: skip
    for mid in result.unattributed_duplicates:
        near = sorted(((k.at - arrivals[mid]), k.role, k.wid) for k in result.kills)
        near = [n for n in near if -5 < n[0] < 10]
        times = [round(t - arrivals[mid], 3) for t in all_arrivals.get(mid, [])]
        result.notes.append(f"{mid}: arrivals {times}, kills (s after first arrival, role, wid) {near}")
    return result


def _check(result: ChaosResult) -> None:
    assert not result.lost, f"{len(result.lost)} acknowledged messages lost, e.g. {result.lost[:5]}"
    duplicates = sum(result.duplicates.values())
    # at most one duplicate per claim a killed forwarder held (the bound, measured at each kill)
    assert duplicates <= result.claims_hit <= len(result.forward_kills) * WORKERS_PER_FORWARDER
    # a duplicate whose first copy did not arrive within 2 s before a forwarder kill is reported, not
    # failed on: one soak run showed two such (see docs/reliability.md, "Open questions")


def test_chaos_no_acknowledged_message_lost(tmp_path: Path) -> None:
    """1,000 messages, a kill every 0.4-1.5 s of smtp, notify, bus or either forward worker; the last
    kill hits forward worker 2 (which does not run the start-up recovery) while it holds a claim."""
    seed = int(os.environ.get("CHAOS_SEED", str(int(time.time()))))
    result = run_chaos(
        tmp_path, messages=1000, rate=60.0, kill_interval=(0.4, 1.5), max_kills=40, seed=seed,
        last_kill="forward-2",
    )  # fmt: skip
    print("\n" + result.summary())
    try:
        assert len(result.kills) >= 8
        assert {k.role for k in result.kills} == {"smtp", "notify", "bus", "forward"}
        assert result.kills[-1].wid == 2 and result.kills[-1].claims >= 1
        assert len(result.acked) >= 900
        _check(result)
    except AssertionError:
        print(result.log_tail())
        raise


def test_no_kills_no_duplicates(tmp_path: Path) -> None:
    """1,000 messages without chaos: every one exactly once."""
    result = run_chaos(tmp_path, messages=1000, rate=400.0, kill_interval=None, seed=1)
    print("\n" + result.summary())
    try:
        assert len(result.acked) == 1000 and result.send_errors == 0
        assert not result.lost
        assert sum(result.duplicates.values()) == 0, result.duplicates
        assert result.stored_unacked == 0
        assert not result.leftover, result.leftover
    except AssertionError:
        print(result.log_tail())
        raise
