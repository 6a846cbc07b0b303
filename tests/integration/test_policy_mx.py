"""mx: against a DNS server started by the test (tests/support/dns_server.py)."""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("dns", reason="mx: needs dnspython")

from emailrelay.policy.spec import parse_filters
from emailrelay.policy.verdicts import FilterOutcome
from emailrelay.spool.store import SpoolStore
from tests.support.dns_server import dns_server
from tests.support.policy import (
    client_chain,
    content,
    envelope,
    logs_fixture,  # noqa: F401 - fixture
    server_chain,
    store_fixture,  # noqa: F401 - fixture
)

RECORDS: dict[str, dict[str, list[object]]] = {
    "example.com": {"MX": [(20, "mx2.example.com"), (10, "mx1.example.com")]},
    "mx1.example.com": {"A": ["127.0.0.11"]},
    "mx2.example.com": {"A": ["127.0.0.12"]},
    "v6.example": {"MX": [(5, "mx.v6.example")]},
    "mx.v6.example": {"AAAA": ["::1"]},
    "nomx.example": {"A": ["127.0.0.13"]},
    "deflt.example": {"MX": [(1, "zero.example")]},
    "zero.example": {"A": ["0.0.0.0"]},
    "null.example": {"MX": [(0, ".")]},
    "broken.example": {"MX": [(1, "missing.example")]},
}


async def _run_mx(store: SpoolStore, forward_to: str, spec: str, **options: object):  # type: ignore[no-untyped-def]
    mid = store.store_message(envelope(forward_to=forward_to, forward_to_address="stale:1"), content())
    claim = store.claim(mid)
    assert claim is not None
    inode = os.stat(claim.envelope_path).st_ino
    chain = client_chain(store, spec, **options)
    result = await chain.filter(mid, str(claim.content_path), str(claim.envelope_path))
    env = claim.envelope(reread=True)
    assert os.stat(claim.envelope_path).st_ino == inode  # rewritten in place: the claim keeps its lock
    assert store.recover().released == []
    claim.release()
    return result, env


@pytest.mark.parametrize(
    ("forward_to", "address"),
    [
        ("example.com", "127.0.0.11:25"),
        ("Example.COM:2525", "127.0.0.11:2525"),
        ("v6.example", "::1.25"),
        ("nomx.example", "127.0.0.13:25"),
        ("deflt.example", ""),
        ("192.0.2.7:587", "192.0.2.7:587"),
    ],
)
async def test_mx_lookup(store: SpoolStore, forward_to: str, address: str) -> None:
    with dns_server(RECORDS) as dns:
        result, env = await _run_mx(store, forward_to, f"mx:{dns.address}")
    assert result.outcome is FilterOutcome.OK
    assert env.forward_to == forward_to
    assert env.forward_to_address == address


async def test_mx_uses_glue_records(store: SpoolStore) -> None:
    with dns_server(RECORDS, glue=True) as dns:
        result, env = await _run_mx(store, "example.com", f"mx:{dns.address}")
        assert ("mx1.example.com", "A") not in dns.queries
    assert result.ok
    assert env.forward_to_address == "127.0.0.11:25"


@pytest.mark.parametrize("forward_to", ["unknown.example", "null.example", "broken.example"])
async def test_mx_permanent_failures(store: SpoolStore, forward_to: str) -> None:
    with dns_server(RECORDS) as dns:
        result, env = await _run_mx(store, forward_to, f"mx:{dns.address}")
    assert result.outcome is FilterOutcome.REJECT
    assert env.forward_to_address == "stale:1"


async def test_mx_timeout_is_temporary(store: SpoolStore, logs) -> None:
    with dns_server(RECORDS, silent={"example.com"}) as dns:
        started = time.monotonic()
        result, _ = await _run_mx(store, "example.com", f"mx:nst=0.3;rt=1;{dns.address}")
    assert result.outcome is FilterOutcome.ERROR
    assert time.monotonic() - started < 5
    assert "setting forward-to-address [] (mx: dns timeout" in logs.text()  # upstream's lines
    assert "failed response=[failed]" in logs.text()


async def test_mx_servfail_is_temporary(store: SpoolStore) -> None:
    with dns_server(RECORDS, servfail={"example.com"}) as dns:
        result, _ = await _run_mx(store, "example.com", f"mx:nst=0.5;rt=2;{dns.address}")
    assert result.outcome is FilterOutcome.ERROR


async def test_mx_without_forward_to_does_nothing(store: SpoolStore) -> None:
    mid = store.store_message(envelope(), content())
    claim = store.claim(mid)
    assert claim is not None
    before = claim.envelope_path.read_bytes()
    result = await client_chain(store, "mx:127.0.0.1:9").filter(
        mid, str(claim.content_path), str(claim.envelope_path)
    )
    assert result.outcome is FilterOutcome.OK
    assert claim.envelope_path.read_bytes() == before
    claim.release()


async def test_split_then_mx(store: SpoolStore) -> None:
    """--filter=split: --client-filter=mx: routes each domain to its own exchanger."""
    from tests.support.policy import new_message

    msg = new_message(store, content(), envelope("a@example.com", "b@nomx.example"))
    await server_chain(store, "split:").filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    msg.commit()
    hops = {}
    with dns_server(RECORDS) as dns:
        chain = client_chain(store, f"mx:{dns.address}")
        for mid in store.ready():
            claim = store.claim(mid)
            assert claim is not None
            assert (await chain.filter(mid, str(claim.content_path), str(claim.envelope_path))).ok
            env = claim.envelope(reread=True)
            hops[env.forward_to] = env.forward_to_address
            claim.release()
    assert hops == {"example.com": "127.0.0.11:25", "nomx.example": "127.0.0.13:25"}


def test_mx_parameters() -> None:
    from emailrelay.policy.mx import MxResolver

    r = MxResolver(("nst=7", "rt=9", "127.0.0.1:5353"))
    assert (r.resolver.timeout, r.resolver.lifetime, r.resolver.port, r.resolver.nameservers) == (
        7.0,
        9.0,
        5353,
        ["127.0.0.1"],
    )
    for bad in (("nst=x",), ("dns.example.com:53",), ("what=1",)):  # ignored (warned about), as upstream
        assert MxResolver(bad).resolver.port == 53
    assert parse_filters("mx:nst=60;rt=60;127.0.0.1:53")[0].params == ("nst=60", "rt=60", "127.0.0.1:53")
