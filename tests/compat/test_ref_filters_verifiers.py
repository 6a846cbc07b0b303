"""Reference guide 2.6, "Filters" to "Built-in address verifiers", run end to end as a user would.

What it proves: the example command lines and the example filter and
verifier scripts printed in ``reference-2.6.md`` work with the real
``emailrelay`` program: each relay is a subprocess started with the
guide's options (``@app`` really is the program's directory: the tests
run a copy of the ``emailrelay`` entry point from ``tmp_path/app``), with
only ports, host names and paths adapted, plus ``--no-daemon --log
--verbose --no-syslog --user root --interface 127.0.0.1``.  Real clients
(smtplib, swaks) submit the mail; next hops are ``FakeSmtp`` servers, the
spam filter talks to the fake spamd, ``mx:`` to a DNS server started by the
test, and ``net:`` filters/verifiers to line servers in the test.  The
printed scripts are copied verbatim into tests/compat/guide_scripts/ref_*
and ``test_printed_scripts_are_verbatim`` checks them against the guide.
The table is docs/compat-parts/20-store-forwarding-filters-verifiers.md.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import smtplib
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emailrelay.spool import envelope as envelope_mod
from tests.support.fake_smtp import FakeSmtp
from tests.support.fake_spamd import GTUBE, fake_spamd
from tests.support.guides import REFERENCE, guide_text
from tests.support.relay import Relay, free_port, program, wait_for_port, wait_until
from tests.support.sink import states

pytestmark = pytest.mark.timeout(60)

SCRIPTS = Path(__file__).resolve().parent / "guide_scripts"
SWAKS = shutil.which("swaks")
COMMON = [
    "--no-daemon",
    "--log",
    "--verbose",
    "--no-syslog",
    "--log-time",
    "--user",
    "root",
    "--interface",
    "127.0.0.1",
]


# ---- helpers -----------------------------------------------------------------------------------


def make_app(tmp_path: Path) -> Path:
    """``tmp_path/app`` with a copy of the ``emailrelay`` entry point (so ``@app`` is this directory),
    the guide scripts, and an empty ``spool`` directory."""
    app = tmp_path / "app"
    app.mkdir(parents=True)
    shutil.copy(program("emailrelay"), app / "emailrelay")
    for script in SCRIPTS.glob("ref_*"):
        shutil.copy(script, app / script.name)
    (app / "spool").mkdir()
    return app


def launch(app: Path, command: str, *, port: int, supervised: bool = False, **subs: object) -> Relay:
    """Run a guide command line (``emailrelay ...``) with ``{placeholders}`` filled in, as a subprocess;
    ``--single-process`` is added unless ``supervised`` (it starts faster; the full guide command lines run
    supervised, the default)."""
    args = shlex.split(command.format(app=app, port=port, **subs))
    assert args[0] == "emailrelay"
    args = [str(app / "emailrelay"), *args[1:], *COMMON, *([] if supervised else ["--single-process"])]
    log_path = app.parent / f"relay-{port}.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=app.parent
        )
    relay = Relay(proc, port, app / "spool", log_path, args)
    try:
        wait_for_port(port, proc=proc, timeout=20)
    except BaseException:
        relay.stop()
        raise
    return relay


@contextlib.contextmanager
def relay_running(
    app: Path, command: str, *, port: int | None = None, supervised: bool = False, **subs: object
) -> Iterator[Relay]:
    relay = launch(app, command, port=port or free_port(), supervised=supervised, **subs)
    try:
        yield relay
    finally:
        relay.stop()


def content(subject: str, body: str = "hello", message_id: str | None = None) -> bytes:
    mid = message_id or f"<{abs(hash((subject, body, time.monotonic())))}@test>"
    return f"From: a@example.com\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n\r\n{body}\r\n".encode()


def send(
    port: int, data: bytes, rcpts: tuple[str, ...] = ("b@example.net",), sender: str = "a@example.com"
) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.sendmail(sender, list(rcpts), data)


def send_expect(port: int, data: bytes, rcpts: tuple[str, ...] = ("b@example.net",)) -> tuple[int, str]:
    """Send one message; the final reply (code, text) whether accepted or not."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.ehlo()
        code, text = c.mail("a@example.com")
        assert code == 250, text
        for r in rcpts:
            code, text = c.rcpt(r)
            assert code == 250, text
        code, text = c.data(data)
        return code, text.decode()


def envelopes(spool: Path, suffix: str = ".envelope") -> list[envelope_mod.Envelope]:
    return [envelope_mod.parse(p.read_bytes()) for p in sorted(spool.glob(f"*{suffix}"))]


def empty(spool: Path) -> bool:
    return not states(spool)


def printed_blocks() -> list[str]:
    """Every indented code block of the reference guide, unindented."""
    blocks, current = [], []
    for line in guide_text(REFERENCE).splitlines():
        if line.startswith("        ") or (current and not line.strip()):
            current.append(line[8:])
        elif current:
            blocks.append("\n".join(current).strip("\n") + "\n")
            current = []
    return blocks


class LineServer:
    """A line-based server (``net:`` filters and verifiers): ``answer(line) -> reply line``."""

    def __init__(self, answer: object) -> None:
        self.lines: list[str] = []
        self.connections = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                for raw in self.rfile:
                    line = raw.decode().rstrip("\r\n")
                    outer.lines.append(line)
                    self.wfile.write((answer(line) + "\n").encode())  # type: ignore[operator]

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LineServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- the printed scripts -------------------------------------------------------------------------

PRINTED = [
    "ref_filter.sh",
    "ref_verifier_accept.sh",
    "ref_verifier_normalise.sh",
    "ref_verifier_local.sh",
    "ref_verifier_reject.sh",
    "ref_verifier_temporary.sh",
    "ref_verifier_abort.sh",
]


def test_printed_scripts_are_verbatim() -> None:
    blocks = printed_blocks()
    for name in PRINTED:
        assert (SCRIPTS / name).read_text() in blocks, f"{name} is not the guide's script"
        assert os.access(SCRIPTS / name, os.X_OK)


# ---- Filters --------------------------------------------------------------------------------------


def test_proxy_with_filter_example(tmp_path: Path) -> None:
    """``emailrelay --as-proxy=127.0.0.1:25 --port=587 --filter=@app/myfilter --spool-dir=@app/spool``."""
    app = make_app(tmp_path)
    shutil.copy(app / "ref_myfilter.sh", app / "myfilter")
    with FakeSmtp() as mta:
        cmd = "emailrelay --as-proxy=127.0.0.1:{mta} --port={port} --filter=@app/myfilter --spool-dir=@app/spool"
        with relay_running(app, cmd, mta=mta.port, supervised=True) as relay:
            if SWAKS:
                subprocess.run(
                    [SWAKS, "--server", f"127.0.0.1:{relay.port}", "--from", "a@example.com", "--to", "b@example.net",
                     "--header", "Subject: via proxy"],
                    check=True, capture_output=True, timeout=30,
                )  # fmt: skip
            else:
                send(relay.port, content("via proxy"))
            assert mta.wait_for_messages(1, timeout=15)
            assert wait_until(lambda: empty(app / "spool"), 10)
    log = relay.log()
    data = mta.messages[0].data
    assert re.match(rb"X-Filtered-Envelope: emailrelay\.[0-9]+\.[0-9]+\.[0-9]+\.envelope\.new\r\n", data), (
        data[:200]
    )
    assert b"Subject: via proxy" in data
    # --as-proxy closes stderr before the "server on" and "forwarding to" lines (as E-MailRelay 2.6b)
    assert "server on" not in log and "forwarding to" not in log


def test_filter_sh_as_printed_lets_other_clients_through(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with relay_running(
        app, "emailrelay --port={port} --spool-dir=@app/spool --filter=@app/ref_filter.sh"
    ) as relay:
        send(relay.port, content("from loopback"))
        assert states(app / "spool") == {"envelope": 1, "content": 1}
        assert envelopes(app / "spool")[0].client == "127.0.0.1"


def test_filter_sh_adapted_deletes_the_message_and_exits_100(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    cmd = "emailrelay --port={port} --spool-dir=@app/spool --filter=@app/ref_filter_loopback.sh"
    with relay_running(app, cmd) as relay:
        code, _ = send_expect(relay.port, content("to be deleted"))
        assert code == 250  # exit 100: accepted as far as the client knows
        assert empty(app / "spool")
    log = relay.log()
    # no spurious warning about the vanished files; the one warning is E-MailRelay 2.6b's for any exit 100
    warnings = [x for x in log.split("running")[-1].splitlines() if ": warning: " in x]
    assert len(warnings) == 1 and warnings[0].endswith(
        "filter [ref_filter_loopback.sh] failed: exit code 100: [rejected]"
    )


def test_filter_exit_codes_and_reasons_through_smtp(tmp_path: Path) -> None:
    """0, 1-99 with <<...>> / [[...]] and a code, a second diagnostic line, 100, 101, 102, 103, 104-115."""
    app = make_app(tmp_path)
    spool = app / "spool"
    with relay_running(
        app, "emailrelay --port={port} --spool-dir=@app/spool --filter=@app/ref_exit_by_subject.sh"
    ) as r:
        assert send_expect(r.port, content("exit 0"))[0] == 250
        assert states(spool) == {"envelope": 1, "content": 1}
        for code in (101, 102, 103):
            assert send_expect(r.port, content(f"exit {code}"))[0] == 250
        assert states(spool) == {"envelope": 4, "content": 4}

        code, text = send_expect(r.port, content(r"exit 1 say <<553 no entry>>\n<<secret diagnostics>>"))
        assert (code, text) == (553, "no entry")
        code, text = send_expect(r.port, content(r"exit 99 say junk\n[[452 try later]]"))
        assert (code, text) == (452, "try later")
        code, text = send_expect(r.port, content(r"exit 42 say <<not a code>>"))
        assert (code, text) == (452, "not a code")  # E-MailRelay 2.6b's default code
        assert send_expect(r.port, content("exit 7")) == (452, "rejected")
        assert send_expect(r.port, content("exit 100"))[0] == 250
        for reserved in (104, 110, 115):
            code, _ = send_expect(r.port, content(f"exit {reserved}"))
            assert 400 <= code <= 499, reserved  # reserved: never a silent accept
        # rejected and reserved: nothing kept; abandoned (100) but left in place: committed, as upstream
        assert states(spool) == {"envelope": 5, "content": 5}
    log = r.log()
    # the second line is the logged reason, as upstream's
    assert "rejected by filter: [secret diagnostics]" in log


def test_exit_103_rescans_the_spool_for_forwarding(tmp_path: Path) -> None:
    """``--filter=exit:103``: with forwarding configured, the message goes out at once (client still connected);
    with ``exit:0`` instead it waits (no ``--poll``, no ``--forward-on-disconnect``)."""
    with FakeSmtp() as hop:
        for exit_code, forwarded in ((0, False), (103, True)):
            app = make_app(tmp_path / f"x{exit_code}")
            cmd = f"emailrelay --port={{port}} --spool-dir=@app/spool --forward-to={hop.address} --filter=exit:{exit_code}"
            with relay_running(app, cmd) as relay, smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as c:
                c.sendmail("a@example.com", ["b@example.net"], content(f"exit {exit_code}"))
                assert hop.wait_for_messages(1, timeout=10 if forwarded else 1.0) is forwarded, exit_code
                spool = app / "spool"
                assert wait_until(lambda spool=spool: empty(spool), 5 if forwarded else 0.2) is forwarded


def test_forwarding_at_start_up(tmp_path: Path) -> None:
    """ "when E-MailRelay first starts up (--as-client or --forward)": ``--forward --forward-to`` sends what is
    in the spool at once and ``--dont-serve --forward`` then exits; without ``--forward`` a single-process relay
    does not, but a supervised one (the default) does (differs, see the table)."""
    with FakeSmtp() as hop:
        for extra, supervised, forwarded in (
            ("--forward", False, True),
            ("", False, False),
            ("", True, True),
        ):
            hop.clear_messages()
            app = make_app(tmp_path / f"s{len(extra)}{supervised}")
            write_envelope(app / "spool", "start", "s@example.net")
            cmd = f"emailrelay --port={{port}} --spool-dir=@app/spool --forward-to={hop.address} {extra}"
            with relay_running(app, cmd, supervised=supervised):
                assert hop.wait_for_messages(1, timeout=15 if forwarded else 1.0) is forwarded, (
                    extra,
                    supervised,
                )
        hop.clear_messages()
        app = make_app(tmp_path / "dont-serve")
        write_envelope(app / "spool", "once", "o@example.net")
        run = subprocess.run(
            [str(app / "emailrelay"), "--dont-serve", "--forward", "--forward-to", hop.address,
             "--spool-dir", str(app / "spool"), "--no-daemon", "--no-syslog", "--log", "--user", "root"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert [m.rcpts for m in hop.messages] == [["o@example.net"]]
        assert empty(app / "spool")


def test_client_filter_exit_100_and_102(tmp_path: Path) -> None:
    """``--client-filter``: 100 skips the message (left in the spool), 102 stops the scan after this message."""
    app = make_app(tmp_path)
    spool = app / "spool"
    submit = program("emailrelay-submit")
    for subject in ("exit 100", "exit 102", "exit 0", "exit 0"):
        subprocess.run(
            [submit, "--spool-dir", str(spool), "--from", "a@example.com", "b@example.net"],
            input=content(subject), check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        time.sleep(0.01)
    # messages are scanned in envelope-name order (as upstream: emailrelay.<pid>.<time>.<n>, so by the
    # submitting process's pid as a string, not by age): what comes before the 102 is sent but a 100
    order = [
        _subject(p.with_suffix(".content")) for p in sorted(spool.glob("*.envelope"), key=lambda p: p.name)
    ]
    before_stop = order[: order.index("exit 102") + 1]
    expected = sorted(s for s in before_stop if s != "exit 100")
    with FakeSmtp() as hop:
        run = subprocess.run(
            [str(app / "emailrelay"), "--as-client", hop.address, "--spool-dir", str(spool),
             "--client-filter", str(app / "ref_exit_by_subject.sh"), "--no-syslog", "--log", "--user", "root"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        subjects = sorted(re.search(rb"Subject: ([^\r]*)", m.data).group(1).decode() for m in hop.messages)  # type: ignore[union-attr]
    # 100 is skipped and kept; 102 is sent, then the scan stops
    assert "exit 102" in subjects and "exit 100" not in subjects
    assert subjects == expected, order
    assert states(spool) == {"envelope": 4 - len(expected), "content": 4 - len(expected)}


def _subject(content_file: Path) -> str:
    found = re.search(rb"Subject: ([^\r]*)", content_file.read_bytes())
    assert found is not None, content_file
    return found.group(1).decode()


def test_filter_runs_unprivileged_unless_user_root(tmp_path: Path) -> None:
    """Started as root, the filter runs as ``--user`` (default ``daemon``), or as root with ``--user=root``;
    the files it sees have CR-LF line ends."""
    base = Path(tempfile_dir(tmp_path))
    probe = base / "probe.sh"
    probe.write_text('#!/bin/sh\nid -u > "$1.uid"\nod -c "$2" | head -2 > "$1.od"\nexit 0\n')
    probe.chmod(0o755)
    for extra, user in (((), "daemon"), (("--user=root",), "root")):
        spool = base / f"spool-{user}"
        spool.mkdir()
        spool.chmod(0o777)
        port = free_port()
        proc = subprocess.Popen(
            [program(), "--no-daemon", "--no-syslog", "--single-process", "--port", str(port),
             "--interface", "127.0.0.1", "--spool-dir", str(spool), "--filter", str(probe), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        relay = Relay(proc, port, spool, base / "none.log")
        try:
            wait_for_port(port, proc=proc, timeout=20)
            send(port, content("uid"))
        finally:
            relay.stop()
        assert next(spool.glob("*.uid")).read_text().strip() == str(pwd.getpwnam(user).pw_uid), extra
        assert r"\r  \n" in next(spool.glob("*.od")).read_text()


def tempfile_dir(tmp_path: Path) -> str:
    """A directory the ``daemon`` user can reach (pytest's tmp_path parents are mode 0700)."""
    import tempfile

    d = tempfile.mkdtemp(prefix="ref-filter-")
    os.chmod(d, 0o755)
    (tmp_path / "cleanup").write_text(d)
    return d


@pytest.fixture(autouse=True)
def _cleanup_outside_dirs(tmp_path: Path) -> Iterator[None]:
    yield
    marker = tmp_path / "cleanup"
    if marker.exists():
        shutil.rmtree(marker.read_text(), ignore_errors=True)


def test_windows_filter_path_with_a_space(tmp_path: Path) -> None:
    """``--filter="C:/Program Files/E-MailRelay/filter.js"``: a quoted path with a space works (a shell script
    here; JScript/WScript filters are Windows-only)."""
    app = make_app(tmp_path)
    folder = app / "Program Files" / "E-MailRelay"
    folder.mkdir(parents=True)
    shutil.copy(app / "ref_myfilter.sh", folder / "filter.sh")
    cmd = (
        'emailrelay --port={port} --spool-dir=@app/spool --filter="{app}/Program Files/E-MailRelay/filter.sh"'
    )
    with relay_running(app, cmd) as relay:
        send(relay.port, content("space"))
    stored = next((app / "spool").glob("*.content")).read_bytes()
    assert stored.startswith(b"X-Filtered-Envelope: ")


# ---- Network filters ------------------------------------------------------------------------------


def test_net_filter_example(tmp_path: Path) -> None:
    """``--filter=net:localhost:10101``: one content path per line, ``ok`` or an error; text after a tab is
    logged only; a connection per message (E-MailRelay 2.6b's, despite the guide's "maintaining the connection")."""
    app = make_app(tmp_path)

    def answer(path: str) -> str:
        data = Path(path).read_bytes()
        return "ok" if b"Subject: good" in data else "bad news\tfor the log only"

    with LineServer(answer) as srv:
        with relay_running(
            app, f"emailrelay --port={{port}} --spool-dir=@app/spool --filter=net:localhost:{srv.port}"
        ) as r:
            assert send_expect(r.port, content("good"))[0] == 250
            assert send_expect(r.port, content("evil")) == (452, "bad news")  # upstream's default code
            assert send_expect(r.port, content("good"))[0] == 250
        log = r.log()
        assert srv.connections == 3  # E-MailRelay 2.6b connects for each message (the oracle shows it)
        assert len(srv.lines) == 3 and all(line.startswith(str(app / "spool")) for line in srv.lines)
        assert all(line.endswith(".content") for line in srv.lines)
    assert "for the log only" in log
    assert states(app / "spool") == {"envelope": 2, "content": 2}


def test_net_client_filter(tmp_path: Path) -> None:
    """``--client-filter=net:...``: the same dialog just before forwarding."""
    app = make_app(tmp_path)
    with (
        LineServer(lambda path: "ok" if b"Subject: good" in Path(path).read_bytes() else "no") as srv,
        FakeSmtp() as hop,
    ):
        cmd = f"emailrelay --port={{port}} --spool-dir=@app/spool --forward-to={hop.address} --poll=1 --client-filter=net:127.0.0.1:{srv.port}"
        with relay_running(app, cmd) as r:
            send(r.port, content("good"))
            send(r.port, content("bad"))
            assert hop.wait_for_messages(1, timeout=10)
            assert wait_until(lambda: states(app / "spool") == {"bad": 1, "content": 1}, 10), states(
                app / "spool"
            )
    assert b"Subject: good" in hop.messages[0].data and len(hop.messages) == 1


def test_spam_and_spam_edit_examples(tmp_path: Path) -> None:
    """``--filter=spam-edit:127.0.0.1:783`` (edits and accepts) and ``spam:`` (rejects spam outright)."""
    with fake_spamd() as spamd:
        app = make_app(tmp_path / "edit")
        with relay_running(
            app, f"emailrelay --port={{port}} --spool-dir=@app/spool --filter=spam-edit:{spamd.address}"
        ) as r:
            assert send_expect(r.port, content("spammy", body=GTUBE.decode()))[0] == 250
        stored = next((app / "spool").glob("*.content")).read_bytes()
        assert stored.startswith(b"X-Spam-Flag: YES\n")  # as spamd (the fake: LF) sent it, as upstream
        app = make_app(tmp_path / "plain")
        with relay_running(
            app, f"emailrelay --port={{port}} --spool-dir=@app/spool --filter=spam:{spamd.address}"
        ) as r:
            code, _ = send_expect(r.port, content("spammy", body=GTUBE.decode()))
            assert code == 452  # a filter's rejection without a code of its own, as upstream
            assert send_expect(r.port, content("ham"))[0] == 250
        assert states(app / "spool") == {"envelope": 1, "content": 1}
        assert [c for c, _ in spamd.requests] == ["PROCESS"] * 3  # spam: asks PROCESS too, as upstream


# ---- Built-in filters -----------------------------------------------------------------------------


def test_copy_example_with_subdirectories(tmp_path: Path) -> None:
    """``--filter=copy:``: into every sub-directory but ``postmaster`` and dot-names; maildirs get ``new/``."""
    app = make_app(tmp_path)
    spool = app / "spool"
    for d in ("alice", "bob", "postmaster", ".hidden"):
        (spool / d).mkdir()
    for sub in ("new", "tmp", "cur"):
        (spool / "carol" / sub).mkdir(parents=True)
    with relay_running(app, "emailrelay --port={port} --spool-dir=@app/spool --filter=copy:") as r:
        send(r.port, content("copied"))
    assert states(spool) == {}  # the original is deleted
    for d in ("alice", "bob"):
        assert states(spool / d) == {"envelope": 1, "content": 1}, d
    assert not list((spool / "postmaster").iterdir()) and not list((spool / ".hidden").iterdir())
    delivered = [*(spool / "carol" / "new").iterdir(), *(spool / "carol" / "cur").iterdir()]
    assert len(delivered) == 1 and b"Subject: copied" in delivered[0].read_bytes()
    assert not list((spool / "carol" / "tmp").iterdir())


def test_copy_hardlink_and_copy_pop_with_pop_by_name(tmp_path: Path) -> None:
    """``copy:hardlink`` links the content; ``--filter=copy:pop --pop --pop-by-name --pop-auth=...`` keeps one
    content in the main directory and a POP client of each mailbox sees the message."""
    import poplib

    app = make_app(tmp_path / "h")
    for d in ("alice", "bob"):
        (app / "spool" / d).mkdir()
    with relay_running(app, "emailrelay --port={port} --spool-dir=@app/spool --filter=copy:hardlink") as r:
        send(r.port, content("linked"))
    a, b = (next((app / "spool" / d).glob("*.content")) for d in ("alice", "bob"))
    assert os.stat(a).st_ino == os.stat(b).st_ino

    app = make_app(tmp_path / "p")
    spool = app / "spool"
    for d in ("alice", "bob"):
        (spool / d).mkdir()
    (app / "pop.auth").write_text("server plain alice alicepw\nserver plain bob bobpw\n")
    pop_port = free_port()
    cmd = "emailrelay --port={port} --spool-dir=@app/spool --filter=copy:pop --pop --pop-by-name --pop-auth=@app/pop.auth --pop-port={pop}"
    with relay_running(app, cmd, pop=pop_port) as r:
        send(r.port, content("for pop"))
        assert states(spool) == {"content": 1}
        assert states(spool / "alice") == {"envelope": 1} and states(spool / "bob") == {"envelope": 1}
        wait_for_port(pop_port)
        for user, pw in (("alice", "alicepw"), ("bob", "bobpw")):
            pop = poplib.POP3("127.0.0.1", pop_port, timeout=20)
            try:
                pop.user(user)
                pop.pass_(pw)
                count, _ = pop.stat()
                assert count == 1
                assert b"Subject: for pop" in b"\r\n".join(pop.retr(1)[1])
            finally:
                pop.quit()


def test_deliver_examples_with_a_local_verifier(tmp_path: Path) -> None:
    """``--filter=deliver: --delivery-dir=@app/mailboxes --spool-dir=@app/spool`` with the guide's "accept as
    local" verifier: copied to ``mailboxes/postmaster`` and deleted from the spool; the guide's
    ``deliver:hardlink;nodelete`` is refused at start-up, as E-MailRelay 2.6b refuses it."""
    app = make_app(tmp_path / "a")
    (app / "mailboxes").mkdir()
    cmd = ("emailrelay --port={port} --address-verifier=@app/ref_verifier_local.sh "
           "--filter=deliver: --delivery-dir=@app/mailboxes --spool-dir=@app/spool")  # fmt: skip
    with relay_running(app, cmd, supervised=True) as r:
        send(r.port, content("delivered"), rcpts=("anyone@example.com",))
    assert states(app / "spool") == {}
    box = app / "mailboxes" / "postmaster"
    assert box.is_dir() and len(list(box.iterdir())) >= 1
    assert any(b"Subject: delivered" in p.read_bytes() for p in box.rglob("*") if p.is_file())

    app = make_app(tmp_path / "b")
    done = subprocess.run(
        [program(), "--no-daemon", "--port", str(free_port()), "--spool-dir", str(app / "spool"),
         "--filter", "deliver:hardlink;nodelete"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.decode().splitlines()[-1] == (
        "emailrelay: usage error: invalid filter specification: string conversion error: invalid format: "
        "expected unsigned integer: hardlink;nodelete"
    )


def test_deliver_does_nothing_without_local_recipients(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with relay_running(app, "emailrelay --port={port} --spool-dir=@app/spool --filter=deliver:") as r:
        send(r.port, content("remote only"))
    assert states(app / "spool") == {"envelope": 1, "content": 1}
    assert [p for p in (app / "spool").iterdir() if p.is_dir() and not p.name.startswith(".")] == []


def test_split_example(tmp_path: Path) -> None:
    """``--filter=split:``: one message per domain, case-insensitive, ``ForwardTo`` = the domain, hard-linked
    content; ``split:raw`` compares domains exactly."""
    app = make_app(tmp_path / "a")
    with relay_running(app, "emailrelay --port={port} --spool-dir=@app/spool --filter=split:") as r:
        send(r.port, content("split"), rcpts=("x@one.test", "y@ONE.TEST", "z@two.test"))
    envs = envelopes(app / "spool")
    assert sorted(e.forward_to.lower() for e in envs) == ["one.test", "two.test"]
    by_domain = {e.forward_to.lower(): set(e.to_remote) for e in envs}
    assert by_domain == {"one.test": {"x@one.test", "y@ONE.TEST"}, "two.test": {"z@two.test"}}
    inodes = {os.stat(p).st_ino for p in (app / "spool").glob("*.content")}
    assert len(list((app / "spool").glob("*.content"))) == 2 and len(inodes) == 1  # hard links

    app = make_app(tmp_path / "b")
    with relay_running(app, "emailrelay --port={port} --spool-dir=@app/spool --filter=split:raw") as r:
        send(r.port, content("split raw"), rcpts=("x@one.test", "y@ONE.TEST"))
    assert sorted(e.forward_to for e in envelopes(app / "spool")) == ["ONE.TEST", "one.test"]


def test_split_copies_skip_later_server_filters(tmp_path: Path) -> None:
    """ "if new messages are created by the split: filter then they will not be processed by any other
    server-side filters": ``--filter=split:,msgid:`` adds a Message-ID to the original only."""
    app = make_app(tmp_path)
    with relay_running(app, "emailrelay --port={port} --spool-dir=@app/spool --filter=split:,msgid:") as r:
        send(
            r.port,
            b"From: a@example.com\r\nSubject: chain\r\n\r\nbody\r\n",
            rcpts=("x@one.test", "z@two.test"),
        )
    contents = [p.read_bytes() for p in (app / "spool").glob("*.content")]
    assert len(contents) == 2
    assert sorted(b"Message-ID:" in c for c in contents) == [False, True]


def test_mx_client_filter_routes_by_forward_to(tmp_path: Path) -> None:
    """``--client-filter="mx:127.0.0.1:53"`` and ``--client-filter="mx:nst=60;rt=60;127.0.0.1:53"``: the MX of
    the ``ForwardTo`` domain (with its ``:port``) becomes ``ForwardToAddress``; a ``0.0.0.0`` answer sends the
    message to ``--forward-to``."""
    pytest.importorskip("dns")
    from tests.support.dns_server import dns_server

    records: dict[str, dict[str, list[object]]] = {
        "one.test": {"MX": [(10, "mx.one.test")]},
        "mx.one.test": {"A": ["127.0.0.1"]},
        "zero.test": {"A": ["0.0.0.0"]},
    }
    with FakeSmtp() as routed, FakeSmtp() as default, dns_server(records) as dns:
        for form in ("mx:127.0.0.1:{dns}", "mx:nst=60;rt=60;127.0.0.1:{dns}"):
            routed.clear_messages()
            default.clear_messages()
            app = make_app(tmp_path / str(len(form)))
            spool = app / "spool"
            write_envelope(spool, "m1", "x@one.test", forward_to=f"one.test:{routed.port}")
            write_envelope(spool, "m2", "z@zero.test", forward_to="zero.test")
            run = subprocess.run(
                [str(app / "emailrelay"), "--as-client", default.address, "--spool-dir", str(spool),
                 "--client-filter", form.format(dns=dns.port), "--no-syslog", "--log", "--user", "root"],
                capture_output=True, timeout=60,
            )  # fmt: skip
            assert run.returncode == 0, run.stderr
            assert [m.rcpts for m in routed.messages] == [["x@one.test"]], form
            assert [m.rcpts for m in default.messages] == [["z@zero.test"]], form
            assert empty(spool)
        assert ("one.test", "MX") in dns.queries


def test_split_then_mx_example(tmp_path: Path) -> None:
    """``--filter=split: --client-filter=mx:`` (the DNS server given, ``mx:127.0.0.1:<port>``): the copy for
    ``one.test`` gets the MX's address on port 25 as ``ForwardToAddress`` (nobody listens there: it waits for
    a retry), the copy for ``zero.test`` (``0.0.0.0``) goes to ``--forward-to``."""
    pytest.importorskip("dns")
    from tests.support.dns_server import dns_server

    records: dict[str, dict[str, list[object]]] = {
        "one.test": {"MX": [(10, "mx.one.test")]},
        "mx.one.test": {"A": ["127.0.0.1"]},
        "zero.test": {"A": ["0.0.0.0"]},
    }
    with FakeSmtp() as default, dns_server(records) as dns:
        app = make_app(tmp_path)
        cmd = (
            f"emailrelay --port={{port}} --spool-dir=@app/spool --forward-to={default.address} --poll=0 "
            f"--filter=split: --client-filter=mx:127.0.0.1:{dns.port}"
        )
        with relay_running(app, cmd) as r:
            send(r.port, content("routed"), rcpts=("x@one.test", "z@zero.test"))
            assert default.wait_for_messages(1, timeout=15)
            spool = app / "spool"
            assert wait_until(lambda: states(spool) == {"envelope": 1, "content": 1}, 10), states(spool)
            assert [e.forward_to_address for e in envelopes(spool)] == ["127.0.0.1:25"]
    assert [m.rcpts for m in default.messages] == [["z@zero.test"]]
    assert [e.to_remote for e in envelopes(app / "spool")] == [("x@one.test",)]


def write_envelope(spool: Path, name: str, rcpt: str, *, forward_to: str = "") -> None:
    from emailrelay.spool.store import SpoolStore

    env = envelope_mod.Envelope("a@example.com", to_remote=(rcpt,), client="127.0.0.1", forward_to=forward_to)
    SpoolStore(spool).store_message(env, content(name))
    time.sleep(0.01)


def test_msgid_filter(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with relay_running(app, "emailrelay --port={port} --spool-dir=@app/spool --filter=msgid:") as r:
        send(r.port, b"From: a@example.com\r\nSubject: no id\r\n\r\nbody\r\n")
        send(r.port, content("has id", message_id="<mine@test>"))
    stored = sorted(p.read_bytes() for p in (app / "spool").glob("*.content"))
    with_new = next(s for s in stored if b"Subject: no id" in s)
    assert re.match(rb"Message-ID: <[^>\r\n]+@[^>\r\n]+>\r\n", with_new)  # the first line, as upstream
    kept = next(s for s in stored if b"Subject: has id" in s)
    assert kept.count(b"Message-ID:") == 1 and b"<mine@test>" in kept


# ---- Address verifiers ----------------------------------------------------------------------------


def rcpt_reply(port: int, rcpt: str, sender: str = "a@example.com") -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.ehlo()
        c.mail(sender)
        code, text = c.rcpt(rcpt)
        return code, text.decode()


@pytest.mark.parametrize(
    ("script", "rcpt", "reply", "stored"),
    [
        ("ref_verifier_accept.sh", "Bob@Example.NET", 250, ("remote", "Bob@Example.NET")),
        ("ref_verifier_normalise.sh", "Bob@Example.NET", 250, ("remote", "bob@example.net")),
        ("ref_verifier_local.sh", "anyone@example.com", 250, ("local", "postmaster")),
        ("ref_verifier_reject.sh", "bob@example.net", (550, "invalid mailbox: bob@example.net"), None),
        ("ref_verifier_temporary.sh", "bob@example.net", (450, "mailbox unavailable: bob@example.net"), None),
    ],
)
def test_printed_verifier_scripts(
    tmp_path: Path, script: str, rcpt: str, reply: int | tuple[int, str], stored: tuple[str, str] | None
) -> None:
    app = make_app(tmp_path)
    with relay_running(
        app, f"emailrelay --port={{port}} --spool-dir=@app/spool --address-verifier=@app/{script}"
    ) as r:
        if stored is None:
            assert rcpt_reply(r.port, rcpt) == reply
            assert empty(app / "spool")
        else:
            send(r.port, content("verified"), rcpts=(rcpt,))
            env = envelopes(app / "spool")[0]
            kind, value = stored
            assert (env.to_remote, env.to_local) == (((value,), ()) if kind == "remote" else ((), (value,)))


def test_printed_abort_verifier_drops_the_connection(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    cmd = "emailrelay --port={port} --spool-dir=@app/spool --address-verifier=@app/ref_verifier_abort.sh"
    with relay_running(app, cmd) as r, smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:
        c.ehlo()
        c.mail("a@example.com")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.rcpt("bob@example.net")
            c.noop()
    assert empty(app / "spool")


def test_local_verifier_answers_vrfy_and_other_exit_codes_reject(tmp_path: Path) -> None:
    """VRFY gets the full name of a local mailbox; verifier exit codes 4-99 and 101+ behave as 2 (550),
    and the second output line is only logged."""
    app = make_app(tmp_path / "v")
    with relay_running(
        app, "emailrelay --port={port} --spool-dir=@app/spool --address-verifier=@app/ref_verifier_local.sh"
    ) as r:
        with smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:
            code, text = c.verify("postmaster@example.com")
        assert code == 250 and "Local Postmaster" in text.decode()
    app = make_app(tmp_path / "x")
    odd = app / "odd.sh"
    odd.write_text(
        '#!/bin/sh\necho "odd: $1"\necho "diagnostic for the log"\ncase "$1" in four*) exit 4;; *) exit 101;; esac\n'
    )
    odd.chmod(0o755)
    with relay_running(
        app, "emailrelay --port={port} --spool-dir=@app/spool --address-verifier=@app/odd.sh"
    ) as r:
        assert rcpt_reply(r.port, "four@example.net") == (550, "odd: four@example.net")
        assert rcpt_reply(r.port, "many@example.net") == (550, "odd: many@example.net")
    assert "diagnostic for the log" in r.log()


def test_verifier_command_line(tmp_path: Path) -> None:
    """``myverifier bob@local.net alice@example.com 192.168.0.1:123 local.net login alice``: the six arguments,
    for an authenticated client, a trusted ("none") client, and VRFY (empty ``from``)."""
    app = make_app(tmp_path / "auth")
    shutil.copy(app / "ref_myverifier.sh", app / "myverifier")
    (app / "auth.secrets").write_text("server plain alice alicepw\n")
    cmd = ("emailrelay --port={port} --spool-dir=@app/spool --domain=local.net --server-auth=@app/auth.secrets "
           "--address-verifier=@app/myverifier")  # fmt: skip
    with relay_running(app, cmd) as r, smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:
        c.ehlo()
        c.user, c.password = "alice", "alicepw"
        c.auth("LOGIN", c.auth_login)  # the guide's example: "login alice"
        c.mail("alice@example.com")
        assert c.rcpt("bob@local.net")[0] == 250
        local_port = c.sock.getsockname()[1]
    args = (app / "myverifier.args").read_text().splitlines()
    assert args[:3] == ["bob@local.net", "alice@example.com", f"127.0.0.1:{local_port}"]
    assert args[3:] == ["local.net", "login", "alice"]

    app = make_app(tmp_path / "trusted")
    shutil.copy(app / "ref_myverifier.sh", app / "myverifier")
    (app / "auth.secrets").write_text("server none 127.0.0.1 trustee\n")
    with relay_running(app, cmd) as r, smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:
        c.ehlo()
        c.mail("carol@example.com")
        assert c.rcpt("bob@local.net")[0] == 250
        assert (app / "myverifier.args").read_text().splitlines()[3:] == ["local.net", "none", "trustee"]
        c.verify("dave@local.net")
        vrfy = (app / "myverifier.args").read_text().splitlines()
    assert vrfy[:2] == ["dave@local.net", ""]


# ---- Address verifier servers ---------------------------------------------------------------------


def test_net_verifier_example(tmp_path: Path) -> None:
    """``--address-verifier=net:127.0.0.1:10101``: pipe-delimited request, reversed pipe-delimited answer
    (``0|postmaster|Local Postmaster <postmaster@example.com>``, ``2|mailbox unavailable``), one connection."""
    app = make_app(tmp_path)

    def answer(line: str) -> str:
        rcpt = line.split("|")[0]
        if rcpt.startswith("postmaster@"):
            return "0|postmaster|Local Postmaster <postmaster@example.com>"
        if rcpt.endswith("@example.net"):
            return f"1|{rcpt.upper()}"
        return "2|mailbox unavailable"

    with LineServer(answer) as srv:
        with relay_running(
            app,
            f"emailrelay --port={{port}} --spool-dir=@app/spool --address-verifier=net:127.0.0.1:{srv.port}",
        ) as r:
            assert rcpt_reply(r.port, "nobody@example.org") == (550, "mailbox unavailable")
            send(r.port, content("net verified"), rcpts=("postmaster@example.com", "bob@example.net"))
            with smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:
                code, text = c.verify("postmaster@example.com")
            assert code == 250 and "Local Postmaster" in text.decode()
        assert srv.connections == len(srv.lines) == 4  # a connection per request (never a request twice)
        fields = srv.lines[0].split("|")
        assert fields[:2] == ["nobody@example.org", "a@example.com"] and fields[2].startswith("127.0.0.1:")
    env = envelopes(app / "spool")[0]
    assert (env.to_local, env.to_remote) == (("postmaster",), ("BOB@EXAMPLE.NET",))


# ---- Built-in address verifiers -------------------------------------------------------------------


def _account_in(low: int, high: int) -> str | None:
    names = sorted(p.pw_name for p in pwd.getpwall() if low <= p.pw_uid <= high and p.pw_name.isascii())
    return names[0] if names else None


def test_account_verifier_examples(tmp_path: Path) -> None:
    """``--address-verifier=account: --domain=example.com`` (uids 1000-32767) and
    ``--address-verifier="account:1000-1002;lowercase" --domain=example.com`` (range adapted to uid 0)."""
    root = pwd.getpwuid(0).pw_name
    app = make_app(tmp_path / "default")
    with relay_running(
        app,
        "emailrelay --port={port} --spool-dir=@app/spool --address-verifier=account: --domain=example.com",
    ) as r:
        assert rcpt_reply(r.port, f"{root}@example.com")[0] == 550  # uid 0 is outside the default range
        assert rcpt_reply(r.port, "no-such-account-xyz@example.com")[0] == 550
        user = _account_in(1000, 32767)
        if user is not None:
            assert rcpt_reply(r.port, f"{user}@example.com")[0] == 250
            assert rcpt_reply(r.port, f"{user}@elsewhere.example")[0] == 550
    app = make_app(tmp_path / "lower")
    cmd = 'emailrelay --port={port} --spool-dir=@app/spool --address-verifier="account:0-0;lowercase" --domain=example.com'
    with relay_running(app, cmd) as r:
        send(r.port, content("account"), rcpts=(f"{root.upper()}@Example.COM",))
        assert rcpt_reply(r.port, f"{root}@other.example")[0] == 550
    assert envelopes(app / "spool")[0].to_local == (root,)


def test_account_verifier_check_and_remote(tmp_path: Path) -> None:
    """``--address-verifier=account:check --domain=example.com --delivery-dir=@app/in``: non-accounts are
    valid remote addresses; ``account:...;remote``: only accounts are valid, and they stay remote."""
    root = pwd.getpwuid(0).pw_name
    app = make_app(tmp_path / "check")
    (app / "in").mkdir()
    cmd = "emailrelay --port={port} --spool-dir=@app/spool --address-verifier=account:check --domain=example.com --delivery-dir=@app/in"
    with relay_running(app, cmd) as r:
        send(r.port, content("check"), rcpts=("someone@example.org", "nobody-here-xyz@example.com"))
    env = envelopes(app / "spool")[0]
    assert (env.to_remote, env.to_local) == (("someone@example.org", "nobody-here-xyz@example.com"), ())

    app = make_app(tmp_path / "check0")
    cmd = 'emailrelay --port={port} --spool-dir=@app/spool --address-verifier="account:0-0;check" --domain=example.com --filter=deliver:'
    with relay_running(app, cmd) as r:
        send(r.port, content("check local"), rcpts=(f"{root}@example.com", "someone@example.org"))
    env = envelopes(app / "spool")[0]
    assert (env.to_remote, env.to_local) == (("someone@example.org",), (root,))
    assert any(b"check local" in p.read_bytes() for p in (app / "spool" / root).rglob("*") if p.is_file())

    app = make_app(tmp_path / "remote")
    cmd = 'emailrelay --port={port} --spool-dir=@app/spool --address-verifier="account:0-0;remote" --domain=example.com'
    with relay_running(app, cmd) as r:
        assert rcpt_reply(r.port, "someone@example.com")[0] == 550
        send(r.port, content("remote"), rcpts=(f"{root}@example.com",))
    env = envelopes(app / "spool")[0]
    assert (env.to_remote, env.to_local) == ((f"{root}@example.com",), ())
