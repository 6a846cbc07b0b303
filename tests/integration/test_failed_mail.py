"""emailrelay-notify, emailrelay-resubmit and emailrelay-bounce against real spools and a real relay.

Messages are failed by the relay itself (``emailrelay --as-client`` against a
scriptable next hop that answers 550), or taken from upstream E-MailRelay's
own ``.bad`` file; what the helpers put into the spool is forwarded by the
relay and checked as the next hop received it.
"""

from __future__ import annotations

import email
import email.policy
import io
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from emailrelay.cli import failed_mail
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.envelope import parse as parse_envelope
from emailrelay.spool.names import MessageId, State
from emailrelay.spool.store import SpoolStore
from tests.support.fake_smtp import FakeSmtp
from tests.support.fixtures import UPSTREAM
from tests.support.relay import program

UPSTREAM_BAD = "emailrelay.4242.1700000000.2"
CONTENT = (
    b"Received: from client by relay; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: quarterly report\r\n"
    b"Message-ID: <q1@example.com>\r\n\r\nThe numbers.\r\n"
)


def call(tool: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = getattr(failed_mail, tool)(list(argv), out, err)
    return rc, out.getvalue(), err.getvalue()


def as_client(spool: Path, hop: FakeSmtp) -> None:
    subprocess.run(
        [program(), "--as-client", hop.address, "--spool-dir", str(spool), "--user", "root", "--no-syslog"],
        check=False,
        timeout=60,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def upstream_bad(spool: Path) -> MessageId:
    shutil.copy(UPSTREAM / "failed.envelope.bad", spool / f"{UPSTREAM_BAD}.envelope.bad")
    (spool / f"{UPSTREAM_BAD}.content").write_bytes(CONTENT)
    return MessageId.parse(UPSTREAM_BAD)


def store_message(store: SpoolStore, sender: str = "alice@example.com") -> MessageId:
    env = Envelope(
        from_address=sender, to_remote=("bob@example.net",), client="127.0.0.1", content_type="7bit"
    )
    return store.store_message(env, CONTENT)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


# ---- notify --------------------------------------------------------------------------


def test_notify_reports_each_failure_once(spool: Path) -> None:
    mid = upstream_bad(spool)
    rc, out, _ = call("notify", str(spool))
    assert rc == 0
    assert "1 new failed message in" in out
    assert str(mid) in out and "from:    a@example.com" in out and "to:      b@example.net" in out
    assert "reason:  550 5.7.1 rejected for testing" in out
    assert (spool / ".emailrelay-notify.state").exists()
    assert call("notify", str(spool)) == (0, "", "")  # nothing new: silent, for cron
    store = SpoolStore(spool, fsync=False)
    second = store_message(store)
    store.claim(second).fail("timed out", None)  # type: ignore[union-attr]
    rc, out, _ = call("notify", "--spool-dir", str(spool))
    assert "1 new failed message" in out and str(second) in out and str(mid) not in out
    assert "reason:  timed out" in out
    # resubmitted and failed again: already reported, not reported again
    assert store.unfail(second)
    assert call("notify", str(spool))[1] == ""
    store.claim(second).fail("timed out again", None)  # type: ignore[union-attr]
    assert call("notify", str(spool))[1] == ""
    rc, out, _ = call("notify", str(spool), "--all")
    assert "2 new failed messages" in out


def test_notify_state_file_option_and_dry_run(spool: Path, tmp_path: Path) -> None:
    upstream_bad(spool)
    state = tmp_path / "notify.state"
    assert "1 new failed" in call("notify", str(spool), "--state-file", str(state), "--dry-run")[1]
    assert not state.exists()
    assert "1 new failed" in call("notify", str(spool), "--state-file", str(state))[1]
    assert state.read_text().count(UPSTREAM_BAD) == 1
    assert call("notify", str(spool), "--state-file", str(state))[1] == ""
    assert not (spool / ".emailrelay-notify.state").exists()


def test_notify_mails_the_report_through_the_relay(spool: Path) -> None:
    upstream_bad(spool)
    rc, out, _ = call("notify", str(spool), "--mail-to", "postmaster@example.com")
    assert rc == 0 and out == ""
    store = SpoolStore(spool, fsync=False)
    (report,) = store.ready()
    env = store.read_envelope(report)
    assert env.from_address == "" and env.to_remote == ("postmaster@example.com",)
    with FakeSmtp() as hop:
        as_client(spool, hop)
        assert hop.wait_for_messages(1)
        (msg,) = hop.messages
    assert msg.mail_from == "" and msg.rcpts == ["postmaster@example.com"]
    parsed = email.message_from_bytes(msg.data, policy=email.policy.default)
    assert parsed["Subject"].endswith("1 failed message")
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert UPSTREAM_BAD in parsed.get_content()
    assert "550 5.7.1 rejected for testing" in parsed.get_content()


# ---- resubmit ------------------------------------------------------------------------


def test_resubmit_retries_a_bounded_number_of_times_with_the_real_relay(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    mid = store_message(store)
    with FakeSmtp(replies={"final": "550 5.1.1 mailbox unavailable"}) as hop:
        as_client(spool, hop)
        assert store.find(str(mid)) == (mid, State.BAD)
        for attempt in (1, 2):
            rc, out, _ = call("resubmit", str(spool), "--limit", "2", "-v")
            assert rc == 0 and out == f"{mid}: resubmitted (retry {attempt} of 2)\n"
            assert store.find(str(mid)) == (mid, State.READY)
            as_client(spool, hop)
            assert store.find(str(mid)) == (mid, State.BAD)
            env = store.read_envelope(mid, State.BAD)
            assert env.reason_code == "550" and "mailbox unavailable" in (env.reason or "")
            assert env.extra_tail[-1] == f"X-MailRelay-Retry: {attempt}"
        rc, out, _ = call("resubmit", str(spool), "--limit", "2", "-v")
        assert rc == 0 and out == f"{mid}: not resubmitted: tried 2 times already\n"
        assert store.find(str(mid)) == (mid, State.BAD)
        assert len(hop.refused) == 3


def test_resubmit_counts_upstream_failures_and_honours_min_age(spool: Path) -> None:
    mid = upstream_bad(spool)
    path = spool / f"{mid}.envelope.bad"
    # failed three times by upstream E-MailRelay (a Reason line each), resubmitted twice
    path.write_bytes(path.read_bytes() + b"X-MailRelay-Reason: again\r\nX-MailRelay-ReasonCode: 550\r\n" * 2)
    assert call("resubmit", str(spool), "--limit", "2")[0] == 0
    assert path.exists()
    assert call("resubmit", str(spool), "--limit", "3", "--min-age", "3600")[0] == 0
    assert path.exists()  # failed just now
    rc, out, _ = call("resubmit", str(spool), "--limit", "3", "--dry-run")
    assert rc == 0 and "would resubmit (retry 3 of 3)" in out and path.exists()
    assert call("resubmit", str(spool), "--limit", "3") == (0, "", "")  # silent, as upstream's script
    store = SpoolStore(spool, fsync=False)
    raw = store.envelope_bytes(mid, State.READY)
    assert raw.endswith(b"X-MailRelay-Retry: 3\r\n")
    assert parse_envelope(raw).from_address == "a@example.com"


def test_resubmit_as_subcommand_with_upstream_argument_form(spool: Path) -> None:
    upstream_bad(spool)
    done = subprocess.run([program(), "resubmit", str(spool)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (spool / f"{UPSTREAM_BAD}.envelope").exists()
    bad = subprocess.run([program(), "resubmit", str(spool / "missing")], capture_output=True, text=True)
    assert bad.returncode == 1 and "invalid spool directory" in bad.stderr


# ---- bounce ----------------------------------------------------------------------------


def test_dsn_status_from_reason_and_code() -> None:
    assert failed_mail.dsn_status("5.7.1 rejected for testing", "550") == "5.7.1"
    assert failed_mail.dsn_status("mailbox full", "552") == "5.0.0"
    assert failed_mail.dsn_status("4.4.1 no answer", "451") == "4.4.1"
    assert failed_mail.dsn_status("5.1.1 unknown", "451") == "4.0.0"  # the reply code wins a disagreement
    assert failed_mail.dsn_status("rejected by filter", "") == "5.0.0"
    assert failed_mail.dsn_status(None, None) == "5.0.0"
    assert failed_mail.dsn_status("4.2.2 over quota", None) == "4.2.2"


def parse_dsn(data: bytes) -> tuple[email.message.EmailMessage, list[email.message.Message]]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list)
    return msg, blocks


def test_build_dsn_is_rfc3464() -> None:
    failed = parse_envelope((UPSTREAM / "failed.envelope.bad").read_bytes())
    data = failed_mail.build_dsn(
        failed, MessageId.parse(UPSTREAM_BAD), CONTENT, reporting_mta="relay.example.com", boundary="BOUNDARY"
    )
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    msg, (per_message, per_recipient) = parse_dsn(data)
    assert msg["To"].addresses[0].addr_spec == "a@example.com" and msg["Auto-Submitted"] == "auto-replied"
    assert per_message["Reporting-MTA"] == "dns; relay.example.com"
    assert per_message["Arrival-Date"]
    assert per_recipient["Final-Recipient"] == "rfc822; b@example.net"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.7.1"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.7.1 rejected for testing"
    headers = list(msg.iter_parts())[2].get_content()
    assert "Subject: quarterly report" in headers and "The numbers." not in headers


def test_build_dsn_folds_a_huge_reason_and_names_every_recipient() -> None:
    failed = Envelope(
        from_address="a@example.com",
        to_remote=("b@example.net", "c@example.org"),
        reason="x" * 3000,
        reason_code="",
    )
    data = failed_mail.build_dsn(failed, MessageId.parse(UPSTREAM_BAD), b"", reporting_mta="h")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    _, blocks = parse_dsn(data)
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; b@example.net", "rfc822; c@example.org"]
    assert blocks[1]["Status"] == "5.0.0"
    assert str(blocks[1]["Diagnostic-Code"]).startswith("X-MailRelay; xxx")


def test_bounce_returns_failed_mail_to_its_sender_through_the_relay(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    mid = store_message(store, "alice@example.com")
    with FakeSmtp(replies={"final": "550 5.1.1 <bob@example.net>: no such user"}) as hop:
        as_client(spool, hop)
        assert store.find(str(mid)) == (mid, State.BAD)
        rc, out, _ = call("bounce", str(spool), "--reporting-mta", "relay.example.com", "-v")
        assert rc == 0 and out.startswith(f"{mid}: bounced to <alice@example.com> as emailrelay.")
        assert store.find(str(mid)) is None  # the failed message is gone
        assert not store.content_path(mid).exists()
        hop.replies["final"] = "250 OK"
        as_client(spool, hop)
        assert hop.wait_for_messages(1)
        (dsn,) = hop.messages
    assert dsn.mail_from == "" and dsn.rcpts == ["alice@example.com"]
    msg, (per_message, per_recipient) = parse_dsn(dsn.data)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert per_message["Reporting-MTA"] == "dns; relay.example.com"
    assert per_recipient["Final-Recipient"] == "rfc822; bob@example.net"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: no such user"
    assert "Message-ID: <q1@example.com>" in list(msg.iter_parts())[2].get_content()
    assert list(store.scan()) == []


def test_bounce_keep_null_sender_selection_and_retries(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    upstream = upstream_bad(spool)
    null = store_message(store, "")
    store.claim(null).fail("550 no", 550)  # type: ignore[union-attr]
    rc, out, _ = call("bounce", str(spool), "--after-retries", "1", "-v")
    assert rc == 0 and f"{null}: not bounced: null sender" in out and str(upstream) not in out
    rc, out, _ = call("bounce", str(spool), "--dry-run")
    assert rc == 0 and out == f"{upstream}: would bounce to <a@example.com>\n"
    rc, _, err = call("bounce", str(spool), "--id", "emailrelay.1.1.1")
    assert rc == 1 and "no such failed message" in err
    rc, out, _ = call("bounce", str(spool), "--id", str(upstream), "--keep", "-v")
    assert rc == 0 and f"{upstream}: bounced to <a@example.com>" in out
    raw = store.envelope_bytes(upstream, State.BAD)
    assert b"\r\nX-MailRelay-Bounced: emailrelay." in raw
    assert len(store.ready()) == 1
    assert call("bounce", str(spool), "--keep") == (0, "", "")  # bounced once only
    assert len(store.ready()) == 1
    assert store.find(str(null)) == (null, State.BAD)  # a bounce is never bounced


def test_bounce_reports_an_unreadable_envelope(spool: Path) -> None:
    (spool / "emailrelay.5.1700000000.1.envelope.bad").write_bytes(b"X-MailRelay-Format: #2821.8\r\n")
    rc, _, err = call("bounce", str(spool))
    assert rc == 1 and "envelope unreadable" in err
    assert (spool / "emailrelay.5.1700000000.1.envelope.bad").exists()


def test_helpers_run_while_the_relay_runs(spool: Path, tmp_path: Path) -> None:
    """The console entry points, as subcommands, on the spool of a running store-and-forward relay."""
    from tests.support.relay import running_relay, wait_until

    with (
        FakeSmtp(replies={"final": "550 5.7.1 go away"}) as hop,
        running_relay(tmp_path, "--forward-to", hop.address, "--poll", "1", spool=spool) as relay,
    ):
        subprocess.run(
            [
                "swaks",
                "--server",
                f"127.0.0.1:{relay.port}",
                "--from",
                "s@example.com",
                "--to",
                "r@example.net",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        store = SpoolStore(spool, fsync=False)
        assert wait_until(lambda: any(e.state is State.BAD for e in store.scan()), timeout=30)
        notify = subprocess.run([program(), "notify", str(spool)], capture_output=True, text=True, timeout=60)
        assert notify.returncode == 0 and "550 5.7.1 go away" in notify.stdout
        hop.replies["final"] = "250 OK"
        resubmit = subprocess.run(
            [program(), "resubmit", str(spool)], capture_output=True, text=True, timeout=60
        )
        assert resubmit.returncode == 0, resubmit.stderr
        assert hop.wait_for_messages(1, timeout=30)
        assert wait_until(lambda: list(store.scan()) == [], timeout=30)
        bounce = subprocess.run([program(), "bounce", str(spool)], capture_output=True, text=True, timeout=60)
        assert bounce.returncode == 0 and bounce.stdout == ""
    time.sleep(0)  # the relay was stopped by the context manager
