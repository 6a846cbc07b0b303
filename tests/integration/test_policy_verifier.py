"""Address verifiers: a program (every exit code), net: with a server in the test, account:."""

from __future__ import annotations

import asyncio
import os
import pwd
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emailrelay.config import Config
from emailrelay.policy.spec import parse_verifier
from emailrelay.policy.verdicts import RecipientKind
from emailrelay.policy.verifier import PolicyEngine, Verifier, build_server_policy
from emailrelay.spool.store import SpoolStore
from tests.support.policy import logs_fixture, policy_config, script  # noqa: F401 - fixture


@dataclass
class Peer:
    host: str
    port: int


PEER = Peer("127.0.0.1", 48322)


def verifier(spec: str, **fields: object) -> Verifier:
    parsed = parse_verifier(spec)
    assert parsed is not None
    return Verifier(parsed, policy_config(domain="vm", **fields))


# ---- executable verifier -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rcpt", "kind", "address", "mailbox", "reason"),
    [
        ("postmaster@localhost", RecipientKind.LOCAL, "postmaster@localhost", "postmaster", ""),
        ("remote@example.net", RecipientKind.REMOTE, "remote@example.net", "", ""),
        ("UpperCase@Example.NET", RecipientKind.REMOTE, "uppercase@example.net", "", ""),
        # exit 1 without an address is a rejection, as E-MailRelay 2.6b's
        ("empty@example.net", RecipientKind.REJECT, "empty@example.net", "", "mailbox unavailable"),
        ("bad@example.net", RecipientKind.REJECT, "bad@example.net", "", "invalid mailbox: bad@example.net"),
        (
            "temp@example.net",
            RecipientKind.TEMPORARY,
            "temp@example.net",
            "",
            "mailbox unavailable: temp@example.net",
        ),
        ("abort@example.net", RecipientKind.ABORT, "abort@example.net", "", ""),
        ("odd@example.net", RecipientKind.REJECT, "odd@example.net", "", "odd code"),
        ("high@example.net", RecipientKind.REJECT, "high@example.net", "", "high code"),
        ("slash@example.net", RecipientKind.TEMPORARY, "slash@example.net", "", "mailbox unavailable"),
        ("angle@example.net", RecipientKind.TEMPORARY, "angle@example.net", "", "mailbox unavailable"),
        ("ctl@example.net", RecipientKind.REJECT, "ctl@example.net", "", "reason\\x1b[2Jwith\\tcontrols"),
    ],
)
async def test_exe_verifier_codes(
    rcpt: str, kind: RecipientKind, address: str, mailbox: str, reason: str
) -> None:
    verdict = await verifier(script("verifier.sh")).verify(
        rcpt, "alice@example.com", PEER, "cram-md5", "alice"
    )
    assert verdict.kind is kind
    assert verdict.address == address
    assert verdict.mailbox == mailbox
    assert verdict.reason == reason
    for text in (verdict.address, verdict.mailbox, verdict.reason, verdict.detail, verdict.full_name):
        assert not any(ord(c) < 32 for c in text)


async def test_exe_verifier_detail_line() -> None:
    verdict = await verifier(script("verifier.sh")).verify("diag@x", "a@b", PEER, "", "")
    assert (verdict.kind, verdict.reason, verdict.detail) == (
        RecipientKind.REJECT,
        "no such user",
        "looked in /etc/passwd",
    )


async def test_exe_verifier_arguments_and_log(logs) -> None:
    v = verifier(script("verifier.sh"))
    verdict = await v.verify("args@example.net", "alice@example.com", PEER, "CRAM-MD5", "alice")
    assert verdict.reason == "args@example.net|alice@example.com|127.0.0.1:48322|vm|cram-md5|alice|6"
    vrfy = await v.verify("args@example.net", None, Peer("::1", 25), "none", "trusted-x")
    assert vrfy.reason == "args@example.net||::1.25|vm|none|trusted-x|6"
    lines = logs.lines()
    prog = script("verifier.sh")
    assert (
        f"emailrelay: info: address verifier: executing [{prog}] [args@example.net] [alice@example.com] "
        "[127.0.0.1:48322] [vm] [cram-md5] [alice]"
    ) in lines
    assert (
        "emailrelay: info: address verifier: exit code 2: "
        "[args@example.net|alice@example.com|127.0.0.1:48322|vm|cram-md5|alice|6] []"
    ) in lines


async def test_exe_verifier_fixture_lines(logs) -> None:
    v = verifier(script("verifier.sh"))
    await v.verify("postmaster@localhost", "alice@example.com", PEER, "cram-md5", "alice")
    await v.verify("bad@example.net", "alice@example.com", PEER, "cram-md5", "alice")
    text = logs.text()
    assert "address verifier: exit code 0: [Local Postmaster <postmaster@localhost>] [postmaster]" in text
    assert "address verifier: exit code 2: [invalid mailbox: bad@example.net] []" in text


async def test_exe_verifier_timeout_is_temporary() -> None:
    verdict = await verifier(script("verifier.sh"), filter_timeout=1.0).verify("sleep@x", "a@b", PEER, "", "")
    assert verdict.kind is RecipientKind.TEMPORARY


async def test_exe_verifier_missing_program_rejects() -> None:
    verdict = await verifier("/nonexistent/verifier").verify("a@b", "c@d", PEER, "", "")
    assert verdict.kind is RecipientKind.REJECT


async def test_python_verifier() -> None:
    v = verifier(script("py_verifier.py"))
    local = await v.verify("Bob@VM", "a@b", PEER, "", "")
    assert (local.kind, local.mailbox, local.full_name) == (RecipientKind.LOCAL, "bob", "User Bob")
    remote = await v.verify("Carol@Example.ORG", "a@b", PEER, "", "")
    assert (remote.kind, remote.address) == (RecipientKind.REMOTE, "carol@example.org")


# ---- net: verifier ---------------------------------------------------------------------------
class VerifierServer:
    """A net: verifier server: answers by the recipient's local part; records requests."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.connections = 0
        self.drop_after_each = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                request = line.decode().rstrip("\n")
                self.requests.append(request)
                rcpt = request.split("|")[0]
                local = rcpt.split("@")[0].rstrip("0123456789")
                answer = {
                    "postmaster": "0|postmaster|Local Postmaster <postmaster@example.com>",
                    "remote": f"1|{rcpt.upper()}",
                    "same": "1|",
                    "bad": "2|mailbox unavailable|not in the list",
                    "temp": "3|try later",
                    "abort": "100",
                    "garbage": "what?",
                    "slow": None,
                }.get(local, "2|unknown")
                if answer is None:
                    await asyncio.sleep(5)
                    answer = "1|"
                writer.write(answer.encode() + b"\n")
                await writer.drain()
                if self.drop_after_each:
                    break
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def net_server() -> AsyncIterator[tuple[VerifierServer, str]]:
    srv = VerifierServer()
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield srv, f"net:127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("rcpt", "kind", "address", "mailbox", "reason", "detail"),
    [
        ("postmaster@x", RecipientKind.LOCAL, "postmaster@x", "postmaster", "", ""),
        ("remote@x", RecipientKind.REMOTE, "REMOTE@X", "", "", ""),
        ("same@x", RecipientKind.REMOTE, "same@x", "", "", ""),
        ("bad@x", RecipientKind.REJECT, "bad@x", "", "mailbox unavailable", "not in the list"),
        ("temp@x", RecipientKind.TEMPORARY, "temp@x", "", "try later", ""),
        ("abort@x", RecipientKind.ABORT, "abort@x", "", "", "net"),
        ("garbage@x", RecipientKind.REJECT, "garbage@x", "", "", ""),  # a bare 550, as upstream
    ],
)
async def test_net_verifier(
    net_server: tuple[VerifierServer, str],
    rcpt: str,
    kind: RecipientKind,
    address: str,
    mailbox: str,
    reason: str,
    detail: str,
) -> None:
    srv, spec = net_server
    v = verifier(spec)
    verdict = await v.verify(rcpt, "alice@example.com", PEER, "plain", "alice")
    await v.close()
    assert (verdict.kind, verdict.address, verdict.mailbox, verdict.reason, verdict.detail) == (
        kind,
        address,
        mailbox,
        reason,
        detail,
    )
    assert srv.requests == [f"{rcpt}|alice@example.com|127.0.0.1:48322|vm|plain|alice"]
    if kind is RecipientKind.LOCAL:
        assert verdict.full_name == "Local Postmaster <postmaster@example.com>"


async def test_net_verifier_connects_per_request(net_server: tuple[VerifierServer, str]) -> None:
    srv, spec = net_server
    v = verifier(spec)
    for _ in range(5):
        assert (await v.verify("remote@x", "a@b", PEER, "", "")).kind is RecipientKind.REMOTE
    assert srv.connections == 5  # a connection per request: never a request sent twice
    srv.drop_after_each = True
    for _ in range(3):  # the server hangs up after each answer: we reconnect transparently
        assert (await v.verify("remote@x", "a@b", PEER, "", "")).kind is RecipientKind.REMOTE
    await v.close()


async def test_net_verifier_parallel(net_server: tuple[VerifierServer, str]) -> None:
    _, spec = net_server
    v = verifier(spec)
    verdicts = await asyncio.gather(*(v.verify(f"remote{i}@x", "a@b", PEER, "", "") for i in range(20)))
    assert [x.address for x in verdicts] == [f"REMOTE{i}@X" for i in range(20)]
    await v.close()


async def test_net_verifier_timeout_and_unreachable(net_server: tuple[VerifierServer, str]) -> None:
    _, spec = net_server
    slow = await verifier(spec, filter_timeout=0.5).verify("slow@x", "a@b", PEER, "", "")
    assert slow.kind is RecipientKind.TEMPORARY
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = await verifier(f"net:127.0.0.1:{closed}").verify("a@x", "a@b", PEER, "", "")
    assert down.kind is RecipientKind.TEMPORARY


async def test_net_verifier_unix_socket(tmp_path: Path) -> None:
    srv = VerifierServer()
    path = str(tmp_path / "verifier.sock")
    server = await asyncio.start_unix_server(srv.handle, path)
    try:
        v = verifier(f"net:{path}")
        verdict = await v.verify("postmaster@x", "a@b", PEER, "", "")
        assert verdict.kind is RecipientKind.LOCAL
        await v.close()
    finally:
        server.close()
        await server.wait_closed()


# ---- account: ---------------------------------------------------------------------------------
def _accounts_in(low: int, high: int) -> list[pwd.struct_passwd]:
    return [p for p in pwd.getpwall() if low <= p.pw_uid <= high and p.pw_name.isascii()]


async def test_account_verifier_with_system_accounts() -> None:
    system = _accounts_in(0, 999)
    assert system, "no system accounts at all?"
    root = pwd.getpwuid(0)
    v = verifier("account:0-999")
    local = await v.verify(f"{root.pw_name}@VM", "a@b", PEER, "", "")
    assert (local.kind, local.mailbox) == (RecipientKind.LOCAL, root.pw_name)
    wrong_domain = await v.verify(f"{root.pw_name}@elsewhere.example", "a@b", PEER, "", "")
    assert (wrong_domain.kind, wrong_domain.reason) == (RecipientKind.REJECT, "rejected")
    assert wrong_domain.detail == "[elsewhere.example] does not match [vm]"
    bare = await v.verify(root.pw_name, "a@b", PEER, "", "")  # no domain: not ours (as upstream)
    assert (bare.kind, bare.detail) == (RecipientKind.REJECT, "[] does not match [vm]")
    nobody = await v.verify("No-Such-Account-xyz@vm", "a@b", PEER, "", "")
    assert (nobody.kind, nobody.reason) == (RecipientKind.REJECT, "rejected")
    assert nobody.detail == "[No-Such-Account-xyz] is not a valid account name"
    default_range = verifier("account:")
    out_of_range = await default_range.verify(f"{root.pw_name}@vm", "a@b", PEER, "", "")
    assert (out_of_range.kind, out_of_range.detail) == (
        RecipientKind.REJECT,
        "uid 0 is not in the range 1000-32767",
    )


async def test_account_verifier_parameters() -> None:
    root = pwd.getpwuid(0).pw_name
    upper = root.upper() + "@vm"
    found = await verifier("account:0-0").verify(upper, "", PEER, "", "")  # found in lower case, as upstream
    assert (found.kind, found.mailbox, found.full_name) == (RecipientKind.LOCAL, root, "")
    lowered = await verifier("account:0-0;lowercase").verify(upper, "", PEER, "", "")
    assert (lowered.kind, lowered.mailbox) == (RecipientKind.LOCAL, root)
    check = verifier("account:0-0;check")
    assert (await check.verify(f"{root}@vm", "", PEER, "", "")).kind is RecipientKind.LOCAL
    other = await check.verify("someone@example.org", "", PEER, "", "")
    assert (other.kind, other.address) == (RecipientKind.REMOTE, "someone@example.org")
    remote = verifier("account:0-0;remote")
    assert (await remote.verify(f"{root}@vm", "", PEER, "", "")).kind is RecipientKind.REMOTE
    assert (await remote.verify("someone@vm", "", PEER, "", "")).kind is RecipientKind.REJECT


async def test_account_verifier_current_user_range() -> None:
    me = pwd.getpwuid(os.getuid())
    v = verifier(f"account:{me.pw_uid}-{me.pw_uid}")
    verdict = await v.verify(f"{me.pw_name}@vm", "", PEER, "", "")
    assert (verdict.kind, verdict.mailbox) == (RecipientKind.LOCAL, me.pw_name)


# ---- the engine ----------------------------------------------------------------------------------
def engine_config(spool: Path, address_verifier: str | None = None) -> Config:
    return policy_config(spool_dir=spool, address_verifier=address_verifier, domain="vm", filter_timeout=5.0)


async def test_engine_without_verifier_is_remote(tmp_path: Path) -> None:
    engine = build_server_policy(engine_config(tmp_path), SpoolStore(tmp_path, fsync=False))
    assert engine.accepts_everything
    verdict = await engine.verify("Any@Where", "a@b", PEER, "", "")
    assert (verdict.kind, verdict.address) == (RecipientKind.REMOTE, "Any@Where")


async def test_engine_with_verifier(tmp_path: Path) -> None:
    engine = build_server_policy(
        engine_config(tmp_path, address_verifier=script("verifier.sh")), SpoolStore(tmp_path, fsync=False)
    )
    assert isinstance(engine, PolicyEngine) and not engine.accepts_everything
    assert (await engine.verify("temp@x", "a@b", PEER, "", "")).kind is RecipientKind.TEMPORARY
    await engine.close()
