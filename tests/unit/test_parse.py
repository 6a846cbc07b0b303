"""Command-line and config-file parsing (emailrelay.cli.parse), driven by the option table."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.cli.options import BY_NAME, OPTIONS, Option
from emailrelay.cli.parse import (
    EXCLUSIVE,
    REQUIRES,
    Parsed,
    expand_shorthands,
    parse_command_line,
    parse_config_file,
)
from emailrelay.errors import BindError, ConfigError, EmailRelayError, OptionError, SpoolError, UsageError

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
    return option.choices[-1] if option.choices else SAMPLE[option.kind]


def expected(option: Option) -> str | bool | list[str]:
    if option.kind == "flag":
        return True
    value = sample(option).replace("@app", APP)
    return [value] if option.repeatable else value


def needed(option: Option) -> list[str]:
    """Arguments an option needs alongside to pass the conflict rules."""
    return [f"--{b}=/c" for a, b in REQUIRES if a == option.name]


def parse(*argv: str) -> Parsed:
    return parse_command_line(list(argv), app_dir=APP)


def write(tmp_path: Path, text: str, name: str = "emailrelay.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


VALUED = [o for o in OPTIONS if o.metavar is not None]
MANDATORY_VALUE = [o for o in VALUED if not o.optional_value]
SHORT = [o for o in OPTIONS if o.short]


def ids(option: Option) -> str:
    return option.name


# ---------------------------------------------------------------------------
# every option, every form


@pytest.mark.parametrize("option", OPTIONS, ids=ids)
def test_long_form_with_equals(option: Option) -> None:
    arg = f"--{option.name}" if option.kind == "flag" else f"--{option.name}={sample(option)}"
    parsed = parse(arg, *needed(option))
    assert parsed.values[option.name] == expected(option)
    assert parsed.configs == {"": parsed.values}
    assert parsed.config_file is None and parsed.warnings == []


@pytest.mark.parametrize("option", MANDATORY_VALUE, ids=ids)
def test_long_form_with_separate_value(option: Option) -> None:
    assert parse(f"--{option.name}", sample(option)).values[option.name] == expected(option)


@pytest.mark.parametrize("option", SHORT, ids=ids)
def test_short_form(option: Option) -> None:
    if option.metavar is None or option.optional_value:
        forms = [[f"-{option.short}"]]
    else:
        forms = [[f"-{option.short}", sample(option)], [f"-{option.short}{sample(option)}"]]
    for form in forms:
        value = parse(*form, *needed(option)).values[option.name]
        assert value == (True if option.optional_value else expected(option))


@pytest.mark.parametrize("option", OPTIONS, ids=ids)
def test_config_file_form(option: Option, tmp_path: Path) -> None:
    line = option.name if option.kind == "flag" else f"{option.name} {sample(option)}"
    extra = "".join(f"{b} /c\n" for a, b in REQUIRES if a == option.name)
    path = write(tmp_path, f"{line}\n{extra}")
    parsed = parse(path)
    assert parsed.values[option.name] == expected(option)
    assert parsed.config_file == path


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.kind == "flag"], ids=ids)
def test_flag_rejects_value(option: Option, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"^--{option.name} does not take a value$"):
        parse(f"--{option.name}=x")
    path = write(tmp_path, f"\n{option.name} x\n")
    with pytest.raises(ConfigError, match=f":2: option '{option.name}' does not take a value$"):
        parse(path)


@pytest.mark.parametrize("option", MANDATORY_VALUE, ids=ids)
def test_value_required(option: Option, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=f'^no value supplied for "--{option.name}"$'):
        parse(f"--{option.name}")
    if option.short:
        with pytest.raises(OptionError, match=f"^no value supplied for -{option.short}$"):
            parse("-l", f"-{option.short}")
    with pytest.raises(ConfigError, match=f":1: option '{option.name}' requires a value$"):
        parse(write(tmp_path, f"{option.name}\n"))


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.kind in ("int", "port")], ids=ids)
@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "", " 7", "٣"])
def test_int_options_must_be_decimal(option: Option, bad: str) -> None:
    with pytest.raises(UsageError, match=f"^--{option.name}: invalid number '{bad}'$"):
        parse(f"--{option.name}={bad}")


# ---------------------------------------------------------------------------
# command-line syntax


def test_grouped_short_flags() -> None:
    for argv in (["-dtF", "file"], ["-dtFfile"], ["-d", "-t", "-F", "file"]):
        values = parse(*argv).values
        assert values == {"as-server": True, "no-daemon": True, "pop-auth": "file"}
    assert parse("-lvp25").values == {"log": True, "verbose": True, "port": "25"}
    assert parse("-lvp", "25", "-r").values == {
        "log": True,
        "verbose": True,
        "port": "25",
        "remote-clients": True,
    }


def test_value_may_look_like_an_option() -> None:
    assert parse("--log-file", "-x").values == {"log-file": "-x"}
    assert parse("-N--log").values == {"log-file": "--log"}


def test_optional_values(tmp_path: Path) -> None:
    assert parse("--anonymous").values == {"anonymous": True}
    assert parse("--anonymous=server,vrfy").values == {"anonymous": "server,vrfy"}
    assert parse("--syslog=local0", "-A").values == {"syslog": "local0", "anonymous": True}
    assert parse("-Ak").values == {"anonymous": True, "syslog": True}
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
        (["a.conf", "b.conf"], "unexpected argument 'b.conf' (the config file must be the last argument)"),
        (["a.conf", "--log"], "unexpected argument '--log' (the config file must be the last argument)"),
        (["--client-tls-certificate=a"] * 3, "--client-tls-certificate given more than 2 times"),
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
    certs = parse("--server-tls-certificate=@app/key.pem", "--server-tls-certificate=@app/cert.pem").values
    assert certs["server-tls-certificate"] == [f"{APP}/key.pem", f"{APP}/cert.pem"]


def test_duplicates() -> None:
    assert parse("--port=25", "-p", "25", "-l", "--log", "-ll").values == {"port": "25", "log": True}
    with pytest.raises(UsageError, match=r"^--anonymous given twice"):
        parse("--anonymous", "--anonymous=vrfy")


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
        "pop-port=1110\n"
        "  remote-clients  \n",
    )
    assert parse_config_file(path, app_dir=APP) == [
        ("log", None, 2),
        ("spool-dir", f"{APP}/spool", 6),
        ("port", "10025", 7),
        ("interface", "smtp=fd#3", 8),
        ("filter", "/usr/local/my filters/f.sh", 9),
        ("pop-port", "1110", 10),
        ("remote-clients", None, 11),
    ]
    assert parse(path).values == {
        "log": True,
        "spool-dir": f"{APP}/spool",
        "port": "10025",
        "interface": ["smtp=fd#3"],
        "filter": ["/usr/local/my filters/f.sh"],
        "pop-port": "1110",
        "remote-clients": True,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("log\n\nxyz 1\n", ":3: unknown option 'xyz'"),
        ("--port 25\n", ":1: unknown option '--port'"),
        (
            "out-port 25\n",
            ":1: unknown option 'out-port' (no '--out-spool-dir' declares a configuration 'out')",
        ),
        ("# c\nport x\n", ":2: option 'port': invalid number 'x'"),
        ("port 25\nlog\nport 26\n", ":3: option 'port' given twice with different values"),
        ("in-spool-dir /a\nin-port 25\nport 26\n", ":3: option 'port' given twice with different values"),
        (
            "server-tls-certificate a\nserver-tls-certificate b\nserver-tls-certificate c\n",
            ":3: option 'server-tls-certificate' given more than 2 times",
        ),
    ],
)
def test_config_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse(path)
    assert str(info.value) == path + message
    assert info.value.path == path and info.value.line == int(message.split(":")[1])


def test_unreadable_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.conf")
    with pytest.raises(ConfigError, match=r"missing\.conf: cannot read config file: No such file") as info:
        parse("--log", missing)
    assert info.value.path == missing and info.value.line is None
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse_config_file(str(tmp_path), app_dir=APP)


def test_command_line_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port 25\nlog\ninterface a\ninterface b\nspool-dir /s\n")
    values = parse("--port=2525", "-I", "c", path).values
    assert values == {"port": "2525", "log": True, "interface": ["c"], "spool-dir": "/s"}


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
    parsed = parse("--out-port", "2525", "--port=26", "--out-verbose", "--in-no-daemon", "-v", path)
    assert parsed.configs["out"]["port"] == "2525"
    assert parsed.configs["in"]["port"] == "26"  # unprefixed: the first configuration
    assert parsed.values["no-daemon"] is True and parsed.values["verbose"] is True
    assert "verbose" not in parsed.configs["out"]
    assert parsed.warnings == [
        "ignoring --out-verbose: process-wide options apply only to the first configuration ('in')"
    ]


def test_configuration_declared_on_command_line_only() -> None:
    parsed = parse("--a-spool-dir=/a", "--b-spool-dir", "/b", "--b-port=2", "--port=1", "--b-log")
    assert parsed.configs == {"a": {"spool-dir": "/a", "port": "1"}, "b": {"spool-dir": "/b", "port": "2"}}
    assert len(parsed.warnings) == 1


def test_prefix_declared_on_command_line_used_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "x-port 10\n")
    assert parse("--x-spool-dir=/x", path).configs == {"x": {"spool-dir": "/x", "port": "10"}}
    assert parse_config_file(path, app_dir=APP, prefixes=["x"]) == [("x-port", "10", 1)]


def test_exact_option_name_wins_over_prefix() -> None:
    parsed = parse("--pop-spool-dir=/p", "--pop-port=1110")
    assert parsed.configs == {"pop": {"spool-dir": "/p", "pop-port": "1110"}}


def test_conflicts_are_per_configuration() -> None:
    parse("--a-spool-dir=/a", "--b-spool-dir=/b", "--a-forward-to-all", "--b-forward-to-some")
    with pytest.raises(UsageError, match=r"^--b-server-tls requires --b-server-tls-certificate$"):
        parse(
            "--a-spool-dir=/a",
            "--b-spool-dir=/b",
            "--server-tls-certificate=c",
            "--server-tls",
            "--b-server-tls",
        )


# ---------------------------------------------------------------------------
# conflict rules, shorthands, defaults


@pytest.mark.parametrize(("a", "b"), EXCLUSIVE)
def test_exclusive_options(a: str, b: str) -> None:
    args = [f"--{n}" if BY_NAME[n].kind == "flag" else f"--{n}=h:25" for n in (a, b)]
    with pytest.raises(UsageError, match=f"^--{a} cannot be used with --{b}$"):
        parse(*args)
    assert parse(*args, "--help").values["help"] is True


@pytest.mark.parametrize(("a", "b"), REQUIRES)
def test_required_options(a: str, b: str) -> None:
    with pytest.raises(UsageError, match=f"^--{a} requires --{b}$"):
        parse(f"--{a}")
    parse(f"--{a}", f"--{b}=cert.pem")
    parse(f"--{a}", "--version")


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
    st.sampled_from([f"--{o.name}" for o in OPTIONS] + [f"-{o.short}" for o in OPTIONS if o.short]),
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
                                                   "--client-filter", "mx:", "-Y", "exit:0").values))  # fmt: skip
    listed = from_values(expand_shorthands(parse("--filter=spam-edit:127.0.0.1:783,deliver:",
                                                 "--client-filter=mx:,exit:0").values))  # fmt: skip
    assert repeated.filters == listed.filters == ["spam-edit:127.0.0.1:783", "deliver:"]
    assert repeated.client_filters == listed.client_filters == ["mx:", "exit:0"]
