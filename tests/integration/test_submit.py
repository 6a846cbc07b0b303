"""``emailrelay-submit`` as a real subprocess, byte-exact against upstream's submitted.* fixtures."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from emailrelay.spool import envelope as env_format
from tests.support.fixtures import UPSTREAM
from tests.support.relay import program
from tests.support.sink import printed_envelope

pytestmark = pytest.mark.timeout(120)

SUBMIT = program("emailrelay-submit")
ID = r"emailrelay\.[0-9]+\.[0-9]+\.[0-9]+"


def submit(*args: str, stdin: bytes = b"Subject: submitted\n") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([SUBMIT, *args], input=stdin, capture_output=True, timeout=60)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir())


def test_submit_matches_upstream_fixture(spool: Path) -> None:
    result = submit("--spool-dir", str(spool), "--from", "sub@example.com", "rcpt@example.net")
    assert result.returncode == 0, result.stderr
    names = files(spool)
    assert (
        len(names) == 2
        and re.fullmatch(rf"{ID}\.content", names[0])
        and names[1] == names[0][:-8] + ".envelope"
    )
    assert (spool / names[0]).read_bytes() == (UPSTREAM / "submitted.content").read_bytes()
    assert (spool / names[1]).read_bytes() == (UPSTREAM / "submitted.envelope").read_bytes()
    assert result.stdout == b""  # quiet without --verbose


def test_verbose_prints_the_content_path(spool: Path) -> None:
    """As upstream: the new content file's path, the spool directory as given (tests/differential)."""
    result = submit("--verbose", "--spool-dir", str(spool), "--from", "sub@example.com", "rcpt@example.net")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.decode().strip()
    assert re.fullmatch(rf"{re.escape(str(spool))}/{ID}\.content", printed), printed
    assert Path(printed).is_file()
    assert env_format.parse(printed_envelope(printed).read_bytes()).to_remote == ("rcpt@example.net",)
    mid = os.path.basename(printed)[: -len(".content")]
    assert files(spool) == [f"{mid}.content", f"{mid}.envelope"]


def test_message_bytes_and_several_recipients(spool: Path) -> None:
    message = b"From: a@example.com\nSubject: lines\n\n.dot line\nbare cr\rinside\nlast"
    result = submit(
        "--verbose", "--spool-dir", str(spool), "--from", "a@example.com", "x@example.net", "y@example.org",
        stdin=message,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    env_path = printed_envelope(result.stdout)
    env = env_format.parse(env_path.read_bytes())
    assert env.to_remote == ("x@example.net", "y@example.org") and env.from_address == "a@example.com"
    content = env_path.with_name(env_path.name[: -len(".envelope")] + ".content").read_bytes()
    assert content.startswith(b"From: a@example.com\r\nSubject: lines\r\n\r\n.dot line\r\n")
    assert content.endswith(b"last\r\n")
    assert content.count(b"\n") == content.count(b"\r\n")  # CRLF line ends throughout


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (["--from", "sub@example.com", "rcpt@exa\rmple.net"], b"invalid recipient address: [rcpt@exa\\rmple.net]"),
        (["--from", "sub@example.com", "rcpt@exa\nmple.net"], b"invalid recipient address: [rcpt@exa\\nmple.net]"),
        (["--from", "sub@exa\r\nmple.com", "rcpt@example.net"], b"invalid sender address: [sub@exa\\r\\nmple.com]"),
        (["--from", "s@x", "ok@example.net", "bad\x01x\x7f@x"], b"invalid recipient address: [bad\\x01x\\x7f@x]"),
        (["--from", "sub@example.com", ""], b"invalid recipient address: []"),
    ],
    ids=["cr-in-recipient", "lf-in-recipient", "crlf-in-sender", "control-char", "empty"],
)  # fmt: skip
def test_bad_input_is_exit_1_and_leaves_nothing(spool: Path, args: list[str], stderr: bytes) -> None:
    """An empty address or one with a control character: E-MailRelay 2.6b's message, the address
    escaped, without ``error:``."""
    result = submit("--spool-dir", str(spool), *args, stdin=b"Subject: x\n\nno recipient in the headers\n")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr == b"emailrelay-submit: " + stderr + b"\n"
    assert files(spool) == []


def _stored(spool: Path, suffix: str) -> bytes:
    (name,) = [n for n in files(spool) if n.endswith(suffix)]
    return (spool / name).read_bytes()


@pytest.mark.parametrize(
    ("args", "stdin", "content"),
    [
        (["-C", "U3ViamVjdDogaGk"], b"body\r\nmore\r\n", b"Subject: hi\r\nbody\r\nmore\r\n\r\n"),
        (["-C", "U3ViamVjdDogaGk", "-B"], b"body\r\nmore\r\n", b"Subject: hi\r\n\r\nbody\r\nmore\r\n"),
        (["-C", "U3ViamVjdDogaGk", "-C", "", "-C", "WDogMQ=="], b"Y: 2\n\nbody\n",
         b"Subject: hi\r\nY: 2\r\n\r\nX: 1\r\nbody\r\n"),
        (["-B"], b"body\n", b"\r\nbody\r\n"),
        ([], b"Subject: s\r\r\nx\r\n", b"Subject: s\r\r\nx\r\n\r\n"),
        ([], b"Subject: s\n\nbare cr\rinside\r\nend\r", b"Subject: s\r\n\r\nbare cr\rinside\r\nend\r\n"),
    ],
    ids=["content-and-stdin", "content-and-body", "content-body-lines", "body-only", "cr-line-end",
         "bare-cr"],
)  # fmt: skip
def test_content_is_stored_as_upstream_stores_it(
    spool: Path, args: list[str], stdin: bytes, content: bytes
) -> None:
    """E-MailRelay 2.6b's bytes (tests/differential compares them): the input is kept with
    ``--content`` (its header lines after the ``--content`` ones), a lone CR stays."""
    result = submit("--spool-dir", str(spool), "-f", "a@b", *args, "x@y", stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert _stored(spool, ".content") == content


@pytest.mark.parametrize(
    "args", [["-I", "x@y"], ["-f", "a@b", "-I", "x@y", "z@w"], ["--content-message-id", "x@y"]]
)
def test_message_id_option_never_takes_the_next_argument(spool: Path, args: list[str]) -> None:
    """As upstream: the argument after ``-I``/``--content-message-id`` is a recipient."""
    result = submit("--spool-dir", str(spool), *args, stdin=b"Subject: s\n\nb\n")
    assert result.returncode == 0, result.stderr
    assert b"X-MailRelay-To-Remote: x@y\r\n" in _stored(spool, ".envelope")
    assert b"@x@y>" not in _stored(spool, ".content")


@pytest.mark.parametrize(
    ("args", "stdin", "stderr"),
    [
        (["\udcff@x"], b"", b"invalid recipient address: [\xff@x]"),
        (["-f", "a\udce9\r@b", "\udcff@x"], b"", b"invalid sender address: [a\xe9\\r@b]"),
        (["-t"], b"From: a\xe9@b\r\nTo: x@y\r\n\r\nb\r\n",
         b"rfc-5322/6532 parsing error: parsing error at position 2: line 1"),
        ([], b"X: 1\r\nTo: x@y,\r\n \xc3\xa9\xff@y\r\n\r\nb\r\n",
         b"rfc-5322/6532 parsing error: parsing error at position 8: line 2"),
        ([], b"To: x@y\r\n\tz@w\r\n\r\nb\r\n", b"rfc-5322/6532 parsing error: invalid address-list: line 1"),
        (["x@y"], b"Sender: c d\r\n\r\nb\r\n", b"rfc-5322/6532 parsing error: invalid address: line 1"),
        (["-t"], b"Subject: s\r\n\r\nb\r\n",
         b"content-to option used but no envelope-to addresses have been defined"),
        (["-N", "-C", "YQ=", "x@y"], b"", b"base64 encoding error"),
    ],
    ids=["rcpt-not-utf8", "sender-first", "from-header-not-utf8", "to-header-position", "to-unparsable",
         "sender-unparsable", "t-without-recipients", "bad-base64"],
)  # fmt: skip
def test_refused_as_upstream_and_nothing_written(
    spool: Path, args: list[str], stdin: bytes, stderr: bytes
) -> None:
    """E-MailRelay 2.6b's messages (an address's bytes as given, not a traceback), exit 1."""
    result = submit("--spool-dir", str(spool), *args, stdin=stdin)
    assert (result.returncode, result.stderr) == (1, b"emailrelay-submit: " + stderr + b"\n")
    assert files(spool) == []


def test_auth_values_as_upstream_writes_them(spool: Path) -> None:
    """``-i``/``-o`` as xtext (``<>`` when empty), ``-a`` taken and not written."""
    result = submit("--spool-dir", str(spool), "-a", "me\x01", "-i", "a b+\udcff", "-o", "", "x@y")
    assert result.returncode == 0, result.stderr
    envelope = _stored(spool, ".envelope")
    assert b"X-MailRelay-Authentication: \r\n" in envelope
    assert b"X-MailRelay-MailFromAuthIn: a+20b+2B+FF\r\nX-MailRelay-MailFromAuthOut: <>\r\n" in envelope


def test_no_recipient_is_a_message_without_recipients(spool: Path) -> None:
    """None on the command line and none in the headers: written with ``ToCount: 0``, exit 0 (as
    E-MailRelay 2.6b; tests/differential/test_command_line.py compares the files)."""
    result = submit("--spool-dir", str(spool), "--from", "sub@example.com", "a b@example.net")
    assert result.returncode == 0, result.stderr
    result = submit("--spool-dir", str(spool), "--from", "sub@example.com", stdin=b"Subject: x\n\nbody\n")
    assert result.returncode == 0, result.stderr
    envelopes = [(spool / name).read_bytes() for name in files(spool) if name.endswith(".envelope")]
    assert sorted(e.count(b"X-MailRelay-ToCount: 0\r\n") for e in envelopes) == [0, 1]
    assert sum(e.count(b"X-MailRelay-To-Remote: a b@example.net\r\n") for e in envelopes) == 1


def test_missing_spool_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-spool"
    result = submit("--spool-dir", str(missing), "--from", "sub@example.com", "rcpt@example.net")
    assert result.returncode == 1
    assert (
        result.stderr
        == f"emailrelay-submit: invalid spool directory: {missing}: no such file or directory\n".encode()
    )
    assert not missing.exists()


def test_spool_path_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_bytes(b"")
    result = submit("--spool-dir", str(blocker), "--from", "sub@example.com", "rcpt@example.net")
    assert result.returncode == 1
    assert (
        result.stderr == f"emailrelay-submit: invalid spool directory: {blocker}: not a directory\n".encode()
    )
    assert blocker.read_bytes() == b""


def test_full_disk_is_exit_1_and_leaves_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "tiny"
    spool.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(spool)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        big = b"Subject: big\n\n" + (b"x" * 998 + b"\n") * 200  # 200 KB into 64 KB
        result = submit("--spool-dir", str(spool), "--from", "s@example.com", "r@example.net", stdin=big)
        assert result.returncode == 1, result.stderr
        assert re.match(rb"^emailrelay-submit: cannot write to spool directory ", result.stderr), (
            result.stderr
        )
        assert files(spool) == []
        ok = submit("--spool-dir", str(spool), "--from", "s@example.com", "r@example.net")
        assert ok.returncode == 0 and len(files(spool)) == 2
    finally:
        subprocess.run(["umount", str(spool)], capture_output=True)


def test_recipients_from_headers_when_none_given(spool: Path) -> None:
    result = submit(
        "--verbose", "--spool-dir", str(spool), "--from", "s@example.com",
        stdin=b"To: Someone <to@example.net>\nCc: cc@example.org\nSubject: h\n\nbody\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    env = env_format.parse(printed_envelope(result.stdout).read_bytes())
    assert env.to_remote == ("to@example.net", "cc@example.org")


def test_submitted_ids_are_unique(spool: Path) -> None:
    procs = [
        subprocess.Popen(
            [SUBMIT, "--verbose", "--spool-dir", str(spool), "--from", "s@example.com", f"r{i}@example.net"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for i in range(8)
    ]
    paths = []
    for i, p in enumerate(procs):
        out, _ = p.communicate(f"Subject: {i}\n\n{i}\n".encode(), timeout=60)
        assert p.returncode == 0
        paths.append(out.decode().strip())
    assert len(set(paths)) == 8
    assert len(files(spool)) == 16


@pytest.mark.skipif(os.geteuid() != 0, reason="run as root: that is what the group rule is about")
def test_run_as_root_the_files_get_a_group_the_relay_user_is_in(tmp_path: Path) -> None:
    """As a set-group-id daemon installation would: the spool directory's group, else daemon's."""
    import grp

    daemon_gid = grp.getgrnam("daemon").gr_gid
    mail_gid = grp.getgrnam("mail").gr_gid
    for spool_gid, expected in ((0, daemon_gid), (mail_gid, mail_gid)):
        spool = tmp_path / f"spool-{spool_gid}"
        spool.mkdir()
        os.chown(spool, 0, spool_gid)
        result = submit("--spool-dir", str(spool), "--from", "a@example.com", "b@example.net")
        assert result.returncode == 0, result.stderr
        made = sorted(spool.iterdir())
        assert len(made) == 2
        assert {(p.stat().st_uid, p.stat().st_gid, p.stat().st_mode & 0o777) for p in made} == {
            (0, expected, 0o660)
        }


@pytest.mark.parametrize(
    ("args", "recipients"),
    [
        (["x@y", "-F", "z@w"], ("x@y", "-F", "z@w")),
        (["-n", "x@y", "-n"], ("x@y", "-n")),
        (["--", "x@y"], ("x@y",)),
        (["x@y", "--", "z@w"], ("x@y", "--", "z@w")),
    ],
    ids=["option-letter-after", "flag-after", "end-of-options", "end-of-options-after"],
)
def test_options_end_at_the_first_recipient(
    spool: Path, args: list[str], recipients: tuple[str, ...]
) -> None:
    """As upstream (tests/differential/test_programs.py): what follows the first recipient is a
    recipient, even when it looks like an option; a ``--`` before it only ends the options."""
    result = submit("--spool-dir", str(spool), "-f", "a@b", *args)
    assert result.returncode == 0, result.stderr
    (envelope,) = spool.glob("*.envelope")
    assert env_format.parse(envelope.read_bytes()).to_remote == recipients
