"""The production start: root, the default ``--user daemon``, supervised (docs/decisions.md, privileges).

What it is for: the relay started the way an operator starts it — as root,
without ``--user``, under circus, from the repository's venv (and once with
umask 000) — must work (admin ``roles``/``restart``/``workers``, the metrics
census) and must not let ``daemon`` (every filter runs as daemon) become
root through a socket or the run directory.  The spool lives in a 0755
directory under /tmp that daemon can reach (pytest's own directories are
0700).  Skipped when not root, or when daemon cannot read the checkout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import poplib
import re
import shutil
import smtplib
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from emailrelay.cli.supervisor import _prepare_run_dir
from emailrelay.errors import UsageError
from emailrelay.identity import directory_problem, lookup
from emailrelay.rundir import CIRCUS_DIR, ROOT_BASE, default
from emailrelay.services.metrics import ANNOUNCING_ROLES
from tests.support.certs import HAVE_OPENSSL, make_certs
from tests.support.dns_server import DnsServer, dns_server
from tests.support.relay import REPO, Relay, free_port, pid_alive, process_ids, program, shell_status
from tests.support.sink_counter import (
    PROMPT,
    AdminClient,
    CountingSink,
    content,
    poll,
    print_log,
    role_of,
    role_pids,
    run_dir,
    send_mail,
    supervised_relay,
    wait_for_roles,
)

USER = "daemon"  # the default --user
ROLES = {"bus": 1, "notify": 1, "forward": 1, "smtp": 1, "admin": 1, "metrics": 1}


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the production start is a start as root"
    try:
        who = lookup(USER)
    except KeyError:
        return f"no {USER!r} user on this machine"
    if shutil.which("runuser") is None:
        return "runuser is needed to act as daemon"
    problem = directory_problem(str(REPO / "emailrelay"), who)
    if problem is not None:
        return (
            f"the checkout {REPO} is not readable by {USER} ({problem}): clone it somewhere {USER} can read"
        )
    interpreter = os.path.dirname(os.path.realpath(sys.executable))  # the tests run clients as daemon
    if directory_problem(interpreter, who) is not None:
        return f"{USER} cannot run the venv's interpreter (in {interpreter}): make the venv from /usr/bin/python3"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@dataclass
class Production:
    relay: Relay
    base: Path  # 0755, root's: the spool, the pid file, the proof file an attack would write
    pid_file: Path
    admin_port: int
    metrics_port: int
    sink: CountingSink
    pop_port: int = 0  # with every feature (production_full)
    dns: DnsServer | None = None  # with every feature: what mx: asks


# every process of the relay records the modules it imports while its effective uid is not root: with an
# interpreter only root can read (a venv under /root), each of them would be "No module named ..."
_IMPORT_RECORDER = """
import os, sys

def _record(event, args):
    if event == "import" and args[0] not in sys.modules and os.geteuid() != 0:
        with open(os.path.join({records!r}, str(os.getpid())), "a") as f:
            f.write(args[0] + " " + " ".join(sys.argv[1:3]) + "\\n")

sys.addaudithook(_record)
"""


@contextlib.contextmanager
def _production(
    tmp_path_factory: pytest.TempPathFactory,
    umask: int,
    features: Callable[[Path, Production], list[str]] | None = None,
    roles: dict[str, int] = ROLES,
) -> Iterator[Production]:
    """A relay started as root with the default --user, supervised, under ``umask``; ``features``
    gives more relay options (made in the base directory, with the ports already chosen)."""
    base = Path(tempfile.mkdtemp(prefix="er-priv-", dir="/tmp"))
    os.chmod(base, 0o755)
    spool = base / "spool"
    spool.mkdir(mode=0o755)
    pid_file = base / "emailrelay.pid"
    (base / "imports").mkdir(mode=0o777)
    os.chmod(base / "imports", 0o1777)  # where daemon records what it imported
    (base / "hook").mkdir(mode=0o755)
    (base / "hook" / "sitecustomize.py").write_text(_IMPORT_RECORDER.format(records=str(base / "imports")))
    filter_script = base / "filter.sh"
    filter_script.write_text("#!/bin/sh\nexit 0\n")
    filter_script.chmod(0o755)
    try:
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(CountingSink())
            production = Production(None, base, pid_file, free_port(), free_port(), sink)  # type: ignore[arg-type]
            old_umask = os.umask(umask)
            try:
                options = [
                    "--forward-to", sink.address, "--poll", "60", "--admin", str(production.admin_port),
                    "--metrics", f"127.0.0.1:{production.metrics_port}", "--pid-file", str(pid_file),
                    *(features(base, production) if features else
                      ["--filter", str(filter_script), "--client-filter", str(filter_script)]),
                ]  # fmt: skip
                started = supervised_relay(
                    tmp_path_factory.mktemp("production"), *options, roles=roles, spool=spool, user=None,
                    env={"PYTHONPATH": os.pathsep.join(filter(None, [str(base / "hook"), os.environ.get("PYTHONPATH")]))},
                )  # fmt: skip
                production.relay = stack.enter_context(started)
            finally:
                os.umask(old_umask)
            yield production
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    """The usual umask (022): circus's endpoint would be root's 0755, out of daemon's reach."""
    with _production(tmp_path_factory, 0o022) as started:
        yield started


@pytest.fixture(scope="module")
def production_umask_000(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    """umask 000: every file created without an explicit mode is open to everyone."""
    with _production(tmp_path_factory, 0o000) as started:
        yield started


FULL_ROLES = {**ROLES, "pop": 1}
SECRET = ("me", "secret")


@pytest.fixture(scope="module")
def production_full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    """Every feature that imports something of its own: STARTTLS and AUTH (server and POP), client
    TLS, an executable filter and ``split:``, a client filter and ``mx:`` (dnspython, against a local
    DNS server), an address verifier, a DNSBL, POP, admin and metrics."""
    if not HAVE_OPENSSL:
        pytest.skip("openssl is needed for the test certificates")
    # mx: finds no MX for example.net, then its A record 0.0.0.0: the message goes to --forward-to
    with dns_server({"example.net": {"A": ["0.0.0.0"]}}) as server:

        def features(base: Path, production: Production) -> list[str]:
            certs = make_certs(base / "certs")
            secrets = base / "secrets"
            secrets.write_text(f"server plain {SECRET[0]} {SECRET[1]}\n")
            # root's alone, as an operator keeps them: the roles (daemon) read them as root, as
            # upstream does (they crashed at start with "Permission denied")
            secrets.chmod(0o600)
            certs.server_pem.chmod(0o600)
            verifier = base / "verifier.sh"
            verifier.write_text('#!/bin/sh\necho\necho "$1"\nexit 1\n')  # a valid remote address
            verifier.chmod(0o755)
            production.pop_port, production.dns = free_port(), server
            dns_address = f"127.0.0.1:{server.port}"
            return [
                "--server-tls", "--server-tls-certificate", str(certs.server_pem), "--server-auth", str(secrets),
                "--client-tls", "--pop", "--pop-port", str(production.pop_port), "--pop-auth", str(secrets),
                "--filter", f"{base / 'filter.sh'},split:", "--client-filter", f"{base / 'filter.sh'},mx:{dns_address}",
                "--address-verifier", str(verifier), "--dnsbl", f"bl.example,1,1000,{dns_address}", "--remote-clients",
            ]  # fmt: skip

        with _production(tmp_path_factory, 0o022, features, FULL_ROLES) as started:
            yield started


def as_daemon(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", USER, "--", *argv], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def test_the_pid_file_process_has_real_uid_root_and_effective_uid_daemon(production: Production) -> None:
    who = lookup(USER)
    pid = int(production.pid_file.read_text())
    assert pid == production.relay.pid
    uids, gids = process_ids(pid)
    assert (uids[0], uids[1]) == (0, who.uid), uids
    assert (gids[0], gids[1]) == (0, who.gid), gids
    roles = {child.pid: role_of(child) for child in psutil.Process(pid).children()}  # not their filters
    assert set(roles.values()) == set(ROLES), roles
    for role_pid, role in roles.items():  # every role, the bus too, runs as daemon when idle
        # (a role starting up may be taking root back for a moment)
        assert poll(lambda p=role_pid: process_ids(p)[0][1] == who.uid, 10), (role, process_ids(role_pid))


def test_a_stop_before_the_pid_file_appears_leaves_nothing_behind(scratch: Path) -> None:
    """The pid file is prepared as a temporary file and renamed into place only once the supervisor
    is --user: SIGTERM while it is still the temporary file (or just after the rename, when the
    start won the race) stops the relay with 143 and leaves nothing in the pid file's directory."""
    spool = scratch / "spool"
    spool.mkdir(mode=0o755)
    pid_dir = scratch / "pid"
    args = [program(), "--no-daemon", "--no-syslog", "--port", str(free_port()), "--interface", "127.0.0.1",
            "--spool-dir", str(spool), "--pid-file", str(pid_dir / "emailrelay.pid")]  # fmt: skip
    with open(scratch / "stderr", "wb") as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert poll(lambda: pid_dir.is_dir() and any(pid_dir.iterdir()), 30, interval=0.001)
        seen = sorted(p.name for p in pid_dir.iterdir())
        proc.terminate()
        assert shell_status(proc.wait(30)) == 143, (scratch / "stderr").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert sorted(p.name for p in pid_dir.iterdir()) == [], seen


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except FileNotFoundError:  # a spool file gone meanwhile
        return False


def _sockets(*tops: Path) -> list[Path]:
    found = []
    for top in tops:
        for directory, _, names in os.walk(top):
            found += [Path(directory, n) for n in names if _is_socket(Path(directory, n))]
    return sorted(set(found))


_RAW_CLIENT = """
import json, socket, sys
command = sys.argv[1]
for path in sys.argv[2:]:
    for line in (
        {"id": "1", "command": "add", "properties": {"name": "x", "cmd": command, "start": True}},
        {"action": "add", "cmd": command}, {"action": "restart", "role": command},
        {"action": "workers", "role": "sh", "count": 1, "cmd": command},
    ):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(path)
                s.sendall(json.dumps(line).encode() + b"\\n")
                print(path, s.recv(4096))
        except OSError as exc:
            print(path, exc)
"""


def test_no_socket_lets_daemon_make_the_supervisor_run_anything(production_umask_000: Production) -> None:
    """Started with umask 000: circus's endpoints are in a root-only directory, and the run
    directory is not writable by daemon; every socket daemon can find is tried."""
    production = production_umask_000
    spool = production.relay.spool
    rdir = run_dir(spool)
    sockets = _sockets(spool, rdir)
    assert any(p.name.endswith("ctl.ipc") for p in sockets), sockets  # the endpoint an attack would want
    proof = production.base / "proof"
    command = f"/bin/sh -c 'id > {proof}'"
    for path in sockets:
        # circusctl can hang in its blocking send when the peer refuses its ZeroMQ handshake (seen
        # on the bus's XSUB under load): a hang is a refused attempt too, so `timeout` kills it
        # (runuser's child would outlive a kill of runuser) and the proof below still decides
        attempt = as_daemon(
            "timeout", "-s", "KILL", "10",
            program("circusctl"), "--endpoint", f"ipc://{path}", "--timeout", "2", "add", "--start", "x", command,
        )  # fmt: skip
        assert attempt.returncode in (1, 137), (path, attempt)  # refused (or hung): never a success
    raw = as_daemon(sys.executable, "-c", _RAW_CLIENT, command, *map(str, sockets))
    assert len(raw.stdout.splitlines()) == 4 * len(sockets), raw  # every attempt was made, as daemon
    assert not poll(proof.exists, 3), proof.read_text()
    st = rdir.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022, oct(st.st_mode)
    circus = (rdir / CIRCUS_DIR).lstat()
    assert circus.st_uid == 0 and stat.S_IMODE(circus.st_mode) == 0o700, oct(circus.st_mode)
    planted = rdir / "planted"
    assert as_daemon("touch", str(planted)).returncode != 0 and not planted.exists()


def _role_starts(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^emailrelay_role_starts_total\{role="(\w+)"\} (\S+)$', text, re.M)
    }


def test_the_census_counts_every_role(production: Production) -> None:
    starts: dict[str, float] = {}

    def counted() -> bool:
        nonlocal starts
        starts = _role_starts(production.metrics_port)
        return all(starts.get(role, 0) >= 1 for role in ANNOUNCING_ROLES)

    assert poll(counted, 30, 0.5), starts


def test_admin_roles_restart_smtp_and_workers(production: Production) -> None:
    relay, sink = production.relay, production.sink
    with AdminClient(production.admin_port) as admin:
        roles = admin.cmd("roles", timeout=30).decode()
        for role in ROLES:
            assert re.search(rf"^{role}: active \(1 process\)", roles, re.M), roles
        old_smtp = role_pids(relay.pid)["smtp"]
        sent: list[str] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def sender() -> None:
            while not stop.is_set():
                mid = f"during-restart-{len(sent)}@test"
                try:
                    send_mail(relay.port, mid)
                except Exception as exc:  # any failure a client sees
                    errors.append(exc)
                    return
                sent.append(mid)

        thread = threading.Thread(target=sender)
        thread.start()
        try:
            assert poll(lambda: len(sent) >= 3, 20)
            assert admin.cmd("restart smtp", timeout=30) == b"OK\r\n" + PROMPT
            assert poll(lambda: (new := role_pids(relay.pid).get("smtp", [])) and new != old_smtp, 30)
            count = len(sent)
            assert poll(lambda: len(sent) >= count + 3 or bool(errors), 30)
        finally:
            stop.set()
            thread.join(60)
        if errors:  # the relay's side of it, for the record (pytest shows what a failing test printed)
            print_log(relay, 120)
        assert not errors, errors
        assert not any(pid_alive(p) for p in old_smtp)
        assert sink.wait_for(sent, 60), f"lost: {set(sent) - set(sink.ids())}"
        assert admin.cmd("workers forward 2", timeout=30) == b"OK\r\n" + PROMPT
        wait_for_roles(relay.pid, {"forward": 2}, 30)
        assert admin.cmd("workers forward 65", timeout=30).startswith(b"error: ")
        assert admin.cmd("restart sh", timeout=30).startswith(b"error: ")


# ---- the run directory's rules, without a relay ------------------------------------------------
@pytest.fixture
def scratch() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="er-run-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_run_directory_is_roots_whatever_the_umask(scratch: Path) -> None:
    who = lookup(USER)
    old = os.umask(0)
    try:
        _prepare_run_dir(scratch / "run", who.gid)
    finally:
        os.umask(old)
    st, circus = (scratch / "run").lstat(), (scratch / "run" / CIRCUS_DIR).lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, who.gid, 0o750)
    assert (circus.st_uid, stat.S_IMODE(circus.st_mode)) == (0, 0o700)


def test_a_planted_run_directory_is_refused(scratch: Path) -> None:
    victim = scratch / "victim"
    victim.mkdir(mode=0o755)
    (scratch / "link").symlink_to(victim)
    with pytest.raises(UsageError):
        _prepare_run_dir(scratch / "link", lookup(USER).gid)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and victim.stat().st_gid == 0
    foreign = scratch / "foreign"
    foreign.mkdir()
    os.chown(foreign, lookup(USER).uid, -1)
    with pytest.raises(UsageError):
        _prepare_run_dir(foreign, lookup(USER).gid)


def test_roots_run_directory_is_under_run_not_in_the_spool_or_tmp() -> None:
    """daemon may write the spool (upstream's is root:daemon 0770): there it could rename the run
    directory away while root uses it; and /tmp/emailrelay-0 any user could create first."""
    for spool in (Path("/var/spool/emailrelay"), Path("/var/spool") / ("x" * 120)):
        assert default(spool).parent == ROOT_BASE


def _use_admin_and_metrics(production: Production) -> None:
    with AdminClient(production.admin_port) as admin:
        for command in ("help", "status", "list", "failures", "info", "roles", "forward", "flush", "dnsbl"):
            admin.cmd(command, timeout=30)
    _role_starts(production.metrics_port)


def _late_imports(production: Production) -> dict[str, list[str]]:
    """Per process (its pid), what it imported as daemon, with its role: each line a module and
    the role's arguments.  A module that root cannot find either (an optional package that is
    not installed, as dnspython's sniffio may be) fails alike before and after the switch."""
    late = {}
    for path in (production.base / "imports").iterdir():
        lines = [line for line in path.read_text().splitlines() if _installed(line.split()[0])]
        if lines:
            late[path.name] = lines
    return late


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing
        return False


def test_nothing_is_imported_after_becoming_daemon(production: Production) -> None:
    """Runs after the tests above used every role (mail through both filters, admin, census)."""
    send_mail(production.relay.port, "after-the-others@test")
    assert production.sink.wait_for(["after-the-others@test"], 30)
    _use_admin_and_metrics(production)
    assert not _late_imports(production)


def test_nothing_is_imported_after_becoming_daemon_with_every_feature(production_full: Production) -> None:
    """Each role imports only what it uses (issue 20), what the configuration adds included: mail
    over STARTTLS with AUTH, through filters, split: and the verifier (with a DNSBL configured: a
    loopback client is never looked up), forwarded with client TLS through a client filter and
    mx: (a DNS query), a POP session, admin, metrics."""
    production = production_full
    context = ssl.create_default_context(cafile=str(production.base / "certs" / "ca.crt"))
    with smtplib.SMTP("127.0.0.1", production.relay.port, timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login(*SECRET)
        smtp.sendmail("a@example.com", ["b@example.net"], content("every-feature@test"))
    if not production.sink.wait_for(["every-feature@test"], 60):
        print_log(production.relay, 80)
        pytest.fail("not forwarded")
    assert production.dns is not None and ("example.net", "MX") in production.dns.queries  # (mx: asked)
    pop = poplib.POP3("127.0.0.1", production.pop_port, timeout=30)
    try:
        pop.user(SECRET[0])
        pop.pass_(SECRET[1])
        pop.list()
    finally:
        pop.quit()
    _use_admin_and_metrics(production)
    late = _late_imports(production)
    assert not late, late
