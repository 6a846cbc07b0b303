"""spam: and spam-edit: against a real SpamAssassin spamd (installed when missing; slow).

The test installs Debian's ``spamd`` package only when ``spamd`` is not on the
PATH and we are root; when that fails the tests are skipped with the reason.
spamd runs on a free loopback port with a temporary home directory, local
tests only (``-L``), and is stopped by its pid at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emailrelay.policy.verdicts import FilterOutcome
from emailrelay.spool.store import SpoolStore
from tests.support.fake_spamd import GTUBE
from tests.support.policy import content, new_message, server_chain, store_fixture  # noqa: F401
from tests.support.relay import free_port, stop_process

pytestmark = pytest.mark.slow


def _spamd_binary() -> str | None:
    for path in (shutil.which("spamd"), "/usr/sbin/spamd"):
        if path and os.access(path, os.X_OK):
            return path
    return None


def _install() -> str | None:
    if _spamd_binary():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "spamd is not installed and cannot be installed (not root, or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "spamd"],
            env=env,
            capture_output=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"installing spamd failed: {exc}"
    if done.returncode != 0 or not _spamd_binary():
        return f"installing spamd failed: {done.stderr.decode(errors='replace')[-300:]}"
    return None


def _ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"PING SPAMC/1.5\r\n\r\n")
        return b"PONG" in s.recv(100)
    return False


@pytest.fixture(scope="module")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    problem = _install()
    if problem:
        pytest.skip(problem)
    binary = _spamd_binary()
    assert binary is not None
    home = tmp_path_factory.mktemp("spamd-home")
    home.chmod(0o777)
    port = free_port()
    args = [binary, "-L", "-x", "-m", "2", f"--listen=127.0.0.1:{port}", "-H", str(home), "-s", "stderr"]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    log = open(home / "spamd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"spamd did not start: {(home / 'spamd.log').read_text(errors='replace')[-300:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()


GTUBE_MESSAGE = content("gtube", "From: a@example.com", "To: b@example.com", body=GTUBE.decode() + "\r\n")
HAM_MESSAGE = content(
    "lunch tomorrow",
    "From: alice@example.com",
    "To: bob@example.com",
    "Date: Wed, 25 Nov 2026 12:00:00 +0000",
    "Message-ID: <lunch.1@example.com>",
    body="Hi Bob,\r\n\r\nshall we meet at noon at the usual place?\r\n\r\nAlice\r\n",
)


async def test_real_spamd_rejects_gtube(store: SpoolStore, spamd: str) -> None:
    msg = new_message(store, GTUBE_MESSAGE)
    result = await server_chain(store, f"spam:{spamd}", filter_timeout=60.0).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert (result.outcome, result.reason) == (FilterOutcome.REJECT, "rejected")
    assert result.detail.startswith("spam: True ; ")
    assert msg.content_path.read_bytes() == GTUBE_MESSAGE


async def test_real_spamd_accepts_ham(store: SpoolStore, spamd: str) -> None:
    msg = new_message(store, HAM_MESSAGE)
    result = await server_chain(store, f"spam:{spamd}", filter_timeout=60.0).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.OK


async def test_real_spamd_edit(store: SpoolStore, spamd: str) -> None:
    msg = new_message(store, GTUBE_MESSAGE)
    result = await server_chain(store, f"spam-edit:{spamd}", filter_timeout=60.0).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.OK
    edited = msg.content_path.read_bytes()
    assert b"X-Spam-Flag: YES" in edited  # stored as spamd sent it, line ends and all
    assert Path(msg.content_path).stat().st_size > len(GTUBE_MESSAGE)
