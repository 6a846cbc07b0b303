"""A tiny authoritative DNS server for tests (UDP, 127.0.0.1, a free port).

What it is for: testing ``mx:`` against real DNS packets without the
network.  Built on dnspython's wire format code; answers from a dict:

    records = {
        "example.com": {"MX": [(10, "mx1.example.com")]},
        "mx1.example.com": {"A": ["127.0.0.2"]},
    }

Names it does not know get NXDOMAIN; a known name without the asked type
gets an empty answer (NODATA); names listed in ``silent`` get no answer at
all (a time-out for the client); with ``glue`` the A/AAAA records of MX
hosts are put in the additional section.  ``queries`` records (name, type).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(
        self,
        records: dict[str, dict[str, list[object]]],
        *,
        silent: set[str] | None = None,
        glue: bool = False,
        servfail: set[str] | None = None,
    ) -> None:
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.silent = {s.lower().rstrip(".") for s in (silent or set())}
        self.servfail = {s.lower().rstrip(".") for s in (servfail or set())}
        self.glue = glue
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"", ("127.0.0.1", self.port))
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            if self._stop:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            reply = self._answer(query)
            if reply is not None:
                self.sock.sendto(reply.to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        values = self.records[name].get(rdtype, [])
        if values:
            response.answer.append(self._rrset(name, rdtype, values))
        if self.glue and rdtype == "MX":
            for _, host in values:  # type: ignore[misc]
                host_key = str(host).lower().rstrip(".")
                for glue_type in ("A", "AAAA"):
                    glue_values = self.records.get(host_key, {}).get(glue_type)
                    if glue_values:
                        response.additional.append(self._rrset(host_key, glue_type, glue_values))
        return response

    @staticmethod
    def _rrset(name: str, rdtype: str, values: list[object]) -> dns.rrset.RRset:
        texts = []
        for v in values:
            if rdtype == "MX":
                pref, host = v  # type: ignore[misc]
                texts.append(f"{pref} {str(host).rstrip('.')}.")
            else:
                texts.append(str(v))
        return dns.rrset.from_text_list(name + ".", 60, dns.rdataclass.IN, rdtype, texts)


@contextlib.contextmanager
def dns_server(records: dict[str, dict[str, list[object]]], **kwargs: object) -> Iterator[DnsServer]:
    server = DnsServer(records, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
