"""Fuzz: any config file gives options or a ConfigError/UsageError naming the file; never a crash.

The config file is the last command-line argument (SPEC.md §1): one option per line, no
leading dashes, ``#`` comments.  Inputs are random bytes and lines built from real option
names with random values, ``=`` forms, prefixes (``in-``/``out-``), comments and BOMs.
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.cli.options import OPTIONS
from emailrelay.cli.parse import parse_command_line
from emailrelay.config import from_values
from emailrelay.errors import EmailRelayError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
NAMES = sorted(o.name for o in OPTIONS)
value = st.one_of(
    st.sampled_from(
        ["", "0", "1", "25", "99999", "-1", "a,b", "forward=2,smtp=2", "x=1", "/tmp", "@app/x", "#"]
    ),
    st.text(max_size=15).filter(lambda s: "\n" not in s and "\r" not in s),
)
line = st.one_of(
    st.tuples(
        st.sampled_from(["", "in-", "out-", "x-"]),
        st.sampled_from(NAMES),
        st.sampled_from([" ", "=", "  "]),
        value,
    ).map(lambda t: f"{t[0]}{t[1]}{t[2]}{t[3]}"),
    st.sampled_from(["# comment", "", "   ", "\ufeffport 25", "spool-dir /tmp # trailing"]),
    st.text(max_size=30).filter(lambda s: "\n" not in s),
)


def check(data: bytes) -> None:
    fd, path = tempfile.mkstemp(prefix="fuzz-", suffix=".conf")
    try:
        os.write(fd, data)
        os.close(fd)
        try:
            parsed = parse_command_line([path], app_dir="/opt/app")
            for name in parsed.configs:
                from_values(dict(parsed.configs[name]))
        except EmailRelayError:
            pass
    finally:
        os.unlink(path)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(line, max_size=10).map("\n".join))
def test_option_lines(text: str) -> None:
    check(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    check(data)
