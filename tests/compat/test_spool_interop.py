"""Spool interoperability with upstream E-MailRelay, both ways (SPEC.md §3).

Upstream -> us: the envelopes in ``tests/compat/fixtures/`` were written by
hand from SPEC.md §3 (formats ``#2821.3`` … ``#2821.8``, CRLF and LF-only,
null sender, xtext, folded certificate, routing fields, UTF-8 names, ``.bad``
with and without a reason code).  Each is read by our reader with the right
values, forwarded by the real ``emailrelay --as-client`` with the right MAIL
FROM / RCPT TO / content (the ``.bad`` ones after ``unfail-all`` or
``emailrelay-resubmit``), and served over POP.

Us -> upstream: a spool written by our relay (SMTP from smtplib and swaks,
``emailrelay-submit``, a filter editing the envelope, a failed message) passes
an independent strict validator of SPEC.md §3 written here without importing
``emailrelay``, and has the same field set, order and line ends as the files
upstream 2.6 wrote (``tests/fixtures/upstream-2.6/``).  The seed
guide's ``test -f /var/spool/emailrelay/*.envelope.bad`` check works on our
file names.
"""

from __future__ import annotations

import ipaddress
import os
import poplib
import re
import shutil
import smtplib
import stat
import subprocess
import time
from pathlib import Path

import pytest

from emailrelay.spool import envelope as env_format
from tests.support.fake_smtp import FakeSmtp, auth_script
from tests.support.fixtures import UPSTREAM
from tests.support.relay import free_port, program, running_relay, wait_until
from tests.support.sink import run_client, states
from tests.support.sink_counter import AdminClient

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
SWAKS = shutil.which("swaks")

# ---- the hand-made fixtures and what they hold ------------------------------------------------

GOOD = {
    "emailrelay.4242.1700000001.1": dict(
        fmt="#2821.3", eol="lf", from_address="old3@example.com", to_local=("postmaster",),
        to_remote=("remote3@example.net",), content_type="7bit", authentication="", client="192.0.2.3",
    ),
    "emailrelay.4242.1700000002.2": dict(
        fmt="#2821.4", eol="crlf", from_address="cert@example.com", to_local=(),
        to_remote=("remote4@example.net",), content_type="7bit", authentication="", client="192.0.2.4",
    ),
    "emailrelay.4242.1700000003.3": dict(
        fmt="#2821.5", eol="crlf", from_address="alice@example.com", to_local=(),
        to_remote=("bob@example.net", "carol@example.org"), content_type="7bit",
        authentication="alice+2Bsmith+3Dx", client="192.0.2.5", mail_from_auth_in="alice+2Bsmith",
    ),
    "emailrelay.4242.1700000004.4": dict(
        fmt="#2821.6", eol="lf", from_address="routed@example.com", to_local=(),
        to_remote=("remote6@example.net",), content_type="7bit", authentication="", client="192.0.2.6",
        forward_to="smarthost.compat.test:10025", forward_to_address="127.0.0.1:10025",
    ),
    "emailrelay.4242.1700000005.5": dict(
        fmt="#2821.7", eol="crlf", from_address="selector@example.com", to_local=(),
        to_remote=("remote7@example.net",), content_type="7bit", authentication="", client="192.0.2.7",
        client_account_selector="work",
    ),
    "emailrelay.4242.1700000006.6": dict(
        fmt="#2821.8", eol="crlf", from_address="", to_local=(), to_remote=("bounced@example.net",),
        content_type="7bit", authentication="", client="192.0.2.8",
    ),
    "emailrelay.4242.1700000007.7": dict(
        fmt="#2821.8", eol="crlf", from_address="jörg@bücher.example", to_local=(),
        to_remote=("zoë@exämple.net",), content_type="8bit", authentication="", client="192.0.2.9",
        utf8_mailbox_names=True,
    ),
    "emailrelay.4242.1700000008.8": dict(
        fmt="#2821.8", eol="lf", from_address="mixed@example.com", to_local=("alice", "bob"),
        to_remote=("remote8@example.net",), content_type="unknown", authentication="mixed+20user",
        client="192.0.2.10",
    ),
}  # fmt: skip
BAD = {
    "emailrelay.4242.1700000009.9": dict(
        from_address="failed@example.com", to_remote=("nobody@example.net",),
        reason="5.1.1 mailbox unavailable", reason_code="550",
    ),
    "emailrelay.4242.1700000010.10": dict(
        from_address="failed2@example.com", to_remote=("nobody2@example.net",),
        reason="cannot connect to next hop", reason_code="",
    ),
}  # fmt: skip
CERT = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBszCCAVmgAwIBAgIUQ29tcGF0Rml4dHVyZUNlcnQwCgYIKoZIzj0EAwIwFjEU\n"
    "MBIGA1UEAwwLY2xpZW50LnRlc3QwHhcNMjMxMTE0MDAwMDAwWhcNMzMxMTExMDAw\n"
    "MDAwWjAWMRQwEgYDVQQDDAtjbGllbnQudGVzdA==\n"
    "-----END CERTIFICATE-----"
)


def copy_fixtures(spool: Path, ids: list[str], suffix: str = ".envelope") -> None:
    spool.mkdir(parents=True, exist_ok=True)
    for mid in ids:
        shutil.copyfile(FIXTURES / f"{mid}.content", spool / f"{mid}.content")
        shutil.copyfile(FIXTURES / f"{mid}{suffix}", spool / f"{mid}{suffix}")


def message_id(content: bytes) -> str:
    m = re.search(rb"^Message-ID: (<[^>]+>)\r$", content, re.MULTILINE)
    assert m, content[:200]
    return m.group(1).decode()


# ---- an independent validator of SPEC.md §3 (no emailrelay imports) ---------------------------

ORDER = [
    "Format", "Content", "From", "ToCount", "To-Local", "To-Remote", "Authentication", "Client",
    "ClientCertificate", "MailFromAuthIn", "MailFromAuthOut", "ForwardTo", "ForwardToAddress",
    "ClientAccountSelector", "Utf8MailboxNames", "End", "Reason", "ReasonCode",
]  # fmt: skip
NAME = re.compile(r"emailrelay\.([0-9]+)\.([0-9]+)\.([1-9][0-9]*)\.(content|envelope(\.new|\.busy|\.bad)?)")
XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
FIELD = re.compile(r"X-MailRelay-([A-Za-z0-9-]+): (.*)")
RECEIVED = re.compile(
    r"Received: from \S+ \(\[[0-9a-f.:]+\]\) by \S+ with E?SMTPS?A? ; "
    r"[A-Z][a-z]{2}, [0-9]{1,2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}"
)


def validate_envelope(data: bytes, *, failed: bool = False) -> list[str]:
    """Check SPEC.md §3 strictly; return the field names in file order (folded lines skipped)."""
    assert data.endswith(b"\r\n"), "must end with CRLF"
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r"), "CRLF line ends only"
    lines = data[:-2].decode("utf-8").split("\r\n")
    keys: list[str] = []
    values: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith(" "):
            assert keys and keys[-1] == "ClientCertificate", f"continuation after {keys[-1:]}"
            continue
        # an empty reason code has no space after the colon (E-MailRelay 2.6b writes it so)
        m = FIELD.fullmatch(line + " " if line == "X-MailRelay-ReasonCode:" else line)
        assert m, f"not an X-MailRelay- field: {line!r}"
        keys.append(m.group(1))
        values.setdefault(m.group(1), []).append(m.group(2))
    ranked = [ORDER.index(k) for k in keys]  # ValueError for an unknown field
    assert ranked == sorted(ranked), f"field order {keys}"
    expected = [k for k in ORDER if k not in ("To-Local", "To-Remote", "Reason", "ReasonCode")]
    assert [k for k in keys if not k.startswith("To-") and not k.startswith("Reason")] == expected
    assert all(len(v) == 1 for k, v in values.items() if not k.startswith("To-")), "repeated field"
    one = {k: v[0] for k, v in values.items()}
    assert one["Format"] == "#2821.8"
    assert one["Content"] in ("7bit", "8bit", "binarymime", "unknown")
    assert not one["From"].startswith("<") and not one["From"].endswith(">")
    assert int(one["ToCount"]) == len(values.get("To-Local", [])) + len(values.get("To-Remote", [])) > 0
    assert XTEXT.fullmatch(one["Authentication"]), one["Authentication"]
    assert XTEXT.fullmatch(one["MailFromAuthIn"]) and XTEXT.fullmatch(one["MailFromAuthOut"])
    if one["Client"]:
        ipaddress.ip_address(one["Client"])  # an address, no port
    assert one["Utf8MailboxNames"] in ("0", "1")
    assert one["End"] == "1"
    if failed:
        assert keys[-2:] == ["Reason", "ReasonCode"]
        assert one["Reason"] and one["Reason"].isprintable()
        assert re.fullmatch(r"([2-5][0-9][0-9])?", one["ReasonCode"])
        assert not one["Reason"].startswith(one["ReasonCode"] or "no code"), "reason without the code"
    else:
        assert keys[-1] == "End"
    return keys


def validate_content(data: bytes, *, received: bool = True) -> None:
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r"), "CRLF line ends only"
    first = data.split(b"\r\n", 1)[0].decode("utf-8")
    if received:
        assert RECEIVED.fullmatch(first), first
    else:
        assert not first.startswith("Received:"), first


def validate_spool(spool: Path, *, received: bool = True) -> dict[str, list[str]]:
    """Every file of the spool: name, mode 0660, pairing; returns {id: envelope keys}."""
    out: dict[str, list[str]] = {}
    names = sorted(p.name for p in spool.iterdir() if p.is_file())
    pids = set()
    for name in names:
        m = NAME.fullmatch(name)
        assert m, f"bad spool file name {name}"
        pids.add(m.group(1))
        assert abs(int(m.group(2)) - time.time()) < 3600
        assert stat.S_IMODE((spool / name).stat().st_mode) == 0o660, f"{name} mode"
        mid = name[: name.index(".content")] if name.endswith(".content") else name[: name.index(".envelope")]
        if name.endswith(".content"):
            validate_content((spool / name).read_bytes(), received=received)
            assert [n for n in names if n.startswith(mid + ".envelope")], f"{name} without envelope"
        else:
            assert (spool / f"{mid}.content").exists()
            out[mid] = validate_envelope((spool / name).read_bytes(), failed=name.endswith(".bad"))
    return out


def upstream_keys(name: str) -> list[str]:
    return validate_envelope((UPSTREAM / name).read_bytes(), failed=name.endswith(".bad"))


# ---- upstream -> us ----------------------------------------------------------------------------


@pytest.mark.parametrize("mid", sorted({**GOOD, **BAD}))
def test_hand_made_fixtures_are_read(mid: str) -> None:
    if mid in GOOD:
        want = dict(GOOD[mid])
        fmt, eol = want.pop("fmt"), want.pop("eol")
        raw = (FIXTURES / f"{mid}.envelope").read_bytes()
        assert raw.startswith(f"X-MailRelay-Format: {fmt}".encode())
        assert (b"\r\n" in raw) == (eol == "crlf")
        assert raw.count(b"\n") == raw.count(b"\r\n" if eol == "crlf" else b"\n")
    else:
        want = dict(BAD[mid])
        raw = (FIXTURES / f"{mid}.envelope.bad").read_bytes()
    env = env_format.parse(raw)
    for key, value in want.items():
        assert getattr(env, key) == value, key
    assert env.client_certificate == (CERT if mid.endswith(".2") else "")
    if mid not in BAD:
        assert env.reason is None and env.reason_code is None
    # what we would write back is SPEC §3 #2821.8, for every input format
    validate_envelope(env.to_bytes(), failed=mid in BAD)


def test_validator_accepts_upstream_written_files() -> None:
    for name in (
        "auth-local-remote.envelope",
        "eightbit.envelope",
        "submitted.envelope",
        "failed.envelope.bad",
    ):
        upstream_keys(name)
    validate_content((UPSTREAM / "auth-local-remote.content").read_bytes())
    validate_content((UPSTREAM / "eightbit.content").read_bytes())
    validate_content((UPSTREAM / "submitted.content").read_bytes(), received=False)
    with pytest.raises(AssertionError):  # and it is strict
        validate_envelope((FIXTURES / "emailrelay.4242.1700000008.8.envelope").read_bytes())


def test_hand_made_fixtures_are_forwarded(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    copy_fixtures(spool, sorted(GOOD))
    # fixture #5's ClientAccountSelector "work" needs a client line, and the others a default one
    # (E-MailRelay 2.6b fails a message whose selector has none, the empty one included:
    # tests/differential/test_routing_connections.py, test_guide_part1_client.py)
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain worker secret work\nclient plain someone secret\n")
    extensions = ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 10000000", "AUTH PLAIN")
    with (
        FakeSmtp(extensions=extensions, auth=auth_script("235 2.7.0 ok")) as hop,
        FakeSmtp(extensions=extensions, auth=auth_script("235 2.7.0 ok")) as routed,
    ):
        routed_env = spool / "emailrelay.4242.1700000004.4.envelope"  # ForwardToAddress -> the second hop
        routed_env.write_bytes(routed_env.read_bytes().replace(b"127.0.0.1:10025", routed.address.encode()))
        r = run_client(spool, hop.address, "--client-auth", str(secrets))
        assert r.returncode == 0, r.stderr
        assert states(spool) == {}, sorted(p.name for p in spool.iterdir())
        got = {m.message_id: m for m in hop.messages}
        assert [m.message_id for m in routed.messages] == ["<fx-4@compat.test>"]
        got["<fx-4@compat.test>"] = routed.messages[0]
        assert len(got) == len(GOOD) == len(hop.messages) + 1
        for mid, want in GOOD.items():
            content = (FIXTURES / f"{mid}.content").read_bytes()
            m = got[message_id(content)]
            assert m.mail_from == want["from_address"], mid
            assert m.rcpts == list(want["to_remote"]), mid  # To-Local recipients are not forwarded
            assert m.data == content, mid
            if want.get("utf8_mailbox_names"):
                assert "SMTPUTF8" in m.mail_params.upper() and "BODY=8BITMIME" in m.mail_params.upper()


def test_hand_made_bad_fixtures_are_forwarded_after_unfail_all(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    copy_fixtures(spool, sorted(BAD), ".envelope.bad")
    admin_port = free_port()
    with running_relay(tmp_path, "--admin", str(admin_port), spool=spool) as relay:
        assert wait_until(lambda: "admin server on" in relay.log(), 20), relay.log()
        with AdminClient(admin_port) as admin:
            assert admin.cmd("unfail-all").endswith(b"E-MailRelay> ")
            assert wait_until(lambda: states(spool).get("bad", 0) == 0, 10), sorted(os.listdir(spool))
    for mid, want in BAD.items():
        raw = (spool / f"{mid}.envelope").read_bytes()  # renamed back, reason lines kept
        assert raw == (FIXTURES / f"{mid}.envelope.bad").read_bytes()
        assert raw.endswith(f"X-MailRelay-ReasonCode: {want['reason_code']}\r\n".encode())
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address)
        assert r.returncode == 0, r.stderr
        got = {m.message_id: m for m in hop.messages}
        for mid, want in BAD.items():
            content = (FIXTURES / f"{mid}.content").read_bytes()
            m = got[message_id(content)]
            assert (m.mail_from, m.rcpts, m.data) == (want["from_address"], list(want["to_remote"]), content)
    assert states(spool) == {}


def test_hand_made_bad_fixture_is_forwarded_after_resubmit(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    copy_fixtures(spool, sorted(BAD), ".envelope.bad")
    done = subprocess.run(
        [program("emailrelay-resubmit"), str(spool)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert states(spool) == {"envelope": 2, "content": 2}
    for mid in BAD:  # renamed back; upstream's resubmit script leaves the reason lines too
        assert (
            (spool / f"{mid}.envelope")
            .read_bytes()
            .startswith((FIXTURES / f"{mid}.envelope.bad").read_bytes())
        )
    with FakeSmtp() as hop:
        assert run_client(spool, hop.address).returncode == 0
        got = {m.message_id: m for m in hop.messages}
        for mid, want in BAD.items():
            content = (FIXTURES / f"{mid}.content").read_bytes()
            m = got[message_id(content)]
            assert (m.mail_from, m.rcpts, m.data) == (want["from_address"], list(want["to_remote"]), content)
    assert states(spool) == {}


def test_hand_made_fixtures_are_pop_served(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    copy_fixtures(spool, sorted(GOOD))
    secrets = tmp_path / "pop.auth"
    secrets.write_text("server plain alice secret\n")
    pop_port = free_port()
    with running_relay(
        tmp_path,
        "--pop",
        "--pop-port",
        str(pop_port),
        "--pop-auth",
        str(secrets),
        "--pop-no-delete",
        spool=spool,
    ) as relay:
        assert wait_until(lambda: f"pop server on 127.0.0.1:{pop_port}" in relay.log(), 20), relay.log()
        pop = poplib.POP3("127.0.0.1", pop_port, timeout=15)
        try:
            pop.user("alice")
            pop.pass_("secret")
            count, _ = pop.stat()
            assert count == len(GOOD)
            served = {}
            for n in range(1, count + 1):
                _, lines, _ = pop.retr(n)
                body = b"\r\n".join(lines) + b"\r\n"
                served[message_id(body)] = body
            pop.quit()
        finally:
            pop.close()
    for mid in GOOD:
        content = (FIXTURES / f"{mid}.content").read_bytes()
        assert served[message_id(content)] == content


# ---- us -> upstream -----------------------------------------------------------------------------


def test_relay_smtp_spool_is_valid_upstream_input(tmp_path: Path) -> None:
    with running_relay(tmp_path) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=15) as smtp:
            smtp.ehlo("client.example.com")
            smtp.sendmail(
                "alice@example.com", ["bob@example.net", "carol@example.org"], b"Subject: one\r\n\r\nhi\r\n"
            )
            smtp.sendmail("", ["postmaster@example.net"], b"Subject: null sender\r\n\r\n.dot\r\n")
        if SWAKS:
            r = subprocess.run(
                [SWAKS, "--server", f"127.0.0.1:{relay.port}", "--from", "s@example.com", "--to", "t@example.net",
                 "--helo", "swaks.example", "--body", "from swaks"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr
        want = 3 if SWAKS else 2
        assert wait_until(lambda: states(relay.spool).get("envelope", 0) == want, 10)
        keys = validate_spool(relay.spool)
        pid_part = {name.split(".")[1] for name in os.listdir(relay.spool)}
    assert len(keys) == want and len(pid_part) == 1
    reference = upstream_keys("submitted.envelope")  # one remote recipient
    for k in keys.values():
        assert [x for x in k if x != "To-Remote"] == [x for x in reference if x != "To-Remote"]
    envelopes = [p.read_bytes() for p in relay.spool.glob("*.envelope")]
    assert any(b"X-MailRelay-From: \r\n" in e for e in envelopes)  # the null sender: empty, no <>
    assert any(b"X-MailRelay-ToCount: 2\r\n" in e for e in envelopes)
    assert all(b"X-MailRelay-Client: 127.0.0.1\r\n" in e for e in envelopes)
    # content: exactly as received after dot-unstuffing, after our Received line
    contents = [p.read_bytes() for p in relay.spool.glob("*.content")]
    assert any(c.split(b"\r\n", 1)[1] == b"Subject: null sender\r\n\r\n.dot\r\n" for c in contents)


def test_anonymous_relay_adds_no_received_line(tmp_path: Path) -> None:
    with running_relay(tmp_path, "--anonymous") as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=15) as smtp:
            smtp.sendmail("a@example.com", ["b@example.net"], b"Subject: anon\r\n\r\nx\r\n")
        assert wait_until(lambda: states(relay.spool).get("envelope", 0) == 1, 10)
        validate_spool(relay.spool, received=False)
        (content,) = relay.spool.glob("*.content")
        assert content.read_bytes() == b"Subject: anon\r\n\r\nx\r\n"


def test_submit_spool_is_valid_upstream_input(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    for i in range(3):
        r = subprocess.run(
            [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "sub@example.com", f"r{i}@example.net"],
            input=b"Subject: submitted\n\nbare LF lines in\n", capture_output=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    keys = validate_spool(spool, received=False)  # upstream's submit adds no Received line either
    assert len(keys) == 3 and all(k == upstream_keys("submitted.envelope") for k in keys.values())
    ids = [NAME.fullmatch(p.name).groups()[:3] for p in spool.glob("*.envelope")]  # type: ignore[union-attr]
    assert len(set(ids)) == 3 and {seq for _, _, seq in ids} == {"1"}  # one process each: seq starts at 1


def test_filter_edited_envelope_stays_valid_and_is_honoured(tmp_path: Path) -> None:
    script = tmp_path / "route.sh"
    script.write_text(
        "#!/bin/sh\n"
        "# an upstream-style filter: set ForwardTo in the envelope (argument 2), keep CRLF\n"
        "sed -i 's/^X-MailRelay-ForwardTo: \\r$/X-MailRelay-ForwardTo: smarthost.example:587\\r/' \"$2\"\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    with running_relay(tmp_path, "--filter", str(script)) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=15) as smtp:
            smtp.sendmail("a@example.com", ["b@example.net"], b"Subject: routed\r\n\r\nx\r\n")
        assert wait_until(lambda: states(relay.spool).get("envelope", 0) == 1, 10)
        keys = validate_spool(relay.spool)
        (path,) = relay.spool.glob("*.envelope")
        raw = path.read_bytes()
    assert b"X-MailRelay-ForwardTo: smarthost.example:587\r\n" in raw
    assert next(iter(keys.values())) == upstream_keys("submitted.envelope")
    assert env_format.parse(raw).forward_to == "smarthost.example:587"


def test_failed_message_is_valid_upstream_bad_envelope(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    r = subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "a@example.com", "b@example.net"],
        input=b"Subject: will fail\r\n\r\nx\r\n", capture_output=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with FakeSmtp(replies={"final": "550 5.7.1 rejected for testing"}) as hop:
        r = run_client(spool, hop.address)  # the forwarding relay writes the .bad
    assert r.returncode == 0  # a refusal is not an error of the run, as in E-MailRelay 2.6b
    assert states(spool) == {"bad": 1, "content": 1}
    keys = validate_spool(spool, received=False)
    assert list(keys.values()) == [upstream_keys("failed.envelope.bad")]
    (bad,) = spool.glob("*.envelope.bad")
    upstream_tail = (UPSTREAM / "failed.envelope.bad").read_bytes().split(b"X-MailRelay-End: 1\r\n")[1]
    assert bad.read_bytes().split(b"X-MailRelay-End: 1\r\n")[1] == upstream_tail


def test_seed_guide_shell_check_finds_bad_envelopes(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    check = f"if test -f {spool}/*.envelope.bad\nthen\n\techo Failed mail >&2\nfi\n"
    assert subprocess.run(["sh", "-c", check], capture_output=True, text=True).stderr == ""
    r = subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "a@example.com", "b@example.net"],
        input=b"Subject: x\r\n\r\n", capture_output=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0
    assert subprocess.run(["sh", "-c", check], capture_output=True, text=True).stderr == ""  # not failed yet
    with FakeSmtp(replies={"final": "554 5.0.0 no"}) as hop:
        assert run_client(spool, hop.address).returncode == 0  # refused: failed, not an error of the run
    assert subprocess.run(["sh", "-c", check], capture_output=True, text=True).stderr == "Failed mail\n"
    listed = subprocess.run(
        ["sh", "-c", f"ls {spool}/emailrelay.*.envelope.bad"], capture_output=True, text=True
    )
    assert listed.returncode == 0 and NAME.fullmatch(Path(listed.stdout.strip()).name)
