"""open_via_socks through a real SOCKS 4a / 5 proxy (tests/support/socks_server.py) to a TCP echo server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from emailrelay.services.socks import (
    SOCKS4A,
    SOCKS5,
    SocksError,
    SocksTimeout,
    open_forward_to,
    open_via_socks,
)
from tests.support.relay import free_port
from tests.support.socks_server import echo_server, socks_server


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")


async def talk(sock: socket.socket) -> bytes:
    """Use the socket the way the forwarder will: asyncio.open_connection(sock=...)."""
    assert not sock.getblocking()
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        banner = await asyncio.wait_for(reader.readline(), 5)
        writer.write(b"ping\r\n")
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readline(), 5)
        return banner + echoed
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


EXPECTED = b"hello from echo\r\nping\r\n"


@pytest.mark.parametrize(
    ("version", "target", "logged"),
    [
        (SOCKS4A, "localhost", ("4a", "localhost")),
        (SOCKS4A, "127.0.0.1", ("4", "127.0.0.1")),
        (SOCKS5, "localhost", ("5", "localhost")),
        (SOCKS5, "127.0.0.1", ("5", "127.0.0.1")),
    ],
)
async def test_connects_through_the_proxy(version: str, target: str, logged: tuple[str, str]) -> None:
    with echo_server() as echo, socks_server() as proxy:
        sock = await open_via_socks("127.0.0.1", proxy.port, target, echo.port, version=version, timeout=5)
        assert await talk(sock) == EXPECTED
        assert proxy.requests == [(*logged, echo.port)]


@needs_ipv6
async def test_socks5_to_an_ipv6_target_through_an_ipv6_proxy() -> None:
    with echo_server("::1") as echo, socks_server("::1") as proxy:
        sock = await open_via_socks("::1", proxy.port, "::1", echo.port, version=SOCKS5, timeout=5)
        assert sock.family == socket.AF_INET6
        assert await talk(sock) == EXPECTED
        assert proxy.requests == [("5", "::1", echo.port)]


async def test_socks4a_cannot_reach_an_ipv6_literal() -> None:
    with socks_server() as proxy, pytest.raises(SocksError, match=r"IPv6.*socks5://"):
        await open_via_socks("127.0.0.1", proxy.port, "::1", 25, version=SOCKS4A, timeout=5)


async def test_forward_to_syntax_end_to_end() -> None:
    with echo_server() as echo, socks_server() as proxy:
        target, sock = await open_forward_to(f"127.0.0.1:{echo.port}@localhost:{proxy.port}", timeout=5)
        assert target == f"127.0.0.1:{echo.port}" and sock is not None
        assert await talk(sock) == EXPECTED
        target, sock = await open_forward_to(
            f"localhost:{echo.port}@socks5://127.0.0.1:{proxy.port}", timeout=5
        )
        assert sock is not None and await talk(sock) == EXPECTED
        assert [r[0] for r in proxy.requests] == ["4", "5"]
        assert await open_forward_to(f"127.0.0.1:{echo.port}", timeout=5) == (f"127.0.0.1:{echo.port}", None)


async def test_binds_the_client_interface() -> None:
    with echo_server() as echo, socks_server() as proxy:
        sock = await open_via_socks(
            "127.0.0.1",
            proxy.port,
            "127.0.0.1",
            echo.port,
            version=SOCKS5,
            timeout=5,
            local_address="127.0.0.1",
        )
        assert sock.getsockname()[0] == "127.0.0.1"
        assert await talk(sock) == EXPECTED


def test_works_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    with echo_server() as echo, socks_server() as proxy:

        async def go() -> bytes:
            sock = await open_via_socks(
                "127.0.0.1", proxy.port, "localhost", echo.port, version=SOCKS4A, timeout=5
            )
            return await talk(sock)

        with contextlib.closing(uvloop.new_event_loop()) as loop:
            assert loop.run_until_complete(go()) == EXPECTED


@pytest.mark.parametrize(
    ("version", "words"), [(SOCKS4A, "request rejected or failed"), (SOCKS5, "not allowed by ruleset")]
)
async def test_a_refusing_proxy_gives_a_clear_error(version: str, words: str) -> None:
    with socks_server(mode="reject") as proxy, pytest.raises(SocksError) as info:
        await open_via_socks("127.0.0.1", proxy.port, "example.com", 25, version=version, timeout=5)
    text = str(info.value)
    assert text.startswith(f"SOCKS proxy 127.0.0.1:{proxy.port} refused the connection to example.com:25: ")
    assert words in text


async def test_the_proxy_cannot_reach_the_target() -> None:
    closed = free_port()
    with socks_server() as proxy:
        with pytest.raises(
            SocksError, match=f"refused the connection to 127.0.0.1:{closed}: connection refused"
        ):
            await open_via_socks("127.0.0.1", proxy.port, "127.0.0.1", closed, version=SOCKS5, timeout=5)
        with pytest.raises(SocksError, match="request rejected or failed"):
            await open_via_socks("127.0.0.1", proxy.port, "127.0.0.1", closed, version=SOCKS4A, timeout=5)


async def test_socks5_proxy_that_wants_authentication() -> None:
    with socks_server(mode="auth") as proxy, pytest.raises(SocksError, match="requires authentication"):
        await open_via_socks("127.0.0.1", proxy.port, "example.com", 25, version=SOCKS5, timeout=5)


async def test_no_proxy_listening() -> None:
    port = free_port()
    with pytest.raises(
        SocksError, match=f"cannot connect to SOCKS proxy 127.0.0.1:{port}: .*[Rr]efused"
    ) as info:
        await open_via_socks("127.0.0.1", port, "example.com", 25, timeout=5)
    assert isinstance(info.value, OSError) and not isinstance(info.value, TimeoutError)


async def test_unresolvable_proxy() -> None:
    with pytest.raises(SocksError, match="cannot resolve SOCKS proxy address"):
        await open_via_socks("no-such-host.invalid", 1080, "example.com", 25, timeout=5)


@pytest.mark.parametrize("version", [SOCKS4A, SOCKS5])
async def test_a_silent_proxy_times_out(version: str) -> None:
    with socks_server(mode="silent") as proxy:
        start = time.monotonic()
        with pytest.raises(
            SocksTimeout, match=f"timeout: no SOCKS handshake with proxy 127.0.0.1:{proxy.port}"
        ):
            await open_via_socks("127.0.0.1", proxy.port, "example.com", 25, version=version, timeout=0.5)
        assert 0.4 < time.monotonic() - start < 3.0


async def test_a_proxy_that_hangs_up() -> None:
    """A proxy that closes without a reply (here: an echo server that is not a proxy at all)."""
    with echo_server() as not_a_proxy, pytest.raises(SocksError, match=r"invalid SOCKS 4 reply|closed the"):
        await open_via_socks("127.0.0.1", not_a_proxy.port, "example.com", 25, timeout=5)
