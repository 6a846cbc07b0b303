"""Reference guide 2.6, "IP addresses", "Socket activation", "Unix domain sockets", "SOCKS" and "SMTP
extensions": every printed ``--interface``/``--client-interface``/``--forward-to``/``--filter`` line run
against a real ``emailrelay`` (interface names and addresses adapted to the loopback: ``eth0`` -> ``lo``,
``192.168.0.1``/``fc00::1`` -> ``127.0.0.1``/``::1``, ``/run/...`` -> a temporary directory).

Clients are real: smtplib, swaks (over unix sockets too), raw sockets for greetings; the next hops
are :class:`FakeSmtp`, another ``emailrelay``, a SOCKS 4a proxy and a fake spamd.
"""

from __future__ import annotations

import contextlib
import shutil
import smtplib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_smtp import FakeSmtp
from tests.support.fake_spamd import GTUBE, FakeSpamd
from tests.support.relay import Relay, free_port, program, spool_files, wait_until
from tests.support.socks_server import socks_server

pytestmark = pytest.mark.timeout(60)


def launch(
    tmp_path: Path,
    *args: str,
    name: str = "relay",
    pass_fds: tuple[int, ...] = (),
    shell: str = "",
    supervised: bool = False,
) -> Relay:
    """``emailrelay --no-daemon --log --spool-dir S --user root <args>`` (no ``--interface``/``--port``
    of our own: the test gives the guide's); optionally through ``bash -c`` for descriptor redirections.
    ``--single-process`` unless ``supervised`` (the listening code is shared; test_network_relay runs
    both modes)."""
    spool = tmp_path / f"{name}-spool"
    spool.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / f"{name}.log"
    argv = [program(), "--no-daemon", "--log", "--verbose", "--no-syslog", "--spool-dir", str(spool), "--user", "root",
            *args, *([] if supervised else ["--single-process"])]  # fmt: skip
    if shell:
        argv = ["bash", "-c", 'exec "$@" ' + shell, "bash", *argv]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=pass_fds,
            cwd=tmp_path,
        )
    return Relay(proc, 0, spool, log_path, argv)


def greets(family: socket.AddressFamily, address: object, timeout: float = 3.0) -> bytes | None:
    """The first bytes from a server at ``address``, or None when nothing listens there."""
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        return s.recv(200)
    return None


def up(relay: Relay, family: socket.AddressFamily, address: object, timeout: float = 15.0) -> bytes:
    got: list[bytes] = []

    def ready() -> bool:
        if relay.proc.poll() is not None:
            raise AssertionError(f"relay exited {relay.proc.returncode}: {relay.log()}")
        g = greets(family, address)
        if g:
            got.append(g)
        return bool(g)

    assert wait_until(ready, timeout), relay.log()
    return got[-1]


V4, V6 = socket.AF_INET, socket.AF_INET6


def send(host: str, port: int, subject: str = "net") -> None:
    with smtplib.SMTP(host, port, timeout=20) as c:
        c.sendmail("a@example.com", ["b@example.net"], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A short directory for unix-domain socket paths (the 108-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="h4n-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ --interface


@pytest.mark.parametrize(
    ("interface", "v4", "v6"),
    [
        ([], True, True),
        (["--interface", "127.0.0.1"], True, False),
        (["--interface", "127.0.0.1,::1"], True, True),
        (["--interface", "127.0.0.1", "--interface", "::1"], True, True),
        (["--interface", "lo"], True, True),
        (["--interface", "lo-ipv4"], True, False),
        (["--interface", "lo-ipv6"], False, True),
        (["--interface", "0.0.0.0"], True, False),
        (["--interface", "::"], False, True),
    ],
    ids=[
        "default",
        "single",
        "comma-list",
        "repeated",
        "name",
        "name-ipv4",
        "name-ipv6",
        "ipv4-only",
        "ipv6-only",
    ],
)
def test_interface_forms(tmp_path: Path, interface: list[str], v4: bool, v6: bool) -> None:
    """No ``--interface`` (both wildcards); ``--interface 127.0.0.1``; ``--interface 192.168.0.1,127.0.0.1,fc00::1,::1`` and the repeated form;
    ``--interface eth0`` and ``eth0-ipv4``; ``--interface 0.0.0.0 # IPv4 only`` and ``--interface :: # IPv6 only``."""
    port = free_port()
    relay = launch(tmp_path, "--port", str(port), *interface)
    try:
        up(relay, V4 if v4 else V6, ("127.0.0.1", port) if v4 else ("::1", port))
        assert (greets(V4, ("127.0.0.1", port)) is not None) == v4
        assert (greets(V6, ("::1", port)) is not None) == v6
        if v4:
            send("127.0.0.1", port, "v4")
        if v6:
            send("::1", port, "v6")
        assert len(spool_files(relay.spool, ".envelope")) == v4 + v6
    finally:
        relay.stop()


@pytest.mark.parametrize(
    "form",
    [
        ["--interface", "smtp=127.0.0.1", "--interface", "pop=::1", "--interface", "admin=::1"],
        ["--interface", "smtp=lo-ipv4,pop=lo-ipv6,admin=lo-ipv6"],
    ],
    ids=["separate", "names-in-one"],
)
def test_interface_prefixes(tmp_path: Path, form: list[str]) -> None:
    """``--interface smtp=192.168.0.1 --interface pop=127.0.0.1 --interface admin=127.0.0.1`` and
    ``--interface smtp=eth0-ipv4,pop=eth1-ipv6``: each address only for its own server."""
    smtp, pop, admin = free_port(), free_port("::1"), free_port("::1")
    secrets = tmp_path / "pop.auth"
    secrets.write_text("server plain alice pw\n")
    relay = launch(
        tmp_path, "--port", str(smtp), "--pop", "--pop-port", str(pop), f"--pop-auth={secrets}", "--admin", str(admin),
        *form, supervised=True,
    )  # fmt: skip
    try:
        assert up(relay, V4, ("127.0.0.1", smtp)).startswith(b"220 ")
        assert up(relay, V6, ("::1", pop)).startswith(b"+OK")
        with socket.create_connection(("::1", admin), timeout=5) as s:
            s.sendall(b"pid\r\n")
            assert s.recv(200).startswith(str(relay.pid).encode())
        assert greets(V6, ("::1", smtp)) is None
        assert greets(V4, ("127.0.0.1", pop)) is None and greets(V4, ("127.0.0.1", admin)) is None
    finally:
        relay.stop()


# ------------------------------------------------------------------ --client-interface


def as_client(tmp_path: Path, hop: str, *args: str) -> subprocess.CompletedProcess[str]:
    spool = tmp_path / "out"
    spool.mkdir(exist_ok=True)
    subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "a@example.com", "b@example.net"],
        input=b"Subject: out\r\n\r\nbody\r\n", capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    return subprocess.run(
        [program(), "--as-client", hop, *args, "--spool-dir", str(spool), "--log", "--no-syslog", "--user", "root",
         "--connection-timeout", "3"],
        capture_output=True, text=True, timeout=45, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_client_interface_binds_the_local_address(tmp_path: Path) -> None:
    """``--client-interface 192.168.0.1`` (here 127.0.0.1): the outgoing connection comes from that address."""
    with FakeSmtp() as hop:
        run = as_client(tmp_path, hop.address, "--client-interface", "127.0.0.1")
        assert run.returncode == 0, run.stdout + run.stderr
        assert hop.wait_for_messages(1, 10)
    assert spool_files(tmp_path / "out", ".envelope") == []
    # an address that is not ours cannot be bound: the forwarding fails and the message waits
    with FakeSmtp() as hop:
        run = as_client(tmp_path, hop.address, "--client-interface", "192.0.2.222")
        assert hop.messages == [] and run.returncode != 0
        assert "error: socket bind error: cannot assign requested address" in run.stderr  # upstream's words
    assert len(spool_files(tmp_path / "out", ".envelope")) == 1


@pytest.mark.parametrize(
    ("client_interface", "hop_host", "target", "works"),
    [
        ("0.0.0.0", "127.0.0.1", "127.0.0.1", True),
        ("::", "::1", "::1", True),
        ("::", "127.0.0.1", "127.0.0.1", False),
        ("0.0.0.0", "::1", "::1", False),
        ("0.0.0.0", "127.0.0.1", "localhost", True),
    ],
    ids=["ipv4", "ipv6", "ipv6-to-ipv4", "ipv4-to-ipv6", "name-ipv4"],
)
def test_client_interface_wildcards_choose_the_family(
    tmp_path: Path, client_interface: str, hop_host: str, target: str, works: bool
) -> None:
    """``--client-interface 0.0.0.0 # IPv4 only`` / ``--client-interface :: # IPv6 only`` and
    ``--as-client ipv4or6.example.com:25 --client-interface 0.0.0.0`` (the name here is ``localhost``)."""
    with FakeSmtp(host=hop_host) as hop:
        where = f"{target}:{hop.port}" if ":" not in target else f"{target}.{hop.port}"
        run = as_client(tmp_path, where, "--client-interface", client_interface)
        assert hop.wait_for_messages(1, 5 if works else 1) == works, run.stdout + run.stderr
        assert (run.returncode == 0) == works
        assert works or "error: invalid address family" in run.stderr, run.stderr  # E-MailRelay 2.6b's words


# ------------------------------------------------------------------ socket activation


def test_socket_activation_with_the_guides_descriptor_numbers(tmp_path: Path) -> None:
    """``--interface=fd#4`` and ``--interface=smtp=fd#5,pop=fd#6``: listening sockets handed over by the
    service manager at those descriptor numbers (a shell redirection puts them there)."""
    a, b, c = (socket.socket(V4, socket.SOCK_STREAM) for _ in range(3))
    try:
        for s in (a, b, c):
            s.bind(("127.0.0.1", 0))
            s.listen(8)
        secrets = tmp_path / "pop.auth"
        secrets.write_text("server plain alice pw\n")
        one = launch(tmp_path, "--interface=fd#4", "--port=0", name="one", pass_fds=(a.fileno(),),
                     shell=f"4<&{a.fileno()}")  # fmt: skip
        two = launch(
            tmp_path, "--interface=smtp=fd#5,pop=fd#6", "--port=0", "--pop", "--pop-port=0", f"--pop-auth={secrets}",
            name="two", pass_fds=(b.fileno(), c.fileno()), shell=f"5<&{b.fileno()} 6<&{c.fileno()}",
        )  # fmt: skip
        try:
            ports = [s.getsockname()[1] for s in (a, b, c)]
            for s in (a, b, c):
                s.close()  # the relays hold their own copies now
            assert up(one, V4, ("127.0.0.1", ports[0])).startswith(b"220 ")
            assert up(two, V4, ("127.0.0.1", ports[1])).startswith(b"220 ")
            assert up(two, V4, ("127.0.0.1", ports[2])).startswith(b"+OK")
            send("127.0.0.1", ports[0], "activated")
            assert len(spool_files(one.spool, ".envelope")) == 1
        finally:
            one.stop()
            two.stop()
    finally:
        for s in (a, b, c):
            s.close()


# ------------------------------------------------------------------ unix-domain sockets


def swaks_unix(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--socket", str(path), "--from", "a@example.com", "--to", "b@example.net", "--timeout", "10"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_unix_domain_listening_sockets(tmp_path: Path) -> None:
    """``--interface=/run/smtp.s --port=0`` and
    ``--interface=smtp=/run/smtp.s --port=0 --interface=pop=/run/pop.s --pop --pop-port=0``."""
    secrets = tmp_path / "pop.auth"
    secrets.write_text("server plain alice pw\n")
    with short_dir() as d:
        one = launch(tmp_path, f"--interface={d}/smtp.s", "--port=0", name="one")
        two = launch(
            tmp_path, f"--interface=smtp={d}/smtp2.s", "--port=0", f"--interface=pop={d}/pop.s", "--pop",
            "--pop-port=0", f"--pop-auth={secrets}", name="two",
        )  # fmt: skip
        try:
            assert up(one, socket.AF_UNIX, str(d / "smtp.s")).startswith(b"220 ")
            assert up(two, socket.AF_UNIX, str(d / "smtp2.s")).startswith(b"220 ")
            assert up(two, socket.AF_UNIX, str(d / "pop.s")).startswith(b"+OK")
            done = swaks_unix(d / "smtp.s")
            assert done.returncode == 0, done.stdout
            assert len(spool_files(one.spool, ".envelope")) == 1
        finally:
            one.stop()
            two.stop()


def test_forward_to_a_unix_domain_address(tmp_path: Path) -> None:
    """``--forward-to=/run/smtp.s``: the next hop is another relay listening on a unix-domain socket."""
    with short_dir() as d:
        hop = launch(tmp_path, f"--interface={d}/smtp.s", "--port=0", name="hop")
        port = free_port()
        relay = launch(tmp_path, "--port", str(port), "--interface", "127.0.0.1", f"--forward-to={d}/smtp.s",
                       "--poll=1", name="front")  # fmt: skip
        try:
            up(hop, socket.AF_UNIX, str(d / "smtp.s"))
            up(relay, V4, ("127.0.0.1", port))
            send("127.0.0.1", port, "via-unix")
            assert wait_until(lambda: len(spool_files(hop.spool, ".envelope")) == 1, 20), relay.log()
            assert wait_until(lambda: spool_files(relay.spool, ".envelope") == [], 10)
        finally:
            relay.stop()
            hop.stop()


@pytest.mark.parametrize("kind", ["spam", "spam-edit"])
def test_spam_filters_over_a_unix_domain_socket(tmp_path: Path, kind: str) -> None:
    """``--filter=spam:/run/spamd.s`` and ``--filter=spam-edit:/run/spamd.s``: spamd on a unix socket."""
    with short_dir() as d:
        spamd = FakeSpamd(str(d / "spamd.s")).start()
        port = free_port()
        relay = launch(
            tmp_path, "--port", str(port), "--interface", "127.0.0.1", f"--filter={kind}:{d}/spamd.s"
        )
        try:
            up(relay, V4, ("127.0.0.1", port))
            send("127.0.0.1", port, "ham")
            refused = pytest.raises(smtplib.SMTPDataError) if kind == "spam" else contextlib.nullcontext()
            with refused, smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
                c.sendmail("a@example.com", ["b@example.net"], b"Subject: spam\r\n\r\n" + GTUBE + b"\r\n")
            assert len(spamd.requests) == 2
            stored = [p.read_bytes() for p in spool_files(relay.spool, ".content")]
            assert len(stored) == (1 if kind == "spam" else 2)
            if kind == "spam-edit":
                assert all(b"X-Spam-" in c for c in stored)
        finally:
            relay.stop()
            spamd.stop()


# ------------------------------------------------------------------ SOCKS


def test_forward_through_a_socks4a_proxy(tmp_path: Path) -> None:
    """``emailrelay --forward-to example.com:smtp@localhost:9050 ...``: the name goes to the proxy
    unresolved (SOCKS 4a) and the proxy makes the connection."""
    with FakeSmtp() as hop, socks_server() as proxy:
        port = free_port()
        relay = launch(tmp_path, "--port", str(port), "--interface", "127.0.0.1",
                       "--forward-to", f"localhost:{hop.port}@localhost:{proxy.port}", "--poll=1")  # fmt: skip
        try:
            up(relay, V4, ("127.0.0.1", port))
            send("127.0.0.1", port, "socks")
            assert hop.wait_for_messages(1, 20), relay.log()
        finally:
            relay.stop()
        assert ("4a", "localhost", hop.port) in [tuple(r) for r in proxy.requests], proxy.requests


# ------------------------------------------------------------------ SMTP extensions


@pytest.mark.parametrize(
    ("hop_has_it", "client_config"),
    [(True, []), (False, []), (False, ["--client-smtp-config=smtputf8strict"])],
    ids=["next-hop-supports", "next-hop-lacks", "next-hop-lacks-strict"],
)
def test_smtputf8_and_chunking_through_the_relay(
    tmp_path: Path, hop_has_it: bool, client_config: list[str]
) -> None:
    """``--server-smtp-config=chunking,smtputf8``: advertised and used by the submitting client; the
    message goes to a next hop with SMTPUTF8 using it; to one without, it fails to be forwarded (the
    guide's risk), with or without ``--client-smtp-config=smtputf8strict``, as E-MailRelay 2.6b."""
    extensions = (
        ("PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING") if hop_has_it else ("PIPELINING", "8BITMIME")
    )
    with FakeSmtp(extensions=extensions) as hop:
        port = free_port()
        relay = launch(
            tmp_path, "--port", str(port), "--interface", "127.0.0.1", "--server-smtp-config=chunking,smtputf8",
            *client_config, "--forward-to", hop.address, "--poll=1",
        )  # fmt: skip
        try:
            up(relay, V4, ("127.0.0.1", port))
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
                c.ehlo()
                assert c.has_extn("chunking") and c.has_extn("smtputf8")
                c.sendmail(
                    "j\u00f6rg@example.com", ["\u00e5sa@example.net"], "Subject: utf8\r\n\r\nb\u00f6dy\r\n".encode(),
                    mail_options=["SMTPUTF8"],
                )  # fmt: skip
            if hop_has_it:
                assert hop.wait_for_messages(1, 20), relay.log()
                assert hop.messages[0].mail_from == "j\u00f6rg@example.com"
                assert ("SMTPUTF8" in hop.commands_named("MAIL")[0]) == hop_has_it
            else:
                assert wait_until(lambda: hop.connections >= 1 and not spool_files(relay.spool, ".busy"), 20)
                assert wait_until(lambda: hop.commands_named("QUIT") != [] or hop.open_connections == 0, 10)
                assert hop.messages == [] and hop.commands_named("MAIL") == [], hop.commands
                assert len(spool_files(relay.spool, ".envelope")) + len(spool_files(relay.spool, ".bad")) == 1
        finally:
            relay.stop()
