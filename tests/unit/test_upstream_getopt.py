"""The contract of :mod:`emailrelay.cli.upstream_getopt`, the option reader that ``emailrelay-submit``
and ``emailrelay-passwd`` share.

What it checks: :func:`tokenize` directly, on a small table with one option of each kind -- where
options end, whole names, separated values and the ``"probably a mistake"`` value that is taken
up, letters that take a value, a flag's yes/no (any case, blanks around ignored), conflicting
flags, duplicates, repeatable options, an optional-value option's long name and letter, problems
collected in order, and that no argument list makes it raise; the help column; and, through
``emailrelay-submit``'s :func:`~emailrelay.cli.submit.parse_args`, the three corners where its own
copy had read otherwise than E-MailRelay 2.6b (it now reads as ``emailrelay-passwd`` did):

- ``--from -Q``: 2.6b reports only the mistake and takes ``-Q`` up (ours also read ``-Q`` as an
  option, an extra ``invalid option`` line);
- ``--verbose= yes``: 2.6b takes it (ours refused the blank);
- a bare ``--content-message-id`` is the value ``""`` to 2.6b (``--content-message-id=d
  --content-message-id`` and ``-I --content-message-id`` are duplicates; ours let both pass).

Side by side with the oracle (``needs_oracle``): those corners on both programs' ``emailrelay-submit``
and the mistake on both ``emailrelay-passwd``. Kept different: a command-line error exits 1 on
ours, 0 on 2.6b's ``emailrelay-submit`` (docs/decisions.md, "emailrelay-submit").
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.cli.submit import parse_args
from emailrelay.cli.upstream_getopt import Given, Option, tokenize
from tests.support.oracle import SIDES, daemon_base, needs_oracle, run
from tests.support.submit_runs import submit_both

TABLE = (
    Option("name", "n", "value", "v"),
    Option("list", "l", "values", "item"),
    Option("flag", "f"),
    Option("green", "g"),
    Option("opt", "o", "optional", "d"),
)


def _mistake(opt: str, value: str) -> str:
    return f'"{opt} {value}" is probably a mistake, use "{opt}=... {value}" or "{opt}={value}"'


CASES = [
    ([], Given()),
    (["--name=v", "--", "-f"], Given(values={"name": "v"}, rest=["-f"])),
    (["--name", "v", "r", "--flag"], Given(values={"name": "v"}, rest=["r", "--flag"])),
    (["-", "-f"], Given(rest=["-", "-f"])),
    (["--nam=v", "--fla"], Given(problems=['invalid option: "--nam"', 'invalid option: "--fla"'])),
    (["--name", "-f", "r"], Given(rest=["r"], problems=[_mistake("--name", "-f")])),
    (["--name"], Given(problems=['no value supplied for "--name"'])),
    (["-n", "-f"], Given(values={"name": "-f"})),
    (["-fn", "v"], Given(flags={"flag": True}, rest=["v"], problems=["no value supplied for -n"])),
    (["-n"], Given(problems=["no value supplied for -n"])),
    (["-q", "-g"], Given(flags={"green": True}, problems=['invalid option: "-q"'])),
    (["--flag= YES\t", "-f", "--green=off"], Given(flags={"flag": True, "green": False})),
    (["-g", "--flag=no", "--green="], Given(flags={"green": True, "flag": False})),
    (["--flag=off", "-f"], Given(flags={"flag": False}, problems=['conflicting values: "--flag"'])),
    (["--flag=maybe"], Given(problems=['cannot give a value with "--flag" (maybe)'])),
    (["-n", "a", "--name=a", "-n", "b"], Given(values={"name": "a"}, problems=['duplicate use of "-n"'])),
    (["-n", "a", "--name", "b"], Given(values={"name": "a"}, problems=['duplicate use of "--name"'])),
    (["-l", "a", "--list=", "--list", "c", "-l", "a"], Given(lists={"list": ["a", "", "c", "a"]})),
    (["--opt", "r"], Given(values={"opt": ""}, rest=["r"])),
    (["-o", "r"], Given(values={"opt": None}, rest=["r"])),
    (["--opt=d", "-o", "--opt=d"], Given(values={"opt": "d"})),
    (["--opt", "-o", "--opt="], Given(values={"opt": ""})),
    (["-o", "-o"], Given(values={"opt": None})),
    (["-o", "--opt"], Given(values={"opt": None}, problems=['duplicate use of "--opt"'])),
    (["--opt=d", "--opt"], Given(values={"opt": "d"}, problems=['duplicate use of "--opt"'])),
    (
        ["-q", "--name", "-x", "--flag=z", "-n", "a", "-n", "b", "r", "-q"],
        Given(
            values={"name": "a"},
            rest=["r", "-q"],
            problems=[
                'invalid option: "-q"',
                _mistake("--name", "-x"),
                'cannot give a value with "--flag" (z)',
                'duplicate use of "-n"',
            ],
        ),
    ),
]


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(a) or "none" for a, _ in CASES])
def test_tokenize(argv: list[str], expected: Given) -> None:
    got = tokenize(argv, TABLE)
    assert got == expected
    assert list(got.flags) == list(expected.flags)  # in the order first given


def test_on_is_a_flag_given_on() -> None:
    got = tokenize(["-f", "--green=no"], TABLE)
    assert (got.on("flag"), got.on("green"), got.on("name")) == (True, False, False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["-", "--", "-f", "-fn", "-n", "--name", "--name=", "--opt", "-o", "-ol", "-l",
                                 "--list", "--flag=x", "--flag=no", "--bad", "-q", "v", "-=", "--="]), max_size=8))  # fmt: skip
def test_tokenize_never_raises_and_rest_is_the_end(argv: list[str]) -> None:
    got = tokenize(argv, TABLE)
    assert got.rest == argv[len(argv) - len(got.rest) :]
    assert all(isinstance(p, str) and p for p in got.problems)


@pytest.mark.parametrize(
    ("option", "left"),
    [
        (Option("name", "n", "value", "v"), "  -n, --name=<v>"),
        (Option("list", "", "values", "item"), "      --list=<item>"),
        (Option("opt", "o", "optional", "d"), "  -o, --opt[=<d>]"),
        (Option("flag", "f"), "  -f, --flag"),
    ],
)
def test_help_left_column(option: Option, left: str) -> None:
    assert option.help_left() == left


# ---- emailrelay-submit's corners: 2.6b's reading, which its own copy missed ---------------------

_CMI = "--content-message-id"
_DUPLICATE_CMI = f'duplicate use of "{_CMI}"'
SUBMIT_ERRORS = [
    (("--from", "-Q", "x@y"), [_mistake("--from", "-Q")]),
    (("--to", "-x"), [_mistake("--to", "-x")]),  # (ours took -x for --input-file: "no value supplied")
    ((f"{_CMI}=d", _CMI, "x@y"), [_DUPLICATE_CMI]),
    (("-I", _CMI, "x@y"), [_DUPLICATE_CMI]),
]
SUBMIT_ERROR_IDS = ["from-dash-taken-up", "to-dash-taken-up", "bare-id-after-domain", "bare-id-after-I"]
SUBMIT_TAKEN = [
    ("--verbose= yes", "x@y"),
    ("--verbose=no\t", "-n", "x@y"),
    (_CMI, "-I", "x@y"),
    ("-I", "-I", "x@y"),
]
SUBMIT_TAKEN_IDS = ["flag-blank-yes", "flag-no-blank", "I-after-bare-id", "I-twice"]


@pytest.mark.parametrize(("args", "errors"), SUBMIT_ERRORS, ids=SUBMIT_ERROR_IDS)
def test_submit_errors_as_upstream_reads_them(args: tuple[str, ...], errors: list[str]) -> None:
    _, problems = parse_args(list(args))
    assert problems == errors


@pytest.mark.parametrize("args", SUBMIT_TAKEN, ids=SUBMIT_TAKEN_IDS)
def test_submit_takes_what_upstream_takes(args: tuple[str, ...]) -> None:
    parsed, problems = parse_args(list(args))
    assert (problems, parsed.recipients) == ([], ["x@y"])
    assert parsed.verbose == ("--verbose= yes" in args)


def test_submit_bare_id_is_this_hosts_name() -> None:
    """A bare ``-I`` or ``--content-message-id`` (no domain) stands for this host's name (``""``)."""
    assert [parse_args(a)[0].content_message_id for a in ([], ["-I"], [_CMI], [f"{_CMI}=d", "-I"])] == [
        None,
        "",
        "",
        "d",
    ]


@needs_oracle
@pytest.mark.parametrize(("args", "errors"), SUBMIT_ERRORS, ids=SUBMIT_ERROR_IDS)
def test_submit_errors_side_by_side(tmp_path: Path, args: tuple[str, ...], errors: list[str]) -> None:
    """The same lines, nothing written; the exit code is ours (1, not 2.6b's 0)."""
    got = submit_both(tmp_path, "spool", *args, input=b"Subject: s\r\n\r\nbody\r\n")
    expected = "".join(f"emailrelay-submit: error: {e}\n" for e in errors)
    assert (got["upstream"], got["ours"]) == ((0, "", expected, {}), (1, "", expected, {}))


@needs_oracle
@pytest.mark.parametrize("args", SUBMIT_TAKEN, ids=SUBMIT_TAKEN_IDS)
def test_submit_taken_side_by_side(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Both take the command line: exit 0, the same output and the same files (contents aside:
    a Message-ID holds the time)."""
    got = submit_both(tmp_path, "spool", *args, input=b"Subject: s\r\n\r\nbody\r\n")
    ours, upstream = ((code, out, err, sorted(tree)) for code, out, err, tree in (got[s] for s in SIDES))
    assert ours == upstream
    assert ours[0] == 0 and ours[3]


@needs_oracle
def test_passwd_mistake_side_by_side(tmp_path: Path) -> None:
    """``emailrelay-passwd`` reads the same way: the mistake alone, the ``-Q`` taken up."""
    base = daemon_base(tmp_path)
    got = {side: run(side, "emailrelay-passwd", "-p", "x", "--hash", "-Q", cwd=base) for side in SIDES}
    expected = f"emailrelay-passwd: error: {_mistake('--hash', '-Q')}\n".encode()
    assert [(r.returncode, r.stdout, r.stderr) for r in got.values()] == [(1, b"", expected)] * 2
