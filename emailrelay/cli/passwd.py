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
* ``--help`` (``-h``): upstream's usage text (every option with ``--verbose``/``-v``, which is
  otherwise ignored, as upstream's), exit 0;
* ours besides: ``--print-base64`` (base64 of the password, for ``plain:b``
  lines), ``--xtext`` (``-x``, for ``plain`` lines) and ``--version``.

Options are read as upstream reads them (:mod:`emailrelay.cli.upstream_getopt`, as
``emailrelay-submit`` reads its own): whole names only, a flag takes a yes or a no after ``=``, a
value option given twice with two values is a ``duplicate use``, and every problem is reported,
before any ``--help``.

Exit 1 with upstream's messages: ``emailrelay-passwd: error: invalid option:
"--x"``, ``emailrelay-passwd: invalid password`` (empty),
``emailrelay-passwd: exception: invalid hash function``, ``emailrelay-passwd:
exception: --dotted only works for md5``, ``too many command-line
arguments``; ``emailrelay-passwd: error: ...`` for the rest.
The password is never echoed or logged.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import sys
from typing import BinaryIO, TextIO

from .. import COPYRIGHT, WARRANTY, __version__
from ..auth.md5state import encode_dotted, encode_state, hmac_md5_state
from ..protocol.addresses import xtext_encode
from .upstream_getopt import Given, Option, tokenize

PROGRAM = "emailrelay-passwd"
VERSION = f"E-MailRelay V2.6 passwd (emailrelay-python {__version__})"


class PasswdError(Exception):
    """A failure, printed as ``emailrelay-passwd: <prefix><message>``."""

    def __init__(self, message: str, prefix: str = "error: ") -> None:
        super().__init__(message)
        self.prefix = prefix


# ---- options, read as E-MailRelay 2.6b reads them (upstream_getopt) -----------------------------


_OPTIONS = (
    Option("hash", "H", "value", "function", "use the named hash function", basic=True),
    Option("help", "h", text="show usage help", basic=True),
    Option("base64", "b", text="interpret the password as base64-encoded"),
    Option("dotted", "d", text="use a dotted decimal format"),
    Option("password", "p", "value", "pwd", "defines the password"),
    Option("verbose", "v", hidden=True),
    Option("print-base64", text="print base64 of the plain password (plain:b lines)"),
    Option("xtext", "x", text="print xtext of the plain password (plain lines)"),
    Option("version", text="print the version and exit"),
)
_LONG = {o.name: o for o in _OPTIONS}
_FORMS = ("dotted", "print-base64", "xtext")  # output forms: one at most
_SYNOPSIS = {
    False: ["usage: emailrelay-passwd [-h] [--hash=<function>] [--help]"],
    True: [
        "usage: emailrelay-passwd [-hbd] [--hash=<function>] [--help] [--base64]",
        "  [--dotted] [--password=<pwd>]",
    ],
}


def help_text(verbose: bool) -> str:
    """``--help`` in upstream's words and layout (with ``--verbose`` every option, ours after)."""
    lines = [*_SYNOPSIS[verbose], ""]
    for o in _OPTIONS:
        if o.hidden or not (o.basic or verbose):
            continue
        lines.append(f"{o.help_left():<29} {o.text}")
    return "\n".join([*lines, "", *WARRANTY, COPYRIGHT]) + "\n"


def _usage_after_error() -> str:
    """What upstream prints after ``too many command-line arguments`` (no final newline)."""
    return "\n".join([f"usage: {PROGRAM}", "", *("  " + w for w in WARRANTY), "    " + COPYRIGHT])


def _parse(argv: list[str] | None) -> Given:
    """The options, or upstream's errors (all of them, before any help); ``--help`` and our
    ``--version`` print and exit 0 (SystemExit); a non-option is upstream's ``too many
    command-line arguments``; a hash function or form that cannot be used is refused here,
    before any password is read."""
    given = tokenize(sys.argv[1:] if argv is None else argv, _OPTIONS)
    if given.problems:
        raise PasswdError(f"\n{PROGRAM}: error: ".join(given.problems))
    if given.on("help") or given.on("version"):
        sys.stdout.write(help_text(given.on("verbose")) if given.on("help") else VERSION + "\n")
        raise SystemExit(0)
    if given.rest:
        raise PasswdError(
            "too many command-line arguments (the password is read from the standard input)\n"
            + _usage_after_error(),
            "",
        )
    forms = [name for name in given.flags if given.on(name) and name in _FORMS]
    if len(forms) > 1:  # argparse's words, as before
        raise PasswdError(f"argument {_display(forms[1])}: not allowed with argument {_display(forms[0])}")
    hash_name = given.values.get("hash")
    if hash_name is not None and hash_name.lower() not in ("md5", "sha1", "sha256"):
        raise PasswdError("invalid hash function", "exception: ")
    if given.on("dotted") and hash_name is not None and hash_name.lower() != "md5":  # before any password
        raise PasswdError("--dotted only works for md5", "exception: ")
    return given


def _display(name: str) -> str:
    option = _LONG[name]
    return f"-{option.short}/--{name}" if option.short else f"--{name}"


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


def _format(given: Given, password: bytes) -> str:
    if given.on("print-base64"):
        return base64.b64encode(password).decode("ascii")
    if given.on("xtext"):
        try:
            return xtext_encode(password.decode("utf-8"))
        except UnicodeDecodeError:
            raise PasswdError("--xtext needs a UTF-8 password; use --base64") from None
    state = hmac_md5_state(password)
    return encode_dotted(state) if given.on("dotted") else encode_state(state)


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    try:
        given = _parse(argv)
        given_password = given.values.get("password")  # (a value option: never None when given)
        if given_password is not None:
            password = given_password.encode("utf-8", "surrogateescape")
        else:
            password = _read_password(stdin or sys.stdin)
        if given.on("base64"):
            try:
                password = base64.b64decode(password, validate=True)
            except (binascii.Error, ValueError):
                raise PasswdError("base64 encoding error", "exception: ") from None
        if not password:
            raise PasswdError("invalid password", "")
        _check_hash(given.values.get("hash"))
        out.write(_format(given, password) + "\n")
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
