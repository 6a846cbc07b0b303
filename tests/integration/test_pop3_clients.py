"""Real POP clients (mpop, fetchmail) against a live PopService."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from emailrelay.spool.delivery import copy_to_directories
from emailrelay.spool.names import State
from tests.support.pop3 import PopHarness, pop_harness, server_tls_context

MPOP = shutil.which("mpop")
FETCHMAIL = shutil.which("fetchmail")


def client_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home), LC_ALL="C")


def run(argv: list[str], tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, env=client_env(tmp_path), timeout=timeout)
    return r


def mpop(
    h: PopHarness, tmp_path: Path, user: str, password: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run(
        [
            str(MPOP),
            "--file=/dev/null",
            "--host=127.0.0.1",
            f"--port={h.port}",
            f"--user={user}",
            f"--passwordeval=echo {password}",
            f"--uidls-file={tmp_path / 'uidls'}",
            *extra,
        ],
        tmp_path,
    )


def messages(h: PopHarness, count: int, sub: str | None = None, tag: str = "m") -> list[str]:
    ids = []
    for i in range(count):
        mid = h.put(f"Subject: {tag}{i}\r\nFrom: a@example.com\r\n\r\n.dotted {i}\r\nbody {i}\r\n".encode())
        if sub is not None:
            copy_to_directories(h.store, mid, State.READY, h.spool, [sub], delete_original=True)
        ids.append(str(mid))
    return ids


@pytest.mark.skipif(MPOP is None, reason="mpop not installed")
def test_mpop_by_name_into_mbox_deletes_only_alices(tmp_path: Path) -> None:
    with pop_harness(tmp_path, by_name=True) as h:
        (h.spool / "alice").mkdir()
        (h.spool / "bob").mkdir()
        messages(h, 3, "alice", "alice")
        bobs = messages(h, 1, "bob", "bob")
        mbox = tmp_path / "alice.mbox"
        r = mpop(
            h, tmp_path, "alice", "pw", "--auth=user", "--tls=off", f"--delivery=mbox,{mbox}", "--keep=off"
        )
        assert r.returncode == 0, r.stderr + r.stdout
        text = mbox.read_text()
        assert text.count("\nSubject: alice") == 3
        assert ".dotted 0\nbody 0" in text  # unstuffed by the client
        assert "bob" not in text
        h.wait_idle()
        assert h.files("alice") == set()
        assert h.files("bob") == {f"{bobs[0]}.content", f"{bobs[0]}.envelope"}


@pytest.mark.skipif(MPOP is None, reason="mpop not installed")
@pytest.mark.parametrize("mechanism", ["user", "apop", "cram-md5", "plain", "login"])
def test_mpop_stls_mechanisms_keep(tmp_path: Path, mechanism: str) -> None:
    with pop_harness(tmp_path, tls_context=server_tls_context(tmp_path)) as h:
        ids = messages(h, 2)
        out = tmp_path / "mbox"
        args = ["--tls=on", "--tls-starttls=on", "--tls-certcheck=off", f"--delivery=mbox,{out}"]
        r = mpop(h, tmp_path, "me", "secret", f"--auth={mechanism}", *args, "--keep=on")
        assert r.returncode == 0, r.stderr + r.stdout
        assert out.read_text().count("\nSubject: m") == 2
        # --keep with UIDLs: a second run finds nothing new, the spool is untouched
        r = mpop(h, tmp_path, "me", "secret", f"--auth={mechanism}", *args, "--keep=on", "--only-new=on")
        assert r.returncode == 0, r.stderr + r.stdout
        assert out.read_text().count("\nSubject: m") == 2
        h.wait_idle()
        assert h.files() == {f"{i}.{kind}" for i in ids for kind in ("content", "envelope")}
        log = h.log_text()
    assert "tls protocol established with 127.0.0.1:" in log
    assert f"mechanism [{'plain' if mechanism == 'user' else mechanism}]" in log


@pytest.mark.skipif(MPOP is None, reason="mpop not installed")
def test_mpop_wrong_password_fails(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        messages(h, 1)
        r = mpop(h, tmp_path, "me", "nope", "--auth=user", "--tls=off", f"--delivery=mbox,{tmp_path / 'x'}")
        assert r.returncode != 0
        assert len(h.files()) == 2


def fetchmailrc(tmp_path: Path, port: int, user: str, password: str, out: Path, options: str = "") -> Path:
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no syslog\nset no bouncemail\n"
        f'poll 127.0.0.1 port {port} protocol pop3 uidl user "{user}" password "{password}" {options}\n'
        f'  mda "cat >> {out}"\n'
    )
    rc.chmod(0o600)
    return rc


def fetchmail(tmp_path: Path, rc: Path) -> subprocess.CompletedProcess[str]:
    return run(
        [str(FETCHMAIL), "-f", str(rc), "--nodetach", "--pidfile", str(tmp_path / "fm.pid"), "-v"], tmp_path
    )


@pytest.mark.skipif(FETCHMAIL is None, reason="fetchmail not installed")
def test_fetchmail_plain_retrieves_and_deletes(tmp_path: Path) -> None:
    with pop_harness(tmp_path) as h:
        messages(h, 3)
        out = tmp_path / "delivered"
        r = fetchmail(tmp_path, fetchmailrc(tmp_path, h.port, "me", "secret", out, "sslproto ''"))
        assert r.returncode == 0, r.stdout + r.stderr
        text = out.read_text()
        assert [f"Subject: m{i}" in text for i in range(3)] == [True] * 3
        assert ".dotted 2\nbody 2" in text
        h.wait_idle()
        assert h.files() == set()


@pytest.mark.skipif(FETCHMAIL is None, reason="fetchmail not installed")
def test_fetchmail_stls_keep_then_nothing_new(tmp_path: Path) -> None:
    with pop_harness(tmp_path, tls_context=server_tls_context(tmp_path), by_name=True) as h:
        (h.spool / "alice").mkdir()
        messages(h, 2, "alice")
        out = tmp_path / "delivered"
        rc = fetchmailrc(tmp_path, h.port, "alice", "pw", out, "keep sslproto 'auto' no sslcertck")
        r = fetchmail(tmp_path, rc)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "STLS" in r.stdout
        assert out.read_text().count("Subject: m") == 2
        r = fetchmail(tmp_path, rc)
        assert r.returncode == 1, r.stdout + r.stderr  # 1: no new mail
        assert out.read_text().count("Subject: m") == 2
        h.wait_idle()
        assert len(h.files("alice")) == 4
        assert "tls protocol established with 127.0.0.1:" in h.log_text()
