"""``emailrelay-passwd`` against E-MailRelay 2.6b: every option and error, output and exit code compared.

What it checks (issue 17): the same command line and standard input given
to our program and to the oracle's (``EMAILRELAY_ORACLE_BIN``; skipped
without it) give the same stdout, the same first stderr line and the same
exit code. Upstream follows its "too many command-line arguments" line with
its usage and licence; only that first line is compared. Our own forms
(``--print-base64``, ``--xtext``) are in tests/unit/test_passwd.py.
"""

from __future__ import annotations

import pytest

from tests.support.oracle import SIDES, needs_oracle, run

pytestmark = [needs_oracle, pytest.mark.timeout(60)]

CASES = [
    ((), b"secret\n"),
    ((), b"secret"),
    ((), b"secret\r\n"),
    ((), b"p\xe4ss word\nsecond line\n"),
    (("-d",), b"secret\n"),
    (("--dotted",), b"password123\n"),
    (("-b",), b"c2VjcmV0\n"),
    (("--base64", "-d"), b"c2VjcmV0\n"),
    (("-b",), b"c2Vj cmV0\n"),
    (("-p", "secret"), b""),
    (("--password=c2VjcmV0", "-b"), b""),
    (("--hash=md5",), b"secret\n"),
    (("-H", "MD5", "-d"), b"secret\n"),
    (("-H", "sha256"), b"secret\n"),
    (("--hash=sha1",), b"secret\n"),
    (("--hash=sha1",), b"\n"),
    (("--hash=frob",), b"\n"),
    ((), b"\n"),
    ((), b""),
    (("--foo",), b"secret\n"),
    (("--foo=1",), b"secret\n"),
    (("-p",), b"secret\n"),
    (("--hash",), b"secret\n"),
    (("x",), b"secret\n"),
    (("-p", "x", "y"), b""),
    # spaces, tabs and CRs around the line read are not the password (a -p value is taken as given)
    ((), b"   spaced  \n"),
    ((), b"\tx\r\r\n"),
    ((), b" \n"),
    ((), b"\r"),
    (("-b",), b" c2VjcmV0 \n"),
    (("-p", " x "), b""),
    # --dotted is md5's form only, refused before the password is looked at
    (("-d", "-H", "sha256"), b"secret\n"),
    (("--dotted", "--hash=SHA1"), b"\n"),
    (("-H", "sha1", "-d"), b"secret\n"),
]


@pytest.mark.parametrize(
    ("args", "stdin"), CASES, ids=[f"{' '.join(a) or 'plain'}-{i}" for i, (a, _) in enumerate(CASES)]
)
def test_passwd_as_upstream(args: tuple[str, ...], stdin: bytes) -> None:
    got = {}
    for side in SIDES:
        r = run(side, "emailrelay-passwd", *args, input=stdin)
        got[side] = (r.returncode, r.stdout, r.stderr.split(b"\n", 1)[0])
    assert got["ours"] == got["upstream"]
