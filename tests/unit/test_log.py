"""Log line format (SPEC.md §2): ``emailrelay: [<time>: ]<level>: [<unit>: ][<address>[:<port>]; ][<msgid>; ]<text>``."""

from __future__ import annotations

import contextvars
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from emailrelay import log as logmod
from emailrelay.cli.main import log_config
from emailrelay.log import Log, LogConfig, printable

TIME_RE = re.compile(r"^emailrelay: [0-9]{8}\.[0-9]{6}\.[0-9]{3}: (info|warning|error): ")
SCRIPT_ERROR_RE = re.compile(r"^emailrelay: [0-9.]*: error: ")  # what init scripts grep for


def lines_of(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert err.endswith("\n") or err == ""
    return err.splitlines()


def make(**kw: object) -> Log:
    return Log(LogConfig(syslog=False, **kw))  # type: ignore[arg-type]


def test_plain_levels(capsys: pytest.CaptureFixture[str]) -> None:
    log = make()
    log.info("smtp server on 127.0.0.1:25")
    log.warning("careful")
    log.error("broken")
    assert lines_of(capsys) == [
        "emailrelay: info: smtp server on 127.0.0.1:25",
        "emailrelay: warning: careful",
        "emailrelay: error: broken",
    ]


def test_time_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    log = make(with_time=True)
    before = time.time()
    log.info("one")
    log.warning("two")
    log.error("three")
    after = time.time()
    out = lines_of(capsys)
    assert len(out) == 3
    for line, level, text in zip(out, ["info", "warning", "error"], ["one", "two", "three"], strict=True):
        m = TIME_RE.match(line)
        assert m, line
        assert m.group(1) == level and line.endswith(f": {level}: {text}")
        stamp = line.split(": ")[1]
        seconds = time.mktime(time.strptime(stamp[:15], "%Y%m%d.%H%M%S")) + int(stamp[16:]) / 1000
        assert before - 1.0 <= seconds <= after + 1.0, (stamp, before, after)
    assert SCRIPT_ERROR_RE.match(out[2])


def test_address_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    make(with_address=True).info("smtp connection from 192.0.2.1:4000", "192.0.2.1")
    make(with_address=True).info("no address here")
    make(with_address=False).info("hidden", "192.0.2.1")
    make(with_address=True, with_time=True).warning("both", "::1")
    out = lines_of(capsys)
    assert out[0] == "emailrelay: info: 192.0.2.1; smtp connection from 192.0.2.1:4000"
    assert out[1] == "emailrelay: info: no address here"
    assert out[2] == "emailrelay: info: hidden"
    assert TIME_RE.match(out[3]) and out[3].endswith(": warning: ::1; both")


@pytest.mark.parametrize(
    "text",
    [
        "a\r\nemailrelay: error: forged",
        "a\nemailrelay: error: forged",
        "a\remailrelay: error: forged",
        "a\x00b\x1b[2J\x7f",
    ],
)
def test_control_characters_are_escaped(capsys: pytest.CaptureFixture[str], text: str) -> None:
    make(with_address=True).info(f'rx<<: "{text}"', "192.0.2.1")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\r" not in err
    assert not any(c in err[:-1] for c in "\x00\x1b\x7f\n")
    line = err[:-1]
    assert line.startswith('emailrelay: info: 192.0.2.1; rx<<: "a')
    assert line.endswith('"')
    assert "\\" in line  # the escapes are visible


def test_printable_keeps_ordinary_text() -> None:
    assert printable("plain text \u00e9 <a@b> [x]") == "plain text \u00e9 <a@b> [x]"
    escaped = printable("x\r\ny\tz")
    assert escaped.startswith("x\\") and "y" in escaped and escaped.endswith("z")
    assert escaped.isprintable()
    assert printable("\r") != printable("\n")  # distinguishable in the log


def test_levels_switched_by_options(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = make(enabled=False)
    quiet.info("not shown")
    quiet.verbose("not shown")
    quiet.warning("shown")
    quiet.error("shown too")
    summary = make(enabled=True)
    summary.info("summary")
    summary.verbose("no protocol trace")
    chatty = make(verbose=True)
    chatty.verbose('tx>>: "220 ready"')
    chatty.debug("no debug")
    assert lines_of(capsys) == [
        "emailrelay: warning: shown",
        "emailrelay: error: shown too",
        "emailrelay: info: summary",
        'emailrelay: info: tx>>: "220 ready"',
    ]
    assert chatty.verbose_on and not summary.verbose_on


def test_log_file_with_day_and_hour_expansion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pattern = str(tmp_path / "relay-%d-%h.log")  # (%h: the hour, as upstream expands it)
    log = make(log_file=pattern, with_time=True)
    log.info("to the file")
    log.error("also to the file")
    target = tmp_path / f"relay-{time.strftime('%Y%m%d-%H')}.log"
    lines = target.read_text().splitlines()
    assert [TIME_RE.match(x) is not None for x in lines] == [True, True]
    assert lines[0].endswith("info: to the file") and lines[1].endswith("error: also to the file")
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(os.getuid() != 0, reason="root's rules for symlinked log files")
def test_root_writes_a_log_file_through_no_planted_symlink(tmp_path: Path) -> None:
    """A log file in a directory --user may write: another user's symlink there is replaced by the log
    file, root's own is refused; root's symlink in a directory only root can change is followed."""
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)  # group-writable, as --user's group may have it
    planted = shared / "planted.log"
    planted.symlink_to(victim)
    os.lchown(planted, 1, 1)  # made by another user
    make(log_file=str(planted)).info("one")
    assert not planted.is_symlink() and planted.read_text().endswith("info: one\n")
    roots = shared / "roots.log"
    roots.symlink_to(victim)
    make(log_file=str(roots)).info("two")
    assert roots.is_symlink() and victim.read_text() == "untouched\n"
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    operators = private / "operators.log"
    operators.symlink_to(tmp_path / "real.log")
    make(log_file=str(operators)).info("three")
    assert (tmp_path / "real.log").read_text().endswith("info: three\n")


def test_json_format(capsys: pytest.CaptureFixture[str]) -> None:
    make(json=True).warning("bad\nthing", "192.0.2.9")
    (line,) = lines_of(capsys)
    record = json.loads(line)
    assert record["level"] == "warning" and record["address"] == "192.0.2.9"
    assert record["text"].startswith("bad") and record["text"].endswith("thing")
    assert "\n" not in record["text"]
    assert abs(record["time"] - time.time()) < 60


MID = "emailrelay.1234.1795600000.7"
SHOWN = "(1234.1795600000.7)"  # E-MailRelay 2.6b's form of it on a text line


def in_unit(unit: str, body: Callable[[], None]) -> None:
    """Run ``body`` in a fresh context whose unit is ``unit`` (as a role process or an instance task)."""

    def run() -> None:
        logmod.set_unit(unit)
        body()

    contextvars.copy_context().run(run)


def test_unit_address_port_msgid_layout(capsys: pytest.CaptureFixture[str]) -> None:
    """``[<unit>: ][<address>;<port>: ][(<msgid>) ]<text>``, each part only where known."""
    log = make(with_unit=True, with_address=True, with_port=True, with_msgid=True, with_time=True)

    def lines() -> None:
        session = log.session(47038)
        session.info("smtp connection from 127.0.0.1:47038", "127.0.0.1")
        session.msgid = MID
        session.verbose('rx<<: "."', "127.0.0.1")  # verbose off: nothing
        session.warning("about the message", "127.0.0.1")
        session.info("rejected by filter: [x]")  # no address: no port either
        v6 = log.session(2525)
        v6.info("smtp connection from ::1.2525", "::1")
        log.info("smtp server on 127.0.0.1:25")  # not a connection's line

    in_unit("in", lines)
    out = [line.split(": ", 2)[2] for line in lines_of(capsys)]  # without the program and the time
    assert out == [
        "info: in: 127.0.0.1;47038: smtp connection from 127.0.0.1:47038",
        f"warning: in: 127.0.0.1;47038: {SHOWN} about the message",
        f"info: in: {SHOWN} rejected by filter: [x]",
        "info: in: ::1;2525: smtp connection from ::1.2525",
        "info: in: smtp server on 127.0.0.1:25",
    ]


def test_each_field_on_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    """``port`` alone shows the port alone (E-MailRelay 2.6b's ``4000: ``); ``unit`` alone no
    address; no unit unnamed."""

    def lines() -> None:
        make(with_port=True).session(4000).info("text", "192.0.2.1")
        make(with_unit=True).session(4000).info("text", "192.0.2.1")
        session = make(with_msgid=True).session(4000)
        session.msgid = MID
        session.info("text", "192.0.2.1")

    in_unit("out", lines)
    in_unit("", lambda: make(with_unit=True).info("unnamed"))
    assert lines_of(capsys) == [
        "emailrelay: info: 4000: text",
        "emailrelay: info: out: text",
        f"emailrelay: info: {SHOWN} text",
        "emailrelay: info: unnamed",
    ]


def test_msgid_of_the_task_unless_the_session_knows(capsys: pytest.CaptureFixture[str]) -> None:
    """A task's ``set_msgid`` (forwarding) reaches plain lines; a SessionLog's own value wins, "" hides it."""
    log = make(with_msgid=True)

    def lines() -> None:
        token = logmod.set_msgid(MID)
        log.info("forwarding [x]")
        session = log.session()
        session.info("inherited")
        session.msgid = ""
        session.info("between messages")
        logmod.reset_msgid(token)
        log.info("after")

    contextvars.copy_context().run(lines)
    assert lines_of(capsys) == [
        f"emailrelay: info: {SHOWN} forwarding [x]",
        f"emailrelay: info: {SHOWN} inherited",
        "emailrelay: info: between messages",
        "emailrelay: info: after",
    ]


def test_server_session_msgid_only_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    """An SMTP server session's message id (``msgid_in_text=False``, its filter task's too) is on
    no text line, as E-MailRelay 2.6b; JSON lines still carry it."""

    def lines() -> None:
        for config in ({"with_msgid": True}, {"json": True}):
            session = make(**config).session(msgid_in_text=False)
            session.msgid = MID
            session.info("new envelope file")
            logmod.set_msgid(MID, in_text=False)
            make(**config).info("filter [x]: running")

    contextvars.copy_context().run(lines)
    out = lines_of(capsys)
    assert out[:2] == ["emailrelay: info: new envelope file", "emailrelay: info: filter [x]: running"]
    assert [json.loads(line)["msgid"] for line in out[2:]] == [MID, MID]


def test_port_of_the_task_for_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """A session's decision task (filters, verifiers, dnsbl) logs through the plain log: ``set_port``."""

    def lines() -> None:
        logmod.set_port(47038)
        make(with_port=True).info("filter [x]: running", "127.0.0.1")
        make(with_port=True).info("no address")

    contextvars.copy_context().run(lines)
    assert lines_of(capsys) == [
        "emailrelay: info: 47038: filter [x]: running",
        "emailrelay: info: no address",
    ]


def test_fields_off_leave_the_line_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """Unit, port and msgid known but not asked for: upstream's plain ``address`` form, byte for byte."""

    def lines() -> None:
        logmod.set_msgid(MID)
        logmod.set_port(47038)
        session = make(with_address=True).session(47038)
        session.msgid = MID
        session.info("smtp connection from 127.0.0.1:47038", "127.0.0.1")

    in_unit("in", lines)
    assert lines_of(capsys) == ["emailrelay: info: 127.0.0.1; smtp connection from 127.0.0.1:47038"]


def test_json_has_the_fields_as_keys(capsys: pytest.CaptureFixture[str]) -> None:
    def lines() -> None:
        session = make(json=True).session(47038)
        session.msgid = MID
        session.info("hello", "127.0.0.1")
        make(json=True).info("plain")

    in_unit("in", lines)
    first, second = (json.loads(line) for line in lines_of(capsys))
    assert first["unit"] == "in" and first["address"] == "127.0.0.1" and first["port"] == 47038
    assert first["msgid"] == MID and first["text"] == "hello"
    assert second.keys() == {"time", "level", "unit", "text"}


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        ("unit,port,msgid", {"with_unit", "with_port", "with_msgid"}),
        ("network", set()),  # the user guide's word: nothing, as E-MailRelay 2.6b
        ("time,bogus", {"with_time"}),  # an unknown word is ignored, as upstream
        ("time, address", {"with_time", "with_address"}),
        ("json", {"json"}),
    ],
)
def test_log_format_option_values(value: str, fields: set[str]) -> None:
    config = log_config({"log-format": value})
    flags = ("with_time", "with_unit", "with_address", "with_port", "with_msgid", "json")
    assert {f for f in flags if getattr(config, f)} == fields
