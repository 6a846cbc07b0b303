"""Helpers for forwarding tests: spool filling and inspection, ``--as-client`` runs, Postfix's smtp-sink.

What it is for: the forwarding tests (``tests/*/test_forward_*.py``) put
messages into a spool (through the real store API, ``emailrelay-submit`` or
hand-written files in upstream's format), run ``emailrelay --as-client`` as
a subprocess, and then look at which state every message is in.

Guarantees: nothing here kills by name; :class:`PostfixSink` stops only the
process it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from emailrelay.spool.envelope import Envelope
from emailrelay.spool.store import SpoolStore
from tests.support.relay import free_port, program, wait_for_port

_SEQ = iter(range(1, 1_000_000))


def fresh_id() -> str:
    """A message id no other writer uses: our pid, now, and a counter starting high."""
    return f"emailrelay.{os.getpid()}.{int(time.time())}.{900000 + next(_SEQ)}"


def write_raw(spool: Path, envelope: bytes, content: bytes, *, mid: str | None = None) -> str:
    """Put a hand-written message into ``spool`` the way a writer must: content, ``.new``, rename."""
    mid = mid or fresh_id()
    (spool / f"{mid}.content").write_bytes(content)
    new = spool / f"{mid}.envelope.new"
    new.write_bytes(envelope)
    new.rename(spool / f"{mid}.envelope")
    return mid


def envelope_text(
    from_address: str,
    remote: list[str],
    local: list[str] | tuple[str, ...] = (),
    *,
    forward_to_address: str = "",
    content: str = "unknown",
) -> bytes:
    """An envelope written by hand, field by field, in upstream's ``#2821.8`` format."""
    lines = [
        "X-MailRelay-Format: #2821.8",
        f"X-MailRelay-Content: {content}",
        f"X-MailRelay-From: {from_address}",
        f"X-MailRelay-ToCount: {len(remote) + len(local)}",
        *(f"X-MailRelay-To-Local: {r}" for r in local),
        *(f"X-MailRelay-To-Remote: {r}" for r in remote),
        "X-MailRelay-Authentication: ",
        "X-MailRelay-Client: 127.0.0.1",
        "X-MailRelay-ClientCertificate: ",
        "X-MailRelay-MailFromAuthIn: ",
        "X-MailRelay-MailFromAuthOut: ",
        "X-MailRelay-ForwardTo: ",
        f"X-MailRelay-ForwardToAddress: {forward_to_address}",
        "X-MailRelay-ClientAccountSelector: ",
        "X-MailRelay-Utf8MailboxNames: 0",
        "X-MailRelay-End: 1",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def simple_content(message_id: str, body: str = "hello") -> bytes:
    return (
        f"From: sender@example.com\r\nTo: rcpt@example.net\r\nSubject: test {message_id}\r\n"
        f"Message-ID: <{message_id}>\r\n\r\n{body}\r\n"
    ).encode()


def fill_spool(spool: Path, count: int, *, prefix: str = "m", rcpt: str = "rcpt@example.net") -> list[str]:
    """``count`` messages through the store API (no fsync: speed); returns their Message-IDs."""
    store = SpoolStore(spool, fsync=False)
    ids = []
    for i in range(count):
        msgid = f"{prefix}{i}.{os.getpid()}@test.example"
        store.store_message(Envelope("sender@example.com", to_remote=(rcpt,)), simple_content(msgid))
        ids.append(f"<{msgid}>")
    return ids


def printed_envelope(stdout: bytes | str) -> Path:
    """The envelope of the message whose content path ``emailrelay-submit --verbose`` printed
    (the first line; upstream's program prints the content file's path)."""
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    content = Path(text.split("\n", 1)[0].strip())
    assert content.name.endswith(".content"), text
    return content.with_name(content.name.removesuffix(".content") + ".envelope")


def states(spool: Path) -> Counter[str]:
    """How many files of each kind: ``content``, ``envelope``, ``busy``, ``bad``, ``new``, ``other``.
    The store's deferral records (``.<id>.deferral``: why a message waits) are not counted."""
    out: Counter[str] = Counter()
    for p in spool.iterdir():
        if not p.is_file():
            continue
        name = p.name
        if name.startswith(".emailrelay.") and name.endswith(".deferral"):
            continue
        if name.endswith(".content"):
            out["content"] += 1
        elif name.endswith(".envelope"):
            out["envelope"] += 1
        elif name.endswith(".envelope.busy"):
            out["busy"] += 1
        elif name.endswith(".envelope.bad"):
            out["bad"] += 1
        elif name.endswith(".envelope.new"):
            out["new"] += 1
        else:
            out["other"] += 1
    return out


def files(spool: Path, suffix: str) -> list[Path]:
    return sorted(p for p in spool.iterdir() if p.name.endswith(suffix))


def bus_connections(spool: Path) -> tuple[int, int]:
    """(publishers, subscribers) connected to the supervised relay's bus: accepted unix-socket
    connections on its two ipc files, from /proc/net/unix."""
    from emailrelay import rundir

    bus_in, bus_out = (rundir.path(rundir.default(spool), name) for name in (rundir.BUS_IN, rundir.BUS_OUT))
    paths = {bus_in: 0, bus_out: 0}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] in paths and fields[5] == "03":  # SS_CONNECTED
                paths[fields[7]] += 1
    return paths[bus_in], paths[bus_out]


def _notify_running(spool: Path) -> bool:
    """Whether the relay on ``spool`` runs a notify role (only with --poll)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if "emailrelay.cli.role" in cmd and "notify" in cmd and str(spool) in " ".join(cmd):
            return True
    return False


def wait_for_bus(
    spool: Path, publishers: int | None = None, subscribers: int = 2, timeout: float = 20.0
) -> bool:
    """Wait until the smtp, forward (and notify, when it runs) roles are connected to the bus (then let
    the subscriptions travel).  Until then the supervised relay can miss its own doorbells."""
    deadline = time.monotonic() + timeout
    if publishers is None:
        publishers = 3 if _notify_running(spool) else 2
    while time.monotonic() < deadline:
        pubs, subs = bus_connections(spool)
        if pubs >= publishers and subs >= subscribers:
            time.sleep(0.3)  # ZMTP handshake and SUBSCRIBE, on the roles' I/O threads
            return True
        time.sleep(0.05)
    return False


def run_client(
    spool: Path, hop: str, *extra: str, timeout: float = 60.0, user: str | None = "root"
) -> subprocess.CompletedProcess[str]:
    """``emailrelay --as-client HOP --spool-dir SPOOL [--user root] ...``; stderr holds the log."""
    args = [program(), "--as-client", hop, "--spool-dir", str(spool), *extra]
    if user is not None:
        args += ["--user", user]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )


def start_client(spool: Path, hop: str, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(
            [program(), "--as-client", hop, "--spool-dir", str(spool), "--user", "root", *extra],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


@dataclass
class PostfixSink:
    """Postfix's ``smtp-sink`` dumping every message to a file in ``dump_dir`` (one file per message)."""

    proc: subprocess.Popen[bytes]
    port: int
    dump_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dumps(self) -> list[Path]:
        return [p for p in self.dump_dir.iterdir() if p.is_file()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


@contextlib.contextmanager
def postfix_sink(backlog: int = 256) -> Iterator[PostfixSink]:
    """Run smtp-sink (as ``nobody`` when we are root) dumping into a fresh directory it can reach."""
    top = Path(tempfile.mkdtemp(prefix="smtp-sink-", dir="/tmp"))
    os.chmod(top, 0o755)
    dump_dir = top / "dump"
    dump_dir.mkdir()
    os.chmod(dump_dir, 0o777)
    port = free_port()
    args = [SMTP_SINK, "-d", f"{dump_dir}/%Y%m%d%H%M%S.", "-c"]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    args += [f"127.0.0.1:{port}", str(backlog)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sink = PostfixSink(proc, port, dump_dir)
    try:
        wait_for_port(port, timeout=10)
        yield sink
    finally:
        sink.stop()
        shutil.rmtree(top, ignore_errors=True)
