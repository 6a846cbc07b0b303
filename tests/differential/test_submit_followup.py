"""``emailrelay-submit``'s command line against E-MailRelay 2.6b, a follow-up of a differential probe (7 Dec 2026).

What it checks, side by side with the oracle (``needs_oracle``: stdout, stderr, exit code and
the spool's files, ids and times normalised) and, where ours alone can show it, on ours alone so
that a clone without the oracle tests it too:

- the options are read as 2.6b reads them: a single-valued option given twice with another value
  is ``error: duplicate use of "-f"`` (the same value twice passes); an unknown option, a
  shortened name (``--fr``), a letter that takes a value inside a group (``-fa@b`` is three
  letters), a missing value, ``--from -v`` and a flag given a value it cannot take are 2.6b's
  ``emailrelay-submit: error: ...`` lines, every one in order, and nothing is read or written;
  ``-f -v`` takes ``-v`` as the sender, ``--verbose=yes``/``=no`` are taken, an empty ``--to=``
  is no recipient;
- ``--content`` (``-C``) with one base64 character or ``=`` alone is an empty line, not an error;
- the spool directory in ``invalid spool directory: ...`` is named as 2.6b names it (``a//b/`` is
  ``a/b``), and an empty one is refused rather than taken for the working directory;
- a closed standard input is no input (an empty message is written, as 2.6b writes it);
- ``--help`` has 2.6b's layout: its synopsis byte for byte and the same option column, with or
  without ``-v`` (the texts describing each option are ours); help or version write nothing;
- unchanged and compared to show it: a line over 1000 octets, a NUL in the content, ``-n``,
  ``-v``, ``-d``, ``-a``, ``-N``.

Kept different (docs/decisions.md, "emailrelay-submit"): a command-line error exits 1, where
2.6b exits 0 having written nothing (a script would take the message for submitted, and drop
it); ``--input-file`` naming a directory is ``cannot open input file [<dir>]`` and a standard
input that cannot be read ``cannot read standard input: <reason>`` (exit 1), where 2.6b submits
what it read (an empty message) and exits 0; ``-V`` prints our version.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from emailrelay import COPYRIGHT, WARRANTY
from tests.support.oracle import SIDES, daemon_base, needs_oracle, program, run
from tests.support.submit_runs import file_tree, submit_both

pytestmark = pytest.mark.timeout(120)

MESSAGE = b"Subject: s\r\n\r\nbody\r\n"
_ERROR = "emailrelay-submit: error: "

# (arguments, upstream's stderr lines after "emailrelay-submit: error: ")
USAGE_ERRORS = [
    (("-f", "a@b", "-f", "c@d", "x@y"), ['duplicate use of "-f"']),
    (("-f", "a@b", "--from", "c@d", "x@y"), ['duplicate use of "--from"']),
    (("--from=a@b", "--from=c@d", "x@y"), ['duplicate use of "--from"']),
    (("--spool-dir=other", "x@y"), ['duplicate use of "--spool-dir"']),
    (("-x", "a", "-x", "b", "x@y"), ['duplicate use of "-x"']),
    (("-a", "a", "-a", "b", "-i", "a", "-i", "b", "-o", "a", "-o", "b", "x@y"),
     ['duplicate use of "-a"', 'duplicate use of "-i"', 'duplicate use of "-o"']),
    (("-I", "--content-message-id=a", "x@y"), ['duplicate use of "--content-message-id"']),
    (("-q", "x@y"), ['invalid option: "-q"']),
    (("--bogus=1", "x@y"), ['invalid option: "--bogus"']),
    (("--fr=a@b", "x@y"), ['invalid option: "--fr"']),
    (("-fa@b", "x@y"), ["no value supplied for -f", "no value supplied for -a", 'invalid option: "-@"']),
    (("-vf", "a@b", "x@y"), ["no value supplied for -f"]),
    (("-I=x", "x@y"), ['invalid option: "-="', "no value supplied for -x"]),
    (("--=x", "x@y"), ['invalid option: "--"']),
    (("-f",), ["no value supplied for -f"]),
    (("--from",), ['no value supplied for "--from"']),
    (("--from", "-v", "x@y"), ['"--from -v" is probably a mistake, use "--from=... -v" or "--from=-v"']),
    (("--verbose=x", "x@y"), ['cannot give a value with "--verbose" (x)']),
    (("--verbose=no", "-v", "x@y"), ['conflicting values: "--verbose"']),
    (("-f", "a@b", "-q", "-f", "c@d", "-h", "x@y"), ['invalid option: "-q"', 'duplicate use of "-f"']),
]  # fmt: skip
USAGE_IDS = ["f-twice", "f-from", "from-twice", "spool-dir-twice", "x-twice", "a-i-o-twice", "I-then-id",
             "unknown-letter", "unknown-name", "abbreviated", "letters-f-a", "letter-f-in-group", "I-equals",
             "no-name", "f-last", "from-last", "from-dash", "flag-value", "flag-conflict", "errors-in-order"]  # fmt: skip


@needs_oracle
@pytest.mark.parametrize(("args", "errors"), USAGE_ERRORS, ids=USAGE_IDS)
def test_command_line_errors_as_upstream(tmp_path: Path, args: tuple[str, ...], errors: list[str]) -> None:
    """2.6b's lines, every one, and nothing written; the exit code is ours (1, not 2.6b's 0)."""
    got = submit_both(tmp_path, "spool", *args, input=MESSAGE)
    expected = "".join(f"{_ERROR}{e}\n" for e in errors)
    assert got["upstream"] == (0, "", expected, {})
    assert got["ours"] == (1, "", expected, {})


@pytest.mark.parametrize(("args", "errors"), USAGE_ERRORS, ids=USAGE_IDS)
def test_command_line_errors_on_ours(tmp_path: Path, args: tuple[str, ...], errors: list[str]) -> None:
    """Ours alone: the lines, exit 1, nothing written (ours used to take the last ``-f``)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    r = run("ours", "emailrelay-submit", "--spool-dir", "spool", *args, input=MESSAGE, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr.decode()) == (1, b"", "".join(f"{_ERROR}{e}\n" for e in errors))
    assert list(spool.iterdir()) == []


_LONG = b"Subject: long\r\n\r\n" + b"x" * 1500 + b"\r\nend\r\n"
_NUL = b"Subject: s\x00t\r\n\r\nbo\x00dy\r\n"


@needs_oracle
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-f", "a@b", "-f", "a@b", "--from=a@b", "-s", "spool", "x@y"), MESSAGE),  # the same value again
        (("-i", "a", "--from-auth-in=a", "-n", "-n", "-v", "-v", "x@y"), MESSAGE),
        (("--verbose=yes", "--verbose", "x@y"), MESSAGE),
        (("--verbose=NO", "--filename=off", "-d", "x@y"), MESSAGE),
        (("--content-message-id=dom", "-I", "x@y"), MESSAGE),  # a bare -I after a domain keeps it
        (("-f", "-v", "x@y"), MESSAGE),  # a letter takes the next argument, a dash and all
        (("-", "x@y"), MESSAGE),  # "-" is a recipient
        (("--", "-f", "x@y"), MESSAGE),
        (("--to=", "x@y"), MESSAGE),  # an empty --to is no recipient
        (("--to=",), MESSAGE),
        (("-C", "eA", "-C", "Y", "-C", "=", "-C", "a", "-C", "eA", "x@y"), MESSAGE),
        (("-C", "Y", "x@y"), MESSAGE),
        (("-N", "-C", "=", "-C", "eA", "x@y"), b""),
        (("-C", "Y=", "x@y"), MESSAGE),  # still base64 errors
        (("-C", "eAYaY", "x@y"), MESSAGE),
        (("x@y",), _LONG),
        (("x@y",), _NUL),
        (("-a", "me", "-N", "x@y"), MESSAGE),
        ((), MESSAGE),  # no recipient
    ],
    ids=["same-value", "same-flag", "flag-yes", "flag-no", "bare-I-after-domain", "f-dash-value",
         "dash-recipient", "end-of-options", "empty-to", "empty-to-only", "content-lone-chars",
         "content-Y", "content-equals-no-stdin", "content-Y-equals", "content-five", "long-line",
         "nul", "auth-no-stdin", "no-recipient"],
)  # fmt: skip
def test_options_taken_as_upstream(tmp_path: Path, args: tuple[str, ...], message: bytes) -> None:
    """Byte for byte: what each side prints, its exit code and the files it writes."""
    got = submit_both(tmp_path, "spool", *args, input=message)
    stamp = re.compile(rb"\d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}|\d+\.\d{6}\.\d+@")
    for side in SIDES:
        code, out, err, tree = got[side]
        got[side] = (code, out, err, {k: stamp.sub(b"STAMP", v) for k, v in tree.items()})
    assert got["ours"] == got["upstream"]


@pytest.mark.parametrize(
    ("values", "content"),
    [
        (("eA", "Y", "eA"), b"x\r\n\r\nx\r\n"),
        (("eA", "=", "eA"), b"x\r\n\r\nx\r\n"),
        (("eA", "a"), b"x\r\n\r\n"),
    ],
    ids=["Y", "equals", "a-last"],
)
def test_content_line_without_a_whole_octet_is_an_empty_line(
    tmp_path: Path, values: tuple[str, ...], content: bytes
) -> None:
    """Ours alone: ``-C Y`` (or ``=``, ``a``) is an empty line, as 2.6b takes it (ours refused it
    as a base64 error)."""
    args = [a for v in values for a in ("-C", v)]
    r = run("ours", "emailrelay-submit", "--spool-dir", str(tmp_path), *args, "-N", "x@y")
    assert (r.returncode, r.stderr) == (0, b"")
    (written,) = tmp_path.glob("*.content")
    assert written.read_bytes() == content


SPOOL_NAMES = [
    ("nosuch//", "nosuch: no such file or directory"),
    ("./nosuch/", "./nosuch: no such file or directory"),
    ("//nosuch//", "/nosuch: no such file or directory"),
    ("a//b/./c/", "a/b/./c: no such file or directory"),
    ("afile/", "afile: not a directory"),
    ("", "not a directory"),
]


@needs_oracle
@pytest.mark.parametrize(("spool", "text"), SPOOL_NAMES, ids=[s or "empty" for s, _ in SPOOL_NAMES])
def test_spool_directory_named_as_upstream(tmp_path: Path, spool: str, text: str) -> None:
    """The directory as 2.6b names it in its message; an empty one is refused on both sides."""
    base = daemon_base(tmp_path)
    (base / "afile").write_bytes(b"")
    got = {
        side: run(side, "emailrelay-submit", "-s", spool, "x@y", input=MESSAGE, cwd=base) for side in SIDES
    }
    for side in SIDES:
        assert (got[side].returncode, got[side].stdout) == (1, b"")
        assert got[side].stderr.decode() == f"emailrelay-submit: invalid spool directory: {text}\n"
    assert sorted(p.name for p in base.iterdir()) == ["afile"]


@pytest.mark.parametrize(("spool", "text"), SPOOL_NAMES, ids=[s or "empty" for s, _ in SPOOL_NAMES])
def test_spool_directory_named_on_ours(tmp_path: Path, spool: str, text: str) -> None:
    """Ours alone: as above (ours named ``nosuch//`` as given, and took an empty one for ``.``)."""
    (tmp_path / "afile").write_bytes(b"")
    r = run("ours", "emailrelay-submit", "-s", spool, "x@y", input=MESSAGE, cwd=tmp_path)
    assert (r.returncode, r.stderr.decode()) == (1, f"emailrelay-submit: invalid spool directory: {text}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def _odd_stdin(
    side: str, spool: Path, write_only: Path | None, *args: str
) -> subprocess.CompletedProcess[bytes]:
    """``side``'s submit with its standard input closed, or (``write_only``) a file open for
    writing only, so that reading it fails."""
    with open(write_only or os.devnull, "wb") as stdin:
        return subprocess.run(
            [program(side, "emailrelay-submit"), "--spool-dir", str(spool), *args],
            stdin=stdin if write_only else None,
            capture_output=True,
            preexec_fn=None if write_only else lambda: os.close(0),  # one close in the child
            timeout=30,
            check=False,
        )


@needs_oracle
def test_closed_stdin_as_upstream(tmp_path: Path) -> None:
    """No standard input at all: an empty message, written as 2.6b writes it."""
    base = daemon_base(tmp_path)
    trees = {}
    for side in SIDES:
        (base / side).mkdir()
        r = _odd_stdin(side, base / side, None, "-f", "a@b", "x@y")
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
        trees[side] = file_tree(base / side)
    assert trees["ours"] == trees["upstream"]
    assert [v for k, v in trees["ours"].items() if k.endswith(".content")] == [b"\r\n"]


def test_closed_stdin_on_ours(tmp_path: Path) -> None:
    """Ours alone: an empty message (ours died with a traceback)."""
    r = _odd_stdin("ours", tmp_path, None, "x@y")
    assert (r.returncode, r.stderr) == (0, b"")
    assert [p.read_bytes() for p in tmp_path.glob("*.content")] == [b"\r\n"]


@needs_oracle
def test_stdin_that_cannot_be_read_differs(tmp_path: Path) -> None:
    """Deliberate: 2.6b takes what it could read before a read error (here nothing) for the whole
    message and exits 0; ours refuses, exit 1, nothing written."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        (base / side).mkdir()
        r = _odd_stdin(side, base / side, base / f"{side}.stdin", "x@y")
        got[side] = (r.returncode, r.stderr, file_tree(base / side))
    assert got["upstream"][:2] == (0, b"")
    assert [v for k, v in got["upstream"][2].items() if k.endswith(".content")] == [b"\r\n"]
    assert got["ours"] == (1, b"emailrelay-submit: cannot read standard input: bad file descriptor\n", {})


def test_stdin_that_cannot_be_read_on_ours(tmp_path: Path) -> None:
    """Ours alone: refused (ours died with a traceback)."""
    r = _odd_stdin("ours", tmp_path, tmp_path / "stdin", "x@y")
    assert (r.returncode, r.stderr) == (
        1,
        b"emailrelay-submit: cannot read standard input: bad file descriptor\n",
    )
    assert not list(tmp_path.glob("*.content"))


def _help(side: str, *args: str, cwd: Path) -> tuple[int, list[str], bytes]:
    r = run(side, "emailrelay-submit", "--spool-dir", ".", *args, "x@y", input=MESSAGE, cwd=cwd)
    return r.returncode, r.stdout.decode().splitlines(), r.stderr


def _layout(lines: list[str]) -> tuple[list[str], list[str]]:
    """The synopsis (up to the first empty line) and each option's left column."""
    synopsis = lines[: lines.index("")]
    options = [re.match(r"  (-\w,|   ) --\S+", line) for line in lines]
    return synopsis, [m[0] for m in options if m]


@needs_oracle
@pytest.mark.parametrize("args", [("-h",), ("--help",), ("-h", "-v"), ("--help=yes", "--verbose")])
def test_help_layout_as_upstream(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The synopsis byte for byte and the same options in the same order; nothing written."""
    base = daemon_base(tmp_path)
    got = {side: _help(side, *args, cwd=base) for side in SIDES}
    assert [got[side][0] for side in SIDES] == [0, 0] and got["ours"][2] == got["upstream"][2] == b""
    assert _layout(got["ours"][1]) == _layout(got["upstream"][1])
    assert got["ours"][1][-len(WARRANTY) - 2 :] == [*WARRANTY, "", COPYRIGHT]
    assert list(base.iterdir()) == []


@pytest.mark.parametrize(("args", "full"), [(("-h",), False), (("--help", "-v"), True)])
def test_help_layout_on_ours(tmp_path: Path, args: tuple[str, ...], full: bool) -> None:
    """Ours alone: 2.6b's layout (ours was argparse's), every option with ``-v``; nothing written."""
    code, lines, err = _help("ours", *args, cwd=tmp_path)
    assert (code, err) == (0, b"")
    synopsis, options = _layout(lines)
    if full:
        assert synopsis[0] == "usage: emailrelay-submit [-hvbdFtcnVBN] [--from=<envelope-from-address>]"
        assert len(options) == 20 and "  -I, --content-message-id[=<domain-part>]" in options
    else:
        assert synopsis[0] == "abbreviated usage: emailrelay-submit [-hv] [--from=<envelope-from-address>]"
        assert options == [
            "  -f, --from=<envelope-from-address>",
            "  -h, --help",
            "  -x, --input-file=<file>",
            "  -s, --spool-dir=<dir>",
            "  -v, --verbose",
        ]
        assert 'For more options use "--help -v".' in lines
    assert list(tmp_path.iterdir()) == []


@needs_oracle
def test_version_writes_nothing_on_both(tmp_path: Path) -> None:
    """``-V`` prints a version and writes nothing, the recipients aside; ours names itself."""
    got = submit_both(tmp_path, "spool", "-V", "x@y", input=MESSAGE)
    assert got["upstream"] == (0, "2.6b\n", "", {})
    assert got["ours"][0] == 0 and re.fullmatch(r"2\.6 \(emailrelay-python \S+\)\n", got["ours"][1])
    assert got["ours"][2:] == ("", {})


@needs_oracle
def test_input_file_that_is_a_directory_differs(tmp_path: Path) -> None:
    """Deliberate: 2.6b submits an empty message for ``-x <directory>`` and exits 0, so the message
    meant is lost unseen; ours refuses it, exit 1, nothing written."""
    got = submit_both(tmp_path, "spool", "-x", "spool", "x@y", input=MESSAGE)
    assert got["upstream"][:3] == (0, "", "") and [
        v for k, v in got["upstream"][3].items() if k.endswith(".content")
    ] == [b"\r\n"]
    assert got["ours"] == (1, "", "emailrelay-submit: cannot open input file [spool]\n", {})
