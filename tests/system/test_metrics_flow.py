"""Operations: scrape ``/metrics`` while 1000 messages flow, and check the counters against the sink.

A supervised relay (``--forward-to SINK --poll 0 --workers forward=2
--metrics 127.0.0.1:P``) takes 1000 messages from several SMTP client
threads while the test scrapes ``/metrics`` and probes ``/healthz`` over and
over: every scrape must parse, the accepted/forwarded counters must never go
down, and health must say ok.  Once the sink has every message and the spool
is empty, the counters must match what the clients and the sink saw.

Bus events are a doorbell, not a ledger: the exporter counts them when they
arrive, so the final figures are polled with a deadline.  The exporter's
subscription also goes live a little after ``/metrics`` answers (ZeroMQ joins
late), so warm-up messages go first until one is counted; the checks compare
the counters' increase over that baseline with the 1000.
"""

from __future__ import annotations

import itertools
import json
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import Relay, free_port
from tests.support.sink_counter import content, poll, print_log, send_mail, supervised_relay

MESSAGES = 1000
CLIENTS = 5
ACCEPTED = "emailrelay_messages_accepted_total"
FORWARDED = "emailrelay_messages_forwarded_total"
FAILED = "emailrelay_messages_failed_total"
QUEUE = "emailrelay_queue_messages"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:  # 503 from /healthz still has a body
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def scrape(port: int) -> Samples:
    """GET /metrics and parse it (raises on a non-200 or a body the Prometheus parser rejects)."""
    status, ctype, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, (status, body[:500])
    assert ctype.startswith("text/plain"), ctype
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def healthz(port: int) -> tuple[int, dict[str, object]]:
    status, ctype, body = _get(f"http://127.0.0.1:{port}/healthz", timeout=15.0)
    assert "json" in ctype, ctype
    return status, json.loads(body)


def spool_messages(spool: Path) -> list[str]:
    """Envelope and content files left in the spool (not the run directory or scratch files)."""
    return sorted(
        p.name
        for p in spool.iterdir()
        if p.is_file() and (".envelope" in p.name or p.name.endswith(".content"))
    )


@dataclass
class Sent:
    ok: int = 0  # 250s to the final dot
    ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(port: int, ids: list[str], sent: Sent) -> None:
    """One SMTP connection sending ``ids`` in turn (reconnecting after an error)."""
    s: smtplib.SMTP | None = None
    for mid in ids:
        try:
            if s is None:
                s = smtplib.SMTP("127.0.0.1", port, timeout=30)
                s.ehlo("client.test")
            code, msg = s.mail("a@example.com")
            if code != 250:
                raise smtplib.SMTPResponseException(code, msg)
            code, msg = s.rcpt("b@example.net")
            if code != 250:
                raise smtplib.SMTPResponseException(code, msg)
            code, msg = s.data(content(mid).encode())
            with sent.lock:
                if code == 250:
                    sent.ok += 1
                    sent.ids.append(mid)
                else:
                    sent.errors.append(f"{mid}: {code} {msg!r}")
        except (smtplib.SMTPException, OSError) as exc:
            with sent.lock:
                sent.errors.append(f"{mid}: {exc!r}")
            if s is not None:
                s.close()
            s = None
    if s is not None:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            s.close()


@dataclass
class Flow:
    relay: Relay
    sink: FakeSmtp
    metrics_port: int
    sent: Sent
    scrapes: list[Samples]
    health: list[tuple[int, dict[str, object]]]
    duration: float
    before: Samples  # baseline after the warm-up
    final: Samples

    def delta(self, name: str) -> float:
        return value(self.final, name) - value(self.before, name)


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """Run the whole flow once; the tests below check different parts of its outcome."""
    tmp_path = tmp_path_factory.mktemp("metrics-flow")
    mport = free_port()
    with FakeSmtp() as sink:
        args = ("--forward-to", sink.address, "--poll", "0", "--workers", "forward=2")
        with supervised_relay(
            tmp_path, *args, "--metrics", f"127.0.0.1:{mport}", roles={"forward": 2, "metrics": 1, "smtp": 1}
        ) as relay:
            try:
                yield _run(relay, sink, mport)
            except BaseException:
                print_log(relay)
                raise


def _warm_up(relay: Relay, sink: FakeSmtp, mport: int) -> tuple[Samples, int]:
    """Wait until /metrics answers and the exporter hears the bus; return the baseline scrape.

    The exporter's subscription goes live some time after it binds its port
    (ZeroMQ joins late; its own ``role.started`` is not heard either), so
    warm-up messages are sent until one shows in the accepted counter.  The
    baseline is taken once they are all forwarded and the counters are still.
    """
    assert poll(lambda: _scrape_or_none(mport) is not None, 20, 0.1), "/metrics never answered"
    warm = 0
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline, "the exporter never counted a warm-up message"
        send_mail(relay.port, f"warm-up-{warm}@test")
        warm += 1
        if poll(lambda: value(_scrape_or_none(mport) or {}, ACCEPTED) >= 1, 3, 0.05):
            break
    samples: list[Samples] = []

    def still() -> bool:
        if len(sink.messages) < warm or spool_messages(relay.spool):
            return False
        samples.append(scrape(mport))
        return (
            len(samples) >= 2
            and value(samples[-1], FORWARDED) >= 1
            and all(value(samples[-1], n) == value(samples[-2], n) for n in (ACCEPTED, FORWARDED))
        )

    assert poll(still, 20, 0.2), f"warm-up did not settle: sink {len(sink.messages)}/{warm}"
    return samples[-1], warm


def _scrape_or_none(port: int) -> Samples | None:
    try:
        return scrape(port)
    except (OSError, AssertionError):
        return None


def _run(relay: Relay, sink: FakeSmtp, mport: int) -> Flow:
    before, warm = _warm_up(relay, sink, mport)
    sink.clear_messages()  # the sink counts the 1000 only; the counters are compared as deltas

    ids = [f"metrics-flow-{i:04d}@test" for i in range(MESSAGES)]
    sent = Sent()
    threads = [
        threading.Thread(target=client, args=(relay.port, ids[i::CLIENTS], sent), name=f"client-{i}")
        for i in range(CLIENTS)
    ]
    scrapes: list[Samples] = [before]
    health: list[tuple[int, dict[str, object]]] = []
    t0 = time.monotonic()
    for t in threads:
        t.start()

    def done() -> bool:
        return len(sink.messages) >= MESSAGES and not spool_messages(relay.spool)

    deadline = t0 + 50
    n = 0
    while time.monotonic() < deadline:
        scrapes.append(scrape(mport))  # every scrape must parse, while the messages flow
        if n % 5 == 0:
            health.append(healthz(mport))
        n += 1
        if not any(t.is_alive() for t in threads) and done():
            break
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "clients still sending at the deadline"
    assert poll(done, max(1.0, deadline - time.monotonic()), 0.05), (
        f"sink has {len(sink.messages)}, spool holds {len(spool_messages(relay.spool))} files"
    )
    duration = time.monotonic() - t0

    # The doorbell may lag: wait (with a deadline) until the counters catch up with the sink.
    final: Samples = {}

    def settled() -> bool:
        nonlocal final
        final = scrape(mport)
        return value(final, ACCEPTED) - value(before, ACCEPTED) >= sent.ok and value(
            final, FORWARDED
        ) - value(before, FORWARDED) >= len(sink.messages)

    poll(settled, 10, 0.05)
    scrapes.append(final)
    print(
        f"\n{warm} warm-up message(s), then {MESSAGES} messages, {CLIENTS} clients: {sent.ok} x 250 ({len(sent.errors)} errors), "
        f"sink {len(sink.messages)}, {duration:.1f} s ({sent.ok / duration:.0f}/s); "
        f"{len(scrapes)} scrapes, {len(health)} health probes; "
        f"accepted={value(final, ACCEPTED):g} (+{value(final, ACCEPTED) - value(before, ACCEPTED):g}) "
        f"forwarded={value(final, FORWARDED):g} (+{value(final, FORWARDED) - value(before, FORWARDED):g}) "
        f"failed={value(final, FAILED):g} deferred={value(final, 'emailrelay_messages_deferred_total'):g} "
        f"rejected={value(final, 'emailrelay_messages_rejected_total'):g} "
        f"queue={ {k[1][0][1]: v for k, v in final.items() if k[0] == QUEUE} } "
        f"(max ready seen {max(value(x, QUEUE, state='ready') for x in scrapes):g})"
    )
    return Flow(relay, sink, mport, sent, scrapes, health, duration, before, final)


def test_every_message_reached_the_sink_once(flow: Flow) -> None:
    assert flow.sent.errors == []
    assert flow.sent.ok == MESSAGES
    counts = flow.sink.message_ids()
    assert len(flow.sink.messages) == MESSAGES
    assert set(counts) == {f"<{mid}>" for mid in flow.sent.ids}
    assert {k: v for k, v in counts.items() if v != 1} == {}
    assert spool_messages(flow.relay.spool) == []


def test_scrapes_parse_and_counters_never_decrease(flow: Flow) -> None:
    assert len(flow.scrapes) >= 10, "too few scrapes while the messages flowed"
    for name in (ACCEPTED, FORWARDED):
        series = [value(s, name) for s in flow.scrapes]
        drops = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(series)) if b < a]
        assert drops == [], f"{name} went down: {drops[:5]}"
    # the flow was really observed in progress, not only before and after
    a0 = value(flow.before, ACCEPTED)
    assert any(a0 < value(s, ACCEPTED) < a0 + MESSAGES for s in flow.scrapes) or any(
        value(s, FORWARDED) < value(s, ACCEPTED) for s in flow.scrapes
    )


def test_healthz_ok_during_the_flow(flow: Flow) -> None:
    assert flow.health, "no health probes"
    bad = [(status, body) for status, body in flow.health if status != 200 or body.get("ok") is not True]
    assert bad == [], bad[:2]


def test_accepted_counter_matches_the_250s(flow: Flow) -> None:
    assert flow.delta(ACCEPTED) == flow.sent.ok == MESSAGES


def test_forwarded_counter_matches_the_sink(flow: Flow) -> None:
    assert flow.delta(FORWARDED) == len(flow.sink.messages) == MESSAGES


def test_nothing_failed_and_queue_is_empty(flow: Flow) -> None:
    assert value(flow.final, FAILED) == 0
    assert (QUEUE, (("state", "ready"),)) in flow.final, "no ready queue gauge"
    assert value(flow.final, QUEUE, state="ready") == 0
    assert value(flow.final, QUEUE, state="busy") == 0
    assert value(flow.final, QUEUE, state="bad") == 0
