"""Import, while still root, what a process may import later (docs/decisions.md, privileges).

What it is for: a supervised role starts as root and becomes ``--user``.
The interpreter and the installation may be readable by root only (a venv
under /root), so a module first imported after the switch fails with
``No module named ...``.  Before it switches, each role calls
:func:`preload_role`: the modules its row of :mod:`emailrelay.topology`
names (what it imports lazily at run time), for the notify role watchdog's
polling observer only when it will poll (no inotify: decided here, as root,
by setting inotify up for it, :func:`emailrelay.services.notify.prepare`),
and, for the roles that handle
mail, what this configuration adds (:func:`config_modules`: TLS, secrets,
the policy package for filters and verifiers, dnspython's lazily loaded
parts for DNSBL and ``mx:``), plus the codecs the relay names.  A role
imports only that, not every module of the relay: each role is its own
interpreter, and every module it imports is memory of its own (issue 20).
``--single-process`` runs everything in one process and calls
:func:`preload_everything`.

Guarantees: idempotent; a missing optional package (uvloop, dnspython,
watchdog) is skipped, not an error; a module of the relay that fails to
import is an error here, as root, not later.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
from collections.abc import Iterable

from ..config import Config
from ..topology import Role

CODECS = ("ascii", "latin-1", "utf-8", "idna", "punycode")
DNS_TYPES = ("A", "AAAA", "MX", "TXT", "PTR", "CNAME")
SKIPPED = ("emailrelay.cli.", "emailrelay.services.metrics", "emailrelay.services.health")
WATCHDOG = ("watchdog.events", "watchdog.observers.polling")  # the notify role's polling observer
OPTIONAL = ("uvloop", *WATCHDOG, "sniffio")  # not installed: skipped
TLS = ("ssl", "_ssl", "emailrelay.auth.tls")
SECRETS = ("emailrelay.auth.secrets", "emailrelay.auth.pam", "ctypes.util", "emailrelay.protocol.sasl")
POLICY = "emailrelay.policy"  # the whole package: the filter and verifier kinds are imported by name
ALWAYS = ("json",)  # --log-format=json (log.py imports it at the first line logged)
DNS_FILTER = "mx:"  # a filter spec that queries DNS (policy/mx)


def config_modules(config: Config) -> list[str]:
    """What ``config`` makes a mail-handling role import at run time, beyond its row's list."""
    names: list[str] = []
    if (
        config.server_tls or config.server_tls_connection or config.client_tls
        or config.client_tls_connection or config.server_tls_certificates or config.client_tls_certificates
    ):  # fmt: skip
        names += TLS
    if config.server_auth or config.client_auth or config.pop_auth:
        names += SECRETS
    if config.filters or config.client_filters or config.address_verifier or config.dnsbl:
        names.append(POLICY)
    if config.immediate or config.forward_on_disconnect:
        names.append("emailrelay.services.forward")  # the smtp role forwards in-process
    return names


def uses_dns(config: Config) -> bool:
    specs = [spec.strip() for spec in [*config.filters, *config.client_filters]]
    return bool(config.dnsbl) or any(spec == DNS_FILTER[:-1] or spec.startswith(DNS_FILTER) for spec in specs)


def _will_poll(config: Config) -> bool:
    """Whether the spool watcher will poll (inotify is set up now, as root, and kept for it)."""
    from .notify import prepare

    return prepare(str(config.spool_dir), config.notify_polling)


def preload_role(role: Role, config: Config) -> None:
    """Everything ``role`` (with ``config``) may import after it becomes ``--user``."""
    names = [role.entry.partition(":")[0], *role.preload, *ALWAYS]
    if role.config_modules:
        names += config_modules(config)
    if role.watches_spool and _will_poll(config):
        names += WATCHDOG
    _import(names)
    if role.config_modules and uses_dns(config):
        with contextlib.suppress(ImportError):
            _preload_dns()
    _preload_codecs()


def preload_everything() -> None:
    """``--single-process``: every module of the relay (its tools and the metrics exporter aside),
    uvloop, the codecs and dnspython's lazily loaded parts."""
    import pkgutil

    import emailrelay

    for info in pkgutil.walk_packages(emailrelay.__path__, "emailrelay."):
        if not info.name.startswith(SKIPPED):
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)
    _import(("uvloop",))
    _preload_codecs()
    with contextlib.suppress(ImportError):
        _preload_dns()


def _import(names: Iterable[str]) -> None:
    for name in names:
        if name == POLICY:
            _import_package(POLICY)
        elif name in OPTIONAL:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        else:
            importlib.import_module(name)


def _import_package(name: str) -> None:
    import pkgutil

    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, f"{name}."):
        importlib.import_module(info.name)


def _preload_codecs() -> None:
    for codec in CODECS:
        codecs.lookup(codec)


def _preload_dns() -> None:
    """dnspython imports its rdata classes, its asyncio backend and sniffio (to tell which async
    library runs it) at the first query."""
    import dns.asyncbackend
    import dns.asyncresolver
    import dns.exception
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    import dns.resolver

    dns.asyncbackend.get_backend("asyncio")
    _import(("sniffio",))
    for name in DNS_TYPES:
        dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(name))
