"""Log line format (SPEC.md §2): ``emailrelay: [<time>: ]<level>: [<address>; ]<text>``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

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


def test_log_file_with_day_expansion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pattern = str(tmp_path / "relay-%d.log")
    log = make(log_file=pattern, with_time=True)
    log.info("to the file")
    log.error("also to the file")
    target = tmp_path / f"relay-{time.strftime('%Y%m%d')}.log"
    lines = target.read_text().splitlines()
    assert [TIME_RE.match(x) is not None for x in lines] == [True, True]
    assert lines[0].endswith("info: to the file") and lines[1].endswith("error: also to the file")
    assert capsys.readouterr().err == ""


def test_json_format(capsys: pytest.CaptureFixture[str]) -> None:
    make(json=True).warning("bad\nthing", "192.0.2.9")
    (line,) = lines_of(capsys)
    record = json.loads(line)
    assert record["level"] == "warning" and record["address"] == "192.0.2.9"
    assert record["text"].startswith("bad") and record["text"].endswith("thing")
    assert "\n" not in record["text"]
    assert abs(record["time"] - time.time()) < 60
