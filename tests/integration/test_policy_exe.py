"""Executable filters on both sides: real scripts from tests/filters, real subprocesses."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from pathlib import Path

import pytest

from emailrelay.policy.verdicts import FilterOutcome
from emailrelay.spool import envelope as envelope_format
from emailrelay.spool.names import State
from emailrelay.spool.store import SpoolStore
from tests.support.policy import (
    client_chain,
    content,
    envelope,
    logs_fixture,  # noqa: F401 - fixture
    new_message,
    script,
    server_chain,
    store_fixture,  # noqa: F401 - fixture
)
from tests.support.relay import pid_alive, wait_until

# E-MailRelay 2.6b's meaning of each exit code (tests/differential/test_filters.py): outcome and
# the special flag (server side: rescan; client side: stop scanning)
EXPECTED = {
    "server": {
        0: (FilterOutcome.OK, False), 1: (FilterOutcome.REJECT, False), 42: (FilterOutcome.REJECT, False),
        99: (FilterOutcome.REJECT, False), 100: (FilterOutcome.ABANDON, False), 101: (FilterOutcome.OK, False),
        102: (FilterOutcome.ABANDON, True), 103: (FilterOutcome.RESCAN, True), 104: (FilterOutcome.REJECT, True),
        115: (FilterOutcome.REJECT, False), 116: (FilterOutcome.REJECT, False),
        200: (FilterOutcome.REJECT, False), 255: (FilterOutcome.REJECT, False),
    },
    "client": {
        0: (FilterOutcome.OK, False), 1: (FilterOutcome.REJECT, False), 42: (FilterOutcome.REJECT, False),
        99: (FilterOutcome.REJECT, False), 100: (FilterOutcome.ABANDON, False), 101: (FilterOutcome.OK, False),
        102: (FilterOutcome.STOP_SCAN, True), 103: (FilterOutcome.OK, False),
        104: (FilterOutcome.ABANDON, True), 115: (FilterOutcome.REJECT, False),
        116: (FilterOutcome.REJECT, False), 200: (FilterOutcome.REJECT, False),
        255: (FilterOutcome.REJECT, False),
    },
}  # fmt: skip


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("code", sorted(EXPECTED["server"]))
async def test_every_exit_code(store: SpoolStore, code: int, side: str) -> None:
    data = content(f"exit {code}", "X-Say: <<550 go away>>")
    if side == "server":
        msg = new_message(store, data)
        chain = server_chain(store, script("by_subject.sh"))
        result = await chain.filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    else:
        mid = store.store_message(envelope(), data)
        claim = store.claim(mid)
        assert claim is not None
        chain = client_chain(store, script("by_subject.sh"))
        result = await chain.filter(mid, str(claim.content_path), str(claim.envelope_path))
        claim.release()
    outcome, special = EXPECTED[side][code]
    assert (result.outcome, result.exit_code) == (outcome, code)
    assert result.ok == (outcome in (FilterOutcome.OK, FilterOutcome.RESCAN, FilterOutcome.STOP_SCAN))
    if outcome is FilterOutcome.REJECT:
        assert (result.reason, result.code, result.detail) == ("go away", 550, "go away")
    assert (result.rescan, result.stop) == ((special, False) if side == "server" else (False, special))


async def test_fixture_log_lines(store: SpoolStore, logs, tmp_path: Path) -> None:
    """The lines of upstream's filter-and-pop-verbose.log, for rej.sh."""
    msg = new_message(store)
    result = await server_chain(store, script("rej.sh")).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.REJECT
    assert (result.reason, result.code, result.detail) == ("not today", 550, "not today")
    lines = logs.lines()
    assert f"emailrelay: info: filter [rej.sh]: [{msg.id}]: running {script('rej.sh')}" in lines
    assert "emailrelay: warning: filter [rej.sh] failed: exit code 1: [not today](550)" in lines
    assert f"emailrelay: info: filter [rej.sh]: [{msg.id}]: failed response=[not today]" in lines
    assert lines.index("emailrelay: warning: filter [rej.sh] failed: exit code 1: [not today](550)") > 0


@pytest.mark.parametrize(
    ("say", "reason", "code"),
    [
        ("<<550 not today>>", "not today", 550),
        ("[[451 try again later]]", "try again later", 451),
        ("<<no code here>>", "no code here", None),
        ("<<600 not a code>>", "600 not a code", None),
        ("<<5.7.1 enhanced only>>", "5.7.1 enhanced only", None),
        ("<<554 5.7.1 with enhanced>>", "5.7.1 with enhanced", 554),
        ("<<  spaced  >>  ", "  spaced  ", None),  # kept as is, as upstream
        ("  <<not at the start>>", "rejected", None),
        ("no brackets at all", "rejected", None),
    ],
)
async def test_reasons(store: SpoolStore, say: str, reason: str, code: int | None) -> None:
    msg = new_message(store, content("exit 1", f"X-Say: {say}"))
    result = await server_chain(store, script("by_subject.sh")).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.REJECT
    assert (result.reason, result.code) == (reason, code)


async def test_second_line_is_log_only_detail(store: SpoolStore, logs) -> None:
    msg = new_message(store)
    result = await server_chain(store, script("reject_two_lines.sh")).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert (result.outcome, result.reason, result.code) == (FilterOutcome.REJECT, "mailbox full", 452)
    assert result.detail == "quota exceeded for user 42"
    assert "third line" not in logs.text()
    assert (
        f"filter [reject_two_lines.sh]: [{msg.id}]: failed response=[mailbox full] reason=[quota exceeded"
        in logs.text()
    )


async def test_timeout_kills_the_process_group(store: SpoolStore, logs) -> None:
    msg = new_message(store)
    chain = server_chain(store, script("sleeper.sh"), filter_timeout=1.0)
    started = time.monotonic()
    result = await chain.filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    elapsed = time.monotonic() - started
    assert (result.outcome, result.reason, result.detail) == (FilterOutcome.REJECT, "error", "timeout")
    assert 0.9 < elapsed < 5
    pid = int(Path(str(msg.content_path) + ".pid").read_text())
    for _ in range(50):  # the grandchild was SIGKILLed with its group; give the kernel a moment
        if not pid_alive(pid):
            break
        await asyncio.sleep(0.05)
    assert not pid_alive(pid), "the grandchild sleep survived the filter timeout"
    text = logs.text()
    assert "warning: filter [sleeper.sh] timed out after 1s" in text  # upstream's lines
    assert f"filter [sleeper.sh]: [{msg.id}]: failed response=[error] reason=[timeout]" in text


async def test_abandon_after_deleting_the_message(store: SpoolStore) -> None:
    msg = new_message(store)
    result = await server_chain(store, [script("abandon.sh"), "exit:1"]).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.ABANDON
    assert not msg.content_path.exists() and not msg.envelope_path.exists()


async def test_client_filter_edits_forward_to_in_place(store: SpoolStore) -> None:
    mid = store.store_message(envelope(), content())
    claim = store.claim(mid)
    assert claim is not None
    inode = os.stat(claim.envelope_path).st_ino
    result = await client_chain(store, script("forward_to.sh")).filter(
        mid, str(claim.content_path), str(claim.envelope_path)
    )
    assert result.outcome is FilterOutcome.OK
    assert claim.envelope(reread=True).forward_to == "routed.example"
    assert os.stat(claim.envelope_path).st_ino == inode
    assert store.recover().released == []  # the claim's lock is still held
    claim.release()


async def test_python_filter(store: SpoolStore) -> None:
    mid = store.store_message(envelope(), content())
    claim = store.claim(mid)
    assert claim is not None
    result = await client_chain(store, script("py_filter.py")).filter(
        mid, str(claim.content_path), str(claim.envelope_path)
    )
    assert result.ok
    assert claim.content_path.read_bytes().startswith(b"X-Python-Filter: yes\r\n")
    assert claim.envelope(reread=True).client_account_selector == "py"
    claim.release()


async def test_ten_in_parallel_take_about_one_run(store: SpoolStore) -> None:
    chain = server_chain(store, script("slow_ok.sh"))
    msgs = [new_message(store) for _ in range(10)]
    started = time.monotonic()
    results = await asyncio.gather(
        *(chain.filter(m.id, str(m.content_path), str(m.envelope_path)) for m in msgs)
    )
    elapsed = time.monotonic() - started
    assert all(r.outcome is FilterOutcome.OK for r in results)
    assert elapsed < 4.0, f"10 one-second filters took {elapsed:.1f}s: not parallel"


async def test_event_loop_not_blocked(store: SpoolStore) -> None:
    chain = server_chain(store, script("slow_ok.sh"))
    msg = new_message(store)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    await chain.filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    task.cancel()
    assert ticks >= 10


async def test_chain_of_three(store: SpoolStore) -> None:
    msg = new_message(store)
    spec = f"{script('append_header.sh')},exit:103,{script('py_filter.py')}"
    result = await server_chain(store, spec).filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    assert result.outcome is FilterOutcome.RESCAN and result.rescan
    data = msg.content_path.read_bytes()
    assert data.startswith(b"X-Python-Filter: yes\r\nX-Chain: append_header.sh\r\nReceived: ")
    env = envelope_format.parse(msg.envelope_path.read_bytes())
    assert env.client_account_selector == "py"


async def test_chain_stops_at_first_rejection(store: SpoolStore) -> None:
    msg = new_message(store)
    spec = [f"exit:103,{script('rej.sh')}", script("append_header.sh")]
    result = await server_chain(store, spec).filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    assert (result.outcome, result.reason, result.rescan) == (FilterOutcome.REJECT, "not today", True)
    assert b"X-Chain" not in msg.content_path.read_bytes()


async def test_minimal_environment_and_arguments(
    store: SpoolStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "must-not-leak")
    msg = new_message(store)
    marker = tmp_path / "leak-marker"
    marker.write_text("")
    leaked = os.open(marker, os.O_RDONLY)
    os.set_inheritable(leaked, True)  # even an inheritable descriptor of ours must not reach the filter
    try:
        result = await server_chain(store, script("env_dump.sh")).filter(
            msg.id, str(msg.content_path), str(msg.envelope_path)
        )
    finally:
        os.close(leaked)
    assert result.ok
    env = dict(
        line.split("=", 1)
        for line in Path(str(msg.content_path) + ".env").read_text().splitlines()
        if "=" in line
    )
    assert set(env) - {"PWD"} <= {"PATH", "IFS"}
    assert env["PATH"] == "/usr/bin:/bin"
    assert "SECRET_TOKEN" not in env
    args = Path(str(msg.content_path) + ".args").read_text().strip().split("|")
    assert args == [script("env_dump.sh"), str(msg.content_path), str(msg.envelope_path)]
    assert os.path.isabs(args[1]) and args[2].endswith(".envelope.new")
    fd0, fd1, fd2, targets = Path(str(msg.content_path) + ".fds").read_text().strip().split("|")
    assert (fd0, fd2) == ("/dev/null", "/dev/null")
    assert fd1.startswith("socket:")  # a socketpair, as E-MailRelay 2.6b's
    assert "leak-marker" not in targets


async def test_relative_program_path_is_made_absolute(
    store: SpoolStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(script("rej.sh")).parent)
    chain = server_chain(store, "rej.sh")
    assert chain.specs[0].value == script("rej.sh")
    msg = new_message(store)
    result = await chain.filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    assert result.reason == "not today"


async def test_output_cap(store: SpoolStore) -> None:
    msg = new_message(store)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    result = await server_chain(store, script("big_output.sh"), filter_timeout=30.0).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert time.monotonic() - started < 20
    assert (result.outcome, result.reason) == (FilterOutcome.REJECT, "too much")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 8 * 1024, f"memory grew by {grown_kib} KiB for 10 MB of filter output"


@pytest.mark.parametrize("spec", ["/nonexistent/filter", "exe:/nonexistent/filter", "file:/etc/passwd"])
async def test_cannot_execute_is_an_error(store: SpoolStore, spec: str, logs) -> None:
    """Upstream's child reports it as exit code 127 with the reason ``filter exec error: ...``."""
    msg = new_message(store)
    result = await server_chain(store, spec).filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    assert (result.outcome, result.exit_code, result.reason) == (FilterOutcome.REJECT, 127, "rejected")
    why = "permission denied" if "passwd" in spec else "no such file or directory"
    assert result.detail == f"filter exec error: {why}"
    assert "failed: exit code 127: [rejected]" in logs.text()
    assert f"failed response=[rejected] reason=[filter exec error: {why}]" in logs.text()


async def test_killed_by_signal_is_an_error(store: SpoolStore, tmp_path: Path) -> None:
    prog = tmp_path / "suicide.sh"
    prog.write_text("#!/bin/sh\nkill -9 $$\n")
    prog.chmod(0o755)
    msg = new_message(store)
    result = await server_chain(store, str(prog)).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert (result.outcome, result.exit_code, result.reason) == (FilterOutcome.REJECT, 137, "rejected")


async def test_background_grandchild_holding_stdout_times_out_as_upstream(
    store: SpoolStore, tmp_path: Path
) -> None:
    """E-MailRelay 2.6b waits for the end of a filter's output, not only its exit: a child left in
    the background holding stdout makes the filter time out (ours used to take the exit code at
    once and leave the child running), and the child is killed with the filter's group."""
    prog = tmp_path / "daemonise.sh"
    prog.write_text("#!/bin/sh\necho '<<bye>>'\nsleep 30 &\necho $! > \"$1.pid\"\nexit 5\n")
    prog.chmod(0o755)
    msg = new_message(store)
    started = time.monotonic()
    result = await server_chain(store, str(prog), filter_timeout=1.0).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert 0.9 < time.monotonic() - started < 10
    assert (result.outcome, result.reason, result.detail) == (FilterOutcome.REJECT, "error", "timeout")
    pid = int(Path(str(msg.content_path) + ".pid").read_text())
    assert wait_until(lambda: not pid_alive(pid), 5), "the background child survived the filter"


async def test_message_deleted_with_exit_0(store: SpoolStore, tmp_path: Path) -> None:
    prog = tmp_path / "eat.sh"
    prog.write_text('#!/bin/sh\nrm -f "$2"\nexit 0\n')
    prog.chmod(0o755)
    msg = new_message(store)
    server = await server_chain(store, [str(prog), "exit:1"]).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert server.outcome is FilterOutcome.OK  # the session sees the envelope gone and commits nothing
    mid = store.store_message(envelope(), content())
    claim = store.claim(mid)
    assert claim is not None
    client = await client_chain(store, [str(prog), "exit:1"]).filter(
        mid, str(claim.content_path), str(claim.envelope_path)
    )
    assert client.outcome is FilterOutcome.ABANDON
    claim.abandon_claim()
    assert store.envelope_path(mid, State.BUSY).exists() is False
