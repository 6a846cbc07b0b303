"""Command-line and config-file parsing (emailrelay.cli.parse), driven by the option table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.cli.options import Option
from emailrelay.cli.parse import (
    ACCEPTED,
    ACCEPTED_SHORT,
    Parsed,
    expand_shorthands,
    parse_command_line,
    parse_config_file,
)
from emailrelay.config import from_values
from emailrelay.errors import (
    BindError,
    ConfigError,
    EmailRelayError,
    OptionError,
    OptionUsageError,
    SpoolError,
    UsageError,
)

APP = "/opt/er"

SAMPLE = {
    "str": "abc",
    "int": "7",
    "port": "2525",
    "path": "@app/x",
    "address": "host:25",
    "int-list": "60,120",
    "assignments": "smtp=2",
}


def sample(option: Option) -> str:
    if option.name == "syslog":
        return "local3"  # one of upstream's facility names (usage_rules)
    return option.choices[-1] if option.choices else SAMPLE[option.kind]


def expected(option: Option) -> str | bool | list[str]:
    if option.kind == "flag":
        return True
    value = sample(option).replace("@app", APP)
    return [value] if option.repeatable else value


_POP = ["--pop", "--pop-auth=/c"]
_SERVER_TLS = ["--server-tls", "--server-tls-certificate=/c"]

#: What each option needs alongside to pass upstream's rules (emailrelay.cli.usage_rules).
NEEDS: dict[str, list[str]] = {
    "pop": ["--pop-auth=/c"],
    "pop-auth": ["--pop"],
    **dict.fromkeys(("pop-port", "pop-by-name", "pop-no-delete"), _POP),
    "admin-terminate": ["--admin=1"],
    "server-auth-config": ["--server-auth=/c"],
    "client-auth-config": ["--client-auth=/c"],
    **{key: ["--forward-to=h:25"] for key in ("forward", "forward-on-disconnect", "client-filter")},
    **{key: ["--log"] for key in ("verbose", "debug")},
    **{key: ["--server-tls-certificate=/c"] for key in ("server-tls", "server-tls-connection")},
    "server-tls-certificate": ["--server-tls"],
    **dict.fromkeys(("server-tls-verify", "server-tls-required"), _SERVER_TLS),
    **{
        key: ["--client-tls"]
        for key in ("client-tls-certificate", "client-tls-verify", "client-tls-required")
    },
    "client-tls-verify-name": ["--client-tls", "--client-tls-verify=/c"],
    "dnsbl": ["--remote-clients"],
}


def needed(option: Option) -> list[str]:
    """Arguments an option needs alongside to pass the rules."""
    return NEEDS.get(option.name, [])


def as_lines(args: list[str]) -> str:
    """Command-line options as config-file lines."""
    return "".join(a[2:].replace("=", " ", 1) + "\n" for a in args)


def parse(*argv: str) -> Parsed:
    return parse_command_line(list(argv), app_dir=APP)


def write(tmp_path: Path, text: str, name: str = "emailrelay.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


UNIX_OPTIONS = list(ACCEPTED.values())  # (not the Windows-only ones: invalid options here)
VALUED = [o for o in UNIX_OPTIONS if o.metavar is not None]
MANDATORY_VALUE = [o for o in VALUED if not o.optional_value]
SHORT = [o for o in UNIX_OPTIONS if o.short and ACCEPTED_SHORT[o.short] is o]  # (-s: --delivery-dir)


def ids(option: Option) -> str:
    return option.name


# ---------------------------------------------------------------------------
# every option, every form


@pytest.mark.parametrize("option", UNIX_OPTIONS, ids=ids)
def test_long_form_with_equals(option: Option) -> None:
    arg = f"--{option.name}" if option.kind == "flag" else f"--{option.name}={sample(option)}"
    parsed = parse(arg, *needed(option))
    assert parsed.values[option.name] == expected(option)
    assert parsed.configs == {"": parsed.values}
    assert parsed.config_file is None and parsed.warnings == []


@pytest.mark.parametrize("option", MANDATORY_VALUE, ids=ids)
def test_long_form_with_separate_value(option: Option) -> None:
    assert parse(f"--{option.name}", sample(option), *needed(option)).values[option.name] == expected(option)


@pytest.mark.parametrize("option", SHORT, ids=ids)
def test_short_form(option: Option) -> None:
    if option.metavar is None or option.optional_value:
        forms = [[f"-{option.short}"]]
    else:
        forms = [[f"-{option.short}", sample(option)], [f"-{option.short}{sample(option)}"]]
    for form in forms:
        value = parse(*form, *needed(option)).values[option.name]
        # (E-MailRelay 2.6b's -A alone leaves --anonymous off: False, given but off)
        assert value == ((not option.short_is_off) if option.optional_value else expected(option))


@pytest.mark.parametrize("option", UNIX_OPTIONS, ids=ids)
def test_config_file_form(option: Option, tmp_path: Path) -> None:
    line = option.name if option.kind == "flag" else f"{option.name} {sample(option)}"
    path = write(tmp_path, f"{line}\n{as_lines(needed(option))}")
    parsed = parse(path)
    assert parsed.values[option.name] == expected(option)
    assert parsed.config_file == path


@pytest.mark.parametrize("option", [o for o in UNIX_OPTIONS if o.kind == "flag"], ids=ids)
def test_flag_rejects_a_value_other_than_yes_or_no(option: Option, tmp_path: Path) -> None:
    """In upstream's words, on the command line and in the config file alike."""
    message = f'^cannot give a value with "--{option.name}" \\(x\\)$'
    with pytest.raises(OptionError, match=message):
        parse(f"--{option.name}=x")
    with pytest.raises(OptionError, match=message):
        parse(write(tmp_path, f"\n{option.name} x\n"))


@pytest.mark.parametrize("option", MANDATORY_VALUE, ids=ids)
def test_value_required(option: Option, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=f'^no value supplied for "--{option.name}"$'):
        parse(f"--{option.name}")
    if option.short:
        with pytest.raises(OptionError, match=f"^no value supplied for -{option.short}$"):
            parse("-l", f"-{option.short}")
    for line in (option.name, f'{option.name} ""', f"{option.name}=", f"{option.name} = "):
        with pytest.raises(OptionError, match=f'^no value supplied for "--{option.name}"$'):
            parse(write(tmp_path, f"{line}\n"))


@pytest.mark.parametrize("option", [o for o in UNIX_OPTIONS if o.kind in ("int", "port")], ids=ids)
@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "", " 7", "٣"])
def test_int_options_must_be_decimal(option: Option, bad: str) -> None:
    with pytest.raises(UsageError, match=f"^--{option.name}: invalid number '{bad}'$"):
        parse(f"--{option.name}={bad}")


# ---------------------------------------------------------------------------
# command-line syntax


def test_grouped_short_flags() -> None:
    for argv in (["-dtF", "file"], ["-dtFfile"], ["-d", "-t", "-F", "file"]):
        values = parse(*argv, "-B").values
        assert values == {"as-server": True, "no-daemon": True, "pop-auth": "file", "pop": True}
    assert parse("-lvp25").values == {"log": True, "verbose": True, "port": "25"}
    assert parse("-lvp", "25", "-r").values == {
        "log": True,
        "verbose": True,
        "port": "25",
        "remote-clients": True,
    }


def test_a_separated_value_starting_with_a_dash() -> None:
    """Upstream's "probably a mistake" in the long form, the option named without a prefix; the
    short form and ``--name=-x`` take it."""
    assert parse("-N", "-x", "--pid-file=--x").values == {"log-file": "-x", "pid-file": "--x"}
    for argv, opt, value in [
        (["--as-client", "--no-daemon"], "--as-client", "--no-daemon"),
        (["--log-file", "-"], "--log-file", "-"),
        (["--in-spool-dir", "-x"], "--spool-dir", "-x"),
    ]:
        with pytest.raises(OptionError) as info:
            parse(*argv)
        assert (
            str(info.value)
            == f'"{opt} {value}" is probably a mistake, use "{opt}=... {value}" or "{opt}={value}"'
        )
    with pytest.raises(OptionError) as info:
        parse("--port", "--bogus", "--zz")  # the value is taken: --bogus is not reported
    assert str(info.value).splitlines() == [
        '"--port --bogus" is probably a mistake, use "--port=... --bogus" or "--port=--bogus"',
        'invalid option: "--zz"',
    ]


def test_optional_values(tmp_path: Path) -> None:
    assert parse("--anonymous").values == {"anonymous": True}
    assert parse("--anonymous=server,vrfy").values == {"anonymous": "server,vrfy"}
    assert parse("--syslog=local0", "-A").values == {"syslog": "local0", "anonymous": False}
    assert parse("-Ak").values == {"anonymous": False, "syslog": True}
    assert parse("--anonymous=").values == {"anonymous": ""}  # every scope, as --anonymous (config.py)
    # without "=" the next argument is not the option's value: here it is the config file
    path = write(tmp_path, "log\n")
    parsed = parse("--anonymous", path)
    assert parsed.values == {"anonymous": True, "log": True} and parsed.config_file == path
    path = write(tmp_path, "anonymous\nsyslog local1\n", "opt.conf")
    assert parse(path).values == {"anonymous": True, "syslog": "local1"}
    assert parse_config_file(path, app_dir=APP) == [("anonymous", None, 1), ("syslog", "local1", 2)]


def test_empty_values() -> None:
    assert parse("--localedir=").values == {"localedir": ""}
    with pytest.raises(UsageError, match=r"^--forward-to: empty address$"):
        parse("--forward-to=")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--xyz"], 'invalid option: "--xyz"'),
        (["--xyz=1"], 'invalid option: "--xyz"'),
        (["-P"], 'invalid option: "-P"'),
        (["-lP"], 'invalid option: "-P"'),
        (["--spool"], 'invalid option: "--spool"'),
        (["--hidden"], 'invalid option: "--hidden"'),  # Windows only: invalid on unix, as upstream's
        (["-tH"], 'invalid option: "-H"'),
        (["--show=tray"], 'invalid option: "--show"'),
        (
            ["--out-port=1"],
            "invalid option: \"--out-port\" (no '--out-spool-dir' declares a configuration 'out')",
        ),
        (["--port=70000"], "--port: invalid port number '70000'"),
        (["--retry=60,,300"], "--retry: invalid list of numbers '60,,300'"),
        (["--workers=smtp"], "--workers: invalid value 'smtp' (expected <name>=<number>,...)"),
        (["--notify=select"], "--notify: invalid value 'select' (expected inotify or poll)"),
        (["--port=25", "-p", "26"], 'duplicate use of "-p"'),
        (["--in-spool-dir=/a", "--in-port=1", "--in-port=2"], 'duplicate use of "--port"'),
        (  # every problem, sorted, as upstream reports them
            ["--zz", "--port=1", "--port=2", "--aa", "-P", "--pid-file"],
            'duplicate use of "--port"\ninvalid option: "--aa"\ninvalid option: "--zz"\n'
            'invalid option: "-P"\nno value supplied for "--pid-file"',
        ),
        (["--syslog", "--syslog=mail"], 'duplicate use of "--syslog"'),
        (["--anonymous", "--anonymous=vrfy"], 'duplicate use of "--anonymous"'),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(*argv)
    assert str(info.value) == message


def test_double_dash_ends_options(tmp_path: Path) -> None:
    path = write(tmp_path, "port 10025\n", "-weird.conf")
    parsed = parse("--log", "--", path)
    assert parsed.config_file == path
    assert parsed.values == {"log": True, "port": "10025"}


def test_repeatable_accumulates() -> None:
    values = parse("--interface", "127.0.0.1", "-I", "smtp=::1,pop=fd#3", "--interface=eth0").values
    assert values["interface"] == ["127.0.0.1", "smtp=::1,pop=fd#3", "eth0"]
    certs = parse(
        "--server-tls-certificate=@app/key.pem", "--server-tls-certificate=@app/cert.pem", "--server-tls"
    ).values
    assert certs["server-tls-certificate"] == [f"{APP}/key.pem", f"{APP}/cert.pem"]


def test_duplicates() -> None:
    assert parse("--port=25", "-p", "25", "-l", "--log", "-ll").values == {"port": "25", "log": True}
    assert parse("--syslog", "-k").values == {"syslog": True}
    first = parse("--pid-file=/a", "-i", "/b", "--pid-file=/a")  # upstream's one exception
    assert first.values == {"pid-file": "/a"} and first.warnings == [
        "more than one --pid-file: using the first"
    ]


def test_more_than_one_non_option_argument(tmp_path: Path) -> None:
    """Upstream reads the first as the config file, then refuses the rest as a usage error."""
    first, second = write(tmp_path, "log\n", "a.conf"), write(tmp_path, "log\n", "b.conf")
    for argv in ([first, second], [first, "--log"], ["--", first, str(tmp_path / "missing")]):
        with pytest.raises(OptionUsageError) as info:
            parse(*argv)
        assert str(info.value) == "too many non-option arguments"
        assert info.value.label == "usage error" and info.value.hint
    with pytest.raises(ConfigError, match="error reading configuration file"):
        parse(str(tmp_path / "missing"), first)


def test_app_substitution_only_in_paths() -> None:
    values = parse(
        "--spool-dir=@app/spool", "--filter=@app/f.sh", "--domain=@app", "--pid-file=@app/@app"
    ).values
    assert values == {
        "spool-dir": f"{APP}/spool",
        "filter": [f"{APP}/f.sh"],
        "domain": "@app",
        "pid-file": f"{APP}/{APP}",
    }


# ---------------------------------------------------------------------------
# config files


def test_config_file_syntax(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# emailrelay.conf\n"
        "log\n"
        "#verbose # commented out\n"
        "\n"
        "   \n"
        "spool-dir @app/spool   # trailing comment\n"
        "\tport\t10025\n"
        "interface smtp=fd#3\n"
        "filter /usr/local/my filters/f.sh\n"
        "poll=1110\n"
        "  remote-clients  \n",
    )
    assert parse_config_file(path, app_dir=APP) == [
        ("log", None, 2),
        ("spool-dir", f"{APP}/spool", 6),
        ("port", "10025", 7),
        ("interface", "smtp=fd#3", 8),
        ("filter", "/usr/local/my filters/f.sh", 9),
        ("poll", "1110", 10),
        ("remote-clients", None, 11),
    ]
    assert parse(path).values == {
        "log": True,
        "spool-dir": f"{APP}/spool",
        "port": "10025",
        "interface": ["smtp=fd#3"],
        "filter": ["/usr/local/my filters/f.sh"],
        "poll": "1110",
        "remote-clients": True,
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("log\n\nxyz 1\n", 'invalid option: "--xyz"'),
        (
            "out-port 25\n",
            """invalid option: "--out-port" (no '--out-spool-dir' declares a configuration 'out')""",
        ),
    ],
)
def test_config_file_unknown_options(tmp_path: Path, text: str, problem: str) -> None:
    """An unknown name in the config file is upstream's ``invalid option: "--name"``, as on the command
    line (tests/differential/test_cli_followup.py)."""
    path = write(tmp_path, text)
    with pytest.raises(OptionError) as info:
        parse(path)
    assert info.value.problems == [problem]
    with pytest.raises(OptionError) as info:
        parse_config_file(path, app_dir=APP)
    assert info.value.problems == [problem]


@pytest.mark.parametrize(("text", "message"), [("# c\nport x\n", ":2: option 'port': invalid number 'x'")])
def test_config_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse(path)
    assert str(info.value) == path + message
    assert info.value.path == path and info.value.line == int(message.split(":")[1])


#: (a config-file line, the value E-MailRelay 2.6b reads from it), as the oracle showed
CONFIG_VALUES = [
    ('spool-dir "/a b"', "/a b"),
    ('spool-dir  "/a b"  ', "/a b"),
    ("spool-dir '/a b'", "'/a b'"),  # single quotes stay
    ('spool-dir "/a" "b"', '/a" "b'),  # one enclosing pair goes
    ('spool-dir "/a b', '"/a b'),
    ('spool-dir "', '"'),
    ("spool-dir = /a", "/a"),
    ("spool-dir =/a", "/a"),
    ("spool-dir= /a", "/a"),
    ("spool-dir = = /a", "/a"),
    ("spool-dir\t=\t/a=b", "/a=b"),
    ("spool-dir /a # c", "/a"),  # ours: upstream keeps the comment (docs/decisions.md)
    ('spool-dir "/a # b"', "/a # b"),  # (not in a quoted value)
    ('spool-dir "/a b" # c', '"/a b" # c'),  # (as upstream)
    ("spool-dir /a   b", "/a   b"),
]


def test_config_file_values_as_upstream_reads_them(tmp_path: Path) -> None:
    got = [parse_config_file(write(tmp_path, f"{line}\n"), app_dir=APP) for line, _ in CONFIG_VALUES]
    assert got == [[("spool-dir", value, 1)] for _, value in CONFIG_VALUES]


def test_dashed_config_file_lines_are_ignored(tmp_path: Path) -> None:
    """As upstream: a line starting with "-" is no option and no error, whatever follows."""
    path = write(tmp_path, "--log\n-p 25\n--interface=127.0.0.1\n  --bogus x\n-x\nport 26\n")
    assert parse(path).values == {"port": "26"}
    assert parse_config_file(path, app_dir=APP) == [("port", "26", 6)]


@pytest.mark.parametrize("word", ["", "y", "Yes", "t", "TRUE", "1", "on", " yes "])
def test_a_flag_given_yes_is_on(word: str, tmp_path: Path) -> None:
    assert parse(f"--log={word}").values == {"log": True}
    path = write(tmp_path, f"log {word}\npop-by-name={word}\n")
    values = parse("--pop=y", "--pop-auth=/a", path).values
    assert values == {"log": True, "pop-by-name": True, "pop": True, "pop-auth": "/a"}


@pytest.mark.parametrize("word", ["n", "No", "f", "false", "0", "OFF", " no "])
def test_a_flag_given_no_is_off(word: str, tmp_path: Path) -> None:
    values = parse(f"--pop={word}", "--log").values
    assert values == {"pop": False, "log": True}  # off: the rules do not see it (--pop needs --pop-auth)
    assert parse(write(tmp_path, f"log\npop {word}\nverbose={word}\n")).get("verbose") is False
    with pytest.raises(OptionUsageError, match="the --verbose option must be used with --log"):
        parse(f"--log={word}", "--verbose")


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--pop", "--pop=no"], "log\n"),
        (["-B"], "pop no\n"),
        (["--pop=0"], "pop yes\n"),
        ([], "pop yes\npop off\n"),
    ],
)
def test_a_flag_on_and_off_is_conflicting(tmp_path: Path, argv: list[str], text: str) -> None:
    with pytest.raises(OptionError) as info:
        parse(*argv, write(tmp_path, text))
    assert str(info.value) == 'conflicting values: "--pop"' and info.value.hint


@pytest.mark.parametrize(
    "name", ["log-format", "dnsbl", "client-smtp-config", "server-smtp-config", "tls-config"]
)
def test_options_joined_with_commas(name: str, tmp_path: Path) -> None:
    """Given more than once (the command line's first), the values are joined with commas."""
    needs = NEEDS.get(name, [])
    assert parse(f"--{name}=a", f"--{name}", "b", *needs).values[name] == "a,b"
    assert parse(f"--{name}=a", *needs, write(tmp_path, f"{name} b\n{name} a\n")).values[name] == "a,b,a"


def test_localedir_first_use_on_the_command_line_is_not_compared(tmp_path: Path) -> None:
    assert parse("--localedir=/a", "--localedir=/b", "--localedir=/b").values == {"localedir": "/a"}
    assert parse("--localedir=/a", write(tmp_path, "localedir /b\n")).values == {"localedir": "/a"}
    for argv in (
        ["--localedir=/a", "--localedir=/b", "--localedir=/a"],
        ["--localedir=/a"] * 2 + ["--localedir=/b"],
    ):
        with pytest.raises(OptionError, match=r'^duplicate use of "--localedir"$'):
            parse(*argv)
    with pytest.raises(OptionError, match=r'^duplicate use of "--localedir"$'):
        parse(write(tmp_path, "localedir /a\nlocaledir /b\n", "twice.conf"))


HELP = {"help": True}
HELP_VERBOSE = {"help": True, "verbose": True}


@pytest.mark.parametrize(
    ("argv", "text", "values"),
    [
        (["--help", "--bogus"], None, HELP),
        (["--bogus", "-h", "--verbose"], None, HELP_VERBOSE),
        (["--help", "--port"], None, HELP),
        (["--help", "--as-client"], None, HELP),
        (["--help", "--as-client", "--no-daemon"], None, HELP),
        (["--help", "--pop=x", "--port=1", "--port=2", "--pop"], None, HELP),
        (["--help"], "bogus x\nverbose\n", HELP_VERBOSE),
        (["--help"], 'spool-dir ""\nport x\n', HELP),
        ([], "help\nbogus\n", HELP),
        (["--help", "--verbose"], "log\n", HELP_VERBOSE),
    ],
)
def test_help_wins_over_option_errors(
    tmp_path: Path, argv: list[str], text: str | None, values: dict[str, bool]
) -> None:
    files = [write(tmp_path, text)] * 2 if text is not None else []  # (a second file is an error too)
    assert parse(*argv, *files).values == values


def test_help_wins_over_nothing_else(tmp_path: Path) -> None:
    """Not when eaten as a value or turned off, nor over an unreadable config file, nor over a file
    that an invalid option on the command line keeps from being read."""
    with pytest.raises(OptionError, match="probably a mistake"):
        parse("--port", "--help")
    with pytest.raises(OptionError, match=r'^invalid option: "--bogus"$'):
        parse("--help=no", "--bogus")
    with pytest.raises(ConfigError, match="error reading configuration file"):
        parse("--help", str(tmp_path / "missing"))
    with pytest.raises(OptionError, match=r'^invalid option: "--bogus"$'):
        parse("--bogus", write(tmp_path, "help\n"))


def test_version_skips_the_value_checks_only() -> None:
    parsed = parse("--version", "--port=x", "--notify=select", "--as-client=a:1", "--forward-to=b:1")
    assert parsed.values["version"] is True and parsed.values["port"] == "x"
    for argv in (["--bogus"], ["--port"], ["--pop=x"], ["--port=1", "--port=2"]):
        with pytest.raises(OptionError):
            parse("--version", *argv)


def test_unreadable_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.conf")
    with pytest.raises(ConfigError) as info:  # upstream's words
        parse("--log", missing)
    assert str(info.value) == f"error reading configuration file: {missing}"
    with pytest.raises(ConfigError, match=r"^error reading configuration file: "):
        parse_config_file(str(tmp_path), app_dir=APP)  # a directory (ours: upstream reads it as empty)


def test_command_line_overrides_file(tmp_path: Path) -> None:
    """It no longer does (the name is the one docs/compatibility.md cites): as upstream, the file's
    options come after the command line's; the same value again is one use, a repeatable option's
    values accumulate (the command line's first), another value is refused (the next test)."""
    path = write(tmp_path, "port 25\nlog\ninterface a\ninterface b\nspool-dir /s\nsyslog\n")
    values = parse("--port=25", "-l", "-I", "c", "-k", path).values
    assert values == {
        "port": "25", "log": True, "interface": ["c", "a", "b"], "spool-dir": "/s", "syslog": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "text", "message"),
    [
        (["--port=2525"], "port 25\n", 'duplicate use of "--port"'),
        (["-p", "2525"], "port 25\n", 'duplicate use of "--port"'),  # the file's use is the second
        (["--syslog"], "syslog=mail\n", 'duplicate use of "--syslog"'),
        (["--syslog=user"], "syslog mail\n", 'duplicate use of "--syslog"'),
        (["--bogus", "--port=1"], "port 2\n", 'invalid option: "--bogus"'),  # the command line first
        ([], "port 25\nlog\nport 26\n", 'duplicate use of "--port"'),
        ([], "in-spool-dir /a\nin-port 25\nport 26\n", 'duplicate use of "--port"'),
        (["--in-port=26"], "in-spool-dir /a\nin-port 25\n", 'duplicate use of "--port"'),
        (["--port=26"], "in-spool-dir /a\nin-port 25\n", 'duplicate use of "--port"'),
    ],
)
def test_a_value_given_twice_with_the_config_file(
    tmp_path: Path, argv: list[str], text: str, message: str
) -> None:
    with pytest.raises(OptionError) as info:
        parse(*argv, write(tmp_path, text))
    assert str(info.value) == message and info.value.hint and info.value.label == "error"


def test_exact_duplicate_lines_are_accepted(tmp_path: Path) -> None:
    assert parse(write(tmp_path, "port 25\nport 25\nlog\nlog\n")).values == {"port": "25", "log": True}


# ---------------------------------------------------------------------------
# multiple configurations

GUIDE_EXAMPLE = """\
# emailrelay.conf
log
user root
# in...
in-spool-dir /var/spool/in
in-port 25
in-remote-clients
in-filter account:
in-domain example.com
# out...
out-spool-dir /var/spool/out
out-port 587
out-forward-on-disconnect
out-forward-to smtp.smarthost.com
"""


def test_multiple_configurations_from_the_guide(tmp_path: Path) -> None:
    parsed = parse(write(tmp_path, GUIDE_EXAMPLE))
    assert list(parsed.configs) == ["in", "out"]
    assert parsed.configs["in"] == {
        "log": True,
        "user": "root",
        "spool-dir": "/var/spool/in",
        "port": "25",
        "remote-clients": True,
        "filter": ["account:"],
        "domain": "example.com",
    }
    assert parsed.configs["out"] == {
        "spool-dir": "/var/spool/out",
        "port": "587",
        "forward-on-disconnect": True,
        "forward-to": "smtp.smarthost.com",
    }
    assert parsed.values == parsed.configs["in"]
    assert parsed.warnings == []


def test_multiple_configurations_with_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, GUIDE_EXAMPLE)
    parsed = parse("--out-port", "587", "--port=25", "--out-verbose", "--in-no-daemon", "-v", path)
    assert parsed.configs["out"]["port"] == "587"
    assert parsed.configs["in"]["port"] == "25"  # unprefixed: the first configuration
    assert parsed.values["no-daemon"] is True and parsed.values["verbose"] is True
    assert "verbose" not in parsed.configs["out"]
    assert parsed.warnings == []  # --out-verbose ignored silently, as E-MailRelay 2.6b


def test_configuration_declared_on_command_line_only() -> None:
    parsed = parse("--a-spool-dir=/a", "--b-spool-dir", "/b", "--b-port=2", "--port=1", "--b-log")
    assert parsed.configs == {"a": {"spool-dir": "/a", "port": "1"}, "b": {"spool-dir": "/b", "port": "2"}}
    assert parsed.warnings == []  # (--b-log: ignored silently)


def test_prefix_declared_on_command_line_used_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "x-port 10\n")
    assert parse("--x-spool-dir=/x", path).configs == {"x": {"spool-dir": "/x", "port": "10"}}
    assert parse_config_file(path, app_dir=APP, prefixes=["x"]) == [("x-port", "10", 1)]


def test_exact_option_name_wins_over_prefix() -> None:
    parsed = parse("--pop-spool-dir=/p", "--pop-port=1110", "--pop", "--pop-auth=/a")
    assert parsed.configs == {"pop": {"spool-dir": "/p", "pop-port": "1110", "pop": True, "pop-auth": "/a"}}


def test_rules_are_per_configuration() -> None:
    """Each configuration is checked with the process-wide options; upstream's text names no prefix."""
    parse("--a-spool-dir=/a", "--b-spool-dir=/b", "--a-forward-to-all", "--b-forward-to-some")
    parse("--a-spool-dir=/a", "--b-spool-dir=/b", "--log", "--verbose", "--b-port=2")
    with pytest.raises(
        OptionUsageError, match=r"^the --server-tls option requires --server-tls-certificate$"
    ):
        parse(
            "--a-spool-dir=/a",
            "--b-spool-dir=/b",
            "--server-tls-certificate=c",
            "--server-tls",
            "--b-server-tls",
        )


# ---------------------------------------------------------------------------
# upstream's rules, shorthands, defaults

# (options, E-MailRelay 2.6b's text), each as the oracle printed it (tests/differential/test_command_line.py
# compares the programs for many of them)
RULE_CASES = [
    (["--syslog=cron", "--pop"], "invalid --syslog facility: use 'mail', 'user', 'daemon', or 'local0' to 'local7'"),
    (["--pop", "--admin-terminate"], "the --pop option requires --pop-auth"),
    (["--pop-port=1", "--admin-terminate"], "pop options require --pop"),
    (["--pop-auth=/a"], "pop options require --pop"),
    (["--admin-terminate"], "the --admin-terminate option requires --admin"),
    (["--forward-to=a:1", "--as-proxy=b:1"], "--forward-to cannot be used with --as-client or --as-proxy"),
    (["--server-auth-config=x"], "the --server-auth-config option requires --server-auth"),
    (["--forward"], "--forward requires --forward-to"),
    (["--forward-on-disconnect"], "--forward-on-disconnect requires --forward-to"),
    (["--client-filter=f"], "--client-filter requires --forward-to"),
    (["--filter=f", "--port=1", "--as-client=a:1"], "the --filter option cannot be used with --as-client or --dont-serve"),
    (["--port=1", "--dont-serve"], "the --port option cannot be used with --as-client or --dont-serve"),
    (["--server-auth=/a", "--as-client=a:1"], "the --server-auth option cannot be used with --as-client or --dont-serve"),
    ([*_POP, "--as-client=a:1"], "the --pop option cannot be used with --as-client or --dont-serve"),
    (["--admin=1", "--admin-terminate", "--as-client=a:1"], "the --admin option cannot be used with --as-client or --dont-serve"),
    (["--filter=f", "--no-smtp"], "the --filter option cannot be used with --no-smtp"),
    (["--port=1", "--no-smtp"], "the --port option cannot be used with --no-smtp"),
    (["--server-auth=/a", "--no-smtp"], "the --server-auth option cannot be used with --no-smtp"),
    (["--client-auth-config=x"], "the --client-auth-config option requires --client-auth"),
    (["--verbose", "--log-file=/l"], "the --verbose option must be used with --log, --help, --as-client, --as-server or --as-proxy"),
    (["--debug"], "the --debug option requires --log, --as-client, --as-server or --as-proxy"),
    (["--server-tls", "--server-tls-connection"], "the --server-tls and --server-tls-connection options cannot be used together"),
    (["--client-tls", "--client-tls-connection", "--server-tls"], "the --client-tls and --client-tls-connection options cannot be used together"),
    (["--server-tls-certificate=/c", "--server-tls-required"], "the --server-tls options require either --server-tls or --server-tls-connection"),
    (["--server-tls-verify=/c", "--server-tls"], "the --server-tls option requires --server-tls-certificate"),
    (["--server-tls-connection"], "the --server-tls-connection option requires --server-tls-certificate"),
    (["--client-tls-required", "--server-tls-required"], "the --client-tls- options require --client-tls or --client-tls-connection"),
    (["--client-tls-verify-name=x", "--client-tls"], "the --client-tls-verify-name options requires --client-tls-verify"),
    ([*_SERVER_TLS, "--server-tls-certificate=/b", "--server-tls-certificate=/d"], "the --server-tls-certificate option cannot be used more than twice"),
    (["--client-tls", *["--client-tls-certificate=/c"] * 3], "the --client-tls-certificate option cannot be used more than twice"),
    (["--server-tls-required", "--dnsbl=x"], "--server-tls-required requires --server-tls or --server-tls-connection"),
    (["--dnsbl=x", "--domain="], "--dnsbl requires --remote-clients or -r"),
    (["--client-interface=1.2.3.4", "--as-client=/s", "--domain="], "the --client-interface option cannot be used with a unix-domain forwarding address"),
    (["--domain="], "the --domain value must not be empty"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), RULE_CASES)
def test_upstreams_rules_in_its_order(argv: list[str], message: str, tmp_path: Path) -> None:
    """The first broken rule, as a usage error without the --help line; the same from a config file;
    nothing with --help or --version."""
    with pytest.raises(OptionUsageError) as info:
        parse(*argv)
    assert str(info.value) == message and info.value.label == "usage error" and not info.value.hint
    if not any(a.endswith("=") for a in argv):  # (an empty value cannot be written in a config file)
        with pytest.raises(OptionUsageError, match=f"^{re.escape(message)}$"):
            parse(write(tmp_path, as_lines(argv)))
    parse(*argv, "--help")
    parse(*argv, "--version")


@pytest.mark.parametrize("option", ["server-tls", "server-tls-connection"])
def test_required_options(option: str) -> None:
    """``--server-tls`` and ``--server-tls-connection`` need ``--server-tls-certificate``."""
    with pytest.raises(OptionUsageError, match=f"^the --{option} option requires --server-tls-certificate$"):
        parse(f"--{option}")
    parse(f"--{option}", "--server-tls-certificate=cert.pem")
    parse(f"--{option}", "--version")


@pytest.mark.parametrize(
    "argv",
    [
        ["--as-client=a:1", "--as-server"],
        ["--as-proxy=a:1", "--as-server"],
        ["--forward-to-all", "--forward-to-some"],
        ["--poll=5"],
        ["--poll=0", "--forward-to=h:25"],  # upstream refuses it: ours on purpose (docs/decisions.md)
        ["--immediate"],
        ["--as-server", "-v", "--debug"],
        ["--client-tls-server-name=x"],
        ["--client-filter=f", "--as-client=a:1", "--forward"],
        ["--dnsbl=x", "-r"],
        ["--delivery-dir=/d"],
        [*_POP, "--no-smtp", "--pop-port=1"],
    ],
)
def test_what_upstream_accepts(argv: list[str]) -> None:
    parse(*argv)


def test_expand_shorthands() -> None:
    assert expand_shorthands({"as-client": "smarthost:25"}) == {
        "as-client": "smarthost:25",
        "log": True,
        "no-syslog": True,
        "no-daemon": True,
        "dont-serve": True,
        "forward": True,
        "forward-to": "smarthost:25",
    }
    assert expand_shorthands({"as-proxy": "h:25", "port": "587"}) == {
        "as-proxy": "h:25",
        "port": "587",
        "log": True,
        "close-stderr": True,
        "forward-on-disconnect": True,
        "forward-to": "h:25",
    }
    assert expand_shorthands({"as-server": True}) == {"as-server": True, "log": True, "close-stderr": True}
    assert expand_shorthands({"as-proxy": "h:25", "forward-to": "h:25"})["forward-to"] == "h:25"
    with pytest.raises(UsageError, match=r"^--as-proxy conflicts with --forward-to$"):
        expand_shorthands({"as-proxy": "h:25", "forward-to": "other:25"})
    values = {"log": True}
    assert expand_shorthands(values) == {"log": True} and expand_shorthands(values) is not values


def test_get_falls_back_on_defaults() -> None:
    parsed = parse("--port=10025", "--a-spool-dir=/a", "--b-spool-dir=/b", "--b-port=2")
    assert parsed.get("port") == "10025"
    assert parsed.get("port", config="b") == "2"
    assert parsed.get("pop-port") == "110"
    assert parsed.get("log") is False
    assert parsed.get("interface") == []
    assert parsed.get("admin") is None
    assert parsed.get("spool-dir") == "/a"
    with pytest.raises(KeyError):
        parsed.get("no-such-option")


# ---------------------------------------------------------------------------
# errors and robustness


def test_error_types() -> None:
    assert issubclass(UsageError, EmailRelayError) and UsageError("x").exit_code == 1
    assert BindError("x").exit_code == 2
    assert SpoolError("x").exit_code == 1
    assert str(ConfigError("bad", path="f.conf", line=3)) == "f.conf:3: bad"
    assert str(ConfigError("bad", path="f.conf")) == "f.conf: bad"
    assert str(ConfigError("bad")) == "bad"
    err = ConfigError("bad", path="f.conf", line=3)
    assert (err.text, err.path, err.line, err.exit_code) == ("bad", "f.conf", 3, 1)


ARG = st.one_of(
    st.sampled_from([f"--{o.name}" for o in UNIX_OPTIONS] + [f"-{o.short}" for o in UNIX_OPTIONS if o.short]),
    st.sampled_from(["--", "-", "=", "--in-spool-dir", "--in-port", "@app", "25", "x", ""]),
    st.text(alphabet="-=abcdelpsz0123456789@", max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ARG, max_size=8))
def test_arbitrary_argv_gives_parsed_or_a_usage_or_config_error(argv: list[str]) -> None:
    try:
        parsed = parse_command_line(argv, app_dir=APP)
    except (UsageError, ConfigError):
        return
    assert parsed.values == parsed.configs[next(iter(parsed.configs))]


def test_a_repeated_filter_option_is_a_chain_like_a_comma_list() -> None:
    from emailrelay.config import from_values

    repeated = from_values(expand_shorthands(parse("--filter", "spam-edit:127.0.0.1:783", "--filter", "deliver:",
                                                   "--client-filter", "mx:", "-Y", "exit:0", "-o", "h:25").values))  # fmt: skip
    listed = from_values(expand_shorthands(parse("--filter=spam-edit:127.0.0.1:783,deliver:",
                                                 "--client-filter=mx:,exit:0", "-o", "h:25").values))  # fmt: skip
    assert repeated.filters == listed.filters == ["spam-edit:127.0.0.1:783", "deliver:"]
    assert repeated.client_filters == listed.client_filters == ["mx:", "exit:0"]


@pytest.mark.parametrize(
    ("argv", "scopes"),
    [
        (["--anonymous"], {"vrfy", "server", "content", "client"}),
        (["--anonymous="], {"vrfy", "server", "content", "client"}),
        (["-A"], set()),  # E-MailRelay 2.6b's short form hides nothing
        (["-tA"], set()),
        (["--anonymous=vrfy,content"], {"vrfy", "content"}),
    ],
)
def test_anonymous_scopes_as_upstream(argv: list[str], scopes: set[str]) -> None:
    assert from_values(parse(*argv).values).anonymous == scopes
