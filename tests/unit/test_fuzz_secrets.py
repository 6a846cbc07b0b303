"""Fuzz: any secrets-file text loads or gives a ConfigError naming the line; never another exception.

Inputs are random text and random lines built from the file's own vocabulary (client/server,
plain/md5/plain:b/oauth/none/login/apop, xtext ids with +XX escapes, IP ranges and CIDRs).
Whatever loads answers lookups and trust queries for any address without raising.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.auth.secrets import Secrets
from emailrelay.errors import ConfigError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))

word = st.one_of(
    st.sampled_from(
        [
            "client",
            "server",
            "plain",
            "md5",
            "plain:b",
            "oauth",
            "oauth:b",
            "none",
            "login",
            "apop",
            "APOP",
            "cram-md5",
            "*.*.*.*",
            "127.0.0.1",
            "10.0.0.0/8",
            "::1/128",
            "192.168.*.*",
            "1.2.3.4.5.6.7.8",
            "+41",
            "+0D+0A",
            "+",
            "+zz",
            "=",
            "==",
            "YWJj",
            "alice",
            "x",
            "#",
            "a\x00b",
            "pam:",
        ]
    ),
    st.text(min_size=1, max_size=20).filter(lambda s: not any(c.isspace() for c in s)),
)
lines = st.lists(st.lists(word, max_size=6).map(" ".join), max_size=8).map("\n".join)


def check(text: str) -> None:
    try:
        s = Secrets.from_text(text, "fuzz")
    except ConfigError as exc:
        assert "fuzz" in str(exc)
        return
    for ip in ("127.0.0.1", "10.1.2.3", "::1", "not-an-ip", ""):
        s.trusted(ip)
    for mech in ("PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA256", "APOP"):
        for user in ("alice", "x", "a\x00b", ""):
            s.server_lookup(mech, user)
    s.client_account("")
    s.mechanisms_for_server()


@settings(max_examples=EXAMPLES, deadline=None)
@given(lines)
def test_vocabulary_lines(text: str) -> None:
    check(text)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=500))
def test_random_text(text: str) -> None:
    check(text)
