"""``emailrelay-passwd``: print a password's hashed form for a secrets file.

What it is for: SPEC.md §1 and the reference guide's "Authentication"
section -- the ``md5`` secrets-file type stores the HMAC-MD5 intermediate
state of a password, which upstream's ``emailrelay-passwd`` prints.

Expects: the password on stdin -- asked for without echo when stdin is a
terminal, otherwise the first line -- without the spaces, tabs and CRs around
it, as upstream reads it (a ``-p`` value is taken as given).

Guarantees: one line on stdout and exit 0, with E-MailRelay 2.6b's options:

* default: base64 of the 32-byte state (``server md5 <id> <this>``),
  e.g. "password123" -> ``9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E=``;
* ``--dotted`` (``-d``): the older eight-numbers form, also accepted in ``md5`` lines;
* ``--base64`` (``-b``): the password given is base64, decoded first;
* ``--password`` (``-p``): the password on the command line instead of stdin;
* ``--hash`` (``-H``): ``md5`` only, as upstream (``sha1``/``sha256`` state
  cannot be restored, and ``--dotted`` is md5's form; any other name is not a
  hash function);
* ours besides: ``--print-base64`` (base64 of the password, for ``plain:b``
  lines) and ``--xtext`` (``-x``, for ``plain`` lines).

Exit 1 with upstream's messages: ``emailrelay-passwd: error: invalid option:
"--x"``, ``emailrelay-passwd: invalid password`` (empty),
``emailrelay-passwd: exception: invalid hash function``, ``emailrelay-passwd:
exception: --dotted only works for md5``, ``too many command-line
arguments``; ``emailrelay-passwd: error: ...`` for the rest.
The password is never echoed or logged.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import sys
from typing import BinaryIO, NoReturn, TextIO

from .. import __version__
from ..auth.md5state import encode_dotted, encode_state, hmac_md5_state
from ..protocol.addresses import xtext_encode

PROGRAM = "emailrelay-passwd"


class PasswdError(Exception):
    """A failure, printed as ``emailrelay-passwd: <prefix><message>``."""

    def __init__(self, message: str, prefix: str = "error: ") -> None:
        super().__init__(message)
        self.prefix = prefix


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise PasswdError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog=PROGRAM,
        description="Prints the hashed form of a password, read from the terminal or stdin, "
        "for an E-MailRelay secrets file.",
    )
    p.add_argument("-H", "--hash", metavar="FUNCTION", help="the hash function (md5, the default)")
    p.add_argument("-b", "--base64", action="store_true", help="the password given is base64-encoded")
    p.add_argument("-p", "--password", metavar="PWD", help="the password (instead of standard input)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("-d", "--dotted", action="store_true", help="print the older dotted-decimal md5 form")
    form.add_argument(
        "--print-base64", action="store_true", help="print base64 of the plain password (plain:b lines)"
    )
    form.add_argument(
        "-x", "--xtext", action="store_true", help="print xtext of the plain password (plain lines)"
    )
    p.add_argument(
        "--version", action="version", version=f"E-MailRelay V2.6 passwd (emailrelay-python {__version__})"
    )
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The options, or upstream's error for an unknown option or an argument."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[-1] in ("-p", "-H", "--password", "--hash"):  # upstream's words for a missing value
        name = argv[-1] if len(argv[-1]) == 2 else '"' + argv[-1] + '"'
        raise PasswdError(f"no value supplied for {name}")
    args, rest = _parser().parse_known_args(argv)
    for item in rest:
        if item.startswith("-") and item != "-":
            raise PasswdError(f'invalid option: "{item.split("=", 1)[0]}"')
    if rest:
        raise PasswdError(
            "too many command-line arguments (the password is read from the standard input)", ""
        )
    if args.hash is not None and args.hash.lower() not in ("md5", "sha1", "sha256"):
        raise PasswdError("invalid hash function", "exception: ")
    if args.dotted and args.hash is not None and args.hash.lower() != "md5":  # before any password
        raise PasswdError("--dotted only works for md5", "exception: ")
    return args


def _check_hash(name: str | None) -> None:
    """Only md5's intermediate state can be stored (upstream's message for sha1 and sha256)."""
    if name is not None and name.lower() != "md5":
        raise PasswdError(
            f"tls error: hash state restoration not implemented for {name.upper()}", "exception: "
        )


_BLANKS = b" \t\r\n"  # what upstream trims off both ends of the line read


def _read_password(stdin: TextIO) -> bytes:
    """The first line read, trimmed as upstream trims it (so ``"   "`` is an empty password)."""
    if stdin.isatty():
        try:
            text = getpass.getpass("Password: ", stream=sys.stderr)
        except EOFError:
            raise PasswdError("no password given") from None
        return text.encode("utf-8").strip(_BLANKS)
    buffer: BinaryIO | None = getattr(stdin, "buffer", None)
    line = buffer.readline() if buffer is not None else stdin.readline().encode("utf-8", "surrogateescape")
    return line.strip(_BLANKS)  # nothing read: upstream's "invalid password", as for an empty line


def _format(args: argparse.Namespace, password: bytes) -> str:
    if args.print_base64:
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
        args = _parse(argv)
        if args.password is not None:
            password = args.password.encode("utf-8", "surrogateescape")
        else:
            password = _read_password(stdin or sys.stdin)
        if args.base64:
            try:
                password = base64.b64decode(password, validate=True)
            except (binascii.Error, ValueError):
                raise PasswdError("base64 encoding error", "exception: ") from None
        if not password:
            raise PasswdError("invalid password", "")
        _check_hash(args.hash)
        out.write(_format(args, password) + "\n")
        out.flush()
    except PasswdError as err:
        print(f"{PROGRAM}: {err.prefix}{err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROGRAM}: error: interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
