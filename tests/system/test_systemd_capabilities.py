"""The units' ``CapabilityBoundingSet`` is what the relay needs, and each capability in it is needed.

The relay is started as systemd would with the units' bounding set (``setpriv --bounding-set``),
as root with the default ``--user daemon``, supervised, on a privileged port, with upstream's spool
layout (``root:daemon 0770``).  A server filter, running as daemon, rewrites the envelope as
editors do (a new file moved over the old one), so the envelope becomes daemon's file, mode 0600,
not root's; and the next hop refuses
connections, so the forwarder must read that file (CAP_DAC_OVERRIDE) and, with back-off on
(``--retry 60``), record the back-off in its mtime (CAP_FOWNER).  With the whole set, the message is stored (content root's, group daemon,
0660: CAP_CHOWN) and deferred; without CAP_FOWNER or CAP_DAC_OVERRIDE it is not.

Skipped when not root, without ``setpriv`` or a ``daemon`` user, or when daemon cannot read the
checkout.
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emailrelay.identity import directory_problem, lookup
from tests.support.relay import REPO, free_port, program, reachable_dir

UNIT = REPO / "deploy" / "emailrelay.service"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the relay must start as root"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is needed"
    try:
        who = lookup("daemon")
    except KeyError:
        return "no daemon user"
    if directory_problem(str(REPO / "emailrelay"), who) is not None:
        return f"the checkout {REPO} is not readable by daemon"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def unit_capabilities() -> list[str]:
    (line,) = re.findall(r"^CapabilityBoundingSet=(.*)$", UNIT.read_text(), re.MULTILINE)
    return line.split()


def privileged_port() -> int:
    for port in range(700, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


@pytest.fixture
def base() -> Iterator[Path]:
    with reachable_dir("er-caps-") as path:
        yield path


def run_relay(base: Path, capabilities: list[str]) -> tuple[Path, str, int]:
    """Store one message through a relay confined to ``capabilities``; (spool, log, smtp reply code)."""
    daemon_gid = grp.getgrnam("daemon").gr_gid
    spool = base / f"spool-{len(capabilities)}-{time.monotonic_ns()}"
    spool.mkdir()
    os.chown(spool, 0, daemon_gid)
    os.chmod(spool, 0o770)
    script = base / "filter.sh"
    script.write_text(
        '#!/bin/sh\nsed \'s/^X-MailRelay-Client: .*$/X-MailRelay-Client: 127.0.0.2\\r/\' "$2" > "$2.tmp" && mv "$2.tmp" "$2"\n'  # a new file (umask 077: 0600) moved over the old one
    )
    script.chmod(0o755)
    log = base / f"{spool.name}.log"
    port = privileged_port()
    bounding = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in capabilities)
    args = [
        "setpriv", f"--bounding-set={bounding}", "--", program(), "--no-daemon", "--no-syslog",
        "--log-file", str(log), "--port", str(port), "--interface", "127.0.0.1", "--spool-dir", str(spool),
        "--filter", str(script), "--forward-to", f"127.0.0.1:{free_port()}", "--poll", "1", "--retry", "60",
        "--pid-file", str(base / f"{spool.name}.pid"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    code = 0
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    refused = client.sendmail(
                        "a@example.com", ["b@example.net"], b"Subject: caps\r\n\r\nhello\r\n"
                    )
                    code = 250 if not refused else 550
                break
            except smtplib.SMTPResponseException as exc:
                code = exc.smtp_code
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        deadline = time.monotonic() + 8  # the forwarder's first attempt (--poll 1), or its failure
        while time.monotonic() < deadline and not re.search(
            r"deferred for|cannot release|forwarding \[|Permission denied|not permitted",
            log.read_text() if log.exists() else "",
        ):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return spool, log.read_text() if log.exists() else "", code


def test_the_units_bounding_set_is_enough(base: Path) -> None:
    capabilities = unit_capabilities()
    assert capabilities == [
        "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE",
    ]  # fmt: skip
    spool, log, code = run_relay(base, capabilities)
    assert code == 250, log
    (content,) = spool.glob("*.content")
    st = content.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, grp.getgrnam("daemon").gr_gid, 0o660)
    (envelope,) = spool.glob("*.envelope")
    assert envelope.stat().st_uid != 0 and stat.S_IMODE(envelope.stat().st_mode) == 0o600  # the filter's file
    assert b"X-MailRelay-Client: 127.0.0.2\r\n" in envelope.read_bytes()
    assert envelope.stat().st_mtime > time.time() + 30, log  # deferred: the back-off is in its mtime
    assert "cannot release" not in log and "Permission denied" not in log


@pytest.mark.parametrize("missing", ["CAP_FOWNER", "CAP_DAC_OVERRIDE"])
def test_each_file_capability_is_needed(base: Path, missing: str) -> None:
    spool, log, code = run_relay(base, [c for c in unit_capabilities() if c != missing])
    assert code == 250, log  # storing does not need it ...
    deferred = [e for e in spool.glob("*.envelope") if e.stat().st_mtime > time.time() + 30]
    assert not deferred, log  # ... deferring does: the back-off cannot be recorded
    if missing == "CAP_FOWNER":  # the envelope can be read, not given its "not before" time
        assert "cannot release" in log
    else:  # the envelope cannot even be claimed: root is neither its owner nor in its (mode 0600) group
        assert "forwarding [" not in log
