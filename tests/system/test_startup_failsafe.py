"""Fail-safe start (issue 18.8): a spool, run directory or pid file the relay cannot use: one line, exit 1.

A read-only spool (a read-only bind mount), a full spool (a small tmpfs,
filled) and a run directory that cannot be made are each reported as one
``emailrelay: error: ...`` line on stderr, exit 1, before the relay
detaches, closes stderr or spawns a role, in the supervised modes
(``--no-daemon`` and ``--as-server``, which closes stderr) and in
``--single-process``.  Never a traceback.  The mounts live in a private
mount namespace (``unshare -m``) that ends with the process: nothing to
clean up on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from emailrelay import rundir
from tests.support.relay import free_port, program

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1) for mounts"
)

MODES = [["--no-daemon"], ["--as-server"], ["--no-daemon", "--single-process"]]


def _relay_in_namespace(setup: str, spool: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``setup`` (shell, with $SPOOL) then ``emailrelay`` in a private mount namespace (no ``--port``
    with ``--as-client``: a usage error, as upstream's)."""
    serving = [] if "--as-client" in options else ["--port", str(free_port())]
    args = [
        program(), *options, *serving, "--interface", "127.0.0.1",
        "--spool-dir", str(spool), "--log", "--no-syslog", "--pid-file", str(spool.parent / "pid"), "--user", "root",
    ]  # fmt: skip
    script = f'{setup}\nexec "$@"'
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-ec", script, "sh", *args],
        env={**os.environ, "SPOOL": str(spool)}, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str], needle: str, bound: bool = False) -> None:
    """Exit 1 with one error line holding ``needle``; nothing bound unless ``bound`` (the run
    directory is made after binding, so that a port in use is still exit 2)."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("emailrelay: error: ")]
    assert len(errors) == 1, result.stderr
    assert needle in errors[0], result.stderr
    assert bound or "smtp server on" not in result.stderr


@pytest.mark.parametrize("mode", MODES, ids=lambda m: " ".join(m))
def test_read_only_spool(tmp_path: Path, mode: list[str]) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    result = _relay_in_namespace('mount --bind -o ro "$SPOOL" "$SPOOL"', spool, *mode)
    _one_error_line(result, f"spool directory not writable: {spool}: read-only file system")
    assert not (tmp_path / "pid").exists()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: " ".join(m))
def test_full_spool(tmp_path: Path, mode: list[str]) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    fill = 'mount -t tmpfs -o size=1m tmpfs "$SPOOL"\ndd if=/dev/zero of="$SPOOL/fill" bs=64k 2>/dev/null || true'
    result = _relay_in_namespace(fill, spool, *mode)
    _one_error_line(result, f"spool directory full: {spool}: 0 bytes free")
    assert not (tmp_path / "pid").exists()


def test_a_full_spool_can_still_be_drained_as_client(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    fill = 'mount -t tmpfs -o size=1m tmpfs "$SPOOL"\ndd if=/dev/zero of="$SPOOL/fill" bs=64k 2>/dev/null || true'
    result = _relay_in_namespace(fill, spool, "--as-client", f"127.0.0.1:{free_port()}")
    assert result.returncode == 0, result
    assert "error" not in result.stderr


@pytest.mark.parametrize("mode", MODES[:2], ids=lambda m: " ".join(m))
def test_run_directory_that_cannot_be_made(tmp_path: Path, mode: list[str]) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    runs = tmp_path / "runs"
    runs.mkdir()
    run_dir = runs / "run"
    result = _relay_in_namespace(
        f'mount --bind -o ro "{runs}" "{runs}"', spool, *mode, "--run-dir", str(run_dir)
    )
    _one_error_line(result, f"cannot make the run directory {run_dir}: Read-only file system", bound=True)
    assert not (tmp_path / "pid").exists()


@pytest.mark.parametrize("mode", [["--no-daemon"], ["--no-daemon", "--single-process"]], ids=" ".join)
def test_pid_file_that_cannot_be_made_is_upstreams_error(tmp_path: Path, mode: list[str]) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (tmp_path / "file").write_text("not a directory\n")
    pid_file = tmp_path / "file" / "emailrelay.pid"
    result = subprocess.run(
        [program(), *mode, "--port", str(free_port()), "--interface", "127.0.0.1", "--spool-dir", str(spool),
         "--log", "--no-syslog", "--user", "root", "--pid-file", str(pid_file)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    _one_error_line(result, f"invalid pid file: cannot create file: {pid_file}: not a directory", bound=True)
    assert not rundir.default(spool).exists()  # supervised, it was made before the pid file: gone again
