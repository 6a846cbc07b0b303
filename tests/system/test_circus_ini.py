"""circus.ini (issue 18.2): the committed file is the generated one, and circusd runs the relay from it.

- the repository's ``circus.ini`` is ``emailrelay --print-circus-ini
  config/emailrelay-dev.conf`` run at the top of the repository (``make
  run``'s configuration): the test fails when the two disagree;
- ``.venv/bin/circusd`` started on a generated ini (free port, temporary
  spool and run directory, forwarding to a counting sink) runs the roles of
  the topology table; a message sent to its smtp socket reaches the next
  hop, and ``circusctl`` on the ini's endpoint lists the watchers.  circusd
  is stopped by its pid (SIGTERM, then SIGKILL), its roles by theirs;
- under it the admin port answers ``roles``, ``restart`` and ``workers``
  (which need emailrelay's own supervisor) with an error that says to use
  circusctl, even with a supervisor channel left in the run directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil

from emailrelay import rundir
from emailrelay.services.admin import PLAIN_CIRCUSD, PROMPT
from tests.support.relay import BIN, REPO, free_port, program, wait_for_port
from tests.support.sink_counter import AdminClient, CountingSink, poll, send_mail


def test_the_committed_circus_ini_is_the_generated_one() -> None:
    generated = subprocess.run(
        [program(), "--print-circus-ini", "config/emailrelay-dev.conf"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True, stdin=subprocess.DEVNULL,
    ).stdout  # fmt: skip
    committed = (REPO / "circus.ini").read_text()
    assert committed == generated, (
        "circus.ini is stale: .venv/bin/emailrelay --print-circus-ini config/emailrelay-dev.conf > circus.ini"
    )


def _roles(pid: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children():
            cmd = child.cmdline()
            if "emailrelay.cli.role" in cmd:
                role = cmd[cmd.index("emailrelay.cli.role") + 1]
                counts[role] = counts.get(role, 0) + 1
    return counts


@contextlib.contextmanager
def _circusd(tmp_path: Path, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """circusd on the ini generated from ``options`` (with a temporary spool and run directory,
    ``--user root``, the log to circusd.log); stopped by its pid at the end, its roles by theirs."""
    spool, run = tmp_path / "spool", tmp_path / "run"
    spool.mkdir()
    (run / rundir.CIRCUS_DIR).mkdir(parents=True, mode=0o700)  # as the ini's header says
    common = ["--spool-dir", str(spool), "--run-dir", str(run), "--user", "root", "--log", "--no-syslog"]
    ini = subprocess.run(
        [program(), "--print-circus-ini", *common, *options],
        capture_output=True, text=True, timeout=60, check=True, stdin=subprocess.DEVNULL, cwd=tmp_path,
    ).stdout  # fmt: skip
    (tmp_path / "circus.ini").write_text(ini)
    with open(tmp_path / "circusd.log", "wb") as log:
        circusd = subprocess.Popen(
            [str(BIN / "circusd"), "circus.ini"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    roles: set[int] = set()
    try:
        yield circusd
        with contextlib.suppress(psutil.Error):
            roles = {c.pid for c in psutil.Process(circusd.pid).children()}
    finally:
        circusd.send_signal(signal.SIGTERM)
        try:
            circusd.wait(30)
        except subprocess.TimeoutExpired:
            circusd.kill()
            circusd.wait(5)
        for pid in roles:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_circusd_runs_the_relay_from_a_generated_ini(tmp_path: Path) -> None:
    port = free_port()
    run = tmp_path / "run"
    with CountingSink() as sink:
        options = [
            "--port", str(port), "--interface", "127.0.0.1", "--forward-to", sink.address, "--poll", "1",
            "--pid-file", str(tmp_path / "circusd.pid"),
        ]  # fmt: skip
        with _circusd(tmp_path, *options) as circusd:
            ini = (tmp_path / "circus.ini").read_text()
            assert "[watcher:forward]" in ini and "[socket:smtp0]" in ini
            wait_for_port(port, proc=circusd)
            expected = {"bus": 1, "notify": 1, "forward": 1, "smtp": 1}
            assert poll(lambda: _roles(circusd.pid) == expected, 30), _roles(circusd.pid)
            send_mail(port, "via-circusd@test")
            assert sink.wait_for(["via-circusd@test"], 30), (tmp_path / "circusd.log").read_text()[-3000:]
            assert (tmp_path / "circusd.pid").read_text().strip() == str(circusd.pid)
            status = subprocess.run(
                [str(BIN / "circusctl"), "--endpoint", rundir.ipc(run, rundir.CIRCUS_CONTROL), "--timeout", "10", "list"],
                capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert set(status.stdout.strip().split(",")) == {"bus", "notify", "forward", "smtp"}, status
    assert sink.count("via-circusd@test") == 1


def test_admin_commands_of_the_supervisor_say_to_use_circusctl(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    stale = tmp_path / "run" / rundir.CHANNEL  # left by an earlier `emailrelay` on this run directory
    options = [
        "--port", str(port), "--interface", "127.0.0.1", "--admin", str(admin), "--forward-to", "127.0.0.1:9",
    ]  # fmt: skip
    with _circusd(tmp_path, *options) as circusd:
        stale.write_bytes(b"")
        wait_for_port(admin, proc=circusd)
        with AdminClient(admin) as client:
            for command in ("roles", "restart smtp", "workers forward 2"):
                assert client.cmd(command) == f"error: {PLAIN_CIRCUSD}\r\n".encode() + PROMPT, command
            assert client.cmd("pid") == f"{circusd.pid}\r\n".encode() + PROMPT  # the admin role works


def test_metrics_counts_every_role_under_a_plain_circusd(tmp_path: Path) -> None:
    """No supervisor channel under circusd: the exporter's census finds the role processes beside
    it (notify and forward start before it, so their role.started went out before it subscribed),
    each counted once, also after a later scrape."""
    import re
    import time
    import urllib.request

    port, mport = free_port(), free_port()
    expected = {"notify": 1.0, "forward": 1.0, "metrics": 1.0, "smtp": 1.0}

    def starts() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        found = re.finditer(r'^emailrelay_role_starts_total\{role="(\w+)"\} (\S+)$', text, re.M)
        return {m.group(1): float(m.group(2)) for m in found}

    options = [
        "--port", str(port), "--interface", "127.0.0.1", "--forward-to", "127.0.0.1:9", "--poll", "60",
        "--metrics", f"127.0.0.1:{mport}",
    ]  # fmt: skip
    with _circusd(tmp_path, *options) as circusd:
        wait_for_port(mport, proc=circusd)
        roles = {"bus": 1, **{r: 1 for r in expected}}
        assert poll(lambda: _roles(circusd.pid) == roles, 30), _roles(circusd.pid)
        assert poll(lambda: starts() == expected, 20), starts()
        time.sleep(6)  # past the census period: the next census counts nobody twice
        assert starts() == expected
