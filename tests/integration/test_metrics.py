"""The metrics exporter and /healthz, driven for real.

A real bus (``python -m emailrelay.cli.role bus`` as a subprocess) carries
events published with :class:`BusClient`; the exporter runs in the test's
event loop and is scraped over HTTP.  The health checks meet a real relay,
a real spool that stops being writable, and a real circus supervisor.

How the spool is made unwritable, given that the tests run as root (for
whom ``chmod 0500`` changes nothing): (1) the spool directory is replaced
by a plain file, so creating the probe file fails with ENOTDIR — works
anywhere; (2) the directory gets the immutable attribute (``chattr +i``),
which refuses even root with EPERM — where the file system supports it
(ext4, xfs, btrfs; the test is skipped on others, eg. tmpfs or overlayfs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from emailrelay import PRODUCT_VERSION, __version__, rundir
from emailrelay.bus import schema
from emailrelay.bus.endpoint import BusClient
from emailrelay.config import Config
from emailrelay.services.metrics import MetricsExporter
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.names import State
from emailrelay.spool.store import SpoolStore
from tests.support.fake_smtp import FakeSmtp
from tests.support.fixtures import UPSTREAM
from tests.support.relay import free_port, program, running_relay, wait_for_port

ENV = Envelope(from_address="a@example.com", to_remote=("b@example.net",), client="127.0.0.1")
CONTENT = b"Subject: metrics\r\n\r\nbody\r\n"


# ---- helpers ----------------------------------------------------------------------------


def _get_sync(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def get(url: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(_get_sync, url)


async def health(exporter: MetricsExporter) -> tuple[int, dict]:
    status, body = await get(f"http://127.0.0.1:{exporter.port}/healthz")
    return status, json.loads(body)


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in Prometheus text format, eg. sample(t, "x_total", 'role="smtp"')."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    m = re.search(pattern, text, re.MULTILINE)
    return float(m.group(1)) if m else None


async def scrape(exporter: MetricsExporter) -> str:
    status, body = await get(f"http://127.0.0.1:{exporter.port}/metrics")
    assert status == 200
    return body.decode()


async def until(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


@contextlib.contextmanager
def bus_process(run_dir: Path, spool: Path) -> Iterator[subprocess.Popen[bytes]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "emailrelay.cli.role", "bus", "--run-dir", str(run_dir), "--",
         "--spool-dir", str(spool), "--user", "root", "--no-syslog"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not all((run_dir / name).exists() for name in (rundir.BUS_IN, rundir.BUS_OUT)):
            assert proc.poll() is None, "bus role exited"
            assert time.monotonic() < deadline, "bus did not come up"
            time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def connected(exporter: MetricsExporter, publisher: BusClient) -> None:
    """Publish probes until the exporter hears them (ZeroMQ subscriptions take a moment)."""
    deadline = time.monotonic() + 10
    while exporter.events.labels(topic=schema.ROLE_STARTED)._value.get() == 0:
        assert time.monotonic() < deadline, "exporter never heard the bus"
        publisher.publish(schema.ROLE_STARTED, role="probe")
        await asyncio.sleep(0.05)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


@pytest.fixture
async def exporter(tmp_path: Path, spool: Path) -> AsyncIterator[MetricsExporter]:
    run_dir = tmp_path / "run"
    with bus_process(run_dir, spool):
        config = Config(spool_dir=spool, no_smtp=True)
        exp = MetricsExporter(config, str(run_dir))
        await exp.start("127.0.0.1", 0)
        try:
            yield exp
        finally:
            await exp.stop()


@pytest.fixture
async def publisher(exporter: MetricsExporter) -> AsyncIterator[BusClient]:
    bus = BusClient(exporter.run_dir)
    await connected(exporter, bus)
    try:
        yield bus
    finally:
        bus.close()


# ---- /metrics ------------------------------------------------------------------------------


async def test_counters_sum_what_the_roles_report(exporter: MetricsExporter, publisher: BusClient) -> None:
    pub = publisher.publish
    for i in range(3):
        pub(schema.SMTP_ACCEPTED, id=f"emailrelay.1.1.{i}", size=1000)
    pub(schema.SMTP_ACCEPTED, id="emailrelay.1.1.9")  # no size: counted, no bytes
    pub(schema.SMTP_REJECTED, reason="550 no", client="127.0.0.1")
    pub(schema.FORWARD_DONE, id="emailrelay.1.1.0", hop="127.0.0.1:25", ms=40)
    pub(schema.FORWARD_DONE, id="emailrelay.1.1.1", hop="127.0.0.1:25", ms=3000, size=500)
    pub(schema.SPOOL_FAILED, id="emailrelay.1.1.2", reason="550 5.7.1 no")
    pub(schema.FORWARD_DEFERRED, id="emailrelay.1.1.3", reason="451 later", delay=60)
    pub(schema.FORWARD_DEFERRED, id="emailrelay.1.1.3", reason="451 later", delay=300)
    pub(schema.ROLE_STARTED, role="smtp")
    pub(schema.ROLE_STARTED, role="smtp")
    pub(schema.ROLE_STARTED, role="forward")
    pub(schema.SPOOL_READY, id="emailrelay.1.1.0")
    assert await until(lambda: exporter.events.labels(topic=schema.SPOOL_READY)._value.get() == 1)
    text = await scrape(exporter)
    assert sample(text, "emailrelay_messages_accepted_total") == 4
    assert sample(text, "emailrelay_accepted_bytes_total") == 3000
    assert sample(text, "emailrelay_messages_rejected_total") == 1
    assert sample(text, "emailrelay_messages_forwarded_total") == 2
    assert sample(text, "emailrelay_forwarded_bytes_total") == 500
    assert sample(text, "emailrelay_messages_failed_total") == 1
    assert sample(text, "emailrelay_messages_deferred_total") == 2
    assert sample(text, "emailrelay_forward_duration_seconds_count") == 2
    assert sample(text, "emailrelay_forward_duration_seconds_sum") == pytest.approx(3.04)
    assert sample(text, "emailrelay_forward_duration_seconds_bucket", 'le="0.05"') == 1
    assert sample(text, "emailrelay_forward_duration_seconds_bucket", 'le="5.0"') == 2
    assert sample(text, "emailrelay_role_starts_total", 'role="smtp"') == 2
    assert sample(text, "emailrelay_role_starts_total", 'role="forward"') == 1
    assert sample(text, "emailrelay_bus_events_total", 'topic="spool.ready"') == 1


async def test_role_starts_count_the_roles_running_before_the_subscription(
    exporter: MetricsExporter, publisher: BusClient
) -> None:
    """Roles that announced themselves before the exporter subscribed are found by the census
    (circus ``list``, faked here); a pid is counted once whether the census or the bus has it first."""
    census = {"forward": [1001, 1002], "smtp": [1003], "notify": [1004]}

    async def fake_census() -> dict[str, list[int]]:
        return census

    exporter.role_census = fake_census
    text = await scrape(exporter)
    assert sample(text, "emailrelay_role_starts_total", 'role="forward"') == 2
    assert sample(text, "emailrelay_role_starts_total", 'role="smtp"') == 1
    assert sample(text, "emailrelay_role_starts_total", 'role="notify"') == 1
    assert exporter.tracker.alive["forward"] == {1001, 1002}
    # late role.started of a counted process: not counted again; a new process: counted
    heard = exporter.events.labels(topic=schema.ROLE_STARTED)._value.get()
    publisher.publish(schema.ROLE_STARTED, role="forward", pid=1001)
    publisher.publish(schema.ROLE_STARTED, role="smtp", pid=1005)
    assert await until(lambda: exporter.events.labels(topic=schema.ROLE_STARTED)._value.get() == heard + 2)
    text = await scrape(exporter)
    assert sample(text, "emailrelay_role_starts_total", 'role="forward"') == 2
    assert sample(text, "emailrelay_role_starts_total", 'role="smtp"') == 2
    # a restarted smtp process found by the next census (its role.started lost)
    census["smtp"] = [1005, 1006]
    exporter._next_census = 0.0
    text = await scrape(exporter)
    assert sample(text, "emailrelay_role_starts_total", 'role="smtp"') == 3
    assert sample(text, "emailrelay_role_starts_total", 'role="forward"') == 2


def test_role_starts_are_right_after_a_fresh_start(tmp_path: Path) -> None:
    """The supervised ``--metrics`` role starts after bus, notify and forward have announced
    themselves: its first scrapes still count every role process, once."""
    from tests.support.sink_counter import role_pids, supervised_relay

    mport = free_port()
    roles = {"forward": 2, "notify": 1, "smtp": 1, "metrics": 1}
    with FakeSmtp() as hop:
        args = (
            "--forward-to",
            hop.address,
            "--poll",
            "0",
            "--workers",
            "forward=2",
            "--metrics",
            f"127.0.0.1:{mport}",
        )
        with supervised_relay(tmp_path, *args, roles={**roles, "bus": 1}) as relay:
            pids = role_pids(relay.pid)
            wait_for_port(mport)
            started = time.monotonic()
            counts: dict[str, float | None] = {}
            while True:
                status, body = _get_sync(f"http://127.0.0.1:{mport}/metrics")
                assert status == 200
                text = body.decode()
                counts = {r: sample(text, "emailrelay_role_starts_total", f'role="{r}"') for r in roles}
                if counts == roles or time.monotonic() - started > 15:
                    break
                time.sleep(0.2)
            took = time.monotonic() - started
            time.sleep(1.0)  # late role.started events must not count a process twice
            text = _get_sync(f"http://127.0.0.1:{mport}/metrics")[1].decode()
            again = {r: sample(text, "emailrelay_role_starts_total", f'role="{r}"') for r in roles}
            assert role_pids(relay.pid) == pids  # no role restarted meanwhile
    print(f"\nrole starts after a fresh start: {counts} after {took:.1f}s; 1s later {again}")
    assert counts == roles
    assert again == roles


def test_the_census_without_a_supervisor_finds_the_role_processes_beside_it(tmp_path: Path) -> None:
    """Under a plain circusd there is no supervisor channel: the census reads the announcing roles
    among its parent's children from /proc, by their command lines, for this run directory and
    configuration only (real processes, children of this test standing in for circusd)."""
    from emailrelay.services.metrics import sibling_role_pids

    run = str(tmp_path / "run")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    commands = {
        "smtp": ["-m", "emailrelay.cli.role", "smtp", "--run-dir", run, "--fd", "3", "--", "--port", "1"],
        "forward": ["-m", "emailrelay.cli.role", "forward", "--run-dir", run, "--index", "1", "--", "-q"],
        "other-run": ["-m", "emailrelay.cli.role", "smtp", "--run-dir", run + "2", "--"],
        "other-config": ["-m", "emailrelay.cli.role", "smtp", "--run-dir", run, "--config", "in", "--"],
        "bus": ["-m", "emailrelay.cli.role", "bus", "--run-dir", run, "--"],  # announces nothing
        "relay-option": ["-m", "emailrelay.cli.role", "smtp", "--run-dir", "x", "--", "--run-dir", run],
    }
    children = {name: subprocess.Popen([*sleeper, *words]) for name, words in commands.items()}
    try:
        found = sibling_role_pids(run, "", parent=os.getpid())
        in_config = sibling_role_pids(run, "in", parent=os.getpid())
        children["forward"].kill()
        children["forward"].wait(10)  # reaped: gone from /proc
        after = sibling_role_pids(run, "", parent=os.getpid())
    finally:
        for child in children.values():
            child.kill()
            child.wait(10)
    assert found == {"smtp": [children["smtp"].pid], "forward": [children["forward"].pid]}
    assert in_config == {"smtp": [children["other-config"].pid]}
    assert after == {"smtp": [children["smtp"].pid]}


async def test_queue_depth_and_oldest_age_are_scanned_from_the_spool(
    exporter: MetricsExporter, spool: Path
) -> None:
    store = SpoolStore(spool, fsync=False)
    for _ in range(3):
        store.store_message(ENV, CONTENT)
    held = store.store_message(ENV, CONTENT)
    assert store.hold(held)
    claimed = store.claim(store.ready()[0])
    assert claimed is not None
    old = "emailrelay.4242.1700000000.2"  # written by upstream E-MailRelay, long ago
    shutil.copy(UPSTREAM / "failed.envelope.bad", spool / f"{old}.envelope.bad")
    shutil.copy(UPSTREAM / "submitted.content", spool / f"{old}.content")
    text = await scrape(exporter)
    claimed.release()
    assert sample(text, "emailrelay_queue_messages", 'state="ready"') == 2
    assert sample(text, "emailrelay_queue_messages", 'state="busy"') == 1
    assert sample(text, "emailrelay_queue_messages", 'state="held"') == 1
    assert sample(text, "emailrelay_queue_messages", 'state="bad"') == 1
    assert sample(text, "emailrelay_queue_messages", 'state="new"') == 0
    bad_age = sample(text, "emailrelay_queue_oldest_age_seconds", 'state="bad"')
    assert bad_age is not None and abs(bad_age - (time.time() - 1700000000)) < 60
    ready_age = sample(text, "emailrelay_queue_oldest_age_seconds", 'state="ready"')
    assert ready_age is not None and 0 <= ready_age < 60
    assert (sample(text, "emailrelay_spool_free_bytes") or 0) > 0
    # the queue changes: the next scrape sees it
    for mid in store.ready():
        store.delete(mid, State.READY)
    text = await scrape(exporter)
    assert sample(text, "emailrelay_queue_messages", 'state="ready"') == 0


async def test_http_details(exporter: MetricsExporter) -> None:
    base = f"http://127.0.0.1:{exporter.port}"
    assert (await get(f"{base}/nope"))[0] == 404
    status, body = await get(f"{base}/")
    assert status == 200 and b"/metrics" in body
    req = urllib.request.Request(f"{base}/metrics", method="POST", data=b"x")
    status = await asyncio.to_thread(lambda: _status_of(req))
    assert status == 405
    reader, writer = await asyncio.open_connection("127.0.0.1", exporter.port)
    writer.write(b"garbage\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
    writer.close()


def _status_of(req: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


# ---- /healthz ---------------------------------------------------------------------------------


async def test_healthz_flips_when_the_spool_is_replaced_by_a_file(
    exporter: MetricsExporter, spool: Path
) -> None:
    status, body = await health(exporter)
    assert status == 200 and body["ok"] is True
    assert body["checks"]["spool"]["ok"] and body["checks"]["disk"]["ok"]
    assert body["checks"]["listener"]["skipped"] and body["checks"]["forwarders"]["skipped"]
    moved = spool.with_name("spool.moved")
    spool.rename(moved)
    spool.write_text("not a directory\n")
    try:
        status, body = await health(exporter)
        assert status == 503 and body["ok"] is False
        assert (
            body["checks"]["spool"]["ok"] is False and "Not a directory" in body["checks"]["spool"]["detail"]
        )
    finally:
        spool.unlink()
        moved.rename(spool)
    assert (await health(exporter))[0] == 200


def _immutable_works(scratch: Path) -> bool:
    if shutil.which("chattr") is None or os.geteuid() != 0:
        return False
    scratch.mkdir()
    try:
        if subprocess.run(["chattr", "+i", str(scratch)], capture_output=True).returncode != 0:
            return False
        try:
            (scratch / "x").write_text("")
            return False
        except OSError:
            return True
    finally:
        subprocess.run(["chattr", "-i", str(scratch)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


async def test_healthz_flips_when_the_spool_becomes_immutable(
    exporter: MetricsExporter, spool: Path, tmp_path: Path
) -> None:
    if not _immutable_works(tmp_path / "scratch"):
        pytest.skip("chattr +i does not stop root on this file system")
    assert (await health(exporter))[0] == 200
    subprocess.run(["chattr", "+i", str(spool)], check=True)
    try:
        status, body = await health(exporter)
        assert status == 503
        assert "Operation not permitted" in body["checks"]["spool"]["detail"]
        assert body["checks"]["disk"]["ok"] is True
    finally:
        subprocess.run(["chattr", "-i", str(spool)], check=True)
    assert (await health(exporter))[0] == 200


async def test_healthz_disk_threshold(exporter: MetricsExporter) -> None:
    exporter.health.min_free = 1 << 62
    status, body = await health(exporter)
    assert status == 503 and body["checks"]["disk"]["ok"] is False
    assert "MB free (need" in body["checks"]["disk"]["detail"]
    exporter.health.min_free = 1
    assert (await health(exporter))[0] == 200


async def test_healthz_forwarders_from_the_bus(exporter: MetricsExporter, publisher: BusClient) -> None:
    exporter.health.forwarding = True
    status, body = await health(exporter)
    assert status == 503 and body["checks"]["forwarders"]["ok"] is False
    # this test process stands in for a forward role: its pid is alive
    publisher.publish(schema.ROLE_STARTED, role="forward")
    assert await until(lambda: exporter.tracker.alive.get("forward"))
    status, body = await health(exporter)
    assert status == 200 and str(os.getpid()) in body["checks"]["forwarders"]["detail"]
    publisher.publish(schema.ROLE_STOPPING, role="forward")
    assert await until(lambda: not exporter.tracker.alive.get("forward"))
    assert (await health(exporter))[0] == 503
    publisher.publish(schema.FORWARD_DONE, id="emailrelay.1.1.1", hop="x", ms=5)
    assert await until(lambda: exporter.tracker.last_forward_event is not None)
    status, body = await health(exporter)
    assert status == 200 and "forward event" in body["checks"]["forwarders"]["detail"]
    # a forwarder killed with -9 sends no role.stopping: its pid is checked
    exporter.tracker.last_forward_event = None
    exporter.tracker.alive["forward"] = {2**22 + 12345}
    assert (await health(exporter))[0] == 503


async def test_healthz_listener_from_the_bus_costs_no_smtp_session(
    exporter: MetricsExporter, publisher: BusClient
) -> None:
    """A live smtp role heard on the bus answers the listener check: no connection (issue 19)."""
    exporter.health.smtp_address = ("127.0.0.1", free_port())  # nothing listens there
    status, body = await health(exporter)
    assert status == 503 and "cannot connect" in body["checks"]["listener"]["detail"]
    publisher.publish(schema.ROLE_STARTED, role="smtp")  # this process stands in for the smtp role
    assert await until(lambda: exporter.tracker.alive.get("smtp"))
    status, body = await health(exporter)
    assert status == 200, body
    assert f"smtp role running (pids {os.getpid()})" in body["checks"]["listener"]["detail"]
    publisher.publish(schema.CMD_SMTP_DISABLE)
    assert await until(lambda: exporter.tracker.smtp_disabled)
    status, body = await health(exporter)
    assert status == 503 and "smtp disabled" in body["checks"]["listener"]["detail"]
    publisher.publish(schema.CMD_SMTP_ENABLE)
    assert await until(lambda: not exporter.tracker.smtp_disabled)
    assert (await health(exporter))[0] == 200
    exporter.tracker.alive["smtp"] = {2**22 + 12345}  # killed with -9: back to connecting
    assert (await health(exporter))[0] == 503


async def test_healthz_and_metrics_of_a_real_supervised_relay(tmp_path: Path) -> None:
    """Listener, circus and the relay's own bus: the exporter on a running relay's run directory."""
    with FakeSmtp() as hop, running_relay(tmp_path, "--forward-to", hop.address, "--poll", "1") as relay:
        run_dir = rundir.default(relay.spool)
        config = Config(
            spool_dir=relay.spool, port=relay.port, interfaces=["127.0.0.1"], forward_to=hop.address
        )
        exp = MetricsExporter(config, str(run_dir))
        await exp.start("127.0.0.1", 0)
        try:
            assert await until(lambda: (run_dir / rundir.CHANNEL).exists())
            deadline = time.monotonic() + 30
            while True:  # the forward role may still be starting
                status, body = await health(exp)
                if status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert status == 200, body
            assert body["checks"]["listener"]["detail"].startswith(f"127.0.0.1:{relay.port}: 220 ")
            assert body["checks"]["forwarders"]["detail"].startswith("circus: ")
            await asyncio.sleep(0.5)  # let the subscription settle before mail flows
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    "swaks",
                    "--server",
                    f"127.0.0.1:{relay.port}",
                    "--from",
                    "a@example.com",
                    "--to",
                    "b@example.net",
                ],
                capture_output=True,
                timeout=60,
            )
            assert done.returncode == 0
            assert await asyncio.to_thread(hop.wait_for_messages, 1, 30)
            assert await until(lambda: exp.forwarded._value.get() == 1, timeout=10)
            text = await scrape(exp)
            assert sample(text, "emailrelay_messages_accepted_total") == 1
            assert sample(text, "emailrelay_forward_duration_seconds_count") == 1
            # the bytes are the content file's (the message and our Received line), in and out
            size = len(hop.messages[0].data)
            assert sample(text, "emailrelay_accepted_bytes_total") == size
            assert sample(text, "emailrelay_forwarded_bytes_total") == size
            (build,) = re.findall(r"^emailrelay_build_info\{(.*)\} 1\.0$", text, re.MULTILINE)
            assert sorted(build.split(",")) == [
                f'product_version="{PRODUCT_VERSION}"', f'python="{platform.python_version()}"', f'version="{__version__}"',
            ]  # fmt: skip
        finally:
            relay.stop()
            status, body = await health(exp)
            await exp.stop()
        assert status == 503 and body["checks"]["listener"]["ok"] is False
        assert "cannot connect" in body["checks"]["listener"]["detail"]


async def test_listener_check_wants_a_greeting(spool: Path, tmp_path: Path) -> None:
    """A socket that accepts but never greets (circus holding the port, no smtp role) is not healthy."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    config = Config(spool_dir=spool, port=port, interfaces=["127.0.0.1"])
    exp = MetricsExporter(config, str(tmp_path / "run"))
    exp.health.timeout = 1.0
    await exp.start("127.0.0.1", 0)
    try:
        status, body = await health(exp)
    finally:
        await exp.stop()
        silent.close()
    assert status == 503 and "timed out" in body["checks"]["listener"]["detail"]


def test_metrics_subcommand_serves_and_stops_on_sigterm(spool: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [program(), "metrics", "--spool-dir", str(spool), "--run-dir", str(tmp_path / "run"),
         "--listen", f"127.0.0.1:{port}", "--no-smtp"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
        SpoolStore(spool, fsync=False).store_message(ENV, CONTENT)
        status, body = _get_sync(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert sample(body.decode(), "emailrelay_queue_messages", 'state="ready"') == 1
        status, body = _get_sync(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["ok"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"emailrelay: info: metrics server on 127.0.0.1:{port}" in out.decode()
