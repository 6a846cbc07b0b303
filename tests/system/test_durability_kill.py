"""No acknowledged message is lost when the relay is killed with SIGKILL at random moments (SPEC.md §7).

20 smtplib client threads send messages (each with a unique Message-ID) in
a loop while the relay is ``kill -9``-ed 3-5 times and restarted on the same
port and spool.  Every message whose DATA got a 250 must be in exactly one
committed ``.envelope`` + ``.content`` pair whose content is the Received
line plus the exact bytes sent; no committed envelope may point at an
incomplete content file.  Run with ``-s`` to see the counts.
"""

from __future__ import annotations

import contextlib
import grp
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from emailrelay.spool import envelope as env_format
from tests.support.relay import Relay, free_port, program, start_relay, wait_until
from tests.support.smtpd import short_run_dir, split_received

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

CLIENTS = 20
SEND_SECONDS = 20.0
MSGID_RE = re.compile(rb"^Message-ID: (<[^>\r\n]+>)\r\n", re.MULTILINE)


def make_message(rng: random.Random, client: int, seq: int) -> tuple[str, bytes]:
    msgid = f"<dur-{client}-{seq}-{rng.randrange(10**9)}@example.com>"
    lines = [
        f"From: c{client}@example.com",
        f"To: r{seq % 3}@example.net",
        f"Subject: durability {client}/{seq}",
        f"Message-ID: {msgid}",
        "",
    ]
    for i in range(rng.choice([1, 5, 50, 400])):
        lines.append(("." if i % 7 == 3 else "") + f"{client}-{seq}-{i} " + "x" * rng.randrange(0, 70))
    return msgid, ("\r\n".join(lines) + "\r\n").encode()


def descendants_using(marker: str) -> list[int]:
    """Pids of processes whose command line holds ``marker`` (our unique run directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as s:
            s.settimeout(5)
            return s.recv(4) == b"220 "
    except OSError:
        return False


def test_acknowledged_messages_survive_kill_9(tmp_path: Path) -> None:
    seed = int(os.environ.get("DURABILITY_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    spool = tmp_path / "spool"
    spool.mkdir()
    run_dir = short_run_dir()
    port = free_port()
    incarnations = 0

    def start() -> Relay:
        """Start on the same port and spool; return once the SMTP role itself has greeted a client."""
        nonlocal incarnations
        incarnations += 1
        relay = start_relay(
            tmp_path, "--run-dir", str(run_dir), port=port, spool=spool, name=f"relay{incarnations}"
        )
        deadline = time.monotonic() + 30
        while not greets(port):
            assert relay.proc.poll() is None, relay.log()[-3000:]
            assert time.monotonic() < deadline, "the restarted relay does not greet"
            time.sleep(0.05)
        time.sleep(0.5)  # every role is past its start-up (see test_kill_9_during_start_up_leaves_no_orphans)
        return relay

    def kill(relay: Relay) -> None:
        relay.kill9()
        deadline = time.monotonic() + 10
        while descendants_using(str(run_dir)) or greets(port):
            if time.monotonic() > deadline:
                orphans = descendants_using(str(run_dir))
                for pid in orphans:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"processes of the killed relay survived it: {orphans}")
            time.sleep(0.05)

    lock = threading.Lock()
    attempted: dict[str, bytes] = {}
    acked: dict[str, bytes] = {}
    errors: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        local = random.Random(seed * 100 + n)
        seq = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, local_hostname=f"c{n}.example.com", timeout=20) as s:
                    for _ in range(local.randint(1, 6)):
                        if stop.is_set():
                            break
                        seq += 1
                        msgid, body = make_message(local, n, seq)
                        with lock:
                            attempted[msgid] = body
                        s.sendmail(f"c{n}@example.com", [f"r{seq % 3}@example.net"], body)
                        with lock:
                            acked[msgid] = body
            except (smtplib.SMTPException, OSError) as exc:
                with lock:
                    errors.append(type(exc).__name__)
                time.sleep(0.02)

    relay = start()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    kills = 0
    try:
        began = time.monotonic()
        for t in threads:
            t.start()
        n_kills = rng.randint(3, 5)
        moments = sorted(rng.uniform(1.5, SEND_SECONDS - 2.0) for _ in range(n_kills))
        for moment in moments:
            time.sleep(max(0.0, began + moment - time.monotonic()))
            kill(relay)
            kills += 1
            relay = start()
        time.sleep(max(0.0, began + SEND_SECONDS - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a client thread hung"
        # a clean stop, then a clean start (recovery) and stop again
        assert relay.stop(timeout=20) == 128 + signal.SIGTERM, relay.log()[-3000:]
        relay = start()
        assert relay.stop(timeout=20) == 128 + signal.SIGTERM, relay.log()[-3000:]
        assert descendants_using(str(run_dir)) == [], "relay processes survived their stop"
    finally:
        stop.set()
        relay.kill9()
        for pid in descendants_using(str(run_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)

    # ---- what is in the spool
    names = sorted(p.name for p in spool.iterdir() if not p.name.startswith("."))
    envelopes = [n for n in names if n.endswith(".envelope")]
    stored: dict[str, list[str]] = {}
    for name in envelopes:
        mid = name[: -len(".envelope")]
        env = env_format.parse((spool / name).read_bytes())
        content_path = spool / f"{mid}.content"
        assert content_path.exists(), f"{name} has no content file"
        content = content_path.read_bytes()
        received, body = split_received(content)
        assert received["ip"] == b"127.0.0.1"
        m = MSGID_RE.search(body)
        assert m, f"{mid}.content has no Message-ID: {body[:300]!r}"
        msgid = m.group(1).decode()
        assert msgid in attempted, f"{mid}: unknown message {msgid}"
        assert body == attempted[msgid], f"{mid}: content of {msgid} is incomplete or altered"
        client_no = int(msgid.split("-")[1])
        assert env.from_address == f"c{client_no}@example.com" and env.recipient_count == 1
        stored.setdefault(msgid, []).append(mid)
    duplicates = {k: v for k, v in stored.items() if len(v) > 1}
    lost = sorted(set(acked) - set(stored))
    leftovers = [n for n in names if not n.endswith((".envelope", ".content"))]
    orphan_contents = [
        n for n in names if n.endswith(".content") and n[: -len(".content")] + ".envelope" not in names
    ]
    print(
        f"\ndurability: seed={seed} killed={kills} incarnations={incarnations} attempted={len(attempted)} "
        f"acked={len(acked)} stored={len(stored)} stored-but-unacked={len(set(stored) - set(acked))} "
        f"lost={len(lost)} duplicates={len(duplicates)} leftover-new={len(leftovers)} "
        f"orphan-content={len(orphan_contents)} client-errors={len(errors)}"
    )
    assert kills >= 3
    assert len(acked) > 100, "too little traffic to mean anything"
    assert not duplicates, duplicates
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}"
    assert not [n for n in leftovers if not n.endswith(".envelope.new")], leftovers


def test_kill_9_during_start_up_leaves_no_orphans(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    run_dir = short_run_dir()
    relay = start_relay(tmp_path, "--run-dir", str(run_dir), spool=spool, wait=False)
    try:
        deadline = time.monotonic() + 30
        # kill the supervisor the moment its first role process exists
        while not [p for p in descendants_using(str(run_dir)) if p != relay.pid]:
            assert relay.proc.poll() is None, relay.log()
            assert time.monotonic() < deadline, "no role process appeared"
            time.sleep(0.005)
        relay.kill9()
        deadline = time.monotonic() + 4
        while descendants_using(str(run_dir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert descendants_using(str(run_dir)) == []
        assert not greets(relay.port)
    finally:
        relay.kill9()
        time.sleep(1.0)  # let a starting orphan reach its steady state before it is killed
        for pid in descendants_using(str(run_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to --user daemon")
def test_kill_9_of_the_supervisor_ends_roles_that_switched_user(tmp_path: Path) -> None:
    """The kernel forgets a process's parent-death signal when its effective user changes, which every
    role does with --user daemon: the roles must still end when the supervisor is killed."""
    parent = Path(tempfile.mkdtemp(prefix="er-orphan-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        spool = parent / "spool"
        spool.mkdir()
        os.chown(spool, 0, grp.getgrnam("daemon").gr_gid)
        spool.chmod(0o770)
        run_dir = parent / "run"
        port = free_port()
        args = [program(), "--no-daemon", "--log", "--no-syslog", "--port", str(port), "--interface", "127.0.0.1",
                "--spool-dir", str(spool), "--run-dir", str(run_dir), "--user", "daemon",
                "--forward-to", "127.0.0.1:9", "--poll", "60"]  # fmt: skip
        with open(parent / "relay.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            assert wait_until(
                lambda: len([p for p in descendants_using(str(run_dir)) if p != proc.pid]) >= 4, 30
            )
            assert greets(port)
            proc.kill()
            proc.wait(10)
            assert wait_until(lambda: descendants_using(str(run_dir)) == [], 5), descendants_using(
                str(run_dir)
            )
        finally:
            if proc.poll() is None:
                proc.kill()
            for pid in descendants_using(str(run_dir)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
