"""Forwarding with ``emailrelay --as-client``: exit codes, spool states, routing, content on the wire.

Each test fills a spool (emailrelay-submit, the store API, or envelope files
written by hand in upstream's format), runs the real ``emailrelay
--as-client`` against a scripted next hop (tests/support/fake_smtp.py) and
checks what the next hop got and what the spool holds afterwards.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from emailrelay.spool.envelope import Envelope
from emailrelay.spool.store import SpoolStore
from tests.support.fake_smtp import FakeSmtp, canonical
from tests.support.fixtures import UPSTREAM
from tests.support.relay import REPO, free_port, program
from tests.support.sink import (
    envelope_text,
    files,
    fill_spool,
    printed_envelope,
    run_client,
    simple_content,
    states,
    write_raw,
)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


def submit(spool: Path, content: bytes, *rcpts: str, sender: str = "sender@example.com") -> Path:
    out = subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", sender, "--verbose", *rcpts],
        input=content, capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return printed_envelope(out.stdout)


def failure_lines(envelope: Path) -> list[str]:
    text = envelope.read_bytes().decode()
    assert text.endswith("\r\n")
    return text.split("\r\n")[-3:-1]


# ---- exit codes and end states ---------------------------------------------------------


def test_all_sent_exits_zero_and_empties_the_spool(spool: Path) -> None:
    contents = [simple_content(f"ok{i}@test") for i in range(3)]
    for i, c in enumerate(contents):
        submit(spool, c, f"rcpt{i}@example.net")
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address, "--verbose")
        assert r.returncode == 0, r.stderr
        assert len(hop.messages) == 3
        got = {m.rcpts[0]: m for m in hop.messages}
        for i, c in enumerate(contents):
            m = got[f"rcpt{i}@example.net"]
            assert m.mail_from == "sender@example.com"
            assert m.data.endswith(c)  # submit may add headers in front, nothing after
    assert states(spool) == {}
    assert "forwarding: no more messages to send" in r.stderr


def test_5xx_fails_the_envelope_like_upstream(spool: Path) -> None:
    env = submit(spool, simple_content("rejected@test"), "b@example.net", sender="a@example.com")
    mid = env.name.removesuffix(".envelope")
    with FakeSmtp(replies={"final": "550 5.7.1 rejected for testing"}) as hop:
        r = run_client(spool, hop.address, "--verbose")
    assert r.returncode == 0, r.stderr  # a refusal is not an error of the run (upstream exits 0 too)
    assert states(spool) == {"bad": 1, "content": 1}
    bad = spool / f"{mid}.envelope.bad"
    assert failure_lines(bad) == [
        "X-MailRelay-Reason: 5.7.1 rejected for testing",
        "X-MailRelay-ReasonCode: 550",
    ]
    # the same shape as upstream's failed envelope, apart from the client address
    upstream = (UPSTREAM / "failed.envelope.bad").read_bytes()
    assert bad.read_bytes() == upstream
    assert f"failing envelope [{mid}.envelope.busy] -> [{mid}.envelope.bad]" in r.stderr
    assert re.search(r'tx>>: "MAIL FROM:<a@example.com>', r.stderr)


def test_one_rejected_among_several(spool: Path) -> None:
    ids = fill_spool(spool, 4)
    rejected = ids[2]

    def final(session: object, msg: object) -> str:
        return "554 5.6.0 not this one" if msg.message_id == rejected else "250 ok"  # type: ignore[attr-defined]

    with FakeSmtp(replies={"final": final}) as hop:
        r = run_client(spool, hop.address)
        assert sorted(hop.message_ids()) == sorted(set(ids) - {rejected})
        assert hop.connections == 1 and hop.commands_named("RSET") == []  # the next message goes on
    assert r.returncode == 0
    assert states(spool) == {"bad": 1, "content": 1}
    assert failure_lines(files(spool, ".bad")[0]) == [
        "X-MailRelay-Reason: 5.6.0 not this one",
        "X-MailRelay-ReasonCode: 554",
    ]


def test_unreachable_next_hop_leaves_the_message_ready(spool: Path) -> None:
    env = submit(spool, simple_content("unreachable@test"), "b@example.net")
    before = env.read_bytes()
    r = run_client(spool, f"127.0.0.1:{free_port()}", "--connection-timeout", "3")
    assert r.returncode != 0, r.stderr
    assert states(spool) == {"envelope": 1, "content": 1}
    assert env.read_bytes() == before  # no failure reason written
    assert "warning: smtp client error: connect failure: cannot connect to 127.0.0.1:" in r.stderr
    assert "error: connect failure: cannot connect to 127.0.0.1:" in r.stderr


def test_4xx_fails_the_message_at_once_by_default(spool: Path) -> None:
    """Without --retry a 4xx is final, as in E-MailRelay 2.6b; the reply's lines are the reason,
    a line break written as ``\\n``."""
    env = submit(spool, simple_content("later@test"), "b@example.net")
    with FakeSmtp(replies={"final": "452-4.3.1 insufficient\n452 4.3.1 system storage"}) as hop:
        r = run_client(spool, hop.address)
        assert len(hop.refused) == 1
    assert r.returncode == 0, r.stderr
    assert states(spool) == {"bad": 1, "content": 1}
    assert failure_lines(Path(f"{env}.bad")) == [
        "X-MailRelay-Reason: 4.3.1 insufficient\\n4.3.1 system storage",
        "X-MailRelay-ReasonCode: 452",
    ]


def test_4xx_after_data_releases_with_back_off(spool: Path) -> None:
    env = submit(spool, simple_content("later@test"), "b@example.net")
    with FakeSmtp(replies={"final": "452 4.3.1 insufficient system storage"}) as hop:
        started = time.time()
        r = run_client(spool, hop.address, "--retry", "60,300")
        assert len(hop.refused) == 1 and hop.messages == []
    assert r.returncode != 0, r.stderr
    assert states(spool) == {"envelope": 1, "content": 1}
    assert b"X-MailRelay-Reason" not in env.read_bytes()
    # the next attempt is not before the first retry delay (default 60 s)
    assert env.stat().st_mtime >= started + 50


def test_4xx_to_mail_from_also_releases(spool: Path) -> None:
    submit(spool, simple_content("mail4xx@test"), "b@example.net")
    with FakeSmtp(replies={"mail": "421 4.3.2 going down"}) as hop:
        r = run_client(spool, hop.address, "--retry", "60")
        assert hop.commands_named("DATA") == []
    assert r.returncode != 0
    assert states(spool) == {"envelope": 1, "content": 1}


def test_4xx_past_give_up_age_fails_the_message(spool: Path) -> None:
    old = f"emailrelay.{os.getpid()}.{int(time.time()) - 100}.424242"  # the id carries the creation time
    write_raw(spool, envelope_text("a@example.com", ["b@example.net"]), simple_content("old@test"), mid=old)
    with FakeSmtp(replies={"final": "452 4.3.1 still full"}) as hop:
        r = run_client(spool, hop.address, "--retry", "60", "--give-up", "50")
        assert len(hop.refused) == 1
    assert r.returncode != 0
    assert states(spool) == {"bad": 1, "content": 1}
    reason, code = failure_lines(spool / f"{old}.envelope.bad")
    assert reason.startswith("X-MailRelay-Reason: gave up after ") and "still full" in reason
    assert code == "X-MailRelay-ReasonCode: 452"


@pytest.mark.parametrize("damage", ["no-content", "garbage-envelope"])
def test_broken_message_is_failed_and_the_rest_still_goes(spool: Path, damage: str) -> None:
    good = fill_spool(spool, 2)
    broken = write_raw(
        spool, envelope_text("a@example.com", ["b@example.net"]), simple_content("broken@test")
    )
    if damage == "no-content":
        (spool / f"{broken}.content").unlink()
    else:
        (spool / f"{broken}.envelope").write_bytes(b"X-MailRelay-Format: #2821.8\r\nnonsense\r\n")
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address)
        assert sorted(hop.message_ids()) == sorted(good)
    assert r.returncode == 0  # failed messages are not an error of the run, as upstream
    assert [p.name for p in files(spool, ".bad")] == [f"{broken}.envelope.bad"]
    assert "busy" not in states(spool) and "envelope" not in states(spool)


def test_failure_to_write_the_reason_does_not_strand_the_message(spool: Path) -> None:
    # Claim.fail rewrites the envelope through "<id>.envelope.busy.tmp"; when that cannot be
    # written (disk full, EIO; simulated here by a directory in the way) the message must not
    # stay claimed, and --as-client must not report success
    env = submit(spool, simple_content("nospace@test"), "b@example.net")
    mid = env.name.removesuffix(".envelope")
    (spool / f"{mid}.envelope.busy.tmp").mkdir()
    with FakeSmtp(replies={"final": "550 5.7.1 rejected"}) as hop:
        r = run_client(spool, hop.address)
        assert len(hop.refused) == 1
    assert "cannot fail envelope" in r.stderr
    assert "busy" not in states(spool), sorted(p.name for p in spool.iterdir())
    assert r.returncode != 0


# ---- recipients ------------------------------------------------------------------------


def _three_recipients(spool: Path) -> str:
    return write_raw(
        spool,
        envelope_text("a@example.com", ["good1@example.net", "bad@example.net", "good2@example.net"]),
        simple_content("partial@test"),
    )


@pytest.mark.parametrize("refusal", ["550 5.1.1 no such user", "452 4.5.3 too many recipients"])
def test_rejected_recipient_fails_the_message_by_default(spool: Path, refusal: str) -> None:
    """As E-MailRelay 2.6b: RSET, no DATA, reason ``one or more recipients rejected`` with the RSET's
    code, for a 4xx as for a 5xx; the .bad keeps every recipient (nothing was sent)."""
    mid = _three_recipients(spool)
    with FakeSmtp(rcpt_replies={"bad@example.net": refusal}) as hop:
        r = run_client(spool, hop.address, "--forward-to-all")
        assert hop.messages == [] and hop.refused == []
        assert hop.commands_named("DATA") == [] and hop.commands_named("BDAT") == []
        assert hop.commands_named("RSET") == ["RSET"]
    assert r.returncode == 0
    assert states(spool) == {"bad": 1, "content": 1}
    bad = spool / f"{mid}.envelope.bad"
    assert failure_lines(bad) == [
        "X-MailRelay-Reason: one or more recipients rejected",
        "X-MailRelay-ReasonCode: 250",
    ]
    text = bad.read_bytes().decode()
    assert re.findall(r"X-MailRelay-To-Remote: (.*)\r\n", text) == [
        "good1@example.net", "bad@example.net", "good2@example.net",
    ]  # fmt: skip


def test_forward_to_some_delivers_to_the_accepted_ones(spool: Path) -> None:
    mid = _three_recipients(spool)
    with FakeSmtp(rcpt_replies={"bad@example.net": "550 5.1.1 no such user"}) as hop:
        r = run_client(spool, hop.address, "--forward-to-some")
        assert len(hop.messages) == 1
        assert hop.messages[0].rcpts == ["good1@example.net", "good2@example.net"]
    assert r.returncode == 0  # as upstream
    assert states(spool) == {"bad": 1, "content": 1}
    text = (spool / f"{mid}.envelope.bad").read_bytes().decode()
    assert re.findall(r"X-MailRelay-To-Remote: (.*)\r\n", text) == ["bad@example.net"]
    assert "X-MailRelay-ToCount: 1\r\n" in text
    assert text.endswith("X-MailRelay-Reason: one or more recipients rejected\r\nX-MailRelay-ReasonCode:\r\n")
    assert "warning: smtp client protocol: one or more recipients rejected" in r.stderr


def test_local_recipients_are_never_forwarded(spool: Path) -> None:
    write_raw(
        spool,
        envelope_text("a@example.com", ["remote@example.net"], ["alice"]),
        simple_content("local-remote@test"),
    )
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address)
        assert r.returncode == 0, r.stderr
        assert [m.rcpts for m in hop.messages] == [["remote@example.net"]]
        assert hop.commands_named("RCPT") == ["RCPT TO:<remote@example.net>"]
    assert states(spool) == {}


def test_only_local_recipients_fail_without_connecting(spool: Path) -> None:
    mid = write_raw(spool, envelope_text("a@example.com", [], ["alice", "bob"]), simple_content("local@test"))
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address)
        assert hop.connections == 0
    assert r.returncode == 0  # as upstream
    assert states(spool) == {"bad": 1, "content": 1}
    assert f"warning: forwarding [{mid}]: failing message with no remote recipients" in r.stderr
    assert f"failing envelope [{mid}.envelope.busy] -> [{mid}.envelope.bad]" in r.stderr


# ---- routing and upstream spools -----------------------------------------------------------


def test_forward_to_address_overrides_the_default_hop(spool: Path) -> None:
    with FakeSmtp() as default_hop, FakeSmtp() as routed_hop:
        write_raw(
            spool,
            envelope_text("a@example.com", ["x@example.net"], forward_to_address=routed_hop.address),
            simple_content("routed@test"),
        )
        write_raw(spool, envelope_text("a@example.com", ["y@example.net"]), simple_content("default@test"))
        r = run_client(spool, default_hop.address)
        assert r.returncode == 0, r.stderr
        assert list(routed_hop.message_ids()) == ["<routed@test>"]
        assert list(default_hop.message_ids()) == ["<default@test>"]
    assert states(spool) == {}


@pytest.mark.parametrize("name", ["submitted", "auth-local-remote", "eightbit"])
def test_upstream_spool_files_are_forwarded(spool: Path, name: str) -> None:
    envelope = (UPSTREAM / f"{name}.envelope").read_bytes()
    content = (UPSTREAM / f"{name}.content").read_bytes()
    write_raw(spool, envelope, content)
    text = envelope.decode()
    sender = re.search(r"X-MailRelay-From: (.*)\r\n", text).group(1)  # type: ignore[union-attr]
    remote = re.findall(r"X-MailRelay-To-Remote: (.*)\r\n", text)
    with FakeSmtp(extensions=("PIPELINING", "8BITMIME", "SIZE 10000000")) as hop:
        r = run_client(spool, hop.address)
        assert r.returncode == 0, r.stderr
        assert len(hop.messages) == 1
        m = hop.messages[0]
        assert (m.mail_from, m.rcpts) == (sender, remote)
        assert m.data == canonical(content)
        if "X-MailRelay-Content: 8bit" in text:
            assert "BODY=8BITMIME" in m.mail_params
    assert states(spool) == {}


# ---- content on the wire and connection reuse ---------------------------------------------------

TRICKY = [
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n..double\r\nend\r\n.",
    b".\r\n",  # content that is just a dot line
    b"Subject: empty body\r\n\r\n",
    b"Subject: embedded end\r\n\r\nbefore\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n.\r\nafter\r\n",
    b"Subject: bare lf\r\n\r\nbefore\n.\nMAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.org>\nDATA\nsmuggled\n.\nafter\r\n",
    b"Subject: bare cr\r\n\r\nbefore\r.\rMAIL FROM:<evil@example.com>\rDATA\rsmuggled\r.\rafter\r\n",
    b"Subject: mixed\r\n\r\nbefore\r\n.\nMAIL FROM:<evil@example.com>\r\n\n.\r\nafter\n.\r",
    b"Subject: no final line end\r\n\r\nlast line",
]


def _tricky_spool(spool: Path, count: int) -> dict[str, bytes]:
    store = SpoolStore(spool, fsync=False)
    expected: dict[str, bytes] = {}
    for i in range(count):
        mid = f"<tricky{i}@test>"
        body = TRICKY[i % len(TRICKY)]
        content = f"Message-ID: {mid}\r\n".encode() + body
        store.store_message(Envelope("a@example.com", to_remote=(f"r{i}@example.net",)), content)
        expected[mid] = content
    return expected


@pytest.mark.parametrize(
    "server",
    [
        {"extensions": ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 52428800")},
        {"extensions": ("PIPELINING", "CHUNKING", "8BITMIME")},
        {"extensions": (), "helo_only": True},
    ],
    ids=["data-pipelined", "chunking-offered", "helo-only"],
)
def test_twenty_messages_reuse_connections_and_arrive_exactly(spool: Path, server: dict) -> None:
    expected = _tricky_spool(spool, 20)
    with FakeSmtp(**server) as hop:  # (pipelining is opt-in: upstream's option)
        r = run_client(spool, hop.address, "--client-smtp-config=pipelining")
        assert r.returncode == 0, r.stderr
        assert hop.message_ids() == dict.fromkeys(expected, 1)  # each exactly once, nothing extra
        assert hop.connections < 20
        assert not [e for e in hop.protocol_errors if "bare" in e]
        for m in hop.messages:
            content = expected[m.message_id]  # type: ignore[index]
            assert m.data == canonical(content), m.message_id
            if b"\n" not in content.replace(b"\r\n", b"") and b"\r" not in content.replace(b"\r\n", b""):
                assert m.data == content or m.data == content + b"\r\n"
        if server.get("helo_only"):
            assert hop.commands_named("HELO") and all(m.via == "DATA" for m in hop.messages)
        else:  # (BDAT only for BINARYMIME content, as E-MailRelay 2.6b: these are 7bit)
            assert all(m.via == "DATA" for m in hop.messages)
    assert states(spool) == {}


def test_large_message_is_streamed_exactly(spool: Path) -> None:
    line = b"x" * 70 + b"\r\n"
    content = b"Message-ID: <big@test>\r\n\r\n" + b"".join(
        (b"." + line) if i % 7 == 0 else line for i in range(40_000)
    )  # ~2.9 MB: above the in-memory limit, read from disk in chunks
    SpoolStore(spool, fsync=False).store_message(Envelope("a@x.example", to_remote=("b@y.example",)), content)
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address)
        assert r.returncode == 0, r.stderr
        assert len(hop.messages) == 1 and hop.messages[0].data == content
    assert states(spool) == {}


def test_too_long_line_fails_before_mail_from(spool: Path) -> None:
    content = b"Message-ID: <long@test>\r\n\r\n" + b"y" * 1200 + b"\r\n"
    SpoolStore(spool, fsync=False).store_message(Envelope("a@x.example", to_remote=("b@y.example",)), content)
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address)
        assert hop.commands_named("MAIL") == []
    assert r.returncode == 0
    assert states(spool) == {"bad": 1, "content": 1}


# ---- misbehaving next hop, --as-client ----------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        {"delays": {"greeting": 60}},  # EHLO after --prompt-timeout, never answered
        {"replies": {"greeting": b"\x00\xffgarbage\r\n"}},
        {"replies": {"final": b"this is not smtp\r\n"}},
        {"drop_in_data": True},
    ],
    ids=["no-greeting", "garbage-greeting", "garbage-after-data", "drop-in-data"],
)
@pytest.mark.parametrize("back_off", [False, True], ids=["default", "retry"])
def test_misbehaving_hop_fails_or_releases_the_message(spool: Path, script: dict, back_off: bool) -> None:
    """A failed session: by default the message in hand is failed (no code) and the run ends with
    exit 1, as in E-MailRelay 2.6b; with --retry it is released for a later attempt."""
    env = submit(spool, simple_content("misbehave@test"), "b@example.net")
    retry = ("--retry", "60") if back_off else ()
    with FakeSmtp(**script) as hop:
        t0 = time.monotonic()
        r = run_client(
            spool,
            hop.address,
            "--response-timeout",
            "2",
            "--connection-timeout",
            "2",
            "--prompt-timeout",
            "1",
            *retry,
            timeout=30,
        )
        elapsed = time.monotonic() - t0
        assert hop.messages == []
    assert r.returncode != 0, r.stderr
    assert elapsed < 15
    if back_off:
        assert states(spool) == {"envelope": 1, "content": 1}
        assert b"X-MailRelay-Reason" not in env.read_bytes()
    else:
        assert states(spool) == {"bad": 1, "content": 1}
        _, code = failure_lines(Path(f"{env}.bad"))
        assert code == "X-MailRelay-ReasonCode:"
        assert "warning: smtp client error: " in r.stderr


# ---- crash leftovers -----------------------------------------------------------------------------

_CLAIMER = """
import os, sys
from emailrelay.spool.store import SpoolStore
store = SpoolStore(sys.argv[1])
ids = store.ready()
claim = store.claim(ids[0])
assert claim is not None
print(claim.id, flush=True)
if sys.argv[2] == "die":
    os._exit(0)  # no release: the .busy file stays behind
sys.stdin.read()  # hold the claim until the test closes stdin
"""


def _claimer(spool: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CLAIMER, str(spool), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip


def test_busy_left_by_a_killed_worker_is_recovered_and_sent_once(spool: Path) -> None:
    ids = fill_spool(spool, 1)
    child = _claimer(spool, "die")
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert states(spool) == {"busy": 1, "content": 1}
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address)
        assert r.returncode == 0, r.stderr
        assert hop.message_ids() == {ids[0]: 1}
    assert states(spool) == {}
    assert f"recovered claim on [{out.strip()}]" in r.stderr


def test_busy_held_by_a_live_worker_is_left_alone(spool: Path) -> None:
    ids = fill_spool(spool, 2)
    child = _claimer(spool, "hold")
    try:
        claimed = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert claimed.startswith("emailrelay.")
        with FakeSmtp() as hop:
            r = run_client(spool, hop.address)
            assert r.returncode == 0, r.stderr
            assert len(hop.messages) == 1
        assert states(spool) == {"busy": 1, "content": 1}
        assert (spool / f"{claimed}.envelope.busy").exists()
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait(10)
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address)
        assert r.returncode == 0, r.stderr
        assert len(hop.messages) == 1
    assert states(spool) == {}
    assert len(ids) == 2


# ---- identity switching ------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to --user daemon")
def test_5xx_as_root_with_default_user_fails_the_envelope() -> None:
    # Claim.fail -> rewrite -> _write_file nests identity.as_root(): the rename after the
    # inner section must still run as root (it did not before a602aab: the message stayed .busy)
    top = Path(tempfile.mkdtemp(prefix="fwd-root-", dir="/tmp"))  # traversable by --user daemon
    try:
        os.chmod(top, 0o755)
        spool = top / "spool"
        spool.mkdir()
        env = submit(spool, simple_content("root@test"), "b@example.net")
        for p in spool.iterdir():
            os.chown(p, 0, grp.getgrnam("daemon").gr_gid)  # as the relay itself stores them
        with FakeSmtp(replies={"final": "550 5.7.1 rejected for testing"}) as hop:
            r = run_client(spool, hop.address, user=None)  # default --user daemon
            assert len(hop.refused) == 1, r.stderr
        assert states(spool) == {"bad": 1, "content": 1}, r.stderr
        assert r.returncode == 0
        assert failure_lines(Path(str(env) + ".bad"))[1] == "X-MailRelay-ReasonCode: 550"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_as_client_forwards_messages_whose_ids_are_not_ours(spool: Path) -> None:
    """Any ``<id>.envelope`` with its ``<id>.content`` is a message, as in E-MailRelay 2.6b
    (tests/differential/test_programs.py), and is forwarded under its own name."""
    ids = ["emailrelay.001", "foo", "a.b.c", ".hidden", "sp ace"]
    for mid in ids:
        write_raw(spool, envelope_text("a@example.com", ["b@example.net"]), simple_content(mid), mid=mid)
    with FakeSmtp() as hop:
        done = run_client(spool, hop.address, "--verbose")
        assert done.returncode == 0, done.stderr
        assert sorted(m.data.split(b"\r\n")[2].decode() for m in hop.messages) == sorted(
            f"Subject: test {mid}" for mid in ids
        )
    for mid in ids:
        assert f"forwarding [{mid}]" in done.stderr
    assert list(spool.iterdir()) == []
