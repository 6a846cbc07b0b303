"""Tests for emailrelay.auth.tls: contexts from the TLS options, real handshakes.

Certificates are made here with the ``openssl`` command line: a CA, a server
certificate for ``localhost``, a client certificate, an expired server
certificate and a self-signed one.  Handshakes run over a socketpair with the
server side in a thread.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from emailrelay.auth.tls import (
    ClientContext,
    check_peer_name,
    client_context,
    describe,
    parse_tls_config,
    peer_certificate_pem,
    server_context,
)
from emailrelay.errors import UsageError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass
class Certs:
    dir: Path
    ca: Path
    server_pem: Path  # key + certificate in one file
    server_key: Path
    server_cert: Path
    client_pem: Path
    expired_pem: Path
    self_signed_pem: Path


def _issue(d: Path, name: str, cn: str, days: str, san: str | None) -> Path:
    _openssl(
        "req", "-noenc", "-subj", f"/CN={cn}", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d
    )
    extra: list[str] = []
    if san:
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", f"{name}.ext"]
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", days, "-out", f"{name}.crt", *extra, cwd=d,
    )  # fmt: skip
    pem = d / f"{name}.pem"
    pem.write_bytes((d / f"{name}.key").read_bytes() + (d / f"{name}.crt").read_bytes())
    return pem


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-noenc", "-subj", "/CN=Test CA", *EC, "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", cwd=d)  # fmt: skip
    server_pem = _issue(d, "server", "localhost", "2", "DNS:localhost,IP:127.0.0.1")
    client_pem = _issue(d, "client", "client.example.com", "2", None)
    expired_pem = _issue(d, "expired", "localhost", "-1", "DNS:localhost")
    _openssl("req", "-x509", "-noenc", "-subj", "/CN=localhost", *EC, "-keyout", "self.pem", "-out", "self.pem",
             "-days", "2", cwd=d)  # fmt: skip
    return Certs(
        d,
        d / "ca.pem",
        server_pem,
        d / "server.key",
        d / "server.crt",
        client_pem,
        expired_pem,
        d / "self.pem",
    )


@dataclass
class Outcome:
    client_ok: bool
    server_ok: bool
    client_error: str = ""
    server_error: str = ""
    description: str = ""
    client_pem_seen_by_server: str = ""
    peer_name: tuple[str, str, bool] | None = None  # check_peer_name() on the client's side


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str | None = None) -> Outcome:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    result: dict[str, str] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                result["pem"] = peer_certificate_pem(s)
                data = s.recv(4)
                s.sendall(data.upper())
                result["ok"] = "1"
        except (OSError, ssl.SSLError) as err:
            result["error"] = str(err)
            a.close()

    thread = threading.Thread(target=serve)
    thread.start()
    client_ok, client_error, description, peer_name = False, "", "", None
    try:
        with client_ctx.wrap_socket(b, server_hostname=hostname) as c:
            description = describe(c)
            peer_name = check_peer_name(c)
            c.sendall(b"ping")
            client_ok = c.recv(4) == b"PING"
    except (OSError, ssl.SSLError) as err:
        client_error = str(err)
        b.close()
    thread.join(20)
    return Outcome(
        client_ok,
        "ok" in result,
        client_error,
        result.get("error", ""),
        description,
        result.get("pem", ""),
        peer_name,
    )


# ------------------------------------------------------------------ handshakes


def test_encryption_without_verification(certs: Certs) -> None:
    out = handshake(server_context([str(certs.server_pem)]), client_context())
    assert out.client_ok and out.server_ok
    assert out.description.startswith("TLSv1.3 TLS_")
    assert out.client_pem_seen_by_server == ""


def test_unverified_client_accepts_self_signed_and_expired(certs: Certs) -> None:
    for pem in (certs.self_signed_pem, certs.expired_pem):
        out = handshake(server_context([str(pem)]), client_context(), "localhost")
        assert out.client_ok, out.client_error


def test_key_and_certificate_as_two_files(certs: Certs) -> None:
    ctx = server_context([str(certs.server_key), str(certs.server_cert)])
    out = handshake(ctx, client_context(verify=str(certs.ca)))
    assert out.client_ok, out.client_error


def test_client_verifies_server_against_ca(certs: Certs) -> None:
    out = handshake(
        server_context([str(certs.server_pem)]), client_context(verify=str(certs.ca)), "ignored.example"
    )
    assert out.client_ok, out.client_error  # no verify-name: the chain only


def test_client_verify_fails_for_self_signed(certs: Certs) -> None:
    out = handshake(server_context([str(certs.self_signed_pem)]), client_context(verify=str(certs.ca)))
    assert not out.client_ok
    assert "certificate verify failed" in out.client_error


def test_client_verify_fails_for_expired(certs: Certs) -> None:
    out = handshake(server_context([str(certs.expired_pem)]), client_context(verify=str(certs.ca)))
    assert not out.client_ok
    assert "expired" in out.client_error


def test_verify_name_matches(certs: Certs) -> None:
    """The chain is verified in the handshake; the name after it, against the subject's CN."""
    ctx = client_context(verify=str(certs.ca), verify_name="localhost")
    assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    out = handshake(
        server_context([str(certs.server_pem)]), ctx, "mail.example.com"
    )  # caller's name replaced
    assert out.client_ok, out.client_error
    assert out.peer_name == ("/CN=localhost", "localhost", True)


def test_verify_name_mismatch_is_found(certs: Certs) -> None:
    """A subjectAltName (here IP:127.0.0.1) does not count, as E-MailRelay 2.6b; nor another case."""
    for name in ("other.example.com", "127.0.0.1", "LOCALHOST"):
        out = handshake(
            server_context([str(certs.server_pem)]), client_context(verify=str(certs.ca), verify_name=name)
        )
        assert out.peer_name == ("/CN=localhost", name, False)


def test_verify_name_uses_common_name_without_san(certs: Certs) -> None:
    ctx = client_context(verify=str(certs.ca), verify_name="client.example.com")
    out = handshake(server_context([str(certs.client_pem)]), ctx)
    assert out.client_ok, out.client_error
    assert out.peer_name == ("/CN=client.example.com", "client.example.com", True)


def test_no_peer_name_check_without_verify_name(certs: Certs) -> None:
    out = handshake(server_context([str(certs.server_pem)]), client_context(verify=str(certs.ca)))
    assert out.client_ok and out.peer_name is None


def test_server_name_is_sent_as_sni(certs: Certs) -> None:
    seen: list[str | None] = []
    server_ctx = server_context([str(certs.server_pem)])
    server_ctx.sni_callback = lambda sslobj, name, ctx: seen.append(name)  # type: ignore[assignment,misc,return-value]
    out = handshake(server_ctx, client_context(server_name="smtp.example.com"), "10.0.0.1")
    assert out.client_ok
    assert seen == ["smtp.example.com"]


def test_server_requires_verified_client_certificate(certs: Certs) -> None:
    server_ctx = server_context([str(certs.server_pem)], verify=str(certs.ca))
    out = handshake(server_ctx, client_context([str(certs.client_pem)], verify=str(certs.ca)))
    assert out.client_ok and out.server_ok, (out.client_error, out.server_error)
    assert out.client_pem_seen_by_server.startswith("-----BEGIN CERTIFICATE-----")


def test_server_rejects_client_without_certificate(certs: Certs) -> None:
    server_ctx = server_context([str(certs.server_pem)], verify=str(certs.ca))
    out = handshake(server_ctx, client_context())
    assert not out.server_ok
    assert "certificate" in out.server_error
    assert not out.client_ok


def test_server_rejects_untrusted_client_certificate(certs: Certs) -> None:
    server_ctx = server_context([str(certs.server_pem)], verify=str(certs.ca))
    out = handshake(server_ctx, client_context([str(certs.self_signed_pem)]))
    assert not out.server_ok
    assert "certificate verify failed" in out.server_error


def test_ca_directory(certs: Certs, tmp_path: Path) -> None:
    cadir = tmp_path / "cas"
    cadir.mkdir()
    shutil.copy(certs.ca, cadir / "ca.pem")
    _openssl("rehash", str(cadir), cwd=tmp_path)
    out = handshake(server_context([str(certs.server_pem)]), client_context(verify=str(cadir)))
    assert out.client_ok, out.client_error


def test_default_ca_set_does_not_trust_test_ca(certs: Certs) -> None:
    out = handshake(server_context([str(certs.server_pem)]), client_context(verify="<default>"))
    assert not out.client_ok


def test_protocol_bounds(certs: Certs) -> None:
    server_ctx = server_context([str(certs.server_pem)])
    out = handshake(server_ctx, client_context(tls_config="-tlsv1.2"))
    assert out.client_ok and out.description.startswith("TLSv1.2 ")
    strict = server_context([str(certs.server_pem)], tls_config="tlsv1.3")
    out = handshake(strict, client_context(tls_config="openssl,tlsv1.2,-tlsv1.2"))
    assert not out.client_ok and not out.server_ok


# ------------------------------------------------------------------ options


def test_contexts_modes(certs: Certs) -> None:
    plain = client_context()
    assert isinstance(plain, ClientContext)
    assert plain.verify_mode == ssl.CERT_NONE and not plain.check_hostname
    chain_only = client_context(verify=str(certs.ca))
    assert chain_only.verify_mode == ssl.CERT_REQUIRED and not chain_only.check_hostname
    # as E-MailRelay 2.6b: a client certificate is asked for, optional and unchecked without a CA
    assert server_context([str(certs.server_pem)]).verify_mode == ssl.CERT_OPTIONAL
    assert server_context([str(certs.server_pem)], verify="<default>").verify_mode == ssl.CERT_REQUIRED
    for verify in (None, "<default>"):  # noverify: nothing asked for, nothing checked
        assert server_context([str(certs.server_pem)], verify, "noverify").verify_mode == ssl.CERT_NONE
    assert client_context(verify=str(certs.ca), tls_config="noverify").verify_mode == ssl.CERT_NONE


def test_effective_server_hostname() -> None:
    # as E-MailRelay 2.6b: SNI only with --client-tls-server-name, not the next hop's name
    assert client_context().effective_server_hostname("peer") is None
    assert client_context(server_name="sni").effective_server_hostname("peer") == "sni"


@pytest.mark.parametrize(
    ("text", "minimum", "maximum"),
    [
        (None, None, None),
        ("", None, None),
        ("openssl", None, None),
        ("tlsv1.2", ssl.TLSVersion.TLSv1_2, None),
        ("TLSv1.3", None, None),  # case counts, as E-MailRelay 2.6b
        ("-tlsv1.2", None, ssl.TLSVersion.TLSv1_2),
        ("tlsv1.0,-tlsv1.1", ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1),
        ("tlsv1.0, -tlsv1.1", ssl.TLSVersion.TLSv1, None),  # so do spaces
        ("sslv3,noverify", ssl.TLSVersion.SSLv3, None),  # as E-MailRelay 2.6b takes them
    ],
)
def test_parse_tls_config(
    text: str | None, minimum: ssl.TLSVersion | None, maximum: ssl.TLSVersion | None
) -> None:
    config = parse_tls_config(text)
    assert (config.minimum, config.maximum) == (minimum, maximum)


@pytest.mark.parametrize(
    ("text", "ignored"),
    [
        ("mbedtls", ("mbedtls",)),
        ("openssl", ("openssl",)),
        ("MbedTLS,tlsv1.2", ("MbedTLS",)),
        ("tlsv1.2,foo,OpenSSL,bar", ("foo", "OpenSSL", "bar")),
        ("foo,,tlsv1.3", ("foo",)),
        ("foo,foo", ("foo", "foo")),
        ("tlsv1.2,tlsv1.2", ("tlsv1.2",)),
        (" foo , tlsv1.2 ", (" foo ", " tlsv1.2 ")),
        ("tlsv1.4", ("tlsv1.4",)),
        ("tlsv1.2,-tlsv1.3", ()),
    ],
)
def test_tls_config_unknown_items_are_ignored(text: str, ignored: tuple[str, ...]) -> None:
    """As E-MailRelay 2.6b (observed): any item but a protocol keyword, as given, once, is listed
    as ignored, in order, and the other keywords still count."""
    assert parse_tls_config(text).ignored == ignored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-sslv3", "invalid --tls-config keyword [-sslv3]"),
        ("tlsv1.3,-tlsv1.2", "minimum TLS version is above the maximum"),
    ],
)
def test_tls_config_errors(text: str, message: str, certs: Certs) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_tls_config(text)
    with pytest.raises(UsageError):
        server_context([str(certs.server_pem)], tls_config=text)
    with pytest.raises(UsageError):
        client_context(tls_config=text)


def test_missing_certificate_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(UsageError, match=r"--server-tls-certificate: cannot read \[.*nope.pem\]"):
        server_context([str(missing)])
    with pytest.raises(UsageError, match=r"nope\.pem"):
        client_context([str(missing)])


def test_invalid_certificate_file_is_named(tmp_path: Path, certs: Certs) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    with pytest.raises(UsageError, match=r"invalid certificate or private key in \[.*garbage.pem\]"):
        server_context([str(garbage)])
    with pytest.raises(UsageError, match=r"\[.*server.key\]: no usable PEM certificate or key"):
        server_context([str(certs.server_key)])  # a key without a certificate
    with pytest.raises(UsageError, match=r"garbage\.pem"):
        server_context([str(garbage), str(certs.server_cert)])


def test_mismatched_key_and_certificate(certs: Certs) -> None:
    with pytest.raises(UsageError, match="invalid certificate or private key"):
        server_context([str(certs.dir / "client.key"), str(certs.server_cert)])


def test_encrypted_key_is_refused(tmp_path: Path, certs: Certs) -> None:
    _openssl(
        "pkey", "-in", str(certs.server_key), "-aes256", "-passout", "pass:pw", "-out", "enc.key", cwd=tmp_path
    )  # fmt: skip
    with pytest.raises(UsageError, match="encrypted"):
        server_context([str(tmp_path / "enc.key"), str(certs.server_cert)])


def test_certificate_option_count(certs: Certs) -> None:
    with pytest.raises(UsageError, match="--server-tls-certificate"):
        server_context([])
    with pytest.raises(UsageError, match="at most twice"):
        server_context([str(certs.server_pem)] * 3)


def test_invalid_ca_file_is_named(tmp_path: Path, certs: Certs) -> None:
    garbage = tmp_path / "ca-garbage.pem"
    garbage.write_text("nothing here\n")
    with pytest.raises(
        UsageError, match=r"--client-tls-verify: invalid CA certificates in \[.*ca-garbage.pem\]"
    ):
        client_context(verify=str(garbage))
    with pytest.raises(UsageError, match=r"--server-tls-verify: cannot read \[.*missing-ca.pem\]"):
        server_context([str(certs.server_pem)], verify=str(tmp_path / "missing-ca.pem"))


def test_verify_name_needs_verify() -> None:
    with pytest.raises(UsageError, match="--client-tls-verify-name needs --client-tls-verify"):
        client_context(verify_name="localhost")


async def test_asyncio_streams_use_verify_name(certs: Certs) -> None:
    """asyncio passes the peer host as server_hostname; verify-name replaces it."""
    import asyncio

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.readexactly(4)).upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context([str(certs.server_pem)]))
    port = server.sockets[0].getsockname()[1]
    async with server:
        ctx = client_context(verify=str(certs.ca), verify_name="localhost")
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="wrong.example"
        )
        ssl_object = writer.get_extra_info("ssl_object")
        assert describe(ssl_object).startswith("TLSv1.3 ")
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"PING"
        writer.close()
        assert check_peer_name(ssl_object) == ("/CN=localhost", "localhost", True)
        untrusted = client_context(verify=str(certs.self_signed_pem), verify_name="localhost")
        with pytest.raises(ssl.SSLCertVerificationError):  # the chain is still checked in the handshake
            await asyncio.open_connection("127.0.0.1", port, ssl=untrusted)
