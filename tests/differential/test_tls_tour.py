"""A tour of the TLS options against E-MailRelay 2.6b (8 Dec 2026).

What it checks: each test runs on ours alone (so a clone without the oracle tests it) and, with
``EMAILRELAY_ORACLE_BIN`` set, on E-MailRelay 2.6b too, asserting on both sides what 2.6b does:

- ``--tls-config`` takes OpenSSL's option keywords ``op_all``, ``op_no_ticket``,
  ``op_no_resumption`` and ``op_server_preference`` without the "items ignored" warning (which
  still names the others); ``op_no_ticket`` stops the TLS 1.2 session ticket;
- the server takes the cipher the client prefers (OpenSSL's default; Python's contexts prefer
  their own order), TLS 1.2 and 1.3, and the one it prefers with ``op_server_preference``; the
  ``tls protocol established ... cipher ...`` line names it;
- ``<none>`` as ``--server-tls-verify`` or ``--client-tls-verify`` is a start-up error no longer:
  as ``--tls-config=noverify``, a client certificate is neither checked nor recorded in the
  envelope, and an unverifiable next hop is used (a ``--client-tls-verify-name`` is not checked);
- SNI: the forwarding client sends a server name only with ``--client-tls-server-name`` (not the
  next hop's host name, not ``--client-tls-verify-name``);
- ``--client-tls-verify-name`` against a wildcard CN: the name is compared with the CN as it is
  (``*.example.test`` matches only itself).

Nothing is kept different.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.differential.test_tls_followup import (
    DELIVERED,
    _client_certificate_field,
    _client_context,
    _serve,
)
from tests.support.certs import Certs, _issue
from tests.support.diff_forwarding import B, Run, as_client, tls_hop
from tests.support.oracle import daemon_base, needs_oracle, normalise_log, start
from tests.support.relay import wait_until

pytestmark = pytest.mark.timeout(120)

SIDES = [pytest.param("ours"), pytest.param("upstream", marks=needs_oracle)]
SERVER_TLS = ["--server-tls", "--server-tls-certificate"]

# ------------------------------------------------------------------ --tls-config option keywords


@pytest.mark.parametrize("side", SIDES)
def test_openssl_option_keywords_are_not_ignored(tmp_path: Path, certs: Certs, side: str) -> None:
    config = "--tls-config=op_all,op_no_ticket,op_no_resumption,op_server_preference,bogus"
    with start(side, daemon_base(tmp_path), *SERVER_TLS, str(certs.server_pem), config) as relay:
        warnings = [x for x in normalise_log(relay.log(), relay) if "tls-config" in x]
    assert warnings == ["emailrelay: warning: tls-config: tls configuration items ignored: [bogus]"]


def _s_client(port: int, *args: str) -> str:
    """``openssl s_client`` over STARTTLS with ``args``: its ``New, <protocol>, Cipher is <cipher>``
    line and whether a session ticket came (``ticket``)."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp", *args],
        input=b"QUIT\r\n", capture_output=True, timeout=15, check=False,
    )  # fmt: skip
    out = done.stdout.decode(errors="replace")
    new = [line for line in out.splitlines() if line.startswith("New, ")]
    return (new[0] if new else "no session") + (" ticket" if "session ticket lifetime" in out else "")


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(("config", "ticket"), [(None, True), ("op_no_ticket", False)], ids=["default", "op"])
def test_op_no_ticket(tmp_path: Path, certs: Certs, side: str, config: str | None, ticket: bool) -> None:
    args = [*SERVER_TLS, str(certs.server_pem), *([f"--tls-config={config}"] if config else [])]
    with start(side, daemon_base(tmp_path), *args) as relay:
        got = _s_client(relay.port, "-tls1_2")
    assert got.startswith("New, TLSv1.2, ") and got.endswith(" ticket") == ticket, got


# the client's order first, then the other: (s_client options, client's first choice, server's)
CIPHER_ORDERS = {
    "1.2": (
        ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"],
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ),
    "1.3": (
        ["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"],
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
    ),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("server_preference", [False, True], ids=["client-order", "op_server_preference"])
@pytest.mark.parametrize("version", list(CIPHER_ORDERS))
def test_cipher_preference(
    tmp_path: Path, certs: Certs, side: str, server_preference: bool, version: str
) -> None:
    options, clients, servers = CIPHER_ORDERS[version]
    expected = servers if server_preference else clients
    args = [*SERVER_TLS, str(certs.server_pem), *(["--tls-config=op_server_preference"] * server_preference)]
    with start(side, daemon_base(tmp_path), *args) as relay:
        got = _s_client(relay.port, *options)
        assert wait_until(lambda: "tls protocol established" in relay.log(), 10)
        lines = [x for x in normalise_log(relay.log(), relay) if "tls protocol established" in x]
    assert got.startswith(f"New, TLSv{version}, Cipher is {expected}"), got
    assert lines[0].endswith(f" protocol TLSv{version} cipher {expected}"), lines


# ------------------------------------------------------------------ <none> as a verify value


@pytest.mark.parametrize("side", SIDES)
def test_server_tls_verify_none(tmp_path: Path, certs: Certs, side: str) -> None:
    """``--server-tls-verify <none>``: a self-signed client certificate is taken, not recorded."""
    args = [*SERVER_TLS, str(certs.server_pem), "--server-tls-verify", "<none>"]
    replies, spool, _ = _serve(side, daemon_base(tmp_path), args, _client_context(certs.rogue_client_pem))
    assert replies[-1] == DELIVERED, replies
    envelope = spool["emailrelay.ID.envelope"]
    assert _client_certificate_field(envelope) == b""


def _forward(
    side: str, tmp_path: Path, pem: Path, *args: str, host: str = "127.0.0.1"
) -> tuple[Run, int, list]:
    """One message forwarded by ``side``'s ``--as-client`` to a STARTTLS next hop with certificate
    ``pem``, addressed as ``host``: the run, the messages delivered and the server names (SNI)
    the next hop saw."""
    names: list[str | None] = []
    with tls_hop(certificate=pem)() as hop:
        assert hop._context is not None
        hop._context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,func-returns-value]
        address = f"{host}:{hop.port}"
        run = as_client(
            side, daemon_base(tmp_path), address, [[B]], "--client-tls", *args, stamp=int(time.time())
        )
        return run, len(hop.deliveries), names


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", [(), ("--client-tls-verify-name", "other.example")], ids=["", "verify-name"])
def test_client_tls_verify_none(tmp_path: Path, certs: Certs, side: str, name: tuple[str, ...]) -> None:
    """``--client-tls-verify <none>``: an unverifiable (self-signed) next hop is used; a
    ``--client-tls-verify-name`` is not checked."""
    run, delivered, _ = _forward(
        side, tmp_path, certs.self_signed_pem, "--client-tls-verify", "<none>", *name
    )
    assert run.rc == 0 and delivered == 1, run.log
    assert not [x for x in run.log if "required-peer-name" in x]


# ------------------------------------------------------------------ SNI


SNI_CASES = {
    "by-name": (["localhost"], [], None),
    "server-name": (["localhost"], ["--client-tls-server-name", "sni.example"], "sni.example"),
    "verify-name": (
        ["127.0.0.1"],
        ["--client-tls-verify", "CA", "--client-tls-verify-name", "localhost"],
        None,
    ),
    "both": (
        ["127.0.0.1"],
        [
            "--client-tls-verify",
            "CA",
            "--client-tls-verify-name",
            "localhost",
            "--client-tls-server-name",
            "s.example",
        ],
        "s.example",
    ),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", list(SNI_CASES))
def test_sni_only_from_client_tls_server_name(tmp_path: Path, certs: Certs, side: str, case: str) -> None:
    (host,), args, sni = SNI_CASES[case]
    args = [str(certs.ca) if a == "CA" else a for a in args]
    run, delivered, names = _forward(side, tmp_path, certs.server_pem, *args, host=host)
    assert run.rc == 0 and delivered == 1, run.log
    assert names == [sni]


# ------------------------------------------------------------------ --client-tls-verify-name and a wildcard CN


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(("name", "ok"), [("mail.example.test", False), ("*.example.test", True)])
def test_verify_name_against_a_wildcard_cn(
    tmp_path: Path, certs: Certs, side: str, name: str, ok: bool
) -> None:
    pem = _issue(certs.dir, "wildcard", "*.example.test", "2", "DNS:*.example.test")
    pem.chmod(0o644)
    run, delivered, _ = _forward(
        side, tmp_path, pem, "--client-tls-verify", str(certs.ca), "--client-tls-verify-name", name
    )
    checks = [x for x in run.log if "required-peer-name" in x]
    assert len(checks) == 1, run.log
    assert checks[0].endswith(
        f"tls: certificate-subject=[/CN=*.example.test] required-peer-name=[{name}] ok={int(ok)}"
    )
    assert delivered == int(ok) and run.rc == int(not ok)
