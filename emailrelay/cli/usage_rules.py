"""E-MailRelay 2.6b's checks of options that cannot be used as given, in its order and words.

What it is for: after the command line and the config file are read, one
configuration's options (as written: ``--as-client`` not yet expanded) are
checked against upstream's rules — ``--pop`` without ``--pop-auth``,
``--port`` with ``--as-client``, ``--verbose`` without ``--log`` and the
others that E-MailRelay 2.6b refuses (observed by running it, issue 17).

Guarantees: :func:`check` raises :class:`~emailrelay.errors.OptionUsageError`
with the first broken rule's text, upstream's word for word, in upstream's
order (only one is reported, as upstream reports one); it accepts whatever
upstream accepts as far as these rules go. One rule is left out on purpose
(docs/decisions.md): upstream refuses ``--poll 0`` (``invalid --poll period:
try --forward-on-disconnect``), ours forwards as soon as a message is
committed with it, as our README shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from emailrelay.errors import OptionUsageError

Value = str | bool | list[str]
Values = Mapping[str, Value]

#: ``--syslog=<facility>`` names E-MailRelay 2.6b takes (lower case only).
SYSLOG_FACILITIES: tuple[str, ...] = ("user", "daemon", "mail", *(f"local{n}" for n in range(8)))

#: The options each "... options require ..." rule counts.
POP_OPTIONS = ("pop-port", "pop-by-name", "pop-no-delete", "pop-auth")
SERVER_TLS_OPTIONS = ("server-tls-certificate", "server-tls-verify")
CLIENT_TLS_OPTIONS = ("client-tls-certificate", "client-tls-verify", "client-tls-required")
NOT_WITH_AS_CLIENT = ("filter", "port", "server-auth", "pop", "admin")
NOT_WITH_NO_SMTP = ("filter", "port", "server-auth")


def _has(values: Values, *names: str) -> bool:
    """Whether any of ``names`` is given (a flag set, a value, a non-empty list)."""
    return any(values.get(name) not in (None, False, []) for name in names)


def _count(values: Values, name: str) -> int:
    value = values.get(name)
    return len(value) if isinstance(value, list) else int(value not in (None, False))


def _count_files(values: Values, name: str) -> int:
    """The files a certificate option names, as upstream counts them: each value may be
    ``<key-file>,<certificate-file>``, and an empty field counts too."""
    value = values.get(name)
    values_given = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    return sum(text.count(",") + 1 for text in values_given)


def _forwarding_address(values: Values) -> str:
    for name in ("forward-to", "as-client", "as-proxy"):
        value = values.get(name)
        if isinstance(value, str):
            return value
    return ""


def _syslog_is_bad(values: Values) -> bool:
    value = values.get("syslog")
    return isinstance(value, str) and value not in SYSLOG_FACILITIES


Rule = Callable[[Values], bool]


def _without(names: tuple[str, ...], needed: tuple[str, ...]) -> Rule:
    """Broken when any of ``names`` is given and none of ``needed``."""
    return lambda v: _has(v, *names) and not _has(v, *needed)


def _with(names: tuple[str, ...], others: tuple[str, ...]) -> Rule:
    """Broken when any of ``names`` is given with any of ``others``."""
    return lambda v: _has(v, *names) and _has(v, *others)


def _rules() -> list[tuple[Rule, str]]:
    """(broken when true, upstream's text), in the order E-MailRelay 2.6b checks them."""
    forward_to = ("forward-to", "as-client", "as-proxy")
    as_client = ("as-client", "dont-serve")
    server_tls = ("server-tls", "server-tls-connection")
    client_tls = ("client-tls", "client-tls-connection")
    return [
        (_syslog_is_bad, "invalid --syslog facility: use 'mail', 'user', 'daemon', or 'local0' to 'local7'"),
        (_without(("pop",), ("pop-auth",)), "the --pop option requires --pop-auth"),
        (lambda v: not _has(v, "pop") and _has(v, *POP_OPTIONS), "pop options require --pop"),
        (_without(("admin-terminate",), ("admin",)), "the --admin-terminate option requires --admin"),
        (_with(("forward-to",), ("as-client", "as-proxy")), "--forward-to cannot be used with --as-client or --as-proxy"),
        (_without(("server-auth-config",), ("server-auth",)), "the --server-auth-config option requires --server-auth"),
        *((_without((name,), forward_to), f"--{name} requires --forward-to")
          for name in ("forward", "forward-on-disconnect", "client-filter")),
        *((_with((name,), as_client), f"the --{name} option cannot be used with --as-client or --dont-serve")
          for name in NOT_WITH_AS_CLIENT),
        *((_with((name,), ("no-smtp",)), f"the --{name} option cannot be used with --no-smtp")
          for name in NOT_WITH_NO_SMTP),
        (_without(("client-auth-config",), ("client-auth",)), "the --client-auth-config option requires --client-auth"),
        (
            _without(("verbose",), ("log", "help", "as-client", "as-server", "as-proxy")),
            "the --verbose option must be used with --log, --help, --as-client, --as-server or --as-proxy",
        ),
        (
            _without(("debug",), ("log", "as-client", "as-server", "as-proxy")),
            "the --debug option requires --log, --as-client, --as-server or --as-proxy",
        ),
        (_with(("server-tls",), ("server-tls-connection",)),
         "the --server-tls and --server-tls-connection options cannot be used together"),
        (_with(("client-tls",), ("client-tls-connection",)),
         "the --client-tls and --client-tls-connection options cannot be used together"),
        (_without(SERVER_TLS_OPTIONS, server_tls),
         "the --server-tls options require either --server-tls or --server-tls-connection"),
        (_without(("server-tls",), ("server-tls-certificate",)),
         "the --server-tls option requires --server-tls-certificate"),
        (_without(("server-tls-connection",), ("server-tls-certificate",)),
         "the --server-tls-connection option requires --server-tls-certificate"),
        (_without(CLIENT_TLS_OPTIONS, client_tls),
         "the --client-tls- options require --client-tls or --client-tls-connection"),
        (_without(("client-tls-verify-name",), ("client-tls-verify",)),
         "the --client-tls-verify-name options requires --client-tls-verify"),
        (lambda v: _count_files(v, "server-tls-certificate") > 2,
         "the --server-tls-certificate option cannot be used more than twice"),
        (lambda v: _count_files(v, "client-tls-certificate") > 2,
         "the --client-tls-certificate option cannot be used more than twice"),
        (_without(("server-tls-required",), server_tls),
         "--server-tls-required requires --server-tls or --server-tls-connection"),
        (_without(("dnsbl",), ("remote-clients",)), "--dnsbl requires --remote-clients or -r"),
        (lambda v: _has(v, "client-interface") and _forwarding_address(v).startswith("/"),
         "the --client-interface option cannot be used with a unix-domain forwarding address"),
        (lambda v: v.get("domain") == "", "the --domain value must not be empty"),
    ]  # fmt: skip


RULES = _rules()


def check(values: Values) -> None:
    """Raise OptionUsageError for the first of upstream's rules that ``values`` breaks."""
    for broken, text in RULES:
        if broken(values):
            raise OptionUsageError(text)
