"""TLS against E-MailRelay 2.6b, a follow-up probe (7 Dec 2026).

What it checks: each test runs on ours alone (so a clone without the oracle tests it) and, with
``EMAILRELAY_ORACLE_BIN`` set, on E-MailRelay 2.6b too, asserting on both sides the outcome
observed from 2.6b:

- ``--server-tls-certificate`` and ``--client-tls-certificate`` take ``<key-file>,<certificate-file>``
  in one option; three comma fields (an empty one counts), in any mix of options and commas,
  are upstream's usage error;
- without ``--server-tls-verify`` a client certificate is still asked for, not checked, and
  recorded in the envelope's ``X-MailRelay-ClientCertificate``, byte for byte as upstream
  folds it (STARTTLS and implicit TLS, TLS 1.2 and 1.3, a trusted and a self-signed one);
- ``--tls-config`` takes ``noverify`` (nothing asked for or checked, on either side: an
  unverifiable next hop is used, a client certificate is neither checked nor recorded) and
  ``sslv3`` (a minimum: sessions are TLS 1.3 as before);
- a refused client certificate is logged in OpenSSL's words only
  (``... certificate verify failed]``, without Python's ``: self-signed certificate``);
- POP: STLS is offered and works with ``--server-tls-connection`` too (SMTPS does not make the
  POP port implicit TLS), and its TLS lines are the SMTP server's (``tls protocol established
  with <peer> protocol ... cipher ...``; ``tls: tls error: SSL_accept(): [...]`` and ``pop
  connection closed: peer disconnected: ssl accept``).

Kept different (docs/decisions.md, "Authentication, TLS, POP"): start-up errors for unusable
certificate and CA files keep our texts; a key that does not match its certificate, a
minimum above the maximum, ``-sslv3`` and a certificate option with no file name (``,``) are
refused at start-up, and an empty comma field is dropped (``<pem-file>,`` is that file), where
upstream starts and then fails every handshake (ours alone is tested for those).
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.support.certs import Certs, no_verify_context
from tests.support.diff_forwarding import B, as_client, tls_hop
from tests.support.oracle import daemon_base, needs_oracle, normalise_log, normalise_spool, read_reply, start
from tests.support.relay import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

SIDES = [pytest.param("ours"), pytest.param("upstream", marks=needs_oracle)]
DIALOGUE = (
    "EHLO c.example",
    "MAIL FROM:<a@b.c>",
    "RCPT TO:<x@y.z>",
    "DATA",
    "Subject: t\r\n\r\nbody\r\n.",
    "QUIT",
)
DELIVERED = "221 OK"


# ------------------------------------------------------------------ helpers


def _pem_parts(pem: Path) -> tuple[str, str]:
    """A key-and-certificate PEM file's key and certificate texts."""
    text = pem.read_text()
    cut = text.index("-----BEGIN CERTIFICATE-----")
    return text[:cut], text[cut:]


def _split(base: Path, pem: Path) -> tuple[Path, Path]:
    """``pem`` as a key file and a certificate file under ``base``, readable by ``--user daemon``."""
    key, cert = _pem_parts(pem)
    paths = (base / f"{pem.stem}.key", base / f"{pem.stem}.crt")
    for path, text in zip(paths, (key, cert), strict=True):
        path.write_text(text)
        path.chmod(0o644)
    return paths


def _client_context(certificate: Path | None = None, tls12: bool = False) -> ssl.SSLContext:
    context = no_verify_context()
    if certificate is not None:
        context.load_cert_chain(str(certificate))
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def _tls_session(port: int, context: ssl.SSLContext, implicit: bool = False) -> list[str]:
    """:data:`DIALOGUE` over STARTTLS (or TLS at connect): the replies after the handshake, the
    negotiated version first; ``tls failed`` where the session broke off."""
    replies: list[str] = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            if not implicit:
                reader = sock.makefile("rb")
                read_reply(reader)
                for line in ("EHLO c.example", "STARTTLS"):
                    sock.sendall(line.encode() + b"\r\n")
                    read_reply(reader)
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                replies.append(str(tls.version()))
                reader = tls.makefile("rb")
                if implicit:
                    read_reply(reader)
                for line in DIALOGUE:
                    tls.sendall(line.encode() + b"\r\n")
                    reply = read_reply(reader)
                    if not reply:
                        raise ConnectionResetError
                    replies.append(reply)
    except (ssl.SSLError, OSError):
        replies.append("tls failed")
    return replies


def _serve(
    side: str, base: Path, args: list[str], context: ssl.SSLContext, implicit: bool = False
) -> tuple[list[str], dict[str, bytes], list[str]]:
    """One TLS session with ``side``'s relay: the replies, the spool and the log."""
    with start(side, base, *args, name=side) as relay:
        replies = _tls_session(relay.port, context, implicit)
        wait_until(
            lambda: relay.log().count("smtp connection closed") >= 2 or "ssl accept" in relay.log(), 10
        )
        time.sleep(0.2)
        return replies, normalise_spool(relay.spool), normalise_log(relay.log(), relay)


def _verifying(certs: Certs) -> list[str]:
    """STARTTLS with client certificates verified against the test CA."""
    return [
        "--server-tls",
        "--server-tls-certificate",
        str(certs.server_pem),
        "--server-tls-verify",
        str(certs.ca),
    ]


def _client_certificate_field(envelope: bytes) -> bytes:
    found = re.search(rb"X-MailRelay-ClientCertificate: (.*?)\r\nX-MailRelay-MailFromAuthIn", envelope, re.S)
    assert found is not None, envelope
    return found[1]


def _folded(certificate_pem: str) -> bytes:
    """A certificate as the envelope holds it: PEM lines joined by CRLF and a space."""
    return "\r\n ".join(certificate_pem.strip().splitlines()).encode()


def _startup_error(side: str, base: Path, args: list[str]) -> tuple[int | None, list[str]]:
    relay = start(side, base, *args, name=side, wait=False)
    try:
        wait_until(lambda: relay.proc.poll() is not None, 20)
    finally:
        relay.stop()
    return relay.proc.returncode, [x for x in normalise_log(relay.log()) if "error" in x]


# ------------------------------------------------------------------ certificate files


@pytest.mark.parametrize("side", SIDES)
def test_server_certificate_in_one_option_with_a_comma(tmp_path: Path, certs: Certs, side: str) -> None:
    base = daemon_base(tmp_path)
    key, cert = _split(base, certs.server_pem)
    replies, _, _ = _serve(
        side, base, ["--server-tls", "--server-tls-certificate", f"{key},{cert}"], _client_context()
    )
    assert replies[-1] == DELIVERED, replies


@pytest.mark.parametrize("value", ["{pem},", ",{pem}"])
def test_an_empty_certificate_field_is_dropped(tmp_path: Path, certs: Certs, value: str) -> None:
    """Ours only (kept: upstream starts, loads no certificate and fails every handshake with
    ``no shared cipher``): the one file is used."""
    base = daemon_base(tmp_path)
    args = ["--server-tls", "--server-tls-certificate", value.format(pem=certs.server_pem)]
    replies, _, _ = _serve("ours", base, args, _client_context())
    assert replies[-1] == DELIVERED, replies


def test_no_certificate_file_at_all_is_refused(tmp_path: Path) -> None:
    """Ours only (kept: upstream starts and fails every handshake): ``--server-tls-certificate ,``."""
    rc, errors = _startup_error(
        "ours", daemon_base(tmp_path), ["--server-tls", "--server-tls-certificate", ","]
    )
    assert (rc, errors) == (
        1,
        ["emailrelay: error: the --server-tls option requires --server-tls-certificate"],
    )


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    ("option", "values"),
    [
        ("server", ("{key},{cert}", "{cert}")),
        ("client", ("{key},{cert}", "{cert}")),
        ("server", ("{key},{cert},",)),
    ],
    ids=["server", "client", "server-empty-field"],
)
def test_three_certificate_files_with_commas_are_a_usage_error(
    tmp_path: Path, certs: Certs, side: str, option: str, values: tuple[str, ...]
) -> None:
    """Upstream counts the comma fields of every value, an empty one too."""
    base = daemon_base(tmp_path)
    key, cert = _split(base, certs.server_pem)
    tls = ["--server-tls"] if option == "server" else ["--forward-to", "127.0.0.1:9", "--client-tls"]
    args = [*tls, *(a for v in values for a in (f"--{option}-tls-certificate", v.format(key=key, cert=cert)))]
    assert _startup_error(side, base, args) == (
        1,
        [f"emailrelay: usage error: the --{option}-tls-certificate option cannot be used more than twice"],
    )


@pytest.mark.parametrize("side", SIDES)
def test_client_certificate_in_one_option_with_a_comma(tmp_path: Path, certs: Certs, side: str) -> None:
    """``--client-tls-certificate <key>,<certificate>`` to a next hop that demands a certificate
    from the test CA: delivered."""
    base = daemon_base(tmp_path)
    key, cert = _split(base, certs.client_pem)
    with tls_hop(certificate=certs.server_pem, client_ca=certs.ca)() as hop:
        run = as_client(
            side,
            base,
            hop,
            [[B]],
            "--client-tls",
            "--client-tls-certificate",
            f"{key},{cert}",
            stamp=int(time.time()),
        )
        assert run.rc == 0, run.log
        assert len(hop.deliveries) == 1 and hop.deliveries[0].tls


# ------------------------------------------------------------------ client certificates, --tls-config


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    ("client", "tls12", "implicit"),
    [("client_pem", False, False), ("rogue_client_pem", True, False), ("client_pem", True, True)],
    ids=["trusted-1.3-starttls", "self-signed-1.2-starttls", "trusted-1.2-implicit"],
)
def test_client_certificate_recorded_without_server_tls_verify(
    tmp_path: Path, certs: Certs, side: str, client: str, tls12: bool, implicit: bool
) -> None:
    base = daemon_base(tmp_path)
    pem: Path = getattr(certs, client)
    tls = "--server-tls-connection" if implicit else "--server-tls"
    replies, spool, _ = _serve(
        side,
        base,
        [tls, "--server-tls-certificate", str(certs.server_pem)],
        _client_context(pem, tls12),
        implicit,
    )
    assert replies[0] == ("TLSv1.2" if tls12 else "TLSv1.3") and replies[-1] == DELIVERED, replies
    assert _client_certificate_field(spool["emailrelay.ID.envelope"]) == _folded(_pem_parts(pem)[1])


@pytest.mark.parametrize("side", SIDES)
def test_tls_config_noverify_asks_for_no_client_certificate(tmp_path: Path, certs: Certs, side: str) -> None:
    """``--server-tls-verify <ca> --tls-config=noverify``: a self-signed client certificate is
    neither refused nor recorded."""
    base = daemon_base(tmp_path)
    args = _verifying(certs)
    replies, spool, _ = _serve(
        side, base, [*args, "--tls-config=noverify"], _client_context(certs.rogue_client_pem)
    )
    assert replies[-1] == DELIVERED, replies
    assert _client_certificate_field(spool["emailrelay.ID.envelope"]) == b""


@pytest.mark.parametrize("side", SIDES)
def test_tls_config_sslv3_is_a_minimum(tmp_path: Path, certs: Certs, side: str) -> None:
    base = daemon_base(tmp_path)
    args = ["--server-tls", "--server-tls-certificate", str(certs.server_pem), "--tls-config=sslv3"]
    replies, _, log = _serve(side, base, args, _client_context())
    assert replies[0] == "TLSv1.3" and replies[-1] == DELIVERED, replies
    assert not [line for line in log if "tls-config" in line]


@pytest.mark.parametrize("side", SIDES)
def test_client_tls_noverify_uses_an_unverifiable_next_hop(tmp_path: Path, certs: Certs, side: str) -> None:
    base = daemon_base(tmp_path)
    with tls_hop(certificate=certs.self_signed_pem)() as hop:
        run = as_client(
            side, base, hop, [[B]], "--client-tls", "--client-tls-verify", str(certs.ca), "--tls-config=noverify",
            stamp=int(time.time()),
        )  # fmt: skip
        assert run.rc == 0, run.log
        assert len(hop.deliveries) == 1 and hop.deliveries[0].tls


@pytest.mark.parametrize("side", SIDES)
def test_refused_client_certificate_logged_in_openssl_words(tmp_path: Path, certs: Certs, side: str) -> None:
    base = daemon_base(tmp_path)
    args = _verifying(certs)
    replies, _, log = _serve(side, base, args, _client_context(certs.rogue_client_pem, tls12=True))
    assert replies == ["tls failed"]
    assert [line for line in log if "ssl accept" in line or "tls error" in line] == [
        "emailrelay: warning: tls: tls error: SSL_accept(): [error:0A000086:SSL routines::certificate verify failed]",
        "emailrelay: info: smtp connection closed: peer disconnected: ssl accept: 127.0.0.1:N",
    ]


# ------------------------------------------------------------------ POP


def _pop_lines(sock: socket.socket | ssl.SSLSocket, *commands: str) -> list[str]:
    """Each command's reply (a multi-line one for CAPA), as text lines joined by ``|``."""
    reader = sock.makefile("rb")
    replies = []
    for command in commands:
        sock.sendall(command.encode() + b"\r\n")
        lines = [reader.readline().decode().rstrip("\r\n")]
        while command == "CAPA" and lines[-1] not in (".", ""):
            lines.append(reader.readline().decode().rstrip("\r\n"))
        replies.append("|".join(lines))
    return replies


def _pop(side: str, base: Path, args: list[str], context: ssl.SSLContext) -> tuple[list[str], list[str]]:
    """A POP session: CAPA, STLS, then USER/PASS/STAT over TLS; the replies and the log."""
    secrets = base / "pop.auth"
    secrets.write_text("server plain me secret\n")
    secrets.chmod(0o644)
    pop_port = free_port()
    args = ["--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets), *args]
    with start(side, base, *args, name=side) as relay:
        wait_until(lambda: "pop server on" in relay.log(), 10)
        replies: list[str] = []
        try:
            with socket.create_connection(("127.0.0.1", pop_port), timeout=15) as sock:
                sock.recv(200)  # the greeting
                replies += _pop_lines(sock, "CAPA", "STLS")
                with context.wrap_socket(sock, server_hostname="localhost") as tls:
                    time.sleep(0.3)  # (upstream's second, unasked +OK: docs/decisions.md)
                    tls.setblocking(False)
                    try:
                        tls.recv(100)
                    except ssl.SSLWantReadError:
                        pass
                    tls.setblocking(True)
                    replies += _pop_lines(tls, "USER me", "PASS secret", "STAT", "QUIT")
        except (ssl.SSLError, OSError):
            replies.append("tls failed")
        wait_until(lambda: "pop connection closed" in relay.log(), 10)
        return replies, [
            x for x in normalise_log(relay.log(), relay) if "tls" in x or "pop connection closed" in x
        ]


@pytest.mark.parametrize("side", SIDES)
def test_pop_stls_with_server_tls_connection(tmp_path: Path, certs: Certs, side: str) -> None:
    base = daemon_base(tmp_path)
    args = ["--server-tls-connection", "--server-tls-certificate", str(certs.server_pem)]
    replies, log = _pop(side, base, args, _client_context())
    assert "|STLS|" in replies[0] and replies[1:] == [
        "+OK",
        "+OK user: me",
        "+OK",
        "+OK 0 0",
        "+OK signing off",
    ]
    assert [x for x in log if "127.0.0.1:N" in x] == [
        "emailrelay: info: tls protocol established with 127.0.0.1:N protocol TLSv1.3 cipher TLS_AES_256_GCM_SHA384",
        "emailrelay: info: pop connection closed: pop protocol done: 127.0.0.1:N",
    ]


@pytest.mark.parametrize("side", SIDES)
def test_pop_tls_failure_logged_as_upstream(tmp_path: Path, certs: Certs, side: str) -> None:
    base = daemon_base(tmp_path)
    args = _verifying(certs)
    replies, log = _pop(side, base, args, _client_context(tls12=True))
    assert replies[-1] == "tls failed"
    assert log == [
        "emailrelay: warning: tls: tls error: SSL_accept(): [error:0A0000C7:SSL routines::peer did not return a certificate]",
        "emailrelay: info: pop connection closed: peer disconnected: ssl accept: 127.0.0.1:N",
    ]
