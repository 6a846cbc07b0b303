"""Checks of the POP test harness (``tests/support/pop3.py``) and of PopService set-up: the harness
starts, serves and stops cleanly; remote clients are refused unless allowed; build_pop_service
loads the --pop-auth secrets and TLS as POP takes them.
"""

from __future__ import annotations

import asyncio
import poplib
from pathlib import Path
from typing import Any

import pytest

from emailrelay import log as logmod
from emailrelay.config import Config
from emailrelay.services.pop3d import PopService
from emailrelay.spool.store import SpoolStore
from tests.support.pop3 import PopHarness, make_certificate, pop_harness


def test_harness_serves_and_stops(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        p = h.client()
        assert p.getwelcome().startswith(b"+OK POP3 server ready <")
        p.quit()
        h.wait_idle()
    log = h.log_text()
    assert "pop connection from 127.0.0.1:" in log
    assert "pop connection closed: pop protocol done: 127.0.0.1:" in log


def test_stop_cuts_open_sessions_and_releases_locks(tmp_path: Path) -> None:
    h = PopHarness(tmp_path)
    h.put()
    p = h.login()
    p.dele(1)
    h.stop()
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        p.quit()
    assert len(h.files()) == 2  # nothing deleted without QUIT


class _FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.mark.parametrize(("address", "allowed"), [("8.8.8.8", False), ("10.1.2.3", True), ("::1", True)])
def test_remote_clients_are_refused_unless_allowed(tmp_path: Path, address: str, allowed: bool) -> None:
    from emailrelay.services.pop3d import PopSession

    async def connect(remote_clients: bool) -> _FakeTransport:
        log = logmod.Log(logmod.LogConfig(syslog=False, stderr=False, log_file=str(tmp_path / "log")))
        service = PopService(
            Config(remote_clients=remote_clients, idle_timeout=0).frozen(),
            SpoolStore(tmp_path / "spool", fsync=False),
            log=log,
        )
        transport = _FakeTransport((address, 1110))
        session = PopSession(service)
        session.connection_made(transport)
        session.connection_lost(None)
        service.executor.shutdown()
        return transport

    t = asyncio.run(connect(False))
    if allowed:
        assert t.written.startswith(b"+OK POP3 server ready <") and not t.closed
    else:
        assert t.written == b"-ERR remote connections not allowed\r\n" and t.closed
    t = asyncio.run(connect(True))
    assert t.written.startswith(b"+OK POP3 server ready <")


def test_build_pop_service_from_config(tmp_path: Path) -> None:
    from emailrelay.services.pop3d import build_pop_service

    auth = tmp_path / "pop.auth"
    auth.write_text("server plain alice pw\n")
    key, cert = make_certificate(tmp_path)
    config = Config(
        pop_auth=str(auth),
        pop_by_name=True,
        server_auth_config="m:cram-md5",
        server_tls_connection=True,  # implicit TLS for SMTP only: STLS for POP (as E-MailRelay 2.6b)
        server_tls_certificates=[str(key), str(cert)],
    ).frozen()
    log = logmod.Log(logmod.LogConfig(syslog=False, stderr=False, log_file=str(tmp_path / "log")))
    service = build_pop_service(config, SpoolStore(tmp_path / "spool", fsync=False), log=log)
    try:
        assert service.config is config  # read as it is, not copied
        sec = service.security
        assert sec is not None and sec.secrets is not None
        assert sec.secrets.server_lookup("PLAIN", "alice") is not None
        # --server-auth-config filters POP's mechanisms too, as E-MailRelay 2.6b's
        assert sec.auth_config is not None and sec.mechanisms(False) == ("CRAM-MD5",)
        assert sec.tls_context is not None and not sec.tls_implicit
        with_stls = config.replaced(server_tls=True, server_tls_connection=False)
        assert build_pop_service(with_stls, service.store, log=log).security.tls_context is not None  # type: ignore[union-attr]
        assert f'pop server authentication secrets from "{auth}"' in (tmp_path / "log").read_text()
    finally:
        service.executor.shutdown()
