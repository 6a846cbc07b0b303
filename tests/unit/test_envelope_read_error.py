"""E-MailRelay 2.6b's words for an envelope it cannot read: :func:`emailrelay.spool.envelope.upstream_read_error`.

What it checks: 2.6b's reader takes the ``#2821.8`` fields in their written order, so the words
name the first field out of place (``cannot read envelope file: expected
"X-MailRelay-<field>:"``), a format it does not know (``unknown format id: <id>``), a missing
recipient line (``bad 'to' line``) or end line (``no end line``), and, without the prefix, a
ToCount that is no number; the order is upstream's (written here by hand, independent of the
writer) and it is the order :meth:`Envelope.to_bytes` writes; ClientCertificate's folded lines
are skipped; LF line ends read as CR LF ones; an older format, a fault 2.6b's reader does not see
(a control character) and an envelope that could not be read at all are the prefix and our
parser's words.  The forwarder fails a message with these words when a client filter spoiled its
envelope, compared with E-MailRelay 2.6b in tests/differential/test_forward_followup3.py.
"""

from __future__ import annotations

import pytest

from emailrelay.spool.envelope import Envelope, EnvelopeError, parse, upstream_read_error

PREFIX = "cannot read envelope file: "
OURS = EnvelopeError("our parser's words")
#: The fields of format #2821.8 in E-MailRelay 2.6b's order, the recipients after ToCount.
UPSTREAM_ORDER = [
    "Format",
    "Content",
    "From",
    "ToCount",
    "Authentication",
    "Client",
    "ClientCertificate",
    "MailFromAuthIn",
    "MailFromAuthOut",
    "ForwardTo",
    "ForwardToAddress",
    "ClientAccountSelector",
    "Utf8MailboxNames",
    "End",
]
FULL = Envelope(
    from_address="a@b.example",
    to_remote=("c@d.example",),
    to_local=("postmaster",),
    client_certificate="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    forward_to="smtp.example:25",
).to_bytes()


def _without(data: bytes, key: str) -> bytes:
    """``data`` less the line of field ``key`` (and, for ClientCertificate, its folded lines)."""
    lines = data.split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"X-MailRelay-{key}:".encode()))
    end = start + 1
    while key == "ClientCertificate" and lines[end].startswith(b" "):
        end += 1
    return b"\r\n".join(lines[:start] + lines[end:])


def test_the_writer_writes_upstreams_order() -> None:
    keys = [line.split(b":")[0].removeprefix(b"X-MailRelay-").decode() for line in FULL.split(b"\r\n")]
    keys = [k for k in keys if k and not k.startswith(("To-", " ", "-"))]
    assert keys == UPSTREAM_ORDER
    assert upstream_read_error(FULL, OURS) == f"{PREFIX}our parser's words"  # nothing out of place


@pytest.mark.parametrize("key", [k for k in UPSTREAM_ORDER if k != "End"])
def test_the_first_field_out_of_place_is_named(key: str) -> None:
    assert upstream_read_error(_without(FULL, key), OURS) == f'{PREFIX}expected "X-MailRelay-{key}:"'


@pytest.mark.parametrize("key", ["Client", "Utf8MailboxNames"])
def test_lf_line_ends_and_folded_certificate_lines(key: str) -> None:
    """The certificate's folded lines are passed over: the field missing after them is named."""
    lf = _without(FULL, key).replace(b"\r\n", b"\n")
    assert upstream_read_error(lf, OURS) == f'{PREFIX}expected "X-MailRelay-{key}:"'


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", f'{PREFIX}expected "X-MailRelay-Format:"'),
        (b"hello world\r\n", f'{PREFIX}expected "X-MailRelay-Format:"'),
        (FULL.replace(b"#2821.8", b"#9999.9"), f"{PREFIX}unknown format id: #9999.9"),
        (_without(FULL, "End"), f"{PREFIX}no end line"),
        (FULL.replace(b"ToCount: 2", b"ToCount: 3"), f"{PREFIX}bad 'to' line"),
        (FULL.replace(b"ToCount: 2", b"ToCount: 1"), f'{PREFIX}expected "X-MailRelay-Authentication:"'),
        (FULL.replace(b"ToCount: 2", b"ToCount: x"), "string conversion error: invalid format: expected unsigned integer: x"),
        (FULL.replace(b"ToCount: 2", b"ToCount: \t2 "), f"{PREFIX}our parser's words"),  # blanks: a number
    ],
    ids=["empty", "garbage", "format", "no-end", "to-missing", "to-extra", "to-count", "to-count-blanks"],
)  # fmt: skip
def test_upstreams_words(data: bytes, words: str) -> None:
    assert upstream_read_error(data, OURS) == words


@pytest.mark.parametrize(
    "data",
    [
        # older (2.6b reads those fields otherwise), refused by our parser: ToCount says 3
        FULL.replace(b"#2821.8", b"#2821.7").replace(b"ToCount: 2", b"ToCount: 3"),
        FULL.replace(b"a@b.example", b"a\x01@b.example"),  # a control character: 2.6b does not mind
    ],
    ids=["older-format", "control-character"],
)
def test_our_parsers_words_otherwise(data: bytes) -> None:
    with pytest.raises(EnvelopeError) as refused:
        parse(data)
    assert upstream_read_error(data, refused.value) == f"{PREFIX}{refused.value}"


def test_an_envelope_not_read_at_all() -> None:
    assert upstream_read_error(None, OURS) == f"{PREFIX}our parser's words"
