"""DnsblChecker against real DNS packets: a UDP DNS server started by the test.

The server lists 203.0.113.7 and 2001:db8::7 in ``bl.example`` (127.0.0.2),
lists nothing in ``ok.example``, answers "query refused" (127.255.255.254) in
``err.example``, SERVFAILs in ``fail.example`` and never answers in
``slow.example``; a second UDP socket never answers anything (a dead server).
Documentation addresses are used because loopback and private peers are
never checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from emailrelay import log as logmod
from emailrelay.policy.dnsbl import DnsblChecker, parse_config, query_name
from tests.support.dns_server import DnsServer, dns_server

LISTED_V4 = "203.0.113.7"
CLEAN_V4 = "203.0.113.8"
LISTED_V6 = "2001:db8::7"
CLEAN_V6 = "2001:db8::8"


def _records() -> dict[str, dict[str, list[object]]]:
    records: dict[str, dict[str, list[object]]] = {}
    for ip in (LISTED_V4, LISTED_V6):
        records[query_name(ip, "bl.example")] = {"A": ["127.0.0.2"]}
        records[query_name(ip, "bl2.example")] = {"A": ["127.0.0.4", "127.0.0.10"]}
        records[query_name(ip, "err.example")] = {"A": ["127.255.255.254"]}
        records[query_name(ip, "odd.example")] = {"A": ["192.0.2.1"]}  # not a 127/8 answer
    return records


def _silent() -> set[str]:
    return {query_name(ip, "slow.example") for ip in (LISTED_V4, CLEAN_V4, LISTED_V6, CLEAN_V6)}


def _servfail() -> set[str]:
    return {query_name(ip, "fail.example") for ip in (LISTED_V4, CLEAN_V4)}


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with dns_server(_records(), silent=_silent(), servfail=_servfail()) as server:
        yield server


@pytest.fixture
def dead_dns() -> Iterator[str]:
    """A UDP port that receives queries and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def log() -> logmod.Log:
    return logmod.Log(logmod.LogConfig(verbose=True, syslog=False))


def checker(config: str, log: logmod.Log) -> DnsblChecker:
    return DnsblChecker(config, log=log)


async def test_listed_ipv4_is_blocked(
    dns: DnsServer, log: logmod.Log, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await checker(f"bl.example,ok.example,1,2000,{dns.address}", log).check(LISTED_V4)
    assert result.blocked and result.checked and not result.timed_out
    assert result.listed_by == ["bl.example"]
    assert "bl.example" in result.reason
    err = capsys.readouterr().err
    assert f"warning: dnsbl: client address [{LISTED_V4}] blocked by [bl.example]" in err
    assert f"info: dnsbl: address [{LISTED_V4}] denied by [bl.example]: 127.0.0.2" in err
    assert (query_name(LISTED_V4, "bl.example"), "A") in dns.queries


async def test_unlisted_ipv4_is_allowed(
    dns: DnsServer, log: logmod.Log, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await checker(f"bl.example,ok.example,1,2000,{dns.address}", log).check(CLEAN_V4)
    assert not result.blocked and not result.timed_out and result.listed_by == []
    assert {q for q, _ in dns.queries} == {
        query_name(CLEAN_V4, "bl.example"),
        query_name(CLEAN_V4, "ok.example"),
    }
    assert f"dnsbl: address [{CLEAN_V4}] allowed by [ok.example]" in capsys.readouterr().err


async def test_ipv6_uses_nibble_names(dns: DnsServer, log: logmod.Log) -> None:
    c = checker(f"bl.example,1,2000,{dns.address}", log)
    listed = await c.check(LISTED_V6)
    assert listed.blocked and listed.listed_by == ["bl.example"]
    clean = await c.check(CLEAN_V6)
    assert not clean.blocked
    names = [q for q, _ in dns.queries]
    assert query_name(LISTED_V6, "bl.example") in names and query_name(CLEAN_V6, "bl.example") in names
    assert all(len(n.split(".")) == 34 for n in names)


async def test_ipv4_mapped_peer_is_checked_as_ipv4(dns: DnsServer, log: logmod.Log) -> None:
    result = await checker(f"bl.example,1,2000,{dns.address}", log).check(f"::ffff:{LISTED_V4}")
    assert result.blocked
    assert dns.queries == [(query_name(LISTED_V4, "bl.example"), "A")]


async def test_below_threshold_is_allowed_and_said(
    dns: DnsServer, log: logmod.Log, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await checker(f"bl.example,ok.example,2,2000,{dns.address}", log).check(LISTED_V4)
    assert not result.blocked and result.listed_by == ["bl.example"] and not result.timed_out
    assert "below threshold" in result.reason
    assert "] allowed by [ok.example]" in capsys.readouterr().err  # (no outcome line, as upstream)


async def test_threshold_reached_by_two_zones(dns: DnsServer, log: logmod.Log) -> None:
    result = await checker(f"bl.example,ok.example,bl2.example,2,2000,{dns.address}", log).check(LISTED_V4)
    assert result.blocked and result.listed_by == ["bl.example", "bl2.example"]


async def test_threshold_zero_consults_all_and_never_blocks(
    dns: DnsServer, log: logmod.Log, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await checker(f"bl.example,bl2.example,ok.example,0,2000,{dns.address}", log).check(LISTED_V4)
    assert not result.blocked and not result.timed_out
    assert result.listed_by == ["bl.example", "bl2.example"]
    assert len(dns.queries) == 3
    assert "] denied by [bl2.example]: 127.0.0." in capsys.readouterr().err


async def test_stops_early_once_the_threshold_is_reached(dns: DnsServer, log: logmod.Log) -> None:
    """slow.example never answers, but bl.example's listing decides at once."""
    start = time.monotonic()
    result = await checker(f"slow.example,bl.example,1,-5000,{dns.address}", log).check(LISTED_V4)
    assert result.blocked and not result.timed_out and result.listed_by == ["bl.example"]
    assert time.monotonic() - start < 2.0


async def test_stops_early_once_the_threshold_cannot_be_reached(dns: DnsServer, log: logmod.Log) -> None:
    """Threshold 2 of 2 zones: one says "not listed", so slow.example cannot make it block."""
    start = time.monotonic()
    result = await checker(f"slow.example,ok.example,2,-5000,{dns.address}", log).check(CLEAN_V4)
    assert not result.blocked and not result.timed_out
    assert time.monotonic() - start < 2.0


async def test_silent_zone_times_out_open_by_default(
    dns: DnsServer, log: logmod.Log, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    result = await checker(f"slow.example,ok.example,1,300,{dns.address}", log).check(CLEAN_V4)
    elapsed = time.monotonic() - start
    assert not result.blocked and result.timed_out
    assert 0.25 <= elapsed < 2.0
    err = capsys.readouterr().err
    assert f"info: dnsbl: address [{CLEAN_V4}] not checked by [slow.example]" in err
    assert f"warning: dnsbl: client address [{CLEAN_V4}]: timeout: no answer from [slow.example]" in err


async def test_dead_server_fails_open_with_a_positive_timeout(dead_dns: str, log: logmod.Log) -> None:
    start = time.monotonic()
    result = await checker(f"bl.example,ok.example,1,400,{dead_dns}", log).check(LISTED_V4)
    assert not result.blocked and result.timed_out and result.listed_by == []
    assert time.monotonic() - start < 2.0


async def test_dead_server_fails_closed_with_a_negative_timeout(
    dead_dns: str, log: logmod.Log, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    result = await checker(f"bl.example,ok.example,1,-400,{dead_dns}", log).check(CLEAN_V4)
    assert result.blocked and result.timed_out
    assert "timeout" in result.reason
    assert time.monotonic() - start < 2.0
    err = capsys.readouterr().err
    assert f"info: dnsbl: address [{CLEAN_V4}] not checked by [ok.example]" in err
    assert (
        f"warning: dnsbl: client address [{CLEAN_V4}] blocked: timeout: no answer from [bl.example] [ok.example]"
        in err
    )


async def test_dead_server_with_the_legacy_order(dead_dns: str, log: logmod.Log) -> None:
    result = await checker(f"{dead_dns},-300,1,bl.example", log).check(LISTED_V4)
    assert result.blocked and result.timed_out


async def test_error_codes_and_odd_answers_do_not_list(
    dns: DnsServer, log: logmod.Log, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await checker(f"err.example,odd.example,fail.example,1,2000,{dns.address}", log).check(LISTED_V4)
    assert not result.blocked and not result.timed_out and result.listed_by == []
    assert set(result.errors) == {"err.example", "fail.example"}
    assert "127.255.255.254" in result.errors["err.example"]
    assert "query to [err.example] failed" in capsys.readouterr().err


async def test_local_addresses_are_not_looked_up(
    dns: DnsServer, log: logmod.Log, capsys: pytest.CaptureFixture[str]
) -> None:
    c = checker(f"bl.example,1,-2000,{dns.address}", log)
    for ip in (
        "127.0.0.1",
        "10.0.0.7",
        "192.168.1.7",
        "172.20.0.1",
        "169.254.0.1",
        "::1",
        "fd00::7",
        "fe80::7",
    ):
        result = await c.check(ip)
        assert not result.blocked and not result.checked and "local" in result.reason
    assert dns.queries == []
    assert "dnsbl: not checking local address [10.0.0.7]" in capsys.readouterr().err


async def test_many_checks_in_parallel(dns: DnsServer, log: logmod.Log) -> None:
    c = checker(f"bl.example,ok.example,1,3000,{dns.address}", log)
    ips = [LISTED_V4, CLEAN_V4, LISTED_V6, CLEAN_V6] * 10
    results = await asyncio.wait_for(asyncio.gather(*(c.check(ip) for ip in ips)), 10)
    assert [r.blocked for r in results] == [ip in (LISTED_V4, LISTED_V6) for ip in ips]


async def test_default_dns_server_is_the_systems_first(log: logmod.Log) -> None:
    """No DNS server given: the resolver asks the first nameserver of resolv.conf (not contacted here)."""
    import dns.resolver

    c = checker("bl.example", log)
    try:
        expected = str(dns.resolver.Resolver().nameservers[0])
    except (dns.resolver.NoResolverConfiguration, IndexError):
        expected = "127.0.0.1"
    assert [str(n) for n in c.resolver.nameservers] == [expected]
    assert parse_config("bl.example").dns_server is None


def test_checker_is_usable_from_a_fresh_event_loop(dns: DnsServer) -> None:
    """A checker built outside a loop (as at start-up) works in the loop that runs it."""
    c = DnsblChecker(f"bl.example,1,2000,{dns.address}", log=logmod.Log(logmod.LogConfig(syslog=False)))
    with contextlib.closing(asyncio.new_event_loop()) as loop:
        assert loop.run_until_complete(c.check(LISTED_V4)).blocked


def test_works_under_uvloop(dns: DnsServer) -> None:
    """The relay runs on uvloop when it is installed."""
    uvloop = pytest.importorskip("uvloop")
    c = DnsblChecker(
        f"bl.example,ok.example,1,2000,{dns.address}", log=logmod.Log(logmod.LogConfig(syslog=False))
    )
    with contextlib.closing(uvloop.new_event_loop()) as loop:
        assert loop.run_until_complete(c.check(LISTED_V6)).blocked
        assert not loop.run_until_complete(c.check(CLEAN_V4)).blocked
