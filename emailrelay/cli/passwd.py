"""``emailrelay-passwd``: print a password's hashed form for a secrets file.

What it is for: SPEC.md §1 and the reference guide's "Authentication"
section -- the ``md5`` secrets-file type stores the HMAC-MD5 intermediate
state of a password, which upstream's ``emailrelay-passwd`` prints.

Expects: the password on stdin -- asked for without echo when stdin is a
terminal, otherwise the first line (its line ending removed, nothing else).

Guarantees: one line on stdout and exit 0:

* default: base64 of the 32-byte state (``server md5 <id> <this>``),
  e.g. "password123" -> ``9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E=``;
* ``--dotted``: the older eight-numbers form, also accepted in ``md5`` lines;
* ``--base64`` (``-b``): base64 of the password itself (``plain:b`` lines);
* ``--xtext`` (``-x``): xtext of the password (``plain`` lines).

Exit 1 with ``emailrelay-passwd: error: ...`` on a bad command line, no
input or an empty password.  The password is never echoed or logged.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import sys
from typing import BinaryIO, NoReturn, TextIO

from .. import __version__
from ..auth.md5state import encode_dotted, encode_state, hmac_md5_state
from ..protocol.addresses import xtext_encode

PROGRAM = "emailrelay-passwd"


class PasswdError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise PasswdError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog=PROGRAM,
        description="Prints the hashed form of a password, read from the terminal or stdin, "
        "for an E-MailRelay secrets file.",
    )
    form = p.add_mutually_exclusive_group()
    form.add_argument("--dotted", action="store_true", help="print the older dotted-decimal md5 form")
    form.add_argument(
        "-b", "--base64", action="store_true", help="print base64 of the plain password (plain:b lines)"
    )
    form.add_argument(
        "-x", "--xtext", action="store_true", help="print xtext of the plain password (plain lines)"
    )
    p.add_argument(
        "--version", action="version", version=f"E-MailRelay V2.6 passwd (emailrelay-python {__version__})"
    )
    return p


def _read_password(stdin: TextIO) -> bytes:
    if stdin.isatty():
        try:
            text = getpass.getpass("Password: ", stream=sys.stderr)
        except EOFError:
            raise PasswdError("no password given") from None
        return text.encode("utf-8")
    buffer: BinaryIO | None = getattr(stdin, "buffer", None)
    line = buffer.readline() if buffer is not None else stdin.readline().encode("utf-8", "surrogateescape")
    if not line:
        raise PasswdError("no password given on standard input")
    return line.rstrip(b"\r\n") if line.endswith(b"\n") else line


def _format(args: argparse.Namespace, password: bytes) -> str:
    if args.base64:
        return base64.b64encode(password).decode("ascii")
    if args.xtext:
        try:
            return xtext_encode(password.decode("utf-8"))
        except UnicodeDecodeError:
            raise PasswdError("--xtext needs a UTF-8 password; use --base64") from None
    state = hmac_md5_state(password)
    return encode_dotted(state) if args.dotted else encode_state(state)


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    try:
        args = _parser().parse_args(argv)
        password = _read_password(stdin or sys.stdin)
        if not password:
            raise PasswdError("empty password")
        out.write(_format(args, password) + "\n")
        out.flush()
    except PasswdError as err:
        print(f"{PROGRAM}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROGRAM}: error: interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
