"""emailrelay.protocol.sasl -- sans-IO SMTP AUTH (SASL) mechanisms, both sides.

PURPOSE
    The conversations behind ``AUTH``: what the server challenges and how it
    checks the answers (``SaslServer``), what the client answers
    (``SaslClient``), which mechanism a client picks
    (``choose_client_mechanism``), the ``--server-auth-config`` /
    ``--client-auth-config`` allow/deny and prefer/avoid lists
    (``AuthConfig``), and a pure brute-force throttle (``BruteForceGuard``).

EXPECTS
    * Lines as ``str`` without CRLF: base64 text as it travels in ``AUTH`` and
      ``334`` lines (``""`` for an empty initial response, i.e. ``AUTH X =``).
      ``"*"`` from the client cancels.
    * Secrets through duck-typed views (``ServerSecretView``,
      ``ClientAccountView``), normally ``emailrelay.auth.secrets`` objects;
      this module never imports ``emailrelay.auth`` (imports point one way)
      and never sees a file.  md5-state secrets compute their own HMAC.
    * Randomness and time as callables, so tests are deterministic.

GUARANTEES
    * No sockets, files, clocks (unless passed in) or logging.
    * Server mechanisms: PLAIN, LOGIN, CRAM-MD5, CRAM-SHA1, CRAM-SHA256,
      CRAM-SHA512 (upstream 2.6 advertises SHA512 too); ``server_offer`` is
      what a session offers, before and after TLS.  The CRAM challenge is
      ``<random.time@domain>`` like upstream's ``<26514.1795611775@vm>``.
      XOAUTH2 is client-only: a relay has no way to validate bearer tokens.
    * ``external_check=True`` (PAM): PLAIN and LOGIN give ``CheckPassword``
      instead of looking a secret up; the caller checks the password (off
      the event loop) and feeds the answer to ``SaslServer.checked``.  CRAM
      mechanisms then fail: they need the secret itself.
    * ``SaslServer.start``/``step`` never raise on peer input: malformed
      base64, wrong field counts, unknown users, bad digests, out-of-order
      calls all give ``Failure``.  Comparisons use ``hmac.compare_digest``.
    * Client strength order: CRAM-SHA512 > CRAM-SHA256 > CRAM-SHA1 > CRAM-MD5
      > XOAUTH2 > PLAIN > LOGIN, limited by what the account can do (plain:
      all but XOAUTH2; md5 state: CRAM-MD5 only; oauth: XOAUTH2 only).  As
      upstream, PLAIN/LOGIN are allowed without TLS; ``AuthConfig`` can
      forbid them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets as _secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "CLIENT_PREFERENCE",
    "CRAM_HASHES",
    "SERVER_MECHANISMS",
    "AuthConfig",
    "BruteForceGuard",
    "Challenge",
    "CheckPassword",
    "ClientAccountView",
    "Failure",
    "GuardDecision",
    "SaslClient",
    "SaslServer",
    "ServerSecretView",
    "Step",
    "Success",
    "choose_client_mechanism",
    "client_mechanisms",
    "server_mechanisms",
    "server_offer",
]

CRAM_HASHES: Mapping[str, str] = {
    "CRAM-SHA512": "sha512",
    "CRAM-SHA256": "sha256",
    "CRAM-SHA1": "sha1",
    "CRAM-MD5": "md5",
}
#: Server-side mechanisms, in upstream's advertising order (strongest first).
SERVER_MECHANISMS: tuple[str, ...] = (*CRAM_HASHES, "PLAIN", "LOGIN")
#: Client-side preference, strongest first.
CLIENT_PREFERENCE: tuple[str, ...] = (*CRAM_HASHES, "XOAUTH2", "PLAIN", "LOGIN")

_LOGIN_USERNAME = base64.b64encode(b"Username:").decode()  # "VXNlcm5hbWU6"
_LOGIN_PASSWORD = base64.b64encode(b"Password:").decode()  # "UGFzc3dvcmQ6"


# ------------------------------------------------------------------ secrets


class ServerSecretView(Protocol):
    """What ``SaslServer`` needs from a server secret (``kind`` "plain" or "md5")."""

    @property
    def kind(self) -> str: ...

    @property
    def line(self) -> int: ...

    def matches_password(self, password: bytes) -> bool: ...

    def hmac_digest(self, hash_name: str, message: bytes) -> bytes | None: ...


class ClientAccountView(Protocol):
    """What ``SaslClient`` needs from a client account (``kind`` "plain", "md5" or "oauth")."""

    @property
    def kind(self) -> str: ...

    @property
    def user_bytes(self) -> bytes: ...

    @property
    def secret(self) -> bytes: ...

    def hmac_digest(self, hash_name: str, message: bytes) -> bytes | None: ...


Lookup = Callable[[str, str], ServerSecretView | None]


#: The hash functions whose hashed secrets get their CRAM mechanism offered (upstream's choice).
HASHED_SECRET_HASHES = ("sha256", "sha1", "md5")


def server_mechanisms(kinds: Iterable[str]) -> list[str]:
    """Mechanisms a server can offer given the kinds of its secrets: "plain" offers every one, a
    hashed secret ("md5", "sha1", "sha256") its CRAM mechanism, any other kind nothing."""
    present = set(kinds)
    if "plain" in present:
        return list(SERVER_MECHANISMS)
    return [m for m, h in CRAM_HASHES.items() if h in present and h in HASHED_SECRET_HASHES]


def server_offer(secret_mechanisms: Sequence[str], config: AuthConfig | None, encrypted: bool) -> list[str]:
    """What a server session offers: ``secret_mechanisms`` (``server_mechanisms``) through
    ``config``.  As E-MailRelay 2.6b, secrets that allow no mechanism (only ``none``, ``client``
    or unknown-hash lines) offer PLAIN once encrypted, subject to ``config`` (and then fail:
    there is no secret); before that they offer nothing."""
    offered = list(secret_mechanisms) or (["PLAIN"] if encrypted else [])
    return offered if config is None else config.select(offered, encrypted)


def client_mechanisms(kind: str) -> list[str]:
    """Mechanisms a client account of ``kind`` can do, strongest first."""
    if kind == "plain":
        return [m for m in CLIENT_PREFERENCE if m != "XOAUTH2"]
    if kind == "md5":
        return ["CRAM-MD5"]
    if kind == "oauth":
        return ["XOAUTH2"]
    return []


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _octets_text(raw: bytes) -> str:
    """A name as the octets that came: those that are not UTF-8 as surrogate escapes."""
    return raw.decode("utf-8", "surrogateescape")


def name_octets(name: str) -> bytes:
    """A name a ``SaslServer`` gave (surrogate escapes) as the octets that came (what
    ``Secrets.server_lookup`` matches with a secret id's exact octets)."""
    return name.encode("utf-8", "surrogateescape")


_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def b64decode_strict(text: str) -> bytes | None:
    """``text`` decoded as E-MailRelay 2.6b decodes SASL base64, else ``None``: the padding may be
    left out but, when present, must be complete; no white space, no stray ``=``, and the last
    character's unused bits must be zero (``"c2VjcmV0="`` and ``"xx"`` are refused, ``"YWI"`` is
    ``b"ab"``)."""
    if not _BASE64_TEXT.fullmatch(text):
        return None
    body = text.rstrip("=")
    if len(body) % 4 == 1 or (len(body) < len(text) and len(text) % 4 != 0):
        return None
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii").rstrip("=") == body else None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# -------------------------------------------------------------------- server


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``334 <text_b64>`` and feed the next line to ``step``."""

    text_b64: str


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated as ``identity``; send 235."""

    identity: str
    mechanism: str
    secret_line: int
    secret_kind: str

    def describe(self) -> str:
        """Upstream's log wording, e.g. ``mechanism [cram-md5] and plaintext secret for [alice] from line 1``."""
        return f"mechanism [{self.mechanism.lower()}] and {_secret_words(self.secret_kind, self.identity, self.secret_line)}"


def _secret_words(kind: str, user: str, line: int) -> str:
    """How upstream names the secret a check used: ``plaintext secret for [alice] from line 1``,
    ``pam for [alice]``, or (none found) ``missing secret for [alice]`` / ``missing secret``."""
    if kind == "pam":
        return f"pam for [{user}]"
    if not kind:
        return f"missing secret for [{user}]" if user else "missing secret"
    return f"{'plaintext' if kind == 'plain' else kind} secret for [{user}] from line {line}"


@dataclass(frozen=True, slots=True)
class Failure:
    """Authentication failed (send 535); ``reason`` is for the log only, ``secret`` upstream's
    words for the secret checked (see :meth:`describe`)."""

    reason: str
    identity: str = ""
    mechanism: str = ""
    secret: str = ""

    def describe(self) -> str:
        """Upstream's log wording: ``mechanism [plain] and plaintext secret for [alice] from line 1``."""
        return (
            f"mechanism [{self.mechanism.lower()}] and {self.secret or _secret_words('', self.identity, 0)}"
        )


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """(``external_check`` only) check ``user``'s ``password``, then call ``SaslServer.checked``."""

    user: str
    password: bytes = field(repr=False)


Step = Challenge | Success | Failure | CheckPassword


class SaslServer:
    """One server-side AUTH conversation.

    ``lookup(mechanism, user)`` returns the secret usable for that mechanism
    (``Secrets.server_lookup``).  ``random_source()`` gives the random part
    of CRAM challenges; ``clock()`` the time part (a second random number
    when no clock is given; services pass ``time.time``).  With
    ``external_check`` passwords are not looked up but handed out as
    ``CheckPassword`` (PAM).  A user name whose octets are not UTF-8 is given to ``lookup``
    (and named in the outcome) with surrogate escapes, as the octets came (as E-MailRelay 2.6b
    takes a name: :func:`name_octets` gives the octets back).
    """

    def __init__(
        self,
        mechanism: str,
        lookup: Lookup,
        challenge_domain: str = "localhost",
        random_source: Callable[[], int] | None = None,
        clock: Callable[[], float] | None = None,
        external_check: bool = False,
    ) -> None:
        self.mechanism = mechanism.upper()
        if self.mechanism not in SERVER_MECHANISMS:
            raise ValueError(f"unsupported server mechanism: {mechanism}")
        self._lookup = lookup
        self._domain = challenge_domain
        self._random = random_source or (lambda: _secrets.randbelow(2**31))
        self._clock = clock
        self._external = external_check
        self._state = "new"
        self._challenge = b""
        self._user = ""

    @property
    def done(self) -> bool:
        return self._state == "done"

    def start(self, initial_response: str | None = None) -> Step:
        """Begin after ``AUTH <mechanism> [initial-response]`` (``""`` for ``=``)."""
        if self._state != "new":
            return self._fail("conversation already started")
        m = self.mechanism
        if m == "PLAIN":
            if initial_response is None:
                self._state = "plain"
                return Challenge("")
            return self._plain(initial_response)
        if m == "LOGIN":
            if initial_response is None:
                self._state = "login-user"
                return Challenge(_LOGIN_USERNAME)
            return self._login_user(initial_response)
        if self._external:
            return self._fail(f"{m} needs a stored secret")
        if initial_response:
            return self._fail(f"unexpected initial response for {m}")
        time_part = int(self._clock()) if self._clock is not None else self._random()
        self._challenge = f"<{self._random()}.{time_part}@{self._domain}>".encode()
        self._state = "cram"
        return Challenge(_b64(self._challenge))

    def step(self, response_line: str) -> Step:
        """Feed the client's answer to the last challenge."""
        state = self._state
        if state in ("new", "done", "checking"):
            return self._fail("unexpected authentication response")
        if response_line.strip() == "*":
            return self._fail("authentication cancelled")
        if state == "plain":
            return self._plain(response_line)
        if state == "login-user":
            return self._login_user(response_line)
        if state == "login-password":
            return self._login_password(response_line)
        return self._cram(response_line)

    # -- mechanisms

    def _fail(self, reason: str, secret: ServerSecretView | None = None) -> Failure:
        self._state = "done"
        words = _secret_words(secret.kind, self._user, secret.line) if secret is not None else ""
        return Failure(reason, self._user, self.mechanism, words)

    def checked(self, ok: bool, reason: str = "", kind: str = "pam") -> Step:
        """The caller's answer to ``CheckPassword``."""
        if self._state != "checking":
            return self._fail("unexpected password check")
        if not ok:
            self._state = "done"
            words = _secret_words(kind, self._user, 0)
            return Failure(reason or f"wrong password for [{self._user}]", self._user, self.mechanism, words)
        self._state = "done"
        return Success(self._user, self.mechanism, 0, kind)

    def _check_password(self, user: str, password: bytes) -> Step:
        if self._external:
            self._user = user
            self._state = "checking"
            return CheckPassword(user, password)
        secret = self._lookup(self.mechanism, user)
        self._user = user
        if secret is None:
            return self._fail(f"no secret for [{user}]")
        if not secret.matches_password(password):
            return self._fail(f"wrong password for [{user}]", secret)
        self._state = "done"
        return Success(user, self.mechanism, secret.line, secret.kind)

    def _plain(self, line: str) -> Step:
        raw = b64decode_strict(line)
        if raw is None:
            return self._fail("invalid base64")
        parts = raw.split(b"\0")
        if len(parts) != 3:
            return self._fail("malformed PLAIN response")
        # as E-MailRelay 2.6b: the authorization identity is ignored; the client is who it
        # authenticated as (authcid), which is what is logged and stored
        _authzid, authcid, password = parts
        if not authcid:
            return self._fail("empty user name")
        self._user = _octets_text(authcid)
        return self._check_password(self._user, password)

    def _login_user(self, line: str) -> Step:
        raw = b64decode_strict(line)
        if raw is None:
            return self._fail("invalid base64")
        self._user = _octets_text(raw)
        self._state = "login-password"
        # as E-MailRelay 2.6b: an empty user name ("=" or an empty line) is asked for its
        # password all the same, with an empty prompt, and then fails as an unknown user
        return Challenge(_LOGIN_PASSWORD if raw else "")

    def _login_password(self, line: str) -> Step:
        raw = b64decode_strict(line)
        if raw is None:
            return self._fail("invalid base64")
        return self._check_password(self._user, raw)

    def _cram(self, line: str) -> Step:
        raw = b64decode_strict(line)
        if raw is None:
            return self._fail("invalid base64")
        user_raw, _, digest = raw.rpartition(b" ")
        if not user_raw:
            return self._fail(f"malformed {self.mechanism} response")
        self._user = _octets_text(user_raw)
        secret = self._lookup(self.mechanism, self._user)
        if secret is None:
            return self._fail(f"no secret for [{self._user}]")
        expected = secret.hmac_digest(CRAM_HASHES[self.mechanism], self._challenge)
        if expected is None:
            return self._fail(f"no {self.mechanism} secret for [{self._user}]")
        if not hmac.compare_digest(expected.hex().encode(), digest.lower()):
            return self._fail(f"wrong {self.mechanism} digest for [{self._user}]", secret)
        self._state = "done"
        return Success(self._user, self.mechanism, secret.line, secret.kind)


# -------------------------------------------------------------------- client


class SaslClient:
    """One client-side AUTH conversation for ``account``.

    ``initial_response()`` is sent with ``AUTH`` (``None``: send none);
    ``respond(challenge_b64)`` answers each ``334``.  A challenge that cannot
    be answered (bad base64, too many steps) gives ``"*"`` (cancel) and sets
    ``error``.  oauth accounts must carry their XOAUTH2 initial client response
    already, as their secret (see ``emailrelay.auth.secrets.fetch_oauth_token``).
    """

    def __init__(self, mechanism: str, account: ClientAccountView) -> None:
        self.mechanism = mechanism.upper()
        if self.mechanism not in client_mechanisms(account.kind):
            raise ValueError(f"a {account.kind} account cannot do {mechanism}")
        if self.mechanism == "XOAUTH2" and not account.secret:
            raise ValueError("oauth account has no token (fetch it first)")
        self._account = account
        self._steps = 0
        self._login_user_sent = False  # LOGIN: the user name went as the initial response
        self._asked_user = False  # LOGIN: the server asked for the user name all the same
        self.error: str | None = None

    def initial_response(self) -> str | None:
        """What goes with ``AUTH``: LOGIN sends the user name there (``AUTH LOGIN <base64 user>``,
        as E-MailRelay 2.6b does), PLAIN and XOAUTH2 their one message, CRAM-* nothing."""
        a = self._account
        if self.mechanism == "LOGIN":
            self._login_user_sent = True
            return _b64(a.user_bytes)
        if self.mechanism == "PLAIN":
            return _b64(b"\0" + a.user_bytes + b"\0" + a.secret)
        if self.mechanism == "XOAUTH2":  # the secret is the whole response (E-MailRelay 2.6b)
            return _b64(a.secret)
        return None

    def _cancel(self, error: str) -> str:
        self.error = error
        return "*"

    def respond(self, challenge_b64: str) -> str:
        self._steps += 1
        raw = b64decode_strict(challenge_b64)
        if raw is None:
            return self._cancel("invalid base64 challenge")
        a = self._account
        m = self.mechanism
        if m == "XOAUTH2":
            # the server's JSON error: RFC 7628 wants an empty response, then 535
            self.error = _text(raw)
            return ""
        if m == "PLAIN":
            if self._steps > 1:
                return self._cancel("unexpected PLAIN challenge")
            return self.initial_response() or ""
        if m == "LOGIN":
            # after an initial response the first challenge is for the password, unless the server
            # ignored it and asks for the user name ("Username:") all the same
            asks_user = raw.strip().lower().startswith(b"username")
            if self._login_user_sent and not (asks_user and self._steps == 1):
                if self._steps > 2 or (self._steps == 2 and not self._asked_user):
                    return self._cancel("unexpected LOGIN challenge")
                return _b64(a.secret)
            if self._steps == 1:
                self._asked_user = True
                return _b64(a.user_bytes)
            if self._steps == 2:
                return _b64(a.secret)
            return self._cancel("unexpected LOGIN challenge")
        if self._steps > 1:
            return self._cancel(f"unexpected {m} challenge")
        digest = a.hmac_digest(CRAM_HASHES[m], raw)
        if digest is None:
            return self._cancel(f"account cannot compute {m}")
        return _b64(a.user_bytes + b" " + digest.hex().encode())


# ------------------------------------------------------------- auth config


@dataclass(frozen=True)
class AuthConfig:
    """``--server-auth-config`` / ``--client-auth-config``: ``m:a,b;x:c;a:d;d:e``.

    Keys: ``m``/``x`` apply to unencrypted sessions, ``a``/``d`` once TLS is
    up; a server without ``a`` and ``d`` keeps ``m``/``x`` over TLS too
    (``x:PLAIN,LOGIN`` alone forbids them before and after STARTTLS), as
    E-MailRelay 2.6b does.  Server role: ``m``/``a`` is an *allow* list, offered
    in the server's own fixed order, not the list's (``m:login,plain`` offers
    ``PLAIN LOGIN``; present but empty allows nothing, so ``m:;a:plain`` means
    "PLAIN only after STARTTLS"), ``x``/``d`` deny.  Client role: a non-empty ``m``/``a``
    is an allow list too, used in the client's own strength order (``m:login,plain``
    picks PLAIN when both are offered, and ``m:login`` fails with a next hop
    offering only PLAIN, as upstream); ``x``/``d`` are avoided (never used).  Unknown keys and
    malformed items are ignored, as upstream ignores them.
    """

    role: Literal["server", "client"]
    lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, role: Literal["server", "client"]) -> AuthConfig:
        """As E-MailRelay 2.6b reads it: an item is ``<key>:<list>`` exactly (no spaces are
        trimmed, so ``m:plain, login`` allows PLAIN and a mechanism named `` LOGIN``); anything
        else is ignored, and so is a key given again (the first one counts)."""
        lists: dict[str, tuple[str, ...]] = {}
        for item in text.split(";"):
            if len(item) < 2 or item[1] != ":" or item[0].lower() in lists:
                continue
            lists[item[0].lower()] = tuple(v.upper() for v in item[2:].split(",") if v)
        return cls(role, lists)

    def select(self, mechanisms: Sequence[str], encrypted: bool) -> list[str]:
        """Filter/order ``mechanisms`` (supported or offered, strongest first).  Once encrypted,
        the server follows ``a``/``d`` when either is given, else ``m``/``x`` still (E-MailRelay
        2.6b)."""
        tls_lists = encrypted and ("a" in self.lists or "d" in self.lists or self.role == "client")
        first, avoid = ("a", "d") if tls_lists else ("m", "x")
        names = [m.upper() for m in mechanisms]
        denied = set(self.lists.get(avoid, ()))
        listed = self.lists.get(first)
        if listed is None or (self.role == "client" and not listed):  # (the client: empty allows all)
            ordered = names
        else:  # an allow list, in the offer's own order (E-MailRelay 2.6b, server and client)
            ordered = [m for m in names if m in listed]
        result: list[str] = []
        for m in ordered:
            if m not in denied and m not in result:
                result.append(m)
        return result


def choose_client_mechanism(
    offered: Sequence[str],
    account: ClientAccountView | None,
    auth_config: AuthConfig | None = None,
    encrypted: bool = False,
) -> str | None:
    """The mechanism to use with a server offering ``offered``, or ``None``.

    ``None`` also for no account or an empty one (``client plain:b = =``).
    """
    if account is None or not account.user_bytes:
        return None
    usable = client_mechanisms(account.kind)
    if auth_config is not None:
        usable = auth_config.select(usable, encrypted)
    offered_set = {m.upper() for m in offered}
    return next((m for m in usable if m in offered_set), None)


# --------------------------------------------------------------- throttle


@dataclass(frozen=True, slots=True)
class GuardDecision:
    """Wait ``delay`` seconds before replying 535; then close if ``disconnect``."""

    delay: float
    disconnect: bool


class BruteForceGuard:
    """Failed AUTH attempts per client IP -> reply delay and disconnect decisions.

    Failures from one IP within ``window`` seconds of the previous one add
    up across sessions.  After ``free_failures`` of them each failure costs
    ``first_delay`` seconds, doubling up to ``max_delay`` (defaults: none,
    1, 2, 4, 8, 8, ... seconds).  A session is closed after
    ``disconnect_after`` failures.  At most ``max_clients`` IPs are tracked
    (stale and then oldest entries are dropped).  Pure: ``now`` is passed in.
    """

    def __init__(
        self,
        *,
        free_failures: int = 1,
        first_delay: float = 1.0,
        max_delay: float = 8.0,
        disconnect_after: int = 5,
        window: float = 900.0,
        max_clients: int = 10000,
    ) -> None:
        self.free_failures = free_failures
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.disconnect_after = disconnect_after
        self.window = window
        self.max_clients = max_clients
        self._clients: dict[str, tuple[int, float]] = {}

    def failures(self, ip: str, now: float) -> int:
        count, last = self._clients.get(ip, (0, now))
        return count if now - last <= self.window else 0

    def delay(self, ip: str, now: float) -> float:
        """Delay owed for the failures ``ip`` has so far."""
        excess = self.failures(ip, now) - self.free_failures
        if excess <= 0:
            return 0.0
        return min(self.max_delay, self.first_delay * 2 ** min(excess - 1, 62))

    def failure(self, ip: str, now: float, session_failures: int) -> GuardDecision:
        """Record one failure; ``session_failures`` counts this session's, this one included."""
        count = self.failures(ip, now) + 1
        self._clients.pop(ip, None)
        self._clients[ip] = (count, now)  # re-insert: dict order is age order
        self._prune(now)
        return GuardDecision(self.delay(ip, now), session_failures >= self.disconnect_after)

    def success(self, ip: str) -> None:
        self._clients.pop(ip, None)

    def _prune(self, now: float) -> None:
        if len(self._clients) <= self.max_clients:
            return
        for key, (_, last) in list(self._clients.items()):
            if now - last > self.window:
                del self._clients[key]
        while len(self._clients) > self.max_clients:
            del self._clients[next(iter(self._clients))]
