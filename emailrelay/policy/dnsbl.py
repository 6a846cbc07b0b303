"""``--dnsbl``: block SMTP connections from addresses listed by DNSBL servers.

What it is for (reference guide, "Connection blocking"): before the SMTP
greeting, the client's address is looked up in every configured DNSBL zone at
once; when ``threshold`` zones list it the connection is dropped.

Configuration (comma-separated): the DNSBL zones, then optionally the
threshold (default 1), the timeout in milliseconds (default 5000; negative:
*fail closed*, block when no decision is reached in time; 0, as upstream: no
time at all, every client let in with the time-out warning) and the DNS server
as a transport address (default: the first nameserver of the system's
resolver configuration)::

    spam.example.com,block.example.com,1,500,1.1.1.1:53

The legacy order, reversed, is accepted too (recognised by a first field
that is a number or an address, not a domain name)::

    1.1.1.1:53,500,1,spam.example.com,block.example.com

Guarantees:
- loopback, unspecified, RFC 1918, link-local (v4 and v6) and unique-local
  (``fc00::/7``) addresses are never looked up (documentation ranges such as
  203.0.113.0/24 *are*, unlike :func:`ipaddress.IPv4Address.is_private`);
- queries run in parallel; the check returns as soon as the outcome is
  certain (threshold reached, or no longer reachable) and cancels the rest;
- an address counts as listed by a zone when the zone answers with an ``A``
  record in 127.0.0.0/8 other than 127.255.255.0/24 (the "query refused"
  codes some lists return); NXDOMAIN, an empty answer or a DNS error means
  not listed; no answer before the timeout means undecided;
- threshold 0: every zone is consulted and the result logged, nothing is
  ever blocked;
- on timeout the connection is allowed, unless the timeout was negative.

Log lines (through :func:`emailrelay.log.get`), E-MailRelay 2.6b's: once the
outcome is known, a verbose line per zone in the configuration's order
(``dnsbl: address [a] denied by [zone]: 127.0.0.2``, ``... allowed by
[zone]``, ``... not checked by [zone]`` for one that had not answered), then
a warning when blocked (``dnsbl: client address [a] blocked by [z1] [z2]``)
or when zones did not answer in time (``dnsbl: client address [a] blocked:
timeout: no answer from [z1] [z2]`` with a negative timeout, else ``dnsbl:
client address [a]: timeout: no answer from [...]``); nothing more when the
client is let in.  Ours besides: a query that fails is a warning as it
comes (``query to [zone] failed: ...``), and a "query refused" code
(127.255.255.0/24) does not list (upstream blocks on it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .. import log as logmod

DEFAULT_THRESHOLD = 1
DEFAULT_TIMEOUT_MS = 5000
DNS_PORT = 53

_INT = re.compile(r"^[+-]?[0-9]+$")
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")

_NEVER_CHECKED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # unspecified / "this network"
        "127.0.0.0/8",  # loopback
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "169.254.0.0/16",  # link-local
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fc00::/7",  # unique local (RFC 4193)
        "fe80::/10",  # link-local
    )
)
_LISTED = ipaddress.ip_network("127.0.0.0/8")
_LIST_ERROR = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True)
class DnsblConfig:
    servers: tuple[str, ...]  # DNSBL zones, without a trailing dot
    threshold: int = DEFAULT_THRESHOLD
    timeout_ms: int = DEFAULT_TIMEOUT_MS  # as given: negative means fail closed
    dns_server: tuple[str, int] | None = None  # None: the system's first nameserver
    text: str = ""

    @property
    def timeout(self) -> float:
        """The decision timeout in seconds (0 or more)."""
        return abs(self.timeout_ms) / 1000.0

    @property
    def fail_closed(self) -> bool:
        return self.timeout_ms < 0


@dataclass
class DnsblResult:
    blocked: bool
    listed_by: list[str] = field(default_factory=list)
    timed_out: bool = False
    reason: str = ""
    checked: bool = True  # False: a local address, not looked up
    errors: dict[str, str] = field(default_factory=dict)  # zone -> DNS error text


# ---- configuration -------------------------------------------------------------------


def _is_int(text: str) -> bool:
    return bool(_INT.match(text))


def parse_transport_address(text: str, default_port: int = DNS_PORT) -> tuple[str, int] | None:
    """``1.2.3.4``, ``1.2.3.4:53``, ``::1``, ``::1.53`` (upstream) or ``[::1]:53``; None if not an address."""
    host, port_text = text, ""
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
        if rest and not port_text:
            return None
    elif text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text.split("%")[0])
        except ValueError:
            host, _, port_text = text.rpartition(".")
    elif ":" in text:
        host, _, port_text = text.partition(":")
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if text.startswith("[") and ip.version != 6:
        return None
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        return None
    return str(ip) if "%" not in host else host, int(port_text)


def _is_domain(text: str) -> bool:
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or _is_int(name):
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return False
    return all(_LABEL.match(label) for label in labels)


def parse_config(text: str) -> DnsblConfig:
    """Parse a ``--dnsbl`` value; ValueError with a one-line reason when it is not valid."""
    original = text
    fields = [f.strip() for f in text.split(",")]
    if not text.strip():
        raise ValueError("invalid --dnsbl configuration: it is empty")
    if any(not f for f in fields):
        raise ValueError(f"invalid --dnsbl configuration [{original}]: empty field")
    if not _is_domain(fields[0]):
        # the legacy order: dns-server,timeout,threshold,servers... (all of them reversed)
        fields.reverse()
        if not _is_domain(fields[0]):
            raise ValueError(
                f"invalid --dnsbl configuration [{original}]: expected a list of DNSBL server "
                "domains first, eg. spam.example.com,block.example.com,1,500,1.1.1.1:53"
            )
        legacy = True
    else:
        legacy = False
    servers: list[str] = []
    while fields and _is_domain(fields[0]):
        servers.append(fields.pop(0).rstrip(".").lower())
    if legacy:
        servers.reverse()
    threshold = DEFAULT_THRESHOLD
    timeout_ms = DEFAULT_TIMEOUT_MS
    dns_server: tuple[str, int] | None = None
    if fields:
        f = fields.pop(0)
        if not _is_int(f) or int(f) < 0:
            raise ValueError(
                f"invalid --dnsbl threshold [{f}]: expected a number of servers, 0 or more"
                + (" (after the list of DNSBL servers)" if not _is_int(f) else "")
            )
        threshold = int(f)
    if fields:
        f = fields.pop(0)
        if not _is_int(f):  # (0, as upstream: no time to answer, every client let in with a warning)
            raise ValueError(
                f"invalid --dnsbl timeout [{f}]: expected a number of milliseconds "
                "(negative to block on timeout)"
            )
        timeout_ms = int(f)
    if fields:
        f = fields.pop(0)
        dns_server = parse_transport_address(f)
        if dns_server is None:
            raise ValueError(
                f"invalid --dnsbl DNS server [{f}]: expected an IP address with an optional port, "
                "eg. 1.1.1.1:53 or ::1.53"
            )
    if fields:
        raise ValueError(
            f"invalid --dnsbl configuration [{original}]: unexpected field [{fields[0]}] "
            "after servers, threshold, timeout and DNS server"
        )
    return DnsblConfig(tuple(servers), threshold, timeout_ms, dns_server, original)


def _format_address(host: str, port: int) -> str:
    return f"{host}.{port}" if ":" in host else f"{host}:{port}"


def describe(config: DnsblConfig) -> str:
    """One line for the admin ``dnsbl`` command and the start-up log."""
    dns = _format_address(*config.dns_server) if config.dns_server else "system default"
    policy = "block" if config.fail_closed else "allow"
    threshold = f"threshold {config.threshold}" + (" (log only)" if config.threshold == 0 else "")
    return (
        f"dnsbl: servers [{','.join(config.servers)}] {threshold} "
        f"timeout {abs(config.timeout_ms)}ms ({policy} on timeout) dns-server {dns}"
    )


# ---- names -------------------------------------------------------------------------------


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(ip.strip("[]").split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def reversed_name(ip: str) -> str:
    """``203.0.113.7`` -> ``7.113.0.203``; IPv6 in reversed nibble form (32 labels)."""
    addr = _address(ip)
    if addr.version == 4:
        return ".".join(reversed(str(addr).split(".")))
    return ".".join(reversed(addr.exploded.replace(":", "")))


def query_name(ip: str, zone: str) -> str:
    return f"{reversed_name(ip)}.{zone.rstrip('.')}"


def never_checked(ip: str) -> bool:
    """Loopback, unspecified, private (RFC 1918 / ULA) and link-local: never looked up.

    Anything that is not an IP address (a unix-domain peer) is local too."""
    try:
        addr = _address(ip)
    except ValueError:
        return True
    return any(addr in net for net in _NEVER_CHECKED if net.version == addr.version)


# ---- the check ----------------------------------------------------------------------------


@dataclass
class _Answer:
    zone: str
    status: str  # "listed" | "clear" | "error" | "timeout"
    detail: str = ""


class DnsblChecker:
    """Checks client addresses against the configured zones; one per SMTP service."""

    def __init__(self, config: DnsblConfig | str, *, log: logmod.Log | None = None) -> None:
        self.log = log or logmod.get()
        self.config = config if isinstance(config, DnsblConfig) else parse_config(config)
        self._resolver: Any = None

    def configure(self, config: DnsblConfig | str) -> None:
        """Replace the configuration (for an admin command); checks in flight keep the old one."""
        self.config = config if isinstance(config, DnsblConfig) else parse_config(config)
        self._resolver = None

    def describe(self) -> str:
        return describe(self.config)

    def _make_resolver(self) -> Any:
        import dns.asyncresolver
        import dns.resolver

        cfg = self.config
        resolver = dns.asyncresolver.Resolver(configure=False)
        if cfg.dns_server is not None:
            host, port = cfg.dns_server
        else:
            host, port = "127.0.0.1", DNS_PORT
            try:
                system = dns.resolver.Resolver()
                if system.nameservers:
                    host = str(system.nameservers[0])
                    port = int(getattr(system, "port", DNS_PORT))
            except dns.resolver.NoResolverConfiguration:
                pass
        resolver.nameservers = [host]
        resolver.port = port
        # a few tries within the decision time; the overall deadline is ours, a bit sooner
        resolver.timeout = min(2.0, max(0.2, cfg.timeout / 3))
        resolver.lifetime = cfg.timeout + 1.0
        resolver.cache = None
        return resolver

    @property
    def resolver(self) -> Any:
        if self._resolver is None:
            self._resolver = self._make_resolver()
        return self._resolver

    async def _query(self, resolver: Any, ip: str, zone: str) -> _Answer:
        import dns.exception
        import dns.resolver

        name = query_name(ip, zone)
        try:
            answer = await resolver.resolve(name, "A", search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return _Answer(zone, "clear")
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            return _Answer(zone, "timeout")
        except dns.resolver.NoNameservers as exc:
            return _Answer(zone, "error", _short(exc))
        except dns.exception.DNSException as exc:
            return _Answer(zone, "error", _short(exc))
        except OSError as exc:
            return _Answer(zone, "error", exc.strerror or str(exc))
        addresses = []
        errors = []
        for rdata in answer.rrset or []:
            try:
                a = ipaddress.IPv4Address(rdata.address)
            except (AttributeError, ValueError):
                continue
            if a in _LIST_ERROR:
                errors.append(str(a))
            elif a in _LISTED:
                addresses.append(str(a))
        if addresses:
            return _Answer(zone, "listed", " ".join(addresses))
        if errors:
            return _Answer(zone, "error", f"error code {' '.join(errors)}")
        return _Answer(zone, "clear")

    async def check(self, ip: str) -> DnsblResult:
        """Is ``ip`` blocked?  Returns within the configured timeout (plus scheduling)."""
        cfg = self.config
        log = self.log
        if never_checked(ip):
            log.verbose(f"dnsbl: not checking local address [{ip}]", ip)
            return DnsblResult(False, reason="local address: not checked", checked=False)
        addr = str(_address(ip))
        loop = asyncio.get_running_loop()
        resolver = self.resolver
        deadline = loop.time() + cfg.timeout
        pending: set[asyncio.Task[_Answer]] = {
            loop.create_task(self._query(resolver, addr, zone)) for zone in cfg.servers
        }
        listed: list[str] = []
        errors: dict[str, str] = {}
        answered: dict[str, _Answer] = {}  # zones that answered (listed, clear or an error)
        undecided = 0  # zones whose queries timed out inside the resolver
        threshold = cfg.threshold
        timed_out = False
        try:
            while True:
                if threshold > 0 and len(listed) >= threshold:
                    break
                if threshold > 0 and len(listed) + len(pending) + undecided < threshold:
                    break  # can no longer be blocked
                if not pending:
                    timed_out = undecided > 0
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    timed_out = True
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    timed_out = True
                    break
                for task in done:
                    answer = task.result()
                    self._warn_failure(addr, answer)
                    if answer.status != "timeout":
                        answered[answer.zone] = answer
                    if answer.status == "listed":
                        listed.append(answer.zone)
                    elif answer.status == "error":
                        errors[answer.zone] = answer.detail
                    elif answer.status == "timeout":
                        undecided += 1
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        listed.sort(key=cfg.servers.index)
        self._log_answers(addr, answered)
        silent = [zone for zone in cfg.servers if zone not in answered]
        return self._outcome(addr, listed, timed_out, errors, silent)

    def _outcome(
        self, ip: str, listed: list[str], timed_out: bool, errors: dict[str, str], silent: list[str]
    ) -> DnsblResult:
        """The decision, with E-MailRelay 2.6b's warning when it blocks or a zone was too late."""
        cfg = self.config
        prefix = f"dnsbl: client address [{ip}]"
        if cfg.threshold > 0 and len(listed) >= cfg.threshold:
            self.log.warning(f"{prefix} blocked by {_bracketed(listed)}", ip)
            return DnsblResult(True, listed, False, f"listed by {' '.join(listed)}", errors=errors)
        if timed_out and cfg.threshold > 0 and cfg.fail_closed:
            self.log.warning(f"{prefix} blocked: timeout: no answer from {_bracketed(silent)}", ip)
            return DnsblResult(True, listed, True, "timeout (fail closed)", errors=errors)
        if timed_out:
            self.log.warning(f"{prefix}: timeout: no answer from {_bracketed(silent)}", ip)
        names = " ".join(listed)
        if cfg.threshold == 0:
            what = f"listed by {names}" if listed else "not listed"
            return DnsblResult(False, listed, timed_out, f"threshold zero: {what}", errors=errors)
        if timed_out:
            return DnsblResult(False, listed, True, "timeout (fail open)", errors=errors)
        if listed:
            return DnsblResult(False, listed, False, f"below threshold: listed by {names}", errors=errors)
        return DnsblResult(False, [], False, "not listed", errors=errors)

    def _log_answers(self, ip: str, answered: dict[str, _Answer]) -> None:
        """E-MailRelay 2.6b's verbose line per zone, in the configuration's order, once decided; a
        failed query counts as not listed (``allowed by``), as upstream's."""
        log = self.log
        if not log.verbose_on:
            return
        for zone in self.config.servers:
            answer = answered.get(zone)
            if answer is None:
                log.verbose(f"dnsbl: address [{ip}] not checked by [{zone}]", ip)
            elif answer.status == "listed":
                log.verbose(f"dnsbl: address [{ip}] denied by [{zone}]: {answer.detail}", ip)
            else:
                log.verbose(f"dnsbl: address [{ip}] allowed by [{zone}]", ip)

    def _warn_failure(self, ip: str, answer: _Answer) -> None:
        """Ours: a query that failed (SERVFAIL, a "query refused" code) is a warning as it comes;
        upstream counts it as not listed without a word."""
        if answer.status == "error":
            self.log.warning(f"dnsbl: address [{ip}]: query to [{answer.zone}] failed: {answer.detail}", ip)


def _bracketed(zones: list[str]) -> str:
    """``[a] [b]``: E-MailRelay 2.6b's list of zones in its warnings."""
    return " ".join(f"[{zone}]" for zone in zones)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
