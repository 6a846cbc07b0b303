"""Privileged spool I/O does not serialise the process (issue 19).

A relay started as root runs as ``--user`` and takes root back around spool
operations (``identity.as_root``).  That switch is per thread: while one
thread is held inside a privileged section (as a slow fsync would hold it),
another thread stores a whole message as root, and the event-loop thread
stays ``--user`` all along (no process-wide lock, no glibc broadcast that
would switch every thread).  An ``oauth:`` token command runs fully as
``--user``, as filters do.  Run in child processes: dropping to ``--user``
cannot be undone.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (switches to the daemon user)")

CHILD = r"""
import asyncio, json, os, sys, threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from emailrelay import identity
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.store import SpoolStore

spool = Path(sys.argv[1])  # root's, 0700: only root can create files in it
target = identity.lookup("daemon")
identity.drop(target)
store = SpoolStore(spool, group=target.gid)
inside, release = threading.Event(), threading.Event()
holder_tid = []

def hold() -> None:
    with identity.as_root():
        holder_tid.append(threading.get_native_id())
        inside.set()
        release.wait(60)

def euid_of(tid: int) -> int:
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise RuntimeError("no Uid line")

async def main() -> dict:
    loop = asyncio.get_running_loop()
    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    out = {"holder_euid": euid_of(holder_tid[0]), "loop_euid_while_held": os.geteuid()}
    try:
        open(spool / "loop-thread-probe", "wb")
        out["loop_thread_could_write"] = True
    except PermissionError:
        out["loop_thread_could_write"] = False
    env = Envelope(from_address="a@example.com", to_remote=("b@example.net",))
    with ThreadPoolExecutor(2) as pool:
        try:
            mid = await asyncio.wait_for(loop.run_in_executor(pool, store.store_message, env, b"x\r\n"), 20)
            out["stored_while_held"] = str(mid)
        except TimeoutError:
            out["stored_while_held"] = None
        out["loop_euid_after"] = os.geteuid()
        release.set()
        holder.join(30)
    out["holder_euid_after"] = os.geteuid()
    return out

print(json.dumps(asyncio.run(main())))
"""


def test_privileged_operations_overlap_and_the_loop_thread_stays_the_user(tmp_path: Path) -> None:
    daemon = pwd.getpwnam("daemon")
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(spool)], capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["holder_euid"] == 0  # the held thread really is root meanwhile ...
    assert out["loop_euid_while_held"] == daemon.pw_uid  # ... and the loop's thread is not
    assert out["loop_thread_could_write"] is False
    assert out["stored_while_held"], "a second privileged operation waited for the first"
    assert out["loop_euid_after"] == out["holder_euid_after"] == daemon.pw_uid
    files = sorted(spool.iterdir())
    assert [p.name.rsplit(".", 1)[-1] for p in files] == ["content", "envelope"]
    for path in files:  # SPEC §3: root-owned, --user's group, 0660
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, daemon.pw_gid, 0o660), path


OAUTH_CHILD = r"""
from emailrelay import identity
from emailrelay.auth.secrets import Secrets, fetch_oauth_token

identity.drop(identity.lookup("daemon"))
account = Secrets.from_text("client oauth:cmd me /usr/bin/id\n").client_account()  # "euid=" when they differ
print(fetch_oauth_token(account).secret.decode().removeprefix("user=me\x01auth=Bearer ").rstrip("\x01"))
"""


def test_the_oauth_token_command_runs_as_the_user_not_root() -> None:
    """Like a filter: real and effective ids of ``--user`` (it ran with real uid 0)."""
    daemon = pwd.getpwnam("daemon")
    done = subprocess.run(
        [sys.executable, "-c", OAUTH_CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith(f"uid={daemon.pw_uid}(daemon) gid={daemon.pw_gid}(") and "euid" not in token, (
        token
    )
