"""The differential tests' log normaliser: a pid that wrapped to a small number is not a reply code."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.oracle import Daemon, normalise_text


def _daemon(tmp_path: Path, pid: int) -> Daemon:
    pid_file = tmp_path / "pid"
    pid_file.write_text(f"{pid}\n")
    proc = subprocess.Popen(["true"])
    proc.wait()
    return Daemon("ours", proc, 2525, tmp_path / "base", tmp_path / "spool", pid_file, tmp_path / "log")


def test_a_small_pid_is_not_taken_for_a_reply_code(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, 504)
    line = 'emailrelay: info: tx>>: "504 unsupported authentication mechanism"'
    assert normalise_text(line, daemon) == line
    assert normalise_text('tx>>: "504-first"', daemon) == 'tx>>: "504-first"'


def test_the_pid_elsewhere_is_normalised(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, 31337)
    assert normalise_text("process 31337 started, port 2525 on 127.0.0.1:2525", daemon) == (
        "process PID started, port 2525 on 127.0.0.1:PORT"
    )
