"""Reference guide, options part 1 and 2 and "Configuration", row by row against E-MailRelay 2.6b.

What it is for (issue 17): docs/compatibility.md's rows for the command-line
options and the configuration file are graded against the oracle here. One
relay per side is started with the option as a user types it (short letters
included), one SMTP session is run, and the replies, the normalised log
lines, the spool files and the exit status on SIGTERM are compared; one-shot
command lines compare exit code and stderr. Where the two programs differ
and no docs/decisions.md entry says it is on purpose, the test asserts what
each side was seen to do, so a change on either side is noticed.
Skipped without ``EMAILRELAY_ORACLE_BIN``.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.certs import Certs
from tests.support.diff_guide import DIALOGUE, VERSION, both, exit_status, listening, readable_file, session
from tests.support.diff_smtp_server import DROP
from tests.support.fake_smtp import FakeSmtp
from tests.support.netns import PROBE
from tests.support.oracle import (
    SIDES,
    daemon_base,
    needs_oracle,
    normalise_log,
    normalise_spool,
    program,
    read_reply,
    run,
    smtp_dialogue,
    spool_dir,
    start,
)
from tests.support.relay import free_port, stop_process, wait_until

pytestmark = [needs_oracle, pytest.mark.timeout(120)]


# ---- options that change nothing else, or change the session the same way on both sides ----------

SAME = {
    "domain-short": ("-D", "shortname"),
    "domain-fqdn": ("--domain", "relay.example.com"),
    "anonymous-server": ("--anonymous=server",),
    "anonymous-content": ("--anonymous=content",),
    "anonymous-client": ("--anonymous=client",),
    "size-small": ("-M", "20"),
    "size-counts-received": ("-M", "60"),  # (the message alone is 21 octets: the Received line counts)
    "size-large": ("--size", "1000"),
    "smtp-config-chunking": ("-Z", "chunking"),
    "smtp-config-smtputf8": ("--server-smtp-config", "smtputf8"),
    "smtp-config-nostrictparsing": ("-Z", "nostrictparsing"),
    "smtp-config-pipelining": ("-Z", "pipelining"),
    "smtp-config-noalabels": ("-Z", "noalabels"),
    "smtp-config-unknown": ("-Z", "bogus"),
    "remote-clients": ("-r",),
    "idle-timeout": ("--idle-timeout", "5"),
    "prompt-timeout": ("-w", "3"),
    "filter-timeout": ("-W", "3"),
    "filter-exit-1": ("-z", "exit:1"),
    "filter-exit-100": ("--filter", "exit:100"),
    "client-smtp-config": ("-c", "bogus"),
    "response-timeout": ("-T", "5"),
    "connection-timeout": ("-U", "5"),
    "interface": ("-I", "127.0.0.1"),
    "interface-lo-ipv4": ("--interface", "lo-ipv4"),
    "localedir": ("--localedir", "/nonexistent"),
    "log-format-unit": ("--log-format=unit",),
    "log-address": ("--log-address",),
    "log-format-address": ("--log-format=address",),
    "log-format-time": ("--log-format=time",),
    # the user guide's "network" adds nothing, as an unknown word (issue 17 aligned ours)
    "log-format-network": ("--log-format=network",),
    "log-format-unknown": ("--log-format=bogus",),
    # the port alone, "N: " (issue 17 aligned ours)
    "log-format-port": ("--log-format=port",),
    # no message id on the SMTP server session's lines (issue 17 aligned ours)
    "log-format-msgid": ("--log-format=msgid",),
    "log-time": ("-L",),
    "no-syslog": ("-n",),
    "syslog-facility": ("--syslog=local0",),
    "syslog-short": ("-k",),
    "anonymous-content-client": ("--anonymous=content,client",),
    # -A alone hides nothing, --anonymous and --anonymous= every scope, and a VRFY is logged with the
    # vrfy scope too (issue 17 aligned ours)
    "anonymous-short-alone": ("-A",),
    "anonymous-short-grouped": ("-nA",),
    "anonymous-alone": ("--anonymous",),
    "anonymous-empty": ("--anonymous=",),
    "anonymous-vrfy": ("--anonymous=vrfy",),
    "anonymous-list-vrfy": ("--anonymous=vrfy,content",),
    "tls-config-mbedtls": ("--tls-config", "mbedtls"),
    "delivery-dir": ("--delivery-dir", "/nonexistent"),
}


@pytest.mark.parametrize("args", list(SAME.values()), ids=list(SAME))
def test_option_gives_the_same_session(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The same replies, log lines, spool files and SIGTERM status with the option on both sides."""
    got = both(tmp_path, args)
    ours, upstream = got["ours"], got["upstream"]
    assert ours.replies == upstream.replies
    assert ours.log == upstream.log, "\n".join(["ours:", *ours.log, "upstream:", *upstream.log])
    assert ours.spool == upstream.spool
    assert ours.rc == upstream.rc
    assert len(ours.replies) == len(DIALOGUE) + 1


# ---- options whose session differs: what each side was seen to do --------------------------------

DIFFERS = {
    # --debug: upstream's build has debug logging and names the class on every line; ours does not
    "debug": (("-g",), 'emailrelay: info: GSmtp::ServerProtocol: rx<<: "QUIT"', 'emailrelay: info: rx<<: "QUIT"'),
}  # fmt: skip


@pytest.mark.parametrize(("args", "upstream_only", "ours_only"), list(DIFFERS.values()), ids=list(DIFFERS))
def test_option_session_differs(
    tmp_path: Path, args: tuple[str, ...], upstream_only: str | None, ours_only: str | None
) -> None:
    """Each side's session (replies and log joined) holds its own text and not the other's."""
    got = both(tmp_path, args)
    text = {side: "\n".join(got[side].replies + got[side].log) for side in SIDES}
    for side, mine, theirs in (("upstream", upstream_only, ours_only), ("ours", ours_only, upstream_only)):
        if mine is not None:
            assert mine in text[side], (side, text[side])
        if theirs is not None:
            assert theirs not in text[side], (side, text[side])
    assert got["ours"].rc == got["upstream"].rc


@pytest.mark.parametrize("anonymous", [False, True], ids=["received", "anonymous-content"])
@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_size_counts_the_received_line_as_upstream(tmp_path: Path, chunking: bool, anonymous: bool) -> None:
    """``--size``: E-MailRelay 2.6b counts the ``Received`` line it adds, and a stored size equal to
    the limit is refused. Each side stores the message once without a limit (size S, the line
    included unless ``--anonymous=content``), then ``-M S`` gets 552 and ``-M S+1`` 250, over DATA
    and over BDAT (issue 17 aligned ours, which counted the client's octets only)."""
    base = daemon_base(tmp_path)
    extra = [*(["-Z", "chunking"] if chunking else []), *(["--anonymous=content"] if anonymous else [])]
    text = "Subject: hi\r\n\r\nbody"  # 21 octets once stored
    data = [f"BDAT 21 LAST\r\n{text}"] if chunking else ["DATA", f"{text}\r\n."]
    dialogue = ["EHLO c.example", "MAIL FROM:<a@b.c>", "RCPT TO:<x@y.z>", *data, "QUIT"]
    got = {}
    for side in SIDES:

        def outcome(limit: int, side: str = side) -> tuple[str, list[int]]:
            with start(
                side, base, *extra, *(["-M", str(limit)] if limit else []), name=f"{side}-{limit}"
            ) as d:
                reply = smtp_dialogue(d.port, dialogue)[-2]
                wait_until(lambda: "smtp connection closed" in d.log(), 10)
                return reply, sorted(p.stat().st_size for p in d.spool.glob("*.content"))

        reply, (stored,) = outcome(0)
        assert reply == "250 message processed"
        got[side] = (stored, outcome(stored), outcome(stored + 1))
    assert got["ours"] == got["upstream"]
    stored = got["ours"][0]
    assert (stored == 21) == anonymous
    assert got["ours"][1:] == (
        ("552 message size exceeds fixed maximum message size", []),
        ("250 message processed", [stored]),
    )


UTF8_DIALOGUE = (
    "EHLO c.example", "MAIL FROM:<jörg@b.c>", "RCPT TO:<x@y.z>", "RSET", "MAIL FROM:<a@b.c> SMTPUTF8",
    "RCPT TO:<ü@y.z>", "DATA", "Subject: hi\r\n\r\nbody\r\n.", "MAIL FROM:<a@b.c>", "RCPT TO:<ü@y.z>",
    "RSET", "MAIL FROM:<jörg@b.c> SMTPUTF8", "RCPT TO:<ü@y.z>", "DATA", "Subject: two\r\n\r\nbody\r\n.", "QUIT",
)  # fmt: skip


@pytest.mark.parametrize("config", ["smtputf8strict", "smtputf8,smtputf8strict", "smtputf8", "chunking"])
def test_smtputf8strict_session_as_upstream(tmp_path: Path, config: str) -> None:
    """``-Z smtputf8strict`` (alone it does not offer SMTPUTF8 but honours MAIL's parameter): the
    same EHLO reply, refusals of non-ASCII addresses without ``SMTPUTF8`` (upstream's words, its
    ``smptutf8`` typo too), log lines and stored envelopes (issue 17 aligned ours)."""
    got = both(tmp_path, ("-Z", config), UTF8_DIALOGUE)
    ours, upstream = got["ours"], got["upstream"]
    assert ours.replies == upstream.replies
    assert ours.log == upstream.log, "\n".join(["ours:", *ours.log, "upstream:", *upstream.log])
    assert ours.spool == upstream.spool and len(ours.spool) == 2  # (the last message: both have one id)
    assert ours.replies.count("250 message processed") == 2
    strict = "strict" in config
    assert ("SMTPUTF8" in ours.replies[1]) == (config != "smtputf8strict" and "smtputf8" in config)
    assert ours.replies[2].startswith("553 mailbox name not allowed: ") == strict


def test_short_s_is_delivery_dir_upstream(tmp_path: Path) -> None:
    """E-MailRelay 2.6b's ``--help`` gives ``-s`` to both ``--spool-dir`` and ``--delivery-dir`` and
    takes it as ``--delivery-dir`` (issue 17 aligned ours). With ``--spool-dir A -s B`` both serve
    and store the message in A."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        other = spool_dir(base / f"other-{side}")
        seen = session(base, side, ["-s", str(other)])
        got[side] = (seen, sorted(seen.spool), sorted(normalise_spool(other)))
    assert got["ours"] == got["upstream"]
    upstream, up_spool, up_other = got["upstream"]
    assert "250 message processed" in upstream.replies and upstream.rc == 143
    assert (up_spool, up_other) == (["emailrelay.ID.content", "emailrelay.ID.envelope"], [])


# ---- command lines that end at once ---------------------------------------------------------------

TRY = '            try "emailrelay --help --verbose" for more information\n'
PORT_USAGE = "emailrelay: usage error: the --port option cannot be used with --as-client or --dont-serve\n"
ONE_SHOT_SAME = {
    "as-client-with-port": (("--as-client", "127.0.0.1:1", "--port", "1"), 1, PORT_USAGE),
    "dont-serve-with-port": (("-x", "--port", "1"), 1, PORT_USAGE),
    # a link-local address without a zone cannot be bound: upstream's words (issue 17 aligned ours)
    "interface-link-local": (("--interface", "fe80::1"), 2, "emailrelay: error: socket bind error: invalid argument\n"),
    "syslog-bad-facility": (
        ("--syslog=bogus",), 1,
        "emailrelay: usage error: invalid --syslog facility: use 'mail', 'user', 'daemon', or 'local0' to 'local7'\n",
    ),
    "server-tls-without-certificate": (
        ("--server-tls",), 1, "emailrelay: usage error: the --server-tls option requires --server-tls-certificate\n",
    ),
    "two-config-files": (("{base}/a.conf", "{base}/b.conf"), 1, "emailrelay: usage error: too many non-option arguments\n" + TRY),
    "argument-after-config-file": (
        ("{base}/a.conf", "--port", "10025"), 1, "emailrelay: usage error: too many non-option arguments\n" + TRY,
    ),
    "debug-without-log": (
        ("--debug", "-x"), 1, "emailrelay: usage error: the --debug option requires --log, --as-client, --as-server or --as-proxy\n",
    ),
    "config-file-and-command-line": (
        ("--domain", "b.example", "{base}/a.conf"), 1, 'emailrelay: error: duplicate use of "--domain"\n' + TRY,
    ),
    # --dont-serve / --no-smtp with nothing else to do: both say so and exit 0 (issue 17 aligned ours)
    "dont-serve-alone": (("--dont-serve",), 0, "emailrelay: nothing to do\n"),
    # only the pid file's own directory is made (issue 17 aligned ours)
    "pid-file-two-new-directories": (
        ("--pid-file", "{base}/new/new/pid"), 1,
        "emailrelay: error: invalid pid file: cannot create file: BASE/new/new/pid: no such file or directory\n",
    ),
    # Windows-only options: invalid in upstream's unix build, and in ours (issue 17 aligned ours)
    "hidden": (("--hidden", "--as-client", "127.0.0.1:1"), 1, 'emailrelay: error: invalid option: "--hidden"\n' + TRY),
    "hidden-short": (("-H", "--as-client", "127.0.0.1:1"), 1, 'emailrelay: error: invalid option: "-H"\n' + TRY),
    "show": (("--show", "hidden", "--as-client", "127.0.0.1:1"), 1, 'emailrelay: error: invalid option: "--show"\n' + TRY),
    "no-smtp-alone": (("-X",), 0, "emailrelay: nothing to do\n"),
    # -s is --delivery-dir: after --delivery-dir it is a duplicate (issue 17 aligned ours)
    "short-s-after-delivery-dir": (
        ("--delivery-dir", "{base}/spool", "-s", "{base}", "--as-client", "127.0.0.1:1"), 1,
        'emailrelay: error: duplicate use of "-s"\n' + TRY,
    ),
    # any --log-format value is taken, an unknown word silently (issue 17 aligned ours)
    "log-format-unknown": (("--log-format=bogus,time", "--as-client", "127.0.0.1:1"), 0, "emailrelay: no messages to send\n"),
    "no-smtp-forward-to-alone": (("-X", "--forward-to", "127.0.0.1:1"), 0, "emailrelay: nothing to do\n"),
    # the built-in verifier as a filter is a program path (the guide's "in-filter account:"): both warn
    # that it does not exist and serve (issue 17 aligned ours)
    "filter-account": (("--filter", "account:"), None, ""),
}  # fmt: skip
ONE_SHOT_DIFFERS = {
    # an unknown interface name: upstream warns and serves on the "any" address; ours refuses
    "interface-unknown-name": (("--interface", "nosuchif0"), None, 1),
}  # fmt: skip


def _one_shot(tmp_path: Path, args: Sequence[str]) -> dict[str, tuple[int | None, str]]:
    """side -> (exit code, or None if still running after 3 s; stderr) of ``emailrelay args``."""
    base = daemon_base(tmp_path)
    (base / "spool").mkdir()
    (base / "a.conf").write_text("domain a.example\n")
    (base / "b.conf").write_text("log\n")
    out: dict[str, tuple[int | None, str]] = {}
    for side in SIDES:
        argv = ["--no-daemon", "--no-syslog", "--spool-dir", f"{base}/spool", "--port", "0"]
        if any(a in ("-x", "--dont-serve", "--as-client", "-X") for a in args):
            argv = argv[:-2]
        argv += [a.format(base=base) for a in args]
        proc = subprocess.Popen(
            [program(side), *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=base
        )  # fmt: skip
        try:
            _, err = proc.communicate(timeout=3)
            out[side] = (proc.returncode, err.decode(errors="replace").replace(str(base), "BASE"))
        except subprocess.TimeoutExpired:  # still running: that is the answer
            stop_process(proc)
            out[side] = (None, "")
    return out


@pytest.mark.parametrize(("args", "code", "stderr"), list(ONE_SHOT_SAME.values()), ids=list(ONE_SHOT_SAME))
def test_command_line_ends_the_same(tmp_path: Path, args: tuple[str, ...], code: int, stderr: str) -> None:
    got = _one_shot(tmp_path, args)
    assert got["ours"] == got["upstream"] == (code, stderr)


@pytest.mark.parametrize(
    ("args", "upstream", "ours_code"), list(ONE_SHOT_DIFFERS.values()), ids=list(ONE_SHOT_DIFFERS)
)
def test_command_line_differs(
    tmp_path: Path, args: tuple[str, ...], upstream: tuple[int, str] | None, ours_code: int | None
) -> None:
    """Upstream's exit code and stderr (None: still running) against our exit code."""
    got = _one_shot(tmp_path, args)
    if upstream is None:
        assert got["upstream"][0] is None, got["upstream"]
    else:
        assert got["upstream"] == upstream
    assert got["ours"][0] == ours_code, got["ours"]


# ---- the configuration file examples ---------------------------------------------------------------

GUIDE_EXAMPLE = "# emailrelay.conf\nlog\n#verbose # commented out\nspool-dir {spool}\nport {port}\n"
TWO_INSTANCES = (
    "user root\nlog\n# in...\nin-spool-dir {spool}/in\nin-port {port}\nin-remote-clients\n"
    "in-address-verifier account:\nin-domain example.com\n# out...\nout-spool-dir {spool}/out\n"
    "out-port {port2}\nout-forward-on-disconnect\nout-forward-to 127.0.0.1:{hop}\nout-verbose\nout-log\n"
)
_RECEIVED_DATE = re.compile(rb"; [^\r\n]*\r\n")
OUT_DIALOGUE = ("EHLO c.example", "MAIL FROM:<a@b.c>", "RCPT TO:<x@y.z>", "DATA", "Subject: out\r\n\r\nbody\r\n.", "QUIT")  # fmt: skip
# a local account in the verifier's default uid range (1000 and up), root, and no account at all
_LOCAL = next((p.pw_name for p in pwd.getpwall() if 1000 <= p.pw_uid < 65534), "nobody-here")
IN_DIALOGUE = (
    "EHLO c.example", "MAIL FROM:<a@b.c>", f"RCPT TO:<{_LOCAL}@example.com>", "RCPT TO:<root@example.com>",
    "RCPT TO:<nobody-here@example.com>", "QUIT",
)  # fmt: skip


def _with_file(
    base: Path, side: str, text: str, hop: int
) -> tuple[list[list[str]], list[str], dict[str, dict[str, bytes]], int | None]:
    """Run ``side`` with only ``--no-daemon --no-syslog`` and a configuration file made from ``text``:
    (replies of the sessions on the first and second port, log, spool files per directory, status)."""
    home = base / side
    spool = home / "spool"
    for sub in ("", "in", "out"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
        (spool / sub).chmod(0o777)
    ports = [free_port(), free_port()]
    conf = home / "emailrelay.conf"
    conf.write_text(text.format(spool=spool, port=ports[0], port2=ports[1], hop=hop))
    log = home / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [program(side), "--no-daemon", "--no-syslog", str(conf)], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=home,
        )  # fmt: skip
    try:
        wanted = ports if "port2" in text else ports[:1]
        assert wait_until(lambda: all(listening(p) for p in wanted) or proc.poll() is not None, 20)
        replies = [smtp_dialogue(ports[0], IN_DIALOGUE if "in-port" in text else OUT_DIALOGUE)]
        if len(wanted) == 2:
            replies.append(smtp_dialogue(ports[1], OUT_DIALOGUE))
        wait_until(lambda: log.read_text().count("smtp connection closed") >= len(wanted), 10)
        wait_until(lambda: "port2" not in text or not any((spool / "out").iterdir()), 15)
    finally:
        rc = exit_status(stop_process(proc))
    lines = normalise_log(log.read_text(errors="replace"), ports=[*ports, hop], drop=DROP)
    lines = [VERSION.sub(" VERSION -- ", x.replace(str(base), "BASE")) for x in lines]
    replies = [[VERSION.sub(" VERSION -- ", r) for r in session] for session in replies]
    return replies, lines, {sub: normalise_spool(spool / sub) for sub in ("", "in", "out")}, rc


def _examples(tmp_path: Path, text: str) -> tuple[dict, dict[str, list[bytes]]]:
    base = daemon_base(tmp_path)
    got, received = {}, {}
    for side in SIDES:
        with FakeSmtp() as hop:
            got[side] = _with_file(base, side, text, hop.port)
            received[side] = [_RECEIVED_DATE.sub(b"; DATE\r\n", m.data, count=1) for m in hop.messages]
    return got, received


def test_configuration_file_guide_example(tmp_path: Path) -> None:
    """The reference guide's first configuration file (directory and port made temporary): the
    same replies, log lines, spool files and status on SIGTERM."""
    text = GUIDE_EXAMPLE
    got, received = _examples(tmp_path, text)
    assert got["ours"][1] == got["upstream"][1], "\n".join(
        ["ours:", *got["ours"][1], "upstream:", *got["upstream"][1]]
    )
    assert got["ours"][0] == got["upstream"][0]
    assert got["ours"][2:] == got["upstream"][2:]
    assert received["ours"] == received["upstream"]
    assert len(received["ours"]) == (1 if "port2" in text else 0)


def test_configuration_file_two_instances(tmp_path: Path) -> None:
    """The guide's ``in``/``out`` example (the smarthost a local test server, ``in-address-verifier
    account:`` for the guide's ``in-filter account:``, plus ``out-verbose`` and ``out-log``): the
    sessions, the spools, what the smarthost got and the log lines are the same: ``[in] `` / ``[out] ``
    on the start-up lines, out-verbose and out-log ignored silently (issue 17 aligned ours)."""
    got, received = _examples(tmp_path, TWO_INSTANCES)
    (ours_replies, ours_log, ours_spool, ours_rc), (up_replies, up_log, up_spool, up_rc) = (
        got["ours"],
        got["upstream"],
    )
    assert ours_replies[1] == up_replies[1] and ours_replies[1][-2] == "250 message processed"
    assert received["ours"] == received["upstream"] and len(received["ours"]) == 1
    assert ours_spool == up_spool and ours_rc == up_rc
    # the account: verifier: the same local account accepted, the same refusals
    assert ours_replies[0] == up_replies[0] and ours_replies[0][3].startswith("250 ")
    assert [r[:4] for r in ours_replies[0][4:6]] == ["550 ", "550 "]
    # the log has the same lines (compared sorted: the two sessions' and the forwarding's lines
    # interleave differently from run to run)
    assert sorted(up_log) == sorted(ours_log), "\n".join(["ours:", *ours_log, "upstream:", *up_log])
    assert "emailrelay: info: [in] smtp server on 0.0.0.0:PORT" in ours_log
    assert not any("ignoring" in x for x in ours_log)


# ---- --log-file with %d, --pid-file in a directory to be made ----------------------------------------


def test_log_file_day_name_and_the_last_words_of_as_client(tmp_path: Path) -> None:
    """``--log-file <dir>/log-%d`` with ``--as-client`` over an empty spool: both name the file by
    today's date and exit 0, print ``no messages to send`` on stderr and leave the file empty
    (issue 17 aligned ours)."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        home = base / side
        spool = home / "spool"
        spool.mkdir(parents=True)
        r = run(
            side,
            "emailrelay",
            "--as-client",
            "127.0.0.1:1",
            "--spool-dir",
            str(spool),
            "--log-file",
            f"{home}/log-%d",
        )
        files = {p.name: p.read_text() for p in home.glob("log-*")}
        got[side] = (r.returncode, r.stderr.decode(), files)
    day = time.strftime("%Y%m%d")
    assert got["ours"][0] == got["upstream"][0] == 0
    assert sorted(got["ours"][2]) == sorted(got["upstream"][2]) == [f"log-{day}"]
    assert got["ours"][1:] == got["upstream"][1:] == ("emailrelay: no messages to send\n", {f"log-{day}": ""})


def test_pid_file_parent_directory_is_made(tmp_path: Path) -> None:
    """``--pid-file <dir>/new/pid`` for a serving relay: both make ``new`` (root's, 0775 whatever the
    umask: issue 17 aligned ours) and write the pid there."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        home = base / side
        pid_file = home / "new" / "pid"
        spool = spool_dir(home / "spool")
        argv = [program(side), "--no-daemon", "--port", str(free_port()), "--spool-dir", str(spool)]
        proc = subprocess.Popen(
            [*argv, "--pid-file", str(pid_file)], stdin=subprocess.DEVNULL, cwd=home, umask=0o077
        )  # fmt: skip
        try:
            assert wait_until(lambda p=pid_file: p.exists() and p.read_text().strip() != "", 15)
            st = pid_file.parent.stat()
            got[side] = (
                oct(st.st_mode & 0o7777),
                st.st_uid,
                st.st_gid,
                pid_file.read_text().strip().isdigit(),
            )
        finally:
            stop_process(proc)
    assert got["ours"] == got["upstream"] == ("0o775", 0, 0, True)


# ---- server TLS: a key file and a certificate file, client certificates --------------------------------


def _starttls_session(port: int, ca: Path, client_pem: Path | None) -> list[str]:
    """EHLO, STARTTLS, then a message over TLS (verifying the server against ``ca`` as ``localhost``,
    presenting ``client_pem`` if given): the replies, or the handshake's failure as ``tls failed``."""
    context = ssl.create_default_context(cafile=str(ca))
    if client_pem is not None:
        context.load_cert_chain(str(client_pem))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        reader = sock.makefile("rb")
        replies = [read_reply(reader)]
        for line in ("EHLO c.example", "STARTTLS"):
            sock.sendall(line.encode() + b"\r\n")
            replies.append(read_reply(reader))
        try:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                reader = tls.makefile("rb")
                for line in (
                    "EHLO c.example",
                    "MAIL FROM:<a@b.c>",
                    "RCPT TO:<x@y.z>",
                    "DATA",
                    "Subject: tls\r\n\r\nbody\r\n.",
                    "QUIT",
                ):
                    tls.sendall(line.encode() + b"\r\n")
                    reply = read_reply(reader)
                    if not reply:  # (TLS 1.3: a refused client certificate shows after the handshake)
                        raise ConnectionResetError
                    replies.append(reply)
        except (ssl.SSLError, OSError):
            replies.append("tls failed")
    return [VERSION.sub(" VERSION -- ", r) for r in replies]


@pytest.mark.parametrize(
    ("verify", "client"),
    [(None, None), ("ca", "client_pem"), ("ca", None), ("ca", "rogue_client_pem"), ("<default>", "client_pem")],
    ids=["key-then-certificate", "verify-ca-trusted", "verify-ca-none", "verify-ca-untrusted", "verify-default"],
)  # fmt: skip
def test_server_tls_key_certificate_and_client_verification(
    tmp_path: Path,
    certs: Certs,
    verify: str | None,
    client: str | None,
) -> None:
    """``--server-tls-certificate <key-file> --server-tls-certificate <certificate-file>`` and
    ``--server-tls-verify`` (a CA file, ``<default>``): the same replies through STARTTLS (or the
    same failed handshake) and the same stored envelope (its ``ClientCertificate`` included) and
    content (its ``Received`` line names the cipher: issue 17 aligned ours)."""
    text = certs.server_pem.read_text()
    cut = text.index("-----BEGIN CERTIFICATE-----")
    base = daemon_base(tmp_path)
    key, cert = base / "server.key", base / "server.crt"
    key.write_text(text[:cut] if "PRIVATE KEY" in text[:cut] else text[text.index("-----BEGIN", 1) :])
    cert.write_text(text[cut:] if "PRIVATE KEY" in text[:cut] else text[:cut])
    for path in (key, cert):
        path.chmod(0o644)
    args = ["--server-tls", "--server-tls-certificate", str(key), "--server-tls-certificate", str(cert)]
    if verify is not None:
        args += ["--server-tls-verify", str(certs.ca) if verify == "ca" else verify]
    got = {}
    for side in SIDES:
        with start(side, base, *args, name=side) as d:
            replies = _starttls_session(d.port, certs.ca, getattr(certs, client) if client else None)
            wait_until(lambda d=d: d.log().count("smtp connection closed") >= 2, 10)
            got[side] = (replies, normalise_spool(d.spool))
    assert got["ours"][0] == got["upstream"][0]
    sent = got["ours"][0][-1] == "221 OK"
    assert sent == (verify is None or (verify == "ca" and client == "client_pem")), got["ours"][0]
    assert got["ours"][1] == got["upstream"][1]
    if sent:  # `with ESMTPS tls TLS_AES_256_GCM_SHA384 ;` (TLS 1.3)
        content = got["ours"][1]["emailrelay.ID.content"]
        assert re.search(rb" with ESMTPS tls TLS_\w+ ; DATE\r\n", content), content


@pytest.mark.parametrize(
    ("implicit", "tls12"), [(False, True), (True, False), (True, True)], ids=["starttls-1.2", "implicit-1.3", "implicit-1.2"]
)  # fmt: skip
def test_received_line_names_the_tls_cipher(
    tmp_path: Path,
    certs: Certs,
    implicit: bool,
    tls12: bool,
) -> None:
    """Over TLS 1.2 and 1.3, STARTTLS or ``--server-tls-connection``: the same stored content, the
    ``Received`` line naming the cipher as OpenSSL does with ``_`` for ``-``
    (``with ESMTPS tls ECDHE_ECDSA_AES256_GCM_SHA384 ;``): issue 17 aligned ours."""
    base = daemon_base(tmp_path)
    context = ssl.create_default_context(cafile=str(certs.ca))
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    tls_option = "--server-tls-connection" if implicit else "--server-tls"
    got = {}
    for side in SIDES:
        with start(side, base, tls_option, "--server-tls-certificate", str(certs.server_pem), name=side) as d:
            with socket.create_connection(("127.0.0.1", d.port), timeout=15) as sock:
                if not implicit:
                    reader = sock.makefile("rb")
                    for line in ("", "EHLO c.example", "STARTTLS"):  # ("": the greeting)
                        sock.sendall(line.encode() + b"\r\n" if line else b"")
                        read_reply(reader)
                with context.wrap_socket(sock, server_hostname="localhost") as tls:
                    reader = tls.makefile("rb")
                    replies = [read_reply(reader)] if implicit else []
                    for line in DIALOGUE[:1] + DIALOGUE[3:7]:  # EHLO, MAIL, RCPT, DATA, the content
                        tls.sendall(line.encode() + b"\r\n")
                        replies.append(read_reply(reader))
                    cipher = tls.cipher()[0]
            wait_until(lambda d=d: "smtp connection closed" in d.log(), 10)
            got[side] = (replies[-1], normalise_spool(d.spool))
    assert got["ours"] == got["upstream"]
    assert got["ours"][0] == "250 message processed"
    expected = f" with ESMTPS tls {cipher.replace('-', '_')} ; DATE\r\n".encode()
    assert expected in got["ours"][1]["emailrelay.ID.content"]


# ---- --pop on its default port, in a private network namespace ---------------------------------------


def test_pop_listens_on_port_110_by_default(tmp_path: Path) -> None:
    """``--pop`` without ``--pop-port``, each program alone in a network namespace that has only a
    loopback interface: both log the same ``pop server on`` lines and greet on 127.0.0.1 port 110."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private network namespace")
    base = daemon_base(tmp_path)
    secrets = readable_file(base / "pop.auth", "server plain me secret\n")
    got = {}
    for side in SIDES:
        spool = spool_dir(base / side / "spool")
        log = base / side / "log"
        relay = [program(side), "--no-daemon", "--log", "--no-syslog", "--no-smtp", "--pop", "--pop-auth", str(secrets),
                 "--spool-dir", str(spool)]  # fmt: skip
        probe = [sys.executable, "-c", PROBE, "127.0.0.1/110"]
        shell = (
            f"ip link set lo up || exit 97; {shlex.join(relay)} 2>{shlex.quote(str(log))} & pid=$!; "
            f"{shlex.join(probe)}; kill $pid; wait $pid"
        )
        r = subprocess.run(
            ["unshare", "--net", "sh", "-c", shell], capture_output=True, text=True, timeout=60, check=False
        )
        if r.returncode == 97:
            pytest.skip(f"cannot make a private network namespace here: {r.stderr.strip()}")
        lines = [x for x in log.read_text().splitlines() if " server on " in x]
        greeting = r.stdout.strip().split(" ", 2)[1:2]
        got[side] = (lines, greeting)
    assert got["ours"] == got["upstream"]
    assert got["ours"] == (
        ["emailrelay: info: pop server on 0.0.0.0:110", "emailrelay: info: pop server on ::.110"],
        ["+OK"],
    )
