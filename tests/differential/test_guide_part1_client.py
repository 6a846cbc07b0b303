"""Reference guide "SMTP client options", ``--client-smtp-config`` keywords, against E-MailRelay 2.6b.

What it is for (issue 17): docs/compatibility.md's rows for ``pipelining``,
``smtputf8strict``, ``eightbitstrict`` and ``binarymimestrict``. The same
hand-made spool (tests/support/diff_forwarding.py's files, the envelope
marked 8bit, binarymime or with UTF-8 mailbox names) is forwarded by each
side with ``--as-client`` to a scripted next hop that lacks the extension,
with and without the keyword; the exit code, log, spool files and what the
next hop received are compared. Skipped without ``EMAILRELAY_ORACLE_BIN``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.certs import Certs, _issue
from tests.support.diff_forwarding import B, both, same, tls_hop
from tests.support.diff_guide import readable_file
from tests.support.fake_smtp import FakeSmtp, auth_script
from tests.support.oracle import daemon_base, needs_oracle
from tests.support.tls_server import TlsSmtpServer

pytestmark = [needs_oracle, pytest.mark.timeout(120)]


def _mark(old: bytes, new: bytes) -> Callable[[Path], None]:
    """A ``prep`` that rewrites one field of every envelope of the spool."""

    def prep(spool: Path) -> None:
        for path in spool.glob("*.envelope"):
            path.write_bytes(path.read_bytes().replace(old, new))

    return prep


EIGHT_BIT = _mark(b"Content: 7bit", b"Content: 8bit")
BINARY = _mark(b"Content: 7bit", b"Content: binarymime")
UTF8 = _mark(b"Utf8MailboxNames: 0", b"Utf8MailboxNames: 1")

CASES = {
    "pipelining": (("-c", "pipelining"), ("PIPELINING", "8BITMIME"), None, True),
    "smtputf8strict": (("-c", "smtputf8strict"), ("8BITMIME",), UTF8, False),
    "smtputf8-not-strict": ((), ("8BITMIME",), UTF8, False),
    "eightbitstrict": (("--client-smtp-config", "eightbitstrict"), (), EIGHT_BIT, False),
    "eightbit-not-strict": ((), (), EIGHT_BIT, True),
    "binarymimestrict": (("-c", "binarymimestrict"), ("8BITMIME",), BINARY, False),
    "binarymime-not-strict": ((), ("8BITMIME",), BINARY, False),
}


@pytest.mark.parametrize(("args", "extensions", "prep", "sent"), list(CASES.values()), ids=list(CASES))
def test_client_smtp_config_keywords(
    tmp_path: Path,
    args: tuple[str, ...],
    extensions: tuple[str, ...],
    prep: Callable[[Path], None] | None,
    sent: bool,
) -> None:
    """The same exit code, log lines, spool files and next-hop dialogue on both sides; a strict
    keyword fails the message (``.bad``) where the next hop lacks the extension; so does an SMTPUTF8 or
    BINARYMIME message without the keyword, on both sides; an 8BITMIME one is then sent."""
    run = same(both(tmp_path, lambda: FakeSmtp(extensions=extensions), [[B]], *args, prep=prep))
    assert run.commands and run.commands[0].startswith("EHLO ")
    assert len(run.messages) == (1 if sent else 0)
    assert any(name.endswith(".envelope.bad") for name in run.spool) == (not sent), run.spool


@pytest.mark.parametrize("where", ["command-line", "config-file"])
def test_client_auth_plain_value(tmp_path: Path, where: str) -> None:
    """``--client-auth plain:<base64-user-id>:<base64-password>`` on the command line, and
    ``client-auth plain:...`` in a configuration file: the same AUTH dialogue, log and spool."""
    value = "plain:bWU=:c2VjcmV0"  # "me", "secret"
    conf = readable_file(daemon_base(tmp_path) / "client.conf", f"client-auth {value}\n")
    args = ("--client-auth", value) if where == "command-line" else (str(conf),)
    hop = lambda: FakeSmtp(extensions=("8BITMIME", "AUTH PLAIN LOGIN"), auth=auth_script("235 2.7.0 ok"))  # noqa: E731
    run = same(both(tmp_path, hop, [[B]], *args))
    assert run.rc == 0 and run.spool == {} and len(run.messages) == 1
    assert run.auth and run.auth[0][0].startswith("PLAIN ")


# ---- client TLS options -------------------------------------------------------------------------


def _key_and_certificate(pem: Path) -> tuple[Path, Path]:
    """``pem`` (key and certificate in one file) split into a key file and a certificate file."""
    text = pem.read_text()
    start = text.index("-----BEGIN CERTIFICATE-----")
    key, cert = pem.with_suffix(".key-only"), pem.with_suffix(".cert-only")
    key.write_text(text[:start] if "PRIVATE KEY" in text[:start] else text[text.index("-----BEGIN", 1) :])
    cert.write_text(
        text[start : text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")]
    )
    for path in (key, cert):
        path.chmod(0o644)
    return key, cert


SSL_EOF = "emailrelay: warning: tls: tls error: SSL_read(): [error:0A000126:SSL routines::unexpected eof while reading]"
TLS_CASES = {
    "client-certificate": ("client_ca", ("--client-tls-certificate", "{client_pem}"), True, (), ()),
    "client-certificate-twice": ("client_ca", ("--client-tls-certificate", "{key}", "--client-tls-certificate", "{cert}"), True, (), ()),
    # both log the failed read (SSL_EOF) and ": ssl read" after "peer disconnected", also in the .bad
    "no-client-certificate": ("client_ca", (), False, (), ()),
    "verify-default": ("", ("--client-tls-verify", "<default>"), False, (), ()),
    "verify-name-wrong": ("", ("--client-tls-verify", "{ca}", "--client-tls-verify-name", "wrong.example"), False, (), ()),
    "verify-name-right": ("", ("--client-tls-verify", "{ca}", "--client-tls-verify-name", "localhost"), True, (), ()),
    "tls-config-max-1.2": ("", ("-9", "-tlsv1.2"), True, (), ()),
    "tls-config-min-1.3": ("", ("--tls-config", "tlsv1.3"), True, (), ()),
}  # fmt: skip


@pytest.mark.parametrize(
    ("hop_kind", "args", "sent", "upstream_only", "ours_only"), list(TLS_CASES.values()), ids=list(TLS_CASES)
)
def test_client_tls_options(
    tmp_path: Path,
    certs: Certs,
    hop_kind: str,
    args: tuple[str, ...],
    sent: bool,
    upstream_only: tuple[str, ...],
    ours_only: tuple[str, ...],
) -> None:
    """``--client-tls`` to a STARTTLS next hop (a CA-signed ``localhost`` certificate; one that demands
    a client certificate from the CA where the case says): the same exit code, spool and next-hop
    dialogue on both sides, the message sent or not as the case says, and the same log but for the
    lines the case names (issue 17, not recorded decisions)."""
    key, cert = _key_and_certificate(certs.client_pem)
    names = {"client_pem": certs.client_pem, "key": key, "cert": cert, "ca": certs.ca}
    argv = ["--client-tls", *(a.format(**names) for a in args)]
    client_ca = certs.ca if hop_kind == "client_ca" else None
    runs = both(tmp_path, tls_hop(certificate=certs.server_pem, client_ca=client_ca), [[B]], *argv)
    ours, upstream = runs["ours"], runs["upstream"]
    assert (ours.rc, ours.spool, ours.commands, ours.messages) == (
        upstream.rc, upstream.spool, upstream.commands, upstream.messages,
    )  # fmt: skip
    assert len(ours.messages) == (1 if sent else 0)
    assert (SSL_EOF in ours.log) == (hop_kind == "client_ca" and not sent)  # the refused certificate
    assert [x for x in upstream.log if x not in ours.log] == list(upstream_only)
    assert [x for x in ours.log if x not in upstream.log] == list(ours_only)


@pytest.mark.parametrize(
    ("config", "ignored"),
    [("openssl", "openssl"), ("foo", "foo"), ("tlsv1.2,foo,OpenSSL,,tlsv1.2", "foo,OpenSSL,tlsv1.2")],
    ids=["openssl", "unknown", "mixed"],
)
def test_client_tls_config_items_ignored(
    tmp_path: Path,
    certs: Certs,
    config: str,
    ignored: str,
) -> None:
    """``--client-tls --tls-config <items>``: any item but a protocol keyword (``openssl`` too, any
    case, a repeat) is ignored with a start-up warning listing it, and the message is sent over TLS:
    the same log, dialogue and spool on both sides."""
    hop = tls_hop(certificate=certs.server_pem)
    run = same(both(tmp_path, hop, [[B]], "--client-tls", "--tls-config", config))
    assert run.rc == 0 and run.spool == {} and len(run.messages) == 1
    assert f"emailrelay: warning: tls-config: tls configuration items ignored: [{ignored}]" in run.log


class _ClosingTlsHop:
    """A next hop that offers STARTTLS, and once the client's EHLO comes over TLS ends the session
    without a reply: with a TLS close_notify first (``notify``) or a bare end of file."""

    def __init__(self, certificate: Path, notify: bool) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(certificate))
        self.notify = notify
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(60)
        self.port = self.listener.getsockname()[1]
        self.commands: list[tuple[str]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _ClosingTlsHop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.thread.join(60)

    def _serve(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.settimeout(60)
        with sock, sock.makefile("rb") as lines:
            sock.sendall(b"220 hop ready\r\n")
            for reply in (b"250-hop hello\r\n250 STARTTLS\r\n", b"220 ready to start tls\r\n"):
                self.commands.append((lines.readline().decode().strip(),))
                sock.sendall(reply)
            tls = self.context.wrap_socket(sock, server_side=True)
            with tls.makefile("rb") as secure:
                self.commands.append((secure.readline().decode().strip(),))
            if self.notify:
                tls.unwrap().close()
            else:
                tls.close()


@pytest.mark.parametrize("notify", [True, False], ids=["close-notify", "bare-eof"])
def test_client_tls_peer_disconnects(tmp_path: Path, certs: Certs, notify: bool) -> None:
    """The next hop ends the session over TLS: both sides give ``peer disconnected: ssl read`` (log
    and ``.bad``); a bare end of file (no close_notify) is also logged as OpenSSL's ``SSL_read()``
    error (SSL_EOF), on both sides; the same log, dialogue and spool."""
    run = same(both(tmp_path, lambda: _ClosingTlsHop(certs.server_pem, notify), [[B]], "--client-tls"))
    assert run.rc == 1 and run.commands == ["EHLO 127.0.0.1", "STARTTLS", "EHLO 127.0.0.1"]
    assert "emailrelay: error: peer disconnected: ssl read" in run.log
    assert (SSL_EOF in run.log) == (not notify)
    assert [v.count(b"X-MailRelay-Reason: peer disconnected: ssl read") for v in run.spool.values()] == [0, 1]


# ---- --client-auth-config -----------------------------------------------------------------------

LOGIN_SCRIPT = ("334 UGFzc3dvcmQ6", "235 2.7.0 ok")
AUTH_CONFIG_CASES = {
    "default": ((), ("235 2.7.0 ok",), "PLAIN"),
    "m-login": (("--client-auth-config", "m:login"), LOGIN_SCRIPT, "LOGIN"),
    "x-plain": (("--client-auth-config", "x:plain"), LOGIN_SCRIPT, "LOGIN"),
    "a-login-unencrypted": (("--client-auth-config", "a:login"), ("235 2.7.0 ok",), "PLAIN"),
    "d-plain-unencrypted": (("--client-auth-config", "d:plain"), ("235 2.7.0 ok",), "PLAIN"),
    "m-login-plain": (("--client-auth-config", "m:login,plain"), ("235 2.7.0 ok",), "PLAIN"),  # no order
}


@pytest.mark.parametrize(
    "offered", [("8BITMIME", "AUTH PLAIN LOGIN"), ("8BITMIME",)], ids=["auth", "no-auth"]
)
@pytest.mark.parametrize(
    "lines", ["server plain me secret\n", "client plain me secret s1\n"], ids=["server", "selector"]
)
def test_client_auth_without_a_default_account_fails_the_message(
    tmp_path: Path, offered: tuple[str, ...], lines: str
) -> None:
    """``--client-auth`` with no ``client`` line for the empty selector (only server lines, or only
    a selector's): upstream fails a message without a selector, ``no client authentication account:
    selector []``, whatever the next hop offers; ours sent it without authentication."""
    secrets = readable_file(daemon_base(tmp_path) / "client.auth", lines)
    hop = lambda: FakeSmtp(extensions=offered, auth=auth_script("235 2.7.0 ok"))  # noqa: E731
    run = same(both(tmp_path, hop, [[B]], "--client-auth", str(secrets)))
    assert run.rc == 1 and run.messages == [] and run.commands == ["EHLO 127.0.0.1"]
    assert run.log[-1] == "emailrelay: error: no client authentication account: selector []"


def test_client_auth_config_m_is_an_allow_list(tmp_path: Path) -> None:
    """``m:login`` with a next hop that offers only PLAIN: no authentication is possible, and the
    message fails (ours used to fall back to PLAIN, sending the password in the clear)."""
    secrets = readable_file(daemon_base(tmp_path) / "client.auth", "client plain me secret\n")
    hop = lambda: FakeSmtp(extensions=("8BITMIME", "AUTH PLAIN"), auth=auth_script("235 2.7.0 ok"))  # noqa: E731
    run = same(both(tmp_path, hop, [[B]], "--client-auth", str(secrets), "--client-auth-config", "m:login"))
    assert run.rc == 1 and run.auth == [] and run.messages == []
    assert (
        run.log[-1]
        == "emailrelay: error: smtp error: cannot do authentication: check for a compatible client secret"
    )


@pytest.mark.parametrize(
    ("args", "script", "mechanism"), list(AUTH_CONFIG_CASES.values()), ids=list(AUTH_CONFIG_CASES)
)
def test_client_auth_config_lists(
    tmp_path: Path, args: tuple[str, ...], script: tuple[str, ...], mechanism: str
) -> None:
    """A plain-text next hop offering ``AUTH PLAIN LOGIN``: the mechanism each ``--client-auth-config``
    list leads to (``a:``/``d:`` apply only after TLS), with the same dialogue, log and spool."""
    secrets = readable_file(daemon_base(tmp_path) / "client.auth", "client plain me secret\n")
    hop = lambda: FakeSmtp(extensions=("8BITMIME", "AUTH PLAIN LOGIN"), auth=auth_script(*script))  # noqa: E731
    run = same(both(tmp_path, hop, [[B]], "--client-auth", str(secrets), *args))
    assert run.rc == 0 and len(run.messages) == 1
    assert run.auth[0][0].split()[0] == mechanism


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
@pytest.mark.parametrize(
    ("args", "mechanism"),
    [(("--client-auth-config", "a:login"), "PLAIN"), (("--client-auth-config", "d:plain"), "PLAIN"),
     (("--client-auth-config", "m:login"), "LOGIN"), (("--client-auth-config", "x:plain"), "LOGIN"), ((), "PLAIN")],
    ids=["a-login", "d-plain", "m-login", "x-plain", "default"],
)  # fmt: skip
def test_client_auth_config_over_tls(
    tmp_path: Path,
    certs: Certs,
    args: tuple[str, ...],
    mechanism: str,
    implicit: bool,
) -> None:
    """Over TLS (after STARTTLS, or ``--client-tls-connection``) to a next hop offering ``AUTH PLAIN
    LOGIN``: E-MailRelay 2.6b's client follows ``m:``/``x:`` and not ``a:``/``d:`` (the guide says
    otherwise), and says ``over tls`` in its success line; ours the same: the same log, dialogue and
    spool on both sides, and the mechanism the case names."""
    secrets = readable_file(daemon_base(tmp_path) / "client.auth", "client plain me secret\n")
    hop = tls_hop(
        certificate=certs.server_pem, require_auth=True, accounts={"me": "secret"}, implicit=implicit
    )
    tls = "--client-tls-connection" if implicit else "--client-tls"
    run = same(both(tmp_path, hop, [[B]], tls, "--client-auth", str(secrets), *args))
    assert run.rc == 0 and run.spool == {} and len(run.messages) == 1
    assert [c.split()[1] for c in run.commands if c.startswith("AUTH ")] == [mechanism]
    assert (
        "emailrelay: info: successful authentication with remote server "
        f"over tls using mechanism [{mechanism.lower()}] and plaintext secret for [me] from line 1"
    ) in run.log


def test_client_tls_server_name_is_sent_as_sni(tmp_path: Path, certs: Certs) -> None:
    """``--client-tls-connection --client-tls-server-name mail.example.test`` to an implicit-TLS next
    hop: both send that name as SNI, and the rest (log, spool, dialogue) is the same."""
    names: list[str | None] = []

    def make() -> TlsSmtpServer:
        hop = TlsSmtpServer(
            certificate=certs.server_pem, implicit=True, require_tls=False, require_auth=False
        )
        assert hop._context is not None
        hop._context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,func-returns-value]
        return hop

    run = same(
        both(
            tmp_path, make, [[B]], "--client-tls-connection", "--client-tls-server-name", "mail.example.test"
        )
    )
    assert run.rc == 0 and len(run.messages) == 1
    assert names == ["mail.example.test", "mail.example.test"]


VERIFY_NAME_CASES = {
    # (server certificate: CN, subjectAltName or None for the usual localhost one; --client-tls-verify-name)
    "cn": (None, "localhost"),
    "san-ip-not-cn": (None, "127.0.0.1"),
    "case-differs": (None, "LOCALHOST"),
    "san-only": (("other.example", "DNS:localhost,DNS:alt.example"), "alt.example"),
    "cn-not-in-san": (("other.example", "DNS:localhost,DNS:alt.example"), "other.example"),
    "chain-untrusted": (("self-signed", None), "localhost"),
}


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
@pytest.mark.parametrize(("server", "name"), list(VERIFY_NAME_CASES.values()), ids=list(VERIFY_NAME_CASES))
def test_client_tls_verify_name(
    tmp_path: Path,
    certs: Certs,
    server: tuple[str, str | None] | None,
    name: str,
    implicit: bool,
) -> None:
    """``--client-tls-verify <ca> --client-tls-verify-name <name>``: E-MailRelay 2.6b checks the
    name against the subject's CN only (not the subjectAltNames) once the chain verifies, logs
    ``tls: certificate-subject=[...] required-peer-name=[...] ok=0/1`` and on a wrong name fails the
    handshake (``certificate verify failed``, the message ``.bad``); ours the same: the same log,
    spool and dialogue on both sides, after STARTTLS and with ``--client-tls-connection``."""
    if server is None:
        pem = certs.server_pem
    elif server[0] == "self-signed":
        pem = certs.self_signed_pem
    else:
        pem = _issue(certs.dir, "named", server[0], "2", server[1])
        pem.chmod(0o644)
    tls = "--client-tls-connection" if implicit else "--client-tls"
    hop = tls_hop(certificate=pem, implicit=implicit)
    run = same(
        both(
            tmp_path, hop, [[B]], tls, "--client-tls-verify", str(certs.ca), "--client-tls-verify-name", name
        )
    )
    checks = [x for x in run.log if "required-peer-name" in x]
    if server is not None and server[0] == "self-signed":
        assert checks == [] and run.rc == 1  # the chain fails first: no name check
    else:
        assert len(checks) == 1 and checks[0].endswith(f"required-peer-name=[{name}] ok={run.rc ^ 1}")
    assert len(run.messages) == 1 - run.rc
