"""Fuzz: the SASL server and client take any input and answer, never raise (hypothesis).

Every mechanism, every step, arbitrary text (valid base64 of arbitrary bytes, invalid base64,
huge lines, control characters): the server returns a Challenge, Success or Failure; a Success
only for the right password; the client returns a string (``*`` when it cannot answer).
``tests/soak/fuzz.py`` runs these with a bigger budget (FUZZ_EXAMPLES).
"""

from __future__ import annotations

import base64
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.auth.secrets import Secrets
from emailrelay.protocol.sasl import Challenge, Failure, SaslClient, SaslServer, Success

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
SECRETS = Secrets.from_text(
    "server plain alice pw\nserver md5 bob 1.2.3.4.5.6.7.8\nserver plain us+0D+0Aer x\n"
    "client plain carol pw\n"
)

texts = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["", "=", "*", " ", "====", "AGFsaWNlAHB3", "YWxpY2U=", "cHc="]),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    mechanism=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256"]),
    initial=st.one_of(st.none(), texts),
    steps=st.lists(texts, max_size=5),
)
def test_server_answers_any_input(mechanism: str, initial: str | None, steps: list[str]) -> None:
    try:
        server = SaslServer(mechanism, SECRETS.server_lookup, clock=lambda: 1.0)
    except ValueError:
        return  # a mechanism this build does not serve
    step = server.start(initial)
    results = [step]
    for line in steps:
        step = server.step(line)
        results.append(step)
    for r in results:
        assert isinstance(r, Challenge | Success | Failure)
        if isinstance(r, Success):  # only with alice's or us\r\ner's real password
            assert r.identity in ("alice", "us\r\ner")
        if isinstance(r, Challenge):
            assert "\r" not in r.text_b64 and "\n" not in r.text_b64


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    mechanism=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA1"]),
    challenges=st.lists(texts, max_size=5),
)
def test_client_answers_any_challenge(mechanism: str, challenges: list[str]) -> None:
    account = SECRETS.client_account("")
    assert account is not None
    try:
        client = SaslClient(mechanism, account)
    except ValueError:
        return
    first = client.initial_response()
    assert first is None or isinstance(first, str)
    for c in challenges:
        answer = client.respond(c)
        assert isinstance(answer, str)
        assert "\r" not in answer and "\n" not in answer
