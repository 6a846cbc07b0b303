"""Forwarding details of issue 17 against E-MailRelay 2.6b, where no other differential test has them.

What it is for: ``--client-interface`` values that are not IP addresses, next hop addresses
written as a bare IPv6 address with a port after its last colon, and the like.  Both programs are
run the same way and what a user sees (exit code, output, what the next hop received) is
compared.  Skipped without ``EMAILRELAY_ORACLE_BIN``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.diff_forwarding import NO_PIPELINING, write_messages
from tests.support.diff_guide import assert_same
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, program, spool_dir, start
from tests.support.relay import wait_until

pytestmark = [needs_oracle, pytest.mark.timeout(120)]


def as_client(
    tmp_path: Path, side: str, *args: str, messages: int = 0, route: str = ""
) -> tuple[int, list[str], Path]:
    """``--as-client`` over a spool of ``messages`` messages, the first with ``ForwardToAddress:
    route`` when given: exit code, normalised output, spool."""
    base = daemon_base(tmp_path if side == "ours" else None)
    spool = spool_dir(base / side / "spool")
    if messages:
        names = write_messages(spool, [["b@example.net"]] * messages, int(time.time()))
        if route:
            first = spool / f"{names[0]}.envelope"
            first.write_bytes(
                first.read_bytes().replace(
                    b"ForwardToAddress: \r\n", f"ForwardToAddress: {route}\r\n".encode()
                )
            )
    done = subprocess.run(
        [program(side), *args, "--spool-dir", str(spool), "--log", "--no-syslog"],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    return done.returncode, normalise_log((done.stdout + done.stderr).decode(errors="replace")), spool


@pytest.mark.parametrize("interface", ["lo", "localhost", "127.0.0.1", "127.0.0.1:0", "::1"])
@pytest.mark.parametrize("mode", ["as-client", "daemon"])
def test_client_interface_must_be_an_address(tmp_path: Path, interface: str, mode: str) -> None:
    """A ``--client-interface`` that is not an IP address is refused at start-up with exit 1
    (``address error: invalid network address: lo: 0``); an address is accepted (an empty spool:
    nothing to send; a daemon: still running after start-up)."""
    got: dict[str, object] = {}
    for side in SIDES:
        if mode == "as-client":
            rc, log, _ = as_client(
                tmp_path, side, "--as-client", "127.0.0.1:9", "--client-interface", interface
            )
            got[side] = (rc, log)
            continue
        base = daemon_base(tmp_path if side == "ours" else None)
        spool = spool_dir(base / side / "spool")
        argv = [program(side), "--no-daemon", "--log", "--no-syslog", "--port", "0", "--spool-dir", str(spool),
                "--forward-to", "127.0.0.1:9", "--client-interface", interface]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            out, _ = proc.communicate(timeout=10)
            got[side] = (proc.returncode, normalise_log(out.decode(errors="replace")))
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.communicate(timeout=30)
            got[side] = ("running", [])
    assert_same(got)
    refused = interface in ("lo", "localhost")
    expected: object = (1, [f"emailrelay: error: address error: invalid network address: {interface}: 0"])
    assert (got["ours"] == expected) == refused, got


@pytest.mark.parametrize("hop", ["::1:PORT", "[::1]:PORT", "::1.PORT", "::1"])
def test_next_hop_ipv6_forms(tmp_path: Path, hop: str) -> None:
    """``--as-client`` to a next hop on ::1 written as a bare IPv6 address whose last colon starts
    the port, bracketed, upstream's ``v6.port``, and ``::1`` alone (host ``:`` port 1: a DNS
    error, the message kept): exit code, output, messages the hop received and the spool alike."""
    got: dict[str, object] = {}
    for side in SIDES:
        with FakeSmtp(host="::1", extensions=NO_PIPELINING) as fake:
            rc, log, spool = as_client(
                tmp_path, side, "--as-client", hop.replace("PORT", str(fake.port)), messages=1
            )
            log = [x.replace(str(fake.port), "PORT") for x in log]
            got[side] = (rc, log, len(fake.messages), len(list(spool.glob("*.envelope"))))
    assert_same(got)
    assert got["ours"][2] == (0 if hop == "::1" else 1), got  # type: ignore[index]


def test_forward_to_bare_ipv6_with_port(tmp_path: Path) -> None:
    """``--forward-to ::1:PORT --forward``: the daemon forwards the spooled message to ::1 at start-up."""
    got: dict[str, object] = {}
    for side in SIDES:
        base = daemon_base(tmp_path if side == "ours" else None)
        with FakeSmtp(host="::1", extensions=NO_PIPELINING) as fake:
            write_messages(spool_dir(base / side / "spool"), [["b@example.net"]], int(time.time()))
            with start(side, base, "--forward-to", f"::1:{fake.port}", "--forward") as daemon:
                wait_until(lambda d=daemon: "no more messages to send" in d.log(), 30)
                problems = [x for x in daemon.log().splitlines() if "error" in x or "warning" in x]
            got[side] = (len(fake.messages), list(daemon.spool.glob("*.envelope")), problems)
    assert_same(got)
    assert got["ours"][0] == 1, got  # type: ignore[index]


def _stop_filter(base: Path) -> Path:
    script = base / "stop.sh"
    script.write_text("#!/bin/sh\nexit 102\n")
    script.chmod(0o755)
    return script


def test_client_filter_102_ends_without_no_more_messages(tmp_path: Path) -> None:
    """``--as-client`` with a client filter exiting 102 (stop scanning) over three messages: one
    is forwarded, and the run ends without ``forwarding: no more messages to send``; the logs
    (the filter's path aside), the exit code and what the hop received are compared."""
    got: dict[str, object] = {}
    for side in SIDES:
        with FakeSmtp(extensions=NO_PIPELINING) as fake:
            base = daemon_base(tmp_path if side == "ours" else None)
            script = _stop_filter(base)
            rc, log, spool = as_client(
                tmp_path,
                side,
                "--as-client",
                fake.address,
                "--verbose",
                "--client-filter",
                str(script),
                messages=3,
            )
            log = [x.replace(str(base), "BASE") for x in log]
            got[side] = (rc, log, len(fake.messages), len(list(spool.glob("*.envelope"))))
    assert_same(got)
    assert got["ours"][2:] == (1, 2), got  # type: ignore[index]
    assert "emailrelay: info: forwarding: no more messages to send" not in got["upstream"][1], got  # type: ignore[index]


def test_client_filter_102_polling_daemon(tmp_path: Path) -> None:
    """``--poll 1`` with the same filter: a message a polling cycle, and no end-of-pass line."""
    got: dict[str, object] = {}
    for side in SIDES:
        base = daemon_base(tmp_path if side == "ours" else None)
        with FakeSmtp(extensions=NO_PIPELINING) as fake:
            write_messages(spool_dir(base / side / "spool"), [["b@example.net"]] * 3, int(time.time()))
            args = ("--forward-to", fake.address, "--client-filter", str(_stop_filter(base)), "--poll", "1")
            with start(side, base, *args) as daemon:
                wait_until(lambda d=daemon: d.log().count("deleting content") == 3, 60)
            log = normalise_log(daemon.log(), drop=["server on", "spool notifier"])
            got[side] = (len(fake.messages), [x for x in log if "forwarding" in x])
    assert_same(got)
    assert got["ours"][0] == 3, got  # type: ignore[index]


@pytest.mark.parametrize("route", ["same", "no-such-host.invalid:25"])
def test_unreachable_forward_to_address(tmp_path: Path, route: str) -> None:
    """Two messages, the first with a ``ForwardToAddress`` that cannot be reached (the
    ``--as-client`` address itself, unreachable, or a name without an address): a warning
    ``smtp connection failed: ...``, the message kept, the other forwarded when it can be, exit 0
    unless the other fails.
    (A plain unreachable ``--as-client`` is exit 1 on both:
    tests/differential/test_forwarding.py::test_connection_failure_leaves_the_messages.)"""
    got: dict[str, object] = {}
    for side in SIDES:
        with FakeSmtp(extensions=NO_PIPELINING) as fake:
            hop = "127.0.0.1:9" if route == "same" else fake.address
            rc, log, spool = as_client(
                tmp_path, side, "--as-client", hop, messages=2, route=hop if route == "same" else route
            )
            problems = [
                x for x in log if ("warning" in x or "error" in x) and "smtp client error: done" not in x
            ]
            got[side] = (rc, problems, len(fake.messages), len(list(spool.glob("*.envelope"))))
    assert_same(got)
    # with "same" the other message's plain --as-client hop is unreachable too: exit 1 for it
    assert got["ours"][0] == (1 if route == "same" else 0), got  # type: ignore[index]
    assert got["ours"][1][0].startswith("emailrelay: warning: smtp connection failed: "), got  # type: ignore[index]


#: ids whose file-name order differs from their (time, pid, sequence) order and from a listing's
ORDER_NAMES = [
    "emailrelay.999.1700000001.1",
    "emailrelay.1000.1700000002.1",
    "emailrelay.5.1600000000.3",
    "emailrelay.5.1600000000.20",
    "abc",
    "abc-d",
    "Zed",
]


def test_forwarding_order_is_the_file_names(tmp_path: Path) -> None:
    """Messages of the ids of :data:`ORDER_NAMES`, renamed into the spool in a scrambled order:
    both forward them in the order of their envelope files' names as plain strings."""
    got: dict[str, list[str]] = {}
    for side in SIDES:
        base = daemon_base(tmp_path if side == "ours" else None)
        spool, staging = spool_dir(base / side / "spool"), spool_dir(base / side / "staging")
        made = write_messages(staging, [["b@example.net"]] * len(ORDER_NAMES), 1700000000)
        for i in (3, 0, 6, 2, 5, 1, 4):
            for suffix in (".envelope", ".content"):
                (staging / f"{made[i]}{suffix}").rename(spool / f"{ORDER_NAMES[i]}{suffix}")
        with FakeSmtp(extensions=NO_PIPELINING) as fake:
            subprocess.run(
                [program(side), "--as-client", fake.address, "--spool-dir", str(spool)],
                capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            subjects = [m.data.split(b"Subject: test ", 1)[1].split(b"\r\n", 1)[0] for m in fake.messages]
        got[side] = [ORDER_NAMES[int(s) - 1] for s in subjects]
    assert_same(got)
    assert got["ours"] == sorted(ORDER_NAMES, key=lambda n: n + ".envelope"), got
