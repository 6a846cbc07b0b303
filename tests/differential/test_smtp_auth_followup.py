"""The SMTP server's AUTH edge cases against E-MailRelay 2.6b: a follow-up probe's findings.

What it checks: AUTH when ``--server-auth-config`` or the secrets leave no mechanism (upstream's
``502 command not implemented``, or ``504 unsupported authentication mechanism[: use starttls]``
with ``rejecting authentication attempt without encryption`` when mechanisms come with TLS, and
the PLAIN it offers over TLS for secrets that offer nothing), what EHLO advertises before and
after STARTTLS; how often the ``trusting [...]`` and ``not a trusted address`` lines are logged;
and secrets lines read as upstream reads them (``plain:b`` without padding, ``=`` for an empty
``plain:b`` field refused, ``md5:b`` as ``md5``, ``=`` in xtext).  Differential tests run each
scenario on our relay and the oracle (``EMAILRELAY_ORACLE_BIN``; skipped without it) and compare
replies and logs; the ``ours_`` tests check our side alone, so a clone without the oracle runs them.
"""

from __future__ import annotations

import base64
import hmac
import poplib
import re
import smtplib
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from emailrelay.auth.secrets import Secrets
from emailrelay.errors import ConfigError
from emailrelay.protocol import smtp_server as sp
from emailrelay.protocol.sasl import AuthConfig, server_offer
from tests.support.certs import Certs, no_verify_context
from tests.support.diff_smtp_server import GREETING, b64, server_log, settle
from tests.support.oracle import SIDES, daemon_base, needs_oracle, program, read_reply, spool_dir, start
from tests.support.relay import free_port, wait_for_port

pytestmark = pytest.mark.timeout(300)

PLAIN_ME = "AUTH PLAIN " + b64("\0me\0secret")
MD5_STATE = "qeD38fvADIqBu6rDlXMbVs07p96q1uXKI0SLpC43l0c="  # emailrelay-passwd's for "secret"
ALL = "cram-sha512,cram-sha256,cram-sha1,cram-md5,plain,login"
# the AUTH initial response: logged by upstream, never by ours (decisions.md, "Authentication, TLS, POP")
_INITIAL = re.compile(r'rx<<: "AUTH \S+ ([A-Za-z0-9+/]+=*|\[authentication response not logged\])"')


def _secrets(base: Path, name: str, text: str) -> str:
    path = base / name
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def _send(sock: socket.socket, reader: object, line: str) -> str:
    sock.sendall(line.encode() + b"\r\n")
    return read_reply(reader)


def _dialogue(port: int, clear: Sequence[str], tls: Sequence[str] | None = None) -> list[str]:
    """The replies to ``clear``, then (``tls`` given) to STARTTLS, a handshake and ``tls``."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        reader = sock.makefile("rb")
        replies = [read_reply(reader), *(_send(sock, reader, line) for line in clear)]
        if tls is None:
            return replies
        replies.append(_send(sock, reader, "STARTTLS"))
        with no_verify_context().wrap_socket(sock) as wrapped:
            reader = wrapped.makefile("rb")
            replies += [_send(wrapped, reader, line) for line in tls]  # type: ignore[arg-type]
    return replies


Dialogue = tuple[list[str], list[str] | None]  # (lines in clear text, lines after STARTTLS or None)


def _run(
    side: str, base: Path, args: Sequence[str], dialogues: Sequence[Dialogue], name: str
) -> tuple[list[list[str]], list[str]]:
    """``side``'s replies to each dialogue (own connection each) and its log, AUTH initial responses left out."""
    with start(side, base, *args, name=f"{side}{name}") as d:
        replies = [[r.replace(GREETING[side], "") for r in _dialogue(d.port, *x)] for x in dialogues]
        settle(d, len(dialogues))
        log = [line for line in server_log(d) if not _INITIAL.search(line)]
    return replies, log


def _both(base: Path, args: Sequence[str], dialogues: Sequence[Dialogue], name: str) -> list[list[str]]:
    """Both sides' replies and logs, asserted the same; our replies."""
    got = {side: _run(side, base, args, dialogues, name) for side in SIDES}
    assert got["ours"][0] == got["upstream"][0]
    assert got["ours"][1] == got["upstream"][1]
    return got["ours"][0]


# ---- 1: AUTH without a usable mechanism -----------------------------------------------------------

_CLEAR = ["EHLO h", PLAIN_ME, "AUTH LOGIN", "MAIL FROM:<a@b>", "QUIT"]
_AFTER_TLS = ["EHLO h2", "AUTH LOGIN", PLAIN_ME, "MAIL FROM:<a@b>", "QUIT"]
_NONE = "server none 10.0.0.0/8 kw\n"
# (name, secrets, --server-auth-config or "", with TLS, what our side answers to the first AUTH, and
# after STARTTLS to AUTH LOGIN / AUTH PLAIN, "" without TLS)
MECHANISM_CASES = [
    ("m-empty", "plain", "m:", False, "502 command not implemented", ""),
    ("m-empty-tls", "plain", "m:", True, "502 command not implemented", "502|502"),
    ("x-all", "plain", f"x:{ALL}", False, "502 command not implemented", ""),
    ("md5-m-plain", "md5", "m:plain", False, "502 command not implemented", ""),
    ("a-plain-only", "plain", "m:;a:plain", False, "504 unsupported authentication mechanism", ""),
    ("a-plain-only-tls", "plain", "m:;a:plain", True, "504 unsupported authentication mechanism: use starttls",
     "504|235"),
    ("none-after-tls", "plain", "m:plain;a:", True, "235 authentication successful", "502|502"),
    ("trust-only", "none", "", False, "504 unsupported authentication mechanism", ""),
    ("trust-only-tls", "none", "", True, "504 unsupported authentication mechanism: use starttls", "504|535"),
    ("trust-only-a-login-tls", "none", "a:login", True, "502 command not implemented", "502|502"),
    ("unknown-hash-tls", "frob", "", True, "504 unsupported authentication mechanism: use starttls", "504|535"),
    ("client-only-tls", "client", "", True, "504 unsupported authentication mechanism: use starttls", "504|535"),
]  # fmt: skip
_SECRETS = {
    "plain": "server plain me secret\n",
    "md5": f"server md5 me {MD5_STATE}\n",
    "none": _NONE,
    "frob": "server frob me c2VjcmV0\n",
    "client": "client plain me secret\n",
}


def _mechanism_args(base: Path, certs: Certs, secrets: str, config: str, tls: bool) -> list[str]:
    args = ["--server-auth", _secrets(base, "secrets-" + secrets, _SECRETS[secrets])]
    args += ["--server-auth-config", config] if config else []
    return args + (["--server-tls", "--server-tls-certificate", str(certs.server_pem)] if tls else [])


def _check_first_auth(replies: list[list[str]], first: str, after_tls: str) -> None:
    """Our side's answers, spelt out (the comparison with upstream is done already)."""
    clear = replies[0]
    assert clear[2] == first, clear
    if after_tls:
        tls = replies[1]
        assert "|".join(r[:3] for r in tls[4:6]) == after_tls, tls
        advertised = [x for x in tls[3].split("\n") if x.startswith("250-AUTH")]
        assert bool(advertised) == (after_tls.split("|")[1] != "502"), tls


@needs_oracle
@pytest.mark.parametrize(("name", "secrets", "config", "tls", "first", "after_tls"), MECHANISM_CASES)
def test_auth_without_usable_mechanism_as_upstream(
    certs: Certs, name: str, secrets: str, config: str, tls: bool, first: str, after_tls: str
) -> None:
    """502 when no mechanism is offered now or after STARTTLS; 504 (``: use starttls`` when
    STARTTLS is offered) and ``rejecting authentication attempt without encryption`` when they
    come with TLS; secrets that offer nothing offer PLAIN over TLS (then 535, missing secret).
    Replies (EHLO's included) and logs the same on both sides."""
    base = daemon_base()
    dialogues: list[Dialogue] = [(_CLEAR, None)]
    if tls:
        dialogues.append((["EHLO h"], _AFTER_TLS))
    replies = _both(base, _mechanism_args(base, certs, secrets, config, tls), dialogues, name)
    _check_first_auth(replies, first, after_tls)


@pytest.mark.parametrize(("name", "secrets", "config", "tls", "first", "after_tls"), MECHANISM_CASES)
def test_ours_auth_without_usable_mechanism(
    certs: Certs, name: str, secrets: str, config: str, tls: bool, first: str, after_tls: str
) -> None:
    """Our side of the test above, with the log line that goes with each refusal."""
    base = daemon_base()
    dialogues: list[Dialogue] = [(_CLEAR, None)]
    if tls:
        dialogues.append((["EHLO h"], _AFTER_TLS))
    replies, log = _run("ours", base, _mechanism_args(base, certs, secrets, config, tls), dialogues, name)
    _check_first_auth(replies, first, after_tls)
    warning = {
        "502": "emailrelay: warning: client protocol error: AUTH requested but not advertised",
        "504": "emailrelay: warning: rejecting authentication attempt without encryption",
        "235": "emailrelay: info: successful authentication of remote client using mechanism [plain] "
        "and plaintext secret for [me] from line 1",
    }[first[:3]]
    assert warning in log
    assert not any("unsupported server AUTH mechanism: PLAIN" in x for x in log[: log.index(warning)])


def test_ours_protocol_auth_refusals() -> None:
    """The sans-IO machine: 502 with nothing offered, now or after TLS; 504 (``: use starttls``
    when STARTTLS is offered) when mechanisms come with TLS only."""
    cases = [
        (sp.ServerConfig(), "502 command not implemented"),
        (sp.ServerConfig(auth_required=True), "502 command not implemented"),
        (sp.ServerConfig(auth_mechanisms_tls=("PLAIN",)), "504 unsupported authentication mechanism"),
        (
            sp.ServerConfig(auth_mechanisms_tls=("PLAIN",), starttls=True),
            "504 unsupported authentication mechanism: use starttls",
        ),
        (sp.ServerConfig(auth_mechanisms=("LOGIN",)), "504 unsupported authentication mechanism"),
    ]
    for config, reply in cases:
        server = sp.SmtpServer(config)
        server.greeting()
        server.data_to_send()
        server.receive_data(b"HELO h\r\n")
        assert isinstance(server.next_event(), sp.Hello)
        server.accept()
        server.data_to_send()
        server.receive_data(b"AUTH PLAIN\r\n")
        event = server.next_event()
        assert isinstance(event, sp.ProtocolError), (config, event)
        assert server.data_to_send().decode() == reply + "\r\n", config
        assert server.auth_offered == config.auth_mechanisms


def test_ours_server_offer() -> None:
    """Secrets that allow no mechanism offer PLAIN once encrypted, through the config's lists."""
    assert server_offer([], None, encrypted=False) == []
    assert server_offer([], None, encrypted=True) == ["PLAIN"]
    assert server_offer([], AuthConfig.parse("a:login", "server"), encrypted=True) == []
    assert server_offer([], AuthConfig.parse("m:plain", "server"), encrypted=True) == ["PLAIN"]
    assert server_offer(["CRAM-MD5"], AuthConfig.parse("m:plain", "server"), encrypted=True) == []
    assert server_offer(["CRAM-MD5"], None, encrypted=True) == ["CRAM-MD5"]


# ---- 3: trusting [...] / not a trusted address ------------------------------------------------------

TRUST_DIALOGUE = ["EHLO h", "VRFY x", "VRFY y", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "VRFY z", "RSET",
                  "MAIL FROM:<a@b>", "MAIL FROM:<a@b>", "RSET", "HELO h", "VRFY q", PLAIN_ME, "VRFY r",
                  "MAIL FROM:<a@b>", "QUIT"]  # fmt: skip
_TRUSTING = "emailrelay: info: trusting [127.0.0.1]: matched [127.0.0.0/8] from line 1"
_UNTRUSTED = "emailrelay: info: server authentication enabled but not a trusted address: 127.0.0.1"
# (secrets' first line, --anonymous=vrfy, the lines logged after each command)
TRUST_CASES = [
    ("server none 127.0.0.0/8 kw", False, {"VRFY x", "VRFY y", "MAIL FROM:<a@b>#1", "VRFY z",
                                           "MAIL FROM:<a@b>#2", "VRFY q"}),
    ("server none 10.0.0.0/8 kw", False, {"MAIL FROM:<a@b>#1", "MAIL FROM:<a@b>#2", "MAIL FROM:<a@b>#3"}),
    ("server none 127.0.0.0/8 kw", True, {"MAIL FROM:<a@b>#1", "MAIL FROM:<a@b>#2"}),
]  # fmt: skip


def _trust_args(base: Path, first_line: str, anonymous_vrfy: bool, name: str) -> list[str]:
    args = ["--server-auth", _secrets(base, name, first_line + "\nserver plain me secret\n")]
    return args + (["--anonymous=vrfy"] if anonymous_vrfy else [])


def _trust_lines(log: list[str]) -> set[str]:
    """The commands after which a trust line was logged (``MAIL FROM:<a@b>#n``: the n-th MAIL)."""
    seen: set[str] = set()
    command, count = "", 0
    for line in log:
        m = re.fullmatch(r'emailrelay: info: rx<<: "(.*)"', line)
        if m:
            count += m[1] == "MAIL FROM:<a@b>"
            command = m[1] + (f"#{count}" if m[1] == "MAIL FROM:<a@b>" else "")
        elif line in (_TRUSTING, _UNTRUSTED):
            assert command not in seen, (command, log)
            seen.add(command)
    return seen


@needs_oracle
@pytest.mark.parametrize(("first_line", "anonymous_vrfy", "expected"), TRUST_CASES)
def test_trust_lines_as_upstream(first_line: str, anonymous_vrfy: bool, expected: set[str]) -> None:
    """Upstream logs ``trusting [...]`` at each MAIL and VRFY a trusted client (not authenticated)
    is let in by, and ``not a trusted address`` at each MAIL refused 530 (not at VRFY); ours
    logged the first once per session and not at VRFY, the second once per session."""
    base = daemon_base()
    args = _trust_args(base, first_line, anonymous_vrfy, "trust")
    got = {side: _run(side, base, args, [(TRUST_DIALOGUE, None)], "t") for side in SIDES}
    assert got["ours"] == got["upstream"]
    assert _trust_lines(got["ours"][1]) == expected


@pytest.mark.parametrize(("first_line", "anonymous_vrfy", "expected"), TRUST_CASES)
def test_ours_trust_lines(first_line: str, anonymous_vrfy: bool, expected: set[str]) -> None:
    base = daemon_base()
    args = _trust_args(base, first_line, anonymous_vrfy, "trust")
    _, log = _run("ours", base, args, [(TRUST_DIALOGUE, None)], "t")
    assert _trust_lines(log) == expected


# ---- 2: secrets lines -----------------------------------------------------------------------------

# lines upstream reads and uses: id/password me/secret unless said otherwise
MIXED_SECRETS = (
    "server none:x 127.0.0.1 kw\n"  # a type word's ":<anything>" is dropped ...
    "server plain:x me+41 secret\n"  # ... so this is plain, id meA
    "server plain:b Ym9i cHc\n"  # base64 without its padding: bob/pw
    f"server md5:b carol {MD5_STATE}\n"  # md5, the id xtext still
    "server plain = eq\n"  # "=" in xtext is itself
    "server plain dave a=b\n"
)
MIXED_DIALOGUES: list[Dialogue] = [
    (["EHLO h", "MAIL FROM:<a@b>", "QUIT"], None),
    (["EHLO h", "AUTH PLAIN " + b64("\0meA\0secret"), "QUIT"], None),
    (["EHLO h", "AUTH PLAIN " + b64("\0bob\0pw"), "QUIT"], None),
    (["EHLO h", "AUTH PLAIN " + b64("\0=\0eq"), "QUIT"], None),
    (["EHLO h", "AUTH LOGIN " + b64("dave"), b64("a=b"), "QUIT"], None),
]
# refused by both at start-up (exit 1), in upstream's words "invalid base64 encoding of id/secret"
REFUSED_SECRETS = [
    "server plain:b = cHc=\n",
    "server plain:b Ym9i =\n",
    "server plain:b = =\n",
    "client plain:b = cHc=\n",
]


def _cram_md5(port: int, user: str, password: bytes) -> str:
    """AUTH CRAM-MD5 as ``user``: the last reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        reader = sock.makefile("rb")
        read_reply(reader)
        _send(sock, reader, "EHLO h")
        challenge = _send(sock, reader, "AUTH CRAM-MD5")
        assert challenge.startswith("334 "), challenge
        digest = hmac.new(password, base64.b64decode(challenge[4:]), "md5").hexdigest()
        return _send(sock, reader, b64(f"{user} {digest}"))


def _mixed_args(base: Path) -> list[str]:
    return ["--server-auth", _secrets(base, "mixed", MIXED_SECRETS)]


def _check_mixed(replies: list[list[str]]) -> None:
    assert replies[0][2] == "250 sender <a@b> OK"  # 127.0.0.1 trusted by "none:x"
    assert [r[2] for r in replies[1:4]] == ["235 authentication successful"] * 3
    assert replies[4][3] == "235 authentication successful"


@needs_oracle
def test_secrets_lines_used_as_upstream() -> None:
    """``none:x``/``plain:x``/``md5:b`` are ``none``/``plain``/``md5`` (ours refused or ignored
    them), ``plain:b`` may leave its padding out and ``=`` in xtext is itself (ours refused both)."""
    base = daemon_base()
    _check_mixed(_both(base, _mixed_args(base), MIXED_DIALOGUES, "mixed"))
    for side in SIDES:
        with start(side, base, *_mixed_args(base), name=f"{side}md5") as d:
            assert _cram_md5(d.port, "carol", b"secret") == "235 authentication successful", side


def test_ours_secrets_lines_used() -> None:
    base = daemon_base()
    _check_mixed(_run("ours", base, _mixed_args(base), MIXED_DIALOGUES, "mixed")[0])
    with start("ours", base, *_mixed_args(base), name="md5") as d:
        assert _cram_md5(d.port, "carol", b"secret") == "235 authentication successful"
    secrets = Secrets.from_text(MIXED_SECRETS)
    carol = secrets.server_lookup("CRAM-MD5", "carol")
    assert carol is not None and carol.kind == "md5"
    assert [t.range_text for t in secrets.trust] == ["127.0.0.1"]


def _exit_code(side: str, base: Path, text: str, name: str) -> tuple[int | None, str]:
    """``side`` started with a secrets file: its exit code and stderr, or None if it runs on."""
    home = base / f"{side}{name}"
    home.mkdir()
    argv = [program(side), "--no-daemon", "--log", "--no-syslog", "--port", str(free_port()),
            "--spool-dir", str(spool_dir(home / "spool")), "--server-auth", _secrets(home, "s", text)]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, timeout=5, cwd=home, check=False)
    except subprocess.TimeoutExpired:  # (the child is killed by subprocess.run)
        return None, ""
    return done.returncode, done.stderr.decode()


@needs_oracle
@pytest.mark.parametrize("text", REFUSED_SECRETS)
def test_empty_plain_b_field_refused_as_upstream(text: str) -> None:
    """``=`` (empty) as a ``plain:b`` id or password: upstream refuses the file (``invalid base64
    encoding of id``/``secret``, exit 1); ours took it. Only ``client plain:b = =`` is kept."""
    base = daemon_base()
    for side in SIDES:
        code, stderr = _exit_code(side, base, text, "x")
        assert code == 1 and "invalid base64" in stderr, (side, stderr)


@pytest.mark.parametrize("text", REFUSED_SECRETS)
def test_ours_empty_plain_b_field_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid base64 in (id \[=\]|the secret for \[bob\])"):
        Secrets.from_text(text)


def test_ours_client_plain_b_without_account_kept() -> None:
    account = Secrets.from_text("client plain:b = =\n").client_account()
    assert account is not None and account.is_empty


@needs_oracle
@pytest.mark.parametrize("state", ["c2VjcmV0", MD5_STATE[:-1] + "AAAAAAAA"])
def test_md5_state_of_wrong_length_refused_by_ours_only(state: str) -> None:
    """Kept (decisions.md): an md5 secret that is not a 32-octet state is taken by upstream, whose
    every CRAM-MD5 then fails (``challenge-response failure: invalid md5 hash state``); ours
    refuses the file at start-up, naming file and line."""
    base = daemon_base()
    text = f"server md5 me {state}\n"
    assert _exit_code("upstream", base, text, "u") == (None, "")
    code, stderr = _exit_code("ours", base, text, "o")
    assert code == 1 and "invalid md5 secret for [me]" in stderr, stderr


# ---- "successful authentication" is a --verbose line --------------------------------------


def _quiet_login(side: str, base: Path) -> str:
    """``side`` run with ``--log`` alone (no ``--verbose``) as root with the default ``--user``: one
    SMTP login and one POP login; its log."""
    home = base / f"quiet-{side}"
    home.mkdir(parents=True)
    home.chmod(0o755)
    secrets = _secrets(base, f"quiet-{side}.auth", "server plain me secret\n")
    port, pop_port = free_port(), free_port()
    argv = [program(side), "--no-daemon", "--log", "--no-syslog", "--port", str(port), "--interface", "127.0.0.1",
            "--spool-dir", str(spool_dir(home / "spool")), "--server-auth", secrets,
            "--pop", "--pop-port", str(pop_port), "--pop-auth", secrets]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        wait_for_port(pop_port, proc=proc)
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            client.login("me", "secret")
        pop = poplib.POP3("127.0.0.1", pop_port, timeout=20)
        pop.user("me")
        pop.pass_("secret")
        pop.quit()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return err.decode()


def _assert_quiet(log: str) -> None:
    assert "smtp connection from" in log and "pop connection from" in log, log
    assert "successful authentication" not in log, log


def test_successful_authentication_is_verbose_only(tmp_path: Path) -> None:
    """As E-MailRelay 2.6b: without ``--verbose`` a successful login (SMTP, POP) logs no line."""
    _assert_quiet(_quiet_login("ours", daemon_base(tmp_path)))


@needs_oracle
def test_successful_authentication_is_verbose_only_as_upstream(tmp_path: Path) -> None:
    _assert_quiet(_quiet_login("upstream", daemon_base(tmp_path)))
