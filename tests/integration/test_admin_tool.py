"""``emailrelay admin ADDRESS [COMMAND]``: the operator's admin client, against a real relay.

Proves: one command prints its reply without the prompt and exits 0; an
unknown command exits 1 with upstream's error text; commands from stdin each
get their reply; a unix-socket admin address works; nothing listening exits 2.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.relay import free_port, program, running_relay


def admin(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program(), "admin", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_one_command_prints_the_reply_without_the_prompt(tmp_path: Path) -> None:
    port = free_port()
    with running_relay(tmp_path, "--single-process", "--admin", str(port)):
        result = admin(str(port), "help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("commands: dnsbl, ") and "unfail-all" in result.stdout
        assert "E-MailRelay>" not in result.stdout and "\r" not in result.stdout
        bogus = admin(f"127.0.0.1:{port}", "bogus")
        assert bogus.returncode == 1
        assert bogus.stdout == "error: unrecognised command\n"


def test_commands_from_stdin_each_get_their_reply(tmp_path: Path) -> None:
    port = free_port()
    with running_relay(tmp_path, "--single-process", "--admin", str(port)):
        result = admin(str(port), stdin="failures\ninfo\npid\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "<none>"
    assert lines[1].startswith("usage: info {copyright|credit|version|warranty}")
    assert lines[2].isdigit()


def test_unix_socket_admin_address(tmp_path: Path) -> None:
    path = tmp_path / "admin.s"
    with running_relay(
        tmp_path, "--single-process", "--admin", str(free_port()), "--interface", f"admin={path}"
    ):
        result = admin(str(path), "failures")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "<none>\n"


def test_nothing_listening_exits_2() -> None:
    result = admin(str(free_port()), "status", "--timeout", "2")
    assert result.returncode == 2
    assert "emailrelay admin:" in result.stderr
