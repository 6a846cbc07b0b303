"""Typed run-time configuration built from the parsed command line.

What it is for: the services never look at option strings; they get a
:class:`Config` whose fields are already checked and converted (numbers,
addresses, feature keywords).  One configuration is one instance of the
relay (the guide's multiple-configuration prefixes give several).

Guarantees: every error is a :class:`~emailrelay.errors.UsageError` naming
the option, raised before anything is bound or started.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import FrozenInstanceError, dataclass, field, replace
from pathlib import Path

from . import topology
from .errors import UsageError

Values = dict[str, "str | bool | list[str]"]

DEFAULT_RETRY = (60, 300, 900, 3600, 14400)
DEFAULT_GIVE_UP = 5 * 24 * 3600

#: The default of every option that has one, written once: the option table (cli/options.py) shows
#: and documents these, and :class:`Config` and :func:`from_values` read them (this module is below
#: ``cli/`` in the layers, so the values live here and the table refers to them).
OPTION_DEFAULTS: dict[str, str] = {
    "spool-dir": "/var/spool/emailrelay",
    "connection-timeout": "40",
    "idle-timeout": "60",
    "response-timeout": "60",
    "port": "25",
    "filter-timeout": "60",
    "prompt-timeout": "20",
    "pop-port": "110",
    "user": "daemon",
    "notify": "inotify",
}


@dataclass
class Config:
    # server side
    spool_dir: Path = Path(OPTION_DEFAULTS["spool-dir"])
    port: int = int(OPTION_DEFAULTS["port"])
    interfaces: list[str] = field(default_factory=list)
    remote_clients: bool = False
    size: int = 0
    domain: str = ""
    idle_timeout: float = float(OPTION_DEFAULTS["idle-timeout"])
    prompt_timeout: float = float(OPTION_DEFAULTS["prompt-timeout"])
    no_smtp: bool = False
    dont_serve: bool = False
    anonymous: frozenset[str] = frozenset()  # vrfy, server, content, client
    server_smtp_config: frozenset[str] = frozenset()
    max_connections: int = 0
    filters: list[str] = field(default_factory=list)
    filter_timeout: float = float(OPTION_DEFAULTS["filter-timeout"])
    address_verifier: str | None = None
    dnsbl: str | None = None
    delivery_dir: Path | None = None
    # client side
    forward_to: str | None = None
    forward: bool = False
    forward_on_disconnect: bool = False
    poll: float | None = None
    immediate: bool = False
    client_smtp_config: frozenset[str] = frozenset()
    client_filters: list[str] = field(default_factory=list)
    client_interface: str | None = None
    connection_timeout: float = float(OPTION_DEFAULTS["connection-timeout"])
    response_timeout: float = float(OPTION_DEFAULTS["response-timeout"])
    forward_to_some: bool = False
    backoff: bool = False  # --retry given: temporary failures are retried (else final, as upstream)
    retry_schedule: tuple[int, ...] = DEFAULT_RETRY
    give_up_age: int = DEFAULT_GIVE_UP
    workers_forward: int = 1
    workers_smtp: int = 1
    # process
    name: str = ""  # the configuration's name ("in" for --in-...; "" when unnamed): the log's unit
    warnings: list[str] = field(default_factory=list)  # logged at start-up (unknown smtp-config items)
    no_daemon: bool = False
    pid_file: str | None = None
    user: str = OPTION_DEFAULTS["user"]
    run_dir: Path | None = None
    as_client: bool = False
    single_process: bool = False
    metrics: str | None = None
    admin_port: int | None = None
    pop: bool = False
    pop_port: int = int(OPTION_DEFAULTS["pop-port"])
    pop_by_name: bool = False
    pop_no_delete: bool = False
    # authentication and TLS
    server_auth: str | None = None
    client_auth: str | None = None
    pop_auth: str | None = None
    server_auth_config: str | None = None
    client_auth_config: str | None = None
    server_tls: bool = False
    server_tls_connection: bool = False
    server_tls_required: bool = False
    server_tls_certificates: list[str] = field(default_factory=list)
    server_tls_verify: str | None = None
    client_tls: bool = False
    client_tls_connection: bool = False
    client_tls_required: bool = False
    client_tls_certificates: list[str] = field(default_factory=list)
    client_tls_server_name: str | None = None
    client_tls_verify: str | None = None
    client_tls_verify_name: str | None = None
    tls_config: str | None = None
    admin_terminate: bool = False
    notify_polling: bool = False
    _frozen: bool = field(default=False, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value: object) -> None:
        if self.__dict__.get("_frozen", False):
            raise FrozenInstanceError(f"cannot assign to field {name!r}: a built Config is immutable")
        object.__setattr__(self, name, value)

    def frozen(self) -> Config:
        """Make this configuration immutable (:func:`from_values` returns it so); returns it."""
        object.__setattr__(self, "_frozen", True)
        return self

    def replaced(self, **changes: object) -> Config:
        """A frozen copy with ``changes`` (``dataclasses.replace``)."""
        return replace(self, **changes).frozen()  # type: ignore[arg-type]

    # Values derived from the fields, each computed here only (the policy layer reads these).

    @property
    def filter_time_limit(self) -> float:
        """Seconds a filter, a verifier or a ``net:``/``spam:`` peer gets: ``--filter-timeout``,
        where 0 means the default."""
        return float(self.filter_timeout or OPTION_DEFAULTS["filter-timeout"])

    @property
    def mailbox_base(self) -> Path:
        """The absolute directory ``deliver:`` delivers under: ``--delivery-dir``, else the spool
        directory (absolute even when the Config was built without the front end's ``prepare``)."""
        return (self.delivery_dir if self.delivery_dir is not None else self.spool_dir).absolute()


#: The largest ``--size`` that is a limit; E-MailRelay 2.6b takes a larger one as none (a 32-bit number).
MAX_SIZE = 0xFFFFFFFF


def _int(values: Values, name: str, default: int, *, minimum: int = 0) -> int:
    raw = values.get(name)
    if raw is None or raw is False:
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise UsageError(f"--{name}: invalid number '{raw}'") from None
    if value < minimum:
        raise UsageError(f"--{name}: must be at least {minimum}")
    return value


def _int_or_default(values: Values, name: str, *, minimum: int = 0) -> int:
    """An option's number, or its default from :data:`OPTION_DEFAULTS`."""
    return _int(values, name, int(OPTION_DEFAULTS[name]), minimum=minimum)


def _str(values: Values, name: str) -> str | None:
    raw = values.get(name)
    if raw is None or raw is False or raw is True:
        return None
    if isinstance(raw, list):
        return raw[-1] if raw else None
    return raw


def _list(values: Values, name: str, *, strip: bool = True) -> list[str]:
    """The comma-separated items of an option's values; ``strip=False`` keeps their spaces (a filter
    program's path, as E-MailRelay 2.6b takes it)."""
    raw = values.get(name)
    if raw is None or raw is False or raw is True:
        return []
    items = raw if isinstance(raw, list) else [raw]
    out: list[str] = []
    for item in items:
        out.extend(part.strip() if strip else part for part in item.split(",") if part.strip())
    return out


def _raw_list(values: Values, name: str) -> list[str]:
    raw = values.get(name)
    if raw is None or isinstance(raw, bool):
        return []
    return list(raw) if isinstance(raw, list) else [raw]


def _is_ip_address(text: str) -> bool:
    """An IP address (an IPv6 one with an optional ``%scope``), or one with a port, as
    ``--client-interface`` takes them."""
    for candidate in (text, text.rpartition(":")[0], text.rpartition(".")[0]):
        try:
            ipaddress.ip_address(candidate.partition("%")[0])
        except ValueError:
            continue
        return True
    return False


def _keywords(values: Values, name: str, allowed: set[str]) -> frozenset[str]:
    """The option's comma-separated keywords (any case, ``+x`` = ``x``); an unknown one is a usage error."""
    words = [w.removeprefix("+").lower() for w in _list(values, name)]
    for w in words:
        if w not in allowed:
            raise UsageError(f"--{name}: unknown keyword '{w}'")
    return frozenset(words)


def _smtp_config(values: Values, name: str, features: dict[str, bool], warnings: list[str]) -> frozenset[str]:
    """An ``--x-smtp-config`` list read as E-MailRelay 2.6b reads it: for each feature it takes the
    first ``x``, else ``+x``, else ``with-x`` (on), else the first ``-x``, ``nox``, ``without-x``
    (off), else the feature's default; names are case-sensitive and items are not trimmed.  Every
    item left over (unknown, a repeat, an "off" beaten by an "on", an empty one) is warned as typed:
    ``unknown smtp-config item [x]``.  The result holds ``x`` for each feature on and ``nox`` for
    each one off, so a caller can ask either way."""
    raw = _raw_list(values, name)
    items = ",".join(raw).split(",") if any(raw) else []  # (repeated options are joined, as upstream)
    result: set[str] = set()
    for feature, default in features.items():
        state = default
        for forms, on in ((("", "+", "with-"), True), (("-", "no", "without-"), False)):
            found = next((f + feature for f in forms if f + feature in items), None)
            if found is not None:
                items.remove(found)  # (the first one only: a repeat is left over)
                state = on
                break
        result.add(feature if state else "no" + feature)
    warnings.extend(f"unknown smtp-config item [{item}]" for item in items)
    return frozenset(result)


#: E-MailRelay 2.6b's --server-smtp-config features and their defaults.  Domains are always stored
#: as A-labels, whatever ``alabels`` says (upstream's behaviour); 8BITMIME is always offered.
SERVER_SMTP_FEATURES = {
    "pipelining": True,
    "chunking": False,
    "smtputf8": False,
    "smtputf8strict": False,
    "strictparsing": True,
    "alabels": False,
}
#: E-MailRelay 2.6b's --client-smtp-config features (all off by default); it has no ``chunking``
#: item: BINARYMIME content goes by BDAT whenever the next hop offers CHUNKING and BINARYMIME.
CLIENT_SMTP_FEATURES = {
    "pipelining": False,
    "smtputf8strict": False,
    "eightbitstrict": False,
    "binarymimestrict": False,
}
ANONYMOUS_SCOPES = {"vrfy", "server", "content", "client"}


def default_domain() -> str:
    name = socket.gethostname()
    try:
        fqdn = socket.getfqdn(name)
    except OSError:
        fqdn = name
    if not fqdn or (fqdn.startswith("localhost") and name):
        return name or "localhost"  # /etc/hosts maps the host name to localhost: keep the name
    return fqdn


def from_values(values: Values, *, name: str = "") -> Config:
    """Build a Config from one configuration's option values (after shorthand expansion); ``name``
    is the configuration's name (the log's unit).  The result is immutable (:meth:`Config.replaced`
    makes a changed copy)."""
    c = Config(name=name)
    if spool := _str(values, "spool-dir"):
        c.spool_dir = Path(spool)
    c.port = _int_or_default(values, "port")
    c.interfaces = _list(values, "interface")
    c.remote_clients = bool(values.get("remote-clients"))
    c.size = _int(values, "size", 0)
    if c.size > MAX_SIZE:  # E-MailRelay 2.6b reads a --size beyond 32 bits as no limit (no SIZE in EHLO)
        c.size = 0
    c.domain = _str(values, "domain") or default_domain()
    c.idle_timeout = _int_or_default(values, "idle-timeout")
    c.prompt_timeout = _int_or_default(values, "prompt-timeout")
    c.no_smtp = bool(values.get("no-smtp"))
    c.dont_serve = bool(values.get("dont-serve"))
    anonymous = values.get("anonymous")
    if anonymous is True or anonymous == "":  # --anonymous and --anonymous= (E-MailRelay 2.6b: every scope)
        c.anonymous = frozenset(ANONYMOUS_SCOPES)
    elif anonymous:
        c.anonymous = _keywords(values, "anonymous", ANONYMOUS_SCOPES)
    c.client_smtp_config = _smtp_config(values, "client-smtp-config", CLIENT_SMTP_FEATURES, c.warnings)
    c.server_smtp_config = _smtp_config(values, "server-smtp-config", SERVER_SMTP_FEATURES, c.warnings)
    c.max_connections = _int(values, "max-connections", 0)
    scanner = _str(values, "scanner")  # the seed guide's option: a net: filter before the others
    c.filters = ([f"net:{scanner}"] if scanner else []) + _list(values, "filter", strip=False)
    c.client_filters = _list(values, "client-filter", strip=False)
    c.filter_timeout = _int_or_default(values, "filter-timeout")
    c.address_verifier = _str(values, "address-verifier") or _str(values, "verifier")  # the seed's name
    c.dnsbl = _str(values, "dnsbl")
    if delivery := _str(values, "delivery-dir"):
        c.delivery_dir = Path(delivery)
    c.forward_to = _str(values, "forward-to")
    c.forward = bool(values.get("forward"))
    c.forward_on_disconnect = bool(values.get("forward-on-disconnect"))
    if values.get("poll") not in (None, False):
        c.poll = float(_int(values, "poll", 0))
    c.immediate = bool(values.get("immediate"))
    c.client_interface = _str(values, "client-interface")
    if c.client_interface and not _is_ip_address(c.client_interface):
        # as E-MailRelay 2.6b (observed): an interface name or a host name is refused at start-up
        raise UsageError(f"address error: invalid network address: {c.client_interface}: 0")
    c.connection_timeout = _int_or_default(values, "connection-timeout", minimum=1)
    c.response_timeout = _int_or_default(values, "response-timeout", minimum=1)
    c.forward_to_some = bool(values.get("forward-to-some"))
    # Back-off is ours and off by default: forwarding failures are final, as E-MailRelay 2.6b's
    # are.  Giving --retry (the delays, eg. 60,300,900,3600,14400) turns it on.
    if retry := _list(values, "retry"):
        c.backoff = True
        try:
            c.retry_schedule = tuple(int(x) for x in retry)
        except ValueError:
            raise UsageError("--retry: expected comma-separated seconds, eg. 60,300,900") from None
        if not c.retry_schedule or min(c.retry_schedule) < 0:
            raise UsageError("--retry: expected comma-separated non-negative seconds")
    if values.get("give-up") not in (None, False) and not c.backoff:
        raise UsageError("--give-up needs --retry: without back-off a failure is final at once")
    c.give_up_age = _int(values, "give-up", DEFAULT_GIVE_UP)
    for item in _list(values, "workers"):
        role, _, number = item.partition("=")
        try:
            count = int(number)
        except ValueError:
            raise UsageError(f"--workers: expected role=number, got '{item}'") from None
        if role not in topology.BY_NAME:
            raise UsageError(f"--workers: unknown role '{role}'")
        low, high = topology.SCALABLE.get(role, (1, 1))
        if role == "forward" and low <= count <= high:
            c.workers_forward = count
        elif role == "smtp" and low <= count <= high:
            c.workers_smtp = count  # (other roles run one process: their number is ignored)
    c.no_daemon = bool(values.get("no-daemon"))
    c.pid_file = _str(values, "pid-file")
    given_user = _str(values, "user")
    c.user = OPTION_DEFAULTS["user"] if given_user is None else given_user  # ("": upstream's "no such user")
    if run_dir := _str(values, "run-dir"):
        c.run_dir = Path(run_dir)
    c.as_client = bool(values.get("as-client"))
    c.single_process = bool(values.get("single-process"))
    c.metrics = _str(values, "metrics")
    if values.get("admin") not in (None, False):
        c.admin_port = _int(values, "admin", 0)
    c.admin_terminate = bool(values.get("admin-terminate"))
    c.pop = bool(values.get("pop"))
    c.pop_port = _int_or_default(values, "pop-port")
    c.pop_by_name = bool(values.get("pop-by-name"))
    c.pop_no_delete = bool(values.get("pop-no-delete"))
    for name in (
        "server-auth",
        "client-auth",
        "pop-auth",
        "server-auth-config",
        "client-auth-config",
        "server-tls-verify",
        "client-tls-server-name",
        "client-tls-verify",
        "client-tls-verify-name",
        "tls-config",
    ):
        setattr(c, name.replace("-", "_"), _str(values, name))
    for name in (
        "server-tls",
        "server-tls-connection",
        "server-tls-required",
        "client-tls",
        "client-tls-connection",
        "client-tls-required",
    ):
        setattr(c, name.replace("-", "_"), bool(values.get(name)))
    c.server_tls_certificates = _raw_list(values, "server-tls-certificate")
    c.client_tls_certificates = _raw_list(values, "client-tls-certificate")
    c.notify_polling = values.get("notify") == "poll"
    # (parsing refuses both in upstream's words first)
    if c.forward_to is None and (c.forward or c.forward_on_disconnect):
        raise UsageError("forwarding needs --forward-to (or --as-client / --as-proxy)")
    return c.frozen()
