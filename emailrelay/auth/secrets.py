"""emailrelay.auth.secrets -- the secrets file of ``--client-auth``, ``--server-auth``, ``--pop-auth``.

PURPOSE
    Parse a secrets file (reference guide "Authentication", SPEC.md §5) into
    lookups for the SASL layer: server secrets by user, client accounts by
    selector, trusted client IP ranges, and the mechanisms the secrets allow.

EXPECTS
    One rule per line, ``#`` starts a comment (whole line or trailing),
    fields separated by white space, keywords case-insensitive::

        client|server  plain      <xtext-id>  <xtext-password>  [selector]
        client|server  md5        <xtext-id>  <base64-or-dotted-hmac-md5-state>  [selector]
        client|server  plain:b    <base64-id> <base64-password> [selector]
        client         oauth      <xtext-id>  <base64-xoauth2-response>  [selector]
        client         oauth:cmd  <xtext-id>  <xtext-command-line>  [selector]
        server         none       <ip-range>  <keyword>
        client|server  <hash>     <xtext-id>  <base64-hashed-secret>  [selector]

    As in E-MailRelay 2.6b, ``login`` means ``plain``, ``cram-md5`` and
    ``apop`` mean ``md5``, a colon and what follows it are dropped from a
    type word that is not a type of its own (``md5:b`` is ``md5``, its id
    xtext still), ``=`` in xtext stands for itself, ``plain:b`` fields are
    base64 whose padding may be left out but never empty (``=``) except in
    ``client plain:b = =`` ("do not authenticate"), and any other type word
    is the name of the hash function that made the secret (``sha1``, ``sha256``, ``frob``...): the
    line is kept, its secret must be base64, and CRAM-SHA1 / CRAM-SHA256 are
    offered for ``sha1`` / ``sha256`` server lines (as upstream does), though
    no hashed secret but MD5's can check a response (no hash library can
    resume from a stored state), so those authentications fail; other names
    offer nothing. ``oauth`` on a server line is such a name too.
    An ``oauth`` secret is, as in E-MailRelay 2.6b, the XOAUTH2 initial
    client response already base64-encoded (``user=...^Aauth=Bearer ...^A^A``):
    it is sent as it is (re-encoded with its padding); upstream's strict
    base64 rules apply (padding optional but exact, no stray bits).
    ``oauth:cmd`` is our extension: the xtext-decoded secret is a command
    line (split like a POSIX shell would, but run without a shell) that is
    run for each authentication (``fetch_oauth_token``); the first non-empty
    line of its stdout is a fresh bare access token, from which the XOAUTH2
    response is built.  Exit status non-zero, a timeout or no output fails
    that authentication.
    IP ranges: ``192.168.0.*`` (any octet may be ``*``), CIDR
    (``192.168.0.0/24``, ``fe80::/64``) or one address; IPv4-mapped IPv6
    client addresses match IPv4 rules.
    The founding guide's older lines, mechanism first, are accepted too:
    ``APOP server <id> <pw>``, ``login server|client <id> <pw>``,
    ``CRAM-MD5 server <id> <pw-or-dotted-state>``, ``NONE server <range> <kw>``.
    The 5th field of a server line is ignored.

GUARANTEES
    * ``Secrets.load``/``from_text``/``from_option`` raise only
      ``ConfigError``: a ``SecretsLineError`` for a malformed line (unknown
      side, wrong field count, bad xtext/base64/dotted/IP range), which
      reads ``<file name>(<line>): <text>`` as E-MailRelay 2.6b's, and
      names the file when it cannot be read.  Messages never quote
      passwords.
    * A duplicate is a malformed line, as upstream's: a user's second server
      secret of one kind, a second client line for one selector, a second
      ``none`` line for one address range.
    * ``pam:`` is recognised (``is_pam``) but is not a secrets file:
      ``load``/``from_option`` reject it with a clear ``ConfigError``.
      ``--server-auth=pam:`` / ``--pop-auth=pam:`` are served by
      ``emailrelay.auth.pam.PamSecrets`` (``services/security.py``); PAM
      cannot supply passwords for the SMTP client.
    * Secret bytes are exactly the decoded octets (xtext/base64), and are
      left out of ``repr``.  An ``oauth`` account's secret is the XOAUTH2
      initial client response (decoded), whichever way it was given.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import identity
from ..errors import ConfigError, EmailRelayError
from ..protocol.addresses import xtext_decode
from ..protocol.sasl import CRAM_HASHES, AuthConfig, server_mechanisms
from .md5state import decode_state, hmac_md5_from_state

__all__ = [
    "PAM_VALUE",
    "AuthConfig",
    "ClientAccount",
    "Secrets",
    "SecretsLineError",
    "ServerSecret",
    "TokenError",
    "TrustRule",
    "fetch_oauth_token",
    "is_pam",
    "xoauth2_response",
]

PAM_VALUE = "pam:"
_PAM_ERROR = "pam: is not a secrets file: PAM is for --server-auth and --pop-auth only (it cannot supply passwords for the SMTP client)"
_OLD_MECHANISMS = {"login": "plain", "apop": "plain", "cram-md5": "cram-md5", "none": "none"}
# Type words that are another name of a type (upstream's); any other word names a hash function.
_TYPE_ALIASES = {"login": "plain", "cram-md5": "md5", "apop": "md5"}
_TYPES = ("none", "plain", "plain:b", "md5", "oauth", "oauth:cmd")
_DOTTED_RE = re.compile(r"[0-9]+(?:\.[0-9]+){7}")
_OCTET_RE = re.compile(r"\*|[0-9]{1,3}")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_pam(value: str) -> bool:
    """True for the special ``pam:`` value of ``--server-auth`` / ``--pop-auth``."""
    return value.strip().lower().startswith(PAM_VALUE)


class TokenError(EmailRelayError):
    """An ``oauth:cmd`` token command failed; that authentication fails."""


@dataclass(frozen=True)
class _Secret:
    kind: str  # "plain" | "md5" | "oauth"
    id: str
    id_bytes: bytes
    secret: bytes = field(repr=False)
    line: int = 0
    path: str = ""

    def matches_password(self, password: bytes) -> bool:
        return self.kind == "plain" and hmac.compare_digest(self.secret, password)

    def hmac_digest(self, hash_name: str, message: bytes) -> bytes | None:
        if self.kind == "plain":
            return hmac.new(self.secret, message, hash_name).digest()
        if self.kind == "md5" and hash_name == "md5":
            return hmac_md5_from_state(self.secret, message)
        return None


@dataclass(frozen=True)
class ServerSecret(_Secret):
    """A ``server`` line: ``kind`` is "plain" or "md5"."""


@dataclass(frozen=True)
class ClientAccount(_Secret):
    """A ``client`` line: ``kind`` is "plain", "md5" or "oauth".

    ``token_command`` is set for ``oauth:cmd`` lines (``secret`` is then
    empty until ``fetch_oauth_token``).  ``is_empty`` means "do not
    authenticate" (``client plain:b = = noauth``).
    """

    selector: str = ""
    token_command: tuple[str, ...] | None = None

    @property
    def user(self) -> str:
        return self.id

    @property
    def user_bytes(self) -> bytes:
        return self.id_bytes

    @property
    def is_empty(self) -> bool:
        return not self.id_bytes

    @property
    def needs_token(self) -> bool:
        return self.token_command is not None and not self.secret


@dataclass(frozen=True)
class TrustRule:
    """A ``server none`` line: clients in ``range_text`` need no AUTH."""

    range_text: str
    keyword: str
    line: int
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    octets: tuple[int | None, ...] | None = None

    def matches(self, address: IPAddress) -> bool:
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        if self.octets is None or address.version != 4:
            return False
        return all(o is None or o == b for o, b in zip(self.octets, address.packed, strict=True))


def _parse_range(
    text: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | None, tuple[int | None, ...] | None]:
    if "*" in text:
        parts = text.split(".")
        if len(parts) != 4 or not all(_OCTET_RE.fullmatch(p) for p in parts):
            raise ValueError(text)
        octets = tuple(None if p == "*" else int(p) for p in parts)
        if any(o is not None and o > 255 for o in octets):
            raise ValueError(text)
        return None, octets
    return ipaddress.ip_network(text, strict=False), None


def _parse_address(ip: str) -> IPAddress | None:
    text = ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _xtext(text: str) -> tuple[str, bytes]:
    """Decode xtext to (text, exact octets); ``ValueError`` when invalid.  As E-MailRelay 2.6b
    reads a secrets file, ``=`` stands for itself (``server plain me =`` is the password "=")."""
    text = text.replace("=", "+3D")
    decoded = xtext_decode(text)
    # xtext_decode gives UTF-8 text, or latin-1 when the octets are not UTF-8;
    # the octet count tells which encoding gives the original octets back.
    size = len(text) - 2 * text.count("+")
    raw = decoded.encode("utf-8")
    if len(raw) != size:
        raw = decoded.encode("latin-1")
    return decoded, raw


def _type_word(word: str) -> str:
    """A line's type, as E-MailRelay 2.6b reads it: in any case, its other names (``login``...)
    resolved, and whatever follows a colon dropped unless the word is a type of its own
    (``md5:b`` and ``plain:x`` are ``md5`` and ``plain``; ``plain:b``, ``oauth:cmd`` stay)."""
    kind = word.lower()
    if kind not in _TYPES and ":" in kind:
        kind = kind.split(":", 1)[0]
    return _TYPE_ALIASES.get(kind, kind)


def _b64field(text: str) -> bytes:
    if text == "=":
        return b""
    return base64.b64decode(text.encode("ascii"), validate=True)


def _strict_b64(text: str) -> bytes:
    """E-MailRelay 2.6b's base64 for an ``oauth`` secret and ``plain:b`` fields: the padding may
    be left out but not be partial, and the last character may carry no unused bits.
    ``ValueError`` otherwise."""
    body = text.rstrip("=")
    if len(body) % 4 == 1 or (body != text and len(text) - len(body) != -len(body) % 4):
        raise ValueError("invalid base64")
    raw = base64.b64decode((body + "=" * (-len(body) % 4)).encode("ascii"), validate=True)
    if base64.b64encode(raw).decode("ascii").rstrip("=") != body:
        raise ValueError("invalid base64")
    return raw


def xoauth2_response(user: bytes, token: bytes) -> bytes:
    """The XOAUTH2 initial client response for a bare access token (RFC 7628 style)."""
    return b"user=" + user + b"\x01auth=Bearer " + token + b"\x01\x01"


def _bytes_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class SecretsLineError(ConfigError):
    """A malformed line of a secrets file: ``str()`` is E-MailRelay 2.6b's ``<file name>(<line>):
    <text>``, and ``problem`` its warning that comes first (``problems reading secrets file
    [<path>]...``); upstream then gives up with ``invalid secrets file``."""

    def __init__(self, text: str, path: str, line: int) -> None:
        super().__init__(text, path, line)
        self.problem = f"problems reading secrets file [{path}]..."

    def __str__(self) -> str:
        return f"{Path(str(self.path)).name}({self.line}): {self.text}"


class Secrets:
    """The parsed contents of one secrets file (or ``--client-auth plain:...``)."""

    def __init__(self, path: str = "") -> None:
        self.path = path
        self.server: list[ServerSecret] = []
        self.clients: list[ClientAccount] = []
        self.trust: list[TrustRule] = []

    # -- construction

    @classmethod
    def load(cls, path: str | Path) -> Secrets:
        path = str(path)
        if is_pam(path):
            raise ConfigError(_PAM_ERROR)
        try:
            data = Path(path).read_bytes()
        except (OSError, ValueError) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise ConfigError(f"cannot read secrets file: {reason}", path=path) from None
        return cls.from_text(_bytes_text(data), path)

    @classmethod
    def from_text(cls, text: str, path: str = "<secrets>") -> Secrets:
        self = cls(path)
        for number, raw_line in enumerate(text.split("\n"), 1):
            fields = raw_line.split("#", 1)[0].split()
            if fields:
                self._add(fields, number)
        return self

    @classmethod
    def from_option(cls, value: str) -> Secrets:
        """A ``--client-auth``/``--server-auth``/``--pop-auth`` value: a file,
        ``plain:<base64-id>:<base64-password>`` (client account) or ``pam:``."""
        if is_pam(value):
            raise ConfigError(_PAM_ERROR)
        if not value.startswith("plain:"):
            return cls.load(value)
        parts = value.split(":")
        usage = "invalid --client-auth value: expected plain:<base64-user-id>:<base64-password>"
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ConfigError(usage)
        try:
            # unpadded base64 is accepted, as in the user guide's "plain:YWxpY2VAZ21haWwuY29t:UGFzc3cwcmQ"
            padded = [f if f == "=" else f + "=" * (-len(f) % 4) for f in parts[1:]]
            user, password = _b64field(padded[0]), _b64field(padded[1])
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise ConfigError(usage) from None
        self = cls("--client-auth")
        self.clients.append(ClientAccount("plain", _bytes_text(user), user, password, 0, self.path))
        return self

    # -- parsing

    def _error(self, text: str, line: int) -> SecretsLineError:
        return SecretsLineError(text, self.path, line)

    def _add(self, f: list[str], n: int) -> None:
        side = f[0].lower()
        if side not in ("client", "server"):
            if len(f) >= 2 and f[1].lower() in ("client", "server") and side in _OLD_MECHANISMS:
                self._add_old(f, n)
                return
            raise self._error(f"invalid value in first field: [{f[0]}]", n)  # upstream's words
        if len(f) < 4:
            raise self._error("too few fields", n)  # upstream's words
        if len(f) > 5:
            raise self._error("too many fields", n)
        kind = _type_word(f[1])
        selector = f[4] if len(f) == 5 else ""
        if kind not in _TYPES or (side == "server" and kind.startswith("oauth")):
            self._add_secret(side, kind, *self._decode_hashed(kind, f[2], f[3], n), selector, n)
        elif kind == "none":
            if side != "server" or len(f) != 4:
                raise self._error("none lines take the form: server none <ip-range> <keyword>", n)
            self._add_trust(f[2], f[3], n)
        elif kind == "plain":
            self._add_secret(side, "plain", *self._decode_xtext(f[2], f[3], n), selector, n)
        elif kind == "plain:b":
            self._add_secret(side, "plain", *self._decode_b64(side, f[2], f[3], n), selector, n)
        elif kind == "md5":
            self._add_secret(side, "md5", *self._decode_md5(f[2], f[3], n), selector, n)
        elif kind == "oauth":
            self._add_secret(side, "oauth", *self._decode_oauth(f[2], f[3], n), selector, n)
        else:
            self._add_token_command(f[2], f[3], selector, n)

    def _add_old(self, f: list[str], n: int) -> None:
        mechanism, side = _OLD_MECHANISMS[f[0].lower()], f[1].lower()
        if len(f) < 4 or len(f) > 5:
            raise self._error(f"{f[0]} lines take the form: {f[0]} <client|server> <id> <secret>", n)
        selector = f[4] if len(f) == 5 else ""
        if mechanism == "none":
            if side != "server" or len(f) != 4:
                raise self._error(f"{f[0]} lines take the form: {f[0]} server <ip-range> <keyword>", n)
            self._add_trust(f[2], f[3], n)
        elif mechanism == "cram-md5" and _DOTTED_RE.fullmatch(f[3]):
            self._add_secret(side, "md5", *self._decode_md5(f[2], f[3], n), selector, n)
        else:
            self._add_secret(side, "plain", *self._decode_xtext(f[2], f[3], n), selector, n)

    def _decode_xtext(self, id_field: str, secret_field: str, n: int) -> tuple[str, bytes, bytes]:
        try:
            ident, ident_raw = _xtext(id_field)
        except ValueError:
            raise self._error(f"invalid xtext in id [{id_field}]", n) from None
        try:
            _, secret = _xtext(secret_field)
        except ValueError:
            raise self._error(f"invalid xtext in the secret for [{ident}]", n) from None
        return ident, ident_raw, secret

    def _decode_oauth(self, id_field: str, secret_field: str, n: int) -> tuple[str, bytes, bytes]:
        """An xtext id and the base64 XOAUTH2 response; upstream's message when it is not base64."""
        ident, ident_raw, _ = self._decode_xtext(id_field, "", n)
        try:
            return ident, ident_raw, _strict_b64(secret_field)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise self._error(f"invalid xtext in the secret for [{ident}]", n) from None

    def _decode_b64(self, side: str, id_field: str, secret_field: str, n: int) -> tuple[str, bytes, bytes]:
        """A ``plain:b`` line's fields, as E-MailRelay 2.6b decodes them: base64 whose padding may
        be left out (``bWU``), but no empty id or secret (``=``), bar the "do not authenticate"
        ``client plain:b = =``."""
        if side == "client" and id_field == secret_field == "=":
            return "", b"", b""
        try:
            ident_raw = _strict_b64(id_field)
            if not ident_raw:
                raise ValueError("empty")
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise self._error(f"invalid base64 in id [{id_field}]", n) from None
        ident = _bytes_text(ident_raw)
        try:
            secret = _strict_b64(secret_field)
            if not secret:
                raise ValueError("empty")
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise self._error(f"invalid base64 in the secret for [{ident}]", n) from None
        return ident, ident_raw, secret

    def _decode_md5(self, id_field: str, secret_field: str, n: int) -> tuple[str, bytes, bytes]:
        try:
            ident, ident_raw = _xtext(id_field)
        except ValueError:
            raise self._error(f"invalid xtext in id [{id_field}]", n) from None
        try:
            state = decode_state(secret_field)
        except ValueError:
            raise self._error(
                f"invalid md5 secret for [{ident}]: expected base64 or dotted output of emailrelay-passwd", n
            ) from None
        return ident, ident_raw, state

    def _decode_hashed(self, kind: str, id_field: str, secret_field: str, n: int) -> tuple[str, bytes, bytes]:
        """A secret hashed with hash function ``kind``: an xtext id and a base64 secret."""
        try:
            ident, ident_raw = _xtext(id_field)
        except ValueError:
            raise self._error(f"invalid xtext in id [{id_field}]", n) from None
        try:
            secret = _b64field(secret_field)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise self._error(f"invalid {kind} secret for [{ident}]: expected base64", n) from None
        return ident, ident_raw, secret

    def _add_token_command(self, id_field: str, secret_field: str, selector: str, n: int) -> None:
        ident, ident_raw, command = self._decode_xtext(id_field, secret_field, n)
        try:
            argv = tuple(shlex.split(_bytes_text(command)))
        except ValueError:
            raise self._error(f"invalid oauth:cmd command line for [{ident}]", n) from None
        if not argv:
            raise self._error(f"empty oauth:cmd command line for [{ident}]", n)
        self._add_secret("client", "oauth", ident, ident_raw, b"", selector, n, argv)

    def _add_secret(
        self,
        side: str,
        kind: str,
        ident: str,
        ident_raw: bytes,
        secret: bytes,
        selector: str,
        n: int,
        token_command: tuple[str, ...] | None = None,
    ) -> None:
        if side == "server":  # a user's second secret of one kind, as upstream: the file is refused
            if any(s.id_bytes == ident_raw and s.kind == kind for s in self.server):
                raise self._error("duplicate server secret", n)
            self.server.append(ServerSecret(kind, ident, ident_raw, secret, n, self.path))
            return
        if any(c.selector == selector for c in self.clients):
            raise self._error("duplicate client secret", n)
        self.clients.append(
            ClientAccount(kind, ident, ident_raw, secret, n, self.path, selector, token_command)
        )

    def _add_trust(self, range_text: str, keyword: str, n: int) -> None:
        try:
            network, octets = _parse_range(range_text)
        except ValueError:
            raise self._error(f"invalid ip address range [{range_text}]", n) from None
        if any(t.range_text == range_text for t in self.trust):
            raise self._error("duplicate server trust address", n)
        self.trust.append(TrustRule(range_text, keyword, n, network, octets))

    # -- queries

    @property
    def has_server_accounts(self) -> bool:
        return bool(self.server)

    @property
    def has_client_accounts(self) -> bool:
        return bool(self.clients)

    def server_lookup(self, mechanism: str, user: str | bytes) -> ServerSecret | None:
        """The first server secret for ``user`` usable with ``mechanism``: plain secrets for
        everything, and for CRAM-<hash> also secrets hashed with that hash function.  ``user``
        as text matches the id as read (UTF-8, else latin-1); as octets, the id's exact octets
        (as E-MailRelay 2.6b compares a POP name: ``+FF`` is the octet 0xff, not "ÿ" in UTF-8)."""
        hashed = CRAM_HASHES.get(mechanism.upper())
        kinds = ("plain", hashed) if hashed else ("plain",)
        if isinstance(user, bytes):
            return next((s for s in self.server if s.id_bytes == user and s.kind in kinds), None)
        return next((s for s in self.server if s.id == user and s.kind in kinds), None)

    def client_account(self, selector: str = "") -> ClientAccount | None:
        return next((c for c in self.clients if c.selector == selector), None)

    def trusted(self, ip: str) -> str | None:
        """The keyword of the first ``none`` rule matching client address ``ip``."""
        rule = self.trust_rule(ip)
        return None if rule is None else rule.keyword

    def trust_rule(self, ip: str) -> TrustRule | None:
        """The first ``none`` rule matching client address ``ip``."""
        address = _parse_address(ip)
        if address is None:
            return None
        return next((r for r in self.trust if r.matches(address)), None)

    def mechanisms_for_server(self) -> list[str]:
        return server_mechanisms(s.kind for s in self.server)


def fetch_oauth_token(
    account: ClientAccount,
    timeout: float = 30.0,
    run: Callable[..., Any] = subprocess.run,
) -> ClientAccount:
    """Run an ``oauth:cmd`` account's command; the account with its fresh token.

    Accounts without a command are returned as they are.  ``TokenError``
    on a failed run (not found, timeout, non-zero exit, no output).  The command
    runs as a filter does: fully ``--user`` (real and effective ids), umask 077."""
    if account.token_command is None:
        return account
    name = account.token_command[0]
    try:
        result = run(
            list(account.token_command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            preexec_fn=identity.child_preexec(),
        )
    except subprocess.TimeoutExpired:
        raise TokenError(f"oauth token command [{name}] timed out after {timeout:g}s") from None
    except OSError as err:
        raise TokenError(f"oauth token command [{name}] could not run: {err.strerror or err}") from None
    if result.returncode != 0:
        raise TokenError(f"oauth token command [{name}] failed: exit {result.returncode}")
    lines = [t.strip() for t in bytes(result.stdout).splitlines() if t.strip()]
    if not lines:
        raise TokenError(f"oauth token command [{name}] printed no token")
    return replace(account, secret=xoauth2_response(account.id_bytes, lines[0]))
