"""Tests for the emailrelay-passwd program."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from emailrelay.auth.md5state import decode_state, hmac_md5_state
from emailrelay.cli import passwd


def run(argv: list[str], stdin_text: str) -> tuple[int, str]:
    out = io.StringIO()
    code = passwd.main(argv, stdin=io.StringIO(stdin_text), stdout=out)
    return code, out.getvalue()


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("password123", "9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E="),
        ("e=mc2", "v1HOpuLIbbvgoJjhueeoqwfvtIp2C+gMA285ke+xxow="),
        ("my password", "x6UJKQF9f7HfhS1M+PW4s8rXIoT+L+WoqLz+rBwSKbw="),
    ],
)
def test_default_prints_base64_state(password: str, expected: str) -> None:
    assert run([], password + "\n") == (0, expected + "\n")


def test_only_first_line_and_its_line_ending_are_used() -> None:
    code, out = run([], "my password\r\nsecond line\n")
    assert (code, out) == (0, "x6UJKQF9f7HfhS1M+PW4s8rXIoT+L+WoqLz+rBwSKbw=\n")


@pytest.mark.parametrize("line", ["   my password  \n", "\tmy password\r\r\n", " my password"])
def test_blanks_around_the_line_are_not_the_password(line: str) -> None:
    """As upstream: spaces, tabs and CRs around the line read are trimmed (tests/differential)."""
    assert run([], line) == (0, "x6UJKQF9f7HfhS1M+PW4s8rXIoT+L+WoqLz+rBwSKbw=\n")
    assert run(["-p", " x "], "")[1] != run(["-p", "x"], "")[1]  # a -p value is taken as given


def test_no_trailing_newline() -> None:
    assert run([], "e=mc2")[1] == "v1HOpuLIbbvgoJjhueeoqwfvtIp2C+gMA285ke+xxow=\n"


def test_dotted() -> None:
    code, out = run(["--dotted"], "password123\n")
    assert code == 0
    assert decode_state(out.strip()) == hmac_md5_state(b"password123")
    assert len(out.strip().split(".")) == 8


def test_base64_of_plain_password() -> None:
    assert run(["--print-base64"], "password123\n") == (0, "cGFzc3dvcmQxMjM=\n")
    assert run(["--print-base64"], "my password\n") == (0, "bXkgcGFzc3dvcmQ=\n")


def test_base64_input_and_password_option() -> None:
    """Upstream's ``-b`` decodes the password given; ``-p`` gives it on the command line."""
    state = "9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E=\n"
    assert run(["-b"], "cGFzc3dvcmQxMjM=\n") == (0, state)
    assert run(["-p", "password123"], "") == (0, state)
    assert run(["--password=cGFzc3dvcmQxMjM=", "--base64", "--hash=md5"], "") == (0, state)


def test_xtext_of_plain_password() -> None:
    assert run(["--xtext"], "my password\n") == (0, "my+20password\n")
    assert run(["-x"], "e=mc2\n") == (0, "e+3Dmc2\n")


@pytest.mark.parametrize(
    ("argv", "stdin_text", "message"),
    [
        ([], "", "invalid password"),
        ([], "\n", "invalid password"),
        ([], "  \t\r\n", "invalid password"),
        (["-d", "-H", "sha256"], "x\n", "exception: --dotted only works for md5"),
        (["--dotted", "--hash=sha1"], "\n", "exception: --dotted only works for md5"),
        (["--bogus"], "x\n", 'error: invalid option: "--bogus"'),
        (["x"], "x\n", "too many command-line arguments (the password is read from the standard input)"),
        (["--hash"], "x\n", 'error: no value supplied for "--hash"'),
        (["-b"], "x y\n", "exception: base64 encoding error"),
        (["--hash=sha1"], "x\n", "exception: tls error: hash state restoration not implemented for SHA1"),
        (["--hash=frob"], "x\n", "exception: invalid hash function"),
        (["--dotted", "--xtext"], "x\n", "error: argument -x/--xtext: not allowed with"),
    ],
)
def test_errors(argv: list[str], stdin_text: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(argv, stdin_text)
    err = capsys.readouterr().err
    assert code == 1
    assert out == ""
    assert err.startswith("emailrelay-passwd: " + message)


def test_tty_uses_getpass(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []

    def fake_getpass(prompt: str = "", stream: object = None) -> str:
        prompts.append(prompt)
        return "password123"

    monkeypatch.setattr(passwd.getpass, "getpass", fake_getpass)
    out = io.StringIO()
    assert passwd.main([], stdin=Tty(), stdout=out) == 0
    assert out.getvalue() == "9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E=\n"
    assert prompts == ["Password: "]


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        passwd.main(["--help", "--verbose"])
    assert exc.value.code == 0
    assert "--dotted" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        passwd.main(["--version"])
    assert exc.value.code == 0
    assert "2.6" in capsys.readouterr().out


def test_program_reads_raw_stdin_bytes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emailrelay.cli.passwd", "--print-base64"],
        input=b"p\xe4ss\n",
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout == b"cORzcw==\n"


def test_program_bad_input_exit_code() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emailrelay.cli.passwd"],
        input=b"",
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == b"emailrelay-passwd: invalid password\n"  # upstream's words
