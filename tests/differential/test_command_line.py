"""The command line against E-MailRelay 2.6b: options in the config file too, options that cannot go together, usage errors, flags given a value, config-file lines as upstream reads them, repeated options, --help and --version over errors, and emailrelay-submit's addresses and errors.

What it checks (issue 17): each case runs the same command line (and config
file) with our program and with the oracle's (``EMAILRELAY_ORACLE_BIN``;
skipped without it) and compares the exit code, stdout and stderr, with the
test's directory shown as ``BASE``.  A command line that both accept stops
at the missing spool directory, so nothing is left running and the texts
still compare; ``emailrelay-submit``'s spool files are compared byte for
byte (ids and dates normalised).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_spool, run

pytestmark = [needs_oracle, pytest.mark.timeout(120)]

#: What a start that passes every option check ends with: the spool directory is missing.
NO_SPOOL = "emailrelay: error: invalid spool directory: BASE/nowhere: no such file or directory\n"
TRY_LINE = '            try "emailrelay --help --verbose" for more information\n'


def _outcomes(
    tmp_path: Path, name: str, *args: str, config: str | None = None, input: bytes | None = None
) -> dict[str, tuple[int, str, str]]:
    """side -> (exit code, stdout, stderr) of ``name args`` run in a fresh directory ``BASE`` (where
    ``{base}`` in ``args`` and ``config`` points); ``config`` is written to ``BASE/relay.conf``."""
    base = daemon_base(tmp_path)
    if config is not None:
        (base / "relay.conf").write_text(config.format(base=base))
    out = {}
    for side in SIDES:
        r = run(side, name, *(a.format(base=base) for a in args), input=input, cwd=base)
        out[side] = (
            r.returncode,
            r.stdout.decode(errors="replace").replace(str(base), "BASE"),
            r.stderr.decode(errors="replace").replace(str(base), "BASE"),
        )
    return out


def _relay(tmp_path: Path, *args: str, config: str | None = None) -> dict[str, tuple[int, str, str]]:
    """:func:`_outcomes` of ``emailrelay --no-daemon --spool-dir BASE/nowhere args`` (plus
    ``BASE/relay.conf`` last when ``config`` is given)."""
    extra = ("{base}/relay.conf",) if config is not None else ()
    return _outcomes(
        tmp_path, "emailrelay", "--no-daemon", "--spool-dir", "{base}/nowhere", *args, *extra, config=config
    )


# ---- an option in the config file and on the command line ------------------------------------


@pytest.mark.parametrize(
    ("args", "config", "stderr"),
    [
        (("--log", "--port", "10026"), "port 10025\n", 'emailrelay: error: duplicate use of "--port"\n' + TRY_LINE),
        (("--log", "-p", "10026"), "port 10025\n", 'emailrelay: error: duplicate use of "--port"\n' + TRY_LINE),
        (("--log", "--port", "10025"), "port 10025\n", NO_SPOOL),
        (("--log", "-v"), "verbose\nlog\n", NO_SPOOL),
        (("--log", "--syslog"), "syslog=mail\n", 'emailrelay: error: duplicate use of "--syslog"\n' + TRY_LINE),
        (("--log", "--syslog=user"), "syslog mail\n", 'emailrelay: error: duplicate use of "--syslog"\n' + TRY_LINE),
        (("--log", "--syslog"), "syslog\n", NO_SPOOL),
        (("--log", "-r"), "port 1\nremote-clients\nport 2\n", 'emailrelay: error: duplicate use of "--port"\n' + TRY_LINE),
        (("--log", "--filter", "/bin/true"), "filter /bin/true\n", NO_SPOOL),
        (("--log", "--filter", "/bin/true"), "filter /bin/false\n", NO_SPOOL),
        (("--log", "--pid-file", "{base}/pid"), "pid-file {base}/other.pid\n",
         "emailrelay: warning: more than one --pid-file: using the first\n" + NO_SPOOL),
        (("--log", "--bogus", "-p", "1"), "port 2\n", 'emailrelay: error: invalid option: "--bogus"\n' + TRY_LINE),
    ],
    ids=["long", "short", "same-value", "flag", "no-value-and-value", "two-values", "optional-flag",
         "twice-in-the-file", "repeatable", "repeatable-other", "path", "bad-option-first"],
)  # fmt: skip
def test_an_option_in_the_config_file_and_on_the_command_line(
    tmp_path: Path, args: tuple[str, ...], config: str, stderr: str
) -> None:
    """As upstream: the file's options come after the command line's; a second use with another
    value is a duplicate (named ``--name``), the same value or a flag again is not."""
    got = _relay(tmp_path, *args, config=config)
    assert got["ours"] == got["upstream"] == (1, "", stderr)


# ---- options that cannot be used as given -----------------------------------------------------

RULES = [
    (("--log", "--pop"), "the --pop option requires --pop-auth"),
    (("--log", "--pop-port", "1"), "pop options require --pop"),
    (("--log", "--pop-auth", "/x"), "pop options require --pop"),
    (("--log", "--admin-terminate"), "the --admin-terminate option requires --admin"),
    (("--log", "--forward-to", "127.0.0.1:9", "--as-client", "127.0.0.1:8"),
     "--forward-to cannot be used with --as-client or --as-proxy"),
    (("--log", "--server-auth-config", "x"), "the --server-auth-config option requires --server-auth"),
    (("--log", "--forward"), "--forward requires --forward-to"),
    (("--log", "--forward-on-disconnect"), "--forward-on-disconnect requires --forward-to"),
    (("--log", "--client-filter", "/bin/true"), "--client-filter requires --forward-to"),
    (("--log", "--filter", "/bin/true", "--as-client", "127.0.0.1:9"),
     "the --filter option cannot be used with --as-client or --dont-serve"),
    (("--log", "--port", "1", "--as-client", "127.0.0.1:9"),
     "the --port option cannot be used with --as-client or --dont-serve"),
    (("--log", "--port", "1", "--dont-serve"), "the --port option cannot be used with --as-client or --dont-serve"),
    (("--log", "--server-auth", "/x", "--as-client", "127.0.0.1:9"),
     "the --server-auth option cannot be used with --as-client or --dont-serve"),
    (("--log", "--pop", "--pop-auth", "/x", "--dont-serve"),
     "the --pop option cannot be used with --as-client or --dont-serve"),
    (("--log", "--admin", "1", "--admin-terminate", "--as-client", "127.0.0.1:9"),
     "the --admin option cannot be used with --as-client or --dont-serve"),
    (("--log", "--filter", "/bin/true", "--no-smtp"), "the --filter option cannot be used with --no-smtp"),
    (("--log", "--port", "1", "--no-smtp"), "the --port option cannot be used with --no-smtp"),
    (("--log", "--server-auth", "/x", "--no-smtp"), "the --server-auth option cannot be used with --no-smtp"),
    (("--log", "--client-auth-config", "x"), "the --client-auth-config option requires --client-auth"),
    (("-v",), "the --verbose option must be used with --log, --help, --as-client, --as-server or --as-proxy"),
    (("-v", "--log-file", "{base}/log"),
     "the --verbose option must be used with --log, --help, --as-client, --as-server or --as-proxy"),
    (("--debug", "--pop"), "the --pop option requires --pop-auth"),
    (("--debug",), "the --debug option requires --log, --as-client, --as-server or --as-proxy"),
    (("--debug", "--log-file", "{base}/log"), "the --debug option requires --log, --as-client, --as-server or --as-proxy"),
    (("--log", "--server-tls", "--server-tls-connection", "--server-tls-certificate", "/x"),
     "the --server-tls and --server-tls-connection options cannot be used together"),
    (("--log", "--client-tls", "--client-tls-connection", "--server-tls"),
     "the --client-tls and --client-tls-connection options cannot be used together"),
    (("--log", "--server-tls-required", "--server-tls-certificate", "/x"),
     "the --server-tls options require either --server-tls or --server-tls-connection"),
    (("--log", "--server-tls", "--client-tls-verify", "/x"), "the --server-tls option requires --server-tls-certificate"),
    (("--log", "--server-tls-connection"), "the --server-tls-connection option requires --server-tls-certificate"),
    (("--log", "--client-tls-certificate", "/x"),
     "the --client-tls- options require --client-tls or --client-tls-connection"),
    (("--log", "--server-tls-required", "--client-tls-verify", "/x"),
     "the --client-tls- options require --client-tls or --client-tls-connection"),
    (("--log", "--client-tls-server-name", "x", "--client-tls-verify-name", "y"),
     "the --client-tls-verify-name options requires --client-tls-verify"),
    (("--log", "--server-tls", *("--server-tls-certificate", "/x") * 3),
     "the --server-tls-certificate option cannot be used more than twice"),
    (("--log", "--client-tls", *("--client-tls-certificate", "/x") * 3),
     "the --client-tls-certificate option cannot be used more than twice"),
    (("--log", "--server-tls-required"), "--server-tls-required requires --server-tls or --server-tls-connection"),
    (("--log", "--dnsbl", "x", "--syslog=foo"),
     "invalid --syslog facility: use 'mail', 'user', 'daemon', or 'local0' to 'local7'"),
    (("--log", "--syslog=cron"), "invalid --syslog facility: use 'mail', 'user', 'daemon', or 'local0' to 'local7'"),
    (("--log", "--syslog=MAIL"), "invalid --syslog facility: use 'mail', 'user', 'daemon', or 'local0' to 'local7'"),
    (("--log", "--dnsbl", "x"), "--dnsbl requires --remote-clients or -r"),
    (("--log", "--client-interface", "127.0.0.1", "--as-client", "/tmp/sock", "--domain="),
     "the --client-interface option cannot be used with a unix-domain forwarding address"),
    (("--log", "--domain="), "the --domain value must not be empty"),
    (("--in-spool-dir", "{base}/nowhere", "--log", "--in-dnsbl", "x"), "--dnsbl requires --remote-clients or -r"),
    (("--in-spool-dir", "{base}/nowhere", "--log", "--in-port", "1", "--in-as-client", "127.0.0.1:9"),
     "the --port option cannot be used with --as-client or --dont-serve"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "text"), RULES)
def test_options_upstream_refuses_together(tmp_path: Path, args: tuple[str, ...], text: str) -> None:
    """Exit 1 and one line, ``emailrelay: usage error: <text>`` (no ``try`` line), the first broken
    rule in upstream's order."""
    got = _relay(tmp_path, *args)
    assert got["ours"] == got["upstream"] == (1, "", f"emailrelay: usage error: {text}\n")


@pytest.mark.parametrize(
    "args",
    [
        ("--log", "--poll", "5"),
        ("--log", "--immediate"),
        ("--log", "--forward", "--as-client", "127.0.0.1:9"),
        ("--log", "--client-filter", "/bin/true", "--as-client", "127.0.0.1:9"),
        ("--log", "--as-client", "127.0.0.1:9", "--forward-to-all", "--forward-to-some"),
        ("--log", "--forward-to", "127.0.0.1:9", "--forward-to-all", "--forward-to-some"),
        ("--as-server", "-v"),
        ("--log", "--client-tls-server-name", "x"),
        ("--log", "--dnsbl", "x", "-r"),
        ("--log", "--delivery-dir", "{base}"),
        ("--log", "--pop", "--pop-auth", "/x", "--no-smtp", "--pop-port", "1"),
        ("--in-spool-dir", "{base}/nowhere", "--verbose", "--log"),
    ],
)
def test_options_upstream_accepts_together(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Both go on to the spool directory (missing) and say so alike."""
    got = _relay(tmp_path, *args)
    assert got["ours"] == got["upstream"] == (1, "", NO_SPOOL)


@pytest.mark.parametrize(
    ("config", "text"),
    [
        ("log\npop\n", "the --pop option requires --pop-auth"),
        ("log\nport 1\nas-client 127.0.0.1:9\n", "the --port option cannot be used with --as-client or --dont-serve"),
        ("verbose\n", "the --verbose option must be used with --log, --help, --as-client, --as-server or --as-proxy"),
    ],
)  # fmt: skip
def test_rules_apply_to_the_config_file(tmp_path: Path, config: str, text: str) -> None:
    got = _relay(tmp_path, config=config)
    assert got["ours"] == got["upstream"] == (1, "", f"emailrelay: usage error: {text}\n")


def test_poll_zero_is_ours_on_purpose(tmp_path: Path) -> None:
    """``--poll 0``: upstream refuses it, ours forwards as soon as a message is committed and rescans
    every second (docs/decisions.md, "Forwarding")."""
    got = _relay(tmp_path, "--log", "--poll", "0", "--forward-to", "127.0.0.1:9")
    assert got["upstream"] == (
        1,
        "",
        "emailrelay: usage error: invalid --poll period: try --forward-on-disconnect\n",
    )
    assert got["ours"] == (1, "", NO_SPOOL)


# ---- usage errors: prefix and lines -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (("--log", "{base}/relay.conf", "{base}/relay.conf"),
         "emailrelay: usage error: too many non-option arguments\n" + TRY_LINE),
        (("--log", "--", "{base}/relay.conf", "{base}/nothere"),
         "emailrelay: usage error: too many non-option arguments\n" + TRY_LINE),
        (("--log", "{base}/relay.conf", "-v"), "emailrelay: usage error: too many non-option arguments\n" + TRY_LINE),
        (("--log", "--admin-terminate", "{base}/relay.conf", "x"),
         "emailrelay: usage error: too many non-option arguments\n" + TRY_LINE),
        (("--bogus", "--pop"), 'emailrelay: error: invalid option: "--bogus"\n' + TRY_LINE),
        (("--log", "--log-file", "{base}/log", "--pop"), "emailrelay: usage error: the --pop option requires --pop-auth\n"),
    ],
    ids=["two-files", "after-double-dash", "option-after-file", "before-rules", "bad-option-first", "log-file"],
)  # fmt: skip
def test_usage_error_lines(tmp_path: Path, args: tuple[str, ...], stderr: str) -> None:
    """``usage error:`` for options that cannot be used as given (with upstream's ``try`` line only
    for too many arguments, which it finds once the config file is read), ``error:`` for options
    that cannot be read; stderr even with ``--log-file``, which stays empty."""
    got = _outcomes(
        tmp_path, "emailrelay", "--no-daemon", "--spool-dir", "{base}/nowhere", *args, config="log\n"
    )
    assert got["ours"] == got["upstream"] == (1, "", stderr)
    assert not (tmp_path / "daemon-base" / "log").exists()


def test_version_and_help_skip_the_rules(tmp_path: Path) -> None:
    """``--help --pop``, ``--version -v --pop``: exit 0 and the text on stdout, nothing on stderr."""
    for args in (("--help", "--pop"), ("--version", "-v", "--pop")):
        got = _relay(tmp_path, *args)
        for side in SIDES:
            code, stdout, stderr = got[side]
            assert code == 0 and stderr == "" and stdout.startswith("E-MailRelay V2.6"), (side, got[side])


# ---- emailrelay-submit ------------------------------------------------------------------------


def _submit(
    tmp_path: Path, *args: str, spool: str = "spool", input: bytes = b"Subject: s\r\n\r\nbody\r\n"
) -> dict[str, tuple[int, str, str, dict[str, bytes]]]:
    """side -> (exit code, stdout, stderr, normalised spool files) of ``emailrelay-submit
    --spool-dir <side>/SPOOL args`` run in ``BASE`` (``spool`` relative to ``<side>``)."""
    base = daemon_base(tmp_path)
    out = {}
    for side in SIDES:
        (base / side / "spool").mkdir(parents=True)
        (base / side / "file").write_text("")
        r = run(side, "emailrelay-submit", "--spool-dir", f"{side}/{spool}", *args, input=input, cwd=base)
        text = r.stderr.decode(errors="replace").replace(f"{side}/", "SIDE/")
        out[side] = (
            r.returncode,
            r.stdout.decode(errors="replace"),
            text,
            normalise_spool(base / side / "spool"),
        )
    return out  # fmt: skip


@pytest.mark.parametrize(
    ("args", "input"),
    [
        (("--from", "a@b.c"), b"Subject: no recipient\r\n\r\nbody\r\n"),
        (("--from", "a@b.c", "x y@z"), b"Subject: a space\r\n\r\nbody\r\n"),
        (("--from", "a b", "<x>", "a<b@c", "\u00fcb@c", " "), b"Subject: odd ones\r\n\r\nbody\r\n"),
        (("--from", ""), b"To: p@q\r\nSubject: from the headers\r\n\r\nbody\r\n"),
    ],
    ids=["no-recipient", "space", "odd-addresses", "empty-sender"],
)
def test_submit_writes_what_upstream_writes(tmp_path: Path, args: tuple[str, ...], input: bytes) -> None:
    """No recipient at all: a message with ``ToCount: 0``, exit 0; spaces, angle brackets and
    non-ASCII letters are taken as they are; the files are upstream's byte for byte."""
    got = _submit(tmp_path, *args, input=input)
    assert got["ours"] == got["upstream"]
    code, stdout, stderr, files = got["ours"]
    assert (code, stdout, stderr) == (0, "", "") and len(files) == 2


@pytest.mark.parametrize(
    ("args", "spool", "stderr"),
    [
        (("--from", "a@b.c", "x@y"), "nowhere", "invalid spool directory: SIDE/nowhere: no such file or directory"),
        (("--from", "a@b.c", "x@y"), "file", "invalid spool directory: SIDE/file: not a directory"),
        (("--from", "a@b.c", ""), "nowhere", "invalid spool directory: SIDE/nowhere: no such file or directory"),
        (("--from", "a@b.c", "x@y", ""), "spool", "invalid recipient address: []"),
        (("--from", "a@b.c", "a\tb\r\n"), "spool", "invalid recipient address: [a\\tb\\r\\n]"),
        (("--from", "a@b.c", "\x01x\x7f"), "spool", "invalid recipient address: [\\x01x\\x7f]"),
        (("--from", "a\tb", "x@y"), "spool", "invalid sender address: [a\\tb]"),
        (("--from", "a@b.c", "--input-file", "nothere", "x@y"), "spool", "cannot open input file [nothere]"),
    ],
    ids=["no-spool", "spool-is-a-file", "no-spool-first", "empty", "tab-cr-lf", "control", "sender", "input-file"],
)  # fmt: skip
def test_submit_errors_as_upstream(tmp_path: Path, args: tuple[str, ...], spool: str, stderr: str) -> None:
    """Exit 1, ``emailrelay-submit: <text>`` (no ``error:``), the address escaped, nothing written."""
    got = _submit(tmp_path, *args, spool=spool)
    assert got["ours"] == got["upstream"] == (1, "", f"emailrelay-submit: {stderr}\n", {})


# ---- flags with a value, config-file lines, repeated options, values that look like options ---

CANNOT_GIVE = 'emailrelay: error: cannot give a value with "--pop" (x)\n' + TRY_LINE
POP_NEEDS_AUTH = "emailrelay: usage error: the --pop option requires --pop-auth\n"


@pytest.mark.parametrize(
    ("args", "config", "stderr"),
    [
        (("--log=yes", "--pop=no"), None, NO_SPOOL),
        (("--log=0", "--log", "--pop=off"), None, 'emailrelay: error: conflicting values: "--log"\n' + TRY_LINE),
        (("--log", "--pop=TRUE"), None, POP_NEEDS_AUTH),
        (("--log", "--pop= on "), None, POP_NEEDS_AUTH),
        (("--log", "--pop="), None, POP_NEEDS_AUTH),
        (("--log", "--pop=x"), None, CANNOT_GIVE),
        (("-B",), "log yes\npop no\n", 'emailrelay: error: conflicting values: "--pop"\n' + TRY_LINE),
        ((), "log yes\nverbose no\npop f\n", NO_SPOOL),
        ((), "log y\npop x\n", CANNOT_GIVE),
    ],
    ids=["yes-no", "conflict", "true", "spaces", "empty", "bad-value", "file-conflict", "file", "file-bad-value"],
)  # fmt: skip
def test_flags_take_yes_and_no(
    tmp_path: Path, args: tuple[str, ...], config: str | None, stderr: str
) -> None:
    """``--log=yes``, ``pop no``: a yes or no word (any case) turns a flag on or off, anything else
    is upstream's ``cannot give a value``; on and off together are ``conflicting values``."""
    got = _relay(tmp_path, *args, config=config)
    assert got["ours"] == got["upstream"] == (1, "", stderr)


@pytest.mark.parametrize(
    "config",
    [
        'spool-dir "{base}/a b"\n',
        'spool-dir "{base}/a" "b"\n',
        "port = 23476\nspool-dir= {base}/x\n",
        "port =25\nspool-dir=={base}/x\n",
        'spool-dir "{base}/x # not a comment"\n',
        "--log\n-p 25\n--interface=127.0.0.1\n-x\n--bogus\nspool-dir\t{base}/x\n",
        'spool-dir ""\n',
        "spool-dir=\n",
        "spool-dir =\n",
    ],
    ids=["double-quotes", "inner-quotes", "equals", "equals-2", "quoted-hash", "dashed-lines",
         "empty-quotes", "empty", "empty-equals"],
)  # fmt: skip
def test_config_file_lines_as_upstream(tmp_path: Path, config: str) -> None:
    """Enclosing double quotes go, white space and ``=`` after the name go, a line starting with ``-``
    is ignored, an empty value is ``no value supplied``. (An unquoted ``spool-dir /x # c`` is ours
    on purpose: upstream keeps `` # c`` in the value, ours drops it as a comment.)"""
    base = daemon_base(tmp_path)
    (base / "relay.conf").write_text(config.format(base=base))
    got = {}
    for side in SIDES:
        r = run(side, "emailrelay", "--no-daemon", "--log", str(base / "relay.conf"), cwd=base)
        got[side] = (r.returncode, r.stdout, r.stderr.replace(str(base).encode(), b"BASE"))
    assert got["ours"] == got["upstream"]
    assert got["ours"][0] == 1 and got["ours"][2].startswith(b"emailrelay: error: ")


@pytest.mark.parametrize(
    ("args", "config"),
    [
        (("--log", "--log-format=address", "--log-format=port"), None),
        (("--log", "--log-format=port"), "log-format address\n"),
        (("--log", "-r", "--dnsbl=a", "--dnsbl", "b"), "dnsbl c\n"),
        (("--log", "-9", "x", "--tls-config=y"), None),
        (("--log", "--localedir=/a", "--localedir=/b", "--localedir=/b"), "localedir /b\n"),
        (("--log", "--client-smtp-config=pipelining", "--client-smtp-config=smtputf8strict"), None),
        (("--log", "--server-smtp-config=chunking", "-Z", "pipelining"), None),
    ],
    ids=["log-format", "log-format-file", "dnsbl", "tls-config", "localedir", "client-smtp-config",
         "server-smtp-config"],
)  # fmt: skip
def test_options_upstream_takes_more_than_once(
    tmp_path: Path, args: tuple[str, ...], config: str | None
) -> None:
    """Not ``duplicate use of``: upstream joins their values (with commas); ``--localedir``'s first
    use on the command line is not compared with the others."""
    got = _relay(tmp_path, *args, config=config)
    assert got["ours"] == got["upstream"] == (1, "", NO_SPOOL)


def test_localedir_is_a_duplicate_after_its_first_use(tmp_path: Path) -> None:
    """``--localedir``'s first use on the command line is not compared with the others: later ones
    (and the config file's) must agree among themselves."""
    duplicate = (1, "", 'emailrelay: error: duplicate use of "--localedir"\n' + TRY_LINE)
    cases = [
        (("--localedir=/a", "--localedir=/b", "--localedir=/b"), "localedir /b\n", (1, "", NO_SPOOL)),
        (("--localedir=/a",), "localedir /b\n", (1, "", NO_SPOOL)),
        (("--localedir=/a", "--localedir=/b", "--localedir=/a"), None, duplicate),
        (("--localedir=/a", "--localedir=/a", "--localedir=/b"), None, duplicate),
        (("--localedir=/a", "--localedir=/b"), "localedir /a\n", duplicate),
        ((), "localedir /a\nlocaledir /b\n", duplicate),
    ]
    for args, config, expected in cases:
        got = _relay(tmp_path, "--log", *args, config=config)
        assert got["ours"] == got["upstream"] == expected, (args, config)


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (("--as-client", "--no-daemon"),
         '"--as-client --no-daemon" is probably a mistake, use "--as-client=... --no-daemon" or "--as-client=--no-daemon"'),
        (("--log", "--forward-to", "-x"), '"--forward-to -x" is probably a mistake, use "--forward-to=... -x" or "--forward-to=-x"'),
        (("--log", "--pid-file", "--x"), '"--pid-file --x" is probably a mistake, use "--pid-file=... --x" or "--pid-file=--x"'),
        (("--log", "--port", "-1", "--bogus"),
         '"--port -1" is probably a mistake, use "--port=... -1" or "--port=-1"\n'
         'emailrelay: error: invalid option: "--bogus"'),
        (("--in-spool-dir", "-"), '"--spool-dir -" is probably a mistake, use "--spool-dir=... -" or "--spool-dir=-"'),
    ],
    ids=["as-client", "forward-to", "pid-file", "port-and-more", "prefixed"],
)  # fmt: skip
def test_a_separated_value_starting_with_a_dash(tmp_path: Path, args: tuple[str, ...], stderr: str) -> None:
    """Upstream's "probably a mistake" (the value is taken, the option named without a prefix); the
    short form and ``--name=-x`` take such a value."""
    got = _relay(tmp_path, *args)
    assert got["ours"] == got["upstream"] == (1, "", f"emailrelay: error: {stderr}\n" + TRY_LINE)
    got = _relay(tmp_path, "--log", "-N", "-x", "--pid-file=--x")
    assert got["ours"] == got["upstream"] == (1, "", NO_SPOOL)


@pytest.mark.parametrize(
    ("args", "config"),
    [
        (("--help", "--bogus"), None),
        (("--bogus", "--help"), None),
        (("--help", "--port"), None),
        (("--help", "--as-client"), None),
        (("--help", "--pop=x", "--port=1", "--port=2"), None),
        (("--help",), "bogus x\n"),
        (("--help",), 'spool-dir ""\n'),
        ((), "help\nbogus\n"),
        (("--version", "--help", "--bogus"), None),
    ],
    ids=["bogus-after", "bogus-before", "no-value", "no-value-as-client", "others", "file-bogus", "file-empty",
         "help-in-file", "version-too"],
)  # fmt: skip
def test_help_wins_over_option_errors(tmp_path: Path, args: tuple[str, ...], config: str | None) -> None:
    """Exit 0 and the help text, nothing on stderr, whatever else is wrong with the options."""
    got = _relay(tmp_path, *args, config=config)
    for side in SIDES:
        code, stdout, stderr = got[side]
        assert code == 0 and stderr == "" and stdout.startswith("E-MailRelay V2.6"), (side, got[side])
    assert ("--verbose" in got["ours"][1]) == ("--verbose" in got["upstream"][1])


def test_version_skips_only_the_value_checks(tmp_path: Path) -> None:
    """``--version`` prints the version despite bad values and rules, not despite options that cannot
    be read (nor does ``--help=no`` win)."""
    for args in (
        ("--version", "--port=x"),
        ("--version", "--port=70000", "--as-client=a:1", "--forward-to=b:1"),
    ):
        got = _relay(tmp_path, *args)
        for side in SIDES:
            code, stdout, stderr = got[side]
            assert code == 0 and stderr == "" and stdout.startswith("E-MailRelay V2.6"), (side, got[side])
    for args in (
        ("--version", "--bogus"),
        ("--version", "--port"),
        ("--version", "--pop=x"),
        ("--help=no", "--bogus"),
    ):
        got = _relay(tmp_path, *args)
        assert got["ours"] == got["upstream"] and got["ours"][0] == 1 and got["ours"][2].endswith(TRY_LINE), (
            args
        )
