"""Test certificates made with the ``openssl`` command line.

What it is for: the TLS and authentication tests need a small PKI: a CA, a
server certificate for ``localhost``/``127.0.0.1`` signed by it, a client
certificate signed by it, and the bad cases (an expired server certificate,
a self-signed server certificate, a self-signed client certificate that the
CA does not vouch for).  Keys are EC P-256, so making the whole set takes a
fraction of a second.

What it expects: the ``openssl`` command (``HAVE_OPENSSL`` tells); a fresh
directory.

What it guarantees: every ``*.pem`` in :class:`Certs` holds the private key
followed by the certificate (the form ``--server-tls-certificate`` and
``--client-tls-certificate`` take as one file); ``ca`` holds only the CA
certificate (for the ``--*-tls-verify`` options); ``client_cert`` holds only
the client certificate (for comparing with the envelope).  :func:`no_verify_context`
is the client side's context for these certificates when a test checks nothing about them.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

HAVE_OPENSSL = shutil.which("openssl") is not None
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path  # CA certificate only
    server_pem: Path  # CN=localhost, SAN DNS:localhost,IP:127.0.0.1, signed by ca
    client_pem: Path  # CN=client.example.com, signed by ca
    client_cert: Path  # the client certificate alone
    expired_pem: Path  # CN=localhost, signed by ca, no longer valid
    self_signed_pem: Path  # CN=localhost, not signed by ca
    rogue_client_pem: Path  # CN=rogue.example.com, self-signed: not trusted by ca


def _self_signed(d: Path, name: str, cn: str) -> Path:
    openssl("req", "-x509", "-noenc", "-subj", f"/CN={cn}", *EC, "-keyout", f"{name}.key",
            "-out", f"{name}.crt", "-days", "2", cwd=d)  # fmt: skip
    pem = d / f"{name}.pem"
    pem.write_bytes((d / f"{name}.key").read_bytes() + (d / f"{name}.crt").read_bytes())
    return pem


def _issue(d: Path, name: str, cn: str, days: str, san: str | None) -> Path:
    openssl(
        "req", "-noenc", "-subj", f"/CN={cn}", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d
    )
    extra: list[str] = []
    if san:
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", days, "-out", f"{name}.crt", *extra, cwd=d)  # fmt: skip
    pem = d / f"{name}.pem"
    pem.write_bytes((d / f"{name}.key").read_bytes() + (d / f"{name}.crt").read_bytes())
    return pem


def make_certs(d: Path) -> Certs:
    """Make the whole set in directory ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-noenc", "-subj", "/CN=Test CA", *EC, "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", cwd=d)  # fmt: skip
    server = _issue(d, "server", "localhost", "2", "DNS:localhost,IP:127.0.0.1")
    client = _issue(d, "client", "client.example.com", "2", None)
    expired = _issue(d, "expired", "localhost", "-1", "DNS:localhost,IP:127.0.0.1")
    self_signed = _self_signed(d, "self", "localhost")
    rogue = _self_signed(d, "rogue", "rogue.example.com")
    return Certs(d, d / "ca.crt", server, client, d / "client.crt", expired, self_signed, rogue)


def no_verify_context() -> ssl.SSLContext:
    """A TLS client context (``ssl.create_default_context()``) that checks neither the server's
    certificate nor its name: for tests whose servers use self-signed or other-name certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
