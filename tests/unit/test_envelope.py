"""Envelope files (SPEC.md §3): byte-exact against upstream 2.6 fixtures, older formats, hostile input."""

from __future__ import annotations

import pytest

from emailrelay.spool import envelope as env_format
from emailrelay.spool.envelope import Envelope, EnvelopeError
from tests.support.fixtures import UPSTREAM


def fixture_bytes(name: str) -> bytes:
    return (UPSTREAM / name).read_bytes()


def fixture_envelopes() -> list[str]:
    return sorted(p.name for p in UPSTREAM.iterdir() if ".envelope" in p.name)


# A complete #2821.8 envelope with every field set, built by hand (independent of the writer).
FULL = (
    b"X-MailRelay-Format: #2821.8\r\n"
    b"X-MailRelay-Content: 8bit\r\n"
    b"X-MailRelay-From: alice@example.com\r\n"
    b"X-MailRelay-ToCount: 3\r\n"
    b"X-MailRelay-To-Local: postmaster\r\n"
    b"X-MailRelay-To-Remote: bob@example.net\r\n"
    b"X-MailRelay-To-Remote: carol@example.org\r\n"
    b"X-MailRelay-Authentication: alice+2Bx\r\n"
    b"X-MailRelay-Client: 192.0.2.7\r\n"
    b"X-MailRelay-ClientCertificate: -----BEGIN CERTIFICATE-----\r\n"
    b" MIIBszCCAVmgAwIBAgIUXYZ\r\n"
    b" -----END CERTIFICATE-----\r\n"
    b"X-MailRelay-MailFromAuthIn: alice\r\n"
    b"X-MailRelay-MailFromAuthOut: +3C+3E\r\n"
    b"X-MailRelay-ForwardTo: smarthost.example.com:587\r\n"
    b"X-MailRelay-ForwardToAddress: 192.0.2.25:587\r\n"
    b"X-MailRelay-ClientAccountSelector: sel1\r\n"
    b"X-MailRelay-Utf8MailboxNames: 1\r\n"
    b"X-MailRelay-End: 1\r\n"
)


# ---------------------------------------------------------------- upstream fixtures


def test_fixture_directory_has_envelopes() -> None:
    names = fixture_envelopes()
    assert "submitted.envelope" in names and "failed.envelope.bad" in names, names


@pytest.mark.parametrize("name", fixture_envelopes())
def test_fixture_round_trip_is_byte_exact(name: str) -> None:
    data = fixture_bytes(name)
    assert data.endswith(b"\r\n") and b"\n" not in data.replace(b"\r\n", b"")
    parsed = env_format.parse(data)
    assert parsed.to_bytes() == data
    # and a second round trip is stable
    assert env_format.parse(parsed.to_bytes()) == parsed


def test_fixture_fields_are_read() -> None:
    e = env_format.parse(fixture_bytes("auth-local-remote.envelope"))
    assert e.from_address == "alice@example.com"
    assert e.to_local == ("postmaster",)
    assert e.to_remote == ("bob@example.net", "carol@example.org")
    assert e.recipient_count == 3
    assert e.authentication == "alice"
    assert e.client == "127.0.0.1"
    assert e.content_type == "unknown"
    assert e.utf8_mailbox_names is False
    assert e.reason is None and e.reason_code is None
    assert env_format.parse(fixture_bytes("eightbit.envelope")).content_type == "8bit"


def test_writer_builds_fixture_from_plain_fields() -> None:
    """The writer alone (no parsed input) produces upstream's bytes."""
    built = Envelope(
        from_address="alice@example.com",
        to_remote=("bob@example.net", "carol@example.org"),
        to_local=("postmaster",),
        content_type="unknown",
        authentication="alice",
        client="127.0.0.1",
    )
    assert built.to_bytes() == fixture_bytes("auth-local-remote.envelope")
    submitted = Envelope(from_address="sub@example.com", to_remote=("rcpt@example.net",), client="127.0.0.1")
    assert submitted.to_bytes() == fixture_bytes("submitted.envelope")


def test_failed_fixture_reason_fields() -> None:
    e = env_format.parse(fixture_bytes("failed.envelope.bad"))
    assert e.reason == "5.7.1 rejected for testing"
    assert e.reason_code == "550"
    assert e.to_remote == ("b@example.net",)


def test_with_failure_produces_failed_fixture_from_its_base() -> None:
    bad = fixture_bytes("failed.envelope.bad")
    lines = bad.split(b"\r\n")
    assert lines[-1] == b""
    base = b"\r\n".join(lines[:-3]) + b"\r\n"  # without Reason and ReasonCode
    assert base.endswith(b"X-MailRelay-End: 1\r\n")
    failed = env_format.parse(base).with_failure("5.7.1 rejected for testing", 550)
    assert failed.to_bytes() == bad
    assert env_format.parse(bad).without_failure().to_bytes() == base


def test_with_failure_without_code_and_with_hostile_reason() -> None:
    e = Envelope(from_address="a@example.com", to_remote=("b@example.net",))
    out = e.with_failure("421 bye\r\nX-MailRelay-From: evil\x00", None).to_bytes()
    tail = out.split(b"X-MailRelay-End: 1\r\n", 1)[1]
    lines = tail.split(b"\r\n")
    assert lines[0].startswith(b"X-MailRelay-Reason: 421 bye")
    assert b"\x00" not in out and b"\n" not in lines[0]
    assert lines[1] == b"X-MailRelay-ReasonCode:" and lines[2:] == [b""]  # no space: E-MailRelay 2.6b's
    # a re-failed envelope carries exactly one reason
    again = env_format.parse(out).with_failure("second", 451).to_bytes()
    assert again.count(b"X-MailRelay-Reason: ") == 1 and again.endswith(
        b"X-MailRelay-Reason: second\r\nX-MailRelay-ReasonCode: 451\r\n"
    )


# ---------------------------------------------------------------- our own writer


def test_full_envelope_round_trip() -> None:
    e = env_format.parse(FULL)
    assert e.to_bytes() == FULL
    assert e.client_certificate.splitlines() == [
        "-----BEGIN CERTIFICATE-----",
        "MIIBszCCAVmgAwIBAgIUXYZ",
        "-----END CERTIFICATE-----",
    ]
    assert e.mail_from_auth_in == "alice" and e.mail_from_auth_out == "+3C+3E"
    assert e.forward_to == "smarthost.example.com:587"
    assert e.forward_to_address == "192.0.2.25:587"
    assert e.client_account_selector == "sel1"
    assert e.utf8_mailbox_names is True
    assert e.content_type == "8bit"


def test_null_sender_and_utf8_values() -> None:
    e = Envelope(from_address="", to_remote=("j\u00fcrgen@b\u00fccher.example",), utf8_mailbox_names=True)
    data = e.to_bytes()
    assert b"X-MailRelay-From: \r\n" in data
    assert "X-MailRelay-To-Remote: j\u00fcrgen@b\u00fccher.example\r\n".encode() in data
    assert env_format.parse(data) == e


def test_lf_only_line_ends_are_read() -> None:
    lf = FULL.replace(b"\r\n", b"\n")
    e = env_format.parse(lf)
    assert e == env_format.parse(FULL)
    assert e.to_bytes() == FULL  # writers always write CRLF


def test_mixed_line_ends_and_missing_final_newline() -> None:
    lines = FULL.split(b"\r\n")
    mixed = b"\n".join(lines[:5]) + b"\n" + b"\r\n".join(lines[5:])
    assert env_format.parse(mixed) == env_format.parse(FULL)
    assert env_format.parse(FULL[:-2]) == env_format.parse(FULL)


# The fields each older format has (upstream's envelope history).
OLD_FORMATS = {
    "#2821.3": ["Content", "From", "ToCount", "*To", "Authentication", "Client", "End"],
    "#2821.4": ["Content", "From", "ToCount", "*To", "Authentication", "Client", "ClientCertificate", "End"],
    "#2821.5": [
        "Content", "From", "ToCount", "*To", "Authentication", "Client", "ClientCertificate",
        "MailFromAuthIn", "MailFromAuthOut", "End",
    ],
    "#2821.6": [
        "Content", "From", "ToCount", "*To", "Authentication", "Client", "ClientCertificate",
        "MailFromAuthIn", "MailFromAuthOut", "ForwardTo", "ForwardToAddress", "End",
    ],
    "#2821.7": [
        "Content", "From", "ToCount", "*To", "Authentication", "Client", "ClientCertificate",
        "MailFromAuthIn", "MailFromAuthOut", "ForwardTo", "ForwardToAddress", "ClientAccountSelector", "End",
    ],
}  # fmt: skip

_OLD_VALUES = {
    "Content": "7bit",
    "From": "old@example.com",
    "ToCount": "2",
    "Authentication": "olduser",
    "Client": "192.0.2.1",
    "ClientCertificate": "",
    "MailFromAuthIn": "",
    "MailFromAuthOut": "",
    "ForwardTo": "relay.example.net",
    "ForwardToAddress": "",
    "ClientAccountSelector": "",
    "End": "1",
}


@pytest.mark.parametrize("fmt", sorted(OLD_FORMATS))
@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_older_formats_are_read_and_rewritten_as_2821_8(fmt: str, eol: bytes) -> None:
    lines = [f"X-MailRelay-Format: {fmt}"]
    for key in OLD_FORMATS[fmt]:
        if key == "*To":
            lines += ["X-MailRelay-To-Local: postmaster", "X-MailRelay-To-Remote: new@example.net"]
        else:
            lines.append(f"X-MailRelay-{key}: {_OLD_VALUES[key]}")
    data = eol.join(x.encode() for x in lines) + eol
    e = env_format.parse(data)
    assert e.from_address == "old@example.com"
    assert e.to_local == ("postmaster",) and e.to_remote == ("new@example.net",)
    assert e.content_type == "7bit" and e.authentication == "olduser" and e.client == "192.0.2.1"
    assert e.forward_to == ("relay.example.net" if "ForwardTo" in OLD_FORMATS[fmt] else "")
    assert e.utf8_mailbox_names is False and e.client_account_selector == ""
    out = e.to_bytes()
    assert out.startswith(b"X-MailRelay-Format: #2821.8\r\n")
    assert out.count(b"\r\n") == out.count(b"\n") == 16  # 14 fields + 2 recipient lines
    assert b"X-MailRelay-Utf8MailboxNames: 0\r\n" in out and out.endswith(b"X-MailRelay-End: 1\r\n")


def test_filter_edited_envelope_forward_to() -> None:
    """A filter rewrote the file with LF line ends and set ForwardTo (SPEC.md §3)."""
    edited = FULL.replace(
        b"X-MailRelay-ForwardTo: smarthost.example.com:587\r\n", b"X-MailRelay-ForwardTo: other.example:25\n"
    ).replace(b"X-MailRelay-ForwardToAddress: 192.0.2.25:587\r\n", b"X-MailRelay-ForwardToAddress: \n")
    e = env_format.parse(edited)
    assert e.forward_to == "other.example:25"
    assert e.forward_to_address == ""
    assert e.to_bytes() == FULL.replace(b"smarthost.example.com:587", b"other.example:25").replace(
        b"X-MailRelay-ForwardToAddress: 192.0.2.25:587", b"X-MailRelay-ForwardToAddress: "
    )


def test_filter_edited_fixture_keeps_every_other_byte() -> None:
    base = fixture_bytes("submitted.envelope")
    edited = base.replace(b"X-MailRelay-ForwardTo: \r\n", b"X-MailRelay-ForwardTo: mx.example.org\r\n")
    e = env_format.parse(edited)
    assert e.forward_to == "mx.example.org"
    assert e.to_bytes() == edited


def test_unknown_lines_after_end_are_kept() -> None:
    data = FULL + b"X-Filter-Note: seen\r\n"
    e = env_format.parse(data)
    assert e.to_bytes() == data


def test_unknown_fields_before_end_are_ignored() -> None:
    data = FULL.replace(b"X-MailRelay-End: 1\r\n", b"X-MailRelay-FutureField: x\r\nX-MailRelay-End: 1\r\n")
    assert env_format.parse(data) == env_format.parse(FULL)


# ---------------------------------------------------------------- hostile or broken input


@pytest.mark.parametrize(
    "bad_value",
    [b"a\rb@example.com", b"a\x00b@example.com", b"a\x01b@example.com", b"a\x1b[2Jb@example.com", b"a\x7f@x"],
    ids=["cr", "nul", "soh", "esc", "del"],
)
@pytest.mark.parametrize("field", ["From", "To-Remote", "ForwardTo", "Client"])
def test_control_characters_in_values_are_rejected(field: str, bad_value: bytes) -> None:
    lines = FULL.split(b"\r\n")
    prefix = f"X-MailRelay-{field}: ".encode()
    index = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    lines[index] = prefix + bad_value
    with pytest.raises(EnvelopeError):
        env_format.parse(b"\r\n".join(lines))


@pytest.mark.parametrize("bad", [b"\x00", b"\r", b"\x1b"], ids=["nul", "cr", "esc"])
def test_control_characters_in_folded_certificate_are_rejected(bad: bytes) -> None:
    data = FULL.replace(b" MIIBszCCAVmgAwIBAgIUXYZ\r\n", b" MIIBsz" + bad + b"CCAVmg\r\n")
    with pytest.raises(EnvelopeError):
        env_format.parse(data)


@pytest.mark.parametrize("count", [b"2", b"4", b"0", b"x", b"", b"-3"])
def test_wrong_to_count_is_rejected(count: bytes) -> None:
    data = FULL.replace(b"X-MailRelay-ToCount: 3\r\n", b"X-MailRelay-ToCount: " + count + b"\r\n")
    with pytest.raises(EnvelopeError):
        env_format.parse(data)


@pytest.mark.parametrize(
    "data",
    [
        FULL.replace(b"#2821.8", b"#2821.9"),
        FULL.replace(b"#2821.8", b"#2821.2"),
        FULL.replace(b"X-MailRelay-Format: #2821.8\r\n", b""),
        FULL.replace(b"X-MailRelay-From: alice@example.com\r\n", b""),
        FULL.replace(b"X-MailRelay-End: 1\r\n", b""),
        FULL.replace(b"X-MailRelay-Client: 192.0.2.7\r\n", b"Client: 192.0.2.7\r\n"),
        FULL.replace(b"X-MailRelay-Client: 192.0.2.7\r\n", b" continuation\r\n"),
        b"",
        b"garbage\r\n",
    ],
    ids=["future", "ancient", "no-format", "no-from", "no-end", "foreign", "stray-fold", "empty", "garbage"],
)
def test_broken_envelopes_are_rejected(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        env_format.parse(data)


def test_writer_refuses_control_characters() -> None:
    for kwargs in (
        {"from_address": "a\r\nX-MailRelay-To-Remote: evil@example.com"},
        {"from_address": "a@x", "to_remote": ("b\n@y",)},
        {"from_address": "a@x", "forward_to": "host\x00"},
        {"from_address": "a@x", "client_certificate": "line1\nli\rne2"},
    ):
        with pytest.raises(EnvelopeError):
            Envelope(**kwargs).to_bytes()  # type: ignore[arg-type]
