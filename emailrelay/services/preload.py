"""Import, while still root, everything a role may import later (docs/decisions.md, privileges).

What it is for: a supervised role starts as root and becomes ``--user``.
The interpreter and the installation may be readable by root only (a venv
under /root), so a module first imported after the switch fails with
``No module named ...``.  :func:`preload` runs in every role before it
switches: it imports the relay's own modules (the tools under ``cli`` and
the metrics exporter, which only its role needs, aside), the codecs the
relay names, and what dnspython loads on its first query.

Guarantees: idempotent and cheap after the first call; a missing optional
package (uvloop, dnspython) is skipped, not an error.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import pkgutil

CODECS = ("ascii", "latin-1", "utf-8", "idna", "punycode")
DNS_TYPES = ("A", "AAAA", "MX", "TXT", "PTR", "CNAME")
SKIPPED = ("emailrelay.cli.", "emailrelay.services.metrics", "emailrelay.services.health")


def preload(extra: tuple[str, ...] = ()) -> None:
    import emailrelay

    for info in pkgutil.walk_packages(emailrelay.__path__, "emailrelay."):
        if not info.name.startswith(SKIPPED):
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)
    for name in extra:
        importlib.import_module(name)
    for codec in CODECS:
        codecs.lookup(codec)
    with contextlib.suppress(ImportError):
        _preload_dns()


def _preload_dns() -> None:
    """dnspython imports its rdata classes and its asyncio backend at the first query."""
    import dns.asyncbackend
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    dns.asyncbackend.get_backend("asyncio")
    for name in DNS_TYPES:
        dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(name))
