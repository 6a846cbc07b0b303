"""The POP service over real sockets: poplib and raw conversations against a live PopService."""

from __future__ import annotations

import base64
import hmac
import poplib
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emailrelay.protocol.sasl import BruteForceGuard
from emailrelay.spool.delivery import copy_to_directories
from emailrelay.spool.names import State
from emailrelay.spool.store import POP_LOCK_NAME, SpoolStore
from tests.support.certs import no_verify_context
from tests.support.fixtures import UPSTREAM
from tests.support.pop3 import (
    ENV,
    pop_harness,
    recv_until,
    server_tls_context,
)

FIXTURE = UPSTREAM / "filter-and-pop-verbose.log"
BODY20 = b"Subject: test\r\nabc\r\n"  # 20 octets, 2 lines, like the fixture's message


def normalise(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        line = re.sub(r"^emailrelay: (?:[0-9.]+: )?", "", line)
        line = re.sub(r"<\d+\.\d+@[^>]+>", "<TS>", line)
        line = re.sub(r"emailrelay\.\d+\.\d+\.\d+", "ID", line)
        line = re.sub(r"127\.0\.0\.1:\d+", "ADDR", line)
        out.append(line)
    return out


def test_log_matches_the_upstream_fixture(tmp_path: Path) -> None:
    fixture = FIXTURE.read_text().splitlines()
    start = next(i for i, line in enumerate(fixture) if "pop connection from" in line)
    end = next(i for i, line in enumerate(fixture) if "pop connection closed" in line)
    expected = normalise(fixture[start : end + 1])
    with pop_harness(tmp_path) as h:
        h.put(BODY20)
        p = h.client()
        assert p.capa()["SASL"] == ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN"]
        assert p.user("me") == b"+OK user: me"
        assert p.pass_("secret") == b"+OK"
        assert p.stat() == (1, 20)
        assert p.list()[0] == b"+OK 1 message(s)"
        uidl = p.uidl()
        assert re.fullmatch(rb"1 emailrelay\.\d+\.\d+\.1\.content", uidl[1][0])
        assert p.retr(1)[0] == b"+OK 20 octets"
        assert p.quit() == b"+OK signing off"
        log = h.wait_log("pop connection closed")
    got = normalise(log.splitlines())
    assert got == expected


def test_retr_top_uidl_stable_across_sessions(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        body = b"Subject: one\r\nX: y\r\n\r\n.dot line\r\nline 2\r\nline 3\r\n"
        ids = [h.put(body), h.put(b"Subject: two\r\n\r\nb\r\n")]
        seen = []
        for _ in range(2):
            p = h.login()
            seen.append(p.uidl()[1])
            resp, lines, _ = p.retr(1)
            assert resp == f"+OK {len(body)} octets".encode()
            assert b"\r\n".join(lines) + b"\r\n" == body  # poplib undoes the stuffing
            assert p.top(1, 1)[1] == [b"Subject: one", b"X: y", b"", b".dot line"]
            assert p.top(1, 0)[1] == [b"Subject: one", b"X: y", b""]
            assert p.list(2) == b"+OK 2 19"  # len(b"Subject: two\r\n\r\nb\r\n")
            p.quit()
        assert seen[0] == seen[1] == [f"{i + 1} {mid}.content".encode() for i, mid in enumerate(ids)]


def test_stuffed_dots_on_the_wire(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        h.put(b".\r\n..\r\nx\r\n.")
        s = socket.create_connection(("127.0.0.1", h.port))
        recv_until(s, b"\r\n")
        s.sendall(b"USER me\r\nPASS secret\r\nRETR 1\r\n")
        data = recv_until(s, b"\r\n.\r\n")
        assert data.endswith(b"+OK 11 octets\r\n..\r\n...\r\nx\r\n..\r\n.\r\n")
        s.sendall(b"QUIT\r\n")
        assert recv_until(s, b"off\r\n") == b"+OK signing off\r\n"
        s.close()


def test_apop(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets="APOP server user1 password1\n") as h:
        h.put()
        p = h.client()
        assert p.apop("user1", "password1") == b"+OK"
        assert p.stat()[0] == 1
        p.quit()
        p = h.client()
        with pytest.raises(poplib.error_proto, match=r"^b'-ERR'$"):  # upstream's bare -ERR
            p.apop("user1", "wrong")
        p.quit()
        log = h.wait_log("pop connection closed", 2)
    assert "mechanism [apop] and plaintext secret for [user1] from line 1" in log


def test_apop_needs_a_plain_secret(tmp_path: Path) -> None:
    # an md5 (CRAM-MD5 state) secret cannot check an APOP digest
    with pop_harness(tmp_path, secrets="server md5 u1 xEENOeD+fTdnBsB0gWRWMw/+tlq4YnqzVBWOl6dmzIo=\n") as h:
        p = h.client()
        with pytest.raises(poplib.error_proto):
            p.apop("u1", "pw")
        p.quit()


def auth(p: poplib.POP3, line: str) -> bytes:
    return p._shortcmd(line)  # poplib has no AUTH helper


@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256", "CRAM-SHA512"])
def test_auth_cram(tmp_path: Path, mechanism: str) -> None:
    digestmod = {"CRAM-MD5": "md5", "CRAM-SHA1": "sha1", "CRAM-SHA256": "sha256", "CRAM-SHA512": "sha512"}
    with pop_harness(tmp_path) as h:
        h.put()
        p = h.client()
        challenge = auth(p, f"AUTH {mechanism}")
        assert challenge.startswith(b"+ ")
        raw = base64.b64decode(challenge[2:])
        assert re.fullmatch(rb"<\d+\.\d+@vm>", raw)
        digest = hmac.new(b"pw", raw, digestmod[mechanism]).hexdigest()
        assert auth(p, base64.b64encode(f"alice {digest}".encode()).decode()) == b"+OK"
        assert p.stat()[0] == 1
        p.quit()


def test_auth_plain_and_login(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        p = h.client()
        assert auth(p, "AUTH PLAIN " + base64.b64encode(b"\0me\0secret").decode()) == b"+OK"
        p.quit()
        p = h.client()
        assert auth(p, "AUTH PLAIN") == b"+ "
        assert auth(p, base64.b64encode(b"\0me\0secret").decode()) == b"+OK"
        p.quit()
        p = h.client()
        assert auth(p, "AUTH LOGIN") == b"+ " + base64.b64encode(b"Username:")
        assert auth(p, base64.b64encode(b"me").decode()) == b"+ " + base64.b64encode(b"Password:")
        assert auth(p, base64.b64encode(b"secret").decode()) == b"+OK"
        p.quit()
        p = h.client()
        assert auth(p, "AUTH LOGIN").startswith(b"+ ")
        with pytest.raises(poplib.error_proto):
            auth(p, "*")  # cancelled
        with pytest.raises(poplib.error_proto):
            auth(p, "AUTH PLAIN " + base64.b64encode(b"\0me\0wrong").decode())
        p.quit()
        log = h.wait_log("pop connection closed", 4)
    assert 'rx<<: "AUTH PLAIN"\n' in log  # (as upstream: logged without the initial response)
    assert base64.b64encode(b"\0me\0secret").decode() not in log
    assert "secret" not in log.replace("secret for [", "")


def test_wrong_passwords_disconnect_after_five(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        p = h.client()
        for i in range(5):
            p.user("me")
            with pytest.raises(poplib.error_proto, match=r"^b'-ERR'$"):  # upstream's bare -ERR
                p.pass_(f"wrong{i}")
        with pytest.raises((poplib.error_proto, EOFError, OSError)):
            p.noop()
        log = h.wait_log("pop connection closed")
    failed = "failed authentication of remote client using mechanism [plain] and plaintext secret for [me] from line"
    assert log.count(failed) == 5  # (E-MailRelay 2.6b's words: the secret it tried)
    assert "too many authentication failures" in log
    assert not any(f"wrong{i}" in log for i in range(5))


def test_failed_logins_are_delayed(tmp_path: Path) -> None:
    guard = BruteForceGuard(free_failures=0, first_delay=0.4, max_delay=0.4)
    with pop_harness(tmp_path, guard=guard) as h:
        p = h.client()
        p.user("me")
        t0 = time.monotonic()
        with pytest.raises(poplib.error_proto):
            p.pass_("wrong")
        assert time.monotonic() - t0 >= 0.35
        p.user("me")
        assert p.pass_("secret") == b"+OK"  # the guard forgets the address after a success
        p.quit()


def test_unknown_user_and_no_secrets(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets="") as h:
        p = h.client()
        assert "SASL" not in p.capa() and "USER" not in p.capa()  # (as upstream: no plain secret)
        with pytest.raises(poplib.error_proto, match="no SASL PLAIN mechanism"):
            p.user("me")
        with pytest.raises(poplib.error_proto):
            p.pass_("secret")
        p.quit()


def test_protocol_errors_keep_the_session(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        h.put()
        s = socket.create_connection(("127.0.0.1", h.port))
        recv_until(s, b"\r\n")
        s.sendall(
            b"BOGUS\r\nSTAT\r\nUSER " + b"x" * 400 + b"\r\nUSER me\r\nPASS secret\r\nRETR 7\r\nSTAT\r\n"
        )
        data = recv_until(s, b"+OK 1 24\r\n")
        assert data.split(b"\r\n")[:7] == [
            b"-ERR",  # (E-MailRelay 2.6b's terse replies)
            b"-ERR",
            b"-ERR line too long",
            b"+OK user: me",
            b"+OK",
            b"-ERR",
            b"+OK 1 24",
        ]
        s.close()


# ---------------------------------------------------------------------- TLS


def test_stls_then_login(tmp_path: Path) -> None:
    with pop_harness(tmp_path, tls_context=server_tls_context(tmp_path)) as h:
        h.put(BODY20)
        p = h.client()
        assert "STLS" in p.capa()
        assert p.stls(no_verify_context()) == b"+OK"
        assert "STLS" in p.capa()  # as E-MailRelay 2.6b (its second STLS is refused)
        assert p.user("me") == b"+OK user: me"  # in step: nothing was sent after the handshake
        p.pass_("secret")
        assert p.stat() == (1, 20)
        assert p.retr(1)[1] == [b"Subject: test", b"abc"]
        p.quit()
        log = h.wait_log("pop connection closed")
    assert re.search(r"tls protocol established with 127\.0\.0\.1:\d+ protocol TLSv1\.[23] cipher ", log)


def test_stls_discards_injected_plaintext(tmp_path: Path) -> None:
    with pop_harness(tmp_path, tls_context=server_tls_context(tmp_path)) as h:
        s = socket.create_connection(("127.0.0.1", h.port))
        recv_until(s, b"\r\n")
        s.sendall(b"STLS\r\nUSER injected\r\n")
        assert recv_until(s, b"\r\n") == b"+OK\r\n"
        t = no_verify_context().wrap_socket(s)
        t.sendall(b"NOOP\r\n")
        assert recv_until(t, b"\r\n") == b"-ERR\r\n"  # not authenticated: not "+OK user: injected"
        t.sendall(b"QUIT\r\n")
        recv_until(t, b"\r\n")
        t.close()
        log = h.wait_log("pop connection closed")
    assert "injected" not in log


def test_tls_error_is_logged(tmp_path: Path) -> None:
    with pop_harness(tmp_path, tls_context=server_tls_context(tmp_path)) as h:
        s = socket.create_connection(("127.0.0.1", h.port))
        recv_until(s, b"\r\n")
        s.sendall(b"STLS\r\n")
        recv_until(s, b"\r\n")
        s.sendall(b"this is not a tls client hello\r\n" * 4)
        time.sleep(0.3)
        s.close()
        h.wait_log("tls: tls error: SSL_accept(): [error:")
        h.wait_idle()


def test_tls_required(tmp_path: Path) -> None:
    with pop_harness(tmp_path, tls_context=server_tls_context(tmp_path), tls_required=True) as h:
        p = h.client()
        with pytest.raises(poplib.error_proto, match="STLS"):
            p.user("me")
        p.stls(no_verify_context())
        p.user("me")
        assert p.pass_("secret") == b"+OK"
        p.quit()


def test_implicit_tls(tmp_path: Path) -> None:
    with pop_harness(tmp_path, tls_context=server_tls_context(tmp_path), implicit_tls=True) as h:
        h.put()
        p = poplib.POP3_SSL("127.0.0.1", h.port, context=no_verify_context(), timeout=10)
        assert "STLS" not in p.capa()
        p.user("me")
        p.pass_("secret")
        assert p.stat()[0] == 1
        p.quit()


# ------------------------------------------------------------------- deleting


def test_dele_then_quit_removes_both_files(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        keep, gone = h.put(b"keep\r\n"), h.put(b"gone\r\n")
        p = h.login()
        p.dele(2)
        assert h.files() == {f"{keep}.content", f"{keep}.envelope", f"{gone}.content", f"{gone}.envelope"}
        p.quit()
        h.wait_idle()
        assert h.files() == {f"{keep}.content", f"{keep}.envelope"}


def test_rset_unmarks(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        h.put()
        p = h.login()
        p.dele(1)
        assert p.stat() == (0, 0)
        p.rset()
        p.quit()
        h.wait_idle()
        assert len(h.files()) == 2


def test_dele_then_dropped_connection_removes_nothing(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        h.put()
        p = h.login()
        p.dele(1)
        p.close()  # no QUIT
        h.wait_log("pop connection closed: peer disconnected")
        h.wait_idle()
        assert len(h.files()) == 2
        p = h.login()  # the lock was released
        assert p.stat()[0] == 1
        p.quit()


def test_idle_timeout_deletes_nothing(tmp_path: Path) -> None:
    with pop_harness(tmp_path, idle_timeout=0.5) as h:
        h.put()
        p = h.login()
        p.dele(1)
        time.sleep(1.2)
        with pytest.raises((poplib.error_proto, EOFError, OSError)):
            p.quit()
        h.wait_log("pop connection closed: idle timeout: no activity after")
        h.wait_idle()
        assert len(h.files()) == 2


def test_pop_no_delete(tmp_path: Path) -> None:
    with pop_harness(tmp_path, no_delete=True) as h:
        h.put()
        p = h.login()
        assert p.dele(1).startswith(b"+OK")
        assert p.quit() == b"+OK signing off"
        h.wait_idle()
        assert len(h.files()) == 2
        assert "--pop-no-delete" in h.log_text()


# ------------------------------------------------------------------ by name


def test_pop_by_name_users_see_only_their_own(tmp_path: Path) -> None:
    with pop_harness(tmp_path, by_name=True) as h:
        for user in ("alice", "bob"):
            (h.spool / user).mkdir()
        main = h.put(b"Subject: main\r\n\r\nfor forwarding\r\n")
        shared = h.put(b"Subject: shared\r\n\r\nto both\r\n")
        # copy:pop: the envelope goes to every sub-directory, the content stays in the main one
        copy_to_directories(
            h.store, shared, State.READY, h.spool, ["alice", "bob"], envelope_only=True, delete_original=True
        )
        alice_own = h.put(b"Subject: alice only\r\n\r\nhi\r\n")
        copy_to_directories(h.store, alice_own, State.READY, h.spool, ["alice"], delete_original=True)
        assert h.files() == {f"{main}.content", f"{main}.envelope", f"{shared}.content"}

        p = h.login("alice", "pw")
        assert [line.split()[1] for line in p.uidl()[1]] == [
            f"{shared}.content".encode(),
            f"{alice_own}.content".encode(),
        ]
        subjects = {p.top(i, 0)[1][0] for i in range(1, p.stat()[0] + 1)}
        assert subjects == {b"Subject: shared", b"Subject: alice only"}
        for i in range(1, p.stat()[0] + 1):
            p.dele(i)
        p.quit()
        h.wait_idle()
        assert h.files("alice") == set()
        assert f"{shared}.content" in h.files(), "bob still needs the shared content"

        p = h.login("bob", "pw2")
        assert [p.top(1, 0)[1][0]] == [b"Subject: shared"] and p.stat()[0] == 1
        p.dele(1)
        p.quit()
        h.wait_idle()
        assert h.files("bob") == set()
        assert h.files() == {f"{main}.content", f"{main}.envelope"}

        p = h.client()  # "me" has no sub-directory: it is made, as upstream makes it
        p.user("me")
        p.pass_("secret")
        assert p.stat() == (0, 0)
        p.quit()
        assert (h.spool / "me").is_dir()
    assert "created pop-by-name sub-directory [me]" in h.log_text()


@pytest.mark.parametrize(
    ("xtext", "name"),
    [
        ("..", ".."),
        ("../x", "../x"),
        ("/etc", "/etc"),
        ("a/b", "a/b"),
        ("a+00", "a\x00"),
        ("link", "link"),
        (".hidden", ".hidden"),
        ("file", "file"),
    ],
)
def test_pop_by_name_rejects_unsafe_maildrops(tmp_path: Path, xtext: str, name: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with pop_harness(tmp_path, secrets=f"server plain {xtext} pw\n", by_name=True) as h:
        (h.spool / "link").symlink_to(outside)
        (h.spool / ".hidden").mkdir()
        (h.spool / "a").mkdir()
        (h.spool / "a" / "b").mkdir()
        (h.spool / "file").write_bytes(b"")
        SpoolStore(outside, fsync=False).store_message(ENV, b"secret\r\n")
        p = h.client()
        p.user(name)
        with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/PERM\] cannot open the maildrop"):
            p.pass_("pw")
        p.quit()
        log = h.wait_log("pop connection closed")
    assert re.search(r"warning: pop: cannot open the maildrop for \[", log)
    assert not (outside / POP_LOCK_NAME).exists()


# ------------------------------------------------------------------ locking


def test_second_session_gets_in_use(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        h.put()
        first = h.login()
        second = h.client()
        second.user("alice")  # another user, same (main) maildrop
        with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\] maildrop already locked"):
            second.pass_("pw")
        second.quit()
        first.quit()
        h.wait_idle()
        third = h.login("alice", "pw")
        assert third.stat()[0] == 1
        third.quit()


def test_in_use_across_processes(tmp_path: Path) -> None:
    with pop_harness(tmp_path, by_name=True) as h:
        (h.spool / "alice").mkdir()
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl,sys,time\n"
                f"f=open({str(h.spool / 'alice' / POP_LOCK_NAME)!r},'a')\n"
                "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()\n",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            p = h.client()
            p.user("alice")
            with pytest.raises(poplib.error_proto, match=r"IN-USE"):
                p.pass_("pw")
            p.quit()
            bob_dir = h.spool / "bob"
            bob_dir.mkdir()
            p = h.login("bob", "pw2")  # other maildrops are not affected
            p.quit()
        finally:
            holder.communicate("", timeout=10)
        p = h.login("alice", "pw")
        p.quit()


# ---------------------------------------------------------- POP and forwarding


def test_claimed_message_is_not_listed(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        claimed, free = h.put(b"claimed\r\n"), h.put(b"free\r\n")
        claim = h.store.claim(claimed)
        assert claim is not None
        p = h.login()
        assert p.uidl()[1] == [f"1 {free}.content".encode()]
        p.dele(1)
        p.quit()
        h.wait_idle()
        assert h.files() == {f"{claimed}.content", f"{claimed}.envelope.busy"}
        claim.release()


def test_listed_then_claimed_is_not_deleted_at_quit(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        mid = h.put(b"Subject: race\r\n\r\nbody\r\n")
        p = h.login()
        assert p.stat()[0] == 1
        claim = h.store.claim(mid)  # a forwarder wins the message after the POP login
        assert claim is not None
        assert p.retr(1)[1][0] == b"Subject: race"  # the content is still there to read
        p.dele(1)
        with pytest.raises(poplib.error_proto, match="some deleted messages not removed"):
            p.quit()
        h.wait_idle()
        assert h.files() == {f"{mid}.content", f"{mid}.envelope.busy"}
        assert "not deleting" in h.log_text()
        claim.remove()  # the forwarder finishes: exactly one owner removed it
        assert h.files() == set()


def test_message_forwarded_after_listing_is_gone_quietly(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        mid = h.put()
        p = h.login()
        claim = h.store.claim(mid)
        assert claim is not None
        claim.remove()
        with pytest.raises(poplib.error_proto, match="no longer available"):
            p.retr(1)
        p.dele(1)
        assert p.quit() == b"+OK signing off"


# ------------------------------------------------------------------ big messages


def test_100mb_message_streams_with_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    line = b"x" * 78 + b"\r\n"
    dot_line = b".starts with a dot" + b"y" * 60 + b"\r\n"
    block = (line * 99 + dot_line) * 100  # 10000 lines, 100 dot-stuffed
    repeats = 100 * 1024 * 1024 // len(block) + 1
    with pop_harness(tmp_path) as h:
        msg = h.store.create()
        for _ in range(repeats):
            msg.write(block)
        msg.write_envelope(ENV)
        msg.commit()
        size = len(block) * repeats
        assert size >= 100 * 1024 * 1024
        s = socket.create_connection(("127.0.0.1", h.port))
        recv_until(s, b"\r\n")
        s.sendall(b"USER me\r\nPASS secret\r\n")
        recv_until(s, b"+OK\r\n")
        tracemalloc.start()
        try:
            s.sendall(b"RETR 1\r\n")
            time.sleep(1.0)  # a slow reader: the server must stop at the transport's high-water mark
            header = f"+OK {size} octets\r\n".encode()
            expected = len(header) + size + 100 * repeats + 3
            received = 0
            tail = b""
            s.settimeout(30)
            while received < expected:
                chunk = s.recv(1024 * 1024)
                if not chunk:
                    break
                received += len(chunk)
                tail = (tail + chunk)[-256:]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert received == expected
        assert tail.endswith(dot_line.replace(b".", b"..", 1) + b".\r\n")
        assert peak < 24 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB"
        s.sendall(b"QUIT\r\n")
        assert recv_until(s, b"\r\n") == b"+OK signing off\r\n"
        s.close()
        log = h.wait_log("pop connection closed")
    assert f"[{10000 * repeats} line(s) of content]" in log


def test_top_of_a_large_message_reads_little(tmp_path: Path) -> None:
    with pop_harness(tmp_path, chunk_size=4096) as h:
        h.put(b"Subject: big\r\n\r\n" + b"line\r\n" * 2_000_000)
        p = h.login()
        t0 = time.monotonic()
        assert p.top(1, 2)[1] == [b"Subject: big", b"", b"line", b"line"]
        assert time.monotonic() - t0 < 2.0
        p.quit()


def test_pop_and_forwarder_race_never_both_remove(tmp_path: Path) -> None:
    import random
    import threading

    with pop_harness(tmp_path) as h:
        ids = {str(h.put(f"Subject: {i}\r\n\r\nx\r\n".encode())) for i in range(150)}
        forwarded: set[str] = set()
        stop = threading.Event()

        def forwarder() -> None:
            rng = random.Random(7)
            while not stop.is_set():
                ready = h.store.ready(ignore_backoff=True)
                if not ready:
                    time.sleep(0.005)
                    continue
                claim = h.store.claim(rng.choice(ready))
                if claim is not None:
                    time.sleep(0.002)
                    claim.remove()
                    forwarded.add(str(claim.id))

        thread = threading.Thread(target=forwarder)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while h.store.ready(ignore_backoff=True) and time.monotonic() < deadline:
                p = h.login()
                count = p.stat()[0]
                for n in range(1, count + 1):
                    p.dele(n)
                try:
                    p.quit()
                except poplib.error_proto as exc:
                    assert b"some deleted messages not removed" in exc.args[0]
                h.wait_idle()
        finally:
            stop.set()
            thread.join()
        log = h.log_text()
    popped = set(re.findall(r"pop: deleted \[(emailrelay\.[0-9.]+)\]", log))
    assert not popped & forwarded, "a message was removed by both"
    assert popped | forwarded == ids
    assert "pop session error" not in log
    assert h.files() == set()
