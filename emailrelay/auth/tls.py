"""emailrelay.auth.tls -- ``ssl.SSLContext`` objects from the TLS options.

PURPOSE
    Turn ``--server-tls-certificate``, ``--server-tls-verify``,
    ``--client-tls-certificate``, ``--client-tls-verify``,
    ``--client-tls-verify-name``, ``--client-tls-server-name`` and
    ``--tls-config`` into ready-to-use contexts, and describe a session for
    the ``tls ... established`` log line.

EXPECTS
    * Certificate options as given: one PEM file holding the private key and
      the certificate chain, or two files, key first then certificate, as
      two options or, as E-MailRelay 2.6b takes them, one option
      ``<key-file>,<certificate-file>`` (empty fields are dropped).
      Encrypted private keys are not supported (there is nobody to ask).
    * A verify value of ``<default>`` (the system's trusted CAs), ``<none>``
      (as E-MailRelay 2.6b: nothing asked for or checked, as ``noverify``)
      or a CA file or directory (a directory must be OpenSSL-hashed,
      ``c_rehash``).
    * ``--tls-config`` keywords, comma separated, taken as given:
      ``tlsv1.0``..``tlsv1.3`` set the minimum protocol version,
      ``-tlsv1.0``..``-tlsv1.3`` the maximum, each as given (lower case, no
      spaces) and once; ``sslv3`` is a minimum as upstream's (OpenSSL then
      offers what it can: TLS), ``noverify`` turns off certificate requests
      and verification on both sides, whatever the verify options say, as
      upstream's does; ``op_all``, ``op_no_ticket``, ``op_no_resumption`` and
      ``op_server_preference`` set those OpenSSL options (``SSL_OP_ALL``,
      ``SSL_OP_NO_TICKET``, ``SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION``,
      ``SSL_OP_CIPHER_SERVER_PREFERENCE``), as E-MailRelay 2.6b's do, without
      a warning; as E-MailRelay 2.6b any other item (``openssl``,
      ``mbedtls``: only OpenSSL is available through Python; a repeat; a
      typo) is ignored and listed in ``TlsConfig.ignored`` for its start-up
      warning.  ``-sslv3``, and a minimum above the maximum, which upstream
      takes and then fails every handshake with, are refused.

GUARANTEES
    * Bad input raises ``UsageError`` naming the option and the file:
      unreadable or invalid certificate/key/CA files, ``--tls-config``
      protocol bounds that leave no protocol.
    * Server: as E-MailRelay 2.6b (OpenSSL's default, which Python changes),
      the client's order of preference picks the cipher, unless
      ``op_server_preference``.
      As E-MailRelay 2.6b, a client certificate is always asked for
      (not with ``noverify``); without a verify value it is optional and
      nothing about it is checked (it is only recorded, for the envelope's
      ``ClientCertificate``); with one, clients must present a certificate
      that verifies.  The accept-anything verify callback is set through
      ctypes on the context's ``SSL_CTX`` (Python has no verify callback);
      where that cannot be done safely no certificate is asked for.
    * Client: without a verify value nothing is verified (upstream's
      default: encryption without authentication).  With one the chain must
      verify; the host name is not checked unless ``verify_name`` is given,
      and then, as E-MailRelay 2.6b (observed), the CN of the certificate's
      subject must be that name, exactly; subjectAltNames do not count.
      The caller checks it once the handshake is done (``check_peer_name``).
      As E-MailRelay 2.6b, SNI is sent only with ``--client-tls-server-name``
      (``server_name``): the returned ``ClientContext`` substitutes it for
      the ``server_hostname`` that callers (asyncio) pass when wrapping,
      which is otherwise dropped (not the next hop's name, nor
      ``verify_name``).
      ``verify_name`` without a verify value is refused rather than
      silently not checked; with ``<none>`` it is not checked, as upstream.
    * Alerts: a handshake that fails (an untrusted or missing client
      certificate, a refused protocol version or cipher, an untrusted next
      hop) sends OpenSSL's alert to the peer before the connection closes,
      as E-MailRelay 2.6b does (the event loops' TLS layer, the standard
      one's and uvloop's alike, drops it: it closes the socket with the
      alert still in the outgoing buffer).  The contexts made here hand out
      ``AlertingSSLObject``s, which put what the failed handshake left for
      the peer on the exception (``tls_alert``); a caller of
      ``loop.start_tls`` that holds an ``Alerts`` for the raw transport
      (a duplicate of its socket, made before the handshake) sends it from
      there once the loop has given up (so TLS at connect is done by
      ``start_tls`` too, not the loop's ``ssl=``, whose socket nobody else
      sees).  A handshake costs a ``dup`` and a ``close`` more.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import ssl
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

__all__ = [
    "AlertingContext",
    "AlertingSSLObject",
    "Alerts",
    "ClientContext",
    "TlsConfig",
    "check_peer_name",
    "client_context",
    "describe",
    "established",
    "parse_tls_config",
    "peer_certificate_pem",
    "server_context",
]

DEFAULT_CA = "<default>"
NO_CA = "<none>"  # E-MailRelay 2.6b: nothing asked for (server) or checked (either side)
_VERSIONS = {
    "sslv3": ssl.TLSVersion.SSLv3,
    "tlsv1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
# a maximum of SSL 3 leaves no protocol (upstream takes it and fails every handshake): refused
_NOT_SUPPORTED = frozenset({"-sslv3"})
NOVERIFY = "noverify"
# E-MailRelay 2.6b's OpenSSL option keywords (OpenSSL's SSL_OP_*: Python's ssl lacks the middle one's name)
_OPTIONS = {
    "op_all": ssl.OP_ALL,
    "op_no_ticket": ssl.OP_NO_TICKET,
    "op_no_resumption": 0x00010000,  # SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION
    "op_server_preference": ssl.OP_CIPHER_SERVER_PREFERENCE,
}


@dataclass(frozen=True)
class TlsConfig:
    """Parsed ``--tls-config``: protocol bounds (``None``: library default), ``noverify``, the
    OpenSSL options to set and the keywords ignored (as given)."""

    minimum: ssl.TLSVersion | None = None
    maximum: ssl.TLSVersion | None = None
    ignored: tuple[str, ...] = ()
    noverify: bool = False
    options: int = 0


def parse_tls_config(text: str | None) -> TlsConfig:
    """As E-MailRelay 2.6b: items are taken as given (case and spaces count); each protocol keyword
    is used once, and any other item (``openssl``, ``mbedtls``, a repeat, a typo) is ignored, in
    order, for the start-up warning."""
    minimum: ssl.TLSVersion | None = None
    maximum: ssl.TLSVersion | None = None
    ignored: list[str] = []
    used: set[str] = set()
    options = 0
    for item in (text or "").split(","):
        if not item:
            continue
        if item in _NOT_SUPPORTED:
            raise UsageError(f"invalid --tls-config keyword [{item}]")
        if item in used:
            ignored.append(item)
        elif item in _VERSIONS:
            minimum = _VERSIONS[item]
        elif item.startswith("-") and item[1:] in _VERSIONS:
            maximum = _VERSIONS[item[1:]]
        elif item in _OPTIONS:
            options |= _OPTIONS[item]
        elif item != NOVERIFY:
            ignored.append(item)
        used.add(item)
    if minimum is not None and maximum is not None and minimum > maximum:
        raise UsageError("--tls-config: the minimum TLS version is above the maximum")
    return TlsConfig(minimum, maximum, tuple(ignored), NOVERIFY in used, options)


def _apply_config(ctx: ssl.SSLContext, config: TlsConfig) -> None:
    """The protocol bounds and the OpenSSL options; as OpenSSL's default (E-MailRelay 2.6b), the
    client's cipher preference counts, not the server's (which Python's contexts set)."""
    with warnings.catch_warnings():  # (old versions are deprecated: the operator asked for them)
        warnings.simplefilter("ignore", DeprecationWarning)
        _set_versions(ctx, config)
    ctx.options = (ctx.options & ~ssl.OP_CIPHER_SERVER_PREFERENCE) | config.options


def _set_versions(ctx: ssl.SSLContext, config: TlsConfig) -> None:
    try:
        if config.minimum is not None:
            ctx.minimum_version = config.minimum
        if config.maximum is not None:
            ctx.maximum_version = config.maximum
    except (ValueError, ssl.SSLError) as err:
        raise UsageError(f"--tls-config: protocol version not available: {err}") from None


def _ssl_reason(err: ssl.SSLError) -> str:
    text = err.reason or (err.args[1] if len(err.args) > 1 else str(err))
    text = re.sub(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(text)).lower().replace("_", " ")
    return "no usable PEM certificate or key" if text == "pem lib" else text


def _check_readable(path: str, option: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise UsageError(f"{option}: cannot read [{path}]: {reason}") from None


def split_certificate_files(values: Sequence[str]) -> list[str]:
    """The files of a certificate option's values: as E-MailRelay 2.6b, each value may be
    ``<key-file>,<certificate-file>``; empty fields are dropped (upstream then loads no
    certificate at all and fails every handshake)."""
    return [path for value in values for path in value.split(",") if path]


def _load_chain(ctx: ssl.SSLContext, values: Sequence[str], option: str) -> None:
    files = split_certificate_files(values)
    if len(files) > 2:
        raise UsageError(f"{option} can be given at most twice (key file, then certificate file)")
    for path in files:
        _check_readable(path, option)
    key, cert = (None, files[0]) if len(files) == 1 else (files[0], files[1])
    names = " and ".join(f"[{f}]" for f in files)

    def no_password() -> str:
        raise UsageError(f"{option}: the private key in {names} is encrypted: not supported")

    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key, password=no_password)
    except ssl.SSLError as err:
        raise UsageError(
            f"{option}: invalid certificate or private key in {names}: {_ssl_reason(err)}"
        ) from None


def _load_verify(ctx: ssl.SSLContext, verify: str, option: str, purpose: ssl.Purpose) -> None:
    if verify == DEFAULT_CA:
        ctx.load_default_certs(purpose)
        return
    try:
        if os.path.isdir(verify):
            ctx.load_verify_locations(capath=verify)
        else:
            _check_readable(verify, option)
            ctx.load_verify_locations(cafile=verify)
    except ssl.SSLError as err:
        raise UsageError(f"{option}: invalid CA certificates in [{verify}]: {_ssl_reason(err)}") from None


def server_context(
    certificate_files: Sequence[str],
    verify: str | None = None,
    tls_config: str | None = None,
) -> ssl.SSLContext:
    """Context for ``--server-tls`` / ``--server-tls-connection`` (SMTP and POP)."""
    config = parse_tls_config(tls_config)
    if not split_certificate_files(certificate_files):  # (upstream's words for a missing option)
        raise UsageError("the --server-tls option requires --server-tls-certificate")
    ctx = AlertingContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_config(ctx, config)
    _load_chain(ctx, certificate_files, "--server-tls-certificate")
    if verify and verify != NO_CA:
        _load_verify(ctx, verify, "--server-tls-verify", ssl.Purpose.CLIENT_AUTH)
    if config.noverify or verify == NO_CA:
        ctx.verify_mode = ssl.CERT_NONE
    elif verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        _ask_for_any_client_certificate(ctx)
    return ctx


# OpenSSL's SSL_VERIFY_PEER, and a verify callback that takes any certificate: int (*)(int, X509_STORE_CTX*)
_SSL_VERIFY_PEER = 1
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_ACCEPT_ANY = _VERIFY_CALLBACK(lambda preverify_ok, store: 1)


def _ask_for_any_client_certificate(ctx: ssl.SSLContext) -> None:
    """As E-MailRelay 2.6b without ``--server-tls-verify``: the client is asked for a certificate,
    which it may leave out and which is not checked (only recorded).  Python's ``ssl`` has no verify
    callback, so it is set on the context's ``SSL_CTX`` (the first field after the object header of
    CPython's context object, checked against the verify mode Python sets) through the OpenSSL that
    ``_ssl`` uses.  Where any of that fails the context stays ``CERT_NONE``: nothing is asked for."""
    ctx.verify_mode = ssl.CERT_NONE
    if sys.implementation.name != "cpython":  # (the object layout below is CPython's)
        return
    try:
        import _ssl

        libssl = ctypes.CDLL(_ssl.__file__)
        get_mode, set_verify = libssl.SSL_CTX_get_verify_mode, libssl.SSL_CTX_set_verify
        get_mode.argtypes, get_mode.restype = [ctypes.c_void_p], ctypes.c_int
        set_verify.argtypes, set_verify.restype = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK], None
        ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not ssl_ctx or get_mode(ssl_ctx) != 0:
            return
        ctx.verify_mode = ssl.CERT_OPTIONAL  # (Python keeps a callback that is set: _set_verify_mode)
        if get_mode(ssl_ctx) != _SSL_VERIFY_PEER:
            ctx.verify_mode = ssl.CERT_NONE
            return
        set_verify(ssl_ctx, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    except (OSError, AttributeError, ValueError):
        ctx.verify_mode = ssl.CERT_NONE


# ------------------------------------------------------------------ alerts of failed handshakes


class AlertingSSLObject(ssl.SSLObject):
    """An ``SSLObject`` whose failed handshake keeps what OpenSSL left in the outgoing buffer for
    the peer (the alert: ``unknown ca``, ``handshake failure``, ...) on the exception it raises,
    as ``tls_alert`` (bytes), for :class:`Alerts` to send."""

    alert_bio: ssl.MemoryBIO | None = None

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            bio = self.alert_bio
            if bio is not None and bio.pending:
                exc.tls_alert = bio.read()  # type: ignore[attr-defined]
            raise


class AlertingContext(ssl.SSLContext):
    """An ``SSLContext`` whose ``wrap_bio`` objects keep the alert of a failed handshake (module doc)."""

    sslobject_class = AlertingSSLObject

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        sslobj = super().wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname, session=session
        )
        if isinstance(sslobj, AlertingSSLObject):
            sslobj.alert_bio = outgoing
        return sslobj


class Alerts:
    """The raw socket under a ``loop.start_tls`` (a duplicate of its descriptor, so it outlives the
    event loop's close of a failed handshake), to send the failed handshake's alert on: see the
    module doc.  Use as ``with Alerts(transport) as alerts: ... alerts.send(error)``."""

    def __init__(self, transport: Any) -> None:
        self._fd = -1
        with contextlib.suppress(OSError, AttributeError, ValueError, TypeError):
            self._fd = os.dup(transport.get_extra_info("socket").fileno())

    def send(self, error: object) -> None:
        """``error`` is what ``start_tls`` raised: its alert, if it has one, goes to the peer.  Nothing
        of ours can still be queued before it: a handshake fails on what the peer sent in answer to
        our last flight, which it therefore has."""
        alert = getattr(error, "tls_alert", None)
        if alert and self._fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._fd, alert)  # (non-blocking, a few bytes into an idle socket)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Alerts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClientContext(AlertingContext):
    """An ``SSLContext`` that decides the ``server_hostname`` itself (see module doc)."""

    verify_name: str | None = None
    server_name: str | None = None

    def effective_server_hostname(self, requested: str | None) -> str | None:
        """The SNI: ``--client-tls-server-name`` or none (E-MailRelay 2.6b), whatever is requested."""
        return self.server_name

    def wrap_socket(  # type: ignore[override]
        self,
        sock: Any,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.effective_server_hostname(server_hostname),
            session=session,
        )

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=self.effective_server_hostname(server_hostname),
            session=session,
        )


def client_context(
    certificate_files: Sequence[str] = (),
    verify: str | None = None,
    verify_name: str | None = None,
    server_name: str | None = None,
    tls_config: str | None = None,
) -> ClientContext:
    """Context for ``--client-tls`` / ``--client-tls-connection``."""
    config = parse_tls_config(tls_config)
    if verify_name and not verify:
        raise UsageError("--client-tls-verify-name needs --client-tls-verify")
    if verify == NO_CA:  # (nothing is checked, the name neither)
        verify = verify_name = None
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_name = verify_name or None
    ctx.server_name = server_name or None
    _apply_config(ctx, config)
    if split_certificate_files(certificate_files):
        _load_chain(ctx, certificate_files, "--client-tls-certificate")
    if verify:
        _load_verify(ctx, verify, "--client-tls-verify", ssl.Purpose.SERVER_AUTH)
    if verify and not config.noverify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = False  # the name: check_peer_name(), E-MailRelay 2.6b's way
        ctx.hostname_checks_common_name = True
    else:  # (noverify: nothing is checked, the name neither)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.verify_name = None
    return ctx


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """``"<protocol> <cipher>"``, e.g. ``TLSv1.3 TLS_AES_256_GCM_SHA384``."""
    cipher = ssl_object.cipher()
    return " ".join(p for p in (ssl_object.version() or "", cipher[0] if cipher else "") if p)


def established(peer: str, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """E-MailRelay 2.6b's line for a TLS session that is up: ``tls protocol established with
    <peer> protocol TLSv1.3 cipher TLS_AES_256_GCM_SHA384``."""
    cipher = ssl_object.cipher()
    protocol = f"protocol {ssl_object.version()} cipher {cipher[0] if cipher else ''}"
    return f"tls protocol established with {peer} {protocol}"


def peer_certificate_pem(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """The peer's certificate in PEM (for the envelope's ``ClientCertificate``), or ``""``."""
    der = ssl_object.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der) if der else ""


_LIBRARY_TEXT = {
    "SSL": "SSL routines",
    "X509": "x509 certificate routines",
    "PEM": "PEM routines",
    "SYS": "system library",
}


# OpenSSL's short names for the subject's attributes, as X509_NAME_oneline() writes them
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
}
# what OpenSSL says when a certificate is refused, as E-MailRelay 2.6b logs a refused peer name
VERIFY_FAILED = "SSL_connect(): [error:0A000086:SSL routines::certificate verify failed]"


def check_peer_name(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[str, str, bool] | None:
    """With ``--client-tls-verify-name`` (the context's ``verify_name``), after the handshake: the
    peer certificate's subject (``/CN=localhost``), the required name and whether the subject's CN
    is that name; ``None`` without a required name."""
    required = getattr(ssl_object.context, "verify_name", None)
    if not required:
        return None
    cert = ssl_object.getpeercert() or {}
    pairs = [pair for rdn in cert.get("subject", ()) for pair in rdn]
    subject = "".join(f"/{_SHORT_NAMES.get(key, key)}={value}" for key, value in pairs)
    names = [value for key, value in pairs if key == "commonName"]
    return subject, required, bool(names) and names[-1] == required


def openssl_error(exc: BaseException) -> str:
    """An OpenSSL error in OpenSSL's own words (``error:0A00010B:SSL routines::wrong version number``),
    as E-MailRelay logs it (a failed verification without Python's detail of why); anything that
    is not an OpenSSL error as Python words it."""
    import _ssl  # the numeric codes of OpenSSL's error names

    library, reason = getattr(exc, "library", None), getattr(exc, "reason", None)
    if isinstance(exc, (ConnectionError, ssl.SSLEOFError)) and not reason:  # the peer went away
        return "error:0A000126:SSL routines::unexpected eof while reading"
    if isinstance(exc, ssl.SSLError) and library and reason:
        codes = [
            k
            for k, name in _ssl.err_codes_to_names.items()
            if name == reason and _ssl.lib_codes_to_names.get(k[0]) == library
        ]
        text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", re.sub(r"^\[[^\]]*\]\s*", "", exc.strerror or str(exc)))
        detail = getattr(exc, "verify_message", None)  # Python's words: not in OpenSSL's error
        if detail and text.endswith(f": {detail}"):
            text = text[: -len(detail) - 2]
        if codes:
            lib, code = codes[0]
            return (
                f"error:{(lib << 23) | code:08X}:{_LIBRARY_TEXT.get(library, library + ' routines')}::{text}"
            )
    return str(exc) or type(exc).__name__
