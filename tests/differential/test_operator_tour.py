"""An operator's tour against E-MailRelay 2.6b (8 Dec 2026): start-up failures, one-shot programs.

What it checks, each side by side with the oracle (``needs_oracle``) and on ours alone, so that a
clone without the oracle tests the fix too:

- ``emailrelay-passwd`` reads its options as upstream's option parser does: only whole long names
  (``--dot`` is an invalid option, not ``--dotted``), upstream's hidden ``-v``/``--verbose``, a
  flag with a yes or a no after ``=`` (``--dotted=no``), ``duplicate use of`` for a value given
  twice with two values, ``conflicting values`` for a flag given on and off, a short value
  option in a group of letters has no value (``-dp x``), ``--`` ends the options, every problem
  is reported in the order met, before any ``--help`` (exit 1); ``--help`` (``-h``) is
  upstream's usage text, every option with ``--verbose``; ``too many command-line arguments`` is
  followed by upstream's short usage, all on stderr;
- a ``--pid-file`` that is a directory stops the start with upstream's one line before any
  server starts (ours said ``smtp server on ...`` first);
- a ``--size`` beyond 32 bits is no limit: EHLO offers no ``SIZE``, as upstream reads it.

Kept different (docs/decisions.md): the copyright line of the help texts names this
implementation too; ``emailrelay-passwd`` lists our own ``--print-base64``, ``-x``/``--xtext`` and
``--version`` after upstream's options with ``--help --verbose`` (upstream has no ``--version``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emailrelay import COPYRIGHT
from tests.support.oracle import SIDES, daemon_base, needs_oracle, run, smtp_dialogue, start
from tests.support.relay import free_port
from tests.support.sink_counter import submit

pytestmark = pytest.mark.timeout(120)

UPSTREAM_COPYRIGHT = "Copyright (C) 2001-2024 Graeme Walker"
OURS_ONLY = ("--print-base64", "--xtext", "--version")  # our options' lines in --help --verbose
WARRANTY = (
    "This program comes with ABSOLUTELY NO WARRANTY.\n"
    "This is free software, and you are welcome to \n"
    "redistribute it under certain conditions. For \n"
    "more information refer to the file named COPYING.\n"
)
SHORT_HELP = (
    "usage: emailrelay-passwd [-h] [--hash=<function>] [--help]\n\n"
    "  -H, --hash=<function>       use the named hash function\n"
    "  -h, --help                  show usage help\n\n" + WARRANTY + COPYRIGHT + "\n"
)
TOO_MANY = (
    "emailrelay-passwd: too many command-line arguments (the password is read from the standard input)\n"
    "usage: emailrelay-passwd\n\n"
    "  This program comes with ABSOLUTELY NO WARRANTY.\n"
    "  This is free software, and you are welcome to \n"
    "  redistribute it under certain conditions. For \n"
    "  more information refer to the file named COPYING.\n"
    "    " + COPYRIGHT + "\n"
)
X_HASH = "CQoPAIjxXaj+1eCl/ytBUkY4x38acMb9pN36b7405u4=\n"  # "x"
EA_HASH = "3qD6RhrekGP2mn8ykO8icTUDLauCBkSulv4UjlePSv8=\n"  # "eA==" itself
X_DOTTED = "985609.2824728968.2782975486.1380002815.2143762502.4257640474.1878711716.4008064190\n"


def _error(*problems: str) -> tuple[int, str, str]:
    return 1, "", "".join(f"emailrelay-passwd: error: {p}\n" for p in problems)


# (args, what ours gives with "eA==" on stdin: exit code, stdout, stderr)
PASSWD_CASES: list[tuple[tuple[str, ...], tuple[int, str, str]]] = [
    (("-v",), (0, EA_HASH, "")),
    (("--verbose=1", "-b"), (0, X_HASH, "")),
    (("--base64=yes",), (0, X_HASH, "")),
    (("--base64=off",), (0, EA_HASH, "")),
    (("--dotted=", "-b"), (0, X_DOTTED, "")),
    (("-bd",), (0, X_DOTTED, "")),
    (("-p", "x", "-p", "x"), (0, X_HASH, "")),
    (("--",), (0, EA_HASH, "")),
    (("-p", "-x"), (0, "dQRrG472Fg7OMbPhUYFEf5RYgK6zEpxqkJ9yHWBh/5E=\n", "")),
    (("--dot",), _error('invalid option: "--dot"')),
    (("--pass", "x"), _error('invalid option: "--pass"')),
    (("--zz", "--bogus", "-q"), _error('invalid option: "--zz"', 'invalid option: "--bogus"', 'invalid option: "-q"')),
    (("-p", "x", "--password", "y"), _error('duplicate use of "--password"')),
    (("-H", "md5", "--hash=MD5"), _error('duplicate use of "--hash"')),
    (("--dotted", "--dotted=no"), _error('conflicting values: "--dotted"')),
    (("--help=x",), _error('cannot give a value with "--help" (x)')),
    (("-dp", "x"), _error("no value supplied for -p")),
    (("-h=1",), _error('invalid option: "-="', 'invalid option: "-1"')),
    (("--password", "-x"), _error('"--password -x" is probably a mistake, use "--password=... -x" or "--password=-x"')),
    (("-h", "--bogus", "-v"), _error('invalid option: "--bogus"')),
    (("-h", "-p", "x", "-p", "y"), _error('duplicate use of "-p"')),
    (("-V", "-h"), _error('invalid option: "-V"')),
    (("-h",), (0, SHORT_HELP, "")),
    (("-h", "x"), (0, SHORT_HELP, "")),
    (("--help", "--hash=frob"), (0, SHORT_HELP, "")),
    (("x",), (1, "", TOO_MANY)),
    (("--", "x"), (1, "", TOO_MANY)),
    (("-",), (1, "", TOO_MANY)),
]  # fmt: skip
PASSWD_IDS = [" ".join(args) for args, _ in PASSWD_CASES]


def _passwd(side: str, *args: str) -> tuple[int, str, str]:
    r = run(side, "emailrelay-passwd", *args, input=b"eA==\n")
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def _as_upstreams(text: str) -> str:
    """Our help text with upstream's copyright line and without our own options' lines."""
    lines = [line for line in text.splitlines(keepends=True) if not any(f"{o} " in line for o in OURS_ONLY)]
    return "".join(lines).replace(COPYRIGHT, UPSTREAM_COPYRIGHT)


@pytest.mark.parametrize(("args", "expected"), PASSWD_CASES, ids=PASSWD_IDS)
def test_passwd_reads_options_as_upstream_does(args: tuple[str, ...], expected: tuple[int, str, str]) -> None:
    assert _passwd("ours", *args) == expected


@needs_oracle
@pytest.mark.parametrize(
    "args", [*(args for args, _ in PASSWD_CASES), ("-h", "-v"), ("--verbose", "--help")], ids=[*PASSWD_IDS, "-h -v", "--verbose --help"]
)  # fmt: skip
def test_passwd_options_as_upstream(args: tuple[str, ...]) -> None:
    """The same exit code, stdout and stderr, but for the copyright line and our options' lines."""
    code, out, err = _passwd("ours", *args)
    assert (code, _as_upstreams(out), _as_upstreams(err)) == _passwd("upstream", *args)


def test_passwd_verbose_help_lists_every_option() -> None:
    code, out, err = _passwd("ours", "--help", "--verbose")
    assert (code, err) == (0, "")
    assert out.startswith(
        "usage: emailrelay-passwd [-hbd] [--hash=<function>] [--help] [--base64]\n"
        "  [--dotted] [--password=<pwd>]\n\n"
        "  -H, --hash=<function>       use the named hash function\n"
        "  -h, --help                  show usage help\n"
        "  -b, --base64                interpret the password as base64-encoded\n"
        "  -d, --dotted                use a dotted decimal format\n"
        "  -p, --password=<pwd>        defines the password\n"
        "      --print-base64          "
    )
    assert out.endswith(WARRANTY + COPYRIGHT + "\n")


# ---- a --pid-file that is a directory --------------------------------------------------------


def _pid_file_is_a_directory(side: str, base: Path) -> tuple[int, str]:
    spool = base / side
    spool.mkdir()
    r = run(
        side, "emailrelay", "--no-daemon", "--log", "--no-syslog", "--verbose", "--port", str(free_port()),
        "--spool-dir", str(spool), "--pid-file", str(spool), timeout=20,
    )  # fmt: skip
    return r.returncode, r.stderr.decode().replace(str(spool), "SPOOL")


PID_DIR_ERROR = (1, "emailrelay: error: invalid pid file: cannot create file: SPOOL: is a directory\n")


def test_pid_file_that_is_a_directory_stops_the_start_before_any_server(tmp_path: Path) -> None:
    assert _pid_file_is_a_directory("ours", daemon_base(tmp_path)) == PID_DIR_ERROR


@needs_oracle
def test_pid_file_that_is_a_directory_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    assert _pid_file_is_a_directory("upstream", base) == PID_DIR_ERROR


# ---- --size beyond 32 bits ------------------------------------------------------------------


def _ehlo(side: str, base: Path, size: str) -> str:
    with start(side, base, "--size", size, name=f"{side}-{size}") as relay:
        return smtp_dialogue(relay.port, ["EHLO client.example"])[1]


@pytest.mark.parametrize(
    ("size", "offered"), [("4294967295", True), ("4294967296", False), ("99999999999", False)]
)
def test_size_beyond_32_bits_is_no_limit(tmp_path: Path, size: str, offered: bool) -> None:
    assert (f"250-SIZE {size}" in _ehlo("ours", daemon_base(tmp_path), size)) is offered


@needs_oracle
@pytest.mark.parametrize("size", ["4294967295", "4294967296"])
def test_size_beyond_32_bits_as_upstream(tmp_path: Path, size: str) -> None:
    base = daemon_base(tmp_path)
    ehlo = {side: _ehlo(side, base, size) for side in SIDES}
    assert ehlo["ours"] == ehlo["upstream"]


# ---- a next hop with no host ----------------------------------------------------------------


def test_as_client_to_a_hop_without_a_host_leaves_the_message(tmp_path: Path) -> None:
    """``--as-client :25`` cannot connect anywhere: like any connection failure (and as E-MailRelay
    2.6b leaves it) the message stays in the spool to be sent later; ours was failing it to .bad.
    (Upstream never exits here, so there is nothing to compare side by side.)"""
    spool = daemon_base(tmp_path) / "spool"
    spool.mkdir()
    submit(spool, "no-host")

    def messages() -> list[str]:
        return sorted(p.name for p in spool.iterdir() if not p.name.startswith("."))

    before = messages()
    result = run(
        "ours", "emailrelay", "--as-client", ":25", "--spool-dir", str(spool), "--no-syslog", timeout=30
    )
    assert result.returncode == 1, result
    assert b"invalid next hop address" in result.stderr, result.stderr
    assert messages() == before  # (beside it, ours notes the failed try in a hidden .deferral file)
